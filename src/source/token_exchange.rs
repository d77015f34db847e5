//! OAuth 2.0 Token Exchange (RFC 8693): a token for a downstream API, in exchange for a token
//! the caller holds (a user's, for a gateway acting on that user's behalf).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::{
    Error, SubjectToken, Token, TokenSource,
    assertion::{self, Assertion, AssertionSource, DynAssertionSource},
    oauth::{self, EndpointConfig, ParamNames, TokenEndpoint},
};

/// The grant type of a token exchange.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A [`TokenSource`] that exchanges a subject token (and optionally an actor token) for a new
/// token (RFC 8693), once per fetch.
///
/// - **The issued token's type.** A `token_type` of `N_A` says the issued token is not an
///   access token (RFC 8693 §2.2.1): such an answer is an error, unless
///   [`accept_not_applicable`](TokenExchangeBuilder::accept_not_applicable) says to send it
///   anyway. The endpoint's `issued_token_type` is kept on the [`Token`].
/// - **Never past the subject token.** The exchanged token is used no longer than the subject
///   token lives, when its expiry is known: given with
///   [`subject_expires_at`](TokenExchangeBuilder::subject_expires_at), or read from the
///   subject token's `exp` claim when it is a JWT (unverified: it can only shorten the use).
///   Once the subject token has expired, a fetch fails with
///   [`Error::AuthorizationRequired`] and sends nothing.
/// - **Secrets.** The subject and actor tokens are kept as [`SubjectToken`]s (redacted,
///   zeroized), cut out of any server text that reaches an error, and named in the source's
///   [`identity`](TokenSource::identity) (so in a fleet's Redis keys) only by a SHA-256
///   fingerprint.
///
/// With a [`KeyedAuthLayer`](crate::keyed::KeyedAuthLayer) keyed by the incoming credential, a
/// gateway exchanges each user's token once and shares the result among that user's requests.
///
/// ```
/// use tower_bearer::{AuthLayer, TokenExchange};
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let users_token = "eyJhbGciOi...";
/// let source = TokenExchange::builder("https://idp.example.com/oauth2/token")
///     .client_id("gateway")
///     .client_secret("s3cret")
///     .subject_token(users_token, TokenExchange::ACCESS_TOKEN)
///     .audience("https://orders.example.com")
///     .scope("orders:read")
///     .build()?;
/// let layer = AuthLayer::new(source);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: TokenEndpoint,
    scope: Option<String>,
    params: Vec<(String, String)>,
    subject: (Subject, String),
    actor: Option<(Subject, String)>,
    requested_token_type: Option<String>,
    subject_expires_at: Option<SystemTime>,
    accept_not_applicable: bool,
}

/// What is exchanged: a token given once, or a fresh one from the platform for each exchange.
#[derive(Clone)]
enum Subject {
    Token(SubjectToken),
    Platform(Arc<dyn DynAssertionSource>),
}

/// A subject or actor token as one exchange sends it.
enum Read<'a> {
    Given(&'a SubjectToken),
    Fresh(Assertion),
}

impl Read<'_> {
    fn secret(&self) -> &str {
        match self {
            Read::Given(token) => token.secret(),
            Read::Fresh(assertion) => assertion.secret(),
        }
    }
}

impl Subject {
    /// The token to send in one exchange: the one given, or a fresh one from the platform.
    async fn read(&self) -> Result<Read<'_>, Error> {
        match self {
            Subject::Token(token) => Ok(Read::Given(token)),
            Subject::Platform(source) => Ok(Read::Fresh(assertion::fresh(&**source).await?)),
        }
    }

    /// What names it in the source's identity: a fingerprint of a token given once; `None`
    /// for the platform's, which changes at each exchange and names a workload this process
    /// cannot tell from another's (two pods, two service accounts, one token file path).
    fn identity(&self) -> Option<String> {
        match self {
            Subject::Token(token) => Some(fingerprint(token)),
            Subject::Platform(_) => None,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subject::Token(token) if token.secret().is_empty())
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Token(token) => fmt::Debug::fmt(token, f),
            Subject::Platform(source) => write!(f, "Platform({source:?})"),
        }
    }
}

impl TokenExchange {
    /// `urn:ietf:params:oauth:token-type:access_token`
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// `urn:ietf:params:oauth:token-type:refresh_token`
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// `urn:ietf:params:oauth:token-type:id_token`
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// `urn:ietf:params:oauth:token-type:jwt`
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// `urn:ietf:params:oauth:token-type:saml2`
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
    /// `urn:ietf:params:oauth:token-type:saml1`
    pub const SAML1: &str = "urn:ietf:params:oauth:token-type:saml1";

    /// Starts a builder for the token endpoint at `token_url`.
    pub fn builder(token_url: impl Into<String>) -> TokenExchangeBuilder {
        TokenExchangeBuilder {
            config: EndpointConfig::new(token_url.into()),
            subject: None,
            actor: None,
            requested_token_type: None,
            subject_expires_at: None,
            accept_not_applicable: false,
        }
    }

    /// One exchange, asking for `scope`.
    async fn exchange(&self, scope: Option<&str>) -> Result<Token, Error> {
        let subject = self.subject.0.read().await?;
        let expires_at = match &subject {
            Read::Given(_) => self.subject_expires_at,
            Read::Fresh(assertion) => assertion.expires_at().or(self.subject_expires_at),
        };
        let subject_left = subject_left(expires_at)?;
        let actor = match &self.actor {
            Some((actor, actor_type)) => Some((actor.read().await?, actor_type)),
            None => None,
        };
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(8 + self.params.len());
        params.push(("grant_type", GRANT_TYPE));
        params.push(("subject_token", subject.secret()));
        params.push(("subject_token_type", &self.subject.1));
        if let Some((token, token_type)) = &actor {
            params.push(("actor_token", token.secret()));
            params.push(("actor_token_type", token_type));
        }
        if let Some(requested) = &self.requested_token_type {
            params.push(("requested_token_type", requested));
        }
        if let Some(scope) = scope {
            params.push(("scope", scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let token = self.endpoint.request(&params).await?;
        if token.token_type().eq_ignore_ascii_case("N_A") && !self.accept_not_applicable {
            return Err(Error::UnexpectedResponse {
                status: StatusCode::OK,
                reason: "the exchange issued a token that is not an access token (token_type \
                         N_A); TokenExchangeBuilder::accept_not_applicable sends it anyway"
                    .into(),
                excerpt: None,
                retry_after: None,
            });
        }
        Ok(match subject_left {
            Some(left) if token.expires_in().is_none_or(|lifetime| lifetime > left) => {
                token.with_expires_in(left)
            }
            _ => token,
        })
    }
}

/// How long a subject token expiring at `expires_at` has left, if that is known; an error once
/// it passed.
fn subject_left(expires_at: Option<SystemTime>) -> Result<Option<Duration>, Error> {
    let Some(at) = expires_at else {
        return Ok(None);
    };
    match at.duration_since(SystemTime::now()) {
        Ok(left) if !left.is_zero() => Ok(Some(left)),
        _ => Err(Error::AuthorizationRequired(
            "the subject token of the exchange has expired: a new one is needed".into(),
        )),
    }
}

impl TokenSource for TokenExchange {
    async fn fetch(&self) -> Result<Token, Error> {
        self.exchange(self.scope.as_deref()).await
    }

    fn can_widen_scope(&self) -> bool {
        true
    }

    async fn fetch_with_scope(&self, scope: &str) -> Result<Token, Error> {
        let scope = crate::scope::union(self.scope.as_deref().unwrap_or_default(), scope);
        self.exchange(Some(&scope)).await
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        self.endpoint.dpop_key().cloned()
    }

    /// The endpoint, the client, the subject and actor (by fingerprint) and the request's
    /// parameters. `None` for a subject or actor from the platform: a fleet's shared cache then
    /// needs a `fleet_key` naming the workload, so that one workload's token never serves
    /// another's.
    fn identity(&self) -> Option<String> {
        let mut identity = self.endpoint.identity();
        identity.push_str(&format!(
            " grant_type=token-exchange subject={} subject_type={:?}",
            self.subject.0.identity()?,
            self.subject.1
        ));
        if let Some((actor, actor_type)) = &self.actor {
            identity.push_str(&format!(
                " actor={} actor_type={actor_type:?}",
                actor.identity()?
            ));
        }
        if let Some(requested) = &self.requested_token_type {
            identity.push_str(&format!(" requested={requested:?}"));
        }
        oauth::push_request_identity(&mut identity, self.scope.as_deref(), &self.params);
        Some(identity)
    }

    async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(current).await
    }
}

/// A SHA-256 fingerprint of a token, in hex: names it without revealing it.
fn fingerprint(token: &SubjectToken) -> String {
    Sha256::digest(token.secret().as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("subject", &self.subject)
            .field("actor", &self.actor)
            .field("requested_token_type", &self.requested_token_type)
            .field("scope", &self.scope)
            .field("params", &ParamNames(&self.params))
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenExchange`] source; see [`TokenExchange::builder`].
#[must_use]
pub struct TokenExchangeBuilder {
    config: EndpointConfig,
    subject: Option<(Subject, String)>,
    actor: Option<(Subject, String)>,
    requested_token_type: Option<String>,
    subject_expires_at: Option<SystemTime>,
    accept_not_applicable: bool,
}

impl TokenExchangeBuilder {
    oauth::client_builder_methods!();

    /// The token to exchange, and its type ([`TokenExchange::ACCESS_TOKEN`],
    /// [`TokenExchange::JWT`], ...). Required.
    pub fn subject_token(
        mut self,
        token: impl Into<SubjectToken>,
        token_type: impl Into<String>,
    ) -> Self {
        self.subject = Some((Subject::Token(token.into()), token_type.into()));
        self
    }

    /// Exchanges a fresh token from the platform at each exchange (a Kubernetes
    /// service-account token, a GitHub Actions OIDC token; see [`assertion`]), of type
    /// `token_type` (usually [`TokenExchange::JWT`]), instead of one given once. The
    /// exchanged token is not used past the platform token's expiry; an expired one is
    /// [`Error::ExpiredAssertion`] and is not sent.
    pub fn subject_token_from(
        mut self,
        source: impl AssertionSource,
        token_type: impl Into<String>,
    ) -> Self {
        self.subject = Some((
            Subject::Platform(assertion::shared(source)),
            token_type.into(),
        ));
        self
    }

    /// The token of the party acting for the subject (delegation, RFC 8693 §1.1), and its type.
    pub fn actor_token(
        mut self,
        token: impl Into<SubjectToken>,
        token_type: impl Into<String>,
    ) -> Self {
        self.actor = Some((Subject::Token(token.into()), token_type.into()));
        self
    }

    /// The actor token from the platform, fresh at each exchange (the workload acting for the
    /// subject), as [`subject_token_from`](Self::subject_token_from) reads the subject's.
    pub fn actor_token_from(
        mut self,
        source: impl AssertionSource,
        token_type: impl Into<String>,
    ) -> Self {
        self.actor = Some((
            Subject::Platform(assertion::shared(source)),
            token_type.into(),
        ));
        self
    }

    /// The type of token wanted (`requested_token_type`); the server's choice unless set.
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.requested_token_type = Some(token_type.into());
        self
    }

    /// When the subject token expires, if it is not a JWT whose `exp` says so: the exchanged
    /// token is not used past it, and no exchange is asked for after it.
    pub fn subject_expires_at(mut self, at: SystemTime) -> Self {
        self.subject_expires_at = Some(at);
        self
    }

    /// Whether a token the endpoint says is not an access token (`token_type` `N_A`) is sent
    /// anyway, with the layer's scheme. Default: off, and such an answer is an error.
    pub fn accept_not_applicable(mut self, accept: bool) -> Self {
        self.accept_not_applicable = accept;
        self
    }

    /// Checks the settings and builds the source.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] as for [`ClientCredentialsBuilder::build`](crate::ClientCredentialsBuilder::build),
    /// and for a missing or empty subject token or token type, or an empty actor token or type.
    pub fn build(self) -> Result<TokenExchange, Error> {
        let subject = self
            .subject
            .filter(|(subject, token_type)| !token_type.is_empty() && !subject.is_empty())
            .ok_or_else(|| Error::config("a token exchange needs a subject token and its type"))?;
        if self
            .actor
            .as_ref()
            .is_some_and(|(token, token_type)| token.is_empty() || token_type.is_empty())
        {
            return Err(Error::config(
                "an actor token and its type must not be empty",
            ));
        }
        let built = self.config.build(
            "token exchange",
            &[
                "subject_token",
                "subject_token_type",
                "actor_token",
                "actor_token_type",
                "requested_token_type",
            ],
        )?;
        let subject_expires_at = match &subject.0 {
            Subject::Token(token) => self
                .subject_expires_at
                .or_else(|| assertion::jwt_expiry(token.secret())),
            Subject::Platform(_) => self.subject_expires_at,
        };
        Ok(TokenExchange {
            endpoint: built.endpoint,
            scope: built.scope,
            params: built.params,
            subject,
            actor: self.actor,
            requested_token_type: self.requested_token_type,
            subject_expires_at,
            accept_not_applicable: self.accept_not_applicable,
        })
    }
}

impl fmt::Debug for TokenExchangeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchangeBuilder")
            .field("config", &self.config)
            .field("subject", &self.subject)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}
