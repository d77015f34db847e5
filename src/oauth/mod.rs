//! The token-endpoint wire protocol (RFC 6749 §2.3, §5), free of caching.
//!
//! [`TokenEndpoint`] sends one form-encoded token request with the configured client
//! authentication and turns the answer into a [`Token`] or a typed [`Error`]. It knows HTTP and
//! RFC 6749, and nothing about when tokens are fetched.

use std::{fmt, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use url::{Host, Url};
use zeroize::Zeroizing;

use crate::{ClientSecret, Error, Token, error::TransportError};
use scrub::Carried;

mod client_auth;
mod discovery;
#[cfg(feature = "jose")]
pub(crate) mod key_binding;
mod pkce;
pub(crate) mod response;
mod scrub;

pub use client_auth::ClientAuth;
pub use discovery::ProviderMetadata;
pub use pkce::Pkce;

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

/// Parameters the grant or the client authentication sets; a user may not add them again.
pub(crate) const RESERVED_PARAMS: &[&str] = &["grant_type", "client_id", "client_secret"];

/// The client settings every grant's builder shares; see [`client_builder_methods`].
pub(crate) struct EndpointConfig {
    pub(crate) token_url: String,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<ClientSecret>,
    pub(crate) scope: Option<String>,
    /// Set by the user; wins over `discovered_auth`.
    pub(crate) auth: Option<ClientAuth>,
    /// Chosen from discovery metadata.
    pub(crate) discovered_auth: Option<ClientAuth>,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) allow_http: bool,
    pub(crate) revocation_url: Option<String>,
    pub(crate) request_timeout: Duration,
    /// What discovery found that the keys must fit, if the builder came from metadata.
    pub(crate) discovered: Option<Discovered>,
    /// The client's key for `private_key_jwt`.
    #[cfg(feature = "jose")]
    pub(crate) client_key: Option<crate::jose::SigningKey>,
    /// The `aud` of client assertions, if set; else the issuer discovery found, else the token
    /// endpoint.
    #[cfg(feature = "jose")]
    pub(crate) assertion_audience: Option<String>,
    /// The DPoP key.
    #[cfg(feature = "jose")]
    pub(crate) dpop_key: Option<crate::jose::SigningKey>,
}

/// What authorization server metadata says about key-based requests.
#[cfg_attr(not(feature = "jose"), allow(dead_code))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Discovered {
    pub(crate) issuer: String,
    pub(crate) auth_methods: Option<Vec<String>>,
    pub(crate) assertion_algorithms: Option<Vec<String>>,
    pub(crate) dpop_algorithms: Option<Vec<String>>,
}

/// What [`EndpointConfig::build`] checked and made.
pub(crate) struct BuiltEndpoint {
    pub(crate) endpoint: TokenEndpoint,
    pub(crate) scope: Option<String>,
    pub(crate) params: Vec<(String, String)>,
}

impl EndpointConfig {
    pub(crate) fn new(token_url: String) -> Self {
        EndpointConfig {
            token_url,
            client_id: None,
            client_secret: None,
            scope: None,
            auth: None,
            discovered_auth: None,
            params: Vec::new(),
            http: None,
            allow_http: false,
            revocation_url: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            discovered: None,
            #[cfg(feature = "jose")]
            client_key: None,
            #[cfg(feature = "jose")]
            assertion_audience: None,
            #[cfg(feature = "jose")]
            dpop_key: None,
        }
    }

    /// Checks the settings. `grant` names the grant in messages; `reserved` are the form
    /// parameters the grant sets itself.
    pub(crate) fn build(self, grant: &str, reserved: &[&str]) -> Result<BuiltEndpoint, Error> {
        let url = endpoint_url(&self.token_url, self.allow_http)?;
        let auth = self.auth.or(self.discovered_auth).unwrap_or_default();
        let client_id = self
            .client_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::config(format!("{grant} needs a client id")))?;
        if !matches!(auth, ClientAuth::None | ClientAuth::PrivateKeyJwt)
            && self.client_secret.is_none()
        {
            return Err(Error::config(format!(
                "{grant} needs a client secret (or `.private_key_jwt(key)`, or \
                 `.auth(ClientAuth::None)` for a public client)"
            )));
        }
        #[cfg(feature = "jose")]
        let keys = self.key_binding(grant, auth, &url)?;
        #[cfg(not(feature = "jose"))]
        if auth == ClientAuth::PrivateKeyJwt {
            return Err(Error::config(format!(
                "{grant}: private_key_jwt needs the `jose` feature"
            )));
        }
        if let Some((name, _)) = self.params.iter().find(|(k, _)| {
            RESERVED_PARAMS.contains(&k.as_str()) || reserved.contains(&k.as_str()) || k == "scope"
        }) {
            return Err(Error::config(format!(
                "parameter `{name}` is set by the grant or the builder, not by `.param()`"
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config("request_timeout must be longer than zero"));
        }
        if self.request_timeout > crate::layer::LONGEST_SETTING {
            return Err(Error::config("request_timeout must be at most a year"));
        }
        let revocation_url = self
            .revocation_url
            .map(|u| endpoint_url(&u, self.allow_http))
            .transpose()?;
        let http = match self.http {
            Some(http) => http,
            None => TokenEndpoint::default_http_client()?,
        };
        Ok(BuiltEndpoint {
            endpoint: TokenEndpoint {
                url,
                revocation_url,
                client_id,
                client_secret: self.client_secret,
                auth,
                http,
                timeout: self.request_timeout,
                #[cfg(feature = "jose")]
                keys,
            },
            scope: self.scope,
            params: self.params,
        })
    }

    /// The client assertion and DPoP settings, checked against each other and against what
    /// discovery found.
    #[cfg(feature = "jose")]
    fn key_binding(
        &self,
        grant: &str,
        auth: ClientAuth,
        url: &Url,
    ) -> Result<key_binding::KeyBinding, Error> {
        let discovered = self.discovered.as_ref();
        let offers =
            |list: Option<&Vec<String>>, what: &str, key: &crate::jose::SigningKey| match list {
                Some(algorithms) if !algorithms.iter().any(|a| a == key.algorithm().name()) => {
                    Err(Error::config(format!(
                        "{grant}: the server accepts {what} signed with {}, not {}",
                        algorithms.join(", "),
                        key.algorithm()
                    )))
                }
                _ => Ok(()),
            };
        let assertion = match (auth, &self.client_key) {
            (ClientAuth::PrivateKeyJwt, Some(key)) => {
                if let Some(methods) = discovered.and_then(|d| d.auth_methods.as_ref()) {
                    if !methods.iter().any(|m| m == "private_key_jwt") {
                        return Err(Error::config(format!(
                            "{grant}: the server does not list private_key_jwt among its \
                             client authentication methods ({})",
                            methods.join(", ")
                        )));
                    }
                }
                offers(
                    discovered.and_then(|d| d.assertion_algorithms.as_ref()),
                    "client assertions",
                    key,
                )?;
                // Current guidance (RFC 7523bis) is the issuer's identifier; without one, the
                // token endpoint, which every server accepts.
                let audience = self
                    .assertion_audience
                    .clone()
                    .or_else(|| discovered.map(|d| d.issuer.clone()))
                    .unwrap_or_else(|| url.as_str().to_owned());
                Some((key.clone(), audience))
            }
            (ClientAuth::PrivateKeyJwt, None) => {
                return Err(Error::config(format!(
                    "{grant}: private_key_jwt needs the client's key: `.private_key_jwt(key)`"
                )));
            }
            (_, Some(_)) => {
                return Err(Error::config(format!(
                    "{grant}: a key for private_key_jwt is set, but the client authentication \
                     is {auth:?}"
                )));
            }
            (_, None) => None,
        };
        let dpop = match &self.dpop_key {
            Some(key) => {
                offers(
                    discovered.and_then(|d| d.dpop_algorithms.as_ref()),
                    "DPoP proofs",
                    key,
                )?;
                Some(std::sync::Arc::new(key_binding::EndpointDpop::new(
                    key.clone(),
                )))
            }
            None => None,
        };
        Ok(key_binding::KeyBinding { assertion, dpop })
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .field(
                "auth",
                &self.auth.or(self.discovered_auth).unwrap_or_default(),
            )
            .field("params", &ParamNames(&self.params))
            .field("allow_http", &self.allow_http)
            .field("revocation_url", &self.revocation_url)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Adds what a grant's requests ask for (scope, extra parameters) to a source's identity.
pub(crate) fn push_request_identity(
    identity: &mut String,
    scope: Option<&str>,
    params: &[(String, String)],
) {
    use std::fmt::Write;
    if let Some(scope) = scope {
        let _ = write!(identity, " scope={scope:?}");
    }
    for (name, value) in params {
        let _ = write!(identity, " {name:?}={value:?}");
    }
}

/// Shows parameter names only: a value may be sensitive.
pub(crate) struct ParamNames<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for ParamNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Setter methods shared by the grant builders, which hold an `EndpointConfig` in `config`.
macro_rules! client_builder_methods {
    () => {
        /// The client identifier (required).
        pub fn client_id(mut self, id: impl Into<String>) -> Self {
            self.config.client_id = Some(id.into());
            self
        }

        /// The client secret (required unless [`ClientAuth::None`](crate::ClientAuth::None)).
        pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
            self.config.client_secret = Some(crate::ClientSecret::new(secret));
            self
        }

        /// The `scope` to ask for, space-separated.
        pub fn scope(mut self, scope: impl Into<String>) -> Self {
            self.config.scope = Some(scope.into());
            self
        }

        /// How the client authenticates; [`ClientAuth::Basic`](crate::ClientAuth::Basic) unless
        /// set, or the method discovery found.
        pub fn auth(mut self, auth: crate::ClientAuth) -> Self {
            self.config.auth = Some(auth);
            self
        }

        /// Adds a form parameter to every token request, such as `audience` or `resource`.
        /// Repeatable; parameters are sent in the order added.
        pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.config.params.push((name.into(), value.into()));
            self
        }

        /// Uses this HTTP client for token requests instead of the default one (which follows
        /// no redirects, gives up connecting after 10 s, and keeps no idle connections).
        ///
        /// A client that keeps idle connections keeps each on the runtime that opened it: if
        /// fetches may run on a runtime that is later left idle (a synchronous wrapper's
        /// `block_on` on a helper thread), build it with `pool_max_idle_per_host(0)`, or give
        /// the layer a [`runtime`](crate::AuthLayerBuilder::runtime) of its own.
        ///
        /// Build it with `redirect(reqwest::redirect::Policy::none())`: a client that follows
        /// redirects resends a `307`/`308`-redirected request, form body and client credentials
        /// included, to wherever the endpoint points. The source cannot stop a client from
        /// following, but it refuses any answer that came from another URL, with
        /// [`Error::Config`](crate::Error::Config), so a redirect never yields a token.
        pub fn http_client(mut self, client: reqwest::Client) -> Self {
            self.config.http = Some(client);
            self
        }

        /// Allows plain `http` token and revocation endpoints on non-loopback hosts. Credentials
        /// and tokens then cross the network unencrypted. Loopback addresses (`127.0.0.0/8`,
        /// `[::1]`, `localhost`) work over `http` without this.
        pub fn allow_http(mut self, allow: bool) -> Self {
            self.config.allow_http = allow;
            self
        }

        /// The RFC 7009 revocation endpoint, used by
        /// [`AuthLayer::revoke`](crate::AuthLayer::revoke).
        pub fn revocation_url(mut self, url: impl Into<String>) -> Self {
            self.config.revocation_url = Some(url.into());
            self
        }

        /// Authenticates the client with a client assertion signed with `key`
        /// (`private_key_jwt`, RFC 7523) instead of a secret: each token request carries a
        /// fresh one (`iss` and `sub` the client id, a unique `jti`, valid 60 s, the key's
        /// `kid` in its header). Its `aud` is the issuer that discovery found, else the token
        /// endpoint; see [`assertion_audience`](Self::assertion_audience). Feature `jose`.
        #[cfg(feature = "jose")]
        pub fn private_key_jwt(mut self, key: crate::jose::SigningKey) -> Self {
            self.config.client_key = Some(key);
            self.config.auth = Some(crate::ClientAuth::PrivateKeyJwt);
            self
        }

        /// The `aud` of client assertions, for a server that wants another than the issuer
        /// or the token endpoint URL. Feature `jose`.
        #[cfg(feature = "jose")]
        pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
            self.config.assertion_audience = Some(audience.into());
            self
        }

        /// Binds tokens to `key` with DPoP (RFC 9449): every token request carries a DPoP
        /// proof signed with it, so the server issues DPoP-bound tokens (`token_type` `DPoP`),
        /// which the layer sends as `Authorization: DPoP <token>` with a fresh `DPoP` proof on
        /// each request. A server's `use_dpop_nonce` answer is retried at once with its nonce.
        /// Feature `jose`.
        #[cfg(feature = "jose")]
        pub fn dpop(mut self, key: crate::jose::SigningKey) -> Self {
            self.config.dpop_key = Some(key);
            self
        }

        /// The longest one request to the token or revocation endpoint may take, connecting
        /// and reading the answer included (30 s unless set; zero is refused). It applies to
        /// a client given with [`http_client`](Self::http_client) too. The layer's
        /// [`fetch_timeout`](crate::AuthLayerBuilder::fetch_timeout) bounds a whole fetch
        /// besides.
        pub fn request_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.config.request_timeout = timeout;
            self
        }
    };
}
pub(crate) use client_builder_methods;

/// A token endpoint with its client credentials.
#[derive(Clone)]
pub(crate) struct TokenEndpoint {
    url: Url,
    revocation_url: Option<Url>,
    client_id: String,
    client_secret: Option<ClientSecret>,
    auth: ClientAuth,
    http: reqwest::Client,
    /// Of each request.
    timeout: Duration,
    #[cfg(feature = "jose")]
    keys: key_binding::KeyBinding,
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
        let sent_at = tokio::time::Instant::now();
        let (request, _sent_nonce, carried) = self.build_request(url, params)?;
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
            request = request.header(key_binding::DPOP, proof);
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

/// Owner of a request body that wipes it when reqwest is done with it.
struct ZeroizingString(Zeroizing<String>);

impl AsRef<[u8]> for ZeroizingString {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
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
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_or_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn retry_after_of_any_size_or_date_is_at_most_an_hour() {
        let hour = Duration::from_secs(3600);
        assert_eq!(parse_retry_after("18446744073709551615"), Some(hour));
        assert_eq!(parse_retry_after(&"9".repeat(100)), Some(hour));
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(hour)
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("+1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any header text parses to nothing or to a pause of at most an hour, never a panic.
        #[test]
        fn arbitrary_retry_after_never_panics_and_is_capped(value in "\\PC{0,64}") {
            if let Some(pause) = parse_retry_after(&value) {
                proptest::prop_assert!(pause <= Duration::from_secs(3600));
            }
        }

        /// Delay-seconds of any length are a pause, capped.
        #[test]
        fn digits_of_any_length_are_a_capped_pause(value in "[0-9]{1,80}") {
            let pause = parse_retry_after(&value).unwrap();
            proptest::prop_assert!(pause <= Duration::from_secs(3600));
        }

        /// HTTP dates of any year, valid or not, never panic.
        #[test]
        fn arbitrary_dates_never_panic(
            day in 0u32..40, month in 0usize..13, year in 0u32..100_000,
            hour in 0u32..30, minute in 0u32..70, second in 0u32..70,
        ) {
            const MONTHS: [&str; 13] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                "Dec", "Foo",
            ];
            let date = format!(
                "Sun, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
                MONTHS[month]
            );
            if let Some(pause) = parse_retry_after(&date) {
                proptest::prop_assert!(pause <= Duration::from_secs(3600));
            }
        }
    }

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
