//! How the client proves who it is to the token endpoint (RFC 6749 §2.3).

use std::borrow::Cow;

/// How client credentials are sent to the token endpoint.
///
/// | variant | sends | OIDC name |
/// |---|---|---|
/// | `Basic` (default) | `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` | `client_secret_basic` |
/// | `Post` | `client_id` and `client_secret` in the form body | `client_secret_post` |
/// | `Query` | `client_id`, `client_secret` and the grant's plain parameters (`grant_type`, `scope`, ...) in the URL query; the grant's secrets (refresh token, code, code verifier) in the form body | (none) |
/// | `None` | only `client_id` in the form body: a public client | `none` |
/// | `PrivateKeyJwt` | `client_id` and a fresh client assertion signed with the client's key (RFC 7523), set with the builders' `.private_key_jwt(key)` (feature `jose`) | `private_key_jwt` |
/// | `ClientAssertion` | `client_id` and a client assertion from the platform (RFC 7523 §2.2: a Kubernetes service-account token, a GitHub Actions OIDC token, ...), read fresh for each request from the source given to the builders' `.client_assertion(source)` | `private_key_jwt` (as servers that federate workload identity list it) |
///
/// `Query` exists for endpoints documented that way (some list the client's credentials as query
/// parameters of the form POST). It puts the secret in the URL, where proxies and access logs may record it, and
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
    /// The client credentials and plain parameters in the URL query string; a refresh token,
    /// code or code verifier in the body.
    Query,
    /// A public client: `client_id` in the body and no secret (use PKCE with it).
    None,
    /// A client assertion (`client_assertion_type` `jwt-bearer`, RFC 7523 §2.2) signed with the
    /// key given to the builder's `.private_key_jwt(key)`, with `client_id`; no secret.
    PrivateKeyJwt,
    /// A client assertion (`client_assertion_type` `jwt-bearer`, RFC 7523 §2.2) the platform
    /// signed, from the [`AssertionSource`](crate::assertion::AssertionSource) given to the
    /// builder's `.client_assertion(source)`, with `client_id`; no secret.
    ClientAssertion,
}

impl std::str::FromStr for ClientAuth {
    type Err = crate::Error;

    /// `basic`, `post`, `query`, `none`, or the RFC 8414 names `client_secret_basic`,
    /// `client_secret_post`, `private_key_jwt` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "basic" | "client_secret_basic" => Ok(ClientAuth::Basic),
            "post" | "client_secret_post" => Ok(ClientAuth::Post),
            "query" => Ok(ClientAuth::Query),
            "none" => Ok(ClientAuth::None),
            "private_key_jwt" => Ok(ClientAuth::PrivateKeyJwt),
            _ => Err(crate::Error::config(format!(
                "unknown client authentication {s:?}: expected basic, post, query, none or \
                 private_key_jwt"
            ))),
        }
    }
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
    fn parses_short_and_rfc8414_names() {
        assert_eq!("Basic".parse::<ClientAuth>().unwrap(), ClientAuth::Basic);
        assert_eq!(
            "client_secret_post".parse::<ClientAuth>().unwrap(),
            ClientAuth::Post
        );
        assert_eq!("query".parse::<ClientAuth>().unwrap(), ClientAuth::Query);
        assert_eq!("none".parse::<ClientAuth>().unwrap(), ClientAuth::None);
        assert_eq!(
            "private_key_jwt".parse::<ClientAuth>().unwrap(),
            ClientAuth::PrivateKeyJwt
        );
        assert!("client_secret_jwt".parse::<ClientAuth>().is_err());
    }

    #[test]
    fn plain_credentials_are_unchanged() {
        let (user, pass) = basic_credentials("client-1", "abc_DEF.123");
        assert!(matches!(user, Cow::Borrowed("client-1")));
        assert_eq!(pass, "abc_DEF.123");
    }
}
