//! A service's handle on its layer: what each response future holds, and which copy of the
//! header a service's clones send.

use std::{fmt, sync::Arc};

use http::HeaderValue;

use crate::{cache::Entry, middleware::layer_state::LayerState};

/// A reference to a layer's state with a reference count of its own: a service and its clones
/// share one, a service that keeps sending requests makes its own (see
/// [`AuthService`](crate::AuthService)), and each response future clones the one of the
/// service that sent it. So services driven from different cores never write one shared count
/// per request.
pub(crate) type LayerHandle = Arc<ServiceHandle>;

/// A service's handle on its layer's state; for the handle a service shares with its clones,
/// which copy of each token's header they send.
///
/// Cloned into each response future. A handle per service (and one per service's clones)
/// rather than one per layer keeps the reference counts of services on different cores on
/// different cache lines; the header copy does the same for the header of a service cloned
/// for each request, which would otherwise count references on the cache's one header.
pub(crate) struct ServiceHandle {
    state: Arc<LayerState>,
    /// The copy of each token's header this handle sends ([`Entry::header_copy`]); `None`
    /// for the cache's own header.
    slot: Option<usize>,
}

impl ServiceHandle {
    /// A handle that sends the cache's header.
    pub(crate) fn new(state: Arc<LayerState>) -> ServiceHandle {
        ServiceHandle { state, slot: None }
    }

    /// A handle that sends a copy of each token's header, the next one in turn.
    pub(crate) fn with_header_copy(state: Arc<LayerState>) -> ServiceHandle {
        let slot = state.cache.next_header_copy();
        ServiceHandle {
            state,
            slot: Some(slot),
        }
    }

    /// The header to send `entry` with: this handle's copy, or the cache's own for a handle
    /// without one.
    #[inline]
    pub(crate) fn header(&self, entry: &Entry) -> HeaderValue {
        match self.slot {
            Some(slot) => entry.header_copy(slot),
            None => entry.header.clone(),
        }
    }

    /// The state this handle is on.
    pub(crate) fn state(&self) -> &Arc<LayerState> {
        &self.state
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
