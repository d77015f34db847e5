//! Tokens shared with other processes: the backend a cache consults for each fetch and each
//! revocation ([`SharedTokens`]; the Redis fleet in [`distributed`](crate::distributed) is
//! one), and the little of the cache such a backend may use ([`SharedCache`]).
//!
//! The cache knows no backend, and a backend knows no more of the cache than this: the fetch
//! timeout and default lifetime, the tokens it must not hand back, the cache's own fetch from
//! its source, its counters, and two ways to forget a token another process saw go.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::time::Instant;

use super::{TokenCache, flight::fetch_with_retries};
use crate::{AccessToken, Error, Token, stats::Counters};

/// A future a backend returns; boxed, as a fetch is rare and the backend is a trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a cache's tokens are shared with other processes.
pub(crate) trait SharedTokens: fmt::Debug + Send + Sync {
    /// A token for `cache`: one another process shared, or one from the cache's own source
    /// ([`SharedCache::fetch_from_source`]), which the backend then shares. Runs in the fetch's
    /// task, which began at `started`.
    fn fetch<'a>(
        &'a self,
        cache: &'a SharedCache,
        started: Instant,
    ) -> BoxFuture<'a, Result<Token, Error>>;

    /// Tells the other processes that the shared token is revoked (it is deleted where they
    /// would find it, and they forget their copies). Called before and after the source revokes.
    fn revoke<'a>(&'a self, cache: &'a SharedCache) -> BoxFuture<'a, Result<(), Error>>;
}

/// What a [`SharedTokens`] backend sees of the cache it serves.
#[derive(Clone)]
pub(crate) struct SharedCache(Arc<TokenCache>);

impl SharedCache {
    pub(super) fn new(cache: Arc<TokenCache>) -> SharedCache {
        SharedCache(cache)
    }

    /// How long a fetch may take, all its attempts together.
    pub(crate) fn fetch_timeout(&self) -> Duration {
        self.0.settings.fetch_timeout
    }

    /// The lifetime assumed for a token that says nothing of its expiry.
    pub(crate) fn default_lifetime(&self) -> Duration {
        self.0.settings.default_lifetime
    }

    /// The cache's counters, for the backend's own.
    pub(crate) fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// A fetch from the cache's source, retrying transient failures as a fetch without a
    /// backend does.
    pub(crate) async fn fetch_from_source(&self, started: Instant) -> Result<Token, Error> {
        fetch_with_retries(&self.0, started).await
    }

    /// The last token a response (or `invalidate`) rejected here.
    pub(crate) fn last_rejected(&self) -> Option<AccessToken> {
        self.0.lock_state().rejected.clone()
    }

    /// The tokens a new fetch must not hand back: the one in use (it is being replaced) and the
    /// last one rejected.
    pub(crate) fn replacing(&self) -> [Option<AccessToken>; 2] {
        let rejected = self.last_rejected();
        let current = self
            .0
            .current
            .load()
            .as_ref()
            .map(|entry| entry.token.access_token().clone());
        [current, rejected]
    }

    /// A reference that does not keep the cache alive, for a backend's listener.
    pub(crate) fn downgrade(&self) -> WeakSharedCache {
        WeakSharedCache(Arc::downgrade(&self.0))
    }

    /// Forgets the current token if it is the one `rejected_elsewhere` names, which another
    /// process saw rejected; it is then remembered as rejected, like one a response here
    /// rejected. `true` if it was forgotten by this call.
    pub(crate) fn forget_rejected_elsewhere(
        &self,
        rejected_elsewhere: impl Fn(&AccessToken) -> bool,
    ) -> bool {
        let cache = &*self.0;
        let mut state = cache.lock_state();
        let current = cache.current.load_full();
        let Some(entry) = current.filter(|e| rejected_elsewhere(e.token.access_token())) else {
            return false;
        };
        cache.remember_rejected(&mut state.rejected, entry.token.access_token());
        cache.current.store(None);
        drop(state);
        cache.counters.fleet_rejection();
        tracing::debug!(target: "tower_bearer", layer = %cache.counters.name, "token rejected by another process of the fleet forgotten");
        true
    }

    /// Another process revoked the shared token: forgets the current token and the fetch in
    /// flight (which may bring back a token fetched before the revocation), as
    /// [`TokenCache::forget`] does.
    pub(crate) fn forget_revoked_elsewhere(&self) {
        let cache = &*self.0;
        if cache.forget().is_some() {
            cache.counters.fleet_rejection();
        }
        tracing::debug!(target: "tower_bearer", layer = %cache.counters.name, "the fleet's token was revoked by another process: forgotten");
    }
}

/// A [`SharedCache`] that does not keep the cache alive: a listener's.
#[derive(Clone)]
pub(crate) struct WeakSharedCache(Weak<TokenCache>);

impl WeakSharedCache {
    /// The cache, unless every layer and service that used it is gone.
    pub(crate) fn upgrade(&self) -> Option<SharedCache> {
        self.0.upgrade().map(SharedCache)
    }

    /// Whether every layer and service that used the cache is gone.
    pub(crate) fn is_gone(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
