//! Tokens and the secret types that carry them.
//!
//! Every secret ([`AccessToken`], [`RefreshToken`], [`ClientSecret`]) is held in a
//! [`secrecy::SecretString`]: its `Debug` prints `[redacted]` and its memory is zeroized on drop.
//! Reading the value takes an explicit call to `secret()`. Copies of a secret share that one
//! buffer, zeroized when the last copy goes: a token handed to many callers is not copied
//! around the heap, and a copy allocates nothing.
//!
//! The `Authorization` header for a token is built once, when the token enters the cache, from a
//! buffer that is zeroized when the last request using it is gone, and it is marked sensitive so
//! HTTP/2 HPACK never indexes it and `Debug` of the header map hides it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_bearer::Token;
//!
//! let token = Token::new("eyJhbGciOi...")
//!     .with_expires_in(Duration::from_secs(3600))
//!     .with_scope("read write");
//! assert_eq!(token.access_token().secret(), "eyJhbGciOi...");
//! assert!(!format!("{token:?}").contains("eyJ"));
//! ```

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Arc<SecretString>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                $name(Arc::new(SecretString::from(value.into())))
            }

            /// The secret value. Keep it out of logs.
            pub fn secret(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name::new(value)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.secret() == other.secret()
            }
        }

        impl Eq for $name {}

        impl std::hash::Hash for $name {
            /// Hashes the secret: equal secrets hash alike, as `Eq` needs (a keyed layer's map
            /// of subject tokens, say). Nothing of it is shown.
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.secret().hash(state);
            }
        }
    };
}

secret_type!(
    /// An OAuth 2.0 access token.
    AccessToken
);
secret_type!(
    /// An OAuth 2.0 refresh token.
    RefreshToken
);
secret_type!(
    /// An OAuth 2.0 client secret.
    ClientSecret
);
secret_type!(
    /// A PKCE code verifier (RFC 7636); see [`Pkce`](crate::Pkce).
    PkceVerifier
);
secret_type!(
    /// A token a token exchange (RFC 8693) acts on: its subject token, or its actor token.
    SubjectToken
);

/// A token type as the endpoint wrote it, the usual ones borrowed: with the secret, the scope
/// and the issued type shared, a copy of a token (one per caller of
/// [`AuthLayer::token`](crate::AuthLayer::token) woken by a fetch) allocates nothing.
fn token_type_word(token_type: String) -> Cow<'static, str> {
    const USUAL: [&str; 4] = ["Bearer", "bearer", "DPoP", "N_A"];
    match USUAL.iter().find(|word| **word == token_type) {
        Some(word) => Cow::Borrowed(word),
        None => Cow::Owned(token_type),
    }
}

/// An access token with what the token endpoint said about it.
#[derive(Clone)]
pub struct Token {
    access_token: AccessToken,
    /// As the endpoint wrote it; the usual words without an allocation ([`token_type_word`]).
    token_type: Cow<'static, str>,
    expires_at: Option<Instant>,
    refresh_token: Option<RefreshToken>,
    /// Shared by copies, as the secret is: a copy of a token allocates nothing.
    scope: Option<Arc<str>>,
    /// RFC 8693's `issued_token_type`, from a token exchange.
    issued_token_type: Option<Arc<str>>,
}

impl Token {
    /// A bearer token with no known expiry.
    ///
    /// The cache treats a token without expiry as valid for the layer's
    /// [default lifetime](crate::AuthLayerBuilder::default_lifetime).
    pub fn new(access_token: impl Into<String>) -> Self {
        Token {
            access_token: AccessToken::new(access_token),
            token_type: Cow::Borrowed("Bearer"),
            expires_at: None,
            refresh_token: None,
            scope: None,
            issued_token_type: None,
        }
    }

    /// Sets the expiry to `lifetime` from now (the `expires_in` of a token response).
    pub fn with_expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_at = Some(crate::deadline::later(Instant::now(), lifetime));
        self
    }

    /// Sets the instant the token expires.
    pub fn with_expires_at(mut self, at: Instant) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the token type the endpoint reported (`Bearer` unless set).
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type_word(token_type.into());
        self
    }

    /// Sets the refresh token issued with this access token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<RefreshToken>) -> Self {
        self.refresh_token = Some(refresh_token.into());
        self
    }

    /// Drops the refresh token: the cache keeps none.
    pub(crate) fn forget_refresh_token(&mut self) {
        self.refresh_token = None;
    }

    /// Records the type of token a token exchange issued (RFC 8693 `issued_token_type`, such
    /// as `urn:ietf:params:oauth:token-type:access_token`).
    pub fn with_issued_token_type(mut self, issued_token_type: impl Into<String>) -> Self {
        self.issued_token_type = Some(Arc::from(issued_token_type.into()));
        self
    }

    /// The type of token a token exchange issued, if the endpoint said (RFC 8693
    /// `issued_token_type`).
    pub fn issued_token_type(&self) -> Option<&str> {
        self.issued_token_type.as_deref()
    }

    /// Sets the scope the token was granted.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(Arc::from(scope.into()));
        self
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The token type as reported by the endpoint, such as `Bearer`.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the token expires, if the endpoint said.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// How long until the token expires, if the endpoint said (zero once expired).
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// The refresh token, if one was issued.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The granted scope, if the endpoint reported one.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Builds the header value `"{scheme} {access_token}"` (the token alone for an empty
    /// scheme), marked sensitive, from a buffer that is zeroized when the last clone of the
    /// header is dropped.
    pub(crate) fn header_value(&self, scheme: &str) -> Result<HeaderValue, crate::Error> {
        let secret = self.access_token.secret();
        let mut buf = Zeroizing::new(Vec::with_capacity(scheme.len() + 1 + secret.len()));
        if !scheme.is_empty() {
            buf.extend_from_slice(scheme.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(secret.as_bytes());
        sensitive_header(buf).ok_or(crate::Error::InvalidToken)
    }
}

/// A copy of a token header in a buffer of its own, marked sensitive and zeroized when the
/// copy's last clone is dropped.
pub(crate) fn copy_header(value: &HeaderValue) -> HeaderValue {
    sensitive_header(Zeroizing::new(value.as_bytes().to_vec())).unwrap_or_else(|| value.clone())
}

/// A sensitive header value over `buf`, wiped when the last `Bytes` handle goes; `None` if the
/// bytes are not a valid header value.
fn sensitive_header(buf: Zeroizing<Vec<u8>>) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(ZeroizeOnDrop(buf))).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Owner of a header's bytes that wipes them when the last `Bytes` handle goes. Aligned to a
/// cache line, so that the reference count `Bytes` keeps beside it never shares a line with
/// another header's: services on different cores count references on copies of their own
/// (see [`AuthService`](crate::AuthService)) without contending.
#[repr(align(64))]
struct ZeroizeOnDrop(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizeOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in())
            .field("refresh_token", &self.refresh_token)
            .field("scope", &self.scope)
            .field("issued_token_type", &self.issued_token_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if `T` wipes its memory when dropped.
    fn wipes_on_drop<T: zeroize::ZeroizeOnDrop + ?Sized>(_: &T) {}

    #[test]
    fn secrets_and_header_buffers_are_held_in_types_that_wipe_on_drop() {
        // Each secret type holds a `SecretString`, which zeroizes on drop: changing the field to
        // a plain `String` stops this test from compiling.
        wipes_on_drop(&*AccessToken::new("a").0);
        wipes_on_drop(&*RefreshToken::new("r").0);
        wipes_on_drop(&*ClientSecret::new("c").0);
        wipes_on_drop(&*PkceVerifier::new("v").0);
        // A header's bytes are the `Zeroizing` buffer it was built from, not a copy of it: the
        // buffer is wiped when the last handle on the header goes.
        let buf = Zeroizing::new(b"Bearer t".to_vec());
        let at = buf.as_ptr();
        assert_eq!(sensitive_header(buf).unwrap().as_bytes().as_ptr(), at);
        let header = Token::new("t").header_value("Bearer").unwrap();
        assert!(header.is_sensitive());
        assert!(copy_header(&header).is_sensitive());
    }

    #[test]
    fn a_copy_of_a_token_shares_its_secret_and_its_usual_type() {
        let token = Token::new("access")
            .with_token_type(String::from("DPoP"))
            .with_scope("read write");
        let copy = token.clone();
        // One buffer, wiped when the last copy goes: the secret is not copied around the heap.
        assert!(std::ptr::eq(
            token.access_token().secret(),
            copy.access_token().secret()
        ));
        assert!(std::ptr::eq(token.scope().unwrap(), copy.scope().unwrap()));
        assert!(matches!(copy.token_type, Cow::Borrowed("DPoP")));
        let unusual = Token::new("a").with_token_type("MAC");
        assert!(matches!(unusual.token_type, Cow::Owned(ref t) if t == "MAC"));
        assert_eq!(unusual.token_type(), "MAC");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = Token::new("access-SECRET")
            .with_refresh_token("refresh-SECRET")
            .with_expires_in(Duration::from_secs(60));
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("AccessToken([redacted])"), "{dbg}");
        assert!(dbg.contains("RefreshToken([redacted])"), "{dbg}");
        assert_eq!(
            format!("{:?}", ClientSecret::new("x-SECRET")),
            "ClientSecret([redacted])"
        );
    }

    #[test]
    fn header_is_sensitive_and_exact() {
        let t = Token::new("abc.def");
        let h = t.header_value("Bearer").unwrap();
        assert_eq!(h.as_bytes(), b"Bearer abc.def");
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("abc"));
        assert_eq!(
            t.header_value("bearer").unwrap().as_bytes(),
            b"bearer abc.def"
        );
    }

    #[test]
    fn header_rejects_bad_characters_without_echoing_them() {
        let err = Token::new("abc\ndef-SECRET")
            .header_value("Bearer")
            .unwrap_err();
        assert!(matches!(err, crate::Error::InvalidToken));
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[test]
    fn expiry_counts_down() {
        let t = Token::new("a").with_expires_in(Duration::from_secs(10));
        let left = t.expires_in().unwrap();
        assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9));
        assert_eq!(Token::new("a").expires_in(), None);
    }
}
