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

use crate::scrub::Carried;
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
    if let Some(issued) = fields.string("issued_token_type").filter(|t| !t.is_empty()) {
        token = token.with_issued_token_type(issued.into_owned());
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
mod tests;
