//! One fetch and everyone waiting for it.
//!
//! A fetch runs in a Tokio task of its own, so that a caller that gives up cancels nothing for
//! the others. The task carries a [`FlightGuard`]: if the task is dropped before it finishes (the
//! source panicked, the runtime shut down, the task was dropped inside `spawn`), the guard
//! resolves the flight with [`Error::Aborted`]. Every wait also ends at the flight's deadline,
//! so a fetch whose runtime is never driven again strands no one either: a watchdog task on
//! each runtime that has callers waiting ends the flight then ([`TokenCache::watch`]), and
//! once the flight is over wakes that runtime's callers, a batch at a time (`waiters.rs`). One
//! timer per flight and runtime, rather than one per waiter, keeps a waiter small and its
//! wake-up cheap: 100,000 callers waiting on one fetch registered and cancelled 100,000 timers.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{
    runtime::{self, Handle},
    sync::Notify,
    time::{Instant, Sleep},
};

use super::waiters::{WAKE_BATCH, WaiterGroups, Waiters, behind_the_woken};
use super::{CacheState, TokenCache};
use crate::deadline::{first, later};
use crate::{Error, Token, cache::entry::Entry};

/// How long past the fetch timeout a waiter waits before giving up on a fetch by itself: the
/// fetch's own timeout normally fires first, on the runtime that runs it.
pub(crate) const WAITER_SLACK: Duration = Duration::from_secs(1);

/// How a fetch ended, for those who waited on it.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// A new token, now current.
    Token(Arc<Entry>),
    /// The error every waiter gets.
    Failed(Error),
    /// [`AuthLayer::revoke`](crate::AuthLayer::revoke) forgot everything while the fetch ran:
    /// its token was not installed, and waiters ask again.
    Superseded,
}

/// One fetch in progress.
pub(crate) struct Flight {
    outcome: OnceLock<Outcome>,
    /// Wakes the watchdogs ([`TokenCache::watch`]); the callers wait in their runtime's group.
    done: Notify,
    /// After this instant waiters stop waiting, and the next caller starts another fetch.
    pub(crate) deadline: Instant,
    /// The callers waiting, by runtime, each group woken by its runtime's watchdog.
    waiters: WaiterGroups,
}

impl Flight {
    pub(crate) fn new(deadline: Instant) -> Flight {
        Flight {
            outcome: OnceLock::new(),
            done: Notify::new(),
            deadline,
            waiters: WaiterGroups::default(),
        }
    }

    /// Sets the outcome, if none is set yet, and wakes the watchdogs, which wake their
    /// runtime's callers. The callers of a runtime whose watchdog has not started are woken
    /// here, all at once: that runtime may never run it.
    pub(crate) fn resolve(&self, outcome: Outcome) {
        if self.outcome.set(outcome).is_ok() {
            self.done.notify_waiters();
            for group in self.waiters.iter() {
                if !group.is_relayed() {
                    drop(group.close());
                }
            }
        }
    }

    /// The outcome, if the flight has one.
    pub(crate) fn outcome(&self) -> Option<&Outcome> {
        self.outcome.get()
    }

    /// Waits for the outcome among `waiters`, this caller's runtime's group
    /// ([`TokenCache::watch`]), whose watchdog ends the wait at the flight's deadline at the
    /// latest. [`Error::Aborted`] if the watchdog was dropped first: its runtime shut down.
    pub(crate) async fn wait<'a>(&'a self, waiters: &'a Waiters) -> Result<&'a Outcome, Error> {
        waiters.wait(&self.outcome).await.ok_or(Error::Aborted)
    }

    /// Waits for the outcome, without a deadline of its own: the watchdogs' wait.
    async fn resolved(&self) -> &Outcome {
        loop {
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Register before looking, so that an outcome set between the look and the await
            // is seen.
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            notified.await;
        }
    }
}

/// Runs a fetch in its task and hands the result to the cache; resolves the flight with
/// [`Error::Aborted`] if dropped before that.
pub(crate) struct FlightGuard {
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) flight: Arc<Flight>,
    pub(crate) finished: bool,
}

impl FlightGuard {
    pub(crate) async fn run(mut self) {
        let cache = Arc::clone(&self.cache);
        let started = Instant::now();
        #[cfg(feature = "redis")]
        let result = match &cache.settings().shared {
            Some(shared) => {
                let cache = super::SharedCache::new(Arc::clone(&cache));
                shared.fetch(&cache, started).await
            }
            None => fetch_with_retries(&cache, started).await,
        };
        #[cfg(not(feature = "redis"))]
        let result = fetch_with_retries(&cache, started).await;
        let elapsed = started.elapsed();
        let failure = result.as_ref().err().map(Error::is_terminal);
        if let Err(err) = &result {
            if matches!(err, Error::Store(store) if store.is_refresh_token_unsaved()) {
                cache.counters.unsaved_refresh();
            }
            tracing::warn!(
                target: "tower_bearer",
                source = cache.source().type_name(),
                elapsed = ?elapsed,
                error = %err,
                "token fetch failed"
            );
        }
        self.finished = true;
        match cache.complete(&self.flight, result) {
            Outcome::Token(entry) => {
                let usable_for = entry.usable_until.saturating_duration_since(Instant::now());
                tracing::debug!(
                    target: "tower_bearer",
                    source = cache.source().type_name(),
                    elapsed = ?elapsed,
                    usable_for = ?usable_for,
                    generation = entry.generation,
                    "token fetched"
                );
                cache
                    .counters
                    .fetch_finished(elapsed, None, Some(usable_for));
            }
            Outcome::Failed(_) => cache.counters.fetch_finished(elapsed, failure, None),
            // Counted when it was given up, or forgotten by a revocation.
            Outcome::Superseded => tracing::debug!(
                target: "tower_bearer",
                elapsed = ?elapsed,
                "fetch ended after it was given up or revoked; its result is dropped"
            ),
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cache.complete(&self.flight, Err(Error::Aborted));
        }
    }
}

/// Calls the source, and again after a transient failure the source says may be retried at
/// once, with a jittered, growing pause (or the endpoint's `Retry-After`), as long as the
/// attempts and the fetch timeout allow.
pub(crate) async fn fetch_with_retries(
    cache: &TokenCache,
    started: Instant,
) -> Result<Token, Error> {
    let settings = cache.settings();
    let timeout = settings.fetch_timeout;
    let deadline = later(started, timeout);
    // Read once: a widening while this fetch runs is fetched for by the next one.
    let scope = cache.lock_state().scope.clone();
    let mut attempt = 1;
    loop {
        let fetch = match &scope {
            Some(scope) => cache.source().fetch_with_scope_boxed(scope),
            None => cache.source().fetch_boxed(),
        };
        let error = match tokio::time::timeout_at(deadline, fetch).await {
            Ok(Ok(token)) => return Ok(token),
            Ok(Err(error)) => error,
            Err(_) => return Err(Error::Timeout(timeout)),
        };
        if attempt >= settings.fetch_attempts || !cache.source().retry_within_fetch(&error) {
            return Err(error);
        }
        let mut pause = cache.retry_pause(attempt);
        if let Some(retry_after) = error.retry_after() {
            pause = pause.max(retry_after);
        }
        // Only if the next attempt would still start well inside the fetch timeout; otherwise
        // the error goes to the callers, and the backoff between fetches takes over.
        if later(Instant::now(), pause.saturating_mul(2)) >= deadline {
            return Err(error);
        }
        tracing::debug!(
            target: "tower_bearer",
            attempt,
            pause = ?pause,
            error = %error,
            "token request failed transiently; trying again"
        );
        cache.counters.fetch_retried();
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

impl TokenCache {
    /// Removes the flight in progress if its deadline has passed (its runtime does not run it,
    /// or it hangs past its own timeout), recording a timeout: a later caller starts another.
    pub(super) fn take_overdue(&self, state: &mut CacheState, now: Instant) -> Option<Arc<Flight>> {
        if state.flight.as_ref().is_none_or(|f| now < f.deadline) {
            return None;
        }
        let overdue = state.flight.take()?;
        tracing::warn!(target: "tower_bearer", layer = %self.counters.name, "token fetch overdue; given up, the next caller starts another");
        self.record_failure(state, Error::Timeout(self.settings.fetch_timeout), now);
        self.counters.fetch_finished(
            self.settings.fetch_timeout.saturating_add(WAITER_SLACK),
            Some(false),
            None,
        );
        Some(overdue)
    }

    /// The group of waiters on `flight` for the caller's runtime (for a caller outside any
    /// runtime, the runtime set on the builder), whose wait ends at the flight's deadline
    /// however its fetch fares, even on a runtime that is never driven again: a watchdog task
    /// on this runtime, one per flight and runtime, gives the flight up then, and wakes the
    /// group once the flight is over. [`Error::NoTimer`] on a runtime without timers, as a
    /// waiter's own timer would be.
    pub(super) fn watch<'f>(
        self: &Arc<Self>,
        flight: &'f Arc<Flight>,
    ) -> Result<&'f Waiters, Error> {
        let runtime = match Handle::try_current() {
            Ok(current) => current,
            Err(_) => self.settings.runtime.clone().ok_or(Error::NoRuntime)?,
        };
        let id = runtime.id();
        if let Some(waiters) = flight.waiters.find(id) {
            return Ok(waiters);
        }
        // Made before the group exists: on a runtime without timers every waiter gets the
        // error, not only the first.
        let _entered = runtime.enter();
        let deadline = catch_unwind(AssertUnwindSafe(|| {
            tokio::time::sleep_until(flight.deadline)
        }))
        .map_err(|_| Error::NoTimer)?;
        let (waiters, added) = flight.waiters.find_or_add(id);
        if added {
            let watchdog = Watchdog {
                cache: Arc::clone(self),
                flight: Arc::clone(flight),
                runtime: id,
            };
            // Spawned with no lock held. A runtime shutting down drops the task, maybe unpolled,
            // and the watchdog's drop then wakes the group.
            runtime.spawn(watchdog.run(deadline));
        }
        Ok(waiters)
    }

    /// The flight's deadline passed: give it up if it is still the current one (the next caller
    /// starts another fetch), and end every wait on it with [`Error::Timeout`] (the fetch
    /// timeout and [`WAITER_SLACK`]).
    pub(super) fn give_up(&self, flight: &Arc<Flight>, now: Instant) {
        if now < flight.deadline {
            return;
        }
        let mut state = self.lock_state();
        let same = state
            .flight
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, flight));
        if same {
            self.take_overdue(&mut state, now);
        }
        drop(state);
        flight.resolve(Outcome::Failed(Error::Timeout(
            self.settings.fetch_timeout.saturating_add(WAITER_SLACK),
        )));
    }
}

/// One runtime's watchdog for one flight: it gives the flight up at its deadline, and once the
/// flight is over wakes the runtime's group of waiters, [`WAKE_BATCH`] at a time, letting each
/// batch run before it wakes the next. Dropped before that (its runtime shut down), it wakes
/// every waiter of the group at once, and a caller that comes later gets [`Error::Aborted`].
struct Watchdog {
    cache: Arc<TokenCache>,
    flight: Arc<Flight>,
    runtime: runtime::Id,
}

impl Watchdog {
    async fn run(self, deadline: Sleep) {
        let Some(waiters) = self.flight.waiters.find(self.runtime) else {
            return;
        };
        waiters.relaying();
        if first(self.flight.resolved(), deadline).await.is_none() {
            self.cache.give_up(&self.flight, Instant::now());
        }
        let mut wakeup = waiters.close();
        while wakeup.wake(WAKE_BATCH) {
            behind_the_woken().await;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(waiters) = self.flight.waiters.find(self.runtime) {
            drop(waiters.close());
        }
    }
}
