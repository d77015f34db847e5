//! Integrations with other crates, each behind its feature but gRPC's request-side checks: gRPC
//! (tonic), tower-http's redirect follower, `reqwest_middleware`. The modules are public at the
//! crate root.

pub mod grpc;
#[cfg(feature = "follow-redirect")]
pub mod redirect;
#[cfg(feature = "reqwest-middleware")]
pub mod reqwest_middleware;
#[cfg(feature = "oauth")]
pub mod reqwest_redirect;
