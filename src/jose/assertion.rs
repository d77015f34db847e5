//! Client assertions (`private_key_jwt`, RFC 7523 §2.2, OpenID Connect Core §9): a short-lived
//! JWT, signed with the client's key, that stands in for a client secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{SigningKey, jws};
use crate::Error;

/// The `client_assertion_type` of a JWT client assertion.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid: long enough for a slow request and some clock skew, short
/// enough that a captured one is soon useless.
pub(crate) const LIFETIME: Duration = Duration::from_secs(60);

/// A fresh assertion that `client_id` is calling, for the server identified by `audience`.
pub(crate) fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    audience: &str,
) -> Result<String, Error> {
    let mut header = serde_json::json!({ "alg": key.algorithm().name(), "typ": "JWT" });
    if let (Some(kid), Some(members)) = (key.key_id(), header.as_object_mut()) {
        members.insert("kid".into(), kid.into());
    }
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti)
        .map_err(|_| Error::Key("no randomness for a client assertion".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": now,
        "exp": now + LIFETIME.as_secs(),
    });
    jws::sign(key, &header.to_string(), &claims.to_string())
}
