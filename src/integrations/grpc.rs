//! gRPC specifics: token failures as a `tonic::Status`, and `UNAUTHENTICATED` in the trailers of
//! a stream.
//!
//! A gRPC server that rejects a token answers `UNAUTHENTICATED` (status 16). When it does so
//! before any message, the status comes in the response headers and the layer treats it like
//! a 401 (refresh, and resend when the body allows). A streaming call can also end with it in
//! its trailers, after messages: the call's response has already gone to the caller, so it is
//! not resent, but the layer drops the rejected token (if it is still the current one) so that
//! the next call carries a new one. With the `tonic` feature, the layer watches the trailers of
//! every gRPC response (`content-type: application/grpc`) with a `tonic::body::Body` that is not
//! trailers-only.
//!
//! With the `tonic` feature, a token failure reaches a tonic caller as a `Status` rather than
//! tonic's `Status::unknown`: `UNAVAILABLE` when it may go away by itself (the token endpoint is
//! down or slow, see [`Error::is_transient`]), `UNAUTHENTICATED` otherwise. The status's
//! source is the [`Error`], so `status.source()` and its downcast still tell exactly what
//! happened.

use http::HeaderMap;

use crate::{BoxError, Error, message::AuthRequest, middleware::handle::LayerHandle};

/// Whether `headers` are those of a gRPC request.
#[cfg_attr(not(feature = "tonic"), allow(dead_code))]
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A token failure as the caller of `request` should see it: a `tonic::Status` for gRPC
/// requests (feature `tonic`), the [`Error`] itself otherwise.
#[cold]
pub(crate) fn token_error(request: &impl AuthRequest, err: Error) -> BoxError {
    #[cfg(feature = "tonic")]
    if is_grpc(request.headers()) {
        return Box::new(status(err));
    }
    let _ = request;
    Box::new(err)
}

/// `UNAVAILABLE` for a failure that may go away by itself, `UNAUTHENTICATED` otherwise; the
/// error is the status's source.
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub(crate) fn status(err: Error) -> tonic::Status {
    let code = if err.is_transient() {
        tonic::Code::Unavailable
    } else {
        tonic::Code::Unauthenticated
    };
    let mut status = tonic::Status::new(code, err.to_string());
    status.set_source(std::sync::Arc::new(err));
    status
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl From<Error> for tonic::Status {
    /// `UNAVAILABLE` for a transient failure, `UNAUTHENTICATED` otherwise, with the error as
    /// the status's source.
    fn from(err: Error) -> Self {
        status(err)
    }
}

/// What a response needs to report a rejection that comes after its headers: the layer and
/// the generation of the token the request carried.
#[doc(hidden)]
#[cfg_attr(not(feature = "tonic"), allow(dead_code))]
pub struct TrailerWatch {
    layer: LayerHandle,
    generation: u64,
}

impl TrailerWatch {
    pub(crate) fn new(layer: &LayerHandle, generation: u64) -> Self {
        TrailerWatch {
            layer: std::sync::Arc::clone(layer),
            generation,
        }
    }

    /// The token was rejected: drop it if it is still the current one.
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    fn rejected(self) {
        self.layer.cache.reject(self.generation);
    }

    /// The stream ended without rejecting the token: it was accepted.
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    fn accepted(self) {
        self.layer.cache.accept(self.generation);
    }
}

impl std::fmt::Debug for TrailerWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailerWatch")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tonic")]
pub(crate) use watched::watch;

#[cfg(feature = "tonic")]
mod watched {
    use std::{
        pin::Pin,
        task::{Context, Poll, ready},
    };

    use bytes::Bytes;
    use http::Response;
    use http_body::{Body, Frame, SizeHint};
    use pin_project_lite::pin_project;

    use super::{TrailerWatch, is_grpc};

    const GRPC_STATUS: &str = "grpc-status";

    pin_project! {
        /// A gRPC response body that reports `UNAUTHENTICATED` in its trailers.
        struct Watched {
            #[pin]
            inner: tonic::body::Body,
            watch: Option<TrailerWatch>,
        }
    }

    impl Body for Watched {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            let this = self.project();
            let frame = ready!(this.inner.poll_frame(cx));
            if let Some(Ok(frame)) = &frame {
                if let Some(trailers) = frame.trailers_ref() {
                    let watch = this.watch.take();
                    // `UNAUTHENTICATED` rejects the token, `OK` accepts it, any other status
                    // says nothing of it.
                    let status = trailers.get(GRPC_STATUS).map(|v| v.as_bytes());
                    match (watch, status) {
                        (Some(watch), Some(b"16")) => watch.rejected(),
                        (Some(watch), Some(b"0")) => watch.accepted(),
                        _ => {}
                    }
                }
            }
            Poll::Ready(frame)
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    /// Wraps the body of a gRPC response that is not trailers-only, so that `UNAUTHENTICATED`
    /// in its trailers drops the token (and other trailers say it was accepted): `true`. Other
    /// responses are left as they are: `false`.
    pub(crate) fn watch<B: 'static>(
        response: &mut Response<B>,
        make: impl FnOnce() -> TrailerWatch,
    ) -> bool {
        if !crate::replay::is_type::<tonic::body::Body, B>() {
            return false;
        }
        let headers = response.headers();
        if !is_grpc(headers) || headers.contains_key(GRPC_STATUS) {
            return false;
        }
        let Some(body) = crate::replay::body_as::<tonic::body::Body, B>(response.body_mut()) else {
            return false;
        };
        let inner = std::mem::replace(body, tonic::body::Body::empty());
        *body = tonic::body::Body::new(Watched {
            inner,
            watch: Some(make()),
        });
        true
    }
}
