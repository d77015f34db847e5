//! The built-in demo: a token endpoint (`client_credentials`, short-lived tokens) and a
//! protected API on 127.0.0.1 (port 0 each), which count what they see so that the tool's
//! figures can be checked against them.
//!
//! The API answers `200 ok` to a request with an unexpired demo token and `401` with
//! `WWW-Authenticate: Bearer error="invalid_token"` otherwise. It speaks HTTP/1.1 and h2c; with
//! [`DemoOptions::tls`] it is served over TLS (h2 or HTTP/1.1 by ALPN) with a self-signed
//! certificate made for the run (rcgen), which the tool trusts. The token endpoint stays plain
//! HTTP on loopback.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// The demo client's id.
pub const CLIENT_ID: &str = "bearer-load-demo";
/// The demo client's secret (a demo value, not a credential).
pub const CLIENT_SECRET: &str = "demo-secret";

/// How the demo behaves.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Serve the API over TLS with a self-signed certificate.
    pub tls: bool,
    /// How long the tokens it issues live (whole seconds, at least 1).
    pub token_lifetime: Duration,
    /// How long the token endpoint takes to answer.
    pub fetch_latency: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            tls: false,
            token_lifetime: Duration::from_secs(5),
            fetch_latency: Duration::from_millis(5),
        }
    }
}

/// What the demo servers counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DemoCounts {
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// Tokens it issued (requests with the right client and grant).
    pub tokens_issued: u64,
    /// Requests to the API.
    pub api_requests: u64,
    /// API requests answered 200.
    pub api_ok: u64,
    /// API requests answered 401.
    pub api_rejected: u64,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    api_requests: AtomicU64,
    api_ok: AtomicU64,
    api_rejected: AtomicU64,
}

/// The running demo servers; dropping it stops them.
pub struct Demo {
    token_url: String,
    api_url: Uri,
    certificate: Option<CertificateDer<'static>>,
    options: DemoOptions,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl Demo {
    /// Starts the token endpoint and the API on free ports of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// [`Error::Demo`] if a port cannot be bound or the certificate cannot be made.
    pub async fn start(options: DemoOptions) -> Result<Demo, Error> {
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        let bind = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Error::Demo(format!("cannot bind 127.0.0.1: {e}")))
        };
        let (token_listener, api_listener) = (bind().await?, bind().await?);
        let token_addr = token_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;

        let lifetime = options.token_lifetime.as_secs().max(1);
        let token_task = {
            let counters = counters.clone();
            let latency = options.fetch_latency;
            tokio::spawn(serve(token_listener, None, move |request| {
                token_endpoint(request, counters.clone(), epoch, lifetime, latency)
            }))
        };
        let (acceptor, certificate) = if options.tls {
            let (acceptor, certificate) = self_signed()?;
            (Some(acceptor), Some(certificate))
        } else {
            (None, None)
        };
        let api_task = {
            let counters = counters.clone();
            tokio::spawn(serve(api_listener, acceptor, move |request| {
                api(request, counters.clone(), epoch)
            }))
        };
        let scheme = if options.tls { "https" } else { "http" };
        let api_url = format!("{scheme}://{api_addr}/data")
            .parse()
            .map_err(|e| Error::Demo(format!("API URL: {e}")))?;
        Ok(Demo {
            token_url: format!("http://{token_addr}/oauth2/token"),
            api_url,
            certificate,
            options,
            counters,
            tasks: vec![token_task, api_task],
        })
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The API's URL.
    pub fn api_url(&self) -> Uri {
        self.api_url.clone()
    }

    /// The demo client's id.
    pub fn client_id(&self) -> &'static str {
        CLIENT_ID
    }

    /// The demo client's secret.
    pub fn client_secret(&self) -> &'static str {
        CLIENT_SECRET
    }

    /// The API's self-signed certificate, with [`DemoOptions::tls`].
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.certificate.clone()
    }

    /// The options it runs with.
    pub fn options(&self) -> DemoOptions {
        self.options
    }

    /// What the servers counted so far.
    pub fn counts(&self) -> DemoCounts {
        let c = &self.counters;
        DemoCounts {
            token_requests: c.token_requests.load(Relaxed),
            tokens_issued: c.tokens_issued.load(Relaxed),
            api_requests: c.api_requests.load(Relaxed),
            api_ok: c.api_ok.load(Relaxed),
            api_rejected: c.api_rejected.load(Relaxed),
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A TLS acceptor (ALPN h2 and HTTP/1.1) with a certificate for 127.0.0.1 and localhost made
/// now, and that certificate.
fn self_signed() -> Result<(TlsAcceptor, CertificateDer<'static>), Error> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| Error::Demo(format!("self-signed certificate: {e}")))?;
    let certificate = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

/// Serves `handler` on every connection `listener` accepts: HTTP/1.1 or HTTP/2 (h2c by prior
/// knowledge, or h2 by ALPN over TLS), over TLS when `tls` is given.
pub async fn serve<F, Fut>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, say: let connections finish.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (handler, tls) = (handler.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Whether `request` is a `client_credentials` token request from the demo's client (its id and
/// secret in HTTP Basic, or both in the form body).
pub async fn is_demo_client_credentials(request: Request<Incoming>) -> bool {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let params: BTreeMap<_, _> = form_urlencoded::parse(&body).collect();
    let param = |name: &str| params.get(name).map(|v| &**v);
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let client_ok = parts
        .headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == basic.as_str())
        || (param("client_id") == Some(CLIENT_ID) && param("client_secret") == Some(CLIENT_SECRET));
    client_ok && param("grant_type") == Some("client_credentials")
}

/// The token endpoint: checks the client ([`is_demo_client_credentials`]), then issues
/// `demo-<expiry in ms since start>`, which the API checks without a lookup.
async fn token_endpoint(
    request: Request<Incoming>,
    counters: Arc<Counters>,
    epoch: Instant,
    lifetime: u64,
    latency: Duration,
) -> Response<Full<Bytes>> {
    counters.token_requests.fetch_add(1, Relaxed);
    tokio::time::sleep(latency).await;
    if !is_demo_client_credentials(request).await {
        return respond(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"error":"invalid_client"}"#,
        );
    }
    counters.tokens_issued.fetch_add(1, Relaxed);
    let expires = epoch.elapsed() + Duration::from_secs(lifetime);
    let body = serde_json::json!({
        "access_token": format!("demo-{}", expires.as_millis()),
        "token_type": "Bearer",
        "expires_in": lifetime,
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// The API: 200 for an unexpired demo token, 401 otherwise.
async fn api(
    request: Request<Incoming>,
    counters: Arc<Counters>,
    epoch: Instant,
) -> Response<Full<Bytes>> {
    counters.api_requests.fetch_add(1, Relaxed);
    // Read the request body, as a real API would.
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let expires = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer demo-")?.parse::<u128>().ok());
    if expires.is_some_and(|expires| epoch.elapsed().as_millis() < expires) {
        counters.api_ok.fetch_add(1, Relaxed);
        respond(StatusCode::OK, "text/plain", "ok")
    } else {
        counters.api_rejected.fetch_add(1, Relaxed);
        let mut response = respond(StatusCode::UNAUTHORIZED, "text/plain", "invalid token");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        response
    }
}
