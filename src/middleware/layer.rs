//! [`AuthLayer`] and its settings.

use std::{fmt, future::Future, num::NonZeroU64, sync::Arc, time::Duration};

use http::HeaderName;
use tokio::{runtime::Handle, time::Instant};
use tower_layer::Layer;

pub use crate::cache::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_EXPIRY_MARGIN, DEFAULT_FETCH_ATTEMPTS,
    DEFAULT_FETCH_TIMEOUT, DEFAULT_LIFETIME, EXPIRY_ALLOWANCE,
};
use crate::{
    AuthService, Error, Stats, Token, TokenSource,
    cache::{Backoff, CacheSettings, TokenCache},
    middleware::handle::ServiceHandle,
    origin::{Origin, OriginPolicy},
};

/// Default for [`AuthLayerBuilder::replay_limit`].
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// The longest a duration setting may be: a year. [`AuthLayerBuilder::build`] refuses longer
/// ones (a slip of the unit more likely than an intent), so no arithmetic on them overflows.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

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
        if !crate::challenge::rejects_token(response, self.scheme_of(proof)) {
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
}

/// Layer that applies [`AuthService`]: every request gets `Authorization: Bearer <token>`.
///
/// All clones of a layer, and every service it makes, share one token cache: one token, at most
/// one fetch in flight.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_bearer::{AuthLayer, StaticToken};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_bearer::BoxError> {
/// let auth = AuthLayer::new(StaticToken::new("abc"));
/// let api = service_fn(|req: Request<String>| async move {
///     let header = req.headers()["authorization"].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(Response::new(header))
/// });
/// let client = ServiceBuilder::new().layer(auth.clone()).service(api);
///
/// let request = Request::get("https://api.example.com/v1/items").body(String::new())?;
/// let response = client.oneshot(request).await?;
/// assert_eq!(response.body(), "Bearer abc");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct AuthLayer {
    state: Arc<LayerState>,
}

impl AuthLayer {
    /// A layer with default settings around `source`.
    pub fn new(source: impl TokenSource) -> Self {
        // The defaults pass every check of `build`.
        AuthLayer::builder(source).assemble(OriginPolicy::default(), None)
    }

    /// Starts configuring a layer around `source`.
    pub fn builder(source: impl TokenSource) -> AuthLayerBuilder {
        AuthLayerBuilder {
            source: Box::new(source),
            settings: CacheSettings::default(),
            header_name: http::header::AUTHORIZATION,
            retry: true,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            origins: Vec::new(),
            channel_origin: None,
            allow_http: false,
            #[cfg(feature = "redis")]
            distributed: None,
        }
    }

    /// A valid token from the shared cache, fetching one if needed, for code outside tower:
    /// the access token, its type, expiry and scope. Never a refresh token: that stays with its
    /// grant and its store.
    ///
    /// Joins a fetch already in flight. Dropping the future cancels nothing for other callers.
    /// The future borrows nothing from `self`, so it can be spawned.
    pub fn token(&self) -> impl Future<Output = Result<Token, Error>> + Send + use<> {
        let cache = Arc::clone(&self.state.cache);
        async move { Ok(cache.acquire().await?.token.clone()) }
    }

    /// Tells the cache that `token` was rejected. If it is still the current token it is
    /// forgotten at once and the next request fetches a new one; if a newer token already
    /// replaced it, nothing happens. Returns `true` if the token was forgotten.
    ///
    /// Unlike a 401 seen by the layer, this call is not subject to the backoff that applies
    /// when fresh tokens keep being rejected: the caller decides.
    pub fn invalidate(&self, token: &Token) -> bool {
        self.state.cache.invalidate_token(token)
    }

    /// Revokes what the layer holds (RFC 7009) and forgets it: the source's refresh token, if it
    /// has one (its store is cleared), and the access token in use. For logout or shutdown.
    ///
    /// Everything is forgotten locally even if the revocation endpoint fails (the error is
    /// returned): the current token, and the result of any fetch that was running, so no token
    /// fetched before `revoke` returns is ever sent. Requests made afterwards fetch anew (a
    /// [`RefreshTokenGrant`](crate::RefreshTokenGrant) then needs a new authorization). Sources
    /// without a revocation endpoint only forget.
    ///
    /// In a fleet (`distributed`, feature `redis`) the token goes for every process: it is
    /// deleted from Redis (before the revocation endpoint is called, and again after, for a
    /// token fetched meanwhile), the fleet's revocation epoch moves on so that no fetch that
    /// began before stores what it brings back, and a notice tells every process to forget
    /// what it holds and what its fetch in flight returns. A process that does not listen for
    /// notices keeps its copy until its next fetch or a 401. If Redis cannot be told,
    /// [`Error::Fleet`] is returned (after everything else was done).
    pub async fn revoke(&self) -> Result<(), Error> {
        let cache = &self.state.cache;
        let current = cache.forget();
        #[cfg(feature = "redis")]
        let before = cache.revoke_shared().await;
        let result = cache
            .source()
            .revoke_boxed(current.as_ref().map(|entry| &entry.token))
            .await;
        // A fetch that started while the revocation ran must not leave its token behind.
        #[cfg(feature = "redis")]
        let after = cache.revoke_shared().await;
        cache.forget();
        #[cfg(feature = "redis")]
        let result = result.and(before).and(after);
        result
    }

    /// The same token cache as a `reqwest_middleware` middleware.
    #[cfg(feature = "reqwest-middleware")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn middleware(&self) -> crate::reqwest_middleware::AuthMiddleware {
        crate::reqwest_middleware::AuthMiddleware::new(Arc::clone(&self.state))
    }

    /// A tower-http `FollowRedirect` policy that removes this layer's token header from hops
    /// to other origins, for a follower placed inside the layer; see [`crate::redirect`].
    #[cfg(feature = "follow-redirect")]
    #[cfg_attr(docsrs, doc(cfg(feature = "follow-redirect")))]
    pub fn redirect_filter(&self) -> crate::redirect::FilterToken {
        crate::redirect::FilterToken::new(self.state.header_name.clone())
    }

    /// A redirect policy for a `reqwest::Client` under this layer: it refuses to follow a
    /// redirect to another origin (or from `https` to `http`) when the token or a DPoP proof
    /// goes in a header reqwest does not remove on such a hop (a custom
    /// [`header_name`](AuthLayerBuilder::header_name), `DPoP`); the redirect response goes to
    /// the caller instead. See [`crate::reqwest_redirect`].
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn reqwest_redirect_policy(&self) -> reqwest::redirect::Policy {
        #[cfg(feature = "jose")]
        let dpop = self.state.dpop.is_some();
        #[cfg(not(feature = "jose"))]
        let dpop = false;
        let carried_elsewhere = self.state.header_name != http::header::AUTHORIZATION || dpop;
        crate::reqwest_redirect::policy(carried_elsewhere)
    }

    /// The layer's token cache, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn cache(&self) -> &Arc<TokenCache> {
        &self.state.cache
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> Stats {
        let cache = &self.state.cache;
        let mut stats = cache.counters.snapshot();
        if let Some(entry) = cache.peek() {
            let now = Instant::now();
            stats.token_age = Some(now.saturating_duration_since(entry.fetched_at));
            stats.token_usable_for = Some(entry.usable_until.saturating_duration_since(now));
        }
        stats
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, Arc::new(ServiceHandle::new(Arc::clone(&self.state))))
    }
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

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.state, f)
    }
}

/// Settings of an [`AuthLayer`]; made by [`AuthLayer::builder`], checked by
/// [`build`](Self::build).
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`expiry_margin`](Self::expiry_margin) | 30 s | the refresh target: a token should be replaced this long before it expires (at most half its lifetime); it is still sent until [`EXPIRY_ALLOWANCE`] before expiry |
/// | [`default_lifetime`](Self::default_lifetime) | 1 h | lifetime assumed when the endpoint sends no `expires_in` |
/// | [`fetch_timeout`](Self::fetch_timeout) | 30 s | longest a token fetch (all its attempts) may take before waiting callers get [`Error::Timeout`] |
/// | [`fetch_attempts`](Self::fetch_attempts) | 3 | token requests one fetch may make when they fail transiently |
/// | [`retry_unauthorized`](Self::retry_unauthorized) | on | after a 401, fetch a new token and resend once when the body allows |
/// | [`refresh_ahead`](Self::refresh_ahead) | on | refresh in the background in the last fifth of the time before the refresh target (at most 5 min), jittered |
/// | [`backoff`](Self::backoff) | 200 ms, 30 s | exponential backoff with jitter after failed fetches and after fresh tokens rejected in a row; `Retry-After` honoured |
/// | [`replay_limit`](Self::replay_limit) | 64 KiB | most bytes of a streaming body kept for a resend |
/// | [`scheme`](Self::scheme) | `Bearer` | the word before the token in the header |
/// | [`header_name`](Self::header_name) | `Authorization` | the header the token goes in |
/// | [`origin`](Self::origin) | every origin | limits where the token goes |
/// | [`channel_origin`](Self::channel_origin) | none: refused | where requests addressed by path alone (tonic) go |
/// | [`allow_http`](Self::allow_http) | off | plain `http` to non-loopback hosts |
/// | [`max_token_uses`](Self::max_token_uses) | no limit | requests per token, for use-limited tokens |
/// | [`runtime`](Self::runtime) | the caller's | the Tokio runtime fetches run on |
/// | [`name`](Self::name) | `default` | labels the layer's metrics and traces |
#[must_use]
pub struct AuthLayerBuilder {
    source: Box<dyn crate::source::DynTokenSource>,
    settings: CacheSettings,
    header_name: HeaderName,
    retry: bool,
    replay_limit: usize,
    /// As given; parsed by `build`.
    origins: Vec<String>,
    channel_origin: Option<String>,
    allow_http: bool,
    /// Checked and keyed by `build`.
    #[cfg(feature = "redis")]
    distributed: Option<crate::distributed::RedisCache>,
}

impl AuthLayerBuilder {
    /// Shares tokens with every process that uses the same Redis, key prefix, fleet key and
    /// source identity: one token fetch per token lifetime for the whole fleet (see
    /// [`crate::distributed`]). `build` fails if the cache has no encryption key (and was not
    /// told to store plain text), if the source cannot tell its tokens from another source's
    /// and the cache has no [`fleet_key`](crate::distributed::RedisCache::fleet_key), or with
    /// [`max_token_uses`](Self::max_token_uses).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn distributed(mut self, cache: crate::distributed::RedisCache) -> Self {
        self.distributed = Some(cache);
        self
    }

    /// The refresh target: a token should be replaced this long before it expires. Clamped to
    /// half the token's lifetime, so a short-lived token is not refreshed on arrival.
    ///
    /// Reaching the target does not end the token's use: until [`EXPIRY_ALLOWANCE`] before its
    /// expiry (at most a tenth of its lifetime) it is still sent while the refresh runs or the
    /// endpoint fails, so an outage shorter than the margin fails no request. Such requests are
    /// counted in [`Stats::served_stale`].
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.settings.expiry_margin = margin;
        self
    }

    /// The lifetime assumed for a token whose response had no `expires_in`. Finite, so such a
    /// token is still renewed now and then; a 401 renews it at once in any case. Must not be
    /// zero.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.default_lifetime = lifetime;
        self
    }

    /// The longest a token fetch may run, all its attempts together. Every caller waiting on it
    /// then gets [`Error::Timeout`], and the next fetch waits for the backoff. Each waiter also
    /// gives up by itself one second after this, whichever runtime runs the fetch. Must not be
    /// zero.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.fetch_timeout = timeout;
        self
    }

    /// How many token requests one fetch may make when they fail transiently (a connection
    /// error, 5xx, 429, `temporarily_unavailable`; the source decides, see
    /// [`TokenSource::retry_within_fetch`]), pausing 100-200 ms, then 200-400 ms, ... or for the
    /// endpoint's `Retry-After`, within the [fetch timeout](Self::fetch_timeout). A blip of the
    /// token endpoint then costs the waiting callers latency, not errors. `1` turns retries off;
    /// `0` is refused. Default: 3.
    pub fn fetch_attempts(mut self, attempts: u32) -> Self {
        self.settings.fetch_attempts = attempts;
        self
    }

    /// Whether a request rejected with 401 is resent once with a new token (when its body can
    /// be replayed). With it off, the 401 still makes the next request use a new token, and
    /// requests skip the copy of their head that a resend needs.
    pub fn retry_unauthorized(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Whether to refresh the token in the background before its refresh target: during the
    /// last fifth of the time before it (at most 5 minutes), from a random point in the first
    /// half of that window so that a fleet of processes spreads its refreshes. Requests keep
    /// using the current token meanwhile, so in steady state no request waits for a fetch. On
    /// by default.
    ///
    /// Off, the refresh starts at the target itself, still in the background: requests keep
    /// sending the token until its expiry less [`EXPIRY_ALLOWANCE`]. If the refresh fails, it is
    /// tried again after the [backoff](Self::backoff) while the token is still sent.
    pub fn refresh_ahead(mut self, on: bool) -> Self {
        self.settings.refresh_ahead = on;
        self
    }

    /// Backoff after failed fetches: after the `n`th failure in a row, no new fetch goes out for
    /// a random time between half and all of `min(max, base * 2^(n-1))`, or for the endpoint's
    /// `Retry-After` (on 429 and 503) if longer. Meanwhile callers with no usable token fail
    /// fast with the last error; callers with one keep sending it.
    ///
    /// The same steps space the fetches when the API keeps rejecting fresh tokens: the first
    /// rejected token is replaced at once, each next one is kept (its requests get their 401)
    /// for the next step before another fetch. Defaults: 200 ms and 30 s.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff {
            base,
            max: max.max(base),
        };
        self
    }

    /// Seeds the jitter of backoff and refresh-ahead, for reproducible tests.
    #[doc(hidden)]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.settings.jitter_seed = Some(seed);
        self
    }

    /// The most bytes of a request body kept so the request can be resent after a 401: a
    /// streaming body (see [`ReplayableBody`](crate::replay::ReplayableBody)) that streams more,
    /// or a `String` or `Vec<u8>` body that is longer, is sent once and not resent. Bodies of
    /// shared bytes (`Bytes`, `Full<Bytes>`, static slices) are resent whatever their size: their
    /// copy is a reference count. See the table in [`crate::replay`].
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Limits the token to requests for `origin` (`scheme://host[:port]`); repeatable. Requests
    /// to other origins pass through untouched. Unset, every request with an absolute `https`
    /// URL (or `http` to loopback) gets the token; see [`crate::origin`]. An origin that is not
    /// an `http` or `https` URL without a path makes [`build`](Self::build) fail.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Where the inner service sends requests addressed by path alone: a tonic `Channel`
    /// (give it the endpoint's origin, such as `https://api.example.com:443`) or a hyper
    /// connection. Such requests are then judged as if they went there, once, at
    /// [`build`](Self::build): plain `http` to a host that is not a loopback address makes
    /// `build` fail with [`Error::InsecureRequest`] (unless [`allow_http`](Self::allow_http)),
    /// and an origin outside those given with [`origin`](Self::origin) sends them without the
    /// token. Unset, a request addressed by path alone fails with
    /// [`Error::UnknownDestination`] rather than send the token to a destination the layer
    /// cannot see.
    pub fn channel_origin(mut self, origin: impl Into<String>) -> Self {
        self.channel_origin = Some(origin.into());
        self
    }

    /// Allows sending the token over plain `http` (and `ws`) to hosts that are not loopback
    /// addresses. Without it such requests fail with [`Error::InsecureRequest`]; loopback
    /// addresses (`127.0.0.0/8`, `[::1]`, `localhost`) never need it. Schemes other than
    /// `https`, `wss`, `http` and `ws` never get the token.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// The header the token goes in: `Authorization` unless set. For an API that wants, say,
    /// `X-Api-Token: <token>`, set the header and an empty [`scheme`](Self::scheme).
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header_name = name;
        self
    }

    /// The authentication scheme written before the token: `Bearer` unless set; empty for the
    /// token alone. Some APIs want it spelled otherwise (Checkbook's documentation writes
    /// `bearer`). A scheme that is not an HTTP token (letters, digits and
    /// ``!#$%&'*+-.^_`|~``) makes [`build`](Self::build) fail.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.settings.scheme = Arc::from(scheme.into());
        self
    }

    /// Use each token for at most `uses` requests, then fetch a new one: for APIs whose tokens
    /// are good for a limited number of calls (Checkbook's `single-use` scope is `1`). Fetches
    /// stay single-flight: one fetch per `uses` requests, never more. `0` means no limit. Not
    /// with `distributed` (feature `redis`): each process would spend the whole budget.
    pub fn max_token_uses(mut self, uses: u32) -> Self {
        self.settings.max_uses = (uses > 0).then_some(uses);
        self
    }

    /// Names the layer: the `layer` label of its metrics and the `layer` field of its tracing
    /// spans and events (see [`crate::stats`]), so that several layers in one process (one per
    /// API, say) report apart. `default` unless set; an empty name makes
    /// [`build`](Self::build) fail.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = crate::stats::LayerName::new(&name.into());
        self
    }

    /// Runs every token fetch on this runtime instead of the caller's. For clients driven
    /// from several runtimes, or from a runtime that is not always driven (a synchronous
    /// wrapper's `block_on` on a helper thread): a fetch then completes as long as this runtime
    /// runs, and callers outside any runtime can wait on it too. The runtime needs timers.
    pub fn runtime(mut self, runtime: Handle) -> Self {
        self.settings.runtime = Some(runtime);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a scheme that is not an HTTP token, an origin that is not
    /// `scheme://host[:port]`, a zero fetch timeout, default lifetime or attempt count, a
    /// duration setting longer than a year; [`Error::NoTimer`] for a [`runtime`](Self::runtime) without timers.
    pub fn build(self) -> Result<AuthLayer, Error> {
        let scheme = &*self.settings.scheme;
        if !scheme.bytes().all(crate::challenge::is_tchar) {
            return Err(Error::config(format!(
                "authorization scheme {scheme:?} is not an HTTP token"
            )));
        }
        if self.settings.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be longer than zero"));
        }
        if self.settings.default_lifetime.is_zero() {
            return Err(Error::config("default_lifetime must be longer than zero"));
        }
        if self.settings.name.as_str().is_empty() {
            return Err(Error::config("a layer's name must not be empty"));
        }
        if self.settings.fetch_attempts == 0 {
            return Err(Error::config("fetch_attempts must be at least 1"));
        }
        let durations = [
            ("expiry_margin", self.settings.expiry_margin),
            ("default_lifetime", self.settings.default_lifetime),
            ("fetch_timeout", self.settings.fetch_timeout),
            ("backoff", self.settings.backoff.max),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| *d > LONGEST_SETTING) {
            return Err(Error::config(format!("{name} must be at most a year")));
        }
        if let Some(runtime) = &self.settings.runtime {
            let _entered = runtime.enter();
            if !crate::deadline::has_timers() {
                return Err(Error::NoTimer);
            }
        }
        let origins = self
            .origins
            .iter()
            .map(|raw| Origin::parse(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = self
            .channel_origin
            .as_deref()
            .map(Origin::parse)
            .transpose()?;
        let policy = OriginPolicy::new(origins, self.allow_http, channel.clone())?;
        #[cfg(feature = "redis")]
        let mut this = self;
        #[cfg(not(feature = "redis"))]
        let this = self;
        #[cfg(feature = "redis")]
        if let Some(cache) = this.distributed.take() {
            if this.settings.max_uses.is_some() {
                // Each process would spend the whole budget of the one token they share.
                return Err(Error::config(
                    "max_token_uses cannot be combined with distributed: every process would \
                     spend the whole use budget of the token they share",
                ));
            }
            let fleet = cache.into_fleet(this.source.identity().as_deref())?;
            this.settings.shared = Some(Arc::new(fleet));
        }
        #[cfg(feature = "jose")]
        if this.header_name != http::header::AUTHORIZATION && this.source.dpop_key().is_some() {
            return Err(Error::config(
                "a DPoP-bound token goes in the Authorization header; do not set header_name \
                 with a source that has a DPoP key",
            ));
        }
        Ok(this.assemble(policy, channel.as_ref()))
    }

    /// The layer: the checks of `build` passed (or, from `AuthLayer::new`, the defaults did).
    /// `channel` is where requests addressed by path alone go.
    #[cfg_attr(not(feature = "jose"), allow(unused_mut, unused_variables))]
    fn assemble(mut self, policy: OriginPolicy, channel: Option<&Origin>) -> AuthLayer {
        #[cfg(feature = "jose")]
        let dpop = self.source.dpop_key().map(|key| {
            self.settings.dpop = true;
            crate::middleware::dpop::RequestDpop::new(key, channel.map(Origin::serialize))
        });
        AuthLayer {
            state: Arc::new(LayerState {
                cache: TokenCache::new(self.source, self.settings),
                policy,
                header_name: self.header_name,
                retry: self.retry,
                replay_limit: self.replay_limit,
                #[cfg(feature = "jose")]
                dpop,
            }),
        }
    }
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("source", &self.source.type_name())
            .field("settings", &self.settings)
            .field("header_name", &self.header_name)
            .field("retry", &self.retry)
            // Counted, not shown: an origin given by mistake with credentials is refused by
            // `build`, and must not reach a log before that.
            .field("origins", &self.origins.len())
            .field("channel_origin", &self.channel_origin.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticToken;

    #[test]
    fn the_defaults_pass_every_check() {
        assert!(AuthLayer::builder(StaticToken::new("t")).build().is_ok());
    }

    #[test]
    fn bad_settings_fail_at_build_before_any_fetch() {
        let build = |f: fn(AuthLayerBuilder) -> AuthLayerBuilder| {
            f(AuthLayer::builder(StaticToken::new("t")))
                .build()
                .unwrap_err()
        };
        let err = build(|b| b.scheme("Bear er"));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("scheme")),
            "{err}"
        );
        let err = build(|b| b.origin("https://api.example.com/path"));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("origin")),
            "{err}"
        );
        let err = build(|b| b.fetch_timeout(Duration::ZERO));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("fetch_timeout")),
            "{err}"
        );
        let err = build(|b| b.default_lifetime(Duration::ZERO));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("default_lifetime")),
            "{err}"
        );
        let err = build(|b| b.fetch_attempts(0));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("fetch_attempts")),
            "{err}"
        );
        for configure in [
            (|b| b.fetch_timeout(Duration::MAX)) as fn(AuthLayerBuilder) -> AuthLayerBuilder,
            |b| b.expiry_margin(Duration::MAX),
            |b| b.default_lifetime(Duration::MAX),
            |b| b.backoff(Duration::MAX, Duration::MAX),
            |b| b.backoff(Duration::ZERO, LONGEST_SETTING + Duration::from_nanos(1)),
        ] {
            let err = build(configure);
            assert!(
                matches!(&err, Error::Config(m) if m.contains("at most a year")),
                "{err}"
            );
        }
        let err = build(|b| b.name(""));
        assert!(
            matches!(&err, Error::Config(m) if m.contains("name")),
            "{err}"
        );
    }

    #[test]
    fn a_runtime_without_timers_is_refused_at_build() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = AuthLayer::builder(StaticToken::new("t"))
            .runtime(runtime.handle().clone())
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::NoTimer), "{err:?}");
    }
}
