//! Serving TCP connections with hyper on 127.0.0.1, HTTP/1.1 or HTTP/2 with prior knowledge:
//! shared by the upload stand-in (`upload.rs`) and the end-to-end bench.

use std::{convert::Infallible, future::Future, net::SocketAddr};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

/// The protocol a server speaks and a client uses (HTTP/2 with prior knowledge, h2c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Serves every connection to a free port of 127.0.0.1 with `answer`, until the returned task
/// is aborted. HTTP/2 connections take up to 20,000 concurrent streams and a 128 MiB
/// connection window: a small window makes a client with many streams send crumbs, which h2
/// refuses in bulk.
pub async fn serve<F, Fut, B>(protocol: Protocol, answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(answer.clone());
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                // A connection the client abandons mid-body ends with an error: expected.
                let _ = match protocol {
                    Protocol::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    }
                    Protocol::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .max_concurrent_streams(20_000)
                            .initial_connection_window_size(128 << 20)
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    (addr, task)
}
