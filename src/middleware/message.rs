//! The requests and responses the layer works with: `http::Request` / `http::Response` (hyper,
//! axum, tonic, ...) and `reqwest::Request` / `reqwest::Response`.
//!
//! [`AuthRequest`] is what the layer needs of a request: its headers, where it goes, and how to
//! send it again after a 401. [`AuthResponse`] is what it needs of a response: the status and
//! headers that say whether the token was rejected.

use http::{HeaderMap, Request, Response, StatusCode};

use crate::{grpc::TrailerWatch, replay::ReplayRequest};

/// Where a request goes: scheme, host and port of an absolute URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// `http` or `https` (lower case).
    pub scheme: &'a str,
    /// The host, as written in the URL (no brackets around IPv6 addresses).
    pub host: &'a str,
    /// The port, or the scheme's default.
    pub port: Option<u16>,
}

/// A request the layer can put a token on and send again.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a request `AuthService` can put a token on",
    label = "the inner service must take `http::Request<B>` or `reqwest::Request`",
    note = "`AuthService` serves `http::Request<B>` for any body `B: 'static` (hyper, axum, tonic) \
            and `reqwest::Request`; see tower_bearer::replay for which bodies are resent after a 401"
)]
pub trait AuthRequest: Sized {
    /// What is kept to send the request again.
    type Replay;

    /// The request's headers.
    fn headers(&self) -> &HeaderMap;

    /// The request's headers, to set the token.
    fn headers_mut(&mut self) -> &mut HeaderMap;

    /// Where the request goes, if its URL is absolute. Requests with only a path (as a tonic
    /// channel or a hyper connection sees them) return `None`.
    fn target(&self) -> Option<Target<'_>>;

    /// The request method (a DPoP proof's `htm`).
    fn method(&self) -> &http::Method;

    /// The URL's path, without query (a DPoP proof's `htu` ends with it).
    fn path(&self) -> &str;

    /// The URL scheme alone, if the URL is absolute: a cheaper look than [`target`](Self::target)
    /// for the common case where only the scheme matters.
    fn scheme(&self) -> Option<&str> {
        self.target().map(|t| t.scheme)
    }

    /// The host alone, if the URL is absolute (no brackets around an IPv6 address): a cheaper
    /// look than [`target`](Self::target) for a keyed layer's key function.
    fn host(&self) -> Option<&str> {
        self.target().map(|t| t.host)
    }

    /// Whether the URL's host is loopback (`localhost` or a loopback address): where plain
    /// `http` may carry the token.
    #[doc(hidden)]
    #[inline]
    fn goes_to_loopback(&self) -> bool {
        self.host().is_some_and(super::loopback::is_loopback_host)
    }

    /// Keeps what is needed to send the request again, if it can be (its body allows, and a
    /// streaming body stays within `limit` bytes).
    fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay>;

    /// Whether the request may be a gRPC call, whose answer can reject the token with HTTP 200
    /// and `grpc-status: 16`: `false` lets the layer skip that lookup in every 200 answer.
    /// `true` unless the request says otherwise.
    #[doc(hidden)]
    #[inline(always)]
    fn may_be_grpc(&self) -> bool {
        true
    }

    /// The request to send again, if it can still be built.
    fn replay(kept: Self::Replay) -> Option<Self>;
}

/// A response the layer can inspect for a rejected token.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a response `AuthService` can check for a rejected token",
    label = "the inner service must answer `http::Response<B>` or `reqwest::Response`"
)]
pub trait AuthResponse {
    /// The HTTP status.
    fn status(&self) -> StatusCode;
    /// The headers.
    fn headers(&self) -> &HeaderMap;

    /// Lets the layer watch what comes after the headers for a rejection of the token: gRPC's
    /// `UNAUTHENTICATED` in the trailers of a stream (see [`crate::grpc`]). Watches nothing
    /// unless the body is a `tonic::body::Body` (feature `tonic`). `true` if it watches: the
    /// trailers then say whether the token was accepted.
    #[doc(hidden)]
    #[inline(always)]
    fn watch_trailers(&mut self, make: impl FnOnce() -> TrailerWatch) -> bool {
        let _ = make;
        false
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    }
}

/// The host of an absolute URI, without the brackets of an IPv6 address: what `Uri::host`
/// returns, brackets aside. A keyed layer reads it for every request, and `Uri::host`'s
/// reverse split and search cost 400 instructions for a 15-byte host (`memchr` pays its
/// dispatch on every call for text this short), so the authority, which `http` has checked, is
/// read eight bytes at a time: a host alone, or a host and a port, needs nothing more.
#[inline]
fn host_of(uri: &http::Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let bytes = authority.as_bytes();
    let mut offset = 0;
    while offset < bytes.len() {
        // Eight bytes from `offset`; the last word of a longer authority overlaps the one
        // before it, and a shorter authority's one word is padded with zeros.
        let start = if bytes.len() >= 8 {
            offset.min(bytes.len() - 8)
        } else {
            0
        };
        let word = match bytes.get(start..start + 8) {
            Some(eight) => u64::from_le_bytes(eight.try_into().unwrap_or_default()),
            None => bytes
                .iter()
                .rev()
                .fold(0, |word, &byte| (word << 8) | u64::from(byte)),
        };
        // Userinfo ('@') and IPv6 ('[') are rare: read those authorities byte by byte.
        if has_byte(word, b'@') | has_byte(word, b'[') != 0 {
            return Some(host_with_userinfo_or_brackets(authority));
        }
        let colon = has_byte(word, b':');
        if colon != 0 {
            let at = start + colon.trailing_zeros() as usize / 8;
            // The port holds digits only, but a password could hold '@' after a ':'. This
            // word holds none, so only the bytes after it are looked at (none, when it is the
            // authority's last word, as it is for a host and port of up to 15 bytes).
            if bytes
                .get(start + 8..)
                .is_some_and(|rest| rest.contains(&b'@'))
            {
                return Some(host_with_userinfo_or_brackets(authority));
            }
            return authority.get(..at);
        }
        offset = start + 8;
    }
    Some(authority)
}

/// The port of `uri`, whose host [`host_of`] found: what `Uri::port_u16` returns, without its
/// search for the last ':' when the authority is the host, a ':' and the port (no userinfo, no
/// brackets), which is where `host_of` stopped.
#[inline]
fn port_of(uri: &http::Uri, host: &str) -> Option<u16> {
    let authority = uri.authority()?.as_str();
    if authority.as_ptr() != host.as_ptr() {
        return uri.port_u16();
    }
    authority.get(host.len() + 1..)?.parse().ok()
}

/// The bytes of `word` equal to `byte`, as the high bit of each: exact for the lowest such
/// byte (a byte above a match may show as one too, which only the lowest's position ignores).
#[inline(always)]
fn has_byte(word: u64, byte: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let diff = word ^ (ONES * u64::from(byte));
    diff.wrapping_sub(ONES) & !diff & (ONES << 7)
}

/// [`host_of`] for an authority with userinfo or an IPv6 address, one byte at a time.
#[cold]
fn host_with_userinfo_or_brackets(authority: &str) -> &str {
    // Userinfo ends at the last '@' (a password may hold ':'); the port starts at the first ':'
    // after it.
    let start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_port = &authority[start..];
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed
            .split_once(']')
            .map_or(bracketed, |(host, _)| host);
    }
    host_port
        .split_once(':')
        .map_or(host_port, |(host, _)| host)
}

/// Any body: the layer puts the token on every `http::Request`, and resends after a 401 those
/// whose body it can send again (see [`crate::replay`]).
impl<B: 'static> AuthRequest for Request<B> {
    type Replay = ReplayRequest<B>;

    #[inline]
    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        Request::headers_mut(self)
    }

    #[inline]
    fn target(&self) -> Option<Target<'_>> {
        let uri = self.uri();
        let scheme = uri.scheme_str()?;
        let host = host_of(uri)?;
        Some(Target {
            scheme,
            host,
            port: port_of(uri, host).or_else(|| default_port(scheme)),
        })
    }

    #[inline]
    fn host(&self) -> Option<&str> {
        host_of(self.uri())
    }

    /// `127.0.0.1:PORT`, nearly every local API's authority, is decided without finding the
    /// host (see [`is_loopback_ipv4_with_port`](super::loopback::is_loopback_ipv4_with_port)).
    #[inline]
    fn goes_to_loopback(&self) -> bool {
        let uri = self.uri();
        uri.authority()
            .is_some_and(|a| super::loopback::is_loopback_ipv4_with_port(a.as_str()))
            || host_of(uri).is_some_and(super::loopback::is_loopback_host)
    }

    #[inline]
    fn method(&self) -> &http::Method {
        Request::method(self)
    }

    #[inline]
    fn path(&self) -> &str {
        self.uri().path()
    }

    #[inline]
    fn scheme(&self) -> Option<&str> {
        self.uri().scheme_str()
    }

    #[inline]
    fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay> {
        ReplayRequest::prepare(self, limit)
    }

    /// A gRPC or gRPC-Web call says so in its `content-type` (`application/grpc`,
    /// `application/grpc+proto`, `application/grpc-web`, ...; a media type's case does not
    /// matter), which tonic and every gRPC client set. A request without headers, the common
    /// plain request, is decided without a lookup.
    #[inline(always)]
    fn may_be_grpc(&self) -> bool {
        const GRPC: &[u8] = b"application/grpc";
        let headers = Request::headers(self);
        !headers.is_empty()
            && headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
                v.as_bytes()
                    .get(..GRPC.len())
                    .is_some_and(|prefix| prefix.eq_ignore_ascii_case(GRPC))
            })
    }

    fn replay(kept: Self::Replay) -> Option<Self> {
        kept.into_request()
    }
}

impl<B: 'static> AuthResponse for Response<B> {
    #[inline]
    fn status(&self) -> StatusCode {
        Response::status(self)
    }

    #[inline]
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }

    #[inline(always)]
    fn watch_trailers(&mut self, make: impl FnOnce() -> TrailerWatch) -> bool {
        #[cfg(feature = "tonic")]
        return crate::grpc::watch(self, make);
        #[cfg(not(feature = "tonic"))]
        {
            let _ = make;
            false
        }
    }
}

/// reqwest requests are replayed with [`reqwest::Request::try_clone`]: any body but a stream.
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
impl AuthRequest for reqwest::Request {
    type Replay = reqwest::Request;

    fn headers(&self) -> &HeaderMap {
        reqwest::Request::headers(self)
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        reqwest::Request::headers_mut(self)
    }

    fn target(&self) -> Option<Target<'_>> {
        let url = self.url();
        Some(Target {
            scheme: url.scheme(),
            host: url
                .host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']'),
            port: url.port_or_known_default(),
        })
    }

    fn method(&self) -> &http::Method {
        reqwest::Request::method(self)
    }

    fn path(&self) -> &str {
        self.url().path()
    }

    fn prepare_replay(&mut self, _limit: usize) -> Option<Self::Replay> {
        self.try_clone()
    }

    fn replay(kept: Self::Replay) -> Option<Self> {
        Some(kept)
    }
}

#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
impl AuthResponse for reqwest::Response {
    fn status(&self) -> StatusCode {
        reqwest::Response::status(self)
    }

    fn headers(&self) -> &HeaderMap {
        reqwest::Response::headers(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_absolute_and_relative_uris() {
        let req = Request::get("https://API.example.com/x").body(()).unwrap();
        assert_eq!(
            req.target(),
            Some(Target {
                scheme: "https",
                host: "API.example.com",
                port: Some(443)
            })
        );
        let req = Request::get("http://[::1]:8080/x").body(()).unwrap();
        assert_eq!(
            req.target(),
            Some(Target {
                scheme: "http",
                host: "::1",
                port: Some(8080)
            })
        );
        let req = Request::get("/pkg.Service/Method").body(()).unwrap();
        assert_eq!(req.target(), None);
        #[cfg(feature = "oauth")]
        {
            let url = "http://127.0.0.1:9/x".parse().unwrap();
            let req = reqwest::Request::new(http::Method::GET, url);
            assert_eq!(
                req.target(),
                Some(Target {
                    scheme: "http",
                    host: "127.0.0.1",
                    port: Some(9)
                })
            );
        }
    }

    /// `host_of` answers what `Uri::host` does (brackets aside), and `port_of` what
    /// `Uri::port_u16` does, for every shape of authority `http` accepts: userinfo with and
    /// without a password, ports (out of range too), IPv4, IPv6, no scheme.
    #[test]
    fn host_of_agrees_with_the_http_crate() {
        let userinfos = ["", "user@", "user:pass@", "a:b:c@", "u%40x@", "@"];
        let hosts = [
            "api.test",
            "API.Example.COM",
            "127.0.0.1",
            "[::1]",
            "[2001:db8::7]",
            "h",
        ];
        let ports = ["", ":8080", ":", ":0", ":65535", ":65536", ":080", ":99999"];
        let mut checked = 0;
        for userinfo in userinfos {
            for host in hosts {
                for port in ports {
                    for prefix in ["https://", "http://", ""] {
                        let text = format!("{prefix}{userinfo}{host}{port}");
                        let Ok(uri) = text.parse::<http::Uri>() else {
                            continue;
                        };
                        let expected = uri.host().map(|host| {
                            host.strip_prefix('[')
                                .and_then(|h| h.strip_suffix(']'))
                                .unwrap_or(host)
                        });
                        assert_eq!(host_of(&uri), expected, "{text}");
                        if let Some(host) = host_of(&uri) {
                            assert_eq!(port_of(&uri, host), uri.port_u16(), "{text}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300, "only {checked} URIs parsed");
        assert_eq!(host_of(&"/only/a/path".parse().unwrap()), None);
    }
}
