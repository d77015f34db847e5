//! The slow path of a [`ResponseFuture`]: waiting for a token, then, after an answer that
//! rejects the token, the wait for a new one, the inner service's readiness and the resend.
//! The hot path (a cached token, an accepted answer) never comes here.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tower_service::Service;

use super::{Replay, ResponseFuture, State, StateProj, held_layer, polled_after_completion};
use crate::{
    BoxError, challenge,
    grpc::{self, TrailerWatch},
    message::{AuthRequest, AuthResponse},
    middleware::{
        handle::LayerHandle,
        layer_state::{Mark, Proof, Verdict},
        spare::Resender,
    },
    origin::Decision,
};

/// What a request waiting for a token keeps. Boxed: this is the slow path, and keeping it out
/// of line keeps the hot path's future (and every move of it) small.
pub(super) struct Pending<S, R> {
    pub(super) layer: LayerHandle,
    pub(super) request: R,
    pub(super) service: S,
    /// Keep what a resend after a 401 needs, streaming at most this many body bytes; `None`
    /// for no resend.
    pub(super) replay_limit: Option<usize>,
    /// This wait comes before a resend: the request already carries a rejected token.
    pub(super) resend: bool,
    /// The generation of the token the resend carries, once it has one.
    pub(super) generation: u64,
    /// What the resend carries besides, once it has its token.
    pub(super) proof: Proof,
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    S::Response: AuthResponse,
    S::Error: Into<BoxError>,
    R: AuthRequest,
{
    /// The request sent with a token was answered: pass the answer on, unless it rejects the
    /// token and the request can be sent again.
    #[cold]
    #[inline(never)]
    pub(super) fn answered(
        mut self: Pin<&mut Self>,
        result: Result<S::Response, S::Error>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let this = self.as_mut().project();
        let StateProj::Send {
            layer,
            generation,
            proof,
            may_be_grpc,
            ..
        } = this.state.project()
        else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        let Some(layer) = held_layer(layer, this.replay).cloned() else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        let (generation, proof, may_be_grpc, replay) =
            (*generation, *proof, *may_be_grpc, this.replay.take());
        let response = match result {
            Ok(response) if challenge::may_reject(&response, may_be_grpc) => response,
            Ok(mut response) => {
                let watched = response.watch_trailers(|| TrailerWatch::new(&layer, generation));
                if let Some(sent) = proof {
                    layer.answered(sent, &response, generation, watched);
                }
                self.set_done();
                return Poll::Ready(Ok(response));
            }
            Err(err) => {
                self.set_done();
                return Poll::Ready(Err(err.into()));
            }
        };
        match rejected::<S, R>(response, layer, generation, proof, replay) {
            Ok(response) => {
                self.set_done();
                Poll::Ready(Ok(response))
            }
            Err(next) => {
                self.as_mut().project().state.set(next);
                self.poll_slow(cx)
            }
        }
    }

    /// Every state but a request in flight with a cached token.
    #[inline(never)]
    pub(super) fn poll_slow(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Send { fut, .. } => {
                    let result = ready!(fut.poll(cx));
                    return self.answered(result, cx);
                }
                StateProj::Layer { layer, parked } => {
                    let layer = ready!(layer.as_mut().poll(cx));
                    let Some(parked) = parked.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let (request, mut service) = *parked;
                    let layer = match layer {
                        Ok(layer) => layer,
                        Err(err) => {
                            let err = grpc::token_error(&request, err);
                            self.set_done();
                            return Poll::Ready(Err(err));
                        }
                    };
                    // As `AuthService` sends a request, but waiting for the token in the
                    // cache (returned at once when it is usable) rather than reading it.
                    match layer.policy.decide(&request) {
                        Decision::Attach => {
                            ResponseFuture::acquiring(layer, request, service).state
                        }
                        Decision::PassThrough => State::Forward {
                            fut: service.call(request),
                            sent: None,
                        },
                        Decision::Refuse(err) => State::Refused {
                            error: Some(grpc::token_error(&request, err)),
                        },
                    }
                }
                StateProj::Acquire { token, pending } => {
                    let entry = match ready!(token.as_mut().poll(cx)) {
                        Ok(entry) => entry,
                        Err(err) => {
                            let err = match pending {
                                Some(pending) => grpc::token_error(&pending.request, err),
                                None => Box::new(err),
                            };
                            self.set_done();
                            return Poll::Ready(Err(err));
                        }
                    };
                    let Some(mut pending) = pending.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if pending.resend {
                        let Pending { layer, request, .. } = &mut *pending;
                        match layer.attach(request, entry.header.clone(), entry.generation) {
                            Ok(proof) => pending.proof = Mark::reporting(!entry.accepted).on(proof),
                            Err(err) => {
                                let err = grpc::token_error(&pending.request, err);
                                self.set_done();
                                return Poll::Ready(Err(err));
                            }
                        }
                        pending.generation = entry.generation;
                        State::Ready {
                            pending: Some(pending),
                        }
                    } else {
                        let Pending {
                            layer,
                            mut request,
                            mut service,
                            replay_limit,
                            ..
                        } = *pending;
                        let replay = replay_limit.and_then(|limit| request.prepare_replay(limit));
                        let may_be_grpc = request.may_be_grpc();
                        let proof = match layer.attach(
                            &mut request,
                            entry.header.clone(),
                            entry.generation,
                        ) {
                            Ok(proof) => Mark::reporting(!entry.accepted).on(proof),
                            Err(err) => {
                                let err = grpc::token_error(&request, err);
                                self.set_done();
                                return Poll::Ready(Err(err));
                            }
                        };
                        let fut = service.call(request);
                        *self.as_mut().project().replay =
                            replay.map(|r| (Resender::Called(Box::new(service)), r));
                        State::Send {
                            fut,
                            layer: Some(layer),
                            generation: entry.generation,
                            proof,
                            may_be_grpc,
                        }
                    }
                }
                StateProj::Ready { pending } => {
                    let Some(waiting) = pending.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Err(err) = ready!(waiting.service.poll_ready(cx)) {
                        self.set_done();
                        return Poll::Ready(Err(err.into()));
                    }
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let Pending {
                        layer,
                        request,
                        mut service,
                        generation,
                        proof,
                        ..
                    } = *pending;
                    layer.cache.counters.retried();
                    State::Forward {
                        fut: service.call(request),
                        sent: Some((layer, generation, proof)),
                    }
                }
                StateProj::Forward { fut, sent } => {
                    let result = ready!(fut.poll(cx));
                    let sent = sent.take();
                    self.set_done();
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            if let Some((layer, generation, proof)) = &sent {
                                let watched = response
                                    .watch_trailers(|| TrailerWatch::new(layer, *generation));
                                if let Some(proof) = *proof {
                                    layer.answered(proof, &response, *generation, watched);
                                }
                            }
                            Ok(response)
                        }
                        Err(err) => Err(err.into()),
                    });
                }
                StateProj::Refused { error } => {
                    let error = error.take();
                    self.set_done();
                    return Poll::Ready(Err(match error {
                        Some(error) => error,
                        None => polled_after_completion(),
                    }));
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// A response that may reject the token it carried: if it does, tell the cache (which forgets
/// the token if it is still current, unless fresh tokens keep being rejected) and, when the
/// request can be sent again with another token, go on to the wait before the resend
/// (`Err(next state)`); otherwise the response goes to the caller (`Ok`).
///
/// A 401 that asks for a DPoP nonce (and brings a new one) does not reject the token: the
/// request is sent again, once, with the same token and a proof with the nonce.
#[cold]
#[inline(never)]
fn rejected<S, R>(
    response: S::Response,
    layer: LayerHandle,
    generation: u64,
    proof: Proof,
    replay: Option<Replay<S, R>>,
) -> Result<S::Response, State<S::Future, S, R>>
where
    S: Service<R>,
    S::Response: AuthResponse,
    R: AuthRequest,
{
    let cache = &layer.cache;
    match layer.judge(&response, generation, proof) {
        Verdict::Answer => return Ok(response),
        Verdict::Futile => {
            cache.counters.not_resent();
            return Ok(response);
        }
        Verdict::StepUp => {
            let error = layer.step_up_error(&response, generation, proof);
            return Err(State::Refused {
                error: Some(Box::new(error)),
            });
        }
        Verdict::Resend => {}
    }
    let resend = replay.and_then(|(resender, replay)| Some((resender, R::replay(replay)?)));
    let resend = resend.map(|(resender, request)| (resender.into_service(), request));
    let Some((service, request)) = resend else {
        cache.counters.not_resent();
        return Ok(response);
    };
    drop(response);
    Err(State::Acquire {
        token: Box::pin(Arc::clone(cache).acquire()),
        pending: Some(Box::new(Pending {
            layer,
            request,
            service,
            replay_limit: None,
            resend: true,
            generation: 0,
            proof: None,
        })),
    })
}
