//! gRPC mode: `grpc.health.v1.Health/Check` through a tonic Channel under the layer, against
//! tonic-health's server behind an interceptor that checks the token.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Status, service::InterceptorLayer, transport::Server};
use tonic_health::ServingStatus;

mod support;

/// The tool calls Check N times: every call carries the token and answers OK and SERVING;
/// a service the server reports NOT_SERVING fails (exit 1), and an unknown one is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_check_calls_all_succeed() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("test.Up", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("test.Down", ServingStatus::NotServing)
        .await;
    let (calls, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let check = {
        let (calls, refused) = (calls.clone(), refused.clone());
        move |request: Request<()>| {
            calls.fetch_add(1, Relaxed);
            match request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
            {
                Some("Bearer grpc-token") => Ok(request),
                _ => {
                    refused.fetch_add(1, Relaxed);
                    Err(Status::unauthenticated("no token"))
                }
            }
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        Server::builder()
            .layer(InterceptorLayer::new(check))
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let token = [("BEARER_LOAD_TOKEN", "grpc-token")];

    let args = [
        "--grpc",
        "--url",
        &url,
        "--requests",
        "200",
        "--concurrency",
        "8",
        "--json",
    ];
    let out = support::run(&args, &token).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!(report.protocol, "grpc");
    assert_eq!((report.requests, report.succeeded), (200, 200));
    assert_eq!(report.status_codes.get("OK"), Some(&200));
    assert_eq!((calls.load(Relaxed), refused.load(Relaxed)), (200, 0));

    let named = [
        "--grpc",
        "--url",
        &url,
        "--grpc-service",
        "test.Up",
        "--requests",
        "20",
        "--json",
    ];
    let out = support::run(&named, &token).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.report().succeeded, 20);

    let down = [
        "--grpc",
        "--url",
        &url,
        "--grpc-service",
        "test.Down",
        "--requests",
        "5",
        "--json",
    ];
    let out = support::run(&down, &token).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.report().status_codes.get("OK (not SERVING)"), Some(&5));

    let unknown = [
        "--grpc",
        "--url",
        &url,
        "--grpc-service",
        "nope",
        "--requests",
        "5",
        "--json",
    ];
    let out = support::run(&unknown, &token).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.report().status_codes.get("NOT_FOUND"), Some(&5));
}
