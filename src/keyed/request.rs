//! [`RequestInfo`]: what a key function sees of a request.

use http::{HeaderMap, Method};

use crate::message::{AuthRequest, Target};

/// What a [`KeyedAuthLayer`](super::KeyedAuthLayer)'s key function sees of a request: its
/// method, where it goes, its path and its headers. The same for `http::Request<B>` and
/// `reqwest::Request`.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    method: &'a Method,
    target: Option<Target<'a>>,
    path: &'a str,
    headers: &'a HeaderMap,
}

impl<'a> RequestInfo<'a> {
    /// What the key function sees of `request`.
    pub fn of<R: AuthRequest>(request: &'a R) -> RequestInfo<'a> {
        RequestInfo {
            method: request.method(),
            target: request.target(),
            path: request.path(),
            headers: request.headers(),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// Scheme, host and port, if the request's URL is absolute (a tonic channel's requests
    /// carry a path alone: `None`).
    pub fn target(&self) -> Option<Target<'a>> {
        self.target
    }

    /// The host the request goes to, if its URL is absolute.
    pub fn host(&self) -> Option<&'a str> {
        self.target.map(|target| target.host)
    }

    /// The URL's path, without its query.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The request's headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The value of the header `name`, if it is present once and is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let mut values = self.headers.get_all(name).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        value.to_str().ok()
    }
}
