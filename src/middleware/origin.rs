//! Where a token may go.
//!
//! Three rules decide, for each request, whether it gets the token:
//!
//! 1. **The scheme is an allow-list.** `https` and `wss` carry the token anywhere; `http` and
//!    `ws` only to a loopback address (`127.0.0.0/8`, `[::1]`, `localhost`) unless
//!    [`allow_http`](crate::AuthLayerBuilder::allow_http) is set; any other scheme never. A
//!    refused request fails with [`Error::InsecureRequest`] and is not sent.
//! 2. **Origins, if given, limit it.** With [`origin`](crate::AuthLayerBuilder::origin) set,
//!    requests to other origins pass through untouched, without the token: for a client that
//!    can reach several hosts (a general-purpose HTTP client, a proxy, a redirect follower).
//! 3. **A request addressed by path alone names no destination.** A tonic `Channel` and a
//!    hyper connection send such requests and add scheme and host inside, where the layer
//!    cannot see them. Such a request fails with [`Error::UnknownDestination`] unless
//!    [`channel_origin`](crate::AuthLayerBuilder::channel_origin) says where the channel
//!    connects; that origin then goes through rules 1 and 2 once, when the layer is built.
//!
//! # Redirects
//!
//! The layer judges each request it is given. Put tower-http's `FollowRedirect` **outside**
//! the layer (`FollowRedirect<AuthService<S>>`): every hop then passes through the layer, and
//! with [`origin`](crate::AuthLayerBuilder::origin) set a hop to another origin goes without
//! the token, whatever the [header name](crate::AuthLayerBuilder::header_name). Inside the
//! layer (`AuthService<FollowRedirect<S>>`), the token is added once and the follower's
//! `FilterCredentials` strips `Authorization` on a cross-origin hop, but not a custom header:
//! with a custom header name, put the follower outside, or add the layer's
//! `redirect_filter()` to the follower's policy (feature `follow-redirect`, see the `redirect`
//! module). The token endpoint client never follows redirects (see
//! [`ClientCredentials`](crate::ClientCredentials)).

use super::loopback::is_loopback_host;
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

    /// `scheme://host[:port]`, the port left out when it is the scheme's default.
    #[cfg_attr(not(feature = "jose"), allow(dead_code))]
    pub(crate) fn serialize(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = match self.scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        match self.port.filter(|p| Some(*p) != default) {
            Some(port) => format!("{}://{host}:{port}", self.scheme),
            None => format!("{}://{host}", self.scheme),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            scheme: &self.scheme,
            host: &self.host,
            port: self.port,
        }
    }

    /// The cheap comparisons first: most requests that fail to match differ in port or in
    /// the host's length.
    fn matches(&self, target: &Target<'_>) -> bool {
        self.port == target.port
            && self.host.len() == target.host.len()
            && self.host.eq_ignore_ascii_case(target.host)
            && self.scheme.eq_ignore_ascii_case(target.scheme)
    }
}

/// What to do with a request.
pub(crate) enum Decision {
    /// Put the token on it.
    Attach,
    /// Send it as it is: it goes to an origin the layer is not for.
    PassThrough,
    /// Do not send it: the token would cross the network in clear text, or go nobody knows
    /// where.
    Refuse(Error),
}

/// What to do with requests addressed by path alone, decided when the layer is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathOnly {
    Attach,
    PassThrough,
    Refuse,
}

/// The rules of one layer. The default: no origins, no plain `http` beyond loopback, requests
/// addressed by path alone refused.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    /// Each origin, and whether rule 1 lets the token go there: decided once, as the layer is
    /// built, rather than for every request to it.
    origins: Vec<(Origin, bool)>,
    allow_http: bool,
    path_only: PathOnly,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        OriginPolicy {
            origins: Vec::new(),
            allow_http: false,
            path_only: PathOnly::Refuse,
        }
    }
}

impl OriginPolicy {
    /// The rules for these settings.
    ///
    /// # Errors
    ///
    /// [`Error::InsecureRequest`] if `channel` is an origin the token may never go to.
    pub(crate) fn new(
        origins: Vec<Origin>,
        allow_http: bool,
        channel: Option<Origin>,
    ) -> Result<Self, Error> {
        let mut policy = OriginPolicy {
            origins: origins
                .into_iter()
                .map(|origin| {
                    let target = origin.target();
                    let secure = secure_enough(target.scheme, target.host, allow_http);
                    (origin, secure)
                })
                .collect(),
            allow_http,
            path_only: PathOnly::Refuse,
        };
        if let Some(channel) = channel {
            policy.path_only = match policy.decide_target(Some(channel.target())) {
                Decision::Attach => PathOnly::Attach,
                Decision::PassThrough => PathOnly::PassThrough,
                Decision::Refuse(err) => return Err(err),
            };
        }
        Ok(policy)
    }

    /// What to do with `request`. Without origins, an `https` request is decided from its
    /// scheme alone, without parsing its host, and an `http` one from its host alone, without
    /// its port.
    #[inline]
    pub(crate) fn decide(&self, request: &impl AuthRequest) -> Decision {
        if self.origins.is_empty() {
            match request.scheme() {
                Some("https") => return Decision::Attach,
                None => return self.path_only(),
                Some("http") if self.allow_http || request.goes_to_loopback() => {
                    return Decision::Attach;
                }
                Some(_) => {}
            }
        }
        self.decide_target(request.target())
    }

    #[inline]
    fn path_only(&self) -> Decision {
        match self.path_only {
            PathOnly::Attach => Decision::Attach,
            PathOnly::PassThrough => Decision::PassThrough,
            PathOnly::Refuse => Decision::Refuse(Error::UnknownDestination),
        }
    }

    fn decide_target(&self, target: Option<Target<'_>>) -> Decision {
        let Some(target) = target else {
            return self.path_only();
        };
        let secure = if self.origins.is_empty() {
            secure_enough(target.scheme, target.host, self.allow_http)
        } else {
            match self.origins.iter().find(|(o, _)| o.matches(&target)) {
                Some((_, secure)) => *secure,
                None => return Decision::PassThrough,
            }
        };
        if secure {
            return Decision::Attach;
        }
        Decision::Refuse(Error::InsecureRequest {
            scheme: target.scheme.to_ascii_lowercase(),
            host: target.host.to_owned(),
        })
    }
}

/// Rule 1: whether the token may go over `scheme` to `host`.
fn secure_enough(scheme: &str, host: &str, allow_http: bool) -> bool {
    let secure = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss");
    let plain = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws");
    secure || (plain && (allow_http || is_loopback_host(host)))
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
        let policy = OriginPolicy::new(Vec::new(), false, None).unwrap();
        assert!(matches!(
            policy.decide_target(None),
            Decision::Refuse(Error::UnknownDestination)
        ));
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
        for (scheme, host) in [
            ("ws", "api.example.com"),
            ("ftp", "127.0.0.1"),
            ("gopher", "x"),
        ] {
            match policy.decide_target(target(scheme, host, 80)) {
                Decision::Refuse(Error::InsecureRequest { scheme: s, .. }) => assert_eq!(s, scheme),
                _ => panic!("{scheme}://{host} must be refused"),
            }
        }
        assert!(matches!(
            policy.decide_target(target("wss", "api.example.com", 443)),
            Decision::Attach
        ));
        assert!(matches!(
            policy.decide_target(target("ws", "127.0.0.1", 80)),
            Decision::Attach
        ));
        let open = OriginPolicy::new(Vec::new(), true, None).unwrap();
        assert!(matches!(
            open.decide_target(target("ftp", "api.example.com", 21)),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            open.decide_target(target("http", "api.example.com", 80)),
            Decision::Attach
        ));
    }

    #[test]
    fn origins_limit_where_the_token_goes() {
        let origins = vec![
            Origin::parse("https://API.example.com").unwrap(),
            Origin::parse("https://other.example.com:8443").unwrap(),
        ];
        let policy = OriginPolicy::new(origins.clone(), false, None).unwrap();
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
        // A path-only request goes where the channel origin says.
        assert!(matches!(policy.decide_target(None), Decision::Refuse(_)));
        let channel = |raw: &str| {
            OriginPolicy::new(origins.clone(), false, Some(Origin::parse(raw).unwrap())).unwrap()
        };
        assert!(matches!(
            channel("https://api.example.com").decide_target(None),
            Decision::Attach
        ));
        assert!(matches!(
            channel("https://evil.example.com").decide_target(None),
            Decision::PassThrough
        ));
    }

    #[test]
    fn a_channel_origin_the_token_may_never_go_to_is_refused_when_built() {
        let channel = Some(Origin::parse("http://10.0.0.7:50051").unwrap());
        match OriginPolicy::new(Vec::new(), false, channel.clone()) {
            Err(Error::InsecureRequest { host, .. }) => assert_eq!(host, "10.0.0.7"),
            other => panic!("unexpected {other:?}"),
        }
        let policy = OriginPolicy::new(Vec::new(), true, channel).unwrap();
        assert!(matches!(policy.decide_target(None), Decision::Attach));
        let loopback = Some(Origin::parse("http://127.0.0.1:50051").unwrap());
        let policy = OriginPolicy::new(Vec::new(), false, loopback).unwrap();
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
