//! The token cache: one current token in an [`ArcSwapOption`], and single-flight fetching.
//!
//! Reading the current token is one atomic load and one comparison against the clock; services
//! do better still: each keeps the entry it last used and checks its `clock_free` flag, which
//! stays up while the entry is current and before its refresh point (the cache lowers it when
//! the entry is replaced, a timer at the refresh point). No lock is taken on either path.
//!
//! When no valid token exists, callers go through [`TokenCache::acquire`]. The first one starts a
//! *flight*: a Tokio task that calls the [`TokenSource`](crate::TokenSource), installs the token,
//! and hands the outcome to every caller waiting on it. Later callers join the flight in progress.
//! Because the fetch runs in its own task, a caller that is dropped cancels nothing; because the
//! task carries a guard that resolves the flight when dropped, no waiter is stranded even if the
//! source panics or the runtime shuts down.
//!
//! A 401 calls [`TokenCache::invalidate`] with the generation of the token that was rejected. The
//! token is dropped only if it is still the current one, so a burst of 401s for one token causes
//! one fetch, and a late 401 for an old token causes none.
//!
//! This module knows tokens and time, not HTTP requests.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Wake, Waker},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::{
    sync::Notify,
    time::{Instant, Sleep},
};
use tracing::Instrument;

use crate::{Error, Token, source::DynTokenSource, stats::Counters};

/// Longest lifetime the cache will compute with; keeps `Instant` arithmetic from overflowing.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Longest refresh-ahead window.
const REFRESH_WINDOW_MAX: Duration = Duration::from_secs(5 * 60);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Timing settings of a cache; see [`AuthLayerBuilder`](crate::AuthLayerBuilder).
#[derive(Debug, Clone)]
pub(crate) struct CacheSettings {
    pub(crate) expiry_margin: Duration,
    pub(crate) default_lifetime: Duration,
    pub(crate) fetch_timeout: Duration,
    /// The authentication scheme written before the token, `Bearer` by default; empty for the
    /// token alone.
    pub(crate) scheme: Arc<str>,
    /// The header the token goes in, `Authorization` by default.
    pub(crate) header_name: http::HeaderName,
    /// How many requests may use one token; `None` for no limit.
    pub(crate) max_uses: Option<u32>,
    /// Refresh in the background before the token stops being used.
    pub(crate) refresh_ahead: bool,
    /// Backoff after failed fetches.
    pub(crate) backoff: Backoff,
    /// Seed of the jitter; random unless set (tests set it).
    pub(crate) jitter_seed: Option<u64>,
}

/// Exponential backoff with full jitter: after the `n`th failure in a row, no new fetch for a
/// random time between zero and `min(max, base * 2^(n-1))`, or for the server's `Retry-After`
/// if that is longer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=nanos))
    }
}

/// A token as the cache holds it: with its pre-built header and the instant it stops being used.
pub(crate) struct Entry {
    pub(crate) token: Token,
    /// `Bearer <token>`, built once, marked sensitive.
    pub(crate) header: HeaderValue,
    /// The token is used until this instant: its expiry less the margin.
    pub(crate) valid_until: Instant,
    /// From this instant a background refresh replaces the token before `valid_until`.
    pub(crate) refresh_at: Instant,
    /// Increases with every token installed; identifies the token a request carried.
    pub(crate) generation: u64,
    pub(crate) fetched_at: Instant,
    /// Uses left for a use-limited token; `None` when unlimited.
    uses_left: Option<AtomicU32>,
    /// `true` while the token is current, before its refresh point (so fresh) and unlimited: a
    /// request may use it without reading the clock or the shared slot. Cleared when the token
    /// is replaced or forgotten, by a timer at the refresh point (or expiry), and by a runtime
    /// shutting down (it fires its timers); from then on, requests look at the shared slot and
    /// compare `valid_until` and `refresh_at` with the clock.
    clock_free: AtomicBool,
}

impl Entry {
    #[inline]
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now < self.valid_until
    }

    /// Takes one use of the token: `true` if it may be sent (always, when unlimited).
    #[inline]
    pub(crate) fn claim(&self) -> bool {
        match &self.uses_left {
            None => true,
            Some(left) => left
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// Fresh, and a use was claimed for the caller.
    #[inline]
    pub(crate) fn claim_fresh(&self, now: Instant) -> bool {
        self.is_fresh(now) && self.claim()
    }

    /// The hot path's check: `true` means current, fresh, not due for a refresh and unlimited,
    /// known without reading the clock (one relaxed load of a flag written once per token).
    #[inline]
    pub(crate) fn clock_free(&self) -> bool {
        self.clock_free.load(Relaxed)
    }

    /// The check when [`clock_free`](Self::clock_free) is `false`: reads the clock, claims a use,
    /// and starts a background refresh in the refresh window. `false`: wait for a new token.
    #[cold]
    #[inline(never)]
    pub(crate) fn check(&self, cache: &Arc<TokenCache>) -> bool {
        let now = Instant::now();
        if !self.claim_fresh(now) {
            return false;
        }
        if now >= self.refresh_at {
            cache.refresh_ahead(now);
        }
        true
    }
}

/// Marks an entry that is no longer current, so that services holding it look at the shared
/// slot again (see `service::Local`).
fn retire(entry: Option<&Entry>) {
    if let Some(entry) = entry {
        entry.clock_free.store(false, Relaxed);
    }
}

/// Clears an entry's [`clock_free`](Entry::clock_free) flag when woken: the waker of the
/// entry's timer. It runs inside the timer driver, before any task the same tick wakes, so a
/// request can never see the flag set after the timer's deadline has been processed.
struct ClearClockFree(Weak<Entry>);

impl Wake for ClearClockFree {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(entry) = self.0.upgrade() {
            entry.clock_free.store(false, Relaxed);
        }
    }
}

/// Arms the timer that clears `entry`'s `clock_free` flag at `deadline`, and sets the flag if
/// the deadline is still ahead. Returns the timer, which must be kept: dropping it disarms it.
/// A runtime that shuts down fires its timers, which clears the flag too.
fn arm_clock_free(entry: &Arc<Entry>, deadline: Instant) -> Option<Pin<Box<Sleep>>> {
    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
    let waker = Waker::from(Arc::new(ClearClockFree(Arc::downgrade(entry))));
    // Set before the first poll: a deadline already past (or reached while polling) clears
    // it again through the waker or the `Ready` below.
    entry.clock_free.store(true, Relaxed);
    if timer
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_ready()
    {
        entry.clock_free.store(false, Relaxed);
        return None;
    }
    Some(timer)
}

/// Every live cache by id, so that a response future can find its cache after a 401 without
/// holding an `Arc` to it: a clone per request would make every core increment and decrement
/// one shared reference count, the contention the hot path is built to avoid. Read only on the
/// slow path; ids are never reused.
static CACHES: RwLock<BTreeMap<u64, Weak<TokenCache>>> = RwLock::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Keeps a [`TokenCache`] alive through an `Arc` with a reference count of its own: a service
/// clones its own handle per request instead of the cache's shared `Arc`, which every core
/// would write.
pub(crate) struct CacheHandle(pub(crate) Arc<TokenCache>);

impl CacheHandle {
    pub(crate) fn new(cache: &Arc<TokenCache>) -> Arc<Self> {
        Arc::new(CacheHandle(Arc::clone(cache)))
    }
}

/// Names a [`TokenCache`] without keeping it alive; see [`TokenCache::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheId(u64);

/// Shared state behind every clone of an [`AuthLayer`](crate::AuthLayer) and its services.
pub(crate) struct TokenCache {
    id: CacheId,
    current: ArcSwapOption<Entry>,
    /// The fetch in progress and the last failure. Locked only on the slow path, never across
    /// an await.
    slow: Mutex<Slow>,
    /// Nanoseconds since `epoch` before which no background refresh starts; `u64::MAX` while one
    /// runs. Lets requests in the refresh window skip the lock with one atomic load.
    next_background: AtomicU64,
    epoch: Instant,
    source: Box<dyn DynTokenSource>,
    settings: CacheSettings,
    generation: AtomicU64,
    pub(crate) counters: Counters,
}

struct Slow {
    flight: Option<Arc<Flight>>,
    /// The timer of the current entry's `clock_free` flag.
    clock_timer: Option<Pin<Box<Sleep>>>,
    failure: Option<Failure>,
    /// Jitter of backoff and refresh-ahead.
    rng: fastrand::Rng,
}

/// Failed fetches in a row, the last error, and when the next fetch may go out.
struct Failure {
    count: u32,
    error: Error,
    retry_at: Instant,
}

/// One fetch and everyone waiting for it.
struct Flight {
    result: OnceLock<Result<Arc<Entry>, Error>>,
    done: Notify,
}

enum Step {
    Fresh(Arc<Entry>),
    Wait(Arc<Flight>),
}

impl TokenCache {
    /// A new cache, registered so that [`find`](Self::find) sees it while it lives.
    pub(crate) fn new(source: Box<dyn DynTokenSource>, settings: CacheSettings) -> Arc<Self> {
        let rng = match settings.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let id = CacheId(NEXT_ID.fetch_add(1, Relaxed));
        let cache = Arc::new(TokenCache {
            id,
            current: ArcSwapOption::empty(),
            slow: Mutex::new(Slow {
                flight: None,
                clock_timer: None,
                failure: None,
                rng,
            }),
            next_background: AtomicU64::new(0),
            epoch: Instant::now(),
            source,
            settings,
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        });
        CACHES
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.0, Arc::downgrade(&cache));
        cache
    }

    /// This cache's id.
    #[inline]
    pub(crate) fn id(&self) -> CacheId {
        self.id
    }

    /// The cache with this id, if it still lives.
    pub(crate) fn find(id: CacheId) -> Option<Arc<TokenCache>> {
        CACHES
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id.0)
            .and_then(Weak::upgrade)
    }

    /// The slot the hot path reads.
    pub(crate) fn current(&self) -> &ArcSwapOption<Entry> {
        &self.current
    }

    /// The current token if it is still fresh, with a use claimed for the caller.
    fn fresh(&self) -> Option<Arc<Entry>> {
        match &*self.current.load() {
            Some(e) if e.claim_fresh(Instant::now()) => Some(Arc::clone(e)),
            _ => None,
        }
    }

    /// The settings the layer was built with.
    pub(crate) fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The token source.
    pub(crate) fn source(&self) -> &dyn DynTokenSource {
        &*self.source
    }

    /// Forgets the current token and returns it.
    pub(crate) fn take(&self) -> Option<Arc<Entry>> {
        let taken = self.current.swap(None);
        retire(taken.as_deref());
        taken
    }

    /// The current entry, fresh or not.
    pub(crate) fn peek(&self) -> Option<Arc<Entry>> {
        self.current.load_full()
    }

    /// A fresh token: the current one, or the outcome of the fetch in flight, or of a new fetch.
    ///
    /// Cancellation-safe: dropping the returned future leaves the fetch running for others.
    ///
    /// With use-limited tokens every waiter claims a use of the fetched token; those who find
    /// it used up wait for the next fetch, so there is still one fetch per use, never more.
    pub(crate) async fn acquire(self: Arc<Self>) -> Result<Arc<Entry>, Error> {
        let mut waited = false;
        loop {
            match self.join_or_start()? {
                Step::Fresh(entry) => return Ok(entry),
                Step::Wait(flight) => {
                    if !waited {
                        self.counters.waited();
                        waited = true;
                    }
                    let entry = flight.wait().await?;
                    if entry.claim() {
                        return Ok(entry);
                    }
                }
            }
        }
    }

    fn join_or_start(self: &Arc<Self>) -> Result<Step, Error> {
        if let Some(entry) = self.fresh() {
            let now = Instant::now();
            if now >= entry.refresh_at {
                self.refresh_ahead(now);
            }
            return Ok(Step::Fresh(entry));
        }
        let mut slow = self.lock_slow();
        if let Some(flight) = &slow.flight {
            return Ok(Step::Wait(Arc::clone(flight)));
        }
        // A flight may have finished between the check above and taking the lock.
        if let Some(entry) = self.fresh() {
            return Ok(Step::Fresh(entry));
        }
        // Within the backoff after a failure, fail fast with the last error: the endpoint sees
        // at most one attempt per backoff interval, however many callers there are.
        if let Some(failure) = &slow.failure {
            if Instant::now() < failure.retry_at {
                self.counters.failed_fast.fetch_add(1, Relaxed);
                return Err(failure.error.clone());
            }
        }
        Ok(Step::Wait(self.start_flight(&mut slow, false)?))
    }

    fn lock_slow(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a fetch in its own task. Called with the slow lock held and no flight running.
    fn start_flight(
        self: &Arc<Self>,
        slow: &mut Slow,
        background: bool,
    ) -> Result<Arc<Flight>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let flight = Arc::new(Flight {
            result: OnceLock::new(),
            done: Notify::new(),
        });
        slow.flight = Some(Arc::clone(&flight));
        self.next_background.store(u64::MAX, Relaxed);
        self.counters.fetch_started(background);
        // The guard is built before the task so that a task dropped unpolled still resolves it.
        let guard = FlightGuard {
            cache: Arc::clone(self),
            flight: Arc::clone(&flight),
            finished: false,
        };
        let span = tracing::debug_span!(
            target: "tower_bearer",
            "token_fetch",
            source = self.source.type_name(),
            background,
        );
        runtime.spawn(guard.run().instrument(span));
        Ok(flight)
    }

    /// Called by requests that found `entry` in its refresh window: starts one background
    /// refresh, unless one runs or the backoff after a failed one has not passed. The caller
    /// goes on with `entry`, which is still valid.
    #[inline]
    pub(crate) fn refresh_ahead(self: &Arc<Self>, now: Instant) {
        let since = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX - 1);
        let next = self.next_background.load(Relaxed);
        if since < next {
            return;
        }
        if self
            .next_background
            .compare_exchange(next, u64::MAX, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let mut slow = self.lock_slow();
        if slow.flight.is_none() && self.start_flight(&mut slow, true).is_err() {
            // No runtime: let a later request try again.
            self.next_background.store(next, Relaxed);
        }
    }

    /// Forgets the current token if it is the one with `generation` (it was rejected).
    /// Returns `true` if it was forgotten by this call.
    pub(crate) fn invalidate(&self, generation: u64) -> bool {
        self.invalidate_where(|e| e.generation == generation)
    }

    /// Forgets the current token if its access token is `token`'s.
    pub(crate) fn invalidate_token(&self, token: &Token) -> bool {
        self.invalidate_where(|e| e.token.access_token() == token.access_token())
    }

    fn invalidate_where(&self, rejected: impl Fn(&Entry) -> bool) -> bool {
        let current = self.current.load();
        if !current.as_deref().is_some_and(&rejected) {
            return false;
        }
        let previous = self.current.compare_and_swap(&*current, None);
        let swapped = match (&*previous, &*current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if swapped {
            retire(previous.as_deref());
            self.counters.rejected();
            tracing::debug!(target: "tower_bearer", "rejected token forgotten; next request fetches a new one");
        }
        swapped
    }

    /// Builds the entry for a fetched token and makes it current.
    fn install(&self, token: Token) -> Result<Arc<Entry>, Error> {
        let scheme = &*self.settings.scheme;
        if !scheme.bytes().all(crate::challenge::is_tchar) {
            return Err(Error::config(format!(
                "authorization scheme {scheme:?} is not an HTTP token"
            )));
        }
        let header = token.header_value(&self.settings.scheme)?;
        let now = Instant::now();
        let lifetime = token
            .expires_at()
            .map_or(self.settings.default_lifetime, |at| {
                at.saturating_duration_since(now)
            })
            .min(MAX_LIFETIME);
        // A margin larger than half the lifetime would make short-lived tokens stale on arrival.
        let margin = self.settings.expiry_margin.min(lifetime / 2);
        let usable = lifetime - margin;
        let valid_until = now + usable;
        // Refresh in the background during the last fifth of the token's use (at most 5
        // minutes), starting at a random point of the window's first half so that a fleet of
        // processes spreads its refreshes.
        let refresh_at = if self.settings.refresh_ahead && self.settings.max_uses.is_none() {
            let window = (usable / 5).min(REFRESH_WINDOW_MAX);
            let jitter = {
                let mut slow = self.lock_slow();
                let rng = &mut slow.rng;
                let half = u64::try_from((window / 2).as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rng.u64(0..=half))
            };
            valid_until - window + jitter
        } else {
            valid_until + MAX_LIFETIME
        };
        let entry = Arc::new(Entry {
            token,
            header,
            valid_until,
            refresh_at,
            generation: self.generation.fetch_add(1, Relaxed) + 1,
            fetched_at: now,
            uses_left: self.settings.max_uses.map(AtomicU32::new),
            clock_free: AtomicBool::new(false),
        });
        {
            let mut slow = self.lock_slow();
            slow.clock_timer = if entry.uses_left.is_none() {
                arm_clock_free(&entry, refresh_at.min(valid_until))
            } else {
                None
            };
        }
        let replaced = self.current.swap(Some(Arc::clone(&entry)));
        retire(replaced.as_deref());
        Ok(entry)
    }

    fn complete(&self, flight: &Arc<Flight>, result: Result<Arc<Entry>, Error>) {
        {
            let mut slow = self.lock_slow();
            let now = Instant::now();
            let next_background = match &result {
                Ok(_) => {
                    slow.failure = None;
                    0
                }
                Err(error) => {
                    let count = slow.failure.as_ref().map_or(0, |f| f.count) + 1;
                    let mut delay = self.settings.backoff.delay(count, &mut slow.rng);
                    if let Some(retry_after) = error.retry_after() {
                        delay = delay.max(retry_after.min(MAX_RETRY_AFTER));
                    }
                    let retry_at = now + delay;
                    tracing::debug!(target: "tower_bearer", failures = count, backoff = ?delay, "next fetch after backoff");
                    slow.failure = Some(Failure {
                        count,
                        error: error.clone(),
                        retry_at,
                    });
                    u64::try_from(retry_at.saturating_duration_since(self.epoch).as_nanos())
                        .unwrap_or(u64::MAX - 1)
                }
            };
            // The result is set before the slot is cleared and waiters are woken, so anyone
            // who finds the slot empty also finds the new token in `current`.
            let _ = flight.result.set(result);
            if slow.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight)) {
                slow.flight = None;
                self.next_background.store(next_background, Relaxed);
            }
        }
        flight.done.notify_waiters();
    }
}

impl Flight {
    async fn wait(&self) -> Result<Arc<Entry>, Error> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Register before looking, so a completion between the look and the await is seen.
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}

/// Runs a flight; if dropped before finishing (the source panicked, the runtime shut down), it
/// resolves the flight with [`Error::Aborted`] so that no waiter hangs.
struct FlightGuard {
    cache: Arc<TokenCache>,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    async fn run(mut self) {
        let cache = Arc::clone(&self.cache);
        let timeout = cache.settings.fetch_timeout;
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, cache.source.fetch_boxed()).await;
        let result = match outcome {
            Ok(Ok(token)) => cache.install(token),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(Error::Timeout(timeout)),
        };
        cache.counters.fetch_finished(
            started.elapsed(),
            result
                .as_ref()
                .map(|e| e.valid_until.saturating_duration_since(Instant::now())),
        );
        match &result {
            Ok(entry) => tracing::debug!(
                target: "tower_bearer",
                source = cache.source.type_name(),
                elapsed = ?started.elapsed(),
                usable_for = ?entry.valid_until.saturating_duration_since(Instant::now()),
                generation = entry.generation,
                "token fetched"
            ),
            Err(err) => {
                tracing::warn!(
                    target: "tower_bearer",
                    source = cache.source.type_name(),
                    elapsed = ?started.elapsed(),
                    error = %err,
                    "token fetch failed"
                );
            }
        }
        self.finished = true;
        cache.complete(&self.flight, result);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cache.complete(&self.flight, Err(Error::Aborted));
        }
    }
}

impl Drop for TokenCache {
    fn drop(&mut self) {
        CACHES
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id.0);
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("TokenCache")
            .field("source", &self.source.type_name())
            .field("settings", &self.settings)
            .field(
                "current",
                &current.as_ref().map(|e| (e.generation, &e.token)),
            )
            .finish_non_exhaustive()
    }
}
