//! DPoP on requests (RFC 9449 §7, feature `jose`): a fresh proof for every request that
//! carries a DPoP-bound token, and the nonce each resource server asks for.
//!
//! The proof binds the request's method and URI (`htm`, `htu`: scheme, host, port and path,
//! without query and fragment) and the token (`ath`, its hash, computed once per token) to the
//! client's key. A server may demand a nonce: it answers `401` with
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce` header; the layer keeps
//! that nonce for the server's origin and sends the request once more (a body it can replay)
//! without forgetting the token. Any response's `DPoP-Nonce` replaces the origin's nonce.
//! Nonces are read on every request without a lock: the few writes copy the list.

use std::{
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    io::Write,
    sync::Arc,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    Error, challenge,
    jose::{
        SigningKey,
        dpop::{DpopProver, ProofFor, access_token_hash},
    },
    message::AuthRequest,
    middleware::layer_state::Sent,
};

/// The `DPoP` request header.
pub(crate) static DPOP: HeaderName = HeaderName::from_static("dpop");
/// The `DPoP-Nonce` response header.
static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");
/// The scheme of a DPoP-bound token in `Authorization`.
pub(crate) const SCHEME: &str = "DPoP";

/// URIs longer than this are written on the heap instead of the stack.
const URI_ON_STACK: usize = 512;

/// How a layer proves possession of its DPoP key on requests.
pub(crate) struct RequestDpop {
    prover: DpopProver,
    /// Where requests addressed by path alone go (the layer's channel origin).
    channel: Option<Box<str>>,
    /// The last nonce of each origin that gave one, by a hash of the origin, and its version
    /// (counting the origin's nonces from 1).
    nonces: ArcSwap<Vec<(u32, Arc<str>, u32)>>,
    /// `ath` of the token of a generation: computed once per token.
    token_hash: ArcSwapOption<(u64, Box<str>)>,
}

impl RequestDpop {
    /// Proofs signed with `key`; `channel` is `scheme://host[:port]` for requests addressed by
    /// path alone.
    pub(crate) fn new(key: SigningKey, channel: Option<String>) -> RequestDpop {
        RequestDpop {
            prover: DpopProver::new(key),
            channel: channel.map(|c| c.trim_end_matches('/').into()),
            nonces: ArcSwap::from_pointee(Vec::new()),
            token_hash: ArcSwapOption::empty(),
        }
    }

    /// A `DPoP` header for `request`, which carries `authorization` (`DPoP <token>`) of
    /// `generation`, and what it was sent with: its origin's key and the version of the nonce
    /// it carries (0 for none).
    pub(crate) fn proof(
        &self,
        request: &impl AuthRequest,
        authorization: &HeaderValue,
        generation: u64,
    ) -> Result<(HeaderValue, Sent), Error> {
        let mut stack = [0u8; URI_ON_STACK];
        let mut cursor = &mut stack[..];
        let mut heap = Vec::new();
        let (uri, origin_len) = match self.write_uri(&mut cursor, request) {
            Ok(Some(origin_len)) => {
                let written = URI_ON_STACK - cursor.len();
                (stack.get(..written).unwrap_or_default(), origin_len)
            }
            Ok(None) => return Err(Error::UnknownDestination),
            Err(_) => {
                let origin_len = self
                    .write_uri(&mut heap, request)
                    .ok()
                    .flatten()
                    .ok_or(Error::UnknownDestination)?;
                (&heap[..], origin_len)
            }
        };
        let uri = std::str::from_utf8(uri).map_err(|_| Error::UnknownDestination)?;
        let origin = origin_key(&uri[..origin_len]);
        let token_hash = self.token_hash(authorization, generation);
        let nonces = self.nonces.load();
        let (nonce, version) = nonces
            .iter()
            .find(|(key, ..)| *key == origin)
            .map_or((None, 0), |(_, nonce, version)| (Some(&**nonce), *version));
        let proof = self.prover.proof_for(ProofFor {
            method: request.method().as_str(),
            uri,
            token_hash: Some(&token_hash.1),
            nonce,
        })?;
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(proof))
            .map_err(|_| Error::Key("a DPoP proof is not a header value".into()))?;
        Ok((value, Sent::dpop(origin, version)))
    }

    /// `scheme://host[:port]path` of `request` (the default port left out, the scheme and host
    /// in lower case), and the length of its origin part; `None` for a request addressed by
    /// path alone on a layer without a channel origin.
    fn write_uri(
        &self,
        out: &mut impl Write,
        request: &impl AuthRequest,
    ) -> std::io::Result<Option<usize>> {
        let mut counted = Counted { out, written: 0 };
        match request.target() {
            Some(target) => {
                for b in target.scheme.bytes() {
                    counted.write_all(&[b.to_ascii_lowercase()])?;
                }
                counted.write_all(b"://")?;
                let bracket = target.host.contains(':');
                if bracket {
                    counted.write_all(b"[")?;
                }
                for b in target.host.bytes() {
                    counted.write_all(&[b.to_ascii_lowercase()])?;
                }
                if bracket {
                    counted.write_all(b"]")?;
                }
                let default = match target.scheme {
                    "https" => Some(443),
                    "http" => Some(80),
                    _ => None,
                };
                if let Some(port) = target.port.filter(|p| Some(*p) != default) {
                    write!(counted, ":{port}")?;
                }
            }
            None => match &self.channel {
                Some(channel) => counted.write_all(channel.as_bytes())?,
                None => return Ok(None),
            },
        }
        let origin_len = counted.written;
        let path = request.path();
        counted.write_all(if path.is_empty() {
            b"/"
        } else {
            path.as_bytes()
        })?;
        Ok(Some(origin_len))
    }

    /// `ath` for the token in `authorization`, computed at its first request.
    fn token_hash(&self, authorization: &HeaderValue, generation: u64) -> Arc<(u64, Box<str>)> {
        if let Some(hash) = &*self.token_hash.load() {
            if hash.0 == generation {
                return Arc::clone(hash);
            }
        }
        let token = authorization
            .as_bytes()
            .get(SCHEME.len() + 1..)
            .unwrap_or_default();
        let hash = Arc::new((
            generation,
            access_token_hash(std::str::from_utf8(token).unwrap_or_default()).into(),
        ));
        self.token_hash.store(Some(Arc::clone(&hash)));
        hash
    }

    /// Keeps the `DPoP-Nonce` of a response to a request sent as `sent`; `true` if the origin
    /// now has another nonce than the one the request carried (from this response or from
    /// another that came meanwhile): sending again with it may pass.
    #[inline]
    pub(crate) fn remember_nonce(&self, sent: Sent, headers: &HeaderMap) -> bool {
        if !headers.is_empty() {
            if let Some(nonce) = headers
                .get(&DPOP_NONCE)
                .and_then(|v| v.to_str().ok())
                .filter(|nonce| crate::jose::dpop::acceptable_nonce(nonce))
            {
                self.store_nonce(sent.origin(), nonce);
            }
        }
        self.nonce_version(sent.origin()) != sent.version()
    }

    fn nonce_version(&self, origin: u32) -> u32 {
        self.nonces
            .load()
            .iter()
            .find(|(key, ..)| *key == origin)
            .map_or(0, |(.., version)| *version)
    }

    #[cold]
    fn store_nonce(&self, origin: u32, nonce: &str) {
        if self
            .nonces
            .load()
            .iter()
            .any(|(key, old, _)| *key == origin && &**old == nonce)
        {
            return;
        }
        self.nonces.rcu(|nonces| {
            let mut nonces = Vec::clone(nonces);
            match nonces.iter_mut().find(|(key, ..)| *key == origin) {
                Some((_, old, _)) if &**old == nonce => {}
                Some((_, old, version)) => {
                    *old = nonce.into();
                    *version = version.wrapping_add(1).max(1);
                }
                None => nonces.push((origin, nonce.into(), 1)),
            }
            nonces
        });
    }
}

/// Whether a 401's `WWW-Authenticate` asks for a DPoP nonce (RFC 9449 §9).
pub(crate) fn asks_for_nonce(headers: &HeaderMap) -> bool {
    challenge::names_error(headers, SCHEME, "use_dpop_nonce")
}

/// A hash of an origin, to find its nonce; never zero, and 31 bits (what [`Sent`] holds):
/// enough to tell apart the few origins a layer talks to.
fn origin_key(origin: &str) -> u32 {
    let mut hasher = DefaultHasher::new();
    origin.hash(&mut hasher);
    ((hasher.finish() as u32) & 0x7fff_ffff) | 1
}

/// Counts what goes through.
struct Counted<'a, W> {
    out: &'a mut W,
    written: usize,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl fmt::Debug for RequestDpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestDpop")
            .field("key", self.prover.key())
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn dpop(channel: Option<&str>) -> RequestDpop {
        RequestDpop::new(
            SigningKey::generate_es256().unwrap(),
            channel.map(str::to_owned),
        )
    }

    fn uri_of(dpop: &RequestDpop, request: &impl AuthRequest) -> Option<(String, usize)> {
        let mut out = Vec::new();
        let origin_len = dpop.write_uri(&mut out, request).unwrap()?;
        Some((String::from_utf8(out).unwrap(), origin_len))
    }

    #[test]
    fn htu_is_the_uri_without_query_and_fragment_normalized() {
        let layer = dpop(None);
        let cases = [
            (
                "https://API.Example.com/v1/items?page=2",
                "https://api.example.com/v1/items",
            ),
            ("https://api.example.com:443/x", "https://api.example.com/x"),
            ("http://127.0.0.1:8080/x?y", "http://127.0.0.1:8080/x"),
            ("http://[::1]:9/a/b", "http://[::1]:9/a/b"),
            ("https://api.example.com", "https://api.example.com/"),
        ];
        for (uri, htu) in cases {
            let request = Request::get(uri).body(()).unwrap();
            let (written, origin_len) = uri_of(&layer, &request).unwrap();
            assert_eq!(written, htu, "{uri}");
            assert!(htu.starts_with(&written[..origin_len]));
            assert!(written[origin_len..].starts_with('/'));
        }
        let reqwest = reqwest::Request::new(
            http::Method::POST,
            "https://api.example.com/orders?id=1#frag".parse().unwrap(),
        );
        assert_eq!(
            uri_of(&layer, &reqwest).unwrap().0,
            "https://api.example.com/orders"
        );
    }

    #[test]
    fn a_path_only_request_is_bound_to_the_channel_origin_or_refused() {
        let request = Request::post("/pkg.Service/Method").body(()).unwrap();
        assert_eq!(
            uri_of(&dpop(Some("https://grpc.example.com:8443")), &request)
                .unwrap()
                .0,
            "https://grpc.example.com:8443/pkg.Service/Method"
        );
        let header = HeaderValue::from_static("DPoP t");
        assert!(matches!(
            dpop(None).proof(&request, &header, 1),
            Err(Error::UnknownDestination)
        ));
    }

    #[test]
    fn nonces_are_kept_per_origin_and_replaced_by_newer_ones() {
        let layer = dpop(None);
        let header = HeaderValue::from_static("DPoP the-token");
        let a = Request::get("https://a.example/x").body(()).unwrap();
        let b = Request::get("https://b.example/x").body(()).unwrap();
        let (_, sent_a) = layer.proof(&a, &header, 1).unwrap();
        let (_, sent_b) = layer.proof(&b, &header, 1).unwrap();
        assert_ne!(sent_a.origin(), sent_b.origin());
        let mut headers = HeaderMap::new();
        headers.insert("dpop-nonce", HeaderValue::from_static("n-1"));
        assert!(
            layer.remember_nonce(sent_a, &headers),
            "a nonce the request did not carry"
        );
        assert!(
            layer.remember_nonce(sent_a, &headers),
            "another request sent without it may go again with it"
        );
        let (_, with_n1) = layer.proof(&a, &header, 1).unwrap();
        assert!(
            !layer.remember_nonce(with_n1, &headers),
            "the nonce it carried: going again is futile"
        );
        let nonce_of = |request: &Request<()>| {
            let (proof, _) = layer.proof(request, &header, 1).unwrap();
            let claims = proof
                .to_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .to_owned();
            let claims: serde_json::Value = serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                    .unwrap(),
            )
            .unwrap();
            claims["nonce"].as_str().map(str::to_owned)
        };
        assert_eq!(nonce_of(&a).as_deref(), Some("n-1"));
        assert_eq!(nonce_of(&b), None, "another origin's nonce is not sent");
        headers.insert("dpop-nonce", HeaderValue::from_static("n-2"));
        assert!(layer.remember_nonce(with_n1, &headers));
        assert_eq!(nonce_of(&a).as_deref(), Some("n-2"));
        assert!(
            layer.remember_nonce(with_n1, &HeaderMap::new()),
            "a newer nonce came meanwhile"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any `DPoP-Nonce` a server sends, whatever its bytes or length, never panics; one the
        /// proofs may not carry (too long, or not `NQCHAR`) is ignored, and every proof made
        /// afterwards is a well-formed JWS whose nonce, if any, is acceptable.
        #[test]
        fn arbitrary_nonces_never_panic_and_only_acceptable_ones_are_kept(
            nonce in proptest::collection::vec(proptest::num::u8::ANY, 0..2_000),
        ) {
            let layer = dpop(None);
            let header = HeaderValue::from_static("DPoP the-token");
            let request = Request::get("https://a.example/x").body(()).unwrap();
            let (_, sent) = layer.proof(&request, &header, 1).unwrap();
            let Ok(value) = HeaderValue::from_bytes(&nonce) else {
                return Ok(());
            };
            let mut headers = HeaderMap::new();
            headers.insert("dpop-nonce", value);
            let changed = layer.remember_nonce(sent, &headers);
            let acceptable = std::str::from_utf8(&nonce)
                .is_ok_and(crate::jose::dpop::acceptable_nonce);
            proptest::prop_assert_eq!(changed, acceptable);
            let (proof, _) = layer.proof(&request, &header, 1).unwrap();
            let proof = proof.to_str().unwrap();
            proptest::prop_assert_eq!(proof.split('.').count(), 3);
            proptest::prop_assert!(proof.len() < 2 * crate::jose::dpop::LONGEST_NONCE + 1_024);
        }
    }

    #[test]
    fn ath_is_computed_once_per_token() {
        let layer = dpop(None);
        let first = layer.token_hash(&HeaderValue::from_static("DPoP one"), 1);
        assert_eq!(&*first.1, access_token_hash("one"));
        let again = layer.token_hash(&HeaderValue::from_static("DPoP one"), 1);
        assert!(Arc::ptr_eq(&first, &again), "cached");
        let next = layer.token_hash(&HeaderValue::from_static("DPoP two"), 2);
        assert_eq!(&*next.1, access_token_hash("two"));
    }

    #[test]
    fn a_nonce_challenge_is_a_dpop_challenge_naming_use_dpop_nonce() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="use_dpop_nonce", algs="ES256""#),
        );
        assert!(asks_for_nonce(&headers));
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="invalid_dpop_proof""#),
        );
        assert!(!asks_for_nonce(&headers));
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="use_dpop_nonce""#),
        );
        assert!(!asks_for_nonce(&headers));
    }
}
