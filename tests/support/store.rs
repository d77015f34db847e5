//! A token store that fails on demand: shared by the refresh-token and authorization-code tests.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
};

use tower_bearer::{
    Error,
    error::StoreError,
    store::{MemoryStore, StoreLock, StoredToken, TokenStore},
};

/// A store whose saves fail while `broken` is set. With `shared` set it has a lock, as a store
/// other processes share does: a grant then reads it again at every fetch; `held` counts the
/// locks taken and not yet let go.
#[derive(Clone, Default)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    pub broken: Arc<AtomicBool>,
    pub shared: bool,
    pub held: Arc<AtomicUsize>,
}

/// One of a [`FlakyStore`]'s locks: counted while held.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl FlakyStore {
    /// A store other processes could share (it has a lock), holding `rt`.
    pub async fn shared_with(rt: &str) -> Self {
        let store = FlakyStore {
            shared: true,
            ..FlakyStore::default()
        };
        store
            .inner
            .save(&StoredToken::new().with_refresh_token(rt))
            .await
            .unwrap();
        store
    }
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
    async fn lock(&self) -> Result<Option<StoreLock>, Error> {
        Ok(self.shared.then(|| {
            self.held.fetch_add(1, SeqCst);
            StoreLock::new(Held(Arc::clone(&self.held)))
        }))
    }
}
