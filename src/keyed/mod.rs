//! One layer, many tokens: [`KeyedAuthLayer`] keeps a token per key (an audience, a tenant, a
//! user) and sends each request with its key's token.
//!
//! A key function looks at each request ([`RequestInfo`]: method, host, path, headers) and
//! names its key ([`by_host`], [`by_header`] and [`by_bearer_credential`] are the common ones);
//! a source function makes the key's [`TokenSource`], and so decides what the key puts in the
//! token request (an `audience` or `resource` parameter, a scope, another client). Each key has
//! everything a single [`AuthLayer`](crate::AuthLayer) has: single-flight fetching, refresh
//! ahead, 401 and `UNAUTHENTICATED` handling with the resend, scope challenges (which widen that
//! key's scope only), DPoP, and (with [`layer_settings`](KeyedAuthLayerBuilder::layer_settings)
//! and `distributed`) a Redis entry of its own in a fleet, since the key's parameters are part
//! of its source's identity. The layer replaces the header its token goes in, so a request
//! forwarded with its caller's `Authorization` (the key of [`by_bearer_credential`]) leaves
//! with the key's token instead.
//!
//! A request whose key function returns `None` is refused with [`Error::NoKey`]
//! (or sent without a token, by [setting](KeyedAuthLayerBuilder::pass_through_without_key)):
//! never with another key's token. The layer holds about its
//! [capacity](KeyedAuthLayerBuilder::capacity) of keys at most, and later requests drop a key
//! nobody used for its [idle timeout](KeyedAuthLayerBuilder::idle_timeout); a dropped key's next
//! request fetches again.
//!
//! # Example
//!
//! A token per API host, each asked for with that host as its `audience`:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_bearer::{Token, keyed::{KeyedAuthLayer, TextKey}, source::from_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_bearer::BoxError> {
//! let auth = KeyedAuthLayer::builder(
//!     tower_bearer::keyed::by_host(),
//!     // In production: ClientCredentials::builder(url)...param("audience", audience).build()
//!     |audience: &TextKey| {
//!         let token = format!("token-for-{audience}");
//!         Ok(from_fn(move || {
//!             let token = token.clone();
//!             async move { Ok(Token::new(token)) }
//!         }))
//!     },
//! )
//! .build()?;
//!
//! let api = service_fn(|request: Request<String>| async move {
//!     let token = request.headers()["authorization"].to_str().unwrap().to_owned();
//!     Ok::<_, Infallible>(Response::new(token))
//! });
//! let client = ServiceBuilder::new().layer(auth.clone()).service(api);
//!
//! let request = Request::get("https://billing.example.com/v1").body(String::new())?;
//! let response = client.clone().oneshot(request).await?;
//! assert_eq!(response.body(), "Bearer token-for-billing.example.com");
//! let request = Request::get("https://reports.example.com/v1").body(String::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.body(), "Bearer token-for-reports.example.com");
//! assert_eq!(auth.keys(), 2);
//! # Ok(())
//! # }
//! ```

mod builder;
mod keys;
mod request;
mod service;
mod tokens;

use std::{fmt, future::Future, hash::Hash, sync::Arc};

pub use builder::{DEFAULT_KEY_CAPACITY, DEFAULT_KEY_IDLE, KeyedAuthLayerBuilder};
pub use keys::{TextKey, by_bearer_credential, by_header, by_host};
pub use request::RequestInfo;
pub use service::KeyedAuthService;
use tokens::KeyedTokens;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::{Error, Stats, Token, TokenSource};

/// A layer that keeps a token per key; see the [module docs](self).
///
/// Clones share the keys and their tokens.
pub struct KeyedAuthLayer<K> {
    state: Arc<KeyedState<K>>,
}

/// What every clone of a keyed layer and its services share.
pub(crate) struct KeyedState<K> {
    key: builder::KeyFn<K>,
    tokens: KeyedTokens<K>,
    pass_through: bool,
}

impl<K> KeyedAuthLayer<K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    /// Starts a keyed layer: `key` names each request's key (`None`: the request has none),
    /// `source` makes a key's token source, once per key the layer holds.
    ///
    /// Both run on the request path: `key` for every request, `source` in the first request of
    /// a key (and the first after the key was dropped), on that request's thread, while the
    /// other requests for the key wait for it in their futures (their threads go on) for at
    /// most 5 s (then [`Error::Timeout`]). Keep them cheap: build one `reqwest::Client` and
    /// give each source a clone (`http_client`) rather than letting each build its own.
    pub fn builder<S: TokenSource>(
        key: impl Fn(&RequestInfo<'_>) -> Option<K> + Send + Sync + 'static,
        source: impl Fn(&K) -> Result<S, Error> + Send + Sync + 'static,
    ) -> KeyedAuthLayerBuilder<K> {
        KeyedAuthLayerBuilder::new(key, source)
    }

    /// A valid token for `key`, fetching one if needed, for code outside tower.
    ///
    /// # Errors
    ///
    /// As [`AuthLayer::token`](crate::AuthLayer::token); and the error of the key's source
    /// function or settings, if the key's layer could not be made.
    pub fn token(&self, key: &K) -> impl Future<Output = Result<Token, Error>> + Send + use<K> {
        let state = Arc::clone(&self.state);
        let entry = state.tokens.get(key, Instant::now());
        let key = key.clone();
        async move {
            let entry = match entry? {
                Some(entry) => entry,
                None => state.tokens.wait(&key).await?,
            };
            entry.layer.token().await
        }
    }

    /// Forgets `key`'s current token if it is `token` (see
    /// [`AuthLayer::invalidate`](crate::AuthLayer::invalidate)); `true` if it was forgotten.
    pub fn invalidate(&self, key: &K, token: &Token) -> bool {
        self.state
            .tokens
            .peek(key)
            .is_some_and(|entry| entry.layer.invalidate(token))
    }

    /// Revokes `key`'s token as [`AuthLayer::revoke`](crate::AuthLayer::revoke) does, and
    /// forgets the key: its next request fetches a new token. Other keys keep theirs. A key the
    /// layer does not hold (dropped while idle, evicted, or never used by this process) is
    /// revoked all the same, through a layer made for the call: its source revokes what it
    /// holds, and in a fleet the key's token is deleted from Redis.
    ///
    /// # Errors
    ///
    /// As [`AuthLayer::revoke`](crate::AuthLayer::revoke); and the error of the key's source
    /// function or settings, for a key the layer does not hold.
    pub async fn revoke(&self, key: &K) -> Result<(), Error> {
        let layer = match self.state.tokens.remove(key) {
            Some(entry) => entry.layer.clone(),
            None => self.state.tokens.make(key)?,
        };
        layer.revoke().await
    }

    /// What `key`'s layer has done so far, if the layer holds the key.
    pub fn stats(&self, key: &K) -> Option<Stats> {
        self.state.tokens.peek(key).map(|entry| entry.layer.stats())
    }

    /// How many keys the layer holds now.
    pub fn keys(&self) -> usize {
        self.state.tokens.len()
    }
}

impl<K> Clone for KeyedAuthLayer<K> {
    fn clone(&self) -> Self {
        KeyedAuthLayer {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S, K> Layer<S> for KeyedAuthLayer<K> {
    type Service = KeyedAuthService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedAuthService::new(inner, Arc::clone(&self.state))
    }
}

impl<K: Eq + Hash> fmt::Debug for KeyedAuthLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.state, f)
    }
}

impl<K: Eq + Hash> fmt::Debug for KeyedState<K> {
    /// No key: a key may be a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedAuthLayer")
            .field("tokens", &self.tokens)
            .field("pass_through", &self.pass_through)
            .finish_non_exhaustive()
    }
}
