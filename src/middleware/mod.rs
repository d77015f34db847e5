//! The tower middleware: [`AuthLayer`](layer::AuthLayer) and its settings,
//! [`AuthService`](service::AuthService) (the per-request path), its
//! [`ResponseFuture`](future::ResponseFuture) (acquire → send → on 401 refresh → resend), the
//! request and response types it serves, where a token may go, and how a 401 is read.
//! The modules are public at the crate root.

mod builder;
pub(crate) mod challenge;
#[cfg(feature = "jose")]
pub(crate) mod dpop;
pub mod future;
pub(crate) mod handle;
pub mod layer;
pub(crate) mod layer_state;
pub(crate) mod loopback;
pub mod message;
pub mod origin;
pub mod service;
pub(crate) mod spare;
