//! What an [`Error`] means for the caller: terminal or transient, worth retrying within a
//! fetch or not, how long the endpoint asked to wait; and how errors are built inside the crate.

use std::{borrow::Cow, sync::Arc, time::Duration};

use http::StatusCode;

use super::{Error, OAuthError, SourceError};

impl Error {
    /// Records the endpoint's `Retry-After`.
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))]
    pub(crate) fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        match &mut self {
            Error::UnexpectedResponse { retry_after, .. } => *retry_after = after,
            Error::OAuth(e) => e.retry_after = after,
            _ => {}
        }
        self
    }

    /// Wraps the error of a custom [`TokenSource`](crate::TokenSource).
    ///
    /// The error's `Display` must not contain a secret: it is shown to every caller that waited.
    pub fn source_error(err: impl Into<crate::BoxError>) -> Self {
        Error::Source(SourceError(Arc::from(err.into())))
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::Config(message.into())
    }

    /// `true` when asking again with the same credentials cannot succeed: the endpoint rejected
    /// the request, the client or the grant (`invalid_request`, `invalid_client`,
    /// `invalid_grant`, `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`), the
    /// configuration is invalid, or a signing key is unusable ([`Error::Key`]).
    pub fn is_terminal(&self) -> bool {
        match self {
            Error::OAuth(e) => e.is_terminal(),
            Error::Config(_)
            | Error::Key(_)
            | Error::InvalidToken
            | Error::AuthorizationRequired(_)
            | Error::InsecureRequest { .. }
            | Error::UnknownDestination
            | Error::NoKey
            | Error::InsufficientUserAuthentication { .. }
            | Error::NoTimer => true,
            _ => false,
        }
    }

    /// `true` for failures that may go away by themselves: network errors, timeouts, HTTP 5xx
    /// and 429, and the OAuth errors `temporarily_unavailable` and `server_error`. The layer
    /// retries these after its backoff; callers may too.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_)
            | Error::Timeout(_)
            | Error::Aborted
            | Error::Fleet(_)
            | Error::Assertion(_)
            | Error::ExpiredAssertion { .. } => true,
            Error::UnexpectedResponse { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Error::OAuth(e) => {
                matches!(e.code(), "temporarily_unavailable" | "server_error")
                    || e.status().is_server_error()
                    || e.status() == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// `true` when the token endpoint certainly did not act on the request: no connection
    /// could be made, or it answered 429, 503 or `temporarily_unavailable`. A refresh token
    /// sent in such a request is still good, so [`RefreshTokenGrant`](crate::RefreshTokenGrant)
    /// sends it again at once only after these failures. After any other failure (a timeout,
    /// a connection lost after sending, another 5xx) the server may have rotated it.
    pub fn is_unprocessed(&self) -> bool {
        match self {
            Error::Transport(e) => e.is_connect(),
            Error::UnexpectedResponse { status, .. } => {
                matches!(
                    *status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                )
            }
            Error::OAuth(e) => {
                e.code() == "temporarily_unavailable"
                    || matches!(
                        e.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    )
            }
            _ => false,
        }
    }

    /// How long the endpoint asked us to wait (`Retry-After` on a 429 or 503), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::UnexpectedResponse { retry_after, .. } => *retry_after,
            Error::OAuth(e) => e.retry_after,
            _ => None,
        }
    }

    /// The OAuth error response, if the endpoint sent one.
    pub fn oauth(&self) -> Option<&OAuthError> {
        match self {
            Error::OAuth(e) => Some(e),
            _ => None,
        }
    }
}
