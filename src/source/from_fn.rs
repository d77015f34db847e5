//! A token source made from an async closure.

use std::{fmt, future::Future};

use crate::{Error, Token, TokenSource};

/// Creates a [`TokenSource`] from an async closure.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::{AuthLayer, Token, source::from_fn};
///
/// let layer = AuthLayer::new(from_fn(|| async {
///     Ok(Token::new("from-my-sdk").with_expires_in(Duration::from_secs(600)))
/// }));
/// # let _ = layer;
/// ```
pub fn from_fn<F, Fut>(f: F) -> FromFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, Error>> + Send,
{
    FromFn { f }
}

/// A [`TokenSource`] that calls a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F> {
    f: F,
}

impl<F, Fut> TokenSource for FromFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, Error>> + Send,
{
    fn fetch(&self) -> impl Future<Output = Result<Token, Error>> + Send {
        (self.f)()
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}
