//! The inner service a resend after a 401 goes through.
//!
//! A resend needs a readied service of its own, and the service that sent the request may be
//! gone by then (`svc.clone().oneshot(req)` drops it right after `call`). tower's `Retry` keeps
//! a clone of the inner service in every response future; for a client such as hyper-util's,
//! whose clone counts references on counts every caller shares, that is several contended
//! atomic operations per request, paid for the rare request that is rejected. Instead, a
//! service keeps one clone of its inner service, shared with its own clones, and each request
//! that may be resent takes a reference to it; the clone a resend sends through is made from
//! it only when a resend happens.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::middleware::handle::LayerHandle;

/// A clone of the inner service, kept for resends. In a mutex so that it can be shared by
/// futures on other threads without asking the service to be `Sync`; it is locked only to be
/// cloned, after a 401, never across an await.
pub(crate) struct SpareService<S> {
    service: Mutex<S>,
    /// `S::clone`, kept here so that the response future needs no `S: Clone` bound.
    clone: fn(&S) -> S,
    /// A handle on the layer of the service that made it, which its clones share: a request
    /// that may be resent holds its layer through the spare, one reference count where it
    /// would take two. `None` for a keyed service, whose requests go to the layers of many
    /// keys.
    pub(crate) layer: Option<LayerHandle>,
}

/// A service's spare: made at its first request that may be resent (or its first clone), and
/// shared with its clones, which are given it when they are made.
pub(crate) enum Spare<S> {
    /// The spare of the service this one was cloned from.
    Given(Arc<SpareService<S>>),
    /// This service's own, once made.
    Own(OnceLock<Arc<SpareService<S>>>),
}

impl<S> Spare<S> {
    /// No spare yet.
    pub(crate) const fn new() -> Self {
        Spare::Own(OnceLock::new())
    }
}

impl<S: Clone> Spare<S> {
    /// The spare, made from `inner` (and holding `layer`, the service's handle) the first time
    /// it is asked for.
    #[inline]
    pub(crate) fn of(&self, inner: &S, layer: Option<&LayerHandle>) -> Arc<SpareService<S>> {
        Arc::clone(match self {
            Spare::Given(spare) => spare,
            Spare::Own(own) => own.get_or_init(|| {
                Arc::new(SpareService {
                    service: Mutex::new(inner.clone()),
                    clone: S::clone,
                    layer: layer.cloned(),
                })
            }),
        })
    }

    /// The spare for a clone of the service: this service's, made now if it has none, so that
    /// a service cloned for each request does not make one per request.
    #[inline]
    pub(crate) fn for_clone(&self, inner: &S, layer: Option<&LayerHandle>) -> Self {
        Spare::Given(self.of(inner, layer))
    }
}

/// What sends a request again after a 401.
pub(crate) enum Resender<S> {
    /// The service's spare: a clone of it is made for the resend.
    Spare(Arc<SpareService<S>>),
    /// The service the request was sent with (a request that waited for its token kept it).
    /// Boxed, as the rest of that slow path is, so that it does not grow every request's
    /// future by the size of the service.
    Called(Box<S>),
}

impl<S> Resender<S> {
    /// The handle on the layer the spare holds, if it is a spare that holds one.
    #[inline(always)]
    pub(crate) fn layer(&self) -> Option<&LayerHandle> {
        match self {
            Resender::Spare(spare) => spare.layer.as_ref(),
            Resender::Called(_) => None,
        }
    }

    /// The service to resend with; it still has to be readied.
    pub(crate) fn into_service(self) -> S {
        match self {
            Resender::Spare(spare) => {
                let service = spare.service.lock().unwrap_or_else(PoisonError::into_inner);
                (spare.clone)(&service)
            }
            Resender::Called(service) => *service,
        }
    }
}
