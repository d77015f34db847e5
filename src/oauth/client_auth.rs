//! How the client proves who it is to the token endpoint (RFC 6749 §2.3).

use std::borrow::Cow;

/// How client credentials are sent to the token endpoint.
///
/// | variant | sends | OIDC name |
/// |---|---|---|
/// | `Basic` (default) | `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` | `client_secret_basic` |
/// | `Post` | `client_id` and `client_secret` in the form body | `client_secret_post` |
/// | `Query` | every parameter in the URL query of an empty form POST | (none) |
/// | `None` | only `client_id` in the form body: a public client | `none` |
///
/// `Query` exists for endpoints documented that way (Casebook lists its parameters as query
/// parameters). It puts the secret in the URL, where proxies and access logs may record it, and
/// so may reqwest's own `log` output at debug level (this crate strips URLs from its errors and
/// never logs them): prefer `Post` or `Basic` whenever the endpoint accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic authentication with form-urlencoded id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
    /// All parameters, credentials included, in the URL query string.
    Query,
    /// A public client: `client_id` in the body and no secret (use PKCE with it).
    None,
}

/// The user and password for HTTP Basic: each form-urlencoded first, as RFC 6749 §2.3.1 requires,
/// so a secret holding `:`, `+`, `%`, `&` or `=` survives the trip.
pub(crate) fn basic_credentials<'a>(id: &'a str, secret: &'a str) -> (Cow<'a, str>, Cow<'a, str>) {
    (encode(id), encode(secret))
}

fn encode(s: &str) -> Cow<'_, str> {
    let encoded: Cow<'_, str> = form_urlencoded::byte_serialize(s.as_bytes()).collect();
    if encoded == s {
        Cow::Borrowed(s)
    } else {
        encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_form_encoded() {
        let (user, pass) = basic_credentials("my client", "s3cr3t:with/special+chars%&=");
        assert_eq!(user, "my+client");
        assert_eq!(pass, "s3cr3t%3Awith%2Fspecial%2Bchars%25%26%3D");
    }

    #[test]
    fn plain_credentials_are_unchanged() {
        let (user, pass) = basic_credentials("client-1", "abc_DEF.123");
        assert!(matches!(user, Cow::Borrowed("client-1")));
        assert_eq!(pass, "abc_DEF.123");
    }
}
