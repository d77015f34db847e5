//! A service's handle on its layer: what each response future holds, and the header copy a
//! service makes for its clones.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::ArcSwapOption;
use http::HeaderValue;

use crate::{cache::Entry, layer::LayerState, token};

/// A reference to a layer's state with a reference count of its own: a service and its clones
/// share one, a service that keeps sending requests makes its own (see
/// [`AuthService`](crate::AuthService)), and each response future clones the one of the
/// service that sent it. So services driven from different cores never write one shared count
/// per request.
pub(crate) type LayerHandle = Arc<ServiceHandle>;

/// A service's handle on its layer's state, with, for the handle a service shares with its
/// clones, a copy of the current token's header that only they send.
///
/// Cloned into each response future. A handle per service (and one per service's clones)
/// rather than one per layer keeps the reference counts of services on different cores on
/// different cache lines; the header copy does the same for the header of a service cloned
/// for each request, which would otherwise count references on the cache's one header.
pub(crate) struct ServiceHandle {
    state: Arc<LayerState>,
    header: Option<ArcSwapOption<HeaderCopy>>,
    /// The highest generation a response to this handle's requests accepted: the cache hears
    /// of each token's first acceptance here once, not of every response.
    accepted: AtomicU64,
}

/// A token's header, copied into a buffer of its own.
pub(crate) struct HeaderCopy {
    generation: u64,
    header: HeaderValue,
}

impl ServiceHandle {
    /// A handle that sends the cache's header.
    pub(crate) fn new(state: Arc<LayerState>) -> ServiceHandle {
        ServiceHandle {
            state,
            header: None,
            accepted: AtomicU64::new(0),
        }
    }

    /// A handle that sends a copy of its own, made when a request first carries a token.
    pub(crate) fn with_header_copy(state: Arc<LayerState>) -> ServiceHandle {
        ServiceHandle {
            state,
            header: Some(ArcSwapOption::empty()),
            accepted: AtomicU64::new(0),
        }
    }

    /// A response accepted the token of `generation`: the first time for this handle, the
    /// cache is told (a token accepted and later rejected was revoked, not part of a storm).
    #[inline(always)]
    pub(crate) fn accepted(&self, generation: u64) {
        if self.accepted.load(Relaxed) < generation {
            self.first_accepted(generation);
        }
    }

    #[cold]
    #[inline(never)]
    fn first_accepted(&self, generation: u64) {
        self.accepted.fetch_max(generation, Relaxed);
        self.state.cache.accept(generation);
    }

    /// The state this handle is on.
    pub(crate) fn state(&self) -> &Arc<LayerState> {
        &self.state
    }

    /// The header to send `entry` with: this handle's copy, made or renewed if it is of another
    /// token, or the cache's own for a handle without a copy, or for a token of limited uses (a
    /// copy would cost more than it saves).
    #[inline]
    pub(crate) fn header(&self, entry: &Entry) -> HeaderValue {
        let Some(copy) = &self.header else {
            return entry.header.clone();
        };
        if let Some(current) = &*copy.load() {
            if current.generation == entry.generation {
                return current.header.clone();
            }
        }
        self.renew_header(copy, entry)
    }

    #[cold]
    fn renew_header(&self, copy: &ArcSwapOption<HeaderCopy>, entry: &Entry) -> HeaderValue {
        if entry.is_use_limited() {
            return entry.header.clone();
        }
        let header = token::copy_header(&entry.header);
        copy.store(Some(Arc::new(HeaderCopy {
            generation: entry.generation,
            header: header.clone(),
        })));
        header
    }
}

impl fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.state, f)
    }
}

impl std::ops::Deref for ServiceHandle {
    type Target = LayerState;

    fn deref(&self) -> &LayerState {
        &self.state
    }
}
