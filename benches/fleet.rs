//! Token requests per token lifetime for a fleet of processes, with and without sharing
//! through Redis: the run of `examples/fleet.rs`, as a benchmark.
//!
//! ```text
//! cargo bench --bench fleet --features redis            # 8 workers, 3 lifetimes of 2 s
//! cargo bench --bench fleet --features redis -- --test  # 2 workers, 1 lifetime (CI)
//! ```
//!
//! It needs `redis-server` on the PATH, or `REDIS_URL`. It exits non-zero if a worker failed
//! or the shared fleet did not share (see the example).

#[allow(dead_code)]
#[path = "../examples/fleet.rs"]
mod fleet;

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    if let Ok(spec) = std::env::var(fleet::WORKER) {
        return runtime.block_on(fleet::worker(&spec));
    }
    let quick = std::env::args().any(|arg| arg == "--test");
    let settings = fleet::Settings {
        workers: if quick { 2 } else { 8 },
        lifetimes: if quick { 1 } else { 3 },
        lifetime_secs: 2,
    };
    match runtime.block_on(fleet::fleet(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fleet: {err}");
            ExitCode::FAILURE
        }
    }
}
