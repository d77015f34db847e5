//! Counters a running layer keeps, read with [`AuthLayer::stats`](crate::AuthLayer::stats).
//!
//! They are plain relaxed atomics touched only off the hot path: when a fetch starts or fails,
//! when a caller has to wait, when a 401 rejects the current token, and when a request is resent.
//!
//! With the `metrics` feature the same events go to the [`metrics`](https://docs.rs/metrics)
//! facade, named in the OpenTelemetry style:
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `tower_bearer.token.fetches` | counter | `outcome` = `success`, `transient_error`, `terminal_error` | token fetches |
//! | `tower_bearer.token.fetch.duration` | histogram (seconds) | `outcome` | how long fetches took |
//! | `tower_bearer.token.lifetime` | gauge (seconds) | | how long the newest token will be used |
//! | `tower_bearer.token.waiters` | counter | | callers that waited for a fetch |
//! | `tower_bearer.token.rejected` | counter | | tokens dropped after a 401 or `UNAUTHENTICATED` |
//! | `tower_bearer.requests.retried` | counter | | requests resent with a new token |
//! | `tower_bearer.requests.not_resent` | counter | | rejected requests that could not be resent |

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    pub(crate) terminal_failures: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) waiters: AtomicU64,
    pub(crate) failed_fast: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) not_resent: AtomicU64,
}

/// A snapshot of what a layer (all its clones and services together) has done.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_bearer::Error> {
/// use tower_bearer::{AuthLayer, StaticToken};
///
/// let layer = AuthLayer::new(StaticToken::new("t"));
/// layer.token().await?;
/// layer.token().await?;
/// let stats = layer.stats();
/// assert_eq!(stats.fetches, 1);
/// assert_eq!(stats.waiters, 1); // the first call waited, the second found the token cached
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Token fetches started.
    pub fetches: u64,
    /// Token fetches that ended in an error.
    pub fetch_failures: u64,
    /// Of those, the ones the endpoint answered with a terminal error (rejected credentials or
    /// grant); the others were transient (network, timeout, 5xx, 429).
    pub terminal_failures: u64,
    /// Fetches started in the background, ahead of expiry, while callers used the current token.
    pub background_refreshes: u64,
    /// Callers (requests or [`token`](crate::AuthLayer::token) calls) that had to wait for a fetch.
    pub waiters: u64,
    /// Callers that got the last fetch error at once, during the backoff after a failure,
    /// instead of a new fetch.
    pub failed_fast: u64,
    /// Tokens forgotten because a response rejected them (401 or gRPC `UNAUTHENTICATED`).
    pub unauthorized: u64,
    /// Requests sent a second time with a new token after a rejection.
    pub retries: u64,
    /// Rejected requests that could not be sent again (retry off, a body that cannot be
    /// replayed, or one that streamed past the replay limit): the caller got the 401.
    pub not_resent: u64,
    /// How long ago the current token was fetched, if there is one.
    pub token_age: Option<Duration>,
    /// How long the current token will still be used, if there is one.
    pub token_usable_for: Option<Duration>,
}

/// Outcome label of a fetch, for metrics.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn outcome(result: &Result<(), &crate::Error>) -> &'static str {
    match result {
        Ok(()) => "success",
        Err(e) if e.is_terminal() => "terminal_error",
        Err(_) => "transient_error",
    }
}

impl Counters {
    pub(crate) fn waited(&self) {
        self.waiters.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.waiters").increment(1);
    }

    pub(crate) fn fetch_started(&self, background: bool) {
        self.fetches.fetch_add(1, Relaxed);
        if background {
            self.background_refreshes.fetch_add(1, Relaxed);
        }
    }

    /// A fetch ended after `elapsed`; on success the token is usable for `usable_for`.
    pub(crate) fn fetch_finished(
        &self,
        elapsed: Duration,
        result: Result<Duration, &crate::Error>,
    ) {
        if let Err(err) = result {
            self.fetch_failures.fetch_add(1, Relaxed);
            if err.is_terminal() {
                self.terminal_failures.fetch_add(1, Relaxed);
            }
        }
        #[cfg(feature = "metrics")]
        {
            let outcome = outcome(&result.map(|_| ()));
            metrics::counter!("tower_bearer.token.fetches", "outcome" => outcome).increment(1);
            metrics::histogram!("tower_bearer.token.fetch.duration", "outcome" => outcome)
                .record(elapsed.as_secs_f64());
            if let Ok(usable_for) = result {
                metrics::gauge!("tower_bearer.token.lifetime").set(usable_for.as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = elapsed;
    }

    pub(crate) fn rejected(&self) {
        self.invalidations.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.rejected").increment(1);
    }

    pub(crate) fn not_resent(&self) {
        self.not_resent.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.requests.not_resent").increment(1);
    }

    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.requests.retried").increment(1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            terminal_failures: self.terminal_failures.load(Relaxed),
            background_refreshes: self.background_refreshes.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            failed_fast: self.failed_fast.load(Relaxed),
            unauthorized: self.invalidations.load(Relaxed),
            retries: self.retries.load(Relaxed),
            not_resent: self.not_resent.load(Relaxed),
            token_age: None,
            token_usable_for: None,
        }
    }
}
