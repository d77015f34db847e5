//! The client settings every grant's builder shares ([`EndpointConfig`], and the builder
//! methods every grant has through [`client_builder_methods`]), checked and turned into a
//! [`TokenEndpoint`](super::TokenEndpoint) by [`EndpointConfig::build`].

use std::{fmt, sync::Arc, time::Duration};

use super::{ClientAuth, DEFAULT_REQUEST_TIMEOUT, TokenEndpoint, endpoint_url};
use crate::{ClientSecret, Error, assertion::DynAssertionSource};

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
    /// Where client assertions from the platform come from ([`ClientAuth::ClientAssertion`]).
    pub(crate) client_assertion: Option<Arc<dyn DynAssertionSource>>,
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
            client_assertion: None,
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
        if !matches!(
            auth,
            ClientAuth::None | ClientAuth::PrivateKeyJwt | ClientAuth::ClientAssertion
        ) && self.client_secret.is_none()
        {
            return Err(Error::config(format!(
                "{grant} needs a client secret (or `.private_key_jwt(key)`, or \
                 `.client_assertion(source)`, or `.auth(ClientAuth::None)` for a public client)"
            )));
        }
        match (auth, &self.client_assertion) {
            (ClientAuth::ClientAssertion, None) => {
                return Err(Error::config(format!(
                    "{grant}: ClientAuth::ClientAssertion needs a source: \
                     `.client_assertion(source)`"
                )));
            }
            (ClientAuth::ClientAssertion, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(Error::config(format!(
                    "{grant}: a client assertion source is set, but the client authentication \
                     is {auth:?}"
                )));
            }
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
        if let Some((_, uri)) = self
            .params
            .iter()
            .find(|(k, v)| k == "resource" && !is_resource(v))
        {
            return Err(Error::config(format!(
                "resource {uri:?} is not a resource indicator: RFC 8707 asks for an absolute URI \
                 without a fragment"
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
                client_assertion: self.client_assertion,
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
        url: &url::Url,
    ) -> Result<super::key_binding::KeyBinding, Error> {
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
                Some(std::sync::Arc::new(super::key_binding::EndpointDpop::new(
                    key.clone(),
                )))
            }
            None => None,
        };
        Ok(super::key_binding::KeyBinding { assertion, dpop })
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

        /// An RFC 8707 resource indicator: the absolute URI of the API the token is for, sent
        /// as `resource` in every token request of the grant (a code exchange and each refresh
        /// too, so the server never widens or drops it). Repeatable, for a token good at
        /// several APIs. A URI that is not absolute, or has a fragment, makes `build` fail.
        pub fn resource(mut self, uri: impl Into<String>) -> Self {
            self.config.params.push(("resource".into(), uri.into()));
            self
        }

        /// The `audience` parameter many servers take to name the API a token is for, sent in
        /// every token request of the grant. Repeatable.
        pub fn audience(mut self, audience: impl Into<String>) -> Self {
            self.config
                .params
                .push(("audience".into(), audience.into()));
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
        /// [`AuthLayer::revoke`](crate::AuthLayer::revoke). Default: the one discovery found
        /// (`from_metadata`), else none: `revoke` then only forgets.
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

        /// Authenticates the client with a client assertion from the platform instead of a
        /// secret (RFC 7523 §2.2, `client_assertion_type` `jwt-bearer`): a Kubernetes
        /// service-account token ([`TokenFile`](crate::assertion::TokenFile)), a GitHub
        /// Actions OIDC token, or any [`AssertionSource`](crate::assertion::AssertionSource).
        /// Each token request reads a fresh one, retries included; an expired one is an
        /// error, never sent. The platform decides its `iss`, `sub` and `aud`: register the
        /// client at the server with the platform as a trusted issuer.
        pub fn client_assertion(mut self, source: impl crate::assertion::AssertionSource) -> Self {
            self.config.client_assertion = Some(crate::assertion::shared(source));
            self.config.auth = Some(crate::ClientAuth::ClientAssertion);
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

/// Whether `uri` is an RFC 8707 resource indicator (§2): an absolute URI without a fragment.
fn is_resource(uri: &str) -> bool {
    url::Url::parse(uri).is_ok_and(|url| url.fragment().is_none() && !uri.contains('#'))
}
