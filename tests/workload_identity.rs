//! Credentials from the platform (`tower_bearer::assertion`): client assertions and the JWT
//! bearer grant fed by a token file, GitHub Actions' OIDC endpoint, a GCP metadata server or a
//! closure, against stand-ins on 127.0.0.1 written from the providers' documented wire formats.
//! No test here reaches any address but loopback: each platform endpoint is given by hand.

#![cfg(feature = "oauth")]

mod support;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::response::IntoResponse;
use base64::Engine;
use http::StatusCode;
use support::{StandInEndpoint, token_json};
use tower_bearer::{
    AuthLayer, ClientCredentials, Error, JwtBearer, TokenExchange,
    assertion::{Assertion, AssertionSource, GcpIdentity, GithubActions, TokenFile, from_fn},
    source::{AzureManagedIdentity, GcpMetadataToken},
};

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const JWT_BEARER_CLIENT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An unsigned JWT (the stand-ins read no signature) for `subject`, expiring at `exp`
/// (seconds since the Unix epoch).
fn jwt(subject: &str, exp: u64) -> String {
    let encode = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.c2lnbmF0dXJl",
        encode(r#"{"alg":"RS256","kid":"k8s"}"#.to_owned()),
        encode(format!(
            r#"{{"iss":"https://kubernetes.default.svc","sub":"{subject}","aud":"idp","exp":{exp}}}"#
        ))
    )
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// The JWT bearer grant of the client `orders` at `token_url`, with assertions from `source`.
fn orders_jwt_bearer(token_url: String, source: impl AssertionSource) -> JwtBearer {
    JwtBearer::builder(token_url, source)
        .client_id("orders")
        .build()
        .unwrap()
}

/// A layer over `source` whose fetches make one attempt: a failure shows at once.
fn one_attempt(source: impl tower_bearer::TokenSource) -> AuthLayer {
    AuthLayer::builder(source)
        .fetch_attempts(1)
        .build()
        .unwrap()
}

/// A token endpoint that answers each request with a new token (`tok-1`, `tok-2`, ...).
async fn endpoint() -> StandInEndpoint {
    let issued = AtomicUsize::new(0);
    StandInEndpoint::start(move |_| {
        let n = issued.fetch_add(1, SeqCst) + 1;
        token_json(&format!("tok-{n}"), 3600)
    })
    .await
}

/// Writes `token` the way kubelet updates a projected volume: into a new directory, then an
/// atomic rename of the `..data` link to it; `token` itself is a link through `..data`.
fn kubelet_write(volume: &Path, generation: usize, token: &str) {
    let dir = volume.join(format!("..2026_12_06_{generation}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    let staged = volume.join("..data_tmp");
    std::os::unix::fs::symlink(dir.file_name().unwrap(), &staged).unwrap();
    std::fs::rename(&staged, volume.join("..data")).unwrap();
    let link = volume.join("token");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/token", &link).unwrap();
    }
}

/// A client authenticated by its Kubernetes service-account token sends the token the file
/// holds at each request: after kubelet's atomic swap, the next token request carries the new
/// one.
#[tokio::test]
async fn a_token_file_rotated_by_kubelets_swap_is_sent_anew_at_the_next_request() {
    let volume = tempfile::tempdir().unwrap();
    let (first, second) = (jwt("first", in_an_hour()), jwt("second", in_an_hour()));
    kubelet_write(volume.path(), 1, &first);
    let idp = endpoint().await;
    let source = ClientCredentials::builder(idp.url("/token"))
        .client_id("orders")
        .client_assertion(TokenFile::new(volume.path().join("token")))
        .build()
        .unwrap();
    let layer = AuthLayer::new(source);

    let token = layer.token().await.unwrap();
    kubelet_write(volume.path(), 2, &second);
    layer.invalidate(&token);
    layer.token().await.unwrap();

    let sent: Vec<_> = idp.recorded().iter().map(|r| r.form()).collect();
    assert_eq!(sent.len(), 2);
    for (form, expected) in sent.iter().zip([&first, &second]) {
        assert_eq!(field(form, "client_assertion").as_ref(), Some(expected));
        assert_eq!(
            field(form, "client_assertion_type").as_deref(),
            Some(JWT_BEARER_CLIENT)
        );
        assert_eq!(field(form, "client_id").as_deref(), Some("orders"));
        assert_eq!(field(form, "client_secret"), None);
    }
}

/// A token file whose token has expired fails the fetch with a typed error, and nothing
/// reaches the token endpoint.
#[tokio::test]
async fn an_expired_token_file_is_a_typed_error_and_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, jwt("stale", 1_000_000_000)).unwrap();
    let idp = endpoint().await;
    let source = JwtBearer::builder(idp.url("/token"), TokenFile::new(&path))
        .client_id("orders")
        .build()
        .unwrap();
    let layer = AuthLayer::builder(source)
        .fetch_attempts(2)
        .build()
        .unwrap();
    let err = layer.token().await.unwrap_err();
    assert!(matches!(err, Error::ExpiredAssertion { .. }), "{err:?}");
    assert!(idp.recorded().is_empty(), "nothing was sent");
}

/// 1,000 callers at once on a cold layer: one assertion read, one token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_cost_one_assertion_and_one_token_request() {
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reads);
    let assertions = from_fn(move || {
        let n = counted.fetch_add(1, SeqCst) + 1;
        async move { Ok(Assertion::new(jwt(&format!("read-{n}"), in_an_hour()))) }
    });
    let idp = endpoint().await;
    let source = orders_jwt_bearer(idp.url("/token"), assertions);
    let layer = AuthLayer::new(source);
    let callers: Vec<_> = (0..1000).map(|_| tokio::spawn(layer.token())).collect();
    for caller in callers {
        assert_eq!(
            caller.await.unwrap().unwrap().access_token().secret(),
            "tok-1"
        );
    }
    assert_eq!(reads.load(SeqCst), 1, "assertion reads");
    assert_eq!(idp.recorded().len(), 1, "token requests");
}

/// Every attempt within a fetch reads a fresh assertion: two 503s, then a token, cost three
/// token requests with three different assertions (a server that takes each assertion once
/// would refuse a second sending).
#[tokio::test]
async fn every_retry_within_a_fetch_sends_a_fresh_assertion() {
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reads);
    let assertions = from_fn(move || {
        let n = counted.fetch_add(1, SeqCst) + 1;
        async move { Ok(Assertion::new(jwt(&format!("attempt-{n}"), in_an_hour()))) }
    });
    let answered = AtomicUsize::new(0);
    let idp = StandInEndpoint::start(move |_| {
        if answered.fetch_add(1, SeqCst) < 2 {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        } else {
            token_json("tok-after-two-503s", 3600)
        }
    })
    .await;
    let source = ClientCredentials::builder(idp.url("/token"))
        .client_id("orders")
        .client_assertion(assertions)
        .build()
        .unwrap();
    let layer = AuthLayer::builder(source)
        .fetch_attempts(3)
        .build()
        .unwrap();
    let token = layer.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-after-two-503s");
    let sent: Vec<_> = idp
        .recorded()
        .iter()
        .map(|r| field(&r.form(), "client_assertion").unwrap())
        .collect();
    assert_eq!(sent.len(), 3);
    let distinct: std::collections::HashSet<_> = sent.iter().collect();
    assert_eq!(distinct.len(), 3, "a fresh assertion for each attempt");
    assert_eq!(reads.load(SeqCst), 3);
}

/// The JWT bearer grant sends the assertion as `assertion`, with the grant type and scope,
/// and the client id alone when it has no secret.
#[tokio::test]
async fn the_jwt_bearer_grant_sends_the_assertion_the_grant_type_and_the_scope() {
    let assertion = jwt("system:serviceaccount:prod:orders", in_an_hour());
    let sent = assertion.clone();
    let idp = endpoint().await;
    let source = JwtBearer::builder(
        idp.url("/token"),
        from_fn(move || {
            let sent = sent.clone();
            async move { Ok(Assertion::new(sent)) }
        }),
    )
    .client_id("orders")
    .scope("orders.read")
    .build()
    .unwrap();
    assert!(!format!("{source:?}").contains(&assertion[..30]));
    AuthLayer::new(source).token().await.unwrap();
    let form = idp.recorded()[0].form();
    assert_eq!(
        field(&form, "grant_type").as_deref(),
        Some(JWT_BEARER_GRANT)
    );
    assert_eq!(field(&form, "assertion"), Some(assertion));
    assert_eq!(field(&form, "scope").as_deref(), Some("orders.read"));
    assert_eq!(field(&form, "client_id").as_deref(), Some("orders"));
    assert!(idp.recorded()[0].header("authorization").is_none());
}

/// A token bound to its assertion (the server says so; `bound_to_assertion`) is not used past
/// the assertion's expiry: an hour-long token bought with a JWT that has 90 s left lives 90 s
/// in the layer; unbound, it keeps its hour.
#[tokio::test]
async fn a_token_bound_to_its_assertion_is_not_used_past_the_assertions_expiry() {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 90;
    let idp = endpoint().await;
    let source = |bound: bool| {
        JwtBearer::builder(
            idp.url("/token"),
            from_fn(move || async move { Ok(Assertion::new(jwt("short", exp))) }),
        )
        .client_id("orders")
        .bound_to_assertion(bound)
        .build()
        .unwrap()
    };
    let bound = AuthLayer::new(source(true)).token().await.unwrap();
    assert!(
        bound.expires_in().unwrap().as_secs() <= 90,
        "{:?}",
        bound.expires_in()
    );
    let unbound = AuthLayer::new(source(false)).token().await.unwrap();
    assert!(unbound.expires_in().unwrap().as_secs() > 3000);
}

/// An error the token endpoint answers with, echoing the assertion, shows none of it.
#[tokio::test]
async fn a_server_echoing_the_assertion_leaks_none_of_it() {
    let idp = StandInEndpoint::start(|req| {
        let echoed = field(&req.form(), "client_assertion").unwrap_or_default();
        (
            StatusCode::BAD_REQUEST,
            [(http::header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":"invalid_client","error_description":"bad assertion {echoed}"}}"#),
        )
            .into_response()
    })
    .await;
    let assertion = jwt("leaky", in_an_hour());
    let sent = assertion.clone();
    let source = ClientCredentials::builder(idp.url("/token"))
        .client_id("orders")
        .client_assertion(from_fn(move || {
            let sent = sent.clone();
            async move { Ok(Assertion::new(sent)) }
        }))
        .build()
        .unwrap();
    let err = AuthLayer::new(source).token().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains(&assertion[40..]), "{shown}");
}

/// GitHub Actions' OIDC endpoint, as its documentation and `@actions/core` call it: the
/// request URL (which has a query already) gains `audience`, the request token goes as a
/// bearer token, and the answer is `{"value": "<jwt>"}`.
#[tokio::test]
async fn github_actions_is_asked_with_its_request_token_and_the_audience() {
    let jwt = jwt("repo:acme/orders:ref:refs/heads/main", in_an_hour());
    let answer = jwt.clone();
    let github = StandInEndpoint::start(move |req| {
        let audience = req.query_pairs().into_iter().find(|(k, _)| k == "audience");
        let api_version = req
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "api-version");
        if req.header("authorization") != Some("Bearer request-token")
            || audience.map(|(_, v)| v).as_deref() != Some("api://AzureADTokenExchange")
            || api_version.is_none()
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        (
            [(http::header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"count":1,"value":"{answer}"}}"#),
        )
            .into_response()
    })
    .await;
    let idp = endpoint().await;
    let platform = GithubActions::new(
        &github.url("/_apis/distributedtask/hubs/build/plans/1/jobs/2/idtoken?api-version=2.0"),
        "request-token",
    )
    .unwrap()
    .audience("api://AzureADTokenExchange");
    assert!(!format!("{platform:?}").contains("request-token"));
    let source = ClientCredentials::builder(idp.url("/token"))
        .client_id("orders")
        .client_assertion(platform)
        .build()
        .unwrap();
    AuthLayer::new(source).token().await.unwrap();
    assert_eq!(github.recorded().len(), 1);
    assert_eq!(
        field(&idp.recorded()[0].form(), "client_assertion"),
        Some(jwt)
    );

    // A refusal names the status, not what the endpoint said.
    let refusing = GithubActions::new(&github.url("/idtoken?api-version=2.0"), "wrong").unwrap();
    let source = orders_jwt_bearer(idp.url("/token"), refusing);
    let err = one_attempt(source).token().await.unwrap_err();
    assert!(
        matches!(&err, Error::Assertion(m) if m.contains("401")),
        "{err:?}"
    );
}

/// A GCP metadata server, as Google documents it: `Metadata-Flavor: Google` on the request
/// and on the answer, the audience and `format=full` in the query, the JWT as the body. An
/// answer without the header (something else on that address) is refused.
#[tokio::test]
async fn a_gcp_metadata_server_is_asked_for_the_audience_and_must_answer_as_one() {
    let jwt = jwt("1234567890", in_an_hour());
    let answer = jwt.clone();
    let metadata = StandInEndpoint::start(move |req| {
        let query = req.query_pairs();
        let has = |k: &str, v: &str| query.iter().any(|(a, b)| a == k && b == v);
        if req.path != "/computeMetadata/v1/instance/service-accounts/default/identity"
            || req.header("metadata-flavor") != Some("Google")
            || !has("audience", "https://login.example.com")
            || !has("format", "full")
        {
            return StatusCode::FORBIDDEN.into_response();
        }
        ([("metadata-flavor", "Google")], answer.clone()).into_response()
    })
    .await;
    let idp = endpoint().await;
    let platform =
        GcpIdentity::new("https://login.example.com").metadata_host(metadata.addr.to_string());
    let source = orders_jwt_bearer(idp.url("/token"), platform);
    AuthLayer::new(source).token().await.unwrap();
    assert_eq!(field(&idp.recorded()[0].form(), "assertion"), Some(jwt));

    let impostor = StandInEndpoint::start(|_| "eyJhbGciOi.not.metadata".into_response()).await;
    let platform =
        GcpIdentity::new("https://login.example.com").metadata_host(impostor.addr.to_string());
    let source = orders_jwt_bearer(idp.url("/token"), platform);
    let err = one_attempt(source).token().await.unwrap_err();
    assert!(
        matches!(&err, Error::Assertion(m) if m.contains("Metadata-Flavor")),
        "{err:?}"
    );
    assert_eq!(
        idp.recorded().len(),
        1,
        "the impostor's answer was never sent"
    );
}

/// A token exchange whose subject (and actor) come from the platform reads fresh ones for each
/// exchange, sends them as `subject_token` and `actor_token` with their types, and never uses
/// the exchanged token past the platform subject token's expiry.
#[tokio::test]
async fn a_token_exchange_subject_from_the_platform_is_fresh_and_caps_the_tokens_life() {
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reads);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    let assertions = from_fn(move || {
        let n = counted.fetch_add(1, SeqCst) + 1;
        async move { Ok(Assertion::new(jwt(&format!("workload-{n}"), exp))) }
    });
    let idp = endpoint().await;
    let source = TokenExchange::builder(idp.url("/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .subject_token_from(assertions, TokenExchange::JWT)
        .actor_token_from(
            from_fn(|| async {
                let serial = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                Ok(Assertion::new(jwt(
                    &format!("actor-{serial}"),
                    in_an_hour(),
                )))
            }),
            TokenExchange::JWT,
        )
        .audience("orders")
        .build()
        .unwrap();
    assert!(!format!("{source:?}").contains("eyJ"));
    let layer = AuthLayer::new(source);
    let token = layer.token().await.unwrap();
    let left = token.expires_in().unwrap();
    assert!(
        left <= std::time::Duration::from_secs(120),
        "capped at the platform token's life, not the endpoint's hour: {left:?}"
    );
    layer.invalidate(&token);
    layer.token().await.unwrap();
    let sent: Vec<_> = idp.recorded().iter().map(|r| r.form()).collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(reads.load(SeqCst), 2, "a fresh platform token per exchange");
    assert_ne!(
        field(&sent[0], "subject_token"),
        field(&sent[1], "subject_token")
    );
    assert!(field(&sent[0], "actor_token").is_some());
    assert_ne!(
        field(&sent[0], "actor_token"),
        field(&sent[1], "actor_token")
    );
    assert_eq!(
        field(&sent[0], "subject_token_type").as_deref(),
        Some(TokenExchange::JWT)
    );
}

/// A GCP metadata server's access token: the documented path, `Metadata-Flavor: Google` both
/// ways, the scopes joined by commas; `expires_in` read.
#[tokio::test]
async fn a_gcp_metadata_server_issues_the_workloads_access_token() {
    let metadata = StandInEndpoint::start(|req| {
        let scopes = req.query_pairs().into_iter().find(|(k, _)| k == "scopes");
        if req.path != "/computeMetadata/v1/instance/service-accounts/default/token"
            || req.header("metadata-flavor") != Some("Google")
            || scopes.map(|(_, v)| v).as_deref()
                != Some("https://www.googleapis.com/auth/cloud-platform,email")
        {
            return StatusCode::FORBIDDEN.into_response();
        }
        (
            [
                ("metadata-flavor", "Google"),
                ("content-type", "application/json"),
            ],
            r#"{"access_token":"ya29.gcp-token","expires_in":3599,"token_type":"Bearer"}"#,
        )
            .into_response()
    })
    .await;
    let source = GcpMetadataToken::new()
        .scopes(["https://www.googleapis.com/auth/cloud-platform", "email"])
        .metadata_host(metadata.addr.to_string());
    let token = AuthLayer::new(source).token().await.unwrap();
    assert_eq!(token.access_token().secret(), "ya29.gcp-token");
    let left = token.expires_in().unwrap().as_secs();
    assert!((3590..=3599).contains(&left), "{left}");
}

/// Azure's instance metadata service, as Microsoft documents it: `Metadata: true`,
/// `api-version=2018-02-01`, the resource and the user-assigned identity's client id in the
/// query; `expires_in` comes as a string. A 410 (the service upgrading) is retried within the
/// fetch, as Microsoft advises; the answer's token never reaches an error.
#[tokio::test]
async fn azure_imds_is_asked_as_documented_and_its_410_is_retried() {
    let answered = AtomicUsize::new(0);
    let imds = StandInEndpoint::start(move |req| {
        let query = req.query_pairs();
        let has = |k: &str, v: &str| query.iter().any(|(a, b)| a == k && b == v);
        if req.header("metadata") != Some("true")
            || !has("api-version", "2018-02-01")
            || !has("resource", "https://management.azure.com/")
            || !has("client_id", "5f2b0000-user-assigned")
        {
            return (StatusCode::BAD_REQUEST, r#"{"access_token":"leak-me"}"#).into_response();
        }
        if answered.fetch_add(1, SeqCst) == 0 {
            return StatusCode::GONE.into_response();
        }
        (
            [("content-type", "application/json")],
            r#"{"access_token":"azure-token","refresh_token":"","expires_in":"3599","expires_on":"1506484173","not_before":"1506480273","resource":"https://management.azure.com/","token_type":"Bearer"}"#,
        )
            .into_response()
    })
    .await;
    let source = AzureManagedIdentity::new("https://management.azure.com/")
        .client_id("5f2b0000-user-assigned")
        .imds_endpoint(imds.url("/metadata/identity/oauth2/token"));
    let token = AuthLayer::new(source).token().await.unwrap();
    assert_eq!(token.access_token().secret(), "azure-token");
    let left = token.expires_in().unwrap().as_secs();
    assert!(
        (3590..=3599).contains(&left),
        "expires_in read from a string: {left}"
    );
    assert_eq!(imds.recorded().len(), 2, "the 410 was retried once");

    let wrong = AzureManagedIdentity::new("https://other.example/")
        .imds_endpoint(imds.url("/metadata/identity/oauth2/token"));
    let err = one_attempt(wrong).token().await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("leak-me"), "{err:?}");
}

/// Azure App Service's managed identity endpoint: `X-IDENTITY-HEADER`,
/// `api-version=2019-08-01`, and the expiry as `expires_on` (a string of seconds since the
/// epoch).
#[tokio::test]
async fn azure_app_service_is_asked_with_its_header_and_expires_on_is_read() {
    let expires_on = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1800;
    let endpoint = StandInEndpoint::start(move |req| {
        let query = req.query_pairs();
        let has = |k: &str, v: &str| query.iter().any(|(a, b)| a == k && b == v);
        if req.header("x-identity-header") != Some("app-service-secret")
            || !has("api-version", "2019-08-01")
            || !has("resource", "https://vault.azure.net")
        {
            return StatusCode::BAD_REQUEST.into_response();
        }
        (
            [("content-type", "application/json")],
            format!(r#"{{"access_token":"app-token","expires_on":"{expires_on}","resource":"https://vault.azure.net","token_type":"Bearer","client_id":"c"}}"#),
        )
            .into_response()
    })
    .await;
    let source = AzureManagedIdentity::new("https://vault.azure.net")
        .app_service_endpoint(endpoint.url("/msi/token"), "app-service-secret");
    assert!(!format!("{source:?}").contains("app-service-secret"));
    let token = AuthLayer::new(source).token().await.unwrap();
    assert_eq!(token.access_token().secret(), "app-token");
    let left = token.expires_in().unwrap().as_secs();
    assert!((1790..=1800).contains(&left), "expires_on read: {left}");
}

/// Settings that cannot work are refused when the source is built.
#[test]
fn a_client_assertion_without_a_source_is_refused_at_build() {
    let err = ClientCredentials::builder("https://idp.example.com/token")
        .client_id("orders")
        .auth(tower_bearer::ClientAuth::ClientAssertion)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("client_assertion")),
        "{err}"
    );
    let err = ClientCredentials::builder("https://idp.example.com/token")
        .client_id("orders")
        .client_assertion(TokenFile::new("/nonexistent"))
        .auth(tower_bearer::ClientAuth::Basic)
        .client_secret("s")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("assertion")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Against a real authorization server: oidc-provider (started by scripts/test), whose test
// platform signs workload JWTs (tests/oidc-provider/server.mjs). The server checks each JWT's
// signature against the platform's key, its issuer, audience and expiry, and takes each once.

/// A JWT the test server's platform signs: `query` is `client=<id>` (for client
/// authentication) or `sub=<subject>` (for the JWT bearer grant).
async fn platform_token(query: &str) -> String {
    let url = format!("{}/test/platform-token?{query}", support::oidc_provider());
    let answer = reqwest::get(url).await.unwrap();
    assert!(answer.status().is_success());
    answer.text().await.unwrap()
}

/// How many token requests of `client` with `grant` the test server has answered.
async fn grants(client: &str, grant: &str) -> u64 {
    let url = format!("{}/test/stats", support::oidc_provider());
    let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    stats["token_requests"][client][grant].as_u64().unwrap_or(0)
}

/// A client authenticated by the JWT its platform wrote to a file gets a token from a real
/// server; the server takes each JWT once, so the same file cannot authenticate again until
/// the platform rotates it, and then the new JWT does.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_real_server_authenticates_a_workload_by_the_jwt_in_its_file() {
    let issuer = support::oidc_provider();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let layer = || {
        let source = ClientCredentials::builder(format!("{issuer}/token"))
            .client_id("workload")
            .scope("read")
            .client_assertion(TokenFile::new(&path))
            .build()
            .unwrap();
        one_attempt(source)
    };
    std::fs::write(&path, platform_token("client=workload").await).unwrap();
    let token = layer().token().await.unwrap();
    assert_eq!(token.scope(), Some("read"));

    let again = layer().token().await.unwrap_err();
    assert!(
        matches!(&again, Error::OAuth(e) if e.code() == "invalid_client"),
        "a JWT the server saw is refused: {again:?}"
    );

    std::fs::write(&path, platform_token("client=workload").await).unwrap();
    layer().token().await.unwrap();
}

/// The JWT bearer grant against a real server: each fetch sends a fresh platform JWT (the
/// server refuses one it saw), and gets a token for it.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_real_server_grants_a_token_for_each_fresh_platform_jwt() {
    let issuer = support::oidc_provider();
    let before = grants("jwt-bearer", JWT_BEARER_GRANT).await;
    let assertions = from_fn(|| async {
        Ok(Assertion::new(
            platform_token("sub=system:serviceaccount:prod:orders").await,
        ))
    });
    let source = JwtBearer::builder(format!("{issuer}/token"), assertions)
        .client_id("jwt-bearer")
        .scope("read")
        .build()
        .unwrap();
    let layer = one_attempt(source);
    let first = layer.token().await.unwrap();
    assert!(layer.invalidate(&first));
    let second = layer.token().await.unwrap();
    assert_ne!(first.access_token(), second.access_token());
    assert_eq!(grants("jwt-bearer", JWT_BEARER_GRANT).await - before, 2);
}

/// A token exchange with the workload's platform JWT as its subject, against a real server:
/// the server verifies the JWT, takes each once, and each exchange reads a fresh one.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_real_server_exchanges_a_fresh_platform_jwt_each_time() {
    let issuer = support::oidc_provider();
    let before = grants(
        "exchanger",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    )
    .await;
    let assertions = from_fn(|| async {
        Ok(Assertion::new(
            platform_token("sub=system:serviceaccount:prod:orders").await,
        ))
    });
    let source = TokenExchange::builder(format!("{issuer}/token"))
        .client_id("exchanger")
        .client_secret("exchanger-secret")
        .subject_token_from(assertions, TokenExchange::JWT)
        .scope("read")
        .build()
        .unwrap();
    let layer = one_attempt(source);
    let first = layer.token().await.unwrap();
    assert!(layer.invalidate(&first));
    let second = layer.token().await.unwrap();
    assert_ne!(first.access_token(), second.access_token());
    let after = grants(
        "exchanger",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    )
    .await;
    assert_eq!(after - before, 2);
}

/// DPoP works on top of a platform credential: a workload authenticated by its platform JWT,
/// with a DPoP key, gets a DPoP-bound token from the real server.
#[cfg(feature = "jose")]
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_real_server_binds_a_workloads_token_with_dpop() {
    let issuer = support::oidc_provider();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, platform_token("client=workload").await).unwrap();
    let source = ClientCredentials::builder(format!("{issuer}/token"))
        .client_id("workload")
        .scope("read")
        .client_assertion(TokenFile::new(&path))
        .dpop(tower_bearer::jose::SigningKey::generate_es256().unwrap())
        .build()
        .unwrap();
    let token = one_attempt(source).token().await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
}

/// Fleet sharing works on top: two layers (two processes' worth of caches) on one Redis, both
/// buying tokens with platform JWTs through the JWT bearer grant, make one token request and
/// read one assertion between them, and share the token.
#[cfg(feature = "redis")]
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fleet_shares_a_token_bought_with_a_platform_jwt() {
    use support::fleet;
    use tower_bearer::distributed::RedisCache;

    let reads = Arc::new(AtomicUsize::new(0));
    let idp = endpoint().await;
    let cache = RedisCache::new(fleet::connection(&fleet::redis_url()).await)
        .key_prefix(fleet::fresh_prefix("workload"))
        .encryption_key(fleet::KEY)
        .fleet_key("workload:system:serviceaccount:prod:orders");
    let layer = || {
        let counted = Arc::clone(&reads);
        let assertions = from_fn(move || {
            counted.fetch_add(1, SeqCst);
            async move { Ok(Assertion::new(jwt("fleet", in_an_hour()))) }
        });
        let source = orders_jwt_bearer(idp.url("/token"), assertions);
        AuthLayer::builder(source)
            .distributed(cache.clone())
            .build()
            .unwrap()
    };
    let (first, second) = (layer(), layer());
    let a = first.token().await.unwrap();
    let b = second.token().await.unwrap();
    assert_eq!(a.access_token(), b.access_token());
    assert_eq!(idp.recorded().len(), 1, "one token request for the fleet");
    assert_eq!(reads.load(SeqCst), 1, "one assertion read for the fleet");
}

/// A token bought with a platform JWT belongs to the workload the JWT names, which a process
/// cannot tell from another's: the JWT bearer grant and an exchange of a platform subject name
/// no identity of their own, so a fleet's cache refuses them without a `fleet_key` naming the
/// workload (else two workloads with one client id would share a token). A client assertion
/// authenticates the client, whose token any process of that client may share.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_fleet_needs_a_fleet_key_to_share_a_workloads_token() {
    use tower_bearer::{TokenSource, distributed::RedisCache};

    // Lazily connected, to nothing: building is all that is checked.
    let cache = || {
        RedisCache::connect_lazily(redis::Client::open("redis://127.0.0.1:1/").unwrap())
            .unwrap()
            .encryption_key([7; 32])
    };
    let assertions = || from_fn(|| async { Ok(Assertion::new(jwt("any", in_an_hour()))) });
    let grant = orders_jwt_bearer("https://idp.example.com/token".into(), assertions());
    assert_eq!(grant.identity(), None);
    let refused = AuthLayer::builder(grant.clone())
        .distributed(cache())
        .build();
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    let named = AuthLayer::builder(grant)
        .distributed(cache().fleet_key("workload:orders"))
        .build();
    assert!(named.is_ok(), "{named:?}");

    let exchange = TokenExchange::builder("https://idp.example.com/token")
        .client_id("gateway")
        .client_secret("s")
        .subject_token_from(assertions(), TokenExchange::JWT)
        .build()
        .unwrap();
    assert_eq!(exchange.identity(), None);

    let client = ClientCredentials::builder("https://idp.example.com/token")
        .client_id("orders")
        .client_assertion(assertions())
        .build()
        .unwrap();
    assert!(client.identity().is_some());
}
