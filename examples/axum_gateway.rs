//! An axum gateway whose handlers all call an upstream API through ONE shared `AuthLayer`, one of
//! them forwarding its caller's request body. Needs no credentials and no network.
//!
//! It starts three servers on 127.0.0.1 (random ports):
//! - a token endpoint (`client_credentials`, HTTP Basic client authentication);
//! - the upstream API: 401 with `WWW-Authenticate: Bearer error="invalid_token"` for an unknown
//!   token; its `POST /echo` reads the whole body, then checks the token, then echoes the body;
//! - the gateway: `GET /profile/{id}`, `GET /orders` and `POST /forward`, each calling the
//!   upstream through a clone of the one authenticated hyper-util client kept in its `State`.
//!
//! A plain hyper client then sends two bursts of concurrent GETs to the gateway, and POSTs whose
//! bodies stream slowly. Between the bursts the upstream revokes its token, while the POSTs are
//! still streaming. With the `axum` feature `axum::body::Body` is replayable, so the gateway
//! resends every rejected request, forwarded bodies included, with a new token: its callers see
//! only 200s.
//!
//! ```text
//! cargo run --example axum_gateway --features axum
//! ```

use std::{
    collections::HashSet,
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, Method, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, sync::watch, task::JoinSet};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, AuthService, BoxError, ClientCredentials};

const BASIC: &str = "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA=="; // gateway:gateway-secret
const GETS_PER_BURST: usize = 60;
const POSTS: usize = 3;

/// What the token endpoint and the upstream API share, and what they saw.
#[derive(Default)]
struct Upstream {
    tokens: Mutex<HashSet<String>>,
    issued: AtomicU64,
    rejected: AtomicU64,
    posts_arrived: AtomicU64,
    posts_rejected: Mutex<Vec<Bytes>>, // every POST body read, by answer
    posts_echoed: Mutex<Vec<Bytes>>,
}

async fn token_endpoint(State(up): State<Arc<Upstream>>, headers: HeaderMap) -> Response {
    if headers.get(AUTHORIZATION).is_none_or(|v| v != BASIC) {
        let error = Json(json!({"error": "invalid_client"}));
        return (StatusCode::UNAUTHORIZED, error).into_response();
    }
    let token = format!("gw-{}", up.issued.fetch_add(1, Relaxed) + 1);
    up.tokens.lock().unwrap().insert(token.clone());
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})).into_response()
}

/// The upstream's 401: `invalid_token` tells the layer to fetch a new token and resend.
struct InvalidToken;

impl IntoResponse for InvalidToken {
    fn into_response(self) -> Response {
        let challenge = [("www-authenticate", r#"Bearer error="invalid_token""#)];
        (StatusCode::UNAUTHORIZED, challenge).into_response()
    }
}

/// The upstream's check: a token it issued and has not revoked.
fn authorize(up: &Upstream, headers: &HeaderMap) -> Result<(), InvalidToken> {
    let token = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match token.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(token) if up.tokens.lock().unwrap().contains(token) => Ok(()),
        _ => {
            up.rejected.fetch_add(1, Relaxed);
            Err(InvalidToken)
        }
    }
}

/// Every upstream `GET`: its path back as JSON.
async fn upstream_get(
    State(up): State<Arc<Upstream>>,
    req: Request,
) -> Result<Json<Value>, InvalidToken> {
    authorize(&up, req.headers())?;
    Ok(Json(json!({ "path": req.uri().path() })))
}

/// `POST /echo`: reads the body, then checks the token, then sends the body back.
async fn upstream_echo(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    up.posts_arrived.fetch_add(1, Relaxed);
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|body| body.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let verdict = authorize(&up, &parts.headers);
    let read = match verdict {
        Ok(()) => &up.posts_echoed,
        Err(_) => &up.posts_rejected,
    };
    read.lock().unwrap().push(body.clone());
    verdict.map(|()| body).into_response()
}

/// The gateway's state: the upstream's address and the one authenticated client of all handlers.
#[derive(Clone)]
struct Gateway {
    upstream: String,
    client: AuthService<Client<HttpConnector, Body>>,
}

impl Gateway {
    /// Sends `body` to the upstream's `path` through a clone of the shared client, and relays
    /// the answer.
    async fn call(&self, method: Method, path: &str, body: Body) -> Response {
        let uri = format!("{}{path}", self.upstream);
        let request = http::Request::builder().method(method).uri(uri).body(body);
        let client = self.client.clone(); // a clone shares the layer's one token cache
        match client.oneshot(request.expect("a valid URI")).await {
            Ok(response) => response.map(Body::new).into_response(),
            Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
        }
    }
}

async fn profile(State(gw): State<Gateway>, Path(id): Path<u32>) -> Response {
    let path = format!("/users/{id}");
    gw.call(Method::GET, &path, Body::empty()).await
}

async fn orders(State(gw): State<Gateway>) -> Response {
    gw.call(Method::GET, "/orders", Body::empty()).await
}

/// Forwards the caller's body as it streams in: the layer keeps it (up to 64 KiB) for a resend.
async fn forward(State(gw): State<Gateway>, incoming: Request) -> Response {
    gw.call(Method::POST, "/echo", incoming.into_body()).await
}

/// A request body written chunk by chunk by another task.
struct Chunks(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

async fn serve(router: Router) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// `n` concurrent GETs spread over the gateway's GET handlers; how many got 200.
async fn burst(caller: &Client<HttpConnector, Body>, gateway: &str, n: usize) -> usize {
    let mut requests = JoinSet::new();
    for i in 0..n {
        let path = match i % 2 {
            0 => format!("/profile/{i}"),
            _ => "/orders".to_owned(),
        };
        let request = http::Request::get(format!("{gateway}{path}")).body(Body::empty());
        let response = caller.request(request.expect("a valid URI"));
        requests.spawn(async move { response.await.is_ok_and(|r| r.status() == StatusCode::OK) });
    }
    let answers = requests.join_all().await;
    answers.into_iter().filter(|ok| *ok).count()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let up = Arc::new(Upstream::default());
    let idp = Router::new().route("/token", post(token_endpoint));
    let idp = serve(idp.with_state(up.clone())).await?;
    let upstream = Router::new().route("/echo", post(upstream_echo));
    let upstream = serve(upstream.fallback(upstream_get).with_state(up.clone())).await?;

    // The gateway: one layer, limited to the upstream's origin, around one hyper-util client,
    // shared by every handler through axum's `State`.
    let source = ClientCredentials::builder(format!("{idp}/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .build()?;
    let auth = AuthLayer::builder(source).origin(&upstream).build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let client = ServiceBuilder::new().layer(auth.clone()).service(http);
    let gateway = Router::new()
        .route("/profile/{id}", get(profile))
        .route("/orders", get(orders))
        .route("/forward", post(forward))
        .with_state(Gateway {
            upstream: upstream.clone(),
            client,
        });
    let gateway = serve(gateway).await?;

    println!("tower-bearer in an axum gateway");
    println!("  token endpoint {idp}/token, upstream {upstream}, gateway {gateway}\n");

    // The gateway's callers: a plain hyper client, without any token. Its POST bodies send their
    // first chunk now and the rest only after the revocation.
    let caller = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let (revoke, revoked) = watch::channel(false);
    let mut posts = JoinSet::new();
    for i in 0..POSTS {
        let chunks = [
            format!(r#"{{"post":{i},"#),
            r#""a":1,"#.into(),
            r#""b":2}"#.into(),
        ];
        let sent = chunks.concat();
        let (tx, rx) = mpsc::channel(1);
        let mut revoked = revoked.clone();
        tokio::spawn(async move {
            for (n, chunk) in chunks.into_iter().enumerate() {
                if n == 1 {
                    let _ = revoked.wait_for(|revoked| *revoked).await;
                }
                let _ = tx.send(Bytes::from(chunk)).await;
            }
        });
        let request = http::Request::post(format!("{gateway}/forward"));
        let response = caller.request(request.body(Body::from_stream(Chunks(rx)))?);
        posts.spawn(async move {
            let response = response.await?;
            let status = response.status();
            let echoed = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(status == StatusCode::OK && echoed == sent)
        });
    }

    let before = burst(&caller, &gateway, GETS_PER_BURST).await;
    println!("  {GETS_PER_BURST} concurrent GETs through the gateway -> {before} x 200");

    // The POSTs are upstream by now, still streaming, with the first token: revoke it.
    let arrived = async {
        while up.posts_arrived.load(Relaxed) < POSTS as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let arrived = tokio::time::timeout(Duration::from_secs(10), arrived).await;
    arrived.map_err(|_| "unexpected: the POSTs never reached the upstream")?;
    up.tokens.lock().unwrap().clear();
    revoke.send(true)?;
    println!("  upstream revoked its token while {POSTS} forwarded POSTs were streaming");

    let after = burst(&caller, &gateway, GETS_PER_BURST).await;
    println!("  {GETS_PER_BURST} more concurrent GETs -> {after} x 200");
    let mut intact = 0;
    for answer in posts.join_all().await {
        intact += usize::from(answer?);
    }
    println!("  {POSTS} forwarded POSTs -> {intact} x 200 with their body echoed back intact");

    // What the upstream read: each POST body twice (revoked token, then new one), the same bytes.
    let sorted = |read: &Mutex<Vec<Bytes>>| {
        let mut bodies = read.lock().unwrap().clone();
        bodies.sort();
        bodies
    };
    let (rejected, echoed) = (sorted(&up.posts_rejected), sorted(&up.posts_echoed));
    let rejected_gets = up.rejected.load(Relaxed) - rejected.len() as u64;
    println!(
        "  upstream: {rejected_gets} GETs and {} POSTs rejected (revoked token); POST bodies read \
         {} times, identical on both attempts: {}",
        rejected.len(),
        rejected.len() + echoed.len(),
        rejected == echoed
    );
    let stats = auth.stats();
    println!(
        "  layer: {} token fetches, {} token forgotten, {} resends, {} waits for a fetch",
        stats.fetches, stats.unauthorized, stats.retries, stats.waiters
    );

    let expected = before + after == 2 * GETS_PER_BURST
        && intact == POSTS
        && rejected.len() == POSTS
        && rejected == echoed
        && stats.fetches == 2
        && up.issued.load(Relaxed) == 2
        && stats.retries == rejected_gets + POSTS as u64;
    if !expected {
        return Err("unexpected result: see the numbers above".into());
    }
    println!("\n  OK: the gateway's callers saw only 200s; its one shared layer fetched 2 tokens");
    Ok(())
}
