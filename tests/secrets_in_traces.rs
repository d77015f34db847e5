//! No secret reaches a `tracing` event: every event at TRACE level is captured during a run
//! with successes, failed fetches and a 401 with a resend, and searched for secrets.

#![cfg(feature = "oauth")]

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use support::traces::Captured;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::AuthLayer;

const MARK: &str = "TOPSECRET";

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(MARK), "{what} leaks a secret: {text}");
}

#[tokio::test]
async fn no_secret_reaches_a_trace_event() {
    use tracing_subscriber::layer::SubscriberExt;
    // A global subscriber: a thread-local one races with tracing's callsite cache, which is
    // why this test has a file of its own.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // Success, a failure with retries, a revocation with a 401 and a resend.
    let idp = support::StandInIdp::start().await;
    let secret = format!("client-{MARK}");
    let rt = format!("rt-{MARK}");
    idp.add_refresh_token(&rt);
    let auth = AuthLayer::builder(
        tower_bearer::RefreshTokenGrant::builder(idp.url("/token"))
            .client_id("client")
            .client_secret(secret.as_str())
            .store(tower_bearer::store::MemoryStore::with(
                tower_bearer::store::StoredToken::new().with_refresh_token(rt.as_str()),
            ))
            .build()
            .unwrap(),
    )
    .name("orders")
    .backoff(Duration::ZERO, Duration::ZERO)
    .build()
    .unwrap();
    let svc = ServiceBuilder::new().layer(auth.clone()).service(idp.api());
    let get = || {
        Request::get("https://api.test/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );

    idp.state
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let t = auth.token().await.unwrap();
    auth.invalidate(&t);
    for _ in 0..3 {
        assert!(auth.token().await.is_err());
    }
    idp.state
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    idp.state.access_tokens.lock().unwrap().clear();
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), StatusCode::OK);

    // `ClientAuth::Query` puts the client secret in the token request's URL, which a
    // transport error (here: connection refused) would otherwise carry into the event.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let query = AuthLayer::builder(
        tower_bearer::ClientCredentials::builder(format!("http://127.0.0.1:{closed}/token"))
            .client_id("client")
            .client_secret(secret.as_str())
            .auth(tower_bearer::ClientAuth::Query)
            .build()
            .unwrap(),
    )
    .name("search")
    .build()
    .unwrap();
    assert!(query.token().await.is_err());

    let events = captured.events();
    assert!(
        events
            .iter()
            .any(|e| e.contains("token fetch failed") && e.contains("ClientCredentials")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.contains("token fetched")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.contains("token fetch failed")),
        "{events:#?}"
    );
    // The layer's name is on its fetch spans, and on its events outside them.
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("span token_fetch") && e.contains("layer=orders")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains("next fetch after backoff") && e.contains("layer=orders")),
        "{events:#?}"
    );
    // The access tokens the stand-in issued are at-N; none may appear, nor the secrets.
    for event in &events {
        assert_clean("trace event", event);
        assert!(!event.contains("at-"), "access token in {event}");
    }
}
