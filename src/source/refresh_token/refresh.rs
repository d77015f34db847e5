//! A refresh under the store's lock: load the stored state, send its refresh token once, save
//! the rotated one; a refresh whose save failed is kept in memory (with the lock) and saved
//! again in the background.

use std::sync::{Arc, Weak, atomic::Ordering::SeqCst};

use tokio::sync::oneshot;

use super::{
    GrantState, Inner, SAVE_LATER_FIRST, SAVE_LATER_MOST, Unsaved, foreign_store, kept_in_memory,
};
use crate::{
    Error, Token,
    store::{StoreLock, StoredToken},
};

impl Inner {
    /// Refreshes, and sends the result to `answer`. A token bought for a caller that has gone
    /// meanwhile is kept for the next fetch. A refresh whose save failed is saved again in the
    /// background ([`save_later`](Self::save_later)).
    pub(super) async fn fetch(self: Arc<Self>, answer: oneshot::Sender<Result<Token, Error>>) {
        let mut state = self.state.lock().await;
        let result = self.fetch_locked(&mut state).await;
        let unsaved = state.unsaved.is_some();
        if result.is_ok() && answer.is_closed() {
            tracing::debug!(target: "tower_bearer", "refreshed token kept for the next fetch: its caller gave up");
            state.handed_out = None;
        } else {
            let _ = answer.send(result);
        }
        drop(state);
        if unsaved && !self.saving_later.swap(true, SeqCst) {
            tokio::spawn(Inner::save_later(Arc::downgrade(&self)));
        }
    }

    /// Saves the state of a refresh whose save failed, away from any caller: an idle layer
    /// makes no fetch that would, and the store's lock that refresh keeps holds the other
    /// processes off until the state is saved. Tries after 1 s, then after pauses doubling up
    /// to 30 s, until it is saved (or given up for a newer state in the store), or the grant
    /// is dropped.
    async fn save_later(inner: Weak<Inner>) {
        /// Lets a later failure start another task if this one goes with its runtime.
        struct Ended(Weak<Inner>);
        impl Drop for Ended {
            fn drop(&mut self) {
                if let Some(inner) = self.0.upgrade() {
                    inner.saving_later.store(false, SeqCst);
                }
            }
        }
        let _ended = Ended(inner.clone());
        let mut pause = SAVE_LATER_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            // A fetch holding the state ends within its own deadlines; this waits as long.
            let Ok(mut state) = tokio::time::timeout(SAVE_LATER_MOST, inner.state.lock()).await
            else {
                continue;
            };
            if state.unsaved.is_none() {
                inner.saving_later.store(false, SeqCst);
                return;
            }
            match inner.settle_unsaved(&mut state).await {
                Ok(lock) => {
                    // Saved: the other processes may refresh again.
                    drop(lock);
                    inner.saving_later.store(false, SeqCst);
                    return;
                }
                Err(err) => {
                    tracing::debug!(target: "tower_bearer", error = %err, "the refreshed state is still not saved");
                }
            }
            drop(state);
            pause = (pause * 2).min(SAVE_LATER_MOST);
        }
    }

    /// Takes the store's lock, if it has one (a store other processes share), and settles a
    /// refresh whose save failed: saves its state, or drops it for a newer one another process
    /// saved. A lock kept by that refresh is used again while it still holds. Returns the lock.
    async fn settle_unsaved(&self, state: &mut GrantState) -> Result<Option<StoreLock>, Error> {
        let kept = state
            .unsaved
            .as_mut()
            .and_then(|unsaved| unsaved.lock.take());
        let shared = match kept {
            Some(lock) if lock.confirm().await.is_ok() => Some(lock),
            lost => {
                // Let a lost lock go before asking for a new one.
                drop(lost);
                self.store.lock_boxed().await?
            }
        };
        if let Some(unsaved) = state.unsaved.take() {
            match self.save_unsaved(&unsaved, shared.as_ref()).await {
                Ok(true) => {
                    *state = GrantState {
                        loaded: true,
                        stored: Some(unsaved.state),
                        ..GrantState::default()
                    };
                }
                // The store moved on past both: read again.
                Ok(false) => state.loaded = false,
                Err(err) => {
                    state.unsaved = Some(Unsaved {
                        lock: shared,
                        ..unsaved
                    });
                    return Err(err);
                }
            }
        }
        Ok(shared)
    }

    async fn fetch_locked(&self, state: &mut GrantState) -> Result<Token, Error> {
        // With a store other processes share, hold them off until the new state is saved, and
        // read what they may have saved meanwhile.
        let shared = self.settle_unsaved(state).await?;
        if shared.is_some() || !state.loaded || state.rejected.is_some() {
            let stored = self.load().await?;
            let same_refresh_token = stored.as_ref().and_then(StoredToken::refresh_token)
                == state.stored.as_ref().and_then(StoredToken::refresh_token);
            if let Some(rejected) = &state.rejected {
                if same_refresh_token {
                    return Err(rejected.clone());
                }
            }
            if state.loaded && same_refresh_token {
                // Nobody refreshed meanwhile: what this grant knows of that token still holds.
                state.stored = stored;
            } else {
                *state = GrantState {
                    loaded: true,
                    stored,
                    handed_out: state.handed_out.take(),
                    ..GrantState::default()
                };
            }
        }

        if let Some(token) = state
            .stored
            .as_ref()
            .and_then(StoredToken::live_access_token)
            .filter(|token| Some(token.access_token()) != state.handed_out.as_ref())
        {
            state.handed_out = Some(token.access_token().clone());
            return Ok(token);
        }

        let Some(refresh) = state
            .stored
            .as_ref()
            .and_then(StoredToken::refresh_token)
            .cloned()
        else {
            return Err(Error::AuthorizationRequired(
                "the token store holds no refresh token; authorize first".into(),
            ));
        };

        let mut params: Vec<(&str, &str)> = Vec::with_capacity(3 + self.params.len());
        params.push(("grant_type", "refresh_token"));
        params.push(("refresh_token", refresh.secret()));
        if let Some(scope) = &self.scope {
            params.push(("scope", scope));
        }
        params.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        // The fence: a holder that lost the lock (it stalled past its lease, and another
        // process may hold it now) sends nothing.
        if let Some(lock) = &shared {
            lock.confirm().await?;
        }
        match self.endpoint.request(&params).await {
            Err(err) if err.is_terminal() => {
                let err = if state.unanswered
                    && err.oauth().is_some_and(|e| e.code() == "invalid_grant")
                {
                    Error::AuthorizationRequired(
                        "the refresh token was refused after an earlier refresh with it went \
                         unanswered: the server had probably rotated it and does not accept it \
                         again; authorize again"
                            .into(),
                    )
                } else {
                    err
                };
                tracing::warn!(target: "tower_bearer", error = %err, "refresh token rejected; a new authorization is required");
                state.unanswered = false;
                state.rejected = Some(err.clone());
                Err(err)
            }
            Err(err) => {
                if !err.is_unprocessed() {
                    tracing::warn!(target: "tower_bearer", error = %err, "refresh went unanswered; the next fetch sends the same refresh token once more");
                    state.unanswered = true;
                }
                Err(err)
            }
            Ok(token) => {
                state.unanswered = false;
                let next = StoredToken::from_response(&token, Some(&refresh))
                    .with_client(self.client.clone());
                // The old refresh token is spent either way: keep the new one in memory even if
                // the save fails, and never hand out the access token before the save succeeds.
                state.stored = Some(next.clone());
                let saved = match &shared {
                    Some(lock) => lock.confirm().await,
                    None => Ok(()),
                };
                match saved.and(self.store.save_boxed(&next).await) {
                    Ok(()) => {
                        state.handed_out = Some(token.access_token().clone());
                        Ok(token)
                    }
                    Err(err) => {
                        tracing::warn!(target: "tower_bearer", error = %err, "refreshed, but the new state could not be saved: its refresh token is kept in memory and saved at the next fetch");
                        state.unsaved = Some(Unsaved {
                            state: next,
                            spent: refresh,
                            lock: shared,
                        });
                        Err(kept_in_memory(err))
                    }
                }
            }
        }
    }

    /// Saves the state of a refresh whose save failed, if the store still holds the refresh
    /// token that refresh spent (or already the new one): `true` once saved. `false` if the
    /// store moved on past both (another process saved a newer state, a new authorization):
    /// the store's state wins, and this one is dropped.
    async fn save_unsaved(
        &self,
        unsaved: &Unsaved,
        lock: Option<&StoreLock>,
    ) -> Result<bool, Error> {
        let stored = self.load().await.map_err(kept_in_memory)?;
        let stored = stored.as_ref().and_then(StoredToken::refresh_token);
        if stored != Some(&unsaved.spent) && stored != unsaved.state.refresh_token() {
            tracing::warn!(target: "tower_bearer", "the store holds a refresh token saved after this process's unsaved refresh: using it");
            return Ok(false);
        }
        if let Some(lock) = lock {
            lock.confirm().await.map_err(kept_in_memory)?;
        }
        self.store
            .save_boxed(&unsaved.state)
            .await
            .map_err(kept_in_memory)?;
        Ok(true)
    }

    /// The store's state, if it belongs to this client: a state another client saved is an
    /// error, and nothing of it is sent.
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        let stored = self.store.load_boxed().await?;
        if stored.as_ref().is_some_and(|s| self.is_foreign(s)) {
            return Err(foreign_store());
        }
        Ok(stored)
    }

    /// Whether `stored` was saved by another client (another token endpoint or client id).
    pub(super) fn is_foreign(&self, stored: &StoredToken) -> bool {
        stored.client().is_some_and(|client| client != self.client)
    }
}
