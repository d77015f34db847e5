//! Token exchange (RFC 8693) over real HTTP against a stand-in token endpoint on 127.0.0.1: the
//! request's shape, the issued token's type, the subject token's expiry, secrets; and the
//! gateway pattern, a keyed layer that exchanges each user's token once. Then the same against
//! a real authorization server that verifies the subject token (oidc-provider with an RFC 8693
//! grant, which `scripts/test` starts; see tests/oidc-provider): a plain `cargo test` skips
//! those as ignored.

#![cfg(feature = "oauth")]

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{http::StatusCode, response::IntoResponse};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{Request, Response};
use serde_json::json;
use support::{Recorded, StandInEndpoint};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_bearer::{
    ClientAuth, Error, SubjectToken, TokenExchange, TokenExchangeBuilder, TokenSource,
    keyed::KeyedAuthLayer,
};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Issues `exchanged-for-<subject>` as a Bearer access token living an hour.
fn exchange(recorded: &Recorded) -> axum::response::Response {
    let form: HashMap<_, _> = recorded.form().into_iter().collect();
    if form.get("grant_type").map(String::as_str) != Some(GRANT) {
        return (StatusCode::BAD_REQUEST, "not an exchange").into_response();
    }
    let subject = &form["subject_token"];
    axum::Json(json!({
        "access_token": format!("exchanged-for-{subject}"),
        "issued_token_type": TokenExchange::ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
    .into_response()
}

fn builder(endpoint: &StandInEndpoint, subject: &str) -> TokenExchangeBuilder {
    TokenExchange::builder(endpoint.url("/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .auth(ClientAuth::Post)
        .subject_token(subject, TokenExchange::ACCESS_TOKEN)
}

/// A JWT (unsigned: the source reads `exp` only) expiring `in_seconds` from now.
fn jwt_expiring_in(in_seconds: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": "user-1", "exp": now + in_seconds});
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn an_exchange_sends_the_subject_and_actor_tokens_with_their_types() {
    let endpoint = StandInEndpoint::start(exchange).await;
    let source = builder(&endpoint, "user-token")
        .actor_token("gateway-token", TokenExchange::JWT)
        .requested_token_type(TokenExchange::ACCESS_TOKEN)
        .audience("orders")
        .resource("https://orders.example.com/")
        .scope("orders:read")
        .build()
        .unwrap();
    let token = source.fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), "exchanged-for-user-token");
    assert_eq!(token.issued_token_type(), Some(TokenExchange::ACCESS_TOKEN));

    let [request] = endpoint.recorded().try_into().unwrap();
    let form = request.form();
    let expected = [
        ("grant_type", GRANT),
        ("subject_token", "user-token"),
        ("subject_token_type", TokenExchange::ACCESS_TOKEN),
        ("actor_token", "gateway-token"),
        ("actor_token_type", TokenExchange::JWT),
        ("requested_token_type", TokenExchange::ACCESS_TOKEN),
        ("scope", "orders:read"),
        ("audience", "orders"),
        ("resource", "https://orders.example.com/"),
        ("client_id", "gateway"),
        ("client_secret", "gateway-secret"),
    ];
    for (name, value) in expected {
        assert!(
            form.contains(&(name.into(), value.into())),
            "{name} missing: {form:?}"
        );
    }
}

#[tokio::test]
async fn a_token_that_is_not_an_access_token_is_refused_unless_accepted() {
    let endpoint = StandInEndpoint::start(|_| {
        axum::Json(json!({
            "access_token": "an-id-token",
            "issued_token_type": TokenExchange::ID_TOKEN,
            "token_type": "N_A",
        }))
        .into_response()
    })
    .await;
    let err = builder(&endpoint, "user-token")
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err}");
    assert!(err.to_string().contains("N_A"), "{err}");

    let source = builder(&endpoint, "user-token")
        .accept_not_applicable(true)
        .build()
        .unwrap();
    let token = source.fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), "an-id-token");
    assert_eq!(token.issued_token_type(), Some(TokenExchange::ID_TOKEN));
}

#[tokio::test]
async fn the_exchanged_token_is_not_used_past_the_subject_tokens_expiry() {
    let endpoint = StandInEndpoint::start(exchange).await;
    // The subject's own `exp`, read from the JWT.
    let source = builder(&endpoint, &jwt_expiring_in(90)).build().unwrap();
    let lifetime = source.fetch().await.unwrap().expires_in().unwrap();
    assert!(lifetime <= Duration::from_secs(90), "{lifetime:?}");
    assert!(lifetime >= Duration::from_secs(80), "{lifetime:?}");
    // An expiry given explicitly, for a token that is not a JWT.
    let source = builder(&endpoint, "opaque")
        .subject_expires_at(SystemTime::now() + Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(source.fetch().await.unwrap().expires_in().unwrap() <= Duration::from_secs(30));
    // A subject that outlives the exchanged token changes nothing.
    let source = builder(&endpoint, &jwt_expiring_in(7200)).build().unwrap();
    let lifetime = source.fetch().await.unwrap().expires_in().unwrap();
    assert!(lifetime > Duration::from_secs(3590), "{lifetime:?}");
}

#[tokio::test]
async fn an_expired_subject_token_is_refused_and_nothing_is_sent() {
    let endpoint = StandInEndpoint::start(exchange).await;
    let expired = builder(&endpoint, "opaque")
        .subject_expires_at(SystemTime::now() - Duration::from_secs(1))
        .build()
        .unwrap();
    let err = expired.fetch().await.unwrap_err();
    assert!(matches!(err, Error::AuthorizationRequired(_)), "{err}");
    assert!(err.is_terminal());
    assert!(
        endpoint.recorded().is_empty(),
        "no exchange with an expired subject"
    );
}

#[tokio::test]
async fn the_subject_token_reaches_no_error_debug_or_identity() {
    let subject = "subject-SECRET-0123456789abcdef";
    // An endpoint that echoes the whole form in its error description.
    let endpoint = StandInEndpoint::start(|recorded| {
        let body = json!({"error": "invalid_request", "error_description": recorded.body});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    })
    .await;
    let source = builder(&endpoint, subject)
        .actor_token("actor-SECRET-0123456789abcdef", TokenExchange::JWT)
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{source:?}"),
        source.identity().unwrap(),
    ] {
        assert!(!text.contains("SECRET"), "a secret leaked: {text}");
    }
    assert!(format!("{:?}", SubjectToken::new(subject)).contains("redacted"));
}

#[test]
fn a_missing_subject_or_a_reserved_parameter_is_refused_at_build() {
    let build = || {
        TokenExchange::builder("https://idp.example.com/token")
            .client_id("gateway")
            .client_secret("s")
    };
    assert!(matches!(build().build(), Err(Error::Config(_))));
    assert!(matches!(
        build().subject_token("", TokenExchange::JWT).build(),
        Err(Error::Config(_))
    ));
    for reserved in [
        "subject_token",
        "actor_token_type",
        "requested_token_type",
        "grant_type",
    ] {
        let err = build()
            .subject_token("t", TokenExchange::JWT)
            .param(reserved, "x")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(reserved), "{err}");
    }
}

/// The gateway's key: the user's credential, in `x-user-authorization` (`Bearer <token>`).
fn user_credential(request: &tower_bearer::keyed::RequestInfo<'_>) -> Option<SubjectToken> {
    let credential = request.header("x-user-authorization")?;
    credential.strip_prefix("Bearer ").map(SubjectToken::new)
}

/// `rounds` requests of each user through `gateway`, all at once; each must succeed.
async fn call_as_each<S>(gateway: &S, users: &[String], rounds: usize)
where
    S: tower::Service<Request<String>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug + Send,
{
    let calls: Vec<_> = (0..rounds)
        .flat_map(|_| users.iter())
        .map(|user| {
            let request = Request::get("http://127.0.0.1:1/orders")
                .header("x-user-authorization", format!("Bearer {user}"))
                .body(String::new())
                .unwrap();
            tokio::spawn(gateway.clone().oneshot(request))
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

/// The gateway: the incoming `Authorization` is the key and the subject token; 50 users with 20
/// requests each at once cost one exchange per user, and each downstream request carries the
/// token exchanged for its own user.
#[tokio::test]
async fn a_gateway_exchanges_each_users_token_once_and_never_mixes_users() {
    let endpoint = StandInEndpoint::start(exchange).await;
    let url = endpoint.url("/token");
    // One HTTP client for every user's exchanges, rather than one each.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let auth = KeyedAuthLayer::builder(user_credential, move |subject: &SubjectToken| {
        TokenExchange::builder(url.clone())
            .client_id("gateway")
            .client_secret("gateway-secret")
            .http_client(http.clone())
            .subject_token(subject.clone(), TokenExchange::ACCESS_TOKEN)
            .audience("orders")
            .build()
    })
    .build()
    .unwrap();
    let downstream = service_fn(|request: Request<String>| async move {
        let user = request.headers()["x-user-authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        let sent = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        let user = user.trim_start_matches("Bearer ");
        assert_eq!(
            sent,
            format!("Bearer exchanged-for-{user}"),
            "another user's token"
        );
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let gateway = ServiceBuilder::new()
        .layer(auth.clone())
        .service(downstream);
    let users: Vec<String> = (0..50).map(|user| format!("user-{user}")).collect();
    call_as_each(&gateway, &users, 20).await;
    assert_eq!(endpoint.recorded().len(), 50, "one exchange per user");
    assert_eq!(auth.keys(), 50);
}

// ---------------------------------------------------------------------------------------------
// Against oidc-provider.

/// An opaque access token of another client (`bearer-secret`), which the server can look up.
async fn a_users_token(http: &reqwest::Client) -> String {
    let source =
        tower_bearer::ClientCredentials::builder(format!("{}/token", support::oidc_provider()))
            .client_id("bearer-secret")
            .client_secret("bearer-secret-value")
            .resource("http://127.0.0.1/opaque-api")
            .scope("read")
            .http_client(http.clone())
            .build()
            .unwrap();
    source
        .fetch()
        .await
        .unwrap()
        .access_token()
        .secret()
        .to_owned()
}

fn exchanger(http: &reqwest::Client, subject: &SubjectToken) -> TokenExchangeBuilder {
    TokenExchange::builder(format!("{}/token", support::oidc_provider()))
        .client_id("exchanger")
        .client_secret("exchanger-secret")
        .http_client(http.clone())
        .subject_token(subject.clone(), TokenExchange::ACCESS_TOKEN)
        .scope("read")
}

/// The issued token is active at the server's introspection endpoint, and is the exchanger's.
async fn introspect(http: &reqwest::Client, token: &str) -> serde_json::Value {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    let response = http
        .post(format!("{}/token/introspection", support::oidc_provider()))
        .basic_auth("introspector", Some("introspector-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_real_server_exchanges_a_valid_subject_token_and_refuses_a_forged_one() {
    let http = reqwest::Client::new();
    let subject = SubjectToken::new(a_users_token(&http).await);
    let token = exchanger(&http, &subject)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(token.issued_token_type(), Some(TokenExchange::ACCESS_TOKEN));
    assert_ne!(token.access_token().secret(), subject.secret());
    let lifetime = token.expires_in().unwrap();
    assert!(
        lifetime <= Duration::from_secs(600),
        "no longer than the subject: {lifetime:?}"
    );
    let active = introspect(&http, token.access_token().secret()).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], "exchanger", "{active}");

    let forged = SubjectToken::new("not-a-token-of-this-server");
    let err = exchanger(&http, &forged)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(
        err.oauth().map(|e| e.code()),
        Some("invalid_grant"),
        "{err}"
    );
    assert!(err.is_terminal());
}

/// The gateway against the real server: 10 users, 30 requests each at once, one exchange per
/// user, and every downstream request carries a token the server issued for its own user's
/// exchange.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_gateway_on_a_real_server_exchanges_once_per_user() {
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(a_users_token(&http).await);
    }
    let exchanges = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let auth = {
        let http = http.clone();
        KeyedAuthLayer::builder(user_credential, move |subject: &SubjectToken| {
            exchanger(&http, subject).build()
        })
        .build()
        .unwrap()
    };
    let downstream = {
        let exchanges = Arc::clone(&exchanges);
        service_fn(move |request: Request<String>| {
            let exchanges = Arc::clone(&exchanges);
            async move {
                let user = request.headers()["x-user-authorization"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let sent = request.headers()["authorization"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let mut exchanges = exchanges.lock().unwrap();
                let first = exchanges
                    .entry(user.clone())
                    .or_insert_with(|| sent.clone());
                assert_eq!(*first, sent, "one exchanged token per user");
                assert!(
                    exchanges.values().filter(|t| **t == sent).count() == 1,
                    "shared by two users"
                );
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    let gateway = ServiceBuilder::new()
        .layer(auth.clone())
        .service(downstream);
    call_as_each(&gateway, &users, 30).await;
    assert_eq!(exchanges.lock().unwrap().len(), 10);
    for user in &users {
        let stats = auth.stats(&SubjectToken::new(user.clone())).unwrap();
        assert_eq!(stats.fetches, 1, "one exchange per user");
    }
    // Each exchanged token is live at the server.
    let sent: Vec<String> = exchanges.lock().unwrap().values().cloned().collect();
    for sent in &sent {
        let token = sent.trim_start_matches("Bearer ");
        assert_eq!(introspect(&http, token).await["active"], true);
    }
}
