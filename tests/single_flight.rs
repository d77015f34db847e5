//! Single-flight fetching: however many callers wait, one fetch; every waiter gets its outcome;
//! dropped callers strand nobody; failures poison nothing. All in paused Tokio time.

mod support;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::CountingSource;
use tokio::task::JoinSet;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, Error};

type Body = Empty<bytes::Bytes>;

fn request() -> Request<Body> {
    Request::get("https://api.test/data")
        .body(Body::new())
        .unwrap()
}

/// Sends `n` requests at once through clones of one service and returns their statuses.
async fn burst<S>(svc: S, n: usize) -> Vec<StatusCode>
where
    S: Service<Request<Body>, Response = http::Response<String>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut set = JoinSet::new();
    for _ in 0..n {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(request()).await.unwrap().status() });
    }
    set.join_all().await
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_on_a_cold_cache_cause_one_fetch() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(source.api());

    let statuses = burst(svc, 10_000).await;

    assert_eq!(source.fetches(), 1);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(
        source.api().seen().iter().filter(|t| *t == "tok-1").count(),
        10_000
    );
    let stats = auth.stats();
    assert_eq!(stats.fetches, 1);
    assert_eq!(stats.waiters, 10_000);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_callers_at_expiry_cause_one_fetch() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(60)));
    // Without refresh-ahead, to see the expiry itself (tests/reliability.rs has it on).
    let auth = AuthLayer::builder(source.clone())
        .expiry_margin(Duration::from_secs(10))
        .refresh_ahead(false)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(source.api());

    burst(svc.clone(), 1).await;
    assert_eq!(source.fetches(), 1);

    // Before the refresh target (expiry less the margin): no fetch.
    tokio::time::advance(Duration::from_secs(49)).await;
    burst(svc.clone(), 100).await;
    assert_eq!(source.fetches(), 1);

    // Past the token's expiry less the allowance (a tenth of 60 s), with no request in between
    // to refresh it: everyone waits on one fetch.
    tokio::time::advance(Duration::from_secs(5)).await;
    let statuses = burst(svc, 10_000).await;
    assert_eq!(source.fetches(), 2);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(source.api().seen().last().unwrap(), "tok-2");
    assert_eq!(auth.stats().waiters, 1 + 10_000);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_that_started_the_fetch_strands_nobody() {
    let source = CountingSource::gated(Duration::ZERO, Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());

    // The first caller starts the fetch, then goes away.
    let mut first = tokio_test::task::spawn(auth.token());
    assert!(first.poll().is_pending());
    tokio::task::yield_now().await;
    assert_eq!(source.fetches(), 1);
    drop(first);

    // Others arrive while the fetch is still running.
    let mut waiters = JoinSet::new();
    for _ in 0..100 {
        let auth = auth.clone();
        waiters.spawn(async move { auth.token().await });
    }
    tokio::task::yield_now().await;
    source.open_gate(1);
    for token in waiters.join_all().await {
        assert_eq!(token.unwrap().access_token().secret(), "tok-1");
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_waiter_still_installs_the_token() {
    let source = CountingSource::gated(Duration::ZERO, Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());
    let mut only = tokio_test::task::spawn(auth.token());
    assert!(only.poll().is_pending());
    drop(only);
    source.open_gate(1);
    // Let the fetch task finish with nobody waiting.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        auth.stats().token_age.is_some(),
        "fetched token was installed"
    );
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-1");
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_reaches_every_waiter_then_the_next_call_succeeds() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(60)));
    source.fail_fetch(1);
    // A fixed jitter seed keeps the backoff below reproducible.
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(7)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(source.api());

    let mut set = JoinSet::new();
    for _ in 0..1_000 {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(request()).await });
    }
    for result in set.join_all().await {
        let err = result.unwrap_err();
        let err = err.downcast_ref::<Error>().expect("a token error");
        assert!(matches!(err, Error::Source(_)), "{err:?}");
        assert!(err.to_string().contains("fetch 1 failed"), "{err}");
    }
    assert_eq!(source.fetches(), 1);
    assert_eq!(
        source.api().requests(),
        0,
        "no request left without a token"
    );

    // Within the backoff, callers fail fast with the same error and no new fetch goes out.
    let err = svc.clone().oneshot(request()).await.unwrap_err();
    assert!(err.to_string().contains("fetch 1 failed"), "{err}");
    assert_eq!(source.fetches(), 1);

    // Not poisoned: after the backoff (200 ms at most for a first failure) the next call
    // fetches again and succeeds.
    tokio::time::advance(Duration::from_millis(200)).await;
    let response = svc.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 2);
    let stats = auth.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_gives_waiters_an_error_not_a_hang() {
    let source = CountingSource::new(Duration::from_millis(1), Some(Duration::from_secs(60)));
    source.panic_on_fetch(1);
    let auth = AuthLayer::new(source.clone());

    let mut set = JoinSet::new();
    for _ in 0..10 {
        let auth = auth.clone();
        set.spawn(async move { auth.token().await });
    }
    for result in set.join_all().await {
        assert!(matches!(result, Err(Error::Aborted)), "{result:?}");
    }
    tokio::time::advance(Duration::from_millis(200)).await;
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-2");
}

/// Each wait ends at the flight's deadline at the latest, kept by one watchdog task for the
/// flight on this runtime rather than by a timer per waiter: 1,000 waiters are 1,000 tasks, the
/// fetch and the watchdog two more. (The fetch's own timeout ends this one first; a fetch whose
/// runtime is never driven again is ended by the watchdog: `liveness::waiters_give_up_on_a_fetch_whose_runtime_is_never_driven_again`.)
#[tokio::test(start_paused = true)]
async fn waiters_on_one_runtime_share_one_watchdog_for_their_deadline() {
    let source = tower_bearer::source::from_fn(std::future::pending);
    let auth = AuthLayer::builder(source)
        .fetch_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // A waiter carries no timer of its own: with one (a Tokio `Sleep`) `token()`'s future
    // was 424 bytes.
    let waiter = std::mem::size_of_val(&auth.token());
    assert!(waiter <= 256, "{waiter} bytes");
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut set = JoinSet::new();
    for _ in 0..1_000 {
        let auth = auth.clone();
        set.spawn(async move { (auth.token().await, tokio::time::Instant::now()) });
    }
    let start = tokio::time::Instant::now();
    while auth.stats().waiters < 1_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks() - before, 1_000 + 2);
    for (result, at) in set.join_all().await {
        assert!(
            matches!(result, Err(Error::Timeout(d)) if d == Duration::from_secs(5)),
            "{result:?}"
        );
        assert_eq!(at - start, Duration::from_secs(5));
    }
}

/// A future whose wake-ups are counted in `woken` before they are passed on.
struct CountWakes<F> {
    inner: Pin<Box<F>>,
    woken: Arc<AtomicUsize>,
}

struct CountingWaker {
    inner: Waker,
    woken: Arc<AtomicUsize>,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.fetch_add(1, Relaxed);
        self.inner.wake_by_ref();
    }
}

impl<F: Future> Future for CountWakes<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(CountingWaker {
            inner: cx.waker().clone(),
            woken: Arc::clone(&self.woken),
        }));
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// Callers woken by one fetch are woken a batch (128) at a time, each batch running before the
/// next is woken: a waiter's task is still in the cache when it runs, and the last callers do
/// not wait behind every other wake-up. Waking all at once would have 1,000 woken and not yet
/// run.
#[tokio::test(start_paused = true)]
async fn callers_woken_by_one_fetch_are_woken_a_batch_at_a_time() {
    let source = CountingSource::new(Duration::from_secs(1), Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());
    let (woken, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut set = JoinSet::new();
    for _ in 0..1_000 {
        let (woken, done) = (Arc::clone(&woken), Arc::clone(&done));
        let token = CountWakes {
            inner: Box::pin(auth.token()),
            woken: Arc::clone(&woken),
        };
        set.spawn(async move {
            let token = token.await.unwrap();
            // Woken and not yet done, this one included.
            let pending = woken.load(Relaxed) - done.fetch_add(1, Relaxed);
            (token, pending)
        });
    }
    let mut most = 0;
    for (token, pending) in set.join_all().await {
        assert_eq!(token.access_token().secret(), "tok-1");
        most = most.max(pending);
    }
    assert_eq!(woken.load(Relaxed), 1_000, "each caller woken once");
    assert!(most <= 128, "{most} callers woken and not yet run");
    assert_eq!((source.fetches(), auth.stats().waiters), (1, 1_000));
}

#[tokio::test(start_paused = true)]
async fn a_slow_fetch_times_out_for_every_waiter() {
    let source = CountingSource::new(Duration::from_secs(3600), None);
    let auth = AuthLayer::builder(source.clone())
        .fetch_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut set = JoinSet::new();
    for _ in 0..10 {
        let auth = auth.clone();
        set.spawn(async move { (auth.token().await, tokio::time::Instant::now()) });
    }
    let start = tokio::time::Instant::now();
    for (result, at) in set.join_all().await {
        assert!(
            matches!(result, Err(Error::Timeout(d)) if d == Duration::from_secs(5)),
            "{result:?}"
        );
        assert_eq!(at - start, Duration::from_secs(5));
    }
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_token_is_refreshed_once_at_half_its_life_not_in_a_loop() {
    // A 1-second token with the default 30-second margin, clamped to half its life.
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(1)));
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    for _ in 0..100 {
        auth.token().await.unwrap();
    }
    assert_eq!(source.fetches(), 1);
    tokio::time::advance(Duration::from_millis(600)).await;
    // Past the refresh target, still usable: callers get it at once, one refresh starts.
    for _ in 0..100 {
        assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-1");
    }
    tokio::task::yield_now().await;
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-2");
    let stats = auth.stats();
    assert_eq!((stats.waiters, stats.background_refreshes), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_token_without_expiry_lives_for_the_default_lifetime() {
    let source = CountingSource::new(Duration::ZERO, None);
    let auth = AuthLayer::builder(source.clone())
        .default_lifetime(Duration::from_secs(600))
        .expiry_margin(Duration::from_secs(30))
        .build()
        .unwrap();
    auth.token().await.unwrap();
    tokio::time::advance(Duration::from_secs(569)).await;
    auth.token().await.unwrap();
    assert_eq!(source.fetches(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    auth.token().await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn use_limited_tokens_are_fetched_once_per_use_budget() {
    for (uses, requests, fetches) in [(1, 100, 100), (3, 30, 10)] {
        let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(3600)));
        let auth = AuthLayer::builder(source.clone())
            .max_token_uses(uses)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new().layer(auth).service(source.api());
        let statuses = burst(svc, requests).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::OK));
        assert_eq!(source.fetches(), fetches, "{uses} uses per token");
        let mut seen = source.api().seen();
        seen.sort();
        let mut per_token = std::collections::HashMap::<String, u32>::new();
        for token in seen {
            *per_token.entry(token).or_default() += 1;
        }
        assert!(per_token.values().all(|n| *n == uses), "{per_token:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_fetch_in_flight_during_revoke_installs_nothing() {
    let source = CountingSource::gated(Duration::ZERO, Some(Duration::from_secs(60)));
    let auth = AuthLayer::new(source.clone());
    let waiter = tokio::spawn({
        let auth = auth.clone();
        async move { auth.token().await }
    });
    while source.fetches() == 0 {
        tokio::task::yield_now().await;
    }
    auth.revoke().await.unwrap();
    // The fetch that was running when `revoke` was called finishes after it returned.
    source.open_gate(1);
    while source.fetches() < 2 {
        tokio::task::yield_now().await;
    }
    assert!(
        auth.stats().token_age.is_none(),
        "tok-1, fetched before the revocation, was not installed"
    );
    // Its waiter asked again, and gets a token fetched after the revocation.
    source.open_gate(1);
    let token = waiter.await.unwrap().unwrap();
    assert_eq!(token.access_token().secret(), "tok-2");
}

#[tokio::test(start_paused = true)]
async fn invalidating_a_token_already_replaced_returns_false_and_causes_no_fetch() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(3600)));
    let auth = AuthLayer::new(source.clone());
    let old = auth.token().await.unwrap();
    assert!(auth.invalidate(&old));
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-2");

    // A late invalidation of tok-1, now that tok-2 is installed: nothing happens.
    assert!(!auth.invalidate(&old));
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-2");
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().fetches, 2);
}
