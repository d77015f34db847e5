//! The errors that stop a run before or while it starts.

use std::{io, path::PathBuf};

/// Why `bearer-load` could not run. Request failures are not errors: they are counted in the
/// [`Report`](crate::report::Report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A combination of flags that cannot work (clap checks the rest).
    #[error("{0}")]
    Usage(String),
    /// A file named on the command line could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it ran into.
        source: io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The TLS client or server configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// tower-bearer refused the token source or the layer's settings.
    #[error("token source: {0}")]
    Source(#[from] tower_bearer::Error),
    /// The built-in demo servers could not start.
    #[error("demo server: {0}")]
    Demo(String),
    /// A socket or runtime operation failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}
