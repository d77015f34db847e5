//! Where the token goes: origin limits, no plain http beyond loopback, the header it goes in,
//! and gRPC's UNAUTHENTICATED treated like a 401.

mod support;

use std::{convert::Infallible, time::Duration};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use support::CountingSource;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_bearer::{AuthLayer, Error};

/// An API that echoes the Authorization (or X-Api-Token) header it got.
fn echo() -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|req: Request<String>| async move {
        let seen = req
            .headers()
            .get("authorization")
            .or_else(|| req.headers().get("x-api-token"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(Response::new(seen))
    })
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

fn source() -> CountingSource {
    CountingSource::new(Duration::ZERO, None)
}

#[tokio::test]
async fn requests_to_other_origins_pass_through_without_the_token() {
    let auth = AuthLayer::builder(source())
        .origin("https://api.example.com")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(auth.clone()).service(echo());

    let ours = svc
        .clone()
        .oneshot(get("https://api.example.com/v1/x"))
        .await
        .unwrap();
    assert_eq!(ours.body(), "Bearer tok-1");
    for other in [
        "https://evil.example.com/v1/x",
        "https://api.example.com:8443/v1/x",
        "http://127.0.0.1/v1/x",
    ] {
        let response = svc.clone().oneshot(get(other)).await.unwrap();
        assert_eq!(response.body(), "", "{other} must not get the token");
    }
    // A request addressed by path alone (as a tonic channel sends it) names no destination.
    let err = svc.oneshot(get("/pkg.Service/Method")).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Error::UnknownDestination)),
        "{err}"
    );
    assert_eq!(auth.stats().fetches, 1);
}

#[tokio::test]
async fn requests_addressed_by_path_alone_go_where_the_channel_origin_says() {
    let relative = || get("/pkg.Service/Method");
    // Unset: refused, and the error says what to do.
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source()))
        .service(echo());
    let err = svc.oneshot(relative()).await.unwrap_err();
    assert!(err.to_string().contains("channel_origin"), "{err}");

    // The channel's origin is https: the token goes.
    let svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source())
                .channel_origin("https://api.example.com:443")
                .build()
                .unwrap(),
        )
        .service(echo());
    assert_eq!(
        svc.oneshot(relative()).await.unwrap().body(),
        "Bearer tok-1"
    );

    // Outside the layer's origins: the request goes without the token.
    let svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source())
                .origin("https://api.example.com")
                .channel_origin("https://other.example.com")
                .build()
                .unwrap(),
        )
        .service(echo());
    assert_eq!(svc.oneshot(relative()).await.unwrap().body(), "");

    // Plain http to a host that is not loopback: refused when the layer is built.
    let err = AuthLayer::builder(source())
        .channel_origin("http://10.1.2.3:50051")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InsecureRequest { host, .. } if host == "10.1.2.3"),
        "{err:?}"
    );
    assert!(
        AuthLayer::builder(source())
            .channel_origin("http://10.1.2.3:50051")
            .allow_http(true)
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn only_https_wss_and_loopback_http_or_ws_get_the_token() {
    let source = source();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(echo());
    for uri in ["wss://api.example.com/socket", "ws://127.0.0.1:9000/socket"] {
        let response = svc.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(response.body(), "Bearer tok-1", "{uri}");
    }
    for uri in [
        "ws://api.example.com/socket",
        "ftp://api.example.com/file",
        "foo://127.0.0.1/x",
    ] {
        let err = svc.clone().oneshot(get(uri)).await.unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(Error::InsecureRequest { .. })),
            "{uri}: {err}"
        );
    }
    // allow_http opens plain http and ws, never other schemes.
    let open = ServiceBuilder::new()
        .layer(AuthLayer::builder(source).allow_http(true).build().unwrap())
        .service(echo());
    let response = open
        .clone()
        .oneshot(get("ws://api.example.com/s"))
        .await
        .unwrap();
    assert_eq!(response.body(), "Bearer tok-2");
    let err = open
        .oneshot(get("ftp://api.example.com/f"))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Error>().is_some(), "{err}");
}

#[tokio::test]
async fn plain_http_beyond_loopback_is_refused_unless_allowed() {
    let source = source();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(echo());
    let err = svc
        .clone()
        .oneshot(get("http://api.example.com/x"))
        .await
        .unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::InsecureRequest { host, scheme }) => {
            assert_eq!(
                (scheme.as_str(), host.as_str()),
                ("http", "api.example.com")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("allow_http(true)"), "{err}");
    assert!(err.to_string().contains("over http"), "{err}");
    assert_eq!(
        source.fetches(),
        0,
        "nothing was fetched for a refused request"
    );

    for loopback in [
        "http://127.0.0.1:8080/x",
        "http://[::1]/x",
        "http://localhost/x",
    ] {
        let response = svc.clone().oneshot(get(loopback)).await.unwrap();
        assert_eq!(response.body(), "Bearer tok-1", "{loopback}");
    }

    let open = ServiceBuilder::new()
        .layer(AuthLayer::builder(source).allow_http(true).build().unwrap())
        .service(echo());
    let response = open.oneshot(get("http://api.example.com/x")).await.unwrap();
    assert_eq!(response.body(), "Bearer tok-2");
}

#[tokio::test]
async fn the_header_and_scheme_are_configurable() {
    let svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source())
                .header_name(HeaderName::from_static("x-api-token"))
                .scheme("")
                .build()
                .unwrap(),
        )
        .service(echo());
    let response = svc.oneshot(get("https://api.example.com/x")).await.unwrap();
    assert_eq!(response.body(), "tok-1");
}

#[test]
fn an_origin_with_a_path_is_a_config_error_at_build() {
    let source = source();
    let err = AuthLayer::builder(source.clone())
        .origin("https://api.example.com/v1")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(source.fetches(), 0);
}

/// A gRPC server that answers an unknown token with a trailers-only response (HTTP 200 and
/// `grpc-status: 16` in the headers), and `grpc-status: 0` otherwise, behind a layer for its
/// channel; with the layer's source.
fn trailers_only_server() -> (
    CountingSource,
    AuthLayer,
    impl tower::Service<
        Request<String>,
        Response = Response<String>,
        Error = tower_bearer::BoxError,
        Future = impl Send,
    > + Clone,
) {
    let source = CountingSource::new(Duration::from_millis(1), Some(Duration::from_secs(3600)));
    let api = source.api();
    let grpc = service_fn(move |req: Request<String>| {
        let api = api.clone();
        async move {
            let response = api.oneshot(req).await.unwrap();
            let mut out = Response::new(String::new());
            let status = if response.status() == StatusCode::UNAUTHORIZED {
                "16"
            } else {
                "0"
            };
            out.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(status));
            Ok::<_, Infallible>(out)
        }
    });
    let auth = AuthLayer::builder(source.clone())
        .channel_origin("http://127.0.0.1:50051")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(auth.clone()).service(grpc);
    (source, auth, svc)
}

/// A call on the channel with this `content-type`, if any.
fn call(content_type: Option<&str>) -> Request<String> {
    let mut request = Request::post("/pkg.Service/Method");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body("message".to_owned()).unwrap()
}

/// gRPC's `UNAUTHENTICATED` in a trailers-only answer is a 401 to the layer, for every content
/// type a gRPC or gRPC-Web client sends, in any case.
#[tokio::test(start_paused = true)]
async fn grpc_unauthenticated_refreshes_and_retries_like_a_401() {
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc-web",
        "application/grpc-web-text+proto",
        "Application/GRPC",
    ] {
        let (source, auth, svc) = trailers_only_server();
        let first = svc.clone().oneshot(call(Some(content_type))).await.unwrap();
        assert_eq!(first.headers()["grpc-status"], "0");
        source.api().revoke("tok-1");
        let response = svc.oneshot(call(Some(content_type))).await.unwrap();
        assert_eq!(
            response.headers()["grpc-status"],
            "0",
            "{content_type}: retried with a new token"
        );
        assert_eq!(source.fetches(), 2, "{content_type}");
        assert_eq!(auth.stats().retries, 1, "{content_type}");
    }
}

/// A request that is not a gRPC call (no `content-type`, or another one) is not read for
/// `grpc-status` in its 200 answer: the layer skips that lookup for it, and the answer goes
/// back as it came, with no new token and no resend.
#[tokio::test(start_paused = true)]
async fn a_200_to_a_request_that_is_not_grpc_keeps_the_token_whatever_its_grpc_status() {
    for content_type in [None, Some("application/json"), Some("text/grpc")] {
        let (source, auth, svc) = trailers_only_server();
        let first = svc.clone().oneshot(call(content_type)).await.unwrap();
        assert_eq!(first.status(), 200);
        source.api().revoke("tok-1");
        let response = svc.oneshot(call(content_type)).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "16", "{content_type:?}");
        assert_eq!(source.fetches(), 1, "{content_type:?}: no new token");
        assert_eq!(auth.stats().retries, 0, "{content_type:?}: not resent");
    }
}

/// The plain-http rule against a real server on a non-loopback address of this machine: the
/// token is refused before anything is sent, unless `allow_http`; a channel origin on such an
/// address is refused when the layer is built.
#[tokio::test]
async fn plain_http_to_a_real_non_loopback_server_never_carries_the_token() {
    use axum::response::IntoResponse;
    use bytes::Bytes;
    use http_body_util::Empty;
    use support::{
        StandInEndpoint,
        upload::{Protocol, client},
    };

    let ip = support::non_loopback_address();
    let server = StandInEndpoint::start_on(ip, |_| StatusCode::OK.into_response()).await;
    let url = server.url("/x");
    assert!(url.starts_with(&format!("http://{ip}")), "{url}");
    let get = || Request::get(&url).body(Empty::<Bytes>::new()).unwrap();

    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source()))
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    let err = svc.oneshot(get()).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Error::InsecureRequest { host, .. }) if *host == ip.to_string()),
        "{err}"
    );
    assert!(server.recorded().is_empty(), "nothing was sent");

    let err = AuthLayer::builder(source())
        .channel_origin(format!("http://{}", server.addr))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InsecureRequest { .. }), "{err:?}");

    let open = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source())
                .allow_http(true)
                .build()
                .unwrap(),
        )
        .service(client::<Empty<Bytes>>(Protocol::Http1));
    assert_eq!(open.oneshot(get()).await.unwrap().status(), StatusCode::OK);
    let [seen] = server.recorded().try_into().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer tok-1"));
}
