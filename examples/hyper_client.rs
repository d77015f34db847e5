//! hyper-util's `Client` behind `AuthLayer`: a streamed upload that survives a token revocation,
//! and a request to another origin that never sees the token. Needs no credentials and no network.
//!
//! It starts three servers on 127.0.0.1 (random ports):
//! - a token endpoint (`client_credentials`, HTTP Basic client authentication, id and secret
//!   form-urlencoded before base64 as RFC 6749 §2.3.1 asks);
//! - a protected API whose `POST /upload` records every body it reads, answers 401 with
//!   `WWW-Authenticate: Bearer error="invalid_token"` for an unknown token, and revokes the first
//!   token it sees while that first upload is in progress;
//! - an unrelated service on another port, which records the `Authorization` header it gets.
//!
//! The layer is limited to the API's origin. The upload streams in several chunks through a
//! `ReplayableBody`, so after the 401 the layer fetches a new token and resends the same bytes.
//!
//! ```text
//! cargo run --example hyper_client
//! ```

use std::{
    collections::HashSet,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    Form, Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;
use tokio::{net::TcpListener, sync::mpsc};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, ClientCredentials, replay::ReplayableBody};

const CLIENT_ID: &str = "hyper client"; // the space becomes '+' before base64
const CLIENT_SECRET: &str = "s3cret:with/odd&chars";
const CHUNKS: [&str; 4] = ["{\"rows\":[", "1,2,3,", "4,5,6", "]}"];

/// The state of all three stand-in servers.
#[derive(Default)]
struct Servers {
    tokens: Mutex<HashSet<String>>,
    issued: AtomicU64,
    revoked_once: AtomicBool,
    uploads: Mutex<Vec<(StatusCode, Bytes)>>,
    webhook_auth: Mutex<Vec<Option<HeaderValue>>>,
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    grant_type: String,
}

async fn token_endpoint(
    State(servers): State<Arc<Servers>>,
    headers: HeaderMap,
    Form(form): Form<TokenRequest>,
) -> Response {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = BASE64.encode(format!("{}:{}", encode(CLIENT_ID), encode(CLIENT_SECRET)));
    let expected = format!("Basic {basic}");
    if headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        let error = Json(json!({"error": "invalid_client"}));
        return (StatusCode::UNAUTHORIZED, error).into_response();
    }
    if form.grant_type != "client_credentials" {
        let error = Json(json!({"error": "unsupported_grant_type"}));
        return (StatusCode::BAD_REQUEST, error).into_response();
    }
    let token = format!("hc-{}", servers.issued.fetch_add(1, Relaxed) + 1);
    servers.tokens.lock().unwrap().insert(token.clone());
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})).into_response()
}

/// `POST /upload`. The `Bytes` extractor reads the whole body first, so both attempts are recorded.
async fn upload(State(servers): State<Arc<Servers>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token.and_then(|v| v.strip_prefix("Bearer "));
    let mut tokens = servers.tokens.lock().unwrap();
    if let Some(token) = token {
        if !servers.revoked_once.swap(true, Relaxed) {
            tokens.remove(token); // an operator revokes the token while the upload is running
        }
    }
    let status = match token {
        Some(token) if tokens.contains(token) => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    };
    servers.uploads.lock().unwrap().push((status, body));
    let challenge = [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)];
    match status {
        StatusCode::OK => (status, "stored").into_response(),
        _ => (status, challenge).into_response(),
    }
}

/// `POST /webhook` on the unrelated service: it only notes what `Authorization` it got.
async fn webhook(State(servers): State<Arc<Servers>>, headers: HeaderMap) -> StatusCode {
    let auth = headers.get(header::AUTHORIZATION).cloned();
    servers.webhook_auth.lock().unwrap().push(auth);
    StatusCode::NO_CONTENT
}

/// A stream of body chunks written by another task, as a file or a socket would produce them.
struct Chunks(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let chunk = ready!(self.0.poll_recv(cx));
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// The client's body type: a stream the layer may keep (up to 64 KiB) to send it again.
type Upload = ReplayableBody;

/// A body that yields `chunks` one by one, 20 ms apart.
fn streamed(chunks: &'static [&'static str]) -> Upload {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tx.send(Bytes::from_static(chunk.as_bytes())).await.is_err() {
                return; // the body was dropped
            }
        }
    });
    ReplayableBody::new(StreamBody::new(Chunks(rx)))
}

async fn serve(router: Router) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let servers = Arc::new(Servers::default());
    let route = |path, handler| {
        Router::new()
            .route(path, handler)
            .with_state(servers.clone())
    };
    let idp = serve(route("/oauth2/token", post(token_endpoint))).await?;
    let api = serve(route("/upload", post(upload))).await?;
    let other = serve(route("/webhook", post(webhook))).await?;

    // The client: hyper-util over plain HTTP, with the token only for the API's origin.
    let source = ClientCredentials::builder(format!("{idp}/oauth2/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .build()?;
    let auth = AuthLayer::builder(source).origin(&api).build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Upload>();
    let client = ServiceBuilder::new().layer(auth.clone()).service(http);

    println!("tower-bearer with hyper-util's Client");
    println!("  token endpoint {idp}/oauth2/token, API {api}, unrelated service {other}\n");

    // 1. A streamed upload. The API revokes the token while reading it and answers 401; the
    //    layer fetches a new token and resends the bytes it kept as they streamed out.
    let request = http::Request::post(format!("{api}/upload"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(streamed(&CHUNKS))?;
    let response = client.clone().oneshot(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    println!(
        "  POST {api}/upload, streamed in {} chunks -> {status} {answer:?}",
        CHUNKS.len()
    );
    let uploads = servers.uploads.lock().unwrap().clone();
    for (i, (status, body)) in uploads.iter().enumerate() {
        println!(
            "    attempt {}: the API read {body:?}, answered {status}",
            i + 1
        );
    }
    let statuses: Vec<_> = uploads.iter().map(|(status, _)| *status).collect();
    let uploaded = status == StatusCode::OK
        && statuses == [StatusCode::UNAUTHORIZED, StatusCode::OK]
        && uploads.iter().all(|(_, body)| *body == CHUNKS.concat());

    // 2. Another origin (same host, another port): the request passes through untouched.
    let request = http::Request::post(format!("{other}/webhook")).body(streamed(&["ping"]))?;
    let status = client.clone().oneshot(request).await?.status();
    let seen = servers.webhook_auth.lock().unwrap().clone();
    println!("  POST {other}/webhook -> {status}, Authorization header seen there: {seen:?}");
    let passed_through = status == StatusCode::NO_CONTENT && seen == [None];

    let stats = auth.stats();
    println!("\n  auth.stats(): {stats:?}");
    // One token at the start, one after the revocation; one rejection, one resend.
    let two_tokens = stats.fetches == 2 && servers.issued.load(Relaxed) == 2;
    let resent_once = stats.unauthorized == 1 && stats.retries == 1;
    if !(uploaded && passed_through && two_tokens && resent_once) {
        return Err("unexpected result: see above".into());
    }
    println!("  OK: the upload was resent intact with a new token; the other origin never saw one");
    Ok(())
}
