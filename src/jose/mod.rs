//! Keys and signed JWTs (feature `jose`): key-based client authentication (`private_key_jwt`,
//! RFC 7523) and sender-constrained tokens (DPoP, RFC 9449).
//!
//! A [`SigningKey`] (P-256 → `ES256`, Ed25519 → `EdDSA`, RSA → `RS256` or `PS256`) does both:
//!
//! - given to a builder's `.private_key_jwt(key)`, it replaces the client secret: every token
//!   request carries a fresh client assertion signed with it;
//! - given to `.dpop(key)`, it binds tokens to itself: every token request carries a DPoP
//!   proof, the endpoint answers with a DPoP-bound token (`token_type` `DPoP`), and the layer
//!   sends that token as `Authorization: DPoP <token>` with a fresh `DPoP` proof on each
//!   request.
//!
//! # Example
//!
//! ```no_run
//! # fn run() -> Result<(), tower_bearer::Error> {
//! use tower_bearer::{AuthLayer, ClientCredentials, jose::SigningKey};
//!
//! # let pem = "";
//! let key = SigningKey::from_pkcs8_pem(pem)?.with_key_id("k1");
//! let proof_key = SigningKey::generate_es256()?;
//! let source = ClientCredentials::builder("https://idp.example.com/oauth2/token")
//!     .client_id("svc")
//!     .private_key_jwt(key) // a client assertion instead of a secret
//!     .dpop(proof_key) // tokens come back DPoP-bound
//!     .build()?;
//! let auth = AuthLayer::new(source); // `Authorization: DPoP <token>` and a fresh `DPoP` proof
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```

pub(crate) mod assertion;
pub(crate) mod dpop;
pub(crate) mod jws;
mod key;
#[cfg(test)]
mod tests;

pub use dpop::DpopProver;
pub use key::{Algorithm, SigningKey};
