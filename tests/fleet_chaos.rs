//! Faults one after another on a fleet of processes, while a valid token always exists: no
//! request fails (feature `redis`).
//!
//! Three worker processes share tokens through a Redis of this test's own (one of them without
//! the fleet's notices), each with four callers sending a request every 20 ms through its layer
//! (a hyper client) to an API that accepts only tokens the token endpoint issued, before they
//! expire, and not revoked. Tokens live 6 s. Meanwhile this process, which runs the token
//! endpoint and the API, injects in turn: an outage of the token endpoint and then Redis killed
//! (each from just after a token was issued, for 3.2 s: past the next refresh point, inside the
//! token's life), a slow token endpoint (1.5 s an answer), blips (three token requests answered
//! 503), and two revocations of every token issued so far, 4 s apart. Every request must get
//! its 200, and each fault must have met token requests.
//!
//! Needs `redis-server` on the PATH (`scripts/test` installs it); ignored by a plain
//! `cargo test`.

#![cfg(all(feature = "redis", feature = "oauth"))]

mod support;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::response::IntoResponse;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use support::{
    Recorded, StandInEndpoint, delayed,
    fleet::{KEY, free_port, layer, start_redis, until_redis_answers},
    processes::{reported, reported_number, run_workers, unix_ms, until_unix_ms},
    token_json,
    upload::{Protocol, client},
};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::distributed::RedisCache;

/// Set in the worker processes: the token URL, the API URL, the Redis URL, when to start (ms
/// since the Unix epoch) and for how long (ms), separated by spaces.
const CHAOS_WORKER: &str = "TOWER_BEARER_CHAOS_WORKER";
const WORKERS: usize = 3;
const TOKEN_LIFETIME_S: u64 = 6;
const RUN: Duration = Duration::from_secs(32);

/// One process: four callers, a request every 20 ms each, from the common start for the run;
/// prints how many requests were answered 200 and how many were not (and the first failure).
async fn worker(spec: &str) {
    let [token_url, api_url, redis, start_at, run_ms] = spec.split(' ').collect::<Vec<_>>()[..]
    else {
        panic!("token url, API url, Redis url, start and run: {spec}");
    };
    // The first worker to start does not listen for the fleet's notices (a Redis that allows
    // no SUBSCRIBE): it meets every revocation with a 401 of its own.
    let redis_client = redis::Client::open(redis).unwrap();
    let mut connection = redis::aio::ConnectionManager::new(redis_client.clone())
        .await
        .unwrap();
    let index: i64 = redis::cmd("INCR")
        .arg("chaos:workers")
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut cache = RedisCache::new(connection)
        .key_prefix("chaos")
        .encryption_key(KEY)
        .call_timeout(Duration::from_millis(200))
        .lease(Duration::from_secs(3));
    if index > 1 {
        cache = cache.notices(redis_client);
    }
    let auth = layer(token_url, "chaos", cache);
    let service = ServiceBuilder::new()
        .layer(auth.clone())
        .service(client::<Full<Bytes>>(Protocol::Http1));
    let start_at: u64 = start_at.parse().unwrap();
    until_unix_ms(start_at).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(run_ms.parse().unwrap());
    let first_failure = Arc::new(Mutex::new(None::<String>));
    let mut callers = JoinSet::new();
    for _ in 0..4 {
        let (service, api_url, first_failure) = (
            service.clone(),
            api_url.to_owned(),
            Arc::clone(&first_failure),
        );
        callers.spawn(async move {
            let (mut served, mut failed) = (0u64, 0u64);
            while tokio::time::Instant::now() < until {
                let request = http::Request::post(&api_url)
                    .body(Full::new(Bytes::from_static(b"order")))
                    .unwrap();
                let answer =
                    tokio::time::timeout(Duration::from_secs(10), service.clone().oneshot(request))
                        .await;
                match answer {
                    Ok(Ok(response)) if response.status() == StatusCode::OK => served += 1,
                    other => {
                        failed += 1;
                        let what = match other {
                            Ok(Ok(response)) => format!("status {}", response.status()),
                            Ok(Err(err)) => format!("error {err}"),
                            Err(_) => "no answer in 10 s".to_owned(),
                        };
                        first_failure.lock().unwrap().get_or_insert(what);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (served, failed)
        });
    }
    let (served, failed) = callers
        .join_all()
        .await
        .into_iter()
        .fold((0, 0), |(s, f), (a, b)| (s + a, f + b));
    let stats = auth.stats();
    println!(
        "chaos served={served} failed={failed} fetches={} fleet_tokens={} fleet_fallbacks={} \
         unauthorized={} retries={} first_failure={:?}",
        stats.fetches,
        stats.fleet_tokens,
        stats.fleet_fallbacks,
        stats.unauthorized,
        stats.retries,
        first_failure.lock().unwrap()
    );
}

/// What the token endpoint does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Working,
    /// Every request answered 503.
    Down,
    /// Every answer 1.5 s late.
    Slow,
    /// The next this many requests answered 503.
    Blips(usize),
}

/// The token endpoint and the API, sharing what was issued.
#[derive(Default)]
struct Issuer {
    mode: Mutex<Option<Endpoint>>,
    /// Tokens issued and not revoked, with when they expire.
    valid: Mutex<HashMap<String, Instant>>,
    revoked: Mutex<HashSet<String>>,
    issued: AtomicUsize,
    api_rejected: AtomicUsize,
    /// Token requests answered 503 by the outage, and answered late by the slow endpoint: each
    /// fault must have met a request, or the test proves nothing about it.
    answered_down: AtomicUsize,
    answered_slow: AtomicUsize,
}

impl Issuer {
    fn set(&self, mode: Endpoint) {
        *self.mode.lock().unwrap() = Some(mode);
    }

    fn token(&self) -> axum::response::Response {
        let mode = self.mode.lock().unwrap().unwrap_or(Endpoint::Working);
        let unavailable = || {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":"temporarily_unavailable"}"#,
            )
                .into_response()
        };
        match mode {
            Endpoint::Down => {
                self.answered_down.fetch_add(1, SeqCst);
                return unavailable();
            }
            Endpoint::Blips(left) if left > 0 => {
                self.set(Endpoint::Blips(left - 1));
                return unavailable();
            }
            _ => {}
        }
        let n = self.issued.fetch_add(1, SeqCst) + 1;
        let token = format!("chaos-{n}");
        self.valid.lock().unwrap().insert(
            token.clone(),
            Instant::now() + Duration::from_secs(TOKEN_LIFETIME_S),
        );
        let answer = token_json(&token, TOKEN_LIFETIME_S);
        match mode {
            Endpoint::Slow => {
                self.answered_slow.fetch_add(1, SeqCst);
                delayed(answer, Duration::from_millis(1_500))
            }
            _ => answer,
        }
    }

    fn api(&self, request: &Recorded) -> axum::response::Response {
        let token = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let valid = !self.revoked.lock().unwrap().contains(token)
            && self
                .valid
                .lock()
                .unwrap()
                .get(token)
                .is_some_and(|expires| Instant::now() < *expires);
        if valid {
            StatusCode::OK.into_response()
        } else {
            self.api_rejected.fetch_add(1, SeqCst);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
            )
                .into_response()
        }
    }

    /// Waits (10 s at most) for the next token this endpoint issues: a fault that starts then
    /// lasts past the next refresh point (2.4 to 3 s after a fetch, for 6-second tokens).
    async fn next_token(&self) {
        let before = self.issued.load(SeqCst);
        let issued = async {
            while self.issued.load(SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), issued)
            .await
            .expect("a token issued within 10 s");
    }

    /// Revokes every token issued so far.
    fn revoke_all(&self) {
        let issued: Vec<String> = self.valid.lock().unwrap().keys().cloned().collect();
        self.revoked.lock().unwrap().extend(issued);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: run scripts/test"]
async fn a_fleet_through_faults_one_after_another_fails_no_request() {
    if let Ok(spec) = std::env::var(CHAOS_WORKER) {
        return worker(&spec).await;
    }
    let issuer = Arc::new(Issuer::default());
    let token_endpoint = StandInEndpoint::start({
        let issuer = Arc::clone(&issuer);
        move |_| issuer.token()
    })
    .await;
    let api = StandInEndpoint::start({
        let issuer = Arc::clone(&issuer);
        move |request| issuer.api(request)
    })
    .await;
    let port = free_port();
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let mut redis_server = start_redis(port);
    until_redis_answers(&redis_url).await;

    // The workers start 3 s from now, all at once.
    let start = Instant::now() + Duration::from_secs(3);
    let spec = format!(
        "{} {} {redis_url} {} {}",
        token_endpoint.url("/token"),
        api.url("/orders"),
        unix_ms() + 3_000,
        RUN.as_millis()
    );
    let workers = tokio::spawn(async move {
        run_workers(
            "a_fleet_through_faults_one_after_another_fails_no_request",
            WORKERS,
            CHAOS_WORKER,
            &spec,
        )
        .await
    });

    // Each fault starts just after a token was issued and lasts 3.2 s, past the next refresh
    // point (2.4 to 3 s after a fetch) but well inside the token's usable life (5.4 s): the
    // refresh meets the fault, and a valid token exists throughout.
    let at =
        |seconds: f64| tokio::time::sleep_until((start + Duration::from_secs_f64(seconds)).into());
    let fault = Duration::from_millis(3_200);
    at(2.5).await;
    issuer.next_token().await;
    issuer.set(Endpoint::Down);
    tokio::time::sleep(fault).await;
    issuer.set(Endpoint::Working);
    tokio::time::sleep(Duration::from_secs(1)).await;
    issuer.next_token().await;
    redis_server.start_kill().unwrap();
    redis_server.wait().await.unwrap();
    tokio::time::sleep(fault).await;
    let _redis_server = start_redis(port);
    until_redis_answers(&redis_url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    issuer.set(Endpoint::Slow);
    tokio::time::sleep(Duration::from_secs(4)).await;
    issuer.set(Endpoint::Blips(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    issuer.revoke_all();
    tokio::time::sleep(Duration::from_secs(4)).await;
    issuer.revoke_all();
    assert!(
        start.elapsed() + Duration::from_secs(2) < RUN,
        "the faults ended 2 s before the run did"
    );

    let outputs = workers.await.unwrap();
    let lines = reported(&outputs, "chaos ");
    eprintln!(
        "{} tokens issued, {} requests rejected by the API; workers: {lines:#?}",
        issuer.issued.load(SeqCst),
        issuer.api_rejected.load(SeqCst)
    );
    assert_eq!(lines.len(), WORKERS, "{lines:?}");
    let field = reported_number;
    for line in &lines {
        assert_eq!(field(line, "failed"), 0, "{line}");
        assert!(field(line, "served") > 1_000, "{line}");
    }
    // Both revocations reached the API, and were recovered from by a resend; the worker that
    // hears no notices met both with a 401 of its own, 4 s apart (a storm's damping, applied
    // to them, would have handed the second 401s to its callers).
    assert!(
        lines.iter().map(|l| field(l, "retries")).sum::<u64>() >= 2,
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| field(l, "unauthorized") >= 2),
        "{lines:?}"
    );
    // Refreshes kept up through the run, and sharing kept the fleet's token requests near one
    // per refresh (each process fetches for itself only while Redis is down).
    let issued = issuer.issued.load(SeqCst);
    assert!((5..=30).contains(&issued), "{issued} tokens issued");
    // Each fault met requests: the outage and the slow endpoint answered some, the blips were
    // all spent, and while Redis was gone processes fetched for themselves.
    assert!(
        issuer.answered_down.load(SeqCst) >= 1,
        "the outage met no request"
    );
    assert!(
        issuer.answered_slow.load(SeqCst) >= 1,
        "the slow endpoint met no request"
    );
    assert_eq!(
        *issuer.mode.lock().unwrap(),
        Some(Endpoint::Blips(0)),
        "blips left"
    );
    assert!(
        lines
            .iter()
            .map(|l| field(l, "fleet_fallbacks"))
            .sum::<u64>()
            >= 1,
        "no fetch went without Redis while it was gone: {lines:?}"
    );
}
