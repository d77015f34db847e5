//! Revocation (RFC 7009) of what a grant holds: the access token, then the refresh token, at
//! the endpoint; then everything is forgotten, here and in the store.

use super::{GrantState, Inner, foreign_store};
use crate::{Error, RefreshToken, Token, store::StoredToken};

impl Inner {
    /// Revokes at the endpoint what it can, then forgets everything here and in the store,
    /// whatever the endpoint said; the first error is returned.
    pub(super) async fn revoke(&self, current: Option<&Token>) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let mut first_error = None;
        // A refresh token bought and not saved is the grant's newest: revoked too. Its lock
        // goes first, so that taking the store's lock again cannot wait on it.
        let unsaved = state
            .unsaved
            .take()
            .and_then(|unsaved| unsaved.state.refresh_token().cloned());
        // With a store other processes share: hold them off, so that none saves a refresh over
        // the clearing, and revoke the refresh token they saved last.
        let shared = match self.store.lock_boxed().await {
            Ok(lock) => lock,
            Err(err) => {
                first_error = Some(err);
                None
            }
        };
        // A store holding another client's state is left as it is: none of it is sent, and
        // it is not cleared.
        let mut foreign = false;
        if shared.is_some() || !state.loaded {
            match self.store.load_boxed().await {
                Ok(Some(stored)) if self.is_foreign(&stored) => {
                    foreign = true;
                    state.stored = None;
                    first_error = Some(foreign_store());
                }
                Ok(stored) => state.stored = stored,
                Err(err) => first_error = Some(err),
            }
        }
        if self.endpoint.can_revoke() {
            // Revoking the refresh token also revokes the access tokens it bought (RFC 7009 §2.1)
            // on most servers; revoke the access token in use as well for those that do not.
            let stored = state.stored.as_ref().and_then(StoredToken::refresh_token);
            let mut refresh_tokens: Vec<&RefreshToken> = unsaved.iter().collect();
            refresh_tokens.extend(stored.filter(|rt| Some(*rt) != unsaved.as_ref()));
            for rt in refresh_tokens {
                if let Err(err) = self.endpoint.revoke(rt.secret(), "refresh_token").await {
                    first_error.get_or_insert(err);
                }
            }
            if let Some(token) = current {
                let revoked = self
                    .endpoint
                    .revoke(token.access_token().secret(), "access_token")
                    .await;
                if let Err(err) = revoked {
                    first_error.get_or_insert(err);
                }
            }
        }
        *state = GrantState {
            loaded: true,
            ..GrantState::default()
        };
        if !foreign {
            if let Err(err) = self.store.clear_boxed().await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
