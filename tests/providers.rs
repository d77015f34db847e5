//! The three providers the crate was specified from, each as a stand-in that reproduces the
//! documented request and response shapes, configured as examples/providers.rs shows.

#![cfg(feature = "oauth")]

mod support;

use std::time::Duration;

use axum::{http::StatusCode, response::IntoResponse};
use http::Request;
use http_body_util::Empty;
use support::{Recorded, StandInEndpoint};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, AuthorizationCode, ClientAuth, ClientCredentials};

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn json(body: serde_json::Value) -> axum::response::Response {
    axum::Json(body).into_response()
}

/// Seconds the layer will send the current token, rounded: its lifetime less the allowance
/// for transit and clock skew (`EXPIRY_ALLOWANCE`, 10 s).
fn usable_secs(auth: &AuthLayer) -> u64 {
    auth.stats().token_usable_for.unwrap().as_secs_f64().round() as u64
}

// ---------------------------------------------------------------------------------------------
// Casebook: client_credentials at {callback}/oauth2/token. The reference lists the credentials
// as query parameters of a form POST with no body; the samples send a form body, the Python
// sample with an extra redirect_uri. Tokens live one hour.

fn casebook(recorded: &Recorded) -> axum::response::Response {
    let mut params = recorded.query_pairs();
    params.extend(recorded.form());
    let ok = params.contains(&("client_id".into(), "cb-client".into()))
        && params.contains(&("client_secret".into(), "cb-secret".into()))
        && params.contains(&("grant_type".into(), "client_credentials".into()));
    if !ok || recorded.path != "/casebook/oauth2/token" {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    json(
        serde_json::json!({"access_token": "cb-token", "token_type": "Bearer", "expires_in": 3600}),
    )
}

#[tokio::test]
async fn casebook_with_credentials_in_the_query() {
    let endpoint = StandInEndpoint::start(casebook).await;
    let callback = endpoint.url("/casebook");
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{callback}/oauth2/token"))
            .client_id("cb-client")
            .client_secret("cb-secret")
            .auth(ClientAuth::Query)
            .build()
            .unwrap(),
    );
    assert_eq!(
        auth.token().await.unwrap().access_token().secret(),
        "cb-token"
    );
    assert_eq!(usable_secs(&auth), 3600 - 10);

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(req.body, "");
    assert_eq!(
        req.query_pairs(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cb-client"),
            ("client_secret", "cb-secret"),
        ])
    );
}

#[tokio::test]
async fn casebook_with_a_form_body_and_redirect_uri() {
    let endpoint = StandInEndpoint::start(casebook).await;
    let callback = endpoint.url("/casebook");
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{callback}/oauth2/token"))
            .client_id("cb-client")
            .client_secret("cb-secret")
            .auth(ClientAuth::Post)
            .param("redirect_uri", callback.clone())
            .build()
            .unwrap(),
    );
    assert_eq!(
        auth.token().await.unwrap().access_token().secret(),
        "cb-token"
    );
    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(req.query, None);
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("redirect_uri", &callback),
            ("client_id", "cb-client"),
            ("client_secret", "cb-secret"),
        ])
    );
}

#[tokio::test]
async fn casebook_without_expires_in_still_renews_hourly() {
    // The documentation shows no response body; if expires_in is missing, the default
    // lifetime (one hour, Casebook's documented lifetime) applies.
    let endpoint =
        StandInEndpoint::start(|_| json(serde_json::json!({"access_token": "cb-token"}))).await;
    let auth = AuthLayer::new(
        ClientCredentials::builder(endpoint.url("/casebook/oauth2/token"))
            .client_id("cb-client")
            .client_secret("cb-secret")
            .auth(ClientAuth::Post)
            .build()
            .unwrap(),
    );
    let token = auth.token().await.unwrap();
    assert_eq!(token.expires_in(), None);
    assert_eq!(usable_secs(&auth), 3600 - 10);
}

// ---------------------------------------------------------------------------------------------
// CAS (IdentityServer style): client_credentials at /connect/token, form body, a JWT access
// token that expires in 1200 seconds.

const CAS_JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJjbGllbnRfaWQiOiJhcGktZmFrZS10ZXN0LmNsaWVudCIsInNjb3BlIjpbImRlYWxzLXJlYWQiXX0.c2lnbmF0dXJlLW5vdC1jaGVja2Vk";

#[tokio::test]
async fn cas_identityserver_client_credentials() {
    let endpoint = StandInEndpoint::start(|req| {
        if req.path != "/connect/token" {
            return StatusCode::NOT_FOUND.into_response();
        }
        json(serde_json::json!({"access_token": CAS_JWT, "expires_in": 1200, "token_type": "Bearer"}))
    })
    .await;
    let (api, api_seen) = support::recording_api::<Empty<bytes::Bytes>>();
    let auth = AuthLayer::new(
        ClientCredentials::builder(endpoint.url("/connect/token"))
            .client_id("api-fake-test.client")
            .client_secret("858b8c39-a389-4d30-ad13-a231010b8268")
            .auth(ClientAuth::Post)
            .build()
            .unwrap(),
    );
    let svc = ServiceBuilder::new().layer(auth.clone()).service(api);
    svc.oneshot(
        Request::get("https://api.example.com/v1")
            .body(Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(*api_seen.lock().unwrap(), [format!("Bearer {CAS_JWT}")]);
    assert_eq!(usable_secs(&auth), 1200 - 10);

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "api-fake-test.client"),
            ("client_secret", "858b8c39-a389-4d30-ad13-a231010b8268"),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Checkbook: authorization_code exchange with scope, redirect_uri and the secret in the form
// body; the response carries a refresh token and expires_in 15552000; refresh_token grant; the
// API wants `Authorization: bearer TOKEN`; scope `single-use` means one request per token.

fn checkbook(recorded: &Recorded) -> axum::response::Response {
    let form = recorded.form();
    let has = |k: &str, v: &str| form.contains(&(k.into(), v.into()));
    if !has("client_id", "cbk-client") || !has("client_secret", "cbk-secret") {
        return (
            StatusCode::UNAUTHORIZED,
            json(serde_json::json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let n = form
        .iter()
        .find(|(k, _)| k == "refresh_token")
        .map_or(0, |(_, v)| {
            v.trim_start_matches("REFRESH_").parse::<u32>().unwrap() + 1
        });
    let grant_ok = (has("grant_type", "authorization_code")
        && has("code", "AUTHORIZATION_CODE")
        && has("redirect_uri", "https://example.com")
        && form.iter().any(|(k, _)| k == "scope"))
        || has("grant_type", "refresh_token");
    if !grant_ok {
        return (
            StatusCode::BAD_REQUEST,
            json(serde_json::json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .map_or("single-use".to_owned(), |(_, v)| v.clone());
    json(serde_json::json!({
        "access_token": format!("BEARER_{n}"),
        "token_type": "Bearer",
        "expires_in": 15552000,
        "refresh_token": format!("REFRESH_{n}"),
        "scope": scope,
    }))
}

#[tokio::test]
async fn checkbook_single_use_tokens_with_a_lower_case_scheme() {
    let endpoint = StandInEndpoint::start(checkbook).await;
    let grant = AuthorizationCode::builder(endpoint.url("/web/v1/auth/oauth/token"))
        .client_id("cbk-client")
        .client_secret("cbk-secret")
        .auth(ClientAuth::Post)
        .redirect_uri("https://example.com")
        .scope("single-use")
        .build()
        .unwrap()
        .exchange("AUTHORIZATION_CODE", None)
        .await
        .unwrap();
    let auth = AuthLayer::builder(grant)
        .scheme("bearer")
        .max_token_uses(1)
        .build()
        .unwrap();

    let (api, seen) = support::recording_api::<Empty<bytes::Bytes>>();
    let svc = ServiceBuilder::new().layer(auth.clone()).service(api);
    for _ in 0..3 {
        svc.clone()
            .oneshot(
                Request::get("https://api.example.com/v1")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["bearer BEARER_0", "bearer BEARER_1", "bearer BEARER_2"]
    );

    let requests = endpoint.recorded();
    assert_eq!(
        requests.len(),
        3,
        "one exchange, then one refresh per further use"
    );
    assert_eq!(
        requests[0].form(),
        pairs(&[
            ("grant_type", "authorization_code"),
            ("code", "AUTHORIZATION_CODE"),
            ("redirect_uri", "https://example.com"),
            ("scope", "single-use"),
            ("client_id", "cbk-client"),
            ("client_secret", "cbk-secret"),
        ])
    );
    assert_eq!(
        requests[1].form(),
        pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "REFRESH_0"),
            ("client_id", "cbk-client"),
            ("client_secret", "cbk-secret"),
        ])
    );
    let token = auth.stats();
    assert_eq!(token.fetches, 3);
    assert!(token.token_usable_for.unwrap() > Duration::from_secs(15_552_000 - 60));
}
