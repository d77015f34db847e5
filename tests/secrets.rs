//! No secret reaches `Debug` or `Display` of any public type, or a log line.

#![cfg(feature = "oauth")]

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::StandInEndpoint;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    AccessToken, AuthLayer, ClientAuth, ClientCredentials, ClientSecret, RefreshToken, StaticToken,
    Token, source::from_fn,
};

const MARK: &str = "TOPSECRET";

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(MARK), "{what} leaks a secret: {text}");
}

#[tokio::test]
async fn debug_of_every_public_type_is_redacted() {
    let endpoint =
        StandInEndpoint::start(|_| support::token_json(&format!("access-{MARK}"), 3600)).await;
    let builder = ClientCredentials::builder(endpoint.url("/token"))
        .client_id("client")
        .client_secret(format!("secret-{MARK}"))
        .auth(ClientAuth::Post)
        .param("audience", format!("aud-{MARK}"));
    assert_clean("ClientCredentialsBuilder", &format!("{builder:?}"));
    let source = builder.build().unwrap();
    assert_clean("ClientCredentials", &format!("{source:?}"));

    let auth = AuthLayer::builder(source).expiry_margin(Duration::from_secs(1));
    assert_clean("AuthLayerBuilder", &format!("{auth:?}"));
    let auth = auth.build().unwrap();
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), format!("access-{MARK}"));
    assert_clean("Token", &format!("{token:?}"));
    assert_clean("AuthLayer", &format!("{auth:?}"));
    assert_clean("Stats", &format!("{:?}", auth.stats()));

    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(tower::service_fn(
            |req: Request<Empty<bytes::Bytes>>| async move {
                // The header the layer set is marked sensitive, so Debug of the request hides it.
                assert!(req.headers()["authorization"].is_sensitive());
                assert_clean("request headers", &format!("{:?}", req.headers()));
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            },
        ));
    assert_clean("AuthService", &format!("{svc:?}"));
    let response = svc
        .oneshot(
            Request::get("https://api.example.com/v1")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    for text in [
        format!("{:?}", AccessToken::new(MARK)),
        format!("{:?}", RefreshToken::new(MARK)),
        format!("{:?}", ClientSecret::new(MARK)),
        format!("{:?}", StaticToken::new(MARK)),
        format!("{:?}", Token::new(MARK).with_refresh_token(MARK)),
        format!("{:?}", from_fn(|| async { Ok(Token::new("x")) })),
        format!("{:?}", tower_bearer::assertion::Assertion::new(MARK)),
        format!(
            "{:?}",
            tower_bearer::assertion::GithubActions::new(
                "https://actions.example/idtoken?a=1",
                MARK
            )
            .unwrap()
        ),
        format!(
            "{:?}",
            tower_bearer::JwtBearer::builder(
                endpoint.url("/token"),
                tower_bearer::assertion::from_fn(|| async {
                    Ok(tower_bearer::assertion::Assertion::new(MARK))
                })
            )
            .client_id("client")
            .client_secret(MARK)
        ),
    ] {
        assert_clean("secret type", &text);
    }
}
