//! One token fetch per token lifetime for a whole fleet of processes, shared through Redis
//! (feature `redis`; Redis Cluster with feature `redis-cluster`).
//!
//! Every process keeps its own in-process cache, the request path included: no Redis call per
//! request. When a process needs a new token (none yet, its token reached its refresh point or
//! expired, or a 401 rejected it) its fetch goes to Redis first:
//!
//! - a token another process stored, if it is not the one being replaced, is used as if
//!   fetched here, with the life it has left (the same refresh point and expiry rules apply;
//!   each process picks its refresh point at random in the refresh window, so the first to
//!   reach it refreshes for all);
//! - otherwise one process takes a short lease and fetches from the token endpoint; it stores
//!   the token, sealed, with a TTL of its remaining life, and publishes a notice; the others
//!   wait for that notice (within the fetch timeout) and use the token. A lease holder that
//!   dies costs at most the lease time ([`RedisCache::lease`], 5 s by default): the others then
//!   take over.
//! - a token a response rejected (401, gRPC `UNAUTHENTICATED`, or
//!   [`AuthLayer::invalidate`](crate::AuthLayer::invalidate)) is deleted from Redis if it is
//!   still the one stored (a script compares its fingerprint), and a notice tells the other
//!   processes, which forget it at once: the fleet refetches once, and the others send no
//!   request with it.
//! - every Redis call has its own deadline ([`RedisCache::call_timeout`], 500 ms; the
//!   connection manager's reconnect backoff is never waited for), so a slow or absent Redis
//!   never stalls a fetch for long: the fetch then goes to the token endpoint, as without a
//!   fleet, and the next one tries Redis again.
//!
//! Notices travel by Redis pub/sub on a connection of their own, which needs a
//! [`redis::Client`]: [`RedisCache::connect_lazily`] has one, and [`RedisCache::notices`] adds
//! one to a cache made from a connection. Without notices the fleet still fetches once: a
//! waiting process reads Redis every 20 ms instead, and a process finds out that a token was
//! rejected or revoked at its own 401. A process whose connection for notices was down when
//! the fleet's token was revoked finds out when it subscribes again: it reads the fleet's
//! revocation epoch then, and forgets a token it read before it moved.
//!
//! # What it costs
//!
//! No Redis call per request. Per token refresh, each process makes one round trip (a script
//! that reads the token and, when it must fetch, takes the lease), and the one process that
//! fetches one more (a script that stores the token, publishes the notice and lets the lease
//! go). `examples/fleet.rs` (8 processes, 2-second tokens, each process refreshing about 2.5
//! times a lifetime) counts 11 to 12 Redis commands per process per token lifetime, those
//! inside scripts included: about four per refresh. With one-hour tokens that is a few
//! commands per process per hour. A waiting process reads once per notice (and every 250 ms in
//! case one is lost).
//!
//! # Redis Cluster and managed Redis
//!
//! - A token, its lease and its notice channel share one hash tag, so every command, pipeline
//!   and script of a fetch goes to the one node that owns their slot. Use
//!   [`RedisCache::cluster`] with a `redis::cluster_async::ClusterConnection`, and give
//!   [`RedisCache::notices`] a client of any node: a cluster sends what is published to every
//!   node. A [`RedisStore`] on a cluster is [`RedisStore::cluster`].
//! - A managed Redis behind one endpoint (a primary with replicas, a proxy) is
//!   [`RedisCache::new`] or [`RedisCache::connect_lazily`]; for TLS (`rediss://`) enable one of
//!   the `redis` crate's TLS features in your own `Cargo.toml`. The service must allow `EVAL`
//!   and `PUBLISH` (check your provider: some restrict scripting). Where `SUBSCRIBE` is not
//!   allowed, use [`RedisCache::new`] without [`notices`](RedisCache::notices): waiters then
//!   read every 20 ms.
//! - The fleet's Redis user needs only its keys and channels and nine commands:
//!   `ACL SETUSER billing on >password ~billing:* &billing:* +get +set +pttl +eval +publish
//!   +subscribe +del +pexpire +incr` for the prefix `billing` (`set`, `del`, `pexpire` and
//!   `incr` run inside the fleet's scripts).
//!
//! # Keys and values
//!
//! Tokens are keyed by a hash of what makes them differ, under [`RedisCache::key_prefix`], with
//! a Redis Cluster hash tag so that a token and its lease share a slot. No secret appears in a
//! key. What makes them differ is the source's [`TokenSource::identity`]:
//!
//! - [`ClientCredentials`](crate::ClientCredentials): the token endpoint, client, client
//!   authentication, scope and extra parameters, and the thumbprints of its keys (a DPoP-bound
//!   token is useless without its key, so processes share such tokens only if they share the
//!   key);
//! - [`RefreshTokenGrant`](crate::RefreshTokenGrant) (and the grant an
//!   [`AuthorizationCode`](crate::AuthorizationCode) exchange returns): the same, and the
//!   identity of its store, which names the user: a [`RedisStore`]'s key. Over a store that
//!   cannot name itself ([`MemoryStore`](crate::store::MemoryStore),
//!   [`FileStore`](crate::store::FileStore)) it has no identity;
//! - a source with no identity (a closure, a [`StaticToken`](crate::StaticToken), one of your
//!   own) needs a key named by hand, [`RedisCache::fleet_key`]: without one the layer is
//!   refused when it is built, rather than let two users' layers share one token.
//!
//! A fleet key, when set, and the identity, when there is one, go into the key together.
//! [`max_token_uses`](crate::AuthLayerBuilder::max_token_uses) is refused with a fleet: every
//! process would spend the whole use budget of the one token they share.
//!
//! Values are sealed with AES-256-GCM under [`RedisCache::encryption_key`] (with the key's id,
//! so a value sealed with another key is ignored, and the token key as associated data). To
//! rotate keys, give the old one to [`RedisCache::previous_encryption_key`] while the new one
//! rolls out. A
//! cache without a key is refused when the layer is built, unless
//! [`RedisCache::insecure_plaintext`] says otherwise.
//!
//! # Refresh tokens across a fleet
//!
//! A [`RefreshTokenGrant`](crate::RefreshTokenGrant) shared by several processes keeps its
//! state in a [`RedisStore`]: its lock (a lease in Redis) makes the processes refresh one at a
//! time, each with the refresh token saved last, so a refresh token is sent once fleet-wide and
//! a rotated one is never lost. (A [`FileStore`](crate::store::FileStore) does the same for
//! processes on one machine.)
//!
//! # Observability
//!
//! [`Stats`](crate::Stats) (and the `tower_bearer.fleet.*` metrics) count the fetches served
//! from Redis (`fleet_tokens`), those that waited for a lease holder (`fleet_lease_waits`), fell
//! back to the token endpoint (`fleet_fallbacks`), tokens forgotten on another process's notice
//! (`fleet_rejections`), notices heard (`fleet_notices`) and Redis errors (`fleet_redis_errors`).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_bearer::{AuthLayer, ClientCredentials, distributed::RedisCache};
//!
//! let source = ClientCredentials::builder("https://idp.example.com/oauth2/token")
//!     .client_id("billing")
//!     .client_secret(std::env::var("CLIENT_SECRET")?)
//!     .build()?;
//! let key: [u8; 32] = [7; 32]; // from your secret store, the same in every process
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
//! let auth = AuthLayer::builder(source)
//!     .distributed(
//!         RedisCache::new(conn)
//!             .notices(client) // or RedisCache::connect_lazily(client)?, which does both
//!             .key_prefix("billing")
//!             .encryption_key(key),
//!     )
//!     .build()?;
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```
//!
//! [`TokenSource::identity`]: crate::TokenSource::identity

use std::{fmt, time::Duration};

use redis::aio::ConnectionManager;

use crate::Error;

mod connection;
mod fleet;
mod key;
mod notices;
mod scripts;
mod sealed;
mod store;

pub(crate) use fleet::Fleet;
pub(crate) use key::FleetKeys;
pub(crate) use sealed::Sealing;
pub use store::RedisStore;

/// Default for [`RedisCache::lease`].
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default for [`RedisCache::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Default for [`RedisCache::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "tower-bearer";

/// Tokens shared by every process that uses the same Redis, prefix and key; give it to
/// [`AuthLayerBuilder::distributed`](crate::AuthLayerBuilder::distributed). See the
/// [module documentation](self).
#[derive(Clone)]
#[must_use]
pub struct RedisCache {
    connection: connection::RedisConnection,
    prefix: String,
    sealing: Option<Sealing>,
    lease: Duration,
    call_timeout: Duration,
    /// Where the listener for the fleet's notices connects, if anywhere.
    notices: Option<redis::Client>,
    /// What the tokens are for, named by hand.
    fleet_key: Option<String>,
}

impl RedisCache {
    /// A cache on `connection`, with the default prefix, lease and call timeout, and no
    /// encryption key yet (the layer refuses to build without one).
    ///
    /// A connection manager cannot listen for the fleet's notices: give
    /// [`notices`](Self::notices) a client for that, or use
    /// [`connect_lazily`](Self::connect_lazily), which does both.
    pub fn new(connection: ConnectionManager) -> Self {
        RedisCache::on(connection::RedisConnection::Server(connection))
    }

    /// The same on a Redis Cluster (feature `redis-cluster`). A token, its lease and its
    /// notices share one hash tag, so every command and script goes to the one node that owns
    /// their slot. For notices, give [`notices`](Self::notices) a client of any node: Redis
    /// Cluster sends what is published to every node.
    #[cfg(feature = "redis-cluster")]
    pub fn cluster(connection: redis::cluster_async::ClusterConnection) -> Self {
        RedisCache::on(connection::RedisConnection::Cluster(connection))
    }

    fn on(connection: connection::RedisConnection) -> Self {
        RedisCache {
            connection,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            sealing: None,
            lease: DEFAULT_LEASE,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            notices: None,
            fleet_key: None,
        }
    }

    /// A cache on `client` that connects at its first use, so that a process can start while
    /// Redis is down (its fetches go to the token endpoint until Redis answers). It listens for
    /// the fleet's notices on a connection of its own from `client`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the client's settings cannot make a connection manager.
    pub fn connect_lazily(client: redis::Client) -> Result<Self, Error> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_CALL_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_CALL_TIMEOUT));
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(|e| Error::config(format!("cannot use this Redis client: {e}")))?;
        Ok(RedisCache::new(connection).notices(client))
    }

    /// Listens for the fleet's notices (Redis pub/sub) on a connection of its own from
    /// `client`, which must reach the same Redis (on Redis Cluster, any node of it).
    ///
    /// With notices, a process waiting for another's fetch reads the token as soon as it is
    /// stored, and a token one process saw rejected is forgotten by all of them at once (one
    /// refetch for the fleet, no 401 each). Without them, a waiting process reads Redis every
    /// 20 ms, and each process finds out about a rejected token at its own 401. The listener
    /// starts with the first fetch, on that fetch's runtime, and stops when the layer is
    /// dropped; it connects again by itself after a failure, and if its runtime shuts down the
    /// layer's next fetch starts it again.
    pub fn notices(mut self, client: redis::Client) -> Self {
        self.notices = Some(client);
        self
    }

    /// The prefix of every key (default `tower-bearer`): processes share tokens only under the
    /// same prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Names what the tokens are for, for a source that cannot say it itself
    /// ([`TokenSource::identity`](crate::TokenSource::identity) is `None`: a closure, a
    /// [`RefreshTokenGrant`](crate::RefreshTokenGrant) over a store that is not a
    /// [`RedisStore`], a source of your own). Processes share a token only under the same
    /// Redis, prefix, fleet key and source identity, so give each user, tenant or client a key
    /// of its own: `fleet_key(format!("user:{user_id}"))`. A layer whose source cannot tell,
    /// and that has no fleet key, is refused when it is built. It is hashed into the Redis
    /// keys, so it may be anything but a secret.
    pub fn fleet_key(mut self, key: impl Into<String>) -> Self {
        self.fleet_key = Some(key.into());
        self
    }

    /// The AES-256-GCM key that seals the tokens stored in Redis; every process of the fleet
    /// needs the same one.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.sealing = Some(Sealing::with_key(&key));
        self
    }

    /// A key being rotated out: tokens sealed with it are still read, and new ones are sealed
    /// with the [`encryption_key`](Self::encryption_key). Roll a new key out as the current key
    /// everywhere with the old one as previous, then drop the previous one. Call it after
    /// `encryption_key`; with plain text it does nothing.
    pub fn previous_encryption_key(mut self, key: [u8; 32]) -> Self {
        if let Some(sealing) = self.sealing.take() {
            self.sealing = Some(sealing.clone().with_previous(&key).unwrap_or(sealing));
        }
        self
    }

    /// Stores tokens in Redis as they are, readable by anyone who can read Redis. Only for a
    /// Redis that holds nothing else and that nobody else can reach.
    pub fn insecure_plaintext(mut self) -> Self {
        self.sealing = Some(Sealing::Plaintext);
        self
    }

    /// How long a process may fetch for the fleet before another may take over (default 5 s);
    /// renewed while the fetch runs, within the layer's fetch timeout.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The longest any one Redis call may take before the fetch goes to the token endpoint
    /// instead (default 500 ms).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The fleet this cache makes for tokens of a source with `identity`, after checking the
    /// settings.
    pub(crate) fn into_fleet(self, identity: Option<&str>) -> Result<Fleet, Error> {
        if identity.is_none() && self.fleet_key.is_none() {
            return Err(Error::config(
                "this token source cannot tell its tokens from another source's (a closure, a \
                 RefreshTokenGrant over a store other than RedisStore, a source of your own), so \
                 the fleet could hand one user's token to another: name what the tokens are for \
                 with RedisCache::fleet_key (one per user, tenant or client)",
            ));
        }
        if self.fleet_key.as_deref() == Some("") {
            return Err(Error::config("a RedisCache fleet key must not be empty"));
        }
        let Some(sealing) = self.sealing.clone() else {
            return Err(Error::config(
                "a RedisCache needs an encryption_key (or insecure_plaintext())",
            ));
        };
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::config(
                "a RedisCache key prefix must not be empty, and must not contain braces",
            ));
        }
        if self.lease.is_zero() || self.call_timeout.is_zero() {
            return Err(Error::config(
                "a RedisCache lease and call timeout must be longer than zero",
            ));
        }
        if self.lease.max(self.call_timeout) > crate::layer::LONGEST_SETTING {
            return Err(Error::config(
                "a RedisCache lease and call timeout must be at most a year",
            ));
        }
        let keys = FleetKeys::new(&self.prefix, self.fleet_key.as_deref(), identity);
        Ok(Fleet::new(self, sealing, keys))
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("sealing", &self.sealing)
            .field("lease", &self.lease)
            .field("call_timeout", &self.call_timeout)
            .field("notices", &self.notices.is_some())
            .field("fleet_key", &self.fleet_key.is_some())
            .finish_non_exhaustive()
    }
}
