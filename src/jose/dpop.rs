//! DPoP proofs (RFC 9449 §4): a JWT signed with the client's key for one HTTP request.
//!
//! Its header (`typ`, `alg`, the public `jwk`) is the same for every proof of a key, so it is
//! encoded once. Each proof then costs its claims (written on the stack), one signature and
//! one string: the proof itself, sized exactly so that it becomes a header value without a copy.

use std::{
    fmt,
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::SigningKey;
use crate::Error;

/// Claims longer than this (a very long URL or nonce) are written on the heap instead.
const CLAIMS_ON_STACK: usize = 1024;

/// The longest `DPoP-Nonce` a server may set: every proof carries it.
pub(crate) const LONGEST_NONCE: usize = 512;

/// Whether a server's `DPoP-Nonce` may go into proofs: 1 to [`LONGEST_NONCE`] characters of
/// RFC 9449's `NQCHAR` (visible ASCII but the double quote and the backslash). Another is
/// ignored, so that a hostile server cannot make every proof as large as a header it sends.
pub(crate) fn acceptable_nonce(nonce: &str) -> bool {
    (1..=LONGEST_NONCE).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// Signs DPoP proofs (RFC 9449 §4) with one key, for requests the layer does not send (a
/// WebSocket upgrade, a client of your own). The layer and the token sources make their own.
///
/// ```
/// use tower_bearer::jose::{DpopProver, SigningKey};
///
/// let prover = DpopProver::new(SigningKey::generate_es256()?);
/// let proof = prover.proof("GET", "https://api.example.com/items", Some("the-token"), None)?;
/// assert_eq!(proof.split('.').count(), 3);
/// # Ok::<(), tower_bearer::Error>(())
/// ```
#[derive(Clone)]
pub struct DpopProver {
    key: SigningKey,
    /// `base64url(header)` and the `.` after it.
    header: Box<str>,
}

/// What one proof is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProofFor<'a> {
    /// The request method (`htm`).
    pub(crate) method: &'a str,
    /// The request URI without query and fragment (`htu`).
    pub(crate) uri: &'a str,
    /// `ath`: the access token's hash ([`access_token_hash`]), on requests to resource servers.
    pub(crate) token_hash: Option<&'a str>,
    /// The server's latest nonce, if it gave one.
    pub(crate) nonce: Option<&'a str>,
}

impl DpopProver {
    /// A prover signing with `key`; its public JWK goes in every proof's header.
    pub fn new(key: SigningKey) -> DpopProver {
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": key.algorithm().name(),
            "jwk": key.bare_jwk(),
        });
        let mut encoded = URL_SAFE_NO_PAD.encode(header.to_string());
        encoded.push('.');
        DpopProver {
            key,
            header: encoded.into(),
        }
    }

    /// The key proofs are signed with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// A fresh proof (new `jti`, `iat` now) for a `method` request to `uri`, which must be
    /// the target URI without query and fragment (`htu`); with `access_token` for requests
    /// that carry one (its hash is the proof's `ath`), and the server's last `nonce`.
    ///
    /// # Errors
    ///
    /// [`Error::Key`] if signing fails.
    pub fn proof(
        &self,
        method: &str,
        uri: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, Error> {
        let token_hash = access_token.map(access_token_hash);
        self.proof_for(ProofFor {
            method,
            uri,
            token_hash: token_hash.as_deref(),
            nonce,
        })
    }

    /// A fresh proof (new `jti`, `iat` now) for `request`.
    pub(crate) fn proof_for(&self, request: ProofFor<'_>) -> Result<String, Error> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| Error::Key("no randomness for a DPoP proof".into()))?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut stack = [0u8; CLAIMS_ON_STACK];
        let mut cursor = &mut stack[..];
        match write_claims(&mut cursor, &jti, iat, request) {
            Ok(()) => {
                let written = CLAIMS_ON_STACK - cursor.len();
                self.sign(stack.get(..written).unwrap_or_default())
            }
            Err(_) => {
                let mut heap = Vec::with_capacity(4 * CLAIMS_ON_STACK);
                write_claims(&mut heap, &jti, iat, request)
                    .map_err(|_| Error::Key("cannot write DPoP claims".into()))?;
                self.sign(&heap)
            }
        }
    }

    fn sign(&self, claims: &[u8]) -> Result<String, Error> {
        let signature_len = self.key.signature_len();
        let mut proof = String::with_capacity(
            self.header.len()
                + base64::encoded_len(claims.len(), false).unwrap_or(0)
                + 1
                + base64::encoded_len(signature_len, false).unwrap_or(0),
        );
        proof.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(claims, &mut proof);
        let signature = self.key.sign(proof.as_bytes())?;
        proof.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut proof);
        Ok(proof)
    }
}

/// `{"jti":...,"htm":...,"htu":...,"iat":...[,"ath":...][,"nonce":...]}`.
fn write_claims(
    out: &mut impl Write,
    jti: &[u8; 16],
    iat: u64,
    request: ProofFor<'_>,
) -> std::io::Result<()> {
    let mut jti_text = [0u8; 22];
    URL_SAFE_NO_PAD
        .encode_slice(jti, &mut jti_text)
        .map_err(std::io::Error::other)?;
    out.write_all(b"{\"jti\":\"")?;
    out.write_all(&jti_text)?;
    out.write_all(b"\",\"htm\":")?;
    json_string(out, request.method)?;
    out.write_all(b",\"htu\":")?;
    json_string(out, request.uri)?;
    write!(out, ",\"iat\":{iat}")?;
    if let Some(ath) = request.token_hash {
        out.write_all(b",\"ath\":")?;
        json_string(out, ath)?;
    }
    if let Some(nonce) = request.nonce {
        out.write_all(b",\"nonce\":")?;
        json_string(out, nonce)?;
    }
    out.write_all(b"}")
}

/// `value` as a JSON string: a server's nonce may hold any character.
fn json_string(out: &mut impl Write, value: &str) -> std::io::Result<()> {
    serde_json::to_writer(out, value).map_err(std::io::Error::other)
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub(crate) fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

impl fmt::Debug for DpopProver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopProver")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
