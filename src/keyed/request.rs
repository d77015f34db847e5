//! [`RequestInfo`]: what a key function sees of a request.

use http::{HeaderMap, Method};

use crate::message::{AuthRequest, Target};

/// What a [`KeyedAuthLayer`](super::KeyedAuthLayer)'s key function sees of a request: its
/// method, where it goes, its path and its headers. The same for `http::Request<B>` and
/// `reqwest::Request`. Each part is read when asked for: a key function that looks at one
/// header parses no URL.
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    request: &'a dyn View,
}

/// The parts of a request a key function may read, behind one pointer.
trait View {
    fn method(&self) -> &Method;
    fn target(&self) -> Option<Target<'_>>;
    fn host(&self) -> Option<&str>;
    fn path(&self) -> &str;
    fn headers(&self) -> &HeaderMap;
}

impl<R: AuthRequest> View for R {
    fn method(&self) -> &Method {
        AuthRequest::method(self)
    }

    fn target(&self) -> Option<Target<'_>> {
        AuthRequest::target(self)
    }

    fn host(&self) -> Option<&str> {
        AuthRequest::host(self)
    }

    fn path(&self) -> &str {
        AuthRequest::path(self)
    }

    fn headers(&self) -> &HeaderMap {
        AuthRequest::headers(self)
    }
}

impl<'a> RequestInfo<'a> {
    /// What the key function sees of `request`.
    pub fn of<R: AuthRequest>(request: &'a R) -> RequestInfo<'a> {
        RequestInfo { request }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.request.method()
    }

    /// Scheme, host and port, if the request's URL is absolute (a tonic channel's requests
    /// carry a path alone: `None`).
    pub fn target(&self) -> Option<Target<'a>> {
        self.request.target()
    }

    /// The host the request goes to, if its URL is absolute.
    pub fn host(&self) -> Option<&'a str> {
        self.request.host()
    }

    /// The URL's path, without its query.
    pub fn path(&self) -> &'a str {
        self.request.path()
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.request.headers()
    }

    /// The value of the header `name`, if it is present once and is visible ASCII: a header
    /// sent twice names no key, rather than one of two.
    pub fn header<N: http::header::AsHeaderName>(&self, name: N) -> Option<&'a str> {
        let mut values = self.headers().get_all(name).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        value.to_str().ok()
    }
}

impl std::fmt::Debug for RequestInfo<'_> {
    /// Method, target and path; no header, as one may carry a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestInfo")
            .field("method", self.method())
            .field("target", &self.target())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}
