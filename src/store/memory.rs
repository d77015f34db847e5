//! A store that keeps tokens in memory.

use std::sync::{Arc, Mutex, PoisonError};

use super::{StoredToken, TokenStore};
use crate::Error;

/// Keeps the token state in memory; clones share it. Nothing survives a restart.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<Option<StoredToken>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store that starts out holding `token` (for example a refresh token from configuration).
    pub fn with(token: StoredToken) -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(Some(token))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoredToken>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TokenStore for MemoryStore {
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        Ok(self.lock().clone())
    }

    async fn save(&self, token: &StoredToken) -> Result<(), Error> {
        *self.lock() = Some(token.clone());
        Ok(())
    }

    async fn clear(&self) -> Result<(), Error> {
        *self.lock() = None;
        Ok(())
    }
}
