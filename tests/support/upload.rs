//! A real hyper server, HTTP/1.1 or HTTP/2 on 127.0.0.1, that takes uploads and answers 401 for
//! a token it does not accept before, while or after reading the body; and hyper-util clients
//! for it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::ProtectedApi;

pub use super::serve::Protocol;

/// Request header: bytes of the body the server reads before it answers 401 for a token it
/// does not accept (`0`: before reading anything). Without it, it reads the whole body first.
pub const REJECT_AFTER: &str = "x-reject-after";
/// Request header: after a 401 sent before the whole body was read, stop reading (hyper then
/// closes the connection) rather than read the rest in the background as servers with a
/// lingering close (nginx) do.
pub const CLOSE_EARLY: &str = "x-close-early";
/// Request header: answer 200 at once for an accepted token, and read the body afterwards
/// (a long-lived stream).
pub const ANSWER_FIRST: &str = "x-answer-first";

#[derive(Default)]
pub struct UploadState {
    pub requests: AtomicUsize,
    pub rejected: AtomicUsize,
    /// Bodies read to their end after a 200 was sent first.
    pub drained: AtomicUsize,
}

/// A running upload server; stopped when dropped.
pub struct UploadServer {
    pub addr: SocketAddr,
    pub state: Arc<UploadState>,
    task: JoinHandle<()>,
}

impl Drop for UploadServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a 200 says about the body the server read: `<length>:<sha-256 in hex>`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", bytes.len())
}

impl UploadServer {
    /// Starts a server that accepts the tokens `api` accepts.
    pub async fn start(protocol: Protocol, api: ProtectedApi) -> Self {
        let state = Arc::new(UploadState::default());
        let shared = Arc::clone(&state);
        let (addr, task) = super::serve::serve(protocol, move |request| {
            answer(request, api.clone(), Arc::clone(&shared))
        })
        .await;
        UploadServer { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn answer(
    request: Request<Incoming>,
    api: ProtectedApi,
    state: Arc<UploadState>,
) -> Result<Response<ResponseBody>, Infallible> {
    state.requests.fetch_add(1, SeqCst);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let reject_after = request
        .headers()
        .get(REJECT_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let answer_first = request.headers().contains_key(ANSWER_FIRST);
    let close_early = request.headers().contains_key(CLOSE_EARLY);
    let mut body = request.into_body();
    if !api.accepts(&token) {
        let mut read = 0;
        while read < reject_after {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
        state.rejected.fetch_add(1, SeqCst);
        if !close_early {
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        }
        return Ok(status(StatusCode::UNAUTHORIZED, Bytes::new()));
    }
    if answer_first {
        // The response stays open until the request body ends, as a bidirectional stream's.
        let (done, open) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            if body.collect().await.is_ok() {
                state.drained.fetch_add(1, SeqCst);
            }
            drop(done);
        });
        let mut response = Response::new(BoxBody::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(open),
        )));
        *response.status_mut() = StatusCode::OK;
        return Ok(response);
    }
    match body.collect().await {
        Ok(collected) => Ok(status(
            StatusCode::OK,
            Bytes::from(digest(&collected.to_bytes())),
        )),
        Err(_) => Ok(status(StatusCode::BAD_REQUEST, Bytes::new())),
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

fn status(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(BoxBody::new(Full::new(body)));
    *response.status_mut() = status;
    response
}

/// A hyper-util client for `B` bodies speaking `protocol`.
pub fn client<B>(protocol: Protocol) -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(protocol == Protocol::Http2)
        .build_http()
}
