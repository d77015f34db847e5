//! What the fleet tests share: the Redis the test script started, fresh key prefixes, a token
//! endpoint that counts what it issues, and waits with a deadline.
#![cfg(feature = "redis")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use super::{StandInEndpoint, delayed, token_json};

/// The encryption key of every fleet in the tests.
pub const KEY: [u8; 32] = [42; 32];

/// A process of a fleet: a layer whose client credentials (`client_id`, secret
/// `fleet-secret`) share tokens through `cache`.
#[cfg(feature = "oauth")]
pub fn layer(
    token_url: &str,
    client_id: &str,
    cache: tower_bearer::distributed::RedisCache,
) -> tower_bearer::AuthLayer {
    let source = tower_bearer::ClientCredentials::builder(token_url)
        .client_id(client_id)
        .client_secret("fleet-secret")
        .build()
        .unwrap();
    tower_bearer::AuthLayer::builder(source)
        .distributed(cache)
        .build()
        .unwrap()
}

/// The URL of the Redis `scripts/test` started.
pub fn redis_url() -> String {
    std::env::var("TOWER_BEARER_REDIS")
        .expect("TOWER_BEARER_REDIS: run these tests with scripts/test")
}

/// A key prefix no other test (or earlier run) uses.
pub fn fresh_prefix(test: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("test-{test}-{tag}")
}

/// A token endpoint issuing `tok-1`, `tok-2`, ... (an hour each), `latency` late.
pub async fn endpoint(latency: Duration) -> (StandInEndpoint, Arc<AtomicUsize>) {
    endpoint_with(move |_| latency).await
}

/// The same, each answer as late as `latency(n)` says for the `n`th request.
pub async fn endpoint_with(
    latency: impl Fn(usize) -> Duration + Send + Sync + 'static,
) -> (StandInEndpoint, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    let endpoint = StandInEndpoint::start(move |_| {
        let n = counter.fetch_add(1, SeqCst) + 1;
        // Late without blocking the server's thread: the serving loop waits.
        delayed(token_json(&format!("tok-{n}"), 3600), latency(n))
    })
    .await;
    (endpoint, issued)
}

pub async fn connection(url: &str) -> redis::aio::ConnectionManager {
    redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap())
        .await
        .expect("Redis answers")
}

/// Waits until `done` holds, for 10 s at most.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `listeners` processes listen for the notices of the fleet under `prefix`
/// (asking Redis, which knows its subscribers: each node in `nodes`, which is the server's URL,
/// or the cluster's node URLs separated by commas).
pub async fn until_listening(nodes: &str, prefix: &str, listeners: usize) {
    let mut connections = Vec::new();
    for node in nodes.split(',') {
        connections.push(connection(node).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut subscribers = 0;
        for redis in &mut connections {
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(format!("{prefix}:*"))
                .query_async(redis)
                .await
                .unwrap();
            for channel in channels {
                let (_, count): (String, usize) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(redis)
                    .await
                    .unwrap();
                subscribers += count;
            }
        }
        if subscribers >= listeners {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{subscribers} listening"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Redis server of this test's own, on `port`, in memory only.
pub fn start_redis(port: u16) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server on the PATH (scripts/test needs it too)")
}

/// Waits until the Redis at `url` answers a `PING` (5 s at most).
pub async fn until_redis_answers(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        // Each try within its own deadline: something else on the port may never answer.
        let pong = tokio::time::timeout(Duration::from_millis(500), async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await;
        if let Ok(Ok(_)) = pong {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("Redis did not start");
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
