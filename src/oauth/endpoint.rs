//! A token endpoint with its client credentials: one form-encoded request with the client's
//! authentication, sent and read back with a size cap, turned into a [`Token`] or a typed
//! [`Error`]; and revocation (RFC 7009).

use std::{fmt, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use url::Url;
use zeroize::Zeroizing;

use super::{
    ClientAuth, MAX_RESPONSE_BYTES, SECRET_PARAMS, client_auth, parse_retry_after, read_capped,
    response, same_endpoint,
};
use crate::{
    ClientSecret, Error, Token,
    assertion::{self, Assertion, DynAssertionSource},
    error::TransportError,
    scrub::Carried,
};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token endpoint with its client credentials.
#[derive(Clone)]
pub(crate) struct TokenEndpoint {
    pub(super) url: Url,
    pub(super) revocation_url: Option<Url>,
    pub(super) client_id: String,
    pub(super) client_secret: Option<ClientSecret>,
    pub(super) auth: ClientAuth,
    /// Where each request's client assertion comes from, for [`ClientAuth::ClientAssertion`].
    pub(super) client_assertion: Option<Arc<dyn DynAssertionSource>>,
    pub(super) http: reqwest::Client,
    /// Of each request.
    pub(super) timeout: Duration,
    #[cfg(feature = "jose")]
    pub(super) keys: super::key_binding::KeyBinding,
}

impl TokenEndpoint {
    /// What tells this endpoint's tokens apart from another's: its URL, the client id and how
    /// the client authenticates (not the secret).
    pub(crate) fn identity(&self) -> String {
        #[allow(unused_mut)]
        let mut identity = format!(
            "token_endpoint={:?} client_id={:?} auth={:?}",
            self.url.as_str(),
            self.client_id,
            self.auth
        );
        #[cfg(feature = "jose")]
        identity.push_str(&self.keys.identity());
        identity
    }

    /// Which client this is, for a token store to record ([`StoredToken::client`]): a hash of
    /// the token endpoint and the client id, hex (no secret, and not the URL itself).
    ///
    /// [`StoredToken::client`]: crate::store::StoredToken::client
    pub(crate) fn client_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"tower-bearer client v1\0");
        hash.update(self.url.as_str().as_bytes());
        hash.update(b"\0");
        hash.update(self.client_id.as_bytes());
        hash.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The DPoP key tokens from this endpoint are bound to, if any.
    #[cfg(feature = "jose")]
    pub(crate) fn dpop_key(&self) -> Option<&crate::jose::SigningKey> {
        self.keys.dpop.as_ref().map(|dpop| dpop.prover.key())
    }

    /// The default HTTP client: no redirects (a redirect could carry credentials elsewhere),
    /// a connect timeout, this crate's user agent, and no pool of idle connections. A pooled
    /// connection belongs to the runtime that opened it: after a fetch on a runtime that is
    /// then kept but not driven (a synchronous wrapper's `block_on` on a helper thread), the
    /// next fetch would wait on that connection until its timeout. Token requests are few (one
    /// per token lifetime), so a connection each costs nothing that matters. Each request's
    /// overall limit is the endpoint's `request_timeout`, set on the request itself so that it
    /// holds for a client given to `http_client` too.
    pub(crate) fn default_http_client() -> Result<reqwest::Client, Error> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tower-bearer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::config(format!("cannot build the HTTP client: {}", e.without_url()))
            })
    }

    /// Sends a token request with the grant's `params` and parses the answer.
    ///
    /// The token's `expires_in` counts from when the request was sent, not from when the answer
    /// came: the server started the count before its answer travelled, so a slow answer never
    /// leaves the layer thinking a token lives longer than it does.
    pub(crate) async fn request(&self, params: &[(&str, &str)]) -> Result<Token, Error> {
        let posted = self.post_once_more_for_nonce(&self.url, params).await?;
        let token = response::parse(
            posted.status,
            posted.content_type.as_deref(),
            &posted.body,
            &posted.carried,
        )
        .map_err(|e| e.with_retry_after(posted.retry_after))?;
        let in_transit = posted.sent_at.elapsed();
        Ok(match token.expires_at() {
            Some(at) => {
                let from_sending = at.checked_sub(in_transit).unwrap_or(at);
                token.with_expires_at(from_sending)
            }
            None => token,
        })
    }

    /// `true` when a revocation endpoint is configured.
    pub(crate) fn can_revoke(&self) -> bool {
        self.revocation_url.is_some()
    }

    /// Revokes the access token of `current` if there is one and a revocation endpoint to
    /// send it to: what a source that holds nothing else revokes.
    pub(crate) async fn revoke_access_token(&self, current: Option<&Token>) -> Result<(), Error> {
        match current {
            Some(token) if self.can_revoke() => {
                self.revoke(token.access_token().secret(), "access_token")
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Revokes `token` at the RFC 7009 revocation endpoint; `hint` is `access_token` or
    /// `refresh_token`. A token the server does not know counts as revoked (RFC 7009 §2.2).
    pub(crate) async fn revoke(&self, token: &str, hint: &str) -> Result<(), Error> {
        let Some(url) = &self.revocation_url else {
            return Err(Error::config("no revocation endpoint is configured"));
        };
        let params = [("token", token), ("token_type_hint", hint)];
        let posted = self.post_once_more_for_nonce(url, &params).await?;
        if posted.status.is_success() {
            return Ok(());
        }
        match response::parse(
            posted.status,
            posted.content_type.as_deref(),
            &posted.body,
            &posted.carried,
        ) {
            Err(err) => Err(err.with_retry_after(posted.retry_after)),
            Ok(_) => Err(Error::UnexpectedResponse {
                status: posted.status,
                reason: "revocation failed".into(),
                excerpt: None,
                retry_after: None,
            }),
        }
    }

    /// [`post`](Self::post), and once more at once if a DPoP server asked for its nonce
    /// (RFC 9449 §8): that first answer is not a failure.
    async fn post_once_more_for_nonce(
        &self,
        url: &Url,
        params: &[(&str, &str)],
    ) -> Result<Posted, Error> {
        let posted = self.post(url, params).await?;
        #[cfg(feature = "jose")]
        if self
            .keys
            .is_nonce_challenge(posted.status, &posted.body, posted.new_nonce)
        {
            tracing::debug!(target: "tower_bearer", "token endpoint asked for a DPoP nonce; sending again with it");
            return self.post(url, params).await;
        }
        Ok(posted)
    }

    /// Posts a form with the client authentication and reads the answer (capped).
    async fn post(&self, url: &Url, params: &[(&str, &str)]) -> Result<Posted, Error> {
        // A fresh assertion for every request, read before the clock of `expires_in` starts.
        let assertion = match &self.client_assertion {
            Some(source) => Some(assertion::fresh(&**source).await?),
            None => None,
        };
        let sent_at = tokio::time::Instant::now();
        let (request, _sent_nonce, carried) =
            self.build_request(url, params, assertion.as_ref())?;
        let request = request.timeout(self.timeout);
        let response = request
            .send()
            .await
            .map_err(|e| Error::Transport(TransportError::new(e)))?;
        if !same_endpoint(response.url(), url) {
            // A user-supplied client followed a redirect: the request, credentials included,
            // went to another URL. Refuse its answer, and say how to avoid it.
            return Err(Error::config(
                "the token endpoint redirected and the HTTP client followed; build the client \
                 given to http_client() with reqwest::redirect::Policy::none()",
            ));
        }
        let status = response.status();
        #[cfg(feature = "jose")]
        let new_nonce = self
            .keys
            .remember_nonce(response.headers(), _sent_nonce.as_deref());
        #[cfg(not(feature = "jose"))]
        let new_nonce = false;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = match status {
            http::StatusCode::TOO_MANY_REQUESTS | http::StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
            _ => None,
        };
        let body = read_capped(response, MAX_RESPONSE_BYTES).await?;
        Ok(Posted {
            status,
            content_type,
            body,
            retry_after,
            new_nonce,
            carried,
            sent_at,
        })
    }

    /// The token request: form-encoded `params` plus the client authentication.
    ///
    /// With [`ClientAuth::Query`] the client credentials and the grant's plain parameters
    /// (`grant_type`, `scope`, ...) go in the query, and its secrets (`SECRET_PARAMS`) in
    /// the body.
    /// Also returns the nonce its DPoP proof carries, and every secret it carries (the
    /// client secret, the grant's secret parameters, a client assertion, the proof), which
    /// the server's answer may echo.
    fn build_request(
        &self,
        url: &Url,
        params: &[(&str, &str)],
        assertion: Option<&Assertion>,
    ) -> Result<(reqwest::RequestBuilder, Option<Box<str>>, Carried), Error> {
        let mut carried = Carried::of(
            params
                .iter()
                .filter(|(k, _)| SECRET_PARAMS.contains(k))
                .map(|(_, v)| *v),
        );
        // Room for the usual request, so the secret is not left behind in reallocated buffers.
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(1024));
        let mut url = url.clone();
        let secret = self.client_secret.as_ref().map(ClientSecret::secret);
        carried.add(secret.unwrap_or_default());
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
            ClientAuth::None => {
                form.extend_pairs(params.iter().copied());
                form.append_pair("client_id", &self.client_id);
            }
            ClientAuth::PrivateKeyJwt => {
                form.extend_pairs(params.iter().copied());
                form.append_pair("client_id", &self.client_id);
                #[cfg(feature = "jose")]
                if let Some(assertion) = self.keys.assertion_params(&self.client_id)? {
                    form.extend_pairs(assertion.iter().map(|(k, v)| (*k, v.as_str())));
                    for (_, value) in &assertion {
                        carried.add(value);
                    }
                }
            }
            ClientAuth::ClientAssertion => {
                form.extend_pairs(params.iter().copied());
                form.append_pair("client_id", &self.client_id);
                if let Some(assertion) = assertion {
                    form.append_pair("client_assertion_type", JWT_BEARER);
                    form.append_pair("client_assertion", assertion.secret());
                    carried.add(assertion.secret());
                }
            }
            ClientAuth::Query => {
                // Grant secrets go in the body: a URL ends up in proxy and access logs.
                let mut query = url.query_pairs_mut();
                for &(name, value) in params {
                    if SECRET_PARAMS.contains(&name) {
                        form.append_pair(name, value);
                    } else {
                        query.append_pair(name, value);
                    }
                }
                query.append_pair("client_id", &self.client_id);
                if let Some(secret) = secret {
                    query.append_pair("client_secret", secret);
                }
            }
        }
        let body = Zeroizing::new(form.finish());
        #[allow(unused_mut)]
        let mut request = self
            .http
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Bytes::from_owner(ZeroizingString(body)));
        #[allow(unused_mut)]
        let mut sent_nonce = None;
        #[cfg(feature = "jose")]
        if let Some((proof, nonce)) = self.keys.proof(&url)? {
            carried.add(&proof);
            request = request.header(super::key_binding::DPOP, proof);
            sent_nonce = nonce;
        }
        if self.auth == ClientAuth::Basic {
            let (user, pass) =
                client_auth::basic_credentials(&self.client_id, secret.unwrap_or(""));
            carried.add(&pass);
            let credentials = zeroize::Zeroizing::new(format!("{user}:{pass}"));
            carried.add(&base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes()));
            request = request.basic_auth(&*user, Some(&*pass));
        }
        Ok((request, sent_nonce, carried))
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TokenEndpoint");
        debug
            .field("url", &self.url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field(
                "revocation_url",
                &self.revocation_url.as_ref().map(Url::as_str),
            );
        #[cfg(feature = "jose")]
        debug.field("keys", &self.keys);
        debug.finish()
    }
}

/// A token-endpoint response, and what its request carried.
struct Posted {
    status: http::StatusCode,
    content_type: Option<String>,
    body: Zeroizing<Vec<u8>>,
    /// The `Retry-After` of a 429 or 503.
    retry_after: Option<std::time::Duration>,
    /// Whether the server's DPoP nonce is now another than the one the request carried.
    #[cfg_attr(not(feature = "jose"), allow(dead_code))]
    new_nonce: bool,
    /// The secrets the request carried, which its answer may echo.
    carried: Carried,
    /// When the request was sent.
    sent_at: tokio::time::Instant,
}

/// Owner of a request body that wipes it when reqwest is done with it.
struct ZeroizingString(Zeroizing<String>);

impl AsRef<[u8]> for ZeroizingString {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}
