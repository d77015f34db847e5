//! What a fleet costs over time (feature `redis`): one token request per token lifetime for a
//! fleet of processes that provably overlap, a lease held through a fetch longer than the lease,
//! and a slow Redis that bounds every fetch by its call timeout.
//!
//! The tests need the Redis server `scripts/test` starts (`TOWER_BEARER_REDIS`); a plain
//! `cargo test` skips them as ignored. Every test uses a key prefix of its own.

#![cfg(all(feature = "redis", feature = "oauth"))]

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use support::{
    StandInEndpoint, delayed,
    fleet::{KEY, endpoint_with, fresh_prefix, layer, redis_url},
    processes::{reported, reported_number, run_workers, unix_ms, until_unix_ms},
    proxy::DelayingProxy,
    token_json,
};
use tokio::task::JoinSet;
use tower_bearer::distributed::RedisCache;

/// Set in the worker processes of `a_fleet_makes_one_token_request_per_token_lifetime`: the
/// token URL, the Redis URL, the key prefix, when to start (ms since the Unix epoch) and for
/// how long to run (ms), separated by spaces.
const LIFETIME_WORKER: &str = "TOWER_BEARER_FLEET_LIFETIME_WORKER";
const WORKERS: usize = 4;
/// The tokens' lifetime: their refresh point comes 0.8 to 0.9 s after they are fetched.
const LIFETIME_S: u64 = 2;
/// Three lifetimes.
const RUN: Duration = Duration::from_secs(3 * LIFETIME_S);

/// One process: waits for the common start, then 8 callers ask for a token every 10 ms for
/// the run; prints what its layer counted.
async fn lifetime_worker(spec: &str) {
    let [token_url, redis, prefix, start_at, run_ms] = spec.split(' ').collect::<Vec<_>>()[..]
    else {
        panic!("token url, Redis url, prefix, start and run: {spec}");
    };
    let cache = RedisCache::connect_lazily(redis::Client::open(redis).unwrap())
        .unwrap()
        .key_prefix(prefix)
        .encryption_key(KEY);
    let auth = layer(token_url, "fleet", cache);
    let start_at: u64 = start_at.parse().unwrap();
    until_unix_ms(start_at).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(run_ms.parse().unwrap());
    let mut callers = JoinSet::new();
    for _ in 0..8 {
        let auth = auth.clone();
        callers.spawn(async move {
            while tokio::time::Instant::now() < until {
                auth.token().await.expect("every caller gets a token");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    callers.join_all().await;
    let stats = auth.stats();
    println!(
        "stats fetches={} fleet_tokens={} fleet_lease_waits={} fleet_fallbacks={}",
        stats.fetches, stats.fleet_tokens, stats.fleet_lease_waits, stats.fleet_fallbacks
    );
}

/// Four processes start together (a common start instant) and ask for tokens for three token
/// lifetimes. The fleet makes one token request per refresh, as one process would: no two
/// requests come within 500 ms of each other (a refresh point is 0.8 to 0.9 s into a 2-second
/// token; processes that shared nothing would each ask at once), and no more than one per
/// earliest refresh point over the run. They provably overlapped: at the start three of them
/// waited on the lease of the fourth, and every refresh after it reached the others through
/// Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fleet_makes_one_token_request_per_token_lifetime() {
    if let Ok(spec) = std::env::var(LIFETIME_WORKER) {
        return lifetime_worker(&spec).await;
    }
    let asked_at = Arc::new(Mutex::new(Vec::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let endpoint = StandInEndpoint::start({
        let (asked_at, issued) = (Arc::clone(&asked_at), Arc::clone(&issued));
        move |_| {
            asked_at.lock().unwrap().push(std::time::Instant::now());
            let n = issued.fetch_add(1, SeqCst) + 1;
            // A little late, so that processes starting together overlap on the lease.
            delayed(
                token_json(&format!("tok-{n}"), LIFETIME_S),
                Duration::from_millis(50),
            )
        }
    })
    .await;
    // The workers start 3 s from now: enough for all of them to be up and connected.
    let spec = format!(
        "{} {} {} {} {}",
        endpoint.url("/token"),
        redis_url(),
        fresh_prefix("lifetimes"),
        unix_ms() + 3_000,
        RUN.as_millis()
    );
    let outputs = run_workers(
        "a_fleet_makes_one_token_request_per_token_lifetime",
        WORKERS,
        LIFETIME_WORKER,
        &spec,
    )
    .await;

    let stat = reported_number;
    let lines = reported(&outputs, "stats ");
    assert_eq!(lines.len(), WORKERS, "{lines:?}");
    let total = |name: &str| -> u64 { lines.iter().map(|l| stat(l, name)).sum() };
    let requests = issued.load(SeqCst);
    let mut times = asked_at.lock().unwrap().clone();
    times.sort();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("{requests} token requests; gaps {gaps:?}; workers: {lines:?}");

    assert_eq!(total("fleet_fallbacks"), 0, "Redis answered throughout");
    assert!(
        total("fleet_lease_waits") >= (WORKERS - 1) as u64,
        "the processes did not contend for the lease at the start: {lines:?}"
    );
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(500)),
        "two token requests within 500 ms: {gaps:?}"
    );
    // At most one request per earliest refresh point (0.8 s) over the run, and the first.
    let most = 1 + (RUN.as_millis() / 800) as usize;
    assert!(
        (3..=most).contains(&requests),
        "{requests} token requests in {RUN:?}"
    );
    // Every token after the first reached the other processes through Redis.
    assert!(
        total("fleet_tokens") >= ((requests - 1) * (WORKERS - 1)) as u64,
        "{lines:?}"
    );
}

/// A fetch that takes longer than the lease (300 ms here, the fetch 1 s): its holder renews the
/// lease while it runs, so the other process keeps waiting for its token instead of taking the
/// lease over and fetching one of its own. One token request.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fetch_longer_than_the_lease_keeps_the_lease() {
    let prefix = fresh_prefix("renewed");
    let (endpoint, issued) =
        endpoint_with(|n| Duration::from_millis(if n == 1 { 1_000 } else { 0 })).await;
    let process = || {
        let cache = RedisCache::connect_lazily(redis::Client::open(redis_url()).unwrap())
            .unwrap()
            .key_prefix(&prefix)
            .encryption_key(KEY)
            .lease(Duration::from_millis(300));
        layer(&endpoint.url("/token"), "fleet", cache)
    };
    let (first, second) = (process(), process());
    let (a, b) = tokio::join!(first.token(), second.token());
    assert_eq!(a.unwrap().access_token(), b.unwrap().access_token());
    assert_eq!(issued.load(SeqCst), 1, "the lease was taken over");
    let waits = first.stats().fleet_lease_waits + second.stats().fleet_lease_waits;
    assert_eq!(waits, 1, "one process waited on the other's lease");
}

/// Redis answers, but only after 3 s (a delaying proxy in front of it), while each call may take
/// 200 ms: every fetch gives up on Redis at its call timeout and goes to the token endpoint, so
/// 50 callers at once all get a token well before Redis would have answered.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_slow_redis_costs_each_fetch_at_most_its_call_timeout() {
    let upstream: std::net::SocketAddr = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = DelayingProxy::start(upstream).await;
    let (endpoint, issued) = endpoint_with(|_| Duration::ZERO).await;
    let cache = RedisCache::connect_lazily(redis::Client::open(proxy.redis_url()).unwrap())
        .unwrap()
        .key_prefix(fresh_prefix("slow"))
        .encryption_key(KEY)
        .call_timeout(Duration::from_millis(200));
    let auth = layer(&endpoint.url("/token"), "fleet", cache);
    proxy.set_delay(Duration::from_secs(3));

    let started = std::time::Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..50 {
        let token = auth.token();
        callers.spawn(token);
    }
    for token in callers.join_all().await {
        token.expect("every caller gets a token");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    assert_eq!(issued.load(SeqCst), 1, "one fetch for all 50");
    let stats = auth.stats();
    assert_eq!(stats.fleet_fallbacks, 1);
    assert!(stats.fleet_redis_errors >= 1);
}
