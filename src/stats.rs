//! Counters a running layer keeps, read with [`AuthLayer::stats`](crate::AuthLayer::stats).
//!
//! They are plain relaxed atomics touched only off the hot path: when a fetch starts or fails,
//! when a caller has to wait, when a 401 rejects the current token, and when a request is resent.

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
    pub(crate) invalidations: AtomicU64,
    pub(crate) retries: AtomicU64,
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
    /// Tokens forgotten because a response rejected them (401 or gRPC `UNAUTHENTICATED`).
    pub unauthorized: u64,
    /// Requests sent a second time with a new token after a rejection.
    pub retries: u64,
    /// How long ago the current token was fetched, if there is one.
    pub token_age: Option<Duration>,
    /// How long the current token will still be used, if there is one.
    pub token_usable_for: Option<Duration>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            terminal_failures: self.terminal_failures.load(Relaxed),
            background_refreshes: self.background_refreshes.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            unauthorized: self.invalidations.load(Relaxed),
            retries: self.retries.load(Relaxed),
            token_age: None,
            token_usable_for: None,
        }
    }
}
