//! A fleet of worker processes sharing one token through Redis, against the same fleet without
//! sharing: how many token requests each makes per token lifetime.
//!
//! With no arguments it starts a token endpoint (`client_credentials`, 2-second tokens) on
//! 127.0.0.1 and a Redis server (`redis-server` on the PATH, on a free port; or the one at
//! `REDIS_URL`), then runs 8 worker processes for 3 token lifetimes twice: each worker sends
//! requests from 10 tasks, once with `.distributed(RedisCache ...)` and once without.
//!
//! ```text
//! cargo run --example fleet --features redis
//! cargo run --example fleet --features redis -- --workers 16 --lifetimes 5 --lifetime-secs 3
//! ```
//!
//! Alone, each worker refreshes its token on its own (a 2-second token about twice a
//! lifetime: the refresh target is half its life, and the refresh starts a little before); a
//! fleet sharing through Redis makes about what one process alone makes. The table also shows
//! what sharing costs Redis: the commands it ran during the shared run (from `INFO
//! commandstats`, the commands inside the fleet's scripts included; with `REDIS_URL`, other
//! clients' too), per process and token lifetime. It exits non-zero if a
//! worker failed, or if the shared fleet made more than one and a half times what one worker
//! alone made, plus one.

use std::{
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, response::IntoResponse, routing::post};
use clap::Parser;
use tower_bearer::{AuthLayer, ClientCredentials, distributed::RedisCache};

/// Set in the worker processes: `<shared|alone> <token url> <redis url> <prefix> <run ms>`.
pub const WORKER: &str = "TOWER_BEARER_FLEET_EXAMPLE_WORKER";
/// Tasks asking for a token in each worker, and how often each asks.
const TASKS: usize = 10;
const EVERY: Duration = Duration::from_millis(20);

#[derive(Parser, Debug, Clone)]
#[command(about = "Token requests per lifetime for a fleet, with and without Redis")]
pub struct Settings {
    /// Worker processes.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Token lifetimes each run lasts.
    #[arg(long, default_value_t = 3)]
    pub lifetimes: u32,
    /// Seconds a token lives.
    #[arg(long, default_value_t = 2)]
    pub lifetime_secs: u64,
}

/// How one run's workers ended.
pub struct Run {
    pub failed_workers: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(WORKER) {
        return worker(&spec).await;
    }
    match fleet(Settings::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fleet: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both fleets and prints the table; `Ok(false)` if the shared fleet did not share.
pub async fn fleet(settings: Settings) -> Result<bool, Box<dyn std::error::Error>> {
    let (token_url, requests) = token_endpoint(settings.lifetime_secs).await?;
    let (redis_url, _redis) = redis().await?;
    let lifetime = Duration::from_secs(settings.lifetime_secs);
    let run_for = lifetime * settings.lifetimes;
    println!(
        "{} worker processes x {TASKS} tasks, tokens living {} s, each run {} s\n",
        settings.workers,
        settings.lifetime_secs,
        run_for.as_secs()
    );
    println!(
        "| fleet | token requests | per token lifetime | Redis commands per process per lifetime | failed workers |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut made_by = [0u64; 2];
    let redis_client = redis::Client::open(redis_url.as_str())?;
    for (i, mode) in ["shared", "alone"].into_iter().enumerate() {
        let before = requests.load(Relaxed);
        let commands_before = redis_commands(&redis_client).await?;
        let prefix = format!("fleet-example-{}", std::process::id());
        let spec = format!(
            "{mode} {token_url} {redis_url} {prefix} {}",
            run_for.as_millis()
        );
        let run = run_workers(settings.workers, &spec).await?;
        let made = requests.load(Relaxed) - before;
        let commands = redis_commands(&redis_client).await? - commands_before;
        made_by[i] = made;
        let per_lifetime = made as f64 / f64::from(settings.lifetimes);
        let (name, commands) = if mode == "shared" {
            let per_process =
                commands as f64 / settings.workers as f64 / f64::from(settings.lifetimes);
            ("sharing through Redis", format!("{per_process:.1}"))
        } else {
            ("each process alone", "none".to_owned())
        };
        println!(
            "| {name} | {made} | {per_lifetime:.1} | {commands} | {} |",
            run.failed_workers
        );
        if run.failed_workers > 0 {
            return Ok(false);
        }
    }
    let [shared, alone] = made_by;
    let one_worker = alone as f64 / settings.workers as f64;
    println!(
        "\nthe shared fleet made {:.1} times what one worker alone made ({one_worker:.1})",
        shared as f64 / one_worker
    );
    Ok(shared as f64 <= 1.5 * one_worker + 1.0)
}

/// The commands Redis has run so far, by `INFO commandstats` (less the `INFO` calls).
async fn redis_commands(client: &redis::Client) -> Result<u64, Box<dyn std::error::Error>> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await?;
    let calls = info
        .lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            let calls = line.split_once("calls=")?.1;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum();
    Ok(calls)
}

/// Starts `workers` processes of this program with `spec`, and waits for them.
async fn run_workers(workers: usize, spec: &str) -> Result<Run, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(workers);
    for _ in 0..workers {
        children.push(
            tokio::process::Command::new(&exe)
                .env(WORKER, spec)
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let mut failed_workers = 0;
    for mut child in children {
        if !child.wait().await?.success() {
            failed_workers += 1;
        }
    }
    Ok(Run { failed_workers })
}

/// One worker: `TASKS` tasks asking for a token every `EVERY` for the run's length.
pub async fn worker(spec: &str) -> ExitCode {
    let [mode, token_url, redis_url, prefix, run_ms] = spec.split(' ').collect::<Vec<_>>()[..]
    else {
        eprintln!("worker: bad spec");
        return ExitCode::FAILURE;
    };
    let source = ClientCredentials::builder(token_url)
        .client_id("fleet-example")
        .client_secret("example-secret")
        .build()
        .expect("valid settings");
    let mut builder = AuthLayer::builder(source);
    if mode == "shared" {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        // Not a real key: every worker of this example uses the same one.
        let cache = RedisCache::connect_lazily(client)
            .expect("a Redis client")
            .key_prefix(prefix)
            .encryption_key([7; 32]);
        builder = builder.distributed(cache);
    }
    let auth = builder.build().expect("valid settings");
    let until = Instant::now() + Duration::from_millis(run_ms.parse().unwrap_or(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let auth = auth.clone();
        tasks.spawn(async move {
            while Instant::now() < until {
                auth.token().await?;
                tokio::time::sleep(EVERY).await;
            }
            Ok::<_, tower_bearer::Error>(())
        });
    }
    for result in tasks.join_all().await {
        if let Err(err) = result {
            eprintln!("worker: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// A `client_credentials` token endpoint issuing tokens that live `lifetime_secs`, counting
/// the requests it gets.
async fn token_endpoint(
    lifetime_secs: u64,
) -> Result<(String, Arc<AtomicU64>), Box<dyn std::error::Error>> {
    async fn issue(State((count, lifetime)): State<(Arc<AtomicU64>, u64)>) -> impl IntoResponse {
        let n = count.fetch_add(1, Relaxed) + 1;
        (
            [("content-type", "application/json")],
            format!(
                r#"{{"access_token":"fleet-token-{n}","token_type":"Bearer","expires_in":{lifetime}}}"#
            ),
        )
    }
    let requests = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/token", post(issue))
        .with_state((Arc::clone(&requests), lifetime_secs));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/token", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, requests))
}

/// The Redis at `REDIS_URL`, or a `redis-server` started on a free port (stopped when the
/// returned child is dropped).
async fn redis() -> Result<(String, Option<tokio::process::Child>), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Ok((url, None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start redis-server (install it, or set REDIS_URL): {e}"))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..500 {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_ok()
            {
                return Ok((url, Some(child)));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("redis-server did not answer".into())
}
