//! Per-request cost of attaching a token, around a no-op inner service, with the same request
//! for every variant (`GET https://api.test/items`, empty body, no other headers):
//!
//! - `no_middleware`: the inner service alone;
//! - `add_authorization_static`: tower-http's `AddAuthorization` with a fixed token, nothing to
//!   check or refresh (the floor);
//! - `auth_layer_retry_off`: `AuthLayer` with a cached token, `retry_unauthorized(false)`;
//! - `auth_layer`: `AuthLayer` with a cached token, default settings (retry on);
//! - `std_mutex`: hand-written, a pre-built `HeaderValue` and its expiry `Instant` behind a
//!   `std::sync::Mutex`; `call` locks, checks the expiry against `Instant::now()`, clones the
//!   header value, inserts it and calls the inner service;
//! - `std_rwlock`: the same behind a `std::sync::RwLock` (read lock);
//! - `tokio_rwlock`: the same behind a `tokio::sync::RwLock`. Taking that lock is an `.await`, so
//!   `call` returns a boxed `async move` future that takes the read lock, inserts the header and
//!   calls the inner service (moved into the future with the usual clone + `mem::replace`);
//! - `aliri_tokens`: the peer crate, below.
//!
//! **The peer: `aliri_tokens` 0.3** (`TokenWatcher`). It is the crate a user would pick for
//! OAuth2 tokens cached and refreshed in the background in a tower/reqwest stack: a
//! `TokenWatcher` keeps the current token in a `tokio::sync::watch` channel, which a spawned task
//! updates when the token becomes stale, and its companion `aliri_reqwest::AccessTokenMiddleware`
//! attaches it to every request. That middleware is a `reqwest_middleware` middleware, not a tower
//! service, so the `aliri_tokens` variant is a small tower wrapper doing what its `handle` does
//! per request: the default `HttpsOnly` predicate (the URI's scheme), then
//! `entry(AUTHORIZATION).or_insert_with(..)` with, in there, `TokenWatcher::token()` (a borrow of
//! the watch channel: a read lock), the `tracing::enabled!(TRACE)` check, a `BytesMut` holding
//! `Bearer ` and the token, `HeaderValue::from_maybe_shared` and `set_sensitive(true)`. It checks
//! no expiry on the request path: the background task is trusted to replace the token in time.
//! The source is aliri's own `ConstTokenSource` with a one-hour lifetime, no jitter (`NullJitter`,
//! as in aliri_reqwest's tests) and the default backoff. The crate is built without its default
//! features (no reqwest 0.12, no file cache, no `rand`), none of which is on this path.
//!
//! Two groups, each running every variant:
//!
//! - `hot_path/single_thread/<variant>`: one thread sends requests one after the other;
//! - `hot_path/per_core/<variant>`: one caller per core. `available_parallelism()` threads, each
//!   pinned to its own core (`core_affinity`) and holding its own clone of ONE layered service (so they share one token cache, one header value,
//!   one lock), start together at a `std::sync::Barrier` and each sends the same number of
//!   requests. The time reported is the wall time (first start to last finish) divided by the
//!   requests of one thread: time per request per thread. Without contention it equals the
//!   single-threaded time; shared cache lines show up as more. The same measurement is also
//!   repeated in interleaved rounds (below), which drift between benchmarks cannot skew, and
//!   there also with each thread cloning its service for every request, as
//!   `svc.clone().oneshot(req)` does.
//!
//! Every request is polled by hand with a no-op waker (nothing here is ever pending); the same
//! current-thread Tokio runtime is entered on every thread. A full run then runs the interleaved
//! per-core rounds (below) and ends with a Markdown table of criterion's medians (read back from
//! its `estimates.json` files) and of the rounds.
//!
//! ```text
//! cargo bench --bench hot_path
//! cargo bench --bench hot_path -- --test   # each benchmark once, no table (CI)
//! cargo bench --bench hot_path -- rounds   # no criterion benchmark matches: the rounds alone
//! HOT_PATH_NO_ROUNDS=1 cargo bench --bench hot_path   # criterion alone
//! scripts/instructions                     # instructions per request, under valgrind's callgrind
//! ```
//!
//! With `HOT_PATH_LOOP=<variant>:<n>` set (any variant above), the binary skips criterion and
//! just sends `n` requests through one variant on one thread: that is what `scripts/instructions`
//! counts.

#[path = "../tests/support/noop.rs"]
mod noop;
mod report;

use std::{
    fmt::Write as _,
    future::Future,
    mem,
    path::{Path, PathBuf},
    pin::{Pin, pin},
    sync::{
        Arc, Barrier, Mutex, RwLock,
        atomic::{
            AtomicU64,
            Ordering::{Relaxed, Release},
        },
    },
    task::{Context, Poll, Waker},
    thread,
    time::{Duration, Instant, SystemTime},
};

use aliri_clock::DurationSecs;
use aliri_tokens::{
    TokenWatcher, backoff::ErrorBackoffConfig, jitter::NullJitter, sources::ConstTokenSource,
};
use bytes::{BufMut, BytesMut};
use criterion::{BenchmarkId, Criterion, measurement::WallTime};
use http::{HeaderValue, Request, header::AUTHORIZATION};
use noop::Noop;
use pin_project_lite::pin_project;
use report::thousands;
use tower::{BoxError, Layer, Service};
use tower_bearer::{AuthLayer, StaticToken};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
/// Lifetime of the token in every design that has one: far longer than a run.
const LIFETIME: Duration = Duration::from_secs(3600);
/// The benchmark group; the two sub-groups are the first part of each benchmark's id.
const GROUP: &str = "hot_path";
const SINGLE: &str = "single_thread";
const PER_CORE: &str = "per_core";
/// Every variant, in the order of the groups and of the summary table.
const VARIANTS: [&str; 8] = [
    "no_middleware",
    "add_authorization_static",
    "auth_layer_retry_off",
    "auth_layer",
    "std_mutex",
    "std_rwlock",
    "tokio_rwlock",
    "aliri_tokens",
];
/// The variant the ratios are taken against.
const FLOOR: &str = "add_authorization_static";

type Req = Request<&'static str>;

fn request() -> Req {
    Request::get("https://api.test/items").body("").unwrap()
}

/// One request: ready, call, poll the future to completion.
#[inline(always)]
fn one<S>(svc: &mut S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let mut fut = pin!(svc.call(request()));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => {
            std::hint::black_box(r.unwrap());
        }
        Poll::Pending => unreachable!("no-op inner service"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The variants.

/// A layered service with a cached token.
fn auth_layer(rt: &tokio::runtime::Runtime, retry: bool) -> tower_bearer::AuthService<Noop> {
    let auth = AuthLayer::builder(StaticToken::new(TOKEN))
        .retry_unauthorized(retry)
        .build()
        .unwrap();
    rt.block_on(auth.token()).unwrap();
    auth.layer(Noop)
}

/// What the hand-written designs keep: the header value, built once per token, and its expiry.
struct Cached {
    header: HeaderValue,
    expires: Instant,
}

impl Cached {
    fn new() -> Self {
        let mut header = HeaderValue::try_from(format!("Bearer {TOKEN}")).unwrap();
        header.set_sensitive(true);
        Cached {
            header,
            expires: Instant::now() + LIFETIME,
        }
    }
}

/// The error a hand-written design answers with when it finds the token expired (a real one
/// would fetch a new token there; here the token outlives the run).
fn expired() -> BoxError {
    "token expired".into()
}

pin_project! {
    /// The response future of the `std` lock designs: the inner future, or the expiry error.
    #[project = AttachedProj]
    enum Attached<F> {
        Sent { #[pin] inner: F },
        Expired,
    }
}

impl<F, T, E> Future for Attached<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttachedProj::Sent { inner } => inner.poll(cx).map_err(Into::into),
            AttachedProj::Expired => Poll::Ready(Err(expired())),
        }
    }
}

/// The `std` locks the hand-written designs put the header behind.
trait Lock: Send + Sync {
    /// The header, if the token has not expired: lock (or read-lock), compare the expiry with
    /// `Instant::now()`, clone the header, unlock.
    fn header(&self) -> Option<HeaderValue>;
}

impl Lock for Mutex<Cached> {
    fn header(&self) -> Option<HeaderValue> {
        let cached = self.lock().unwrap();
        (Instant::now() < cached.expires).then(|| cached.header.clone())
    }
}

impl Lock for RwLock<Cached> {
    fn header(&self) -> Option<HeaderValue> {
        let cached = self.read().unwrap();
        (Instant::now() < cached.expires).then(|| cached.header.clone())
    }
}

/// Hand-written: the header behind a `std::sync::Mutex` or `std::sync::RwLock` (`L`).
struct LockedAuth<L, S> {
    cache: Arc<L>,
    inner: S,
}

impl<L, S: Clone> Clone for LockedAuth<L, S> {
    fn clone(&self) -> Self {
        LockedAuth {
            cache: Arc::clone(&self.cache),
            inner: self.inner.clone(),
        }
    }
}

impl<L, S, B> Service<Request<B>> for LockedAuth<L, S>
where
    L: Lock,
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Attached<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(header) = self.cache.header() else {
            return Attached::Expired;
        };
        req.headers_mut().insert(AUTHORIZATION, header);
        Attached::Sent {
            inner: self.inner.call(req),
        }
    }
}

/// Hand-written: the header behind a `tokio::sync::RwLock`, read in a boxed `async` block.
#[derive(Clone)]
struct TokioRwLockAuth<S> {
    cache: Arc<tokio::sync::RwLock<Cached>>,
    inner: S,
}

impl<S, B> Service<Request<B>> for TokioRwLockAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let cache = Arc::clone(&self.cache);
        // The readied service goes into the future; a clone stays behind.
        let clone = self.inner.clone();
        let mut inner = mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let header = {
                let cached = cache.read().await;
                if Instant::now() >= cached.expires {
                    return Err(expired());
                }
                cached.header.clone()
            };
            req.headers_mut().insert(AUTHORIZATION, header);
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// The peer: what `aliri_reqwest::AccessTokenMiddleware` does per request, as a tower service.
#[derive(Clone)]
struct AliriAuth<S> {
    token_watcher: TokenWatcher,
    inner: S,
}

impl<S> AliriAuth<S> {
    /// `AccessTokenMiddleware::get_token_from_source`, as aliri_reqwest writes it.
    fn get_token_from_source(&self) -> HeaderValue {
        let token = self.token_watcher.token();

        if tracing::enabled!(tracing::Level::TRACE) {
            use aliri_clock::Clock as _;
            let now = aliri_clock::System.now();

            tracing::trace!(
                token.status = ?token.token_status_at(now),
                token.lifetime = token.lifetime().0,
                token.issued = token.issued().0,
                token.stale = token.stale().0,
                token.until_stale = token.until_stale_at(now).0,
                token.expiry = token.expiry().0,
                token.until_expired = token.until_expired_at(now).0,
                "obtained access token"
            );
        }

        let mut header_value = BytesMut::with_capacity(token.access_token().as_str().len() + 7);
        header_value.put_slice(b"Bearer ");
        header_value.put_slice(token.access_token().as_str().as_bytes());
        let mut value =
            HeaderValue::from_maybe_shared(header_value).expect("only valid header bytes");
        value.set_sensitive(true);
        value
    }
}

impl<S, B> Service<Request<B>> for AliriAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        // `HttpsOnly`, the middleware's default predicate.
        if req.uri().scheme_str() == Some("https") {
            req.headers_mut()
                .entry(AUTHORIZATION)
                .or_insert_with(|| self.get_token_from_source());
        }
        self.inner.call(req)
    }
}

fn aliri(rt: &tokio::runtime::Runtime) -> AliriAuth<Noop> {
    let source =
        ConstTokenSource::new(TOKEN).with_token_valid_for(DurationSecs(LIFETIME.as_secs()));
    let token_watcher = rt
        .block_on(TokenWatcher::spawn_from_token_source(
            source,
            NullJitter,
            ErrorBackoffConfig::default(),
        ))
        .unwrap();
    AliriAuth {
        token_watcher,
        inner: Noop,
    }
}

/// Something done with each variant's service: benchmark it, or loop over it.
trait Visit {
    fn visit<S, F>(&mut self, variant: &'static str, make: F)
    where
        F: FnOnce() -> S,
        S: Service<Req> + Clone + Send + 'static,
        S::Error: std::fmt::Debug;
}

/// Every variant, in [`VARIANTS`] order; a service is only built when the visitor asks for it.
fn variants(rt: &tokio::runtime::Runtime, v: &mut impl Visit) {
    v.visit("no_middleware", || Noop);
    v.visit("add_authorization_static", || {
        AddAuthorizationLayer::bearer(TOKEN).layer(Noop)
    });
    v.visit("auth_layer_retry_off", || auth_layer(rt, false));
    v.visit("auth_layer", || auth_layer(rt, true));
    v.visit("std_mutex", || LockedAuth {
        cache: Arc::new(Mutex::new(Cached::new())),
        inner: Noop,
    });
    v.visit("std_rwlock", || LockedAuth {
        cache: Arc::new(RwLock::new(Cached::new())),
        inner: Noop,
    });
    v.visit("tokio_rwlock", || TokioRwLockAuth {
        cache: Arc::new(tokio::sync::RwLock::new(Cached::new())),
        inner: Noop,
    });
    v.visit("aliri_tokens", || aliri(rt));
}

// ---------------------------------------------------------------------------------------------
// The benchmarks.

struct SingleThread<'a, 'c> {
    group: &'a mut criterion::BenchmarkGroup<'c, WallTime>,
}

impl Visit for SingleThread<'_, '_> {
    fn visit<S, F>(&mut self, variant: &'static str, make: F)
    where
        F: FnOnce() -> S,
        S: Service<Req> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
    {
        let mut svc = make();
        self.group
            .bench_function(BenchmarkId::new(SINGLE, variant), |b| {
                b.iter(|| one(&mut svc));
            });
    }
}

/// `threads` threads, each pinned to its own core with its own clone of `shared`, start
/// together at a barrier and send `iters` requests each (through that clone, or through a
/// clone of it made for each request): the time from the first start to the last finish.
fn per_core_run<S>(
    shared: &S,
    threads: usize,
    runtime: &tokio::runtime::Handle,
    iters: u64,
    clone_per_request: bool,
) -> Duration
where
    S: Service<Req> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let barrier = Barrier::new(threads);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let callers: Vec<_> = (0..threads)
            .map(|i| {
                let mut svc = shared.clone();
                let barrier = &barrier;
                let core = cores.get(i).copied();
                scope.spawn(move || {
                    // One caller per core, for the whole run.
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let _runtime = runtime.enter();
                    barrier.wait();
                    let start = Instant::now();
                    if clone_per_request {
                        // As `svc.clone().oneshot(req)` does: ready, call, drop.
                        for _ in 0..iters {
                            one(&mut svc.clone());
                        }
                    } else {
                        for _ in 0..iters {
                            one(&mut svc);
                        }
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| caller.join().expect("caller thread panicked"))
            .collect()
    });
    let first = spans.iter().map(|span| span.0).min();
    let last = spans.iter().map(|span| span.1).max();
    last.zip(first)
        .map_or(Duration::ZERO, |(last, first)| last - first)
}

// ---------------------------------------------------------------------------------------------
// Interleaved rounds of the per-core measurement.
//
// Criterion measures one benchmark after another, seconds apart. With one caller per core the
// result depends on how the machine's cores share a cache line, which on a shared virtual
// machine changes from minute to minute (the floor has taken 200 ns per core in some runs and
// 320-490 ns in others). So
// the per-core comparison is also made in rounds: each round runs every variant once, one
// after the other (starting at a different variant each round), and each variant's time is
// divided by the floor's time of the same round. The median of those ratios over the rounds
// is the figure that drift cannot move.

/// Rounds in a full run, and requests per thread in each variant's turn.
const ROUNDS: usize = 15;
const ROUND_REQUESTS: u64 = 100_000;

/// One variant's per-core run with a given number of requests per thread, ready to repeat.
type PerCoreRun<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Each variant's per-core run, built once: criterion's per-core group and the interleaved
/// rounds both repeat them.
struct PerCoreRuns<'a> {
    threads: usize,
    runtime: &'a tokio::runtime::Handle,
    /// Each thread's service used for every request (`false`), cloned for each one (`true`).
    patterns: &'static [bool],
    runs: Vec<PerCore<'a>>,
}

/// One variant's per-core run in one calling pattern.
struct PerCore<'a> {
    variant: &'static str,
    clone_per_request: bool,
    run: PerCoreRun<'a>,
}

impl<'a> PerCoreRuns<'a> {
    /// Every variant's run, in [`VARIANTS`] order, one caller per core, in each pattern.
    fn new(rt: &'a tokio::runtime::Runtime, patterns: &'static [bool]) -> Self {
        let mut all = PerCoreRuns {
            threads: cores(),
            runtime: rt.handle(),
            patterns,
            runs: Vec::new(),
        };
        variants(rt, &mut all);
        all
    }
}

impl<'a> Visit for PerCoreRuns<'a> {
    fn visit<S, F>(&mut self, variant: &'static str, make: F)
    where
        F: FnOnce() -> S,
        S: Service<Req> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
    {
        // One service; every thread gets a clone of it, so all share its token, header, lock.
        let shared = make();
        let (threads, runtime) = (self.threads, self.runtime);
        for &clone_per_request in self.patterns {
            let shared = shared.clone();
            self.runs.push(PerCore {
                variant,
                clone_per_request,
                run: Box::new(move |iters| {
                    per_core_run(&shared, threads, runtime, iters, clone_per_request)
                }),
            });
        }
    }
}

/// What one increment and one decrement of an atomic count cost each pinned thread, in
/// nanoseconds: on a count all threads share, and on a count of its own (its own cache line).
/// The difference is what a reference count shared by every core (the floor's header) costs
/// per request at most on this machine now; it varies with where the cores sit (two hardware
/// threads of one core share their caches and pass a line almost for free).
struct LineCost {
    shared_ns: f64,
    own_ns: f64,
}

fn line_cost(threads: usize) -> LineCost {
    const PAIRS: u64 = 2_000_000;
    #[repr(align(128))]
    struct Padded(AtomicU64);
    let shared = AtomicU64::new(0);
    let own: Vec<Padded> = (0..threads).map(|_| Padded(AtomicU64::new(0))).collect();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // Thread `i` works on `counts[i]`.
    let run = |counts: Vec<&AtomicU64>| -> f64 {
        let barrier = Barrier::new(threads);
        let start = Instant::now();
        thread::scope(|scope| {
            for (i, count) in counts.into_iter().enumerate() {
                let (barrier, core) = (&barrier, cores.get(i).copied());
                scope.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    barrier.wait();
                    for _ in 0..PAIRS {
                        count.fetch_add(1, Relaxed);
                        count.fetch_sub(1, Release);
                    }
                });
            }
        });
        start.elapsed().as_nanos() as f64 / PAIRS as f64
    };
    LineCost {
        shared_ns: run(vec![&shared; threads]),
        own_ns: run(own.iter().map(|padded| &padded.0).collect()),
    }
}

/// Per variant, in [`VARIANTS`] order: the median time per request per thread over the rounds,
/// and the median, lowest and highest of its per-round ratios to the floor.
struct Interleaved {
    variant: &'static str,
    clone_per_request: bool,
    median_ns: f64,
    ratio: (f64, f64, f64),
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The rounds, with the cost of a shared cache line measured before and after them.
struct RoundsReport {
    rows: Vec<Interleaved>,
    line: (LineCost, LineCost),
}

fn interleaved(rounds: usize, requests: u64) -> RoundsReport {
    let before = line_cost(cores());
    let rows = interleaved_rows(rounds, requests);
    RoundsReport {
        rows,
        line: (before, line_cost(cores())),
    }
}

fn interleaved_rows(rounds: usize, requests: u64) -> Vec<Interleaved> {
    let rt = runtime();
    let _guard = rt.enter();
    let mut all = PerCoreRuns::new(&rt, &[false, true]);
    let n = all.runs.len();
    // The floor in the same calling pattern as run `i`.
    let floor = |i: usize| {
        let pattern = all.runs[i].clone_per_request;
        all.runs
            .iter()
            .position(|run| run.variant == FLOOR && run.clone_per_request == pattern)
            .expect("the floor is a variant")
    };
    let floors: Vec<usize> = (0..n).map(floor).collect();
    // One warm-up turn each: every service makes its own copies and settles.
    for per_core in &mut all.runs {
        (per_core.run)(requests / 10 + 1);
    }
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let elapsed = (all.runs[i].run)(requests);
            times[i].push(elapsed.as_nanos() as f64 / requests as f64);
        }
    }
    (0..n)
        .map(|i| {
            let mut ratios: Vec<f64> = (0..rounds)
                .map(|r| times[i][r] / times[floors[i]][r])
                .collect();
            let ratio = median(&mut ratios);
            let (low, high) = (ratios[0], ratios[rounds - 1]);
            Interleaved {
                variant: all.runs[i].variant,
                clone_per_request: all.runs[i].clone_per_request,
                median_ns: median(&mut times[i]),
                ratio: (ratio, low, high),
            }
        })
        .collect()
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

fn hot_path(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut group = c.benchmark_group(GROUP);
    variants(&rt, &mut SingleThread { group: &mut group });
    for per_core in &mut PerCoreRuns::new(&rt, &[false]).runs {
        group.bench_function(BenchmarkId::new(PER_CORE, per_core.variant), |b| {
            b.iter_custom(&mut *per_core.run);
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// `HOT_PATH_LOOP=<variant>:<n>`: `n` requests through one variant, nothing else.

struct Loop {
    variant: String,
    n: u64,
    found: bool,
}

impl Visit for Loop {
    fn visit<S, F>(&mut self, variant: &'static str, make: F)
    where
        F: FnOnce() -> S,
        S: Service<Req> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
    {
        if variant == self.variant {
            let mut svc = make();
            (0..self.n).for_each(|_| one(&mut svc));
            self.found = true;
        }
    }
}

fn run_loop(spec: &str) {
    let (variant, n) = spec.split_once(':').expect("HOT_PATH_LOOP=<variant>:<n>");
    let n: u64 = n.parse().expect("a request count");
    let rt = runtime();
    let _guard = rt.enter();
    let mut run = Loop {
        variant: variant.to_owned(),
        n,
        found: false,
    };
    variants(&rt, &mut run);
    assert!(
        run.found,
        "unknown variant {variant}; one of {}",
        VARIANTS.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// The summary table.

/// Where criterion keeps its results; passed to it explicitly so that the table reads the same
/// place: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else `criterion` in the target
/// directory this binary was built in (cargo marks it with `CACHEDIR.TAG`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(|target| target.join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median of one benchmark in nanoseconds, if this run measured it (an older file is ignored).
fn median_ns(dir: &Path, sub: &str, variant: &str, since: SystemTime) -> Option<f64> {
    let path = dir
        .join(GROUP)
        .join(sub)
        .join(variant)
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

fn ns(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ns| format!("{ns:.1} ns"))
}

fn ratio(value: Option<f64>, floor: Option<f64>) -> String {
    match (value, floor) {
        (Some(value), Some(floor)) if floor > 0.0 => format!("{:.2}", value / floor),
        _ => "-".to_owned(),
    }
}

fn summary(dir: &Path, since: SystemTime, report: Option<&RoundsReport>) {
    let rounds: &[Interleaved] = report.map_or(&[], |r| &r.rows);
    let rows: Vec<(&str, Option<f64>, Option<f64>)> = VARIANTS
        .iter()
        .map(|&variant| {
            (
                variant,
                median_ns(dir, SINGLE, variant, since),
                median_ns(dir, PER_CORE, variant, since),
            )
        })
        .collect();
    if rounds.is_empty() && rows.iter().all(|row| row.1.is_none() && row.2.is_none()) {
        println!(
            "\nhot_path: no estimates from this run under {}: no summary table",
            dir.display()
        );
        return;
    }
    let floor = rows
        .iter()
        .find(|row| row.0 == FLOOR)
        .map_or((None, None), |row| (row.1, row.2));
    let threads = cores();
    let mut out = String::from("\n## Hot path: median time per request\n\n");
    let _ = writeln!(
        out,
        "machine: {threads} cores (available parallelism){}; per-core group: {threads} threads, \
         time per request per thread; ratios to `{FLOOR}` (the floor); criterion medians from {}\n",
        cpu_model().map_or_else(String::new, |model| format!(", {model}")),
        dir.display(),
    );
    if let Some(report) = report {
        let _ = writeln!(
            out,
            "interleaved rounds: {ROUNDS} rounds of every variant in turn, {} requests per \
             thread each; per-round ratio to the floor, median (lowest-highest)\n",
            thousands(ROUND_REQUESTS),
        );
        let (before, after) = &report.line;
        let _ = writeln!(
            out,
            "one cache line written by every core, per increment-decrement pair per thread: \
             {:.1} ns shared vs {:.1} ns on its own line before the rounds, {:.1} ns vs {:.1} ns \
             after\n",
            before.shared_ns, before.own_ns, after.shared_ns, after.own_ns,
        );
    }
    out.push_str(
        "| variant | single-threaded | ratio to the floor | per core | ratio to the floor (per core) \
         | per core, interleaved rounds | ratio to the floor, same round \
         | per core, a clone per request, interleaved | ratio to the floor, same round |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let in_rounds = |variant: &str, clone_per_request: bool| {
        let round = rounds
            .iter()
            .find(|r| r.variant == variant && r.clone_per_request == clone_per_request);
        (
            ns(round.map(|r| r.median_ns)),
            round.map_or_else(
                || "-".to_owned(),
                |r| format!("{:.2} ({:.2}-{:.2})", r.ratio.0, r.ratio.1, r.ratio.2),
            ),
        )
    };
    for (variant, single, per_core) in &rows {
        let (kept, kept_ratio) = in_rounds(variant, false);
        let (cloned, cloned_ratio) = in_rounds(variant, true);
        let _ = writeln!(
            out,
            "| `{variant}` | {} | {} | {} | {} | {kept} | {kept_ratio} | {cloned} | {cloned_ratio} |",
            ns(*single),
            ratio(*single, floor.0),
            ns(*per_core),
            ratio(*per_core, floor.1),
        );
    }
    print!("{out}");
}

fn main() {
    if let Ok(spec) = std::env::var("HOT_PATH_LOOP") {
        run_loop(&spec);
        return;
    }
    let since = SystemTime::now();
    let dir = criterion_dir();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .output_directory(&dir)
        .configure_from_args();
    hot_path(&mut criterion);
    criterion.final_summary();
    // Criterion's `--test` runs each benchmark once and `--list` only lists them: no timings.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--list") {
        return;
    }
    if args
        .iter()
        .any(|arg| arg == "--test" || arg.starts_with("--profile-time"))
    {
        // Run the interleaved rounds' code once, untimed, so that it cannot rot.
        let report = interleaved(1, 100);
        assert_eq!(report.rows.len(), 2 * VARIANTS.len());
        println!("\nhot_path: no timings in this mode: no summary table");
        return;
    }
    let rounds = std::env::var_os("HOT_PATH_NO_ROUNDS")
        .is_none()
        .then(|| interleaved(ROUNDS, ROUND_REQUESTS));
    summary(&dir, since, rounds.as_ref());
}
