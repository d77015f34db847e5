//! Authorization server metadata: discovery, issuer check, client authentication choice.

#![cfg(feature = "oauth")]

mod support;

use axum::{http::StatusCode, response::IntoResponse};
use support::{StandInEndpoint, StandInIdp};
use tower_bearer::{
    AuthLayer, ClientAuth, ClientCredentials, Error, ProviderMetadata, TokenSource,
};

#[tokio::test]
async fn discovered_metadata_configures_a_grant() {
    let idp = StandInIdp::start().await;
    let issuer = idp.url("");
    let metadata = ProviderMetadata::discover(&issuer).await.unwrap();
    assert_eq!(metadata.issuer(), issuer);
    assert_eq!(metadata.token_endpoint(), idp.url("/token"));
    assert_eq!(
        metadata.revocation_endpoint(),
        Some(idp.url("/revoke").as_str())
    );

    // The server supports only client_secret_post: the grant uses it, and only it.
    let auth = AuthLayer::new(
        ClientCredentials::from_metadata(&metadata)
            .client_id("svc")
            .client_secret("svc-secret")
            .build()
            .unwrap(),
    );
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-1");
    let [req] = idp.requests_to("/token").try_into().unwrap();
    assert_eq!(req.header("authorization"), None);
    assert!(
        req.form()
            .contains(&("client_secret".into(), "svc-secret".into()))
    );

    // Revocation goes to the discovered endpoint.
    auth.revoke().await.unwrap();
    let [revoke] = idp.requests_to("/revoke").try_into().unwrap();
    assert!(revoke.form().contains(&("token".into(), "at-1".into())));
}

#[tokio::test]
async fn a_document_naming_another_issuer_is_refused() {
    let endpoint = StandInEndpoint::start(|_| {
        axum::Json(serde_json::json!({
            "issuer": "https://evil.example.com",
            "token_endpoint": "https://evil.example.com/token",
        }))
        .into_response()
    })
    .await;
    let err = ProviderMetadata::discover(&endpoint.url(""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Discovery(_)), "{err:?}");
    assert!(err.to_string().contains("evil.example.com"), "{err}");
}

#[tokio::test]
async fn the_rfc8414_location_is_tried_when_oidc_is_absent() {
    let endpoint = StandInEndpoint::start(|req| {
        if req.path == "/.well-known/oauth-authorization-server/tenant" {
            let base = req.header("host").unwrap().to_owned();
            axum::Json(serde_json::json!({
                "issuer": format!("http://{base}/tenant"),
                "token_endpoint": format!("http://{base}/tenant/token"),
            }))
            .into_response()
        } else {
            StatusCode::NOT_FOUND.into_response()
        }
    })
    .await;
    let metadata = ProviderMetadata::discover(&endpoint.url("/tenant"))
        .await
        .unwrap();
    assert_eq!(metadata.token_endpoint(), endpoint.url("/tenant/token"));
    let paths: Vec<_> = endpoint.recorded().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/tenant/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant"
        ]
    );
}

#[tokio::test]
async fn no_document_is_a_discovery_error() {
    let endpoint = StandInEndpoint::start(|_| StatusCode::NOT_FOUND.into_response()).await;
    let err = ProviderMetadata::discover(&endpoint.url(""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Discovery(_)), "{err:?}");
}

#[tokio::test]
async fn an_explicit_auth_wins_over_the_discovered_method() {
    let idp = StandInIdp::start().await;
    let metadata = ProviderMetadata::discover(&idp.url("")).await.unwrap();
    // The server lists only client_secret_post; the builder asks for Basic.
    assert_eq!(metadata.client_auth(), Some(ClientAuth::Post));
    let source = ClientCredentials::from_metadata(&metadata)
        .client_id("svc")
        .client_secret("svc-secret")
        .auth(ClientAuth::Basic)
        .build()
        .unwrap();
    source.fetch().await.unwrap();

    let [req] = idp.requests_to("/token").try_into().unwrap();
    let authorization = req.header("authorization").unwrap_or_default();
    let credentials = authorization
        .strip_prefix("Basic ")
        .map(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .unwrap_or_else(|| panic!("not Basic: {authorization:?}"));
    assert_eq!(credentials, b"svc:svc-secret");
    let form = req.form();
    assert!(
        !form
            .iter()
            .any(|(k, _)| k == "client_secret" || k == "client_id"),
        "{form:?}"
    );
}

#[tokio::test]
async fn a_discovered_plain_http_endpoint_off_loopback_is_refused_unless_allow_http() {
    let endpoint = StandInEndpoint::start(|req| {
        let base = req.header("host").unwrap().to_owned();
        axum::Json(serde_json::json!({
            "issuer": format!("http://{base}"),
            "token_endpoint": "http://idp.example.com/token",
        }))
        .into_response()
    })
    .await;
    let issuer = endpoint.url("");
    let err = ProviderMetadata::discover(&issuer).await.unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("plain http") && m.contains("allow_http")),
        "{err:?}"
    );

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let metadata = ProviderMetadata::discover_with(&issuer, &http, true)
        .await
        .unwrap();
    assert_eq!(metadata.token_endpoint(), "http://idp.example.com/token");
}
