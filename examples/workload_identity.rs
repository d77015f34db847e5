//! Credentials from the platform instead of stored secrets: the three uses of an assertion
//! source, runnable without credentials and without the network.
//!
//! It starts, on 127.0.0.1 (random ports), an authorization server that takes platform JWTs
//! (it refuses any JWT it saw before, as servers that take them as a grant do) and two
//! platform endpoints written from their providers' documented formats: GitHub Actions' OIDC
//! endpoint and a GCP metadata server. Then:
//!
//! 1. a client authenticated by its Kubernetes service-account token (client assertion,
//!    RFC 7523 §2.2) read from a file that kubelet rotates mid-run: 100 callers share one token
//!    request, and after the rotation the next request carries the new JWT;
//! 2. the JWT bearer grant (RFC 7523 §2.1) with a GitHub Actions OIDC token for an audience;
//! 3. the JWT bearer grant with a GCP identity token from the metadata server.
//!
//! ```text
//! cargo run --example workload_identity --features axum
//! ```

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use serde_json::json;
use tokio::net::TcpListener;
use tower_bearer::{
    AuthLayer, BoxError, ClientCredentials, JwtBearer,
    assertion::{GcpIdentity, GithubActions, TokenFile},
};

/// A JWT as a platform would sign it (the signature is left out: this server reads the
/// claims only; a real one checks the platform's key).
fn platform_jwt(subject: &str, audience: &str, serial: usize) -> String {
    let encode = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        json!({"sub": subject, "aud": audience, "exp": exp, "jti": format!("{subject}-{serial}")});
    format!(
        "{}.{}.sig",
        encode(r#"{"alg":"RS256"}"#.into()),
        encode(claims.to_string())
    )
}

fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The authorization server: a JWT it saw before is refused; each token request is logged.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<HashSet<String>>>,
    log: Arc<Mutex<Vec<String>>>,
}

async fn token(State(server): State<Server>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let jwt = field("client_assertion")
        .or_else(|| field("assertion"))
        .unwrap_or_default();
    let Some(claims) = claims(&jwt) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    if !server.seen.lock().unwrap().insert(jti.clone()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "JWT used twice"})),
        )
            .into_response();
    }
    let grant = field("grant_type").unwrap_or_default();
    let how = if grant.ends_with("jwt-bearer") {
        "JWT bearer grant"
    } else {
        "client assertion"
    };
    server.log.lock().unwrap().push(format!("{how}, JWT {jti}"));
    Json(json!({"access_token": format!("token-for-{jti}"), "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

/// GitHub Actions' OIDC endpoint: `Authorization: Bearer <request token>`, `audience` in the
/// query, `{"value": "<jwt>"}` back.
async fn github(headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Response {
    let audience = query
        .iter()
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.as_str());
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some("Bearer job-request-token")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let jwt = platform_jwt(
        "repo:acme/orders:ref:refs/heads/main",
        audience.unwrap_or("default"),
        1,
    );
    Json(json!({"count": 1, "value": jwt})).into_response()
}

/// A GCP metadata server: `Metadata-Flavor: Google` both ways, the JWT as the body.
async fn gcp_identity(headers: HeaderMap, Query(query): Query<Vec<(String, String)>>) -> Response {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return StatusCode::FORBIDDEN.into_response();
    }
    let audience = query
        .iter()
        .find(|(k, _)| k == "audience")
        .map_or("", |(_, v)| v.as_str());
    (
        [("metadata-flavor", "Google")],
        platform_jwt("orders@acme.iam", audience, 1),
    )
        .into_response()
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Writes `jwt` as kubelet updates a projected volume: a new directory, then an atomic swap
/// of the `..data` link; `token` is a link through it.
fn kubelet_writes(volume: &Path, generation: usize, jwt: &str) {
    let dir = volume.join(format!("..generation-{generation}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("token"), jwt).unwrap();
    std::os::unix::fs::symlink(dir.file_name().unwrap(), volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    if !volume.join("token").exists() {
        std::os::unix::fs::symlink("..data/token", volume.join("token")).unwrap();
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = Server::default();
    let idp = serve(
        Router::new()
            .route("/token", post(token))
            .with_state(server.clone()),
    )
    .await;
    let platform = serve(Router::new().route("/idtoken", get(github)).route(
        "/computeMetadata/v1/instance/service-accounts/default/identity",
        get(gcp_identity),
    ))
    .await;
    let token_url = format!("http://{idp}/token");

    println!("1. client assertion from a Kubernetes token file");
    let volume = tempfile::tempdir()?;
    kubelet_writes(
        volume.path(),
        1,
        &platform_jwt("system:serviceaccount:prod:orders", "idp", 1),
    );
    let layer = AuthLayer::new(
        ClientCredentials::builder(&token_url)
            .client_id("orders")
            .client_assertion(TokenFile::new(volume.path().join("token")))
            .build()?,
    );
    let callers: Vec<_> = (0..100).map(|_| tokio::spawn(layer.token())).collect();
    let mut tokens = HashSet::new();
    for caller in callers {
        tokens.insert(caller.await??.access_token().secret().to_owned());
    }
    println!("   100 callers, {} token(s): {:?}", tokens.len(), tokens);
    assert_eq!(tokens.len(), 1);
    kubelet_writes(
        volume.path(),
        2,
        &platform_jwt("system:serviceaccount:prod:orders", "idp", 2),
    );
    let old = layer.token().await?;
    layer.invalidate(&old);
    let new = layer.token().await?;
    println!(
        "   after kubelet's rotation: {}",
        new.access_token().secret()
    );
    assert_eq!(
        new.access_token().secret(),
        "token-for-system:serviceaccount:prod:orders-2"
    );

    println!("2. JWT bearer grant with a GitHub Actions OIDC token");
    let github = GithubActions::new(
        &format!("http://{platform}/idtoken?api-version=2.0"),
        "job-request-token",
    )?
    .audience("https://login.example.com");
    let layer = AuthLayer::new(
        JwtBearer::builder(&token_url, github)
            .client_id("ci-deployer")
            .build()?,
    );
    println!("   {}", layer.token().await?.access_token().secret());

    println!("3. JWT bearer grant with a GCP identity token");
    let gcp = GcpIdentity::new("https://login.example.com").metadata_host(platform);
    let layer = AuthLayer::new(
        JwtBearer::builder(&token_url, gcp)
            .client_id("orders")
            .build()?,
    );
    println!("   {}", layer.token().await?.access_token().secret());

    let log = server.log.lock().unwrap().clone();
    println!("the authorization server saw {} token requests:", log.len());
    for line in &log {
        println!("   {line}");
    }
    assert_eq!(log.len(), 4, "one per fetch: 100 callers shared the first");
    Ok(())
}
