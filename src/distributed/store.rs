//! [`RedisStore`]: a [`TokenStore`] on Redis, for a refresh-token grant that a fleet shares.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
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

/// Writes `ARGV[1]` to `KEYS[1]` only if the lock `KEYS[2]` is still held by `ARGV[2]`; 1 if
/// written. (`ARGV[1]` empty: deletes `KEYS[1]` instead.)
const WRITE_FENCED: &str = "if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1]) end return 1";

/// A [`TokenStore`] in one Redis key, sealed like [`RedisCache`](super::RedisCache)'s tokens,
/// for a [`RefreshTokenGrant`](crate::RefreshTokenGrant) that several processes share.
///
/// Its [`lock`](TokenStore::lock) is a lease in Redis (`SET NX PX` with a random owner, renewed
/// while held, released only by its owner), so a grant refreshes in one process at a time,
/// after reading the store again: a refresh token is sent once across the fleet, and a rotated
/// one is never lost to a race. A process that dies holding the lock keeps the others out 10 s
/// at most; a process waits for the lock at most [`LOCK_WAIT`].
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

/// A lock this process took: its owner id, and whether it is known to be lost.
struct Lease {
    owner: String,
    lost: AtomicBool,
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

    /// The lock this store holds now, if it is not known to be lost.
    fn lease(&self) -> Result<Option<Arc<Lease>>, Error> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match held {
            Some(lease) if lease.lost.load(SeqCst) => Err(lost(&self.key)),
            held => Ok(held),
        }
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

    /// `Ok` if this store still holds its lock: extends the lease, as the renewal does.
    async fn confirm(&self, lease: &Lease) -> Result<(), Error> {
        if lease.lost.load(SeqCst) {
            return Err(lost(&self.key));
        }
        let mut renew = owned_script(RENEW, &self.lock_key(), &lease.owner);
        renew.arg(millis(LOCK_LEASE));
        match self.call::<i64>("confirm the lock of", &renew).await? {
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
        self.sealing()?;
        #[cfg(feature = "redis-cluster")]
        if matches!(self.connection, RedisConnection::Cluster(_)) && hash_tag(&self.key).is_none() {
            return Err(Error::Store(StoreError::new(format!(
                "the Redis key {} has no hash tag, so on a cluster it and its lock may live in \
                 different slots and a save cannot be fenced by the lock; give it one, such as \
                 {{user-42}}:refresh",
                self.key
            ))));
        }
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
                let lease = Arc::new(Lease {
                    owner,
                    lost: AtomicBool::new(false),
                });
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&lease));
                let held = Held::new(self, Arc::clone(&lease));
                let (store, lease) = (self.clone(), lease);
                return Ok(Some(StoreLock::with_confirm(held, move || {
                    let (store, lease) = (store.clone(), Arc::clone(&lease));
                    async move { store.confirm(&lease).await }
                })));
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

/// A lock taken: renewed in the background until dropped, then released if still owned. A
/// renewal that finds the lease gone, or that fails for as long as the lease lasts, marks it
/// lost: the holder then sends and saves nothing.
struct Held {
    renewal: tokio::task::AbortHandle,
    store: RedisStore,
    lease: Arc<Lease>,
}

impl Held {
    fn new(store: &RedisStore, lease: Arc<Lease>) -> Held {
        let (renewing, renewed) = (store.clone(), Arc::clone(&lease));
        let renewal = tokio::spawn(async move {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(LOCK_LEASE / 3).await;
                match renewing.confirm(&renewed).await {
                    Ok(()) => last_renewed = tokio::time::Instant::now(),
                    Err(_) if renewed.lost.load(SeqCst) => return,
                    Err(_) if last_renewed.elapsed() >= LOCK_LEASE => {
                        renewed.lost.store(true, SeqCst);
                        return;
                    }
                    Err(_) => {}
                }
            }
        })
        .abort_handle();
        Held {
            renewal,
            store: store.clone(),
            lease,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewal.abort();
        {
            let mut held = self
                .store
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if held.as_ref().is_some_and(|h| Arc::ptr_eq(h, &self.lease)) {
                *held = None;
            }
        }
        // Released on the runtime if there is one; otherwise the lease runs out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut connection, timeout) =
                (self.store.connection.clone(), self.store.call_timeout);
            let release = owned_script(RELEASE, &self.store.lock_key(), &self.lease.owner);
            runtime.spawn(async move {
                let released = release.query_async::<i64>(&mut connection);
                let _ = tokio::time::timeout(timeout, released).await;
            });
        }
    }
}

/// The error of a holder that lost its lock.
fn lost(key: &str) -> Error {
    Error::Store(StoreError::new(format!(
        "lost the lock of the Redis key {key} (its lease ran out, or another process holds it): \
         nothing was sent or saved"
    )))
}

/// The hash tag of a Redis key (what Redis Cluster hashes): the text between its first `{`
/// and the first `}` after it, if not empty.
#[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
fn hash_tag(key: &str) -> Option<&str> {
    let (_, after) = key.split_once('{')?;
    let (tag, _) = after.split_once('}')?;
    (!tag.is_empty()).then_some(tag)
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lock_key_shares_its_stores_hash_tag() {
        assert_eq!(hash_tag("{billing}:refresh"), Some("billing"));
        assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("plain:key"), None);
        assert_eq!(hash_tag("a}b{c"), None);
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let connection = client
            .get_connection_manager_lazy(redis::aio::ConnectionManagerConfig::new())
            .unwrap();
        // With a hash tag (which a cluster requires), the lock has the key's tag.
        let store = RedisStore::new(connection, "{billing}:refresh");
        assert_eq!(store.lock_key(), "{billing}:refresh:lock");
        assert_eq!(hash_tag(&store.lock_key()), Some("billing"));
    }
}
