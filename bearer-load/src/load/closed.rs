//! The closed loop: `concurrency` workers, each sending its next request when the last one
//! answered, HTTP workers shared among one single-threaded runtime per core.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use indicatif::ProgressBar;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

use super::{PROGRESS_BATCH, Recorded, Stop, Target};

/// `concurrency` workers that share a budget of requests (or a deadline).
///
/// HTTP workers run on one single-threaded runtime per core, each with its share of the
/// workers, as oha runs its own: a worker, its connection's task and hyper's HTTP/2 stream
/// tasks then wake one another on one thread. On tokio's work-stealing runtime they were moved
/// between threads and woke idle ones, which cost bearer-load a quarter of its throughput at
/// 512 h2c connections. gRPC workers share the run's channel, on the caller's runtime.
pub(super) async fn run(
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
    // Held until every worker has finished: each thread keeps driving its runtime until then,
    // so that a token fetch one thread's worker started, which another thread's workers may be
    // waiting for, is not dropped with a runtime whose own workers are done.
    let (all_finished, finishing) = watch::channel(());
    let shares = threads.max(1);
    let share = move |index: usize| (index as u64..u64::from(concurrency)).step_by(shares);
    let mut here = WorkerGroup::default();
    let mut elsewhere = Vec::new();
    for index in 0..shares {
        let started = match (threads > 0)
            .then(|| run.on_a_thread_of_its_own(index, share(index), finishing.clone()))
        {
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
    drop(all_finished);
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
    /// workers recorded, or `None` if it could not (no worker ran then). Once its workers are
    /// done the thread keeps driving its runtime until `finishing`'s sender is dropped.
    fn on_a_thread_of_its_own(
        &self,
        index: usize,
        workers: impl Iterator<Item = u64> + Send + 'static,
        mut finishing: watch::Receiver<()>,
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
                // Ends when the sender is dropped, which the caller does once every worker of
                // the run is done (or when it is itself dropped).
                runtime.block_on(async move {
                    let _ = finishing.changed().await;
                });
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
/// thread, not per worker. 512 workers' histograms took about 50 MB, and recording into them
/// missed the cache on most requests. On a thread of its own the group's lock is never
/// contended; only the fallback group on the caller's runtime may wait on it briefly.
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
