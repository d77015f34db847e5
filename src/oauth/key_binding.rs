//! What a token endpoint's requests carry when the client holds keys (feature `jose`): a
//! client assertion (`private_key_jwt`, RFC 7523) and a DPoP proof (RFC 9449 §5), with the
//! server's DPoP nonce remembered between requests.

use std::sync::{Arc, Mutex};

use http::HeaderMap;
use url::Url;

use crate::{
    Error,
    jose::{
        SigningKey,
        assertion::{self, ASSERTION_TYPE},
        dpop::{DpopProver, ProofFor},
    },
};

/// The `DPoP` request header and the `DPoP-Nonce` response header.
pub(crate) const DPOP: &str = "dpop";
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// A `DPoP` header value, and the nonce it carries.
pub(crate) type EndpointProof = (String, Option<Box<str>>);

/// The keys a token endpoint's requests are signed with.
#[derive(Clone, Default)]
pub(crate) struct KeyBinding {
    /// The client's key and the `aud` of its assertions.
    pub(crate) assertion: Option<(SigningKey, String)>,
    /// DPoP at this endpoint: the prover and the nonce the server gave last.
    pub(crate) dpop: Option<Arc<EndpointDpop>>,
}

/// DPoP at one token endpoint.
pub(crate) struct EndpointDpop {
    pub(crate) prover: DpopProver,
    /// The last `DPoP-Nonce` the server sent. Token requests are few: a lock is fine here.
    nonce: Mutex<Option<Box<str>>>,
}

impl EndpointDpop {
    pub(crate) fn new(key: SigningKey) -> EndpointDpop {
        EndpointDpop {
            prover: DpopProver::new(key),
            nonce: Mutex::new(None),
        }
    }

    /// A proof for a `POST` to `url`, with the server's last nonce, which it returns too.
    fn proof(&self, url: &Url) -> Result<EndpointProof, Error> {
        let mut uri = url.clone();
        uri.set_query(None);
        uri.set_fragment(None);
        let nonce = self.nonce.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let proof = self.prover.proof_for(ProofFor {
            method: "POST",
            uri: uri.as_str(),
            token_hash: None,
            nonce: nonce.as_deref(),
        })?;
        Ok((proof, nonce))
    }
}

impl KeyBinding {
    /// The form parameters of the client assertion, for `client_id`.
    pub(crate) fn assertion_params(
        &self,
        client_id: &str,
    ) -> Result<Option<[(&'static str, String); 2]>, Error> {
        let Some((key, audience)) = &self.assertion else {
            return Ok(None);
        };
        let jwt = assertion::client_assertion(key, client_id, audience)?;
        Ok(Some([
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", jwt),
        ]))
    }

    /// The `DPoP` header value for a request to `url`, if this endpoint uses DPoP, and the
    /// nonce it carries.
    pub(crate) fn proof(&self, url: &Url) -> Result<Option<EndpointProof>, Error> {
        self.dpop.as_ref().map(|dpop| dpop.proof(url)).transpose()
    }

    /// Keeps the nonce a response carries (any response may: RFC 9449 §8.2). `true` if the
    /// server's nonce is now another than `sent`, the one the request carried (from this
    /// response, or from another to a request sent meanwhile).
    pub(crate) fn remember_nonce(&self, headers: &HeaderMap, sent: Option<&str>) -> bool {
        let Some(dpop) = &self.dpop else {
            return false;
        };
        let mut slot = dpop.nonce.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nonce) = headers
            .get(DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .filter(|nonce| crate::jose::dpop::acceptable_nonce(nonce))
        {
            if slot.as_deref() != Some(nonce) {
                *slot = Some(nonce.into());
            }
        }
        slot.as_deref().is_some_and(|nonce| Some(nonce) != sent)
    }

    /// Whether a response asks for the request again with a nonce: a 400 with the error
    /// `use_dpop_nonce` (RFC 9449 §8), and a new nonce to use.
    pub(crate) fn is_nonce_challenge(
        &self,
        status: http::StatusCode,
        body: &[u8],
        new_nonce: bool,
    ) -> bool {
        if self.dpop.is_none() || !new_nonce || status != http::StatusCode::BAD_REQUEST {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody<'a> {
            #[serde(borrow)]
            error: std::borrow::Cow<'a, str>,
        }
        serde_json::from_slice::<ErrorBody<'_>>(body).is_ok_and(|b| b.error == "use_dpop_nonce")
    }

    /// What tells tokens of this binding apart: the thumbprint of the DPoP key (a DPoP-bound
    /// token is useless without it) and of the assertion key.
    pub(crate) fn identity(&self) -> String {
        let mut identity = String::new();
        if let Some((key, audience)) = &self.assertion {
            identity.push_str(&format!(
                " assertion_key={} assertion_aud={audience:?}",
                key.thumbprint()
            ));
        }
        if let Some(dpop) = &self.dpop {
            identity.push_str(&format!(" dpop_jkt={}", dpop.prover.key().thumbprint()));
        }
        identity
    }
}

impl std::fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBinding")
            .field("assertion_key", &self.assertion.as_ref().map(|(k, _)| k))
            .field(
                "assertion_audience",
                &self.assertion.as_ref().map(|(_, a)| a),
            )
            .field("dpop_key", &self.dpop.as_ref().map(|d| d.prover.key()))
            .finish()
    }
}
