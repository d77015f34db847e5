//! `reqwest::Client` as the inner service: `Service<reqwest::Request>`, resent after a 401
//! through `Request::try_clone`, over real HTTP on 127.0.0.1.

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
