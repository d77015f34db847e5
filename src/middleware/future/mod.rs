//! [`ResponseFuture`]: the state machine of one request through [`AuthService`](crate::AuthService).
//!
//! ```text
//!              token cached                 2xx, 403, ...
//!   call ─────────────────────► Send ───────────────────────────► done
//!     │                          │ 401 for the token it carried
//!     │ no fresh token           ▼
//!     └─► Acquire ──► Send     forget that token (if still current),
//!                                and if the body can be replayed:
//!                              Acquire ──► Ready ──► Forward ──► done (whatever it answers)
//! ```
//!
//! `Acquire` waits for the cache's single-flight fetch (a boxed future: this is the slow path).
//! `Ready` polls the inner service's readiness again before the resend, as the tower contract asks.
//! A 401 for a token the cache keeps (fresh tokens keep being rejected, see
//! [`AuthLayerBuilder::backoff`](crate::AuthLayerBuilder::backoff)) is not resent: the same token
//! would be rejected again.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError, Error,
    cache::Entry,
    challenge,
    grpc::TrailerWatch,
    message::{AuthRequest, AuthResponse},
    middleware::{handle::LayerHandle, layer_state::Proof, spare::Resender},
};

mod slow_path;

use slow_path::Pending;

pub(crate) type Acquire = Pin<Box<dyn Future<Output = Result<Arc<Entry>, Error>> + Send>>;

/// The wait of a keyed request for the layer of its key, which another request is making.
pub(crate) type LayerWait = Pin<Box<dyn Future<Output = Result<LayerHandle, Error>> + Send>>;

/// What a request that may be resent keeps: what it would be resent through and what its
/// [`AuthRequest::prepare_replay`] returned.
pub(crate) type Replay<S, R> = (Resender<S>, <R as AuthRequest>::Replay);

pin_project! {
    /// Response future of [`AuthService`](crate::AuthService).
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
        R: AuthRequest,
    {
        #[pin]
        state: State<S::Future, S, R>,
        // What a resend after a 401 needs, while the request is in `Send`. Kept beside the
        // state rather than in it: built next to the state, it is moved fewer times.
        replay: Option<Replay<S, R>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R>
    where
        R: AuthRequest,
    {
        // A keyed request waiting for its key's layer, which another request is making;
        // `parked` is the request and the readied inner service.
        Layer {
            layer: LayerWait,
            parked: Option<Box<(R, S)>>,
        },
        // Waiting for a token.
        Acquire {
            token: Acquire,
            pending: Option<Box<Pending<S, R>>>,
        },
        // The request is with the inner service, carrying the token of `generation` (the
        // future's `replay` is kept for a resend after a 401). `layer` keeps the cache alive
        // for that, even if every service and layer is dropped meanwhile (as `oneshot` does);
        // `None` when `replay` goes through a spare that holds a handle (`held_layer`).
        Send {
            #[pin]
            fut: F,
            layer: Option<LayerHandle>,
            generation: u64,
            proof: Proof,
            // The request may be a gRPC call (`AuthRequest::may_be_grpc`): a 200 answer is
            // looked at for `grpc-status: 16`.
            may_be_grpc: bool,
        },
        // Waiting for the inner service to be ready for the resend.
        Ready {
            pending: Option<Box<Pending<S, R>>>,
        },
        // A request whose answer goes to the caller as it is: the resend after a 401 (`sent`
        // is the layer and generation of the token it carries, so that `UNAUTHENTICATED` in
        // its trailers still drops that token), or a request passed through without the token
        // (`sent` is `None`).
        Forward {
            #[pin]
            fut: F,
            sent: Option<(LayerHandle, u64, Proof)>,
        },
        // The request was refused before it was sent.
        Refused {
            error: Option<BoxError>,
        },
        Done,
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    R: AuthRequest,
{
    /// The request was sent with the token of `generation`; `layer` is `None` only if
    /// `replay` goes through a spare that holds a handle on the layer.
    #[inline]
    pub(crate) fn sent(
        fut: S::Future,
        layer: Option<LayerHandle>,
        generation: u64,
        proof: Proof,
        may_be_grpc: bool,
        replay: Option<Replay<S, R>>,
    ) -> Self {
        ResponseFuture {
            state: State::Send {
                fut,
                layer,
                generation,
                proof,
                may_be_grpc,
            },
            replay,
        }
    }

    /// The request was sent without the token (another origin).
    pub(crate) fn passed(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Forward { fut, sent: None },
            replay: None,
        }
    }

    /// The request was not sent.
    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            replay: None,
        }
    }

    /// The keyed request waits for its key's layer; `service` is the readied inner service.
    pub(crate) fn waiting_for_layer(layer: LayerWait, request: R, service: S) -> Self {
        ResponseFuture {
            state: State::Layer {
                layer,
                parked: Some(Box::new((request, service))),
            },
            replay: None,
        }
    }

    /// The request waits for a token; `service` is the readied inner service.
    pub(crate) fn acquiring(layer: LayerHandle, request: R, service: S) -> Self {
        let replay_limit = layer.retry.then_some(layer.replay_limit);
        ResponseFuture {
            state: State::Acquire {
                token: Box::pin(Arc::clone(&layer.cache).acquire()),
                pending: Some(Box::new(Pending {
                    layer,
                    request,
                    service,
                    replay_limit,
                    resend: false,
                    generation: 0,
                    proof: None,
                })),
            },
            replay: None,
        }
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: Service<R>,
    S::Response: AuthResponse,
    S::Error: Into<BoxError>,
    R: AuthRequest,
{
    type Output = Result<S::Response, BoxError>;

    /// The hot path, small enough to inline: a request sent with a cached token, answered with
    /// anything but a rejection. Everything else is out of line.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.as_mut().project();
        if let StateProj::Send {
            fut,
            layer,
            generation,
            proof,
            may_be_grpc,
        } = this.state.project()
        {
            // The answer is looked at where the inner future left it, and moved once, into
            // this future's output.
            let mut polled = fut.poll(cx);
            let Poll::Ready(result) = &mut polled else {
                return Poll::Pending;
            };
            // The state stays `Send`: the future is done, and polling it again is a misuse the
            // `Future` contract leaves to the inner future to answer. Not setting `Done` saves
            // dropping the state twice on every request.
            if let Ok(response) = result {
                if let (false, Some(layer)) = (
                    challenge::may_reject(response, *may_be_grpc),
                    held_layer(layer, this.replay),
                ) {
                    // A stream's trailers may still reject the token: their watch decides.
                    let watched = response.watch_trailers(|| TrailerWatch::new(layer, *generation));
                    if let Some(sent) = *proof {
                        layer.answered(sent, response, *generation, watched);
                    }
                    return polled.map_err(Into::into);
                }
            }
            let Poll::Ready(result) = polled else {
                return Poll::Pending;
            };
            return self.answered(result, cx);
        }
        self.poll_slow(cx)
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    R: AuthRequest,
{
    #[inline]
    fn set_done(self: Pin<&mut Self>) {
        self.project().state.set(State::Done);
    }
}

impl<S, R> std::fmt::Debug for ResponseFuture<S, R>
where
    S: Service<R>,
    R: AuthRequest,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Layer { .. } => "Layer",
            State::Acquire {
                pending: Some(p), ..
            } if p.resend => "Refresh",
            State::Acquire { .. } => "Acquire",
            State::Send { .. } => "Send",
            State::Ready { .. } => "Ready",
            State::Forward { sent: Some(_), .. } => "Resend",
            State::Forward { sent: None, .. } => "PassedThrough",
            State::Refused { .. } => "Refused",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The handle on the layer a request in `Send` holds: its own, or its spare's.
#[inline(always)]
fn held_layer<'a, S, Kept>(
    layer: &'a Option<LayerHandle>,
    replay: &'a Option<(Resender<S>, Kept)>,
) -> Option<&'a LayerHandle> {
    match layer {
        Some(layer) => Some(layer),
        None => replay.as_ref().and_then(|(resender, _)| resender.layer()),
    }
}

fn polled_after_completion() -> BoxError {
    "tower-bearer ResponseFuture polled after completion".into()
}
