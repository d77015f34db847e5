//! Keeping a service running while the token endpoint misbehaves: refresh ahead of expiry,
//! backoff with fail-fast, recovery, and short-lived tokens. Paused Tokio time throughout.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::CountingSource;
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
    // Exponential backoff capped at 30 s with full jitter: a few attempts in the first
    // seconds, then about one every 15 s.
    assert!((3..=25).contains(&attempts), "{attempts} attempts in 60 s");

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
async fn refresh_ahead_off_still_renews_at_expiry() {
    let source = CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(100)));
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    assert_eq!(burst(&auth, &source, 1).await, 1);
    advance(Duration::from_secs(69)).await;
    assert_eq!(burst(&auth, &source, 10).await, 10);
    assert_eq!(
        source.fetches(),
        1,
        "no refresh before expiry less the margin"
    );
    advance(Duration::from_secs(2)).await;
    assert_eq!(burst(&auth, &source, 10).await, 10);
    assert_eq!(source.fetches(), 2);
    assert_eq!(auth.stats().background_refreshes, 0);
}

/// Sends one request through `svc` (kept, not cloned: a long-lived service, which after its
/// first requests reads only its own copy of the token's state) and returns the token it
/// carried.
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
    // Usable until 70 s (100 s less the 30 s margin).
    advance(Duration::from_secs(69)).await;
    assert_eq!(send(&mut svc, &api).await, "tok-1");
    advance(Duration::from_secs(1)).await;
    assert_eq!(send(&mut svc, &api).await, "tok-2", "expired at 70 s");
    for _ in 0..20 {
        assert_eq!(send(&mut svc, &api).await, "tok-2");
    }
    // Revoked: the next request is rejected and resent with a new token, and the one after
    // uses that new token, not the one this service had cached.
    api.revoke("tok-2");
    assert_eq!(send(&mut svc, &api).await, "tok-3");
    assert_eq!(send(&mut svc, &api).await, "tok-3");
    assert_eq!(api.unauthorized(), 1);
    // Forgotten by hand (`invalidate`): the same.
    assert!(auth.invalidate(&tower_bearer::Token::new("tok-3")));
    assert_eq!(send(&mut svc, &api).await, "tok-4");
    assert_eq!(source.fetches(), 4);
}

/// The flag that spares a request the clock read is cleared by a timer of the runtime that
/// fetched the token. A runtime that shuts down fires its timers, so requests made from another
/// runtime afterwards still see the token expire.
#[test]
fn a_token_fetched_by_a_runtime_since_shut_down_still_expires() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(100)));
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .refresh_ahead(false)
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new().layer(auth).service(api.clone());
    let first = paused();
    first.block_on(async {
        for _ in 0..20 {
            assert_eq!(send(&mut svc, &api).await, "tok-1");
        }
    });
    drop(first);
    paused().block_on(async {
        assert_eq!(send(&mut svc, &api).await, "tok-1");
        advance(Duration::from_secs(71)).await;
        assert_eq!(send(&mut svc, &api).await, "tok-2");
    });
    assert_eq!(source.fetches(), 2);
    assert_eq!(
        api.unauthorized(),
        0,
        "no request carried the expired token"
    );
}
