//! Servers echo what they received: an error's text never carries a secret the request did.
//!
//! A stand-in token endpoint answers every request with an error whose text repeats everything
//! it received (the method, URL query, headers and body, the decoded form values one by one,
//! and each cut short), as `error_description`, `error_uri`, the `error` code itself, or a
//! body that is not JSON. For each grant and client authentication, every secret the request
//! carried (client secret, refresh token, code, code verifier, client assertion, DPoP proof,
//! the Basic credentials, the access token being revoked) must be absent from the error's
//! `Display`, its `Debug`, every error in its source chain, and every `tracing` event at TRACE
//! level. A global subscriber: one test in a file of its own, each case named when it fails.

#![cfg(feature = "oauth")]

mod support;

use std::{fmt::Write, time::Duration};

use axum::response::IntoResponse;
use http::StatusCode;
use support::{Recorded, StandInEndpoint, traces::Captured};
use tower_bearer::{
    AuthLayer, AuthorizationCode, ClientAuth, ClientCredentials, Error, Pkce, RefreshTokenGrant,
    store::{MemoryStore, StoredToken},
};

const MARK: &str = "TOPSECRET";

/// Form and query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "refresh_token",
    "code",
    "code_verifier",
    "client_assertion",
    "token",
];

/// How the endpoint echoes what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// `error_description` and `error_uri`, status 400.
    Description,
    /// In the `error` code, status 400.
    Code,
    /// A `text/plain` body, status 502.
    PlainBody,
    /// `error_description` with each secret cut short after 16 characters, status 200.
    CutShort,
}

/// Everything `request` carried, as a server might repeat it.
fn echo_of(request: &Recorded, cut_short: bool) -> String {
    let mut text = format!(
        "{} {}?{} ",
        request.method,
        request.path,
        request.query.as_deref().unwrap_or("")
    );
    for (name, value) in &request.headers {
        let _ = write!(text, "{name}: {} ", value.to_str().unwrap_or(""));
    }
    let _ = write!(text, "body: {} ", request.body);
    for (name, value) in request.form().into_iter().chain(request.query_pairs()) {
        let value = if cut_short {
            value.chars().take(16).collect()
        } else {
            value
        };
        let _ = write!(text, "invalid {name}: {value}; ");
    }
    text
}

fn echoing_endpoint(echo: Echo) -> impl Fn(&Recorded) -> axum::response::Response {
    move |request| {
        let text = echo_of(request, echo == Echo::CutShort);
        let json = |status: StatusCode, body: serde_json::Value| {
            (
                status,
                [("content-type", "application/json")],
                body.to_string(),
            )
                .into_response()
        };
        match echo {
            Echo::Description => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "invalid_grant",
                    "error_description": text,
                    "error_uri": format!("https://idp.test/errors?got={text}"),
                }),
            ),
            Echo::Code => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("invalid_grant {text}") }),
            ),
            Echo::PlainBody => (StatusCode::BAD_GATEWAY, text).into_response(),
            Echo::CutShort => json(
                StatusCode::OK,
                serde_json::json!({ "error": "invalid_request", "error_description": text }),
            ),
        }
    }
}

/// Every secret value `request` carried, as sent.
fn secrets_sent(request: &Recorded) -> Vec<String> {
    let mut secrets: Vec<String> = request
        .form()
        .into_iter()
        .chain(request.query_pairs())
        .filter(|(name, _)| SECRET_PARAMS.contains(&name.as_str()))
        .map(|(_, value)| value)
        .collect();
    if let Some(authorization) = request.header("authorization") {
        secrets.push(authorization.to_owned());
        if let Some((_, credentials)) = authorization.split_once(' ') {
            secrets.push(credentials.to_owned());
        }
    }
    secrets.extend(request.header("dpop").map(str::to_owned));
    secrets
}

/// The text an error shows anywhere: `Display`, `Debug`, and each error of its source chain.
fn shown(err: &Error) -> Vec<(String, String)> {
    let mut shown = vec![
        ("Display".to_owned(), err.to_string()),
        ("Debug".to_owned(), format!("{err:?}")),
    ];
    let mut source = std::error::Error::source(err);
    while let Some(next) = source {
        shown.push(("source".to_owned(), format!("{next} / {next:?}")));
        source = next.source();
    }
    shown
}

/// Fails if any of `secrets` (or any 16 characters of one) appears in `text`.
fn assert_clean(case: &str, what: &str, text: &str, secrets: &[String]) {
    assert!(
        !text.contains(MARK),
        "{case}: {what} shows a secret: {text}"
    );
    for secret in secrets {
        let chars: Vec<char> = secret.chars().collect();
        for window in chars.windows(16.min(chars.len())) {
            let part: String = window.iter().collect();
            assert!(
                !text.contains(&part),
                "{case}: {what} shows part of a secret ({part}): {text}"
            );
        }
    }
}

/// A layer over `source` that makes one attempt per fetch and no backoff.
fn layer(source: impl tower_bearer::TokenSource) -> AuthLayer {
    AuthLayer::builder(source)
        .fetch_attempts(1)
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap()
}

/// What a case does against the echoing endpoint at `url`: the error it gets.
type Case = fn(String) -> std::pin::Pin<Box<dyn Future<Output = Error>>>;

fn client_credentials(url: String, auth: ClientAuth) -> ClientCredentials {
    ClientCredentials::builder(url)
        .client_id("client")
        .client_secret(format!("cs-{MARK}/with spaces+&="))
        .scope("read")
        .auth(auth)
        .build()
        .unwrap()
}

fn refresh_grant(url: String) -> RefreshTokenGrant {
    RefreshTokenGrant::builder(url)
        .client_id("client")
        .client_secret(format!("cs-{MARK}"))
        .store(MemoryStore::with(
            StoredToken::new().with_refresh_token(format!("rt-{MARK}-0123456789abcdef")),
        ))
        .build()
        .unwrap()
}

#[tokio::test]
async fn no_secret_a_request_carried_reaches_an_error_or_a_trace_event() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    #[cfg_attr(not(feature = "jose"), allow(unused_mut))]
    let mut cases: Vec<(&str, Case)> = vec![
        ("client_credentials, Basic", |url| {
            Box::pin(async move {
                layer(client_credentials(url, ClientAuth::Basic))
                    .token()
                    .await
                    .unwrap_err()
            })
        }),
        ("client_credentials, Post", |url| {
            Box::pin(async move {
                layer(client_credentials(url, ClientAuth::Post))
                    .token()
                    .await
                    .unwrap_err()
            })
        }),
        ("client_credentials, Query", |url| {
            Box::pin(async move {
                layer(client_credentials(url, ClientAuth::Query))
                    .token()
                    .await
                    .unwrap_err()
            })
        }),
        ("refresh_token", |url| {
            Box::pin(async move { layer(refresh_grant(url)).token().await.unwrap_err() })
        }),
        ("authorization_code exchange, PKCE", |url| {
            Box::pin(async move {
                let flow = AuthorizationCode::builder(url)
                    .client_id("client")
                    .client_secret(format!("cs-{MARK}"))
                    .redirect_uri("https://app.test/callback")
                    .build()
                    .unwrap();
                let pkce = Pkce::new().unwrap();
                flow.exchange(&format!("code-{MARK}"), Some(pkce.verifier()))
                    .await
                    .unwrap_err()
            })
        }),
    ];
    #[cfg(feature = "jose")]
    cases.push(("client_credentials, private_key_jwt and DPoP", |url| {
        Box::pin(async move {
            use tower_bearer::jose::SigningKey;
            let source = ClientCredentials::builder(url)
                .client_id("client")
                .private_key_jwt(SigningKey::generate_ed25519().unwrap())
                .dpop(SigningKey::generate_es256().unwrap())
                .build()
                .unwrap();
            layer(source).token().await.unwrap_err()
        })
    }));

    let echoes = [
        Echo::Description,
        Echo::Code,
        Echo::PlainBody,
        Echo::CutShort,
    ];
    let mut checked = 0;
    for (name, case) in &cases {
        for echo in echoes {
            let endpoint = StandInEndpoint::start(echoing_endpoint(echo)).await;
            let case_name = format!("{name}, echoed as {echo:?}");
            let err = case(endpoint.url("/token")).await;
            let recorded = endpoint.recorded();
            assert!(!recorded.is_empty(), "{case_name}: no request was sent");
            let secrets: Vec<String> = recorded.iter().flat_map(secrets_sent).collect();
            assert!(
                !secrets.is_empty(),
                "{case_name}: the request carried no secret"
            );
            for (what, text) in shown(&err) {
                assert_clean(&case_name, &what, &text, &secrets);
            }
            // The error still says what happened.
            match echo {
                Echo::PlainBody => assert!(err.to_string().contains("502"), "{case_name}: {err}"),
                _ => assert!(err.oauth().is_some(), "{case_name}: {err:?}"),
            }
            let events = captured.events();
            for event in &events {
                assert_clean(&case_name, "a trace event", event, &secrets);
            }
            checked += 1;
        }
    }

    // Revocation: the access token and the refresh token go to the revocation endpoint, whose
    // error echoes them (a 2xx is a success there: not the answer cut short).
    let revocation_echoes = [Echo::Description, Echo::Code, Echo::PlainBody];
    for echo in revocation_echoes {
        let token_endpoint = StandInEndpoint::start(|_| {
            support::token_json(&format!("at-{MARK}-0123456789abcdef"), 3600)
        })
        .await;
        let revocation = StandInEndpoint::start(echoing_endpoint(echo)).await;
        let case_name = format!("revocation, echoed as {echo:?}");
        let source = RefreshTokenGrant::builder(token_endpoint.url("/token"))
            .client_id("client")
            .client_secret(format!("cs-{MARK}"))
            .revocation_url(revocation.url("/revoke"))
            .store(MemoryStore::with(
                StoredToken::new().with_refresh_token(format!("rt-{MARK}-0123456789abcdef")),
            ))
            .build()
            .unwrap();
        let auth = layer(source);
        auth.token().await.unwrap();
        let err = auth.revoke().await.unwrap_err();
        let secrets: Vec<String> = revocation
            .recorded()
            .iter()
            .flat_map(secrets_sent)
            .collect();
        assert!(
            secrets.iter().any(|s| s.starts_with("at-")),
            "{case_name}: the access token was not revoked: {secrets:?}"
        );
        for (what, text) in shown(&err) {
            assert_clean(&case_name, &what, &text, &secrets);
        }
        for event in captured.events().iter() {
            assert_clean(&case_name, "a trace event", event, &secrets);
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        cases.len() * echoes.len() + revocation_echoes.len()
    );
    // The capture saw the failures it was meant to search.
    let events = captured.events();
    assert!(
        events.iter().any(|e| e.contains("token fetch failed")),
        "{events:#?}"
    );
}
