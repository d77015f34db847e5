//! The client credentials grant (RFC 6749 §4.4).

use std::fmt;

use crate::{
    ClientAuth, ClientSecret, Error, Token, TokenSource,
    oauth::{self, TokenEndpoint},
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
            token_url: token_url.into(),
            client_id: None,
            client_secret: None,
            scope: None,
            auth: ClientAuth::default(),
            params: Vec::new(),
            http: None,
            allow_http: false,
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

/// Shows parameter names only: a value may be sensitive.
struct ParamNames<'a>(&'a [(String, String)]);

impl fmt::Debug for ParamNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Builds a [`ClientCredentials`] source; see [`ClientCredentials::builder`].
#[must_use]
pub struct ClientCredentialsBuilder {
    token_url: String,
    client_id: Option<String>,
    client_secret: Option<ClientSecret>,
    scope: Option<String>,
    auth: ClientAuth,
    params: Vec<(String, String)>,
    http: Option<reqwest::Client>,
    allow_http: bool,
}

impl ClientCredentialsBuilder {
    /// The client identifier (required).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The client secret (required).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(ClientSecret::new(secret));
        self
    }

    /// The `scope` to ask for, space-separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// How the credentials are sent; [`ClientAuth::Basic`] unless set.
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Adds a form parameter to every token request, such as `audience` or `resource`.
    /// Repeatable; parameters are sent in the order added.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Uses this HTTP client for token requests instead of the default one (which follows no
    /// redirects and gives up connecting after 10 s).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Allows a plain `http` token endpoint on a non-loopback host. Credentials and tokens then
    /// cross the network unencrypted. Loopback addresses (`127.0.0.0/8`, `[::1]`, `localhost`)
    /// work over `http` without this.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// Checks the settings and builds the source.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the URL is malformed or not `https` (see
    /// [`allow_http`](Self::allow_http)), the client id or secret is missing, or a parameter
    /// would override one the grant sets.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        let url = oauth::endpoint_url(&self.token_url, self.allow_http)?;
        let client_id = self
            .client_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::config("client_credentials needs a client id"))?;
        let client_secret = self
            .client_secret
            .ok_or_else(|| Error::config("client_credentials needs a client secret"))?;
        if let Some((name, _)) = self
            .params
            .iter()
            .find(|(k, _)| oauth::RESERVED_PARAMS.contains(&k.as_str()) || k == "scope")
        {
            return Err(Error::config(format!(
                "parameter `{name}` is set by the grant or the builder, not by `.param()`"
            )));
        }
        let http = match self.http {
            Some(http) => http,
            None => TokenEndpoint::default_http_client()?,
        };
        Ok(ClientCredentials {
            endpoint: TokenEndpoint::new(url, client_id, Some(client_secret), self.auth, http),
            scope: self.scope,
            params: self.params,
        })
    }
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .field("auth", &self.auth)
            .field("params", &ParamNames(&self.params))
            .field("allow_http", &self.allow_http)
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
