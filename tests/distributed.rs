//! A fleet of processes sharing tokens through a real Redis (feature `redis`).
//!
//! These tests need the Redis server that `scripts/test` starts (its URL in
//! `TOWER_BEARER_REDIS`): a plain `cargo test` skips them as ignored. Every test uses a key
//! prefix of its own, so they can share that server.

#![cfg(all(feature = "redis", feature = "oauth"))]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use support::{
    LostAnswer, StandInIdp,
    fleet::{
        KEY, connection, endpoint, endpoint_with, free_port, fresh_prefix, layer, redis_url,
        start_redis, until, until_listening, until_redis_answers,
    },
    processes::{ask_and_reject, each_sent_once, run_workers},
};
use tokio::task::JoinSet;
use tower_bearer::{
    AuthLayer, ClientAuth, ClientCredentials, Error, RefreshTokenGrant,
    distributed::{RedisCache, RedisStore},
    store::{StoredToken, TokenStore},
};

/// Set in the child processes of `processes_on_a_cold_start_make_one_token_request`: the token
/// URL, the Redis URL and the key prefix, separated by spaces.
const WORKER: &str = "TOWER_BEARER_FLEET_WORKER";
const PROCESSES: usize = 8;
const CALLERS: usize = 100;
/// The lease of every fleet here: short, so that the test of a dead holder is short too.
const LEASE: Duration = Duration::from_secs(1);

/// One process of the fleet: `CALLERS` callers at once on a cold cache; prints the tokens they
/// got. It listens for the fleet's notices if the spec ends in `notices`, and reads Redis every
/// 20 ms while it waits (`polling`) otherwise.
async fn worker(spec: &str) {
    let [token_url, redis, prefix, mode] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("token url, Redis url, prefix and mode: {spec}");
    };
    let mut cache = RedisCache::new(connection(redis).await)
        .key_prefix(prefix)
        .encryption_key(KEY)
        .lease(LEASE);
    if mode == "notices" {
        cache = cache.notices(redis::Client::open(redis).unwrap());
    }
    let auth = layer(token_url, "fleet", cache);
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let token = auth.token();
        callers.spawn(async move { token.await.map(|t| t.access_token().secret().to_owned()) });
    }
    for token in callers.join_all().await {
        println!("token={}", token.expect("every caller gets a token"));
    }
}

/// 8 processes × 100 callers start together on a cold cache: the token endpoint sees one
/// request, and all 800 callers get its token. (Each answer takes 50 ms, so the processes
/// overlap: without the fleet's lease every process would fetch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn processes_on_a_cold_start_make_one_token_request() {
    if let Ok(spec) = std::env::var(WORKER) {
        return worker(&spec).await;
    }
    let (endpoint, issued) = endpoint(Duration::from_millis(50)).await;
    let spec = format!(
        "{} {} {} notices",
        endpoint.url("/token"),
        redis_url(),
        fresh_prefix("cold")
    );
    let outputs = run_workers(
        "processes_on_a_cold_start_make_one_token_request",
        PROCESSES,
        WORKER,
        &spec,
    )
    .await;
    let mut tokens = Vec::new();
    for output in outputs {
        let stdout = String::from_utf8_lossy(&output.stdout);
        tokens.extend(
            stdout
                .lines()
                // The harness may print the test's name on the same line as the first token.
                .filter_map(|line| line.split_once("token=").map(|(_, token)| token.to_owned())),
        );
    }
    assert_eq!(tokens.len(), PROCESSES * CALLERS);
    assert_eq!(issued.load(SeqCst), 1, "token requests fleet-wide");
    assert!(tokens.iter().all(|t| t == "tok-1"));
}

/// Two clients sharing one Redis and one prefix keep their own tokens; no value in Redis holds
/// a token in the clear.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn two_clients_on_one_prefix_never_get_each_others_token_and_redis_holds_no_raw_token() {
    let prefix = fresh_prefix("clients");
    let redis = connection(&redis_url()).await;
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let cache = || {
        RedisCache::new(redis.clone())
            .key_prefix(&prefix)
            .encryption_key(KEY)
    };
    let billing = layer(&endpoint.url("/token"), "billing", cache());
    let search = layer(&endpoint.url("/token"), "search", cache());
    let a = billing.token().await.unwrap();
    let b = search.token().await.unwrap();
    assert_ne!(a.access_token().secret(), b.access_token().secret());
    assert_eq!(issued.load(SeqCst), 2);
    // A second process of `billing` takes billing's token from Redis.
    let billing_again = layer(&endpoint.url("/token"), "billing", cache());
    let again = billing_again.token().await.unwrap();
    assert_eq!(again.access_token().secret(), a.access_token().secret());
    assert_eq!(issued.load(SeqCst), 2, "no third request");
    let stats = billing_again.stats();
    assert_eq!(
        (stats.fetches, stats.fleet_tokens),
        (1, 1),
        "its one fetch came from Redis"
    );
    assert_eq!(billing.stats().fleet_tokens, 0);

    let mut redis = redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert!(!key.contains("billing") && !key.contains("search") && !key.contains("secret"));
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let value = value.unwrap_or_default();
        for token in [&a, &b] {
            let raw = token.access_token().secret().as_bytes();
            assert!(
                !value.windows(raw.len()).any(|w| w == raw),
                "{key} holds a raw token"
            );
        }
    }
}

/// Redis is not there (nothing listens on its port): every fetch goes to the token endpoint,
/// after at most the call timeout, and no request fails.
#[tokio::test]
async fn without_redis_tokens_are_fetched_locally() {
    let port = free_port();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let cache = RedisCache::connect_lazily(client)
        .unwrap()
        .encryption_key(KEY)
        .call_timeout(Duration::from_millis(200));
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let auth = layer(&endpoint.url("/token"), "alone", cache);
    let token = tokio::time::timeout(Duration::from_secs(10), auth.token())
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(token.access_token().secret(), "tok-1");
    assert_eq!(issued.load(SeqCst), 1);
    assert_eq!(auth.stats().fleet_fallbacks, 1);
}

/// A cache without an encryption key (and without an explicit opt-in to plain text) is a
/// configuration error at `build`, before anything is fetched or stored.
#[tokio::test]
async fn a_cache_without_an_encryption_key_is_refused_at_build() {
    let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let cache = RedisCache::connect_lazily(client).unwrap();
    let source = ClientCredentials::builder("http://127.0.0.1:1/token")
        .client_id("c")
        .client_secret("s")
        .build()
        .unwrap();
    let err = AuthLayer::builder(source)
        .distributed(cache)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("encryption_key"), "{err}");
}

/// A token one process finds rejected (a 401, here `invalidate`) is not handed back from Redis:
/// that process fetches a new one for the fleet, and another process that then finds the old
/// token rejected takes the new one from Redis. One refetch for the fleet.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_rejected_token_is_refetched_once_for_the_fleet() {
    let prefix = fresh_prefix("rejected");
    let redis = connection(&redis_url()).await;
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let cache = || {
        RedisCache::new(redis.clone())
            .key_prefix(&prefix)
            .encryption_key(KEY)
    };
    let first = layer(&endpoint.url("/token"), "api", cache());
    let second = layer(&endpoint.url("/token"), "api", cache());
    let old = first.token().await.unwrap();
    assert_eq!(
        second.token().await.unwrap().access_token(),
        old.access_token()
    );
    assert_eq!(issued.load(SeqCst), 1);

    assert!(first.invalidate(&old));
    let new = first.token().await.unwrap();
    assert_ne!(
        new.access_token(),
        old.access_token(),
        "not the rejected token again"
    );
    assert!(second.invalidate(&old));
    assert_eq!(
        second.token().await.unwrap().access_token(),
        new.access_token()
    );
    assert_eq!(issued.load(SeqCst), 2, "one refetch for both");
}

/// A process of a fleet that listens for notices.
fn listening_process(token_url: &str, prefix: &str) -> AuthLayer {
    let cache = RedisCache::connect_lazily(redis::Client::open(redis_url()).unwrap())
        .unwrap()
        .key_prefix(prefix)
        .encryption_key(KEY);
    layer(token_url, "api", cache)
}

/// An API that answers 401 to the tokens in `revoked` and 200 to any other, recording the
/// token of each request.
#[derive(Clone, Default)]
struct RevokingApi {
    revoked: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RevokingApi {
    fn service(
        &self,
    ) -> impl tower::Service<
        http::Request<String>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone {
        let api = self.clone();
        tower::service_fn(move |request: http::Request<String>| {
            let token = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let status = if api.revoked.lock().unwrap().contains(&token) {
                http::StatusCode::UNAUTHORIZED
            } else {
                http::StatusCode::OK
            };
            api.seen.lock().unwrap().push(token);
            let response = http::Response::builder().status(status).body(String::new());
            std::future::ready(Ok(response.unwrap()))
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// One request through `auth` to `api`: its status.
async fn call(auth: &AuthLayer, api: &RevokingApi) -> http::StatusCode {
    use tower::{Layer, ServiceExt};
    let request = http::Request::post("http://127.0.0.1/orders")
        .body("{}".to_owned())
        .unwrap();
    auth.layer(api.service())
        .oneshot(request)
        .await
        .unwrap()
        .status()
}

/// The API revokes the fleet's token. The first process whose request gets the 401 deletes the
/// token from Redis (it is still the one stored) and tells the fleet; it fetches the next one
/// and resends. The other process forgets the revoked token on that notice: its next request
/// goes with the new token, without a 401 of its own. One token request for the fleet.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_revoked_token_costs_the_fleet_one_refetch_and_the_others_no_401() {
    let prefix = fresh_prefix("revoked");
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let processes = [
        listening_process(&endpoint.url("/token"), &prefix),
        listening_process(&endpoint.url("/token"), &prefix),
    ];
    one_refetch_for_a_revoked_token(&processes, &issued, &redis_url(), &prefix).await;
}

/// What `a_revoked_token_costs_the_fleet_one_refetch_and_the_others_no_401` checks, on the
/// `processes` of one fleet (fresh, under `prefix`, listening for notices on `nodes`): the first
/// one's request meets the revocation.
async fn one_refetch_for_a_revoked_token(
    processes: &[AuthLayer],
    issued: &AtomicUsize,
    nodes: &str,
    prefix: &str,
) {
    let api = RevokingApi::default();
    let (first, others) = processes.split_first().unwrap();
    for process in processes {
        assert_eq!(call(process, &api).await, http::StatusCode::OK);
    }
    assert!(api.seen().iter().all(|t| t == "tok-1"));
    assert_eq!(issued.load(SeqCst), 1, "one fetch for the fleet");
    until_listening(nodes, prefix, processes.len()).await;

    let from_fleet: Vec<u64> = others.iter().map(|o| o.stats().fleet_tokens).collect();
    api.revoked.lock().unwrap().insert("tok-1".to_owned());
    let before = api.seen().len();
    assert_eq!(call(first, &api).await, http::StatusCode::OK, "resent");
    assert_eq!(api.seen()[before..], ["tok-1", "tok-2"]);
    for (other, from_fleet) in others.iter().zip(from_fleet) {
        until("the other processes forgot the revoked token", || {
            other.stats().fleet_rejections == 1
        })
        .await;
        assert_eq!(call(other, &api).await, http::StatusCode::OK);
        assert_eq!(
            api.seen().last().unwrap(),
            "tok-2",
            "no request with the revoked token"
        );
        let stats = other.stats();
        assert_eq!(stats.unauthorized, 0);
        assert_eq!(stats.fleet_tokens, from_fleet + 1, "tok-2 from the fleet");
    }
    assert_eq!(api.seen().len(), before + 2 + others.len());
    assert_eq!(issued.load(SeqCst), 2, "one refetch for the fleet");
    let first = first.stats();
    assert_eq!(first.unauthorized, 1);
    assert_eq!(first.fleet_rejections, 0, "its own notice changes nothing");
}

/// The listener for notices runs on the runtime of the fetch that started it. When that runtime
/// shuts down the listener goes with it (Redis sees its subscription close), and the layer's
/// next fetch, on another runtime, starts it again. Dropping the layer stops it.
#[test]
#[ignore = "needs Redis: run scripts/test"]
fn after_its_runtime_shuts_down_the_next_fetch_listens_again() {
    let servers = tokio::runtime::Runtime::new().unwrap();
    let prefix = fresh_prefix("runtimes");
    let (endpoint, issued) = servers.block_on(endpoint(Duration::ZERO));
    let process = servers.block_on(async { listening_process(&endpoint.url("/token"), &prefix) });
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    let first = current_thread();
    let token = first.block_on(process.token()).unwrap();
    // A current-thread runtime runs its tasks only while it is driven.
    first.block_on(until_listening(&redis_url(), &prefix, 1));
    drop(first);
    servers.block_on(until_no_listener(&prefix));

    let second = current_thread();
    assert!(process.invalidate(&token));
    second.block_on(process.token()).unwrap();
    second.block_on(until_listening(&redis_url(), &prefix, 1));
    assert_eq!(issued.load(SeqCst), 2);

    // Dropping the layer stops its listener.
    drop(process);
    second.block_on(until_no_listener(&prefix));
}

/// Waits until no process listens for notices under `prefix`.
async fn until_no_listener(prefix: &str) {
    let mut redis = connection(&redis_url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if channels.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The commands the `distributed` module docs give a fleet's Redis user (`+get +set ...`), read
/// from those docs, so that the list tested is the list documented.
fn documented_fleet_commands() -> Vec<String> {
    let docs: String = include_str!("../src/distributed/mod.rs")
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join(" ");
    let (_, rest) = docs
        .split_once("ACL SETUSER")
        .expect("the docs give an ACL");
    let (acl, _) = rest.split_once('`').expect("the ACL ends with a backtick");
    let commands: Vec<String> = acl
        .split_whitespace()
        .filter(|rule| rule.starts_with('+'))
        .map(str::to_owned)
        .collect();
    assert!(
        commands.len() >= 5,
        "commands read from the docs: {commands:?}"
    );
    commands
}

/// A fleet whose Redis user may run only the commands the docs list, on its prefix only,
/// still fetches once, refetches a revoked token once, hears its notices and revokes its
/// token for every process; a shared refresh token store works with the same rights.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fleet_needs_only_the_redis_commands_its_docs_list() {
    let prefix = fresh_prefix("acl");
    let user = prefix.replace('-', "_");
    let mut admin = connection(&redis_url()).await;
    let mut rules = vec![
        "reset".to_owned(),
        "on".to_owned(),
        ">fleet-password".to_owned(),
        format!("~{prefix}:*"),
        format!("&{prefix}:*"),
    ];
    rules.extend(documented_fleet_commands());
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg(&rules)
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = redis_url().replacen("redis://", &format!("redis://{user}:fleet-password@"), 1);

    // The first fetch outlasts a third of the lease: the holder renews it.
    let (endpoint, issued) =
        endpoint_with(|n| Duration::from_millis(if n == 1 { 250 } else { 0 })).await;
    let process = || {
        let cache = RedisCache::connect_lazily(redis::Client::open(url.as_str()).unwrap())
            .unwrap()
            .key_prefix(&prefix)
            .encryption_key(KEY)
            .lease(Duration::from_millis(300));
        layer(&endpoint.url("/token"), "api", cache)
    };
    let processes = [process(), process()];
    // Together: one holds the lease (and renews it), the other waits for it.
    let (a, b) = tokio::join!(processes[0].token(), processes[1].token());
    assert_eq!(a.unwrap().access_token(), b.unwrap().access_token());
    let waits: u64 = processes.iter().map(|p| p.stats().fleet_lease_waits).sum();
    assert_eq!(waits, 1);
    one_refetch_for_a_revoked_token(&processes, &issued, &redis_url(), &prefix).await;
    // A revocation for the whole fleet (its scripts `DEL`, `INCR` and `PUBLISH`).
    processes[0].revoke().await.unwrap();
    for process in &processes {
        assert_eq!(
            process.stats().fleet_redis_errors,
            0,
            "every command allowed"
        );
    }

    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    let key = format!("{prefix}:refresh");
    let store = RedisStore::new(connection(&url).await, &key).encryption_key(KEY);
    store
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();
    let grant = RefreshTokenGrant::builder(idp.url("/token"))
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .store(store)
        .build()
        .unwrap();
    ask_and_reject(&AuthLayer::new(grant), 2).await;
    assert_eq!(idp.refresh_tokens_sent(), ["rt-0", "rt-1"]);
}

/// A process whose fetch finds another process holding the lease waits for that process's
/// notice, and takes the token it stored. The notice names the token by its fingerprint only.
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_process_waiting_on_the_lease_holder_takes_the_token_its_notice_announces() {
    let prefix = fresh_prefix("notice");
    // The first token at once; the second after a while, so that the other process waits.
    let (endpoint, issued) = endpoint_with(|n| {
        if n == 2 {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        }
    })
    .await;
    let holder = listening_process(&endpoint.url("/token"), &prefix);
    let waiter = listening_process(&endpoint.url("/token"), &prefix);
    let old = holder.token().await.unwrap();
    waiter.token().await.unwrap();
    until_listening(&redis_url(), &prefix, 2).await;
    let mut listener = redis::Client::open(redis_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.psubscribe(format!("{prefix}:*")).await.unwrap();

    assert!(holder.invalidate(&old));
    let fetching = tokio::spawn({
        let holder = holder.clone();
        async move { holder.token().await }
    });
    let mut redis = connection(&redis_url()).await;
    until_lease_taken(&mut redis, &prefix).await;
    let token = waiter.token().await.unwrap();
    assert_eq!(token.access_token().secret(), "tok-2");
    assert_eq!(
        fetching.await.unwrap().unwrap().access_token(),
        token.access_token()
    );
    assert_eq!(issued.load(SeqCst), 2);
    let stats = waiter.stats();
    assert_eq!(stats.fleet_lease_waits, 1);
    assert_eq!(
        stats.fleet_rejections, 1,
        "it had forgotten tok-1 on its notice"
    );
    assert_eq!(stats.fleet_notices, 2, "the rejection, then the new token");

    let mut messages = listener.on_message();
    for expected in ["rejected ", "stored "] {
        use futures_core::Stream;
        let message = std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx))
            .await
            .unwrap();
        let payload = message.get_payload_bytes();
        assert!(payload.starts_with(expected.as_bytes()), "{payload:?}");
        assert_eq!(payload.len(), expected.len() + 16, "a fingerprint only");
        assert!(!payload.windows(5).any(|w| w == b"tok-2" || w == b"tok-1"));
    }
}

async fn until_lease_taken(redis: &mut redis::aio::ConnectionManager, prefix: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leases: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*:lease"))
            .query_async(redis)
            .await
            .unwrap();
        if !leases.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no lease taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The process fetching for the fleet is killed (SIGKILL) in the middle of its token request:
/// another process, waiting on its lease, takes over once the lease runs out (it is no longer
/// renewed) and gets a token; no caller fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn a_lease_holder_killed_mid_fetch_costs_at_most_the_lease() {
    if let Ok(spec) = std::env::var(WORKER) {
        return worker(&spec).await;
    }
    // The first request (the doomed holder's) hangs for long; the next one answers at once.
    let (endpoint, issued) = endpoint_with(|n| {
        if n == 1 {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        }
    })
    .await;
    let prefix = fresh_prefix("killed");
    let spec = format!(
        "{} {} {prefix} polling",
        endpoint.url("/token"),
        redis_url()
    );
    let mut holder = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_lease_holder_killed_mid_fetch_costs_at_most_the_lease",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(WORKER, &spec)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until it holds the lease and has sent its request, then kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while issued.load(SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never fetched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.start_kill().unwrap();
    let killed_at = std::time::Instant::now();
    holder.wait().await.unwrap();

    // The dead holder's lease runs out within the lease (it is renewed to at most that).
    let mut redis = connection(&redis_url()).await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*:lease"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(leases.len() <= 1, "{leases:?}");
    // (None: it ran out already, on a busy machine.)
    for lease in &leases {
        let left: i64 = redis::cmd("PTTL")
            .arg(lease)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            left <= i64::try_from(LEASE.as_millis()).unwrap(),
            "the lease has {left} ms left"
        );
    }
    let cache = RedisCache::new(redis)
        .key_prefix(&prefix)
        .encryption_key(KEY)
        .lease(LEASE);
    let survivor = layer(&endpoint.url("/token"), "fleet", cache);
    let token = survivor.token().await.expect("the survivor gets a token");
    let waited = killed_at.elapsed();
    assert_eq!(token.access_token().secret(), "tok-2");
    assert_eq!(issued.load(SeqCst), 2);
    assert_eq!(
        survivor.stats().fleet_lease_waits,
        1,
        "it waited for the dead holder's lease"
    );
    // From the kill, at most the lease (1 s), with room for a busy machine; waiting on the dead
    // holder's fetch instead would take its 3 s, or the fetch timeout.
    assert!(
        waited < LEASE + Duration::from_millis(1_900),
        "waited {waited:?}"
    );
}

/// Redis stops in the middle of a run and comes back: while it is gone every fetch goes to the
/// token endpoint and no call fails; once it is back the processes share tokens again, and
/// listen for notices again, by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn redis_stopped_and_restarted_fails_no_call_and_sharing_resumes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut server = start_redis(port);
    until_redis_answers(&url).await;
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let process = || {
        let cache = RedisCache::connect_lazily(redis::Client::open(url.as_str()).unwrap())
            .unwrap()
            .key_prefix("restart")
            .encryption_key(KEY)
            .call_timeout(Duration::from_millis(200));
        layer(&endpoint.url("/token"), "fleet", cache)
    };
    let (first, second) = (process(), process());
    let shared = first.token().await.unwrap();
    assert_eq!(
        second.token().await.unwrap().access_token(),
        shared.access_token()
    );
    assert_eq!(issued.load(SeqCst), 1);

    server.start_kill().unwrap();
    server.wait().await.unwrap();
    // A cached token goes out without Redis: no Redis call per request.
    for _ in 0..100 {
        assert_eq!(
            first.token().await.unwrap().access_token(),
            shared.access_token()
        );
    }
    assert_eq!(first.stats().fleet_fallbacks, 0);
    assert_eq!(issued.load(SeqCst), 1);
    let mut last = shared;
    for round in 0..3 {
        assert!(first.invalidate(&last));
        let started = std::time::Instant::now();
        last = first
            .token()
            .await
            .unwrap_or_else(|err| panic!("round {round} without Redis: {err}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(issued.load(SeqCst), 4, "each fetch went to the endpoint");
    assert_eq!(first.stats().fleet_fallbacks, 3);

    let _server = start_redis(port);
    until_redis_answers(&url).await;
    // The connection managers reconnect on their own; a fetch meanwhile goes to the endpoint.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let third = process();
        let before = issued.load(SeqCst);
        let a = first.token().await.unwrap();
        assert!(first.invalidate(&a));
        let a = first.token().await.unwrap();
        let b = third.token().await.unwrap();
        if a.access_token() == b.access_token() && issued.load(SeqCst) == before + 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sharing never resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The listeners for notices connect again by themselves too.
    until_listening(&url, "restart", 2).await;
    assert!(first.stats().fleet_redis_errors >= 3, "errors are counted");
}

/// Set in the child processes of `processes_sharing_a_redis_store_send_each_refresh_token_once`:
/// the token URL, the Redis URL and the store's key, separated by spaces.
const GRANT_WORKER: &str = "TOWER_BEARER_FLEET_GRANT_WORKER";
const GRANT_PROCESSES: usize = 4;
const GRANT_ROUNDS: usize = 8;

async fn grant_worker(spec: &str) {
    let [token_url, redis, key] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("token url, Redis url(s) and key: {spec}");
    };
    let grant = RefreshTokenGrant::builder(token_url)
        .client_id("app")
        .client_secret("app-secret")
        .auth(ClientAuth::Post)
        .store(redis_store(redis, key).await)
        .build()
        .unwrap();
    ask_and_reject(&AuthLayer::new(grant), GRANT_ROUNDS).await;
}

/// A sealed store under `key` on `redis`: a server's URL, or a cluster's node URLs separated
/// by commas.
async fn redis_store(redis: &str, key: &str) -> RedisStore {
    #[cfg(feature = "redis-cluster")]
    if redis.contains(',') {
        return RedisStore::cluster(cluster::connection(redis).await, key).encryption_key(KEY);
    }
    RedisStore::new(connection(redis).await, key).encryption_key(KEY)
}

/// Four processes refresh one grant through a `RedisStore`, against a server that revokes the
/// grant when a spent refresh token comes back (each answer 30 ms late, so refreshes overlap):
/// the store's Redis lock makes them refresh in turn with the refresh token saved last. No
/// refresh token is sent twice; the store ends with the one issued last, sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn processes_sharing_a_redis_store_send_each_refresh_token_once() {
    if let Ok(spec) = std::env::var(GRANT_WORKER) {
        return grant_worker(&spec).await;
    }
    refresh_tokens_sent_once(
        "processes_sharing_a_redis_store_send_each_refresh_token_once",
        &redis_url(),
    )
    .await;
}

/// What `processes_sharing_a_redis_store_send_each_refresh_token_once` checks, with the
/// workers of `test` on `redis` (a server's URL, or a cluster's node URLs).
async fn refresh_tokens_sent_once(test: &str, redis: &str) {
    let idp = StandInIdp::start().await;
    idp.add_refresh_token("rt-0");
    idp.lose_answers(
        &[LostAnswer::Late(Duration::from_millis(30)); GRANT_PROCESSES * GRANT_ROUNDS],
    );
    // A hash tag: on a cluster the key and its lock then share a node, as a user would set it.
    let key = format!("{{{}}}:refresh", fresh_prefix("grant"));
    let store = redis_store(redis, &key).await;
    store
        .save(&StoredToken::new().with_refresh_token("rt-0"))
        .await
        .unwrap();

    let spec = format!("{} {redis} {key}", idp.url("/token"));
    run_workers(test, GRANT_PROCESSES, GRANT_WORKER, &spec).await;
    assert_eq!(idp.reuse_detected(), 0, "a refresh token was sent twice");
    let sent = idp.refresh_tokens_sent();
    each_sent_once(&sent, GRANT_ROUNDS);
    let saved = store.load().await.unwrap().unwrap();
    assert_eq!(
        saved.refresh_token().unwrap().secret(),
        format!("rt-{}", sent.len())
    );
    let raw = raw_value(redis, &key).await;
    assert!(!raw.windows(3).any(|w| w == b"rt-"), "the store is sealed");
}

/// The value of `key` as Redis holds it.
async fn raw_value(redis: &str, key: &str) -> Vec<u8> {
    let get = redis::cmd("GET").arg(key).clone();
    #[cfg(feature = "redis-cluster")]
    if redis.contains(',') {
        return get
            .query_async(&mut cluster::connection(redis).await)
            .await
            .unwrap();
    }
    get.query_async(&mut connection(redis).await).await.unwrap()
}

/// During a key rotation, a process with the new key and the old one as previous reads tokens
/// sealed with the old key; a process with the new key alone does not (and fetches its own,
/// sealed with the new key).
#[tokio::test]
#[ignore = "needs Redis: run scripts/test"]
async fn a_rotated_key_still_reads_tokens_sealed_with_the_previous_one() {
    let prefix = fresh_prefix("rotation");
    let redis = connection(&redis_url()).await;
    let (endpoint, issued) = endpoint(Duration::ZERO).await;
    let cache = |key: [u8; 32]| {
        RedisCache::new(redis.clone())
            .key_prefix(&prefix)
            .encryption_key(key)
    };
    let old = layer(&endpoint.url("/token"), "rotation", cache([1; 32]));
    let sealed_with_old = old.token().await.unwrap();
    let rotating = layer(
        &endpoint.url("/token"),
        "rotation",
        cache([2; 32]).previous_encryption_key([1; 32]),
    );
    assert_eq!(
        rotating.token().await.unwrap().access_token(),
        sealed_with_old.access_token()
    );
    assert_eq!(issued.load(SeqCst), 1);
    let new_only = layer(&endpoint.url("/token"), "rotation", cache([2; 32]));
    assert_ne!(
        new_only.token().await.unwrap().access_token(),
        sealed_with_old.access_token()
    );
    assert_eq!(issued.load(SeqCst), 2);
}

/// The same fleet on a Redis Cluster of three primaries (feature `redis-cluster`; `scripts/test`
/// starts it and names its nodes in `TOWER_BEARER_REDIS_CLUSTER`).
#[cfg(feature = "redis-cluster")]
mod cluster {
    use super::*;

    pub fn urls() -> String {
        std::env::var("TOWER_BEARER_REDIS_CLUSTER")
            .expect("TOWER_BEARER_REDIS_CLUSTER: run these tests with scripts/test")
    }

    pub async fn connection(urls: &str) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>())
            .unwrap()
            .get_async_connection()
            .await
            .expect("the Redis Cluster answers")
    }

    /// Three processes, each on its own cluster connection and listening for notices on a
    /// different node, start together: one token request; then the API revokes the token: one
    /// refetch, and the processes told on the other nodes send no request with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Redis Cluster: run scripts/test"]
    async fn on_a_redis_cluster_the_fleet_fetches_once_and_refetches_a_revoked_token_once() {
        let prefix = fresh_prefix("cluster");
        let (endpoint, issued) = endpoint(Duration::from_millis(50)).await;
        let urls = urls();
        let mut processes = Vec::new();
        for node in urls.split(',') {
            let cache = RedisCache::cluster(connection(&urls).await)
                .notices(redis::Client::open(node).unwrap())
                .key_prefix(&prefix)
                .encryption_key(KEY)
                .lease(LEASE);
            processes.push(layer(&endpoint.url("/token"), "api", cache));
        }
        let mut callers = JoinSet::new();
        for process in &processes {
            for _ in 0..CALLERS {
                let token = process.token();
                callers.spawn(async move { token.await.unwrap() });
            }
        }
        let tokens = callers.join_all().await;
        assert!(tokens.iter().all(|t| t.access_token().secret() == "tok-1"));
        assert_eq!(issued.load(SeqCst), 1, "one token request on a cold start");

        one_refetch_for_a_revoked_token(&processes, &issued, &urls, &prefix).await;
    }

    /// `processes_sharing_a_redis_store_send_each_refresh_token_once`, its store on the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Redis Cluster: run scripts/test"]
    async fn processes_sharing_a_redis_store_on_a_cluster_send_each_refresh_token_once() {
        if let Ok(spec) = std::env::var(GRANT_WORKER) {
            return grant_worker(&spec).await;
        }
        refresh_tokens_sent_once(
            "cluster::processes_sharing_a_redis_store_on_a_cluster_send_each_refresh_token_once",
            &urls(),
        )
        .await;
    }
}
