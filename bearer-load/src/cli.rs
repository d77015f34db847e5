//! The command line.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use http::{HeaderName, HeaderValue, Method, Uri};

/// The environment variable the client secret is read from (never from a flag, never printed).
pub const SECRET_VAR: &str = "BEARER_LOAD_CLIENT_SECRET";
/// The environment variable a static access token is read from.
pub const TOKEN_VAR: &str = "BEARER_LOAD_TOKEN";

const AFTER_HELP: &str = "\
Token sources (one of):
  --token-url + --client-id         client_credentials; the secret from BEARER_LOAD_CLIENT_SECRET,
                                    or --client-key for private_key_jwt (no secret)
  --refresh-store + --token-url     refresh_token grant over a tower-bearer FileStore JSON file
  BEARER_LOAD_TOKEN                 a static access token
  (none, or --demo)                 the built-in demo's token endpoint

Exit status: 0 if every request succeeded (2xx, or gRPC OK and SERVING); 1 if any request
failed (an error or another status); 2 on bad flags; 3 if the run could not start.

Examples:
  bearer-load                                   # the built-in demo on 127.0.0.1
  bearer-load --demo --rate 500 --duration 10s --json
  BEARER_LOAD_CLIENT_SECRET=... bearer-load --url https://api.example.com/items \\
      --token-url https://idp.example.com/oauth2/token --client-id my-client --rate 200 --duration 30s";

/// Loads an OAuth-protected HTTP or gRPC API through tower-bearer's AuthLayer: every request of
/// the run shares one layer, hence one token cache. Without --url it loads a built-in demo (a
/// token endpoint and an API on 127.0.0.1).
#[derive(Debug, Parser)]
#[command(name = "bearer-load", version, after_help = AFTER_HELP)]
pub struct Args {
    // --- target ---
    /// API URL to load; repeatable (used round-robin). For --grpc: the server's URL
    /// (http:// or https://); the first one is used
    #[arg(long = "url", value_name = "URL", help_heading = "Target")]
    pub urls: Vec<Uri>,
    /// Run the built-in demo (the default without --url)
    #[arg(long, conflicts_with = "urls", help_heading = "Target")]
    pub demo: bool,
    /// Serve the demo API over TLS with a self-signed certificate the tool trusts (demo only)
    #[arg(long, help_heading = "Target")]
    pub tls: bool,
    /// Lifetime of the demo's tokens
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Target")]
    pub token_lifetime: Duration,
    /// Call grpc.health.v1.Health/Check (unary) instead of HTTP requests
    #[arg(long, help_heading = "Target")]
    pub grpc: bool,
    /// The service name to ask the health service about [default: "", the whole server]
    #[arg(long, requires = "grpc", value_name = "NAME", help_heading = "Target")]
    pub grpc_service: Option<String>,

    // --- request ---
    /// HTTP method
    #[arg(
        long,
        default_value = "GET",
        conflicts_with = "grpc",
        help_heading = "Request"
    )]
    pub method: Method,
    /// A request header, "Name: value"; repeatable
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header, help_heading = "Request")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body
    #[arg(long, conflicts_with_all = ["body_file", "grpc"], help_heading = "Request")]
    pub body: Option<String>,
    /// Read the request body from this file (once, before the run)
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "grpc",
        help_heading = "Request"
    )]
    pub body_file: Option<PathBuf>,
    /// HTTP/2 only: prior knowledge (h2c) on http:// URLs, ALPN h2 only on https://. Without
    /// it, https:// negotiates h2 or HTTP/1.1 by ALPN and http:// speaks HTTP/1.1
    #[arg(long, help_heading = "Request")]
    pub http2: bool,
    /// Trust the certificates in this PEM file, besides the system's roots
    #[arg(long, value_name = "PEM", help_heading = "Request")]
    pub cacert: Option<PathBuf>,
    /// Give up on a request after this long (counted as a timeout error)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Request")]
    pub timeout: Duration,

    // --- token ---
    /// Token endpoint (client_credentials, or refresh_token with --refresh-store)
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "demo",
        help_heading = "Token"
    )]
    pub token_url: Option<String>,
    /// OAuth client id
    #[arg(
        long,
        value_name = "ID",
        requires = "token_url",
        help_heading = "Token"
    )]
    pub client_id: Option<String>,
    /// How the client secret is sent to the token endpoint
    #[arg(long, value_enum, default_value_t = AuthMethod::Basic, help_heading = "Token")]
    pub auth: AuthMethod,
    /// Scopes to ask for, space-separated
    #[arg(long, requires = "token_url", help_heading = "Token")]
    pub scope: Option<String>,
    /// An extra token request parameter, k=v (audience=..., resource=...); repeatable
    #[arg(long = "param", value_name = "K=V", value_parser = parse_param, requires = "token_url", help_heading = "Token")]
    pub params: Vec<(String, String)>,
    /// private_key_jwt: sign client assertions with this PKCS#8 PEM key (P-256, Ed25519, RSA)
    /// instead of sending a secret
    #[arg(
        long,
        value_name = "PEM",
        requires = "token_url",
        help_heading = "Token"
    )]
    pub client_key: Option<PathBuf>,
    /// The key id (kid) of --client-key
    #[arg(
        long,
        value_name = "KID",
        requires = "client_key",
        help_heading = "Token"
    )]
    pub key_id: Option<String>,
    /// Ask for DPoP-bound tokens, proved with a key generated for this run (ES256)
    #[arg(long, help_heading = "Token")]
    pub dpop: bool,
    /// Use the refresh_token grant with the refresh token in this tower-bearer FileStore file
    /// (rotated tokens are saved back to it)
    #[arg(
        long,
        value_name = "FILE",
        requires = "token_url",
        help_heading = "Token"
    )]
    pub refresh_store: Option<PathBuf>,
    /// Allow plain http:// (token endpoint and API) to hosts other than loopback
    #[arg(long, help_heading = "Token")]
    pub allow_http: bool,

    // --- load ---
    /// Closed loop: this many workers, each sending its next request when the last one answered
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Load")]
    pub concurrency: u32,
    /// Open model: start this many requests per second (at start + i/RATE, whatever the answers
    /// do); latency counts from each request's intended start
    #[arg(long, conflicts_with = "concurrency", value_parser = parse_rate, help_heading = "Load")]
    pub rate: Option<f64>,
    /// Open model: at most this many requests in flight; a request that must wait starts late
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), help_heading = "Load")]
    pub max_in_flight: u32,
    /// Run for this long (10s, 500ms, 2m) [default: 10s; the demo 3s]
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests", help_heading = "Load")]
    pub duration: Option<Duration>,
    /// Send this many requests in all
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Load")]
    pub requests: Option<u64>,

    // --- output ---
    /// Print one JSON object (see the README for its fields) instead of the text summary
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// No progress bar (it shows only when stderr is a terminal)
    #[arg(short, long, help_heading = "Output")]
    pub quiet: bool,
    /// No latency histogram in the text summary
    #[arg(long, help_heading = "Output")]
    pub no_plot: bool,
}

impl Args {
    /// Whether this run loads the built-in demo: `--demo`, or no `--url`.
    pub fn is_demo(&self) -> bool {
        self.demo || self.urls.is_empty()
    }
}

/// How the client authenticates at the token endpoint with a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMethod {
    /// HTTP Basic (client_secret_basic).
    Basic,
    /// In the form body (client_secret_post).
    Post,
    /// In the URL query of the form POST (some providers want this).
    Query,
}

/// `10s`, `500ms`, `1m30s` (humantime), or a bare number of seconds; zero is refused.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?,
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e} (try 10s, 500ms, 2m)"))?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A positive, finite number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => Ok(r),
        Ok(_) => Err("must be more than 0 and at most 10000000".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `Name: value`.
fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not `Name: value`"))?;
    let name = HeaderName::try_from(name.trim()).map_err(|e| format!("header name: {e}"))?;
    let value = HeaderValue::try_from(value.trim()).map_err(|e| format!("header value: {e}"))?;
    Ok((name, value))
}

/// `k=v`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not `k=v`"))?;
    if k.is_empty() {
        return Err("the parameter name is empty".into());
    }
    Ok((k.into(), v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn durations_rates_headers_and_params_parse() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert!(parse_rate("-1").is_err() && parse_rate("NaN").is_err());
        let (name, value) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-test", "a b"));
        assert!(parse_header("no colon").is_err());
        assert_eq!(
            parse_param("audience=a=b"),
            Ok(("audience".into(), "a=b".into()))
        );
        assert!(parse_param("=x").is_err());
    }
}
