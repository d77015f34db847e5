//! What a run found, as text or as one JSON object.
//!
//! # The JSON object (`--json`)
//!
//! One object, schema version 1, every field always present (`null` where it does not apply):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | integer | 1 |
//! | `mode` | `"closed"` or `"open"` | closed loop (`--concurrency`) or open model (`--rate`) |
//! | `protocol` | `"http"` or `"grpc"` | HTTP requests or `grpc.health.v1.Health/Check` calls |
//! | `concurrency` | integer or null | closed loop: the number of workers |
//! | `threads` | integer or null | closed loop over HTTP: the threads the workers ran on, one per core (at most one per worker), each with a single-threaded runtime of its own |
//! | `rate` | number or null | open model: the requests per second asked for |
//! | `max_in_flight` | integer or null | open model: the in-flight cap |
//! | `offered_rate` | number or null | open model: requests started per second, from the start to the last start plus one interval (below `rate` when the schedule fell behind) |
//! | `achieved_rate` | number | requests answered per second of `duration_s` |
//! | `requests` | integer | requests sent (each answered or failed) |
//! | `succeeded` | integer | 2xx answers (gRPC: OK and `SERVING`) |
//! | `failed` | integer | the others: `errors` plus statuses that are not a success |
//! | `late_starts` | integer | open model: requests that started more than 5 ms after their intended time (0 in a closed loop) |
//! | `duration_s` | number | seconds from the first request's start to the last answer |
//! | `latency` | object | milliseconds (floats): `min_ms`, `mean_ms`, `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms`, `max_ms`; `from`: `"send"` (closed loop) or `"intended_start"` (open model) |
//! | `status_codes` | object | answers by status: `"200"`, `"401"` (gRPC: `"OK"`, `"UNAUTHENTICATED"`) → count |
//! | `errors` | object | requests without an answer by kind: `connect`, `timeout`, `tls`, `body`, `token`, `other` (all six always present) |
//! | `error_examples` | object | the first error message of each kind that occurred (`{}` when none) |
//! | `tokens` | object | from `AuthLayer::stats()`: `fetches`, `fetch_failures`, `fetch_retries`, `background_refreshes`, `waiters` (callers that waited for a fetch), `unauthorized` (tokens rejected by a 401), `resent` (requests sent again after a 401), `not_resent` |
//! | `demo` | object or null | with the built-in demo, what its servers counted: `token_requests`, `tokens_issued`, `api_requests`, `api_ok`, `api_rejected` |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tower_bearer::Stats;

use crate::{
    demo::DemoCounts,
    load::{Model, Plan, Recorded},
    outcome::ErrorKind,
};

mod text;

pub use text::{header, plot_histogram};

/// The JSON schema's version.
pub const SCHEMA: u32 = 1;

/// Everything a run found; `--json` prints it as one object (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The schema's version, [`SCHEMA`].
    pub schema: u32,
    /// `"closed"` or `"open"`.
    pub mode: String,
    /// `"http"` or `"grpc"`.
    pub protocol: String,
    /// Closed loop: the number of workers.
    pub concurrency: Option<u32>,
    /// Closed loop over HTTP: the threads the workers ran on, each with a runtime of its own.
    pub threads: Option<usize>,
    /// Open model: requests per second asked for.
    pub rate: Option<f64>,
    /// Open model: the in-flight cap.
    pub max_in_flight: Option<u32>,
    /// Open model: requests started per second, from the start to the last start plus one
    /// interval.
    pub offered_rate: Option<f64>,
    /// Requests answered per second of `duration_s`.
    pub achieved_rate: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Open model: requests that started late.
    pub late_starts: u64,
    /// Seconds from the first request's start to the last answer.
    pub duration_s: f64,
    /// Latency percentiles.
    pub latency: Latency,
    /// Answers by status.
    pub status_codes: BTreeMap<String, u64>,
    /// Requests without an answer, by kind.
    pub errors: Errors,
    /// The first error message of each kind that occurred.
    pub error_examples: BTreeMap<String, String>,
    /// What the layer did.
    pub tokens: TokenStats,
    /// What the demo's servers counted.
    pub demo: Option<DemoCounts>,
}

/// Latencies in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// `"send"` (closed loop) or `"intended_start"` (open model).
    pub from: String,
    /// The shortest.
    pub min_ms: f64,
    /// The mean.
    pub mean_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 90th percentile.
    pub p90_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The 99.9th percentile.
    pub p999_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

/// Requests without an answer, by kind (see [`ErrorKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Errors {
    /// No connection.
    pub connect: u64,
    /// No answer in time.
    pub timeout: u64,
    /// TLS handshake failures.
    pub tls: u64,
    /// Response bodies that broke off.
    pub body: u64,
    /// No token.
    pub token: u64,
    /// Anything else.
    pub other: u64,
}

impl Errors {
    fn from_map(map: &BTreeMap<ErrorKind, u64>) -> Errors {
        let n = |kind| map.get(&kind).copied().unwrap_or(0);
        Errors {
            connect: n(ErrorKind::Connect),
            timeout: n(ErrorKind::Timeout),
            tls: n(ErrorKind::Tls),
            body: n(ErrorKind::Body),
            token: n(ErrorKind::Token),
            other: n(ErrorKind::Other),
        }
    }

    fn by_kind(&self) -> [(ErrorKind, u64); 6] {
        [
            (ErrorKind::Connect, self.connect),
            (ErrorKind::Timeout, self.timeout),
            (ErrorKind::Tls, self.tls),
            (ErrorKind::Body, self.body),
            (ErrorKind::Token, self.token),
            (ErrorKind::Other, self.other),
        ]
    }
}

/// What the layer did, from `AuthLayer::stats()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenStats {
    /// Token fetches started.
    pub fetches: u64,
    /// Fetches that failed.
    pub fetch_failures: u64,
    /// Token requests sent again inside a fetch after a transient failure.
    pub fetch_retries: u64,
    /// Fetches started ahead of expiry while callers used the current token.
    pub background_refreshes: u64,
    /// Callers that waited for a fetch.
    pub waiters: u64,
    /// Tokens dropped because a response rejected them (401, gRPC `UNAUTHENTICATED`).
    pub unauthorized: u64,
    /// Requests sent again with a new token after a rejection.
    pub resent: u64,
    /// Rejected requests that could not be sent again.
    pub not_resent: u64,
}

impl From<Stats> for TokenStats {
    fn from(s: Stats) -> TokenStats {
        TokenStats {
            fetches: s.fetches,
            fetch_failures: s.fetch_failures,
            fetch_retries: s.fetch_retries,
            background_refreshes: s.background_refreshes,
            waiters: s.waiters,
            unauthorized: s.unauthorized,
            resent: s.retries,
            not_resent: s.not_resent,
        }
    }
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    /// The report of a run of `plan` that recorded `recorded`, with the layer's `stats` and
    /// what the demo counted.
    pub fn new(
        plan: &Plan,
        grpc: bool,
        recorded: &Recorded,
        stats: Stats,
        demo: Option<DemoCounts>,
    ) -> Report {
        let h = &recorded.latency_us;
        let requests = recorded.requests();
        let seconds = recorded.elapsed.as_secs_f64();
        let (concurrency, rate, max_in_flight) = match plan.model {
            Model::Closed { concurrency } => (Some(concurrency), None, None),
            Model::Open {
                rate,
                max_in_flight,
            } => (None, Some(rate), Some(max_in_flight)),
        };
        // Requests started per second from the start to the last start (plus one interval):
        // below `rate` when the schedule fell behind.
        let offered_rate = rate.map(|rate| {
            let window = recorded.last_start.as_secs_f64() + 1.0 / rate;
            recorded.requests() as f64 / window
        });
        let pct = |p: f64| {
            if requests == 0 {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        Report {
            schema: SCHEMA,
            mode: if rate.is_some() { "open" } else { "closed" }.into(),
            protocol: if grpc { "grpc" } else { "http" }.into(),
            concurrency,
            threads: (recorded.threads > 0).then_some(recorded.threads),
            rate,
            max_in_flight,
            offered_rate,
            achieved_rate: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            requests,
            succeeded: recorded.succeeded,
            failed: recorded.failed,
            late_starts: recorded.late_starts,
            duration_s: seconds,
            latency: Latency {
                from: if rate.is_some() {
                    "intended_start"
                } else {
                    "send"
                }
                .into(),
                min_ms: if requests == 0 { 0.0 } else { ms(h.min()) },
                mean_ms: if requests == 0 {
                    0.0
                } else {
                    h.mean() / 1000.0
                },
                p50_ms: pct(0.5),
                p90_ms: pct(0.9),
                p99_ms: pct(0.99),
                p999_ms: pct(0.999),
                max_ms: if requests == 0 { 0.0 } else { ms(h.max()) },
            },
            status_codes: recorded
                .statuses
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            errors: Errors::from_map(&recorded.errors),
            error_examples: recorded
                .examples
                .iter()
                .map(|(kind, message)| (kind.name().to_string(), message.clone()))
                .collect(),
            tokens: stats.into(),
            demo,
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps with string keys always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}
