//! Sending a request a second time after a 401.
//!
//! Any request body works with the layer; being resent is a capability some bodies have. The
//! layer recognises the body types below by their type (a check the compiler resolves, free at
//! run time) and keeps what a resend needs before the first send. A body of any other type (a
//! hyper `Incoming` or `StreamBody`, your own type) is sent once: after a 401 the response goes
//! back to the caller, and the cache still drops the rejected token, so the next request
//! carries a new one.
//!
//! | body | after a 401 | cost per request, retry on |
//! |---|---|---|
//! | `()`, `Bytes`, `&'static str`, `&'static [u8]`, `Full<Bytes>`, `Full<&'static [u8]>`, `Empty<Bytes>` | resent | a reference count, or nothing |
//! | `String`, `Vec<u8>` | resent if within the [replay limit](crate::AuthLayerBuilder::replay_limit) (64 KiB by default), else goes to the caller | a copy of the body, when within the limit |
//! | [`ReplayableBody`], `BoxBody<Bytes, E>` and `UnsyncBoxBody<Bytes, E>` for `E` = `BoxError` or `Infallible`, `axum::body::Body` (feature `axum`), `tonic::body::Body` (feature `tonic`) | resent if at most the replay limit was streamed when the 401 came, else goes to the caller | the frames are kept (shared, not copied) until the response is known |
//! | anything else | goes to the caller | none |
//!
//! A resent body is byte-identical to the first, or the request is not resent: see
//! [`ReplayableBody`]. To make your own streaming body resendable, wrap it:
//! `request.map(ReplayableBody::new)`.
//!
//! `reqwest::Request` is resent when `reqwest::Request::try_clone` can copy it (any body but a
//! stream).

use std::{
    any::{Any, TypeId},
    convert::Infallible,
};

use bytes::Bytes;

mod body;
mod uri;

pub use body::{Abandoned, ReplayableBody};
pub(crate) use body::{EndsWhenAbandoned, ReplayHandle};
use http::{Extensions, HeaderMap, Method, Request, Version};
use http_body::Body as _;
use http_body_util::{
    BodyExt, Empty, Full,
    combinators::{BoxBody, UnsyncBoxBody},
};
use uri::UriCopy;

use crate::BoxError;

/// `value` as a `U`, if `T` and `U` are the same type.
fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
}

/// Whether `B` is `T`: resolved at compile time.
#[inline(always)]
pub(crate) fn is_type<T: 'static, B: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<B>()
}

/// `body` as a `T`, if `B` is `T`. The type comparison is resolved at compile time.
#[inline(always)]
pub(crate) fn body_as<T: 'static, B: 'static>(body: &mut B) -> Option<&mut T> {
    if !is_type::<T, B>() {
        return None;
    }
    (body as &mut dyn Any).downcast_mut::<T>()
}

/// What is kept of a body to send it again.
pub(crate) enum KeptBody<B> {
    /// A copy made before the first send.
    Copy(B),
    /// An empty body, made again.
    Empty(fn() -> Option<B>),
    /// A streaming body: its frames, kept as they are sent, and how to make a `B` of them.
    Streamed {
        handle: ReplayHandle,
        wrap: fn(ReplayableBody) -> Option<B>,
    },
}

/// Copies of cheap-to-clone bodies, whatever their size.
macro_rules! cheap_copy {
    ($body:ident: $($ty:ty),*) => {$(
        if let Some(body) = body_as::<$ty, B>($body) {
            return Some(KeptBody::Copy(cast(body.clone())?));
        }
    )*};
}

/// Copies of in-memory bodies whose clone copies the bytes: only within the limit.
macro_rules! copy_within {
    ($body:ident, $limit:ident: $($ty:ty => $len:expr),*) => {$(
        if let Some(body) = body_as::<$ty, B>($body) {
            let len: fn(&$ty) -> u64 = $len;
            if len(body) > $limit as u64 {
                return None;
            }
            return Some(KeptBody::Copy(cast(body.clone())?));
        }
    )*};
}

/// Type-erased streaming bodies: made again if empty, else wrapped in place to keep their
/// frames. `$wrap` makes the erased type of a [`ReplayableBody`].
macro_rules! erased {
    ($body:ident, $limit:ident: $($ty:ty => $empty:expr, $wrap:expr);* $(;)?) => {$(
        if let Some(body) = body_as::<$ty, B>($body) {
            if body.is_end_stream() {
                return Some(KeptBody::Empty(|| cast::<$ty, B>($empty)));
            }
            let mut streamed = ReplayableBody::new(std::mem::replace(body, $empty));
            let handle = streamed.capture($limit)?;
            *body = ($wrap)(streamed);
            return Some(KeptBody::Streamed {
                handle,
                wrap: |replay| cast::<$ty, B>(($wrap)(replay)),
            });
        }
    )*};
}

fn empty_box() -> BoxBody<Bytes, BoxError> {
    BoxBody::new(Empty::<Bytes>::new().map_err(|never| match never {}))
}

fn empty_unsync_box() -> UnsyncBoxBody<Bytes, BoxError> {
    UnsyncBoxBody::new(Empty::<Bytes>::new().map_err(|never| match never {}))
}

/// What to keep of `body` to send it again, if it is a type that can be sent again (see the
/// module's table). A streaming body is wrapped in place.
#[inline(always)]
pub(crate) fn keep<B: 'static>(body: &mut B, limit: usize) -> Option<KeptBody<B>> {
    cheap_copy!(body: (), Bytes, &'static str, &'static [u8], Full<Bytes>, Full<&'static [u8]>);
    if body_as::<Empty<Bytes>, B>(body).is_some() {
        return Some(KeptBody::Empty(|| cast(Empty::<Bytes>::new())));
    }
    copy_within!(body, limit:
        String => |b| b.len() as u64,
        Vec<u8> => |b| b.len() as u64
    );
    if let Some(streamed) = body_as::<ReplayableBody, B>(body) {
        let handle = streamed.capture(limit)?;
        return Some(KeptBody::Streamed {
            handle,
            wrap: cast::<ReplayableBody, B>,
        });
    }
    erased!(body, limit:
        BoxBody<Bytes, BoxError> => empty_box(), BoxBody::new;
        UnsyncBoxBody<Bytes, BoxError> => empty_unsync_box(), UnsyncBoxBody::new;
        BoxBody<Bytes, Infallible> => BoxBody::new(Empty::new()),
            |r| BoxBody::new(EndsWhenAbandoned(r));
        UnsyncBoxBody<Bytes, Infallible> => UnsyncBoxBody::new(Empty::new()),
            |r| UnsyncBoxBody::new(EndsWhenAbandoned(r));
    );
    #[cfg(feature = "axum")]
    erased!(body, limit:
        axum_core::body::Body => axum_core::body::Body::empty(), axum_core::body::Body::new);
    #[cfg(feature = "tonic")]
    erased!(body, limit:
        tonic::body::Body => tonic::body::Body::empty(), tonic::body::Body::new);
    None
}

impl<B> KeptBody<B> {
    fn into_body(self) -> Option<B> {
        match self {
            KeptBody::Copy(body) => Some(body),
            KeptBody::Empty(make) => make(),
            KeptBody::Streamed { handle, wrap } => wrap(ReplayableBody::replay(handle)?),
        }
    }
}

/// What is kept of an `http::Request` to send it again: its head and what its body needs.
pub struct ReplayRequest<B> {
    method: Method,
    uri: UriCopy,
    version: Version,
    /// `None` when the request had no headers: most reach the layer with none, and an empty
    /// map costs a construction and a drop that nothing needs.
    headers: Option<HeaderMap>,
    extensions: Extensions,
    body: KeptBody<B>,
}

impl<B> std::fmt::Debug for ReplayRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayRequest")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl<B: 'static> ReplayRequest<B> {
    /// Keeps a copy of `request`'s head and what its body needs for a possible resend, if the
    /// body allows one.
    #[inline(always)]
    pub(crate) fn prepare(request: &mut Request<B>, limit: usize) -> Option<Self> {
        let body = keep(request.body_mut(), limit)?;
        Some(ReplayRequest {
            method: request.method().clone(),
            uri: UriCopy::new(request.uri()),
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
        let uri = self.uri.into_uri()?;
        let body = self.body.into_body()?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
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
    use http_body::Body;

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

    fn boxed(bytes: &'static str) -> BoxBody<Bytes, BoxError> {
        BoxBody::new(Full::new(Bytes::from(bytes)).map_err(|never| match never {}))
    }

    #[tokio::test]
    async fn boxed_bodies_replay_empty_or_streamed_within_the_limit() {
        let empty: BoxBody<Bytes, BoxError> = empty_box();
        let replay = ReplayRequest::prepare(&mut Request::new(empty), 1024);
        let again = replay.unwrap().into_request().unwrap();
        assert!(collect(again.into_body()).await.is_empty());

        let mut sent = Request::new(boxed("x"));
        let replay = ReplayRequest::prepare(&mut sent, 1024);
        assert_eq!(collect(sent.into_body()).await, "x");
        let again = replay.unwrap().into_request().unwrap();
        assert_eq!(collect(again.into_body()).await, "x");

        let mut sent = Request::new(boxed("0123456789"));
        let replay = ReplayRequest::prepare(&mut sent, 4);
        assert_eq!(collect(sent.into_body()).await, "0123456789");
        assert!(replay.unwrap().into_request().is_none(), "over the limit");
    }

    #[test]
    fn bodies_copied_in_memory_follow_the_limit() {
        let mut small = Request::new(String::from("1234"));
        assert!(ReplayRequest::prepare(&mut small, 4).is_some());
        let mut large = Request::new(String::from("12345"));
        assert!(ReplayRequest::prepare(&mut large, 4).is_none());
        assert_eq!(large.body(), "12345", "the body itself is untouched");
        let mut large = Request::new(vec![0u8; 5]);
        assert!(ReplayRequest::prepare(&mut large, 4).is_none());
        // Shared bytes are resent whatever their size: the copy is a reference count.
        let mut shared = Request::new(Full::new(Bytes::from(vec![0u8; 5])));
        assert!(ReplayRequest::prepare(&mut shared, 4).is_some());
    }

    #[test]
    fn bodies_of_other_types_are_sent_once() {
        struct Mine;
        let mut request = Request::new(Mine);
        assert!(ReplayRequest::prepare(&mut request, 1 << 20).is_none());
        // A boxed body of another error type is not kept either.
        let mut request: Request<BoxBody<Bytes, std::io::Error>> = Request::new(BoxBody::new(
            Full::new(Bytes::from("x")).map_err(|n| match n {}),
        ));
        assert!(ReplayRequest::prepare(&mut request, 1 << 20).is_none());
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
