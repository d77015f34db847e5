//! Guides: how the layer works, and how to use it with each kind of token source and client.
//!
//! The API pages say what each item does; these pages say how the pieces fit together and what
//! to know before production. Every promise they make is listed, with the test that proves it,
//! in [GUARANTEES.md](https://github.com/tower-bearer/tower-bearer/blob/main/docs/GUARANTEES.md).
//!
//! | guide | about |
//! |---|---|
//! | [`how_it_works`] | a token's life, the hot path, single flight, retries and backoff, 401s and revocations, the token endpoint, secrets, errors |
//! | [`token_sources`] | client credentials, refresh tokens and authorization codes, stores, discovery, revocation, sources of your own, resource indicators, token exchange and a token per key |
//! | [`dpop`] | `private_key_jwt` and DPoP-bound tokens (feature `jose`) |
//! | [`clients`] | hyper, axum, tonic, reqwest, redirects; what a 401 does per body type; where the token may go |
//! | [`fleets`] | one token for many processes, through Redis (feature `redis`) |
//!
//! A guide whose examples need a cargo feature is shown only in documentation built with it:
//! docs.rs builds every feature, and so does `cargo doc --open --all-features` in a checkout.

#[doc = include_str!("how_it_works.md")]
pub mod how_it_works {}

#[cfg_attr(feature = "oauth", doc = include_str!("token_sources.md"))]
#[cfg_attr(
    not(feature = "oauth"),
    doc = "Where the layer's tokens come from: OAuth 2.0 grants, stores, discovery and \
           revocation.\n\nBuild the documentation with the `oauth` feature (on by default) to \
           read this guide."
)]
pub mod token_sources {}

#[cfg_attr(feature = "jose", doc = include_str!("dpop.md"))]
#[cfg_attr(
    not(feature = "jose"),
    doc = "Key-based client authentication (`private_key_jwt`) and DPoP-bound tokens.\n\n\
           Build the documentation with the `jose` feature (on by default) to read this guide."
)]
pub mod dpop {}

#[doc = include_str!("clients.md")]
pub mod clients {}

#[cfg_attr(all(feature = "redis", feature = "oauth"), doc = include_str!("fleets.md"))]
#[cfg_attr(
    not(all(feature = "redis", feature = "oauth")),
    doc = "One token for many processes, shared through Redis.\n\nBuild the documentation \
           with the `redis` feature (and `oauth`, on by default) to read this guide: \
           `cargo doc --open --features redis`."
)]
pub mod fleets {}
