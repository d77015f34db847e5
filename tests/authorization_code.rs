//! Authorization-code exchange with PKCE, then renewal as a refresh-token grant.

#![cfg(feature = "oauth")]

mod support;

use std::sync::atomic::Ordering::SeqCst;

use support::{StandInEndpoint, StandInIdp, store::FlakyStore, token_json};
use tower_bearer::{
    AuthLayer, AuthorizationCode, ClientAuth, Error, Pkce,
    store::{MemoryStore, TokenStore},
};

fn flow(idp: &StandInIdp, store: impl TokenStore) -> AuthorizationCode {
    AuthorizationCode::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .redirect_uri("https://app.example.com/callback")
        .scope("check")
        .store(store)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_code_with_pkce_is_exchanged_once_then_renewed_by_refresh() {
    let idp = StandInIdp::start().await;
    let pkce = Pkce::new().unwrap();
    idp.add_code("code-1", Some(pkce.challenge()));
    let store = MemoryStore::new();

    let grant = flow(&idp, store.clone())
        .exchange("code-1", Some(pkce.verifier()))
        .await
        .unwrap();

    let [req] = idp.requests_to("/token").try_into().unwrap();
    let form = req.form();
    for pair in [
        ("grant_type", "authorization_code"),
        ("code", "code-1"),
        ("redirect_uri", "https://app.example.com/callback"),
        ("scope", "check"),
        ("code_verifier", pkce.verifier().secret()),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
    ] {
        assert!(
            form.contains(&(pair.0.into(), pair.1.into())),
            "{pair:?} in {form:?}"
        );
    }
    let saved = store.load().await.unwrap().unwrap();
    assert_eq!(saved.refresh_token().unwrap().secret(), "rt-1");

    // The exchanged access token is used first, without another request ...
    let auth = AuthLayer::new(grant);
    let token = auth.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-1");
    assert_eq!(idp.requests_to("/token").len(), 1);
    // ... then the refresh token renews it, without the exchange's scope.
    auth.invalidate(&token);
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-2");
    let refresh = idp.requests_to("/token").pop().unwrap().form();
    assert!(refresh.contains(&("grant_type".into(), "refresh_token".into())));
    assert!(refresh.contains(&("refresh_token".into(), "rt-1".into())));
    assert!(!refresh.iter().any(|(k, _)| k == "scope"));
}

#[tokio::test]
async fn a_wrong_verifier_fails_and_is_not_retried() {
    let idp = StandInIdp::start().await;
    let pkce = Pkce::new().unwrap();
    idp.add_code("code-1", Some(pkce.challenge()));
    let other = Pkce::new().unwrap();
    let err = flow(&idp, MemoryStore::new())
        .exchange("code-1", Some(other.verifier()))
        .await
        .unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_grant");
    assert_eq!(idp.requests_to("/token").len(), 1);
}

#[tokio::test]
async fn a_code_works_once() {
    let idp = StandInIdp::start().await;
    idp.add_code("code-1", None);
    flow(&idp, MemoryStore::new())
        .exchange("code-1", None)
        .await
        .unwrap();
    let err = flow(&idp, MemoryStore::new())
        .exchange("code-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_grant");
}

#[test]
fn the_authorize_url_carries_state_scope_and_challenge() {
    let flow = AuthorizationCode::builder("https://idp.example.com/token")
        .client_id("app id")
        .client_secret("s")
        .redirect_uri("https://app.example.com/cb")
        .scope("read write")
        .build()
        .unwrap();
    let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    let url = flow
        .authorize_url("https://idp.example.com/authorize", "st-1", Some(&pkce))
        .unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let expected = [
        ("response_type", "code"),
        ("client_id", "app id"),
        ("redirect_uri", "https://app.example.com/cb"),
        ("scope", "read write"),
        ("state", "st-1"),
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
        ("code_challenge_method", "S256"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs, expected);
}

#[test]
fn a_missing_redirect_uri_is_a_config_error() {
    let err = AuthorizationCode::builder("https://idp.example.com/token")
        .client_id("app")
        .client_secret("s")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("redirect URI"), "{err}");
}

#[tokio::test]
async fn a_public_client_sends_its_id_and_no_secret() {
    let idp = StandInIdp::start().await;
    idp.add_code("code-1", None);
    AuthorizationCode::builder(idp.url("/token"))
        .client_id("public-app")
        .auth(ClientAuth::None)
        .redirect_uri("https://app.example.com/cb")
        .build()
        .unwrap()
        .exchange("code-1", None)
        .await
        .unwrap();
    let [req] = idp.requests_to("/token").try_into().unwrap();
    assert!(
        req.form()
            .contains(&("client_id".into(), "public-app".into()))
    );
    assert!(!req.form().iter().any(|(k, _)| k == "client_secret"));
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn resume_continues_from_the_store_without_an_exchange() {
    let idp = StandInIdp::start().await;
    idp.add_code("code-1", None);
    let store = MemoryStore::new();
    flow(&idp, store.clone())
        .exchange("code-1", None)
        .await
        .unwrap();
    // Later, in a new process: the same settings, no code.
    let auth = AuthLayer::new(flow(&idp, store.clone()).resume());
    let token = auth.token().await.unwrap();
    assert_eq!(
        token.access_token().secret(),
        "at-1",
        "the stored access token"
    );
    auth.invalidate(&token);
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "at-2");
    assert_eq!(idp.refresh_tokens_sent(), ["rt-1"]);

    // With nothing stored, resuming asks for an authorization.
    let empty = AuthLayer::new(flow(&idp, MemoryStore::new()).resume());
    assert!(matches!(
        empty.token().await.unwrap_err(),
        tower_bearer::Error::AuthorizationRequired(_)
    ));
}

#[tokio::test]
async fn the_code_exchange_is_never_retried() {
    let idp = StandInIdp::start().await;
    idp.add_code("code-1", None);
    // The next token request gets 503 `temporarily_unavailable`: a failure the refresh grant
    // and the layer would retry. A code is single-use, so the exchange does not.
    idp.state.unavailable.store(1, SeqCst);
    let err = flow(&idp, MemoryStore::new())
        .exchange("code-1", None)
        .await
        .unwrap_err();
    assert_eq!(
        err.oauth().map(|e| e.code()),
        Some("temporarily_unavailable")
    );
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(idp.requests_to("/token").len(), 1, "sent once");
}

/// With `ClientAuth::Query` the client credentials and the plain parameters go in the URL, but
/// the code and the PKCE verifier, which are secrets, go in the form body: URLs end up in proxy
/// and access logs.
#[tokio::test]
async fn query_client_auth_keeps_the_code_and_the_verifier_out_of_the_url() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-1", 3600)).await;
    let pkce = Pkce::new().unwrap();
    let verifier = pkce.verifier().secret().to_owned();
    AuthorizationCode::builder(endpoint.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Query)
        .redirect_uri("https://app.example.com/callback")
        .build()
        .unwrap()
        .exchange("code-1", Some(pkce.verifier()))
        .await
        .unwrap();

    let [req] = endpoint.recorded().try_into().unwrap();
    let query = req.query_pairs();
    for pair in [
        ("grant_type", "authorization_code"),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
    ] {
        assert!(
            query.contains(&(pair.0.into(), pair.1.into())),
            "{pair:?} in {query:?}"
        );
    }
    assert!(
        query
            .iter()
            .all(|(k, v)| k != "code" && k != "code_verifier" && v != "code-1" && *v != verifier),
        "{query:?}"
    );
    let raw = req.query.clone().unwrap_or_default();
    assert!(!raw.contains("code-1") && !raw.contains(&verifier), "{raw}");
    let form = req.form();
    assert!(form.contains(&("code".into(), "code-1".into())), "{form:?}");
    assert!(
        form.contains(&("code_verifier".into(), verifier)),
        "{form:?}"
    );
}

/// The exchanged tokens are saved before `exchange` returns: a store that cannot save them
/// makes the exchange fail with `Error::Store`.
#[tokio::test]
async fn an_exchange_whose_tokens_cannot_be_saved_fails_with_a_store_error() {
    let idp = StandInIdp::start().await;
    idp.add_code("code-1", None);
    let store = FlakyStore::default();
    store.broken.store(true, SeqCst);

    let err = flow(&idp, store.clone())
        .exchange("code-1", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err:?}");
    assert_eq!(idp.requests_to("/token").len(), 1, "the code was exchanged");
    assert_eq!(store.inner.load().await.unwrap(), None, "nothing was saved");
}
