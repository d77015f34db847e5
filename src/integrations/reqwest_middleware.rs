//! [`AuthMiddleware`]: the layer's behaviour for `reqwest_middleware::ClientWithMiddleware`.

use std::{fmt, sync::Arc};

use http::Extensions;
use reqwest_middleware::{Middleware, Next, Result};

use crate::{
    challenge,
    middleware::layer_state::{LayerState, Verdict},
    origin::Decision,
};

/// A `reqwest_middleware` middleware that attaches the token of an
/// [`AuthLayer`](crate::AuthLayer), sharing its cache, and resends a request once after a 401
/// when `reqwest::Request::try_clone` can copy it (any body but a stream).
///
/// Token errors reach the caller as `reqwest_middleware::Error::Middleware` wrapping a
/// [`tower_bearer::Error`](crate::Error).
///
/// The `reqwest::Client` underneath follows redirects itself: when the token goes in a custom
/// header or is DPoP-bound, build it with
/// [`auth.reqwest_redirect_policy()`](crate::AuthLayer::reqwest_redirect_policy), which refuses
/// hops to another origin (see [`crate::reqwest_redirect`]).
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
    layer: Arc<LayerState>,
}

impl AuthMiddleware {
    pub(crate) fn new(layer: Arc<LayerState>) -> Self {
        AuthMiddleware { layer }
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
        let layer = &*self.layer;
        match layer.policy.decide(&request) {
            Decision::Attach => {}
            Decision::PassThrough => return next.run(request, extensions).await,
            Decision::Refuse(err) => return Err(reqwest_middleware::Error::middleware(err)),
        }
        let cache = &layer.cache;
        let entry = Arc::clone(cache)
            .acquire()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let again = if layer.retry {
            request.try_clone()
        } else {
            None
        };
        let proof = layer
            .attach(&mut request, entry.header.clone(), entry.generation)
            .map_err(reqwest_middleware::Error::middleware)?;
        let response = next.clone().run(request, extensions).await?;
        if !challenge::may_reject(&response, true) {
            layer.learn(proof, &entry, &response);
            return Ok(response);
        }
        match layer.judge(&response, entry.generation, proof) {
            Verdict::Answer => return Ok(response),
            Verdict::Futile => {
                cache.counters.not_resent();
                return Ok(response);
            }
            Verdict::StepUp => {
                let error = layer.step_up_error(&response, entry.generation, proof);
                return Err(reqwest_middleware::Error::middleware(error));
            }
            Verdict::Resend => {}
        }
        let Some(mut again) = again else {
            cache.counters.not_resent();
            return Ok(response);
        };
        drop(response);
        let entry = Arc::clone(cache)
            .acquire()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let proof = layer
            .attach(&mut again, entry.header.clone(), entry.generation)
            .map_err(reqwest_middleware::Error::middleware)?;
        cache.counters.retried();
        let response = next.run(again, extensions).await?;
        layer.learn(proof, &entry, &response);
        Ok(response)
    }
}

impl fmt::Debug for AuthMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthMiddleware")
            .field("layer", &self.layer)
            .finish()
    }
}
