use super::*;

const JSON: Option<&str> = Some("application/json");

fn ok(body: &str) -> Token {
    parse(StatusCode::OK, JSON, body.as_bytes(), &Carried::default()).unwrap()
}

fn secs(t: &Token) -> u64 {
    // Rounds up: a token parsed "now" has slightly less than its lifetime left.
    t.expires_in().unwrap().as_secs_f64().round() as u64
}

#[test]
fn rfc_example() {
    let t = ok(
        r#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example",
                  "expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA",
                  "example_parameter":"example_value"}"#,
    );
    assert_eq!(t.access_token().secret(), "2YotnFZFEjr1zCsicMWpAA");
    assert_eq!(t.token_type(), "example");
    assert_eq!(secs(&t), 3600);
    assert_eq!(
        t.refresh_token().unwrap().secret(),
        "tGzv3JOkF0XG5Qx2TlKWIA"
    );
}

#[test]
fn expires_in_as_string_fraction_missing_zero_or_junk() {
    assert_eq!(
        secs(&ok(r#"{"access_token":"a","expires_in":"1200"}"#)),
        1200
    );
    assert_eq!(secs(&ok(r#"{"access_token":"a","expires_in":" 60 "}"#)), 60);
    assert_eq!(secs(&ok(r#"{"access_token":"a","expires_in":59.6}"#)), 60);
    assert_eq!(ok(r#"{"access_token":"a"}"#).expires_in(), None);
    assert_eq!(
        ok(r#"{"access_token":"a","expires_in":0}"#).expires_in(),
        None
    );
    assert_eq!(
        ok(r#"{"access_token":"a","expires_in":-5}"#).expires_in(),
        None
    );
    assert_eq!(
        ok(r#"{"access_token":"a","expires_in":"soon"}"#).expires_in(),
        None
    );
    assert_eq!(
        ok(r#"{"access_token":"a","expires_in":{}}"#).expires_in(),
        None
    );
    let huge = ok(r#"{"access_token":"a","expires_in":1e300}"#);
    assert_eq!(secs(&huge), MAX_LIFETIME.as_secs());
}

#[test]
fn token_type_any_case_or_missing() {
    assert_eq!(
        ok(r#"{"access_token":"a","token_type":"bearer"}"#).token_type(),
        "bearer"
    );
    assert_eq!(
        ok(r#"{"access_token":"a","token_type":"BEARER"}"#).token_type(),
        "BEARER"
    );
    assert_eq!(ok(r#"{"access_token":"a"}"#).token_type(), "Bearer");
}

#[test]
fn scope_string_or_array() {
    assert_eq!(
        ok(r#"{"access_token":"a","scope":"read write"}"#).scope(),
        Some("read write")
    );
    assert_eq!(
        ok(r#"{"access_token":"a","scope":["read","write"]}"#).scope(),
        Some("read write")
    );
}

#[test]
fn form_encoded_bodies() {
    let t = parse(
        StatusCode::OK,
        Some("application/x-www-form-urlencoded; charset=utf-8"),
        b"access_token=abc%2B1&token_type=bearer&expires_in=30&scope=a+b",
        &Carried::default(),
    )
    .unwrap();
    assert_eq!(t.access_token().secret(), "abc+1");
    assert_eq!(t.scope(), Some("a b"));
    assert_eq!(secs(&t), 30);
    // Sent with a text/plain content type, as some servers do.
    let t = parse(
        StatusCode::OK,
        Some("text/plain"),
        b"access_token=xyz",
        &Carried::default(),
    )
    .unwrap();
    assert_eq!(t.access_token().secret(), "xyz");
}

#[test]
fn error_response_carries_every_field() {
    let err = parse(
        StatusCode::UNAUTHORIZED,
        JSON,
        br#"{"error":"invalid_client","error_description":"bad secret","error_uri":"https://idp/e"}"#,
        &Carried::default(),
    )
    .unwrap_err();
    let e = err.oauth().unwrap();
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(e.code(), "invalid_client");
    assert_eq!(e.description(), Some("bad secret"));
    assert_eq!(e.uri(), Some("https://idp/e"));
    assert!(err.is_terminal());
}

#[test]
fn error_in_a_200_is_an_error() {
    let err = parse(
        StatusCode::OK,
        JSON,
        br#"{"error":"invalid_scope"}"#,
        &Carried::default(),
    )
    .unwrap_err();
    assert_eq!(err.oauth().unwrap().code(), "invalid_scope");
    assert_eq!(err.oauth().unwrap().status(), StatusCode::OK);
}

#[test]
fn missing_or_empty_access_token() {
    for body in [
        r#"{"token_type":"bearer"}"#,
        r#"{"access_token":""}"#,
        r#"{"access_token":7}"#,
    ] {
        let err = parse(StatusCode::OK, JSON, body.as_bytes(), &Carried::default()).unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { excerpt: None, .. }),
            "{body}: {err}"
        );
    }
}

#[test]
fn non_json_error_page_gives_status_and_excerpt() {
    let body = format!("<html><body>Bad Gateway {}</body></html>", "x".repeat(500));
    let err = parse(
        StatusCode::BAD_GATEWAY,
        Some("text/html"),
        body.as_bytes(),
        &Carried::default(),
    )
    .unwrap_err();
    match &err {
        Error::UnexpectedResponse {
            status,
            excerpt: Some(ex),
            ..
        } => {
            assert_eq!(*status, StatusCode::BAD_GATEWAY);
            assert!(ex.starts_with("<html><body>Bad Gateway"));
            assert_eq!(ex.chars().count(), EXCERPT_CHARS + 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("502"));
}

#[test]
fn excerpt_never_shows_secrets() {
    let err = parse(
        StatusCode::BAD_REQUEST,
        Some("text/plain"),
        b"rejected secret hunter2-SECRET (hunter2%2BSECRET) for client x",
        &Carried::of(["hunter2-SECRET", "hunter2+SECRET"]),
    )
    .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");

    let err = parse(
        StatusCode::OK,
        Some("text/plain"),
        b"oops {access_token: tok-SECRET}",
        &Carried::default(),
    )
    .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("tok-SECRET"), "{shown}");
}

#[test]
fn empty_and_non_object_bodies() {
    let err = parse(StatusCode::OK, JSON, b"", &Carried::default()).unwrap_err();
    assert!(err.to_string().contains("empty response body"), "{err}");
    let err = parse(StatusCode::OK, JSON, b"[1,2]", &Carried::default()).unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }));
    let err = parse(
        StatusCode::OK,
        JSON,
        br#"{"access_token":"abc"#,
        &Carried::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }));
    assert!(!format!("{err:?}").contains("abc"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

    /// Arbitrary bodies, statuses and content types never panic, and a token, when one
    /// comes out, is no larger than the body.
    #[test]
    fn arbitrary_responses_never_panic(
        status in 100u16..600,
        json in proptest::bool::ANY,
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..4_096),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let ct = if json { Some("application/json") } else { Some("application/x-www-form-urlencoded") };
        if let Ok(token) = parse(status, ct, &body, &Carried::of(["secret"])) {
            proptest::prop_assert!(token.access_token().secret().len() <= body.len());
        }
    }

    /// JSON-shaped token responses with any field values parse or fail cleanly.
    #[test]
    fn json_token_shapes(
        token in "[A-Za-z0-9._~+/-]{1,64}",
        expires in proptest::option::of(proptest::num::i64::ANY),
        kind in proptest::option::of("[A-Za-z]{0,10}"),
    ) {
        let mut body = serde_json::json!({ "access_token": token });
        if let Some(e) = expires { body["expires_in"] = e.into(); }
        if let Some(k) = &kind { body["token_type"] = k.clone().into(); }
        let parsed = parse(StatusCode::OK, JSON, body.to_string().as_bytes(), &Carried::default()).unwrap();
        proptest::prop_assert_eq!(parsed.access_token().secret(), token.as_str());
        let left = parsed.expires_in();
        match expires {
            Some(e) if e > 0 => proptest::prop_assert!(left.is_some()),
            _ => proptest::prop_assert!(left.is_none()),
        }
    }
}

#[test]
fn error_status_without_error_code() {
    let err = parse(
        StatusCode::INTERNAL_SERVER_ERROR,
        JSON,
        br#"{"message":"boom"}"#,
        &Carried::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { status, .. } if status == 500));
}
