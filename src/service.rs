//! [`AuthService`]: attaches the cached token to each request.

use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower_service::Service;

use crate::{
    BoxError,
    future::ResponseFuture,
    layer::LayerState,
    message::{AuthRequest, AuthResponse},
    origin::Decision,
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
/// With a usable token cached, `call` loads the current token from the cache's `ArcSwap`
/// (no lock), reads the monotonic clock once and compares it with the token's refresh point,
/// clones the pre-built header into the request and calls the inner service. No lock, no
/// allocation by the layer, no boxed future; the response future holds one reference to the
/// layer's shared state, to forget the token if the response rejects it. When the body can be
/// replayed (see [`ReplayBody`](crate::ReplayBody)), the request head is copied so that a 401
/// can be retried; turn that off with
/// [`retry_unauthorized(false)`](crate::AuthLayerBuilder::retry_unauthorized).
pub struct AuthService<S> {
    inner: S,
    state: Arc<LayerState>,
}

impl<S> AuthService<S> {
    pub(crate) fn new(inner: S, state: Arc<LayerState>) -> Self {
        AuthService { inner, state }
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
        let state = &*self.state;
        match state.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return ResponseFuture::passed(self.inner.call(request)),
            Decision::Refuse(err) => return ResponseFuture::refused(err),
        }
        let current = state.cache.current().load();
        let token = current.as_ref().and_then(|entry| {
            let now = Instant::now();
            (now < entry.quiet_until || state.cache.check(entry, now))
                .then(|| (entry.header.clone(), entry.generation))
        });
        drop(current);
        let Some((header, generation)) = token else {
            return self.acquiring(request);
        };
        let header_name = state.header_name.clone();
        if state.retry {
            if let Some(replay) = request.prepare_replay(state.replay_limit) {
                request.headers_mut().insert(header_name, header);
                // Keep the readied service for a possible resend; leave a clone behind.
                let clone = self.inner.clone();
                let mut inner = mem::replace(&mut self.inner, clone);
                let fut = inner.call(request);
                let state = Arc::clone(&self.state);
                return ResponseFuture::sent(fut, state, generation, Some((inner, replay)));
            }
        }
        request.headers_mut().insert(header_name, header);
        let fut = self.inner.call(request);
        ResponseFuture::sent(fut, Arc::clone(&self.state), generation, None)
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
        ResponseFuture::acquiring(Arc::clone(&self.state), request, inner)
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("layer", &self.state)
            .finish()
    }
}
