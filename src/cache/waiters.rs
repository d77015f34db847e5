//! The callers waiting for a fetch, grouped by the runtime they wait on, and woken a batch at a
//! time by a task on that runtime.
//!
//! Waking every waiter at once, from the task that ended the fetch, queued them all on that
//! task's worker before the first of them ran: with 100,000 waiters each one's task was brought
//! into the cache once to be woken and again, long after, to run, and the last ones ran behind
//! every other wake-up. Here the runtime's watchdog for the fetch (one task per fetch and
//! runtime, `flight.rs`) wakes [`WAKE_BATCH`] waiters, then yields, so that they run (on its
//! worker, or on workers that steal them) while their tasks are still in the cache, before it
//! wakes the next batch. A `tokio::sync::Mutex` hands its lock from one waiter to the next in
//! the same way; the batch lets several run at once.
//!
//! No waiter is ever stranded by the relay: a watchdog dropped before it is done (its runtime
//! shuts down) wakes every waiter it still holds, and the end of a fetch wakes at once the
//! waiters of a runtime whose watchdog never ran (a runtime that may never run it).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use slab::Slab;
use tokio::runtime;

/// How many waiters a watchdog wakes before it lets them run: half a worker's local run queue
/// (256 tasks), so that a batch stays on the worker that woke it unless another worker steals
/// from it. Of 8 to 256, 128 gave the lowest and steadiest tail in the concurrency bench
/// (100,000 waiters, 2 threads); waking all at once, the highest.
pub(crate) const WAKE_BATCH: usize = 128;

/// Lets the tasks this task just woke run before it goes on: a task that wakes itself is put
/// behind the tasks already in its worker's run queue. (`tokio::task::yield_now` defers it
/// until the worker next looks for I/O and timers instead, every 61 tasks: the concurrency
/// bench's tail was a tenth to a fifth longer with it.)
pub(crate) async fn behind_the_woken() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// The groups of callers waiting on one flight, one per runtime: a list that only grows while
/// the flight lives, read without a lock.
#[derive(Default)]
pub(crate) struct WaiterGroups {
    first: OnceLock<Box<Waiters>>,
    /// Taken to add a group, so that a runtime never gets two.
    adding: Mutex<()>,
}

impl WaiterGroups {
    /// The group of the callers on `runtime`, if it has one.
    pub(crate) fn find(&self, runtime: runtime::Id) -> Option<&Waiters> {
        self.iter().find(|group| group.runtime == runtime)
    }

    /// The group of the callers on `runtime`, added if it has none (`true` then).
    pub(crate) fn find_or_add(&self, runtime: runtime::Id) -> (&Waiters, bool) {
        if let Some(group) = self.find(runtime) {
            return (group, false);
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = self.find(runtime) {
            return (group, false);
        }
        let mut slot = &self.first;
        while let Some(group) = slot.get() {
            slot = &group.next;
        }
        (slot.get_or_init(|| Box::new(Waiters::new(runtime))), true)
    }

    /// Every group, in the order they were added.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Waiters> {
        std::iter::successors(self.first.get().map(|group| &**group), |group| {
            group.next.get().map(|next| &**next)
        })
    }
}

/// The callers waiting on one flight from one runtime.
pub(crate) struct Waiters {
    runtime: runtime::Id,
    wakers: Mutex<Slab<Waker>>,
    /// Set, under the lock, once the wakers were taken to be woken: a waiter that finds it set
    /// was taken, and leaves without taking the lock.
    closed: AtomicBool,
    /// Whether the runtime's watchdog has started: until it has, the end of the flight wakes
    /// these waiters itself.
    relayed: AtomicBool,
    next: OnceLock<Box<Waiters>>,
}

impl Waiters {
    fn new(runtime: runtime::Id) -> Waiters {
        Waiters {
            runtime,
            wakers: Mutex::new(Slab::new()),
            closed: AtomicBool::new(false),
            relayed: AtomicBool::new(false),
            next: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `value` is set; `None` if these waiters were woken for good before it was
    /// (their runtime's watchdog was dropped: the runtime shut down).
    pub(crate) fn wait<'a, T>(&'a self, value: &'a OnceLock<T>) -> Wait<'a, T> {
        Wait {
            waiters: self,
            value,
            key: None,
        }
    }

    /// The runtime's watchdog has started: from now on it wakes these waiters.
    pub(crate) fn relaying(&self) {
        self.relayed.store(true, Ordering::Release);
    }

    /// Whether the runtime's watchdog has started.
    pub(crate) fn is_relayed(&self) -> bool {
        self.relayed.load(Ordering::Acquire)
    }

    /// Takes every waiter to be woken; a caller that comes later is not added. Once the value
    /// is set, or to end every wait.
    pub(crate) fn close(&self) -> Wakeup {
        let mut wakers = self.lock();
        self.closed.store(true, Ordering::Release);
        Wakeup {
            wakers: std::mem::take(&mut *wakers).into_iter(),
        }
    }
}

/// Waiters taken to be woken. Those not woken by [`Wakeup::wake`] are woken when it is dropped.
pub(crate) struct Wakeup {
    wakers: slab::IntoIter<Waker>,
}

impl Wakeup {
    /// Wakes up to `count` of the waiters; `true` if some are left.
    pub(crate) fn wake(&mut self, count: usize) -> bool {
        for (_, waker) in self.wakers.by_ref().take(count) {
            waker.wake();
        }
        self.wakers.len() > 0
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        for (_, waker) in self.wakers.by_ref() {
            waker.wake();
        }
    }
}

/// The future of [`Waiters::wait`]. Dropped while waiting, it takes its waker out.
pub(crate) struct Wait<'a, T> {
    waiters: &'a Waiters,
    value: &'a OnceLock<T>,
    /// Where this waiter's waker is, once it registered.
    key: Option<usize>,
}

impl<'a, T> Future for Wait<'a, T> {
    type Output = Option<&'a T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Looked at before the lock: a woken waiter leaves without taking it.
        if let Some(value) = self.value.get() {
            return Poll::Ready(Some(value));
        }
        let waiters = self.waiters;
        let mut wakers = waiters.lock();
        if waiters.closed.load(Ordering::Relaxed) {
            // Taken (or never added): nothing to take out when dropped. A group is closed once
            // the value is set, or when its watchdog is gone.
            drop(wakers);
            self.key = None;
            return Poll::Ready(self.value.get());
        }
        match self.key.and_then(|key| wakers.get_mut(key)) {
            Some(waker) => waker.clone_from(cx.waker()),
            None => self.key = Some(wakers.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<T> Drop for Wait<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        if self.waiters.closed.load(Ordering::Acquire) {
            return;
        }
        let mut wakers = self.waiters.lock();
        // Closed meanwhile: the key is not this waiter's any more.
        if !self.waiters.closed.load(Ordering::Relaxed) {
            wakers.try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering::Relaxed},
        },
        task::Wake,
    };

    use super::*;

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn counted() -> (Arc<Counted>, Waker) {
        let count = Arc::new(Counted(AtomicUsize::new(0)));
        (Arc::clone(&count), Waker::from(count))
    }

    fn runtime_id() -> runtime::Id {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .handle()
            .id()
    }

    #[test]
    fn a_waiter_that_gives_up_takes_its_waker_out_and_the_rest_are_woken_in_batches() {
        let waiters = Waiters::new(runtime_id());
        let value = OnceLock::<u8>::new();
        let counts: Vec<_> = (0..5).map(|_| counted()).collect();
        let mut waits: Vec<_> = (0..5).map(|_| Box::pin(waiters.wait(&value))).collect();
        for (wait, (_, waker)) in waits.iter_mut().zip(&counts) {
            assert!(
                wait.as_mut()
                    .poll(&mut Context::from_waker(waker))
                    .is_pending()
            );
        }
        drop(waits.remove(1));
        assert_eq!(waiters.lock().len(), 4);
        value.set(7).unwrap();
        let mut wakeup = waiters.close();
        assert!(wakeup.wake(2), "two left");
        let woken = |i: usize| counts[i].0.0.load(Relaxed);
        assert_eq!((woken(0), woken(1), woken(2), woken(3)), (1, 0, 1, 0));
        drop(wakeup);
        assert!((0..5).all(|i| woken(i) == usize::from(i != 1)));
        // Woken: each finds the value without the lock, and leaves nothing behind.
        for wait in &mut waits {
            let (_, waker) = counted();
            let polled = wait.as_mut().poll(&mut Context::from_waker(&waker));
            assert_eq!(polled, Poll::Ready(Some(&7)));
        }
        drop(waits);
        assert!(waiters.lock().is_empty());
    }

    #[test]
    fn a_group_closed_before_its_value_is_set_ends_every_wait_without_it() {
        let waiters = Waiters::new(runtime_id());
        let value = OnceLock::<u8>::new();
        let (count, waker) = counted();
        let mut early = pin!(waiters.wait(&value));
        assert!(
            early
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(waiters.close());
        assert_eq!(count.0.load(Relaxed), 1, "woken when closed");
        let polled = early.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(None));
        // A caller that comes later is not added.
        let mut late = pin!(waiters.wait(&value));
        let polled = late.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(None));
        assert!(waiters.lock().is_empty());
    }

    #[test]
    fn each_runtime_gets_one_group() {
        let groups = WaiterGroups::default();
        let (a, b) = (runtime_id(), runtime_id());
        let (first, added) = groups.find_or_add(a);
        assert!(added);
        let (again, added) = groups.find_or_add(a);
        assert!(!added && std::ptr::eq(first, again));
        let (second, added) = groups.find_or_add(b);
        assert!(added && !std::ptr::eq(first, second));
        let order: Vec<_> = groups.iter().map(|group| group.runtime).collect();
        assert_eq!(order, [a, b]);
        assert!(groups.find(runtime_id()).is_none());
    }
}
