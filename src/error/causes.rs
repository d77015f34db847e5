//! The causes an [`Error`](super::Error) carries: a transport failure (with the request URL
//! removed), a token store's failure, and the error of a user's own token source.

use std::{error::Error as StdError, fmt, sync::Arc};

/// A transport failure talking to the token endpoint.
///
/// Wraps the `reqwest` error with the request URL removed, since a URL can carry credentials
/// (see [`ClientAuth::Query`](crate::ClientAuth::Query)).
#[derive(Debug, Clone)]
pub struct TransportError {
    pub(super) error: Arc<dyn StdError + Send + Sync>,
    pub(super) timeout: bool,
    pub(super) connect: bool,
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
    pub(super) message: String,
    pub(super) io: Option<Arc<std::io::Error>>,
    pub(super) unsaved: bool,
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
pub struct SourceError(pub(super) Arc<dyn StdError + Send + Sync>);

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
