//! reqwest's own redirects: a policy that keeps the token off other origins.
//!
//! A `reqwest::Client` follows redirects itself (up to 10 by default), inside the layer: the
//! layer puts the token on the first request, and reqwest carries the headers on to every hop.
//! On a hop to another origin (another host or port, or `https` to `http`) reqwest removes
//! `Authorization`, `Cookie` and `Proxy-Authorization`, and nothing else: a token in a custom
//! [`header_name`](crate::AuthLayerBuilder::header_name), and a DPoP proof, would go along.
//!
//! [`AuthLayer::reqwest_redirect_policy`](crate::AuthLayer::reqwest_redirect_policy) gives the
//! client a policy that **refuses to follow** such a hop when the layer's token or proof goes in
//! a header reqwest does not remove: the redirect response (its status and `Location`) comes
//! back to the caller instead. Hops within the origin are followed, up to 10, as reqwest's
//! default does. A layer that sends `Authorization: Bearer` alone keeps reqwest's behaviour,
//! since reqwest removes that header itself.
//!
//! The layer cannot see how a client it wraps was built: give every `reqwest::Client` that
//! carries a custom header or a DPoP-bound token this policy (or `Policy::none()`).
//!
//! ```
//! use tower_bearer::{AuthLayer, StaticToken};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = AuthLayer::builder(StaticToken::new("t0k3n"))
//!     .header_name(http::HeaderName::from_static("x-api-token"))
//!     .scheme("")
//!     .build()?;
//! let client = reqwest::Client::builder()
//!     .redirect(auth.reqwest_redirect_policy())
//!     .build()?;
//! let service = tower::ServiceBuilder::new().layer(auth).service(client);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

use reqwest::redirect::{Attempt, Policy};
use url::Url;

/// The most hops followed, as reqwest's default policy.
const MOST_HOPS: usize = 10;

/// The policy for a layer whose token (or proof) goes in a header reqwest does not remove on a
/// hop to another origin when `carried_elsewhere`.
pub(crate) fn policy(carried_elsewhere: bool) -> Policy {
    Policy::custom(move |attempt: Attempt<'_>| {
        if attempt.previous().len() > MOST_HOPS {
            return attempt.error("too many redirects");
        }
        let leaves = attempt
            .previous()
            .last()
            .is_some_and(|from| leaves_origin(from, attempt.url()));
        if carried_elsewhere && leaves {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// Whether a hop from `from` to `to` leaves the origin: another scheme (`https` to `http`),
/// host or port.
fn leaves_origin(from: &Url, to: &Url) -> bool {
    from.scheme() != to.scheme()
        || from.host_str().map(str::to_ascii_lowercase)
            != to.host_str().map(str::to_ascii_lowercase)
        || from.port_or_known_default() != to.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_leave_the_origin_on_another_scheme_host_or_port() {
        let url = |s: &str| Url::parse(s).unwrap();
        let from = url("https://api.example.com/a");
        assert!(!leaves_origin(&from, &url("https://API.example.com:443/b")));
        assert!(
            leaves_origin(&from, &url("http://api.example.com/b")),
            "a downgrade"
        );
        assert!(leaves_origin(&from, &url("https://evil.example.com/b")));
        assert!(leaves_origin(&from, &url("https://api.example.com:8443/b")));
    }
}
