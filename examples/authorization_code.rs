//! Sign-in with the authorization code flow and PKCE, then rotating refresh tokens kept in a
//! file, across a restart, ending with a logout. Needs no credentials and no network.
//!
//! A stand-in authorization server on 127.0.0.1 (random port) redirects the user back with a
//! single-use code bound to the PKCE challenge, issues access tokens that live 2 seconds, rotates
//! the refresh token on every refresh and counts any spent refresh token sent again (reuse); it
//! also serves RFC 7009 revocation and a protected `/api/me`. The client exchanges the code,
//! sends rounds of concurrent requests across several expiries, "restarts" with a
//! `RefreshTokenGrant` over the same `FileStore`, and logs out. No token or secret is printed.
//!
//! ```text
//! cargo run --example authorization_code
//! ```

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::json;
use tokio::{net::TcpListener, task::JoinSet};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    AuthLayer, AuthService, AuthorizationCode, BoxError, ClientAuth, Error, Pkce,
    RefreshTokenGrant,
    store::{FileStore, TokenStore},
};

const CLIENT_ID: &str = "demo-app";
const CLIENT_SECRET: &str = "demo-app-secret";
const REDIRECT_URI: &str = "http://127.0.0.1/callback"; // never visited: we read the redirect
const TOKEN_LIFETIME: Duration = Duration::from_secs(2);
const PER_ROUND: u64 = 8; // concurrent requests per round: they must share one refresh
const PAUSE: Duration = Duration::from_millis(2_200); // between rounds: past the token's expiry
const EXPECTED_REFRESHES: u64 = 4; // rounds 2, 3, 5 and 6; round 4 uses the stored access token

/// The stand-in authorization server's memory and counters.
#[derive(Default)]
struct Idp {
    codes: HashMap<String, String>,   // unused code -> its PKCE challenge
    access: HashMap<String, Instant>, // access token -> expiry
    refresh: HashMap<String, bool>,   // refresh token -> still unspent
    issued: u64,
    exchanges: u64,
    refreshes: u64,
    reuse: u64,
    revocations: u64,
}
type Shared = Arc<Mutex<Idp>>;
type Params = HashMap<String, String>;

impl Idp {
    /// Code exchanges, refreshes, reuse attempts and revoked tokens so far.
    fn counts(&self) -> (u64, u64, u64, u64) {
        (self.exchanges, self.refreshes, self.reuse, self.revocations)
    }
}

fn lock(idp: &Shared) -> std::sync::MutexGuard<'_, Idp> {
    idp.lock().expect("stand-in server state poisoned")
}

fn arg<'a>(params: &'a Params, name: &str) -> &'a str {
    params.get(name).map_or("", String::as_str)
}

fn client_ok(f: &Params) -> bool {
    arg(f, "client_id") == CLIENT_ID && arg(f, "client_secret") == CLIENT_SECRET
}

fn random(prefix: &str, n: u64) -> String {
    format!("{prefix}-{n}-{:016x}", RandomState::new().hash_one(n))
}

/// The user's browser arrives here; consent is implied: redirect back with a fresh code.
async fn authorize(State(idp): State<Shared>, Query(q): Query<Params>) -> Response {
    let expected = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge_method", "S256"),
    ];
    if expected.iter().any(|&(name, value)| arg(&q, name) != value) {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let mut idp = lock(&idp);
    idp.issued += 1;
    let code = random("code", idp.issued);
    let challenge = arg(&q, "code_challenge").to_owned();
    idp.codes.insert(code.clone(), challenge);
    let mut location = url::Url::parse(REDIRECT_URI).expect("valid redirect URI");
    let query = [("code", code.as_str()), ("state", arg(&q, "state"))];
    location.query_pairs_mut().extend_pairs(query);
    let location = [(header::LOCATION, location.to_string())];
    (StatusCode::SEE_OTHER, location).into_response()
}

/// Checks a token request; `Err` is the OAuth error code.
fn check_grant(idp: &mut Idp, f: &Params) -> Result<(), &'static str> {
    if !client_ok(f) {
        return Err("invalid_client");
    }
    match arg(f, "grant_type") {
        "authorization_code" => {
            // Single use: the code is gone whatever happens next.
            let challenge = idp.codes.remove(arg(f, "code")).ok_or("invalid_grant")?;
            let verifier = Pkce::from_verifier(arg(f, "code_verifier"));
            if verifier.challenge() != challenge || arg(f, "redirect_uri") != REDIRECT_URI {
                return Err("invalid_grant");
            }
            idp.exchanges += 1;
        }
        "refresh_token" => match idp.refresh.get_mut(arg(f, "refresh_token")) {
            Some(unspent @ true) => {
                *unspent = false; // rotation: this refresh token is now spent
                idp.refreshes += 1;
            }
            Some(false) => {
                // A spent refresh token came back: reuse. (A real server would also revoke
                // every token issued from it since.)
                idp.reuse += 1;
                return Err("invalid_grant");
            }
            None => return Err("invalid_grant"),
        },
        _ => return Err("unsupported_grant_type"),
    }
    Ok(())
}

async fn token(State(idp): State<Shared>, Form(f): Form<Params>) -> Response {
    let mut idp = lock(&idp);
    if let Err(error) = check_grant(&mut idp, &f) {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        return (status, Json(json!({ "error": error }))).into_response();
    }
    idp.issued += 1;
    let (access, refresh) = (random("at", idp.issued), random("rt", idp.issued));
    let expiry = Instant::now() + TOKEN_LIFETIME;
    idp.access.insert(access.clone(), expiry);
    idp.refresh.insert(refresh.clone(), true);
    Json(json!({
        "access_token": access, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME.as_secs(),
        "refresh_token": refresh, "scope": "profile",
    }))
    .into_response()
}

/// RFC 7009: forget the token, whatever its type; an unknown token is fine too.
async fn revoke(State(idp): State<Shared>, Form(f): Form<Params>) -> StatusCode {
    if !client_ok(&f) {
        return StatusCode::UNAUTHORIZED;
    }
    let (mut idp, token) = (lock(&idp), arg(&f, "token"));
    let known = idp.access.remove(token).is_some() | idp.refresh.remove(token).is_some();
    idp.revocations += u64::from(known);
    StatusCode::OK
}

/// The protected API: 200 for a live access token, else 401 with an RFC 6750 challenge.
async fn me(State(idp): State<Shared>, headers: HeaderMap) -> Response {
    let value = headers.get(header::AUTHORIZATION);
    let token = value.and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
    let expiry = token.and_then(|t| lock(&idp).access.get(t).copied());
    if expiry.is_some_and(|expiry| Instant::now() < expiry) {
        return Json(json!({ "sub": "demo-user" })).into_response();
    }
    let challenge = [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)];
    (StatusCode::UNAUTHORIZED, challenge).into_response()
}

type Api = AuthService<Client<HttpConnector, Empty<Bytes>>>;

/// Reads the token file back as a restarted process would, printing no secret: it must be
/// format version 1, mode 0600, and hold the refresh token that the server accepts now.
async fn inspect(file: &FileStore, idp: &Shared, seen: &mut Vec<u8>) -> Result<String, BoxError> {
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path())?.permissions().mode() & 0o777;
        if mode != 0o600 {
            return Err(format!("the token file has mode {mode:04o}, not 0600").into());
        }
        ", mode 0600"
    };
    #[cfg(not(unix))]
    let mode = "";
    let saved = file.load().await?.ok_or("the token file is gone")?;
    let refresh = saved.refresh_token().map_or("", |t| t.secret());
    if lock(idp).refresh.get(refresh) != Some(&true) {
        return Err("the token file lacks the refresh token the server accepts now".into());
    }
    let bytes = std::fs::read(file.path())?;
    let changed = if *seen == bytes { "no" } else { "yes" };
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)?["version"].take();
    *seen = bytes;
    let report = format!("token file changed: {changed} (version {version}{mode})");
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let idp = Shared::default();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/api/me", get(me))
        .with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = tempfile::tempdir()?;
    let store = FileStore::new(dir.path().join("tokens.json"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    println!("tower-bearer: authorization code + PKCE, rotating refresh tokens, restart, logout");
    println!("  authorization server {base} (access tokens live {TOKEN_LIFETIME:?})");
    println!("  token file           {}\n", store.path().display());

    // --- What an application writes: once, when the user signs in. ---
    println!("1. Authorization");
    let flow = AuthorizationCode::builder(format!("{base}/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .auth(ClientAuth::Post)
        .redirect_uri(REDIRECT_URI)
        .scope("profile")
        .revocation_url(format!("{base}/revoke"))
        .store(store.clone())
        .build()?;
    let pkce = Pkce::new()?;
    let mut state = [0u8; 16]; // unguessable, checked when the redirect comes back (CSRF)
    getrandom::fill(&mut state).map_err(|e| e.to_string())?;
    let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(state);
    let url = flow.authorize_url(&format!("{base}/authorize"), &state, Some(&pkce))?;
    println!("  the user is sent to {url}");
    // The "browser": open the URL and read where it redirects to, instead of following it.
    let redirect = client.get(url.as_str().parse()?).await?;
    let location = redirect.headers().get(header::LOCATION);
    let callback = url::Url::parse(location.ok_or("no redirect")?.to_str()?)?;
    let params: Params = callback.query_pairs().into_owned().collect();
    if arg(&params, "state") != state {
        return Err("the redirect's state is not ours: possible CSRF".into());
    }
    println!("  the redirect to {REDIRECT_URI} brings back a code and our state");
    let code = arg(&params, "code");
    let grant = flow.exchange(code, Some(pkce.verifier())).await?;
    let mut seen = Vec::new();
    let file = inspect(&store, &idp, &mut seen).await?;
    println!("  code exchanged once; {file}");
    // --- ---

    // Three rounds of concurrent requests, the access token expiring between rounds.
    let (mut requests, mut successes, mut rounds) = (0, 0, 0);
    let mut run = async |api: Api| -> Result<(), BoxError> {
        for i in 0..3 {
            if i > 0 {
                tokio::time::sleep(PAUSE).await;
            }
            let mut batch = JoinSet::new();
            for _ in 0..PER_ROUND {
                let request = http::Request::get(format!("{base}/api/me")).body(Empty::new())?;
                batch.spawn(api.clone().oneshot(request));
            }
            let mut ok = 0;
            for result in batch.join_all().await {
                match result {
                    Ok(response) if response.status() == StatusCode::OK => ok += 1,
                    Ok(response) => println!("    request failed: HTTP {}", response.status()),
                    Err(err) => println!("    request failed: {err}"),
                }
            }
            (requests, successes, rounds) = (requests + PER_ROUND, successes + ok, rounds + 1);
            let refreshes = lock(&idp).refreshes;
            let file = inspect(&store, &idp, &mut seen).await?;
            println!("  round {rounds}: {ok}/{PER_ROUND} OK, {refreshes} refreshes so far; {file}");
        }
        Ok(())
    };

    println!("\n2. Requests across expiries ({PER_ROUND} concurrent per round, every {PAUSE:?})");
    println!("  after each round the file is read back and must hold the live refresh token");
    let auth = AuthLayer::new(grant);
    run(ServiceBuilder::new().layer(auth).service(client.clone())).await?;

    // --- After a restart the application knows only the file: no new authorization. ---
    println!("\n3. Restart: a RefreshTokenGrant over the same file, no new authorization");
    let grant = RefreshTokenGrant::builder(format!("{base}/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .auth(ClientAuth::Post)
        .revocation_url(format!("{base}/revoke"))
        .store(FileStore::new(store.path()))
        .build()?;
    let auth = AuthLayer::new(grant);
    // --- ---
    println!("  the access token in the file is still live, so round 4 should need no refresh");
    run(ServiceBuilder::new().layer(auth.clone()).service(client)).await?;

    println!("\n4. Logout: revoke (RFC 7009)");
    auth.revoke().await?;
    let after = auth.token().await;
    let (exchanges, refreshes, reuse, revocations) = lock(&idp).counts();
    println!("  the server revoked {revocations} tokens (refresh and access)");
    println!("  token file exists: {}", store.path().exists());
    match &after {
        Ok(_) => println!("  auth.token() still gives a token!"),
        Err(err) => println!("  auth.token(): {err}"),
    }

    println!("\nSummary");
    println!("  requests          {successes}/{requests} succeeded");
    println!("  code exchanges    {exchanges}");
    println!("  refreshes         {refreshes} (expected {EXPECTED_REFRESHES})");
    println!("  reuse attempts    {reuse} (spent refresh tokens sent again)");
    let ok = successes == requests
        && exchanges == 1
        && refreshes == EXPECTED_REFRESHES
        && reuse == 0
        && revocations == 2
        && !store.path().exists()
        && matches!(after, Err(Error::AuthorizationRequired(_)));
    if !ok {
        return Err("unexpected result: see above".into());
    }
    println!("  OK: one authorization, every request succeeded, no refresh token was sent twice");
    Ok(())
}
