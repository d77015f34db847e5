//! What every clone of a layer, and every service and response future it made, share
//! ([`LayerState`]): the token cache, the request-side settings, and the judgement of each
//! response ([`Verdict`]) from what its request was sent with ([`Proof`], [`Mark`], [`Sent`]).

use std::{fmt, num::NonZeroU64, sync::Arc};

use http::HeaderName;

use crate::{Error, cache::TokenCache, origin::OriginPolicy};

/// What every clone of a layer, and every service and response future it made, share: the
/// token cache and the request-side settings.
pub(crate) struct LayerState {
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) policy: OriginPolicy,
    pub(crate) header_name: HeaderName,
    pub(crate) retry: bool,
    pub(crate) replay_limit: usize,
    /// Proofs for requests that carry DPoP-bound tokens, if the source has a DPoP key.
    #[cfg(feature = "jose")]
    pub(crate) dpop: Option<crate::middleware::dpop::RequestDpop>,
}

/// What a request was sent with, beyond its token's generation: `None` for a bearer token a
/// response already accepted, the common case, which costs the response path one test.
pub(crate) type Proof = Option<Sent>;

/// What a request's [`Proof`] gains from the token it was sent with: nothing, or
/// [`Sent::REPORT`] when no response has accepted the token yet. One word, merged with the
/// proof by one `or`, so that the requests of an accepted token pay nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark(u64);

impl Mark {
    /// Nothing to add.
    pub(crate) const NONE: Mark = Mark(0);

    /// Asks the answer whether it accepts the token, if `report`.
    #[inline(always)]
    pub(crate) fn reporting(report: bool) -> Mark {
        Mark(if report { Sent::REPORT } else { 0 })
    }

    /// `proof` with this mark.
    #[inline(always)]
    pub(crate) fn on(self, proof: Proof) -> Proof {
        NonZeroU64::new(proof.map_or(0, |sent| sent.0.get()) | self.0).map(Sent)
    }
}

/// What a request was sent with, in one word that is never zero: for a DPoP-bound token, the
/// key of its origin (bits 32 to 62, never zero) and the version of that origin's nonce its
/// proof carried (bits 0 to 31, 0 for none); and, for a token no response has accepted yet,
/// that its answer should say whether it does (bit 63).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent(NonZeroU64);

impl Sent {
    const REPORT: u64 = 1 << 63;

    /// A DPoP request to the origin of key `origin` (31 bits, not zero) with the nonce of
    /// `version`.
    #[cfg_attr(not(feature = "jose"), allow(dead_code))]
    pub(crate) fn dpop(origin: u32, version: u32) -> Sent {
        let packed = (u64::from(origin & 0x7fff_ffff) << 32) | u64::from(version);
        Sent(NonZeroU64::new(packed).unwrap_or(NonZeroU64::MIN))
    }

    /// Whether the answer should say whether the token was accepted.
    fn reports(self) -> bool {
        self.0.get() & Sent::REPORT != 0
    }

    /// The key of the DPoP request's origin; 0 for a bearer request.
    pub(crate) fn origin(self) -> u32 {
        ((self.0.get() >> 32) as u32) & 0x7fff_ffff
    }

    /// The version of the origin's nonce the DPoP proof carried.
    #[cfg_attr(not(feature = "jose"), allow(dead_code))]
    pub(crate) fn version(self) -> u32 {
        self.0.get() as u32
    }

    /// Whether it went with a DPoP proof.
    #[cfg_attr(not(feature = "jose"), allow(dead_code))]
    fn is_dpop(self) -> bool {
        self.origin() != 0
    }
}

impl LayerState {
    /// Puts `header` (the token of `generation`) on `request`, and for a DPoP-bound token a
    /// fresh proof.
    ///
    /// # Errors
    ///
    /// The proof could not be made: no destination to bind it to, or signing failed.
    #[inline(always)]
    pub(crate) fn attach<R: crate::message::AuthRequest>(
        &self,
        request: &mut R,
        header: http::HeaderValue,
        generation: u64,
    ) -> Result<Proof, Error> {
        #[cfg(feature = "jose")]
        if self.dpop.is_some() {
            return self.attach_dpop(request, header, generation);
        }
        let _ = generation;
        request
            .headers_mut()
            .insert(self.header_name.clone(), header);
        Ok(None)
    }

    /// [`attach`](Self::attach) for a layer whose source has a DPoP key: out of line, so that a
    /// bearer layer's requests pay one check for it.
    #[cfg(feature = "jose")]
    #[inline(never)]
    fn attach_dpop<R: crate::message::AuthRequest>(
        &self,
        request: &mut R,
        header: http::HeaderValue,
        generation: u64,
    ) -> Result<Proof, Error> {
        let dpop = self.dpop.as_ref().ok_or(Error::Aborted)?;
        if !header
            .as_bytes()
            .starts_with(crate::middleware::dpop::SCHEME.as_bytes())
        {
            // A bearer token from a DPoP source (the server did not bind it): no proof.
            request
                .headers_mut()
                .insert(self.header_name.clone(), header);
            return Ok(None);
        }
        let (proof, sent) = dpop.proof(request, &header, generation)?;
        let headers = request.headers_mut();
        headers.insert(self.header_name.clone(), header);
        headers.insert(crate::middleware::dpop::DPOP.clone(), proof);
        Ok(Some(sent))
    }

    /// Keeps the `DPoP-Nonce` of a response to a request sent with `proof`; `true` if its
    /// origin now has another nonce than the one the request carried.
    #[inline(always)]
    pub(crate) fn remember_nonce(&self, proof: Proof, headers: &http::HeaderMap) -> bool {
        #[cfg(feature = "jose")]
        if let (Some(dpop), Some(sent)) = (&self.dpop, proof.filter(|s| s.is_dpop())) {
            return dpop.remember_nonce(sent, headers);
        }
        let _ = (proof, headers);
        false
    }

    /// What a request sent with `sent` (and the token of `generation`) learns from a response
    /// that did not reject the token: the origin's DPoP nonce, and whether the token was
    /// accepted ([`accepts_token`](crate::challenge::accepts_token); if `watched`, the
    /// stream's trailers say it later). Out of line: the common request (a bearer token
    /// already accepted) has nothing to learn.
    #[cold]
    #[inline(never)]
    pub(crate) fn answered(
        &self,
        sent: Sent,
        response: &impl crate::message::AuthResponse,
        generation: u64,
        watched: bool,
    ) {
        self.remember_nonce(Some(sent), response.headers());
        if sent.reports() && !watched && crate::challenge::accepts_token(response) {
            self.cache.accept(generation);
        }
    }

    /// What a request sent with `proof` and `entry`'s token learns from its response, for
    /// callers that are not a [`ResponseFuture`](crate::future::ResponseFuture) (they see no
    /// trailers): the origin's DPoP nonce, and whether the token was accepted.
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn learn(
        &self,
        proof: Proof,
        entry: &crate::cache::Entry,
        response: &impl crate::message::AuthResponse,
    ) {
        if let Some(sent) = Mark::reporting(!entry.accepted).on(proof) {
            self.answered(sent, response, entry.generation, false);
        }
    }

    /// The error a [`Verdict::StepUp`] response to a request sent with `proof` becomes.
    ///
    /// `acr_values` is server text: it is kept only if it can be checked against the token the
    /// request carried (still the current one, of `generation`) and holds no piece of it, so an
    /// API that echoes the token into its challenge puts no secret in the error.
    pub(crate) fn step_up_error(
        &self,
        response: &impl crate::message::AuthResponse,
        generation: u64,
        proof: Proof,
    ) -> Error {
        let (acr_values, max_age) = crate::challenge::insufficient_user_authentication(
            response.headers(),
            self.scheme_of(proof),
        )
        .unwrap_or_default();
        let sent = self
            .cache
            .peek()
            .filter(|entry| entry.generation == generation);
        let acr_values = acr_values.filter(|text| {
            sent.as_ref().is_some_and(|entry| {
                !crate::scrub::Carried::of([entry.token.access_token().secret()]).appears_in(text)
            })
        });
        Error::InsufficientUserAuthentication {
            acr_values,
            max_age,
        }
    }

    /// The scheme a request sent with `proof` carried its token with.
    fn scheme_of(&self, proof: Proof) -> &str {
        #[cfg(feature = "jose")]
        if proof.is_some_and(Sent::is_dpop) {
            return crate::middleware::dpop::SCHEME;
        }
        let _ = proof;
        &self.cache.settings().scheme
    }

    /// What to do with a response that may reject the token of `generation` it carried
    /// ([`may_reject`](crate::challenge::may_reject) said so). Tells the cache of a rejection
    /// (it forgets the token if it is still current), and keeps a DPoP nonce.
    #[cold]
    pub(crate) fn judge(
        &self,
        response: &impl crate::message::AuthResponse,
        generation: u64,
        proof: Proof,
    ) -> Verdict {
        let new_nonce = self.remember_nonce(proof, response.headers());
        #[cfg(feature = "jose")]
        if proof.is_some_and(Sent::is_dpop)
            && response.status() == http::StatusCode::UNAUTHORIZED
            && crate::middleware::dpop::asks_for_nonce(response.headers())
        {
            // Not a rejection of the token: the same token goes again with the nonce, unless
            // the request already carried the origin's latest (it would be refused again).
            return if new_nonce {
                Verdict::Resend
            } else {
                Verdict::Futile
            };
        }
        let _ = new_nonce;
        let scheme = self.scheme_of(proof);
        if response.status() == http::StatusCode::FORBIDDEN {
            let Some(scope) = crate::challenge::insufficient_scope(response.headers(), scheme)
            else {
                return Verdict::Answer;
            };
            return match self.cache.widen_scope(&scope, generation) {
                crate::cache::Widening::Widened | crate::cache::Widening::Newer => Verdict::Resend,
                crate::cache::Widening::Refused => Verdict::Futile,
            };
        }
        if response.status() == http::StatusCode::UNAUTHORIZED
            && crate::challenge::insufficient_user_authentication(response.headers(), scheme)
                .is_some()
        {
            return Verdict::StepUp;
        }
        if !crate::challenge::rejects_token(response, scheme) {
            return Verdict::Answer;
        }
        if self.cache.reject(generation) == crate::cache::Rejection::Kept {
            // The same token would be rejected again.
            return Verdict::Futile;
        }
        Verdict::Resend
    }
}

/// What [`LayerState::judge`] decided about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It goes to the caller: it did not reject the token.
    Answer,
    /// Send the request again, if its body allows, with the current token (a new one after a
    /// rejection, the same one after a nonce challenge).
    Resend,
    /// It goes to the caller: sending again would meet the same answer.
    Futile,
    /// A 401 asking for a user authentication a machine client cannot give (RFC 9470): an
    /// [`Error::InsufficientUserAuthentication`] instead of the response.
    StepUp,
}

impl fmt::Debug for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("name", &self.cache.counters.name.as_str())
            .field("cache", &self.cache)
            .field("header_name", &self.header_name)
            .field("retry", &self.retry)
            .field("replay_limit", &self.replay_limit)
            .finish_non_exhaustive()
    }
}
