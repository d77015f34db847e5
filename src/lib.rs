//! OAuth 2.0 bearer tokens for any [tower] HTTP or gRPC client: always valid, almost free per
//! request, and fetched once no matter how many requests want one.
//!
//! [`AuthLayer`] wraps a `Service<http::Request<B>>` and sets `Authorization: Bearer <token>` on
//! every request. The token lives in a lock-free cache; when it is missing or about to expire,
//! exactly one fetch goes to the [`TokenSource`] and every waiting request shares its outcome. A
//! `401 Unauthorized` makes the cache drop the token it rejected (only if it is still the current
//! one) and the request is resent once with a new token when its body can be replayed.
//!
//! New here? The [`guide`] module explains how the layer works and how to use it with each
//! kind of token source and client.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_bearer::{AuthLayer, Token, source::from_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_bearer::BoxError> {
//! // In production: ClientCredentials::builder("https://idp.example.com/oauth2/token")...
//! let source = from_fn(|| async { Ok(Token::new("t0k3n").with_expires_in(Duration::from_secs(60))) });
//! let auth = AuthLayer::new(source);
//!
//! // Any tower service taking http::Request: a hyper client, a tonic channel, ...
//! let api = service_fn(|req: Request<String>| async move {
//!     let ok = req.headers()["authorization"] == "Bearer t0k3n";
//!     let status = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
//!     Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
//! });
//! let client = ServiceBuilder::new().layer(auth.clone()).service(api);
//!
//! let request = Request::get("https://api.example.com/v1/items").body(String::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(auth.stats().fetches, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! | module | holds | source |
//! |---|---|---|
//! | [`layer`] | [`AuthLayer`]; [`AuthLayerBuilder`] and its checks; what the layer's clones share and how an answer is judged | `src/middleware/layer.rs`, `src/middleware/builder.rs`, `src/middleware/layer_state.rs` |
//! | [`service`] | [`AuthService`], the per-request hot path; the handle each response future holds, and which copy of the header a service's clones send; the spare inner service a resend goes through | `src/middleware/service.rs`, `src/middleware/handle.rs`, `src/middleware/spare.rs` |
//! | [`future`] | [`ResponseFuture`]: acquire → send → on 401 refresh → resend; the hot poll apart from the slow path | `src/middleware/future/` (`mod.rs`, `slow_path.rs`) |
//! | [`keyed`] | [`KeyedAuthLayer`](keyed::KeyedAuthLayer): a token per key (an audience, a tenant, a user), each with what a single layer does, in a bounded map with idle expiry | `src/keyed/` (`mod.rs`, `builder.rs`, `keys.rs`, `request.rs`, `service.rs`, `tokens.rs`) |
//! | [`message`] | [`AuthRequest`], [`AuthResponse`]: `http` and `reqwest` requests and responses | `src/middleware/message.rs` |
//! | [`origin`] | where a token may go: https only (http to loopback), origin limits, requests addressed by path alone; whether a host is loopback | `src/middleware/origin.rs`, `src/middleware/loopback.rs` |
//! | (internal) | reading a 401's `WWW-Authenticate` challenge | `src/middleware/challenge.rs` |
//! | (internal) | DPoP on requests: a proof per request, nonces per origin (feature `jose`) | `src/middleware/dpop.rs` |
//! | (internal) | the token cache: one current token, single flight and its waiters woken in batches, refresh ahead, backoff, what answers do to the token, and the trait through which it shares tokens with other processes | `src/cache/` (`mod.rs`, `settings.rs`, `entry.rs`, `refresh.rs`, `flight.rs`, `waiters.rs`, `backoff.rs`, `rejection.rs`, `shared.rs`) |
//! | (internal) | deadlines that never overflow, racing a future against one, whether the runtime has timers | `src/deadline.rs` |
//! | (internal) | scope values: their union, and which are valid | `src/scope.rs` |
//! | (internal) | cutting every secret a request carried out of the text its server answered (in every form it may be echoed) | `src/scrub.rs` |
//! | [`replay`] | which request bodies are resent after a 401, and [`ReplayableBody`](replay::ReplayableBody) for streams | `src/replay/` |
//! | [`source`] | the [`TokenSource`] trait and its implementations: `ClientCredentials`, `RefreshTokenGrant`, `AuthorizationCode`, `TokenExchange`, `JwtBearer`, the platforms' `GcpMetadataToken` and `AzureManagedIdentity` (feature `oauth`), [`from_fn`](source::from_fn), [`StaticToken`] | `src/source/` |
//! | [`assertion`] | credentials from the platform: [`AssertionSource`](assertion::AssertionSource), a token file, GitHub Actions' and GCP's identity tokens, a closure; the expiry read from a JWT (feature `oauth`) | `src/assertion/` (`mod.rs`, `file.rs`, `platform.rs`, `jwt.rs`) |
//! | (internal) | the OAuth 2.0 wire protocol: the builders' client settings (`config.rs`), token requests (`endpoint.rs`), client authentication (`private_key_jwt` and DPoP at the token endpoint in `key_binding.rs`), responses, discovery, PKCE (feature `oauth`) | `src/oauth/` |
//! | `jose` | [`SigningKey`](jose::SigningKey), JWS signing, DPoP proofs and client assertions (feature `jose`) | `src/jose/` (`mod.rs`, `key.rs`, `jws.rs`, `dpop.rs`, `assertion.rs`) |
//! | [`store`] | [`TokenStore`](store::TokenStore): where refresh tokens persist ([`MemoryStore`](store::MemoryStore), [`FileStore`](store::FileStore), shared by processes under its lock) | `src/store/` |
//! | `distributed` | `RedisCache`: one token fetch per lifetime for a fleet of processes (feature `redis`): the fetch protocol, the notices, the keys, the sealed values, the connection (one server or a cluster), the Lua scripts, the refresh-token store and its lock | `src/distributed/` (`mod.rs`, `fleet.rs`, `scripts.rs`, `notices.rs`, `key.rs`, `sealed.rs`, `connection.rs`, `store/`) |
//! | [`token`] | [`Token`] and the redacted, zeroized secret types | `src/token.rs` |
//! | [`grpc`] | gRPC: token failures as a `tonic::Status`, `UNAUTHENTICATED` in a stream's trailers | `src/integrations/grpc.rs` |
//! | `redirect` | `FilterToken`, a tower-http `FollowRedirect` policy (feature `follow-redirect`) | `src/integrations/redirect.rs` |
//! | `reqwest_redirect` | a redirect policy for a `reqwest::Client` under the layer (feature `oauth`) | `src/integrations/reqwest_redirect.rs` |
//! | `reqwest_middleware` | `AuthMiddleware` for `reqwest_middleware` (feature `reqwest-middleware`) | `src/integrations/reqwest_middleware.rs` |
//! | [`error`] | the [`Error`] type: its kinds, their classification, the causes it carries | `src/error/` (`mod.rs`, `classification.rs`, `oauth.rs`, `causes.rs`) |
//! | [`stats`] | [`Stats`], the layer's counters and metrics | `src/stats.rs` |
//! | [`guide`] | the guides: how it works, token sources, DPoP, clients, fleets (documentation only) | `src/guide/` (`mod.rs` and a Markdown file per guide) |
//!
//! The cache (single-flight fetching) and the token-endpoint protocol are internal; their
//! behaviour is described on [`AuthLayer`] and [`ClientCredentials`].
//!
//! # When tokens are fetched, and what callers see
//!
//! A token is refreshed in the background before its refresh target (its expiry less the
//! [margin](AuthLayerBuilder::expiry_margin)), and sent until its expiry less
//! [`EXPIRY_ALLOWANCE`](layer::EXPIRY_ALLOWANCE): while a token with life left exists, no caller
//! waits for a fetch or sees a fetch error, however the token endpoint fares. A transient
//! failure is retried within the fetch ([`fetch_attempts`](AuthLayerBuilder::fetch_attempts)),
//! so a blip costs waiting callers latency, not errors. Validity is one read of the monotonic
//! clock per request: it depends on no timer and on no runtime being driven.
//!
//! # Runtime
//!
//! Fetches run as Tokio tasks: on the caller's runtime, or on one given to
//! [`AuthLayerBuilder::runtime`]. Every wait for a fetch ends at its deadline (the fetch timeout
//! and a second), kept on the waiting caller's runtime, so a fetch whose runtime is never driven
//! again strands no one. Without a runtime,
//! requests fail with [`Error::NoRuntime`]; on a runtime without timers, with
//! [`Error::NoTimer`]; never with a panic or a hang.
//!
//! # Cargo features
//!
#![doc = document_features::document_features!()]
//!
//! [tower]: https://docs.rs/tower

#![deny(missing_docs, unsafe_code)]
// Nothing a server, Redis or a file sends can make the library panic: no unwrap, no expect, no
// indexing outside the tests (time arithmetic goes through `deadline::later`, or checked calls).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub mod assertion;
mod cache;
mod deadline;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod distributed;
pub mod error;
pub mod guide;
mod integrations;
#[cfg(feature = "jose")]
#[cfg_attr(docsrs, doc(cfg(feature = "jose")))]
pub mod jose;
pub mod keyed;
mod middleware;
#[cfg(feature = "oauth")]
mod oauth;
pub mod replay;
mod scope;
mod scrub;
pub mod source;
pub mod stats;
pub mod store;
pub mod token;

pub(crate) use middleware::challenge;
pub use middleware::{future, layer, message, origin, service};

pub use integrations::grpc;
#[cfg(feature = "follow-redirect")]
#[cfg_attr(docsrs, doc(cfg(feature = "follow-redirect")))]
pub use integrations::redirect;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub use integrations::reqwest_middleware;
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use integrations::reqwest_redirect;

pub use error::{Error, OAuthError};
pub use future::ResponseFuture;
pub use layer::{AuthLayer, AuthLayerBuilder};
pub use message::{AuthRequest, AuthResponse};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use oauth::{ClientAuth, Pkce, ProviderMetadata};
pub use service::AuthService;
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use source::{
    AuthorizationCode, AuthorizationCodeBuilder, ClientCredentials, ClientCredentialsBuilder,
    JwtBearer, JwtBearerBuilder, RefreshTokenGrant, RefreshTokenGrantBuilder, TokenExchange,
    TokenExchangeBuilder,
};
pub use source::{StaticToken, TokenSource};
pub use stats::Stats;
pub use token::{AccessToken, ClientSecret, PkceVerifier, RefreshToken, SubjectToken, Token};

#[cfg(all(doctest, feature = "oauth"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The boxed error type of [`AuthService`], as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
