//! `reqwest::Client` as the inner service: `Service<reqwest::Request>`, resent after a 401
//! through `Request::try_clone`, over real HTTP on 127.0.0.1.

#![cfg(feature = "oauth")]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{CountingSource, StandInEndpoint};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::AuthLayer;

#[tokio::test]
async fn a_reqwest_client_gets_the_token_and_recovers_from_a_revocation() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
    let server = StandInEndpoint::protected_api(&source).await;

    let auth = AuthLayer::new(source.clone());
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(reqwest::Client::new());
    let post = |body: &'static str| {
        reqwest::Client::new()
            .post(server.url("/items"))
            .body(body)
            .build()
            .unwrap()
    };

    let response = client.clone().oneshot(post("first")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    source.api().revoke("tok-1");
    let response = client.oneshot(post("second")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "second");

    let seen: Vec<_> = server
        .recorded()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(auth.stats().retries, 1);
}

/// A streaming `reqwest::Body` cannot be copied by `Request::try_clone`, so it is not resent:
/// the caller gets the 401, counted as not resent, and the next request carries a new token.
/// (`Body::wrap_stream` needs reqwest's `stream` feature, which this crate does not enable;
/// `Body::wrap` makes the same streaming body.)
#[tokio::test]
async fn a_streaming_reqwest_body_rejected_with_401_is_not_resent() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
    let server = StandInEndpoint::protected_api(&source).await;
    let auth = AuthLayer::new(source.clone());
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(reqwest::Client::new());
    let streaming = || {
        let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = ["str", "eam"]
            .into_iter()
            .map(|c| {
                Ok(http_body::Frame::data(bytes::Bytes::from_static(
                    c.as_bytes(),
                )))
            })
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        let mut request =
            reqwest::Request::new(http::Method::POST, server.url("/upload").parse().unwrap());
        *request.body_mut() = Some(reqwest::Body::wrap(body));
        assert!(request.try_clone().is_none(), "a stream cannot be copied");
        request
    };

    auth.token().await.unwrap();
    source.api().revoke("tok-1");
    let response = client.clone().oneshot(streaming()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let stats = auth.stats();
    assert_eq!((stats.retries, stats.not_resent), (0, 1));
    let sent: Vec<_> = server
        .recorded()
        .iter()
        .map(|r| {
            (
                r.header("authorization").unwrap().to_owned(),
                r.body.clone(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [("Bearer tok-1".to_owned(), "stream".to_owned())],
        "sent once"
    );

    let response = client.oneshot(streaming()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the next request has tok-2"
    );
    assert_eq!(response.text().await.unwrap(), "stream");
}
