//! What answers and revocations do to the current token: a success accepts it (its rejection
//! from then on is a revocation), a 401 forgets it if it is still current (unless fresh tokens
//! keep being rejected, see [`backoff`](super::backoff)), `invalidate` and `revoke` forget it
//! at once.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use tokio::time::Instant;

use super::{CacheState, Entry, Outcome, TokenCache, backoff::Verdict};
use crate::Token;

/// What a rejection (401, gRPC `UNAUTHENTICATED`) did to the token it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// It was current and is forgotten: the next request fetches a new token.
    Forgotten,
    /// It is current and kept: fresh tokens keep being rejected, and the next fetch waits for
    /// the backoff. Resending with the same token is pointless.
    Kept,
    /// It was no longer current: a newer token replaced it, or is being fetched.
    NotCurrent,
}

impl TokenCache {
    /// A response accepted the token of `generation` (a success): a rejection of it
    /// from now on is a revocation. The first time, its entry is replaced by the accepted one
    /// (see [`Entry::accepted`]), whose requests take the quiet path.
    pub(crate) fn accept(&self, generation: u64) {
        // The first answer to accept it goes on; the others (all at once, perhaps) stop here.
        if self.accepted.fetch_max(generation, Relaxed) >= generation {
            return;
        }
        let current = self.current.load_full();
        if let Some(entry) = current
            .as_ref()
            .filter(|e| e.generation == generation && !e.accepted)
        {
            // Only over that same entry: a token installed, rejected or revoked meanwhile
            // stays as it is. No lock: this runs on a response.
            let accepted = Some(Arc::new(entry.accepted()));
            self.current.compare_and_swap(&current, accepted);
        }
    }

    /// A response rejected the token of `generation`. Forgets it if it is still current,
    /// unless fresh tokens keep being rejected (see [`RejectionStreak`]).
    pub(crate) fn reject(&self, generation: u64) -> Rejection {
        let now = Instant::now();
        let mut state = self.lock_state();
        if self
            .current
            .load()
            .as_ref()
            .is_none_or(|e| e.generation != generation)
        {
            return Rejection::NotCurrent;
        }
        let CacheState {
            rejections,
            rng,
            rejected,
            ..
        } = &mut *state;
        let accepted = self.accepted.load(Relaxed) >= generation;
        match rejections.rejected(generation, accepted, now, &self.settings.backoff, rng) {
            Verdict::Forget => {
                if let Some(entry) = self.current.swap(None) {
                    self.remember_rejected(rejected, entry.token.access_token());
                }
                self.counters.rejected();
                tracing::debug!(target: "tower_bearer", layer = %self.counters.name, "rejected token forgotten; the next request fetches a new one");
                Rejection::Forgotten
            }
            Verdict::Keep => Rejection::Kept,
        }
    }

    /// Forgets the current token if its access token is `token`'s, at once (no rejection
    /// backoff: the caller says so explicitly). `true` if it was forgotten by this call.
    pub(crate) fn invalidate_token(&self, token: &Token) -> bool {
        let mut state = self.lock_state();
        let current = self.current.load();
        if current
            .as_ref()
            .is_none_or(|e| e.token.access_token() != token.access_token())
        {
            return false;
        }
        drop(current);
        self.remember_rejected(&mut state.rejected, token.access_token());
        self.current.store(None);
        self.counters.rejected();
        true
    }

    /// Keeps `token` in `slot` as the last one rejected, if this cache shares tokens with a
    /// fleet.
    pub(super) fn remember_rejected(
        &self,
        slot: &mut Option<crate::AccessToken>,
        token: &crate::AccessToken,
    ) {
        #[cfg(feature = "redis")]
        if self.settings.shared.is_some() {
            *slot = Some(token.clone());
        }
        #[cfg(not(feature = "redis"))]
        let _ = (slot, token);
    }

    /// Tells the processes this cache shares tokens with, if any, that the shared token is
    /// revoked (for [`AuthLayer::revoke`](crate::AuthLayer::revoke)).
    #[cfg(feature = "redis")]
    pub(crate) async fn revoke_shared(self: &Arc<Self>) -> Result<(), crate::Error> {
        match &self.settings.shared {
            Some(shared) => {
                shared
                    .revoke(&super::SharedCache::new(Arc::clone(self)))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Forgets everything (for [`AuthLayer::revoke`](crate::AuthLayer::revoke)): the current
    /// token, which is returned, and the fetch in flight, whose token will not be installed
    /// (its waiters ask again).
    pub(crate) fn forget(&self) -> Option<Arc<Entry>> {
        let mut state = self.lock_state();
        let flight = state.flight.take();
        state.rejections.reset();
        let taken = self.current.swap(None);
        self.next_background.store(0, Relaxed);
        drop(state);
        if let Some(flight) = flight {
            flight.resolve(Outcome::Superseded);
        }
        taken
    }
}
