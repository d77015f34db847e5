//! The authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636).

use std::fmt;

use url::Url;

use crate::{
    Error, Pkce, ProviderMetadata, RefreshTokenGrant,
    oauth::{self, EndpointConfig},
    store::{DynTokenStore, MemoryStore, StoredToken, TokenStore},
    token::PkceVerifier,
};

/// Exchanges an authorization code for tokens, once, and continues as a [`RefreshTokenGrant`]
/// over the same [`TokenStore`].
///
/// Codes are single-use: the exchange is never retried. The tokens it returns are saved in the
/// store before [`exchange`](Self::exchange) returns, so a process that restarts later resumes
/// with [`RefreshTokenGrant::builder`] over the same store, without a new authorization.
///
/// # Example
///
/// ```no_run
/// use tower_bearer::{AuthLayer, AuthorizationCode, ClientAuth, Pkce, store::FileStore};
///
/// # async fn run(code_from_redirect: &str) -> Result<(), tower_bearer::Error> {
/// let flow = AuthorizationCode::builder("https://idp.example.com/oauth2/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .auth(ClientAuth::Post)
///     .redirect_uri("https://my-app.example.com/callback")
///     .scope("read")
///     .store(FileStore::new("tokens.json"))
///     .build()?;
///
/// let pkce = Pkce::new()?;
/// let url = flow.authorize_url("https://idp.example.com/authorize", "opaque-state", Some(&pkce))?;
/// // ... send the user to `url`; the redirect brings back `code` ...
/// let grant = flow.exchange(code_from_redirect, Some(pkce.verifier())).await?;
/// let layer = AuthLayer::new(grant);
/// # let _ = (url, layer); Ok(())
/// # }
/// ```
pub struct AuthorizationCode {
    built: oauth::BuiltEndpoint,
    client_id: String,
    redirect_uri: String,
    store: Box<dyn DynTokenStore>,
}

impl AuthorizationCode {
    /// Starts a builder for the token endpoint at `token_url`.
    pub fn builder(token_url: impl Into<String>) -> AuthorizationCodeBuilder {
        AuthorizationCodeBuilder {
            config: EndpointConfig::new(token_url.into()),
            redirect_uri: None,
            store: None,
        }
    }

    /// Starts a builder from an authorization server's metadata.
    pub fn from_metadata(metadata: &ProviderMetadata) -> AuthorizationCodeBuilder {
        AuthorizationCodeBuilder {
            config: metadata.endpoint_config(),
            redirect_uri: None,
            store: None,
        }
    }

    /// The URL to send the user to: `response_type=code` with the client id, redirect URI,
    /// scope, `state`, the PKCE challenge if given, and with a DPoP key
    /// ([`dpop`](AuthorizationCodeBuilder::dpop)) its thumbprint as `dpop_jkt`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `authorization_endpoint` is not a valid URL.
    pub fn authorize_url(
        &self,
        authorization_endpoint: &str,
        state: &str,
        pkce: Option<&Pkce>,
    ) -> Result<Url, Error> {
        let mut url = Url::parse(authorization_endpoint).map_err(|e| {
            Error::config(format!("authorization endpoint is not a valid URL: {e}"))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri);
            if let Some(scope) = &self.built.scope {
                query.append_pair("scope", scope);
            }
            query.append_pair("state", state);
            if let Some(pkce) = pkce {
                query
                    .append_pair("code_challenge", pkce.challenge())
                    .append_pair("code_challenge_method", pkce.method());
            }
            // Binds the code to the DPoP key (RFC 9449 §10).
            #[cfg(feature = "jose")]
            if let Some(key) = self.built.endpoint.dpop_key() {
                query.append_pair("dpop_jkt", key.thumbprint());
            }
        }
        Ok(url)
    }

    /// Exchanges `code` for tokens (with the PKCE `verifier` if the authorization request
    /// carried a challenge), saves them in the store, and returns the grant that renews them.
    ///
    /// # Errors
    ///
    /// The endpoint's error (an [`OAuthError`](crate::OAuthError), typically `invalid_grant` for
    /// a used or expired code), a transport error, or [`Error::Store`] if the tokens could not
    /// be saved. Nothing is retried: a code works once.
    pub async fn exchange(
        self,
        code: &str,
        verifier: Option<&PkceVerifier>,
    ) -> Result<RefreshTokenGrant, Error> {
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(5 + self.built.params.len());
        params.push(("grant_type", "authorization_code"));
        params.push(("code", code));
        params.push(("redirect_uri", &self.redirect_uri));
        if let Some(scope) = &self.built.scope {
            params.push(("scope", scope));
        }
        if let Some(verifier) = verifier {
            params.push(("code_verifier", verifier.secret()));
        }
        params.extend(
            self.built
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let token = self.built.endpoint.request(&params).await?;
        let stored = StoredToken::from_response(&token, None)
            .with_client(self.built.endpoint.client_fingerprint());
        self.store.save_boxed(&stored).await?;
        Ok(self.into_refresh_grant(Some(stored)))
    }

    /// The refresh-token grant over the same settings and store, without an exchange: for a
    /// process that restarts after an earlier exchange saved its tokens in a persistent store.
    /// The store is read at the first fetch; if it holds nothing, fetches fail with
    /// [`Error::AuthorizationRequired`].
    pub fn resume(self) -> RefreshTokenGrant {
        self.into_refresh_grant(None)
    }

    fn into_refresh_grant(self, stored: Option<StoredToken>) -> RefreshTokenGrant {
        // Refreshes keep the granted scope: RFC 6749 §6 makes `scope` optional there.
        let built = oauth::BuiltEndpoint {
            scope: None,
            ..self.built
        };
        RefreshTokenGrant::from_parts(built, self.store, stored)
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("endpoint", &self.built.endpoint)
            .field("redirect_uri", &self.redirect_uri)
            .field("scope", &self.built.scope)
            .field("store", &self.store.type_name())
            .finish()
    }
}

/// Builds an [`AuthorizationCode`]; see [`AuthorizationCode::builder`].
#[must_use]
pub struct AuthorizationCodeBuilder {
    config: EndpointConfig,
    redirect_uri: Option<String>,
    store: Option<Box<dyn DynTokenStore>>,
}

impl AuthorizationCodeBuilder {
    oauth::client_builder_methods!();

    /// The redirect URI the code was issued for (required).
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// Where the tokens are kept; a new [`MemoryStore`] unless set.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a missing redirect URI, and as for
    /// [`ClientCredentialsBuilder::build`](crate::ClientCredentialsBuilder::build).
    pub fn build(self) -> Result<AuthorizationCode, Error> {
        let redirect_uri = self
            .redirect_uri
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Error::config("authorization_code needs a redirect URI"))?;
        let client_id = self.config.client_id.clone().unwrap_or_default();
        let built = self.config.build(
            "authorization_code",
            &["code", "redirect_uri", "code_verifier", "refresh_token"],
        )?;
        Ok(AuthorizationCode {
            built,
            client_id,
            redirect_uri,
            store: self.store.unwrap_or_else(|| Box::new(MemoryStore::new())),
        })
    }
}

impl fmt::Debug for AuthorizationCodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeBuilder")
            .field("config", &self.config)
            .field("redirect_uri", &self.redirect_uri)
            .field("store", &self.store.as_ref().map(|s| s.type_name()))
            .finish()
    }
}
