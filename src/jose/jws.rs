//! Compact JWS signing (RFC 7515 §7.1): `base64url(header) "." base64url(claims) "."
//! base64url(signature)`, built in one string.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::SigningKey;
use crate::Error;

/// `header` and `claims` (JSON text) signed with `key`, in compact form.
pub(crate) fn sign(key: &SigningKey, header: &str, claims: &str) -> Result<String, Error> {
    let mut jws = String::with_capacity(
        4 * (header.len() + claims.len()) / 3 + 8 + 4 * key.signature_len() / 3,
    );
    URL_SAFE_NO_PAD.encode_string(header, &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut jws);
    let signature = key.sign(jws.as_bytes())?;
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
    Ok(jws)
}
