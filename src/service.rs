//! [`AuthService`]: attaches the cached token to each request.

use std::{
    fmt, mem,
    ops::Deref,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwapOption;
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
/// With a fresh token cached, `call` reads the token through a per-service
/// [`arc_swap::Cache`] (one atomic load when the token has not changed), compares its expiry with
/// the clock, clones the pre-built header value into the request and calls the inner service. No
/// lock, no boxed future. When the body can be replayed (see [`ReplayBody`](crate::ReplayBody)), the request head is
/// copied so that a 401 can be retried; turn that off with
/// [`retry_unauthorized(false)`](crate::AuthLayerBuilder::retry_unauthorized).
pub struct AuthService<S> {
    inner: S,
    current: arc_swap::Cache<CacheRef, Option<Arc<Entry>>>,
    local: Local,
    cache: Arc<TokenCache>,
    retry: bool,
    replay_limit: usize,
    header_name: HeaderName,
    policy: Arc<OriginPolicy>,
}

/// Requests a service sends with shared copies before it makes its own.
const PRIVATE_AFTER: u32 = 16;

/// What every request of this service touches, in copies of its own once it is used enough.
///
/// Cloning a `HeaderValue` or an `Arc` increments a reference count. If every service cloned
/// the cache's one header and one `Arc`, services driven from several cores would all write
/// those counts, and their cache lines would bounce between cores on every request. So a
/// service that keeps sending requests makes its own copy of the token's header and its own
/// handle to the cache, after [`PRIVATE_AFTER`] requests (a service cloned for one request
/// never pays for copies; a long-lived one pays one small allocation per token).
struct Local {
    /// Generation of the token `header` is for.
    generation: u64,
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
            generation: 0,
            header: HeaderValue::from_static(""),
            handle: CacheHandle::new(cache),
            handle_private: true,
            countdown: PRIVATE_AFTER,
        }
    }

    /// The header for `entry`.
    #[inline]
    fn header(&mut self, entry: &Entry) -> HeaderValue {
        if self.generation == entry.generation && self.countdown == 0 {
            return self.header.clone();
        }
        self.update(entry)
    }

    #[cold]
    #[inline(never)]
    fn update(&mut self, entry: &Entry) -> HeaderValue {
        if self.generation != entry.generation {
            self.generation = entry.generation;
            self.header = entry.header.clone();
            self.countdown = PRIVATE_AFTER;
        }
        self.countdown -= 1;
        if self.countdown == 0 {
            self.header = token::copy_header(&entry.header);
            if !self.handle_private {
                self.handle = CacheHandle::new(&self.handle.0);
                self.handle_private = true;
            }
        }
        self.header.clone()
    }
}

impl Clone for Local {
    /// The clone starts from this service's copies and makes its own if it is used enough.
    fn clone(&self) -> Self {
        Local {
            generation: self.generation,
            header: self.header.clone(),
            handle: Arc::clone(&self.handle),
            handle_private: false,
            countdown: PRIVATE_AFTER,
        }
    }
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
        // A timer keeps `clock_free` set while the token is fresh and not yet due for a refresh:
        // then no clock read. Otherwise `check` compares with the clock, and in the refresh
        // window starts one background refresh while this request goes on with the token.
        let entry = match self.current.load() {
            Some(entry) if entry.clock_free() || entry.check(&self.cache) => entry,
            _ => return self.acquiring(request),
        };
        let generation = entry.generation;
        let header = self.local.header(entry);
        let replay = if self.retry {
            request.prepare_replay(self.replay_limit)
        } else {
            None
        };
        request
            .headers_mut()
            .insert(self.header_name.clone(), header);
        let cache = self.cache.id();
        match replay {
            None => ResponseFuture::sent(self.inner.call(request), cache, generation, None),
            Some(replay) => {
                // Keep the readied service for a possible resend; leave a clone behind.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                let fut = inner.call(request);
                let handle = Arc::clone(&self.local.handle);
                ResponseFuture::sent(fut, cache, generation, Some((inner, replay, handle)))
            }
        }
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
            current: self.current.clone(),
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
