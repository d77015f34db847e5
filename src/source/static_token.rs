//! A fixed token.

use std::fmt;

use crate::{AccessToken, Error, Token, TokenSource};

/// A [`TokenSource`] that always returns the same access token.
///
/// Useful for tests and for APIs that hand out long-lived tokens. After a 401 the layer asks
/// again, gets the same token, retries once, and passes the second 401 to the caller.
///
/// # Example
///
/// ```
/// use tower_bearer::{AuthLayer, StaticToken};
///
/// let layer = AuthLayer::new(StaticToken::new("my-api-key"));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct StaticToken {
    token: AccessToken,
}

impl StaticToken {
    /// A source that always yields `token`.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken {
            token: AccessToken::new(token),
        }
    }
}

impl TokenSource for StaticToken {
    async fn fetch(&self) -> Result<Token, Error> {
        Ok(Token::new(self.token.secret()))
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken")
            .field("token", &self.token)
            .finish()
    }
}
