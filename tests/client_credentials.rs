//! The client credentials grant over real HTTP against a stand-in token endpoint on 127.0.0.1:
//! the three ways of sending credentials, response parsing, and typed errors.

mod support;

use axum::{
    http::{StatusCode, header},
    response::IntoResponse,
};
use support::{StandInEndpoint, token_json};
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
