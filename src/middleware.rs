//! [`AuthMiddleware`]: the layer's behaviour for `reqwest_middleware::ClientWithMiddleware`.

use std::{fmt, sync::Arc};

use http::Extensions;
use reqwest_middleware::{Middleware, Next, Result};

use crate::{
    cache::TokenCache,
    challenge,
    origin::{Decision, OriginPolicy},
};

/// A `reqwest_middleware` middleware that attaches the token of an
/// [`AuthLayer`](crate::AuthLayer), sharing its cache, and resends a request once after a 401
/// when `reqwest::Request::try_clone` can copy it (any body but a stream).
///
/// Token errors reach the caller as `reqwest_middleware::Error::Middleware` wrapping a
/// [`tower_bearer::Error`](crate::Error).
///
/// ```
/// use tower_bearer::{AuthLayer, StaticToken};
///
/// let auth = AuthLayer::new(StaticToken::new("t0k3n"));
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth.middleware())
///     .build();
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct AuthMiddleware {
    cache: Arc<TokenCache>,
    retry: bool,
    policy: Arc<OriginPolicy>,
}

impl AuthMiddleware {
    pub(crate) fn new(cache: Arc<TokenCache>, retry: bool, policy: Arc<OriginPolicy>) -> Self {
        AuthMiddleware {
            cache,
            retry,
            policy,
        }
    }
}

#[async_trait::async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response> {
        match self.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return next.run(request, extensions).await,
            Decision::Refuse(err) => return Err(reqwest_middleware::Error::middleware(err)),
        }
        let settings = self.cache.settings();
        let entry = Arc::clone(&self.cache)
            .acquire()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let again = if self.retry {
            request.try_clone()
        } else {
            None
        };
        request
            .headers_mut()
            .insert(settings.header_name.clone(), entry.header.clone());
        let response = next.clone().run(request, extensions).await?;
        if !challenge::rejects_token(&response, &settings.scheme) {
            return Ok(response);
        }
        // Forget the rejected token only if nothing newer replaced it meanwhile.
        self.cache.invalidate(entry.generation);
        let Some(mut again) = again else {
            self.cache.counters.not_resent();
            return Ok(response);
        };
        drop(response);
        let entry = Arc::clone(&self.cache)
            .acquire()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        again
            .headers_mut()
            .insert(settings.header_name.clone(), entry.header.clone());
        self.cache.counters.retried();
        next.run(again, extensions).await
    }
}

impl fmt::Debug for AuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .finish()
    }
}
