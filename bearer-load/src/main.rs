//! `bearer-load`: see `bearer-load --help` and the crate docs.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system's allocator: a load run allocates a little for each of
/// millions of requests on every core, where glibc's allocator costs more than the request's
/// own work (oha links jemalloc for the same reason).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = bearer_load::cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bearer-load: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(bearer_load::run(args)) {
        Ok(report) if report.failed == 0 => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!(
                "bearer-load: {} of {} requests failed",
                report.failed, report.requests
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bearer-load: {e}");
            ExitCode::from(3)
        }
    }
}
