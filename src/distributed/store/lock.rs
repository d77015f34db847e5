//! The lock of a [`RedisStore`]: a lease in Redis (`SET NX PX` with a random owner), renewed
//! while held, released only by its owner, and fenced: a holder proves it still holds the
//! lease before it sends a refresh token and before it saves.

use std::{
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use super::RedisStore;
use crate::{
    Error,
    distributed::scripts::{RELEASE, RENEW, millis, owned_script, owner},
    error::StoreError,
    store::{LOCK_WAIT, StoreLock},
};

/// How long a lock holder keeps the store's lock without renewing it: a process that dies
/// holding it keeps the others out this long at most.
const LOCK_LEASE: Duration = Duration::from_secs(10);
/// How often a process waiting for the lock tries again.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// A lock this process took: its owner id, and whether it is known to be lost.
pub(super) struct Lease {
    pub(super) owner: String,
    pub(super) lost: AtomicBool,
}

impl RedisStore {
    /// The lock this store holds now, if it is not known to be lost.
    pub(super) fn lease(&self) -> Result<Option<Arc<Lease>>, Error> {
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

    /// Takes the store's lock: see [`TokenStore::lock`] on [`RedisStore`].
    pub(super) async fn take_lock(&self) -> Result<Option<StoreLock>, Error> {
        self.sealing()?;
        #[cfg(feature = "redis-cluster")]
        if matches!(
            self.connection,
            crate::distributed::connection::RedisConnection::Cluster(_)
        ) && hash_tag(&self.key).is_none()
        {
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
pub(super) fn lost(key: &str) -> Error {
    Error::Store(StoreError::new(format!(
        "lost the lock of the Redis key {key} (its lease ran out, or another process holds it): \
         nothing was sent or saved"
    )))
}

/// The hash tag of a Redis key (what Redis Cluster hashes): the text between its first `{`
/// and the first `}` after it, if not empty.
#[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
pub(super) fn hash_tag(key: &str) -> Option<&str> {
    let (_, after) = key.split_once('{')?;
    let (tag, _) = after.split_once('}')?;
    (!tag.is_empty()).then_some(tag)
}
