//! [`AuthService`]: attaches the cached token to each request.

use std::{
    fmt, mem,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use arc_swap::{ArcSwapOption, Cache};
use http::HeaderValue;
use tokio::time::Instant;
use tower_service::Service;

use crate::{
    BoxError,
    cache::{Entry, TokenCache},
    future::ResponseFuture,
    grpc,
    message::{AuthRequest, AuthResponse},
    middleware::{
        handle::{LayerHandle, ServiceHandle},
        layer_state::Mark,
        spare::{Resender, Spare},
    },
    origin::Decision,
};

/// Middleware that sets `Authorization: Bearer <token>` on every request, fetching and
/// refreshing the token as needed. Made by [`AuthLayer`](crate::AuthLayer).
///
/// It serves `http::Request<B>` for any body `B: 'static` (hyper, axum, tonic) and
/// `reqwest::Request`; see [`AuthRequest`].
///
/// # Errors
///
/// The error type is [`BoxError`]. A failure to get a token is a boxed [`Error`](crate::Error);
/// any other error came from the inner service (see [`crate::error`]).
///
/// # Hot path
///
/// With a usable token cached, `call` finds the current token without a lock, reads the
/// monotonic clock once and compares it with the token's refresh point, clones the pre-built
/// header into the request and calls the inner service. No lock, no boxed future, and no
/// allocation by the layer for bodies of shared bytes. When the body can be resent (see
/// [`crate::replay`]), the request head is copied so that a 401 can be retried (a URI of up to
/// 80 bytes past its scheme as its text, parsed again only for a resend, so that its shared buffers are not
/// counted; a `String` or `Vec<u8>` body within the replay limit copied once); turn that off
/// with [`retry_unauthorized(false)`](crate::AuthLayerBuilder::retry_unauthorized).
///
/// The inner service is not cloned per request for a resend, as tower's `Retry` does: a service
/// keeps one clone of its inner service, made at its first resendable request (or its first
/// clone) and shared with its clones, each request's future takes a reference to it (and
/// reaches the layer through it, taking no handle of its own), and the service a resend goes
/// through is cloned from it only when a resend happens
/// (`unauthorized::the_inner_service_is_cloned_for_a_resend_only_when_one_happens`). For
/// hyper-util's `Client`, whose clone counts references that every caller shares, that is
/// several contended atomic operations a request saved.
///
/// Up to 8 services kept on different cores do not contend for a cache line per request
/// (tower-http's `AddAuthorization` shares one header's reference count among all its clones).
/// Each token comes with 8 copies of its header, each with its reference count on a cache line
/// of its own (with more busy services than that, some share a copy), and:
///
/// - a service that keeps sending requests makes its own handle after 8 requests: it follows
///   the current token with one pointer comparison (`arc_swap::Cache`) and sends one of the
///   copies, taken in turn, with a handle on the layer that only it holds;
/// - a service's clones (`svc.clone().oneshot(req)`) share a handle `svc` makes for them at its
///   first clone, and send another copy, taken in turn.
///
/// Only a new service's first 8 requests send the cache's own header, which all services share.
/// Either way the token is checked against the clock on every request: validity depends on no
/// timer. Until a response accepts a new token, its requests (sent the same way) ask their
/// answers to say whether they do.
pub struct AuthService<S> {
    inner: S,
    /// Shared with the service this one was cloned from and its other clones, until it makes
    /// its own copies.
    layer: LayerHandle,
    /// The handle this service's clones share, made at its first clone: the clones of
    /// services kept on different cores then count references on different cache lines,
    /// instead of all on the handle of the service they all came from.
    for_clones: OnceLock<LayerHandle>,
    /// This service's own copies; `None` until it has sent `OWN_COPIES_AFTER` requests.
    own: Option<Box<OwnCopies>>,
    /// Requests sent with the shared copies.
    sent: u32,
    /// The clone of `inner` a resend goes through, shared with this service's clones.
    spare: Spare<S>,
}

/// Requests a service sends with the copies its layer shares before it makes its own (a few
/// allocations, once per service and per token), so that a service cloned for one request never
/// pays for them.
pub(crate) const OWN_COPIES_AFTER: u32 = 8;

/// What a service that keeps sending requests holds of its own.
struct OwnCopies {
    /// Follows the cache's current token: one pointer comparison per request, and a reference
    /// count taken only when the token changes.
    current: Cache<Arc<ArcSwapOption<Entry>>, Option<Arc<Entry>>>,
    /// This service's handle on the layer's state, cloned into each response future.
    layer: LayerHandle,
    /// The copy of each token's header this service sends ([`Entry::header_copy`]).
    slot: usize,
}

impl OwnCopies {
    /// `layer` is a handle of the service's own.
    fn new(layer: LayerHandle) -> Box<Self> {
        Box::new(OwnCopies {
            current: Cache::new(Arc::clone(layer.cache.current())),
            slot: layer.cache.next_header_copy(),
            layer,
        })
    }

    /// The header and generation of the token to send, and the mark of its request
    /// ([`mark_at`]); `None` to wait for one.
    #[inline]
    fn token(&mut self, cache: &Arc<TokenCache>) -> Option<(HeaderValue, u64, Mark)> {
        let entry = self.current.load().as_ref()?;
        let mark = mark_at(cache, entry, Instant::now())?;
        Some((entry.header_copy(self.slot), entry.generation, mark))
    }
}

impl<S> AuthService<S> {
    #[inline]
    pub(crate) fn new(inner: S, layer: LayerHandle) -> Self {
        AuthService {
            inner,
            layer,
            for_clones: OnceLock::new(),
            own: None,
            sent: 0,
            spare: Spare::new(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably. A resend after a 401 goes through a clone of the service
    /// as it is after this change: the copy kept for resends is made again from it.
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = Spare::new();
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The header, generation and mark ([`mark_at`]) for a request; `None` to wait for a
    /// token. The request goes with [`handle`](Self::handle) afterwards.
    #[inline]
    fn token(&mut self) -> Option<(HeaderValue, u64, Mark)> {
        if let Some(own) = &mut self.own {
            return own.token(&self.layer.cache);
        }
        let cache = &self.layer.cache;
        let current = cache.current().load();
        let entry = current.as_ref()?;
        let mark = mark_at(cache, entry, Instant::now())?;
        let token = (self.layer.header(entry), entry.generation, mark);
        drop(current);
        self.sent += 1;
        if self.sent >= OWN_COPIES_AFTER {
            self.own = Some(OwnCopies::new(Arc::clone(self.own_handle())));
        }
        Some(token)
    }
}

/// Whether a request at `now` sends `entry`'s token without waiting (`None`: it waits), and
/// its [`Mark`]: in its quiet period a token is sent with nothing more to do; past it, if it is
/// usable ([`TokenCache::check`]), and a token no response accepted yet (whose quiet period is
/// over at once) asks each answer whether it accepts it.
#[inline]
pub(crate) fn mark_at(cache: &Arc<TokenCache>, entry: &Entry, now: Instant) -> Option<Mark> {
    if now < entry.quiet_until {
        return Some(Mark::NONE);
    }
    cache
        .check(entry, now)
        .then_some(Mark::reporting(!entry.accepted))
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
    fn call(&mut self, request: R) -> Self::Future {
        match self.layer.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return ResponseFuture::passed(self.inner.call(request)),
            Decision::Refuse(err) => {
                return ResponseFuture::refused(grpc::token_error(&request, err));
            }
        }
        let Some((header, generation, mark)) = self.token() else {
            return self.acquiring(request);
        };
        let layer = match &self.own {
            Some(own) => &own.layer,
            None => &self.layer,
        };
        send(
            &mut self.inner,
            &self.spare,
            request,
            header,
            generation,
            mark,
            layer,
            true,
        )
    }
}

/// Sends `request` with the token of `generation` (its `header`) through `inner`, keeping what
/// a resend after a 401 needs when the layer resends and the body can be replayed. The hot path
/// of [`AuthService`] and of the keyed layer's service. With `spare_holds_layer`, the spare a
/// resend goes through is on `layer`'s state (the service's spare, made by it or the service
/// it was cloned from) and holds a handle on it, which the response future uses.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn send<S, R>(
    inner: &mut S,
    spare: &Spare<S>,
    mut request: R,
    header: HeaderValue,
    generation: u64,
    mark: Mark,
    layer: &LayerHandle,
    spare_holds_layer: bool,
) -> ResponseFuture<S, R>
where
    R: AuthRequest,
    S: Service<R> + Clone,
{
    let may_be_grpc = request.may_be_grpc();
    if layer.retry {
        if let Some(replay) = request.prepare_replay(layer.replay_limit) {
            let proof = match layer.attach(&mut request, header, generation) {
                Ok(proof) => mark.on(proof),
                Err(err) => return ResponseFuture::refused(grpc::token_error(&request, err)),
            };
            // A resend goes through a clone of the service's spare, made only if it happens.
            let spare = spare.of(inner, spare_holds_layer.then_some(layer));
            // The future reaches the layer through the spare when it holds a handle.
            let handle = match spare.layer {
                Some(_) => None,
                None => Some(Arc::clone(layer)),
            };
            let fut = inner.call(request);
            let replay = Some((Resender::Spare(spare), replay));
            return ResponseFuture::sent(fut, handle, generation, proof, may_be_grpc, replay);
        }
    }
    let proof = match layer.attach(&mut request, header, generation) {
        Ok(proof) => mark.on(proof),
        Err(err) => return ResponseFuture::refused(grpc::token_error(&request, err)),
    };
    ResponseFuture::sent(
        inner.call(request),
        Some(Arc::clone(layer)),
        generation,
        proof,
        may_be_grpc,
        None,
    )
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
        ResponseFuture::acquiring(Arc::clone(&self.layer), request, inner)
    }
}

impl<S> AuthService<S> {
    /// A handle on the layer's state that only this service and its clones hold (one small
    /// allocation, the first time it is asked for).
    #[inline]
    fn own_handle(&self) -> &LayerHandle {
        self.for_clones.get_or_init(|| {
            Arc::new(ServiceHandle::with_header_copy(Arc::clone(
                self.layer.state(),
            )))
        })
    }
}

impl<S: Clone> Clone for AuthService<S> {
    /// The clone shares a handle on the layer with this service's other clones (not with
    /// every service of the layer), and makes its own copies if it is used enough.
    #[inline]
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            layer: Arc::clone(self.own_handle()),
            for_clones: OnceLock::new(),
            own: None,
            sent: 0,
            spare: if self.layer.retry {
                self.spare.for_clone(&self.inner, Some(&self.layer))
            } else {
                Spare::new()
            },
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .field("own_copies", &self.own.is_some())
            .finish()
    }
}
