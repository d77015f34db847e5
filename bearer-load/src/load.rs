//! The two load models and what a run records.
//!
//! - **Closed loop** ([`Model::Closed`]): N workers, each sending its next request when the
//!   last one answered. Throughput follows the server: a slow server gets fewer requests.
//! - **Open model** ([`Model::Open`]): request `i` is due at `start + i / rate`, whatever the
//!   earlier ones are doing, and its latency counts from that intended start, so time spent
//!   queued behind a slow server shows in the percentiles (no coordinated omission). At most
//!   `max_in_flight` requests are in flight; a request that starts more than [`LATE_AFTER`]
//!   after its intended time is counted in [`Recorded::late_starts`].

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::{
    sync::{Semaphore, oneshot},
    time::Instant,
};

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
        Model::Closed { concurrency } => closed(target, concurrency, plan.stop, start, bar).await,
        Model::Open {
            rate,
            max_in_flight,
        } => open(target, rate, max_in_flight, plan.stop, start, bar).await,
    };
    recorded.elapsed = start.elapsed();
    recorded
}

/// `concurrency` workers that share a budget of requests (or a deadline).
///
/// HTTP workers run on one single-threaded runtime per core, each with its share of the
/// workers, as oha runs its own: a worker, its connection's task and hyper's HTTP/2 stream
/// tasks then wake one another on one thread. On tokio's work-stealing runtime they were moved
/// between threads and woke idle ones, which cost bearer-load a quarter of its throughput at
/// 512 h2c connections. gRPC workers share the run's channel, on the caller's runtime.
async fn closed(
    target: &Target,
    concurrency: u32,
    stop: Stop,
    start: Instant,
    bar: &ProgressBar,
) -> Recorded {
    let run = ClosedLoop {
        target: target.clone(),
        budget: Arc::new(AtomicU64::new(0)),
        bar: bar.clone(),
        concurrency,
        stop,
        start,
    };
    let threads = match target {
        Target::Http(_) => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(concurrency as usize),
        Target::Grpc(_) => 0,
    };
    let shares = threads.max(1);
    let share = move |index: usize| (index as u64..u64::from(concurrency)).step_by(shares);
    let mut here = WorkerGroup::default();
    let mut elsewhere = Vec::new();
    for index in 0..shares {
        let started = match (threads > 0).then(|| run.on_a_thread_of_its_own(index, share(index))) {
            Some(Ok(started)) => started.await.ok(),
            Some(Err(_)) | None => None,
        };
        match started {
            Some(Some(recorded)) => elsewhere.push(recorded),
            // No thread, or it could not make its runtime (the system is out of them): its
            // workers run here instead, starting now.
            Some(None) | None => here.start(&run, share(index)),
        }
    }
    let mut all = Recorded::default();
    for recorded in elsewhere {
        // A thread only fails to answer if it panicked; its requests are then lost.
        if let Ok(recorded) = recorded.await {
            all.merge(&recorded);
            all.threads += 1;
        }
    }
    all.merge(&here.finished().await);
    all
}

/// What every closed-loop worker of a run shares.
#[derive(Clone)]
struct ClosedLoop {
    target: Target,
    budget: Arc<AtomicU64>,
    bar: ProgressBar,
    concurrency: u32,
    stop: Stop,
    start: Instant,
}

impl ClosedLoop {
    /// Runs `workers` on a new thread with a single-threaded runtime of its own. The first
    /// receiver answers once the thread has made its runtime, with the receiver of what the
    /// workers recorded, or `None` if it could not (no worker ran then).
    fn on_a_thread_of_its_own(
        &self,
        index: usize,
        workers: impl Iterator<Item = u64> + Send + 'static,
    ) -> std::io::Result<oneshot::Receiver<Option<oneshot::Receiver<Recorded>>>> {
        let (started, starting) = oneshot::channel();
        let run = self.clone();
        // The runtime is made on its thread: dropping one in the caller's async context
        // would panic.
        std::thread::Builder::new()
            .name(format!("bearer-load-{index}"))
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    let _ = started.send(None);
                    return;
                };
                let (finished, recorded) = oneshot::channel();
                let _ = started.send(Some(recorded));
                let _ = finished.send(runtime.block_on(async move {
                    let mut group = WorkerGroup::default();
                    group.start(&run, workers);
                    group.finished().await
                }));
            })?;
        Ok(starting)
    }

    /// Closed-loop worker number `worker`: sends until the budget or the deadline is spent,
    /// recording into its group's `recorded`.
    async fn worker(self, worker: u64, recorded: Arc<Mutex<Recorded>>) {
        let mut session = self.target.session();
        let mut unreported = 0;
        let mut own = worker;
        loop {
            let sent = Instant::now();
            // A request budget is shared; a deadline needs nothing shared: each worker
            // numbers its own requests (worker w sends w, w + N, w + 2N, ...), so that workers
            // on different cores write no common counter per request.
            let i = match self.stop {
                Stop::Requests(n) => match self.budget.fetch_add(1, Relaxed) {
                    i if i < n => i,
                    _ => break,
                },
                Stop::Duration(d) if sent.saturating_duration_since(self.start) < d => own,
                Stop::Duration(_) => break,
            };
            own += u64::from(self.concurrency);
            let outcome = session.send(i).await;
            let latency = sent.elapsed();
            recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(latency, outcome);
            // The progress bar's count is shared by every worker: added to in batches.
            unreported += 1;
            if unreported == PROGRESS_BATCH {
                self.bar.inc(unreported);
                unreported = 0;
            }
        }
        self.bar.inc(unreported);
    }
}

/// Closed-loop workers on one runtime and what they recorded, together: one histogram per
/// thread, not per worker. 512 workers' histograms took 50 MB, and recording into them missed
/// the cache on most requests; the group's lock is never contended on its thread.
#[derive(Default)]
struct WorkerGroup {
    tasks: tokio::task::JoinSet<()>,
    recorded: Arc<Mutex<Recorded>>,
}

impl WorkerGroup {
    /// Starts `workers` on the current runtime.
    fn start(&mut self, run: &ClosedLoop, workers: impl Iterator<Item = u64>) {
        for worker in workers {
            self.tasks
                .spawn(run.clone().worker(worker, Arc::clone(&self.recorded)));
        }
    }

    /// What the group's workers recorded, once every one has finished (a worker that
    /// panicked, as one does only when its runtime is going down, recorded up to then).
    async fn finished(mut self) -> Recorded {
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(PoisonError::into_inner))
    }
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
