//! Stand-ins shared by the integration tests: a counting token source, a protected API as a
//! tower service, and a token endpoint over real HTTP on 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Request as AxumRequest, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response as AxumResponse},
};
use http::{Request, Response};
use tokio::sync::Semaphore;
use tower_bearer::{Error, Token, TokenSource};

#[cfg(feature = "jose")]
pub mod dpop_api;
#[cfg(feature = "redis")]
pub mod fleet;
pub mod processes;
pub mod proxy;
pub mod serve;
pub mod store;
pub mod traces;
pub mod upload;

// ---------------------------------------------------------------------------------------------
// A token source that counts fetches.

/// Issues `tok-1`, `tok-2`, ... after `latency`, each valid for `lifetime`.
#[derive(Clone)]
pub struct CountingSource {
    pub state: Arc<SourceState>,
}

pub struct SourceState {
    pub fetches: AtomicUsize,
    pub latency: Duration,
    pub lifetime: Option<Duration>,
    /// Fetches whose number is in here fail.
    pub fail_on: Mutex<HashSet<usize>>,
    /// Fetches whose number is in here panic.
    pub panic_on: Mutex<HashSet<usize>>,
    /// When set, fetches wait for a permit before answering.
    pub gate: Option<Semaphore>,
    /// While set, every fetch fails (an outage of the token endpoint).
    pub down: AtomicBool,
    /// Tokens the protected API accepts.
    pub api: ApiState,
}

impl CountingSource {
    pub fn new(latency: Duration, lifetime: Option<Duration>) -> Self {
        CountingSource {
            state: Arc::new(SourceState {
                fetches: AtomicUsize::new(0),
                latency,
                lifetime,
                fail_on: Mutex::new(HashSet::new()),
                panic_on: Mutex::new(HashSet::new()),
                gate: None,
                down: AtomicBool::new(false),
                api: ApiState::default(),
            }),
        }
    }

    /// Fetches block until [`Self::open_gate`] lets them through.
    pub fn gated(latency: Duration, lifetime: Option<Duration>) -> Self {
        let mut s = Self::new(latency, lifetime);
        Arc::get_mut(&mut s.state).unwrap().gate = Some(Semaphore::new(0));
        s
    }

    pub fn open_gate(&self, permits: usize) {
        self.state.gate.as_ref().unwrap().add_permits(permits);
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(SeqCst)
    }

    pub fn fail_fetch(&self, n: usize) {
        self.state.fail_on.lock().unwrap().insert(n);
    }

    /// Makes every fetch fail (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, SeqCst);
    }

    pub fn panic_on_fetch(&self, n: usize) {
        self.state.panic_on.lock().unwrap().insert(n);
    }

    /// The API that accepts exactly the tokens this source issued and has not revoked.
    pub fn api(&self) -> ProtectedApi {
        ProtectedApi {
            state: self.state.clone(),
        }
    }
}

impl TokenSource for CountingSource {
    async fn fetch(&self) -> Result<Token, Error> {
        let n = self.state.fetches.fetch_add(1, SeqCst) + 1;
        if let Some(gate) = &self.state.gate {
            gate.acquire().await.unwrap().forget();
        }
        tokio::time::sleep(self.state.latency).await;
        if self.state.panic_on.lock().unwrap().contains(&n) {
            panic!("token source exploded on fetch {n}");
        }
        if self.state.down.load(SeqCst) {
            return Err(Error::source_error(format!("endpoint down (fetch {n})")));
        }
        if self.state.fail_on.lock().unwrap().contains(&n) {
            return Err(Error::source_error(format!("fetch {n} failed")));
        }
        let value = format!("tok-{n}");
        self.state.api.valid.lock().unwrap().insert(value.clone());
        let mut token = Token::new(value.clone());
        if let Some(lifetime) = self.state.lifetime {
            token = token.with_expires_in(lifetime);
            let expires_at = tokio::time::Instant::now() + lifetime;
            self.state
                .api
                .expiry
                .lock()
                .unwrap()
                .insert(value, expires_at);
        }
        Ok(token)
    }
}

/// A current-thread runtime with timers whose clock starts paused.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A protected API as an in-process tower service.

#[derive(Default)]
pub struct ApiState {
    pub valid: Mutex<HashSet<String>>,
    /// When each token the source issued expires, by the clock of the runtime that fetched it
    /// (tokio's `Instant`, paused or not); the API refuses a token past it.
    pub expiry: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    pub requests: AtomicUsize,
    pub unauthorized: AtomicUsize,
    /// Answer every request with this status instead of checking the token.
    pub force_status: Mutex<Option<StatusCode>>,
    /// Time each request takes; the token is checked at the end of it.
    pub latency: Mutex<Duration>,
    /// Fail with a transport error instead of answering.
    pub fail: AtomicBool,
    /// Tokens seen, in order.
    pub seen: Mutex<Vec<String>>,
    /// Bodies seen, in order.
    pub bodies: Mutex<Vec<String>>,
    /// `WWW-Authenticate` sent with every 401.
    pub challenge: Mutex<Option<&'static str>>,
    /// `Authorization` headers seen, in order.
    pub authorization: Mutex<Vec<String>>,
    /// Accept each token on its first request only, as servers behind one address that
    /// disagree would (one accepts it, the others reject it).
    pub accept_once: AtomicBool,
    /// Tokens used once, with `accept_once`.
    pub used: Mutex<HashSet<String>>,
}

/// Answers 200 with the body it received when the bearer token is one the source issued, has
/// not revoked and has not expired (by the clock of the runtime the API runs on), 401 otherwise.
#[derive(Clone)]
pub struct ProtectedApi {
    state: Arc<SourceState>,
}

impl ProtectedApi {
    pub fn state(&self) -> &ApiState {
        &self.state.api
    }

    pub fn revoke(&self, token: &str) {
        self.state.api.valid.lock().unwrap().remove(token);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.state.api.latency.lock().unwrap() = latency;
    }

    pub fn force_status(&self, status: Option<StatusCode>) {
        *self.state.api.force_status.lock().unwrap() = status;
    }

    pub fn requests(&self) -> usize {
        self.state.api.requests.load(SeqCst)
    }

    pub fn unauthorized(&self) -> usize {
        self.state.api.unauthorized.load(SeqCst)
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.api.seen.lock().unwrap().clone()
    }

    /// Whether the API accepts `token` now: issued, not revoked, not expired.
    pub fn accepts(&self, token: &str) -> bool {
        let api = &self.state.api;
        let expired = api
            .expiry
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|at| tokio::time::Instant::now() >= *at);
        !expired && api.valid.lock().unwrap().contains(token)
    }

    /// Records a request's `Authorization` value (count, header, token) and says whether the
    /// token is one the source issued and has not revoked; counts a rejection otherwise.
    /// Shared by the tower service below and the gRPC interceptor in tests/grpc.rs.
    pub fn check(&self, authorization: &str) -> bool {
        let api = &self.state.api;
        api.requests.fetch_add(1, SeqCst);
        let token = authorization
            .split_once(' ')
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        api.authorization
            .lock()
            .unwrap()
            .push(authorization.to_owned());
        api.seen.lock().unwrap().push(token.clone());
        let ok = self.accepts(&token);
        if !ok {
            api.unauthorized.fetch_add(1, SeqCst);
        }
        ok
    }
}

/// The error the protected API fails with when told to.
#[derive(Debug)]
pub struct ApiDown;

impl std::fmt::Display for ApiDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("api down")
    }
}

impl std::error::Error for ApiDown {}

impl<B> tower::Service<Request<B>> for ProtectedApi
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    type Response = Response<String>;
    type Error = ApiDown;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, ApiDown>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ApiDown>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            use http_body_util::BodyExt;
            let api = &this.state.api;
            api.requests.fetch_add(1, SeqCst);
            let latency = *api.latency.lock().unwrap();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if api.fail.load(SeqCst) {
                return Err(ApiDown);
            }
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            api.authorization
                .lock()
                .unwrap()
                .push(authorization.clone());
            let token = authorization
                .split_once(' ')
                .map(|(_, t)| t.to_owned())
                .unwrap_or_default();
            api.seen.lock().unwrap().push(token.clone());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            api.bodies.lock().unwrap().push(body.clone());
            let forced = *api.force_status.lock().unwrap();
            let first_use =
                || !api.accept_once.load(SeqCst) || api.used.lock().unwrap().insert(token.clone());
            let status = match forced {
                Some(status) => status,
                None if this.accepts(&token) && first_use() => StatusCode::OK,
                None => StatusCode::UNAUTHORIZED,
            };
            let mut response = Response::builder().status(status);
            if status == StatusCode::UNAUTHORIZED {
                api.unauthorized.fetch_add(1, SeqCst);
                if let Some(challenge) = *api.challenge.lock().unwrap() {
                    response = response.header(header::WWW_AUTHENTICATE, challenge);
                }
            }
            Ok(response.body(body).unwrap())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A token endpoint over real HTTP.

/// One request the stand-in token endpoint received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: String,
}

impl Recorded {
    /// The form body as pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_pairs(self.body.as_bytes())
    }

    /// The URL query as pairs.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_pairs(self.query.as_deref().unwrap_or("").as_bytes())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

type Responder = Arc<dyn Fn(&Recorded) -> AxumResponse + Send + Sync>;

#[derive(Clone)]
struct EndpointState {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    respond: Responder,
}

/// A token endpoint on 127.0.0.1 that records every request and answers with `respond`.
/// Stops when dropped.
pub struct StandInEndpoint {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StandInEndpoint {
    pub async fn start(
        respond: impl Fn(&Recorded) -> AxumResponse + Send + Sync + 'static,
    ) -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), respond).await
    }

    /// The same on another local address.
    pub async fn start_on(
        ip: std::net::IpAddr,
        respond: impl Fn(&Recorded) -> AxumResponse + Send + Sync + 'static,
    ) -> Self {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let state = EndpointState {
            recorded: recorded.clone(),
            respond: Arc::new(respond),
        };
        let app = Router::new().fallback(record).with_state(state);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandInEndpoint {
            addr,
            recorded,
            task,
        }
    }

    /// Answers every request with this JSON body and status.
    pub async fn json(status: StatusCode, body: &'static str) -> Self {
        Self::start(move |_| {
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        })
        .await
    }

    /// A protected API over HTTP: 200 echoing the body for a bearer token `source` issued and
    /// has not revoked, 401 otherwise.
    pub async fn protected_api(source: &CountingSource) -> Self {
        let api = source.api();
        Self::start(move |req| {
            let token = req
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            if api.accepts(&token) {
                (StatusCode::OK, req.body.clone()).into_response()
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }
}

impl Drop for StandInEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(state): State<EndpointState>, req: AxumRequest) -> AxumResponse {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut response = (state.respond)(&recorded);
    state.recorded.lock().unwrap().push(recorded);
    // A responder asks for its answer to be held back with this header (see `delayed`), or
    // until a gate opens (see `gated`).
    if let Some(delay) = response.headers_mut().remove(DELAY_HEADER) {
        let millis = delay.to_str().unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    if let Some(Gate(gate)) = response.extensions_mut().remove::<Gate>() {
        let opened = tokio::time::timeout(Duration::from_secs(30), gate.acquire()).await;
        opened
            .expect("the gate opened within 30 s")
            .unwrap()
            .forget();
    }
    response
}

/// Internal to the stand-ins: a gate a response waits at (see `gated`).
#[derive(Clone)]
struct Gate(Arc<Semaphore>);

/// `response`, sent once `gate` gives a permit (30 s at most).
pub fn gated(mut response: AxumResponse, gate: &Arc<Semaphore>) -> AxumResponse {
    response.extensions_mut().insert(Gate(Arc::clone(gate)));
    response
}

/// Internal to the stand-ins: how long to hold a response back before sending it.
const DELAY_HEADER: &str = "x-stand-in-delay-ms";

/// `response`, sent `delay` after the request was handled.
pub fn delayed(mut response: AxumResponse, delay: Duration) -> AxumResponse {
    response.headers_mut().insert(
        DELAY_HEADER,
        header::HeaderValue::from_str(&delay.as_millis().to_string()).unwrap(),
    );
    response
}

/// A plain 200 JSON token response.
pub fn token_json(token: &str, expires_in: u64) -> AxumResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#),
    )
        .into_response()
}

pub fn infallible<T>(t: T) -> Result<T, Infallible> {
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// A stand-in authorization server with refresh-token rotation, codes, PKCE, discovery and
// revocation, on top of `StandInEndpoint`.

/// The state of [`StandInIdp`]: what it issued, what was spent, and every misuse it saw.
#[derive(Default)]
pub struct IdpState {
    /// Refresh tokens the server still accepts.
    pub refresh_tokens: Mutex<HashSet<String>>,
    /// Refresh tokens already used once.
    pub spent: Mutex<HashSet<String>>,
    /// Times a spent refresh token came back (the grant is then revoked whole).
    pub reuse_detected: AtomicUsize,
    /// Access tokens the server issued and has not revoked.
    pub access_tokens: Mutex<HashSet<String>>,
    /// Codes not yet exchanged, with their PKCE challenge.
    pub codes: Mutex<std::collections::HashMap<String, Option<String>>>,
    pub issued: AtomicUsize,
    pub rotate: AtomicBool,
    pub lifetime: AtomicUsize,
    pub base: std::sync::OnceLock<String>,
    /// Answer every token request with 500 while set.
    pub down: AtomicBool,
    /// How the next refresh-token requests fail after the server acted on them, one mode per
    /// request, in order (see [`LostAnswer`]).
    pub lose_answers: Mutex<std::collections::VecDeque<LostAnswer>>,
    /// Answer the next this many token requests with 503 `temporarily_unavailable`, without
    /// acting on them.
    pub unavailable: AtomicUsize,
    /// Answer revocation requests with 503 while set.
    pub revocation_down: AtomicBool,
    /// Accept a spent refresh token again (once each), as servers with a rotation grace
    /// period do.
    pub grace: AtomicBool,
    /// Spent refresh tokens accepted again in the grace period.
    pub grace_reuses: AtomicUsize,
    /// While set, the API holds every request until the test adds permits.
    pub api_gate: Mutex<Option<Arc<Semaphore>>>,
    /// Requests the API is holding at its gate.
    pub api_waiting: AtomicUsize,
    /// 401s the API answered.
    pub api_unauthorized: AtomicUsize,
}

/// What the stand-in IdP does with a refresh-token request whose answer it loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAnswer {
    /// Rotates the refresh token, then answers 500: the new one never reaches the client.
    RotateThen500,
    /// Rotates it, then cuts the connection in the middle of the answer.
    RotateThenCut,
    /// Never finishes the answer (the status line and headers go, the body never comes),
    /// without acting on the request.
    Hang,
    /// Acts on the request, then sends the answer this long after.
    Late(Duration),
}

/// A token endpoint at `/token`, revocation at `/revoke`, metadata at
/// `/.well-known/openid-configuration`, issuer = the base URL.
pub struct StandInIdp {
    pub endpoint: StandInEndpoint,
    pub state: Arc<IdpState>,
}

impl StandInIdp {
    pub async fn start() -> Self {
        let state = Arc::new(IdpState::default());
        state.rotate.store(true, SeqCst);
        state.lifetime.store(3600, SeqCst);
        let handler = state.clone();
        let endpoint = StandInEndpoint::start(move |req| handler.answer(req)).await;
        state.base.set(format!("http://{}", endpoint.addr)).unwrap();
        StandInIdp { endpoint, state }
    }

    pub fn url(&self, path: &str) -> String {
        self.endpoint.url(path)
    }

    pub fn add_refresh_token(&self, rt: &str) {
        self.state
            .refresh_tokens
            .lock()
            .unwrap()
            .insert(rt.to_owned());
    }

    pub fn add_code(&self, code: &str, challenge: Option<&str>) {
        self.state
            .codes
            .lock()
            .unwrap()
            .insert(code.to_owned(), challenge.map(str::to_owned));
    }

    /// Requests to `path` so far.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.endpoint
            .recorded()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The refresh tokens sent to `/token`, in order.
    pub fn refresh_tokens_sent(&self) -> Vec<String> {
        self.requests_to("/token")
            .iter()
            .filter_map(|r| {
                r.form()
                    .into_iter()
                    .find(|(k, _)| k == "refresh_token")
                    .map(|(_, v)| v)
            })
            .collect()
    }

    pub fn reuse_detected(&self) -> usize {
        self.state.reuse_detected.load(SeqCst)
    }

    /// The next refresh-token requests lose their answers, in these ways.
    pub fn lose_answers(&self, modes: &[LostAnswer]) {
        self.state.lose_answers.lock().unwrap().extend(modes);
    }

    /// From now on the API holds every request at a gate; [`Self::open_api`] lets them through.
    pub fn close_api(&self) {
        *self.state.api_gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` held (or future) API requests through.
    pub fn open_api(&self, n: usize) {
        if let Some(gate) = &*self.state.api_gate.lock().unwrap() {
            gate.add_permits(n);
        }
    }

    /// Requests held at the API's gate.
    pub fn api_waiting(&self) -> usize {
        self.state.api_waiting.load(SeqCst)
    }

    /// 401s the API answered.
    pub fn api_unauthorized(&self) -> usize {
        self.state.api_unauthorized.load(SeqCst)
    }

    /// The protected API that accepts this server's live access tokens.
    pub fn api(&self) -> IdpApi {
        IdpApi {
            state: self.state.clone(),
        }
    }
}

fn oauth_error(status: StatusCode, code: &str) -> AxumResponse {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"{code}"}}"#),
    )
        .into_response()
}

impl IdpState {
    fn issue(&self, with_refresh: bool) -> AxumResponse {
        let n = self.issued.fetch_add(1, SeqCst) + 1;
        let at = format!("at-{n}");
        self.access_tokens.lock().unwrap().insert(at.clone());
        let mut body = serde_json::json!({
            "access_token": at,
            "token_type": "Bearer",
            "expires_in": self.lifetime.load(SeqCst),
        });
        if with_refresh {
            let rt = format!("rt-{n}");
            self.refresh_tokens.lock().unwrap().insert(rt.clone());
            body["refresh_token"] = rt.into();
        }
        axum::Json(body).into_response()
    }

    fn answer(&self, req: &Recorded) -> AxumResponse {
        let form: std::collections::HashMap<String, String> = req.form().into_iter().collect();
        match req.path.as_str() {
            "/.well-known/openid-configuration" => {
                let base = self.base.get().unwrap();
                axum::Json(serde_json::json!({
                    "issuer": base,
                    "token_endpoint": format!("{base}/token"),
                    "revocation_endpoint": format!("{base}/revoke"),
                    "token_endpoint_auth_methods_supported": ["client_secret_post"],
                }))
                .into_response()
            }
            "/revoke" if self.revocation_down.load(SeqCst) => {
                oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            "/revoke" => {
                let token = form.get("token").cloned().unwrap_or_default();
                self.refresh_tokens.lock().unwrap().remove(&token);
                self.access_tokens.lock().unwrap().remove(&token);
                StatusCode::OK.into_response()
            }
            "/token" if self.down.load(SeqCst) => {
                oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
            }
            "/token"
                if self
                    .unavailable
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok() =>
            {
                oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            "/token" => match form.get("grant_type").map(String::as_str) {
                Some("refresh_token") => {
                    let rt = form.get("refresh_token").cloned().unwrap_or_default();
                    let lost = self.lose_answers.lock().unwrap().pop_front();
                    if lost == Some(LostAnswer::Hang) {
                        return never_finished();
                    }
                    let spent = self.spent.lock().unwrap().contains(&rt);
                    if spent && self.grace.load(SeqCst) {
                        self.spent.lock().unwrap().remove(&rt);
                        self.grace_reuses.fetch_add(1, SeqCst);
                    } else if spent {
                        self.reuse_detected.fetch_add(1, SeqCst);
                        self.refresh_tokens.lock().unwrap().clear();
                        self.access_tokens.lock().unwrap().clear();
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    } else if !self.refresh_tokens.lock().unwrap().contains(&rt) {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    }
                    let answer = if self.rotate.load(SeqCst) {
                        self.refresh_tokens.lock().unwrap().remove(&rt);
                        self.spent.lock().unwrap().insert(rt);
                        self.issue(true)
                    } else {
                        self.issue(false)
                    };
                    match lost {
                        Some(LostAnswer::RotateThen500) => {
                            oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
                        }
                        Some(LostAnswer::RotateThenCut) => cut_short(answer),
                        Some(LostAnswer::Late(delay)) => delayed(answer, delay),
                        _ => answer,
                    }
                }
                Some("authorization_code") => {
                    let code = form.get("code").cloned().unwrap_or_default();
                    let Some(challenge) = self.codes.lock().unwrap().remove(&code) else {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    };
                    if let Some(challenge) = challenge {
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        if pkce_s256(&verifier) != challenge {
                            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                        }
                    }
                    self.issue(true)
                }
                Some("client_credentials") => self.issue(false),
                _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            },
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// The PKCE `S256` challenge of `verifier` (RFC 7636 §4.2), as the server computes it.
fn pkce_s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

/// A response whose body never comes: the status line and headers are sent, then nothing.
fn never_finished() -> AxumResponse {
    let mut response = AxumResponse::new(axum::body::Body::new(FaultyBody::Pending));
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from_static("200"),
    );
    response
}

/// `answer`'s status and headers, then a connection cut before its body: the client learns that
/// the server answered, never what.
fn cut_short(answer: AxumResponse) -> AxumResponse {
    let (parts, _) = answer.into_parts();
    let mut response = AxumResponse::from_parts(parts, axum::body::Body::new(FaultyBody::Cut));
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from_static("200"),
    );
    response
}

/// A response body that never ends (`Pending`) or fails at once (`Cut`).
enum FaultyBody {
    Pending,
    Cut,
}

impl http_body::Body for FaultyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match *self {
            FaultyBody::Pending => Poll::Pending,
            FaultyBody::Cut => Poll::Ready(Some(Err(std::io::Error::other("connection cut")))),
        }
    }
}

/// A protected API (in-process tower service) that accepts the live access tokens of a
/// [`StandInIdp`]; after [`StandInIdp::close_api`] it holds every request at a gate until the
/// test opens it.
#[derive(Clone)]
pub struct IdpApi {
    state: Arc<IdpState>,
}

impl<B: Send + 'static> tower::Service<Request<B>> for IdpApi {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let gate = state.api_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                state.api_waiting.fetch_add(1, SeqCst);
                gate.acquire().await.unwrap().forget();
                state.api_waiting.fetch_sub(1, SeqCst);
            }
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            let ok = state.access_tokens.lock().unwrap().contains(token);
            let status = if ok {
                StatusCode::OK
            } else {
                state.api_unauthorized.fetch_add(1, SeqCst);
                StatusCode::UNAUTHORIZED
            };
            Ok(Response::builder()
                .status(status)
                .body(token.to_owned())
                .unwrap())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The real authorization server (django-oauth-toolkit) that `scripts/test` starts.

/// Base URL of the real authorization server that `scripts/test` started. The tests that need
/// it are `#[ignore]`d, so a plain `cargo test` lists them as ignored instead of passing them
/// unrun; `scripts/test` runs them with `--include-ignored`. Run without it, they fail here.
pub fn authserver() -> String {
    match std::env::var("TOWER_BEARER_AUTHSERVER") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => panic!(
            "TOWER_BEARER_AUTHSERVER is not set: this test needs the real authorization server; \
             run it with scripts/test, which starts django-oauth-toolkit"
        ),
    }
}

/// Issuer URL of the oidc-provider server (DPoP, `private_key_jwt`, token exchange) that
/// `scripts/test` started; the tests that need it are `#[ignore]`d, as for [`authserver`].
pub fn oidc_provider() -> String {
    match std::env::var("TOWER_BEARER_OIDC") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => panic!(
            "TOWER_BEARER_OIDC is not set: this test needs the oidc-provider server; run it with \
             scripts/test, which starts it"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// A raw TCP endpoint for faults HTTP frameworks will not produce.

/// What [`RawEndpoint`] does with each connection.
#[derive(Clone)]
pub enum RawFault {
    /// Read the request, then never answer.
    Hang,
    /// Read the request, write these bytes, close the connection.
    Write(&'static [u8]),
}

/// A loopback TCP server that misbehaves on purpose; counts connections. Stops when dropped.
pub struct RawEndpoint {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawEndpoint {
    pub async fn start(fault: RawFault) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, SeqCst);
                let fault = fault.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    match fault {
                        RawFault::Hang => std::future::pending::<()>().await,
                        RawFault::Write(bytes) => {
                            let _ = socket.write_all(bytes).await;
                            let _ = socket.shutdown().await;
                        }
                    }
                });
            }
        });
        RawEndpoint {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for RawEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// An API that records the Authorization header of every request and answers 200.

/// The `Authorization` values seen by a [`recording_api`].
pub type SeenHeaders = Arc<Mutex<Vec<String>>>;

/// An in-process API that answers 200 and records each request's `Authorization` header.
pub fn recording_api<B: Send + 'static>() -> (
    impl tower::Service<Request<B>, Response = Response<String>, Error = Infallible, Future = impl Send>
    + Clone
    + Send,
    SeenHeaders,
) {
    let seen = SeenHeaders::default();
    let recorder = seen.clone();
    let api = tower::service_fn(move |req: Request<B>| {
        let value = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        recorder.lock().unwrap().push(value);
        std::future::ready(Ok::<_, Infallible>(Response::new(String::new())))
    });
    (api, seen)
}

/// This machine's address on its default route: not a loopback address, and one the tests can
/// listen on. Found by "connecting" a UDP socket, which sends nothing.
pub fn non_loopback_address() -> std::net::IpAddr {
    for probe in ["192.0.2.1:9", "10.255.255.1:9", "198.51.100.1:9"] {
        let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if socket.connect(probe).is_ok() {
            if let Ok(local) = socket.local_addr() {
                if !local.ip().is_loopback() && !local.ip().is_unspecified() {
                    return local.ip();
                }
            }
        }
    }
    panic!("this machine has no non-loopback address to test the plain-http rule with");
}
