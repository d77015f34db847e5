//! The token cache: one current token in an [`ArcSwapOption`], and single-flight fetching.
//!
//! A request reads the current [`Entry`] without a lock and compares one read of the monotonic
//! clock with the entry's instants (see [`entry`]): before its refresh point the token is sent
//! with nothing more to do. Past it, the request still sends the token and starts one background
//! refresh (see [`refresh`]); only a token past its expiry (less a small allowance), or none at
//! all, makes callers wait.
//!
//! Waiting goes through [`TokenCache::acquire`]. The first caller starts a *flight* (see
//! [`flight`]): a Tokio task that calls the [`TokenSource`](crate::TokenSource), retrying
//! transient failures, installs the token and hands the outcome to every caller waiting on it.
//! Later callers join the flight in progress; every wait ends at the flight's deadline at the
//! latest, kept by one watchdog task per flight and runtime ([`flight`]).
//!
//! A new token has no quiet period until a response accepts it: its first requests (still
//! sent without waiting, from the hot path) ask their answers to say whether they accept it,
//! and the first that does replaces the entry with the same token and its quiet period (a
//! compare-and-swap, no lock). A token rejected after it was accepted was revoked, and is
//! replaced at once (see [`backoff`]). What answers, `invalidate` and revocations do to the
//! current token is in [`rejection`].
//!
//! Every other change of the current token (a fetch installing one, a 401 forgetting one, a
//! revocation) happens under one `std::sync::Mutex`, which is never held across an await or a
//! spawn, nor while the token source or a runtime check runs.
//!
//! A cache shared by processes asks a backend, through a trait of the cache's own
//! ([`SharedTokens`], which the Redis fleet implements), for each fetch and revocation.
//!
//! This module knows tokens and time, not HTTP requests.

mod backoff;
mod entry;
mod flight;
mod refresh;
mod rejection;
mod settings;
#[cfg(feature = "redis")]
mod shared;
mod waiters;

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use tokio::{runtime::Handle, time::Instant};
use tracing::Instrument;

pub(crate) use backoff::Backoff;
#[cfg(feature = "oauth")]
pub(crate) use backoff::MAX_RETRY_AFTER;
use backoff::{FetchFailures, RETRY_PAUSES, RejectionStreak};
pub use entry::EXPIRY_ALLOWANCE;
pub(crate) use entry::{Entry, Use};
use flight::{Flight, FlightGuard, Outcome, WAITER_SLACK};
pub(crate) use rejection::{Rejection, Widening};
pub(crate) use settings::CacheSettings;
pub use settings::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_EXPIRY_MARGIN, DEFAULT_FETCH_ATTEMPTS,
    DEFAULT_FETCH_TIMEOUT, DEFAULT_LIFETIME,
};
#[cfg(feature = "redis")]
pub(crate) use shared::{BoxFuture, SharedCache, SharedTokens, WeakSharedCache};

use crate::{
    Error, Token,
    deadline::{has_timers, later},
    source::DynTokenSource,
    stats::Counters,
};

/// Shared state behind every clone of an [`AuthLayer`](crate::AuthLayer) and its services.
pub(crate) struct TokenCache {
    /// In an `Arc` of its own so that services can follow it with an `arc_swap::Cache`.
    current: Arc<ArcSwapOption<Entry>>,
    /// Everything that changes the current token, locked off the hot path only, never across
    /// an await or a spawn.
    state: Mutex<CacheState>,
    /// Nanoseconds since `clock_base` before which no background refresh starts: while a fetch
    /// runs, until its deadline; after a failure, until the backoff has passed. Lets requests in
    /// the refresh window skip the lock with one atomic load.
    next_background: AtomicU64,
    /// The highest generation a response accepted (0: none): a token rejected after it was
    /// accepted was revoked, and is replaced at once (see [`RejectionStreak`]).
    accepted: AtomicU64,
    /// The header copy the next handle of services' clones sends ([`Entry::header_copy`]).
    next_copy: std::sync::atomic::AtomicUsize,
    clock_base: Instant,
    source: Box<dyn DynTokenSource>,
    settings: CacheSettings,
    pub(crate) counters: Counters,
}

struct CacheState {
    flight: Option<Arc<Flight>>,
    failures: Option<FetchFailures>,
    rejections: RejectionStreak,
    /// Jitter of backoff and refresh points.
    rng: fastrand::Rng,
    /// The generation of the last token installed.
    generation: u64,
    /// The last token a response (or `invalidate`) rejected, kept only for a cache shared by
    /// processes, which must not hand it back from Redis (anywhere else it would only be one
    /// more copy of a secret in memory).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    rejected: Option<crate::AccessToken>,
    /// Scope that scope challenges added to what the source asks for (see
    /// [`rejection`]): every fetch asks for it from then on.
    scope: Option<Arc<str>>,
}

/// What a caller finds in the cache: a token to send, or a fetch to wait for.
enum Found {
    Token(Arc<Entry>),
    Flight(Arc<Flight>),
}

impl TokenCache {
    pub(crate) fn new(source: Box<dyn DynTokenSource>, settings: CacheSettings) -> Arc<Self> {
        let rng = match settings.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Arc::new(TokenCache {
            current: Arc::new(ArcSwapOption::empty()),
            state: Mutex::new(CacheState {
                flight: None,
                failures: None,
                rejections: RejectionStreak::default(),
                rng,
                generation: 0,
                rejected: None,
                scope: None,
            }),
            next_background: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            next_copy: std::sync::atomic::AtomicUsize::new(0),
            clock_base: Instant::now(),
            counters: Counters {
                name: settings.name.clone(),
                ..Counters::default()
            },
            source,
            settings,
        })
    }

    /// The slot the hot path reads.
    #[inline]
    pub(crate) fn current(&self) -> &Arc<ArcSwapOption<Entry>> {
        &self.current
    }

    /// The settings the layer was built with.
    pub(crate) fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The token source.
    pub(crate) fn source(&self) -> &dyn DynTokenSource {
        &*self.source
    }

    /// The current entry, usable or not.
    pub(crate) fn peek(&self) -> Option<Arc<Entry>> {
        self.current.load_full()
    }

    /// A token to send: the current one if usable, else the outcome of the fetch in flight, or
    /// of a new fetch.
    ///
    /// Cancellation-safe: dropping the future leaves the fetch running for others. Every wait
    /// has a deadline (the fetch timeout and [`WAITER_SLACK`]), whichever runtime runs the fetch,
    /// kept by a watchdog on the waiter's runtime ([`TokenCache::watch`]).
    ///
    /// With use-limited tokens every waiter claims a use of the fetched token; those who find
    /// it used up wait for the next fetch, so there is still one fetch per use, never more.
    pub(crate) async fn acquire(self: Arc<Self>) -> Result<Arc<Entry>, Error> {
        self.acquire_with(Arc::clone).await
    }

    /// [`acquire`](Self::acquire), handing the entry to `read` instead: a caller that needs
    /// only part of it (the token) takes no reference count on it. When many callers are woken
    /// by one fetch, on every core, such counts are cache lines they would all write.
    pub(crate) async fn acquire_with<T>(
        self: Arc<Self>,
        read: impl Fn(&Arc<Entry>) -> T,
    ) -> Result<T, Error> {
        let mut waited = false;
        loop {
            let flight = match self.find()? {
                Found::Token(entry) => return Ok(read(&entry)),
                Found::Flight(flight) => flight,
            };
            if !waited {
                self.counters.waited();
                waited = true;
            }
            let outcome = match flight.outcome() {
                Some(outcome) => outcome,
                None => {
                    // The wait ends at the flight's deadline at the latest: the watchdog on
                    // this caller's runtime ends the flight then.
                    let waiters = self.watch(&flight)?;
                    flight.wait(waiters).await?
                }
            };
            match outcome {
                Outcome::Token(entry) if entry.claim() => return Ok(read(entry)),
                // Used up by other waiters: wait for the next fetch.
                Outcome::Token(_) => {}
                Outcome::Failed(error) => return Err(error.clone()),
                // Revoked while it ran: ask again.
                Outcome::Superseded => {}
            }
        }
    }

    fn find(self: &Arc<Self>) -> Result<Found, Error> {
        let now = Instant::now();
        if let Some(entry) = self.usable(now) {
            return Ok(Found::Token(entry));
        }
        let runtime = self.fetch_runtime()?;
        let mut state = self.lock_state();
        if let Some(flight) = &state.flight {
            if now < flight.deadline {
                return Ok(Found::Flight(Arc::clone(flight)));
            }
        }
        if let Some(overdue) = self.take_overdue(&mut state, now) {
            drop(state);
            overdue.resolve(Outcome::Failed(Error::Timeout(self.settings.fetch_timeout)));
            state = self.lock_state();
        }
        // A flight may have finished between the look above and taking the lock.
        if let Some(entry) = self.current.load_full() {
            if entry.use_at(now) != Use::Wait {
                return Ok(Found::Token(entry));
            }
        }
        // Within the backoff after a failure, fail fast with the last error: the endpoint sees
        // at most one attempt per backoff interval, however many callers there are.
        if let Some(failures) = &state.failures {
            if now < failures.retry_at {
                self.counters.failed_fast();
                return Err(failures.error.clone());
            }
        }
        Ok(Found::Flight(self.start_flight(state, runtime, now, false)))
    }

    /// The current token, if a request at `now` may send it.
    fn usable(self: &Arc<Self>, now: Instant) -> Option<Arc<Entry>> {
        let current = self.current.load();
        let entry = current.as_ref()?;
        (now < entry.quiet_until || self.check(entry, now)).then(|| Arc::clone(entry))
    }

    fn lock_state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The runtime a new fetch would run on: the one set on the builder, else the caller's,
    /// which must have timers.
    fn fetch_runtime(&self) -> Result<Handle, Error> {
        if let Some(runtime) = &self.settings.runtime {
            return Ok(runtime.clone());
        }
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        if !has_timers() {
            return Err(Error::NoTimer);
        }
        Ok(runtime)
    }

    /// Starts a fetch in its own task. The lock is released before the task is spawned: a
    /// runtime that is shutting down drops the task inside `spawn`, and the task's guard then
    /// takes the lock to resolve the flight.
    fn start_flight(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, CacheState>,
        runtime: Handle,
        now: Instant,
        background: bool,
    ) -> Arc<Flight> {
        let deadline = later(
            now,
            self.settings.fetch_timeout.saturating_add(WAITER_SLACK),
        );
        let flight = Arc::new(Flight::new(deadline));
        state.flight = Some(Arc::clone(&flight));
        self.next_background
            .store(self.nanos_since_base(deadline), Relaxed);
        drop(state);
        self.counters.fetch_started(background);
        if !background {
            // The caller that starts a fetch waits for it. Its runtime's watchdog is spawned
            // first, so that the fetch, spawned last, is the task its worker runs next: Tokio
            // runs the task spawned last first, and the watchdog spawned after it would push
            // the fetch behind every task already queued (with 1,000 callers released at once
            // on 2 workers, the fetch started 16-560 µs after the first caller; now 12-22 µs).
            // An error here is the caller's to get, from its own call.
            let _ = self.watch(&flight);
        }
        let guard = FlightGuard {
            cache: Arc::clone(self),
            flight: Arc::clone(&flight),
            finished: false,
        };
        let span = tracing::debug_span!(
            target: "tower_bearer",
            "token_fetch",
            layer = %self.counters.name,
            source = self.source.type_name(),
            background,
        );
        runtime.spawn(guard.run().instrument(span));
        flight
    }

    /// The header copy a new handle sends: each in turn.
    pub(crate) fn next_header_copy(&self) -> usize {
        self.next_copy.fetch_add(1, Relaxed)
    }

    /// The pause before the next attempt of one fetch, after `attempt` failed.
    pub(crate) fn retry_pause(&self, attempt: u32) -> Duration {
        let mut state = self.lock_state();
        RETRY_PAUSES.delay(attempt, &mut state.rng)
    }

    /// A fetch ended with `result`: installs the token and resolves the flight, unless the
    /// flight was given up or revoked meanwhile ([`Outcome::Superseded`]: nothing changes).
    pub(crate) fn complete(&self, flight: &Arc<Flight>, result: Result<Token, Error>) -> Outcome {
        let now = Instant::now();
        let headers = result.and_then(|token| Entry::headers(token, &self.settings));
        let mut state = self.lock_state();
        if !state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            return Outcome::Superseded;
        }
        state.flight = None;
        let entry = headers.map(|headers| {
            let generation = state.generation + 1;
            state.generation = generation;
            let settings = &self.settings;
            Arc::new(Entry::new(
                headers,
                settings,
                generation,
                now,
                &mut state.rng,
            ))
        });
        let outcome = match entry {
            Ok(entry) => {
                state.failures = None;
                self.current.store(Some(Arc::clone(&entry)));
                self.next_background.store(0, Relaxed);
                Outcome::Token(entry)
            }
            Err(error) => {
                self.record_failure(&mut state, error.clone(), now);
                Outcome::Failed(error)
            }
        };
        drop(state);
        flight.resolve(outcome.clone());
        outcome
    }

    fn record_failure(&self, state: &mut CacheState, error: Error, now: Instant) {
        let usable_until = self.current.load().as_ref().map(|e| e.usable_until);
        let CacheState { failures, rng, .. } = state;
        let next = FetchFailures::after(
            failures.as_ref(),
            error,
            now,
            usable_until,
            &self.settings.backoff,
            rng,
        );
        tracing::debug!(
            target: "tower_bearer",
            layer = %self.counters.name,
            failures = next.count,
            backoff = ?next.retry_at.saturating_duration_since(now),
            "next fetch after backoff"
        );
        self.next_background
            .store(self.nanos_since_base(next.retry_at), Relaxed);
        *failures = Some(next);
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

#[cfg(test)]
mod tests;
