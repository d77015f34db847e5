//! What one request came to ([`Outcome`]): a status, or an error of one [`ErrorKind`]. Both
//! targets (HTTP and gRPC) produce it and the load models record it; it depends on neither.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Why a request failed without a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// No connection: refused, unreachable, a connect timeout.
    Connect,
    /// No answer within `--timeout`.
    Timeout,
    /// The TLS handshake failed (an untrusted certificate, a protocol mismatch).
    Tls,
    /// The response body broke off.
    Body,
    /// The layer could not get a token (a `tower_bearer::Error`).
    Token,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Tls,
        ErrorKind::Body,
        ErrorKind::Token,
        ErrorKind::Other,
    ];

    /// The kind's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Body => "body",
            ErrorKind::Token => "token",
            ErrorKind::Other => "other",
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer: an HTTP status code (`"200"`) or a gRPC status (`"OK"`), and whether it counts
    /// as a success.
    Status {
        /// The status as the report shows it; the common ones without an allocation.
        code: Cow<'static, str>,
        /// 2xx for HTTP; OK and `SERVING` for gRPC.
        success: bool,
    },
    /// No answer: why, and the error's message (its source chain, secret-free).
    Error(ErrorKind, String),
}

/// An HTTP status as the report shows it (`"200"`): the common ones borrowed, so that recording
/// an answer allocates nothing.
pub fn http_status(code: u16) -> Cow<'static, str> {
    Cow::Borrowed(match code {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return Cow::Owned(code.to_string()),
    })
}
