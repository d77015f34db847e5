//! A misbehaving token endpoint, over real HTTP on 127.0.0.1: each fault gives a typed error,
//! no panic and no hang; a transient fault is retried within the fetch, so a blip costs the
//! waiting callers latency, not errors; and the endpoint sees a bounded number of attempts
//! however many callers keep calling. The pauses between retries are timed in paused Tokio
//! time: with an in-process source, and over HTTP with the clock moved by hand.

#![cfg(feature = "oauth")]

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{
    http::{StatusCode, header},
    response::IntoResponse,
};
use support::{RawEndpoint, RawFault, StandInEndpoint};
use tokio::{task::JoinSet, time::Instant};
use tower_bearer::{
    AuthLayer, AuthLayerBuilder, ClientAuth, ClientCredentials, Error, Token, TokenSource,
};

fn builder(url: String) -> AuthLayerBuilder {
    AuthLayer::builder(
        ClientCredentials::builder(url)
            .client_id("id")
            .client_secret("secret")
            .auth(ClientAuth::Post)
            .build()
            .unwrap(),
    )
    .fetch_timeout(Duration::from_secs(3))
    .jitter_seed(5)
}

/// A layer whose backoff after a failed fetch is at least 5 s: longer than any test here, so
/// every fetch after the first falls inside it.
fn layer(url: String) -> AuthLayer {
    builder(url)
        .backoff(Duration::from_secs(10), Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The same with no backoff at all, to show what the backoff saves.
fn layer_without_backoff(url: String) -> AuthLayer {
    builder(url)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap()
}

/// 1,000 callers ask for a token at once, `rounds` times one after the other; every one must
/// get an error.
async fn storm(auth: &AuthLayer, rounds: usize) -> Vec<Error> {
    let mut errors = Vec::new();
    for _ in 0..rounds {
        let mut set = JoinSet::new();
        for _ in 0..1_000 {
            let auth = auth.clone();
            set.spawn(async move { auth.token().await });
        }
        for result in set.join_all().await {
            errors.push(result.expect_err("a faulty endpoint gives no token"));
        }
    }
    errors
}

async fn stand_in(
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> StandInEndpoint {
    StandInEndpoint::start(move |_| {
        let mut response = (status, body).into_response();
        for (k, v) in headers {
            response
                .headers_mut()
                .insert(*k, header::HeaderValue::from_static(v));
        }
        response
    })
    .await
}

#[tokio::test]
async fn connection_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/token");
    let auth = layer(url.clone());
    let errors = storm(&auth, 3).await;
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, Error::Transport(t) if t.is_connect()))
    );
    assert!(
        errors
            .iter()
            .all(|e| e.is_transient() && e.is_unprocessed())
    );
    let stats = auth.stats();
    // One fetch (three attempts) for 3,000 callers: the second and third rounds fell inside
    // the backoff and failed fast.
    assert_eq!(
        (stats.fetches, stats.fetch_retries, stats.failed_fast),
        (1, 2, 2_000),
        "{stats:?}"
    );

    // Without the backoff, each round makes its own fetch.
    let unbounded = layer_without_backoff(url);
    storm(&unbounded, 3).await;
    assert_eq!(unbounded.stats().fetches, 3);
}

#[tokio::test]
async fn slow_past_the_fetch_timeout() {
    let endpoint = RawEndpoint::start(RawFault::Hang).await;
    let auth = builder(endpoint.url("/token"))
        .fetch_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // A deadline far past the fetch timeout, so that a hang fails the test instead of
    // stalling the suite; how long the storm took is not asserted.
    let errors = tokio::time::timeout(Duration::from_secs(60), storm(&auth, 1))
        .await
        .expect("the callers must get their timeout, not hang");
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, Error::Timeout(d) if *d == Duration::from_millis(300)))
    );
    assert_eq!(
        endpoint.connections.load(SeqCst),
        1,
        "one attempt for 1,000 callers"
    );
}

#[tokio::test]
async fn server_errors_are_transient_typed_and_retried_within_the_fetch() {
    for (status, body) in [
        (StatusCode::INTERNAL_SERVER_ERROR, "<h1>oops</h1>"),
        (StatusCode::BAD_GATEWAY, ""),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"temporarily_unavailable"}"#,
        ),
    ] {
        let endpoint = stand_in(status, &[("content-type", "text/html")], body).await;
        let auth = layer(endpoint.url("/token"));
        let errors = storm(&auth, 2).await;
        for e in &errors {
            assert!(e.is_transient(), "{status}: {e:?}");
            assert!(!e.is_terminal(), "{status}: {e:?}");
        }
        assert_eq!(
            endpoint.recorded().len(),
            3,
            "{status}: one fetch of three attempts for 2,000 callers"
        );
    }
}

#[tokio::test]
async fn one_failure_on_a_cold_start_fails_none_of_200_waiters() {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    let endpoint = StandInEndpoint::start(move |_| {
        if count.fetch_add(1, SeqCst) == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
        } else {
            support::token_json("after-the-blip", 3600)
        }
    })
    .await;
    let auth = layer(endpoint.url("/token"));
    let mut set = JoinSet::new();
    for _ in 0..200 {
        let auth = auth.clone();
        set.spawn(async move { auth.token().await });
    }
    for result in set.join_all().await {
        assert_eq!(result.unwrap().access_token().secret(), "after-the-blip");
    }
    assert_eq!(endpoint.recorded().len(), 2);
    let stats = auth.stats();
    assert_eq!(
        (
            stats.fetches,
            stats.fetch_retries,
            stats.fetch_failures,
            stats.waiters
        ),
        (1, 1, 0, 200)
    );
}

#[tokio::test]
async fn fetch_attempts_bound_the_requests_of_one_fetch() {
    let endpoint = stand_in(StatusCode::BAD_GATEWAY, &[], "").await;
    let once = builder(endpoint.url("/token"))
        .fetch_attempts(1)
        .build()
        .unwrap();
    assert!(once.token().await.unwrap_err().is_transient());
    assert_eq!(endpoint.recorded().len(), 1);
    let four = builder(endpoint.url("/token"))
        .fetch_attempts(4)
        .fetch_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    four.token().await.unwrap_err();
    assert_eq!(endpoint.recorded().len(), 1 + 4);
    assert_eq!(four.stats().fetch_retries, 3);
}

#[tokio::test]
async fn retry_after_is_read_from_429_and_503() {
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let endpoint = stand_in(status, &[("retry-after", "120")], "slow down").await;
        let auth = layer(endpoint.url("/token"));
        let errors = storm(&auth, 2).await;
        assert!(
            errors
                .iter()
                .all(|e| e.retry_after() == Some(Duration::from_secs(120)))
        );
        assert!(errors.iter().all(Error::is_transient));
        // Asked to wait longer than the fetch may take: not retried within the fetch. (That
        // the wait is honoured between fetches is tested in paused time, in reliability.rs.)
        assert_eq!(endpoint.recorded().len(), 1, "{status}");
    }
}

/// A `Retry-After` of any value (more than a u64 of seconds, `u64::MAX`, a date at the end of
/// time or long past, negative, junk) costs a typed error and a pause of at most an hour, never
/// a panic of the fetch task (which callers would see as `Error::Aborted`).
#[tokio::test]
async fn a_hostile_retry_after_is_capped_and_never_panics() {
    let hour = Some(Duration::from_secs(3600));
    let cases: &[(&str, Option<Duration>)] = &[
        ("18446744073709551615", hour),
        ("99999999999999999999999999999999", hour),
        ("Fri, 31 Dec 9999 23:59:59 GMT", hour),
        ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ("-1", None),
        ("1e9", None),
        ("", None),
    ];
    for &(value, expected) in cases {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("retry-after", value)]));
        let endpoint = stand_in(StatusCode::SERVICE_UNAVAILABLE, headers, "busy").await;
        let auth = builder(endpoint.url("/token"))
            .fetch_attempts(2)
            .build()
            .unwrap();
        let err = auth.token().await.unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { status, .. } if status == 503),
            "Retry-After {value:?}: {err:?}"
        );
        assert_eq!(err.retry_after(), expected, "Retry-After {value:?}");
        // A second caller gets the same error at once (the backoff holds), not a panic.
        let again = auth.token().await.unwrap_err();
        assert!(!matches!(again, Error::Aborted), "Retry-After {value:?}");
    }
}

#[tokio::test]
async fn malformed_answers_are_typed_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("content-type", "application/json")],
            r#"{"access_token": "abc"#,
        ),
        (&[("content-type", "application/json")], "[]"),
        (&[("content-type", "application/json")], ""),
        (&[("content-type", "text/html")], "<html>login page</html>"),
        (
            &[("content-type", "application/json")],
            r#"{"token_type":"bearer"}"#,
        ),
        (
            &[("content-type", "application/json")],
            r#"{"access_token": 42}"#,
        ),
    ];
    for (headers, body) in cases {
        let endpoint = stand_in(StatusCode::OK, headers, body).await;
        let auth = layer(endpoint.url("/token"));
        let err = auth.token().await.unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { .. }),
            "{body:?}: {err:?}"
        );
        assert!(
            !format!("{err} {err:?}").contains("abc"),
            "no token leaks from {body:?}"
        );
        assert_eq!(endpoint.recorded().len(), 1, "not retried: {body:?}");
    }
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_a_transport_error() {
    let endpoint = RawEndpoint::start(RawFault::Write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"access_token\":\"trunc",
    ))
    .await;
    let auth = layer(endpoint.url("/token"));
    let errors = storm(&auth, 1).await;
    assert!(
        errors.iter().all(|e| matches!(e, Error::Transport(_))),
        "{:?}",
        errors[0]
    );
    assert!(!errors[0].is_unprocessed(), "the server answered");
    assert!(!format!("{:?}", errors[0]).contains("trunc"));
}

#[tokio::test]
async fn garbage_instead_of_http_is_a_transport_error() {
    let endpoint = RawEndpoint::start(RawFault::Write(b"\x00\x01 not http at all\r\n\r\n")).await;
    let auth = layer(endpoint.url("/token"));
    let err = auth.token().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
}

/// A token source that fails with a 503 (a transient error) a set number of times, then issues
/// a token, and records the paused clock at each attempt.
#[derive(Clone)]
struct FlakySource {
    failures: usize,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl FlakySource {
    fn new(failures: usize) -> Self {
        FlakySource {
            failures,
            attempts: Arc::default(),
        }
    }

    /// The time between each attempt and the next.
    fn gaps(&self) -> Vec<Duration> {
        let attempts = self.attempts.lock().unwrap();
        attempts.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl TokenSource for FlakySource {
    async fn fetch(&self) -> Result<Token, Error> {
        let mut attempts = self.attempts.lock().unwrap();
        attempts.push(Instant::now());
        if attempts.len() <= self.failures {
            return Err(Error::UnexpectedResponse {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "busy".into(),
                excerpt: None,
                retry_after: None,
            });
        }
        Ok(Token::new("after-the-retries").with_expires_in(Duration::from_secs(3600)))
    }
}

/// In paused time, with an in-process source: the pauses between the attempts of one fetch.
#[tokio::test(start_paused = true)]
async fn retry_pauses_inside_a_fetch_are_100_to_200_ms_then_200_to_400_ms() {
    // Many jitter seeds, so that the pauses land all over their ranges.
    for seed in 0..200 {
        let source = FlakySource::new(2);
        let auth = AuthLayer::builder(source.clone())
            .jitter_seed(seed)
            .build()
            .unwrap();
        let token = auth.token().await.unwrap();
        assert_eq!(token.access_token().secret(), "after-the-retries");
        let [first, second] = source.gaps().try_into().unwrap();
        let ms = Duration::from_millis;
        assert!(
            (ms(100)..=ms(200)).contains(&first),
            "seed {seed}: first pause {first:?}"
        );
        assert!(
            (ms(200)..=ms(400)).contains(&second),
            "seed {seed}: second pause {second:?}"
        );
        let stats = auth.stats();
        assert_eq!((stats.fetches, stats.fetch_retries), (1, 2), "seed {seed}");
    }
}

/// Yields until `done`, without moving the paused clock: yielding lets the loopback I/O and the
/// other tasks run, and the clock moves only when the runtime has nothing to do.
async fn yield_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Over real HTTP in paused time, the clock moved by hand: the endpoint answers the first
/// request 503 with `Retry-After: 1`, and the fetch sends the next one exactly 1 s later.
#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_1_is_retried_after_that_second() {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    let endpoint = StandInEndpoint::start(move |_| {
        if count.fetch_add(1, SeqCst) == 0 {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "busy",
            )
                .into_response()
        } else {
            support::token_json("after-one-second", 3600)
        }
    })
    .await;
    let auth = builder(endpoint.url("/token")).build().unwrap();
    let started = Instant::now();
    let call = tokio::spawn({
        let auth = auth.clone();
        async move { auth.token().await }
    });

    yield_until("the 503 was answered and a retry planned", || {
        auth.stats().fetch_retries == 1
    })
    .await;
    assert_eq!(Instant::now(), started);
    tokio::time::advance(Duration::from_millis(999)).await;
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(endpoint.recorded().len(), 1, "retried before 1 s");

    tokio::time::advance(Duration::from_millis(1)).await;
    yield_until("the retry was answered", || call.is_finished()).await;
    let token = call.await.unwrap().unwrap();
    assert_eq!(token.access_token().secret(), "after-one-second");
    assert_eq!(endpoint.recorded().len(), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}
