//! `bearer-load`: a load tool for OAuth-protected HTTP and gRPC APIs, built on tower-bearer's
//! [`AuthLayer`](tower_bearer::AuthLayer).
//!
//! Every request of a run goes through ONE layer, so all workers share one token cache: the
//! tool measures the API under load and, at the same time, what the token layer did (fetches,
//! callers that waited for a token, 401 resends).
//!
//! The binary is a thin wrapper around [`run`]; the modules are by concern:
//!
//! - [`cli`]: the command line (clap).
//! - [`source`]: the token source and the layer built from the flags.
//! - [`transport`]: the HTTP client (HTTP/1.1, h2c, HTTPS with rustls, h2 by ALPN).
//! - [`grpc`]: `grpc.health.v1.Health/Check` through a tonic `Channel` under the layer.
//! - [`outcome`]: what one request came to (a status, or an error of one kind); every target
//!   produces it and the load models record it, so neither depends on the other.
//! - [`load`]: the closed-loop and open (fixed-rate) load models.
//! - [`report`]: the summary, as one JSON object or (in `report::text`) as text.
//! - [`demo`]: the built-in token endpoint and API on 127.0.0.1.

#![deny(missing_docs)]

pub mod cli;
mod connection;
pub mod demo;
mod error;
pub mod grpc;
pub mod load;
pub mod outcome;
pub mod report;
pub mod source;
pub mod transport;

use std::{io::IsTerminal, sync::Arc, time::Duration};

use http::Uri;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use error::Error;

use crate::{
    cli::Args,
    load::{Model, Plan, Stop, Target},
    report::Report,
};

/// How long the demo runs unless `--duration` or `--requests` says otherwise.
pub const DEMO_DURATION: Duration = Duration::from_secs(3);
/// How long a run against a real API lasts unless `--duration` or `--requests` says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Runs what `args` asks for: starts the demo if there is no `--url` (or with `--demo`),
/// builds the layer and the client, applies the load, prints the summary (text, or JSON with
/// `--json`) to stdout, and returns the report. Request failures are counted in the report,
/// never returned as an error.
///
/// # Errors
///
/// Flags that cannot work together, unreadable files, a refused token source or TLS setting, a
/// demo server that could not start.
pub async fn run(args: Args) -> Result<Report, Error> {
    let demo = if args.is_demo() {
        if args.grpc {
            return Err(Error::Usage(
                "--grpc needs --url: the built-in demo serves HTTP only".into(),
            ));
        }
        Some(
            demo::Demo::start(demo::DemoOptions {
                tls: args.tls,
                token_lifetime: args.token_lifetime,
                ..demo::DemoOptions::default()
            })
            .await?,
        )
    } else {
        if args.tls {
            return Err(Error::Usage(
                "--tls applies to the built-in demo (--demo) only".into(),
            ));
        }
        None
    };
    let urls: Vec<Uri> = match &demo {
        Some(demo) => vec![demo.api_url()],
        None => args.urls.clone(),
    };
    let tls = transport::TlsOptions {
        cacert: args.cacert.clone(),
        extra_roots: demo.iter().filter_map(|d| d.certificate()).collect(),
    };
    let layer = source::layer(&args, demo.as_ref(), &urls)?;
    let target = if args.grpc {
        let url = urls
            .first()
            .ok_or_else(|| Error::Usage("--grpc needs --url".into()))?;
        Target::Grpc(Arc::new(grpc::GrpcTarget::new(
            url,
            layer.clone(),
            &tls,
            args.grpc_service.clone().unwrap_or_default(),
            args.timeout,
        )?))
    } else {
        Target::Http(Arc::new(transport::HttpTarget::new(
            &args,
            urls.clone(),
            layer.clone(),
            &tls,
        )?))
    };

    let plan = plan(&args)?;
    if !args.json {
        print!("{}", report::header(&args, &plan, &urls, demo.as_ref()));
    }
    let bar = progress_bar(&args, &plan);
    let outcome = load::run(&target, &plan, &bar).await;
    bar.finish_and_clear();

    let report = Report::new(
        &plan,
        args.grpc,
        &outcome,
        layer.stats(),
        demo.as_ref().map(|d| d.counts()),
    );
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!(
            "{}",
            report.render((!args.no_plot).then_some(&outcome.latency_us))
        );
    }
    Ok(report)
}

/// The load model and when to stop, from the flags.
fn plan(args: &Args) -> Result<Plan, Error> {
    let stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) if args.is_demo() => Stop::Duration(DEMO_DURATION),
        (None, None) => Stop::Duration(DEFAULT_DURATION),
    };
    let model = match args.rate {
        Some(rate) => Model::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        None => Model::Closed {
            concurrency: args.concurrency,
        },
    };
    Ok(Plan { model, stop })
}

/// A bar of requests for `--requests`, a spinner for a timed run; hidden unless stderr is a
/// terminal, and with `--quiet`.
fn progress_bar(args: &Args, plan: &Plan) -> ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (length, template) = match plan.stop {
        Stop::Requests(n) => (
            Some(n),
            "{bar:40} {pos}/{len} requests  {per_sec:0}  eta {eta}",
        ),
        Stop::Duration(_) => (
            None,
            "{spinner} {elapsed} of {msg}  {pos} requests  {per_sec:0}",
        ),
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let message = match plan.stop {
        Stop::Duration(d) => humantime::format_duration(d).to_string(),
        Stop::Requests(_) => String::new(),
    };
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
