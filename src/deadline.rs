//! Deadlines that never overflow, racing a future against one, and whether the runtime has
//! timers: the few time primitives the cache, the middleware and the fleet share.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    task::Poll,
    time::Duration,
};

use tokio::time::Instant;

/// The longest span of time added to an instant: about 30 years, as tokio's timers cap theirs.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + by`, with `by` capped at about 30 years: no duration, from a setting or from the
/// network, makes instant arithmetic overflow. On a clock too close to its end for that, as
/// late as it can be (halving the span until it fits): a deadline saturates, never comes early.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    let mut by = by.min(FAR_FUTURE);
    loop {
        if let Some(instant) = at.checked_add(by) {
            return instant;
        }
        if by.is_zero() {
            return at;
        }
        by /= 2;
    }
}

/// Whether the current runtime has timers. Tokio has no call that says so; creating a timer
/// without them panics, and that panic is caught here (it only ever happens on a runtime built
/// without `enable_time`).
pub(crate) fn has_timers() -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        drop(tokio::time::sleep(Duration::ZERO))
    }))
    .is_ok()
}

/// The output of `a`, or `None` if `b` finishes first.
pub(crate) async fn first<A: Future, B: Future>(a: A, b: B) -> Option<A::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        b.as_mut().poll(cx).map(|_| None)
    })
    .await
}
