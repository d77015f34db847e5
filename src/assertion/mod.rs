//! Credentials from the platform: an [`AssertionSource`] yields a fresh signed JWT (an
//! *assertion*) from what the platform the process runs on hands it, so that the process
//! holds no client secret.
//!
//! Built in:
//!
//! - [`TokenFile`]: a file the platform keeps current, read again for every token request
//!   (a Kubernetes projected service-account token, `AZURE_FEDERATED_TOKEN_FILE`,
//!   `AWS_WEB_IDENTITY_TOKEN_FILE`); kubelet's atomic swap of the file is followed;
//! - [`GithubActions`]: the OIDC token of a GitHub Actions job, for an audience;
//! - [`GcpIdentity`]: an identity token of a Google Cloud workload from its metadata server,
//!   for an audience;
//! - [`from_fn`]: an async closure, for anything else.
//!
//! An assertion is used in a token request by
//! [`client_assertion`](crate::ClientCredentialsBuilder::client_assertion) (client
//! authentication, RFC 7523 §2.2, on every grant's builder), by the
//! [`JwtBearer`](crate::JwtBearer) grant (RFC 7523 §2.1), or as the subject of a
//! [token exchange](crate::TokenExchangeBuilder::subject_token_from). Every token request reads a fresh
//! one, retries within a fetch included; one that has expired is an error
//! ([`Error::ExpiredAssertion`]) and is never sent. The token the request brings is cached,
//! refreshed ahead and bound by DPoP as any other, and shared by a fleet: with a client
//! assertion as the client's (whose identity is its client id), and with the JWT bearer grant
//! or a platform subject under a `fleet_key` naming the workload, as the token is then the
//! workload's, and this process cannot tell its workload from another's.
//!
//! An assertion is a credential: it is held like the client secret, redacted from `Debug`,
//! errors and logs, and cut from what a server sends back.
//!
//! # Example
//!
//! A client authenticated by its Kubernetes service-account token, read from the file kubelet
//! keeps current:
//!
//! ```no_run
//! use tower_bearer::{AuthLayer, ClientCredentials, assertion::TokenFile};
//!
//! # fn main() -> Result<(), tower_bearer::Error> {
//! let source = ClientCredentials::builder("https://login.example.com/oauth2/token")
//!     .client_id("orders-service")
//!     .client_assertion(TokenFile::new("/var/run/secrets/tokens/oauth-token"))
//!     .build()?;
//! let layer = AuthLayer::new(source);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

mod file;
mod jwt;
mod platform;

use std::{fmt, future::Future, pin::Pin, time::SystemTime};

use secrecy::{ExposeSecret, SecretString};

pub use file::TokenFile;
pub(crate) use jwt::expiry as jwt_expiry;
pub use platform::{GcpIdentity, GithubActions};
pub(crate) use platform::{MAX_ANSWER, PLATFORM_TIMEOUT, gcp_metadata_host, local_client};

use crate::Error;

/// A signed JWT from the platform, and when it expires.
#[derive(Clone)]
pub struct Assertion {
    jwt: SecretString,
    expires_at: Option<SystemTime>,
}

impl Assertion {
    /// The assertion `jwt`. Its expiry is read from its `exp` claim when it is a JWT with one
    /// (the signature is not checked: the server does that; the expiry only keeps an expired
    /// assertion from being sent).
    pub fn new(jwt: impl Into<String>) -> Assertion {
        let jwt = SecretString::from(jwt.into());
        let expires_at = jwt::expiry(jwt.expose_secret());
        Assertion { jwt, expires_at }
    }

    /// Sets the expiry, for an assertion that says none itself.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Assertion {
        self.expires_at = Some(at);
        self
    }

    /// The JWT. Keep it out of logs.
    pub fn secret(&self) -> &str {
        self.jwt.expose_secret()
    }

    /// When it expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The assertion, if it may be sent at `now`: not empty, and not expired.
    ///
    /// # Errors
    ///
    /// [`Error::ExpiredAssertion`] past its expiry; [`Error::Assertion`] for an empty one.
    pub(crate) fn fresh_at(self, now: SystemTime) -> Result<Assertion, Error> {
        if self.secret().trim().is_empty() {
            return Err(Error::Assertion("the assertion is empty".into()));
        }
        match self.expires_at {
            Some(at) if at <= now => Err(Error::ExpiredAssertion {
                ago: now.duration_since(at).unwrap_or_default(),
            }),
            _ => Ok(self),
        }
    }
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assertion")
            .field("jwt", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Yields assertions: a fresh one for every token request.
pub trait AssertionSource: Send + Sync + 'static {
    /// An assertion to send now. Called once per token request, retries included; an
    /// error fails that request as a [transient](Error::is_transient) one would.
    fn assertion(&self) -> impl Future<Output = Result<Assertion, Error>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`AssertionSource`] behind a pointer.
pub(crate) trait DynAssertionSource: Send + Sync + fmt::Debug {
    fn assertion(&self) -> BoxFuture<'_, Result<Assertion, Error>>;
}

/// A source, and its `Debug` (a source's type name: nothing it holds).
struct Named<S>(S);

impl<S> fmt::Debug for Named<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<S>())
    }
}

impl<S: AssertionSource> DynAssertionSource for Named<S> {
    fn assertion(&self) -> BoxFuture<'_, Result<Assertion, Error>> {
        Box::pin(self.0.assertion())
    }
}

/// `source` behind a pointer, for a token endpoint to hold.
pub(crate) fn shared(source: impl AssertionSource) -> std::sync::Arc<dyn DynAssertionSource> {
    std::sync::Arc::new(Named(source))
}

/// A fresh assertion from `source`, checked: never an expired or empty one.
pub(crate) async fn fresh(source: &dyn DynAssertionSource) -> Result<Assertion, Error> {
    source.assertion().await?.fresh_at(SystemTime::now())
}

/// An [`AssertionSource`] made from an async closure.
///
/// ```
/// use tower_bearer::assertion::{Assertion, from_fn};
///
/// let source = from_fn(|| async { Ok(Assertion::new(std::env::var("MY_PLATFORM_JWT").unwrap_or_default())) });
/// # let _ = source;
/// ```
pub fn from_fn<F, Fut>(f: F) -> FromFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Assertion, Error>> + Send,
{
    FromFn { f }
}

/// An [`AssertionSource`] that calls a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F> {
    f: F,
}

impl<F, Fut> AssertionSource for FromFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Assertion, Error>> + Send,
{
    fn assertion(&self) -> impl Future<Output = Result<Assertion, Error>> + Send {
        (self.f)()
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
