//! [`KeyedAuthLayerBuilder`]: the settings of a [`KeyedAuthLayer`], checked by
//! [`build`](KeyedAuthLayerBuilder::build).

use std::{fmt, hash::Hash, sync::Arc, time::Duration};

use super::{KeyedAuthLayer, KeyedState, RequestInfo, tokens::KeyedTokens};
use crate::{AuthLayer, AuthLayerBuilder, Error, TokenSource};

/// Default for [`KeyedAuthLayerBuilder::capacity`].
pub const DEFAULT_KEY_CAPACITY: usize = 10_000;
/// Default for [`KeyedAuthLayerBuilder::idle_timeout`].
pub const DEFAULT_KEY_IDLE: Duration = Duration::from_secs(15 * 60);

/// The longest idle timeout: a day. A key kept longer holds a token nobody asks for.
const LONGEST_IDLE: Duration = Duration::from_secs(24 * 3600);

pub(super) type KeyFn<K> = Box<dyn Fn(&RequestInfo<'_>) -> Option<K> + Send + Sync>;
/// A key's layer builder, around the source the user's function made for the key.
type SourceFn<K> = Box<dyn Fn(&K) -> Result<AuthLayerBuilder, Error> + Send + Sync>;
type Configure = Box<dyn Fn(AuthLayerBuilder) -> AuthLayerBuilder + Send + Sync>;

/// Configures a [`KeyedAuthLayer`]; made by [`KeyedAuthLayer::builder`].
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`layer_settings`](Self::layer_settings) | the defaults of [`AuthLayerBuilder`] | every key's layer: margin, timeouts, retries, origins, scheme, a fleet through Redis, ... |
/// | [`capacity`](Self::capacity) | 10,000 | about the most keys held; beyond it, the least useful are dropped |
/// | [`idle_timeout`](Self::idle_timeout) | 15 min | a key nobody used this long is dropped at a later request, and its token with it |
/// | [`pass_through_without_key`](Self::pass_through_without_key) | off | a request without a key is sent without a token instead of refused |
#[must_use]
pub struct KeyedAuthLayerBuilder<K> {
    key: KeyFn<K>,
    source: SourceFn<K>,
    configure: Configure,
    capacity: usize,
    idle: Duration,
    pass_through: bool,
}

impl<K> KeyedAuthLayerBuilder<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    pub(super) fn new<S: TokenSource>(
        key: impl Fn(&RequestInfo<'_>) -> Option<K> + Send + Sync + 'static,
        source: impl Fn(&K) -> Result<S, Error> + Send + Sync + 'static,
    ) -> Self {
        KeyedAuthLayerBuilder {
            key: Box::new(key),
            // A keyed service sends the cache's own header: no per-core copies.
            source: Box::new(move |key| {
                Ok(AuthLayer::builder(source(key)?).without_header_copies())
            }),
            configure: Box::new(|builder| builder),
            capacity: DEFAULT_KEY_CAPACITY,
            idle: DEFAULT_KEY_IDLE,
            pass_through: false,
        }
    }

    /// The settings of every key's layer, as on [`AuthLayer::builder`]: the closure gets a
    /// builder around the key's source and returns it configured. Called once per key, when
    /// the key's layer is made, and checked then: settings that
    /// [`AuthLayerBuilder::build`] refuses fail that key's requests with its error.
    pub fn layer_settings(
        mut self,
        configure: impl Fn(AuthLayerBuilder) -> AuthLayerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// About the most keys held at once: the map is split into shards that each hold their
    /// share, so it may hold somewhat more. Beyond it
    /// the map drops the least useful (S3-FIFO: keys seen once go first). Default: 10,000; `0`
    /// is refused.
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// How long a key nobody uses is kept, with its token. The layer runs no timer: idle keys
    /// are dropped by the requests that follow (a pass over the map at most once a quarter of
    /// the timeout), so a layer nobody calls at all keeps what it holds. Default: 15 minutes;
    /// between a second and a day.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Whether a request the key function finds no key for is sent on without a token (`true`)
    /// or refused with [`Error::NoKey`] (`false`, the default). Never with another key's token.
    pub fn pass_through_without_key(mut self, pass: bool) -> Self {
        self.pass_through = pass;
        self
    }

    /// Checks the settings and makes the layer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a capacity of 0, or an idle timeout under a second or over a day.
    pub fn build(self) -> Result<KeyedAuthLayer<K>, Error> {
        if self.capacity == 0 {
            return Err(Error::config(
                "a keyed layer needs a capacity of at least one key",
            ));
        }
        if self.idle < Duration::from_secs(1) || self.idle > LONGEST_IDLE {
            return Err(Error::config(
                "a keyed layer's idle timeout must be between a second and a day",
            ));
        }
        let (source, configure) = (self.source, self.configure);
        let make = Box::new(move |key: &K| configure(source(key)?).build());
        Ok(KeyedAuthLayer {
            state: Arc::new(KeyedState {
                key: self.key,
                tokens: KeyedTokens::new(self.capacity, self.idle, make)?,
                pass_through: self.pass_through,
            }),
        })
    }
}

impl<K> fmt::Debug for KeyedAuthLayerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedAuthLayerBuilder")
            .field("capacity", &self.capacity)
            .field("idle", &self.idle)
            .field("pass_through", &self.pass_through)
            .finish_non_exhaustive()
    }
}
