//! [`TokenFile`]: an assertion the platform keeps in a file.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use zeroize::Zeroizing;

use super::{Assertion, AssertionSource};
use crate::Error;

/// The longest file read: a JWT is a few kilobytes.
const MAX_FILE: u64 = 64 * 1024;

/// An assertion the platform keeps in a file, read again for every token request: a
/// Kubernetes projected service-account token, or the file named by
/// `AZURE_FEDERATED_TOKEN_FILE` or `AWS_WEB_IDENTITY_TOKEN_FILE`.
///
/// Reading the path each time follows kubelet's rotation (it writes the new token in a new
/// directory and swaps a symbolic link to it at once), so the next request sends the new
/// token. Surrounding whitespace is dropped. A file that cannot be read is
/// [`Error::Assertion`] (naming the path, never the content); one whose token has expired is
/// [`Error::ExpiredAssertion`], and is not sent.
///
/// ```
/// use tower_bearer::assertion::TokenFile;
///
/// let source = TokenFile::new("/var/run/secrets/tokens/oauth-token");
/// // Or the file an environment variable names:
/// let azure = TokenFile::from_env("AZURE_FEDERATED_TOKEN_FILE");
/// # let _ = (source, azure);
/// ```
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: Arc<Path>,
}

impl TokenFile {
    /// The token in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile {
            path: Arc::from(path.into()),
        }
    }

    /// The token in the file that the environment variable `variable` names.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the variable is not set or is empty.
    pub fn from_env(variable: &str) -> Result<TokenFile, Error> {
        match std::env::var_os(variable) {
            Some(path) if !path.is_empty() => Ok(TokenFile::new(path)),
            _ => Err(Error::config(format!(
                "{variable} names no token file: it is not set"
            ))),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AssertionSource for TokenFile {
    async fn assertion(&self) -> Result<Assertion, Error> {
        let path = Arc::clone(&self.path);
        // A read off the runtime's threads: a file on a slow volume holds no one else up.
        let read = tokio::task::spawn_blocking(move || read_capped(&path))
            .await
            .map_err(|_| Error::Assertion("the token file's read was cancelled".into()))?;
        let text = read.map_err(|err| {
            Error::Assertion(
                format!("cannot read the token file {}: {err}", self.path.display()).into(),
            )
        })?;
        Ok(Assertion::new(text.trim()))
    }
}

/// The file's text, at most [`MAX_FILE`] bytes, zeroized when dropped.
fn read_capped(path: &Path) -> std::io::Result<Zeroizing<String>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = Zeroizing::new(String::with_capacity(4096));
    file.take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 64 KiB",
        ));
    }
    Ok(text)
}
