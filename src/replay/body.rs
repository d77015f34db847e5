//! [`ReplayableBody`]: a streaming body that keeps the bytes it sends, up to a limit, so the
//! request can be sent again after a 401.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A request body that can be sent twice.
///
/// While the first copy is sent, every data frame the inner service reads is kept (the
/// `Bytes` are shared, not copied) together with the trailers, up to a limit. A replay, made
/// with [`ReplayBody::replay`](super::ReplayBody::replay), yields the kept frames and then, if
/// the first send stopped early (a server often answers 401 before reading the body), goes on
/// reading the original body where the first copy left off. Once more than the limit was read,
/// nothing is kept and no replay is offered: the 401 goes back to the caller.
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
pub struct ReplayableBody<B> {
    /// Set once the layer prepared a replay; shared between the first send and the replay.
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// The original body, while this copy is the one reading it.
    inner: Option<Pin<Box<B>>>,
    /// Kept frames this copy has yielded so far.
    position: usize,
    trailers_sent: bool,
}

struct Shared<B> {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    trailers: Option<HeaderMap>,
    /// The original body ended.
    complete: bool,
    /// More than `limit` bytes were read: nothing is kept, no replay.
    overflow: bool,
    /// The original body, parked by a copy that was dropped before it ended.
    rest: Option<Pin<Box<B>>>,
    /// A replay waiting for the first copy to let go of the original body.
    waiting: Option<Waker>,
}

/// What the layer keeps to build the replay of a [`ReplayableBody`].
pub struct ReplayHandle<B>(Arc<Mutex<Shared<B>>>);

impl<B> fmt::Debug for ReplayHandle<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayHandle").finish_non_exhaustive()
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> ReplayableBody<B> {
    /// Wraps `body`. Nothing is kept until the layer prepares a replay.
    pub fn new(body: B) -> Self {
        ReplayableBody {
            shared: None,
            inner: Some(Box::pin(body)),
            position: 0,
            trailers_sent: false,
        }
    }

    /// Starts keeping what is read, up to `limit` bytes, and returns the handle for a replay.
    pub(crate) fn capture(&mut self, limit: usize) -> ReplayHandle<B> {
        let shared = Arc::new(Mutex::new(Shared {
            chunks: Vec::new(),
            len: 0,
            limit,
            trailers: None,
            complete: false,
            overflow: false,
            rest: None,
            waiting: None,
        }));
        self.shared = Some(Arc::clone(&shared));
        ReplayHandle(shared)
    }

    /// The copy for the second send, unless more than the limit was read.
    pub(crate) fn replay(handle: ReplayHandle<B>) -> Option<Self> {
        if lock(&handle.0).overflow {
            return None;
        }
        Some(ReplayableBody {
            shared: Some(handle.0),
            inner: None,
            position: 0,
            trailers_sent: false,
        })
    }
}

impl<B> Body for ReplayableBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(shared) = this.shared.clone() else {
            // Not capturing: pass frames through.
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            return inner.as_mut().poll_frame(cx).map(|frame| {
                frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining()))))
            });
        };

        {
            let state = lock(&shared);
            if this.position < state.chunks.len() {
                let chunk = state.chunks[this.position].clone();
                this.position += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if state.complete {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(trailers) = state.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
        }

        if this.inner.is_none() {
            let mut state = lock(&shared);
            match state.rest.take() {
                Some(rest) => this.inner = Some(rest),
                None => {
                    // The first copy still holds the original body (the connection is still
                    // sending it): wait until it lets go, rather than end the body short.
                    state.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let mut state = lock(&shared);
        match frame {
            None => {
                state.complete = true;
                this.inner = None;
                this.trailers_sent = true;
                if let Some(waker) = state.waiting.take() {
                    waker.wake();
                }
                Poll::Ready(None)
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    if !state.overflow {
                        if state.len + bytes.len() > state.limit {
                            state.overflow = true;
                            state.chunks = Vec::new();
                        } else {
                            state.len += bytes.len();
                            state.chunks.push(bytes.clone());
                        }
                    }
                    this.position = state.chunks.len();
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    if !state.overflow {
                        state.trailers.clone_from(&trailers);
                    }
                    state.complete = true;
                    this.inner = None;
                    this.trailers_sent = true;
                    if let Some(waker) = state.waiting.take() {
                        waker.wake();
                    }
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match (&self.shared, &self.inner) {
            (None, Some(inner)) => inner.is_end_stream(),
            (None, None) => true,
            (Some(shared), _) => {
                let state = lock(shared);
                state.complete
                    && self.position >= state.chunks.len()
                    && (self.trailers_sent || state.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.shared, &self.inner) {
            (_, Some(inner)) if self.position == 0 => inner.size_hint(),
            (Some(shared), _) => {
                let state = lock(shared);
                if state.complete {
                    let left: usize = state.chunks[self.position.min(state.chunks.len())..]
                        .iter()
                        .map(Bytes::len)
                        .sum();
                    SizeHint::with_exact(left as u64)
                } else {
                    SizeHint::default()
                }
            }
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for ReplayableBody<B> {
    fn drop(&mut self) {
        // Park the original body so that a replay can go on reading it, and wake the replay if
        // it is waiting for it.
        if let (Some(shared), Some(inner)) = (&self.shared, self.inner.take()) {
            let waiting = {
                let mut state = lock(shared);
                if !state.complete {
                    state.rest = Some(inner);
                }
                state.waiting.take()
            };
            if let Some(waker) = waiting {
                waker.wake();
            }
        }
    }
}

impl<B> fmt::Debug for ReplayableBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayableBody")
            .field("capturing", &self.shared.is_some())
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};
    use http_body::Frame;
    use http_body_util::BodyExt;

    use super::*;

    /// A body that yields the given frames, one per poll.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn chunked(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", HeaderValue::from_static("abc"));
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames)
    }

    async fn all<B: Body<Data = Bytes>>(body: B) -> (Bytes, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn many_chunks_and_trailers_are_replayed() {
        let chunks = ["a", "bb", "ccc", "dddd", "eeeee"];
        let mut first = ReplayableBody::new(chunked(&chunks, true));
        let handle = first.capture(1024);
        let (bytes, trailers) = all(first).await;
        assert_eq!(bytes, "abbcccddddeeeee");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");

        let replay = ReplayableBody::replay(handle).unwrap();
        assert_eq!(replay.size_hint().exact(), Some(15));
        let (bytes, trailers) = all(replay).await;
        assert_eq!(bytes, "abbcccddddeeeee");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    }

    #[tokio::test]
    async fn a_body_the_server_never_read_is_replayed_from_the_original() {
        let mut first = ReplayableBody::new(chunked(&["x", "y", "z"], true));
        let handle = first.capture(1024);
        drop(first); // the server answered 401 before reading the body
        let (bytes, trailers) = all(ReplayableBody::replay(handle).unwrap()).await;
        assert_eq!(bytes, "xyz");
        assert!(trailers.is_some());
    }

    #[tokio::test]
    async fn a_half_read_body_is_replayed_whole() {
        let mut first = ReplayableBody::new(chunked(&["12", "34", "56"], false));
        let handle = first.capture(1024);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "12");
        drop(first);
        let (bytes, _) = all(ReplayableBody::replay(handle).unwrap()).await;
        assert_eq!(bytes, "123456");
    }

    #[tokio::test]
    async fn a_replay_waits_for_the_first_copy_to_let_go_of_the_original() {
        let mut first = ReplayableBody::new(chunked(&["a", "b", "c"], false));
        let handle = first.capture(1024);
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        let mut replay = tokio_test::task::spawn(all(ReplayableBody::replay(handle).unwrap()));
        // The replay yields the kept "a", then must wait: the first copy still has the body.
        assert!(replay.poll().is_pending());
        drop(first);
        assert!(replay.is_woken());
        match replay.poll() {
            Poll::Ready((bytes, _)) => assert_eq!(bytes, "abc"),
            Poll::Pending => panic!("the replay must finish once the body is parked"),
        }
    }

    #[tokio::test]
    async fn past_the_limit_nothing_is_kept_and_no_replay_is_offered() {
        let mut first = ReplayableBody::new(chunked(&["1234", "5678", "9"], false));
        let handle = first.capture(8);
        let (bytes, _) = all(first).await;
        assert_eq!(bytes, "123456789", "the first send is whole");
        assert!(ReplayableBody::replay(handle).is_none());
    }

    #[tokio::test]
    async fn without_capture_frames_pass_through() {
        let body = ReplayableBody::new(chunked(&["p", "q"], true));
        let (bytes, trailers) = all(body).await;
        assert_eq!(bytes, "pq");
        assert!(trailers.is_some());
    }
}
