//! A token store that fails on demand: shared by the refresh-token and authorization-code tests.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::SeqCst},
};

use tower_bearer::{
    Error,
    error::StoreError,
    store::{MemoryStore, StoredToken, TokenStore},
};

/// A store whose saves fail while `broken` is set.
#[derive(Clone, Default)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    pub broken: Arc<AtomicBool>,
}

impl TokenStore for FlakyStore {
    async fn load(&self) -> Result<Option<StoredToken>, Error> {
        self.inner.load().await
    }
    async fn save(&self, token: &StoredToken) -> Result<(), Error> {
        if self.broken.load(SeqCst) {
            return Err(Error::Store(StoreError::new("disk full")));
        }
        self.inner.save(token).await
    }
    async fn clear(&self) -> Result<(), Error> {
        self.inner.clear().await
    }
}
