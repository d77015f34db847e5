//! `AuthMiddleware` in a `reqwest_middleware` client, over real HTTP on 127.0.0.1.
#![cfg(feature = "reqwest-middleware")]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::{CountingSource, StandInEndpoint};
use tower_bearer::{AuthLayer, Error};

#[tokio::test]
async fn the_middleware_shares_the_layer_cache_and_retries_after_a_401() {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
    let server = StandInEndpoint::protected_api(&source).await;

    let auth = AuthLayer::new(source.clone());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();

    let response = client
        .post(server.url("/a"))
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The layer and the middleware share one token.
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-1");

    source.api().revoke("tok-1");
    let response = client
        .post(server.url("/b"))
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "two");

    let seen: Vec<_> = server
        .recorded()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.header("authorization").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("/a".to_owned(), "Bearer tok-1".to_owned()),
            ("/b".to_owned(), "Bearer tok-1".to_owned()),
            ("/b".to_owned(), "Bearer tok-2".to_owned()),
        ]
    );
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches, stats.unauthorized, stats.retries),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn token_errors_reach_the_caller_typed() {
    let source = CountingSource::new(Duration::ZERO, None);
    source.fail_fetch(1);
    let auth = AuthLayer::new(source);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    let err = client.get("http://127.0.0.1:9/x").send().await.unwrap_err();
    match err {
        reqwest_middleware::Error::Middleware(e) => {
            let e = e.downcast_ref::<Error>().expect("a tower_bearer::Error");
            assert!(matches!(e, Error::Source(_)), "{e:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
