//! Helpers of bearer-load's tests: running the built binary, a mirror of its JSON report, and
//! small servers (HTTPS with a self-signed certificate, a plain API that counts tokens).

#![allow(dead_code)] // each test file uses some of them

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
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
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What a run of the binary printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` report, checked to have every field.
    pub fn report(&self) -> Report {
        let value: serde_json::Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr));
        check_fields(&value);
        serde_json::from_value(value).expect("the report matches the mirror")
    }
}

/// Runs the built binary with `args` and `env` (and without the tool's variables otherwise).
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_bearer-load"))
        .args(args)
        .env_remove("BEARER_LOAD_CLIENT_SECRET")
        .env_remove("BEARER_LOAD_TOKEN")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The report's fields, as the README documents them: a mirror that refuses unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: u32,
    pub mode: String,
    pub protocol: String,
    pub concurrency: Option<u32>,
    pub threads: Option<usize>,
    pub rate: Option<f64>,
    pub max_in_flight: Option<u32>,
    pub offered_rate: Option<f64>,
    pub achieved_rate: f64,
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub late_starts: u64,
    pub duration_s: f64,
    pub latency: Latency,
    pub status_codes: BTreeMap<String, u64>,
    pub errors: Errors,
    pub error_examples: BTreeMap<String, String>,
    pub tokens: Tokens,
    pub demo: Option<Demo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub from: String,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    pub tls: u64,
    pub body: u64,
    pub token: u64,
    pub other: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub fetches: u64,
    pub fetch_failures: u64,
    pub fetch_retries: u64,
    pub background_refreshes: u64,
    pub waiters: u64,
    pub unauthorized: u64,
    pub resent: u64,
    pub not_resent: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    pub token_requests: u64,
    pub tokens_issued: u64,
    pub api_requests: u64,
    pub api_ok: u64,
    pub api_rejected: u64,
}

/// Every documented key is present (an `Option` field of the mirror would accept a missing
/// one), at the top level and in each nested object.
pub fn check_fields(value: &serde_json::Value) {
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    };
    let expect =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    assert_eq!(
        keys(value),
        expect(&[
            "schema",
            "mode",
            "protocol",
            "concurrency",
            "threads",
            "rate",
            "max_in_flight",
            "offered_rate",
            "achieved_rate",
            "requests",
            "succeeded",
            "failed",
            "late_starts",
            "duration_s",
            "latency",
            "status_codes",
            "errors",
            "error_examples",
            "tokens",
            "demo",
        ])
    );
    assert_eq!(
        keys(&value["latency"]),
        expect(&[
            "from", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"
        ])
    );
    assert_eq!(
        keys(&value["errors"]),
        expect(&["connect", "timeout", "tls", "body", "token", "other"])
    );
    assert_eq!(
        keys(&value["tokens"]),
        expect(&[
            "fetches",
            "fetch_failures",
            "fetch_retries",
            "background_refreshes",
            "waiters",
            "unauthorized",
            "resent",
            "not_resent",
        ])
    );
    if !value["demo"].is_null() {
        assert_eq!(
            keys(&value["demo"]),
            expect(&[
                "token_requests",
                "tokens_issued",
                "api_requests",
                "api_ok",
                "api_rejected"
            ])
        );
    }
}

/// What a test server saw.
#[derive(Default)]
pub struct Seen {
    /// Requests by HTTP version (`"HTTP/1.1"`, `"HTTP/2.0"`).
    pub versions: Mutex<BTreeMap<String, u64>>,
    /// Requests by the `Authorization` header they carried.
    pub tokens: Mutex<BTreeMap<String, u64>>,
    /// The distinct `DPoP` proofs requests carried.
    pub proofs: Mutex<BTreeSet<String>>,
}

impl Seen {
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.versions.lock().unwrap().clone()
    }

    pub fn proofs(&self) -> usize {
        self.proofs.lock().unwrap().len()
    }

    pub fn tokens(&self) -> BTreeMap<String, u64> {
        self.tokens.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        self.versions().values().sum()
    }
}

/// A test API on 127.0.0.1: answers 200 to any request with a bearer token and 401 to one
/// without, and records each request's HTTP version and token. With `tls`, served over TLS
/// (ALPN h2 and HTTP/1.1) with a certificate made now for 127.0.0.1 (rcgen); its PEM is
/// returned.
pub async fn api_server(tls: bool) -> (SocketAddr, Arc<Seen>, Option<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (acceptor, pem) = if tls {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (
            Some(TlsAcceptor::from(Arc::new(config))),
            Some(certified.cert.pem()),
        )
    } else {
        (None, None)
    };
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, acceptor) = (server_seen.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        *seen
                            .versions
                            .lock()
                            .unwrap()
                            .entry(format!("{:?}", request.version()))
                            .or_default() += 1;
                        if let Some(proof) =
                            request.headers().get("dpop").and_then(|v| v.to_str().ok())
                        {
                            seen.proofs.lock().unwrap().insert(proof.to_owned());
                        }
                        let token = request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .filter(|v| v.starts_with("Bearer ") || v.starts_with("DPoP "))
                            .map(str::to_owned);
                        let _ = request.into_body().collect().await;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        match token {
                            Some(token) => {
                                *seen.tokens.lock().unwrap().entry(token).or_default() += 1
                            }
                            None => *response.status_mut() = StatusCode::UNAUTHORIZED,
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
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
    });
    (addr, seen, pem)
}
