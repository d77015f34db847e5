//! DPoP (RFC 9449) and `private_key_jwt` (RFC 7523) end to end (feature `jose`): against a real
//! authorization server that supports both (oidc-provider, which `scripts/test` starts and names
//! in `TOWER_BEARER_OIDC`; see tests/oidc-provider), and a resource server that checks every
//! proof (tests/support/dpop_api.rs). A plain `cargo test` skips these as ignored.

#![cfg(feature = "jose")]

mod support;

use std::{collections::HashSet, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
use support::dpop_api::{DpopApi, thumbprint};
use tokio::task::JoinSet;
use tower::{Layer, ServiceExt};
use tower_bearer::{
    AuthLayer, AuthorizationCode, ClientCredentials, Error, Pkce, ProviderMetadata,
    jose::{Algorithm, SigningKey},
};

const ES256_1: &str = include_str!("keys/client-es256.pem");
const ES256_2: &str = include_str!("keys/client-es256-2.pem");
const ED25519: &str = include_str!("keys/client-ed25519.pem");
const RSA: &str = include_str!("keys/client-rsa.pem");
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

fn issuer() -> String {
    support::oidc_provider()
}

fn token_url() -> String {
    format!("{}/token", issuer())
}

fn key(pem: &str, kid: &str) -> SigningKey {
    SigningKey::from_pkcs8_pem(pem).unwrap().with_key_id(kid)
}

/// The authorization server's counters (they only grow).
async fn server_stats() -> Value {
    let body = reqwest::get(format!("{}/test/stats", issuer()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn count(stats: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(stats, |v, name| &v[name])
        .as_u64()
        .unwrap_or(0)
}

/// Makes the authorization server demand a DPoP nonce from `client` (or stop).
async fn require_server_nonce(client: &str, required: bool) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/test/dpop-nonce?required={required}&client_id={client}",
            issuer()
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

/// A layer for the test server's `dpop-secret` client (its tokens always DPoP-bound), binding
/// them to `proof_key`.
fn dpop_secret_client(proof_key: SigningKey) -> AuthLayer {
    let source = ClientCredentials::builder(token_url())
        .client_id("dpop-secret")
        .client_secret("dpop-secret-value")
        .dpop(proof_key)
        .build()
        .unwrap();
    AuthLayer::new(source)
}

/// The claims of a JWT (not verified: the resource server does that).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `GET path` on `api` through `auth`, over HTTP/1.1: the status.
async fn get(auth: &AuthLayer, api: &DpopApi, path: &str) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let request = Request::get(api.url(path)).body(String::new()).unwrap();
    let response = auth.layer(client).oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// `private_key_jwt` with each kind of key the crate signs with, and either of two keys a
/// client has registered (a rotation): each fetch authenticates with a fresh assertion.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn private_key_jwt_works_with_p256_ed25519_and_rsa_keys_and_either_registered_key() {
    let cases = [
        ("pkjwt-es256", key(ES256_1, "es-1")),
        ("pkjwt-es256", key(ES256_2, "es-2")),
        ("pkjwt-ed25519", key(ED25519, "ed-1")),
        ("pkjwt-rsa", key(RSA, "rsa-1")),
        (
            "pkjwt-rsa",
            key(RSA, "rsa-1").with_algorithm(Algorithm::PS256).unwrap(),
        ),
    ];
    for (client, key) in cases {
        let algorithm = key.algorithm();
        let before = server_stats().await;
        let source = ClientCredentials::builder(token_url())
            .client_id(client)
            .private_key_jwt(key)
            .build()
            .unwrap();
        let auth = AuthLayer::new(source);
        let first = auth.token().await.unwrap();
        assert_eq!(first.token_type(), "Bearer", "{client} is not DPoP-bound");
        assert_eq!(claims(first.access_token().secret())["client_id"], client);
        // Again: a new assertion (the server refuses a jti it has seen).
        assert!(auth.invalidate(&first));
        auth.token().await.unwrap();
        let after = server_stats().await;
        assert_eq!(
            count(&after, &["token_requests", client, "client_credentials"])
                - count(&before, &["token_requests", client, "client_credentials"]),
            2,
            "{client} with {algorithm}"
        );
        assert_eq!(
            count(&after, &["invalid_client"]),
            count(&before, &["invalid_client"])
        );
    }
}

/// A key the server does not hold for the client fails the fetch with `invalid_client`, a
/// terminal error that shows no assertion.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_key_the_server_does_not_know_fails_with_a_terminal_invalid_client() {
    let source = ClientCredentials::builder(token_url())
        .client_id("pkjwt-es256")
        .private_key_jwt(key(ED25519, "ed-1"))
        .build()
        .unwrap();
    let err = AuthLayer::new(source).token().await.unwrap_err();
    match &err {
        Error::OAuth(oauth) => assert_eq!(oauth.code(), "invalid_client"),
        other => panic!("{other:?}"),
    }
    assert!(err.is_terminal());
    assert!(
        !format!("{err} {err:?}").contains("eyJ"),
        "no JWT in {err:?}"
    );
}

/// From discovery: the server lists `private_key_jwt` and the key's algorithm, and the
/// assertions name the issuer as their audience, which the server accepts.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn discovery_takes_private_key_jwt_with_the_issuer_as_audience() {
    let metadata = ProviderMetadata::discover(&issuer()).await.unwrap();
    assert!(
        metadata
            .token_endpoint_auth_signing_alg_values_supported()
            .unwrap()
            .iter()
            .any(|a| a == "ES256")
    );
    assert!(metadata.dpop_signing_alg_values_supported().is_some());
    let source = ClientCredentials::from_metadata(&metadata)
        .client_id("pkjwt-es256")
        .private_key_jwt(key(ES256_1, "es-1"))
        .dpop(SigningKey::generate_ed25519().unwrap())
        .build()
        .unwrap();
    let debug = format!("{source:?}");
    assert!(
        debug.contains(&format!("assertion_audience: Some({:?})", issuer())),
        "{debug}"
    );
    let token = AuthLayer::new(source).token().await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
}

/// A DPoP-bound token (ES256, EdDSA and PS256 proof keys) goes as `Authorization: DPoP` with a
/// fresh proof on every request, which the strict API accepts: 20 requests, 20 different
/// `jti`, the token's `cnf.jkt` the key's thumbprint.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_dpop_bound_token_goes_with_a_fresh_proof_on_every_request_that_a_strict_api_accepts() {
    let api = DpopApi::start(&issuer()).await;
    let proof_keys = [
        SigningKey::generate_es256().unwrap(),
        SigningKey::generate_ed25519().unwrap(),
        key(RSA, "rsa-1").with_algorithm(Algorithm::PS256).unwrap(),
    ];
    for proof_key in proof_keys {
        let auth = dpop_secret_client(proof_key.clone());
        let accepted = api.accepted();
        for i in 0..20 {
            assert_eq!(
                get(&auth, &api, &format!("/orders/{i}?page=2#top")).await,
                StatusCode::OK,
                "{:?}",
                api.seen(|s| s.refused.clone())
            );
        }
        assert_eq!(api.accepted() - accepted, 20);
        let token = auth.token().await.unwrap();
        assert_eq!(token.token_type(), "DPoP");
        assert_eq!(
            claims(token.access_token().secret())["cnf"]["jkt"],
            proof_key.thumbprint()
        );
        assert_eq!(
            thumbprint(&serde_json::json!(proof_key.public_jwk())),
            proof_key.thumbprint(),
            "the API's own thumbprint of the public JWK agrees"
        );
        assert_eq!(auth.stats().fetches, 1);
    }
    api.seen(|seen| {
        assert_eq!(seen.jtis.len(), 60, "a jti per request");
        assert!(seen.schemes.iter().all(|s| s == "DPoP"));
    });
}

/// `private_key_jwt` and DPoP together: the client authenticates with its P-256 key and binds
/// its tokens to an Ed25519 key.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn private_key_jwt_and_dpop_together() {
    let api = DpopApi::start(&issuer()).await;
    let proof_key = SigningKey::generate_ed25519().unwrap();
    let source = ClientCredentials::builder(token_url())
        .client_id("code-pkjwt")
        .private_key_jwt(key(ES256_1, "es-1"))
        .dpop(proof_key.clone())
        .build()
        .unwrap();
    let auth = AuthLayer::new(source);
    assert_eq!(get(&auth, &api, "/me").await, StatusCode::OK);
    let token = auth.token().await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
    assert_eq!(
        claims(token.access_token().secret())["cnf"]["jkt"],
        proof_key.thumbprint()
    );
}

/// The authorization server demands a nonce: its `use_dpop_nonce` answer costs one immediate
/// resend with the nonce, inside the same fetch, which counts no failure and no retry.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn the_servers_nonce_costs_one_immediate_resend_and_no_failure() {
    // A client of its own: the nonce it turns on touches no other test.
    require_server_nonce("dpop-nonce", true).await;
    let before = server_stats().await;
    let source = ClientCredentials::builder(token_url())
        .client_id("dpop-nonce")
        .client_secret("dpop-nonce-value")
        .dpop(SigningKey::generate_es256().unwrap())
        .build()
        .unwrap();
    let auth = AuthLayer::new(source);
    let token = auth.token().await;
    require_server_nonce("dpop-nonce", false).await;
    assert_eq!(token.unwrap().token_type(), "DPoP");
    let after = server_stats().await;
    let asked = &["token_errors", "dpop-nonce", "use_dpop_nonce"];
    assert_eq!(count(&after, asked) - count(&before, asked), 1);
    let sent = &["token_requests", "dpop-nonce", "client_credentials"];
    assert_eq!(
        count(&after, sent) - count(&before, sent),
        2,
        "the request, and once more with the nonce"
    );
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches, stats.fetch_failures, stats.fetch_retries),
        (1, 0, 0)
    );
}

/// The API demands nonces of its own and rotates them every 50 requests (accepting the
/// current one and the two before, as servers accept recent ones) while 32 callers send 10
/// requests each:
/// every request succeeds, each nonce challenge costs one resend with the same token (never a
/// new fetch), and later requests carry the nonce learned from any response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn the_apis_rotating_nonces_cost_resends_under_load_and_no_failed_request() {
    let api = DpopApi::start(&issuer()).await;
    api.require_nonce(50);
    let auth = dpop_secret_client(SigningKey::generate_es256().unwrap());
    let mut callers = JoinSet::new();
    for caller in 0..32 {
        let auth = auth.clone();
        let url = api.url(&format!("/items/{caller}"));
        callers.spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<String>();
            let service = auth.layer(client);
            let mut statuses = Vec::new();
            for _ in 0..10 {
                let request = Request::post(&url).body("{}".to_owned()).unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                statuses.push(response.status());
                response.into_body().collect().await.unwrap();
            }
            statuses
        });
    }
    let statuses: Vec<StatusCode> = callers.join_all().await.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 320);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{:?}",
        api.seen(|s| s.refused.clone())
    );
    let challenges = api.refused("use_dpop_nonce");
    assert!(challenges > 0, "the API asked for nonces");
    let stats = auth.stats();
    assert_eq!(stats.fetches, 1, "a nonce is not a rejected token");
    assert_eq!(stats.unauthorized, 0);
    assert_eq!(
        stats.retries as usize, challenges,
        "one resend per challenge"
    );
    assert_eq!(api.accepted(), 320);
}

/// An API that checks proofs against another URL than the one the client used (a proxy in
/// between) refuses them with `invalid_dpop_proof`: a new token cannot fix that, so the layer
/// keeps its token and hands the 401 to the caller without a resend.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn a_refused_proof_keeps_the_token_and_reaches_the_caller() {
    let api = DpopApi::start(&issuer()).await;
    api.expect_base("https://api.example.com");
    let auth = dpop_secret_client(SigningKey::generate_es256().unwrap());
    assert_eq!(get(&auth, &api, "/x").await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: htu"), 1);
    let stats = auth.stats();
    assert_eq!(
        (stats.fetches, stats.unauthorized, stats.retries),
        (1, 0, 0)
    );
}

/// The API is a real check, not a rubber stamp: with the layer's token, a proof made by hand
/// is accepted once; the same proof again (a replayed `jti`), one for another URL, one with
/// another token's `ath`, one from ten minutes ago, and one signed by another key are refused.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn the_test_api_refuses_replayed_misdirected_mismatched_stale_and_foreign_proofs() {
    let api = DpopApi::start(&issuer()).await;
    let token = dpop_secret_client(key(ES256_1, "es-1"))
        .token()
        .await
        .unwrap();
    let token = token.access_token().secret().to_owned();
    let url = api.url("/hand-made");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let send = |proof: String| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let claims = |jti: &str, htu: &str, iat: u64, ath: &str| serde_json::json!({"jti": jti, "htm": "GET", "htu": htu, "iat": iat, "ath": ath});
    let good = hand_made_proof(ES256_1, &claims("hand-made-jti-0001", &url, now, &ath));
    assert_eq!(send(good.clone()).await, StatusCode::OK);
    assert_eq!(send(good).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: jti replayed"), 1);

    let elsewhere = hand_made_proof(
        ES256_1,
        &claims(
            "hand-made-jti-0002",
            "https://other.example/hand-made",
            now,
            &ath,
        ),
    );
    assert_eq!(send(elsewhere).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: htu"), 1);

    let other_ath = URL_SAFE_NO_PAD.encode([0u8; 32]);
    let mismatched = hand_made_proof(
        ES256_1,
        &claims("hand-made-jti-0003", &url, now, &other_ath),
    );
    assert_eq!(send(mismatched).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: ath"), 1);

    let stale = hand_made_proof(
        ES256_1,
        &claims("hand-made-jti-0004", &url, now - 600, &ath),
    );
    assert_eq!(send(stale).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: iat"), 1);

    let foreign = hand_made_proof(ES256_2, &claims("hand-made-jti-0005", &url, now, &ath));
    assert_eq!(send(foreign).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.refused("invalid_dpop_proof: the key is not"), 1);
    assert_eq!(api.accepted(), 1);
}

/// A DPoP proof signed by hand (with AWS-LC directly) with the P-256 key in `pem`.
fn hand_made_proof(pem: &str, claims: &Value) -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let (_, der) = pkcs8::SecretDocument::from_pem(pem).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes()).unwrap();
    let point = key.public_key().as_ref();
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    });
    let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// The authorization code flow with a DPoP key: the authorization URL carries the key's
/// thumbprint (`dpop_jkt`), the exchange and every refresh carry proofs, and the tokens,
/// refreshed ones included, are bound to the key and accepted by the strict API.
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn the_code_flow_binds_the_code_and_every_refreshed_token_to_the_dpop_key() {
    let api = DpopApi::start(&issuer()).await;
    let metadata = ProviderMetadata::discover(&issuer()).await.unwrap();
    let proof_key = SigningKey::generate_es256().unwrap();
    let flow = AuthorizationCode::from_metadata(&metadata)
        .client_id("code-pkjwt")
        .private_key_jwt(key(ES256_1, "es-1"))
        .dpop(proof_key.clone())
        .redirect_uri(REDIRECT_URI)
        .scope("openid offline_access read")
        .build()
        .unwrap();
    let pkce = Pkce::new().unwrap();
    let url = flow
        .authorize_url(
            metadata.authorization_endpoint().unwrap(),
            "state-1",
            Some(&pkce),
        )
        .unwrap();
    let jkt: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "dpop_jkt")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(jkt, [proof_key.thumbprint()]);
    let code = follow_to_redirect_uri(url.as_str()).await;

    let before = server_stats().await;
    let grant = flow.exchange(&code, Some(pkce.verifier())).await.unwrap();
    let auth = AuthLayer::new(grant);
    assert_eq!(get(&auth, &api, "/profile").await, StatusCode::OK);
    let first = auth.token().await.unwrap();
    assert_eq!(first.token_type(), "DPoP");

    // Refreshed: a new token, still bound to the key.
    assert!(auth.invalidate(&first));
    assert_eq!(get(&auth, &api, "/profile").await, StatusCode::OK);
    let second = auth.token().await.unwrap();
    assert_ne!(second.access_token(), first.access_token());
    for token in [&first, &second] {
        assert_eq!(
            claims(token.access_token().secret())["cnf"]["jkt"],
            proof_key.thumbprint()
        );
    }
    let after = server_stats().await;
    assert_eq!(
        count(&after, &["token_requests", "code-pkjwt", "refresh_token"])
            - count(&before, &["token_requests", "code-pkjwt", "refresh_token"]),
        1
    );
    let thumbprints: HashSet<String> = api.seen(|s| s.thumbprints.clone());
    assert_eq!(
        thumbprints,
        HashSet::from([proof_key.thumbprint().to_owned()])
    );
}

/// Follows the authorization server's redirects (it logs in and consents by itself) up to the
/// redirect URI, and returns the code it carries.
async fn follow_to_redirect_uri(url: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.url().as_str().starts_with(REDIRECT_URI) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no redirect: {}", response.status()))
        .to_owned();
    let location = url::Url::parse(&location).unwrap();
    assert!(location.as_str().starts_with(REDIRECT_URI), "{location}");
    location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"))
}

/// The same proofs when the inner client is a `reqwest::Client` (the layer serves
/// `reqwest::Request`) and through `reqwest_middleware`: the strict API accepts every request,
/// nonce challenges included.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
#[ignore = "needs the oidc-provider server: run scripts/test"]
async fn reqwest_clients_send_the_same_proofs() {
    let api = DpopApi::start(&issuer()).await;
    api.require_nonce(3);
    let auth = dpop_secret_client(SigningKey::generate_ed25519().unwrap());
    let service = auth.layer(reqwest::Client::new());
    for i in 0..5 {
        let request = reqwest::Request::new(
            http::Method::PUT,
            api.url(&format!("/tower/{i}?q=1")).parse().unwrap(),
        );
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    for i in 0..5 {
        let response = client
            .delete(api.url(&format!("/middleware/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(api.accepted(), 10);
    assert!(api.refused("use_dpop_nonce") > 0);
    assert_eq!(api.refused("invalid"), 0);
    assert_eq!(auth.stats().fetches, 1);
}

/// A token endpoint (a stand-in, over HTTP) that demands DPoP nonces and rotates them every 10
/// requests, accepting the current one and the two before, while 8 layers sharing one source
/// refetch 10 times each, all at once: no fetch fails, and each `use_dpop_nonce` answer costs
/// exactly one resend. Every request carries a client assertion and a proof for the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoints_rotating_nonces_under_load_fail_no_fetch() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    };
    use support::StandInEndpoint;

    let rotation = Arc::new(Mutex::new((0usize, 0usize)));
    let (challenges, issued) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let endpoint = {
        let (rotation, challenges, issued) = (
            Arc::clone(&rotation),
            Arc::clone(&challenges),
            Arc::clone(&issued),
        );
        StandInEndpoint::start(move |request| {
            use axum::response::IntoResponse;
            let form = request.form();
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(
                field("client_assertion_type"),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            );
            assert_eq!(claims(&field("client_assertion"))["sub"], "svc");
            let proof = claims(request.header("dpop").expect("a DPoP proof"));
            assert_eq!(proof["htm"], "POST");
            let (nonce, accepted) = {
                let mut rotation = rotation.lock().unwrap();
                rotation.0 += 1;
                if rotation.0 % 10 == 0 {
                    rotation.1 += 1;
                }
                let current = format!("as-{}", rotation.1);
                let accepted = [
                    current.clone(),
                    format!("as-{}", rotation.1.wrapping_sub(1)),
                    format!("as-{}", rotation.1.wrapping_sub(2)),
                ];
                (current, accepted)
            };
            let mut response = if accepted.iter().any(|n| proof["nonce"] == n.as_str()) {
                let n = issued.fetch_add(1, SeqCst);
                let body = serde_json::json!({
                    "access_token": format!("tok-{n}"),
                    "token_type": "DPoP",
                    "expires_in": 3600,
                });
                (StatusCode::OK, axum::Json(body)).into_response()
            } else {
                challenges.fetch_add(1, SeqCst);
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({ "error": "use_dpop_nonce" })),
                )
                    .into_response()
            };
            response
                .headers_mut()
                .insert("dpop-nonce", nonce.parse().unwrap());
            response
        })
        .await
    };
    let source = Arc::new(
        ClientCredentials::builder(endpoint.url("/token"))
            .client_id("svc")
            .private_key_jwt(key(ES256_1, "es-1"))
            .dpop(SigningKey::generate_ed25519().unwrap())
            .build()
            .unwrap(),
    );
    let layers: Vec<AuthLayer> = (0..8)
        .map(|_| AuthLayer::new(Arc::clone(&source)))
        .collect();
    let mut fetching = JoinSet::new();
    for auth in &layers {
        let auth = auth.clone();
        fetching.spawn(async move {
            for _ in 0..10 {
                let token = auth.token().await.expect("no fetch fails");
                assert_eq!(token.token_type(), "DPoP");
                auth.invalidate(&token);
            }
        });
    }
    fetching.join_all().await;
    let failures: u64 = layers.iter().map(|l| l.stats().fetch_failures).sum();
    let fetches: u64 = layers.iter().map(|l| l.stats().fetches).sum();
    assert_eq!(failures, 0);
    assert_eq!(fetches, 80);
    assert_eq!(issued.load(SeqCst), 80);
    assert_eq!(
        endpoint.recorded().len(),
        80 + challenges.load(SeqCst),
        "one resend per challenge"
    );
    assert!(challenges.load(SeqCst) > 0);
}
