//! Proof Key for Code Exchange (RFC 7636), S256 only.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::{Error, token::PkceVerifier};

/// A PKCE verifier and its S256 challenge.
///
/// Send [`challenge`](Self::challenge) with the authorization request (see
/// [`AuthorizationCode::authorize_url`](crate::AuthorizationCode::authorize_url)) and the
/// [`verifier`](Self::verifier) with the code exchange.
///
/// ```
/// let pkce = tower_bearer::Pkce::new()?;
/// assert_eq!(pkce.verifier().secret().len(), 43);
/// assert_eq!(pkce.method(), "S256");
/// # Ok::<(), tower_bearer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Pkce {
    verifier: PkceVerifier,
    challenge: String,
}

impl Pkce {
    /// A new verifier of 32 random bytes (43 characters) and its challenge.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the operating system has no randomness to give.
    pub fn new() -> Result<Self, Error> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *bytes)
            .map_err(|e| Error::config(format!("no randomness for a PKCE verifier: {e}")))?;
        Ok(Pkce::from_verifier(URL_SAFE_NO_PAD.encode(*bytes)))
    }

    /// Uses `verifier`, which must be 43 to 128 characters of `[A-Za-z0-9-._~]` (RFC 7636
    /// §4.1): it is not checked here, and a server refuses a verifier that breaks the rule.
    pub fn from_verifier(verifier: impl Into<String>) -> Self {
        let verifier = PkceVerifier::new(verifier);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.secret().as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }

    /// The verifier, sent with the code exchange.
    pub fn verifier(&self) -> &PkceVerifier {
        &self.verifier
    }

    /// The challenge, sent with the authorization request.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }

    /// The challenge method: `S256`.
    pub fn method(&self) -> &'static str {
        "S256"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_random_and_well_formed() {
        let a = Pkce::new().unwrap();
        let b = Pkce::new().unwrap();
        assert_ne!(a.verifier(), b.verifier());
        let v = a.verifier().secret();
        assert_eq!(v.len(), 43);
        assert!(
            v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(!format!("{a:?}").contains(v));
    }
}
