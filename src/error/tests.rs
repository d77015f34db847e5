use super::*;

#[test]
fn oauth_error_display_has_every_field() {
    let e = OAuthError::new(
        StatusCode::BAD_REQUEST,
        "invalid_client".into(),
        Some("unknown client".into()),
        Some("https://idp/doc".into()),
    );
    assert_eq!(
        e.to_string(),
        "token endpoint error `invalid_client` (HTTP 400 Bad Request): unknown client (see https://idp/doc)"
    );
    assert!(e.is_terminal());
    assert!(Error::from(e).is_terminal());
}

#[test]
fn transient_errors_are_not_terminal() {
    let e = OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable".into(),
        None,
        None,
    );
    assert!(!e.is_terminal());
    assert!(!Error::Timeout(Duration::from_secs(1)).is_terminal());
    assert!(!Error::Aborted.is_terminal());
}

#[test]
fn oauth_codes_and_statuses_are_terminal_or_transient_as_documented() {
    let oauth = |code: &str, status: u16| {
        Error::from(OAuthError::new(
            StatusCode::from_u16(status).unwrap(),
            code.into(),
            None,
            None,
        ))
    };
    let without_code = |status: u16| Error::UnexpectedResponse {
        status: StatusCode::from_u16(status).unwrap(),
        reason: "error response without an OAuth `error` code".into(),
        excerpt: None,
        retry_after: None,
    };
    // (error, what it is, is_terminal, is_transient)
    let cases = [
        (
            oauth("invalid_request", 400),
            "invalid_request",
            true,
            false,
        ),
        (oauth("invalid_client", 401), "invalid_client", true, false),
        (oauth("invalid_grant", 400), "invalid_grant", true, false),
        (
            oauth("unauthorized_client", 400),
            "unauthorized_client",
            true,
            false,
        ),
        (
            oauth("unsupported_grant_type", 400),
            "unsupported_grant_type",
            true,
            false,
        ),
        (oauth("invalid_scope", 400), "invalid_scope", true, false),
        (
            oauth("server_error", 400),
            "server_error with 400",
            false,
            true,
        ),
        (
            oauth("server_error", 500),
            "server_error with 500",
            false,
            true,
        ),
        (
            oauth("temporarily_unavailable", 400),
            "temporarily_unavailable with 400",
            false,
            true,
        ),
        (
            oauth("temporarily_unavailable", 503),
            "temporarily_unavailable with 503",
            false,
            true,
        ),
        (without_code(429), "429 without a code", false, true),
        (without_code(503), "503 without a code", false, true),
    ];
    for (error, what, terminal, transient) in cases {
        assert_eq!(
            (error.is_terminal(), error.is_transient()),
            (terminal, transient),
            "{what}: (is_terminal, is_transient)"
        );
    }
}

#[test]
fn unexpected_response_shows_excerpt_quoted() {
    let e = Error::UnexpectedResponse {
        status: StatusCode::BAD_GATEWAY,
        reason: "body is not JSON".into(),
        excerpt: Some("<html>".into()),
        retry_after: None,
    };
    assert_eq!(
        e.to_string(),
        "token endpoint answered HTTP 502 Bad Gateway: body is not JSON; body starts: \"<html>\""
    );
}
