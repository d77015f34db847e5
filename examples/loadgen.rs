//! Load generator: many concurrent users sharing one `AuthLayer` over a hyper-util client.
//!
//! With no arguments it starts a token endpoint (`client_credentials`, 5-second tokens, about
//! 5 ms per fetch) and a protected API on 127.0.0.1 and loads them: no network needed.
//!
//! ```text
//! cargo run --release --example loadgen -- --concurrency 256 --duration 10s
//! LOADGEN_CLIENT_SECRET=... cargo run --release --example loadgen -- --url http://10.0.0.5/items \
//!     --token-url https://idp.example.com/oauth2/token --client-id my-client --auth post
//! ```
//!
//! The client secret comes from `LOADGEN_CLIENT_SECRET` only and is never printed. The exit
//! status is non-zero if any request failed.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use clap::{
    Parser,
    builder::{PossibleValuesParser, TypedValueParser},
};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{net::TcpListener, task::JoinSet};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, AuthService, BoxError, ClientAuth, ClientCredentials, Stats};

const SECRET_VAR: &str = "LOADGEN_CLIENT_SECRET";
const DEMO_ID: &str = "loadgen";
const DEMO_SECRET: &str = "loadgen-demo-secret";
const DEMO_FETCH_LATENCY: Duration = Duration::from_millis(5);
const BAR: &str = "{bar:40} {pos}/{len} requests  {per_sec:0}  eta {eta}";
const SPINNER: &str = "{spinner} {elapsed} of {msg}  {pos} requests  {per_sec:0}";

/// Loads an API through tower-bearer's AuthLayer: N workers share one layered hyper client.
/// Without --url it runs against a built-in token endpoint and API on 127.0.0.1.
#[derive(Parser)]
#[command(
    name = "loadgen",
    after_help = "The client secret is read from LOADGEN_CLIENT_SECRET only."
)]
struct Args {
    /// Protected API to send GET requests to (http://) [default: the built-in demo]
    #[arg(long, requires_all = ["token_url", "client_id"])]
    url: Option<Uri>,
    /// Token endpoint (client_credentials grant)
    #[arg(long, requires = "url")]
    token_url: Option<String>,
    /// OAuth client id
    #[arg(long, requires = "url")]
    client_id: Option<String>,
    /// Scopes to ask for, space-separated
    #[arg(long)]
    scope: Option<String>,
    /// Client authentication at the token endpoint
    #[arg(long, default_value = "basic", value_parser = auth_parser())]
    auth: ClientAuth,
    /// Concurrent workers
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Requests to send in all
    #[arg(long, default_value_t = 10_000, conflicts_with = "duration")]
    requests: u64,
    /// Send requests for this long instead (10s, 500ms, 2m)
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Speak HTTP/2 (prior knowledge) to the API
    #[arg(long)]
    http2: bool,
    /// Lifetime of the demo server's tokens (whole seconds)
    #[arg(long, default_value = "5s", value_parser = parse_duration, conflicts_with = "url")]
    token_lifetime: Duration,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

fn auth_parser() -> impl TypedValueParser<Value = ClientAuth> {
    PossibleValuesParser::new(["basic", "post", "query"])
        .try_map(|s| s.parse::<ClientAuth>().map_err(|e| e.to_string()))
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(char::is_alphabetic).unwrap_or(s.len()));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s"))?;
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("unknown unit `{unit}`: use ms, s or m")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|e| e.to_string())
}

/// The demo's token endpoint: checks the client (Basic header, or parameters in the form body
/// or the query), then issues `lg-<expiry in ms since start>`, which the API checks lock-free.
async fn demo_token(
    State((epoch, lifetime)): State<(Instant, u64)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(DEMO_FETCH_LATENCY).await;
    let query = uri.query().unwrap_or_default().as_bytes();
    let params: BTreeMap<_, _> = form_urlencoded::parse(query)
        .chain(form_urlencoded::parse(&body))
        .collect();
    let param = |name: &str| params.get(name).map(|v| &**v);
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{DEMO_ID}:{DEMO_SECRET}"))
    );
    let client_ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == basic.as_str())
        || (param("client_id") == Some(DEMO_ID) && param("client_secret") == Some(DEMO_SECRET));
    if !client_ok || param("grant_type") != Some("client_credentials") {
        let body = axum::Json(serde_json::json!({ "error": "invalid_client" }));
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let expires = epoch.elapsed() + Duration::from_secs(lifetime);
    axum::Json(serde_json::json!({
        "access_token": format!("lg-{}", expires.as_millis()),
        "token_type": "Bearer",
        "expires_in": lifetime,
    }))
    .into_response()
}

/// The demo's protected API: 200 for an unexpired demo token, 401 otherwise.
async fn demo_api(State((epoch, _)): State<(Instant, u64)>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let expires = token.and_then(|t| t.strip_prefix("Bearer lg-")?.parse::<u128>().ok());
    if expires.is_some_and(|expires| epoch.elapsed().as_millis() < expires) {
        (StatusCode::OK, "ok").into_response()
    } else {
        let challenge = [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)];
        (StatusCode::UNAUTHORIZED, challenge).into_response()
    }
}

/// Starts the demo on a free port of 127.0.0.1; returns its base URL.
async fn start_demo(lifetime: u64) -> Result<String, BoxError> {
    let router = Router::new()
        .route("/oauth2/token", post(demo_token))
        .route("/data", get(demo_api))
        .with_state((Instant::now(), lifetime));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// The token source and the API URL: the command line's, or the built-in demo's.
async fn target(args: &Args) -> Result<(ClientCredentials, Uri), BoxError> {
    let (token_url, client_id, secret, api) = match &args.url {
        Some(api) if api.scheme_str() != Some("http") => {
            return Err("--url must be http://: this example's client has no TLS connector".into());
        }
        Some(api) => {
            let secret = std::env::var(SECRET_VAR)
                .map_err(|_| format!("set {SECRET_VAR} to the client secret"))?;
            let (token_url, client_id) = (args.token_url.clone(), args.client_id.clone());
            (
                token_url.unwrap_or_default(),
                client_id.unwrap_or_default(),
                secret,
                api.clone(),
            )
        }
        None => {
            let demo = start_demo(args.token_lifetime.as_secs().max(1)).await?;
            let token_url = format!("{demo}/oauth2/token");
            (
                token_url,
                DEMO_ID.into(),
                DEMO_SECRET.into(),
                format!("{demo}/data").parse()?,
            )
        }
    };
    let mut builder = ClientCredentials::builder(token_url)
        .client_id(client_id)
        .client_secret(secret)
        .auth(args.auth);
    if let Some(scope) = &args.scope {
        builder = builder.scope(scope);
    }
    Ok((builder.build()?, api))
}

type Api = AuthService<Client<HttpConnector, Empty<Bytes>>>;
type Failures = Arc<Mutex<BTreeMap<String, u64>>>;

/// When the workers stop: after `total` requests in all, or at the deadline.
struct Budget {
    total: u64,
    started: AtomicU64,
    deadline: Option<Instant>,
}

impl Budget {
    /// Claims one more request; `false` once the budget is spent.
    fn take(&self) -> bool {
        self.deadline
            .is_none_or(|deadline| Instant::now() < deadline)
            && self.started.fetch_add(1, Relaxed) < self.total
    }
}

/// What a failed request ran into: an HTTP status, a token error, or a transport error.
async fn send(client: &mut Api, api: &Uri) -> Result<(), String> {
    let request = http::Request::get(api.clone())
        .body(Empty::new())
        .expect("a valid request");
    let result = match client.ready().await {
        Ok(service) => service.call(request).await,
        Err(err) => Err(err),
    };
    let response = match result {
        Ok(response) => response,
        // A failure to get a token is a boxed `tower_bearer::Error`; anything else is hyper's.
        Err(err) => match err.downcast_ref::<tower_bearer::Error>() {
            Some(e) if e.is_terminal() => return Err(format!("token error (terminal): {e}")),
            Some(e) => return Err(format!("token error (transient): {e}")),
            None => {
                let cause = err.source().map(|c| format!(": {c}")).unwrap_or_default();
                return Err(format!("request error: {err}{cause}"));
            }
        },
    };
    let status = response.status();
    // Read the whole body so that the connection goes back to the pool.
    let body = response.into_body().collect().await;
    body.map_err(|e| format!("response body: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// Latencies in microseconds, 1 µs to 1 minute (longer ones count as 1 minute), 3 digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// One user: sends requests back to back until the budget is spent; returns their latencies.
async fn worker(
    mut client: Api,
    api: Uri,
    budget: Arc<Budget>,
    failures: Failures,
    bar: ProgressBar,
) -> Histogram<u64> {
    let mut latency_us = latency_histogram();
    while budget.take() {
        let started = Instant::now();
        let result = send(&mut client, &api).await;
        latency_us.saturating_record(started.elapsed().as_micros() as u64);
        if let Err(kind) = result {
            *failures.lock().unwrap().entry(kind).or_default() += 1;
        }
        bar.inc(1);
    }
    latency_us
}

/// A bar of requests sent, or a spinner for a timed run; hidden off a terminal or with --quiet.
fn progress_bar(args: &Args) -> Result<ProgressBar, BoxError> {
    if args.quiet || !std::io::stdout().is_terminal() {
        return Ok(ProgressBar::hidden());
    }
    let (length, template) = match args.duration {
        None => (Some(args.requests), BAR),
        Some(_) => (None, SPINNER),
    };
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stdout())
        .with_style(ProgressStyle::with_template(template)?)
        .with_message(format!("{:?}", args.duration.unwrap_or_default()));
    bar.enable_steady_tick(Duration::from_millis(100));
    Ok(bar)
}

/// Microseconds as `850 µs` or `12.34 ms`.
fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.2} ms", us as f64 / 1000.0)
    }
}

fn print_summary(
    latency: &Histogram<u64>,
    failures: &BTreeMap<String, u64>,
    auth: &AuthLayer,
    elapsed: Duration,
) {
    let (sent, failed) = (latency.len(), failures.values().sum::<u64>());
    let (ok, throughput) = (sent - failed, sent as f64 / elapsed.as_secs_f64());
    let percentiles: Vec<String> = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)]
        .iter()
        .map(|(name, p)| format!("{name} {}", fmt_us(latency.value_at_percentile(*p))))
        .collect();
    let (percentiles, max) = (percentiles.join("  "), fmt_us(latency.max()));
    let Stats {
        fetches,
        background_refreshes,
        fetch_failures,
        retries,
        unauthorized,
        waiters,
        ..
    } = auth.stats();
    println!("  requests       {sent} ({ok} ok, {failed} failed)");
    println!("  elapsed        {elapsed:.2?}");
    println!("  throughput     {throughput:.0} requests/s");
    println!("  latency        {percentiles}  max {max}");
    println!(
        "  token fetches  {fetches} ({background_refreshes} in the background, {fetch_failures} failed)"
    );
    println!("  401 retries    {retries} ({unauthorized} tokens rejected)");
    println!("  waited for a token fetch: {waiters} callers");
    for (kind, n) in failures {
        println!("  {n:>9}  {kind}");
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let args = Args::parse();
    let (source, api) = target(&args).await?;

    // All workers share one layer, hence one token and at most one fetch in flight.
    let auth = AuthLayer::new(source);
    let http = Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(args.http2)
        .build_http();
    let client: Api = ServiceBuilder::new().layer(auth.clone()).service(http);

    let amount = args
        .duration
        .map_or(format!("{} requests", args.requests), |d| format!("{d:?}"));
    println!(
        "tower-bearer loadgen: {amount} from {} workers, {}",
        args.concurrency,
        if args.http2 { "HTTP/2" } else { "HTTP/1.1" }
    );
    println!("  API            {api}");
    if args.url.is_none() {
        println!(
            "  demo server    tokens live {}s, {DEMO_FETCH_LATENCY:?} per fetch",
            args.token_lifetime.as_secs().max(1)
        );
    }

    let budget = Arc::new(Budget {
        total: args.duration.map_or(args.requests, |_| u64::MAX),
        started: AtomicU64::new(0),
        deadline: args.duration.map(|d| Instant::now() + d),
    });
    let (failures, bar) = (Failures::default(), progress_bar(&args)?);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (api, budget, failures) = (api.clone(), budget.clone(), failures.clone());
        workers.spawn(worker(client.clone(), api, budget, failures, bar.clone()));
    }
    let mut latency = latency_histogram();
    for histogram in workers.join_all().await {
        latency.add(histogram)?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let failures = failures.lock().unwrap();
    print_summary(&latency, &failures, &auth, elapsed);
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
