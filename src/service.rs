//! [`AuthService`]: attaches the cached token to each request.

use std::{
    fmt, mem,
    ops::Deref,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwapOption;
use http::HeaderName;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    BoxError,
    cache::{Entry, TokenCache},
    future::ResponseFuture,
    message::{AuthRequest, AuthResponse},
    origin::{Decision, OriginPolicy},
};

/// Middleware that sets `Authorization: Bearer <token>` on every request, fetching and
/// refreshing the token as needed. Made by [`AuthLayer`](crate::AuthLayer).
///
/// It serves `http::Request<B>` (hyper, axum, tonic: any `B` that implements
/// [`ReplayBody`](crate::ReplayBody)) and `reqwest::Request`; see [`AuthRequest`].
///
/// # Errors
///
/// The error type is [`BoxError`]. A failure to get a token is a boxed [`Error`](crate::Error);
/// any other error came from the inner service (see [`crate::error`]).
///
/// # Hot path
///
/// With a fresh token cached, `call` reads the token through a per-service
/// [`arc_swap::Cache`] (one atomic load when the token has not changed), compares its expiry with
/// the clock, clones the pre-built header value into the request and calls the inner service. No
/// lock, no boxed future. When the body can be replayed (see [`ReplayBody`](crate::ReplayBody)), the request head is
/// copied so that a 401 can be retried; turn that off with
/// [`retry_unauthorized(false)`](crate::AuthLayerBuilder::retry_unauthorized).
pub struct AuthService<S> {
    inner: S,
    current: arc_swap::Cache<CacheRef, Option<Arc<Entry>>>,
    cache: Arc<TokenCache>,
    retry: bool,
    replay_limit: usize,
    header_name: HeaderName,
    policy: Arc<OriginPolicy>,
}

/// Lets an [`arc_swap::Cache`] read the shared cache's current-token slot.
#[derive(Clone)]
pub(crate) struct CacheRef(pub(crate) Arc<TokenCache>);

impl Deref for CacheRef {
    type Target = ArcSwapOption<Entry>;

    fn deref(&self) -> &Self::Target {
        self.0.current()
    }
}

impl<S> AuthService<S> {
    pub(crate) fn new(
        inner: S,
        cache: Arc<TokenCache>,
        retry: bool,
        replay_limit: usize,
        policy: Arc<OriginPolicy>,
    ) -> Self {
        AuthService {
            inner,
            current: arc_swap::Cache::new(CacheRef(Arc::clone(&cache))),
            header_name: cache.settings().header_name.clone(),
            cache,
            retry,
            replay_limit,
            policy,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R> Service<R> for AuthService<S>
where
    R: AuthRequest,
    S: Service<R> + Clone,
    S::Response: AuthResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return ResponseFuture::passed(self.inner.call(request)),
            Decision::Refuse(err) => return ResponseFuture::refused(err),
        }
        let now = Instant::now();
        let fresh = match self.current.load() {
            Some(entry) if entry.claim_fresh(now) => Some(entry),
            _ => None,
        };
        let Some(entry) = fresh else {
            // Slow path: wait for a token. The readied service moves into the future.
            let clone = self.inner.clone();
            let inner = mem::replace(&mut self.inner, clone);
            let replay_limit = self.retry.then_some(self.replay_limit);
            return ResponseFuture::acquiring(
                Arc::clone(&self.cache),
                request,
                inner,
                replay_limit,
            );
        };
        if now >= entry.refresh_at {
            // In the refresh window: one background refresh, this request goes on.
            self.cache.refresh_ahead(now);
        }
        let generation = entry.generation;
        let header = entry.header.clone();

        let mut request = request;
        let replay = if self.retry {
            request.prepare_replay(self.replay_limit)
        } else {
            None
        };
        request
            .headers_mut()
            .insert(self.header_name.clone(), header);
        let cache = Arc::clone(&self.cache);
        match replay {
            None => ResponseFuture::sent(self.inner.call(request), cache, generation, None),
            Some(replay) => {
                // Keep the readied service for a possible resend; leave a clone behind.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                let fut = inner.call(request);
                ResponseFuture::sent(fut, cache, generation, Some((inner, replay)))
            }
        }
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            current: self.current.clone(),
            cache: Arc::clone(&self.cache),
            retry: self.retry,
            replay_limit: self.replay_limit,
            header_name: self.header_name.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .finish()
    }
}
