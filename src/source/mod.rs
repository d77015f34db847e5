//! Where tokens come from.
//!
//! A [`TokenSource`] fetches a fresh [`Token`]; the layer's cache decides *when* to call it and
//! makes sure only one fetch runs at a time. The crate ships these sources:
//!
//! | source | for |
//! |---|---|
//! | [`ClientCredentials`] | RFC 6749 §4.4: a service authenticating as itself |
//! | [`RefreshTokenGrant`] | RFC 6749 §6: renewing with a refresh token, rotation-safe, persisted in a [`TokenStore`](crate::store::TokenStore) |
//! | [`AuthorizationCode`] | RFC 6749 §4.1 + RFC 7636: exchanging a code (with PKCE) once, then a [`RefreshTokenGrant`] |
//! | [`FromFn`] (via [`from_fn`]) | any async closure, such as a cloud SDK's credential provider |
//! | [`StaticToken`] | a fixed token, for tests and long-lived API keys |
//!
//! # Writing a source
//!
//! ```
//! use std::time::Duration;
//! use tower_bearer::{Error, Token, TokenSource};
//!
//! struct FromVault;
//!
//! impl TokenSource for FromVault {
//!     async fn fetch(&self) -> Result<Token, Error> {
//!         // ...ask the vault...
//!         Ok(Token::new("s.abcdef").with_expires_in(Duration::from_secs(300)))
//!     }
//! }
//! ```

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{Error, Token};

#[cfg(feature = "oauth")]
mod authorization_code;
#[cfg(feature = "oauth")]
mod client_credentials;
mod from_fn;
#[cfg(feature = "oauth")]
mod jwt_bearer;
#[cfg(feature = "oauth")]
mod platform;
#[cfg(feature = "oauth")]
mod refresh_token;
mod static_token;
#[cfg(feature = "oauth")]
mod token_exchange;

#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use authorization_code::{AuthorizationCode, AuthorizationCodeBuilder};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use client_credentials::{ClientCredentials, ClientCredentialsBuilder};
pub use from_fn::{FromFn, from_fn};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use jwt_bearer::{JwtBearer, JwtBearerBuilder};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use platform::{AzureManagedIdentity, GcpMetadataToken};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use refresh_token::{RefreshTokenGrant, RefreshTokenGrantBuilder};
pub use static_token::StaticToken;
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use token_exchange::{TokenExchange, TokenExchangeBuilder};

#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use crate::oauth::DEFAULT_REQUEST_TIMEOUT;

/// Fetches tokens. The layer's cache calls [`fetch`](TokenSource::fetch) when it needs a new token,
/// never more than once at a time per cache.
///
/// A fetch runs in its own Tokio task, so it completes even when the request that started it is
/// dropped; its result goes to every request that waited.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send;

    /// Revokes what this source holds (RFC 7009): its refresh token if it has one, and
    /// `current`, the access token in use. Called by [`AuthLayer::revoke`](crate::AuthLayer::revoke).
    /// The default does nothing.
    fn revoke(&self, current: Option<&Token>) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = current;
        std::future::ready(Ok(()))
    }

    /// Whether the cache may call [`fetch`](TokenSource::fetch) again at once, inside the same
    /// fetch, after it failed with `error` (up to
    /// [`fetch_attempts`](crate::AuthLayerBuilder::fetch_attempts) calls, with a short jittered
    /// pause or the endpoint's `Retry-After`, within the fetch timeout). The default retries
    /// [transient](Error::is_transient) errors; a source whose requests must not be repeated
    /// after an unclear failure narrows it, as [`RefreshTokenGrant`] does.
    fn retry_within_fetch(&self, error: &Error) -> bool {
        error.is_transient()
    }

    /// What makes this source's tokens differ from another source's, for a cache that several
    /// processes share (`distributed`, feature `redis`): two sources with the same identity
    /// must get tokens that serve each other's requests, and sources whose tokens must not
    /// cross (two users, two tenants) must have different ones. It is hashed into a Redis key;
    /// it should name no secret all the same. `None`, the default, says the source cannot
    /// tell: a shared cache then refuses it unless its `fleet_key` names what the tokens are
    /// for. [`ClientCredentials`] names its token endpoint, client id, client authentication
    /// and keys, scope and extra parameters; [`RefreshTokenGrant`] the same and its store's
    /// [identity](crate::store::TokenStore::identity), which names the user (`None` over a
    /// store that cannot).
    fn identity(&self) -> Option<String> {
        None
    }

    /// Whether [`fetch_with_scope`](TokenSource::fetch_with_scope) can ask for more scope than
    /// the source is configured with. When it can, the layer answers a 403 whose challenge is
    /// `insufficient_scope` with a `scope` (RFC 6750 §3.1) by fetching a token with that scope
    /// added, and resends the request once. The default is `false`: the 403 goes to the caller.
    /// [`ClientCredentials`], [`TokenExchange`] and [`JwtBearer`] can; a [`RefreshTokenGrant`] cannot (a
    /// refresh may not ask for more than the user granted, RFC 6749 §6).
    fn can_widen_scope(&self) -> bool {
        false
    }

    /// Fetches a new token with `scope` (space-separated scope tokens) added to the scope the
    /// source asks for. Called instead of [`fetch`](TokenSource::fetch) once a scope challenge
    /// widened the layer's scope; only if [`can_widen_scope`](TokenSource::can_widen_scope).
    /// The default fetches as `fetch` does.
    fn fetch_with_scope(&self, scope: &str) -> impl Future<Output = Result<Token, Error>> + Send {
        let _ = scope;
        self.fetch()
    }

    /// The key this source's tokens are bound to with DPoP (RFC 9449; feature `jose`), if any.
    /// For a token whose `token_type` is `DPoP`, the layer sends `Authorization: DPoP <token>`
    /// and a fresh `DPoP` proof signed with this key on every request. The default is `None`;
    /// the grants return the key given to their builder's `.dpop(key)`.
    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        None
    }
}

impl<T: TokenSource> TokenSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        T::fetch(self)
    }

    fn revoke(&self, current: Option<&Token>) -> impl Future<Output = Result<(), Error>> + Send {
        T::revoke(self, current)
    }

    fn retry_within_fetch(&self, error: &Error) -> bool {
        T::retry_within_fetch(self, error)
    }

    fn identity(&self) -> Option<String> {
        T::identity(self)
    }

    fn can_widen_scope(&self) -> bool {
        T::can_widen_scope(self)
    }

    fn fetch_with_scope(&self, scope: &str) -> impl Future<Output = Result<Token, Error>> + Send {
        T::fetch_with_scope(self, scope)
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        T::dpop_key(self)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`TokenSource`], so the cache and layer need no type parameter.
pub(crate) trait DynTokenSource: Send + Sync + 'static {
    fn fetch_boxed(&self) -> BoxFuture<'_, Result<Token, Error>>;
    fn fetch_with_scope_boxed<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, Error>>;
    fn can_widen_scope(&self) -> bool;
    fn revoke_boxed<'a>(&'a self, current: Option<&'a Token>) -> BoxFuture<'a, Result<(), Error>>;
    fn retry_within_fetch(&self, error: &Error) -> bool;
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn identity(&self) -> Option<String>;
    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey>;
    fn type_name(&self) -> &'static str;
}

impl<T: TokenSource> DynTokenSource for T {
    fn fetch_boxed(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(self.fetch())
    }

    fn fetch_with_scope_boxed<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(self.fetch_with_scope(scope))
    }

    fn can_widen_scope(&self) -> bool {
        TokenSource::can_widen_scope(self)
    }

    fn revoke_boxed<'a>(&'a self, current: Option<&'a Token>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.revoke(current))
    }

    fn retry_within_fetch(&self, error: &Error) -> bool {
        TokenSource::retry_within_fetch(self, error)
    }

    fn identity(&self) -> Option<String> {
        TokenSource::identity(self)
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        TokenSource::dpop_key(self)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}
