use std::{collections::VecDeque, convert::Infallible};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;

use super::*;

/// A body that yields the given frames, one per poll.
struct Frames(VecDeque<Frame<Bytes>>);

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
    let mut frames: VecDeque<Frame<Bytes>> = chunks
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

async fn all(body: ReplayableBody) -> (Bytes, Option<HeaderMap>) {
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

fn captured(body: Frames, limit: usize) -> (ReplayableBody, ReplayHandle) {
    let mut first = ReplayableBody::new(body);
    let handle = first.capture(limit).unwrap();
    (first, handle)
}

#[tokio::test]
async fn many_chunks_and_trailers_are_replayed() {
    let (first, handle) = captured(chunked(&["a", "bb", "ccc", "dddd", "eeeee"], true), 1024);
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
    let (first, handle) = captured(chunked(&["x", "y", "z"], true), 1024);
    drop(first); // the server answered 401 before reading the body
    let (bytes, trailers) = all(ReplayableBody::replay(handle).unwrap()).await;
    assert_eq!(bytes, "xyz");
    assert!(trailers.is_some());
}

#[tokio::test]
async fn a_half_read_body_is_replayed_whole_and_the_first_copy_is_abandoned() {
    let (mut first, handle) = captured(chunked(&["12", "34", "56"], false), 1024);
    let frame = first.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "12");
    // The transport still holds the first copy when the resend is made.
    let replay = ReplayableBody::replay(handle).unwrap();
    assert!(
        !first.is_end_stream(),
        "a taken-over first copy must fail, not end cleanly"
    );
    let err = first.frame().await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<Abandoned>().is_some(), "{err}");
    let (bytes, _) = all(replay).await;
    assert_eq!(bytes, "123456");
}

#[tokio::test]
async fn the_first_copy_reading_on_cannot_cut_the_resend_short() {
    // The corruption: the transport kept reading the first copy past the limit after
    // the 401, and the resend ended early. Now the first copy reads nothing after the
    // takeover.
    let (mut first, handle) = captured(chunked(&["1234", "5678", "9abc"], false), 8);
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "1234"
    );
    let replay = ReplayableBody::replay(handle).unwrap();
    assert!(first.frame().await.unwrap().is_err());
    assert!(first.frame().await.unwrap().is_err(), "it stays abandoned");
    assert_eq!(replay.size_hint().lower(), 4);
    let (bytes, _) = all(replay).await;
    assert_eq!(bytes, "123456789abc");
}

#[tokio::test]
async fn a_first_copy_waiting_for_the_original_is_woken_and_ends_at_the_takeover() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let mut first = ReplayableBody::new(stream);
    let handle = first.capture(1024).unwrap();
    let mut polled = tokio_test::task::spawn(first.frame());
    assert!(polled.poll().is_pending());
    let replay = ReplayableBody::replay(handle).unwrap();
    assert!(polled.is_woken());
    match polled.poll() {
        Poll::Ready(Some(Err(err))) => assert!(err.downcast_ref::<Abandoned>().is_some()),
        other => panic!("the first copy must end with Abandoned, got {other:?}"),
    }
    drop(polled);
    tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
        .await
        .unwrap();
    drop(tx);
    let (bytes, _) = all(replay).await;
    assert_eq!(bytes, "late");
}

/// A `Stream` over a tokio channel, without pulling in tokio-stream.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct Rx<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

#[tokio::test]
async fn past_the_limit_nothing_is_kept_and_no_replay_is_offered() {
    let (first, handle) = captured(chunked(&["1234", "5678", "9"], false), 8);
    let (bytes, _) = all(first).await;
    assert_eq!(bytes, "123456789", "the first send is whole");
    assert!(ReplayableBody::replay(handle).is_none());
}

#[tokio::test]
async fn a_response_that_is_not_a_401_frees_what_was_kept_and_stops_keeping() {
    let (mut first, handle) = captured(chunked(&["ab", "cd"], false), 1024);
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "ab"
    );
    let BodyState::First(shared) = &first.state else {
        unreachable!()
    };
    let shared = Arc::clone(shared);
    assert_eq!(lock(&shared).chunks.len(), 1);
    drop(handle); // the response was a 200
    assert!(lock(&shared).chunks.is_empty());
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "cd"
    );
    assert!(
        lock(&shared).chunks.is_empty(),
        "nothing kept after the answer"
    );
}

#[tokio::test]
async fn an_infallible_boxed_body_taken_over_half_read_ends_its_first_copy_instead_of_failing() {
    use http_body_util::combinators::BoxBody;

    use crate::replay::{KeptBody, keep};

    // Wrapped in place as the layer wraps it before the first send.
    let mut first: BoxBody<Bytes, Infallible> = BoxBody::new(chunked(&["12", "34", "56"], false));
    let kept = keep(&mut first, 1024).expect("kept for a resend");
    assert!(matches!(kept, KeptBody::Streamed { .. }));
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "12"
    );
    // The 401 came: the resend takes the original over while the first copy is half read.
    let resend = kept.into_body().expect("a resend is offered");
    for _ in 0..2 {
        let mut next = tokio_test::task::spawn(first.frame());
        match next.poll() {
            Poll::Ready(None) => {}
            Poll::Ready(Some(Ok(frame))) => {
                panic!("the first copy read on after the takeover: {frame:?}")
            }
            Poll::Pending => panic!("the first copy must end at once, not wait"),
        }
    }
    assert_eq!(resend.collect().await.unwrap().to_bytes(), "123456");
}

#[tokio::test]
async fn an_original_body_that_fails_offers_no_replay() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    tx.try_send(Ok(Frame::data(Bytes::from_static(b"a"))))
        .unwrap();
    tx.try_send(Err(std::io::Error::other("upload broke")))
        .unwrap();
    drop(tx);
    let mut first = ReplayableBody::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    let handle = first.capture(1024).unwrap();
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "a"
    );
    let err = first.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upload broke");
    assert!(
        ReplayableBody::replay(handle).is_none(),
        "a resend could not be whole"
    );
}

#[tokio::test]
async fn without_capture_frames_pass_through() {
    let body = ReplayableBody::new(chunked(&["p", "q"], true));
    let (bytes, trailers) = all(body).await;
    assert_eq!(bytes, "pq");
    assert!(trailers.is_some());
}
