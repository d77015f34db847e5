//! A fleet never hands a token to another identity, and a revoked token is gone for every
//! process (feature `redis`).
//!
//! The tests that talk to Redis need the server `scripts/test` starts (`TOWER_BEARER_REDIS`);
//! a plain `cargo test` skips them as ignored. Every test uses a key prefix of its own.

#![cfg(all(feature = "redis", feature = "oauth"))]

mod support;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use support::{
    Recorded, StandInEndpoint,
    fleet::{
        KEY, connection, endpoint, free_port, fresh_prefix, layer, redis_url, start_redis, until,
        until_listening, until_redis_answers,
    },
    gated, token_json,
};
use tower_bearer::{
    AuthLayer, ClientCredentials, Error, RefreshTokenGrant, RefreshTokenGrantBuilder, Token,
    distributed::{RedisCache, RedisStore},
    source::from_fn,
    store::{FileStore, MemoryStore, StoredToken, TokenStore},
};

/// A cache on the test Redis (connecting at its first use), listening for notices.
fn cache(prefix: &str) -> RedisCache {
    RedisCache::connect_lazily(redis::Client::open(redis_url()).unwrap())
        .unwrap()
        .key_prefix(prefix)
        .encryption_key(KEY)
}

/// A cache whose Redis is never reached: for what `build` decides alone.
fn unreached_cache() -> RedisCache {
    RedisCache::connect_lazily(redis::Client::open("redis://127.0.0.1:1/").unwrap())
        .unwrap()
        .encryption_key(KEY)
}

fn refresh_grant(token_url: &str, store: impl TokenStore) -> RefreshTokenGrant {
    RefreshTokenGrant::builder(token_url)
        .client_id("app")
        .client_secret("app-secret")
        .store(store)
        .build()
        .unwrap()
}

/// A source that cannot tell its tokens from another's (a closure; a refresh grant over a
/// memory or file store, which names no user) is refused by `distributed` unless the cache
/// names what the tokens are for; so is `max_token_uses`, whose budget each process would
/// spend whole. Sources that can tell (client credentials; a refresh grant over a `RedisStore`)
/// build as they are.
#[tokio::test]
async fn sources_that_cannot_tell_their_tokens_apart_are_refused_without_a_fleet_key() {
    let url = "http://127.0.0.1:1/token";
    let dir = tempfile::tempdir().unwrap();
    let closure = || from_fn(|| async { Ok(Token::new("t")) });
    let refused = [
        AuthLayer::builder(closure()).distributed(unreached_cache()),
        AuthLayer::builder(refresh_grant(url, MemoryStore::new())).distributed(unreached_cache()),
        AuthLayer::builder(refresh_grant(
            url,
            FileStore::new(dir.path().join("t.json")),
        ))
        .distributed(unreached_cache()),
    ];
    for builder in refused {
        let err = builder.build().unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("fleet_key")),
            "{err}"
        );
    }
    // Named by hand, they build.
    let built = AuthLayer::builder(closure())
        .distributed(unreached_cache().fleet_key("user:alice"))
        .build()
        .map(drop);
    assert!(built.is_ok(), "{built:?}");
    let built = AuthLayer::builder(refresh_grant(url, MemoryStore::new()))
        .distributed(unreached_cache().fleet_key("user:alice"))
        .build()
        .map(drop);
    assert!(built.is_ok(), "{built:?}");
    let err = AuthLayer::builder(closure())
        .distributed(unreached_cache().fleet_key(""))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");

    let client_credentials = || {
        ClientCredentials::builder(url)
            .client_id("c")
            .client_secret("s")
            .build()
            .unwrap()
    };
    let built = AuthLayer::builder(client_credentials())
        .distributed(unreached_cache())
        .build()
        .map(drop);
    assert!(built.is_ok(), "{built:?}");
    let lazy = redis::Client::open("redis://127.0.0.1:1/")
        .unwrap()
        .get_connection_manager_lazy(redis::aio::ConnectionManagerConfig::new())
        .unwrap();
    let redis_store = RedisStore::new(lazy, "app:user:alice").encryption_key(KEY);
    let built = AuthLayer::builder(refresh_grant(url, redis_store))
        .distributed(unreached_cache())
        .build()
        .map(drop);
    assert!(built.is_ok(), "{built:?}");

    let err = AuthLayer::builder(client_credentials())
        .max_token_uses(1)
        .distributed(unreached_cache())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("max_token_uses")),
        "{err}"
    );
}

/// A token endpoint that answers a refresh with `at-for-<the refresh token>`, an hour.
async fn per_user_endpoint() -> StandInEndpoint {
    StandInEndpoint::start(|request: &Recorded| {
        let refresh = request
            .form()
            .into_iter()
            .find(|(name, _)| name == "refresh_token")
            .map(|(_, value)| value)
            .unwrap_or_default();
        token_json(&format!("at-for-{refresh}"), 3600)
    })
    .await
}

/// Two users' refresh grants (each over a `RedisStore` key of its own) on one Redis and one
/// prefix: each layer gets its own user's token, never the other's, and a second process of
/// the same user takes that user's token from Redis. Closures named by hand with a fleet key
/// are kept apart the same way.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn two_users_on_one_prefix_never_get_each_others_token() {
    let prefix = fresh_prefix("users");
    let endpoint = per_user_endpoint().await;
    let redis = connection(&redis_url()).await;
    let user = |name: &str| {
        let store =
            RedisStore::new(redis.clone(), format!("{prefix}:store:{name}")).encryption_key(KEY);
        let grant = refresh_grant(&endpoint.url("/token"), store);
        AuthLayer::builder(grant)
            .distributed(cache(&prefix))
            .build()
            .unwrap()
    };
    for name in ["alice", "bob"] {
        RedisStore::new(redis.clone(), format!("{prefix}:store:{name}"))
            .encryption_key(KEY)
            .save(&StoredToken::new().with_refresh_token(format!("rt-{name}")))
            .await
            .unwrap();
    }
    let alice = user("alice").token().await.unwrap();
    let bob = user("bob").token().await.unwrap();
    assert_eq!(alice.access_token().secret(), "at-for-rt-alice");
    assert_eq!(bob.access_token().secret(), "at-for-rt-bob");
    let alice_again = user("alice");
    assert_eq!(
        alice_again.token().await.unwrap().access_token().secret(),
        "at-for-rt-alice"
    );
    assert_eq!(alice_again.stats().fleet_tokens, 1, "from Redis");
    assert_eq!(endpoint.recorded().len(), 2, "one refresh per user");

    // Closures, told apart by their fleet keys.
    let named = |key: &str| {
        let token = format!("closure-token-of-{key}");
        AuthLayer::builder(from_fn(move || {
            let token = token.clone();
            async move { Ok(Token::new(token).with_expires_in(Duration::from_secs(3600))) }
        }))
        .distributed(cache(&prefix).fleet_key(key))
        .build()
        .unwrap()
    };
    let carol = named("user:carol").token().await.unwrap();
    let dave = named("user:dave").token().await.unwrap();
    assert_eq!(carol.access_token().secret(), "closure-token-of-user:carol");
    assert_eq!(dave.access_token().secret(), "closure-token-of-user:dave");
}

/// Two processes of a fleet (listening for notices) hold the same token. One revokes it: the
/// revocation endpoint gets it, and once `revoke` returned no process hands it out again: the
/// revoking process's next token is a new one, the other process forgets the old one on the
/// notice and takes the new one from Redis, and a process started afterwards gets the new one
/// too. One new token request for the fleet.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_revoked_token_is_gone_for_every_process() {
    let prefix = fresh_prefix("revoke");
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let revocation = StandInEndpoint::start(|_| {
        use axum::response::IntoResponse;
        axum::http::StatusCode::OK.into_response()
    })
    .await;
    let process = || {
        let source = ClientCredentials::builder(endpoint.url("/token"))
            .client_id("api")
            .client_secret("secret")
            .revocation_url(revocation.url("/revoke"))
            .build()
            .unwrap();
        AuthLayer::builder(source)
            .distributed(cache(&prefix))
            .build()
            .unwrap()
    };
    let (revoking, other) = (process(), process());
    let old = revoking.token().await.unwrap();
    assert_eq!(
        other.token().await.unwrap().access_token(),
        old.access_token()
    );
    until_listening(&redis_url(), &prefix, 2).await;

    revoking.revoke().await.unwrap();
    let revoked: Vec<String> = revocation
        .recorded()
        .iter()
        .flat_map(|r| r.form())
        .filter(|(name, _)| name == "token")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(revoked, [old.access_token().secret()]);

    let new = revoking.token().await.unwrap();
    assert_ne!(
        new.access_token(),
        old.access_token(),
        "the revoked token came back"
    );
    until("the other process heard the revocation", || {
        other.stats().fleet_rejections == 1
    })
    .await;
    assert_eq!(
        other.token().await.unwrap().access_token(),
        new.access_token()
    );
    assert_eq!(
        process().token().await.unwrap().access_token(),
        new.access_token()
    );
    assert_eq!(issued.load(SeqCst), 2, "one new token for the fleet");
}

/// A revocation whose notice a process missed (its connection for notices was down, or the
/// notice was lost) is caught up when the process subscribes again: it reads the fleet's
/// revocation epoch, sees it moved past the token it holds, and forgets that token, without a
/// 401. (On a Redis of its own: the test revokes as the fleet's script does but sends no
/// notice, then cuts the connections for notices.)
#[tokio::test]
#[ignore = "needs redis-server: run scripts/test"]
async fn a_revocation_missed_while_not_listening_is_caught_up_on_resubscribing() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = start_redis(port);
    until_redis_answers(&url).await;
    let prefix = fresh_prefix("missed-revocation");
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let cache = RedisCache::connect_lazily(redis::Client::open(url.as_str()).unwrap())
        .unwrap()
        .key_prefix(&prefix)
        .encryption_key(KEY);
    let missing = layer(&endpoint.url("/token"), "api", cache);
    let old = missing.token().await.unwrap();
    until_listening(&url, &prefix, 1).await;

    // What the fleet's revocation does in Redis, with its notice lost.
    let mut admin = connection(&url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:token"))
        .query_async(&mut admin)
        .await
        .unwrap();
    let [token_key] = &keys[..] else {
        panic!("one token stored: {keys:?}");
    };
    let epoch_key = token_key.replace(":token", ":epoch");
    let (): () = redis::pipe()
        .del(token_key)
        .ignore()
        .incr(&epoch_key, 1)
        .ignore()
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        missing.token().await.unwrap().access_token(),
        old.access_token(),
        "nothing told the process yet"
    );

    // Its connection for notices goes; it subscribes again, and catches up.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    until("the process caught up with the revocation", || {
        missing.stats().fleet_rejections == 1
    })
    .await;
    let new = missing.token().await.unwrap();
    assert_ne!(new.access_token(), old.access_token(), "the revoked token");
    assert_eq!(missing.stats().unauthorized, 0);
    assert_eq!(issued.load(SeqCst), 2);
}

/// A process holds the fleet's lease and waits for the token endpoint when another process
/// revokes the fleet's token. What its fetch brings back was fetched before the revocation:
/// it is neither stored nor handed out; the fetch starts over and brings a token fetched
/// after, which every process then shares.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fetch_that_began_before_a_revocation_hands_out_nothing_it_brought() {
    let prefix = fresh_prefix("revoke-in-flight");
    // The first answer waits until the revocation is done.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let endpoint = StandInEndpoint::start({
        let (gate, issued) = (gate.clone(), issued.clone());
        move |_| {
            let n = issued.fetch_add(1, SeqCst) + 1;
            let answer = token_json(&format!("tok-{n}"), 3600);
            if n == 1 { gated(answer, &gate) } else { answer }
        }
    })
    .await;
    let process = || layer(&endpoint.url("/token"), "api", cache(&prefix));
    let (fetching, revoking) = (process(), process());
    let fetch = tokio::spawn({
        let fetching = fetching.clone();
        async move { fetching.token().await }
    });
    until("the lease holder asked the endpoint", || {
        endpoint.recorded().len() == 1
    })
    .await;
    revoking.revoke().await.unwrap();
    gate.add_permits(1);
    let token = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .expect("the fetch ended within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(token.access_token().secret(), "tok-2", "tok-1 came back");
    assert_eq!(
        revoking.token().await.unwrap().access_token().secret(),
        "tok-2"
    );
    assert_eq!(issued.load(SeqCst), 2);
}

/// A `RedisStore` whose loads can be held after they read (a process stalled with a refresh
/// token in hand), for the fencing test.
#[derive(Clone)]
struct Stalling {
    inner: RedisStore,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<tokio::sync::Notify>,
    resume: std::sync::Arc<tokio::sync::Notify>,
}

impl TokenStore for Stalling {
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        let loaded = self.inner.load().await;
        if self.armed.swap(false, SeqCst) {
            self.stalled.notify_one();
            self.resume.notified().await;
        }
        loaded
    }
    async fn save(&self, token: &StoredToken) -> Result<(), Error> {
        self.inner.save(token).await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.inner.clear().await
    }
    async fn lock(&self) -> Result<Option<tower_bearer::store::StoreLock>, Error> {
        self.inner.lock().await
    }
    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}

/// Two processes share a refresh grant through a `RedisStore`. One takes the store's lock,
/// reads the refresh token, and stalls past its lease (here: its lock is deleted, as its
/// expiry would); the other takes the lock and refreshes. When the first goes on, it proves it
/// still holds the lock before it sends, cannot, and sends nothing: each refresh token goes
/// out once. Its next fetch takes the lock again and uses the token the other bought.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_holder_that_lost_the_stores_lock_sends_nothing() {
    let prefix = fresh_prefix("fenced");
    let key = format!("{prefix}:refresh");
    let idp = support::StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let redis = connection(&redis_url()).await;
    let store = || RedisStore::new(redis.clone(), &key).encryption_key(KEY);
    store()
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();
    let stalling = Stalling {
        inner: store(),
        armed: std::sync::Arc::new(true.into()),
        stalled: Default::default(),
        resume: Default::default(),
    };
    let layer = |store: Box<dyn FnOnce(RefreshTokenGrantBuilder) -> RefreshTokenGrantBuilder>| {
        let builder = RefreshTokenGrant::builder(idp.url("/token"))
            .client_id("app")
            .client_secret("app-secret")
            .auth(tower_bearer::ClientAuth::Post);
        AuthLayer::builder(store(builder).build().unwrap())
            .fetch_attempts(1)
            .backoff(Duration::ZERO, Duration::ZERO)
            .build()
            .unwrap()
    };
    let stalled = layer(Box::new({
        let stalling = stalling.clone();
        move |b| b.store(stalling)
    }));
    let other = layer(Box::new(move |b| b.store(store())));

    let first = tokio::spawn({
        let stalled = stalled.clone();
        async move { stalled.token().await }
    });
    tokio::time::timeout(Duration::from_secs(10), stalling.stalled.notified())
        .await
        .expect("the grant read the store within 10 s");
    let mut admin = connection(&redis_url()).await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{key}:lock"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(other.token().await.unwrap().access_token().secret(), "at-1");
    stalling.resume.notify_one();
    let err = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the stalled fetch ended within 30 s")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store(_)) && err.to_string().contains("lost the lock"),
        "{err:?}"
    );
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"], "rt-0 sent twice");
    assert_eq!(idp.reuse_detected(), 0);
    // Its next fetch reads what the other saved, and uses that access token.
    assert_eq!(
        stalled.token().await.unwrap().access_token().secret(),
        "at-1"
    );
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0"]);
}

/// The `RedisStore` lock at the store level: a holder whose lease is gone (deleted here, as its
/// expiry would) cannot confirm it, and its save is refused by Redis, leaving what the new
/// holder saved; its late release leaves the new holder's lock alone.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_redis_store_lock_is_fenced() {
    let prefix = fresh_prefix("fence");
    let key = format!("{prefix}:refresh");
    let redis = connection(&redis_url()).await;
    let (a, b) = (
        RedisStore::new(redis.clone(), &key).encryption_key(KEY),
        RedisStore::new(redis.clone(), &key).encryption_key(KEY),
    );
    let held_by_a = a.lock().await.unwrap().unwrap();
    held_by_a.confirm().await.unwrap();
    a.save(&StoredToken::new().with_refresh_token("from-a"))
        .await
        .unwrap();
    let mut admin = connection(&redis_url()).await;
    let lock_key = format!("{key}:lock");
    let _: i64 = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut admin)
        .await
        .unwrap();
    let held_by_b = b.lock().await.unwrap().unwrap();
    b.save(&StoredToken::new().with_refresh_token("from-b"))
        .await
        .unwrap();

    assert!(
        held_by_a.confirm().await.is_err(),
        "a still thinks it holds it"
    );
    let err = a
        .save(&StoredToken::new().with_refresh_token("late-from-a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lost the lock"), "{err}");
    let stored = b.load().await.unwrap().unwrap();
    assert_eq!(stored.refresh_token().unwrap().secret(), "from-b");

    // Its release goes out in the background, on the stores' connection; the new holder's
    // lock must outlive it. The release task sends at its first poll, and what this test sends
    // on the same (multiplexed) connection afterwards reaches Redis after it.
    drop(held_by_a);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let _: String = redis::cmd("PING")
        .query_async(&mut redis.clone())
        .await
        .unwrap();
    held_by_b.confirm().await.unwrap();
    b.save(&StoredToken::new().with_refresh_token("again-from-b"))
        .await
        .unwrap();
}
