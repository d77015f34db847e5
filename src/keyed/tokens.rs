//! The keyed layer's tokens: one [`AuthLayer`] per key, in a bounded map.
//!
//! The map holds about its capacity of keys (quick_cache's S3-FIFO evicts beyond it, shard by
//! shard), and forgets a key nobody used for the idle timeout: when a lookup finds a new second,
//! at most once a quarter of the idle timeout, one pass drops the idle keys. A dropped key's layer lives on in the
//! requests that still use it; the key's next request makes a new one, which fetches its own
//! token. So eviction costs a fetch, never a wrong token: a key's layer only ever holds the
//! tokens its own source fetched.
//!
//! Keys are hashed with quick_cache's default hasher (foldhash), seeded at random for each
//! map, so no set of keys collides in every process. Keys may come from what callers send (a
//! header, a subject token), and foldhash does not claim to resist a caller who studies one
//! process's timing to make keys collide; SipHash would, at about 200 instructions more per
//! request for a host. Foldhash is enough here: the map's capacity bounds how long a run of
//! colliding keys can grow, and each new key a caller invents already costs the layer a token
//! request, far more than any collision.

use std::{
    fmt,
    hash::Hash,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use quick_cache::{
    DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter,
    sync::{Cache, GuardResult, PlaceholderGuard},
};
use tokio::time::Instant;

use crate::{AuthLayer, Error, deadline::first, middleware::handle::LayerHandle};

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
    /// The map no longer holds this entry (evicted, dropped idle, or its key revoked): a
    /// service that kept it for its next request must look the key up again.
    retired: AtomicBool,
}

impl KeyEntry {
    /// Whether the map dropped this entry.
    #[inline]
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    fn retire(&self) {
        self.retired.store(true, Relaxed);
    }
}

/// Marks the entries the map evicts at capacity as retired.
#[derive(Clone, Copy, Default)]
struct RetireOnEvict;

impl<K> Lifecycle<K, Arc<KeyEntry>> for RetireOnEvict {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: K, entry: Arc<KeyEntry>) {
        entry.retire();
    }
}

type Map<K> = Cache<K, Arc<KeyEntry>, UnitWeighter, DefaultHashBuilder, RetireOnEvict>;

/// The per-key layers of a [`KeyedAuthLayer`](super::KeyedAuthLayer).
pub(crate) struct KeyedTokens<K> {
    map: Map<K>,
    make: MakeLayer<K>,
    idle: Duration,
    clock_base: Instant,
    /// Seconds since `clock_base` of the last pass that dropped idle keys.
    last_sweep: AtomicU64,
}

impl<K: Eq + Hash + Clone> KeyedTokens<K> {
    pub(crate) fn new(
        capacity: usize,
        idle: Duration,
        make: MakeLayer<K>,
    ) -> Result<KeyedTokens<K>, Error> {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .build()
            .map_err(|_| Error::config("a keyed layer's capacity could not be set"))?;
        Ok(KeyedTokens {
            map: Cache::with_options(
                options,
                UnitWeighter,
                DefaultHashBuilder::default(),
                RetireOnEvict,
            ),
            make,
            idle,
            clock_base: Instant::now(),
            last_sweep: AtomicU64::new(0),
        })
    }

    /// The layer of `key`, made if the map holds none; `None` while another request makes it
    /// (one maker per key at a time: the others [`wait`](Self::wait) for the one it makes,
    /// without blocking their threads).
    #[inline]
    pub(crate) fn get(&self, key: &K, now: Instant) -> Result<Option<Arc<KeyEntry>>, Error> {
        let seconds = self.seconds(now);
        let entry = match self.map.get(key) {
            Some(entry) => entry,
            None => match self.make_and_keep(key, seconds)? {
                Some(entry) => entry,
                None => return Ok(None),
            },
        };
        self.used(&entry, seconds);
        Ok(Some(entry))
    }

    /// Waits for the layer of `key` that another request is making, at most [`MAKE_WAIT`];
    /// makes it if that request gave up.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] after [`MAKE_WAIT`]; [`Error::NoTimer`] on a runtime without timers;
    /// the error of the key's source function or settings, if this wait ends up making the
    /// layer and that fails.
    pub(crate) async fn wait(&self, key: &K) -> Result<Arc<KeyEntry>, Error> {
        let deadline = catch_unwind(AssertUnwindSafe(|| tokio::time::sleep(MAKE_WAIT)))
            .map_err(|_| Error::NoTimer)?;
        let waited = first(self.map.get_value_or_guard_async(key), deadline).await;
        let seconds = self.seconds(Instant::now());
        let entry = match waited {
            Some(Ok(entry)) => entry,
            Some(Err(guard)) => self.make_into(guard, key, seconds)?,
            None => return Err(Error::Timeout(MAKE_WAIT)),
        };
        self.used(&entry, seconds);
        Ok(entry)
    }

    /// Counts a use of `entry` at `seconds`: one store a second at most per key, as the line
    /// stays shared between cores otherwise.
    #[inline]
    fn used(&self, entry: &KeyEntry, seconds: u64) {
        if entry.last_used.load(Relaxed) != seconds {
            entry.last_used.store(seconds, Relaxed);
            self.sweep_if_due(seconds);
        }
    }

    /// Counts a use of `entry`, the entry of `key` that a service kept from its last request
    /// without looking it up: its idle time starts again and, once a second, the map hears
    /// of the use (which eviction weighs), so a key used only through kept entries is neither
    /// dropped as idle nor evicted as unused.
    #[inline]
    pub(crate) fn touch(&self, key: &K, entry: &KeyEntry, now: Instant) {
        let seconds = self.seconds(now);
        if entry.last_used.load(Relaxed) != seconds {
            let _ = self.map.get(key);
            self.used(entry, seconds);
        }
    }

    /// Makes `key`'s layer and keeps it; `None` if another request is making it.
    #[cold]
    fn make_and_keep(&self, key: &K, seconds: u64) -> Result<Option<Arc<KeyEntry>>, Error> {
        match self.map.get_value_or_guard(key, Some(Duration::ZERO)) {
            GuardResult::Value(entry) => Ok(Some(entry)),
            GuardResult::Guard(guard) => self.make_into(guard, key, seconds).map(Some),
            GuardResult::Timeout => Ok(None),
        }
    }

    /// Makes `key`'s layer with the user's source function and puts it where `guard` holds
    /// its place. Dropping the guard on an error lets the next request for the key try again.
    fn make_into(
        &self,
        guard: PlaceholderGuard<
            '_,
            K,
            Arc<KeyEntry>,
            UnitWeighter,
            DefaultHashBuilder,
            RetireOnEvict,
        >,
        key: &K,
        seconds: u64,
    ) -> Result<Arc<KeyEntry>, Error> {
        let layer = (self.make)(key)?;
        let entry = Arc::new(KeyEntry {
            handle: layer.handle(),
            layer,
            last_used: AtomicU64::new(seconds),
            retired: AtomicBool::new(false),
        });
        let _ = guard.insert(Arc::clone(&entry));
        Ok(entry)
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
        let (_, entry) = self.map.remove(key)?;
        entry.retire();
        Some(entry)
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
        self.map.retain(|_, entry| {
            let keep = seconds.saturating_sub(entry.last_used.load(Relaxed)) < idle;
            if !keep {
                entry.retire();
            }
            keep
        });
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
