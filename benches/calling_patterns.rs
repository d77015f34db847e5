//! What attaching a token costs per request in the two ways users drive a tower client:
//!
//! - `long_lived`: one service kept for many requests (`ready().await?.call(req)`), as a task
//!   that owns its client does;
//! - `clone_oneshot`: the service cloned for every request and driven with
//!   `svc.clone().oneshot(req)`, as this crate's examples, axum handlers and tonic's generated
//!   clients (cloned per task) do.
//!
//! Every request is built the way a caller builds it: a full `https` URI parsed from a string
//! per request, an empty body. The token is 90 bytes, like a short JWT. Five variants, each in
//! both patterns:
//!
//! - `no_middleware`: the inner service alone;
//! - `static_header`: tower-http's `AddAuthorization` with a fixed token (the floor);
//! - `auth_layer_retry_off`: `AuthLayer` with a cached token, `retry_unauthorized(false)`;
//! - `auth_layer`: `AuthLayer` with a cached token, default settings (retry on);
//! - `keyed_layer`: `KeyedAuthLayer` keyed by the request's host with `keyed::by_host` (a token
//!   per audience, the key made per request), default settings, its one key's token cached.
//!
//! The inner service answers at once and allocates nothing; each request is polled by hand
//! with a no-op waker on a thread inside a current-thread Tokio runtime.
//!
//! ```text
//! cargo bench --bench calling_patterns                 # criterion, every variant in both patterns
//! CALLING_PATTERNS_LOOP=auth_layer/clone_oneshot:100000 target/release/deps/calling_patterns-*
//!                                                      # n requests, then the time per request
//! scripts/compare-calling-patterns BASE [HEAD]         # instructions and time of two commits, side by side
//! ```

#[path = "../tests/support/noop.rs"]
mod noop;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

use criterion::Criterion;
use http::Request;
use http_body_util::Empty;
use noop::Noop;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::{AuthLayer, StaticToken, keyed::TextKey};
use tower_http::auth::AddAuthorizationLayer;

/// 90 bytes, the size of a short JWT.
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCIsImF1ZCI6ImFwaSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg00";
const URI: &str = "https://api.example.com/v1/items?page=2";
const VARIANTS: [&str; 5] = [
    "no_middleware",
    "static_header",
    "auth_layer_retry_off",
    "auth_layer",
    "keyed_layer",
];
const PATTERNS: [&str; 2] = ["long_lived", "clone_oneshot"];

type Body = Empty<bytes::Bytes>;

#[inline(always)]
fn request() -> Request<Body> {
    Request::get(URI).body(Body::new()).unwrap()
}

/// Polls `fut` once; everything here answers at once.
#[inline(always)]
fn finish<F: Future<Output = Result<T, E>>, T, E: std::fmt::Debug>(fut: F) {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(result) => {
            std::hint::black_box(result.unwrap());
        }
        Poll::Pending => unreachable!("the inner service answers at once"),
    }
}

/// One request through `svc`, kept for the next.
#[inline(always)]
fn long_lived<S>(svc: &mut S)
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    finish(svc.call(request()));
}

/// One request through a clone of `svc`, driven with `oneshot`.
#[inline(always)]
fn clone_oneshot<S>(svc: &S)
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    finish(svc.clone().oneshot(request()));
}

/// Builds the layer whether `build()` returns the layer or a `Result` of it, so that
/// `scripts/compare-calling-patterns` can build this bench against commits of either kind.
trait IntoLayer {
    fn into_layer(self) -> AuthLayer;
}

impl IntoLayer for AuthLayer {
    fn into_layer(self) -> AuthLayer {
        self
    }
}

impl<E: std::fmt::Debug> IntoLayer for Result<AuthLayer, E> {
    fn into_layer(self) -> AuthLayer {
        self.expect("valid settings")
    }
}

fn auth_layer(rt: &tokio::runtime::Runtime, retry: bool) -> tower_bearer::AuthService<Noop> {
    let auth = AuthLayer::builder(StaticToken::new(TOKEN))
        .retry_unauthorized(retry)
        .build()
        .unwrap()
        .into_layer();
    rt.block_on(auth.token()).unwrap();
    auth.layer(Noop)
}

fn keyed_layer(
    rt: &tokio::runtime::Runtime,
) -> tower_bearer::keyed::KeyedAuthService<Noop, TextKey> {
    let auth = tower_bearer::keyed::KeyedAuthLayer::builder(
        tower_bearer::keyed::by_host(),
        |_host: &TextKey| Ok(StaticToken::new(TOKEN)),
    )
    .build()
    .unwrap();
    rt.block_on(auth.token(&TextKey::new("api.example.com")))
        .unwrap();
    auth.layer(Noop)
}

/// Something done with each variant's service.
trait Visit {
    fn visit<S>(&mut self, variant: &'static str, svc: S)
    where
        S: Service<Request<Body>> + Clone,
        S::Error: std::fmt::Debug;
}

fn variants(rt: &tokio::runtime::Runtime, only: Option<&str>, v: &mut impl Visit) {
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    if wanted("no_middleware") {
        v.visit("no_middleware", Noop);
    }
    if wanted("static_header") {
        v.visit(
            "static_header",
            AddAuthorizationLayer::bearer(TOKEN).layer(Noop),
        );
    }
    if wanted("auth_layer_retry_off") {
        v.visit("auth_layer_retry_off", auth_layer(rt, false));
    }
    if wanted("auth_layer") {
        v.visit("auth_layer", auth_layer(rt, true));
    }
    if wanted("keyed_layer") {
        v.visit("keyed_layer", keyed_layer(rt));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Bench<'a>(&'a mut Criterion);

impl Visit for Bench<'_> {
    fn visit<S>(&mut self, variant: &'static str, mut svc: S)
    where
        S: Service<Request<Body>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let mut group = self.0.benchmark_group("calling_patterns");
        group.bench_function(format!("long_lived/{variant}"), |b| {
            b.iter(|| long_lived(&mut svc));
        });
        group.bench_function(format!("clone_oneshot/{variant}"), |b| {
            b.iter(|| clone_oneshot(&svc));
        });
        group.finish();
    }
}

/// `n` requests through one variant in one pattern; prints the time per request.
struct Loop {
    pattern: String,
    n: u64,
}

impl Visit for Loop {
    fn visit<S>(&mut self, variant: &'static str, mut svc: S)
    where
        S: Service<Request<Body>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let n = self.n;
        let started = Instant::now();
        match self.pattern.as_str() {
            "long_lived" => (0..n).for_each(|_| long_lived(&mut svc)),
            "clone_oneshot" => (0..n).for_each(|_| clone_oneshot(&svc)),
            other => panic!("unknown pattern {other}; one of {}", PATTERNS.join(", ")),
        }
        let per_request = started.elapsed().as_secs_f64() * 1e9 / n as f64;
        println!("{variant}/{} {per_request:.2} ns", self.pattern);
    }
}

/// `CALLING_PATTERNS_LOOP=<variant>/<pattern>:<n>`.
fn run_loop(spec: &str) {
    let (what, n) = spec
        .split_once(':')
        .expect("CALLING_PATTERNS_LOOP=<variant>/<pattern>:<n>");
    let (variant, pattern) = what.split_once('/').expect("<variant>/<pattern>");
    assert!(
        VARIANTS.contains(&variant),
        "unknown variant {variant}; one of {}",
        VARIANTS.join(", ")
    );
    let rt = runtime();
    let _guard = rt.enter();
    let mut run = Loop {
        pattern: pattern.to_owned(),
        n: n.parse().expect("a request count"),
    };
    variants(&rt, Some(variant), &mut run);
}

fn main() {
    if let Ok(spec) = std::env::var("CALLING_PATTERNS_LOOP") {
        run_loop(&spec);
        return;
    }
    let rt = runtime();
    let _guard = rt.enter();
    let mut criterion = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args();
    variants(&rt, None, &mut Bench(&mut criterion));
    criterion.final_summary();
}
