//! A misbehaving token endpoint, over real HTTP on 127.0.0.1: each fault gives a typed error,
//! no panic and no hang, and the endpoint sees a bounded number of attempts however many
//! callers keep calling.

mod support;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use axum::{
    http::{StatusCode, header},
    response::IntoResponse,
};
use support::{RawEndpoint, RawFault, StandInEndpoint};
use tokio::task::JoinSet;
use tower_bearer::{AuthLayer, ClientAuth, ClientCredentials, Error};

fn layer(url: String) -> AuthLayer {
    AuthLayer::builder(
        ClientCredentials::builder(url)
            .client_id("id")
            .client_secret("secret")
            .auth(ClientAuth::Post)
            .build()
            .unwrap(),
    )
    .fetch_timeout(Duration::from_millis(300))
    .backoff(Duration::from_millis(100), Duration::from_secs(1))
    .jitter_seed(5)
    .build()
    .unwrap()
}

/// 1,000 callers ask for a token at once, `rounds` times; every one must get an error.
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
    let auth = layer(format!("http://127.0.0.1:{port}/token"));
    let errors = storm(&auth, 3).await;
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, Error::Transport(t) if t.is_connect()))
    );
    assert!(errors.iter().all(Error::is_transient));
    assert!(auth.stats().fetches <= 3, "{:?}", auth.stats());
}

#[tokio::test]
async fn slow_past_the_fetch_timeout() {
    let endpoint = RawEndpoint::start(RawFault::Hang).await;
    let auth = layer(endpoint.url("/token"));
    let started = tokio::time::Instant::now();
    let errors = storm(&auth, 1).await;
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
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
async fn server_errors_are_transient_and_typed() {
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
        assert!(
            endpoint.recorded().len() <= 2,
            "{status}: backoff bounds attempts"
        );
    }
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_and_503() {
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let endpoint = stand_in(status, &[("retry-after", "120")], "slow down").await;
        let auth = layer(endpoint.url("/token"));
        let errors = storm(&auth, 5).await;
        assert_eq!(errors[0].retry_after(), Some(Duration::from_secs(120)));
        assert!(errors.iter().all(Error::is_transient));
        assert_eq!(
            endpoint.recorded().len(),
            1,
            "{status}: nothing more within Retry-After, although backoff alone allows it"
        );
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
    assert!(!format!("{:?}", errors[0]).contains("trunc"));
}

#[tokio::test]
async fn garbage_instead_of_http_is_a_transport_error() {
    let endpoint = RawEndpoint::start(RawFault::Write(b"\x00\x01 not http at all\r\n\r\n")).await;
    let auth = layer(endpoint.url("/token"));
    let err = auth.token().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
}
