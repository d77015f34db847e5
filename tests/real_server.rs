//! Interoperability with a real authorization server: django-oauth-toolkit, started on
//! 127.0.0.1 by `scripts/test` (see tests/authserver/README.md). Skipped, with a message, when
//! it is not running; a failure when `TOWER_BEARER_REQUIRE_AUTHSERVER=1` (as in CI).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    AuthLayer, AuthorizationCode, ClientAuth, ClientCredentials, Error, Pkce, ProviderMetadata,
    RefreshTokenGrant,
    store::{FileStore, MemoryStore, StoredToken, TokenStore},
};

macro_rules! server_or_skip {
    ($name:literal) => {
        match support::authserver($name) {
            Some(base) => base,
            None => return,
        }
    };
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET /api/whoami` through `auth`: the status and the JSON body (null unless 200).
async fn whoami(auth: &AuthLayer, base: &str) -> (StatusCode, serde_json::Value) {
    let client = ServiceBuilder::new().layer(auth.clone()).service(http());
    let request = http::Request::get(format!("{base}/api/whoami"))
        .body(Empty::new())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `GET /api/whoami` with a token of our choosing, bypassing the layer.
async fn whoami_with(base: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{base}/api/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn form_post(url: &str, basic: (&str, &str), form: &[(&str, &str)]) -> serde_json::Value {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = reqwest::Client::new()
        .post(url)
        .basic_auth(basic.0, Some(basic.1))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// A refresh token for `alice` from the password grant of `rt-client`.
async fn first_refresh_token(base: &str) -> String {
    let json = form_post(
        &format!("{base}/o/token/"),
        ("rt-client", "rt-secret"),
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-password"),
            ("scope", "read write"),
        ],
    )
    .await;
    json["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned()
}

fn client_credentials(base: &str, id: &str, secret: &str, auth: ClientAuth) -> AuthLayer {
    AuthLayer::new(
        ClientCredentials::builder(format!("{base}/o/token/"))
            .client_id(id)
            .client_secret(secret)
            .auth(auth)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn client_credentials_with_basic_and_a_special_character_secret() {
    let base = server_or_skip!("client_credentials_with_basic_and_a_special_character_secret");
    let auth = client_credentials(
        &base,
        "cc-basic",
        "basic:s3cret/with+special%&=",
        ClientAuth::Basic,
    );
    let (status, json) = whoami(&auth, &base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["client_id"], "cc-basic");
    let token = auth.token().await.unwrap();
    assert_eq!(token.token_type(), "Bearer");
    assert!(token.expires_in().unwrap() > Duration::from_secs(3500));
}

#[tokio::test]
async fn client_credentials_with_post_and_a_scope() {
    let base = server_or_skip!("client_credentials_with_post_and_a_scope");
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{base}/o/token/"))
            .client_id("cc-post")
            .client_secret("post-secret")
            .auth(ClientAuth::Post)
            .scope("read")
            .build()
            .unwrap(),
    );
    let (status, json) = whoami(&auth, &base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["client_id"], "cc-post");
    assert_eq!(json["scope"], "read");
}

#[tokio::test]
async fn a_wrong_secret_is_a_terminal_oauth_error() {
    let base = server_or_skip!("a_wrong_secret_is_a_terminal_oauth_error");
    let auth = client_credentials(&base, "cc-post", "wrong", ClientAuth::Post);
    let err = auth.token().await.unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_client");
    assert!(err.is_terminal());
    assert!(!format!("{err} {err:?}").contains("wrong"));
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_once_for_many_concurrent_callers() {
    let base = server_or_skip!("a_short_lived_token_is_renewed_once_for_many_concurrent_callers");
    let auth = client_credentials(&base, "cc-short", "short-secret", ClientAuth::Basic);

    for round in 1..=3u64 {
        // 1,000 callers at once, each wanting a token: one fetch.
        let mut set = JoinSet::new();
        for _ in 0..1_000 {
            let auth = auth.clone();
            set.spawn(async move { auth.token().await.unwrap() });
        }
        let tokens = set.join_all().await;
        assert!(
            tokens
                .iter()
                .all(|t| t.access_token() == tokens[0].access_token())
        );
        assert_eq!(auth.stats().fetches, round, "one fetch per token lifetime");
        // The server accepts it.
        assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
        assert_eq!(auth.stats().retries, 0);
        // Wait out the token's useful life (half of its 2 s: the margin is clamped).
        let left = auth.stats().token_usable_for.unwrap();
        assert!(left <= Duration::from_secs(1), "{left:?}");
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_side_revocation_is_recovered_transparently() {
    let base = server_or_skip!("a_server_side_revocation_is_recovered_transparently");
    // A client of its own, so revoking its tokens disturbs no other test.
    let auth = client_credentials(
        &base,
        "cc-basic",
        "basic:s3cret/with+special%&=",
        ClientAuth::Post,
    );
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
    let first = auth.token().await.unwrap();

    form_post(
        &format!("{base}/test/revoke-all"),
        ("x", "x"),
        &[("client_id", "cc-basic")],
    )
    .await;
    assert_eq!(
        whoami_with(&base, first.access_token().secret()).await,
        StatusCode::UNAUTHORIZED
    );

    let (status, json) = whoami(&auth, &base).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the 401 was retried with a new token"
    );
    assert_eq!(json["client_id"], "cc-basic");
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches, stats.unauthorized, stats.retries),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_never_reused() {
    let base = server_or_skip!("refresh_tokens_rotate_and_are_never_reused");
    let rt0 = first_refresh_token(&base).await;
    let store = MemoryStore::with(StoredToken::new().with_refresh_token(rt0.as_str()));
    let auth = AuthLayer::new(
        RefreshTokenGrant::builder(format!("{base}/o/token/"))
            .client_id("rt-client")
            .client_secret("rt-secret")
            .store(store.clone())
            .build()
            .unwrap(),
    );

    let mut seen = vec![rt0.clone()];
    for _ in 0..3 {
        // 500 callers at once: one refresh. DOT revokes the whole grant if a refresh token is
        // ever presented twice, so every later success proves none was.
        let mut set = JoinSet::new();
        for _ in 0..500 {
            let auth = auth.clone();
            set.spawn(async move { auth.token().await.unwrap() });
        }
        let tokens = set.join_all().await;
        assert!(
            tokens
                .iter()
                .all(|t| t.access_token() == tokens[0].access_token())
        );
        let (status, json) = whoami(&auth, &base).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["username"], "alice");

        let rt = store.load().await.unwrap().unwrap();
        let rt = rt.refresh_token().unwrap().secret().to_owned();
        assert!(!seen.contains(&rt), "the server rotated the refresh token");
        seen.push(rt);
        auth.invalidate(&tokens[0]);
    }
    assert_eq!(auth.stats().fetches, 3);

    // The server does reject reuse: replaying the first refresh token fails and revokes the
    // grant, after which the crate's next refresh fails with a terminal error.
    let replay = form_post(
        &format!("{base}/o/token/"),
        ("rt-client", "rt-secret"),
        &[("grant_type", "refresh_token"), ("refresh_token", &rt0)],
    )
    .await;
    assert_eq!(replay["error"], "invalid_grant");
    let err = auth.token().await.unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_grant");
    assert!(err.is_terminal());
}

#[tokio::test]
async fn a_restarted_process_resumes_from_the_file_store() {
    let base = server_or_skip!("a_restarted_process_resumes_from_the_file_store");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = FileStore::new(&path);
    store
        .save(&StoredToken::new().with_refresh_token(first_refresh_token(&base).await))
        .await
        .unwrap();
    let grant = |path: &std::path::Path| {
        AuthLayer::new(
            RefreshTokenGrant::builder(format!("{base}/o/token/"))
                .client_id("rt-client")
                .client_secret("rt-secret")
                .auth(ClientAuth::Post)
                .store(FileStore::new(path))
                .build()
                .unwrap(),
        )
    };

    // First process: refreshes, rotating the refresh token into the file.
    let rotated = {
        let auth = grant(&path);
        assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
        store.load().await.unwrap().unwrap()
    };

    // Second process: uses the stored access token, no refresh ...
    let auth = grant(&path);
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
    assert_eq!(store.load().await.unwrap().unwrap(), rotated);
    // ... and refreshes with the rotated refresh token when needed.
    auth.invalidate(&auth.token().await.unwrap());
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
    let after = store.load().await.unwrap().unwrap();
    assert_ne!(after.refresh_token(), rotated.refresh_token());
}

#[tokio::test]
async fn an_authorization_code_with_pkce_is_exchanged_and_renewed() {
    let base = server_or_skip!("an_authorization_code_with_pkce_is_exchanged_and_renewed");
    let pkce = Pkce::new().unwrap();
    let code = form_post(
        &format!("{base}/test/code"),
        ("x", "x"),
        &[
            ("client_id", "ac-client"),
            ("redirect_uri", "http://127.0.0.1/callback"),
            ("scope", "read"),
            ("code_challenge", pkce.challenge()),
            ("code_challenge_method", pkce.method()),
        ],
    )
    .await;
    let code = code["code"].as_str().unwrap();

    let flow = || {
        AuthorizationCode::builder(format!("{base}/o/token/"))
            .client_id("ac-client")
            .client_secret("ac-secret")
            .redirect_uri("http://127.0.0.1/callback")
            .build()
            .unwrap()
    };
    let grant = flow().exchange(code, Some(pkce.verifier())).await.unwrap();
    let auth = AuthLayer::new(grant);
    let (status, json) = whoami(&auth, &base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["username"], "alice");

    // Renewal through the refresh token the exchange returned.
    auth.invalidate(&auth.token().await.unwrap());
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);

    // The code was single-use.
    let err = flow()
        .exchange(code, Some(pkce.verifier()))
        .await
        .unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_grant");
}

#[tokio::test]
async fn discovery_configures_the_grant_and_revocation() {
    let base = server_or_skip!("discovery_configures_the_grant_and_revocation");
    let metadata = ProviderMetadata::discover(&format!("{base}/o"))
        .await
        .unwrap();
    assert_eq!(metadata.token_endpoint(), format!("{base}/o/token/"));
    assert!(metadata.revocation_endpoint().is_some());

    let auth = AuthLayer::new(
        ClientCredentials::from_metadata(&metadata)
            .client_id("cc-post")
            .client_secret("post-secret")
            .build()
            .unwrap(),
    );
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
    let token = auth.token().await.unwrap();
    auth.revoke().await.unwrap();
    assert_eq!(
        whoami_with(&base, token.access_token().secret()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn revoking_a_refresh_grant_ends_it() {
    let base = server_or_skip!("revoking_a_refresh_grant_ends_it");
    let store =
        MemoryStore::with(StoredToken::new().with_refresh_token(first_refresh_token(&base).await));
    let auth = AuthLayer::new(
        RefreshTokenGrant::builder(format!("{base}/o/token/"))
            .client_id("rt-client")
            .client_secret("rt-secret")
            .revocation_url(format!("{base}/o/revoke_token/"))
            .store(store.clone())
            .build()
            .unwrap(),
    );
    assert_eq!(whoami(&auth, &base).await.0, StatusCode::OK);
    let token = auth.token().await.unwrap();
    auth.revoke().await.unwrap();
    assert_eq!(store.load().await.unwrap(), None);
    assert_eq!(
        whoami_with(&base, token.access_token().secret()).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(matches!(
        auth.token().await.unwrap_err(),
        Error::AuthorizationRequired(_)
    ));
}

#[tokio::test]
async fn a_reqwest_client_through_the_layer() {
    let base = server_or_skip!("a_reqwest_client_through_the_layer");
    let auth = client_credentials(&base, "cc-post", "post-secret", ClientAuth::Post);
    let http = reqwest::Client::new();
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(http.clone());
    let request = http.get(format!("{base}/api/whoami")).build().unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(json["client_id"], "cc-post");
}
