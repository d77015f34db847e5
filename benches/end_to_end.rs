//! End to end: what the layer costs a real client talking to a real server. A hyper-util client
//! sends requests to a hyper server on 127.0.0.1, over HTTP/1.1 and over HTTP/2 (prior
//! knowledge), from 64 concurrent callers that each clone the client per request and drive it
//! with `oneshot`, building each request from its URL string. Two variants, same server, same
//! token, same header on the wire:
//!
//! - `static_header`: tower-http's `AddAuthorization` with a fixed bearer token (the floor);
//! - `auth_layer_retry_off`: `AuthLayer` with a cached token, `retry_unauthorized(false)`;
//! - `auth_layer`: `AuthLayer` with a cached token, default settings (retry on).
//!
//! The server checks the header on every request (and answers 401 to anything else, which the
//! bench counts as a failure). The variants run in interleaved rounds, in an order that rotates
//! from round to round, so that drift on a shared machine falls on all of them; the report gives
//! each variant's median throughput and the median of its per-round ratios to the floor.
//!
//! ```text
//! cargo bench --bench end_to_end                           # 9 rounds of 20,000 requests per protocol
//! cargo bench --bench end_to_end -- --requests 50000 --rounds 15 --callers 64 --threads 16
//! cargo bench --bench end_to_end -- --test                 # one short round each (CI)
//! END_TO_END_LOOP=http1/auth_layer:20000 target/release/deps/end_to_end-*
//!                                                          # one variant, n requests, one thread (for callgrind)
//! ```
//!
//! Throughput on a shared machine moves by a few percent from round to round, more than the
//! layer's cost; the loop mode lets callgrind count the instructions a whole request costs
//! (client, server and runtime) for each variant: run it with n and 2n requests and divide the
//! difference by n.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, AuthService, StaticToken};
use tower_http::auth::{AddAuthorization, AddAuthorizationLayer};

/// 90 bytes, the size of a short JWT.
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCIsImF1ZCI6ImFwaSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg00";

type Body = Empty<Bytes>;

#[path = "../tests/support/serve.rs"]
mod serve;

use serve::Protocol;

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "HTTP/1.1",
        Protocol::Http2 => "HTTP/2",
    }
}

struct Settings {
    requests: u64,
    rounds: usize,
    callers: u64,
    threads: usize,
}

fn settings() -> Settings {
    let mut settings = Settings {
        requests: 20_000,
        rounds: 9,
        callers: 64,
        threads: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage(&arg))
        };
        match arg.as_str() {
            "--test" => {
                settings.requests = 500;
                settings.rounds = 1;
            }
            "--requests" => settings.requests = value(),
            "--rounds" => settings.rounds = value() as usize,
            "--callers" => settings.callers = value(),
            "--threads" => settings.threads = value() as usize,
            // `cargo bench` passes `--bench`; criterion's other flags mean nothing here.
            _ => {}
        }
    }
    settings
}

fn usage(arg: &str) -> ! {
    eprintln!(
        "end_to_end [--test] [--requests N] [--rounds R] [--callers C] [--threads T]: bad {arg}"
    );
    std::process::exit(2)
}

/// A server that answers 200 `ok` to a request carrying the bench's bearer token, 401 to any
/// other.
async fn start_server(protocol: Protocol) -> SocketAddr {
    let expected: &'static str = Box::leak(format!("Bearer {TOKEN}").into_boxed_str());
    let (addr, _task) = serve::serve(protocol, move |request: Request<Incoming>| async move {
        let ok = request
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        if !ok {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        Ok::<_, Infallible>(response)
    })
    .await;
    addr
}

fn client(protocol: Protocol) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(protocol == Protocol::Http2)
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// `requests` requests from `callers` concurrent callers, each cloning `svc` per request; the
/// throughput in requests per second. Panics if any request fails.
async fn round<S>(svc: S, url: Arc<str>, requests: u64, callers: u64) -> f64
where
    S: Service<Request<Body>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    let left = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (svc, url, left) = (svc.clone(), Arc::clone(&url), Arc::clone(&left));
        tasks.spawn(async move {
            while left
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let request = Request::get(&*url).body(Body::new()).unwrap();
                let response = svc
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(Into::into)
                    .expect("request failed");
                assert_eq!(response.status(), StatusCode::OK);
                response.into_body().collect().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var("END_TO_END_LOOP") {
        return run_loop(&spec);
    }
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "end_to_end: {} callers, {} requests per round, {} interleaved rounds, {} runtime threads\n",
        settings.callers, settings.requests, settings.rounds, settings.threads
    );
    println!(
        "| protocol | variant | req/s (median) | ratio to the floor (median of rounds) | min | max |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        runtime.block_on(run(protocol, &settings));
    }
}

const VARIANTS: [&str; 3] = ["static_header", "auth_layer_retry_off", "auth_layer"];

/// `END_TO_END_LOOP=<http1|http2>/<variant>:<n>`: warm up, then `n` requests of one variant.
fn run_loop(spec: &str) {
    let usage = "END_TO_END_LOOP=<http1|http2>/<variant>:<n>";
    let (what, n) = spec.split_once(':').expect(usage);
    let (protocol, variant) = what.split_once('/').expect(usage);
    let protocol = match protocol {
        "http1" => Protocol::Http1,
        "http2" => Protocol::Http2,
        _ => panic!("{usage}"),
    };
    let variant = VARIANTS
        .iter()
        .position(|v| *v == variant)
        .unwrap_or_else(|| panic!("unknown variant; one of {}", VARIANTS.join(", ")));
    let requests: u64 = n.parse().expect(usage);
    // One thread: the schedule, and so the count, is the same from run to run.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let variants = Variants::start(protocol).await;
        variants.once(variant, 2_000, 64).await;
        variants.once(variant, requests, 64).await;
    });
}

/// The server, and the three variants of the client in front of it.
struct Variants {
    url: Arc<str>,
    floor: AddAuthorization<Client<HttpConnector, Body>>,
    retry_off: AuthService<Client<HttpConnector, Body>>,
    retry_on: AuthService<Client<HttpConnector, Body>>,
}

impl Variants {
    async fn start(protocol: Protocol) -> Variants {
        let addr = start_server(protocol).await;
        let url: Arc<str> = Arc::from(format!("http://{addr}/v1/items?page=2"));
        let inner = client(protocol);
        let floor = ServiceBuilder::new()
            .layer(AddAuthorizationLayer::bearer(TOKEN))
            .service(inner.clone());
        let layer = |retry: bool| {
            AuthLayer::builder(StaticToken::new(TOKEN))
                .retry_unauthorized(retry)
                .build()
                .unwrap()
        };
        let (retry_off, retry_on) = (layer(false), layer(true));
        retry_off.token().await.unwrap();
        retry_on.token().await.unwrap();
        Variants {
            url,
            floor,
            retry_off: retry_off.layer(inner.clone()),
            retry_on: retry_on.layer(inner),
        }
    }

    async fn once(&self, variant: usize, requests: u64, callers: u64) -> f64 {
        let url = Arc::clone(&self.url);
        match variant {
            0 => round(self.floor.clone(), url, requests, callers).await,
            1 => round(self.retry_off.clone(), url, requests, callers).await,
            _ => round(self.retry_on.clone(), url, requests, callers).await,
        }
    }
}

async fn run(protocol: Protocol, settings: &Settings) {
    let variants = Variants::start(protocol).await;
    let once = |variant: usize, requests: u64| variants.once(variant, requests, settings.callers);
    // Warm every variant: connections open, allocator and caches settled.
    for variant in 0..VARIANTS.len() {
        once(variant, settings.requests.min(2_000)).await;
    }
    let mut throughput = vec![Vec::new(); VARIANTS.len()];
    let mut ratios = vec![Vec::new(); VARIANTS.len()];
    for round_index in 0..settings.rounds {
        let mut this_round = [0.0; VARIANTS.len()];
        for step in 0..VARIANTS.len() {
            let variant = (round_index + step) % VARIANTS.len();
            this_round[variant] = once(variant, settings.requests).await;
        }
        for (variant, value) in this_round.iter().enumerate() {
            throughput[variant].push(*value);
            ratios[variant].push(value / this_round[0]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report(protocol, &mut throughput, &mut ratios);
}

fn report(protocol: Protocol, throughput: &mut [Vec<f64>], ratios: &mut [Vec<f64>]) {
    for (variant, name) in VARIANTS.iter().enumerate() {
        let (min, max) = ratios[variant]
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "| {} | `{name}` | {:.0} | {:.3} | {:.3} | {:.3} |",
            protocol_name(protocol),
            median(&mut throughput[variant]),
            median(&mut ratios[variant]),
            min,
            max
        );
    }
}
