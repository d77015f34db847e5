//! Against the real authorization server of the test suite (django-oauth-toolkit, started by
//! `scripts/test`, base URL in `TOWER_BEARER_AUTHSERVER`): the tool gets its tokens there with
//! client_credentials and loads a small API in the test that counts the tokens it is sent.

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
