//! Waiting before the next token request: after failed fetches, after fresh tokens that the
//! API keeps rejecting, and between the attempts of one fetch.

use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::deadline::later;

/// Exponential backoff with "equal jitter": the `n`th wait in a row is a random time between
/// half and all of `min(max, base * 2^(n-1))`.
///
/// The random half spreads a fleet of processes that failed together; the fixed half bounds
/// how often the endpoint is asked: never twice within half a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The `n`th wait in a row (`n` from 1).
    pub(crate) fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let nanos = u64::try_from(self.ceiling(n).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(nanos / 2..=nanos))
    }

    /// The longest delay of the `n`th step: `base * 2^(n-1)`, at most `max`; zero for step 0.
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        self.base
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max)
    }
}

/// Longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The pauses between the attempts of one fetch: 100-200 ms, then 200-400 ms, ...
pub(crate) const RETRY_PAUSES: Backoff = Backoff {
    base: Duration::from_millis(200),
    max: Duration::from_secs(5),
};

/// Fetches that failed in a row, the last error, and when the next fetch may go out.
pub(crate) struct FetchFailures {
    pub(crate) count: u32,
    pub(crate) error: Error,
    pub(crate) retry_at: Instant,
}

impl FetchFailures {
    /// The failures after one more, `error`, at `now`: the next fetch waits for the backoff, or
    /// for the endpoint's `Retry-After` if that is longer.
    ///
    /// While a token is still usable (until `usable_until`), the backoff is cut to half the
    /// time left (but not below half its first step), so that the background refresh is tried
    /// again before the token runs out: an outage that ends while the token is still usable
    /// fails no request. `Retry-After` is honoured all the same.
    pub(crate) fn after(
        previous: Option<&FetchFailures>,
        error: Error,
        now: Instant,
        usable_until: Option<Instant>,
        backoff: &Backoff,
        rng: &mut fastrand::Rng,
    ) -> FetchFailures {
        let count = previous.map_or(0, |f| f.count).saturating_add(1);
        let mut delay = backoff.delay(count, rng);
        if let Some(until) = usable_until.filter(|until| now < *until) {
            let half_left = until.saturating_duration_since(now) / 2;
            delay = delay.min(half_left.max(backoff.base / 2));
        }
        if let Some(retry_after) = error.retry_after() {
            delay = delay.max(retry_after.min(MAX_RETRY_AFTER));
        }
        FetchFailures {
            count,
            error,
            retry_at: later(now, delay),
        }
    }
}

/// A streak of fresh tokens rejected with 401 (or gRPC `UNAUTHENTICATED`) rejections ends when
/// no token has been rejected for this long.
pub(crate) const REJECTION_STREAK_WINDOW: Duration = Duration::from_secs(60);

/// What to do with a rejection of the current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forget the token: the next request fetches a new one.
    Forget,
    /// Keep it for now: fresh tokens keep being rejected, and the next fetch waits for the
    /// backoff. The request that was rejected gets its 401.
    Keep,
}

/// Tokens rejected one after the other, and what each costs.
///
/// A token that was accepted and is then rejected was revoked (or expired early at the
/// server): it is forgotten at once, however recent the last rejection, and costs one refetch.
/// A token rejected before any response accepted it (a wrong audience, a key not yet
/// propagated) is kept for a backoff interval before the next fetch when it follows another
/// rejection (the first of a streak is forgotten at once), so that an API that rejects every
/// token costs one token request per backoff interval, not one per round trip.
///
/// Revocations count toward the streak too, and are forgotten at once only as long as they
/// come no faster than its backoff steps (200 ms after the first rejection, 400 ms after two,
/// ...: revocations seconds apart are each forgotten at once); one that comes sooner is kept
/// like a fresh token. Servers behind one address that disagree about every token (one
/// accepts it, the next rejects it) would otherwise cost a token request per round trip. A
/// streak ends after [`REJECTION_STREAK_WINDOW`] without a rejection.
#[derive(Debug, Default)]
pub(crate) struct RejectionStreak {
    /// Tokens rejected in this streak.
    count: u32,
    /// The token kept despite its rejection, and until when.
    hold: Option<Hold>,
    /// When the streak last forgot a token or ended a hold.
    last: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    generation: u64,
    until: Instant,
}

impl RejectionStreak {
    /// The verdict on a rejection of the current token, `generation`, at `now`; `accepted`:
    /// whether a response accepted that token before.
    pub(crate) fn rejected(
        &mut self,
        generation: u64,
        accepted: bool,
        now: Instant,
        backoff: &Backoff,
        rng: &mut fastrand::Rng,
    ) -> Verdict {
        let quiet = self
            .last
            .is_none_or(|at| now.saturating_duration_since(at) >= REJECTION_STREAK_WINDOW);
        if quiet {
            *self = RejectionStreak::default();
        }
        let step = backoff.ceiling(self.count);
        let in_step = self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < step);
        if accepted && !in_step {
            // A revocation, not a storm: the API took the token until now.
            self.count = self.count.saturating_add(1);
            self.hold = None;
            self.last = Some(now);
            return Verdict::Forget;
        }
        if let Some(hold) = self.hold.filter(|h| h.generation == generation) {
            if now < hold.until {
                return Verdict::Keep;
            }
            // The hold is over: try another token.
            self.hold = None;
            self.last = Some(now);
            return Verdict::Forget;
        }
        self.count = self.count.saturating_add(1);
        if self.count == 1 {
            self.last = Some(now);
            return Verdict::Forget;
        }
        let until = later(now, backoff.delay(self.count - 1, rng));
        self.hold = Some(Hold { generation, until });
        self.last = Some(until);
        Verdict::Keep
    }

    /// Forgets the streak (after [`AuthLayer::revoke`](crate::AuthLayer::revoke)).
    pub(crate) fn reset(&mut self) {
        *self = RejectionStreak::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(30),
    };

    #[test]
    fn delays_double_up_to_the_cap_and_never_fall_below_half() {
        let mut rng = fastrand::Rng::with_seed(1);
        for n in 1..40 {
            let ceiling = (BACKOFF.base * 2u32.pow((n - 1).min(20))).min(BACKOFF.max);
            for _ in 0..100 {
                let d = BACKOFF.delay(n, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{n}: {d:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_wins_when_longer_and_is_capped() {
        let mut rng = fastrand::Rng::with_seed(2);
        let now = Instant::now();
        let error = Error::UnexpectedResponse {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            reason: "busy".into(),
            excerpt: None,
            retry_after: Some(Duration::from_secs(120)),
        };
        let failures = FetchFailures::after(None, error.clone(), now, None, &BACKOFF, &mut rng);
        assert_eq!(failures.retry_at, now + Duration::from_secs(120));
        let huge = error.with_retry_after(Some(Duration::from_secs(86_400)));
        let failures = FetchFailures::after(Some(&failures), huge, now, None, &BACKOFF, &mut rng);
        assert_eq!(
            (failures.count, failures.retry_at),
            (2, now + MAX_RETRY_AFTER)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn while_a_token_is_usable_the_backoff_leaves_room_for_another_try() {
        let mut rng = fastrand::Rng::with_seed(4);
        let now = Instant::now();
        let mut failures = None;
        // Ten failures in a row: the backoff alone would reach 15-30 s.
        for _ in 0..10 {
            let next = FetchFailures::after(
                failures.as_ref(),
                Error::Aborted,
                now,
                Some(now + Duration::from_secs(8)),
                &BACKOFF,
                &mut rng,
            );
            failures = Some(next);
        }
        let failures = failures.unwrap();
        assert_eq!(failures.retry_at, now + Duration::from_secs(4));
        // With 100 ms left, the pause is not cut below 100 ms (half the first step).
        let last = FetchFailures::after(
            Some(&failures),
            Error::Aborted,
            now,
            Some(now + Duration::from_millis(100)),
            &BACKOFF,
            &mut rng,
        );
        assert_eq!(last.retry_at, now + Duration::from_millis(100));
    }

    /// Tokens accepted before they are rejected are revocations: each is forgotten at once,
    /// however recent the last rejection, as long as they come no faster than the backoff
    /// steps; tokens rejected fresh after one are held.
    #[tokio::test(start_paused = true)]
    async fn a_token_accepted_before_its_rejection_is_forgotten_at_once() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut streak = RejectionStreak::default();
        let t0 = Instant::now();
        // Revocations 4 s apart (the chaos test's), however many.
        for generation in 1..=5 {
            let at = t0 + Duration::from_secs(4 * generation);
            assert_eq!(
                streak.rejected(generation, true, at, &BACKOFF, &mut rng),
                Verdict::Forget,
                "revocation {generation}"
            );
        }
        // A fresh token rejected right after a revocation goes on its streak: it is held.
        let t1 = t0 + Duration::from_secs(21);
        assert_eq!(
            streak.rejected(6, false, t1, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        // Long after, a fresh token rejected alone is forgotten at once.
        let later = t1 + REJECTION_STREAK_WINDOW + Duration::from_secs(60);
        assert_eq!(
            streak.rejected(7, false, later, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // And so is a revocation right after it (the first step, 200 ms, has passed).
        assert_eq!(
            streak.rejected(
                8,
                true,
                later + Duration::from_millis(200),
                &BACKOFF,
                &mut rng
            ),
            Verdict::Forget
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_forgets_the_first_token_then_holds_each_next_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut streak = RejectionStreak::default();
        let t0 = Instant::now();
        assert_eq!(
            streak.rejected(1, false, t0, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // The replacement is rejected too: kept for 100-200 ms.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            streak.rejected(2, false, t1, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t2 = t1 + Duration::from_millis(99);
        assert_eq!(
            streak.rejected(2, false, t2, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t3 = t1 + Duration::from_millis(200);
        assert_eq!(
            streak.rejected(2, false, t3, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // The third token is kept for 200-400 ms.
        assert_eq!(
            streak.rejected(3, false, t3, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t4 = t3 + Duration::from_millis(199);
        assert_eq!(
            streak.rejected(3, false, t4, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t5 = t3 + Duration::from_millis(400);
        assert_eq!(
            streak.rejected(3, false, t5, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // A rejection long after the streak starts a new one: forgotten at once.
        let later = t5 + REJECTION_STREAK_WINDOW;
        assert_eq!(
            streak.rejected(4, false, later, &BACKOFF, &mut rng),
            Verdict::Forget
        );
    }

    /// Revocations that come faster than the backoff steps (servers that disagree about every
    /// token) are held like fresh tokens, for growing steps.
    #[tokio::test(start_paused = true)]
    async fn revocations_faster_than_the_backoff_steps_make_a_streak() {
        let mut rng = fastrand::Rng::with_seed(4);
        let mut streak = RejectionStreak::default();
        let t0 = Instant::now();
        // The first is forgotten at once, as any first rejection.
        assert_eq!(
            streak.rejected(1, true, t0, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // The next, 10 ms later (within the first step, 200 ms), is held for 100-200 ms.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            streak.rejected(2, true, t1, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(
            streak.rejected(2, true, t2, &BACKOFF, &mut rng),
            Verdict::Forget
        );
        // The next, at once, is held for 200-400 ms: the steps grow.
        assert_eq!(
            streak.rejected(3, true, t2, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        let t3 = t2 + Duration::from_millis(199);
        assert_eq!(
            streak.rejected(3, true, t3, &BACKOFF, &mut rng),
            Verdict::Keep
        );
        // One that comes later than the step after the last is a revocation again.
        let t4 = t2 + Duration::from_secs(5);
        assert_eq!(
            streak.rejected(4, true, t4, &BACKOFF, &mut rng),
            Verdict::Forget
        );
    }
}
