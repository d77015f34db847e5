//! Sending a request a second time after a 401.
//!
//! A request can only be resent if its body can be produced again. [`ReplayBody`] says how: the
//! layer calls [`prepare_replay`](ReplayBody::prepare_replay) before the first send and keeps what
//! it returns; after a 401 it calls [`replay`](ReplayBody::replay) to get the body for the resend.
//!
//! Implemented here for the bodies clients use:
//!
//! | body | replayed by |
//! |---|---|
//! | `()`, `String`, `Vec<u8>`, `Bytes`, `&'static str`, `&'static [u8]`, `Full<D>` | cloning it (a reference-count increment for `Bytes`) |
//! | `Empty<D>` | making another |
//! | [`ReplayableBody<B>`], `BoxBody<Bytes, E>`, `UnsyncBoxBody<Bytes, E>`, `axum::body::Body` (feature `axum`), `tonic::body::Body` (feature `tonic`) | keeping the bytes as they stream out, up to the [replay limit](crate::AuthLayerBuilder::replay_limit) (64 KiB by default) |
//!
//! A body that cannot be replayed (or streamed past the limit) is still sent once; on a 401 the
//! response goes back to the caller and the next request uses the new token.
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
//!     fn prepare_replay(&mut self, _limit: usize) -> Option<Self::Replay> {
//!         Some(self.clone())
//!     }
//!     fn replay(kept: Self::Replay) -> Option<Self> {
//!         Some(kept)
//!     }
//! }
//! ```

use std::convert::Infallible;

use bytes::{Buf, Bytes};

mod body;

pub use body::{ReplayHandle, ReplayableBody};
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

    /// Called before the first send: returns what to keep to send the body again, if it can
    /// be. A streaming body may wrap itself in place to keep what it sends, at most `limit`
    /// bytes.
    fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay>;

    /// Builds the body for the second send, or `None` if it can no longer be built.
    fn replay(kept: Self::Replay) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($ty:ty),* $(,)?) => {$(
        impl ReplayBody for $ty {
            type Replay = $ty;
            #[inline]
            fn prepare_replay(&mut self, _limit: usize) -> Option<Self::Replay> {
                Some(self.clone())
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
    fn prepare_replay(&mut self, _limit: usize) -> Option<Self::Replay> {
        Some(self.clone())
    }
    #[inline]
    fn replay(kept: Self::Replay) -> Option<Self> {
        Some(kept)
    }
}

impl<D> ReplayBody for Empty<D> {
    type Replay = ();
    #[inline]
    fn prepare_replay(&mut self, _limit: usize) -> Option<Self::Replay> {
        Some(())
    }
    #[inline]
    fn replay((): ()) -> Option<Self> {
        Some(Empty::new())
    }
}

impl<B> ReplayBody for ReplayableBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Replay = ReplayHandle<B>;
    fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay> {
        Some(self.capture(limit))
    }
    fn replay(kept: Self::Replay) -> Option<Self> {
        ReplayableBody::replay(kept)
    }
}

/// What is kept of a boxed body: nothing if it was empty, else its stream.
pub enum BoxedReplay<B> {
    /// The body was empty.
    Empty,
    /// The body streamed; these are its kept bytes.
    Streamed(ReplayHandle<B>),
}

impl<B> std::fmt::Debug for BoxedReplay<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoxedReplay::Empty => f.write_str("Empty"),
            BoxedReplay::Streamed(_) => f.write_str("Streamed"),
        }
    }
}

/// Boxed bodies: an empty one is replayed by making another; a streaming one is kept as it
/// streams, up to the limit.
macro_rules! replay_boxed {
    ($($ty:ident: $($bound:ident)+),* $(,)?) => {$(
        impl<E> ReplayBody for $ty<Bytes, E>
        where
            E: 'static,
        {
            type Replay = BoxedReplay<$ty<Bytes, E>>;
            fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay> {
                if self.is_end_stream() {
                    return Some(BoxedReplay::Empty);
                }
                let mut body = ReplayableBody::new(std::mem::take(self));
                let handle = body.capture(limit);
                *self = $ty::new(body);
                Some(BoxedReplay::Streamed(handle))
            }
            fn replay(kept: Self::Replay) -> Option<Self> {
                match kept {
                    BoxedReplay::Empty => Some($ty::new(
                        Empty::<Bytes>::new().map_err(|never: Infallible| match never {}),
                    )),
                    BoxedReplay::Streamed(handle) => ReplayableBody::replay(handle).map($ty::new),
                }
            }
        }
    )*};
}

replay_boxed!(BoxBody: Send Sync, UnsyncBoxBody: Send);

/// Type-erased bodies of the frameworks (`axum::body::Body`, `tonic::body::Body`): an empty one
/// is replayed by making another; a streaming one is kept as it streams, up to the limit.
#[cfg(any(feature = "axum", feature = "tonic"))]
macro_rules! replay_erased {
    ($ty:ty, $empty:expr) => {
        impl ReplayBody for $ty {
            type Replay = BoxedReplay<$ty>;
            fn prepare_replay(&mut self, limit: usize) -> Option<Self::Replay> {
                if self.is_end_stream() {
                    return Some(BoxedReplay::Empty);
                }
                let mut body = ReplayableBody::new(std::mem::take(self));
                let handle = body.capture(limit);
                *self = <$ty>::new(body);
                Some(BoxedReplay::Streamed(handle))
            }
            fn replay(kept: Self::Replay) -> Option<Self> {
                match kept {
                    BoxedReplay::Empty => Some($empty),
                    BoxedReplay::Streamed(handle) => ReplayableBody::replay(handle).map(<$ty>::new),
                }
            }
        }
    };
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
replay_erased!(axum_core::body::Body, axum_core::body::Body::empty());

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
replay_erased!(tonic::body::Body, tonic::body::Body::empty());

/// What is kept of an `http::Request` to send it again: its head and its body's
/// [`ReplayBody::Replay`].
pub struct ReplayRequest<B: ReplayBody> {
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` when the request had no headers: most reach the layer with none, and an empty
    /// map costs a construction and a drop that nothing needs.
    headers: Option<HeaderMap>,
    extensions: Extensions,
    body: B::Replay,
}

impl<B: ReplayBody> std::fmt::Debug for ReplayRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayRequest")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl<B: ReplayBody> ReplayRequest<B> {
    /// Keeps a copy of `request`'s head and what its body needs for a possible resend, if the
    /// body allows one.
    #[inline(always)]
    pub(crate) fn prepare(request: &mut Request<B>, limit: usize) -> Option<Self> {
        let body = request.body_mut().prepare_replay(limit)?;
        Some(ReplayRequest {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: if request.headers().is_empty() {
                None
            } else {
                Some(request.headers().clone())
            },
            extensions: request.extensions().clone(),
            body,
        })
    }

    /// The request to resend, if the body can still be built.
    pub(crate) fn into_request(self) -> Option<Request<B>> {
        let body = B::replay(self.body)?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        if let Some(headers) = self.headers {
            *request.headers_mut() = headers;
        }
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
        let mut sent = Request::post("http://a/x")
            .header("x-trace", "1")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let replay = ReplayRequest::prepare(&mut sent, 64 * 1024);
        assert_eq!(collect(sent.into_body()).await, "payload");
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(again.method(), Method::POST);
        assert_eq!(again.uri(), "http://a/x");
        assert_eq!(again.headers()["x-trace"], "1");
        assert_eq!(collect(again.into_body()).await, "payload");
    }

    #[tokio::test]
    async fn boxed_bodies_replay_empty_or_streamed_within_the_limit() {
        let empty: BoxBody<Bytes, Infallible> = BoxBody::new(Empty::new());
        let replay = ReplayRequest::prepare(&mut Request::new(empty), 1024);
        let again = replay.unwrap().into_request().unwrap();
        assert!(collect(again.into_body()).await.is_empty());

        let full: BoxBody<Bytes, Infallible> = BoxBody::new(Full::new(Bytes::from("x")));
        let mut sent = Request::new(full);
        let replay = ReplayRequest::prepare(&mut sent, 1024);
        assert_eq!(collect(sent.into_body()).await, "x");
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(collect(again.into_body()).await, "x");

        let big: BoxBody<Bytes, Infallible> = BoxBody::new(Full::new(Bytes::from("0123456789")));
        let mut sent = Request::new(big);
        let replay = ReplayRequest::prepare(&mut sent, 4);
        assert_eq!(collect(sent.into_body()).await, "0123456789");
        assert!(replay.unwrap().into_request().is_none(), "over the limit");
    }

    #[test]
    fn extensions_survive_a_replay() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tag(u8);
        let mut req = Request::new(String::from("b"));
        req.extensions_mut().insert(Tag(7));
        let replay = ReplayRequest::prepare(&mut req, 64 * 1024);
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(again.extensions().get::<Tag>(), Some(&Tag(7)));
        assert_eq!(again.body(), "b");
    }
}
