//! What happens when many callers want a token at the same moment: a benchmark with a printed
//! Markdown report (not criterion).
//!
//! ```text
//! cargo bench --bench concurrency                    # N = 1,000, 10,000, 100,000
//! cargo bench --bench concurrency -- --test          # N = 1,000 once, quick (CI)
//! cargo bench --bench concurrency -- --callers 5000,50000 --threads 4
//! cargo bench --bench concurrency -- --scenarios 1,5 --callers 100000   # some scenarios only
//! CONCURRENCY_CALLERS=1000,20000 CONCURRENCY_THREADS=2 cargo bench --bench concurrency
//! ```
//!
//! The token source is in-process: `source::from_fn` around a 5 ms `tokio::time::sleep` (a token
//! endpoint's latency), counting its fetches with an atomic. The runtime is a multi-threaded
//! Tokio runtime on real time. For every N:
//!
//! 1. **cold start**: N callers call `auth.token()` at once on an empty cache;
//! 2. **at expiry**: the same after the token expired, with `refresh_ahead(false)`;
//! 3. **401 storm**: N requests in flight through `ServiceBuilder::new().layer(auth).service(api)`
//!    all carry the token that the API then revokes; each gets a 401 and is resent once;
//! 4. **across the refresh target, refresh-ahead on**: N requests spread evenly over one second
//!    across the token's refresh target (its expiry less the margin), with the default
//!    `refresh_ahead(true)`: nobody should wait;
//! 5. **woken by one fetch**: N callers all parked on one fetch (the bench waits until the
//!    layer counts N waiters), which then completes at once; the latency is from the fetch's
//!    completion to each caller's answer: the wake-up alone, without the endpoint's latency.
//!    Compared with N callers queued on the `tokio::sync::Mutex` that the naive design's fetch
//!    holds.
//!
//! Scenarios 1 and 2 also run two hand-written designs for comparison: a token behind a
//! `tokio::sync::Mutex` (locked by every caller, which fetches when it finds none: the common
//! naive single-flight), and the same without the lock (check, fetch if missing: a stampede).
//!
//! They also run the peer crate of the hot-path benchmark, `aliri_tokens` 0.3 (`TokenWatcher`),
//! with the same 5 ms endpoint counting its fetches (an `AsyncTokenSource` issuing `tok-1`,
//! `tok-2`, ..., no jitter, default backoff). Its design differs: a watcher fetches its first
//! token when it is spawned, then a background task replaces the token when it becomes stale,
//! on its own schedule; a caller only ever reads the current token and never triggers a fetch.
//!
//! - cold start: the callers share a `tokio::sync::OnceCell<TokenWatcher>`; the first one to
//!   get there spawns the watcher (its first fetch), the others wait on the cell;
//! - at expiry: aliri's lifetimes and clock are whole seconds, so its first token lives 2 s
//!   (not 20 ms); the callers go at once when aliri's own clock says that token expired, and each
//!   records whether the token it got was past its `expiry()` (and whether aliri's
//!   `token_status()` said so: it says `Fresh` until the stale point). Two rows: aliri's
//!   default `TokenLifetimeConfig` (stale after 75 % of the lifetime, but never before 30 s:
//!   for a token shorter than 30 s the stale point falls after its expiry), and stale at 50 %
//!   (`TokenLifetimeConfig::new(0.5, 0 s)`), which refreshes before expiry. What is reported is
//!   what it did: fetches after the first token, when the refresh started, caller latency, and
//!   how many callers got an expired token.
//!
//! Each `AuthLayer` row must show exactly one token fetch (PASS/FAIL); the process exits with
//! status 1 if any row fails. The comparison rows are reported, not judged. Caller latency is
//! measured with `std::time::Instant` around each call; p50/p99 are nearest-rank percentiles of
//! the sorted durations.

mod report;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    fmt::{self, Write as _},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use aliri_clock::{Clock as _, DurationSecs, UnixTime};
use aliri_tokens::{
    AccessToken, IdToken, TokenLifetimeConfig, TokenStatus, TokenWatcher, TokenWithLifetime,
    backoff::ErrorBackoffConfig, jitter::NullJitter, sources::AsyncTokenSource,
};
use http::{Request, Response, StatusCode, header};
use report::thousands;
use tokio::sync::{Barrier, OnceCell, Semaphore, watch};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, Token, TokenSource, source::from_fn};

/// Latency of the in-process token endpoint.
const FETCH_LATENCY: Duration = Duration::from_millis(5);
/// Lifetime of every token but the first one a scenario starts with.
const LONG: Duration = Duration::from_secs(3600);
/// Lifetime of the first token in scenario 2 (sent until 18 ms: its expiry less a tenth).
const SHORT: Duration = Duration::from_millis(20);
/// Lifetime of the first token in scenario 4: its refresh target at 1 s (the margin is clamped
/// to half), refreshed in the background from 0.8-0.9 s, sent until 1.8 s.
const STEADY_FIRST: Duration = Duration::from_secs(2);
/// Scenario 4: traffic starts this long after the first token was fetched ...
const STEADY_FROM: Duration = Duration::from_millis(300);
/// ... and is spread evenly over this long, so it crosses the token's refresh target at 1.0 s,
/// where it should have been replaced.
const STEADY_SPAN: Duration = Duration::from_secs(1);
/// Lifetime of aliri's first token in scenario 2: its lifetimes and its clock are whole seconds.
const ALIRI_SHORT: DurationSecs = DurationSecs(2);
/// Longest any wait inside a scenario may take before it is reported as a failure.
const DEADLINE: Duration = Duration::from_secs(60);
const URL: &str = "https://api.test/items";

// ---------------------------------------------------------------------------------------------
// Heap accounting, for the bytes each waiting caller costs.

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[allow(clippy::cast_possible_wrap)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Settings.

struct Settings {
    callers: Vec<usize>,
    threads: usize,
    cores: usize,
    test: bool,
    /// Which scenarios to run (1 to 5, and 6 for the memory line); all by default.
    scenarios: Vec<u8>,
}

fn settings() -> Settings {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut test = false;
    let mut callers = std::env::var("CONCURRENCY_CALLERS").ok();
    let mut threads = std::env::var("CONCURRENCY_THREADS").ok();
    let mut scenarios = None::<String>;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        match name.as_str() {
            "--test" => test = true,
            "--callers" | "-n" => callers = inline.or_else(|| args.next()),
            "--threads" => threads = inline.or_else(|| args.next()),
            "--scenarios" => scenarios = inline.or_else(|| args.next()),
            "--help" | "-h" => {
                println!(
                    "concurrency [--test] [--callers N[,N...]] [--threads T] [--scenarios S[,S...]]\n\
                     scenarios: 1 cold start, 2 at expiry, 3 401 storm, 4 across the refresh target, \
                     5 woken by one fetch, 6 memory per waiter\n\
                     env: CONCURRENCY_CALLERS, CONCURRENCY_THREADS"
                );
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench`; a name filter may follow. Neither means anything here.
            _ => {}
        }
    }
    let callers = if test {
        vec![1_000]
    } else {
        callers.map_or_else(
            || vec![1_000, 10_000, 100_000],
            |list| {
                list.split(',')
                    .map(|n| n.trim().replace('_', ""))
                    .map(|n| {
                        n.parse()
                            .expect("--callers: a comma-separated list of numbers")
                    })
                    .collect()
            },
        )
    };
    let threads = threads.map_or(cores, |t| t.parse().expect("--threads: a number"));
    let scenarios = scenarios.map_or_else(
        || (1..=6).collect(),
        |list| {
            list.split(',')
                .map(|s| s.trim().parse().expect("--scenarios: numbers from 1 to 6"))
                .collect()
        },
    );
    Settings {
        callers,
        threads: threads.max(1),
        cores,
        test,
        scenarios,
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

/// Nearest-rank percentiles of a set of caller latencies.
#[derive(Clone, Copy, Default)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
        Latency {
            p50: rank(50),
            p99: rank(99),
            max: samples[samples.len() - 1],
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Check {
    Pass,
    Fail,
    /// A comparison design: reported, not judged.
    Info,
}

struct Row {
    callers: usize,
    design: &'static str,
    fetches: u64,
    check: Check,
    waited: Option<u64>,
    latency: Latency,
    wall: Duration,
    notes: String,
}

struct Dur(Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let secs = self.0.as_secs_f64();
        if nanos < 1_000 {
            write!(f, "{nanos} ns")
        } else if nanos < 1_000_000 {
            write!(f, "{:.1} µs", secs * 1e6)
        } else if nanos < 1_000_000_000 {
            write!(f, "{:.2} ms", secs * 1e3)
        } else {
            write!(f, "{secs:.2} s")
        }
    }
}

fn print_table(title: &str, rows: &[Row]) {
    let mut out = format!("\n### {title}\n\n");
    out.push_str("| callers | design | token fetches | check | callers that waited | p50 | p99 | max | wall | notes |\n");
    out.push_str("|---:|---|---:|---|---:|---:|---:|---:|---:|---|\n");
    for row in rows {
        let check = match row.check {
            Check::Pass => "PASS",
            Check::Fail => "**FAIL**",
            Check::Info => "-",
        };
        let waited = row.waited.map_or_else(|| "-".to_owned(), thousands);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(row.callers as u128),
            row.design,
            thousands(row.fetches),
            check,
            waited,
            Dur(row.latency.p50),
            Dur(row.latency.p99),
            Dur(row.latency.max),
            Dur(row.wall),
            row.notes,
        );
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------------
// The token source and the layer.

/// A 5 ms token endpoint issuing `tok-1`, `tok-2`, ...: the first valid for `first`, the others
/// for an hour (so a scenario's measurement never runs into a second expiry). Fetches wait for
/// a permit of `gate` when there is one.
fn counted_source(
    first: Duration,
    gate: Option<Arc<Semaphore>>,
) -> (impl TokenSource, Arc<AtomicU64>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&fetches);
    let source = from_fn(move || {
        let counter = Arc::clone(&counter);
        let gate = gate.clone();
        async move {
            let n = counter.fetch_add(1, Relaxed) + 1;
            if let Some(gate) = gate {
                gate.acquire().await.expect("gate closed").forget();
            }
            tokio::time::sleep(FETCH_LATENCY).await;
            let lifetime = if n == 1 { first } else { LONG };
            Ok(Token::new(format!("tok-{n}")).with_expires_in(lifetime))
        }
    });
    (source, fetches)
}

fn request() -> Request<String> {
    Request::get(URL)
        .body(String::new())
        .expect("valid request")
}

/// Polls `done` every millisecond until it holds; `false` if it did not within [`DEADLINE`].
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// N callers at once.

struct Storm {
    latencies: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

/// Spawns `n` callers, runs `prepare` once they are all spawned, then releases them together
/// through a barrier. Each caller times its own `call`.
async fn storm<F, Fut>(n: usize, call: F, prepare: impl Future<Output = ()>) -> Storm
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let call = Arc::clone(&call);
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let ok = call().await;
            (start, Instant::now(), ok)
        }));
    }
    prepare.await;
    // Every design's callers go just after a tick of Tokio's timer (one a millisecond), so that
    // the endpoint's 5 ms sleep, and so the fetch, rounds up alike for every design.
    tokio::time::sleep(Duration::from_millis(1)).await;
    barrier.wait().await;
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    // The first caller to start, not this task's wake-up, marks the release.
    let mut released = None::<Instant>;
    let mut last = None::<Instant>;
    for handle in handles {
        let (start, end, ok) = handle.await.expect("caller panicked");
        latencies.push(end - start);
        errors += usize::from(!ok);
        released = Some(released.map_or(start, |r| r.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    Storm {
        latencies,
        errors,
        wall: match (released, last) {
            (Some(released), Some(last)) => last - released,
            _ => Duration::ZERO,
        },
    }
}

fn errors_note(errors: usize) -> String {
    if errors == 0 {
        String::new()
    } else {
        format!("{} callers failed", thousands(errors as u128))
    }
}

/// Scenarios 1 and 2 through `AuthLayer::token()`.
async fn layer_storm(n: usize, expired: bool) -> Row {
    let first = if expired { SHORT } else { LONG };
    let (source, fetches) = counted_source(first, None);
    let auth = AuthLayer::builder(source)
        .refresh_ahead(false)
        .build()
        .unwrap();
    let mut prepared = true;
    if expired {
        auth.token().await.expect("first token");
    }
    let before = auth.stats();
    let fetches_before = fetches.load(Relaxed);
    let caller = auth.clone();
    let watcher = auth.clone();
    let result = storm(
        n,
        move || {
            // `token()`'s future does not borrow `caller`, but its type still names the borrow
            // (edition 2024 captures), so the call goes inside the returned future.
            let auth = caller.clone();
            async move { auth.token().await.is_ok() }
        },
        async {
            if expired {
                // Release the callers only once the first token is no longer used.
                prepared = wait_until(|| {
                    watcher
                        .stats()
                        .token_usable_for
                        .is_none_or(|left| left.is_zero())
                })
                .await;
            }
        },
    )
    .await;
    let after = auth.stats();
    let fetched = fetches.load(Relaxed) - fetches_before;
    let ok =
        prepared && fetched == 1 && result.errors == 0 && after.fetches == fetched + before.fetches;
    let mut notes = errors_note(result.errors);
    if !prepared {
        notes.push_str("first token never expired");
    }
    Row {
        callers: n,
        design: "`AuthLayer`",
        fetches: fetched,
        check: if ok { Check::Pass } else { Check::Fail },
        waited: Some(after.waiters - before.waiters),
        latency: Latency::of(result.latencies),
        wall: result.wall,
        notes,
    }
}

// ---------------------------------------------------------------------------------------------
// The hand-written designs.

async fn naive_fetch(fetches: &AtomicU64) -> (String, Instant) {
    let n = fetches.fetch_add(1, Relaxed) + 1;
    tokio::time::sleep(FETCH_LATENCY).await;
    (format!("tok-{n}"), Instant::now() + LONG)
}

/// The common naive single-flight: every caller locks, and fetches under the lock if the token
/// is missing or expired.
#[derive(Default)]
struct MutexCache {
    slot: tokio::sync::Mutex<Option<(String, Instant)>>,
    fetches: AtomicU64,
}

impl MutexCache {
    async fn token(&self) -> String {
        let mut slot = self.slot.lock().await;
        if let Some((token, expires)) = &*slot {
            if Instant::now() < *expires {
                return token.clone();
            }
        }
        let (token, expires) = naive_fetch(&self.fetches).await;
        *slot = Some((token.clone(), expires));
        token
    }
}

/// No lock across the fetch: check, fetch if missing or expired. A stampede.
#[derive(Default)]
struct StampedeCache {
    slot: RwLock<Option<(String, Instant)>>,
    fetches: AtomicU64,
}

impl StampedeCache {
    async fn token(&self) -> String {
        if let Some((token, expires)) = &*self.slot.read().expect("not poisoned") {
            if Instant::now() < *expires {
                return token.clone();
            }
        }
        let (token, expires) = naive_fetch(&self.fetches).await;
        *self.slot.write().expect("not poisoned") = Some((token.clone(), expires));
        token
    }
}

/// An expired token, for scenario 2.
fn expired_slot() -> Option<(String, Instant)> {
    Some(("tok-0".to_owned(), Instant::now()))
}

async fn mutex_storm(n: usize, expired: bool) -> Row {
    let cache = Arc::new(MutexCache::default());
    if expired {
        *cache.slot.lock().await = expired_slot();
    }
    let caller = Arc::clone(&cache);
    let result = storm(
        n,
        move || {
            let cache = Arc::clone(&caller);
            async move { !cache.token().await.is_empty() }
        },
        async {},
    )
    .await;
    Row {
        callers: n,
        design: "`tokio::sync::Mutex`",
        fetches: cache.fetches.load(Relaxed),
        check: Check::Info,
        waited: None,
        latency: Latency::of(result.latencies),
        wall: result.wall,
        notes: "every caller takes the lock in turn".to_owned(),
    }
}

async fn stampede_storm(n: usize, expired: bool) -> Row {
    let cache = Arc::new(StampedeCache::default());
    if expired {
        *cache.slot.write().expect("not poisoned") = expired_slot();
    }
    let caller = Arc::clone(&cache);
    let result = storm(
        n,
        move || {
            let cache = Arc::clone(&caller);
            async move { !cache.token().await.is_empty() }
        },
        async {},
    )
    .await;
    Row {
        callers: n,
        design: "no lock (stampede)",
        fetches: cache.fetches.load(Relaxed),
        check: Check::Info,
        waited: None,
        latency: Latency::of(result.latencies),
        wall: result.wall,
        notes: "one fetch per caller that found no token".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The peer crate: aliri_tokens.

/// The 5 ms endpoint for aliri: `tok-1`, `tok-2`, ...; the first valid for `first`, the others
/// for an hour; stale as `config` says.
#[derive(Clone)]
struct AliriSource {
    first: DurationSecs,
    config: TokenLifetimeConfig,
    fetches: Arc<AtomicU64>,
    /// When each fetch started.
    started: Arc<Mutex<Vec<Instant>>>,
}

impl AliriSource {
    fn new(first: DurationSecs, config: TokenLifetimeConfig) -> Self {
        AliriSource {
            first,
            config,
            fetches: Arc::new(AtomicU64::new(0)),
            started: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

#[async_trait::async_trait]
impl AsyncTokenSource for AliriSource {
    type Error = Infallible;

    async fn request_token(&mut self) -> Result<TokenWithLifetime, Infallible> {
        let n = self.fetches.fetch_add(1, Relaxed) + 1;
        self.started
            .lock()
            .expect("not poisoned")
            .push(Instant::now());
        tokio::time::sleep(FETCH_LATENCY).await;
        let lifetime = if n == 1 {
            self.first
        } else {
            DurationSecs(LONG.as_secs())
        };
        Ok(self.config.create_token(
            AccessToken::new(format!("tok-{n}")),
            None::<IdToken>,
            lifetime,
        ))
    }
}

/// Spawns a watcher: its first fetch, then its background refresh task.
async fn spawn_watcher(source: AliriSource) -> TokenWatcher {
    TokenWatcher::spawn_from_token_source(source, NullJitter, ErrorBackoffConfig::default())
        .await
        .unwrap_or_else(|never| match never {})
}

/// Scenario 1: the callers share a `OnceCell<TokenWatcher>`; the first spawns the watcher.
async fn aliri_cold_start(n: usize) -> Row {
    let source = AliriSource::new(DurationSecs(LONG.as_secs()), TokenLifetimeConfig::default());
    let fetches = Arc::clone(&source.fetches);
    let cell = Arc::new(OnceCell::<TokenWatcher>::new());
    let waited = Arc::new(AtomicU64::new(0));
    let (caller_cell, caller_waited) = (Arc::clone(&cell), Arc::clone(&waited));
    let result = storm(
        n,
        move || {
            let (cell, waited, source) = (
                Arc::clone(&caller_cell),
                Arc::clone(&caller_waited),
                source.clone(),
            );
            async move {
                if !cell.initialized() {
                    waited.fetch_add(1, Relaxed);
                }
                let watcher = cell.get_or_init(|| spawn_watcher(source)).await;
                let token = watcher.token().access_token().as_str().to_owned();
                !token.is_empty()
            }
        },
        async {},
    )
    .await;
    Row {
        callers: n,
        design: "aliri_tokens `TokenWatcher` (in a `OnceCell`)",
        fetches: fetches.load(Relaxed),
        check: Check::Info,
        waited: Some(waited.load(Relaxed)),
        latency: Latency::of(result.latencies),
        wall: result.wall,
        notes: format!(
            "the first caller spawns the watcher (its first fetch), the others wait on the cell{}",
            if result.errors == 0 {
                String::new()
            } else {
                format!("; {}", errors_note(result.errors))
            }
        ),
    }
}

/// `t` as an offset from `from` (`UnixTime` is whole seconds since the epoch).
fn offset(t: UnixTime, from: SystemTime) -> Duration {
    SystemTime::from(t)
        .duration_since(from)
        .unwrap_or(Duration::ZERO)
}

/// Scenario 2: a 2 s first token, then N callers at once once aliri's clock says it expired.
async fn aliri_at_expiry(n: usize, config: TokenLifetimeConfig, stale_at_half: bool) -> Row {
    let source = AliriSource::new(ALIRI_SHORT, config);
    let (fetches, started) = (Arc::clone(&source.fetches), Arc::clone(&source.started));
    let requested = SystemTime::now();
    let requested_at = Instant::now();
    let watcher = spawn_watcher(source).await;
    let (first_stale, first_expiry) = {
        let first = watcher.token();
        (first.stale(), first.expiry())
    };
    // Callers that got a token past its expiry, and those of them for which aliri's
    // `token_status()` did not say `Expired`.
    let expired = Arc::new(AtomicUsize::new(0));
    let not_reported = Arc::new(AtomicUsize::new(0));
    let (caller_watcher, caller_expired, caller_not_reported) = (
        watcher.clone(),
        Arc::clone(&expired),
        Arc::clone(&not_reported),
    );
    let mut prepared = true;
    let mut released = requested_at;
    let result = storm(
        n,
        move || {
            let (watcher, expired, not_reported) = (
                caller_watcher.clone(),
                Arc::clone(&caller_expired),
                Arc::clone(&caller_not_reported),
            );
            async move {
                let (token, past_expiry, status) = {
                    let current = watcher.token();
                    (
                        current.access_token().as_str().to_owned(),
                        aliri_clock::System.now() >= current.expiry(),
                        current.token_status(),
                    )
                };
                if past_expiry {
                    expired.fetch_add(1, Relaxed);
                    if !matches!(status, TokenStatus::Expired) {
                        not_reported.fetch_add(1, Relaxed);
                    }
                }
                !token.is_empty()
            }
        },
        async {
            // Release the callers once aliri's own clock says the first token expired.
            prepared = wait_until(|| aliri_clock::System.now() >= first_expiry).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            released = Instant::now();
        },
    )
    .await;
    let fetched = fetches.load(Relaxed).saturating_sub(1);
    let refresh = started
        .lock()
        .expect("not poisoned")
        .get(1)
        .map(|at| *at - requested_at);
    let (expired, not_reported) = (expired.load(Relaxed), not_reported.load(Relaxed));
    let mut notes = format!(
        "{}first token stale at +{}, expired at +{}; ",
        if stale_at_half {
            "stale at 50 %: "
        } else {
            "default lifetime config: "
        },
        Dur(offset(first_stale, requested)),
        Dur(offset(first_expiry, requested)),
    );
    match refresh {
        Some(at) => {
            let _ = write!(
                notes,
                "background refresh started at +{}, {} the callers (released at +{})",
                Dur(at),
                if at < released - requested_at {
                    "before"
                } else {
                    "after"
                },
                Dur(released - requested_at),
            );
        }
        None => {
            let _ = write!(
                notes,
                "no refresh yet when the callers came (released at +{})",
                Dur(released - requested_at),
            );
        }
    }
    let _ = write!(
        notes,
        "; **{} of {} callers got an expired token**",
        thousands(expired as u128),
        thousands(n as u128),
    );
    if not_reported > 0 {
        let _ = write!(
            notes,
            " (for {} of them aliri's `token_status()` said `Fresh`)",
            thousands(not_reported as u128),
        );
    }
    if !prepared {
        notes.push_str("; first token never expired");
    }
    if result.errors > 0 {
        let _ = write!(notes, "; {}", errors_note(result.errors));
    }
    Row {
        callers: n,
        design: if stale_at_half {
            "aliri_tokens `TokenWatcher`, stale at 50 %"
        } else {
            "aliri_tokens `TokenWatcher`, default config"
        },
        fetches: fetched,
        check: Check::Info,
        waited: None,
        latency: Latency::of(result.latencies),
        wall: result.wall,
        notes,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: a 401 storm.

/// A protected API: 401 for the revoked token, 200 otherwise. Requests carrying `held` wait
/// at a gate until the benchmark opens it, so that all of them are in flight with it.
#[derive(Clone)]
struct Api {
    state: Arc<ApiState>,
}

struct ApiState {
    held: String,
    revoked: AtomicBool,
    arrived: AtomicUsize,
    gate: watch::Receiver<bool>,
}

impl tower::Service<Request<String>> for Api {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Box::pin(async move {
            let held = sent == state.held;
            if held {
                state.arrived.fetch_add(1, Relaxed);
                let mut gate = state.gate.clone();
                let _ = gate.wait_for(|open| *open).await;
            }
            let response = if held && state.revoked.load(Relaxed) {
                Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)
                    .body(())
            } else {
                Response::builder().status(StatusCode::OK).body(())
            };
            Ok(response.expect("valid response"))
        })
    }
}

async fn unauthorized_storm(n: usize) -> Row {
    let (source, fetches) = counted_source(LONG, None);
    let auth = AuthLayer::new(source);
    let old = auth.token().await.expect("first token");
    let (open, gate) = watch::channel(false);
    let state = Arc::new(ApiState {
        held: format!("Bearer {}", old.access_token().secret()),
        revoked: AtomicBool::new(false),
        arrived: AtomicUsize::new(0),
        gate,
    });
    let api = Api {
        state: Arc::clone(&state),
    };
    let client = ServiceBuilder::new().layer(auth.clone()).service(api);
    let before = auth.stats();
    let fetches_before = fetches.load(Relaxed);

    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let response = client.oneshot(request()).await;
            let end = Instant::now();
            (end, response.is_ok_and(|r| r.status() == StatusCode::OK))
        }));
    }
    // All N are in flight with the old token: revoke it and let them through.
    let in_flight = wait_until(|| state.arrived.load(Relaxed) == n).await;
    let revoked_at = Instant::now();
    state.revoked.store(true, Relaxed);
    open.send_replace(true);

    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    let mut last = revoked_at;
    for handle in handles {
        let (end, ok) = handle.await.expect("caller panicked");
        latencies.push(end.saturating_duration_since(revoked_at));
        errors += usize::from(!ok);
        last = last.max(end);
    }
    let after = auth.stats();
    let fetched = fetches.load(Relaxed) - fetches_before;
    let rejected = after.unauthorized - before.unauthorized;
    let retried = after.retries - before.retries;
    let ok = in_flight && fetched == 1 && errors == 0 && rejected == 1 && retried == n as u64;
    let mut notes = format!(
        "{} × 401, {} resent, rejected token dropped {rejected}×, {} × 200",
        thousands(n as u128),
        thousands(retried),
        thousands((n - errors) as u128),
    );
    if !in_flight {
        notes.push_str("; not all requests were in flight");
    }
    Row {
        callers: n,
        design: "`AuthLayer`",
        fetches: fetched,
        check: if ok { Check::Pass } else { Check::Fail },
        waited: Some(after.waiters - before.waiters),
        latency: Latency::of(latencies),
        wall: last - revoked_at,
        notes,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: steady traffic across an expiry, refresh-ahead on.

async fn steady_traffic(n: usize) -> Row {
    let (source, fetches) = counted_source(STEADY_FIRST, None);
    let auth = AuthLayer::new(source); // refresh_ahead(true) is the default
    auth.token().await.expect("first token");
    let fetched_at = Instant::now();
    let usable = auth.stats().token_usable_for.unwrap_or_default();
    let noop =
        tower::service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(())) });
    let client = ServiceBuilder::new().layer(auth.clone()).service(noop);
    let before = auth.stats();
    let fetches_before = fetches.load(Relaxed);

    let step = STEADY_SPAN / u32::try_from(n).expect("fewer than 2^32 callers");
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let client = client.clone();
        let at = fetched_at + STEADY_FROM + step * u32::try_from(i).expect("fewer callers");
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let start = Instant::now();
            let ok = client
                .oneshot(request())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            let end = Instant::now();
            (end - start, start, end, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first = None::<Instant>;
    let mut last = fetched_at;
    for handle in handles {
        let (latency, start, end, ok) = handle.await.expect("caller panicked");
        latencies.push(latency);
        errors += usize::from(!ok);
        first = Some(first.map_or(start, |f| f.min(start)));
        last = last.max(end);
    }
    let first = first.unwrap_or(fetched_at);
    let after = auth.stats();
    let fetched = fetches.load(Relaxed) - fetches_before;
    let waited = after.waiters - before.waiters;
    let background = after.background_refreshes - before.background_refreshes;
    // The default 30 s margin, clamped to half the lifetime.
    let target = fetched_at + STEADY_FIRST / 2;
    let crossed = first < target && last > target;
    let ok = fetched == 1 && background == 1 && waited == 0 && errors == 0 && crossed;
    let mut notes = format!(
        "{}/s from +{} to +{}, first token's refresh target +{}, sent until +{}; {background} background refresh",
        thousands(n as u128),
        Dur(first - fetched_at),
        Dur(last - fetched_at),
        Dur(STEADY_FIRST / 2),
        Dur(usable),
    );
    if !crossed {
        notes.push_str("; traffic did not cross the refresh target");
    }
    if errors > 0 {
        let _ = write!(notes, "; {}", errors_note(errors));
    }
    Row {
        callers: n,
        design: "`AuthLayer`",
        fetches: fetched,
        check: if ok { Check::Pass } else { Check::Fail },
        waited: Some(waited),
        latency: Latency::of(latencies),
        wall: last - first,
        notes,
    }
}

// ---------------------------------------------------------------------------------------------
// Woken by one fetch.

/// The instant each of `tasks` finished, less `released`: how long each waiter took to get its
/// answer once the fetch it waited on was done.
async fn wake_latencies(
    tasks: Vec<tokio::task::JoinHandle<Option<Instant>>>,
    released: Instant,
) -> (Vec<Duration>, Duration, usize) {
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Some(done)) => latencies.push(done.saturating_duration_since(released)),
            _ => failed += 1,
        }
    }
    let wall = latencies.iter().copied().max().unwrap_or_default();
    (latencies, wall, failed)
}

/// Scenario 5, `AuthLayer`: `n` callers all parked on one fetch, which then completes at once;
/// the latency is from its completion to each caller's answer.
async fn layer_wake(n: usize) -> Row {
    let gate = Arc::new(Semaphore::new(0));
    let fetches = Arc::new(AtomicU64::new(0));
    let source = {
        let (gate, fetches) = (Arc::clone(&gate), Arc::clone(&fetches));
        from_fn(move || {
            let (gate, fetches) = (Arc::clone(&gate), Arc::clone(&fetches));
            async move {
                fetches.fetch_add(1, Relaxed);
                gate.acquire().await.expect("gate closed").forget();
                Ok(Token::new("tok-1").with_expires_in(LONG))
            }
        })
    };
    let auth = AuthLayer::new(source);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let token = auth.token();
            tokio::spawn(async move { token.await.ok().map(|_| Instant::now()) })
        })
        .collect();
    let all_waiting = wait_until(|| auth.stats().waiters == n as u64).await;
    let released = Instant::now();
    gate.add_permits(1);
    let (latencies, wall, failed) = wake_latencies(tasks, released).await;
    let fetches = fetches.load(Relaxed);
    Row {
        callers: n,
        design: "`AuthLayer`",
        fetches,
        check: if all_waiting && fetches == 1 && failed == 0 {
            Check::Pass
        } else {
            Check::Fail
        },
        waited: Some(auth.stats().waiters),
        latency: Latency::of(latencies),
        wall,
        notes: errors_note(failed),
    }
}

/// Scenario 5, the `tokio::sync::Mutex` design: `n` callers queued on the lock its fetch holds;
/// the fetch stores the token and lets the lock go, and each caller takes it in turn.
async fn mutex_wake(n: usize) -> Row {
    let cache = Arc::new(MutexCache::default());
    let fetching = cache.slot.lock().await;
    let queued = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (cache, queued) = (Arc::clone(&cache), Arc::clone(&queued));
            tokio::spawn(async move {
                queued.fetch_add(1, Relaxed);
                let token = cache.token().await;
                (!token.is_empty()).then(Instant::now)
            })
        })
        .collect();
    wait_until(|| queued.load(Relaxed) == n).await;
    // Each task queues on the lock right after counting itself; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut slot = fetching;
    *slot = Some(("tok-1".to_owned(), Instant::now() + LONG));
    cache.fetches.fetch_add(1, Relaxed);
    let released = Instant::now();
    drop(slot);
    let (latencies, wall, failed) = wake_latencies(tasks, released).await;
    Row {
        callers: n,
        design: "`tokio::sync::Mutex`",
        fetches: cache.fetches.load(Relaxed),
        check: Check::Info,
        waited: Some(n as u64),
        latency: Latency::of(latencies),
        wall,
        notes: format!(
            "each caller takes the lock in turn{}",
            if failed > 0 {
                format!("; {}", errors_note(failed))
            } else {
                String::new()
            }
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes per waiting caller.

fn live_bytes() -> isize {
    LIVE_BYTES.load(Relaxed)
}

/// Heap bytes per caller while `n` callers wait on one fetch, and per idle Tokio task.
async fn bytes_per_waiter(n: usize) -> Option<(f64, f64, usize)> {
    // Idle tasks first: what a spawned task costs whatever it waits for.
    let mut idle = Vec::with_capacity(n);
    let start = live_bytes();
    for _ in 0..n {
        idle.push(tokio::spawn(std::future::pending::<()>()));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let per_task = (live_bytes() - start) as f64 / n as f64;
    for task in &idle {
        task.abort();
    }
    for task in idle {
        let _ = task.await;
    }

    let gate = Arc::new(Semaphore::new(0));
    let (source, fetches) = counted_source(LONG, Some(Arc::clone(&gate)));
    let auth = AuthLayer::new(source);
    let future_size = std::mem::size_of_val(&auth.token());
    let mut waiting = Vec::with_capacity(n);
    let start = live_bytes();
    for _ in 0..n {
        waiting.push(tokio::spawn(auth.token()));
    }
    let all_waiting = wait_until(|| auth.stats().waiters == n as u64).await;
    let per_waiter = (live_bytes() - start) as f64 / n as f64;
    gate.add_permits(1);
    for task in waiting {
        let _ = task.await;
    }
    (all_waiting && fetches.load(Relaxed) == 1).then_some((per_waiter, per_task, future_size))
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let failed = runtime.block_on(run(&settings));
    println!("\ntotal time: {}", Dur(started.elapsed()));
    if failed {
        println!("RESULT: FAIL");
        std::process::exit(1);
    }
    println!("RESULT: PASS");
}

async fn run(settings: &Settings) -> bool {
    println!("## Concurrency benchmark\n");
    println!(
        "machine: {} cores; runtime: multi-threaded Tokio, {} worker threads, real time; \
         token endpoint: in-process, {} per fetch; {} build{}",
        settings.cores,
        settings.threads,
        Dur(FETCH_LATENCY),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if settings.test {
            "; --test: N = 1,000 once"
        } else {
            ""
        },
    );
    println!(
        "latency: per caller, `std::time::Instant` around the call (scenario 3: from the \
         revocation to the final response); wall: first caller's start to the last answer"
    );
    let mut failed = false;
    let mut report = |title: &str, rows: Vec<Row>| {
        failed |= rows.iter().any(|r| r.check == Check::Fail);
        print_table(title, &rows);
    };

    if settings.scenarios.contains(&1) {
        let mut rows = Vec::new();
        for &n in &settings.callers {
            rows.push(layer_storm(n, false).await);
            rows.push(mutex_storm(n, false).await);
            rows.push(stampede_storm(n, false).await);
            rows.push(aliri_cold_start(n).await);
        }
        report(
            "1. Cold start: N callers of `auth.token()` at once, empty cache",
            rows,
        );
    }

    if settings.scenarios.contains(&2) {
        let mut rows = Vec::new();
        for &n in &settings.callers {
            rows.push(layer_storm(n, true).await);
            rows.push(mutex_storm(n, true).await);
            rows.push(stampede_storm(n, true).await);
            rows.push(aliri_at_expiry(n, TokenLifetimeConfig::default(), false).await);
            rows.push(
                aliri_at_expiry(n, TokenLifetimeConfig::new(0.5, DurationSecs(0)), true).await,
            );
        }
        report(
            "2. At expiry: N callers at once after the token expired (`AuthLayer`: `refresh_ahead(false)`)",
            rows,
        );
    }

    if settings.scenarios.contains(&3) {
        let mut rows = Vec::new();
        for &n in &settings.callers {
            rows.push(unauthorized_storm(n).await);
        }
        report(
            "3. 401 storm: N requests in flight with a token the API then revokes",
            rows,
        );
    }

    if settings.scenarios.contains(&4) {
        let mut rows = Vec::new();
        for &n in &settings.callers {
            rows.push(steady_traffic(n).await);
        }
        report(
            "4. Across the refresh target, refresh-ahead on (default): N requests spread over 1 s across it",
            rows,
        );
    }

    if settings.scenarios.contains(&5) {
        let mut rows = Vec::new();
        for &n in &settings.callers {
            rows.push(layer_wake(n).await);
            rows.push(mutex_wake(n).await);
        }
        report(
            "5. Woken by one fetch: N callers all waiting on one fetch; latency from its completion to each answer",
            rows,
        );
    }

    if settings.scenarios.contains(&6) {
        let n = settings.callers.iter().copied().max().unwrap_or(1_000);
        match bytes_per_waiter(n).await {
            Some((per_waiter, per_task, future_size)) => println!(
                "\nmemory: {} callers waiting on one fetch (all waited, 1 fetch: PASS): \
                 {per_waiter:.0} heap bytes per waiting caller, its Tokio task included (an idle task: {per_task:.0} bytes; the \
                 `token()` future: {future_size} bytes)",
                thousands(n as u128),
            ),
            None => {
                println!("\nmemory: FAIL: the callers did not all wait on one fetch");
                failed = true;
            }
        }
    }
    failed
}
