//! A resource server that checks DPoP (RFC 9449 §4.3, §7) the way a strict one does, over real
//! HTTP on 127.0.0.1: the access token is a JWT of the test authorization server (signature
//! checked against its JWKS), and each request's proof is checked for its `typ`, `alg`, public
//! `jwk`, signature, `htm`, `htu`, `iat` window, never-seen `jti`, `ath`, and the token's
//! `cnf.jkt`; it can demand nonces of its own and rotate them. Independent of the crate: it
//! verifies with AWS-LC directly and computes thumbprints itself.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How far a proof's `iat` may be from now.
pub const IAT_WINDOW: Duration = Duration::from_secs(60);

/// What the API saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests answered 200.
    pub accepted: usize,
    /// Requests refused, by reason (`invalid_dpop_proof: ...`, `invalid_token: ...`,
    /// `use_dpop_nonce`).
    pub refused: HashMap<String, usize>,
    /// Every `jti` accepted.
    pub jtis: HashSet<String>,
    /// The `cnf.jkt` of every token accepted.
    pub thumbprints: HashSet<String>,
    /// `Authorization` schemes seen.
    pub schemes: Vec<String>,
}

struct ApiState {
    /// The authorization server's signing keys, by `kid` (ES256 public points).
    issuer_keys: HashMap<String, Vec<u8>>,
    /// The base URL clients are told to use (the `htu` expected), if not this server's own.
    public_base: Mutex<Option<String>>,
    own_base: String,
    /// Demand a nonce; rotate it every this many requests (0: never).
    nonce: Mutex<NonceRule>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct NonceRule {
    required: bool,
    rotate_every: usize,
    served: usize,
    current: u64,
}

impl NonceRule {
    fn value(&self) -> String {
        format!("rs-nonce-{}", self.current)
    }
}

/// A running API.
pub struct DpopApi {
    addr: SocketAddr,
    state: Arc<ApiState>,
    task: tokio::task::JoinHandle<()>,
}

impl DpopApi {
    /// Starts the API, trusting the JWKS of the authorization server at `issuer`.
    pub async fn start(issuer: &str) -> DpopApi {
        let jwks: Value = reqwest::get(format!("{issuer}/jwks"))
            .await
            .unwrap()
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).unwrap())
            .unwrap();
        let mut issuer_keys = HashMap::new();
        for key in jwks["keys"].as_array().unwrap() {
            if key["kty"] == "EC" && key["crv"] == "P-256" {
                issuer_keys.insert(key["kid"].as_str().unwrap().to_owned(), ec_point(key));
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ApiState {
            issuer_keys,
            public_base: Mutex::new(None),
            own_base: format!("http://{addr}"),
            nonce: Mutex::new(NonceRule::default()),
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        DpopApi { addr, state, task }
    }

    /// The URL of `path` on this API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Demands a nonce, rotated every `rotate_every` requests (0: never); the two before the
    /// current one are still accepted (oidc-provider accepts a nonce for three to four of its
    /// rotations): responses to concurrent requests may arrive out of order and hand a client
    /// an older nonce after a newer one.
    pub fn require_nonce(&self, rotate_every: usize) {
        let mut rule = self.state.nonce.lock().unwrap();
        rule.required = true;
        rule.rotate_every = rotate_every;
    }

    /// Expects proofs for `base` (as behind a proxy that clients reach at another URL).
    pub fn expect_base(&self, base: &str) {
        *self.state.public_base.lock().unwrap() = Some(base.to_owned());
    }

    /// What it saw so far.
    pub fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.state.seen.lock().unwrap())
    }

    /// How many requests it refused for `reason` (a prefix of the reason).
    pub fn refused(&self, reason: &str) -> usize {
        self.seen(|seen| {
            seen.refused
                .iter()
                .filter(|(k, _)| k.starts_with(reason))
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// Requests answered 200.
    pub fn accepted(&self) -> usize {
        self.seen(|seen| seen.accepted)
    }
}

impl Drop for DpopApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let htu = format!(
        "{}{}",
        state
            .public_base
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| state.own_base.clone()),
        parts.uri.path()
    );
    let (nonces, next_nonce) = {
        let mut rule = state.nonce.lock().unwrap();
        rule.served += 1;
        let accepted = [
            rule.value(),
            format!("rs-nonce-{}", rule.current.wrapping_sub(1)),
            format!("rs-nonce-{}", rule.current.wrapping_sub(2)),
        ];
        if rule.rotate_every > 0 && rule.served % rule.rotate_every == 0 {
            rule.current += 1;
        }
        (rule.required.then_some(accepted), rule.value())
    };
    let verdict = check(
        &state,
        &parts.headers,
        parts.method.as_str(),
        &htu,
        nonces.as_ref(),
    );
    let mut seen = state.seen.lock().unwrap();
    let mut response = match verdict {
        Ok((jti, jkt)) => {
            seen.accepted += 1;
            seen.jtis.insert(jti);
            seen.thumbprints.insert(jkt);
            (StatusCode::OK, "ok").into_response()
        }
        Err(Refusal { error, reason }) => {
            *seen
                .refused
                .entry(format!("{error}: {reason}"))
                .or_default() += 1;
            let challenge = format!(r#"DPoP error="{error}", algs="ES256 EdDSA RS256 PS256""#);
            let mut response = (StatusCode::UNAUTHORIZED, reason).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).unwrap(),
            );
            response
        }
    };
    if nonces.is_some() {
        response
            .headers_mut()
            .insert("dpop-nonce", HeaderValue::from_str(&next_nonce).unwrap());
    }
    response
}

struct Refusal {
    error: &'static str,
    reason: String,
}

fn refuse<T>(error: &'static str, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        error,
        reason: reason.into(),
    })
}

/// The proof's `jti` and the token's `cnf.jkt`, if the request passes every check.
fn check(
    state: &ApiState,
    headers: &HeaderMap,
    method: &str,
    htu: &str,
    nonces: Option<&[String; 3]>,
) -> Result<(String, String), Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (scheme, token) = authorization.split_once(' ').unwrap_or(("", ""));
    state.seen.lock().unwrap().schemes.push(scheme.to_owned());
    if scheme != "DPoP" {
        return refuse("invalid_token", format!("scheme {scheme:?}, not DPoP"));
    }
    let claims = verify_access_token(state, token)?;
    let Some(jkt) = claims["cnf"]["jkt"].as_str() else {
        return refuse("invalid_token", "the token is not DPoP-bound");
    };
    let proofs: Vec<_> = headers.get_all("dpop").iter().collect();
    let [proof] = proofs[..] else {
        return refuse(
            "invalid_dpop_proof",
            format!("{} DPoP headers", proofs.len()),
        );
    };
    let proof = proof.to_str().unwrap_or_default();
    let (header, payload, input, signature) = split_jws(proof)?;
    if header["typ"] != "dpop+jwt" {
        return refuse("invalid_dpop_proof", "typ");
    }
    let jwk = &header["jwk"];
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if jwk.get(private).is_some() {
            return refuse("invalid_dpop_proof", "a private key in the jwk");
        }
    }
    verify_with_jwk(
        header["alg"].as_str().unwrap_or_default(),
        jwk,
        &input,
        &signature,
    )?;
    if thumbprint(jwk) != jkt {
        return refuse("invalid_dpop_proof", "the key is not the token's cnf.jkt");
    }
    if payload["htm"] != method {
        return refuse("invalid_dpop_proof", "htm");
    }
    if payload["htu"] != htu {
        return refuse(
            "invalid_dpop_proof",
            format!("htu {} for {htu}", payload["htu"]),
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = payload["iat"].as_u64().unwrap_or(0);
    if iat.abs_diff(now) > IAT_WINDOW.as_secs() {
        return refuse("invalid_dpop_proof", "iat out of the window");
    }
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    if payload["ath"] != ath.as_str() {
        return refuse("invalid_dpop_proof", "ath");
    }
    if let Some(nonces) = nonces {
        if !nonces.iter().any(|n| payload["nonce"] == n.as_str()) {
            return refuse("use_dpop_nonce", "nonce");
        }
    }
    let Some(jti) = payload["jti"].as_str().filter(|j| j.len() >= 16) else {
        return refuse("invalid_dpop_proof", "jti");
    };
    if state.seen.lock().unwrap().jtis.contains(jti) {
        return refuse("invalid_dpop_proof", "jti replayed");
    }
    Ok((jti.to_owned(), jkt.to_owned()))
}

/// The claims of an access token the authorization server signed, if valid and unexpired.
fn verify_access_token(state: &ApiState, token: &str) -> Result<Value, Refusal> {
    let (header, claims, input, signature) = split_jws(token)?;
    let Some(point) = header["kid"]
        .as_str()
        .and_then(|kid| state.issuer_keys.get(kid))
    else {
        return refuse("invalid_token", "unknown kid");
    };
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .is_err()
    {
        return refuse("invalid_token", "signature");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims["exp"].as_u64().unwrap_or(0) <= now {
        return refuse("invalid_token", "expired");
    }
    Ok(claims)
}

/// Header, payload, signing input and signature of a compact JWS.
fn split_jws(jws: &str) -> Result<(Value, Value, String, Vec<u8>), Refusal> {
    let parts: Vec<&str> = jws.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return refuse("invalid_dpop_proof", "not a compact JWS");
    };
    let json = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    };
    let (Some(h), Some(p), Ok(s)) = (
        json(header),
        json(payload),
        URL_SAFE_NO_PAD.decode(signature),
    ) else {
        return refuse("invalid_dpop_proof", "undecodable JWS");
    };
    Ok((h, p, format!("{header}.{payload}"), s))
}

fn member(jwk: &Value, name: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(jwk[name].as_str().unwrap_or_default())
        .unwrap_or_default()
}

fn ec_point(jwk: &Value) -> Vec<u8> {
    let mut point = vec![4];
    point.extend(member(jwk, "x"));
    point.extend(member(jwk, "y"));
    point
}

fn verify_with_jwk(alg: &str, jwk: &Value, input: &str, signature: &[u8]) -> Result<(), Refusal> {
    let checked = match (alg, jwk["kty"].as_str()) {
        ("ES256", Some("EC")) if jwk["crv"] == "P-256" => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, ec_point(jwk))
                .verify(input.as_bytes(), signature)
        }
        ("EdDSA", Some("OKP")) if jwk["crv"] == "Ed25519" => {
            UnparsedPublicKey::new(&ED25519, member(jwk, "x")).verify(input.as_bytes(), signature)
        }
        ("RS256" | "PS256", Some("RSA")) => RsaPublicKeyComponents {
            n: member(jwk, "n"),
            e: member(jwk, "e"),
        }
        .verify(
            if alg == "PS256" {
                &RSA_PSS_2048_8192_SHA256
            } else {
                &RSA_PKCS1_2048_8192_SHA256
            },
            input.as_bytes(),
            signature,
        ),
        _ => return refuse("invalid_dpop_proof", format!("alg {alg} with this jwk")),
    };
    checked.or_else(|_| refuse("invalid_dpop_proof", "signature"))
}

/// The RFC 7638 thumbprint of a public JWK, computed here from its members.
pub fn thumbprint(jwk: &Value) -> String {
    let required: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        _ => &[],
    };
    let members: Vec<String> = required
        .iter()
        .map(|name| format!("\"{name}\":{}", jwk[name]))
        .collect();
    URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("{{{}}}", members.join(",")).as_bytes(),
    ))
}
