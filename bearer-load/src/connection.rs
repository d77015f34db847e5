//! A closed-loop worker's own connections ([`WorkerConnection`]): one per origin, opened on
//! the first request and again after it closes, as a load tool's worker holds its connection
//! (oha's do). A pooled client (hyper-util's) finds a connection for each request by hashing
//! and comparing its origin, which cost bearer-load more than the rest of a request; a worker
//! sends one request at a time, so it keeps its connection without a pool.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{
    HeaderValue, Request, Response, Uri,
    header::HOST,
    uri::{self, PathAndQuery},
};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::connect::{Connection, HttpConnector},
    rt::TokioExecutor,
};
use tower::ServiceExt;
use tower_bearer::BoxError;

use crate::transport::Body;

/// A connection's sending half.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

/// What a worker's connections share with the requests in flight on them.
struct Slots {
    connector: HttpsConnector<HttpConnector>,
    /// h2c by prior knowledge on `http://`, h2 only on `https://`.
    http2: bool,
    /// The origins of the run's URLs, each with its connection.
    origins: Vec<OriginSlot>,
}

/// One origin of the run's URLs and the worker's connection to it.
struct OriginSlot {
    /// `scheme://authority`.
    origin: String,
    /// Its `Host` header for HTTP/1.1, made once rather than for every request.
    host: Option<HeaderValue>,
    sender: Option<Sender>,
}

/// The inner service of one closed-loop worker's layer: its requests go on its own
/// connections. Cheap to clone (the layer keeps a clone for a resend).
#[derive(Clone)]
pub struct WorkerConnection {
    slots: Arc<Mutex<Slots>>,
}

impl WorkerConnection {
    /// A worker's connections to the origins of `urls`, none open yet.
    pub fn new(connector: HttpsConnector<HttpConnector>, http2: bool, urls: &[Uri]) -> Self {
        let mut origins: Vec<OriginSlot> = Vec::new();
        for url in urls {
            let origin = origin(url);
            if !origins.iter().any(|slot| slot.origin == origin) {
                origins.push(OriginSlot {
                    origin,
                    host: url
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                    sender: None,
                });
            }
        }
        WorkerConnection {
            slots: Arc::new(Mutex::new(Slots {
                connector,
                http2,
                origins,
            })),
        }
    }
}

impl WorkerConnection {
    /// Closes the worker's connections: after a request that did not finish (a timeout, a
    /// body that broke off), whose connection is in no state to carry the next one.
    pub fn forget(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            for slot in &mut slots.origins {
                slot.sender = None;
            }
        }
    }
}

/// `scheme://authority` of an absolute URL.
fn origin(url: &Uri) -> String {
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    )
}

/// Whether `url` goes to `origin` (`scheme://authority`), without making a string.
fn goes_to(url: &Uri, origin: &str) -> bool {
    let scheme = url.scheme_str().unwrap_or("http");
    let authority = url.authority().map_or("", |a| a.as_str());
    origin.len() == scheme.len() + 3 + authority.len()
        && origin.starts_with(scheme)
        && origin.ends_with(authority)
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

impl tower::Service<Request<Body>> for WorkerConnection {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture {
        let slots = Arc::clone(&self.slots);
        Box::pin(async move {
            let (index, taken, host) = {
                let mut slots = slots
                    .lock()
                    .map_err(|_| "a worker's connections were poisoned")?;
                let index = slots
                    .origins
                    .iter()
                    .position(|slot| goes_to(request.uri(), &slot.origin))
                    .ok_or("a request to an origin the run does not load")?;
                let slot = &mut slots.origins[index];
                (index, slot.sender.take(), slot.host.clone())
            };
            let sender = match taken {
                Some(sender) if !sender.is_closed() => sender,
                // Boxed: connecting is rare, and its large state would otherwise be copied
                // into every request's future.
                _ => Box::pin(connect(Arc::clone(&slots), request.uri().clone())).await?,
            };
            // The connection goes back once the answer's head came (a request dropped before,
            // at a timeout, drops it, and the next one connects again); the next request on it
            // waits until the body is read (`ready`), as HTTP/1.1 sends one at a time.
            let put_back = |sender: Sender| {
                if let Ok(mut slots) = slots.lock()
                    && let Some(slot) = slots.origins.get_mut(index)
                {
                    slot.sender = Some(sender);
                }
            };
            match sender {
                Sender::Http1(mut sender) => {
                    sender.ready().await?;
                    let answer = sender.send_request(origin_form(request, host)?).await?;
                    put_back(Sender::Http1(sender));
                    Ok(answer)
                }
                Sender::Http2(mut sender) => {
                    sender.ready().await?;
                    let answer = sender.send_request(request).await?;
                    put_back(Sender::Http2(sender));
                    Ok(answer)
                }
            }
        })
    }
}

/// An HTTP/1.1 request as a connection sends it: the path and query as its target (moved out
/// of the URI, not parsed again), and the authority in `Host` (`host`, made once per origin).
fn origin_form(
    mut request: Request<Body>,
    host: Option<HeaderValue>,
) -> Result<Request<Body>, BoxError> {
    let mut target = uri::Parts::default();
    target.path_and_query = Some(
        std::mem::take(request.uri_mut())
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *request.uri_mut() = Uri::from_parts(target)?;
    if let Some(host) = host {
        request.headers_mut().entry(HOST).or_insert(host);
    }
    Ok(request)
}

/// Opens a connection to `uri`'s origin: HTTP/2 when asked for or negotiated by ALPN, else
/// HTTP/1.1; its driving task runs until it closes.
async fn connect(slots: Arc<Mutex<Slots>>, uri: Uri) -> Result<Sender, BoxError> {
    let (connector, http2) = {
        let slots = slots
            .lock()
            .map_err(|_| "a worker's connections were poisoned")?;
        (slots.connector.clone(), slots.http2)
    };
    let io = connector.oneshot(uri).await?;
    if http2 || io.connected().is_negotiated_h2() {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Sender::Http1(sender))
    }
}
