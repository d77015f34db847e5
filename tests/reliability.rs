//! Keeping a service running while the token endpoint misbehaves: a token with life left is
//! served through fetch failures, refresh ahead of expiry, backoff with fail-fast, recovery,
//! short-lived tokens, and validity that depends on no timer. Paused Tokio time throughout.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::{CountingSource, paused_runtime};
use tokio::{task::JoinSet, time::advance};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, Error};

type Body = Empty<bytes::Bytes>;

fn request() -> Request<Body> {
    Request::get("https://api.test/data")
        .body(Body::new())
        .unwrap()
}

/// `n` concurrent requests through `auth`; the number that succeeded.
async fn burst(auth: &AuthLayer, source: &CountingSource, n: usize) -> usize {
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(source.api());
    let mut set = JoinSet::new();
    for _ in 0..n {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(request()).await });
    }
    set.join_all()
        .await
        .into_iter()
        .filter(|r: &Result<http::Response<String>, BoxError>| {
            r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .count()
}

#[tokio::test(start_paused = true)]
async fn in_steady_state_no_caller_waits_for_a_fetch() {
    // 100-second tokens, requests every second for 20 lifetimes.
    let source = CountingSource::new(Duration::from_millis(50), Some(Duration::from_secs(100)));
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(1)
        .build()
        .unwrap();
    for _ in 0..2_000 {
        assert_eq!(burst(&auth, &source, 10).await, 10);
        advance(Duration::from_secs(1)).await;
    }
    let stats = auth.stats();
    assert_eq!(
        stats.waiters, 10,
        "only the ten callers of the cold start waited"
    );
    // 2,000 s / (100 s - 30 s margin, less the refresh window) ≈ one fetch per ~60 s.
    assert!((25..=40).contains(&stats.fetches), "{stats:?}");
    assert_eq!(stats.background_refreshes, stats.fetches - 1);
    assert_eq!(stats.fetch_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_sixty_second_outage_while_the_token_is_valid_fails_no_request() {
    // 600-second tokens: used for 570 s, refreshed in the background from 456-513 s on.
    let source = CountingSource::new(Duration::from_millis(10), Some(Duration::from_secs(600)));
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(2)
        .build()
        .unwrap();
    assert_eq!(burst(&auth, &source, 1).await, 1);

    advance(Duration::from_secs(440)).await;
    source.set_down(true);
    // Requests keep coming through the outage, which covers the whole refresh window start.
    let mut ok = 0;
    for _ in 0..60 {
        advance(Duration::from_secs(1)).await;
        ok += burst(&auth, &source, 20).await;
    }
    assert_eq!(ok, 60 * 20, "no request failed during the outage");
    let during = auth.stats();
    assert!(
        during.fetch_failures >= 1,
        "background refreshes were tried: {during:?}"
    );
    // Backoff bounds the attempts: 1,200 requests, a handful of fetches.
    assert!(during.fetches <= 12, "{during:?}");

    // The endpoint comes back: the next background attempt succeeds before the token expires.
    source.set_down(false);
    for _ in 0..60 {
        advance(Duration::from_secs(1)).await;
        assert_eq!(burst(&auth, &source, 5).await, 5);
    }
    let after = auth.stats();
    assert!(
        after.token_usable_for.unwrap() > Duration::from_secs(500),
        "{after:?}"
    );
    assert_eq!(after.waiters, 1, "nobody but the cold start waited");
}

#[tokio::test(start_paused = true)]
async fn an_outage_inside_a_short_tokens_life_fails_no_request() {
    // 20-second tokens: refresh target at 10 s (the 30 s margin, clamped to half the life),
    // sent until 18 s (expiry less a tenth of the life). The endpoint is down from 1 s to 15 s.
    let source = CountingSource::new(Duration::from_millis(10), Some(Duration::from_secs(20)));
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(12)
        .build()
        .unwrap();
    let mut requests = 0;
    let mut failed = 0;
    // 50 callers every 100 ms for 18 s.
    for step in 0..180 {
        match step {
            10 => source.set_down(true),
            150 => source.set_down(false),
            _ => {}
        }
        requests += 50;
        failed += 50 - burst(&auth, &source, 50).await;
        advance(Duration::from_millis(100)).await;
    }
    let stats = auth.stats();
    assert_eq!(
        failed, 0,
        "{failed} of {requests} requests failed: {stats:?}"
    );
    assert_eq!(stats.waiters, 50, "only the cold start waited");
    assert!(
        stats.fetch_failures >= 3,
        "refreshes were tried and failed: {stats:?}"
    );
    assert!(
        stats.served_stale >= 50 * 40,
        "requests between the target (10 s) and the end of the outage were served stale: {stats:?}"
    );
    assert!(
        stats.fetches <= 16,
        "the backoff bounds attempts: {stats:?}"
    );
    assert_eq!(
        source.api().unauthorized(),
        0,
        "no request carried an expired token"
    );
}

#[tokio::test(start_paused = true)]
async fn after_expiry_a_failing_endpoint_sees_at_most_one_attempt_per_backoff_interval() {
    let source = CountingSource::new(Duration::from_millis(10), Some(Duration::from_secs(60)));
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .jitter_seed(3)
        .build()
        .unwrap();
    assert_eq!(burst(&auth, &source, 1).await, 1);
    source.set_down(true);
    advance(Duration::from_secs(60)).await;

    // 1,000 callers every 100 ms for 60 s.
    let mut failed = 0;
    for _ in 0..600 {
        failed += 1_000 - burst(&auth, &source, 1_000).await;
        advance(Duration::from_millis(100)).await;
    }
    assert_eq!(
        failed, 600_000,
        "every caller got the error fast, none hung"
    );
    let attempts = source.fetches() - 1;
    // Exponential backoff from 200 ms to 30 s, each wait between half and all of its step:
    // the waits add up to 60 s after at least 9 and at most 12 attempts.
    assert!((9..=12).contains(&attempts), "{attempts} attempts in 60 s");
    // The 1,000 callers of a round that made an attempt waited for it; all others failed fast.
    assert_eq!(auth.stats().failed_fast, 600_000 - 1_000 * attempts as u64);

    // The error callers get is the endpoint's, typed.
    let err = auth.token().await.unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err:?}");

    // Back up: the first attempt after the current backoff succeeds; nothing stays poisoned.
    source.set_down(false);
    advance(Duration::from_secs(30)).await;
    assert_eq!(burst(&auth, &source, 100).await, 100);
    assert_eq!(source.fetches() - 1, attempts + 1);
}

#[tokio::test(start_paused = true)]
async fn one_second_tokens_are_refreshed_about_twice_a_second_not_in_a_loop() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(1)));
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(4)
        .build()
        .unwrap();
    for _ in 0..1_000 {
        assert_eq!(burst(&auth, &source, 3).await, 3);
        advance(Duration::from_millis(10)).await;
    }
    // 10 s of traffic; each token is used for half its life (0.5 s) and refreshed ahead.
    let fetches = source.fetches();
    assert!((18..=30).contains(&fetches), "{fetches} fetches in 10 s");
}

#[tokio::test(start_paused = true)]
async fn with_refresh_ahead_off_the_refresh_starts_at_the_target_and_nobody_waits() {
    // 100-second tokens: refresh target at 70 s, sent until 90 s.
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(100)));
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    assert_eq!(burst(&auth, &source, 1).await, 1);
    advance(Duration::from_secs(69)).await;
    assert_eq!(burst(&auth, &source, 10).await, 10);
    assert_eq!(source.fetches(), 1, "no refresh before the target");
    advance(Duration::from_secs(2)).await;
    assert_eq!(burst(&auth, &source, 10).await, 10);
    assert_eq!(source.fetches(), 2, "one refresh at the target");
    assert_eq!(
        source.api().seen().last().unwrap(),
        "tok-1",
        "sent meanwhile"
    );
    advance(Duration::from_millis(10)).await;
    assert_eq!(burst(&auth, &source, 10).await, 10);
    assert_eq!(source.api().seen().last().unwrap(), "tok-2");
    let stats = auth.stats();
    assert_eq!((stats.waiters, stats.background_refreshes), (1, 1));
}

/// Sends one request through `svc` (kept, not cloned: a long-lived service) and returns the
/// token it carried.
async fn send<S>(svc: &mut S, api: &support::ProtectedApi) -> String
where
    S: tower::Service<Request<Body>, Response = http::Response<String>, Error = BoxError>,
{
    let response = svc.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    api.seen().last().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_long_lived_service_sees_expiry_and_revocation_at_once() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(100)));
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    for _ in 0..20 {
        assert_eq!(send(&mut svc, &api).await, "tok-1");
    }
    // Sent until 90 s (100 s less the 10 s allowance); no request came in between to refresh
    // it, so the next one waits for a new token.
    advance(Duration::from_secs(90)).await;
    assert_eq!(send(&mut svc, &api).await, "tok-2", "expired at 90 s");
    for _ in 0..20 {
        assert_eq!(send(&mut svc, &api).await, "tok-2");
    }
    // Revoked: the next request is rejected and resent with a new token, and the one after
    // uses that new token.
    api.revoke("tok-2");
    assert_eq!(send(&mut svc, &api).await, "tok-3");
    assert_eq!(send(&mut svc, &api).await, "tok-3");
    assert_eq!(api.unauthorized(), 1);
    // Forgotten by hand (`invalidate`): the same.
    assert!(auth.invalidate(&tower_bearer::Token::new("tok-3")));
    assert_eq!(send(&mut svc, &api).await, "tok-4");
    assert_eq!(source.fetches(), 4);
    assert_eq!(
        auth.stats().waiters,
        4,
        "the cold start, the expiry, the resend after the revocation, the invalidation"
    );
}

/// A runtime that shuts down takes nothing with it: requests made from another runtime
/// afterwards see the token expire.
#[test]
fn a_token_fetched_by_a_runtime_since_shut_down_still_expires() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(100)));
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(auth).service(api.clone());
    let first = paused_runtime();
    first.block_on(async {
        for _ in 0..20 {
            assert_eq!(send(&mut svc, &api).await, "tok-1");
        }
    });
    drop(first);
    paused_runtime().block_on(async {
        assert_eq!(send(&mut svc, &api).await, "tok-1");
        advance(Duration::from_secs(91)).await;
        assert_eq!(send(&mut svc, &api).await, "tok-2");
    });
    assert_eq!(source.fetches(), 2);
    assert_eq!(
        api.unauthorized(),
        0,
        "no request carried the expired token"
    );
}

/// The first token is fetched by a helper thread's runtime (a synchronous wrapper's
/// `block_on`), which is kept but never driven again. Validity is read from the clock on every
/// request, so nothing of that runtime is needed to see the token expire.
#[test]
fn a_token_fetched_on_a_runtime_kept_idle_never_reaches_the_api_after_it_expired() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(100)));
    let api = source.api();
    let auth = AuthLayer::new(source.clone());
    let mut svc = ServiceBuilder::new().layer(auth).service(api.clone());
    let helper = paused_runtime();
    helper.block_on(async {
        assert_eq!(send(&mut svc, &api).await, "tok-1");
    });
    // `helper` stays alive, idle, to the end of the test.
    paused_runtime().block_on(async {
        for _ in 0..100 {
            assert_eq!(send(&mut svc, &api).await, "tok-1");
        }
        advance(Duration::from_secs(101)).await;
        for _ in 0..100 {
            assert_eq!(send(&mut svc, &api).await, "tok-2");
        }
    });
    assert_eq!(api.unauthorized(), 0, "the API never saw the expired token");
    assert_eq!(source.fetches(), 2);
    drop(helper);
}

#[tokio::test(start_paused = true)]
async fn retry_after_holds_the_next_fetch_back_longer_than_the_backoff_would() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = calls.clone();
    let source = tower_bearer::source::from_fn(move || {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                return Err(Error::UnexpectedResponse {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "busy".into(),
                    excerpt: None,
                    retry_after: Some(Duration::from_secs(120)),
                });
            }
            Ok(tower_bearer::Token::new("t").with_expires_in(Duration::from_secs(3600)))
        }
    });
    // A backoff of 1 ms: only `Retry-After` can hold the next fetch back for long.
    let auth = AuthLayer::builder(source)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .unwrap();
    let first = auth.token().await.unwrap_err();
    assert_eq!(first.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "not retried within the fetch"
    );
    advance(Duration::from_secs(119)).await;
    let held = auth.token().await.unwrap_err();
    assert_eq!(
        held.retry_after(),
        Some(Duration::from_secs(120)),
        "the same error, at once"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    advance(Duration::from_secs(1)).await;
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "t");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}
