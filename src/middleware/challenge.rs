//! `WWW-Authenticate` challenges (RFC 7235 §4.1, RFC 6750 §3): does a 401 call for a new token?
//!
//! A 401 leads to a refresh unless its `Bearer` challenge names an error other than
//! `invalid_token` (for example `invalid_request`, which a new token cannot fix). A 401 without
//! any challenge refreshes too, as most servers send none. A 403 refreshes only for a scope
//! challenge (`insufficient_scope` naming a `scope`, RFC 6750 §3.1) that the layer's source can
//! widen; a 401 `insufficient_user_authentication` (RFC 9470) is a typed error.
//!
//! The parser is total: any bytes give a (possibly empty) list of challenges, never a panic,
//! and it looks at no more than [`MAX_HEADER_BYTES`] of a header and [`MAX_ITEMS`] challenges
//! and parameters, so hostile headers cannot make it allocate without bound.

use http::{HeaderMap, HeaderName, StatusCode, header::WWW_AUTHENTICATE};

use crate::message::AuthResponse;

/// Longest header value parsed; the rest is ignored.
pub(crate) const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most challenges, and most parameters per challenge, kept.
pub(crate) const MAX_ITEMS: usize = 16;

/// One challenge: a scheme and its parameters (names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) scheme: String,
    pub(crate) params: Vec<(String, String)>,
}

impl Challenge {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `grpc-status`, the gRPC status of a trailers-only response.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A response that says the token was not accepted: a 401 whose challenge (if any) does not
/// name an error a new token cannot fix, or a gRPC `UNAUTHENTICATED` (status 16), which comes
/// as HTTP 200 with `grpc-status: 16` in a trailers-only response.
pub(crate) fn rejects_token(response: &impl AuthResponse, scheme: &str) -> bool {
    match response.status() {
        StatusCode::UNAUTHORIZED => calls_for_new_token(response.headers(), scheme),
        _ => may_reject(response, true),
    }
}

/// The hot path's first look at a response to a request that `may_be_grpc`
/// ([`AuthRequest::may_be_grpc`](crate::message::AuthRequest::may_be_grpc)): `false` means
/// [`rejects_token`] is `false` too, so most responses are decided here without the scheme (a
/// status compare, and for a 200 with headers to a request that may be gRPC, one lookup of
/// `grpc-status`).
#[inline]
pub(crate) fn may_reject(response: &impl AuthResponse, may_be_grpc: bool) -> bool {
    match response.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => true,
        StatusCode::OK => {
            let headers = response.headers();
            may_be_grpc
                && !headers.is_empty()
                && headers
                    .get(&GRPC_STATUS)
                    .is_some_and(|v| v.as_bytes() == b"16")
        }
        _ => false,
    }
}

/// A response that shows the token was accepted: a success (2xx) that is not a gRPC error.
/// Anything else (a 403, a 404, a 429 or 5xx a gateway may send before it looks at the token, a
/// redirect to a login page) says nothing either way.
pub(crate) fn accepts_token(response: &impl AuthResponse) -> bool {
    response.status().is_success()
        && response
            .headers()
            .get(&GRPC_STATUS)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// `true` if a 401 with these headers should make the cache drop the token that was sent.
pub(crate) fn calls_for_new_token(headers: &HeaderMap, scheme: &str) -> bool {
    for value in headers.get_all(WWW_AUTHENTICATE) {
        for challenge in parse(value.as_bytes()) {
            if challenge.scheme.eq_ignore_ascii_case(scheme)
                || challenge.scheme.eq_ignore_ascii_case("bearer")
            {
                return matches!(challenge.param("error"), None | Some("invalid_token"));
            }
        }
    }
    true
}

/// The first challenge of `scheme` (or `Bearer`) in these headers whose error is `error`.
fn challenge_naming(headers: &HeaderMap, scheme: &str, error: &str) -> Option<Challenge> {
    headers.get_all(WWW_AUTHENTICATE).iter().find_map(|value| {
        parse(value.as_bytes()).into_iter().find(|c| {
            (c.scheme.eq_ignore_ascii_case(scheme) || c.scheme.eq_ignore_ascii_case("bearer"))
                && c.param("error") == Some(error)
        })
    })
}

/// The scope a 403 asks for (RFC 6750 §3.1): `insufficient_scope` with a `scope` that is a
/// valid scope value.
pub(crate) fn insufficient_scope(headers: &HeaderMap, scheme: &str) -> Option<String> {
    let challenge = challenge_naming(headers, scheme, "insufficient_scope")?;
    let scope = challenge.param("scope")?;
    crate::scope::is_valid(scope).then(|| scope.to_owned())
}

/// What a 401 `insufficient_user_authentication` (RFC 9470 §3) asks of the user: its
/// `acr_values` and `max_age`, each kept only if it is short visible ASCII or a number.
pub(crate) fn insufficient_user_authentication(
    headers: &HeaderMap,
    scheme: &str,
) -> Option<(Option<String>, Option<u64>)> {
    let challenge = challenge_naming(headers, scheme, "insufficient_user_authentication")?;
    let acr_values = challenge
        .param("acr_values")
        .filter(|v| v.len() <= 256 && v.bytes().all(|b| (0x20..0x7F).contains(&b)))
        .map(str::to_owned);
    let max_age = challenge.param("max_age").and_then(|v| v.parse().ok());
    Some((acr_values, max_age))
}

/// Whether a `WWW-Authenticate` challenge of `scheme` names the error `error`.
#[cfg_attr(not(feature = "jose"), allow(dead_code))]
pub(crate) fn names_error(headers: &HeaderMap, scheme: &str, error: &str) -> bool {
    headers.get_all(WWW_AUTHENTICATE).iter().any(|value| {
        parse(value.as_bytes())
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case(scheme) && c.param("error") == Some(error))
    })
}

/// Parses one `WWW-Authenticate` header value into its challenges.
pub(crate) fn parse(value: &[u8]) -> Vec<Challenge> {
    let mut p = Parser {
        s: value.get(..MAX_HEADER_BYTES).unwrap_or(value),
        i: 0,
    };
    let mut challenges = Vec::new();
    while challenges.len() < MAX_ITEMS {
        p.skip(|c| c == b',' || is_space(c));
        let Some(scheme) = p.token() else {
            break;
        };
        let mut challenge = Challenge {
            scheme: String::from_utf8_lossy(scheme).into_owned(),
            params: Vec::new(),
        };
        p.skip(is_space);
        let mut at_next_scheme = false;
        let mut first = true;
        loop {
            let start = p.i;
            let Some(name) = p.token() else {
                break;
            };
            p.skip(is_space);
            if p.peek() != Some(b'=') {
                // Not a parameter: the next challenge's scheme, or this one's token68.
                if first {
                    // `Scheme token68` (without `=` padding): the token68 is ignored.
                } else {
                    p.i = start;
                    at_next_scheme = true;
                }
                break;
            }
            // `name=` followed by '=' padding is a token68 (`abc==`), not a parameter.
            let after_eq = p.i + 1;
            if p.s.get(after_eq).is_none_or(|&c| c == b'=' || c == b',') && !name.is_empty() {
                p.i = after_eq;
                p.skip(|c| c == b'=');
                break;
            }
            p.i = after_eq;
            p.skip(is_space);
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .unwrap_or_default()
            };
            if challenge.params.len() < MAX_ITEMS {
                challenge
                    .params
                    .push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
            }
            p.skip(is_space);
            if p.peek() == Some(b',') {
                p.i += 1;
                p.skip(|c| c == b',' || is_space(c));
                first = false;
            } else {
                break;
            }
        }
        challenges.push(challenge);
        if !at_next_scheme {
            // Skip anything unparsable up to the next comma, so one bad challenge does not hide
            // the rest.
            p.skip(|c| c != b',');
        }
    }
    challenges
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, pred: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&pred) {
            self.i += 1;
        }
    }

    /// An RFC 7230 token (also accepts the `/` of token68).
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.skip(|c| is_tchar(c) || c == b'/');
        self.s.get(start..self.i).filter(|token| !token.is_empty())
    }

    /// A quoted-string starting at `"`, with backslash escapes; unterminated runs to the end.
    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        out.push(escaped);
                        self.i += 1;
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// An RFC 7230 `tchar`.
pub(crate) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc6750_examples() {
        let c = parse(br#"Bearer realm="example""#);
        assert_eq!(
            c,
            [Challenge {
                scheme: "Bearer".into(),
                params: params(&[("realm", "example")])
            }]
        );

        let c = parse(
            br#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("error"), Some("invalid_token"));
        assert_eq!(
            c[0].param("error_description"),
            Some("The access token expired")
        );
    }

    #[test]
    fn several_challenges_token68_and_escapes() {
        let c = parse(
            br#"Basic realm="a\"b", Newauth abc==, Bearer error=invalid_request , scope="x y""#,
        );
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Newauth", "Bearer"]);
        let c2 = parse(br#"Newauth abc, Bearer error="invalid_token""#);
        assert_eq!(c2.len(), 2);
        assert_eq!(c2[1].param("error"), Some("invalid_token"));
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Newauth", "Bearer"]);
        assert_eq!(c[0].param("realm"), Some("a\"b"));
        assert_eq!(c[2].param("error"), Some("invalid_request"));
        assert_eq!(c[2].param("scope"), Some("x y"));
    }

    #[test]
    fn names_are_case_insensitive() {
        let c = parse(b"bearer ERROR=\"invalid_token\"");
        assert_eq!(c[0].param("error"), Some("invalid_token"));
    }

    #[test]
    fn junk_never_panics() {
        for input in [
            &b""[..],
            b",,,",
            b"=",
            b"Bearer =",
            b"Bearer error=",
            b"Bearer error=\"unterminated",
            b"Bearer error=\"a\\",
            b"\xff\xfe Bearer",
            b"Bearer ,,, error = \"x\" ,",
        ] {
            let _ = parse(input);
        }
    }

    #[test]
    fn output_is_bounded() {
        let many = "Bearer a=b, ".repeat(10_000);
        let c = parse(many.as_bytes());
        assert!(c.len() <= MAX_ITEMS);
        assert!(c.iter().all(|c| c.params.len() <= MAX_ITEMS));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Arbitrary bytes never panic, and what comes out is bounded.
        #[test]
        fn arbitrary_bytes_parse_within_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..10_000)) {
            let challenges = parse(&bytes);
            proptest::prop_assert!(challenges.len() <= MAX_ITEMS);
            let kept: usize = challenges
                .iter()
                .map(|c| c.scheme.len() + c.params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
                .sum();
            // Lossy UTF-8 can at most triple a byte; nothing beyond the parsed prefix is kept.
            proptest::prop_assert!(kept <= 3 * bytes.len().min(MAX_HEADER_BYTES));
        }

        /// Text shaped like challenges round-trips the error code.
        #[test]
        fn bearer_errors_are_found(code in "[a-z_]{1,20}", realm in "[ -~&&[^\"\\\\]]{0,30}") {
            let header = format!(r#"Basic realm="x", Bearer realm="{realm}", error="{code}""#);
            let challenges = parse(header.as_bytes());
            let bearer = challenges.iter().find(|c| c.scheme == "Bearer").unwrap();
            proptest::prop_assert_eq!(bearer.param("error"), Some(code.as_str()));
        }
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn which_401s_call_for_a_new_token() {
        assert!(calls_for_new_token(&headers(&[]), "Bearer"));
        assert!(calls_for_new_token(
            &headers(&[r#"Bearer realm="api""#]),
            "Bearer"
        ));
        assert!(calls_for_new_token(
            &headers(&[r#"Bearer error="invalid_token""#]),
            "Bearer"
        ));
        assert!(!calls_for_new_token(
            &headers(&[r#"Bearer error="invalid_request""#]),
            "Bearer"
        ));
        assert!(!calls_for_new_token(
            &headers(&[r#"Basic realm="x""#, r#"Bearer error="insufficient_scope""#]),
            "Bearer"
        ));
        assert!(calls_for_new_token(
            &headers(&[r#"Basic realm="x""#]),
            "Bearer"
        ));
    }
}
