//! [`RedisStore`]: a [`TokenStore`] on Redis, for a refresh-token grant that a fleet shares.

use std::{
    fmt,
    sync::{Arc, Mutex, atomic::Ordering::SeqCst},
    time::{Duration, UNIX_EPOCH},
};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod lock;

use lock::{Lease, lost};

use crate::{
    Error,
    distributed::{
        DEFAULT_CALL_TIMEOUT, connection::RedisConnection, scripts::WRITE_FENCED, sealed::Sealing,
    },
    error::StoreError,
    store::{StoreLock, StoredToken, TokenStore},
};

/// A [`TokenStore`] in one Redis key, sealed like [`RedisCache`](crate::distributed::RedisCache)'s tokens,
/// for a [`RefreshTokenGrant`](crate::RefreshTokenGrant) that several processes share.
///
/// Its [`lock`](TokenStore::lock) is a lease in Redis (`SET NX PX` with a random owner, renewed
/// while held, released only by its owner), so a grant refreshes in one process at a time,
/// after reading the store again: a refresh token is sent once across the fleet, and a rotated
/// one is never lost to a race. A process that dies holding the lock keeps the others out 10 s
/// at most; a process waits for the lock at most [`LOCK_WAIT`](crate::store::LOCK_WAIT).
///
/// The lock is **fenced**. A holder that stalls (a pause of the process, a starved runtime)
/// past its lease may find another process holding the lock when it goes on, so it proves it
/// still holds the lease immediately before it sends a refresh token and before it saves
/// ([`StoreLock::confirm`], which also extends the lease), and a save goes through only if the
/// lease is still its own, checked by Redis in the same script. A holder that lost its lease
/// before its check sends nothing and saves nothing, and lost renewals are noticed too. What
/// fencing cannot reach is the token endpoint itself: a holder that stalls past its lease
/// between its check and its request, a stall longer than 10 s at that very moment, can still
/// send along with the next holder (a server that detects reuse then ends the grant).
///
/// The lock lives in the key `key:lock`. On a Redis Cluster the key needs a hash tag
/// (`{user-42}:refresh`), so that it and its lock share a slot and a save can be fenced in one
/// script: a key without one is refused when the lock is taken. Every Redis call has its own deadline
/// ([`call_timeout`](Self::call_timeout), 500 ms); a failed call is [`Error::Store`], so a
/// refresh never goes out without its store. Its [`identity`](TokenStore::identity) is its key:
/// give each user's grant a key of its own.
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
    /// The lock this store holds now, if any: its saves are fenced by it.
    held: Arc<Mutex<Option<Arc<Lease>>>>,
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
            held: Arc::default(),
        }
    }

    /// The same on a Redis Cluster (feature `redis-cluster`). `key` needs a hash tag
    /// (`{billing}:refresh`), so that it and its lock share a slot: the save is fenced by the
    /// lock in one script. A key without one fails at the first lock with [`Error::Store`].
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
            held: Arc::default(),
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

    /// The lock's key: `key:lock`, in the key's slot on a Redis Cluster when the key has a
    /// hash tag (which a cluster requires, see [`lock`](TokenStore::lock)).
    fn lock_key(&self) -> String {
        format!("{}:lock", self.key)
    }

    /// Writes `value` (deletes the key for `None`), fenced by the lock if this store holds
    /// one: a holder that lost its lease writes nothing.
    async fn write(&self, what: &str, value: Option<Vec<u8>>) -> Result<(), Error> {
        let Some(lease) = self.lease()? else {
            let command = match &value {
                Some(value) => {
                    let mut set = redis::cmd("SET");
                    set.arg(&self.key).arg(value);
                    set
                }
                None => {
                    let mut del = redis::cmd("DEL");
                    del.arg(&self.key);
                    del
                }
            };
            let _: redis::Value = self.call(what, &command).await?;
            return Ok(());
        };
        let mut fenced = redis::cmd("EVAL");
        fenced
            .arg(WRITE_FENCED)
            .arg(2)
            .arg(&self.key)
            .arg(self.lock_key())
            .arg(value.unwrap_or_default())
            .arg(&lease.owner);
        match self.call::<i64>(what, &fenced).await? {
            1 => Ok(()),
            _ => {
                lease.lost.store(true, SeqCst);
                Err(lost(&self.key))
            }
        }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
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
        if let Some(client) = &state.client {
            token = token.with_client(client.clone());
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
            client: token.client().map(str::to_owned),
        };
        let json = Zeroizing::new(
            serde_json::to_vec(&state)
                .map_err(|_| Error::Store(StoreError::new("cannot encode the token state")))?,
        );
        let value = sealing
            .seal_bytes(&json, &self.key)
            .ok_or_else(|| Error::Store(StoreError::new("cannot seal the token state")))?;
        self.write("write", Some(value)).await
    }

    async fn clear(&self) -> Result<(), Error> {
        self.write("remove", None).await
    }

    async fn lock(&self) -> Result<Option<StoreLock>, Error> {
        self.take_lock().await
    }

    /// The key: the fleet's processes that share this store share its grant.
    fn identity(&self) -> Option<String> {
        Some(format!("redis_store key={:?}", self.key))
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

#[cfg(test)]
mod tests;
