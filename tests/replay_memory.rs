//! Memory a long-lived stream keeps for a resend: none once its response is known. 10,000
//! concurrent HTTP/2 streams to a real hyper server each send 4 KiB and stay open after their
//! 200; the heap in use is compared with the same streams sent with `retry_unauthorized(false)`
//! (nothing kept at all). Counted with a global allocator that tracks live bytes.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
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

struct LiveBytes;

static LIVE: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, SeqCst);
        LIVE.fetch_sub(layout.size(), SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

const STREAMS: usize = 10_000;
const SENT_PER_STREAM: usize = 4 * 1024;

/// Heap in use once `STREAMS` streams got their 200 and the transport took their 4 KiB,
/// the streams still open; and the server's count of streams it read to the end afterwards.
async fn heap_with_open_streams(retry: bool) -> usize {
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
            tx.try_send(Ok(Frame::data(Bytes::from(vec![7u8; SENT_PER_STREAM / 4]))))
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    let heap = LIVE.load(SeqCst);

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
    heap
}

#[test]
fn open_streams_keep_nothing_for_a_resend_once_answered() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The heap of one run moves by up to 15 MiB (1.5 KiB a stream) from run to run, with the
    // transport's buffers: the least of three interleaved runs of each is what is compared.
    let (mut without, mut with) = (usize::MAX, usize::MAX);
    for _ in 0..3 {
        without = without.min(runtime.block_on(heap_with_open_streams(false)));
        with = with.min(runtime.block_on(heap_with_open_streams(true)));
    }
    let kept = with.saturating_sub(without) / STREAMS;
    println!(
        "{STREAMS} open streams, {SENT_PER_STREAM} bytes sent each: heap {} KiB with retry on, \
         {} KiB off: {kept} bytes per stream kept for resends",
        with / 1024,
        without / 1024
    );
    // Capture that went on after the response would keep the 4 KiB each stream sent.
    assert!(
        kept < SENT_PER_STREAM / 2,
        "{kept} bytes per stream kept after the response"
    );
}
