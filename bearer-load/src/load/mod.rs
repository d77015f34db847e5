//! The two load models and what a run records.
//!
//! - **Closed loop** ([`Model::Closed`]): N workers, each sending its next request when the
//!   last one answered. Throughput follows the server: a slow server gets fewer requests. Over
//!   HTTP the workers are shared among one single-threaded runtime per core (`closed.rs`).
//! - **Open model** ([`Model::Open`]): request `i` is due at `start + i / rate`, whatever the
//!   earlier ones are doing, and its latency counts from that intended start, so time spent
//!   queued behind a slow server shows in the percentiles (no coordinated omission). At most
//!   `max_in_flight` requests are in flight; a request that starts more than [`LATE_AFTER`]
//!   after its intended time is counted in [`Recorded::late_starts`].

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::{sync::Semaphore, time::Instant};

mod closed;

use crate::{
    grpc::GrpcTarget,
    outcome::{ErrorKind, Outcome},
    transport::{HttpSession, HttpTarget},
};

/// Answers a closed-loop worker counts before adding them to the progress bar.
const PROGRESS_BATCH: u64 = 64;

/// A request that starts later than this after its intended time is a late start.
pub const LATE_AFTER: Duration = Duration::from_millis(5);
/// The longest latency the histogram tells apart (longer ones count as this), in µs: 1 hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How the load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// `concurrency` workers, each sending its next request when the last one answered.
    Closed {
        /// The number of workers.
        concurrency: u32,
    },
    /// `rate` requests per second on a fixed schedule, at most `max_in_flight` at once.
    Open {
        /// Requests per second.
        rate: f64,
        /// The most requests in flight at once.
        max_in_flight: u32,
    },
}

/// When a run stops starting requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long (closed loop: no request starts after it; open model: every request
    /// due before it is sent).
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// A load model and when to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// How requests are started.
    pub model: Model,
    /// When to stop.
    pub stop: Stop,
}

/// The requests to send: HTTP or gRPC.
#[derive(Clone)]
pub enum Target {
    /// HTTP requests through the layer.
    Http(Arc<HttpTarget>),
    /// `grpc.health.v1.Health/Check` calls through the layer.
    Grpc(Arc<GrpcTarget>),
}

impl Target {
    /// Sends request number `i`.
    pub async fn send(&self, i: u64) -> Outcome {
        match self {
            Target::Http(target) => target.send(i).await,
            Target::Grpc(target) => target.send(i).await,
        }
    }

    /// A closed-loop worker's way to send: HTTP on connections of its own; gRPC on the
    /// run's channel.
    pub fn session(&self) -> Session {
        match self {
            Target::Http(target) => Session::Http(target.session()),
            Target::Grpc(target) => Session::Grpc(Arc::clone(target)),
        }
    }
}

/// What one closed-loop worker sends with; see [`Target::session`].
pub enum Session {
    /// On the worker's own connections.
    Http(HttpSession),
    /// On the run's gRPC channel.
    Grpc(Arc<GrpcTarget>),
}

impl Session {
    /// Sends request number `i`.
    pub async fn send(&mut self, i: u64) -> Outcome {
        match self {
            Session::Http(session) => session.send(i).await,
            Session::Grpc(target) => target.send(i).await,
        }
    }
}

/// What a run (or one worker) recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Latencies in microseconds.
    pub latency_us: Histogram<u64>,
    /// Answers by status.
    pub statuses: BTreeMap<Cow<'static, str>, u64>,
    /// Requests without an answer, by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// The first error message of each kind.
    pub examples: BTreeMap<ErrorKind, String>,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests that failed: an error, or a status that is not a success.
    pub failed: u64,
    /// Open model: requests that started more than [`LATE_AFTER`] after their intended time.
    pub late_starts: u64,
    /// From the first request's start to the last answer.
    pub elapsed: Duration,
    /// Open model: from the first request's start to the last one's.
    pub last_start: Duration,
    /// Closed loop over HTTP: the threads the workers ran on, each with a single-threaded
    /// runtime of its own (0 when they ran on the caller's runtime).
    pub threads: usize,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            // Sized to the latencies recorded, not to the largest one allowed: a histogram up
            // to an hour at 3 significant digits is 188 KB of counts, and each closed-loop
            // worker keeps one (512 workers faulted in 96 MB, a seventh of the run's time).
            latency_us: Histogram::new(3)
                .expect("3 significant digits, which hdrhistogram accepts"),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
            succeeded: 0,
            failed: 0,
            late_starts: 0,
            elapsed: Duration::ZERO,
            last_start: Duration::ZERO,
            threads: 0,
        }
    }
}

impl Recorded {
    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Counts one request.
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let us = us.clamp(1, MAX_LATENCY_US);
        // `record` grows the histogram to the value (rarely: its range doubles each time);
        // `saturating_record` would keep it at its first size.
        if self.latency_us.record(us).is_err() {
            self.latency_us.saturating_record(us);
        }
        match outcome {
            Outcome::Status { code, success } => {
                *self.statuses.entry(code).or_default() += 1;
                if success {
                    self.succeeded += 1;
                } else {
                    self.failed += 1;
                }
            }
            Outcome::Error(kind, message) => {
                *self.errors.entry(kind).or_default() += 1;
                self.examples.entry(kind).or_insert(message);
                self.failed += 1;
            }
        }
    }

    /// Adds what `other` recorded.
    pub fn merge(&mut self, other: &Recorded) {
        // Both histograms grow to what they hold, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (code, n) in &other.statuses {
            *self.statuses.entry(code.clone()).or_default() += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
        for (kind, message) in &other.examples {
            self.examples
                .entry(*kind)
                .or_insert_with(|| message.clone());
        }
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.late_starts += other.late_starts;
    }
}

/// Applies `plan` to `target`; `bar` counts the answers.
pub async fn run(target: &Target, plan: &Plan, bar: &ProgressBar) -> Recorded {
    let start = Instant::now();
    let mut recorded = match plan.model {
        Model::Closed { concurrency } => {
            closed::run(target, concurrency, plan.stop, start, bar).await
        }
        Model::Open {
            rate,
            max_in_flight,
        } => open(target, rate, max_in_flight, plan.stop, start, bar).await,
    };
    recorded.elapsed = start.elapsed();
    recorded
}

/// Request `i` at `start + i / rate`, at most `max_in_flight` at once; latency from the
/// intended start.
async fn open(
    target: &Target,
    rate: f64,
    max_in_flight: u32,
    stop: Stop,
    start: Instant,
    bar: &ProgressBar,
) -> Recorded {
    let permits = Arc::new(Semaphore::new(max_in_flight as usize));
    let shared = Arc::new(Mutex::new(Recorded::default()));
    let (mut late_starts, mut last_start) = (0, Duration::ZERO);
    for i in 0u64.. {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        let due = match stop {
            Stop::Requests(n) => i < n,
            Stop::Duration(d) => offset < d,
        };
        if !due {
            break;
        }
        let intended = start + offset;
        if Instant::now() < intended {
            tokio::time::sleep_until(intended).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break; // never closed
        };
        let now = Instant::now();
        if now.saturating_duration_since(intended) > LATE_AFTER {
            late_starts += 1;
        }
        last_start = now - start;
        let (target, shared, bar) = (target.clone(), shared.clone(), bar.clone());
        tokio::spawn(async move {
            let outcome = target.send(i).await;
            let latency = intended.elapsed();
            if let Ok(mut recorded) = shared.lock() {
                recorded.record(latency, outcome);
            }
            bar.inc(1);
            drop(permit);
        });
    }
    // Every permit back: every request answered.
    let _ = permits.acquire_many(max_in_flight).await;
    let mut recorded = shared.lock().map(|r| r.clone()).unwrap_or_default();
    recorded.late_starts = late_starts;
    recorded.last_start = last_start;
    recorded
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn ok() -> Outcome {
        Outcome::Status {
            code: Cow::Borrowed("200"),
            success: true,
        }
    }

    /// The histogram starts small and grows to the latencies recorded: percentiles of latencies
    /// far above its first range, merged from two workers, are read to 3 significant digits, and
    /// a latency past an hour counts as an hour.
    #[test]
    fn latencies_beyond_the_histograms_first_range_are_recorded_exactly() {
        let (mut first, mut second) = (Recorded::default(), Recorded::default());
        for ms in 1..=100 {
            let worker = if ms % 2 == 0 { &mut first } else { &mut second };
            worker.record(Duration::from_millis(ms), ok());
        }
        second.record(Duration::from_secs(7_200), ok());
        first.merge(&second);
        let h = &first.latency_us;
        assert_eq!(first.requests(), 101);
        assert!(
            h.equivalent(h.value_at_quantile(0.5), 51_000),
            "{}",
            h.value_at_quantile(0.5)
        );
        assert!(
            h.equivalent(h.value_at_quantile(0.99), 100_000),
            "{}",
            h.value_at_quantile(0.99)
        );
        assert!(h.equivalent(h.max(), MAX_LATENCY_US), "{}", h.max());
    }
}
