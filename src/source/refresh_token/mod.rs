//! The refresh token grant (RFC 6749 §6), safe with servers that rotate refresh tokens.

use std::{
    fmt,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use tokio::sync::{Mutex, oneshot};

mod refresh;
mod revoke;

use crate::{
    AccessToken, Error, ProviderMetadata, RefreshToken, Token, TokenSource,
    error::StoreError,
    oauth::{self, EndpointConfig, ParamNames, TokenEndpoint},
    store::{DynTokenStore, MemoryStore, StoreLock, StoredToken, TokenStore},
};

/// A [`TokenSource`] that renews the access token with a refresh token kept in a
/// [`TokenStore`].
///
/// - **Rotation.** When a response carries a new refresh token, it replaces the old one; when it
///   does not, the old one is kept.
/// - **One request at a time.** Refreshes are serialized (the layer's single flight, and a lock
///   here for a grant shared by several layers), and each runs in a task of its own, so a caller
///   that gives up cannot cut it off between the server's answer and the save. Processes that
///   share a store take its lock ([`TokenStore::lock`]; [`FileStore`](crate::store::FileStore)
///   has one) and read it again before refreshing: one that finds an access token another
///   process just bought uses it, and the others send the refresh token saved last, so a
///   refresh token is sent once across all of them. If the answer
///   comes after the caller gave up, its access token is kept for the next fetch.
/// - **A refresh token the server answered is never sent again.** After a success the new
///   refresh token (or the same one, without rotation) is used; after a terminal error the old
///   one is not sent again (below).
/// - **Sent again only when unanswered.** A request the server certainly did not act on (no
///   connection, 429, 503, `temporarily_unavailable`: [`Error::is_unprocessed`]) is retried
///   within the fetch. After any other failure (a timeout, a connection lost after sending,
///   another 5xx) the server may or may not have rotated the token: nothing is retried within
///   that fetch, and the **next fetch sends the same refresh token once more**, after the
///   layer's backoff. If the server had not processed it, or allows a rotated token back for a
///   grace period (as many servers do for this very case), that refresh succeeds. If it had
///   rotated and revokes the grant when an old token comes back, it answers `invalid_grant`,
///   which ends the grant with [`Error::AuthorizationRequired`] (the new refresh token was lost
///   with the answer, so no choice of the client could have kept the grant); such a server may
///   also revoke the access token in use.
/// - **Persisted first.** The new refresh token is saved before the access token it bought is
///   handed out; if the save fails, the caller gets [`Error::Store`] (its
///   [`is_refresh_token_unsaved`](crate::error::StoreError::is_refresh_token_unsaved) says so,
///   and [`Stats::unsaved_refreshes`](crate::Stats::unsaved_refreshes) counts it) and the token
///   is not used yet. The old refresh token is spent, so it is **never sent again**: the new
///   state is kept in memory, with the store's lock (no other process refreshes with the spent
///   token the store still holds), and each next fetch saves it first, sending no refresh token
///   until that succeeds; then it hands out the access token that refresh bought. A task tries
///   the save in the background too (after 1 s, then pauses doubling up to 30 s), so that an
///   idle layer does not keep the store's lock from the other processes. If the store
///   moved on meanwhile past both (a new authorization, another process's refresh), the store's
///   state wins. A process killed after the server rotated and before the save restarts with
///   the old refresh token, the same case as a lost answer above.
/// - **Fenced.** With a store whose lock can be lost while held (a lease:
///   [`RedisStore`](crate::distributed::RedisStore)), the grant confirms it holds the lock
///   immediately before it sends a refresh token and before it saves
///   ([`StoreLock::confirm`](crate::store::StoreLock::confirm)), and gives the attempt up,
///   sending nothing, when it does not. (A stall past the lease between that check and the
///   request itself is beyond any fence: the token endpoint cannot check a lease.)
/// - **One client per store.** The state records which client saved it
///   ([`StoredToken::client`]): a grant refuses a state another client (another token endpoint
///   or client id) saved, sending nothing of it anywhere; [`AuthLayer::revoke`](crate::AuthLayer::revoke)
///   then revokes none of it and leaves the store as it is.
/// - **Resume.** A restarted process loads the store and goes on: it uses the stored access
///   token while it lasts, then refreshes. No new authorization is needed.
/// - **Terminal errors.** `invalid_grant`, `invalid_client` and `unauthorized_client` are
///   returned as they are ([`Error::is_terminal`]) and remembered: the same refresh token is
///   not sent again. Fetches fail at once until the store holds a different refresh token (a new
///   authorization, perhaps by another process).
/// - **Timeouts.** Each request to the token or revocation endpoint times out after
///   [`request_timeout`](RefreshTokenGrantBuilder::request_timeout) (30 s), so a server that
///   accepts and never answers cannot hold the grant.
///
/// Get one from [`AuthorizationCode::exchange`](crate::AuthorizationCode::exchange), or build
/// one over a store that already holds a refresh token:
///
/// ```
/// use tower_bearer::{AuthLayer, RefreshTokenGrant, store::FileStore};
///
/// # fn main() -> Result<(), tower_bearer::Error> {
/// let source = RefreshTokenGrant::builder("https://idp.example.com/oauth2/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .store(FileStore::new("/var/lib/my-app/tokens.json"))
///     .build()?;
/// let layer = AuthLayer::new(source);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshTokenGrant {
    inner: Arc<Inner>,
}

/// The first pause before a refresh whose save failed is saved again in the background, and the
/// longest ([`Inner::save_later`]).
const SAVE_LATER_FIRST: Duration = Duration::from_secs(1);
const SAVE_LATER_MOST: Duration = Duration::from_secs(30);

struct Inner {
    endpoint: TokenEndpoint,
    /// Which client this grant is ([`StoredToken::client`]): what it saves, and what it
    /// requires of a state it loads.
    client: String,
    scope: Option<String>,
    params: Vec<(String, String)>,
    store: Box<dyn DynTokenStore>,
    state: Mutex<GrantState>,
    /// Whether a task retries the save of a refresh whose save failed ([`Inner::save_later`]).
    saving_later: AtomicBool,
}

#[derive(Default)]
struct GrantState {
    loaded: bool,
    stored: Option<StoredToken>,
    /// The access token last given to the cache: a fetch never gives it again, it refreshes
    /// (or, with a store other processes share, takes the newer one they saved).
    handed_out: Option<AccessToken>,
    /// The endpoint rejected the stored refresh token for good.
    rejected: Option<Error>,
    /// The last refresh failed after it was sent, unanswered: the server may have rotated the
    /// refresh token it carried (see the type's documentation).
    unanswered: bool,
    /// A refresh the server answered whose new state could not be saved: the refresh token it
    /// carried is spent, so the new one is kept here until a save succeeds.
    unsaved: Option<Unsaved>,
}

/// The state a refresh bought and could not save.
struct Unsaved {
    state: StoredToken,
    /// The refresh token that refresh sent (now spent).
    spent: RefreshToken,
    /// The store's lock, kept while the save is owed, so that no other process refreshes
    /// with the spent refresh token the store still holds.
    lock: Option<StoreLock>,
}

impl RefreshTokenGrant {
    /// Starts a builder for the token endpoint at `token_url`.
    pub fn builder(token_url: impl Into<String>) -> RefreshTokenGrantBuilder {
        RefreshTokenGrantBuilder {
            config: EndpointConfig::new(token_url.into()),
            store: None,
        }
    }

    /// Starts a builder from an authorization server's metadata.
    pub fn from_metadata(metadata: &ProviderMetadata) -> RefreshTokenGrantBuilder {
        RefreshTokenGrantBuilder {
            config: metadata.endpoint_config(),
            store: None,
        }
    }

    /// A grant over `store`; `stored` is what an exchange just saved there, if anything (else
    /// the store is read at the first fetch).
    pub(crate) fn from_parts(
        built: oauth::BuiltEndpoint,
        store: Box<dyn DynTokenStore>,
        stored: Option<StoredToken>,
    ) -> Self {
        RefreshTokenGrant {
            inner: Arc::new(Inner {
                client: built.endpoint.client_fingerprint(),
                endpoint: built.endpoint,
                scope: built.scope,
                params: built.params,
                store,
                state: Mutex::new(GrantState {
                    loaded: stored.is_some(),
                    stored,
                    handed_out: None,
                    rejected: None,
                    unanswered: false,
                    unsaved: None,
                }),
                saving_later: AtomicBool::new(false),
            }),
        }
    }
}

impl TokenSource for RefreshTokenGrant {
    async fn fetch(&self) -> Result<Token, Error> {
        let inner = Arc::clone(&self.inner);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (answer, answered) = oneshot::channel();
        runtime.spawn(async move { inner.fetch(answer).await });
        answered.await.map_err(|_| Error::Aborted)?
    }

    async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        self.inner.revoke(current).await
    }

    /// Only a request the server certainly did not act on: any other failure may have rotated
    /// the refresh token.
    fn retry_within_fetch(&self, error: &Error) -> bool {
        error.is_unprocessed()
    }

    #[cfg(feature = "jose")]
    fn dpop_key(&self) -> Option<crate::jose::SigningKey> {
        self.inner.endpoint.dpop_key().cloned()
    }

    /// The token endpoint, client, client authentication and keys, scope and extra parameters,
    /// and the store's identity (which names the user): `None` over a store that has none
    /// ([`TokenStore::identity`]), which cannot tell one user's grant from another's.
    fn identity(&self) -> Option<String> {
        let store = self.inner.store.identity()?;
        let mut identity = self.inner.endpoint.identity();
        identity.push_str(" grant_type=refresh_token");
        oauth::push_request_identity(
            &mut identity,
            self.inner.scope.as_deref(),
            &self.inner.params,
        );
        identity.push_str(&format!(" store={store:?}"));
        Some(identity)
    }
}

/// The error for a store holding another client's state.
fn foreign_store() -> Error {
    Error::Store(StoreError::new(
        "the token store holds the tokens of another client (saved by a grant with another \
         token endpoint or client id): nothing was sent; give each client a store of its own",
    ))
}

/// A failed save's error, saying that the refresh token the server issued is kept in memory.
fn kept_in_memory(err: Error) -> Error {
    let store = match err {
        Error::Store(store) => store,
        other => StoreError::new(other.to_string()),
    };
    Error::Store(store.refresh_token_unsaved())
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("endpoint", &self.inner.endpoint)
            .field("scope", &self.inner.scope)
            .field("params", &ParamNames(&self.inner.params))
            .field("store", &self.inner.store.type_name())
            .finish()
    }
}

/// Builds a [`RefreshTokenGrant`]; see [`RefreshTokenGrant::builder`].
#[must_use]
pub struct RefreshTokenGrantBuilder {
    config: EndpointConfig,
    store: Option<Box<dyn DynTokenStore>>,
}

impl RefreshTokenGrantBuilder {
    oauth::client_builder_methods!();

    /// Where the refresh token is kept; a new [`MemoryStore`] unless set.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Checks the settings and builds the source. The store is read at the first fetch.
    ///
    /// # Errors
    ///
    /// [`Error::Config`], as for [`ClientCredentialsBuilder::build`](crate::ClientCredentialsBuilder::build).
    pub fn build(self) -> Result<RefreshTokenGrant, Error> {
        let built = self.config.build("refresh_token", &["refresh_token"])?;
        let store = self.store.unwrap_or_else(|| Box::new(MemoryStore::new()));
        Ok(RefreshTokenGrant::from_parts(built, store, None))
    }
}

impl fmt::Debug for RefreshTokenGrantBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrantBuilder")
            .field("config", &self.config)
            .field("store", &self.store.as_ref().map(|s| s.type_name()))
            .finish()
    }
}
