//! The report as a person reads it: the summary, the latency histogram, and the header
//! printed before a run.

use std::fmt::Write as _;

use http::Uri;

use super::{Report, ms};
use crate::{
    cli::Args,
    demo::Demo,
    load::{LATE_AFTER, Model, Plan, Stop},
    source::SourceKind,
};

impl Report {
    /// The text summary; with `plot`, a latency histogram of `histogram` below it.
    pub fn render(&self, plot: Option<&hdrhistogram::Histogram<u64>>) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "\nresults");
        let _ = writeln!(
            w,
            "  requests       {} ({} ok, {} failed)",
            self.requests, self.succeeded, self.failed
        );
        match self.threads {
            Some(threads) => {
                let _ = writeln!(
                    w,
                    "  elapsed        {:.2} s (workers on {threads} thread{}, a runtime each)",
                    self.duration_s,
                    if threads == 1 { "" } else { "s" }
                );
            }
            None => {
                let _ = writeln!(w, "  elapsed        {:.2} s", self.duration_s);
            }
        }
        match self.offered_rate {
            Some(offered) => {
                let _ = writeln!(
                    w,
                    "  throughput     {:.1} requests/s achieved, {offered:.1} offered",
                    self.achieved_rate
                );
                let _ = writeln!(
                    w,
                    "  late starts    {} (started more than {} ms after their intended time)",
                    self.late_starts,
                    LATE_AFTER.as_millis()
                );
            }
            None => {
                let _ = writeln!(w, "  throughput     {:.1} requests/s", self.achieved_rate);
            }
        }
        let l = &self.latency;
        let _ = writeln!(
            w,
            "  latency        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (from {})",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p90_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.p999_ms),
            fmt_ms(l.max_ms),
            if l.from == "send" {
                "each send"
            } else {
                "each intended start"
            }
        );
        let statuses: Vec<String> = self
            .status_codes
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let _ = writeln!(
            w,
            "  status codes   {}",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        );
        let errors: Vec<String> = self
            .errors
            .by_kind()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{}: {n}", kind.name()))
            .collect();
        let _ = writeln!(
            w,
            "  errors         {}",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        );
        for (kind, message) in &self.error_examples {
            let _ = writeln!(w, "    first {kind} error: {message}");
        }
        let t = &self.tokens;
        let _ = writeln!(
            w,
            "  token fetches  {} ({} failed, {} in the background)",
            t.fetches, t.fetch_failures, t.background_refreshes
        );
        let _ = writeln!(w, "  waited for a token  {} callers", t.waiters);
        let _ = writeln!(
            w,
            "  401s           {} tokens rejected, {} requests resent, {} not resent",
            t.unauthorized, t.resent, t.not_resent
        );
        if let Some(d) = &self.demo {
            let _ = writeln!(
                w,
                "  demo servers   {} token requests ({} tokens issued), {} API requests ({} answered 200, {} answered 401)",
                d.token_requests, d.tokens_issued, d.api_requests, d.api_ok, d.api_rejected
            );
        }
        if let Some(histogram) = plot.filter(|h| !h.is_empty()) {
            let _ = writeln!(w, "\nlatency histogram");
            out.push_str(&plot_histogram(histogram, 10, 40));
        }
        out
    }
}

/// `0.85 ms`, `12.3 ms`, `1.20 s`.
fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// A text plot of a latency histogram (µs): `rows` rows on a log scale from its min to its
/// max, bars up to `width` characters.
pub fn plot_histogram(
    histogram: &hdrhistogram::Histogram<u64>,
    rows: usize,
    width: usize,
) -> String {
    let (min, max) = (histogram.min().max(1), histogram.max().max(1));
    let rows = if max <= min { 1 } else { rows.max(1) };
    let ratio = (max as f64 / min as f64).powf(1.0 / rows as f64);
    let mut edges = vec![min];
    for row in 1..=rows {
        let edge = if row == rows {
            max
        } else {
            (min as f64 * ratio.powi(row as i32)).round() as u64
        };
        edges.push(edge.max(edges[row - 1]));
    }
    let mut counts = Vec::with_capacity(rows);
    for row in 0..rows {
        let low = if row == 0 { 0 } else { edges[row] + 1 };
        let high = edges[row + 1];
        // Equivalent values (hdrhistogram's buckets) may straddle an edge: count each once.
        let n = if high < low {
            0
        } else {
            histogram.count_between(low, high)
        };
        counts.push(n);
    }
    let total: u64 = counts.iter().sum();
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut out = String::new();
    for row in 0..rows {
        let n = counts[row];
        let bar = (n as f64 / most as f64 * width as f64).round() as usize;
        let bar = if n > 0 { bar.max(1) } else { 0 };
        let share = if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        };
        let _ = writeln!(
            out,
            "  {:>9} ..{:>9} {:<width$} {n} ({share:.1} %)",
            fmt_ms(ms(if row == 0 { min } else { edges[row] })),
            fmt_ms(ms(edges[row + 1])),
            "█".repeat(bar),
        );
    }
    out
}

/// The lines printed before a text run: what is loaded, how, with which tokens.
pub fn header(args: &Args, plan: &Plan, urls: &[Uri], demo: Option<&Demo>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let load = match plan.model {
        Model::Closed { concurrency } => format!("closed loop, {concurrency} workers"),
        Model::Open {
            rate,
            max_in_flight,
        } => format!("open model, {rate} requests/s (at most {max_in_flight} in flight)"),
    };
    let amount = match plan.stop {
        Stop::Duration(d) => humantime::format_duration(d).to_string(),
        Stop::Requests(n) => format!("{n} requests"),
    };
    let _ = writeln!(w, "bearer-load: {load}, {amount}");
    for url in urls {
        let tls = url.scheme_str() == Some("https");
        let protocol = match (args.grpc, args.http2, tls) {
            (true, _, _) => "gRPC Health/Check",
            (false, true, false) => "h2c, prior knowledge",
            (false, true, true) => "h2 only, by ALPN",
            (false, false, false) => "HTTP/1.1",
            (false, false, true) => "h2 or HTTP/1.1 by ALPN",
        };
        let _ = writeln!(w, "  target         {url} ({protocol})");
    }
    let source = SourceKind::of(args).map(|k| k.name()).unwrap_or("none");
    let binding = if args.dpop { ", DPoP-bound" } else { "" };
    match demo {
        Some(demo) => {
            let _ = writeln!(
                w,
                "  tokens         {source}{binding} from the demo at {} (tokens live {}s, {:?} per fetch)",
                demo.token_url(),
                demo.options().token_lifetime.as_secs().max(1),
                demo.options().fetch_latency
            );
        }
        None => {
            let from = args
                .token_url
                .as_deref()
                .map(|u| format!(" from {u}"))
                .unwrap_or_default();
            let _ = writeln!(w, "  tokens         {source}{binding}{from}");
        }
    }
    out
}
