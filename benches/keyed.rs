//! What a keyed layer costs beyond its requests: heap bytes per key held, and the time for 1,000
//! keys to be served at once from a cold start (100 callers each, one fetch per key).
//!
//! - `memory`: 100,000 keys (hosts), each with a cached 90-byte token, through one
//!   `KeyedAuthLayer`; live heap bytes per key, counted by a global allocator, against the bytes
//!   of the key's token and of its header (`Bearer <token>`) alone.
//! - `cold keys`: 1,000 keys with 100 concurrent callers each, on a multi-thread runtime, each
//!   key's fetch taking 1 ms: the wall time until all 100,000 callers have their token, the
//!   fetches made (one per key), and the p50 and p99 of a caller's wait.
//! - `expired keys`: the same 1,000 keys once every key's token has expired while nobody
//!   asked (2-second tokens, then a pause past their expiry): every key refreshes at once
//!   under its 100 callers.
//!
//! ```text
//! cargo bench --bench keyed               # both, printed
//! cargo bench --bench keyed -- --test     # a small run of each (CI)
//! ```
//!
//! The per-request cost of a keyed layer is in `benches/calling_patterns.rs` (`keyed_layer`).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tower_bearer::{
    Token,
    keyed::{KeyedAuthLayer, TextKey},
    source::from_fn,
};

/// Live heap bytes of the whole process.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts the sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// 90 bytes, the size of a short JWT.
const TOKEN: &str =
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCIsImF1ZCI6ImFwaSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg00";

fn layer(latency: Duration, fetches: Arc<AtomicUsize>) -> KeyedAuthLayer<TextKey> {
    layer_with(latency, Duration::from_secs(3600), fetches)
}

fn layer_with(
    latency: Duration,
    lifetime: Duration,
    fetches: Arc<AtomicUsize>,
) -> KeyedAuthLayer<TextKey> {
    KeyedAuthLayer::builder(tower_bearer::keyed::by_host(), move |_host: &TextKey| {
        let fetches = Arc::clone(&fetches);
        Ok(from_fn(move || {
            let fetches = Arc::clone(&fetches);
            async move {
                fetches.fetch_add(1, Relaxed);
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                Ok(Token::new(TOKEN).with_expires_in(lifetime))
            }
        }))
    })
    .capacity(250_000)
    .build()
    .expect("valid settings")
}

fn memory(keys: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let names: Vec<TextKey> = (0..keys)
        .map(|n| TextKey::from(format!("api-{n:06}.example.com")))
        .collect();
    let auth = layer(Duration::ZERO, Arc::clone(&fetches));
    let before = LIVE.load(Relaxed);
    runtime.block_on(async {
        for name in &names {
            auth.token(name).await.unwrap();
        }
    });
    let after = LIVE.load(Relaxed);
    assert_eq!(auth.keys(), keys);
    let per_key = (after - before) as f64 / keys as f64;
    let payload = TOKEN.len() + "Bearer ".len() + TOKEN.len();
    println!(
        "memory: {keys} keys held, {per_key:.0} heap bytes per key (its key string of {} bytes \
         included); the key's token and header alone: {payload} bytes ({:.1}x)",
        names[0].len(),
        per_key / payload as f64
    );
}

/// `callers` callers for each of `names` at once; each caller's wait, and the wall time.
async fn burst(
    auth: &KeyedAuthLayer<TextKey>,
    names: &Arc<Vec<TextKey>>,
    callers: usize,
) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(names.len() * callers);
    for caller in 0..names.len() * callers {
        let (auth, names) = (auth.clone(), Arc::clone(names));
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            auth.token(&names[caller % names.len()]).await.unwrap();
            asked.elapsed()
        }));
    }
    let mut waits = Vec::with_capacity(tasks.len());
    for task in tasks {
        waits.push(task.await.unwrap());
    }
    waits.sort();
    (start.elapsed(), waits)
}

fn report(
    what: &str,
    keys: usize,
    callers: usize,
    elapsed: Duration,
    waits: &[Duration],
    fetches: usize,
) {
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: {keys} keys x {callers} callers on {} threads: all served in {elapsed:.1?}, \
         {fetches} fetches ({} per key), a caller's wait p50 {:.1?}, p99 {:.1?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        fetches as f64 / keys as f64,
        at(0.50),
        at(0.99),
    );
}

fn cold_keys(keys: usize, callers: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let auth = layer(Duration::from_millis(1), Arc::clone(&fetches));
    let names: Arc<Vec<TextKey>> = Arc::new(
        (0..keys)
            .map(|n| TextKey::from(format!("api-{n:04}.example.com")))
            .collect(),
    );
    let (elapsed, waits) = runtime.block_on(burst(&auth, &names, callers));
    report(
        "cold keys",
        keys,
        callers,
        elapsed,
        &waits,
        fetches.load(Relaxed),
    );
    assert_eq!(fetches.load(Relaxed), keys, "one fetch per key");
}

fn expired_keys(keys: usize, callers: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let lifetime = Duration::from_secs(2);
    let auth = layer_with(Duration::from_millis(1), lifetime, Arc::clone(&fetches));
    let names: Arc<Vec<TextKey>> = Arc::new(
        (0..keys)
            .map(|n| TextKey::from(format!("api-{n:04}.example.com")))
            .collect(),
    );
    runtime.block_on(async {
        burst(&auth, &names, 1).await;
        tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    });
    let (elapsed, waits) = runtime.block_on(burst(&auth, &names, callers));
    let refetched = fetches.load(Relaxed) - keys;
    report("expired keys", keys, callers, elapsed, &waits, refetched);
    assert_eq!(refetched, keys, "one refresh per key");
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--test");
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    if quick {
        memory(1_000);
        cold_keys(100, 10);
        expired_keys(100, 10);
    } else {
        memory(100_000);
        cold_keys(1_000, 100);
        expired_keys(1_000, 100);
    }
}
