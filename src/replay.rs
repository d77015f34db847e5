//! Sending a request a second time after a 401.
//!
//! A request can only be resent if its body can be produced again. [`ReplayBody`] says how: the
//! layer calls [`prepare_replay`](ReplayBody::prepare_replay) before the first send and keeps what
//! it returns; after a 401 it calls [`replay`](ReplayBody::replay) to get the body for the resend.
//!
//! Implemented here for the bodies clients use: `()`, `String`, `Vec<u8>`, `Bytes`, static
//! strings and slices, `http_body_util::{Full, Empty}` (cloned: a reference-count increment for
//! `Bytes`), and the boxed bodies `BoxBody` / `UnsyncBoxBody`, which are replayed only when
//! they are already known to be empty. A body that cannot be replayed is still sent once; on a
//! 401 the response goes back to the caller and the next request uses the new token.
//!
//! # Your own body type
//!
//! ```
//! use tower_bearer::ReplayBody;
//!
//! #[derive(Clone)]
//! struct JsonBody(std::sync::Arc<[u8]>);
//!
//! impl ReplayBody for JsonBody {
//!     type Replay = JsonBody;
//!     fn prepare_replay(self) -> (Self, Option<Self::Replay>) {
//!         (self.clone(), Some(self))
//!     }
//!     fn replay(kept: Self::Replay) -> Option<Self> {
//!         Some(kept)
//!     }
//! }
//! ```

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::{
    BodyExt, Empty, Full,
    combinators::{BoxBody, UnsyncBoxBody},
};

/// A request body that the layer may send again after a 401.
pub trait ReplayBody: Sized {
    /// What is kept from the first send to build the second.
    type Replay;

    /// Called before the first send: returns the body to send and, if the body can be sent
    /// again, what to keep for that.
    fn prepare_replay(self) -> (Self, Option<Self::Replay>);

    /// Builds the body for the second send, or `None` if it can no longer be built.
    fn replay(kept: Self::Replay) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),* $(,)?) => {$(
        impl ReplayBody for $ty {
            type Replay = $ty;
            #[inline]
            fn prepare_replay(self) -> (Self, Option<Self::Replay>) {
                (self.clone(), Some(self))
            }
            #[inline]
            fn replay(kept: Self::Replay) -> Option<Self> {
                Some(kept)
            }
        }
    )*};
}

replay_by_clone!((), String, Vec<u8>, Bytes, &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for Full<D> {
    type Replay = Full<D>;
    #[inline]
    fn prepare_replay(self) -> (Self, Option<Self::Replay>) {
        (self.clone(), Some(self))
    }
    #[inline]
    fn replay(kept: Self::Replay) -> Option<Self> {
        Some(kept)
    }
}

impl<D> ReplayBody for Empty<D> {
    type Replay = ();
    #[inline]
    fn prepare_replay(self) -> (Self, Option<Self::Replay>) {
        (self, Some(()))
    }
    #[inline]
    fn replay((): ()) -> Option<Self> {
        Some(Empty::new())
    }
}

fn empty_never<D: Buf, E>() -> http_body_util::combinators::MapErr<Empty<D>, fn(Infallible) -> E> {
    Empty::new().map_err(|never: Infallible| match never {})
}

/// Boxed bodies are replayed only when already known to be empty: nothing was kept of them.
macro_rules! replay_if_empty {
    ($($ty:ident: $($bound:ident)+),* $(,)?) => {$(
        impl<D, E> ReplayBody for $ty<D, E>
        where
            D: Buf $(+ $bound)+ + 'static,
            E: 'static,
        {
            type Replay = ();
            fn prepare_replay(self) -> (Self, Option<Self::Replay>) {
                let empty = self.is_end_stream();
                (self, empty.then_some(()))
            }
            fn replay((): ()) -> Option<Self> {
                Some($ty::new(empty_never::<D, E>()))
            }
        }
    )*};
}

replay_if_empty!(BoxBody: Send Sync, UnsyncBoxBody: Send);

/// Everything needed to send a request again, except the `Authorization` header.
pub(crate) struct ReplayRequest<B: ReplayBody> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: B::Replay,
}

impl<B: ReplayBody> ReplayRequest<B> {
    /// Splits off a copy of `request` for a possible resend, if its body allows one.
    pub(crate) fn prepare(request: Request<B>) -> (Request<B>, Option<Self>) {
        let (parts, body) = request.into_parts();
        let (body, kept) = body.prepare_replay();
        let replay = kept.map(|body| ReplayRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            body,
        });
        (Request::from_parts(parts, body), replay)
    }

    /// The request to resend, if the body can still be built.
    pub(crate) fn into_request(self) -> Option<Request<B>> {
        let body = B::replay(self.body)?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect<B: Body>(b: B) -> Bytes
    where
        B::Error: std::fmt::Debug,
    {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn full_bodies_replay_the_same_bytes() {
        let req = Request::post("http://a/x")
            .header("x-trace", "1")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let (sent, replay) = ReplayRequest::prepare(req);
        assert_eq!(collect(sent.into_body()).await, "payload");
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(again.method(), Method::POST);
        assert_eq!(again.uri(), "http://a/x");
        assert_eq!(again.headers()["x-trace"], "1");
        assert_eq!(collect(again.into_body()).await, "payload");
    }

    #[tokio::test]
    async fn boxed_bodies_replay_only_when_empty() {
        let empty: BoxBody<Bytes, Infallible> = BoxBody::new(Empty::new());
        let (_, replay) = ReplayRequest::prepare(Request::new(empty));
        let again = replay.unwrap().into_request().unwrap();
        assert!(collect(again.into_body()).await.is_empty());

        let full: BoxBody<Bytes, Infallible> = BoxBody::new(Full::new(Bytes::from("x")));
        let (_, replay) = ReplayRequest::prepare(Request::new(full));
        assert!(replay.is_none());
    }

    #[test]
    fn extensions_survive_a_replay() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tag(u8);
        let mut req = Request::new(String::from("b"));
        req.extensions_mut().insert(Tag(7));
        let (_, replay) = ReplayRequest::prepare(req);
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(again.extensions().get::<Tag>(), Some(&Tag(7)));
        assert_eq!(again.body(), "b");
    }
}
