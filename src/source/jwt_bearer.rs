//! The JWT bearer grant (RFC 7523 §2.1): a token for an assertion from the platform.

use std::{fmt, sync::Arc, time::SystemTime};

use crate::{
    ClientAuth, Error, Token, TokenSource,
    assertion::{self, AssertionSource, DynAssertionSource},
    oauth::{self, EndpointConfig, ParamNames, TokenEndpoint},
};

/// `grant_type` of the JWT bearer grant.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A [`TokenSource`] for the JWT bearer grant (RFC 7523 §2.1): each token request sends a
/// fresh assertion from the platform as `assertion` (a Kubernetes service-account token, a
/// GitHub Actions OIDC token; see [`assertion`](crate::assertion)), and the server issues a
/// token for the identity the assertion names. An expired assertion is never sent
/// ([`Error::ExpiredAssertion`]), and every retry within a fetch reads a new one, for servers
/// that take each assertion once.
///
/// The client authenticates as well when the server asks it to (a secret, a key, or another
/// assertion, set on the builder as for any grant); without a secret it sends its
/// `client_id` alone ([`ClientAuth::None`]).
///
/// # Example
///
/// ```
/// use tower_bearer::{AuthLayer, JwtBearer, assertion::TokenFile};
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let source = JwtBearer::builder(
///     "https://login.example.com/oauth2/token",
///     TokenFile::new("/var/run/secrets/tokens/oauth-token"),
/// )
/// .client_id("orders-service")
/// .scope("orders.read")
/// .build()?;
/// let layer = AuthLayer::new(source);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct JwtBearer {
    endpoint: TokenEndpoint,
    assertion: Arc<dyn DynAssertionSource>,
    scope: Option<String>,
    params: Vec<(String, String)>,
    bound: bool,
}

impl JwtBearer {
    /// Starts a builder for the token endpoint at `token_url`, with assertions from `source`.
    pub fn builder(token_url: impl Into<String>, source: impl AssertionSource) -> JwtBearerBuilder {
        JwtBearerBuilder {
            config: EndpointConfig::new(token_url.into()),
            assertion: assertion::shared(source),
            bound: false,
        }
    }

    /// One token request, asking for `scope`.
    async fn request(&self, scope: Option<&str>) -> Result<Token, Error> {
        let assertion = assertion::fresh(&*self.assertion).await?;
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(3 + self.params.len());
        params.push(("grant_type", JWT_BEARER));
        params.push(("assertion", assertion.secret()));
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let token = self.endpoint.request(&params).await?;
        let assertion_left = assertion
            .expires_at()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        Ok(match assertion_left {
            Some(left) if self.bound && token.expires_in().is_none_or(|life| life > left) => {
                token.with_expires_in(left)
            }
            _ => token,
        })
    }
}

impl TokenSource for JwtBearer {
    async fn fetch(&self) -> Result<Token, Error> {
        self.request(self.scope.as_deref()).await
    }

    fn can_widen_scope(&self) -> bool {
        true
    }

    async fn fetch_with_scope(&self, scope: &str) -> Result<Token, Error> {
        let scope = crate::scope::union(self.scope.as_deref().unwrap_or_default(), scope);
        self.request(Some(&scope)).await
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// `None`: the token is issued to the identity the assertion names (a workload, a service
    /// account), which changes with every request and which this process cannot tell from
    /// another's (two pods with different service accounts read the same token file path). A
    /// fleet's shared cache then needs a `fleet_key` naming the workload, so that one
    /// workload's token never serves another's.
    fn identity(&self) -> Option<String> {
        None
    }

    async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(current).await
    }
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearer")
            .field("endpoint", &self.endpoint)
            .field("assertion", &self.assertion)
            .field("scope", &self.scope)
            .field("params", &ParamNames(&self.params))
            .finish()
    }
}

/// Builds a [`JwtBearer`] source; see [`JwtBearer::builder`].
#[must_use]
pub struct JwtBearerBuilder {
    config: EndpointConfig,
    assertion: Arc<dyn DynAssertionSource>,
    bound: bool,
}

impl JwtBearerBuilder {
    oauth::client_builder_methods!();

    /// Whether the token is bound to the assertion it was bought with, as the server
    /// documents (its token ends when the assertion does): the layer then never uses it past
    /// the assertion's expiry, whatever `expires_in` says. Default: off.
    pub fn bound_to_assertion(mut self, bound: bool) -> Self {
        self.bound = bound;
        self
    }

    /// Checks the settings and builds the source.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is malformed or not `https` (see
    /// [`allow_http`](Self::allow_http)), the client id is missing, or a parameter would
    /// override one the grant sets.
    pub fn build(mut self) -> Result<JwtBearer, Error> {
        if self.config.auth.is_none() && self.config.client_secret.is_none() {
            self.config.auth = Some(ClientAuth::None);
        }
        let built = self.config.build("jwt-bearer", &["assertion"])?;
        Ok(JwtBearer {
            endpoint: built.endpoint,
            assertion: self.assertion,
            scope: built.scope,
            params: built.params,
            bound: self.bound,
        })
    }
}

impl fmt::Debug for JwtBearerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
