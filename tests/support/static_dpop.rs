//! A token source holding one DPoP-bound token and its key: the DPoP request path without a
//! server. Shared by the hot-path test and the DPoP benchmark.

use tower_bearer::{Error, Token, TokenSource, jose::SigningKey};

/// Hands out `token` as a DPoP-bound token (no expiry), bound to `key`.
pub struct StaticDpop {
    pub key: SigningKey,
    pub token: String,
}

impl TokenSource for StaticDpop {
    async fn fetch(&self) -> Result<Token, Error> {
        Ok(Token::new(self.token.as_str()).with_token_type("DPoP"))
    }

    fn dpop_key(&self) -> Option<SigningKey> {
        Some(self.key.clone())
    }
}
