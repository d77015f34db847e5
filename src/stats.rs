//! Counters a running layer keeps, read with [`AuthLayer::stats`](crate::AuthLayer::stats).
//!
//! They are plain relaxed atomics touched only off the hot path: when a fetch starts, retries or
//! fails, when a caller has to wait, when a request is served a token past its refresh target,
//! when a 401 rejects the current token, and when a request is resent.
//!
//! With the `metrics` feature the same events go to the [`metrics`](https://docs.rs/metrics)
//! facade, named in the OpenTelemetry style. Every metric carries the label `layer`: the
//! layer's [`name`](crate::AuthLayerBuilder::name) (`default` unless set), so that several
//! layers in one process (one per API, say) report apart. The same name is the `layer` field of
//! the layer's tracing spans and events.
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `tower_bearer.token.fetches` | counter | `layer`, `outcome` = `success`, `transient_error`, `terminal_error` | token fetches |
//! | `tower_bearer.token.fetch.duration` | histogram (seconds) | `layer`, `outcome` | how long fetches took |
//! | `tower_bearer.token.fetch.retries` | counter | `layer` | token requests retried inside a fetch after a transient failure |
//! | `tower_bearer.token.lifetime` | gauge (seconds) | `layer` | how long the newest token will be used |
//! | `tower_bearer.token.waiters` | counter | `layer` | callers that waited for a fetch |
//! | `tower_bearer.token.served_stale` | counter | `layer` | requests sent with a token past its refresh target (no new token yet) |
//! | `tower_bearer.token.rejected` | counter | `layer` | tokens dropped after a 401 or `UNAUTHENTICATED` |
//! | `tower_bearer.token.unsaved_refreshes` | counter | `layer` | refreshes the server answered whose new state the store could not save (the new refresh token is kept in memory) |
//! | `tower_bearer.requests.retried` | counter | `layer` | requests resent with a new token |
//! | `tower_bearer.requests.not_resent` | counter | `layer` | rejected requests that could not be resent |
//! | `tower_bearer.fleet.tokens` | counter | `layer` | fetches served by a token another process stored (feature `redis`) |
//! | `tower_bearer.fleet.lease_waits` | counter | `layer` | fetches that waited for the process holding the fleet's lease |
//! | `tower_bearer.fleet.fallbacks` | counter | `layer` | fetches that went to the token endpoint because Redis failed or was late |
//! | `tower_bearer.fleet.rejections` | counter | `layer` | tokens forgotten because another process saw them rejected |
//! | `tower_bearer.fleet.notices` | counter | `layer` | notices heard from the fleet's other processes |
//! | `tower_bearer.fleet.redis_errors` | counter | `layer` | Redis calls that failed or were late |

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

/// The name of a layer that was given none.
pub(crate) const DEFAULT_NAME: &str = "default";

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// The layer's name: the `layer` label of its metrics.
    pub(crate) name: LayerName,
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    pub(crate) terminal_failures: AtomicU64,
    pub(crate) fetch_retries: AtomicU64,
    pub(crate) served_stale: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) waiters: AtomicU64,
    pub(crate) failed_fast: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) not_resent: AtomicU64,
    pub(crate) unsaved_refreshes: AtomicU64,
    pub(crate) fleet_tokens: AtomicU64,
    pub(crate) fleet_lease_waits: AtomicU64,
    pub(crate) fleet_fallbacks: AtomicU64,
    pub(crate) fleet_rejections: AtomicU64,
    pub(crate) fleet_notices: AtomicU64,
    pub(crate) fleet_redis_errors: AtomicU64,
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
    /// Token requests sent again inside a fetch, after a transient failure (see
    /// [`AuthLayerBuilder::fetch_attempts`](crate::AuthLayerBuilder::fetch_attempts)).
    pub fetch_retries: u64,
    /// Fetches started in the background, ahead of expiry, while callers used the current token.
    pub background_refreshes: u64,
    /// Requests (and [`token`](crate::AuthLayer::token) calls) served a token past its refresh
    /// target (its expiry less the margin) because no new token had come yet: fetches were
    /// failing, or the refresh was still running. Such a token is still sent until its expiry
    /// less [`EXPIRY_ALLOWANCE`](crate::layer::EXPIRY_ALLOWANCE).
    pub served_stale: u64,
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
    /// replayed, one that streamed past the replay limit, or a token kept while fresh tokens
    /// keep being rejected): the caller got the 401.
    pub not_resent: u64,
    /// Fetches that failed because a refresh the server answered could not be saved: its new
    /// refresh token is kept in memory, no refresh token goes out until the save succeeds, and
    /// each next fetch tries it again (see [`RefreshTokenGrant`](crate::RefreshTokenGrant)).
    pub unsaved_refreshes: u64,
    /// Fetches served by a token another process stored in the fleet's Redis
    /// ([`distributed`](crate::AuthLayerBuilder::distributed)): `fetches` less these (and less
    /// the failures) is what this process asked the token endpoint for.
    pub fleet_tokens: u64,
    /// Fetches that waited for the process holding the fleet's lease.
    pub fleet_lease_waits: u64,
    /// Fetches that went to the token endpoint because Redis failed or answered late.
    pub fleet_fallbacks: u64,
    /// Tokens this process forgot because another process of the fleet saw them rejected (it
    /// sent a notice): this process fetches again without a 401 of its own.
    pub fleet_rejections: u64,
    /// Notices heard from the fleet's other processes (a token stored, a token rejected); none
    /// without [`RedisCache::notices`](crate::distributed::RedisCache::notices).
    pub fleet_notices: u64,
    /// Redis calls that failed or answered late, the connection for notices included: each
    /// one is logged at `warn` (those that cost a fallback) or `debug`.
    pub fleet_redis_errors: u64,
    /// How long ago the current token was fetched, if there is one.
    pub token_age: Option<Duration>,
    /// How long the current token will still be used, if there is one.
    pub token_usable_for: Option<Duration>,
}

/// A layer's name, cheap to clone into a metric label or a tracing field.
#[derive(Debug, Clone)]
pub(crate) struct LayerName(Arc<str>);

impl LayerName {
    pub(crate) fn new(name: &str) -> Self {
        LayerName(Arc::from(name))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(feature = "metrics")]
    fn label(&self) -> metrics::SharedString {
        metrics::SharedString::from_shared(Arc::clone(&self.0))
    }
}

impl Default for LayerName {
    fn default() -> Self {
        LayerName::new(DEFAULT_NAME)
    }
}

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Outcome label of a fetch, for metrics: `failure` is `None` on success, else whether the
/// error was terminal.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn outcome(failure: Option<bool>) -> &'static str {
    match failure {
        None => "success",
        Some(true) => "terminal_error",
        Some(false) => "transient_error",
    }
}

impl Counters {
    pub(crate) fn waited(&self) {
        self.waiters.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.waiters", "layer" => self.name.label()).increment(1);
    }

    pub(crate) fn fetch_started(&self, background: bool) {
        self.fetches.fetch_add(1, Relaxed);
        if background {
            self.background_refreshes.fetch_add(1, Relaxed);
        }
    }

    /// A fetch ended after `elapsed`: `failure` is `None` on success, else whether the error
    /// was terminal; `usable_for` is how long the token it installed will be sent.
    pub(crate) fn fetch_finished(
        &self,
        elapsed: Duration,
        failure: Option<bool>,
        usable_for: Option<Duration>,
    ) {
        if let Some(terminal) = failure {
            self.fetch_failures.fetch_add(1, Relaxed);
            if terminal {
                self.terminal_failures.fetch_add(1, Relaxed);
            }
        }
        #[cfg(feature = "metrics")]
        {
            let outcome = outcome(failure);
            metrics::counter!("tower_bearer.token.fetches", "layer" => self.name.label(), "outcome" => outcome).increment(1);
            metrics::histogram!("tower_bearer.token.fetch.duration", "layer" => self.name.label(), "outcome" => outcome)
                .record(elapsed.as_secs_f64());
            if let Some(usable_for) = usable_for {
                metrics::gauge!("tower_bearer.token.lifetime", "layer" => self.name.label())
                    .set(usable_for.as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (elapsed, usable_for);
    }

    pub(crate) fn fetch_retried(&self) {
        self.fetch_retries.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.fetch.retries", "layer" => self.name.label())
            .increment(1);
    }

    pub(crate) fn served_stale(&self) {
        self.served_stale.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.served_stale", "layer" => self.name.label())
            .increment(1);
    }

    pub(crate) fn failed_fast(&self) {
        self.failed_fast.fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.invalidations.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.rejected", "layer" => self.name.label()).increment(1);
    }

    pub(crate) fn not_resent(&self) {
        self.not_resent.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.requests.not_resent", "layer" => self.name.label())
            .increment(1);
    }

    /// A fetch was served by a token another process stored.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_token(&self) {
        self.fleet_tokens.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.tokens", "layer" => self.name.label()).increment(1);
    }

    /// A fetch waited for the process holding the fleet's lease.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_lease_wait(&self) {
        self.fleet_lease_waits.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.lease_waits", "layer" => self.name.label())
            .increment(1);
    }

    /// A fetch went to the token endpoint because Redis failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_fallback(&self) {
        self.fleet_fallbacks.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.fallbacks", "layer" => self.name.label())
            .increment(1);
    }

    /// A token was forgotten because another process saw it rejected.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_rejection(&self) {
        self.fleet_rejections.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.rejections", "layer" => self.name.label())
            .increment(1);
    }

    /// A notice came from another process of the fleet.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_notice(&self) {
        self.fleet_notices.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.notices", "layer" => self.name.label()).increment(1);
    }

    /// A Redis call failed or was late.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fleet_redis_error(&self) {
        self.fleet_redis_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.fleet.redis_errors", "layer" => self.name.label())
            .increment(1);
    }

    /// A refresh was answered and its save failed.
    pub(crate) fn unsaved_refresh(&self) {
        self.unsaved_refreshes.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.token.unsaved_refreshes", "layer" => self.name.label())
            .increment(1);
    }

    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_bearer.requests.retried", "layer" => self.name.label())
            .increment(1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            terminal_failures: self.terminal_failures.load(Relaxed),
            fetch_retries: self.fetch_retries.load(Relaxed),
            served_stale: self.served_stale.load(Relaxed),
            background_refreshes: self.background_refreshes.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            failed_fast: self.failed_fast.load(Relaxed),
            unauthorized: self.invalidations.load(Relaxed),
            retries: self.retries.load(Relaxed),
            not_resent: self.not_resent.load(Relaxed),
            unsaved_refreshes: self.unsaved_refreshes.load(Relaxed),
            fleet_tokens: self.fleet_tokens.load(Relaxed),
            fleet_lease_waits: self.fleet_lease_waits.load(Relaxed),
            fleet_fallbacks: self.fleet_fallbacks.load(Relaxed),
            fleet_rejections: self.fleet_rejections.load(Relaxed),
            fleet_notices: self.fleet_notices.load(Relaxed),
            fleet_redis_errors: self.fleet_redis_errors.load(Relaxed),
            token_age: None,
            token_usable_for: None,
        }
    }
}
