//! The token endpoints this crate was specified from, described by the requests they take, each
//! configured as a user of the crate would and checked against a stand-in that accepts only its
//! documented shape. Needs no credentials and no network.
//!
//! It starts a token endpoint and a protected API on 127.0.0.1 (random ports), then:
//!
//! 1. a `client_credentials` endpoint at `{callback}/oauth2/token` (`callback` being the
//!    application's registered base URL) whose reference puts the credentials in the URL query
//!    of a form POST with no body (`ClientAuth::Query`); tokens live one hour;
//! 2. the same endpoint as its code samples call it: the credentials in a form body
//!    (`ClientAuth::Post`) with an extra `redirect_uri` (`.param`), and an answer without
//!    `expires_in` (the default lifetime, one hour, applies);
//! 3. an IdentityServer-style `/connect/token`: `client_credentials` in a form body, JWT access
//!    tokens that live 20 minutes;
//! 4. an `authorization_code` exchange with `scope`, `redirect_uri` and the client secret in the
//!    form body, then `refresh_token` grants with rotating refresh tokens; the API wants the
//!    scheme as `bearer` in lower case (`.scheme("bearer")`), and the scope `single-use` makes
//!    each token good for one request (`.max_token_uses(1)`).
//!
//! For each it prints the token requests the endpoint saw (parameter names only) and what the
//! API answered, and exits non-zero if any request had another shape or any answer was not 200.
//!
//! ```text
//! cargo run --example providers
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{
    AuthLayer, AuthorizationCode, BoxError, ClientAuth, ClientCredentials, store::FileStore,
};

const CLIENT_ID: &str = "example-client";
const CLIENT_SECRET: &str = "example-secret";
const CODE: &str = "code-from-the-redirect";
const REDIRECT_URI: &str = "https://client.example/callback"; // registered, never visited
const HOUR: u64 = 3600;
const TWENTY_MINUTES: u64 = 1200;
const HALF_A_YEAR: u64 = 15_552_000;
/// What the layer keeps off a token's lifetime for transit and clock skew.
const ALLOWANCE: u64 = 10;

type Pairs = Vec<(String, String)>;

/// The stand-ins' memory: what each token request looked like, what was wrong, issued tokens.
#[derive(Default)]
struct Stand {
    seen: Vec<String>,
    problems: Vec<String>,
    /// access token -> (the scheme the API wants with it, single use, uses so far)
    tokens: HashMap<String, (&'static str, bool, u32)>,
    refresh: HashMap<String, bool>, // refresh token -> still unspent
    code_used: bool,
    issued: u64,
}
type Shared = Arc<Mutex<Stand>>;

fn pairs(raw: &[u8]) -> Pairs {
    form_urlencoded::parse(raw).into_owned().collect()
}

/// The parameters' names, with the values of those that are no secret.
fn names(list: &Pairs) -> String {
    let shown = |(k, v): &(String, String)| match k.as_str() {
        "grant_type" | "scope" | "redirect_uri" => format!("{k}={v}"),
        _ => k.clone(),
    };
    match list.iter().map(shown).collect::<Vec<_>>() {
        names if names.is_empty() => "nothing".into(),
        names => names.join(", "),
    }
}

/// Whether `got` holds exactly `want`, in any order (as a server reads a form).
fn same(got: &Pairs, want: &[(&str, &str)]) -> bool {
    let mut got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut want = want.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    got == want
}

fn value<'a>(list: &'a Pairs, name: &str) -> &'a str {
    list.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v)
}

/// One token request as the endpoint saw it: where it went, and its query and body.
struct Seen {
    path: String,
    form_type: bool,
    basic: bool,
    query: Pairs,
    body: Pairs,
}

impl Seen {
    fn new(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        let content_type = headers.get(header::CONTENT_TYPE);
        Seen {
            path: uri.path().to_owned(),
            form_type: content_type.is_some_and(|v| v == "application/x-www-form-urlencoded"),
            basic: headers.contains_key(header::AUTHORIZATION),
            query: pairs(uri.query().unwrap_or("").as_bytes()),
            body: pairs(body),
        }
    }

    fn describe(&self) -> String {
        format!(
            "POST {}, form content type: {}, query: {}; body: {}",
            self.path,
            if self.form_type { "yes" } else { "no" },
            names(&self.query),
            names(&self.body),
        )
    }
}

fn rejected(stand: &mut Stand, seen: &Seen, why: &str) -> Response {
    stand.problems.push(format!("{}: {why}", seen.describe()));
    let body = axum::Json(json!({"error": "invalid_request"}));
    (StatusCode::BAD_REQUEST, body).into_response()
}

fn issue(stand: &mut Stand, scheme: &'static str, single_use: bool, jwt: bool) -> String {
    stand.issued += 1;
    let n = stand.issued;
    let token = if jwt {
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = part(json!({"alg": "RS256", "typ": "JWT"}));
        let claims = part(json!({"client_id": CLIENT_ID, "scope": ["read"], "n": n}));
        format!(
            "{header}.{claims}.{}",
            URL_SAFE_NO_PAD.encode("not-a-signature")
        )
    } else {
        format!("access-{n}")
    };
    stand.tokens.insert(token.clone(), (scheme, single_use, 0));
    token
}

/// `{callback}/oauth2/token`: credentials in the URL query of a form POST with an empty body
/// (the reference), or in the form body with a `redirect_uri` (the samples), which is answered
/// without `expires_in`.
async fn query_endpoint(
    State(stand): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(&uri, &headers, &body);
    let mut stand = stand.lock().unwrap();
    let grant = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    let in_query = seen.body.is_empty() && same(&seen.query, &grant);
    let callback = uri.path().trim_end_matches("/oauth2/token");
    let redirect = value(&seen.body, "redirect_uri");
    let in_body = seen.query.is_empty()
        && redirect.ends_with(callback)
        && same(
            &seen.body,
            &[grant.as_slice(), &[("redirect_uri", redirect)]].concat(),
        );
    if !seen.form_type || seen.basic || !(in_query || in_body) {
        return rejected(
            &mut stand,
            &seen,
            "not this endpoint's client_credentials shape",
        );
    }
    stand.seen.push(seen.describe());
    let token = issue(&mut stand, "Bearer", false, false);
    let mut answer = json!({"access_token": token, "token_type": "Bearer"});
    if in_query {
        answer["expires_in"] = HOUR.into();
    }
    axum::Json(answer).into_response()
}

/// `/connect/token`: form body, JWT access tokens living 20 minutes.
async fn connect_token(
    State(stand): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(&uri, &headers, &body);
    let mut stand = stand.lock().unwrap();
    let want = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ];
    if !seen.form_type || seen.basic || !seen.query.is_empty() || !same(&seen.body, &want) {
        return rejected(&mut stand, &seen, "not a client_credentials form body");
    }
    stand.seen.push(seen.describe());
    let token = issue(&mut stand, "Bearer", false, true);
    let answer =
        json!({"access_token": token, "expires_in": TWENTY_MINUTES, "token_type": "Bearer"});
    axum::Json(answer).into_response()
}

/// `/oauth/token`: the code exchange (scope, redirect_uri and the secret in the body), then
/// refreshes with rotating refresh tokens; every access token is good for one request.
async fn code_endpoint(
    State(stand): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(&uri, &headers, &body);
    let mut stand = stand.lock().unwrap();
    let client = [("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)];
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", CODE),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "single-use"),
    ];
    let refresh = value(&seen.body, "refresh_token").to_owned();
    let renewal = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let shape_ok = seen.form_type && !seen.basic && seen.query.is_empty();
    if shape_ok && same(&seen.body, &[exchange.as_slice(), &client].concat()) {
        if std::mem::replace(&mut stand.code_used, true) {
            return rejected(&mut stand, &seen, "the code was already exchanged");
        }
    } else if shape_ok && same(&seen.body, &[renewal.as_slice(), &client].concat()) {
        if stand.refresh.insert(refresh.clone(), false) != Some(true) {
            return rejected(&mut stand, &seen, "a refresh token spent or never issued");
        }
    } else {
        return rejected(
            &mut stand,
            &seen,
            "neither the exchange's nor a refresh's shape",
        );
    }
    stand.seen.push(seen.describe());
    let token = issue(&mut stand, "bearer", true, false);
    let next = format!("refresh-{}", stand.issued);
    stand.refresh.insert(next.clone(), true);
    axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": HALF_A_YEAR,
        "refresh_token": next,
        "scope": "single-use",
    }))
    .into_response()
}

/// The protected API: the scheme must be spelled as the token's endpoint wants it, and a
/// single-use token is refused the second time.
async fn api(State(stand): State<Shared>, headers: HeaderMap) -> Response {
    let mut stand = stand.lock().unwrap();
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (scheme, token) = value.and_then(|v| v.split_once(' ')).unwrap_or_default();
    let verdict = match stand.tokens.get_mut(token) {
        None => Err("an unknown token"),
        Some((want, ..)) if scheme != *want => Err("the scheme spelled otherwise"),
        Some((_, true, uses)) if *uses > 0 => Err("a single-use token used again"),
        Some((_, _, uses)) => {
            *uses += 1;
            Ok(())
        }
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => {
            stand.problems.push(format!("API: {why} ({scheme} ...)"));
            StatusCode::UNAUTHORIZED.into_response()
        }
    }
}

async fn serve(router: Router) -> Result<String, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// Sends `n` requests to the API through `auth`, one after the other, cloning the client per
/// request as most callers do; prints the token requests the endpoint accepted since the last
/// call and the API's answers; returns whether every answer was 200, the layer fetched once per
/// `per_fetch` requests, each fetch one token request, and the token is usable for `usable`
/// seconds less the allowance.
async fn run(
    title: &str,
    auth: &AuthLayer,
    stand: &Shared,
    api: &str,
    n: u64,
    per_fetch: u64,
    usable: u64,
) -> Result<bool, BoxError> {
    let inner = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let client = ServiceBuilder::new().layer(auth.clone()).service(inner);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let request = http::Request::get(format!("{api}/v1/items")).body(Empty::new())?;
        statuses.push(client.clone().oneshot(request).await?.status());
    }
    let seen = std::mem::take(&mut stand.lock().unwrap().seen);
    let stats = auth.stats();
    let usable_for = stats
        .token_usable_for
        .map(|d| d.as_secs_f64().round() as u64);
    println!("{title}");
    for line in &seen {
        println!("  endpoint saw  {line}");
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count() as u64;
    println!(
        "  API answered  {ok} of {n} requests with 200 (tokens fetched: {}, rejected: {})",
        stats.fetches, stats.unauthorized
    );
    let shown = usable_for.map_or("none".into(), |s| format!("{s} s"));
    println!("  token usable  {shown} (its lifetime less {ALLOWANCE} s)\n");
    Ok(ok == n
        && stats.fetches == n / per_fetch
        && seen.len() as u64 == stats.fetches
        && stats.unauthorized == 0
        && usable_for == Some(usable - ALLOWANCE))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let stand = Shared::default();
    let idp = serve(
        Router::new()
            .route("/app/oauth2/token", post(query_endpoint))
            .route("/connect/token", post(connect_token))
            .route("/oauth/token", post(code_endpoint))
            .with_state(stand.clone()),
    )
    .await?;
    let api = serve(
        Router::new()
            .route("/v1/items", get(api))
            .with_state(stand.clone()),
    )
    .await?;
    println!("tower-bearer: the providers' token request shapes");
    println!("  stand-in token endpoint {idp}, API {api}/v1/items\n");
    let mut all_ok = true;

    // 1. client_credentials, the credentials in the URL query of a form POST.
    let callback = format!("{idp}/app");
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{callback}/oauth2/token"))
            .client_id(CLIENT_ID)
            .client_secret(CLIENT_SECRET)
            .auth(ClientAuth::Query)
            .build()?,
    );
    let title = "1. client_credentials, credentials in the URL query of a form POST, 1-hour tokens";
    all_ok &= run(title, &auth, &stand, &api, 3, 3, HOUR).await?;

    // 2. The same endpoint with the credentials in a form body and a redirect_uri; it answers
    //    without expires_in, so the default lifetime (one hour) applies.
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{callback}/oauth2/token"))
            .client_id(CLIENT_ID)
            .client_secret(CLIENT_SECRET)
            .auth(ClientAuth::Post)
            .param("redirect_uri", callback.clone())
            .build()?,
    );
    let title = "2. the same endpoint: form body with redirect_uri, an answer without expires_in";
    all_ok &= run(title, &auth, &stand, &api, 3, 3, HOUR).await?;

    // 3. An IdentityServer-style /connect/token: form body, 20-minute JWTs.
    let auth = AuthLayer::new(
        ClientCredentials::builder(format!("{idp}/connect/token"))
            .client_id(CLIENT_ID)
            .client_secret(CLIENT_SECRET)
            .auth(ClientAuth::Post)
            .build()?,
    );
    let title = "3. IdentityServer-style /connect/token, form body, 20-minute JWTs";
    all_ok &= run(title, &auth, &stand, &api, 3, 3, TWENTY_MINUTES).await?;

    // 4. authorization_code with scope, redirect_uri and the secret in the body; refresh tokens
    //    (kept in a file); `bearer` in lower case; one request per token.
    let dir = tempfile::tempdir()?;
    let grant = AuthorizationCode::builder(format!("{idp}/oauth/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .auth(ClientAuth::Post)
        .redirect_uri(REDIRECT_URI)
        .scope("single-use")
        .store(FileStore::new(dir.path().join("tokens.json")))
        .build()?
        .exchange(CODE, None) // the code the user's browser brought back
        .await?;
    let auth = AuthLayer::builder(grant)
        .scheme("bearer")
        .max_token_uses(1)
        .build()?;
    let title =
        "4. authorization_code exchange, then refresh_token grants; `bearer`, single-use tokens";
    // The first request uses the exchange's token (the layer's first fetch reads it from the
    // store); each further request costs a refresh: 3 requests, 3 token requests.
    all_ok &= run(title, &auth, &stand, &api, 3, 1, HALF_A_YEAR).await?;

    let stand = stand.lock().unwrap();
    for problem in &stand.problems {
        println!("  PROBLEM: {problem}");
    }
    if all_ok && stand.problems.is_empty() {
        println!(
            "OK: every token request had its endpoint's shape, every API request was answered 200"
        );
        Ok(())
    } else {
        Err("a token request or an API request was not what its endpoint expects".into())
    }
}
