//! The copy of a request's URI kept for a resend.
//!
//! A `Uri` parsed from text keeps its authority and its path in shared buffers, so a clone
//! takes two reference counts and its drop releases them: four atomic operations and four
//! indirect calls on every request that may be resent, paid for the rare request that is.
//! A short URI is kept as its text instead, a copy of a few bytes in place, and parsed again
//! only when a resend happens.

use std::fmt;

use bytes::Bytes;
use http::Uri;

/// The longest text (authority and path with query, without the scheme) kept as text.
const TEXT_CAPACITY: usize = 80;

/// A copy of a request's URI, as [`UriCopy::new`] takes it.
pub(crate) enum UriCopy {
    /// An `http` or `https` URI with an authority, or a path alone, short enough: its text.
    Text {
        /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None` for a path alone.
        https: Option<bool>,
        /// How many bytes of `text` are the URI's.
        len: u8,
        /// The authority then the path and query, as the request's URI has them.
        text: [u8; TEXT_CAPACITY],
    },
    /// Any other URI (longer, another scheme, an authority alone), cloned.
    Shared(Uri),
}

impl UriCopy {
    /// A copy of `uri`.
    #[inline(always)]
    pub(crate) fn new(uri: &Uri) -> Self {
        // (`http` parses either scheme in any case as the same lowercase one.)
        let https = match uri.scheme_str() {
            Some("https") => Some(true),
            Some("http") => Some(false),
            Some(_) => return UriCopy::Shared(uri.clone()),
            None => None,
        };
        let authority = uri.authority().map_or("", |a| a.as_str()).as_bytes();
        let path = uri.path_and_query().map_or("", |p| p.as_str()).as_bytes();
        let len = authority.len() + path.len();
        // Only the forms that parse back to the same URI: an absolute URI with an authority and
        // a path that starts with `/` or `?`, or a path alone that starts with `/` (or is `*`).
        // A URI built from parts can be neither (`https` with the path `*`, a path `x`).
        let rooted = path.first() == Some(&b'/');
        let parses_back = match https {
            Some(_) => !authority.is_empty() && (rooted || path.first() == Some(&b'?')),
            // (`path_and_query` reads an empty path as `/`; `path` does not.)
            None => authority.is_empty() && !uri.path().is_empty() && (rooted || path == b"*"),
        };
        if !parses_back || len > TEXT_CAPACITY {
            return UriCopy::Shared(uri.clone());
        }
        let mut text = [0; TEXT_CAPACITY];
        let Some((head, tail)) = text.split_at_mut_checked(authority.len()) else {
            return UriCopy::Shared(uri.clone());
        };
        let Some(tail) = tail.get_mut(..path.len()) else {
            return UriCopy::Shared(uri.clone());
        };
        head.copy_from_slice(authority);
        tail.copy_from_slice(path);
        UriCopy::Text {
            https,
            len: len as u8,
            text,
        }
    }

    /// The URI again; `None` only if its text no longer parses, which a URI's own text
    /// always does.
    pub(crate) fn into_uri(self) -> Option<Uri> {
        match self {
            UriCopy::Text { https, len, text } => {
                let text = text.get(..usize::from(len))?;
                let scheme: &[u8] = match https {
                    Some(true) => b"https://",
                    Some(false) => b"http://",
                    None => b"",
                };
                Uri::from_maybe_shared(Bytes::from([scheme, text].concat())).ok()
            }
            UriCopy::Shared(uri) => Some(uri),
        }
    }
}

impl fmt::Debug for UriCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriCopy::Text { https, .. } => f
                .debug_struct("Text")
                .field("https", https)
                .finish_non_exhaustive(),
            // Neither user information nor path: either may carry secrets.
            UriCopy::Shared(uri) => f
                .debug_struct("Shared")
                .field("scheme", &uri.scheme_str())
                .field("host", &uri.host())
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(text: &str) -> (Uri, Uri, bool) {
        let uri: Uri = text.parse().unwrap();
        let copy = UriCopy::new(&uri);
        let kept_as_text = matches!(copy, UriCopy::Text { .. });
        (uri, copy.into_uri().expect("parses back"), kept_as_text)
    }

    #[test]
    fn every_form_of_uri_comes_back_the_same() {
        for (text, as_text) in [
            ("http://127.0.0.1:8080/v1/items?page=2", true),
            ("https://api.example.com", true),
            ("https://api.example.com?x=1", true),
            ("https://user:pass@api.example.com/a", true),
            ("HTTPS://API.example.com/A%20b?Q=%41", true),
            ("http://[::1]:80/", true),
            ("/v1/items?page=2", true),
            ("/", true),
            ("*", true),
            ("api.example.com:443", false),
            ("grpc://svc/pkg.Service/Method", false),
            ("ftp://example.com/file", false),
            (
                "https://api.example.com/a-path-long-enough-to-pass-the-eighty-bytes-the-copy-keeps-in-place?and=more",
                false,
            ),
        ] {
            let (uri, back, kept_as_text) = round_trip(text);
            assert_eq!(kept_as_text, as_text, "{text}");
            assert_eq!(back, uri, "{text}");
            assert_eq!(back.scheme(), uri.scheme(), "{text}");
            assert_eq!(
                back.authority().map(|a| a.as_str()),
                uri.authority().map(|a| a.as_str()),
                "{text}"
            );
            assert_eq!(
                back.path_and_query().map(|p| p.as_str()),
                uri.path_and_query().map(|p| p.as_str()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_uri_built_from_parts_comes_back_the_same() {
        let uri = Uri::builder()
            .scheme("https")
            .authority("example.com")
            .path_and_query("/a?b")
            .build()
            .unwrap();
        assert_eq!(UriCopy::new(&uri).into_uri().unwrap(), uri);
        let empty = Uri::from_parts(http::uri::Parts::default()).unwrap();
        let copy = UriCopy::new(&empty);
        assert!(matches!(copy, UriCopy::Shared(_)), "an empty URI is cloned");
        assert_eq!(copy.into_uri().unwrap(), empty);
        // Parts whose text would parse as another URI are cloned too.
        let parts = |scheme: Option<&str>, authority: Option<&str>, path: &str| {
            let mut parts = http::uri::Parts::default();
            parts.scheme = scheme.map(|s| s.parse().unwrap());
            parts.authority = authority.map(|a| a.parse().unwrap());
            parts.path_and_query = Some(path.parse().unwrap());
            Uri::from_parts(parts).unwrap()
        };
        for uri in [
            parts(Some("https"), Some("example.com"), "*"),
            parts(None, None, "?q"),
        ] {
            let copy = UriCopy::new(&uri);
            assert!(matches!(copy, UriCopy::Shared(_)), "{uri:?} is cloned");
            assert_eq!(copy.into_uri().unwrap(), uri);
        }
    }

    #[test]
    fn debug_shows_no_part_of_the_uri() {
        let uri: Uri = "https://user:secret@example.com/private?key=k"
            .parse()
            .unwrap();
        let shown = format!("{:?}", UriCopy::new(&uri));
        assert!(
            !shown.contains("secret") && !shown.contains("private"),
            "{shown}"
        );
        let long = format!(
            "ftp://user:secret@example.com/private?key={}",
            "k".repeat(100)
        );
        let shown = format!("{:?}", UriCopy::new(&long.parse().unwrap()));
        assert!(shown.contains("example.com"), "{shown}");
        assert!(
            !shown.contains("secret") && !shown.contains("private"),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn any_uri_that_parses_comes_back_the_same(text in "(https?://)?[a-zA-Z0-9.:@\\[\\]-]{0,30}(/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]{0,40})?(\\?[a-zA-Z0-9=&%/?-]{0,20})?") {
            if let Ok(uri) = text.parse::<Uri>() {
                let back = UriCopy::new(&uri).into_uri().expect("parses back");
                prop_assert_eq!(&back, &uri);
                prop_assert_eq!(back.authority().map(|a| a.as_str()), uri.authority().map(|a| a.as_str()));
                prop_assert_eq!(back.path_and_query().map(|p| p.as_str()), uri.path_and_query().map(|p| p.as_str()));
            }
        }
    }
}
