//! The token-endpoint wire protocol (RFC 6749 §2.3, §5), free of caching.
//!
//! [`TokenEndpoint`] sends one form-encoded token request with the configured client
//! authentication and turns the answer into a [`Token`] or a typed [`Error`]. It knows HTTP and
//! RFC 6749, and nothing about when tokens are fetched.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use url::{Host, Url};
use zeroize::Zeroizing;

use crate::{ClientSecret, Error, Token, error::TransportError};

mod client_auth;
pub(crate) mod response;

pub use client_auth::ClientAuth;

/// Largest token-endpoint response body read; anything longer is an error.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Form parameters whose values are secrets: never logged, scrubbed from error excerpts.
const SECRET_PARAMS: &[&str] = &[
    "client_secret",
    "refresh_token",
    "code",
    "code_verifier",
    "password",
    "assertion",
    "client_assertion",
];

/// Parameters the grant or the client authentication sets; a user may not add them again.
pub(crate) const RESERVED_PARAMS: &[&str] = &["grant_type", "client_id", "client_secret"];

/// A token endpoint with its client credentials.
#[derive(Clone)]
pub(crate) struct TokenEndpoint {
    url: Url,
    client_id: String,
    client_secret: Option<ClientSecret>,
    auth: ClientAuth,
    http: reqwest::Client,
}

impl TokenEndpoint {
    pub(crate) fn new(
        url: Url,
        client_id: String,
        client_secret: Option<ClientSecret>,
        auth: ClientAuth,
        http: reqwest::Client,
    ) -> Self {
        TokenEndpoint {
            url,
            client_id,
            client_secret,
            auth,
            http,
        }
    }

    /// The default HTTP client: no redirects (a redirect could carry credentials elsewhere),
    /// a connect timeout, and this crate's user agent. The overall time limit is the cache's
    /// fetch timeout.
    pub(crate) fn default_http_client() -> Result<reqwest::Client, Error> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tower-bearer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::config(format!("cannot build the HTTP client: {}", e.without_url()))
            })
    }

    /// Sends a token request with the grant's `params` and parses the answer.
    pub(crate) async fn request(&self, params: &[(&str, &str)]) -> Result<Token, Error> {
        let request = self.build_request(params);
        let response = request
            .send()
            .await
            .map_err(|e| Error::Transport(TransportError::new(e)))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(response, MAX_RESPONSE_BYTES).await?;

        let mut secrets: Vec<&str> = params
            .iter()
            .filter(|(k, _)| SECRET_PARAMS.contains(k))
            .map(|(_, v)| *v)
            .collect();
        secrets.extend(self.client_secret.as_ref().map(ClientSecret::secret));
        response::parse(status, content_type.as_deref(), &body, &secrets)
    }

    /// The token request: form-encoded `params` plus the client authentication.
    fn build_request(&self, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
        // Room for the usual request, so the secret is not left behind in reallocated buffers.
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(1024));
        let mut url = self.url.clone();
        let secret = self.client_secret.as_ref().map(ClientSecret::secret);
        match self.auth {
            ClientAuth::Basic => {
                form.extend_pairs(params.iter().copied());
            }
            ClientAuth::Post => {
                form.extend_pairs(params.iter().copied());
                form.append_pair("client_id", &self.client_id);
                if let Some(secret) = secret {
                    form.append_pair("client_secret", secret);
                }
            }
            ClientAuth::Query => {
                let mut query = url.query_pairs_mut();
                query.extend_pairs(params.iter().copied());
                query.append_pair("client_id", &self.client_id);
                if let Some(secret) = secret {
                    query.append_pair("client_secret", secret);
                }
            }
        }
        let body = Zeroizing::new(form.finish());
        let request = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Bytes::from_owner(ZeroizingString(body)));
        if self.auth == ClientAuth::Basic {
            let (user, pass) =
                client_auth::basic_credentials(&self.client_id, secret.unwrap_or(""));
            request.basic_auth(&*user, Some(&*pass))
        } else {
            request
        }
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Owner of a request body that wipes it when reqwest is done with it.
struct ZeroizingString(Zeroizing<String>);

impl AsRef<[u8]> for ZeroizingString {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Reads a response body, failing once it passes `cap` bytes. The buffer is zeroized on drop.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let status = response.status();
    let too_large = || Error::UnexpectedResponse {
        status,
        reason: format!("response body is larger than {cap} bytes").into(),
        excerpt: None,
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
mod tests {
    use super::*;

    #[test]
    fn endpoint_url_rules() {
        assert!(endpoint_url("https://idp.example.com/token", false).is_ok());
        assert!(endpoint_url("http://127.0.0.1:8080/token", false).is_ok());
        assert!(endpoint_url("http://127.4.5.6/token", false).is_ok());
        assert!(endpoint_url("http://[::1]:1/token", false).is_ok());
        assert!(endpoint_url("http://localhost/token", false).is_ok());
        let err = endpoint_url("http://idp.example.com/token", false).unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");
        assert!(endpoint_url("http://idp.example.com/token", true).is_ok());
        assert!(matches!(
            endpoint_url("ftp://idp/token", true),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            endpoint_url("not a url", true),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            endpoint_url("https://user:pw@idp/token", true),
            Err(Error::Config(_))
        ));
    }
}
