//! Where tokens come from.
//!
//! A [`TokenSource`] fetches a fresh [`Token`]; the layer's cache decides *when* to call it and
//! makes sure only one fetch runs at a time. The crate ships these sources:
//!
//! | source | for |
//! |---|---|
//! | [`ClientCredentials`] | RFC 6749 §4.4: a service authenticating as itself |
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

mod client_credentials;
mod from_fn;
mod static_token;

pub use client_credentials::{ClientCredentials, ClientCredentialsBuilder};
pub use from_fn::{FromFn, from_fn};
pub use static_token::StaticToken;

/// Fetches tokens. The layer's cache calls [`fetch`](TokenSource::fetch) when it needs a new token,
/// never more than once at a time per cache.
///
/// A fetch runs in its own Tokio task, so it completes even when the request that started it is
/// dropped; its result goes to every request that waited.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send;
}

impl<T: TokenSource> TokenSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        T::fetch(self)
    }
}

pub(crate) type BoxFetch<'a> = Pin<Box<dyn Future<Output = Result<Token, Error>> + Send + 'a>>;

/// Object-safe form of [`TokenSource`], so the cache and layer need no type parameter.
pub(crate) trait DynTokenSource: Send + Sync + 'static {
    fn fetch_boxed(&self) -> BoxFetch<'_>;
    fn type_name(&self) -> &'static str;
}

impl<T: TokenSource> DynTokenSource for T {
    fn fetch_boxed(&self) -> BoxFetch<'_> {
        Box::pin(self.fetch())
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}
