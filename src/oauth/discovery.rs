//! Authorization server metadata: OpenID Connect discovery and RFC 8414.

use std::fmt;

use serde::Deserialize;
use url::Url;

use super::{
    ClientAuth, EndpointConfig, MAX_RESPONSE_BYTES, TokenEndpoint, endpoint_url, read_capped,
};
use crate::{Error, error::TransportError};

/// What an authorization server publishes about itself.
///
/// [`discover`](Self::discover) reads `{issuer}/.well-known/openid-configuration`, then, if that
/// is not found, the RFC 8414 location `/.well-known/oauth-authorization-server{issuer path}`. The
/// document's `issuer` must equal the issuer asked for (RFC 8414 §3.3), so a document published
/// for another issuer (a mix-up, another tenant's document) is refused. Its endpoints are taken
/// as published, on whatever host the issuer names (providers often serve the token endpoint
/// from another host than the issuer); they must be `https`, or `http` to a loopback address
/// unless `allow_http` is set.
///
/// The grant builders take it with `from_metadata`: the token and revocation endpoints, and the
/// client authentication method from `token_endpoint_auth_methods_supported` unless the builder
/// sets one (`client_secret_basic` first, as RFC 8414 makes it the default, then
/// `client_secret_post`). Nothing ever probes a token endpoint with two methods. With a key
/// (`.private_key_jwt(key)`, feature `jose`) the client authenticates with `private_key_jwt`:
/// the server must list it (when it lists methods) and the key's algorithm among
/// `token_endpoint_auth_signing_alg_values_supported`, and the assertions' `aud` is the issuer.
/// A DPoP key's algorithm must be among `dpop_signing_alg_values_supported`, when listed.
///
/// ```no_run
/// use tower_bearer::{AuthLayer, ClientCredentials, ProviderMetadata};
///
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let metadata = ProviderMetadata::discover("https://idp.example.com/realms/main").await?;
/// let source = ClientCredentials::from_metadata(&metadata)
///     .client_id("my-client")
///     .client_secret("s3cret")
///     .build()?;
/// let layer = AuthLayer::new(source);
/// # let _ = layer; Ok(())
/// # }
/// ```
#[derive(Clone, Deserialize)]
pub struct ProviderMetadata {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    revocation_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    grant_types_supported: Option<Vec<String>>,
    #[serde(default)]
    scopes_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    dpop_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(skip)]
    allow_http: bool,
}

impl ProviderMetadata {
    /// Fetches the metadata of `issuer` with a default HTTP client. Each request times out
    /// after [`DEFAULT_REQUEST_TIMEOUT`](crate::source::DEFAULT_REQUEST_TIMEOUT).
    ///
    /// # Errors
    ///
    /// [`Error::Discovery`] if no document is found, it is malformed, or its `issuer` differs;
    /// [`Error::Config`] for an unusable issuer URL; [`Error::Transport`] for network failures.
    pub async fn discover(issuer: &str) -> Result<Self, Error> {
        Self::discover_with(issuer, &TokenEndpoint::default_http_client()?, false).await
    }

    /// Fetches the metadata of `issuer` with `http`; `allow_http` permits plain `http` to
    /// non-loopback hosts, for the issuer and the endpoints it names. Each request times out
    /// after [`DEFAULT_REQUEST_TIMEOUT`](crate::source::DEFAULT_REQUEST_TIMEOUT), whatever
    /// `http`'s own settings.
    pub async fn discover_with(
        issuer: &str,
        http: &reqwest::Client,
        allow_http: bool,
    ) -> Result<Self, Error> {
        let issuer_url = endpoint_url(issuer, allow_http)?;
        for location in well_known_locations(&issuer_url) {
            let response = http
                .get(location.clone())
                .header(http::header::ACCEPT, "application/json")
                .timeout(super::DEFAULT_REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| Error::Transport(TransportError::new(e)))?;
            let status = response.status();
            if status == http::StatusCode::NOT_FOUND {
                continue;
            }
            let body = read_capped(response, MAX_RESPONSE_BYTES).await?;
            if !status.is_success() {
                return Err(Error::Discovery(
                    format!("{location} answered HTTP {status}").into(),
                ));
            }
            return ProviderMetadata::from_document(&location, &body, issuer, allow_http);
        }
        Err(Error::Discovery(
            format!("no metadata document found for issuer {issuer}").into(),
        ))
    }

    /// The metadata in `body`, the document found at `location` for `issuer`: an error unless
    /// it is a JSON object with the members RFC 8414 requires, names `issuer`, and has a token
    /// endpoint this crate may send credentials to. The server's text in an error is cut short
    /// and stripped of control characters.
    fn from_document(
        location: &Url,
        body: &[u8],
        issuer: &str,
        allow_http: bool,
    ) -> Result<Self, Error> {
        let shown = |text: &str| crate::scrub::Carried::default().scrub(text);
        let mut metadata: ProviderMetadata = serde_json::from_slice(body).map_err(|e| {
            Error::Discovery(
                format!(
                    "{location} is not authorization server metadata: {}",
                    shown(&e.to_string())
                )
                .into(),
            )
        })?;
        if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(Error::Discovery(
                format!(
                    "{location} names issuer {:?}, not {issuer:?}",
                    shown(&metadata.issuer)
                )
                .into(),
            ));
        }
        endpoint_url(&metadata.token_endpoint, allow_http)?;
        metadata.allow_http = allow_http;
        Ok(metadata)
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The authorization endpoint, if published.
    pub fn authorization_endpoint(&self) -> Option<&str> {
        self.authorization_endpoint.as_deref()
    }

    /// The RFC 7009 revocation endpoint, if published.
    pub fn revocation_endpoint(&self) -> Option<&str> {
        self.revocation_endpoint.as_deref()
    }

    /// The published grant types, if any.
    pub fn grant_types_supported(&self) -> Option<&[String]> {
        self.grant_types_supported.as_deref()
    }

    /// The published scopes, if any.
    pub fn scopes_supported(&self) -> Option<&[String]> {
        self.scopes_supported.as_deref()
    }

    /// The algorithms the token endpoint accepts for client assertions
    /// (`token_endpoint_auth_signing_alg_values_supported`), if published.
    pub fn token_endpoint_auth_signing_alg_values_supported(&self) -> Option<&[String]> {
        self.token_endpoint_auth_signing_alg_values_supported
            .as_deref()
    }

    /// The algorithms the server accepts for DPoP proofs (`dpop_signing_alg_values_supported`,
    /// RFC 9449 §5.1), if published.
    pub fn dpop_signing_alg_values_supported(&self) -> Option<&[String]> {
        self.dpop_signing_alg_values_supported.as_deref()
    }

    /// The client authentication to use: `client_secret_basic` if supported (or if the server
    /// lists nothing, the RFC 8414 default), else `client_secret_post`. `None` if the server
    /// supports neither.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        let Some(methods) = &self.token_endpoint_auth_methods_supported else {
            return Some(ClientAuth::Basic);
        };
        let has = |m: &str| methods.iter().any(|x| x == m);
        if has("client_secret_basic") {
            Some(ClientAuth::Basic)
        } else if has("client_secret_post") {
            Some(ClientAuth::Post)
        } else {
            None
        }
    }

    pub(crate) fn endpoint_config(&self) -> EndpointConfig {
        let mut config = EndpointConfig::new(self.token_endpoint.clone());
        config.discovered_auth = self.client_auth();
        config.revocation_url = self.revocation_endpoint.clone();
        config.allow_http = self.allow_http;
        config.discovered = Some(super::Discovered {
            issuer: self.issuer.clone(),
            auth_methods: self.token_endpoint_auth_methods_supported.clone(),
            assertion_algorithms: self
                .token_endpoint_auth_signing_alg_values_supported
                .clone(),
            dpop_algorithms: self.dpop_signing_alg_values_supported.clone(),
        });
        config
    }
}

/// Where the metadata of `issuer` may be: the OpenID Connect location, then RFC 8414's.
fn well_known_locations(issuer: &Url) -> [Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    oidc.set_query(None);
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    rfc8414.set_query(None);
    [oidc, rfc8414]
}

impl fmt::Debug for ProviderMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderMetadata")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field("authorization_endpoint", &self.authorization_endpoint)
            .field("revocation_endpoint", &self.revocation_endpoint)
            .field(
                "token_endpoint_auth_methods_supported",
                &self.token_endpoint_auth_methods_supported,
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_locations_follow_oidc_and_rfc8414() {
        let [oidc, rfc] = well_known_locations(&Url::parse("https://idp.example.com/o/").unwrap());
        assert_eq!(
            oidc.as_str(),
            "https://idp.example.com/o/.well-known/openid-configuration"
        );
        assert_eq!(
            rfc.as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server/o"
        );
        let [oidc, rfc] = well_known_locations(&Url::parse("https://idp.example.com").unwrap());
        assert_eq!(
            oidc.as_str(),
            "https://idp.example.com/.well-known/openid-configuration"
        );
        assert_eq!(
            rfc.as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server"
        );
    }

    fn metadata(methods: Option<&[&str]>) -> ProviderMetadata {
        let mut json = serde_json::json!({"issuer": "https://i", "token_endpoint": "https://i/t"});
        if let Some(m) = methods {
            json["token_endpoint_auth_methods_supported"] = serde_json::json!(m);
        }
        serde_json::from_value(json).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Arbitrary bytes never panic: a document or a typed error, whose text is bounded.
        #[test]
        fn arbitrary_documents_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2_048),
        ) {
            let location = Url::parse("https://idp.test/.well-known/openid-configuration").unwrap();
            if let Err(err) = ProviderMetadata::from_document(&location, &body, "https://idp.test", false) {
                proptest::prop_assert!(err.to_string().len() < 2_048);
            }
        }

        /// Documents of the right shape with any member values: accepted only for the issuer
        /// asked for, with a token endpoint credentials may go to.
        #[test]
        fn documents_with_any_values_are_checked(
            issuer in "\\PC{0,40}",
            token_endpoint in "\\PC{0,40}",
            methods in proptest::collection::vec("\\PC{0,20}", 0..4),
            extra in proptest::option::of(proptest::num::f64::ANY),
        ) {
            let body = serde_json::json!({
                "issuer": issuer,
                "token_endpoint": token_endpoint,
                "token_endpoint_auth_methods_supported": methods,
                "extra": extra,
            });
            let location = Url::parse("https://idp.test/.well-known/openid-configuration").unwrap();
            let parsed = ProviderMetadata::from_document(
                &location,
                body.to_string().as_bytes(),
                "https://idp.test",
                false,
            );
            if let Ok(metadata) = parsed {
                proptest::prop_assert_eq!(metadata.issuer.trim_end_matches('/'), "https://idp.test");
                proptest::prop_assert!(endpoint_url(metadata.token_endpoint(), false).is_ok());
            }
        }
    }

    #[test]
    fn client_auth_prefers_basic_then_post() {
        assert_eq!(metadata(None).client_auth(), Some(ClientAuth::Basic));
        assert_eq!(
            metadata(Some(&["client_secret_post", "client_secret_basic"])).client_auth(),
            Some(ClientAuth::Basic)
        );
        assert_eq!(
            metadata(Some(&["private_key_jwt", "client_secret_post"])).client_auth(),
            Some(ClientAuth::Post)
        );
        assert_eq!(metadata(Some(&["private_key_jwt"])).client_auth(), None);
    }
}
