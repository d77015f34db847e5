//! Key functions for the common cases: a token per host, per value of a header, per incoming
//! bearer credential; and [`TextKey`], the key of the first two.

use std::{borrow::Borrow, fmt, ops::Deref};

use compact_str::CompactString;
use http::HeaderName;

use super::RequestInfo;
use crate::SubjectToken;

/// A key read from a request as text: a host ([`by_host`]) or a header's value
/// ([`by_header`]). Text of up to 24 bytes is held inline, so that making a request's key
/// allocates nothing (longer text is allocated). Compares, orders and hashes as its `str`.
///
/// ```
/// use tower_bearer::keyed::TextKey;
///
/// let key = TextKey::new("billing.example.com");
/// assert_eq!(key, "billing.example.com");
/// assert!(key.ends_with(".example.com")); // a `str` method, through `Deref`
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TextKey(CompactString);

impl TextKey {
    /// The key of `text`.
    pub fn new(text: &str) -> TextKey {
        TextKey(CompactString::new(text))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for TextKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TextKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// So that a map of `TextKey`s can be searched with a `&str`.
impl Borrow<str> for TextKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TextKey {
    fn from(text: &str) -> TextKey {
        TextKey::new(text)
    }
}

impl From<String> for TextKey {
    fn from(text: String) -> TextKey {
        TextKey(CompactString::from(text))
    }
}

impl PartialEq<str> for TextKey {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TextKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The text, as a `str` shows it: a host or a header value chosen as a key. A value that is a
/// secret belongs in a key type of its own that hides it (as [`SubjectToken`] does).
impl fmt::Debug for TextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// A token per host the request goes to (an audience per API): the key is the host, as written
/// in the URL. Requests addressed by path alone (a tonic channel's) have none.
pub fn by_host() -> impl Fn(&RequestInfo<'_>) -> Option<TextKey> + Send + Sync + 'static {
    |request| request.host().map(TextKey::new)
}

/// A token per value of the header `name` (a tenant id, say). A request without the header, or
/// with it twice, or with a value that is not visible ASCII, has no key. The value is the key as
/// it is: for a header that carries a secret, write a key function that keeps it in a type that
/// hides it.
pub fn by_header(
    name: HeaderName,
) -> impl Fn(&RequestInfo<'_>) -> Option<TextKey> + Send + Sync + 'static {
    move |request| request.header(&name).map(TextKey::new)
}

/// A token per incoming bearer credential: the key is the token of the request's
/// `Authorization: Bearer <token>` (the scheme in any case), for a gateway that forwards its
/// caller's request and exchanges the caller's token ([`TokenExchange`](crate::TokenExchange))
/// for one of its own. The layer then replaces that header with the key's token, so the
/// caller's token does not go downstream (unless the layer sends its token in another header).
pub fn by_bearer_credential()
-> impl Fn(&RequestInfo<'_>) -> Option<SubjectToken> + Send + Sync + 'static {
    |request| {
        let value = request.header(http::header::AUTHORIZATION)?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
            .then(|| SubjectToken::new(token))
    }
}
