//! Redirects: a tower-http `FollowRedirect` policy that keeps the token off other origins
//! (feature `follow-redirect`).
//!
//! With the follower **outside** the layer (`FollowRedirect<AuthService<S>>`) every hop passes
//! through the layer, and [`origin`](crate::AuthLayerBuilder::origin) decides. With the follower
//! **inside** (`AuthService<FollowRedirect<S>>`) the token is added once, to the first request,
//! and the follower copies it to every hop; tower-http's `FilterCredentials` (part of its
//! `Standard` policy) strips `Authorization` on a hop to another origin, but not a custom
//! [header name](crate::AuthLayerBuilder::header_name). [`FilterToken`] strips the layer's
//! header, whatever its name, from the first hop to another origin on: add it to the
//! follower's policy.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_bearer::{AuthLayer, StaticToken};
//! use tower_http::follow_redirect::{FollowRedirectLayer, policy::{PolicyExt, Standard}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_bearer::BoxError> {
//! type Body = Empty<bytes::Bytes>;
//! let auth = AuthLayer::builder(StaticToken::new("t0k3n"))
//!     .header_name(http::HeaderName::from_static("x-api-token"))
//!     .scheme("")
//!     .build()?;
//! // The follower's policy: tower-http's standard one, and the layer's filter.
//! let policy = Standard::default().and::<_, Body, Infallible>(auth.redirect_filter());
//! let api = service_fn(|request: Request<Body>| async move {
//!     assert_eq!(request.headers()["x-api-token"], "t0k3n");
//!     Ok::<_, Infallible>(Response::new(Body::new()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(auth)
//!     .layer(FollowRedirectLayer::with_policy(policy))
//!     .service(api);
//! let request = Request::get("https://api.example.com/v1").body(Body::new())?;
//! assert_eq!(client.oneshot(request).await?.status(), 200);
//! # Ok(())
//! # }
//! ```

use http::{HeaderName, Request, Uri};
use tower_http::follow_redirect::policy::{Action, Attempt, Policy};

/// A `FollowRedirect` policy that removes the layer's token header from every hop after the
/// first one to another origin. Made by [`AuthLayer::redirect_filter`](crate::AuthLayer::redirect_filter);
/// combine it with the follower's other policies with `PolicyExt::and`.
#[derive(Debug, Clone)]
pub struct FilterToken {
    header_name: HeaderName,
    cross_origin: bool,
}

impl FilterToken {
    pub(crate) fn new(header_name: HeaderName) -> Self {
        FilterToken {
            header_name,
            cross_origin: false,
        }
    }
}

impl<B, E> Policy<B, E> for FilterToken {
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, E> {
        self.cross_origin = !same_origin(attempt.previous(), attempt.location());
        Ok(Action::Follow)
    }

    fn on_request(&mut self, request: &mut Request<B>) {
        // The follower carries the filtered headers on to later hops, so a token removed here
        // stays removed, even on a hop back.
        if self.cross_origin {
            request.headers_mut().remove(&self.header_name);
        }
    }
}

/// Same scheme, host and port (the scheme's default if none is written).
fn same_origin(a: &Uri, b: &Uri) -> bool {
    fn port(uri: &Uri) -> Option<u16> {
        uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    }
    a.scheme() == b.scheme()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
        && a.scheme().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let same = |a: &'static str, b: &'static str| {
            same_origin(&Uri::from_static(a), &Uri::from_static(b))
        };
        assert!(same("https://a.example/1", "https://A.example:443/2"));
        assert!(!same("https://a.example/", "http://a.example/"));
        assert!(!same("https://a.example/", "https://b.example/"));
        assert!(!same("https://a.example/", "https://a.example:8443/"));
        assert!(!same("/relative", "/relative"));
    }
}
