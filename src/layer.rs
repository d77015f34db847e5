//! [`AuthLayer`] and its settings.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tower_layer::Layer;

use crate::{
    AuthService, Error, Stats, Token, TokenSource,
    cache::{Backoff, CacheSettings, TokenCache},
    origin::{Origin, OriginPolicy},
};

/// Default for [`AuthLayerBuilder::expiry_margin`].
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Default for [`AuthLayerBuilder::default_lifetime`].
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Default for [`AuthLayerBuilder::replay_limit`].
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;
/// Default for the first step of [`AuthLayerBuilder::backoff`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Default for the longest step of [`AuthLayerBuilder::backoff`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default for [`AuthLayerBuilder::fetch_timeout`].
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

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
/// let response = client.oneshot(Request::new(String::new())).await?;
/// assert_eq!(response.body(), "Bearer abc");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct AuthLayer {
    cache: Arc<TokenCache>,
    retry: bool,
    replay_limit: usize,
    policy: Arc<OriginPolicy>,
}

impl AuthLayer {
    /// A layer with default settings around `source`.
    pub fn new(source: impl TokenSource) -> Self {
        AuthLayer::builder(source).build()
    }

    /// Starts configuring a layer around `source`.
    pub fn builder(source: impl TokenSource) -> AuthLayerBuilder {
        AuthLayerBuilder {
            source: Box::new(source),
            settings: CacheSettings {
                expiry_margin: DEFAULT_EXPIRY_MARGIN,
                default_lifetime: DEFAULT_LIFETIME,
                fetch_timeout: DEFAULT_FETCH_TIMEOUT,
                scheme: Arc::from("Bearer"),
                header_name: http::header::AUTHORIZATION,
                max_uses: None,
                refresh_ahead: true,
                backoff: Backoff {
                    base: DEFAULT_BACKOFF_BASE,
                    max: DEFAULT_BACKOFF_MAX,
                },
                jitter_seed: None,
            },
            retry: true,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            policy: OriginPolicy::default(),
        }
    }

    /// A valid token from the shared cache, fetching one if needed, for code outside tower.
    ///
    /// Joins a fetch already in flight. Dropping the future cancels nothing for other callers.
    /// The future borrows nothing from `self`, so it can be spawned.
    pub fn token(&self) -> impl Future<Output = Result<Token, Error>> + Send + use<> {
        let cache = Arc::clone(&self.cache);
        async move { Ok(cache.acquire().await?.token.clone()) }
    }

    /// Tells the cache that `token` was rejected. If it is still the current token it is
    /// forgotten and the next request fetches a new one; if a newer token already replaced it,
    /// nothing happens. Returns `true` if the token was forgotten.
    pub fn invalidate(&self, token: &Token) -> bool {
        self.cache.invalidate_token(token)
    }

    /// Revokes what the layer holds (RFC 7009) and forgets it: the source's refresh token, if it
    /// has one (its store is cleared), and the access token in use. For logout or shutdown.
    ///
    /// The tokens are forgotten locally even if the revocation endpoint fails; the error is
    /// returned. Sources without a revocation endpoint only forget.
    pub async fn revoke(&self) -> Result<(), Error> {
        let current = self.cache.take();
        let token = current.as_ref().map(|entry| &entry.token);
        self.cache.source().revoke_boxed(token).await
    }

    /// The same token cache as a `reqwest_middleware` middleware.
    #[cfg(feature = "reqwest-middleware")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn middleware(&self) -> crate::middleware::AuthMiddleware {
        crate::middleware::AuthMiddleware::new(
            Arc::clone(&self.cache),
            self.retry,
            Arc::clone(&self.policy),
        )
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> Stats {
        let mut stats = self.cache.counters.snapshot();
        if let Some(entry) = self.cache.peek() {
            let now = Instant::now();
            stats.token_age = Some(now.saturating_duration_since(entry.fetched_at));
            stats.token_usable_for = Some(entry.valid_until.saturating_duration_since(now));
        }
        stats
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(
            inner,
            Arc::clone(&self.cache),
            self.retry,
            self.replay_limit,
            Arc::clone(&self.policy),
        )
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .field("replay_limit", &self.replay_limit)
            .finish()
    }
}

/// Settings of an [`AuthLayer`]; made by [`AuthLayer::builder`].
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`expiry_margin`](Self::expiry_margin) | 30 s | a token is replaced this long before it expires (at most half its lifetime) |
/// | [`default_lifetime`](Self::default_lifetime) | 1 h | lifetime assumed when the endpoint sends no `expires_in` |
/// | [`fetch_timeout`](Self::fetch_timeout) | 30 s | longest a token fetch may take before callers get [`Error::Timeout`] |
/// | [`retry_unauthorized`](Self::retry_unauthorized) | on | after a 401, fetch a new token and resend once when the body allows |
/// | [`refresh_ahead`](Self::refresh_ahead) | on | refresh in the background in the last fifth of a token's life (at most 5 min), jittered |
/// | [`backoff`](Self::backoff) | 200 ms, 30 s | exponential backoff with full jitter after failed fetches; `Retry-After` honoured |
/// | [`replay_limit`](Self::replay_limit) | 64 KiB | most bytes of a streaming body kept for a resend |
/// | [`scheme`](Self::scheme) | `Bearer` | the word before the token in the header |
/// | [`header_name`](Self::header_name) | `Authorization` | the header the token goes in |
/// | [`origin`](Self::origin) | every origin | limits where the token goes |
/// | [`allow_http`](Self::allow_http) | off | plain `http` to non-loopback hosts |
/// | [`max_token_uses`](Self::max_token_uses) | no limit | requests per token, for use-limited tokens |
#[must_use]
pub struct AuthLayerBuilder {
    source: Box<dyn crate::source::DynTokenSource>,
    settings: CacheSettings,
    retry: bool,
    replay_limit: usize,
    policy: OriginPolicy,
}

impl AuthLayerBuilder {
    /// Treat a token as expired this long before its real expiry, so that a request never
    /// leaves with a token that expires on the way. Clamped to half the token's lifetime, so a
    /// short-lived token is still used for the first half of its life.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.settings.expiry_margin = margin;
        self
    }

    /// The lifetime assumed for a token whose response had no `expires_in`. Finite, so such a
    /// token is still renewed now and then; a 401 renews it at once in any case.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.default_lifetime = lifetime;
        self
    }

    /// The longest a token fetch may run. Every caller waiting on it then gets
    /// [`Error::Timeout`], and the next caller starts a new fetch.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.fetch_timeout = timeout;
        self
    }

    /// Whether a request rejected with 401 is resent once with a new token (when its body can
    /// be replayed). With it off, the 401 still makes the next request use a new token, and
    /// requests skip the copy of their head that a resend needs.
    pub fn retry_unauthorized(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// Whether to refresh the token in the background before it stops being used: during the
    /// last fifth of its useful life (at most 5 minutes), from a random point in the first half
    /// of that window so that a fleet of processes spreads its refreshes. Requests keep using the
    /// current token meanwhile, so in steady state no request waits for a fetch. On by default.
    ///
    /// If the background refresh fails while the current token is still valid, the token keeps
    /// being used and the refresh is tried again after the [backoff](Self::backoff).
    pub fn refresh_ahead(mut self, on: bool) -> Self {
        self.settings.refresh_ahead = on;
        self
    }

    /// Backoff after failed fetches: after the `n`th failure in a row, no new fetch goes out for
    /// a random time between zero and `min(max, base * 2^(n-1))` (exponential backoff with full
    /// jitter), or for the endpoint's `Retry-After` (on 429 and 503) if longer. Meanwhile
    /// callers that need a token fail fast with the last error. Defaults: 200 ms and 30 s.
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

    /// The most bytes of a streaming request body kept so the request can be resent after a
    /// 401 (see [`ReplayableBody`](crate::replay::ReplayableBody)); a body that streams more is
    /// sent once and not resent. Bodies already in memory (`Full`, `String`, ...) are resent
    /// whatever their size.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Limits the token to requests for `origin` (`scheme://host[:port]`); repeatable. Requests
    /// to other origins pass through untouched. Unset, every request gets the token (see
    /// [`crate::origin`] for why, and for requests addressed by path alone).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `origin` is not an `http` or `https` URL without a path.
    pub fn origin(mut self, origin: &str) -> Result<Self, Error> {
        self.policy.origins.push(Origin::parse(origin)?);
        Ok(self)
    }

    /// Allows sending the token over plain `http` to hosts that are not loopback addresses.
    /// Without it such requests fail with [`Error::InsecureRequest`]; loopback addresses
    /// (`127.0.0.0/8`, `[::1]`, `localhost`) never need it.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.policy.allow_http = allow;
        self
    }

    /// The header the token goes in: `Authorization` unless set. For an API that wants, say,
    /// `X-Api-Token: <token>`, set the header and an empty [`scheme`](Self::scheme).
    pub fn header_name(mut self, name: http::HeaderName) -> Self {
        self.settings.header_name = name;
        self
    }

    /// The authentication scheme written before the token: `Bearer` unless set; empty for the
    /// token alone. Some APIs want it spelled otherwise (Checkbook's documentation writes
    /// `bearer`).
    ///
    /// A scheme that is not an HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``) is refused:
    /// every fetch then fails with [`Error::Config`].
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.settings.scheme = Arc::from(scheme.into());
        self
    }

    /// Use each token for at most `uses` requests, then fetch a new one: for APIs whose tokens
    /// are good for a limited number of calls (Checkbook's `single-use` scope is `1`). Fetches
    /// stay single-flight: one fetch per `uses` requests, never more. `0` means no limit.
    pub fn max_token_uses(mut self, uses: u32) -> Self {
        self.settings.max_uses = (uses > 0).then_some(uses);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> AuthLayer {
        AuthLayer {
            cache: TokenCache::new(self.source, self.settings),
            retry: self.retry,
            replay_limit: self.replay_limit,
            policy: Arc::new(self.policy),
        }
    }
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("source", &self.source.type_name())
            .field("settings", &self.settings)
            .field("retry", &self.retry)
            .finish()
    }
}
