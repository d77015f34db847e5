//! `reqwest` two ways: `reqwest::Client` as the inner tower service, and the same token cache as
//! a `reqwest_middleware` middleware. Self-contained: a token endpoint and an API on 127.0.0.1.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest-middleware
//! ```

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, ClientAuth, ClientCredentials};

/// Tokens the stand-in server issued and still accepts.
#[derive(Default)]
struct Server {
    valid: Mutex<HashSet<String>>,
    issued: AtomicU64,
}

async fn token(State(server): State<Arc<Server>>) -> impl IntoResponse {
    let n = server.issued.fetch_add(1, Relaxed) + 1;
    let token = format!("token-{n}");
    server.valid.lock().unwrap().insert(token.clone());
    axum::Json(
        serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
    )
}

async fn api(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if server.valid.lock().unwrap().contains(token) {
        (StatusCode::OK, format!("stored {} bytes", body.len())).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
        )
            .into_response()
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/token", post(token))
        .route("/items", post(api))
        .with_state(server.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{base}/token"))
            .client_id("reqwest-demo")
            .client_secret("s3cret")
            .auth(ClientAuth::Post)
            .build()?,
    );
    let http = reqwest::Client::new();

    // 1. reqwest::Client as a tower service: requests are resent through Request::try_clone.
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(http.clone());
    let request = http.post(format!("{base}/items")).body("first").build()?;
    let response = client.clone().oneshot(request).await?;
    println!(
        "tower service:  {} {}",
        response.status(),
        response.text().await?
    );

    // The server revokes every token; the next request is rejected once, then resent.
    server.valid.lock().unwrap().clear();
    let request = http.post(format!("{base}/items")).body("second").build()?;
    let response = client.oneshot(request).await?;
    println!(
        "after revoking: {} {}",
        response.status(),
        response.text().await?
    );

    // 2. The same cache as reqwest-middleware middleware: no new fetch needed.
    let with_middleware = reqwest_middleware::ClientBuilder::new(http)
        .with(auth.middleware())
        .build();
    let response = with_middleware
        .post(format!("{base}/items"))
        .body("third")
        .send()
        .await?;
    println!(
        "middleware:     {} {}",
        response.status(),
        response.text().await?
    );

    let stats = auth.stats();
    println!(
        "\ntoken fetches {} (issued {}), tokens rejected {}, resends {}",
        stats.fetches,
        server.issued.load(Relaxed),
        stats.unauthorized,
        stats.retries
    );
    if stats.fetches == 2 && stats.retries == 1 {
        println!("OK: one shared token cache, one transparent resend");
        Ok(())
    } else {
        Err(format!("unexpected stats: {stats:?}").into())
    }
}
