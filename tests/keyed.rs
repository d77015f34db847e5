//! One layer, many tokens: `KeyedAuthLayer` keeps a token per key and never sends one key's
//! token with another key's request.
//!
//! The stand-in source issues `<key>:<n>` tokens and counts fetches per key; the stand-in API
//! takes the key from the same header the layer does (`x-tenant`) and records which token came
//! with which key, and whether that token had expired.

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use support::paused_runtime;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_bearer::{
    BoxError, Error, Token,
    keyed::{KeyedAuthLayer, KeyedAuthLayerBuilder, RequestInfo, TextKey},
    source::from_fn,
};

const TENANT: &str = "x-tenant";

/// The tokens each key was issued, with their expiry.
#[derive(Clone, Default)]
struct Issuer {
    issued: Arc<Mutex<HashMap<String, Instant>>>,
    fetches: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
}

impl Issuer {
    /// A keyed layer whose key is the `x-tenant` header, and whose key's source takes `latency`
    /// per fetch and issues tokens living `lifetime`.
    fn layer(&self, latency: Duration, lifetime: Duration) -> KeyedAuthLayerBuilder<String> {
        let issuer = self.clone();
        KeyedAuthLayer::builder(
            |request: &RequestInfo<'_>| request.header(TENANT).map(str::to_owned),
            move |key: &String| {
                let (issuer, key) = (issuer.clone(), key.clone());
                Ok(from_fn(move || {
                    let (issuer, key) = (issuer.clone(), key.clone());
                    async move {
                        tokio::time::sleep(latency).await;
                        Ok(issuer.issue(&key, lifetime))
                    }
                }))
            },
        )
    }

    fn issue(&self, key: &str, lifetime: Duration) -> Token {
        self.total.fetch_add(1, SeqCst);
        let mut fetches = self.fetches.lock().unwrap();
        let n = fetches.entry(key.to_owned()).or_default();
        *n += 1;
        let token = format!("{key}:{n}");
        self.issued
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + lifetime);
        Token::new(token).with_expires_in(lifetime)
    }

    fn fetches(&self, key: &str) -> usize {
        self.fetches.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// What the API saw: (the request's key, the token it carried, whether that token had expired).
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

/// An API that answers 200 to a token issued for the request's own key, 401 to a token in
/// `rejected`, and records every request.
fn api(
    issuer: &Issuer,
    seen: &Seen,
    rejected: Arc<Mutex<Vec<String>>>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let (issued, seen) = (Arc::clone(&issuer.issued), Arc::clone(seen));
    service_fn(move |request: Request<String>| {
        let (issued, seen, rejected) = (issued.clone(), seen.clone(), rejected.clone());
        async move {
            let key = request.headers()[TENANT].to_str().unwrap().to_owned();
            let token = request
                .headers()
                .get("authorization")
                .map_or(String::new(), |v| {
                    v.to_str().unwrap().trim_start_matches("Bearer ").to_owned()
                });
            let expired = issued
                .lock()
                .unwrap()
                .get(&token)
                .is_none_or(|expiry| Instant::now() >= *expiry);
            seen.lock().unwrap().push((key, token.clone(), expired));
            let status = if rejected.lock().unwrap().contains(&token) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(Response::builder().status(status).body(token).unwrap())
        }
    })
}

fn request(key: &str) -> Request<String> {
    Request::get("https://api.example.com/v1")
        .header(TENANT, key)
        .body(String::new())
        .unwrap()
}

/// Every request the API saw carried a live token issued for its own key.
fn assert_own_live_tokens(seen: &Seen) {
    for (key, token, expired) in seen.lock().unwrap().iter() {
        assert!(
            token.starts_with(&format!("{key}:")),
            "a request of {key} carried {token}"
        );
        assert!(!expired, "a request of {key} carried the expired {token}");
    }
}

#[test]
fn a_thousand_keys_with_a_hundred_callers_each_cost_one_fetch_per_key() {
    paused_runtime().block_on(async {
        let issuer = Issuer::default();
        let auth = issuer
            .layer(Duration::from_millis(50), Duration::from_secs(3600))
            .build()
            .unwrap();
        let seen = Seen::default();
        let client =
            ServiceBuilder::new()
                .layer(auth.clone())
                .service(api(&issuer, &seen, Arc::default()));
        let calls: Vec<_> = (0..100)
            .flat_map(|_| (0..1000).map(|key| format!("tenant-{key}")))
            .map(|key| tokio::spawn(client.clone().oneshot(request(&key))))
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(issuer.total.load(SeqCst), 1000, "one token request per key");
        assert!((0..1000).all(|key| issuer.fetches(&format!("tenant-{key}")) == 1));
        assert_eq!(seen.lock().unwrap().len(), 100_000);
        assert_own_live_tokens(&seen);
        assert_eq!(auth.stats(&"tenant-7".to_owned()).unwrap().fetches, 1);
    });
}

#[test]
fn two_tenants_never_share_a_token_through_rejections_and_expiry() {
    paused_runtime().block_on(async {
        let issuer = Issuer::default();
        let auth = issuer
            .layer(Duration::from_millis(5), Duration::from_secs(60))
            .build()
            .unwrap();
        let (seen, rejected) = (Seen::default(), Arc::new(Mutex::new(Vec::new())));
        let client = ServiceBuilder::new().layer(auth.clone()).service(api(
            &issuer,
            &seen,
            Arc::clone(&rejected),
        ));
        // The API revokes acme's first token: acme's request is resent with its second; globex
        // keeps its first.
        rejected.lock().unwrap().push("acme:1".to_owned());
        for round in 0..5 {
            for key in ["acme", "globex"] {
                let response = client.clone().oneshot(request(key)).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{key} in round {round}");
            }
            tokio::time::sleep(Duration::from_secs(40)).await;
        }
        assert_own_live_tokens(&seen);
        let carried = |key: &str| {
            let seen = seen.lock().unwrap();
            seen.iter()
                .filter(|s| s.0 == key)
                .map(|s| s.1.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            carried("acme")[..2],
            ["acme:1", "acme:2"],
            "the 401 refetched acme's"
        );
        assert_eq!(
            carried("globex")[0],
            "globex:1",
            "acme's 401 left globex's token alone"
        );
        assert!(issuer.fetches("globex") < issuer.fetches("acme"));
    });
}

#[tokio::test]
async fn a_request_without_a_key_is_refused_or_passed_through_but_never_gets_a_token() {
    let issuer = Issuer::default();
    let seen_by_inner = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = Arc::clone(&seen_by_inner);
        service_fn(move |request: Request<String>| {
            seen.lock()
                .unwrap()
                .push(request.headers().get("authorization").cloned());
            async { Ok::<_, Infallible>(Response::new(String::new())) }
        })
    };
    let no_key = || {
        Request::get("https://api.example.com/")
            .body(String::new())
            .unwrap()
    };

    let refusing = issuer
        .layer(Duration::ZERO, Duration::from_secs(60))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(refusing).service(inner.clone());
    let err: BoxError = client.oneshot(no_key()).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::NoKey)),
        "{err}"
    );
    assert!(
        seen_by_inner.lock().unwrap().is_empty(),
        "a refused request is not sent"
    );

    let passing = issuer
        .layer(Duration::ZERO, Duration::from_secs(60))
        .pass_through_without_key(true)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(passing).service(inner);
    client.oneshot(no_key()).await.unwrap();
    assert_eq!(
        *seen_by_inner.lock().unwrap(),
        [None],
        "sent, without a token"
    );
    assert_eq!(
        issuer.total.load(SeqCst),
        0,
        "nothing fetched for a request without a key"
    );
}

#[test]
fn eviction_under_pressure_sends_no_wrong_or_expired_token() {
    paused_runtime().block_on(async {
        let issuer = Issuer::default();
        let auth = issuer
            .layer(Duration::from_millis(20), Duration::from_secs(30))
            .capacity(8)
            .build()
            .unwrap();
        let seen = Seen::default();
        let client =
            ServiceBuilder::new()
                .layer(auth.clone())
                .service(api(&issuer, &seen, Arc::default()));
        // 200 keys through a layer that holds about 8, in waves, while tokens expire.
        for wave in 0..20 {
            let calls: Vec<_> = (0..200)
                .map(|key| format!("tenant-{}", (key * 7 + wave) % 200))
                .map(|key| tokio::spawn(client.clone().oneshot(request(&key))))
                .collect();
            for call in calls {
                assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
            }
            assert!(auth.keys() <= 16, "{} keys held, capacity 8", auth.keys());
            tokio::time::sleep(Duration::from_secs(7)).await;
        }
        assert_eq!(seen.lock().unwrap().len(), 4000);
        assert!(
            issuer.total.load(SeqCst) > 400,
            "keys were dropped, and fetched again"
        );
        assert_own_live_tokens(&seen);
    });
}

#[test]
fn idle_keys_are_dropped_and_a_dropped_key_fetches_again() {
    paused_runtime().block_on(async {
        let issuer = Issuer::default();
        let auth = issuer
            .layer(Duration::ZERO, Duration::from_secs(3600))
            .idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let client = ServiceBuilder::new().layer(auth.clone()).service(api(
            &issuer,
            &Seen::default(),
            Arc::default(),
        ));
        for key in ["a", "b", "c"] {
            client.clone().oneshot(request(key)).await.unwrap();
        }
        assert_eq!(auth.keys(), 3);
        // Only "a" is used for two minutes: "b" and "c" go idle and are dropped.
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.clone().oneshot(request("a")).await.unwrap();
        }
        assert_eq!(auth.keys(), 1, "the idle keys are dropped");
        assert!(auth.stats(&"b".to_owned()).is_none());
        client.clone().oneshot(request("b")).await.unwrap();
        assert_eq!(issuer.fetches("b"), 2, "a dropped key fetches again");
        assert_eq!(issuer.fetches("a"), 1, "a key in use keeps its token");
    });
}

/// A service that sends many requests keeps its last key's entry rather than looking the key
/// up each time: once the map has dropped that entry (the key revoked, dropped idle, or
/// evicted), the service looks the key up again and the key fetches anew; a key used only
/// through the kept entry is neither dropped as idle nor refetched.
#[test]
fn a_long_lived_service_never_sends_with_an_entry_the_map_dropped() {
    paused_runtime().block_on(async {
        let issuer = Issuer::default();
        let auth = issuer
            .layer(Duration::ZERO, Duration::from_secs(3600))
            .idle_timeout(Duration::from_secs(60))
            .capacity(8)
            .build()
            .unwrap();
        let seen = Seen::default();
        let client =
            ServiceBuilder::new()
                .layer(auth.clone())
                .service(api(&issuer, &seen, Arc::default()));
        let mut kept = client.clone();
        let mut send = async |key: &str| -> String {
            let response = kept
                .ready()
                .await
                .unwrap()
                .call(request(key))
                .await
                .unwrap();
            response.into_body()
        };

        // In use through the kept entry only, for two minutes: neither dropped nor refetched.
        assert_eq!(send("a").await, "a:1");
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(send("a").await, "a:1");
        }
        assert!(
            auth.stats(&"a".to_owned()).is_some(),
            "a key in use is held"
        );

        // Revoked: the kept entry is not used again.
        auth.revoke(&"a".to_owned()).await.unwrap();
        assert_eq!(
            send("a").await,
            "a:2",
            "a revoked key's token never comes back"
        );

        // Dropped idle while another service keeps "c" in use.
        assert_eq!(send("b").await, "b:1");
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.clone().oneshot(request("c")).await.unwrap();
        }
        assert!(auth.stats(&"b".to_owned()).is_none(), "b was dropped idle");
        assert_eq!(send("b").await, "b:2", "a key dropped idle fetches again");

        // Evicted: 200 keys used twice each (which the map weighs above "b"'s uses) through a
        // layer that holds about 8.
        for key in 0..200 {
            for _ in 0..2 {
                let request = request(&format!("flood-{key}"));
                client.clone().oneshot(request).await.unwrap();
            }
        }
        assert!(auth.stats(&"b".to_owned()).is_none(), "b was evicted");
        assert_eq!(send("b").await, "b:3", "an evicted key fetches again");
        assert_own_live_tokens(&seen);
    });
}

#[tokio::test]
async fn revoking_one_key_leaves_the_others_their_tokens() {
    let issuer = Issuer::default();
    let auth = issuer
        .layer(Duration::ZERO, Duration::from_secs(3600))
        .build()
        .unwrap();
    let (acme, globex) = ("acme".to_owned(), "globex".to_owned());
    assert_eq!(
        auth.token(&acme).await.unwrap().access_token().secret(),
        "acme:1"
    );
    assert_eq!(
        auth.token(&globex).await.unwrap().access_token().secret(),
        "globex:1"
    );
    auth.revoke(&acme).await.unwrap();
    assert_eq!(
        auth.token(&acme).await.unwrap().access_token().secret(),
        "acme:2"
    );
    assert_eq!(
        auth.token(&globex).await.unwrap().access_token().secret(),
        "globex:1"
    );
    assert_eq!(issuer.total.load(SeqCst), 3);
}

#[test]
fn a_keyed_layers_debug_shows_no_key() {
    let issuer = Issuer::default();
    let auth = issuer
        .layer(Duration::ZERO, Duration::from_secs(60))
        .build()
        .unwrap();
    paused_runtime().block_on(async {
        auth.token(&"secret-subject-token".to_owned())
            .await
            .unwrap();
    });
    let debug = format!("{auth:?}");
    assert!(debug.contains("keys: 1"), "{debug}");
    assert!(!debug.contains("secret-subject-token"), "{debug}");
}

#[test]
fn bad_keyed_settings_are_refused_at_build() {
    let issuer = Issuer::default();
    let build = |b: KeyedAuthLayerBuilder<String>| b.build().map(drop);
    let layer = || issuer.layer(Duration::ZERO, Duration::from_secs(60));
    assert!(matches!(build(layer().capacity(0)), Err(Error::Config(_))));
    assert!(matches!(
        build(layer().idle_timeout(Duration::from_millis(10))),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        build(layer().idle_timeout(Duration::from_secs(2 * 86_400))),
        Err(Error::Config(_))
    ));
    assert!(build(layer().idle_timeout(Duration::from_secs(86_400))).is_ok());
}

#[test]
fn the_built_in_key_functions_read_the_host_a_header_and_a_bearer_credential() {
    use tower_bearer::{
        SubjectToken,
        keyed::{by_bearer_credential, by_header, by_host},
    };
    let request = |headers: &[(&str, &str)]| {
        let mut builder = Request::get("https://billing.example.com:8443/v1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(String::new()).unwrap()
    };
    let key = |f: &dyn Fn(&RequestInfo<'_>) -> Option<TextKey>, r: &Request<String>| {
        f(&RequestInfo::of(r))
    };

    assert_eq!(
        key(&by_host(), &request(&[])).as_deref(),
        Some("billing.example.com")
    );
    let tenant = by_header(http::HeaderName::from_static("x-tenant"));
    assert_eq!(
        key(&tenant, &request(&[("x-tenant", "acme")])).as_deref(),
        Some("acme")
    );
    assert_eq!(key(&tenant, &request(&[])), None);
    assert_eq!(
        key(
            &tenant,
            &request(&[("x-tenant", "acme"), ("x-tenant", "globex")])
        ),
        None,
        "a key header sent twice names no key"
    );

    let bearer = by_bearer_credential();
    let credential = |headers: &[(&str, &str)]| bearer(&RequestInfo::of(&request(headers)));
    assert_eq!(
        credential(&[("authorization", "bearer user-token")]),
        Some(SubjectToken::new("user-token"))
    );
    assert_eq!(credential(&[("authorization", "Basic dXNlcjpwdw==")]), None);
    assert_eq!(credential(&[("authorization", "Bearer ")]), None);
    assert_eq!(credential(&[]), None);
}

/// Set in the worker processes of `a_fleet_of_processes_fetches_one_token_per_key`: the token
/// URL, the Redis URL and the key prefix, separated by spaces.
#[cfg(all(feature = "redis", feature = "oauth"))]
const FLEET_WORKER: &str = "TOWER_BEARER_KEYED_FLEET_WORKER";
#[cfg(all(feature = "redis", feature = "oauth"))]
const FLEET_PROCESSES: usize = 4;
#[cfg(all(feature = "redis", feature = "oauth"))]
const FLEET_KEYS: usize = 20;

/// A fleet of OS processes, each with its own keyed layer on one Redis, fetches one token per
/// key for the whole fleet: each key's source has an identity of its own (its audience), so
/// each key has its own entry in Redis. 4 processes x 20 keys x 10 callers at once; the token
/// endpoint answers in 50 ms, so the processes overlap.
#[cfg(all(feature = "redis", feature = "oauth"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: run scripts/test"]
async fn a_fleet_of_processes_fetches_one_token_per_key() {
    use support::{fleet, processes::run_workers};

    if let Ok(spec) = std::env::var(FLEET_WORKER) {
        return fleet_worker(&spec).await;
    }
    let (endpoint, issued) = fleet::endpoint(Duration::from_millis(50)).await;
    let spec = format!(
        "{} {} {}",
        endpoint.url("/token"),
        fleet::redis_url(),
        fleet::fresh_prefix("keyed")
    );
    let outputs = run_workers(
        "a_fleet_of_processes_fetches_one_token_per_key",
        FLEET_PROCESSES,
        FLEET_WORKER,
        &spec,
    )
    .await;
    let mut tokens: HashMap<String, Vec<String>> = HashMap::new();
    for output in outputs {
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            // The harness may print the test's name on the same line as the first token.
            let Some((_, seen)) = line.split_once("token=") else {
                continue;
            };
            let (audience, token) = seen.split_once(' ').unwrap();
            tokens
                .entry(audience.to_owned())
                .or_default()
                .push(token.to_owned());
        }
    }
    assert_eq!(tokens.len(), FLEET_KEYS);
    for (audience, seen) in &tokens {
        assert_eq!(seen.len(), FLEET_PROCESSES * 10, "{audience}'s callers");
        assert!(
            seen.iter().all(|token| *token == seen[0]),
            "the processes share {audience}'s token: {seen:?}"
        );
    }
    let distinct: std::collections::HashSet<_> = tokens.values().map(|seen| &seen[0]).collect();
    assert_eq!(distinct.len(), FLEET_KEYS, "each key has its own token");
    assert_eq!(
        issued.load(SeqCst),
        FLEET_KEYS,
        "one token request per key for the whole fleet"
    );
}

/// One process of the keyed fleet: 10 callers for each of 20 keys at once, on a cold cache;
/// prints each caller's key and token.
#[cfg(all(feature = "redis", feature = "oauth"))]
async fn fleet_worker(spec: &str) {
    use support::fleet;
    use tower_bearer::{ClientCredentials, distributed::RedisCache};

    let [token_url, redis, prefix] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("token url, Redis url and prefix: {spec}");
    };
    let cache = RedisCache::new(fleet::connection(redis).await)
        .key_prefix(prefix)
        .encryption_key(fleet::KEY);
    let token_url = token_url.to_owned();
    // One HTTP client for every key's source, as the keyed layer's docs ask: a source building
    // its own (TLS roots and all) holds up the requests waiting for its key.
    let http = reqwest::Client::new();
    let auth =
        KeyedAuthLayer::builder(tower_bearer::keyed::by_host(), move |audience: &TextKey| {
            ClientCredentials::builder(token_url.clone())
                .http_client(http.clone())
                .client_id("keyed-fleet")
                .client_secret("fleet-secret")
                .audience(audience.as_str())
                .build()
        })
        .layer_settings(move |layer| layer.distributed(cache.clone()))
        .build()
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for key in 0..FLEET_KEYS {
        for _ in 0..10 {
            let (auth, audience) = (
                auth.clone(),
                TextKey::from(format!("api-{key}.example.com")),
            );
            calls.spawn(async move {
                let token = auth.token(&audience).await.unwrap();
                (audience, token.access_token().secret().to_owned())
            });
        }
    }
    for (audience, token) in calls.join_all().await {
        println!("token={audience} {token}");
    }
}

/// A key the layer no longer holds (dropped idle, evicted, or never used here) is still revoked
/// at its source, and so in a fleet's Redis: its token cannot come back after `revoke`.
#[tokio::test]
async fn revoking_a_key_the_layer_does_not_hold_still_revokes_it_at_its_source() {
    #[derive(Clone)]
    struct Revocable {
        key: String,
        revoked: Arc<Mutex<Vec<String>>>,
    }
    impl tower_bearer::TokenSource for Revocable {
        async fn fetch(&self) -> Result<Token, Error> {
            Ok(Token::new(format!("{}:1", self.key)))
        }
        async fn revoke(&self, _current: Option<&Token>) -> Result<(), Error> {
            self.revoked.lock().unwrap().push(self.key.clone());
            Ok(())
        }
    }
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let sources = Arc::clone(&revoked);
    let auth = KeyedAuthLayer::builder(
        |request: &RequestInfo<'_>| request.header(TENANT).map(str::to_owned),
        move |key: &String| {
            Ok(Revocable {
                key: key.clone(),
                revoked: Arc::clone(&sources),
            })
        },
    )
    .build()
    .unwrap();
    auth.token(&"held".to_owned()).await.unwrap();
    auth.revoke(&"held".to_owned()).await.unwrap();
    auth.revoke(&"not-held".to_owned()).await.unwrap();
    assert_eq!(*revoked.lock().unwrap(), ["held", "not-held"]);
    assert_eq!(auth.keys(), 0, "revoking a key not held does not keep it");
}

/// The source function runs in a key's first request; another request for the same key waits
/// for it, and gives up after 5 s (its thread is blocked meanwhile) rather than hang on a
/// source function that does not return.
#[test]
fn a_request_waiting_for_its_keys_layer_gives_up_after_five_seconds() {
    use std::sync::mpsc;
    let (entered, entered_rx) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new((entered, released)));
    let auth = KeyedAuthLayer::builder(
        |request: &RequestInfo<'_>| request.header(TENANT).map(str::to_owned),
        move |key: &String| {
            let gate = gate.lock().unwrap();
            gate.0.send(()).unwrap();
            gate.1.recv().unwrap();
            let key = key.clone();
            Ok(from_fn(move || {
                let key = key.clone();
                async move { Ok(Token::new(key)) }
            }))
        },
    )
    .build()
    .unwrap();
    let maker = {
        let auth = auth.clone();
        std::thread::spawn(move || paused_runtime().block_on(auth.token(&"slow".to_owned())))
    };
    entered_rx.recv().unwrap();
    // The wait is a timer of the waiter's runtime: on paused time it ends at once, 5 s later.
    let (waited, after) = paused_runtime().block_on(async {
        let started = Instant::now();
        (auth.token(&"slow".to_owned()).await, started.elapsed())
    });
    assert!(
        matches!(waited, Err(Error::Timeout(t)) if t == Duration::from_secs(5)),
        "{waited:?}"
    );
    assert_eq!(after, Duration::from_secs(5));
    release.send(()).unwrap();
    assert_eq!(
        maker.join().unwrap().unwrap().access_token().secret(),
        "slow"
    );
}

/// Requests for a key whose layer another request is making (the user's source function, which
/// may block) wait in their futures, not on their threads: on a runtime of two threads, one held
/// by the maker, eight such requests leave the other thread free for the task that lets the
/// maker finish, and all nine get the key's token. Were the waits to block their threads, the
/// releasing task could not run before the waits gave up (5 s), and they would fail.
#[test]
fn requests_waiting_for_their_keys_layer_leave_their_threads_free() {
    use std::sync::mpsc;
    let (asked, asks) = mpsc::channel::<()>();
    let (entered, entered_rx) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let asked = Mutex::new(asked);
    let gate = Mutex::new((entered, released));
    let auth = KeyedAuthLayer::builder(
        move |request: &RequestInfo<'_>| {
            asked.lock().unwrap().send(()).unwrap();
            request.header(TENANT).map(str::to_owned)
        },
        move |key: &String| {
            let gate = gate.lock().unwrap();
            gate.0.send(()).unwrap();
            gate.1.recv().unwrap();
            let key = key.clone();
            Ok(from_fn(move || {
                let key = key.clone();
                async move { Ok(Token::new(format!("{key}:1"))) }
            }))
        },
    )
    .build()
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let issuer = Issuer::default();
    let seen = Seen::default();
    let client = ServiceBuilder::new()
        .layer(auth)
        .service(api(&issuer, &seen, Arc::default()));
    let maker = runtime.spawn(client.clone().oneshot(request("slow")));
    asks.recv().unwrap();
    entered_rx.recv().unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| runtime.spawn(client.clone().oneshot(request("slow"))))
        .collect();
    // Every waiter has asked for its key (blocked threads would stop them before).
    for _ in 0..8 {
        if asks.recv_timeout(Duration::from_secs(3)).is_err() {
            break;
        }
    }
    runtime.spawn(async move { release.send(()).unwrap() });
    runtime.block_on(async {
        assert_eq!(maker.await.unwrap().unwrap().into_body(), "slow:1");
        for waiter in waiters {
            let response = waiter
                .await
                .unwrap()
                .expect("the waiter gets the key's token");
            assert_eq!(response.into_body(), "slow:1");
        }
    });
}
