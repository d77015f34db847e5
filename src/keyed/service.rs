//! [`KeyedAuthService`]: each request with its key's token.

use std::{
    fmt,
    hash::Hash,
    mem,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower_service::Service;

use super::{KeyedState, RequestInfo, tokens::KeyEntry};
use crate::{
    BoxError, Error,
    future::ResponseFuture,
    grpc,
    message::{AuthRequest, AuthResponse},
    middleware::{
        service::{mark_at, send},
        spare::Spare,
    },
    origin::Decision,
};

/// Middleware that sends each request with the token of its key. Made by
/// [`KeyedAuthLayer`](super::KeyedAuthLayer).
///
/// Per request: the key function, one lookup in the layer's map of keys (none when the key is
/// the one of this service's last request, whose entry the service keeps while the map holds
/// it), then what [`AuthService`](crate::AuthService) does with that key's token (its response
/// future is the same [`ResponseFuture`]: a 401 drops the token of that key only, and resends).
pub struct KeyedAuthService<S, K> {
    inner: S,
    state: Arc<KeyedState<K>>,
    /// The key of the last request and its entry, for a service that sends many requests with
    /// one key; never used once the map has dropped the entry.
    last: Option<(K, Arc<KeyEntry>)>,
    /// The clone of `inner` a resend goes through, shared with this service's clones.
    spare: Spare<S>,
}

impl<S, K> KeyedAuthService<S, K> {
    pub(super) fn new(inner: S, state: Arc<KeyedState<K>>) -> Self {
        KeyedAuthService {
            inner,
            state,
            last: None,
            spare: Spare::new(),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably. A resend after a 401 goes through a clone of the service
    /// as it is after this change: the copy kept for resends is made again from it.
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = Spare::new();
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, R> Service<R> for KeyedAuthService<S, K>
where
    R: AuthRequest,
    S: Service<R> + Clone,
    S::Response: AuthResponse,
    S::Error: Into<BoxError>,
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let state = &self.state;
        let Some(key) = (state.key)(&RequestInfo::of(&request)) else {
            if state.pass_through {
                return ResponseFuture::passed(self.inner.call(request));
            }
            return ResponseFuture::refused(grpc::token_error(&request, Error::NoKey));
        };
        let now = Instant::now();
        let entry = match &self.last {
            Some((last, entry)) if *last == key && !entry.is_retired() => {
                state.tokens.touch(&key, entry, now);
                entry
            }
            _ => match state.tokens.get(&key, now) {
                Ok(Some(entry)) => &self.last.insert((key, entry)).1,
                Ok(None) => return self.wait_for_layer(key, request),
                Err(err) => return ResponseFuture::refused(grpc::token_error(&request, err)),
            },
        };
        let layer = &entry.handle;
        match layer.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return ResponseFuture::passed(self.inner.call(request)),
            Decision::Refuse(err) => {
                return ResponseFuture::refused(grpc::token_error(&request, err));
            }
        }
        let cache = &layer.cache;
        let current = cache.current().load();
        if let Some(token) = current.as_ref() {
            if let Some(mark) = mark_at(cache, token, now) {
                let (header, generation) = (layer.header(token), token.generation);
                drop(current);
                return send(
                    &mut self.inner,
                    &self.spare,
                    request,
                    header,
                    generation,
                    mark,
                    layer,
                    false,
                );
            }
        }
        drop(current);
        // No usable token: wait for the key's fetch. The readied service moves into the future.
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::acquiring(Arc::clone(layer), request, inner)
    }
}

impl<S, K> KeyedAuthService<S, K>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
{
    /// A request whose key's layer another request is making: it waits for that layer in its
    /// response future, with the readied service, and its thread goes on.
    #[cold]
    #[inline(never)]
    fn wait_for_layer<R>(&mut self, key: K, request: R) -> ResponseFuture<S, R>
    where
        R: AuthRequest,
        S: Service<R> + Clone,
    {
        let state = Arc::clone(&self.state);
        let layer = Box::pin(async move {
            let entry = state.tokens.wait(&key).await?;
            Ok(Arc::clone(&entry.handle))
        });
        let clone = self.inner.clone();
        let inner = mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting_for_layer(layer, request, inner)
    }
}

impl<S: Clone, K: Clone> Clone for KeyedAuthService<S, K> {
    #[inline]
    fn clone(&self) -> Self {
        KeyedAuthService {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
            last: self.last.clone(),
            spare: self.spare.for_clone(&self.inner, None),
        }
    }
}

impl<S: fmt::Debug, K: Eq + Hash> fmt::Debug for KeyedAuthService<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedAuthService")
            .field("inner", &self.inner)
            .field("layer", &self.state)
            .finish()
    }
}
