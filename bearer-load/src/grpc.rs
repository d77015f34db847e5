//! gRPC mode: the standard `grpc.health.v1.Health/Check` (unary) through a tonic `Channel`
//! wrapped in the layer. A channel sends requests addressed by path alone, so the layer is
//! told where the channel connects with `channel_origin` (see [`crate::source::layer`]).

use std::time::Duration;

use http::Uri;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower_bearer::{AuthLayer, AuthService};

use crate::{
    Error,
    outcome::{ErrorKind, Outcome},
    transport::{TlsOptions, classify, describe},
};

/// Calls `Health/Check` for one service name through the layer.
#[derive(Clone)]
pub struct GrpcTarget {
    client: HealthClient<AuthService<tonic::transport::Channel>>,
    service: String,
    timeout: Duration,
}

impl GrpcTarget {
    /// A lazily connecting channel to `url` (`http://` for h2c, `https://` for TLS with ALPN
    /// h2, trusting what `tls` says), under `layer`, asking about `service` (`""`: the whole
    /// server).
    ///
    /// # Errors
    ///
    /// A URL that is not `http://` or `https://`; TLS settings as for [`TlsOptions::roots`].
    pub fn new(
        url: &Uri,
        layer: AuthLayer,
        tls: &TlsOptions,
        service: String,
        timeout: Duration,
    ) -> Result<GrpcTarget, Error> {
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(Error::Usage(format!(
                "--url {url}: give the gRPC server as http://host:port or https://host:port"
            )));
        }
        let endpoint = Endpoint::from(url.clone()).timeout(timeout);
        let channel = endpoint.connect_with_connector_lazy(tls.connector(true)?);
        let service_stack = tower::ServiceBuilder::new().layer(layer).service(channel);
        Ok(GrpcTarget {
            client: HealthClient::new(service_stack),
            service,
            timeout,
        })
    }

    /// One `Check` call: a success if the answer is OK and `SERVING`.
    pub async fn send(&self, _i: u64) -> Outcome {
        let mut client = self.client.clone();
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        match tokio::time::timeout(self.timeout, client.check(request)).await {
            Err(_) => Outcome::Error(
                ErrorKind::Timeout,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            Ok(Ok(response)) => {
                let serving = response.into_inner().status == ServingStatus::Serving as i32;
                Outcome::Status {
                    code: if serving { "OK" } else { "OK (not SERVING)" }.into(),
                    success: serving,
                }
            }
            // tonic reports a token failure or a transport error as a status whose source is
            // the error; a status the server sent has none.
            Ok(Err(status)) => match std::error::Error::source(&status) {
                Some(source) => Outcome::Error(classify(source), describe(source)),
                None => Outcome::Status {
                    code: code_name(status.code()).into(),
                    success: false,
                },
            },
        }
    }
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
