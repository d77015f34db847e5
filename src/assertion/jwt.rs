//! The expiry of a JWT, read from its payload without checking its signature: only to keep an
//! expired assertion from being sent (the server checks everything else).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Deserialize;

/// URL-safe base64, with or without padding (RFC 7515 says without; some issuers pad).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The longest payload read: a JWT's claims are small, and a file could be anything.
const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Deserialize)]
struct Claims {
    exp: Option<serde_json::Number>,
}

/// The `exp` of `jwt` (a JWS in compact form), if it is one with a numeric `exp`.
pub(crate) fn expiry(jwt: &str) -> Option<SystemTime> {
    let mut parts = jwt.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
        return None;
    }
    let payload = BASE64URL.decode(payload).ok()?;
    let claims: Claims = serde_json::from_slice(&payload).ok()?;
    let seconds = claims.exp?.as_f64()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    // Far futures saturate at about 30 years rather than overflow.
    let seconds = seconds.min(4.0e9);
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(seconds))
}
