//! DPoP and `private_key_jwt`, self-contained: a token endpoint and an API on 127.0.0.1 that
//! check what the layer sends, and a client that authenticates with a signed assertion and
//! binds its token to a key of its own.
//!
//! The token endpoint checks the client assertion's signature against the client's registered
//! public key, demands a DPoP nonce on the first request (`use_dpop_nonce`), and binds each
//! token to the thumbprint of the key that signed the proof. The API checks every request's
//! proof: its signature with the embedded key, the method, the URL, the token's hash, a fresh
//! `jti`, and that the key is the one the token is bound to; and it rotates a nonce of its own.
//!
//! ```text
//! cargo run --example dpop
//! ```
//!
//! Against a real server instead (the test suite's oidc-provider, say): set
//! `TOKEN_URL`, `CLIENT_ID` and `CLIENT_KEY` (a PKCS#8 PEM file registered for the client with
//! `private_key_jwt`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use axum::{
    Form, Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, ClientCredentials, jose::SigningKey};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (source, api) = match std::env::var("TOKEN_URL") {
        Ok(token_url) => {
            let pem = std::fs::read_to_string(std::env::var("CLIENT_KEY")?)?;
            let source = ClientCredentials::builder(token_url)
                .client_id(std::env::var("CLIENT_ID")?)
                .private_key_jwt(SigningKey::from_pkcs8_pem(&pem)?)
                .dpop(SigningKey::generate_es256()?)
                .build()?;
            (source, None)
        }
        Err(_) => {
            let client_key = SigningKey::generate_es256()?.with_key_id("demo-1");
            let servers = Servers::start(&client_key).await;
            println!(
                "token endpoint {}, API {}",
                servers.token_url, servers.api_url
            );
            println!(
                "client key registered with the server (its public JWK): {}",
                client_key.public_jwk()
            );
            let source = ClientCredentials::builder(&servers.token_url)
                .client_id("demo")
                .private_key_jwt(client_key)
                .dpop(SigningKey::generate_es256()?)
                .build()?;
            (source, Some(servers))
        }
    };
    let auth = AuthLayer::new(source);
    let token = auth.token().await?;
    println!("token type: {}", token.token_type());

    let Some(servers) = api else {
        return Ok(());
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let service = auth.layer(client);
    let mut shown = false;
    for i in 0..12 {
        let request = http::Request::post(format!("{}/orders?n={i}", servers.api_url))
            .body(format!(r#"{{"order":{i}}}"#))?;
        let response = service.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !shown {
            println!("first answer: {status} {}", String::from_utf8_lossy(&body));
            shown = true;
        }
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    let seen = servers.state.lock().unwrap();
    println!(
        "12 requests: {} accepted, {} nonce challenges answered by a resend with the same token",
        seen.accepted, seen.nonce_challenges
    );
    println!(
        "token endpoint: {} requests ({} answered use_dpop_nonce), assertions checked: {}",
        seen.token_requests, seen.token_nonce_challenges, seen.assertions_checked
    );
    let stats = auth.stats();
    println!(
        "layer: {} fetch, {} fetch failures, {} resends",
        stats.fetches, stats.fetch_failures, stats.retries
    );
    assert_eq!(seen.accepted, 12);
    assert_eq!((stats.fetches, stats.fetch_failures), (1, 0));
    Ok(())
}

/// What the two servers share and saw.
#[derive(Default)]
struct Seen {
    client_key: Value,
    /// The DPoP thumbprint each token is bound to.
    bound: HashMap<String, String>,
    jtis: HashSet<String>,
    token_requests: usize,
    token_nonce_challenges: usize,
    assertions_checked: usize,
    accepted: usize,
    nonce_challenges: usize,
    api_nonce: u32,
    api_served: u32,
}

struct Servers {
    token_url: String,
    api_url: String,
    state: Arc<Mutex<Seen>>,
}

impl Servers {
    async fn start(client_key: &SigningKey) -> Servers {
        let state = Arc::new(Mutex::new(Seen {
            client_key: client_key.public_jwk(),
            ..Seen::default()
        }));
        let token_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_url = format!("http://{}/token", token_listener.local_addr().unwrap());
        let api_url = format!("http://{}", api_listener.local_addr().unwrap());
        let token_app = Router::new()
            .route("/token", post(token))
            .with_state((Arc::clone(&state), token_url.clone()));
        let api_app = Router::new()
            .fallback(api)
            .with_state((Arc::clone(&state), api_url.clone()));
        tokio::spawn(async move { axum::serve(token_listener, token_app).await });
        tokio::spawn(async move { axum::serve(api_listener, api_app).await });
        Servers {
            token_url,
            api_url,
            state,
        }
    }
}

/// The token endpoint: a valid client assertion, a valid proof with the nonce, then a token
/// bound to the proof's key.
async fn token(
    State((state, url)): State<(Arc<Mutex<Seen>>, String)>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut seen = state.lock().unwrap();
    seen.token_requests += 1;
    let refuse = |status: StatusCode, error: &str| {
        (status, axum::Json(json!({ "error": error }))).into_response()
    };
    let Some(assertion) = form.get("client_assertion") else {
        return refuse(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let client_key = seen.client_key.clone();
    match verify(assertion, Some(&client_key)) {
        Some((_, claims)) if claims["sub"] == "demo" && claims["aud"] == url.as_str() => {
            seen.assertions_checked += 1;
        }
        _ => return refuse(StatusCode::UNAUTHORIZED, "invalid_client"),
    }
    let proof = headers.get("dpop").and_then(|v| v.to_str().ok());
    let Some((header, claims)) = proof.and_then(|p| verify(p, None)) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    };
    if claims["htm"] != "POST" || claims["htu"] != url.as_str() {
        return refuse(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    }
    if claims["nonce"] != "as-nonce" {
        seen.token_nonce_challenges += 1;
        let mut response = refuse(StatusCode::BAD_REQUEST, "use_dpop_nonce");
        response
            .headers_mut()
            .insert("dpop-nonce", "as-nonce".parse().unwrap());
        return response;
    }
    let access_token = format!("demo-token-{}", seen.token_requests);
    seen.bound
        .insert(access_token.clone(), thumbprint(&header["jwk"]));
    axum::Json(json!({
        "access_token": access_token,
        "token_type": "DPoP",
        "expires_in": 3600,
    }))
    .into_response()
}

/// The API: a DPoP token and a valid proof for this request, with the API's current nonce
/// (rotated every 5 requests).
async fn api(
    State((state, base)): State<(Arc<Mutex<Seen>>, String)>,
    request: Request,
) -> Response {
    let mut seen = state.lock().unwrap();
    seen.api_served += 1;
    if seen.api_served % 5 == 0 {
        seen.api_nonce += 1;
    }
    let nonce = format!("api-nonce-{}", seen.api_nonce);
    let headers = request.headers();
    let refuse = |error: &str, nonce: &str| {
        let mut response = (StatusCode::UNAUTHORIZED, error.to_owned()).into_response();
        response.headers_mut().insert(
            "www-authenticate",
            format!(r#"DPoP error="{error}""#).parse().unwrap(),
        );
        response
            .headers_mut()
            .insert("dpop-nonce", nonce.parse().unwrap());
        response
    };
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = authorization.strip_prefix("DPoP ") else {
        return refuse("invalid_token", &nonce);
    };
    let Some(bound) = seen.bound.get(token).cloned() else {
        return refuse("invalid_token", &nonce);
    };
    let proof = headers.get("dpop").and_then(|v| v.to_str().ok());
    let Some((header, claims)) = proof.and_then(|p| verify(p, None)) else {
        return refuse("invalid_dpop_proof", &nonce);
    };
    let htu = format!("{base}{}", request.uri().path());
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    if thumbprint(&header["jwk"]) != bound
        || claims["htm"] != request.method().as_str()
        || claims["htu"] != htu.as_str()
        || claims["ath"] != ath.as_str()
        || !seen.jtis.insert(jti)
    {
        return refuse("invalid_dpop_proof", &nonce);
    }
    if claims["nonce"] != nonce.as_str() {
        seen.nonce_challenges += 1;
        return refuse("use_dpop_nonce", &nonce);
    }
    seen.accepted += 1;
    let mut response = axum::Json(json!({ "ok": true, "bound_to": bound })).into_response();
    response
        .headers_mut()
        .insert("dpop-nonce", nonce.parse().unwrap());
    response
}

/// The header and claims of an ES256 JWS, if its signature holds with `key` (or, for a DPoP
/// proof, the key in its own header).
fn verify(jws: &str, key: Option<&Value>) -> Option<(Value, Value)> {
    let mut parts = jws.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (header_json, claims_json) = (decode(header)?, decode(claims)?);
    let jwk = key.unwrap_or(&header_json["jwk"]).clone();
    if header_json["alg"] != "ES256" || (key.is_none() && header_json["typ"] != "dpop+jwt") {
        return None;
    }
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap_or_default());
    let mut point = vec![4];
    point.extend(coordinate("x").ok()?);
    point.extend(coordinate("y").ok()?);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(
            format!("{header}.{claims}").as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).ok()?,
        )
        .ok()?;
    Some((header_json, claims_json))
}

/// The RFC 7638 thumbprint of a P-256 public JWK.
fn thumbprint(jwk: &Value) -> String {
    let input = format!(
        r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
        jwk["x"], jwk["y"]
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
}
