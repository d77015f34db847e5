//! A token as the cache holds it, and when it is refreshed and stops being sent.
//!
//! Three instants of a token's life, computed once when it arrives:
//!
//! ```text
//! fetched ─────── refresh_at ──────── refresh target ───────── usable_until ── expiry
//!   quiet: sent with no check   refreshed in the background;   stale: still sent,  not sent
//!                               sent meanwhile                 refreshed, counted
//! ```
//!
//! - The **refresh target** is the expiry less the [expiry margin](crate::AuthLayerBuilder::expiry_margin)
//!   (at most half the lifetime): the token should have been replaced by then.
//! - **`refresh_at`** starts the background refresh, at a jittered point of the last fifth of the
//!   time before the target (at most 5 minutes), or at the target itself without refresh-ahead.
//! - **`usable_until`** is the expiry less [`EXPIRY_ALLOWANCE`] (at most a tenth of the
//!   lifetime), for the request's transit and the clocks' skew. Until then the token is sent,
//!   however fetches fare; past it no request carries it.
//!
//! Validity is one comparison of these instants with one read of the monotonic clock: nothing
//! depends on a timer firing or on which runtime fetched the token.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering::Relaxed},
    },
    time::Duration,
};

use http::HeaderValue;
use tokio::time::Instant;

use super::CacheSettings;
use crate::deadline::later;
use crate::{Error, Token};

/// What a token's last moments are left for: the request's transit and the skew between this
/// machine's clock and the servers'. At most a tenth of the token's lifetime, so that a
/// short-lived token is still sent for most of its life.
pub const EXPIRY_ALLOWANCE: Duration = Duration::from_secs(10);
/// Longest lifetime the cache computes with; keeps `Instant` arithmetic from overflowing.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Longest refresh-ahead window.
const REFRESH_WINDOW_MAX: Duration = Duration::from_secs(5 * 60);

/// Copies of a token's header an entry holds besides its own, each in a buffer of its own:
/// services sending on different cores send different copies, so they do not all count
/// references on one cache line (see [`AuthService`](crate::AuthService)).
pub(crate) const HEADER_COPIES: usize = 8;

/// A token with its pre-built header and the instants of its life.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) token: Token,
    /// `Bearer <token>` (or `DPoP <token>`), built once, marked sensitive.
    pub(crate) header: HeaderValue,
    /// [`HEADER_COPIES`] copies of `header` for the handles of services' clones, each taking
    /// the one its [`slot`](Self::header_copy) names; none (and no allocation) for a
    /// use-limited token, used a few times at most, and for a keyed layer's keys, whose
    /// services send `header` itself.
    copies: Box<[HeaderValue]>,
    /// Increases with every token installed; identifies the token a request carried.
    pub(crate) generation: u64,
    pub(crate) fetched_at: Instant,
    /// Before this instant a request sends the token with no other check: the token is
    /// unlimited, a response accepted it, and it is not yet due for a refresh. `fetched_at`
    /// for use-limited tokens, whose every use is counted, and for a token no response has
    /// accepted yet, whose requests ask their answers to say (see [`accepted`](Self::accepted)).
    pub(crate) quiet_until: Instant,
    /// From here a request starts a background refresh (once per backoff interval).
    pub(crate) refresh_at: Instant,
    /// The refresh target: the expiry less the margin. A request past it is served stale.
    pub(crate) refresh_target: Instant,
    /// The token is sent until here: its expiry less the allowance.
    pub(crate) usable_until: Instant,
    /// Uses left for a use-limited token (shared with the entry that replaces this one once
    /// the token is accepted); `None` when unlimited.
    uses_left: Option<Arc<AtomicU32>>,
    /// Whether a response accepted the token (a success). The cache replaces the
    /// entry of a token when the first response accepts it (the same token and generation,
    /// with its quiet period): until then each request asks its answer to say whether it
    /// accepted the token, and the requests after that pay nothing to know.
    pub(crate) accepted: bool,
}

/// What a request past [`Entry::quiet_until`] may do with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Send it.
    Send {
        /// A background refresh is due.
        refresh: bool,
        /// The token is past its refresh target.
        stale: bool,
    },
    /// Wait for a new token: this one is past `usable_until`, or used up.
    Wait,
}

/// A token with its header and the header's copies: built before the cache's lock is taken, so
/// that the formatting and the allocations stay out of it.
pub(crate) struct Headers {
    token: Token,
    header: HeaderValue,
    copies: Box<[HeaderValue]>,
}

impl Entry {
    /// The header of `token` and its copies, for [`Entry::new`].
    pub(crate) fn headers(token: Token, settings: &CacheSettings) -> Result<Headers, Error> {
        // A DPoP-bound token goes as `DPoP` (with a proof), whatever the layer's scheme.
        #[cfg(feature = "jose")]
        let scheme = if settings.dpop
            && token
                .token_type()
                .eq_ignore_ascii_case(crate::middleware::dpop::SCHEME)
        {
            crate::middleware::dpop::SCHEME
        } else {
            &settings.scheme
        };
        #[cfg(not(feature = "jose"))]
        let scheme = &settings.scheme;
        let header = token.header_value(scheme)?;
        let copies = if settings.max_uses.is_some() || !settings.header_copies {
            Box::default()
        } else {
            (0..HEADER_COPIES)
                .map(|_| crate::token::copy_header(&header))
                .collect()
        };
        Ok(Headers {
            token,
            header,
            copies,
        })
    }

    /// Builds the entry for a token (with its `headers`), fetched at `now`. `rng` picks the
    /// refresh point.
    pub(crate) fn new(
        headers: Headers,
        settings: &CacheSettings,
        generation: u64,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Entry {
        let Headers {
            mut token,
            header,
            copies,
        } = headers;
        // A refresh token stays with its grant: nothing the layer hands out can leak it.
        token.forget_refresh_token();
        let lifetime = token
            .expires_at()
            .map_or(settings.default_lifetime, |at| {
                at.saturating_duration_since(now)
            })
            .min(MAX_LIFETIME);
        let allowance = EXPIRY_ALLOWANCE.min(lifetime / 10);
        let usable_until = later(now, lifetime - allowance);
        // A margin larger than half the lifetime would make short-lived tokens due on arrival.
        let margin = settings.expiry_margin.min(lifetime / 2).max(allowance);
        let refresh_target = later(now, lifetime - margin);
        let refresh_at = if settings.refresh_ahead && settings.max_uses.is_none() {
            // The last fifth of the time before the target (at most 5 minutes), from a random
            // point of its first half, so that a fleet of processes spreads its refreshes.
            let window = ((lifetime - margin) / 5).min(REFRESH_WINDOW_MAX);
            let half = u64::try_from((window / 2).as_nanos()).unwrap_or(u64::MAX);
            refresh_target - window + Duration::from_nanos(rng.u64(0..=half))
        } else {
            refresh_target
        };
        Entry {
            token,
            header,
            copies,
            generation,
            fetched_at: now,
            // No quiet period until a response accepts the token.
            quiet_until: now,
            refresh_at,
            refresh_target,
            usable_until,
            uses_left: settings.max_uses.map(|uses| Arc::new(AtomicU32::new(uses))),
            accepted: false,
        }
    }

    /// This entry once a response accepted its token: the same token, generation, instants
    /// and use budget, with its quiet period (until its refresh point; none for a
    /// use-limited token, whose every use is counted).
    pub(crate) fn accepted(&self) -> Entry {
        Entry {
            quiet_until: if self.uses_left.is_some() {
                self.fetched_at
            } else {
                self.refresh_at
            },
            accepted: true,
            ..self.clone()
        }
    }

    /// Whether a request at `now` may send the token; claims a use of a use-limited token.
    pub(crate) fn use_at(&self, now: Instant) -> Use {
        if now >= self.usable_until || !self.claim() {
            return Use::Wait;
        }
        Use::Send {
            refresh: now >= self.refresh_at,
            stale: now >= self.refresh_target,
        }
    }

    /// The copy of the header for `slot` (any number: it wraps).
    #[inline(always)]
    pub(crate) fn header_copy(&self, slot: usize) -> HeaderValue {
        // Without copies, the header itself.
        self.copies
            .get(slot % HEADER_COPIES)
            .unwrap_or(&self.header)
            .clone()
    }

    /// Takes one use of the token: `true` if it may be sent (always, when unlimited).
    pub(crate) fn claim(&self) -> bool {
        match self.uses_left.as_deref() {
            None => true,
            Some(left) => left
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(margin: u64, refresh_ahead: bool) -> CacheSettings {
        CacheSettings {
            expiry_margin: Duration::from_secs(margin),
            refresh_ahead,
            ..CacheSettings::default()
        }
    }

    fn entry(lifetime: Duration, settings: &CacheSettings) -> (Instant, Entry) {
        let now = Instant::now();
        let token = Token::new("t").with_expires_at(now + lifetime);
        let mut rng = fastrand::Rng::with_seed(9);
        (
            now,
            Entry::new(
                Entry::headers(token, settings).unwrap(),
                settings,
                1,
                now,
                &mut rng,
            ),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_token_is_refreshed_before_its_target_and_sent_until_ten_seconds_before_expiry()
    {
        let hour = Duration::from_secs(3600);
        let (now, e) = entry(hour, &settings(30, true));
        assert_eq!(e.usable_until, now + hour - EXPIRY_ALLOWANCE);
        assert_eq!(e.refresh_target, now + hour - Duration::from_secs(30));
        // Window: 5 minutes (a fifth of 3570 s is more); the point in its first half.
        let window_start = e.refresh_target - Duration::from_secs(300);
        assert!(e.refresh_at >= window_start);
        assert!(e.refresh_at <= window_start + Duration::from_secs(150));
        assert_eq!(e.quiet_until, now, "not quiet before a response accepts it");
        assert_eq!(e.accepted().quiet_until, e.refresh_at);
    }

    #[tokio::test(start_paused = true)]
    async fn short_tokens_keep_most_of_their_life() {
        let (now, e) = entry(Duration::from_secs(2), &settings(30, false));
        // Allowance: a tenth of 2 s; margin: half of it.
        assert_eq!(e.usable_until, now + Duration::from_millis(1800));
        assert_eq!(e.refresh_target, now + Duration::from_secs(1));
        assert_eq!(e.refresh_at, e.refresh_target);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_target_the_token_is_still_sent_until_usable_until() {
        let (now, e) = entry(Duration::from_secs(20), &settings(30, true));
        assert_eq!(
            e.use_at(now),
            Use::Send {
                refresh: false,
                stale: false
            }
        );
        assert_eq!(
            e.use_at(now + Duration::from_secs(12)),
            Use::Send {
                refresh: true,
                stale: true
            }
        );
        assert_eq!(e.use_at(e.usable_until), Use::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_margin_below_the_allowance_is_raised_to_it() {
        let (_, e) = entry(Duration::from_secs(3600), &settings(0, false));
        assert_eq!(e.refresh_target, e.usable_until);
    }

    #[tokio::test(start_paused = true)]
    async fn use_limited_tokens_are_checked_on_every_use() {
        let mut s = settings(30, true);
        s.max_uses = Some(2);
        let (now, e) = entry(Duration::from_secs(3600), &s);
        assert_eq!(e.quiet_until, now);
        assert!(matches!(e.use_at(now), Use::Send { .. }));
        // Accepted, it is still checked on every use, and keeps what is left of its budget.
        let accepted = e.accepted();
        assert_eq!(accepted.quiet_until, now);
        assert!(matches!(accepted.use_at(now), Use::Send { .. }));
        assert_eq!(accepted.use_at(now), Use::Wait);
        assert_eq!(e.use_at(now), Use::Wait);
    }
}
