//! Parsing token-endpoint responses (RFC 6749 §5.1, §5.2), leniently, as real servers need.
//!
//! Accepted beyond the letter of the RFC, as golang.org/x/oauth2 does: `expires_in` as a number or
//! a string, a missing `expires_in`, `token_type` in any case or missing, unknown fields,
//! form-encoded bodies, and `scope` as an array. A body holding `error` is an error whatever its
//! HTTP status. Nothing from a body that may hold a token is ever copied into an error, and the
//! text that is (`error`, `error_description`, `error_uri`, the start of a body that is not
//! JSON) is first cut free of every secret the request carried (see [`Carried`]).

use std::{borrow::Cow, time::Duration};

use http::StatusCode;
use serde_json::{Map, Value};

use super::scrub::Carried;
use crate::{Error, OAuthError, Token};

/// Longest `expires_in` believed; larger values are clamped (and an `Instant` cannot overflow).
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Characters of a non-token body shown in an error.
const EXCERPT_CHARS: usize = 200;

/// Characters of an `error` code kept: real ones are short.
const LONGEST_CODE: usize = 64;

/// The fields of a response, from JSON or from a form-encoded body.
enum Fields {
    Json(Map<String, Value>),
    Form(Vec<(String, String)>),
}

impl Fields {
    /// A string field; other JSON types are `None`.
    fn string(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Fields::Json(map) => match map.get(name)? {
                Value::String(s) => Some(Cow::Borrowed(s)),
                _ => None,
            },
            Fields::Form(_) => self.number(name),
        }
    }

    /// A number field, as a JSON number or a string.
    fn number(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Fields::Json(map) => match map.get(name)? {
                Value::String(s) => Some(Cow::Borrowed(s)),
                Value::Number(n) => Some(Cow::Owned(n.to_string())),
                _ => None,
            },
            Fields::Form(pairs) => pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
        }
    }

    fn scope(&self) -> Option<String> {
        if let Fields::Json(map) = self {
            if let Some(Value::Array(items)) = map.get("scope") {
                let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                return Some(parts.join(" "));
            }
        }
        self.string("scope").map(Cow::into_owned)
    }
}

/// Turns a token-endpoint response into a [`Token`] or a typed [`Error`].
///
/// `carried` are the secrets the request carried (client secret, refresh token, ...): they are
/// cut out of any server text placed in an error.
pub(crate) fn parse(
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
    carried: &Carried,
) -> Result<Token, Error> {
    let fields = match fields(content_type, body) {
        Some(fields) => fields,
        None => {
            let reason = if body.is_empty() {
                "empty response body"
            } else if status.is_success() {
                "response is neither a JSON object nor a form-encoded token response"
            } else {
                "error response is not an OAuth error (not JSON)"
            };
            return Err(Error::UnexpectedResponse {
                status,
                reason: reason.into(),
                excerpt: excerpt(body, carried),
                retry_after: None,
            });
        }
    };

    if let Some(code) = fields.string("error").filter(|c| !c.is_empty()) {
        let mut code = carried.scrub(&code);
        if let Some((cut, _)) = code.char_indices().nth(LONGEST_CODE) {
            code.truncate(cut);
        }
        return Err(OAuthError::new(
            status,
            code,
            fields
                .string("error_description")
                .map(|text| carried.scrub(&text)),
            fields.string("error_uri").map(|text| carried.scrub(&text)),
        )
        .into());
    }
    if !status.is_success() {
        return Err(Error::UnexpectedResponse {
            status,
            reason: "error response without an OAuth `error` code".into(),
            excerpt: None,
            retry_after: None,
        });
    }

    let access_token = match fields.string("access_token") {
        Some(t) if !t.is_empty() => t,
        Some(_) => return Err(unexpected(status, "`access_token` is empty")),
        None => return Err(unexpected(status, "response has no `access_token` string")),
    };
    let mut token = Token::new(access_token.as_ref());
    if let Some(token_type) = fields.string("token_type").filter(|t| !t.is_empty()) {
        token = token.with_token_type(token_type.into_owned());
    }
    if let Some(lifetime) = fields.number("expires_in").and_then(|s| lifetime(&s)) {
        token = token.with_expires_in(lifetime);
    }
    if let Some(refresh) = fields.string("refresh_token").filter(|t| !t.is_empty()) {
        token = token.with_refresh_token(refresh.as_ref());
    }
    if let Some(scope) = fields.scope() {
        token = token.with_scope(scope);
    }
    Ok(token)
}

fn unexpected(status: StatusCode, reason: &'static str) -> Error {
    Error::UnexpectedResponse {
        status,
        reason: reason.into(),
        excerpt: None,
        retry_after: None,
    }
}

fn fields(content_type: Option<&str>, body: &[u8]) -> Option<Fields> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        return Some(Fields::Json(map));
    }
    let is_form = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| {
            ct.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let looks_like_form = !body.is_empty()
        && !body.contains(&b'{')
        && !body.contains(&b'<')
        && !body.contains(&b' ')
        && body.contains(&b'=');
    if is_form || looks_like_form {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        if pairs
            .iter()
            .any(|(k, _)| k == "access_token" || k == "error")
        {
            return Some(Fields::Form(pairs));
        }
    }
    None
}

/// `expires_in` as seconds: integer, fraction or string; zero, negative or unparsable mean
/// "not said".
fn lifetime(raw: &str) -> Option<Duration> {
    let secs: f64 = raw.trim().parse().ok()?;
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_LIFETIME, |d| d.min(MAX_LIFETIME)))
}

/// The start of a body for an error message: at most [`EXCERPT_CHARS`] characters, with every
/// carried secret cut out, and nothing at all if the body mentions a token field.
fn excerpt(body: &[u8], carried: &Carried) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let lower = text.to_ascii_lowercase();
    // A body that echoes a token, a secret parameter or an Authorization header is not shown.
    if [
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "basic ",
        "bearer ",
    ]
    .iter()
    .any(|field| lower.contains(field))
    {
        return Some("[withheld: the body may echo a credential]".to_owned());
    }
    let text = carried.scrub(&text);
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
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
            let err =
                parse(StatusCode::OK, JSON, body.as_bytes(), &Carried::default()).unwrap_err();
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
}
