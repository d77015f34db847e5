//! The client credentials grant over real HTTP against a stand-in token endpoint on 127.0.0.1:
//! the three ways of sending credentials, response parsing, typed errors, and the timeout of
//! each request (in paused time).

#![cfg(feature = "oauth")]

mod support;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use axum::{
    http::{StatusCode, header},
    response::IntoResponse,
};
use support::{RawEndpoint, RawFault, StandInEndpoint, token_json};
use tokio::{task::JoinHandle, time::Instant};
use tower_bearer::{AuthLayer, ClientAuth, ClientCredentials, Error, TokenSource};

const SECRET: &str = "s3cr3t:with/special+chars%&=";

fn builder(endpoint: &StandInEndpoint) -> tower_bearer::ClientCredentialsBuilder {
    ClientCredentials::builder(endpoint.url("/oauth2/token"))
        .client_id("my client")
        .client_secret(SECRET)
}

fn basic_decode(header: &str) -> String {
    use base64::Engine;
    let encoded = header.strip_prefix("Basic ").expect("Basic scheme");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(raw).unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn basic_auth_form_encodes_id_and_secret_before_base64() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-basic", 3600)).await;
    let source = builder(&endpoint)
        .scope("read write")
        .param("audience", "https://api.example.com")
        .build()
        .unwrap();

    let token = source.fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), "at-basic");

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/oauth2/token");
    assert_eq!(req.query, None);
    assert_eq!(
        basic_decode(req.header("authorization").unwrap()),
        "my+client:s3cr3t%3Awith%2Fspecial%2Bchars%25%26%3D"
    );
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("scope", "read write"),
            ("audience", "https://api.example.com"),
        ])
    );
}

#[tokio::test]
async fn post_auth_sends_credentials_in_the_body() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-post", 3600)).await;
    let source = builder(&endpoint).auth(ClientAuth::Post).build().unwrap();
    source.fetch().await.unwrap();

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "my client"),
            ("client_secret", SECRET),
        ])
    );
}

#[tokio::test]
async fn query_auth_sends_every_parameter_in_the_url_of_a_form_post() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-query", 3600)).await;
    let source = builder(&endpoint)
        .auth(ClientAuth::Query)
        .param("redirect_uri", "https://app.example.com/cb")
        .build()
        .unwrap();
    source.fetch().await.unwrap();

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.body, "");
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        req.query_pairs(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("redirect_uri", "https://app.example.com/cb"),
            ("client_id", "my client"),
            ("client_secret", SECRET),
        ])
    );
}

#[tokio::test]
async fn the_layer_fetches_once_and_shares_the_token() {
    let endpoint = StandInEndpoint::start(|_| token_json("shared", 3600)).await;
    let auth = AuthLayer::new(builder(&endpoint).build().unwrap());
    let (a, b) = tokio::join!(auth.token(), auth.clone().token());
    assert_eq!(a.unwrap().access_token().secret(), "shared");
    assert_eq!(b.unwrap().access_token().secret(), "shared");
    let again = auth.token().await.unwrap();
    assert_eq!(again.access_token().secret(), "shared");
    assert!(again.expires_in().unwrap().as_secs() > 3500);
    assert_eq!(endpoint.recorded().len(), 1);
}

#[tokio::test]
async fn an_oauth_error_response_is_a_typed_error_with_every_field() {
    let endpoint = StandInEndpoint::json(
        StatusCode::UNAUTHORIZED,
        r#"{"error":"invalid_client","error_description":"client authentication failed","error_uri":"https://idp/errors"}"#,
    )
    .await;
    let auth = AuthLayer::new(builder(&endpoint).build().unwrap());
    let err = auth.token().await.unwrap_err();
    let oauth = err.oauth().expect("an OAuth error");
    assert_eq!(oauth.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(oauth.code(), "invalid_client");
    assert_eq!(oauth.description(), Some("client authentication failed"));
    assert_eq!(oauth.uri(), Some("https://idp/errors"));
    assert!(err.is_terminal());
}

#[tokio::test]
async fn an_error_inside_a_200_is_an_error() {
    let endpoint = StandInEndpoint::json(
        StatusCode::OK,
        r#"{"error":"invalid_scope","access_token":""}"#,
    )
    .await;
    let err = builder(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_scope");
}

#[tokio::test]
async fn lenient_success_shapes_are_accepted() {
    let endpoint = StandInEndpoint::json(
        StatusCode::OK,
        r#"{"access_token":"x","token_type":"bearer","expires_in":"1200","extra":{"a":1}}"#,
    )
    .await;
    let token = builder(&endpoint).build().unwrap().fetch().await.unwrap();
    assert_eq!(token.token_type(), "bearer");
    let left = token.expires_in().unwrap().as_secs();
    assert!((1195..=1200).contains(&left), "{left}");

    let form = StandInEndpoint::start(|_| {
        (
            [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
            "access_token=from-form&token_type=bearer&scope=repo",
        )
            .into_response()
    })
    .await;
    let token = builder(&form).build().unwrap().fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), "from-form");
    assert_eq!(token.scope(), Some("repo"));
}

#[tokio::test]
async fn a_non_json_answer_gives_status_and_a_secret_free_excerpt() {
    // A misbehaving gateway that echoes the request body into its error page.
    let endpoint = StandInEndpoint::start(|req| {
        (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html>upstream failed for {}</html>", req.body),
        )
            .into_response()
    })
    .await;
    let source = builder(&endpoint).auth(ClientAuth::Post).build().unwrap();
    let err = source.fetch().await.unwrap_err();
    match &err {
        Error::UnexpectedResponse {
            status, excerpt, ..
        } => {
            assert_eq!(*status, StatusCode::BAD_GATEWAY);
            // The page echoes the form body, so the excerpt is withheld.
            assert_eq!(
                excerpt.as_deref(),
                Some("[withheld: the body may echo a credential]")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(!shown.contains("s3cr3t%3A"), "{shown}");
}

#[tokio::test]
async fn an_error_page_shows_its_start_with_the_secret_cut_out() {
    let endpoint = StandInEndpoint::start(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("maintenance; your secret was {SECRET}"),
        )
            .into_response()
    })
    .await;
    let err = builder(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    match &err {
        Error::UnexpectedResponse {
            status, excerpt, ..
        } => {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                excerpt.as_deref(),
                Some("maintenance; your secret was [redacted]")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_refused() {
    let endpoint = StandInEndpoint::start(|_| {
        let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(1024 * 1024 + 1));
        ([(header::CONTENT_TYPE, "application/json")], big).into_response()
    })
    .await;
    let err = builder(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedResponse { reason, .. } if reason.contains("larger than")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error_without_the_secret() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let source = ClientCredentials::builder(format!("http://127.0.0.1:{port}/token"))
        .client_id("id")
        .client_secret("query-SECRET")
        .auth(ClientAuth::Query)
        .build()
        .unwrap();
    let err = source.fetch().await.unwrap_err();
    match &err {
        Error::Transport(t) => assert!(t.is_connect(), "{t}"),
        other => panic!("unexpected {other:?}"),
    }
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("query-SECRET"), "{shown}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let endpoint = StandInEndpoint::start(|_| {
        (
            StatusCode::FOUND,
            [(header::LOCATION, "http://127.0.0.1:1/elsewhere")],
        )
            .into_response()
    })
    .await;
    let err = builder(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedResponse { status, .. } if *status == StatusCode::FOUND),
        "{err:?}"
    );
    assert_eq!(endpoint.recorded().len(), 1);
}

/// A user-supplied HTTP client that follows redirects resends the token request, credentials
/// included, to wherever a 307 points (the source cannot stop it; its docs say so). The answer
/// that comes from there is refused: a redirect never yields a token.
#[tokio::test]
async fn a_token_from_a_redirect_a_user_client_followed_is_refused() {
    let elsewhere = StandInEndpoint::start(|_| token_json("at-elsewhere", 3600)).await;
    let target = elsewhere.url("/token");
    let endpoint = StandInEndpoint::start(move |_| {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, target.clone())],
        )
            .into_response()
    })
    .await;
    let err = builder(&endpoint)
        .http_client(reqwest::Client::new())
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("redirect") && m.contains("Policy::none")),
        "{err:?}"
    );
    assert_eq!(elsewhere.recorded().len(), 1, "the client did follow");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[tokio::test]
async fn extra_params_are_sent_in_the_order_added() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-params", 3600)).await;
    // Not in alphabetical order, so that a sorted form would show.
    let source = builder(&endpoint)
        .param("resource", "https://api.example.com/")
        .param("audience", "billing")
        .build()
        .unwrap();
    source.fetch().await.unwrap();

    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://api.example.com/"),
            ("audience", "billing"),
        ])
    );
}

/// RFC 8707: one `resource` per API, in the order given, beside an `audience`; a resource that
/// is not an absolute URI, or has a fragment, is refused before anything is sent.
#[tokio::test]
async fn resource_indicators_repeat_and_must_be_absolute_uris_without_a_fragment() {
    let endpoint = StandInEndpoint::start(|_| token_json("at-resource", 3600)).await;
    let source = builder(&endpoint)
        .resource("https://billing.example.com/")
        .resource("https://reports.example.com/v2")
        .audience("billing")
        .build()
        .unwrap();
    source.fetch().await.unwrap();
    let [req] = endpoint.recorded().try_into().unwrap();
    assert_eq!(
        req.form(),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://billing.example.com/"),
            ("resource", "https://reports.example.com/v2"),
            ("audience", "billing"),
        ])
    );
    for bad in ["/relative", "billing", "https://api.example.com/#part"] {
        let err = builder(&endpoint).resource(bad).build().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        let err = builder(&endpoint)
            .param("resource", bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::Config(_)),
            "{bad} through param: {err}"
        );
    }
    assert_eq!(
        endpoint.recorded().len(),
        1,
        "nothing sent for a bad resource"
    );
}

/// Starts `source.fetch()` against an endpoint that reads the request and never answers, in
/// paused time, and lets it run until the endpoint holds the connection. Yielding lets the
/// loopback I/O through without moving the paused clock (it moves only when the runtime has
/// nothing to do), so the request's timer starts at `started` and nothing has elapsed yet.
async fn a_fetch_held_by_a_silent_endpoint(
    source: ClientCredentials,
    endpoint: &RawEndpoint,
) -> (Instant, JoinHandle<Result<tower_bearer::Token, Error>>) {
    let started = Instant::now();
    let fetch = tokio::spawn(async move { source.fetch().await });
    let mut yields = 0;
    while endpoint.connections.load(SeqCst) == 0 {
        tokio::task::yield_now().await;
        yields += 1;
        assert!(yields < 1_000_000, "the request never reached the endpoint");
    }
    // Let the request go out whole.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(Instant::now(), started, "no time passed on the way");
    (started, fetch)
}

/// Waits for the fetch (in paused time a hang would jump the clock to the next timer, so a
/// missing timeout shows as a 600 s wait, not a stalled suite) and returns its error.
async fn its_error(fetch: JoinHandle<Result<tower_bearer::Token, Error>>) -> Error {
    tokio::time::timeout(Duration::from_secs(600), fetch)
        .await
        .expect("the request must time out by itself")
        .unwrap()
        .expect_err("a silent endpoint gives no token")
}

#[tokio::test(start_paused = true)]
async fn a_token_request_that_is_never_answered_times_out_after_30_seconds() {
    let endpoint = RawEndpoint::start(RawFault::Hang).await;
    // Default settings: no request_timeout given.
    let source = ClientCredentials::builder(endpoint.url("/token"))
        .client_id("id")
        .client_secret("secret")
        .build()
        .unwrap();
    let (started, fetch) = a_fetch_held_by_a_silent_endpoint(source, &endpoint).await;

    // Not before 30 s ...
    tokio::time::advance(Duration::from_secs(30) - Duration::from_millis(1)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!fetch.is_finished(), "gave up before 30 s");

    // ... but at 30 s, as a transport timeout.
    let err = its_error(fetch).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Error::Transport(t) if t.is_timeout()),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(
        elapsed >= Duration::from_secs(30) && elapsed < Duration::from_secs(31),
        "{elapsed:?}"
    );
    assert_eq!(endpoint.connections.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn request_timeout_sets_how_long_a_token_request_may_take() {
    let endpoint = RawEndpoint::start(RawFault::Hang).await;
    let source = ClientCredentials::builder(endpoint.url("/token"))
        .client_id("id")
        .client_secret("secret")
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (started, fetch) = a_fetch_held_by_a_silent_endpoint(source, &endpoint).await;
    let err = its_error(fetch).await;
    assert!(
        matches!(&err, Error::Transport(t) if t.is_timeout()),
        "{err:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
}

#[test]
fn a_zero_request_timeout_is_a_config_error_at_build() {
    let err = ClientCredentials::builder("https://idp.example.com/token")
        .client_id("id")
        .client_secret("secret")
        .request_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("request_timeout")),
        "{err:?}"
    );
}

/// `expires_in` counts from when the token request was sent: an answer that took 800 ms to come
/// leaves a 2-second token 1.2 s, not 2 s, so a slow endpoint never makes the layer send a
/// token past the expiry the server set.
#[tokio::test(start_paused = true)]
async fn expires_in_counts_from_when_the_request_was_sent() {
    let endpoint = StandInEndpoint::start(|_| {
        support::delayed(token_json("slow", 2), Duration::from_millis(800))
    })
    .await;
    let source = ClientCredentials::builder(endpoint.url("/token"))
        .client_id("id")
        .client_secret("secret")
        .build()
        .unwrap();
    let sent = Instant::now();
    let token = source.fetch().await.unwrap();
    assert!(sent.elapsed() >= Duration::from_millis(800));
    assert_eq!(token.expires_at(), Some(sent + Duration::from_secs(2)));
}
