//! Scope challenges (RFC 6750 §3.1): a 403 `insufficient_scope` naming a scope makes the layer
//! fetch a token with that scope added, once, and resend; and a 401
//! `insufficient_user_authentication` (RFC 9470) is a typed error. The token endpoint is a
//! stand-in over real HTTP that issues tokens carrying the scope asked for; the API is an
//! in-process service that wants `write` for `POST`.

#![cfg(feature = "oauth")]

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};

use axum::response::IntoResponse;
use http::{Method, Request, Response, StatusCode, header::WWW_AUTHENTICATE};
use serde_json::json;
use support::StandInEndpoint;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_bearer::{AuthLayer, BoxError, ClientAuth, ClientCredentials, Error, StaticToken};

const CHALLENGE: &str = r#"Bearer error="insufficient_scope", scope="read write""#;

/// A token endpoint issuing `tok-<n>` with the scope asked for; the scope of each token, by
/// token, in `scopes`.
async fn endpoint() -> (StandInEndpoint, Arc<Mutex<HashMap<String, String>>>) {
    let scopes = Arc::new(Mutex::new(HashMap::new()));
    let issued = Arc::clone(&scopes);
    let counter = AtomicUsize::new(0);
    let endpoint = StandInEndpoint::start(move |recorded| {
        let n = counter.fetch_add(1, SeqCst) + 1;
        let form: HashMap<_, _> = recorded.form().into_iter().collect();
        let scope = form.get("scope").cloned().unwrap_or_default();
        let token = format!("tok-{n}");
        issued.lock().unwrap().insert(token.clone(), scope.clone());
        axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": scope}))
            .into_response()
    })
    .await;
    (endpoint, scopes)
}

fn source(endpoint: &StandInEndpoint) -> ClientCredentials {
    ClientCredentials::builder(endpoint.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .scope("read")
        .build()
        .unwrap()
}

/// An API that wants `write` for `POST` (403 with a scope challenge otherwise) and `read` for
/// the rest; it counts requests.
fn api(
    scopes: Arc<Mutex<HashMap<String, String>>>,
    challenge: &'static str,
    requests: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<String>| {
        let (scopes, requests) = (Arc::clone(&scopes), Arc::clone(&requests));
        async move {
            requests.fetch_add(1, SeqCst);
            let token = request.headers()["authorization"].to_str().unwrap();
            let token = token.trim_start_matches("Bearer ");
            let scope = scopes
                .lock()
                .unwrap()
                .get(token)
                .cloned()
                .unwrap_or_default();
            let needed = if request.method() == Method::POST {
                "write"
            } else {
                "read"
            };
            let response = if scope.split(' ').any(|s| s == needed) {
                Response::new(scope)
            } else {
                Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(WWW_AUTHENTICATE, challenge)
                    .body(String::new())
                    .unwrap()
            };
            Ok::<_, Infallible>(response)
        }
    })
}

fn post() -> Request<String> {
    Request::post("https://api.example.com/orders")
        .body("{\"item\":42}".to_owned())
        .unwrap()
}

#[tokio::test]
async fn a_scope_challenge_costs_one_widened_fetch_and_one_resend() {
    let (endpoint, scopes) = endpoint().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = AuthLayer::new(source(&endpoint));
    let client = ServiceBuilder::new().layer(auth.clone()).service(api(
        scopes,
        CHALLENGE,
        Arc::clone(&requests),
    ));
    let get = Request::get("https://api.example.com/orders")
        .body(String::new())
        .unwrap();
    assert_eq!(
        client.clone().oneshot(get).await.unwrap().status(),
        StatusCode::OK
    );

    let response = client.clone().oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.body(),
        "read write",
        "resent with a token for the wider scope"
    );
    let sent: Vec<_> = endpoint.recorded().iter().map(|r| r.form()).collect();
    assert_eq!(sent.len(), 2, "one widened fetch");
    assert!(
        sent[1].contains(&("scope".into(), "read write".into())),
        "{:?}",
        sent[1]
    );
    assert_eq!(
        requests.load(SeqCst),
        3,
        "the POST was sent twice, the GET once"
    );

    // The wider scope stays: later POSTs need no new fetch.
    client.oneshot(post()).await.unwrap();
    assert_eq!(endpoint.recorded().len(), 2);
}

#[tokio::test]
async fn a_hundred_challenged_requests_at_once_widen_once() {
    let (endpoint, scopes) = endpoint().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = AuthLayer::new(source(&endpoint));
    auth.token().await.unwrap();
    // The API holds its answers to the first token until all 100 requests have arrived.
    let together = Arc::new(tokio::sync::Barrier::new(100));
    let inner = api(scopes, CHALLENGE, Arc::clone(&requests));
    let held = service_fn(move |request: Request<String>| {
        let (together, inner) = (Arc::clone(&together), inner.clone());
        async move {
            if request.headers()["authorization"] == "Bearer tok-1" {
                together.wait().await;
            }
            inner.oneshot(request).await
        }
    });
    let client = ServiceBuilder::new().layer(auth).service(held);
    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(client.clone().oneshot(post())))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        endpoint.recorded().len(),
        2,
        "one token, then one widened fetch for all"
    );
    assert_eq!(requests.load(SeqCst), 200, "each request resent once");
}

#[tokio::test]
async fn a_server_that_insists_costs_one_fetch_and_gets_its_403() {
    let (endpoint, scopes) = endpoint().await;
    let requests = Arc::new(AtomicUsize::new(0));
    // The challenge names a scope the token has already: widening adds nothing the second time.
    let auth = AuthLayer::new(source(&endpoint));
    let client = ServiceBuilder::new().layer(auth).service(api(
        scopes,
        r#"Bearer error="insufficient_scope", scope="read""#,
        Arc::clone(&requests),
    ));
    for _ in 0..5 {
        let response = client.clone().oneshot(post()).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        endpoint.recorded().len(),
        1,
        "nothing to widen: no second fetch"
    );
    assert_eq!(requests.load(SeqCst), 5, "and no resend");
}

#[tokio::test]
async fn a_source_that_cannot_widen_passes_the_403_on() {
    let (_, scopes) = endpoint().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = AuthLayer::new(StaticToken::new("static"));
    let client = ServiceBuilder::new().layer(auth.clone()).service(api(
        scopes,
        CHALLENGE,
        Arc::clone(&requests),
    ));
    let response = client.oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(requests.load(SeqCst), 1);
    assert_eq!(auth.stats().fetches, 1);
}

#[tokio::test]
async fn a_scope_challenge_with_a_malformed_scope_is_not_followed() {
    let (endpoint, scopes) = endpoint().await;
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = AuthLayer::new(source(&endpoint));
    let client = ServiceBuilder::new().layer(auth).service(api(
        scopes,
        r#"Bearer error="insufficient_scope", scope="read  \"write""#,
        Arc::clone(&requests),
    ));
    let response = client.oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(endpoint.recorded().len(), 1);
}

#[tokio::test]
async fn a_step_up_challenge_is_a_typed_error_and_costs_no_fetch() {
    let auth = AuthLayer::new(StaticToken::new("t"));
    let api = service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(
                    WWW_AUTHENTICATE,
                    r#"Bearer error="insufficient_user_authentication", acr_values="urn:mfa", max_age="300""#,
                )
                .body(String::new())
                .unwrap(),
        )
    });
    let client = ServiceBuilder::new().layer(auth.clone()).service(api);
    let err: BoxError = client.oneshot(post()).await.unwrap_err();
    let Some(Error::InsufficientUserAuthentication {
        acr_values,
        max_age,
    }) = err.downcast_ref::<Error>()
    else {
        panic!("{err}");
    };
    assert_eq!(acr_values.as_deref(), Some("urn:mfa"));
    assert_eq!(*max_age, Some(300));
    assert!(err.downcast_ref::<Error>().unwrap().is_terminal());
    assert_eq!(
        auth.stats().fetches,
        1,
        "a new token cannot help: none fetched"
    );
}

/// In a keyed layer a scope challenge widens the scope of the key whose request met it, and
/// no other key's.
#[tokio::test]
async fn in_a_keyed_layer_a_scope_challenge_widens_that_key_only() {
    let (endpoint, scopes) = endpoint().await;
    let token_url = endpoint.url("/token");
    let auth = tower_bearer::keyed::KeyedAuthLayer::builder(
        tower_bearer::keyed::by_header(http::HeaderName::from_static("x-tenant")),
        move |tenant: &tower_bearer::keyed::TextKey| {
            ClientCredentials::builder(token_url.clone())
                .client_id("app")
                .client_secret("app-secret")
                .auth(ClientAuth::Post)
                .scope("read")
                .audience(tenant.as_str())
                .build()
        },
    )
    .build()
    .unwrap();
    let client = ServiceBuilder::new()
        .layer(auth)
        .service(api(scopes, CHALLENGE, Arc::default()));
    let as_tenant = |tenant: &str, mut request: Request<String>| {
        request
            .headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
        request
    };
    let response = client
        .clone()
        .oneshot(as_tenant("acme", post()))
        .await
        .unwrap();
    assert_eq!(response.body(), "read write");
    let get = Request::get("https://api.example.com/orders")
        .body(String::new())
        .unwrap();
    let response = client.oneshot(as_tenant("globex", get)).await.unwrap();
    assert_eq!(response.body(), "read", "globex's scope was not widened");
    let asked: Vec<(String, String)> = endpoint
        .recorded()
        .iter()
        .map(|r| {
            let form: HashMap<_, _> = r.form().into_iter().collect();
            (form["audience"].clone(), form["scope"].clone())
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("acme".to_owned(), "read".to_owned()),
            ("acme".to_owned(), "read write".to_owned()),
            ("globex".to_owned(), "read".to_owned()),
        ]
    );
}

/// An API that echoes the token into its step-up challenge's `acr_values` puts no secret in the
/// error: the value is dropped.
#[tokio::test]
async fn a_step_up_challenge_that_echoes_the_token_puts_no_secret_in_the_error() {
    let secret = "eyJhbGciOi-a-token-SECRET-0123456789";
    let auth = AuthLayer::new(StaticToken::new(secret));
    let api = service_fn(|request: Request<String>| async move {
        let token = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        let token = token.trim_start_matches("Bearer ");
        // Only a piece of it, past its start, as a careless server might quote it.
        let challenge = format!(
            r#"Bearer error="insufficient_user_authentication", acr_values="urn:mfa {}""#,
            &token[8..30]
        );
        Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(WWW_AUTHENTICATE, challenge)
                .body(String::new())
                .unwrap(),
        )
    });
    let client = ServiceBuilder::new().layer(auth).service(api);
    let err: BoxError = client.oneshot(post()).await.unwrap_err();
    let error = err.downcast_ref::<Error>().unwrap();
    assert!(
        matches!(
            error,
            Error::InsufficientUserAuthentication {
                acr_values: None,
                max_age: None
            }
        ),
        "{error:?}"
    );
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
    }
}
