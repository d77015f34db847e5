//! [`ResponseFuture`]: the state machine of one request through [`AuthService`](crate::AuthService).
//!
//! ```text
//!              token cached                 2xx, 403, ...
//!   call ─────────────────────► Send ───────────────────────────► done
//!     │                          │ 401 for the token it carried
//!     │ no fresh token           ▼
//!     └─► Acquire ──► Send     forget that token (if still current),
//!                                and if the body can be replayed:
//!                              Acquire ──► Ready ──► Resend ──► done (whatever it answers)
//! ```
//!
//! `Acquire` waits for the cache's single-flight fetch (a boxed future: this is the slow path).
//! `Ready` polls the inner service's readiness again before the resend, as the tower contract asks.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError, Error,
    cache::{Entry, TokenCache},
    challenge,
    message::{AuthRequest, AuthResponse},
};

pub(crate) type Acquire = Pin<Box<dyn Future<Output = Result<Arc<Entry>, Error>> + Send>>;

pin_project! {
    /// Response future of [`AuthService`](crate::AuthService).
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
        R: AuthRequest,
    {
        #[pin]
        state: State<S::Future, S, R>,
        // `None` for requests sent without the token, or refused.
        cache: Option<Arc<TokenCache>>,
        // Generation of the token the request in flight carries.
        generation: u64,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, R>
    where
        R: AuthRequest,
    {
        // Waiting for a token; `resend` is set when this is the wait before a resend.
        Acquire {
            token: Acquire,
            request: Option<R>,
            service: Option<S>,
            replay_limit: Option<usize>,
            resend: bool,
        },
        // The request is with the inner service; `replay` is kept for a resend after a 401.
        Send {
            #[pin]
            fut: F,
            replay: Option<(S, R::Replay)>,
        },
        // Waiting for the inner service to be ready for the resend.
        Ready {
            request: Option<R>,
            service: Option<S>,
        },
        // The resend, or a request sent without the token: whatever it answers goes to the caller.
        Resend {
            #[pin]
            fut: F,
        },
        // The request was refused before it was sent.
        Refused {
            error: Option<Error>,
        },
        Done,
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    R: AuthRequest,
{
    /// The request was sent with a cached token.
    pub(crate) fn sent(
        fut: S::Future,
        cache: Arc<TokenCache>,
        generation: u64,
        replay: Option<(S, R::Replay)>,
    ) -> Self {
        ResponseFuture {
            state: State::Send { fut, replay },
            cache: Some(cache),
            generation,
        }
    }

    /// The request was sent without the token (another origin).
    pub(crate) fn passed(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Resend { fut },
            cache: None,
            generation: 0,
        }
    }

    /// The request was not sent.
    pub(crate) fn refused(error: Error) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            cache: None,
            generation: 0,
        }
    }

    /// The request waits for a token; `service` is the readied inner service.
    pub(crate) fn acquiring(
        cache: Arc<TokenCache>,
        request: R,
        service: S,
        replay_limit: Option<usize>,
    ) -> Self {
        ResponseFuture {
            state: State::Acquire {
                token: Box::pin(Arc::clone(&cache).acquire()),
                request: Some(request),
                service: Some(service),
                replay_limit,
                resend: false,
            },
            cache: Some(cache),
            generation: 0,
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

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let next = match this.state.project() {
                StateProj::Acquire {
                    token,
                    request,
                    service,
                    replay_limit,
                    resend,
                } => {
                    let entry = match ready!(token.as_mut().poll(cx)) {
                        Ok(entry) => entry,
                        Err(err) => {
                            self.set_done();
                            return Poll::Ready(Err(err.into()));
                        }
                    };
                    let (Some(mut request), Some(mut service)) = (request.take(), service.take())
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    *this.generation = entry.generation;
                    let header_name = match this.cache {
                        Some(cache) => cache.settings().header_name.clone(),
                        None => return Poll::Ready(Err(polled_after_completion())),
                    };
                    if *resend {
                        request
                            .headers_mut()
                            .insert(header_name, entry.header.clone());
                        State::Ready {
                            request: Some(request),
                            service: Some(service),
                        }
                    } else {
                        let replay = match *replay_limit {
                            Some(limit) => request.prepare_replay(limit),
                            None => None,
                        };
                        request
                            .headers_mut()
                            .insert(header_name, entry.header.clone());
                        let fut = service.call(request);
                        State::Send {
                            fut,
                            replay: replay.map(|r| (service, r)),
                        }
                    }
                }
                StateProj::Send { fut, replay } => {
                    let response = match ready!(fut.poll(cx)) {
                        Ok(response) => response,
                        Err(err) => {
                            self.set_done();
                            return Poll::Ready(Err(err.into()));
                        }
                    };
                    let Some(cache) = this.cache.as_ref() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if !challenge::rejects_token(&response, &cache.settings().scheme) {
                        self.set_done();
                        return Poll::Ready(Ok(response));
                    }
                    // Forget the rejected token only if nothing newer replaced it meanwhile.
                    cache.invalidate(*this.generation);
                    let resend = replay
                        .take()
                        .and_then(|(service, replay)| Some((service, R::replay(replay)?)));
                    let Some((service, request)) = resend else {
                        cache.counters.not_resent();
                        self.set_done();
                        return Poll::Ready(Ok(response));
                    };
                    drop(response);
                    State::Acquire {
                        token: Box::pin(Arc::clone(cache).acquire()),
                        request: Some(request),
                        service: Some(service),
                        replay_limit: None,
                        resend: true,
                    }
                }
                StateProj::Ready { request, service } => {
                    let Some(svc) = service.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Err(err) = ready!(svc.poll_ready(cx)) {
                        self.set_done();
                        return Poll::Ready(Err(err.into()));
                    }
                    let (Some(request), Some(mut service)) = (request.take(), service.take())
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    if let Some(cache) = this.cache.as_ref() {
                        cache.counters.retried();
                    }
                    State::Resend {
                        fut: service.call(request),
                    }
                }
                StateProj::Resend { fut } => {
                    let result = ready!(fut.poll(cx));
                    self.set_done();
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Refused { error } => {
                    let error = error.take();
                    self.set_done();
                    return Poll::Ready(Err(match error {
                        Some(error) => error.into(),
                        None => polled_after_completion(),
                    }));
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    R: AuthRequest,
{
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
            State::Acquire { resend: false, .. } => "Acquire",
            State::Acquire { resend: true, .. } => "Refresh",
            State::Send { .. } => "Send",
            State::Ready { .. } => "Ready",
            State::Resend { .. } => "Resend",
            State::Refused { .. } => "Refused",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn polled_after_completion() -> BoxError {
    "tower-bearer ResponseFuture polled after completion".into()
}
