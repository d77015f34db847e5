//! The client credentials grant (RFC 6749 §4.4).

use std::fmt;

use crate::{
    Error, ProviderMetadata, Token, TokenSource,
    oauth::{self, EndpointConfig, ParamNames, TokenEndpoint},
};

/// A [`TokenSource`] for the client credentials grant: the client authenticates as itself.
///
/// # Example
///
/// ```
/// use tower_bearer::{AuthLayer, ClientAuth, ClientCredentials};
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let source = ClientCredentials::builder("https://idp.example.com/oauth2/token")
///     .client_id("my-client")
///     .client_secret("s3cret")
///     .scope("read write")
///     .auth(ClientAuth::Basic)
///     .param("audience", "https://api.example.com")
///     .build()?;
/// let layer = AuthLayer::new(source);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    scope: Option<String>,
    params: Vec<(String, String)>,
}

impl ClientCredentials {
    /// Starts a builder for the token endpoint at `token_url`.
    pub fn builder(token_url: impl Into<String>) -> ClientCredentialsBuilder {
        ClientCredentialsBuilder {
            config: EndpointConfig::new(token_url.into()),
        }
    }

    /// Starts a builder from an authorization server's metadata (see
    /// [`ProviderMetadata::discover`]): its token and revocation endpoints, and the client
    /// authentication it supports unless [`auth`](ClientCredentialsBuilder::auth) is set.
    pub fn from_metadata(metadata: &ProviderMetadata) -> ClientCredentialsBuilder {
        ClientCredentialsBuilder {
            config: metadata.endpoint_config(),
        }
    }
}

impl TokenSource for ClientCredentials {
    async fn fetch(&self) -> Result<Token, Error> {
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(2 + self.params.len());
        params.push(("grant_type", "client_credentials"));
        if let Some(scope) = &self.scope {
            params.push(("scope", scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.endpoint.request(&params).await
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        self.endpoint.dpop_key().cloned()
    }

    fn identity(&self) -> Option<String> {
        let mut identity = self.endpoint.identity();
        identity.push_str(" grant_type=client_credentials");
        if let Some(scope) = &self.scope {
            identity.push_str(&format!(" scope={scope:?}"));
        }
        for (name, value) in &self.params {
            identity.push_str(&format!(" {name:?}={value:?}"));
        }
        Some(identity)
    }

    async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        match current {
            Some(token) if self.endpoint.can_revoke() => {
                self.endpoint
                    .revoke(token.access_token().secret(), "access_token")
                    .await
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("endpoint", &self.endpoint)
            .field("scope", &self.scope)
            .field("params", &ParamNames(&self.params))
            .finish()
    }
}

/// Builds a [`ClientCredentials`] source; see [`ClientCredentials::builder`].
#[must_use]
pub struct ClientCredentialsBuilder {
    config: EndpointConfig,
}

impl ClientCredentialsBuilder {
    oauth::client_builder_methods!();

    /// Checks the settings and builds the source.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is malformed or not `https` (see
    /// [`allow_http`](Self::allow_http)), the client id or secret is missing, or a parameter
    /// would override one the grant sets.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        let built = self.config.build("client_credentials", &[])?;
        Ok(ClientCredentials {
            endpoint: built.endpoint,
            scope: built.scope,
            params: built.params,
        })
    }
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> ClientCredentialsBuilder {
        ClientCredentials::builder("https://idp.example.com/token")
            .client_id("id")
            .client_secret("sec-SECRET")
    }

    #[test]
    fn builds_with_required_fields() {
        let cc = builder()
            .scope("a b")
            .param("audience", "x")
            .build()
            .unwrap();
        let dbg = format!("{cc:?}");
        assert!(dbg.contains("audience") && !dbg.contains("SECRET"), "{dbg}");
    }

    #[test]
    fn missing_fields_are_config_errors() {
        let no_id = ClientCredentials::builder("https://idp/token")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert!(no_id.to_string().contains("client id"), "{no_id}");
        let no_secret = ClientCredentials::builder("https://idp/token")
            .client_id("i")
            .build()
            .unwrap_err();
        assert!(
            no_secret.to_string().contains("client secret"),
            "{no_secret}"
        );
        let bad_url = ClientCredentials::builder("::")
            .client_id("i")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert!(matches!(bad_url, Error::Config(_)));
    }

    #[test]
    fn reserved_params_are_refused() {
        for name in ["grant_type", "client_secret", "client_id", "scope"] {
            let err = builder().param(name, "x").build().unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn builder_debug_hides_secret() {
        let dbg = format!("{:?}", builder().param("audience", "v"));
        assert!(!dbg.contains("SECRET"), "{dbg}");
    }
}
