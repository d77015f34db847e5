//! [`AuthLayer`] and its settings.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tower_layer::Layer;

pub use super::builder::AuthLayerBuilder;
use super::layer_state::LayerState;
pub use crate::cache::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_EXPIRY_MARGIN, DEFAULT_FETCH_ATTEMPTS,
    DEFAULT_FETCH_TIMEOUT, DEFAULT_LIFETIME, EXPIRY_ALLOWANCE,
};
use crate::{
    AuthService, Error, Stats, Token, TokenSource, middleware::handle::ServiceHandle,
    origin::OriginPolicy,
};

/// Default for [`AuthLayerBuilder::replay_limit`].
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// The longest a duration setting may be: a year. [`AuthLayerBuilder::build`] refuses longer
/// ones (a slip of the unit more likely than an intent), so no arithmetic on them overflows.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

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
    pub(super) state: Arc<LayerState>,
}

impl AuthLayer {
    /// A layer with default settings around `source`.
    pub fn new(source: impl TokenSource) -> Self {
        // The defaults pass every check of `build`.
        AuthLayer::builder(source).assemble(OriginPolicy::default(), None)
    }

    /// Starts configuring a layer around `source`.
    pub fn builder(source: impl TokenSource) -> AuthLayerBuilder {
        AuthLayerBuilder::new(Box::new(source))
    }

    /// A valid token from the shared cache, fetching one if needed, for code outside tower:
    /// the access token, its type, expiry and scope. Never a refresh token: that stays with its
    /// grant and its store.
    ///
    /// Joins a fetch already in flight. Dropping the future cancels nothing for other callers.
    /// The future borrows nothing from `self`, so it can be spawned.
    pub fn token(&self) -> impl Future<Output = Result<Token, Error>> + Send + use<> {
        let cache = Arc::clone(&self.state.cache);
        async move { cache.acquire_with(|entry| entry.token.clone()).await }
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
    pub(crate) fn cache(&self) -> &Arc<crate::cache::TokenCache> {
        &self.state.cache
    }

    /// A new handle on the layer's state, sending the cache's own header.
    pub(crate) fn handle(&self) -> crate::middleware::handle::LayerHandle {
        Arc::new(ServiceHandle::new(Arc::clone(&self.state)))
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

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.state, f)
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
