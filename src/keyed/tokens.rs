//! The keyed layer's tokens: one [`AuthLayer`] per key, in a bounded map.
//!
//! The map holds about its capacity of keys (quick_cache's S3-FIFO evicts beyond it, shard by
//! shard), and forgets a key nobody used for the idle timeout: when a lookup finds a new second,
//! at most once a quarter of the idle timeout, one pass drops the idle keys. A dropped key's layer lives on in the
//! requests that still use it; the key's next request makes a new one, which fetches its own
//! token. So eviction costs a fetch, never a wrong token: a key's layer only ever holds the
//! tokens its own source fetched.
//!
//! Keys are hashed with the standard library's keyed SipHash, as they may come from what a
//! caller sends (a header, a subject token): nobody can choose keys that collide.

use std::{
    fmt,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use quick_cache::sync::{Cache, GuardResult};
use tokio::time::Instant;

use crate::{AuthLayer, Error, middleware::handle::LayerHandle};

/// The longest a request waits for another request that is making the same key's layer.
pub(crate) const MAKE_WAIT: Duration = Duration::from_secs(5);

/// Makes the layer of a key: its source, with the keyed layer's settings.
pub(crate) type MakeLayer<K> = Box<dyn Fn(&K) -> Result<AuthLayer, Error> + Send + Sync>;

/// A key's layer, and when it was last used.
pub(crate) struct KeyEntry {
    pub(crate) layer: AuthLayer,
    /// A handle on the layer's state, cloned into each response future.
    pub(crate) handle: LayerHandle,
    /// Whole seconds since the map's clock base at the last use.
    last_used: AtomicU64,
}

/// The per-key layers of a [`KeyedAuthLayer`](super::KeyedAuthLayer).
pub(crate) struct KeyedTokens<K> {
    map: Cache<K, Arc<KeyEntry>>,
    make: MakeLayer<K>,
    idle: Duration,
    clock_base: Instant,
    /// Seconds since `clock_base` of the last pass that dropped idle keys.
    last_sweep: AtomicU64,
}

impl<K: Eq + Hash + Clone> KeyedTokens<K> {
    pub(crate) fn new(capacity: usize, idle: Duration, make: MakeLayer<K>) -> KeyedTokens<K> {
        KeyedTokens {
            map: Cache::new(capacity),
            make,
            idle,
            clock_base: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// The layer of `key`, made if the map holds none (one maker per key at a time: others
    /// asking for the same key meanwhile get the one it makes).
    #[inline]
    pub(crate) fn get(&self, key: &K, now: Instant) -> Result<Arc<KeyEntry>, Error> {
        let seconds = self.seconds(now);
        let entry = match self.map.get(key) {
            Some(entry) => entry,
            None => self.make_and_keep(key, seconds)?,
        };
        // One store a second at most per key: the line stays shared between cores otherwise.
        if entry.last_used.load(Relaxed) != seconds {
            entry.last_used.store(seconds, Relaxed);
            self.sweep_if_due(seconds);
        }
        Ok(entry)
    }

    /// Makes `key`'s layer and keeps it; or, if another request is making it, waits for that
    /// one, at most [`MAKE_WAIT`] (the wait blocks its thread: the maker runs user code).
    #[cold]
    fn make_and_keep(&self, key: &K, seconds: u64) -> Result<Arc<KeyEntry>, Error> {
        match self.map.get_value_or_guard(key, Some(MAKE_WAIT)) {
            GuardResult::Value(entry) => Ok(entry),
            GuardResult::Guard(guard) => {
                let layer = (self.make)(key)?;
                let entry = Arc::new(KeyEntry {
                    handle: layer.handle(),
                    layer,
                    last_used: AtomicU64::new(seconds),
                });
                let _ = guard.insert(Arc::clone(&entry));
                Ok(entry)
            }
            GuardResult::Timeout => Err(Error::Timeout(MAKE_WAIT)),
        }
    }

    /// The layer of `key`, if the map holds one; not made, and the key's idle time unchanged.
    pub(crate) fn peek(&self, key: &K) -> Option<Arc<KeyEntry>> {
        self.map.peek(key)
    }

    /// A new layer for `key`, not kept: for revoking a key the map does not hold.
    pub(crate) fn make(&self, key: &K) -> Result<AuthLayer, Error> {
        (self.make)(key)
    }

    /// Forgets `key`'s layer; requests that hold it finish with it.
    pub(crate) fn remove(&self, key: &K) -> Option<Arc<KeyEntry>> {
        self.map.remove(key).map(|(_, entry)| entry)
    }

    /// How many keys the map holds.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops the keys nobody used for the idle timeout, at most once a quarter of it.
    fn sweep_if_due(&self, seconds: u64) {
        let every = (self.idle.as_secs() / 4).max(1);
        let last = self.last_sweep.load(Relaxed);
        if seconds < last.saturating_add(every)
            || self
                .last_sweep
                .compare_exchange(last, seconds, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let idle = self.idle.as_secs();
        self.map
            .retain(|_, entry| seconds.saturating_sub(entry.last_used.load(Relaxed)) < idle);
    }

    fn seconds(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.clock_base).as_secs()
    }
}

impl<K: Eq + Hash> fmt::Debug for KeyedTokens<K> {
    /// Counts only: a key may be a secret (a subject token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTokens")
            .field("keys", &self.map.len())
            .field("capacity", &self.map.capacity())
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}
