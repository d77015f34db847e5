//! Where refresh tokens (and the access tokens they bought) are kept between fetches and
//! across restarts.
//!
//! A grant that rotates refresh tokens ([`RefreshTokenGrant`](crate::RefreshTokenGrant)) saves
//! the new refresh token **before** it hands out the access token it bought, so a crash after
//! the save leaves the store holding the refresh token the server issued last. The server rotates
//! on receipt, before the client can save: a crash (or a lost answer) between the two leaves the
//! store with the previous refresh token, which the next process sends once more; a server with a
//! rotation grace period accepts it, a strict one ends the grant
//! ([`Error::AuthorizationRequired`]), as the grant's documentation details. A store that fails
//! to save is an error the caller sees ([`Error::Store`]), never a silent loss: the grant keeps
//! the new refresh token in memory and sends none until a save succeeds.
//!
//! | store | keeps tokens |
//! |---|---|
//! | [`MemoryStore`] | in memory, for one process (and tests) |
//! | [`FileStore`] | in a JSON file, written atomically with mode 0600; processes that share the file refresh one at a time |
//!
//! Implement [`TokenStore`] to keep them elsewhere (a database, a secrets manager).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_bearer::Error> {
//! use tower_bearer::store::{FileStore, StoredToken, TokenStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = FileStore::new(dir.path().join("tokens.json"));
//! assert!(store.load().await?.is_none());
//! store.save(&StoredToken::new().with_refresh_token("rt-1")).await?;
//! let loaded = store.load().await?.unwrap();
//! assert_eq!(loaded.refresh_token().unwrap().secret(), "rt-1");
//! # Ok(())
//! # }
//! ```

use std::{fmt, future::Future, pin::Pin, time::SystemTime};

use crate::{AccessToken, Error, RefreshToken, Token};

mod file;
mod memory;

pub use file::{FileStore, LOCK_WAIT};
pub use memory::MemoryStore;

/// Persists the token state of a grant.
pub trait TokenStore: Send + Sync + 'static {
    /// The saved state, or `None` if nothing was saved yet.
    fn load(&self) -> impl Future<Output = Result<Option<StoredToken>, Error>> + Send;

    /// Replaces the saved state. Must be durable when the future completes.
    fn save(&self, token: &StoredToken) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes the saved state (after revocation or logout).
    fn clear(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Holds off the other processes that share this store while a grant refreshes: the grant
    /// takes the lock, reads the store again (another process may have refreshed), refreshes
    /// only if it must, saves, and drops the lock. `None` says the store belongs to one
    /// process, and the grant keeps what it read in memory. That is the default.
    ///
    /// A store that several processes share returns `Some`, and must wait for the lock with a
    /// deadline of its own (an error past it, never a hang); the lock must go when its holder
    /// dies. [`FileStore`] takes an advisory lock on a file beside its own.
    fn lock(&self) -> impl Future<Output = Result<Option<StoreLock>, Error>> + Send {
        std::future::ready(Ok(None))
    }

    /// What tells this store's state apart from another store's wherever the processes of a
    /// fleet run: two stores with the same identity hold the same grant (the same user's
    /// tokens). A [`RefreshTokenGrant`](crate::RefreshTokenGrant) over a store with an identity
    /// can share its access tokens through a fleet's Redis
    /// ([`distributed`](crate::AuthLayerBuilder::distributed)) under a key made from it;
    /// over one without, the fleet needs a key named by hand. It is hashed into that key and
    /// should name no secret all the same.
    ///
    /// `None`, the default, says the store cannot tell: [`MemoryStore`] (one process's memory)
    /// and [`FileStore`] (the same path may hold another user's file on another machine).
    /// [`RedisStore`](crate::distributed::RedisStore) names its key.
    fn identity(&self) -> Option<String> {
        None
    }
}

/// A lock on a [`TokenStore`] shared by several processes, held while a grant refreshes; the
/// next process gets in when it is dropped. Made by [`TokenStore::lock`].
///
/// A lock that can be lost while held (a lease that expires when its holder stalls) is made
/// with [`with_confirm`](Self::with_confirm): the grant then confirms it immediately before it
/// sends a refresh token and before it saves, and gives the attempt up, sending or saving
/// nothing, when it cannot. That is the fence that keeps a stalled holder and the process that
/// took the lock after it from both sending one refresh token.
pub struct StoreLock {
    _held: Box<dyn Send + Sync>,
    confirm: Option<Confirm>,
}

type Confirm = Box<dyn Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

impl StoreLock {
    /// A lock that holds `held` (an open locked file, a database transaction, a lease) until it
    /// is dropped, and cannot be lost meanwhile.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        StoreLock {
            _held: Box::new(held),
            confirm: None,
        }
    }

    /// A lock that holds `held` until it is dropped, and may be lost meanwhile: `confirm`
    /// answers `Ok` only if this process still holds it (and may extend it). Its error (an
    /// [`Error::Store`] saying the lock was lost) is what the grant's caller gets.
    pub fn with_confirm<F, Fut>(held: impl Send + Sync + 'static, confirm: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        StoreLock {
            _held: Box::new(held),
            confirm: Some(Box::new(move || Box::pin(confirm()))),
        }
    }

    /// `Ok` if this process still holds the lock: always, for a lock made with
    /// [`new`](Self::new).
    pub async fn confirm(&self) -> Result<(), Error> {
        match &self.confirm {
            Some(confirm) => confirm().await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLock")
            .field("fenced", &self.confirm.is_some())
            .finish_non_exhaustive()
    }
}

/// What a [`TokenStore`] keeps: the refresh token and the last access token with its expiry,
/// and which client they belong to.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredToken {
    refresh_token: Option<RefreshToken>,
    access_token: Option<AccessToken>,
    expires_at: Option<SystemTime>,
    scope: Option<String>,
    token_type: Option<String>,
    client: Option<String>,
}

impl StoredToken {
    /// An empty state.
    pub fn new() -> Self {
        StoredToken::default()
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, token: impl Into<RefreshToken>) -> Self {
        self.refresh_token = Some(token.into());
        self
    }

    /// Sets the access token and when it expires (wall-clock time).
    pub fn with_access_token(
        mut self,
        token: impl Into<AccessToken>,
        expires_at: Option<SystemTime>,
    ) -> Self {
        self.access_token = Some(token.into());
        self.expires_at = expires_at;
        self
    }

    /// Sets the granted scope.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets the token type.
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = Some(token_type.into());
        self
    }

    /// Sets which client the tokens belong to: what [`client`](Self::client) returned when
    /// the state was saved.
    pub fn with_client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// The refresh token.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The last access token.
    pub fn access_token(&self) -> Option<&AccessToken> {
        self.access_token.as_ref()
    }

    /// When the last access token expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The granted scope.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The token type.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// Which client the tokens belong to: a fingerprint of the token endpoint and client id of
    /// the grant that saved them (no secret). A grant refuses a state another client saved,
    /// sending nothing, so a store shared by mistake never sends one client's refresh token
    /// with another's credentials (or to another server). A store should keep it; one that
    /// drops it loses that check, nothing else.
    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// The state after a token response: the new access token, and the new refresh token if
    /// the response rotated it, else the one we had.
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))]
    pub(crate) fn from_response(token: &Token, previous: Option<&RefreshToken>) -> Self {
        let expires_at = token
            .expires_in()
            .and_then(|left| SystemTime::now().checked_add(left));
        StoredToken {
            refresh_token: token.refresh_token().or(previous).cloned(),
            access_token: Some(token.access_token().clone()),
            expires_at,
            scope: token.scope().map(str::to_owned),
            token_type: Some(token.token_type().to_owned()),
            client: None,
        }
    }

    /// The stored access token as a [`Token`], if it has not expired.
    #[cfg_attr(not(feature = "oauth"), allow(dead_code))]
    pub(crate) fn live_access_token(&self) -> Option<Token> {
        let access = self.access_token.as_ref()?;
        let mut token = Token::new(access.secret());
        if let Some(at) = self.expires_at {
            let left = at.duration_since(SystemTime::now()).ok()?;
            token = token.with_expires_in(left);
        }
        if let Some(t) = &self.token_type {
            token = token.with_token_type(t.clone());
        }
        if let Some(s) = &self.scope {
            token = token.with_scope(s.clone());
        }
        if let Some(r) = &self.refresh_token {
            token = token.with_refresh_token(r.clone());
        }
        Some(token)
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("refresh_token", &self.refresh_token)
            .field("access_token", &self.access_token)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("token_type", &self.token_type)
            .field("client", &self.client)
            .finish()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`TokenStore`].
#[cfg_attr(not(feature = "oauth"), allow(dead_code))]
pub(crate) trait DynTokenStore: Send + Sync + 'static {
    fn load_boxed(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>>;
    fn save_boxed<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>>;
    fn clear_boxed(&self) -> BoxFuture<'_, Result<(), Error>>;
    fn lock_boxed(&self) -> BoxFuture<'_, Result<Option<StoreLock>, Error>>;
    fn identity(&self) -> Option<String>;
    fn type_name(&self) -> &'static str;
}

impl<T: TokenStore> DynTokenStore for T {
    fn load_boxed(&self) -> BoxFuture<'_, Result<Option<StoredToken>, Error>> {
        Box::pin(self.load())
    }
    fn save_boxed<'a>(&'a self, token: &'a StoredToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.save(token))
    }
    fn lock_boxed(&self) -> BoxFuture<'_, Result<Option<StoreLock>, Error>> {
        Box::pin(self.lock())
    }
    fn clear_boxed(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.clear())
    }
    fn identity(&self) -> Option<String> {
        TokenStore::identity(self)
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}
