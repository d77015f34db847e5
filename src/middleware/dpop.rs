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
    /// The last nonce of each origin that gave one, by a hash of the origin.
    nonces: ArcSwap<Vec<(u64, Arc<str>)>>,
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
    /// `generation`, and the key of its origin for nonces.
    pub(crate) fn proof(
        &self,
        request: &impl AuthRequest,
        authorization: &HeaderValue,
        generation: u64,
    ) -> Result<(HeaderValue, u64), Error> {
        let mut stack = [0u8; URI_ON_STACK];
        let mut cursor = &mut stack[..];
        let mut heap = Vec::new();
        let (uri, origin_len) = match self.write_uri(&mut cursor, request) {
            Ok(Some(origin_len)) => {
                let written = URI_ON_STACK - cursor.len();
                (&stack[..written], origin_len)
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
        let nonce = nonces
            .iter()
            .find(|(key, _)| *key == origin)
            .map(|(_, nonce)| &**nonce);
        let proof = self.prover.proof(ProofFor {
            method: request.method().as_str(),
            uri,
            token_hash: Some(&token_hash.1),
            nonce,
        })?;
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(proof))
            .map_err(|_| Error::Key("a DPoP proof is not a header value".into()))?;
        Ok((value, origin))
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

    /// Keeps the `DPoP-Nonce` of a response from `origin`; `true` if it is new.
    #[inline]
    pub(crate) fn remember_nonce(&self, origin: u64, headers: &HeaderMap) -> bool {
        if headers.is_empty() {
            return false;
        }
        match headers.get(&DPOP_NONCE).and_then(|v| v.to_str().ok()) {
            Some(nonce) => self.store_nonce(origin, nonce),
            None => false,
        }
    }

    #[cold]
    fn store_nonce(&self, origin: u64, nonce: &str) -> bool {
        let mut changed = false;
        self.nonces.rcu(|nonces| {
            changed = false;
            let mut nonces = Vec::clone(nonces);
            match nonces.iter_mut().find(|(key, _)| *key == origin) {
                Some((_, old)) if &**old == nonce => {}
                Some((_, old)) => {
                    *old = nonce.into();
                    changed = true;
                }
                None => {
                    nonces.push((origin, nonce.into()));
                    changed = true;
                }
            }
            nonces
        });
        changed
    }
}

/// Whether a 401's `WWW-Authenticate` asks for a DPoP nonce (RFC 9449 §9).
pub(crate) fn asks_for_nonce(headers: &HeaderMap) -> bool {
    challenge::names_error(headers, SCHEME, "use_dpop_nonce")
}

/// A hash of an origin, to find its nonce.
fn origin_key(origin: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    origin.hash(&mut hasher);
    hasher.finish()
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
