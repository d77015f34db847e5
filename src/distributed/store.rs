//! [`RedisStore`]: a [`TokenStore`] on Redis, for a refresh-token grant that a fleet shares.

use std::{
    fmt,
    time::{Duration, UNIX_EPOCH},
};

use redis::aio::ConnectionManager;

use super::connection::RedisConnection;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    DEFAULT_CALL_TIMEOUT,
    fleet::{RELEASE, RENEW, millis, owned_script, owner},
    sealed::Sealing,
};
use crate::{
    Error,
    error::StoreError,
    store::{LOCK_WAIT, StoreLock, StoredToken, TokenStore},
};

/// How long a lock holder keeps the store's lock without renewing it: a process that dies
/// holding it keeps the others out this long at most.
const LOCK_LEASE: Duration = Duration::from_secs(10);
/// How often a process waiting for the lock tries again.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// A [`TokenStore`] in one Redis key, sealed like [`RedisCache`](super::RedisCache)'s tokens,
/// for a [`RefreshTokenGrant`](crate::RefreshTokenGrant) that several processes share.
///
/// Its [`lock`](TokenStore::lock) is a lease in Redis (`SET NX PX` with a random owner, renewed
/// while held, released only by its owner), so a grant refreshes in one process at a time,
/// after reading the store again: a refresh token is sent once across the fleet, and a rotated
/// one is never lost to a race. A process that dies holding the lock keeps the others out 10 s
/// at most; a process waits for the lock at most [`LOCK_WAIT`]. Every Redis call has its own
/// deadline ([`call_timeout`](Self::call_timeout), 500 ms); a failed call is
/// [`Error::Store`], so a refresh never goes out without its store.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_bearer::{AuthLayer, RefreshTokenGrant, distributed::RedisStore};
///
/// let conn = redis::aio::ConnectionManager::new(redis::Client::open("redis://127.0.0.1/")?).await?;
/// let grant = RefreshTokenGrant::builder("https://idp.example.com/oauth2/token")
///     .client_id("reports")
///     .client_secret(std::env::var("CLIENT_SECRET")?)
///     .store(RedisStore::new(conn, "reports:grant").encryption_key([7; 32]))
///     .build()?;
/// let auth = AuthLayer::new(grant);
/// # let _ = auth;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    key: String,
    sealing: Option<Sealing>,
    call_timeout: Duration,
}

impl RedisStore {
    /// A store in the Redis key `key` (its lock is `key` with `:lock` added). Give it an
    /// [`encryption_key`](Self::encryption_key): without one every call fails with
    /// [`Error::Store`].
    pub fn new(connection: ConnectionManager, key: impl Into<String>) -> Self {
        RedisStore {
            connection: RedisConnection::Server(connection),
            key: key.into(),
            sealing: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The same on a Redis Cluster (feature `redis-cluster`). The key and its lock go to one
    /// slot only if `key` has a hash tag (`{billing}:refresh`); the store does not need that,
    /// as it never touches both in one command.
    #[cfg(feature = "redis-cluster")]
    pub fn cluster(
        connection: redis::cluster_async::ClusterConnection,
        key: impl Into<String>,
    ) -> Self {
        RedisStore {
            connection: RedisConnection::Cluster(connection),
            key: key.into(),
            sealing: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The AES-256-GCM key that seals the stored tokens; every process needs the same one.
    #[must_use]
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.sealing = Some(Sealing::with_key(&key));
        self
    }

    /// A key being rotated out: state sealed with it is still read; saves use the
    /// [`encryption_key`](Self::encryption_key). Call it after `encryption_key`.
    #[must_use]
    pub fn previous_encryption_key(mut self, key: [u8; 32]) -> Self {
        if let Some(sealing) = self.sealing.take() {
            self.sealing = Some(sealing.clone().with_previous(&key).unwrap_or(sealing));
        }
        self
    }

    /// Stores the tokens as they are: only for a Redis nobody else can read.
    #[must_use]
    pub fn insecure_plaintext(mut self) -> Self {
        self.sealing = Some(Sealing::Plaintext);
        self
    }

    /// The longest one Redis call may take (default 500 ms).
    #[must_use]
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    fn sealing(&self) -> Result<&Sealing, Error> {
        self.sealing.as_ref().ok_or_else(|| {
            Error::Store(StoreError::new(
                "a RedisStore needs an encryption_key (or insecure_plaintext())",
            ))
        })
    }

    fn lock_key(&self) -> String {
        format!("{}:lock", self.key)
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        command: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.call_timeout, command.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Error::Store(StoreError::new(format!(
                "cannot {what} the Redis key {}: {err}",
                self.key
            )))),
            Err(_) => Err(Error::Store(StoreError::new(format!(
                "cannot {what} the Redis key {}: no answer within {:?}",
                self.key, self.call_timeout
            )))),
        }
    }
}

/// The stored state as JSON, sealed in Redis.
#[derive(Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_type: Option<String>,
}

impl Drop for State {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

impl TokenStore for RedisStore {
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        let sealing = self.sealing()?;
        let value: Option<Vec<u8>> = self.call("read", redis::cmd("GET").arg(&self.key)).await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let invalid = || {
            Error::Store(StoreError::new(format!(
                "the Redis key {} holds no token state this key opens",
                self.key
            )))
        };
        let json = sealing.open_bytes(&value, &self.key).ok_or_else(invalid)?;
        let state: State = serde_json::from_slice(&json).map_err(|_| invalid())?;
        let mut token = StoredToken::new();
        if let Some(rt) = &state.refresh_token {
            token = token.with_refresh_token(rt.as_str());
        }
        if let Some(at) = &state.access_token {
            let expires_at = state
                .expires_at_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
            token = token.with_access_token(at.as_str(), expires_at);
        }
        if let Some(scope) = &state.scope {
            token = token.with_scope(scope.clone());
        }
        if let Some(t) = &state.token_type {
            token = token.with_token_type(t.clone());
        }
        Ok(Some(token))
    }

    async fn save(&self, token: &StoredToken) -> Result<(), Error> {
        let sealing = self.sealing()?;
        let state = State {
            refresh_token: token.refresh_token().map(|t| t.secret().to_owned()),
            access_token: token.access_token().map(|t| t.secret().to_owned()),
            expires_at_ms: token
                .expires_at()
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
            scope: token.scope().map(str::to_owned),
            token_type: token.token_type().map(str::to_owned),
        };
        let json = Zeroizing::new(
            serde_json::to_vec(&state)
                .map_err(|_| Error::Store(StoreError::new("cannot encode the token state")))?,
        );
        let value = sealing
            .seal_bytes(&json, &self.key)
            .ok_or_else(|| Error::Store(StoreError::new("cannot seal the token state")))?;
        self.call("write", redis::cmd("SET").arg(&self.key).arg(value))
            .await
    }

    async fn clear(&self) -> Result<(), Error> {
        let _: i64 = self
            .call("remove", redis::cmd("DEL").arg(&self.key))
            .await?;
        Ok(())
    }

    async fn lock(&self) -> Result<Option<StoreLock>, Error> {
        self.sealing()?;
        let lock_key = self.lock_key();
        let owner = owner();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let taken: Option<String> = self
                .call(
                    "lock",
                    redis::cmd("SET")
                        .arg(&lock_key)
                        .arg(&owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(LOCK_LEASE)),
                )
                .await?;
            if taken.is_some() {
                return Ok(Some(StoreLock::new(Held::new(self, lock_key, owner))));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Store(StoreError::new(format!(
                    "another process held the lock of the Redis key {} for {} s",
                    self.key,
                    LOCK_WAIT.as_secs()
                ))));
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    /// The key: the fleet's processes that share this store share its grant.
    fn identity(&self) -> Option<String> {
        Some(format!("redis_store key={:?}", self.key))
    }
}

/// A lock taken: renewed in the background until dropped, then released if still owned.
struct Held {
    renewal: tokio::task::AbortHandle,
    release: Option<(RedisConnection, String, String, Duration)>,
}

impl Held {
    fn new(store: &RedisStore, key: String, owner: String) -> Held {
        let (mut connection, timeout) = (store.connection.clone(), store.call_timeout);
        let (renew_key, renew_owner) = (key.clone(), owner.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_LEASE / 3).await;
                let mut renew = owned_script(RENEW, &renew_key, &renew_owner);
                renew.arg(millis(LOCK_LEASE));
                let renewed = renew.query_async::<i64>(&mut connection);
                let _ = tokio::time::timeout(timeout, renewed).await;
            }
        })
        .abort_handle();
        Held {
            renewal,
            release: Some((store.connection.clone(), key, owner, timeout)),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewal.abort();
        let Some((mut connection, key, owner, timeout)) = self.release.take() else {
            return;
        };
        // Released on the runtime if there is one; otherwise the lease runs out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let release = owned_script(RELEASE, &key, &owner);
                let released = release.query_async::<i64>(&mut connection);
                let _ = tokio::time::timeout(timeout, released).await;
            });
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.key)
            .field("sealing", &self.sealing)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}
