//! An OAuth 2.0 error response from a token endpoint (RFC 6749 §5.2), told apart by its
//! `error` code and free of anything the server echoed of a secret.

use std::{error::Error as StdError, fmt, time::Duration};

use http::StatusCode;

/// An OAuth 2.0 error response from a token endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) code: String,
    pub(super) description: Option<String>,
    pub(super) uri: Option<String>,
    pub(super) retry_after: Option<Duration>,
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
