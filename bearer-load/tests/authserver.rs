//! Against the real authorization servers of the test suite, started by `scripts/test`:
//! django-oauth-toolkit (base URL in `TOWER_BEARER_AUTHSERVER`) for client_credentials and a
//! refresh token from a file store, and oidc-provider (`TOWER_BEARER_OIDC`) for
//! `private_key_jwt` and DPoP. The tool loads a small API in the test that counts the tokens
//! (and DPoP proofs) it is sent.

mod support;

use support::{api_server, run};

const NEEDS: &str = "needs the authorization server: run scripts/test";

fn token_url() -> String {
    let base = std::env::var("TOWER_BEARER_AUTHSERVER").expect(NEEDS);
    format!("{}/o/token/", base.trim_end_matches('/'))
}

/// For `client_secret_post` (cc-post) and `client_secret_basic` with a secret full of
/// characters that need form-encoding (cc-basic): ~2 s of load, no request failed, every token
/// the API saw is one the tool fetched (distinct tokens = fetches, at least 1), and every
/// request reached the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the authorization server: run scripts/test"]
async fn loads_an_api_with_tokens_from_the_real_server() {
    let token_url = token_url();
    for (client, auth, secret) in [
        ("cc-post", "post", "post-secret"),
        ("cc-basic", "basic", "basic:s3cret/with+special%&="),
    ] {
        let (addr, seen, _) = api_server(false).await;
        let url = format!("http://{addr}/items");
        let args = [
            "--url",
            &url,
            "--token-url",
            &token_url,
            "--client-id",
            client,
            "--auth",
            auth,
            "--duration",
            "2s",
            "--concurrency",
            "16",
            "--json",
        ];
        let out = run(&args, &[("BEARER_LOAD_CLIENT_SECRET", secret)]).await;
        assert_eq!(out.code, 0, "{client}: {}", out.stderr);
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
        let report = out.report();
        assert_eq!(report.failed, 0, "{client}: {report:?}");
        assert!(report.requests > 0);
        assert!(report.tokens.fetches >= 1, "{client}: {report:?}");
        assert_eq!(report.tokens.fetch_failures, 0);
        let tokens = seen.tokens();
        assert_eq!(
            tokens.len() as u64,
            report.tokens.fetches,
            "{client}: one token per fetch"
        );
        assert_eq!(tokens.values().sum::<u64>(), report.requests);
        assert_eq!(seen.requests(), report.requests);
    }
}

/// A wrong secret: the server refuses every fetch, every request fails as a token error
/// (nothing reaches the API), and the exit status is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the authorization server: run scripts/test"]
async fn a_wrong_secret_is_a_token_error() {
    let token_url = token_url();
    let (addr, seen, _) = api_server(false).await;
    let url = format!("http://{addr}/items");
    let args = [
        "--url",
        &url,
        "--token-url",
        &token_url,
        "--client-id",
        "cc-post",
        "--auth",
        "post",
        "--requests",
        "20",
        "--json",
    ];
    let out = run(&args, &[("BEARER_LOAD_CLIENT_SECRET", "wrong")]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.failed, report.errors.token), (20, 20), "{report:?}");
    assert_eq!(seen.requests(), 0);
}

/// `--client-key` (private_key_jwt with the test server's registered P-256 key) and `--dpop`
/// against oidc-provider: every request goes as `DPoP <token>` with a proof of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn private_key_jwt_and_dpop_against_a_real_server() {
    let issuer = std::env::var("TOWER_BEARER_OIDC").expect("run scripts/test");
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/keys/client-es256.pem"
    );
    let (addr, seen, _) = api_server(false).await;
    let url = format!("http://{addr}/items");
    let token_url = format!("{issuer}/token");
    let args = [
        "--url",
        &url,
        "--token-url",
        &token_url,
        "--client-id",
        "pkjwt-es256",
        "--client-key",
        key,
        "--key-id",
        "es-1",
        "--dpop",
        "--requests",
        "50",
        "--concurrency",
        "4",
        "--json",
    ];
    let out = run(&args, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.requests, report.failed), (50, 0), "{report:?}");
    assert_eq!(report.tokens.fetches, 1);
    let tokens = seen.tokens();
    assert!(tokens.keys().all(|t| t.starts_with("DPoP ")), "{tokens:?}");
    assert_eq!(seen.proofs(), 50, "a fresh proof per request");
}

/// `--refresh-store`: a refresh token the test gets from the server (password grant) is put in
/// a tower-bearer `FileStore`; the tool refreshes with it, loads the API, and leaves the
/// rotated refresh token in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the authorization server: run scripts/test"]
async fn refreshes_with_the_token_in_a_file_store() {
    use tower_bearer::store::{FileStore, StoredToken, TokenStore};
    let token_url = token_url();
    let first = password_grant_refresh_token(&token_url).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = FileStore::new(&path);
    store
        .save(&StoredToken::new().with_refresh_token(first.as_str()))
        .await
        .unwrap();
    let (addr, seen, _) = api_server(false).await;
    let url = format!("http://{addr}/items");
    let path_arg = path.to_str().unwrap();
    let args = [
        "--url",
        &url,
        "--token-url",
        &token_url,
        "--client-id",
        "rt-client",
        "--refresh-store",
        path_arg,
        "--requests",
        "20",
        "--json",
    ];
    let out = run(&args, &[("BEARER_LOAD_CLIENT_SECRET", "rt-secret")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.requests, report.failed), (20, 0), "{report:?}");
    assert_eq!(report.tokens.fetches, 1);
    assert_eq!(seen.requests(), 20);
    let saved = store.load().await.unwrap().unwrap();
    let rotated = saved.refresh_token().unwrap().secret().to_owned();
    assert_ne!(rotated, first, "the rotated refresh token is saved");
}

/// A refresh token for alice from the server's password grant (client `rt-client`).
async fn password_grant_refresh_token(token_url: &str) -> String {
    use base64::Engine;
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let basic = base64::engine::general_purpose::STANDARD.encode("rt-client:rt-secret");
    let request = http::Request::post(token_url)
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::from(
            "grant_type=password&username=alice&password=alice-password",
        ))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["refresh_token"].as_str().unwrap().to_owned()
}
