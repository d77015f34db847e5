//! Where a token may go: the origins a layer is limited to, and plain `http` only to loopback
//! unless allowed.
//!
//! By default the layer puts the token on every request its inner service sends, as
//! tower-http's `AddAuthorization` does: a layer normally wraps the client of one API, and
//! requests addressed by path alone (a tonic channel, a hyper connection) carry no host to
//! check. A client that can reach several hosts (a general-purpose HTTP client, a proxy) should
//! be limited with [`AuthLayerBuilder::origin`](crate::AuthLayerBuilder::origin): requests to
//! other origins then pass through untouched, without the token.
//!
//! Whatever the origins, a token is never sent over plain `http` to a host other than a
//! loopback address (`127.0.0.0/8`, `[::1]`, `localhost`): such a request fails with
//! [`Error::InsecureRequest`] unless [`allow_http`](crate::AuthLayerBuilder::allow_http) is set.

use std::net::IpAddr;

use crate::{
    Error,
    message::{AuthRequest, Target},
};

/// An origin the layer may send the token to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    pub(crate) fn parse(raw: &str) -> Result<Self, Error> {
        let url = url::Url::parse(raw)
            .map_err(|e| Error::config(format!("origin {raw:?} is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "origin {raw:?} must be http or https"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Not echoed: the URL carries credentials.
            return Err(Error::config(
                "an origin must not carry credentials (user:password@)",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::config(format!("origin {raw:?} has no host")))?;
        if url.path() != "/" || url.query().is_some() {
            return Err(Error::config(format!(
                "origin {raw:?} must be scheme://host[:port] only"
            )));
        }
        Ok(Origin {
            scheme: url.scheme().to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: url.port_or_known_default(),
        })
    }

    fn matches(&self, target: &Target<'_>) -> bool {
        self.scheme.eq_ignore_ascii_case(target.scheme)
            && self.host.eq_ignore_ascii_case(target.host)
            && self.port == target.port
    }
}

/// What to do with a request.
pub(crate) enum Decision {
    /// Put the token on it.
    Attach,
    /// Send it as it is: it goes to an origin the layer is not for.
    PassThrough,
    /// Do not send it: the token would cross the network in clear text.
    Refuse(Error),
}

/// The rules of one layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    pub(crate) origins: Vec<Origin>,
    pub(crate) allow_http: bool,
}

impl OriginPolicy {
    /// What to do with `request`. Without origins, an `https` or path-only request is decided
    /// from its scheme alone, without parsing its host.
    #[inline]
    pub(crate) fn decide(&self, request: &impl AuthRequest) -> Decision {
        if self.origins.is_empty() && request.scheme().is_none_or(|s| s == "https") {
            return Decision::Attach;
        }
        self.decide_target(request.target())
    }

    fn decide_target(&self, target: Option<Target<'_>>) -> Decision {
        let Some(target) = target else {
            return Decision::Attach;
        };
        if !self.origins.is_empty() && !self.origins.iter().any(|o| o.matches(&target)) {
            return Decision::PassThrough;
        }
        if target.scheme.eq_ignore_ascii_case("http")
            && !self.allow_http
            && !is_loopback_host(target.host)
        {
            return Decision::Refuse(Error::InsecureRequest {
                host: target.host.to_owned(),
            });
        }
        Decision::Attach
    }
}

pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(scheme: &'a str, host: &'a str, port: u16) -> Option<Target<'a>> {
        Some(Target {
            scheme,
            host,
            port: Some(port),
        })
    }

    #[test]
    fn without_origins_every_https_or_loopback_request_gets_the_token() {
        let policy = OriginPolicy::default();
        assert!(matches!(policy.decide_target(None), Decision::Attach));
        assert!(matches!(
            policy.decide_target(target("https", "api.example.com", 443)),
            Decision::Attach
        ));
        assert!(matches!(
            policy.decide_target(target("http", "127.0.0.1", 8080)),
            Decision::Attach
        ));
        assert!(matches!(
            policy.decide_target(target("http", "::1", 80)),
            Decision::Attach
        ));
        assert!(matches!(
            policy.decide_target(target("http", "LocalHost", 80)),
            Decision::Attach
        ));
        match policy.decide_target(target("http", "api.example.com", 80)) {
            Decision::Refuse(err) => assert!(err.to_string().contains("allow_http"), "{err}"),
            _ => panic!("plain http to a remote host must be refused"),
        }
        let open = OriginPolicy {
            allow_http: true,
            ..OriginPolicy::default()
        };
        assert!(matches!(
            open.decide_target(target("http", "api.example.com", 80)),
            Decision::Attach
        ));
    }

    #[test]
    fn origins_limit_where_the_token_goes() {
        let policy = OriginPolicy {
            origins: vec![
                Origin::parse("https://API.example.com").unwrap(),
                Origin::parse("https://other.example.com:8443").unwrap(),
            ],
            allow_http: false,
        };
        assert!(matches!(
            policy.decide_target(target("https", "api.example.com", 443)),
            Decision::Attach
        ));
        assert!(matches!(
            policy.decide_target(target("https", "other.example.com", 8443)),
            Decision::Attach
        ));
        for (scheme, host, port) in [
            ("https", "evil.example.com", 443),
            ("https", "api.example.com", 8443),
            ("http", "api.example.com", 443),
            ("https", "other.example.com", 443),
        ] {
            assert!(
                matches!(
                    policy.decide_target(target(scheme, host, port)),
                    Decision::PassThrough
                ),
                "{scheme}://{host}:{port}"
            );
        }
        // A path-only request has no origin to check: it gets the token.
        assert!(matches!(policy.decide_target(None), Decision::Attach));
    }

    #[test]
    fn origins_must_be_bare() {
        assert!(Origin::parse("https://api.example.com/v1").is_err());
        assert!(Origin::parse("ftp://api.example.com").is_err());
        assert!(Origin::parse("api.example.com").is_err());
        assert_eq!(
            Origin::parse("https://api.example.com/").unwrap(),
            Origin::parse("https://api.example.com:443").unwrap()
        );
    }
}
