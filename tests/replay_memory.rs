//! Memory a long-lived stream keeps for a resend: none once its response is known. Open
//! HTTP/2 streams to a real hyper server each send 4 KiB and stay open after their 200. Every
//! chunk a stream sends is a buffer that counts itself alive until its last reference goes: once
//! the transport has written them, none may be left, with `retry_unauthorized` on as with it
//! off (where nothing is kept at all). Exact, where a heap measure would be within its noise.

mod support;

use std::{
    convert::Infallible,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body::Frame;
use http_body_util::StreamBody;
use support::{
    CountingSource,
    upload::{ANSWER_FIRST, Protocol, UploadServer, client},
};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, replay::ReplayableBody};

/// Chunk buffers alive: each counts itself in when made and out when its last `Bytes` goes.
static LIVE_CHUNKS: AtomicUsize = AtomicUsize::new(0);

struct Chunk(Vec<u8>);

impl Chunk {
    fn bytes(len: usize) -> Bytes {
        LIVE_CHUNKS.fetch_add(1, SeqCst);
        Bytes::from_owner(Chunk(vec![7u8; len]))
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        LIVE_CHUNKS.fetch_sub(1, SeqCst);
    }
}

const STREAMS: usize = 2_000;
const SENT_PER_STREAM: usize = 4 * 1024;

/// Chunks still alive once `STREAMS` streams got their 200 and the transport wrote their 4 KiB,
/// the streams still open (waiting up to 10 s for the transport to let go of them).
async fn chunks_alive_with_open_streams(retry: bool) -> usize {
    let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
    let server = UploadServer::start(Protocol::Http2, source.api()).await;
    let auth = AuthLayer::builder(source.clone())
        .retry_unauthorized(retry)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(client::<ReplayableBody>(Protocol::Http2));
    let url = server.url("/stream");

    let mut senders = Vec::with_capacity(STREAMS);
    let mut calls = JoinSet::new();
    for _ in 0..STREAMS {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        for _ in 0..4 {
            tx.try_send(Ok(Frame::data(Chunk::bytes(SENT_PER_STREAM / 4))))
                .unwrap();
        }
        senders.push(tx);
        let request = Request::post(&url)
            .header(ANSWER_FIRST, "1")
            .body(ReplayableBody::new(StreamBody::new(ReceiverStream::new(
                rx,
            ))))
            .unwrap();
        calls.spawn(svc.clone().oneshot(request));
    }
    // The responses stay with the caller while the streams are open, as a bidirectional
    // gRPC call's would.
    let mut responses = Vec::with_capacity(STREAMS);
    while let Some(response) = calls.join_next().await {
        let response = response.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    // The transport has taken every chunk when every channel is empty again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while senders.iter().any(|tx| tx.capacity() < tx.max_capacity()) {
        assert!(tokio::time::Instant::now() < deadline, "chunks not sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Written, they are dropped: wait for it (for as long as a slow machine may need).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while LIVE_CHUNKS.load(SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alive = LIVE_CHUNKS.load(SeqCst);

    // The streams end: the server reads each to its end.
    drop(senders);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.state.drained.load(SeqCst) < STREAMS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams not drained: {} of {STREAMS}, retry {retry}",
            server.state.drained.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(responses);
    assert_eq!(auth.stats().fetches, 1);
    assert_eq!(
        LIVE_CHUNKS.load(SeqCst),
        0,
        "chunks alive after the streams ended"
    );
    alive
}

#[test]
fn open_streams_keep_nothing_for_a_resend_once_answered() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // With retry off nothing is kept: the transport lets go of every chunk it wrote.
    assert_eq!(runtime.block_on(chunks_alive_with_open_streams(false)), 0);
    // With retry on, capture ends with the response: the same. (Capture that went on after
    // the response would keep all four chunks of every stream.)
    let alive = runtime.block_on(chunks_alive_with_open_streams(true));
    assert_eq!(
        alive, 0,
        "{alive} chunks of {STREAMS} open streams kept after their responses"
    );
}
