//! The crate's one error type.
//!
//! Every failure to obtain a token is an [`Error`]. It is `Clone`, because one failed fetch is
//! handed to every caller that waited on it, and it never contains a secret: no access token,
//! refresh token or client secret reaches its `Display` or `Debug` output.
//!
//! # Telling token errors from inner-service errors
//!
//! [`AuthService`](crate::AuthService) returns [`BoxError`](crate::BoxError), as tower
//! middleware does. A failure to get a token is a boxed [`Error`]; anything else came from the
//! wrapped service:
//!
//! ```
//! use tower_bearer::{BoxError, Error};
//!
//! fn explain(err: &BoxError) -> &'static str {
//!     match err.downcast_ref::<Error>() {
//!         Some(e) if e.is_terminal() => "credentials rejected: re-authorize",
//!         Some(_) => "could not get a token (try again later)",
//!         None => "the request itself failed",
//!     }
//! }
//! # let err: BoxError = Box::new(Error::Aborted);
//! # assert_eq!(explain(&err), "could not get a token (try again later)");
//! ```
//!
//! With feature `tonic`, a gRPC request's token failure reaches the caller as a boxed
//! `tonic::Status` instead (`UNAVAILABLE` when [`Error::is_transient`], else `UNAUTHENTICATED`),
//! whose `source()` is the [`Error`]: see [`grpc`](crate::grpc).

use std::{borrow::Cow, time::Duration};

use http::StatusCode;

mod causes;
mod classification;
mod oauth;

pub use causes::{SourceError, StoreError, TransportError};
pub use oauth::OAuthError;

/// Why a token could not be obtained.
///
/// Matchable, `Clone`, and free of secrets in both `Display` and `Debug`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable: a malformed URL, a missing client id, and so on.
    #[error("invalid configuration: {0}")]
    Config(Cow<'static, str>),

    /// No assertion could be had from the platform (see [`assertion`](crate::assertion)): its
    /// token file could not be read, its endpoint failed. Says what failed, never the
    /// assertion. Transient: the platform may recover, and the fetch retries with a fresh read.
    #[error("no assertion from the platform: {0}")]
    Assertion(Cow<'static, str>),

    /// The assertion the platform gave had expired: it was not sent. Transient: the platform
    /// replaces its token (kubelet rotates the file well before expiry), and the fetch
    /// retries with a fresh read.
    #[error("the platform's assertion expired {ago:?} ago; it was not sent")]
    ExpiredAssertion {
        /// How long ago it expired.
        ago: Duration,
    },

    /// A signing key that cannot be used (feature `jose`): not a PKCS#8 private key, a curve or
    /// algorithm this crate does not sign with, or a key the algorithm refuses.
    #[error("unusable signing key: {0}")]
    Key(Cow<'static, str>),

    /// The token endpoint answered with an OAuth 2.0 error response (RFC 6749 §5.2).
    #[error(transparent)]
    OAuth(#[from] OAuthError),

    /// The token endpoint answered with something that is not a usable token response.
    #[error("token endpoint answered HTTP {status}: {reason}{}", excerpt_suffix(.excerpt))]
    UnexpectedResponse {
        /// HTTP status of the response.
        status: StatusCode,
        /// What was wrong with it.
        reason: Cow<'static, str>,
        /// The start of the body, when it was not JSON, with anything secret removed.
        excerpt: Option<String>,
        /// The `Retry-After` the endpoint sent with a 429 or 503.
        retry_after: Option<Duration>,
    },

    /// The token request could not be sent or its response could not be read.
    #[error("token request failed: {0}")]
    Transport(#[source] TransportError),

    /// Fetching a token took longer than the configured fetch timeout.
    #[error("token fetch timed out after {0:?}")]
    Timeout(Duration),

    /// The access token cannot be sent in an HTTP header (it holds characters a header value
    /// may not contain).
    #[error("the access token contains characters that are not allowed in an HTTP header")]
    InvalidToken,

    /// A custom [`TokenSource`](crate::TokenSource) failed.
    #[error("token source failed: {0}")]
    Source(#[source] SourceError),

    /// Authorization server metadata could not be discovered, or is unusable.
    #[error("discovery failed: {0}")]
    Discovery(Cow<'static, str>),

    /// The token store could not load or save the token state.
    #[error("token store failed: {0}")]
    Store(#[source] StoreError),

    /// The Redis a fleet shares tokens through failed or answered late (feature `redis`):
    /// [`AuthLayer::revoke`](crate::AuthLayer::revoke) could not delete the token from it or
    /// tell the other processes, which may go on using the token until it is rejected or
    /// expires. (A fetch never fails for this: it goes to the token endpoint instead.)
    #[error("the fleet's Redis failed: {0}")]
    Fleet(Cow<'static, str>),

    /// The grant cannot go on without a new authorization by the user: there is no refresh
    /// token, or the endpoint rejected it. Asking again does not help.
    #[error("authorization required: {0}")]
    AuthorizationRequired(Cow<'static, str>),

    /// The request would carry the token in clear text: over `http` or `ws` to a host that is
    /// not a loopback address, or over a scheme that is not `https`, `wss`, `http` or `ws`.
    /// Use `https`, or allow plain `http` with
    /// [`AuthLayerBuilder::allow_http`](crate::AuthLayerBuilder::allow_http).
    #[error(
        "refusing to send a bearer token over {scheme} to {host}: the token goes over https \
         (or http to a loopback address, or anywhere with AuthLayerBuilder::allow_http(true))"
    )]
    InsecureRequest {
        /// The request's URL scheme.
        scheme: String,
        /// The host the request was for.
        host: String,
    },

    /// The request is addressed by path alone (as a tonic `Channel` or a hyper connection
    /// sends it), so the layer cannot tell where the token would go. State where the channel
    /// connects with [`AuthLayerBuilder::channel_origin`](crate::AuthLayerBuilder::channel_origin).
    #[error(
        "refusing to send a bearer token with a request addressed by path alone: the layer \
         cannot tell where it goes; state the channel's origin with \
         AuthLayerBuilder::channel_origin(\"https://host:port\")"
    )]
    UnknownDestination,

    /// The API asks for a stronger or more recent authentication of the user (RFC 9470
    /// `insufficient_user_authentication`, on a 401): no new token from the same grant can give
    /// it; the user must sign in again as `acr_values` and `max_age` say.
    #[error("the API requires a stronger or more recent user authentication{}", step_up(.acr_values, .max_age))]
    InsufficientUserAuthentication {
        /// The authentication context classes the API accepts, if it said.
        acr_values: Option<String>,
        /// The longest time since the user's authentication the API accepts, in seconds.
        max_age: Option<u64>,
    },

    /// A [`KeyedAuthLayer`](crate::keyed::KeyedAuthLayer)'s key function found no key for the
    /// request: no token is sent rather than another key's (see
    /// [`KeyedAuthLayerBuilder::pass_through_without_key`](crate::keyed::KeyedAuthLayerBuilder::pass_through_without_key)).
    #[error("no token key for this request: the keyed layer's key function returned none")]
    NoKey,

    /// The fetch was abandoned before it finished (the token source panicked, or the runtime
    /// running it shut down), or the runtime a caller waited on shut down under it.
    #[error("token fetch was aborted before it finished")]
    Aborted,

    /// No Tokio runtime was running, so no fetch could be started. Run the client inside a
    /// runtime, or give the layer one with
    /// [`AuthLayerBuilder::runtime`](crate::AuthLayerBuilder::runtime).
    #[error("tower-bearer needs a Tokio runtime to fetch tokens")]
    NoRuntime,

    /// The Tokio runtime has no timers, which fetch timeouts and waiters' deadlines need.
    #[error(
        "tower-bearer needs a Tokio runtime with timers: call `enable_time()` (or `enable_all()`) \
         on the runtime builder"
    )]
    NoTimer,
}

fn step_up(acr_values: &Option<String>, max_age: &Option<u64>) -> String {
    let mut text = String::new();
    if let Some(acr) = acr_values {
        text.push_str(&format!(" (acr_values {acr:?})"));
    }
    if let Some(age) = max_age {
        text.push_str(&format!(" (max_age {age} s)"));
    }
    text
}

fn excerpt_suffix(excerpt: &Option<String>) -> String {
    match excerpt {
        Some(e) => format!("; body starts: {e:?}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
