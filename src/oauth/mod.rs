//! The token-endpoint wire protocol (RFC 6749 §2.3, §5), free of caching.
//!
//! [`TokenEndpoint`] sends one form-encoded token request with the configured client
//! authentication and turns the answer into a [`Token`] or a typed [`Error`]. It knows HTTP and
//! RFC 6749, and nothing about when tokens are fetched.

use std::time::Duration;

use http::header::CONTENT_LENGTH;
use url::{Host, Url};
use zeroize::Zeroizing;

use crate::{Error, error::TransportError};

mod client_auth;
mod config;
mod discovery;
mod endpoint;
#[cfg(feature = "jose")]
pub(crate) mod key_binding;
mod pkce;
pub(crate) mod response;

pub use client_auth::ClientAuth;
pub use discovery::ProviderMetadata;
pub use pkce::Pkce;

pub(crate) use config::{
    BuiltEndpoint, Discovered, EndpointConfig, ParamNames, client_builder_methods,
    push_request_identity,
};
pub(crate) use endpoint::TokenEndpoint;

/// Largest token-endpoint response body read; anything longer is an error.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Default for `request_timeout` on the grant builders: the longest one request to a token,
/// revocation or discovery endpoint may take, connection and body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Form parameters whose values are secrets: never logged, scrubbed from error excerpts.
const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "token",
    "refresh_token",
    "code",
    "code_verifier",
    "password",
    "assertion",
    "client_assertion",
    "subject_token",
    "actor_token",
    "device_code",
];

/// Whether a response came from the URL the request went to (the query aside, which
/// [`ClientAuth::Query`] fills).
fn same_endpoint(answered: &Url, asked: &Url) -> bool {
    answered.scheme() == asked.scheme()
        && answered.host() == asked.host()
        && answered.port_or_known_default() == asked.port_or_known_default()
        && answered.path() == asked.path()
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), capped at an hour: a
/// delay of any size, or a date however far ahead, is a pause of at most an hour; a date in
/// the past is no pause.
pub(crate) fn parse_retry_after(value: &str) -> Option<std::time::Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still a (very long) delay.
        std::time::Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    };
    Some(delay.min(crate::cache::MAX_RETRY_AFTER))
}

/// Reads a response body, failing once it passes `cap` bytes. The buffer is zeroized on drop.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let status = response.status();
    let too_large = || Error::UnexpectedResponse {
        status,
        reason: format!("response body is larger than {cap} bytes").into(),
        excerpt: None,
        retry_after: None,
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large());
    }
    let mut body = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0) as usize));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::Transport(TransportError::new(e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses and checks a token-endpoint URL: `https`, or plain `http` to a loopback address, or
/// plain `http` anywhere when `allow_http` is set.
pub(crate) fn endpoint_url(raw: &str, allow_http: bool) -> Result<Url, Error> {
    let url = Url::parse(raw)
        .map_err(|e| Error::config(format!("token endpoint URL is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback(&url) => {}
        "http" => {
            return Err(Error::config(
                "token endpoint URL uses plain http to a non-loopback host; use https, \
                 or call `.allow_http(true)` to send credentials unencrypted",
            ));
        }
        other => {
            return Err(Error::config(format!(
                "token endpoint URL has scheme `{other}`; expected https"
            )));
        }
    }
    if url.host().is_none() {
        return Err(Error::config("token endpoint URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(
            "token endpoint URL must not carry credentials; set them on the builder",
        ));
    }
    Ok(url)
}

/// `true` for `localhost`, 127.0.0.0/8 and `[::1]`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests;
