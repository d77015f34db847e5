//! The HTTP client under the layer: hyper-util's pooled client over a rustls connector that
//! speaks HTTP/1.1 and h2 (by ALPN) on `https://`, HTTP/1.1 or h2c (`--http2`, prior
//! knowledge) on `http://`.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use tower::ServiceExt;
use tower_bearer::{AuthLayer, AuthService};

use crate::{
    Error,
    cli::Args,
    connection::WorkerConnection,
    outcome::{ErrorKind, Outcome},
};

/// The request body: shared bytes, which the layer can send again after a 401.
pub type Body = Full<Bytes>;
/// hyper-util's client over the TLS-or-plain connector.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Which certificates the client trusts besides the system's roots.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of certificates (`--cacert`).
    pub cacert: Option<PathBuf>,
    /// Certificates given in memory (the demo's self-signed one).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl TlsOptions {
    /// The system's roots, the certificates of `cacert` and the extra roots.
    ///
    /// # Errors
    ///
    /// [`Error::Read`] or [`Error::Pem`] for a `cacert` that cannot be read or holds no
    /// certificate; [`Error::Tls`] for one rustls refuses.
    pub fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        // A system without a certificate store still works with --cacert.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &self.cacert {
            for cert in read_pem_certificates(path)? {
                roots.add(cert)?;
            }
        }
        for cert in &self.extra_roots {
            roots.add(cert.clone())?;
        }
        Ok(roots)
    }

    /// A rustls client configuration (AWS-LC, TLS 1.2 and 1.3) that offers `alpn`.
    ///
    /// # Errors
    ///
    /// As for [`roots`](Self::roots).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A connector for `http://` and `https://` URLs; `h2_only` offers only h2 by ALPN.
    ///
    /// # Errors
    ///
    /// As for [`roots`](Self::roots).
    pub fn connector(&self, h2_only: bool) -> Result<HttpsConnector<HttpConnector>, Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        // The builder sets ALPN itself from the protocols enabled.
        let config = self.client_config(&[])?;
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        Ok(if h2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().enable_http2().wrap_connector(http)
        })
    }
}

/// Reads every certificate of a PEM file.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let pem_error = |e: rustls::pki_types::pem::Error| Error::Pem {
        path: path.into(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.into(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Sends the run's HTTP requests through the layer: the open model's through one pooled
/// client, each closed-loop worker's on connections of its own ([`HttpTarget::session`]).
#[derive(Clone)]
pub struct HttpTarget {
    client: AuthService<HttpClient>,
    layer: AuthLayer,
    connector: HttpsConnector<HttpConnector>,
    http2: bool,
    urls: Arc<[Uri]>,
    method: Method,
    headers: Arc<HeaderMap>,
    body: Bytes,
    timeout: Duration,
}

/// One closed-loop worker's requests: through the run's layer (one token cache for all), on
/// the worker's own connections.
pub struct HttpSession {
    target: Arc<HttpTarget>,
    service: AuthService<WorkerConnection>,
    /// The worker's one timer for `--timeout`, armed for a deadline at or before the current
    /// request's and moved on only when it fires early (see [`HttpSession::send`]).
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl HttpTarget {
    /// The client for `urls` (round-robin) with the method, headers and body of `args`, every
    /// request going through `layer`.
    ///
    /// # Errors
    ///
    /// An unreadable `--body-file`, a URL that is not `http://` or `https://`, or TLS settings
    /// as for [`TlsOptions::roots`].
    pub fn new(
        args: &Args,
        urls: Vec<Uri>,
        layer: AuthLayer,
        tls: &TlsOptions,
    ) -> Result<HttpTarget, Error> {
        if urls.is_empty() {
            return Err(Error::Usage("no --url to load".into()));
        }
        for url in &urls {
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                return Err(Error::Usage(format!(
                    "--url {url}: give an absolute http:// or https:// URL"
                )));
            }
        }
        let body = match (&args.body, &args.body_file) {
            (Some(body), _) => Bytes::from(body.clone()),
            (None, Some(path)) => {
                Bytes::from(std::fs::read(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?)
            }
            (None, None) => Bytes::new(),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &args.headers {
            headers.append(name.clone(), value.clone());
        }
        let connector = tls.connector(args.http2)?;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(args.http2)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        Ok(HttpTarget {
            client: tower::ServiceBuilder::new()
                .layer(layer.clone())
                .service(client),
            layer,
            connector,
            http2: args.http2,
            urls: urls.into(),
            method: args.method.clone(),
            headers: Arc::new(headers),
            body,
            timeout: args.timeout,
        })
    }

    /// A closed-loop worker's session: its own connections, the run's layer.
    pub fn session(self: &Arc<Self>) -> HttpSession {
        let connection = WorkerConnection::new(self.connector.clone(), self.http2, &self.urls);
        HttpSession {
            target: Arc::clone(self),
            service: tower::ServiceBuilder::new()
                .layer(self.layer.clone())
                .service(connection),
            timer: Box::pin(tokio::time::sleep(self.timeout)),
        }
    }

    /// Request number `i`: to URL `i` modulo their number.
    fn request(&self, i: u64) -> Request<Body> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.urls[(i % self.urls.len() as u64) as usize].clone();
        *request.headers_mut() = (*self.headers).clone();
        request
    }

    /// Sends request number `i` through the pooled client and reads its whole answer.
    pub async fn send(&self, i: u64) -> Outcome {
        let answer = self.client.clone().oneshot(self.request(i));
        exchange(answer, self.timeout).await
    }
}

impl HttpSession {
    /// Sends request number `i` on this worker's connections and reads its whole answer.
    ///
    /// The timeout costs no timer per request: the worker's one timer stays armed for an
    /// earlier deadline (a request's answer comes long before `--timeout`), and when it fires
    /// it is moved to the current request's deadline if that is still ahead. Registering and
    /// cancelling a timer for each request was a tenth of a request's instructions.
    pub async fn send(&mut self, i: u64) -> Outcome {
        let timeout = self.target.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let request = self.target.request(i);
        let finished = {
            let service = &mut self.service;
            let answer = body_read(async move {
                let service = service.ready().await?;
                tower::Service::call(service, request).await
            });
            let mut answer = std::pin::pin!(answer);
            let timer = &mut self.timer;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                while timer.as_mut().poll(cx).is_ready() {
                    if tokio::time::Instant::now() >= deadline {
                        return Poll::Ready(None);
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await
        };
        if !matches!(finished, Some(Ok(_))) {
            self.service.get_ref().forget();
        }
        outcome(finished, timeout)
    }
}

/// The status of `answer`, once its whole body is read (so that its connection can be used
/// again), or what went wrong.
async fn body_read<B>(
    answer: impl Future<Output = Result<http::Response<B>, tower_bearer::BoxError>>,
) -> Result<http::StatusCode, (ErrorKind, String)>
where
    B: hyper::body::Body,
    B::Error: StdError + 'static,
{
    let response = answer.await.map_err(|e| (classify(&*e), describe(&*e)))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| (classify(&e).or_kind(ErrorKind::Body), describe(&e)))?;
    Ok(status)
}

/// What an exchange came to: its status, its error, or (`None`) no answer within `timeout`.
fn outcome(
    finished: Option<Result<http::StatusCode, (ErrorKind, String)>>,
    timeout: Duration,
) -> Outcome {
    match finished {
        None => Outcome::Error(
            ErrorKind::Timeout,
            format!("no answer within {}", humantime::format_duration(timeout)),
        ),
        Some(Err((kind, message))) => Outcome::Error(kind, message),
        Some(Ok(status)) => Outcome::Status {
            code: crate::outcome::http_status(status.as_u16()),
            success: status.is_success(),
        },
    }
}

/// The outcome of `answer` (the pooled client's), with a timer of its own for `timeout`.
async fn exchange<B>(
    answer: impl Future<Output = Result<http::Response<B>, tower_bearer::BoxError>>,
    timeout: Duration,
) -> Outcome
where
    B: hyper::body::Body,
    B::Error: StdError + 'static,
{
    outcome(
        tokio::time::timeout(timeout, body_read(answer)).await.ok(),
        timeout,
    )
}

/// What an error, or any error in its source chain, is: a token failure (a
/// `tower_bearer::Error`), TLS (a rustls error), a timeout, a failure to connect; else
/// [`ErrorKind::Other`].
pub fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut connect = false;
    let mut timeout = false;
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<tower_bearer::Error>() {
            return ErrorKind::Token;
        }
        if e.is::<rustls::Error>() {
            return ErrorKind::Tls;
        }
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // An io::Error's `source()` skips the error it wraps (hyper-rustls wraps rustls's
            // error in two): go on with that one.
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn StdError + 'static));
            }
            match io.kind() {
                io::ErrorKind::TimedOut => timeout = true,
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable => connect = true,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= e.is_connect();
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            timeout |= e.is_timeout();
        }
        current = next;
    }
    match (timeout, connect) {
        (true, _) => ErrorKind::Timeout,
        (false, true) => ErrorKind::Connect,
        (false, false) => ErrorKind::Other,
    }
}

/// An error's message followed by its sources' (the ones an io::Error wraps included), each
/// once, at most 500 characters.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let message = e.to_string();
        if !parts.iter().any(|p| p.contains(&message)) {
            parts.push(message);
        }
        current = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    let mut all = parts.join(": ");
    if all.len() > 500 {
        let mut end = 500;
        while !all.is_char_boundary(end) {
            end -= 1;
        }
        all.truncate(end);
        all.push_str("...");
    }
    all
}

trait OrKind {
    fn or_kind(self, kind: ErrorKind) -> ErrorKind;
}

impl OrKind for ErrorKind {
    /// `kind` where nothing more precise was found.
    fn or_kind(self, kind: ErrorKind) -> ErrorKind {
        if self == ErrorKind::Other { kind } else { self }
    }
}
