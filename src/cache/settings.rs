//! A cache's settings and their defaults; the builder that sets them is
//! [`AuthLayerBuilder`](crate::AuthLayerBuilder).

use std::{sync::Arc, time::Duration};

use tokio::runtime::Handle;

use super::Backoff;
use crate::stats::LayerName;

/// Default for [`AuthLayerBuilder::expiry_margin`](crate::AuthLayerBuilder::expiry_margin).
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Default for [`AuthLayerBuilder::default_lifetime`](crate::AuthLayerBuilder::default_lifetime).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Default for the first step of [`AuthLayerBuilder::backoff`](crate::AuthLayerBuilder::backoff).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Default for the longest step of [`AuthLayerBuilder::backoff`](crate::AuthLayerBuilder::backoff).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default for [`AuthLayerBuilder::fetch_timeout`](crate::AuthLayerBuilder::fetch_timeout).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`AuthLayerBuilder::fetch_attempts`](crate::AuthLayerBuilder::fetch_attempts).
pub const DEFAULT_FETCH_ATTEMPTS: u32 = 3;

/// Settings of a cache; see [`AuthLayerBuilder`](crate::AuthLayerBuilder).
#[derive(Debug, Clone)]
pub(crate) struct CacheSettings {
    pub(crate) expiry_margin: Duration,
    pub(crate) default_lifetime: Duration,
    pub(crate) fetch_timeout: Duration,
    /// Token requests one fetch may make when they fail transiently.
    pub(crate) fetch_attempts: u32,
    /// The authentication scheme written before the token, `Bearer` by default; empty for the
    /// token alone.
    pub(crate) scheme: Arc<str>,
    /// How many requests may use one token; `None` for no limit.
    pub(crate) max_uses: Option<u32>,
    /// Refresh in the background before the refresh target.
    pub(crate) refresh_ahead: bool,
    /// Backoff after failed fetches and rejected tokens.
    pub(crate) backoff: Backoff,
    /// Seed of the jitter; random unless set (tests set it).
    pub(crate) jitter_seed: Option<u64>,
    /// The runtime fetches run on; the caller's unless set.
    pub(crate) runtime: Option<Handle>,
    /// The layer's name, for its metrics and traces.
    pub(crate) name: LayerName,
    /// Whether each token's header gets its own copies for services on different cores
    /// ([`Entry::header_copy`](super::Entry::header_copy)); off for a keyed layer's keys,
    /// whose services send the cache's own header.
    pub(crate) header_copies: bool,
    /// Whether the source binds tokens to a DPoP key: a token of type `DPoP` is then sent with
    /// that scheme (and a proof).
    #[cfg(feature = "jose")]
    pub(crate) dpop: bool,
    /// Where this cache's tokens are shared with other processes, if anywhere.
    #[cfg(feature = "redis")]
    pub(crate) shared: Option<Arc<dyn super::SharedTokens>>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
            default_lifetime: DEFAULT_LIFETIME,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            fetch_attempts: DEFAULT_FETCH_ATTEMPTS,
            scheme: Arc::from("Bearer"),
            max_uses: None,
            refresh_ahead: true,
            backoff: Backoff {
                base: DEFAULT_BACKOFF_BASE,
                max: DEFAULT_BACKOFF_MAX,
            },
            jitter_seed: None,
            runtime: None,
            name: LayerName::default(),
            header_copies: true,
            #[cfg(feature = "jose")]
            dpop: false,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }
}
