//! The crate's one error type.
//!
//! Every failure to obtain a token is an [`Error`]. It is `Clone`, because one failed fetch is
//! handed to every caller that waited on it, and it never contains a secret: no access token,
//! refresh token or client secret reaches its `Display` or `Debug` output.
//!
//! # Telling token errors from inner-service errors
//!
//! [`AuthService`](crate::AuthService) returns [`BoxError`](crate::BoxError), as tower
//! middleware does. A failure to get a token is a boxed [`Error`]; anything else came from the
//! wrapped service:
//!
//! ```
//! use tower_bearer::{BoxError, Error};
//!
//! fn explain(err: &BoxError) -> &'static str {
//!     match err.downcast_ref::<Error>() {
//!         Some(e) if e.is_terminal() => "credentials rejected: re-authorize",
//!         Some(_) => "could not get a token (try again later)",
//!         None => "the request itself failed",
//!     }
//! }
//! # let err: BoxError = Box::new(Error::Aborted);
//! # assert_eq!(explain(&err), "could not get a token (try again later)");
//! ```

use std::{borrow::Cow, error::Error as StdError, fmt, sync::Arc, time::Duration};

use http::StatusCode;

/// Why a token could not be obtained.
///
/// Matchable, `Clone`, and free of secrets in both `Display` and `Debug`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable: a malformed URL, a missing client id, and so on.
    #[error("invalid configuration: {0}")]
    Config(Cow<'static, str>),

    /// A signing key that cannot be used (feature `jose`): not a PKCS#8 private key, a curve or
    /// algorithm this crate does not sign with, or a key the algorithm refuses.
    #[error("unusable signing key: {0}")]
    Key(Cow<'static, str>),

    /// The token endpoint answered with an OAuth 2.0 error response (RFC 6749 §5.2).
    #[error(transparent)]
    OAuth(#[from] OAuthError),

    /// The token endpoint answered with something that is not a usable token response.
    #[error("token endpoint answered HTTP {status}: {reason}{}", excerpt_suffix(.excerpt))]
    UnexpectedResponse {
        /// HTTP status of the response.
        status: StatusCode,
        /// What was wrong with it.
        reason: Cow<'static, str>,
        /// The start of the body, when it was not JSON, with anything secret removed.
        excerpt: Option<String>,
        /// The `Retry-After` the endpoint sent with a 429 or 503.
        retry_after: Option<Duration>,
    },

    /// The token request could not be sent or its response could not be read.
    #[error("token request failed: {0}")]
    Transport(#[source] TransportError),

    /// Fetching a token took longer than the configured fetch timeout.
    #[error("token fetch timed out after {0:?}")]
    Timeout(Duration),

    /// The access token cannot be sent in an HTTP header (it holds characters a header value
    /// may not contain).
    #[error("the access token contains characters that are not allowed in an HTTP header")]
    InvalidToken,

    /// A custom [`TokenSource`](crate::TokenSource) failed.
    #[error("token source failed: {0}")]
    Source(#[source] SourceError),

    /// Authorization server metadata could not be discovered, or is unusable.
    #[error("discovery failed: {0}")]
    Discovery(Cow<'static, str>),

    /// The token store could not load or save the token state.
    #[error("token store failed: {0}")]
    Store(#[source] StoreError),

    /// The Redis a fleet shares tokens through failed or answered late (feature `redis`):
    /// [`AuthLayer::revoke`](crate::AuthLayer::revoke) could not delete the token from it or
    /// tell the other processes, which may go on using the token until it is rejected or
    /// expires. (A fetch never fails for this: it goes to the token endpoint instead.)
    #[error("the fleet's Redis failed: {0}")]
    Fleet(Cow<'static, str>),

    /// The grant cannot go on without a new authorization by the user: there is no refresh
    /// token, or the endpoint rejected it. Asking again does not help.
    #[error("authorization required: {0}")]
    AuthorizationRequired(Cow<'static, str>),

    /// The request would carry the token in clear text: over `http` or `ws` to a host that is
    /// not a loopback address, or over a scheme that is not `https`, `wss`, `http` or `ws`.
    /// Use `https`, or allow plain `http` with
    /// [`AuthLayerBuilder::allow_http`](crate::AuthLayerBuilder::allow_http).
    #[error(
        "refusing to send a bearer token over {scheme} to {host}: the token goes over https \
         (or http to a loopback address, or anywhere with AuthLayerBuilder::allow_http(true))"
    )]
    InsecureRequest {
        /// The request's URL scheme.
        scheme: String,
        /// The host the request was for.
        host: String,
    },

    /// The request is addressed by path alone (as a tonic `Channel` or a hyper connection
    /// sends it), so the layer cannot tell where the token would go. State where the channel
    /// connects with [`AuthLayerBuilder::channel_origin`](crate::AuthLayerBuilder::channel_origin).
    #[error(
        "refusing to send a bearer token with a request addressed by path alone: the layer \
         cannot tell where it goes; state the channel's origin with \
         AuthLayerBuilder::channel_origin(\"https://host:port\")"
    )]
    UnknownDestination,

    /// The fetch was abandoned before it finished: the token source panicked or the runtime
    /// shut down.
    #[error("token fetch was aborted before it finished")]
    Aborted,

    /// No Tokio runtime was running, so no fetch could be started. Run the client inside a
    /// runtime, or give the layer one with
    /// [`AuthLayerBuilder::runtime`](crate::AuthLayerBuilder::runtime).
    #[error("tower-bearer needs a Tokio runtime to fetch tokens")]
    NoRuntime,

    /// The Tokio runtime has no timers, which fetch timeouts and waiters' deadlines need.
    #[error(
        "tower-bearer needs a Tokio runtime with timers: call `enable_time()` (or `enable_all()`) \
         on the runtime builder"
    )]
    NoTimer,
}

fn excerpt_suffix(excerpt: &Option<String>) -> String {
    match excerpt {
        Some(e) => format!("; body starts: {e:?}"),
        None => String::new(),
    }
}

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
            | Error::NoTimer => true,
            _ => false,
        }
    }

    /// `true` for failures that may go away by themselves: network errors, timeouts, HTTP 5xx
    /// and 429, and the OAuth errors `temporarily_unavailable` and `server_error`. The layer
    /// retries these after its backoff; callers may too.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) | Error::Timeout(_) | Error::Aborted | Error::Fleet(_) => true,
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

/// An OAuth 2.0 error response from a token endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    status: StatusCode,
    code: String,
    description: Option<String>,
    uri: Option<String>,
    retry_after: Option<Duration>,
}

impl OAuthError {
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))]
    pub(crate) fn new(
        status: StatusCode,
        code: String,
        description: Option<String>,
        uri: Option<String>,
    ) -> Self {
        OAuthError {
            status,
            code,
            description,
            uri,
            retry_after: None,
        }
    }

    /// HTTP status of the error response (an endpoint may send `error` with 200).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error` code, such as `invalid_client`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `error_description`, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The `error_uri`, if any.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// `true` for errors that retrying with the same credentials cannot fix.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.code.as_str(),
            "invalid_client"
                | "invalid_grant"
                | "unauthorized_client"
                | "unsupported_grant_type"
                | "invalid_scope"
                | "invalid_request"
        )
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token endpoint error `{}` (HTTP {})",
            self.code, self.status
        )?;
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        if let Some(u) = &self.uri {
            write!(f, " (see {u})")?;
        }
        Ok(())
    }
}

impl StdError for OAuthError {}

/// A transport failure talking to the token endpoint.
///
/// Wraps the `reqwest` error with the request URL removed, since a URL can carry credentials
/// (see [`ClientAuth::Query`](crate::ClientAuth::Query)).
#[derive(Debug, Clone)]
pub struct TransportError {
    error: Arc<dyn StdError + Send + Sync>,
    timeout: bool,
    connect: bool,
}

impl TransportError {
    #[cfg(feature = "oauth")]
    pub(crate) fn new(err: reqwest::Error) -> Self {
        let err = err.without_url();
        TransportError {
            timeout: err.is_timeout(),
            connect: err.is_connect(),
            error: Arc::new(err),
        }
    }

    /// `true` if the request timed out.
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }

    /// `true` if no connection could be made.
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        let mut source = self.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl StdError for TransportError {}

/// A failure of a [`TokenStore`](crate::store::TokenStore). Names the file and the operation,
/// never the file's content.
#[derive(Debug, Clone)]
pub struct StoreError {
    message: String,
    io: Option<Arc<std::io::Error>>,
    unsaved: bool,
}

impl StoreError {
    /// A store failure described by `message` (it must not contain a secret).
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            io: None,
            unsaved: false,
        }
    }

    /// Marks a failed save after a refresh the server answered: its new refresh token is kept
    /// in memory, and saved at the grant's next fetch.
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))]
    pub(crate) fn refresh_token_unsaved(mut self) -> Self {
        self.unsaved = true;
        self
    }

    /// `true` when a refresh succeeded and only its save failed: the new refresh token (the old
    /// one is spent) is kept in memory and saved at the next fetch, which sends no refresh
    /// token until it is ([`RefreshTokenGrant`](crate::RefreshTokenGrant)). Such failures are
    /// counted in [`Stats::unsaved_refreshes`](crate::Stats::unsaved_refreshes).
    pub fn is_refresh_token_unsaved(&self) -> bool {
        self.unsaved
    }

    pub(crate) fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        StoreError {
            message: format!("cannot {what} {}", path.display()),
            io: Some(Arc::new(err)),
            unsaved: false,
        }
    }

    pub(crate) fn invalid(path: &std::path::Path, reason: &str) -> Self {
        StoreError::new(format!("{}: {reason}", path.display()))
    }

    /// The I/O error behind this failure, if any.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.io.as_deref()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(io) = &self.io {
            write!(f, ": {io}")?;
        }
        if self.unsaved {
            f.write_str(
                " (after a refresh: the new refresh token is kept in memory and saved at the \
                 next fetch)",
            )?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.io.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error of a custom [`TokenSource`](crate::TokenSource), shared by every waiter.
#[derive(Clone)]
pub struct SourceError(Arc<dyn StdError + Send + Sync>);

impl SourceError {
    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for SourceError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_error_display_has_every_field() {
        let e = OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client".into(),
            Some("unknown client".into()),
            Some("https://idp/doc".into()),
        );
        assert_eq!(
            e.to_string(),
            "token endpoint error `invalid_client` (HTTP 400 Bad Request): unknown client (see https://idp/doc)"
        );
        assert!(e.is_terminal());
        assert!(Error::from(e).is_terminal());
    }

    #[test]
    fn transient_errors_are_not_terminal() {
        let e = OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable".into(),
            None,
            None,
        );
        assert!(!e.is_terminal());
        assert!(!Error::Timeout(Duration::from_secs(1)).is_terminal());
        assert!(!Error::Aborted.is_terminal());
    }

    #[test]
    fn oauth_codes_and_statuses_are_terminal_or_transient_as_documented() {
        let oauth = |code: &str, status: u16| {
            Error::from(OAuthError::new(
                StatusCode::from_u16(status).unwrap(),
                code.into(),
                None,
                None,
            ))
        };
        let without_code = |status: u16| Error::UnexpectedResponse {
            status: StatusCode::from_u16(status).unwrap(),
            reason: "error response without an OAuth `error` code".into(),
            excerpt: None,
            retry_after: None,
        };
        // (error, what it is, is_terminal, is_transient)
        let cases = [
            (
                oauth("invalid_request", 400),
                "invalid_request",
                true,
                false,
            ),
            (oauth("invalid_client", 401), "invalid_client", true, false),
            (oauth("invalid_grant", 400), "invalid_grant", true, false),
            (
                oauth("unauthorized_client", 400),
                "unauthorized_client",
                true,
                false,
            ),
            (
                oauth("unsupported_grant_type", 400),
                "unsupported_grant_type",
                true,
                false,
            ),
            (oauth("invalid_scope", 400), "invalid_scope", true, false),
            (
                oauth("server_error", 400),
                "server_error with 400",
                false,
                true,
            ),
            (
                oauth("server_error", 500),
                "server_error with 500",
                false,
                true,
            ),
            (
                oauth("temporarily_unavailable", 400),
                "temporarily_unavailable with 400",
                false,
                true,
            ),
            (
                oauth("temporarily_unavailable", 503),
                "temporarily_unavailable with 503",
                false,
                true,
            ),
            (without_code(429), "429 without a code", false, true),
            (without_code(503), "503 without a code", false, true),
        ];
        for (error, what, terminal, transient) in cases {
            assert_eq!(
                (error.is_terminal(), error.is_transient()),
                (terminal, transient),
                "{what}: (is_terminal, is_transient)"
            );
        }
    }

    #[test]
    fn unexpected_response_shows_excerpt_quoted() {
        let e = Error::UnexpectedResponse {
            status: StatusCode::BAD_GATEWAY,
            reason: "body is not JSON".into(),
            excerpt: Some("<html>".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "token endpoint answered HTTP 502 Bad Gateway: body is not JSON; body starts: \"<html>\""
        );
    }
}
