//! [`AuthService`]: attaches the cached token to each request.

use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue};
use tower_service::Service;

use crate::{
    BoxError,
    cache::{CacheHandle, Entry, TokenCache},
    future::ResponseFuture,
    message::{AuthRequest, AuthResponse},
    origin::{Decision, OriginPolicy},
    token,
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
/// With a fresh token cached, `call` checks one flag of the token this service last used (set
/// while the token is current and before its refresh point: no clock read, no look at shared
/// state), clones the service's copy of the pre-built header into the request and calls the
/// inner service. No lock, no allocation, no boxed future, no reference count shared with other
/// cores. When the body can be replayed (see [`ReplayBody`](crate::ReplayBody)), the request head is
/// copied so that a 401 can be retried; turn that off with
/// [`retry_unauthorized(false)`](crate::AuthLayerBuilder::retry_unauthorized).
pub struct AuthService<S> {
    inner: S,
    local: Local,
    cache: Arc<TokenCache>,
    retry: bool,
    replay_limit: usize,
    header_name: HeaderName,
    policy: Arc<OriginPolicy>,
}

/// Requests a service sends with shared copies before it makes its own.
const PRIVATE_AFTER: u32 = 16;

/// This service's view of the cache: the token it last used, and its own copies of what every
/// request touches.
///
/// The token is used as long as its [`clock_free`](Entry::clock_free) flag is set: the cache
/// clears it when the token is replaced or forgotten, and a timer clears it at the token's
/// refresh point. So a request reads one flag in memory no other core writes, instead of the
/// shared slot and the clock; when the flag is down, it looks at the shared slot (and the
/// clock) again.
///
/// Cloning a `HeaderValue` or an `Arc` increments a reference count. If every service cloned
/// the cache's one header and one `Arc`, services driven from several cores would all write
/// those counts, and their cache lines would bounce between cores on every request. So a
/// service that keeps sending requests makes its own copy of the token's header and its own
/// handle to the cache, after [`PRIVATE_AFTER`] requests (a service cloned for one request
/// never pays for copies; a long-lived one pays one small allocation per token).
struct Local {
    /// The token this service uses without looking at the shared slot while its flag is up;
    /// set once the service has its own copies for it.
    entry: Option<Arc<Entry>>,
    /// Generation of the token `header` is for.
    generation: u64,
    /// The header for that token: the cache's, or this service's copy once `countdown` is 0.
    header: HeaderValue,
    /// Keeps the cache alive for a request that may be resent after a 401.
    handle: Arc<CacheHandle>,
    handle_private: bool,
    /// Requests left until this service makes its own copies; 0 once it has, for this token.
    countdown: u32,
}

impl Local {
    fn new(cache: &Arc<TokenCache>) -> Self {
        Local {
            entry: None,
            generation: 0,
            header: HeaderValue::from_static(""),
            handle: CacheHandle::new(cache),
            handle_private: true,
            countdown: PRIVATE_AFTER,
        }
    }

    /// The generation of a token the request may carry, whose header is then in `header`; or
    /// `None` if the request must wait for a token.
    #[inline]
    fn token(&mut self, cache: &Arc<TokenCache>) -> Option<u64> {
        match &self.entry {
            Some(entry) if entry.clock_free() => Some(entry.generation),
            _ => self.token_slow(cache),
        }
    }

    /// Looks at the shared slot: a new token, a token in its refresh window (the clock is
    /// read, and one background refresh starts), a use-limited token, or none.
    #[cold]
    #[inline(never)]
    fn token_slow(&mut self, cache: &Arc<TokenCache>) -> Option<u64> {
        let current = cache.current().load();
        let entry = current.as_ref()?;
        if entry.generation != self.generation {
            self.entry = None;
            self.generation = entry.generation;
            self.header = entry.header.clone();
            self.countdown = PRIVATE_AFTER;
        }
        if !entry.clock_free() && !entry.check(cache) {
            return None;
        }
        if self.countdown > 0 {
            self.countdown -= 1;
            if self.countdown == 0 {
                self.header = token::copy_header(&entry.header);
                if !self.handle_private {
                    self.handle = CacheHandle::new(&self.handle.0);
                    self.handle_private = true;
                }
                self.entry = Some(Arc::clone(entry));
            }
        }
        Some(entry.generation)
    }
}

impl Clone for Local {
    /// The clone starts from this service's copies and makes its own if it is used enough.
    fn clone(&self) -> Self {
        Local {
            entry: None,
            generation: self.generation,
            header: self.header.clone(),
            handle: Arc::clone(&self.handle),
            handle_private: false,
            countdown: PRIVATE_AFTER,
        }
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
            local: Local::new(&cache),
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

    #[inline]
    fn call(&mut self, mut request: R) -> Self::Future {
        match self.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return ResponseFuture::passed(self.inner.call(request)),
            Decision::Refuse(err) => return ResponseFuture::refused(err),
        }
        let Some(generation) = self.local.token(&self.cache) else {
            return self.acquiring(request);
        };
        let cache = self.cache.id();
        if self.retry {
            if let Some(replay) = request.prepare_replay(self.replay_limit) {
                request
                    .headers_mut()
                    .insert(self.header_name.clone(), self.local.header.clone());
                // Keep the readied service for a possible resend; leave a clone behind.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                let fut = inner.call(request);
                let handle = Arc::clone(&self.local.handle);
                return ResponseFuture::sent(fut, cache, generation, Some((inner, replay, handle)));
            }
        }
        request
            .headers_mut()
            .insert(self.header_name.clone(), self.local.header.clone());
        ResponseFuture::sent(self.inner.call(request), cache, generation, None)
    }
}

impl<S: Clone> AuthService<S> {
    /// Slow path: wait for a token. The readied service moves into the future.
    #[cold]
    #[inline(never)]
    fn acquiring<R>(&mut self, request: R) -> ResponseFuture<S, R>
    where
        R: AuthRequest,
        S: Service<R>,
    {
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        let replay_limit = self.retry.then_some(self.replay_limit);
        ResponseFuture::acquiring(Arc::clone(&self.cache), request, inner, replay_limit)
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            local: self.local.clone(),
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
