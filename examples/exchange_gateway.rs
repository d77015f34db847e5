//! A gateway that calls a downstream API on each user's behalf: the user's token, from the
//! incoming `Authorization`, is exchanged (RFC 8693) for a token of the gateway's own, once per
//! user, and every downstream call of that user carries it. Needs no credentials and no network.
//!
//! It starts three servers on 127.0.0.1 (random ports):
//! - an authorization server whose token endpoint takes the token-exchange grant alone, from the
//!   client `gateway` (its secret in the form body): it accepts a subject token only if it issued it to a user, and issues
//!   `orders-<user>-<n>`;
//! - the downstream orders API, which answers with the user a token was issued for, and 401 to
//!   any other token (a user's own included);
//! - the gateway (axum): `GET /orders` forwards the caller's request through a
//!   `KeyedAuthLayer` keyed by the caller's bearer token, whose source exchanges it.
//!
//! Five users then call the gateway 40 times each, all at once. Each user's token is exchanged
//! once; each answer names its own user; no user's own token reaches the downstream API.
//!
//! ```text
//! cargo run --example exchange_gateway --features axum
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    BoxError, ClientAuth, SubjectToken, TokenExchange,
    keyed::{KeyedAuthLayer, KeyedAuthService, by_bearer_credential},
};

const USERS: [&str; 5] = ["ada", "grace", "edsger", "barbara", "ken"];

/// The authorization server's books: user tokens it issued, and downstream tokens by user.
#[derive(Clone, Default)]
struct Books {
    users: Arc<Mutex<HashMap<String, String>>>,
    downstream: Arc<Mutex<HashMap<String, String>>>,
    exchanges: Arc<Mutex<HashMap<String, usize>>>,
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The token endpoint: RFC 8693 token exchange only, for the client `gateway`.
async fn token(State(books): State<Books>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange")
        || field("client_id") != Some("gateway")
        || field("client_secret") != Some("gateway-secret")
        || field("subject_token_type") != Some(TokenExchange::ACCESS_TOKEN)
        || field("audience") != Some("orders")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    }
    let subject = field("subject_token").unwrap_or_default();
    let Some(user) = books.users.lock().unwrap().get(subject).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let n = {
        let mut exchanges = books.exchanges.lock().unwrap();
        let n = exchanges.entry(user.clone()).or_default();
        *n += 1;
        *n
    };
    let issued = format!("orders-{user}-{n}");
    books
        .downstream
        .lock()
        .unwrap()
        .insert(issued.clone(), user);
    Json(json!({
        "access_token": issued,
        "issued_token_type": TokenExchange::ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 600,
    }))
    .into_response()
}

/// The downstream API: the user its token was issued for, or 401.
async fn orders(State(books): State<Books>, request: Request) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match books.downstream.lock().unwrap().get(token) {
        Some(user) => Json(json!({"orders_of": user})).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

type Downstream = KeyedAuthService<
    Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    SubjectToken,
>;

/// The gateway's handler: the caller's request, sent on to the downstream API. The keyed layer
/// takes the caller's bearer token as its key, and replaces it with the token exchanged for it.
async fn forward(
    State((downstream, url)): State<(Downstream, String)>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("{url}/orders").parse().unwrap();
    match downstream.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::new),
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let books = Books::default();
    for user in USERS {
        books
            .users
            .lock()
            .unwrap()
            .insert(format!("user-token-of-{user}"), user.to_owned());
    }
    let idp = serve(
        Router::new()
            .route("/token", post(token))
            .with_state(books.clone()),
    )
    .await;
    let api = serve(
        Router::new()
            .route("/orders", get(orders))
            .with_state(books.clone()),
    )
    .await;

    let token_url = format!("{idp}/token");
    let auth = KeyedAuthLayer::builder(by_bearer_credential(), move |subject: &SubjectToken| {
        TokenExchange::builder(token_url.clone())
            .client_id("gateway")
            .client_secret("gateway-secret")
            .auth(ClientAuth::Post)
            .subject_token(subject.clone(), TokenExchange::ACCESS_TOKEN)
            .audience("orders")
            .build()
    })
    .build()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let downstream = ServiceBuilder::new().layer(auth.clone()).service(client);
    let gateway = serve(
        Router::new()
            .route("/orders", get(forward))
            .with_state((downstream, api)),
    )
    .await;

    let caller = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let calls: Vec<_> = (0..40)
        .flat_map(|_| USERS)
        .map(|user| {
            let request = http::Request::get(format!("{gateway}/orders"))
                .header(AUTHORIZATION, format!("Bearer user-token-of-{user}"))
                .body(Body::empty())
                .unwrap();
            let caller = caller.clone();
            tokio::spawn(async move {
                let response = caller.request(request).await.unwrap();
                let status = response.status();
                if status != StatusCode::OK {
                    let body = http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap();
                    panic!("{status}: {}", String::from_utf8_lossy(&body.to_bytes()));
                }
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                let answer: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
                assert_eq!(answer["orders_of"], user, "another user's token was sent");
            })
        })
        .collect();
    for call in calls {
        call.await?;
    }

    for user in USERS {
        let key = SubjectToken::new(format!("user-token-of-{user}"));
        let fetches = auth.stats(&key).map_or(0, |stats| stats.fetches);
        println!("{user:>8}: 40 requests, {fetches} token exchange");
        assert_eq!(fetches, 1);
    }
    println!("200 requests of 5 users: one exchange per user, each answer for its own user");
    Ok(())
}
