//! Refresh ahead: what a request does with a token past its quiet period, and the one
//! background refresh a token's refresh window starts.
//!
//! The next instant a background refresh may start is kept as nanoseconds since the cache was
//! made, in an atomic, so that requests in the window check it without the state lock; only the
//! one that wins the compare-and-swap takes the lock to start the fetch.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use tokio::time::Instant;

use super::{
    TokenCache,
    entry::{Entry, Use},
    flight::Outcome,
};
use crate::Error;

impl TokenCache {
    /// Whether a request at `now` may send `entry`, a token past its quiet period: starts a
    /// background refresh when one is due, counts a stale token, claims a use of a use-limited
    /// one. `false`: wait for a new token.
    #[cold]
    #[inline(never)]
    pub(crate) fn check(self: &Arc<Self>, entry: &Entry, now: Instant) -> bool {
        match entry.use_at(now) {
            Use::Wait => false,
            Use::Send { refresh, stale } => {
                if stale {
                    self.counters.served_stale();
                }
                if refresh {
                    self.refresh_ahead(now, entry.generation);
                }
                true
            }
        }
    }

    /// Called by requests that found the token of `generation` in its refresh window: starts
    /// one background refresh, unless one runs, the backoff after a failed one has not passed,
    /// or that token was replaced meanwhile (a request that read it just as a refresh finished
    /// must not start another). The caller goes on with the token, which is still usable.
    pub(crate) fn refresh_ahead(self: &Arc<Self>, now: Instant, generation: u64) {
        let since = self.nanos_since_base(now);
        let next = self.next_background.load(Relaxed);
        if since < next
            || self
                .next_background
                .compare_exchange(next, u64::MAX, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(runtime) = self.fetch_runtime() else {
            // No runtime (or no timers) to fetch on: a request after the first backoff step
            // tries again, rather than every request in the window.
            let step = u64::try_from(self.settings.backoff.base.as_nanos()).unwrap_or(u64::MAX);
            self.next_background
                .store(since.saturating_add(step.max(1)), Relaxed);
            return;
        };
        let mut state = self.lock_state();
        if let Some(flight) = &state.flight {
            if now < flight.deadline {
                self.next_background
                    .store(self.nanos_since_base(flight.deadline), Relaxed);
                return;
            }
        }
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|current| current.generation != generation)
        {
            // Replaced since the caller read it: the new token's own refresh point decides.
            self.next_background.store(0, Relaxed);
            return;
        }
        let overdue = self.take_overdue(&mut state, now);
        if let Some(failures) = &state.failures {
            if now < failures.retry_at {
                self.next_background
                    .store(self.nanos_since_base(failures.retry_at), Relaxed);
                drop(state);
                if let Some(overdue) = overdue {
                    overdue.resolve(Outcome::Failed(Error::Timeout(self.settings.fetch_timeout)));
                }
                return;
            }
        }
        self.start_flight(state, runtime, now, true);
        if let Some(overdue) = overdue {
            overdue.resolve(Outcome::Failed(Error::Timeout(self.settings.fetch_timeout)));
        }
    }

    /// `at` as nanoseconds since the cache was made (`u64::MAX` means "not now").
    pub(super) fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.clock_base).as_nanos())
            .unwrap_or(u64::MAX - 1)
    }
}
