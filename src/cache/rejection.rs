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

/// What a scope challenge (a 403 `insufficient_scope` naming a scope) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Widening {
    /// The scope grew: the token is forgotten, and the next fetch asks for the wider scope.
    Widened,
    /// Nothing new: the scope asked for is asked for already, and the refused token is no
    /// longer current (another request widened first): resend, with the next token.
    Newer,
    /// Nothing to do: the source cannot widen, the cache is shared with other processes, the
    /// refused token was granted that scope or already asked for it (the server insists), or
    /// the scope would grow past the bound.
    Refused,
}

/// Most scope tokens a cache asks for beyond its source's, and most bytes: a server naming new
/// scopes at every answer costs a bounded number of fetches.
const MOST_SCOPE_TOKENS: usize = 32;
const MOST_SCOPE_BYTES: usize = 1024;

impl TokenCache {
    /// A response to a request sent with the token of `generation` asked for `scope`
    /// (RFC 6750 §3.1). Adds it to the scope every fetch asks for, and forgets the current token,
    /// if that widens the scope; see [`Widening`].
    pub(crate) fn widen_scope(&self, scope: &str, generation: u64) -> Widening {
        #[cfg(feature = "redis")]
        if self.settings.shared.is_some() {
            // Processes sharing a token share its scope: widening one process's would hand
            // its wider token to every other, or theirs to it.
            return Widening::Refused;
        }
        if !self.source.can_widen_scope() {
            return Widening::Refused;
        }
        let mut state = self.lock_state();
        let current = self.current.load_full();
        let still_current = current
            .as_ref()
            .filter(|entry| entry.generation == generation);
        if let Some(granted) = still_current.and_then(|entry| entry.token.scope()) {
            // The server granted that scope to the token it now refuses for lack of it: it
            // insists, and another token would not do better.
            if crate::scope::covers(granted, scope) {
                return Widening::Refused;
            }
        }
        let held = state.scope.as_deref().unwrap_or_default();
        let wider = crate::scope::union(held, scope);
        if wider == held {
            // Asked for already: by another request that met the same challenge (the token is
            // gone, or replaced), or in vain (the token is still the one refused).
            return if still_current.is_some() {
                Widening::Refused
            } else {
                Widening::Newer
            };
        }
        if wider.len() > MOST_SCOPE_BYTES || wider.split(' ').count() > MOST_SCOPE_TOKENS {
            return Widening::Refused;
        }
        state.scope = Some(wider.into());
        if let Some(entry) = self.current.swap(None) {
            self.remember_rejected(&mut state.rejected, entry.token.access_token());
        }
        drop(state);
        tracing::debug!(target: "tower_bearer", layer = %self.counters.name, "scope challenge: the next fetch asks for a wider scope");
        Widening::Widened
    }

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
