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

impl ClientCredentials {
    /// One token request, asking for `scope`.
    async fn request(&self, scope: Option<&str>) -> Result<Token, Error> {
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(2 + self.params.len());
        params.push(("grant_type", "client_credentials"));
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.endpoint.request(&params).await
    }
}

impl TokenSource for ClientCredentials {
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

    fn identity(&self) -> Option<String> {
        let mut identity = self.endpoint.identity();
        identity.push_str(" grant_type=client_credentials");
        oauth::push_request_identity(&mut identity, self.scope.as_deref(), &self.params);
        Some(identity)
    }

    async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(current).await
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

    #[cfg(feature = "jose")]
    mod keys {
        use super::*;
        use crate::{ClientAuth, ProviderMetadata, jose::SigningKey};

        fn key() -> SigningKey {
            SigningKey::generate_es256().unwrap().with_key_id("k1")
        }

        #[test]
        fn private_key_jwt_needs_no_secret_and_a_key_to_go_with_it() {
            ClientCredentials::builder("https://idp/token")
                .client_id("svc")
                .private_key_jwt(key())
                .build()
                .unwrap();
            let no_key = ClientCredentials::builder("https://idp/token")
                .client_id("svc")
                .auth(ClientAuth::PrivateKeyJwt)
                .build()
                .unwrap_err();
            assert!(
                no_key.to_string().contains(".private_key_jwt(key)"),
                "{no_key}"
            );
            let other_auth = ClientCredentials::builder("https://idp/token")
                .client_id("svc")
                .private_key_jwt(key())
                .client_secret("s")
                .auth(ClientAuth::Basic)
                .build()
                .unwrap_err();
            assert!(other_auth.to_string().contains("Basic"), "{other_auth}");
        }

        #[test]
        fn debug_shows_key_thumbprints_not_keys_and_the_identity_names_the_dpop_key() {
            let (assertion, dpop) = (key(), SigningKey::generate_ed25519().unwrap());
            let source = ClientCredentials::builder("https://idp/token")
                .client_id("svc")
                .private_key_jwt(assertion.clone())
                .dpop(dpop.clone())
                .build()
                .unwrap();
            let debug = format!("{source:?}");
            assert!(debug.contains(assertion.thumbprint()), "{debug}");
            assert!(debug.contains(dpop.thumbprint()), "{debug}");
            assert!(debug.contains(r#"assertion_audience: Some("https://idp/token")"#));
            let identity = source.identity().unwrap();
            assert!(identity.contains(&format!("dpop_jkt={}", dpop.thumbprint())));
            let other = ClientCredentials::builder("https://idp/token")
                .client_id("svc")
                .private_key_jwt(assertion)
                .dpop(SigningKey::generate_ed25519().unwrap())
                .build()
                .unwrap();
            assert_ne!(other.identity(), source.identity(), "another DPoP key");
        }

        #[test]
        fn discovery_refuses_a_method_or_algorithm_the_server_does_not_offer() {
            let metadata = |methods: &[&str], algs: &[&str], dpop: &[&str]| -> ProviderMetadata {
                serde_json::from_value(serde_json::json!({
                    "issuer": "https://idp.example.com",
                    "token_endpoint": "https://idp.example.com/token",
                    "token_endpoint_auth_methods_supported": methods,
                    "token_endpoint_auth_signing_alg_values_supported": algs,
                    "dpop_signing_alg_values_supported": dpop,
                }))
                .unwrap()
            };
            let build = |metadata: &ProviderMetadata, dpop: Option<SigningKey>| {
                let mut builder = ClientCredentials::from_metadata(metadata)
                    .client_id("svc")
                    .private_key_jwt(key());
                if let Some(dpop) = dpop {
                    builder = builder.dpop(dpop);
                }
                builder.build()
            };
            let ok = build(
                &metadata(&["private_key_jwt"], &["ES256"], &["ES256"]),
                None,
            )
            .unwrap();
            assert!(
                format!("{ok:?}")
                    .contains(r#"assertion_audience: Some("https://idp.example.com")"#)
            );
            let err =
                build(&metadata(&["client_secret_basic"], &["ES256"], &[]), None).unwrap_err();
            assert!(
                err.to_string().contains("does not list private_key_jwt"),
                "{err}"
            );
            let err = build(
                &metadata(&["private_key_jwt"], &["RS256", "PS256"], &[]),
                None,
            )
            .unwrap_err();
            assert!(err.to_string().contains("RS256, PS256, not ES256"), "{err}");
            let err = build(
                &metadata(&["private_key_jwt"], &["ES256"], &["ES256"]),
                Some(SigningKey::generate_ed25519().unwrap()),
            )
            .unwrap_err();
            assert!(err.to_string().contains("DPoP proofs"), "{err}");
        }
    }
}
