//! [`ReplayableBody`]: a streaming body that keeps the bytes it sends, up to a limit, so the
//! request can be sent again after a 401.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::BoxError;

type Original = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// A streaming request body that can be sent twice.
///
/// While the first copy is sent, every data frame the transport reads is kept (the `Bytes` are
/// shared, not copied) together with the trailers, up to the [replay
/// limit](crate::AuthLayerBuilder::replay_limit). After a 401 the resend yields the kept frames
/// and then goes on reading the original body where the first copy left off: a server often
/// answers 401 before it has read the whole body.
///
/// # A resend is byte-identical, or it does not happen
///
/// - The moment the resend is made, it takes the original body over: the first copy can read
///   no more of it (a transport often goes on reading a body after the response came back), and
///   its next poll ends it with [`Abandoned`], so the connection that carried it is closed or
///   its stream reset rather than a cut body looking whole. The resend never waits for the
///   first copy.
/// - Once more than the limit was read, or the original body failed, nothing is kept and no
///   resend is offered: the 401 goes back to the caller.
/// - Once the response is known not to be a 401, nothing more is kept and the kept bytes are
///   freed, so a long-lived stream holds no copy of what it sent.
///
/// Use it as the body type of a client whose requests stream, such as a proxy forwarding
/// hyper's `Incoming`:
///
/// ```
/// use tower_bearer::replay::ReplayableBody;
/// # fn forward(req: http::Request<http_body_util::Full<bytes::Bytes>>) {
/// let req = req.map(ReplayableBody::new);
/// # let _ = req;
/// # }
/// ```
pub struct ReplayableBody {
    state: BodyState,
}

enum BodyState {
    /// No resend was prepared: frames pass through. In a mutex only so that the body is `Sync`
    /// (as `BoxBody` wants) whatever the original is; polling takes no lock.
    Plain(Mutex<Original>),
    /// The first send, keeping what it reads.
    First(Arc<Mutex<Shared>>),
    /// The resend: the kept frames, then the rest of the original.
    Resend(Arc<Mutex<Shared>>),
}

struct Shared {
    /// The original body, until it ends or fails.
    original: Option<Original>,
    /// Data frames read by the first copy and not yet yielded by the resend.
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks` (while keeping: all bytes read so far).
    len: usize,
    limit: usize,
    trailers: Option<HeaderMap>,
    /// The original body ended (after its trailers, if any).
    ended: bool,
    /// Frames read are kept: a resend may still be made.
    keeping: bool,
    /// No resend can be made: more than the limit was read, the original failed, or the
    /// response was not a 401.
    spoiled: bool,
    /// A resend was made: it alone reads the original now.
    taken_over: bool,
    /// The task of the first copy, if it waits on the original: woken at a takeover so that
    /// it ends instead of waiting for frames that now go to the resend.
    first_waiting: Option<Waker>,
}

impl Shared {
    fn spoil(&mut self) {
        self.keeping = false;
        self.spoiled = true;
        self.chunks = VecDeque::new();
        self.len = 0;
        self.trailers = None;
    }
}

/// The error that ends the first copy of a [`ReplayableBody`] polled after its request was
/// resent: the transport that still sends it should abandon that send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "request body abandoned: the request was answered 401 and is being resent with a new token"
)]
pub struct Abandoned;

/// What the layer keeps to build the resend of a [`ReplayableBody`]. Dropping it (the
/// response was not a 401) stops the keeping and frees what was kept.
pub(crate) struct ReplayHandle(Option<Arc<Mutex<Shared>>>);

impl fmt::Debug for ReplayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayHandle").finish_non_exhaustive()
    }
}

impl Drop for ReplayHandle {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            lock(&shared).spoil();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn plain(original: &Mutex<Original>) -> MutexGuard<'_, Original> {
    original.lock().unwrap_or_else(PoisonError::into_inner)
}

fn data_bytes<D: Buf>(mut data: D) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

impl ReplayableBody {
    /// Wraps `body`. Nothing is kept until the layer prepares a resend.
    pub fn new<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Buf,
        B::Error: Into<BoxError>,
    {
        ReplayableBody {
            state: BodyState::Plain(Mutex::new(Box::pin(
                body.map_frame(|f| f.map_data(data_bytes))
                    .map_err(Into::into),
            ))),
        }
    }

    /// Starts keeping what is read, up to `limit` bytes, and returns the handle for a resend;
    /// `None` if this copy is itself a resend or already keeps.
    pub(crate) fn capture(&mut self, limit: usize) -> Option<ReplayHandle> {
        let BodyState::Plain(_) = &self.state else {
            return None;
        };
        let shared = Arc::new(Mutex::new(Shared {
            original: None,
            chunks: VecDeque::new(),
            len: 0,
            limit,
            trailers: None,
            ended: false,
            keeping: true,
            spoiled: false,
            taken_over: false,
            first_waiting: None,
        }));
        let BodyState::Plain(original) =
            std::mem::replace(&mut self.state, BodyState::First(Arc::clone(&shared)))
        else {
            return None;
        };
        lock(&shared).original = Some(
            original
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        );
        Some(ReplayHandle(Some(shared)))
    }

    /// The copy for the resend, unless no resend can be made. From now on the first copy reads
    /// nothing more of the original body.
    pub(crate) fn replay(mut handle: ReplayHandle) -> Option<Self> {
        let shared = handle.0.take()?;
        let waiting = {
            let mut state = lock(&shared);
            if state.spoiled || state.taken_over {
                state.spoil();
                return None;
            }
            state.keeping = false;
            state.taken_over = true;
            state.first_waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
        Some(ReplayableBody {
            state: BodyState::Resend(shared),
        })
    }
}

type PolledFrame = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// Reads the next frame of the original body for the first copy, keeping it if a resend may
/// still need it.
fn poll_first(state: &mut Shared, cx: &mut Context<'_>) -> PolledFrame {
    if state.taken_over {
        return Poll::Ready(Some(Err(Abandoned.into())));
    }
    let Some(original) = state.original.as_mut() else {
        return Poll::Ready(None);
    };
    let frame = match original.as_mut().poll_frame(cx) {
        Poll::Pending => {
            state.first_waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(frame) => frame,
    };
    state.first_waiting = None;
    match frame {
        None => {
            state.original = None;
            state.ended = true;
            Poll::Ready(None)
        }
        Some(Err(err)) => {
            // A resend could not be whole.
            state.original = None;
            state.spoil();
            Poll::Ready(Some(Err(err)))
        }
        Some(Ok(frame)) => {
            if let Some(data) = frame.data_ref() {
                if state.keeping {
                    if state.len + data.len() > state.limit {
                        state.spoil();
                    } else {
                        state.len += data.len();
                        state.chunks.push_back(data.clone());
                    }
                }
            } else if let Some(trailers) = frame.trailers_ref() {
                if state.keeping {
                    state.trailers = Some(trailers.clone());
                }
                state.original = None;
                state.ended = true;
            }
            Poll::Ready(Some(Ok(frame)))
        }
    }
}

/// The next frame of the resend: a kept one, or the next of the original body.
fn poll_resend(state: &mut Shared, cx: &mut Context<'_>) -> PolledFrame {
    if let Some(chunk) = state.chunks.pop_front() {
        state.len -= chunk.len();
        return Poll::Ready(Some(Ok(Frame::data(chunk))));
    }
    if let Some(trailers) = state.trailers.take() {
        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
    }
    let Some(original) = state.original.as_mut() else {
        return Poll::Ready(None);
    };
    let frame = std::task::ready!(original.as_mut().poll_frame(cx));
    if !matches!(&frame, Some(Ok(f)) if f.is_data()) {
        state.original = None;
        state.ended = true;
    }
    Poll::Ready(frame)
}

impl Body for ReplayableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        match &mut self.get_mut().state {
            BodyState::Plain(original) => original
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .poll_frame(cx),
            BodyState::First(shared) => poll_first(&mut lock(shared), cx),
            BodyState::Resend(shared) => poll_resend(&mut lock(shared), cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Plain(original) => plain(original).is_end_stream(),
            BodyState::First(shared) => {
                // Taken over, the first copy is not at its end: its next poll fails with
                // `Abandoned`, so the transport aborts the send instead of ending it cleanly.
                let state = lock(shared);
                !state.taken_over && state.original.as_ref().is_none_or(|o| o.is_end_stream())
            }
            BodyState::Resend(shared) => {
                let state = lock(shared);
                state.chunks.is_empty()
                    && state.trailers.is_none()
                    && state.original.as_ref().is_none_or(|o| o.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Plain(original) => plain(original).size_hint(),
            BodyState::First(shared) => {
                let state = lock(shared);
                state
                    .original
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |o| o.size_hint())
            }
            BodyState::Resend(shared) => {
                // What is kept plus what the original has left: exact when the original's is,
                // so a transport that sets `content-length` from it sets the first send's.
                let state = lock(shared);
                let rest = state
                    .original
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |o| o.size_hint());
                let kept = state.len as u64;
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(kept));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(kept));
                }
                hint
            }
        }
    }
}

/// A [`ReplayableBody`] whose original cannot fail, for a body type whose error is
/// `Infallible`: a first copy polled after the resend took over ends there (the request it
/// carries was already answered 401) instead of failing.
pub(crate) struct EndsWhenAbandoned(pub(crate) ReplayableBody);

impl Body for EndsWhenAbandoned {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match std::task::ready!(Pin::new(&mut self.get_mut().0).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(_)) | None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl fmt::Debug for ReplayableBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            BodyState::Plain(_) => "plain",
            BodyState::First(_) => "first send",
            BodyState::Resend(_) => "resend",
        };
        f.debug_struct("ReplayableBody")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
