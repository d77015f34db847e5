//! The main demonstration: many concurrent requests, short-lived tokens, a server-side
//! revocation, and one token fetch per token lifetime. Needs no credentials and no network.
//!
//! It starts two servers on 127.0.0.1 (random ports):
//! - a token endpoint (`client_credentials`, HTTP Basic client authentication) that issues
//!   tokens valid for 2 seconds;
//! - a protected API that answers 200 for a valid token and 401 otherwise.
//!
//! Then it sends 12,000 requests from 64 concurrent workers through `AuthLayer` over a hyper-util
//! client, revokes the current token on the server halfway through, and prints a summary.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Form, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{net::TcpListener, task::JoinSet};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, ClientCredentials};

const CLIENT_ID: &str = "quickstart";
const CLIENT_SECRET: &str = "quickstart-secret";
const TOKEN_LIFETIME: Duration = Duration::from_secs(2);
const EXPIRY_MARGIN: Duration = Duration::from_millis(200);
const WORKERS: u64 = 64;
const REQUESTS: u64 = 12_000;
const PAUSE_BETWEEN_REQUESTS: Duration = Duration::from_millis(30);
const REVOKE_AFTER: Duration = Duration::from_millis(2_900);

/// What the stand-in authorization server knows: issued tokens and when they expire.
#[derive(Default)]
struct Server {
    tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicU64,
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    grant_type: String,
}

async fn token_endpoint(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Form(form): Form<TokenRequest>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64_encode(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes())
    );
    if headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if form.grant_type != "client_credentials" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let n = server.issued.fetch_add(1, Relaxed) + 1;
    let token = format!("qs-{n}-{:016x}", RandomState::new().hash_one(n));
    server
        .tokens
        .lock()
        .unwrap()
        .insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
    axum::Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
    }))
    .into_response()
}

async fn protected_api(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        server
            .tokens
            .lock()
            .unwrap()
            .get(t)
            .is_some_and(|expires| Instant::now() < *expires)
    });
    if valid {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
        )
            .into_response()
    }
}

fn base64_encode(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

async fn serve(router: Router) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = Arc::new(Server::default());
    let idp = serve(
        Router::new()
            .route("/oauth2/token", post(token_endpoint))
            .with_state(server.clone()),
    )
    .await?;
    let api = serve(
        Router::new()
            .route("/data", get(protected_api))
            .with_state(server.clone()),
    )
    .await?;

    // --- This is all a user of the crate writes. ---
    let source = ClientCredentials::builder(format!("{idp}/oauth2/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .build()?;
    let auth = AuthLayer::builder(source)
        .expiry_margin(EXPIRY_MARGIN)
        .build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let client = ServiceBuilder::new().layer(auth.clone()).service(http);
    // --- ---

    println!("tower-bearer quickstart");
    println!("  token endpoint {idp}/oauth2/token (tokens live {TOKEN_LIFETIME:?})");
    println!("  protected API  {api}/data");
    println!(
        "  {REQUESTS} requests from {WORKERS} concurrent workers; the server revokes the current token after {REVOKE_AFTER:?}\n"
    );

    let started = Instant::now();
    let revoker = {
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REVOKE_AFTER).await;
            let mut tokens = server.tokens.lock().unwrap();
            let revoked = tokens.len();
            tokens.clear();
            revoked
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (client, api, next, ok) = (client.clone(), api.clone(), next.clone(), ok.clone());
        workers.spawn(async move {
            let mut failures: HashMap<String, u64> = HashMap::new();
            while next.fetch_add(1, Relaxed) < REQUESTS {
                let request = http::Request::get(format!("{api}/data")).body(Empty::new())?;
                match client.clone().oneshot(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(response) => {
                        *failures
                            .entry(format!("HTTP {}", response.status()))
                            .or_default() += 1
                    }
                    Err(err) => *failures.entry(err.to_string()).or_default() += 1,
                }
                tokio::time::sleep(PAUSE_BETWEEN_REQUESTS).await;
            }
            Ok::<_, BoxError>(failures)
        });
    }
    let mut failures: HashMap<String, u64> = HashMap::new();
    for result in workers.join_all().await {
        for (kind, n) in result? {
            *failures.entry(kind).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    revoker.await?;

    let stats = auth.stats();
    let issued = server.issued.load(Relaxed);
    let ok = ok.load(Relaxed);
    // One fetch at the start, one per background refresh, and one for the revocation, which
    // also restarts the lifetime clock. Each token is refreshed in the last fifth of the time
    // before its refresh target (the expiry less the margin), from a random point of that
    // window's first half: after 80 to 90 % of it, plus the fetch itself.
    let target = TOKEN_LIFETIME - EXPIRY_MARGIN;
    let refreshes =
        |span: Duration, every: Duration| (span.as_secs_f64() / every.as_secs_f64()).floor() as u64;
    let count = |every: Duration| {
        refreshes(REVOKE_AFTER, every) + refreshes(elapsed.saturating_sub(REVOKE_AFTER), every)
    };
    let (fewest, most) = (
        1 + count(target.mul_f64(0.9) + Duration::from_millis(50)) + 1,
        1 + count(target.mul_f64(0.8)) + 1,
    );

    println!("  requests          {REQUESTS}");
    println!("  successes         {ok}");
    println!("  failures          {}", REQUESTS - ok);
    for (kind, n) in &failures {
        println!("    {n:>6}  {kind}");
    }
    println!(
        "  token fetches     {} (the endpoint issued {issued})",
        stats.fetches
    );
    println!(
        "  401 retries       {} (requests in flight with the revoked token, resent once)",
        stats.retries
    );
    println!("  tokens rejected   {}", stats.unauthorized);
    println!("  callers who waited for a fetch {}", stats.waiters);
    println!("  elapsed           {:.2?}", elapsed);
    println!(
        "\n  single-flight: {} fetches for 1 start + a refresh every {:?}-{:?} + 1 revocation: {fewest}-{most}",
        stats.fetches,
        target.mul_f64(0.8),
        target.mul_f64(0.9),
    );
    // The refresh that falls due just as the run ends may or may not have happened.
    let single_flight =
        (fewest.saturating_sub(1)..=most).contains(&stats.fetches) && issued == stats.fetches;
    if ok == REQUESTS && single_flight {
        println!("  OK: every request succeeded and every token was fetched once");
        Ok(())
    } else {
        Err(format!(
            "unexpected result: {ok}/{REQUESTS} succeeded, {} fetches (expected {fewest}-{most})",
            stats.fetches
        )
        .into())
    }
}
