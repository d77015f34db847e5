//! 401 handling: refresh only if the rejected token is still current, one fetch per rejected
//! token however many requests saw it, resend once when the body allows, never on 403.

mod support;

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{
    Full,
    combinators::{BoxBody, UnsyncBoxBody},
};
use support::{ApiDown, CountingSource, ProtectedApi};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, BoxError, Error, StaticToken, TokenSource, replay::ReplayableBody};

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("https://api.test/items")
        .header("x-request", "kept")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn source() -> CountingSource {
    CountingSource::new(Duration::from_millis(5), Some(Duration::from_secs(3600)))
}

#[tokio::test(start_paused = true)]
async fn a_thousand_requests_rejected_together_cause_one_refresh_and_all_succeed() {
    let source = source();
    let auth = AuthLayer::new(source.clone());
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());

    // Warm the cache with tok-1.
    assert_eq!(
        svc.clone().oneshot(post("warm")).await.unwrap().status(),
        StatusCode::OK
    );

    // 1,000 requests are in flight with tok-1 when the server revokes it.
    api.set_latency(Duration::from_millis(50));
    let mut set = JoinSet::new();
    for _ in 0..1_000 {
        let svc = svc.clone();
        set.spawn(async move { svc.oneshot(post("payload")).await.unwrap() });
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    api.revoke("tok-1");

    for response in set.join_all().await {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.body(),
            "payload",
            "the resend carried the same body"
        );
    }
    assert_eq!(source.fetches(), 2, "one initial fetch, one refresh");
    assert_eq!(api.unauthorized(), 1_000);
    let seen = api.seen();
    assert_eq!(seen.iter().filter(|t| *t == "tok-2").count(), 1_000);
    let stats = auth.stats();
    assert_eq!(stats.unauthorized, 1);
    assert_eq!(stats.retries, 1_000);
}

/// A request in flight holds its layer through the spare it would be resent through: with the
/// service and every clone of the layer gone, its 401 still refreshes the token and resends.
#[tokio::test(start_paused = true)]
async fn a_401_after_the_service_and_the_layer_are_dropped_still_refreshes_and_resends() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::new(source.clone());
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-1");
    api.set_latency(Duration::from_millis(50));
    let in_flight = tokio::spawn(svc.oneshot(post("payload")));
    drop(auth);
    tokio::time::sleep(Duration::from_millis(10)).await;
    api.revoke("tok-1");
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "payload");
    assert_eq!(api.seen(), ["tok-1", "tok-2"]);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_second_401_goes_back_to_the_caller_unchanged() {
    let source = source();
    let api = source.api();
    api.force_status(Some(StatusCode::UNAUTHORIZED));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(api.clone());

    let response = svc.oneshot(post("once")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.body(), "once");
    assert_eq!(api.requests(), 2, "sent once, resent once, then given up");
    assert_eq!(api.seen(), ["tok-1", "tok-2"]);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_token_for_30_seconds_costs_a_bounded_number_of_fetches() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(13)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    assert_eq!(
        svc.clone().oneshot(post("warm")).await.unwrap().status(),
        StatusCode::OK
    );

    // 100 callers, each sending a request every 10 ms, while the API rejects every token
    // (a wrong audience, a signing key not yet propagated) for 30 s.
    api.force_status(Some(StatusCode::UNAUTHORIZED));
    let send_round = |svc: &tower_bearer::AuthService<support::ProtectedApi>| {
        let mut set = JoinSet::new();
        for _ in 0..100 {
            let svc = svc.clone();
            set.spawn(async move { svc.oneshot(post("p")).await.unwrap().status() });
        }
        set.join_all()
    };
    let mut rejected = 0;
    for _ in 0..3_000 {
        rejected += send_round(&svc)
            .await
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count();
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(rejected, 300_000, "the API rejected every request");
    // The first rejected token is replaced at once; each next one is kept for a backoff step
    // (100-200 ms, 200-400 ms, ... at most 15-30 s) before another fetch. The steps' lower
    // bounds add up past 30 s after 8 of them: at most 1 + 1 + 8 fetches.
    let fetches = source.fetches();
    eprintln!("30 s of rejections under 100 callers: {fetches} token requests");
    assert!(
        (6..=10).contains(&fetches),
        "{fetches} token requests in 30 s"
    );

    // The API accepts tokens again: the very next requests succeed, with no fetch.
    api.force_status(None);
    let statuses = send_round(&svc).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(source.fetches(), fetches);
}

/// Servers behind one address that disagree (one accepts every token, the others reject it)
/// are a storm, not a string of revocations: each token is accepted by its first request and
/// rejected by the next, for 30 s under 100 callers, and the token requests stay bounded as for
/// an API that rejects every token. (Taken for revocations, each would cost a token request per
/// round trip: about 3,000.)
#[tokio::test(start_paused = true)]
async fn servers_that_disagree_about_every_token_cost_a_bounded_number_of_token_requests() {
    // A token endpoint that answers in 5 ms, and one that takes 300 ms (longer than the first
    // backoff step).
    for latency in [Duration::from_millis(5), Duration::from_millis(300)] {
        let source = CountingSource::new(latency, Some(Duration::from_secs(3600)));
        let api = source.api();
        let auth = AuthLayer::builder(source.clone())
            .jitter_seed(17)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(auth.clone())
            .service(api.clone());
        api.state().accept_once.store(true, SeqCst);
        let mut accepted = 0;
        for _ in 0..3_000 {
            let mut set = JoinSet::new();
            for _ in 0..100 {
                let svc = svc.clone();
                set.spawn(async move { svc.oneshot(post("p")).await.unwrap().status() });
            }
            let statuses = set.join_all().await;
            accepted += statuses.iter().filter(|s| **s == StatusCode::OK).count();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let fetches = source.fetches();
        eprintln!("30 s of disagreeing servers, {latency:?} fetches: {fetches} token requests");
        assert_eq!(accepted, fetches, "each token was accepted once");
        assert!(
            (3..=12).contains(&fetches),
            "{fetches} token requests in 30 s"
        );
    }
}

/// Revocations are not a storm. The API revokes the token in use twice, 20 s apart, while 50
/// callers send a request every 10 ms. Each revoked token had been accepted before: it is
/// forgotten at once and costs one refetch, and every request it failed is resent with the new
/// token. No request fails. (Counted as a storm, the second revoked token would be kept for a
/// backoff step and its requests handed their 401s.)
#[tokio::test(start_paused = true)]
async fn two_revocations_20_seconds_apart_fail_no_request() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(21)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    let mut failed = 0;
    let mut sent = 0;
    for round in 0..4_000 {
        match round {
            1_000 => api.revoke("tok-1"),
            3_000 => api.revoke("tok-2"),
            _ => {}
        }
        let mut set = JoinSet::new();
        for _ in 0..50 {
            let svc = svc.clone();
            set.spawn(async move { svc.oneshot(post("p")).await.unwrap().status() });
        }
        let statuses = set.join_all().await;
        sent += statuses.len();
        failed += statuses.iter().filter(|s| **s != StatusCode::OK).count();
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(sent, 200_000);
    assert_eq!(failed, 0, "requests failed across two revocations");
    assert_eq!(source.fetches(), 3, "one refetch per revocation");
    let stats = auth.stats();
    assert_eq!(stats.unauthorized, 2);
    assert_eq!(stats.not_resent, 0);
    assert!(stats.retries >= 2, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn forbidden_never_refreshes() {
    let source = source();
    let api = source.api();
    api.force_status(Some(StatusCode::FORBIDDEN));
    let auth = AuthLayer::new(source.clone());
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());

    for _ in 0..3 {
        let response = svc.clone().oneshot(post("x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(api.requests(), 3);
    assert_eq!(source.fetches(), 1);
    assert_eq!(auth.stats().unauthorized, 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_is_not_resent_but_the_next_request_gets_a_new_token() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .replay_limit(4)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    let streaming = || {
        let body: BoxBody<Bytes, Infallible> = BoxBody::new(Full::new(Bytes::from("stream")));
        Request::post("https://api.test/upload").body(body).unwrap()
    };

    assert_eq!(
        svc.clone().oneshot(streaming()).await.unwrap().status(),
        StatusCode::OK
    );
    api.revoke("tok-1");
    let response = svc.clone().oneshot(streaming()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.requests(), 2, "not resent");
    assert_eq!(auth.stats().not_resent, 1);

    let response = svc.oneshot(streaming()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_within_the_limit_is_resent_with_the_same_bytes() {
    use tower_bearer::replay::ReplayableBody;
    let source = source();
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(api.clone());
    // A body that arrives in many chunks, as a proxied upload would.
    let upload = || {
        let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..100)
            .map(|i| Ok(http_body::Frame::data(Bytes::from(format!("{i:03},")))))
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        Request::post("https://api.test/upload")
            .body(ReplayableBody::new(body))
            .unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(upload()).await.unwrap().status(),
        StatusCode::OK
    );
    api.revoke("tok-1");
    let response = svc.oneshot(upload()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let expected: String = (0..100).map(|i| format!("{i:03},")).collect();
    assert_eq!(response.body(), &expected);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_boxed_body_is_resent() {
    let source = source();
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(api.clone());
    let get = || {
        let body: BoxBody<Bytes, Infallible> = BoxBody::new(http_body_util::Empty::new());
        Request::get("https://api.test/items").body(body).unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    api.revoke("tok-1");
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_late_401_for_a_replaced_token_causes_no_fetch() {
    let source = source();
    let auth = AuthLayer::new(source.clone());
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    svc.clone().oneshot(post("warm")).await.unwrap();

    // A slow request leaves with tok-1 ...
    api.set_latency(Duration::from_millis(100));
    let slow = tokio::spawn(svc.clone().oneshot(post("slow")));
    tokio::time::sleep(Duration::from_millis(1)).await;
    // ... tok-1 is revoked and a fast request replaces it with tok-2 ...
    api.revoke("tok-1");
    api.set_latency(Duration::ZERO);
    let fast = svc.clone().oneshot(post("fast")).await.unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 2);

    // ... so when the slow request's 401 for tok-1 arrives, it just resends with tok-2.
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(
        source.fetches(),
        2,
        "no fetch for a token that was already replaced"
    );
    assert_eq!(auth.stats().unauthorized, 1);
}

#[tokio::test(start_paused = true)]
async fn a_one_off_client_still_resends_after_a_401() {
    // Nothing but the request's future is left once it is sent: the layer went with the
    // builder, the service with `oneshot`. The future keeps the cache alive, so the 401 still
    // gets its new token and the resend.
    let source = source();
    let api = source.api();
    api.set_latency(Duration::from_millis(10));
    let one_off = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(api.clone())
        .oneshot(post("once"));
    let response = tokio::spawn(one_off);
    // The fetch takes 5 ms; at 8 ms the request is with the API, which checks the token at 15.
    tokio::time::sleep(Duration::from_millis(8)).await;
    api.revoke("tok-1");

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "once");
    assert_eq!(api.seen(), ["tok-1", "tok-2"]);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_retry_off_the_401_is_returned_and_the_next_request_recovers() {
    let source = source();
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source.clone())
                .retry_unauthorized(false)
                .build()
                .unwrap(),
        )
        .service(api.clone());
    svc.clone().oneshot(post("a")).await.unwrap();
    api.revoke("tok-1");
    assert_eq!(
        svc.clone().oneshot(post("b")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        svc.oneshot(post("c")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(api.seen(), ["tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_and_token_errors_are_told_apart() {
    let source = source();
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source.clone()))
        .service(api.clone());

    api.state()
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = svc.clone().oneshot(post("x")).await.unwrap_err();
    assert!(err.downcast_ref::<Error>().is_none());
    assert!(err.downcast_ref::<ApiDown>().is_some());

    source.fail_fetch(2);
    let auth_err = {
        // A new layer whose first fetch (number 2 of this source) fails.
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::new(source.clone()))
            .service(api.clone());
        svc.oneshot(post("y")).await.unwrap_err()
    };
    assert!(matches!(
        auth_err.downcast_ref::<Error>(),
        Some(Error::Source(_))
    ));
}

/// The resend's URI is kept as text when short and cloned when not (`replay::uri`): both come
/// back byte for byte.
#[tokio::test(start_paused = true)]
async fn the_resend_keeps_method_uri_and_headers() {
    let long = format!(
        "https://api.test/items/{}?cursor=a%2Fb&limit=10",
        "x".repeat(80)
    );
    for uri in [
        "https://api.test/items",
        "https://API.test:443/items?q=%41",
        &long,
    ] {
        let source = source();
        let api = source.api();
        let seen_headers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = {
            let seen_headers = seen_headers.clone();
            tower::service_fn(move |req: Request<Full<Bytes>>| {
                seen_headers.lock().unwrap().push((
                    req.method().clone(),
                    req.uri().to_string(),
                    req.headers().get("x-request").cloned(),
                ));
                let mut api = api.clone();
                async move { tower::Service::call(&mut api, req).await }
            })
        };
        let svc = ServiceBuilder::new()
            .layer(AuthLayer::new(source.clone()))
            .service(recorder);
        let request = |body: &'static str| {
            let mut request = post(body);
            *request.uri_mut() = uri.parse().unwrap();
            request
        };
        svc.clone().oneshot(request("a")).await.unwrap();
        source.api().revoke("tok-1");
        let response = svc.oneshot(request("b")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = seen_headers.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{uri}");
        assert_eq!(seen[1], seen[2]);
        assert_eq!(seen[2].0, http::Method::POST);
        assert_eq!(seen[2].1, uri);
        assert_eq!(seen[2].2.as_ref().unwrap(), "kept");
    }
}

#[tokio::test(start_paused = true)]
async fn a_challenge_naming_another_error_does_not_refresh() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::new(source.clone());
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    svc.clone().oneshot(post("a")).await.unwrap();
    api.revoke("tok-1");

    *api.state().challenge.lock().unwrap() = Some(r#"Bearer error="invalid_request""#);
    let response = svc.clone().oneshot(post("b")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        source.fetches(),
        1,
        "a new token cannot fix invalid_request"
    );
    assert_eq!(auth.stats().unauthorized, 0);

    *api.state().challenge.lock().unwrap() =
        Some(r#"Bearer realm="api", error="invalid_token", error_description="revoked""#);
    let response = svc.oneshot(post("c")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_scheme_can_be_spelled_as_the_api_wants() {
    let source = source();
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(source.clone())
                .scheme("bearer")
                .build()
                .unwrap(),
        )
        .service(api.clone());
    svc.oneshot(post("a")).await.unwrap();
    assert_eq!(*api.state().authorization.lock().unwrap(), ["bearer tok-1"]);
}

#[test]
fn a_scheme_that_is_not_a_token_is_a_config_error_before_any_fetch() {
    let source = source();
    let err = AuthLayer::builder(source.clone())
        .scheme("Bearer token")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(source.fetches(), 0);
}

/// A gRPC stream resent with a new token that runs on for a minute and then ends with
/// UNAUTHENTICATED in its trailers (the new token expired or was revoked mid-stream): the layer
/// drops that token too, and the next call fetches another. An in-process gRPC service with
/// tonic's body type, on paused time.
#[cfg(feature = "tonic")]
#[tokio::test(start_paused = true)]
async fn unauthenticated_in_the_trailers_of_a_resent_stream_drops_the_new_token() {
    use http::{HeaderMap, HeaderValue, Response};
    use http_body::Frame;
    use tokio::sync::mpsc;

    let source = source();
    let api = source.api();
    // The stream the accepted call answers with: the test sends its frames.
    let (frames, stream) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let stream = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    let grpc = tower::service_fn(move |request: Request<tonic::body::Body>| {
        let (api, stream) = (api.clone(), stream.clone());
        async move {
            let authorization = request.headers()["authorization"].to_str().unwrap();
            let mut response = if api.check(authorization) {
                let frames = stream.lock().unwrap().take().expect("one stream");
                Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(frames),
                )))
            } else {
                let mut refused = Response::new(tonic::body::Body::empty());
                refused
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("16"));
                refused
            };
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(response)
        }
    });
    let auth = AuthLayer::builder(source.clone())
        .channel_origin("http://127.0.0.1:50051")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new().layer(auth.clone()).service(grpc);
    let call = || {
        Request::post("/echo.Echo/Count")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(Full::new(Bytes::from_static(
                b"msg",
            ))))
            .unwrap()
    };

    auth.token().await.unwrap();
    source.api().revoke("tok-1");
    let response = svc.clone().oneshot(call()).await.unwrap();
    assert_eq!(auth.stats().retries, 1, "resent with tok-2");
    let mut body = response.into_body();

    frames
        .send(Ok(Frame::data(Bytes::from_static(b"m1"))))
        .await
        .unwrap();
    use http_body_util::BodyExt;
    assert!(body.frame().await.unwrap().unwrap().is_data());
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("16"));
    frames.send(Ok(Frame::trailers(trailers))).await.unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    assert_eq!(
        auth.stats().unauthorized,
        2,
        "tok-1, then tok-2 in the trailers"
    );

    assert_eq!(auth.token().await.unwrap().access_token().secret(), "tok-3");
    assert_eq!(source.api().seen(), ["tok-1", "tok-2"]);
}

/// The default replay limit is 64 KiB: a streamed body of exactly 65,536 bytes is resent after
/// a 401, one of 65,537 is not (its 401 goes to the caller).
#[tokio::test(start_paused = true)]
async fn the_default_replay_limit_is_64_kib() {
    use tower_bearer::replay::ReplayableBody;
    let source = source();
    let auth = AuthLayer::new(source.clone());
    let api = source.api();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(api.clone());
    let upload = |len: usize| {
        // Streamed in 1 KiB chunks, the last one short.
        let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = vec![b'x'; len]
            .chunks(1024)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        Request::post("https://api.test/upload")
            .body(ReplayableBody::new(body))
            .unwrap()
    };
    svc.clone().oneshot(upload(1)).await.unwrap();

    api.revoke("tok-1");
    let response = svc.clone().oneshot(upload(64 * 1024)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().len(), 64 * 1024, "resent whole");
    assert_eq!(auth.stats().retries, 1);

    api.revoke("tok-2");
    let response = svc.clone().oneshot(upload(64 * 1024 + 1)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(auth.stats().not_resent, 1);
}

/// The same storm, shorter, with each request's sends recorded: a request whose token is kept
/// (the replacement of a rejected token was rejected too) gets its 401 back, and every request
/// that is resent carries another token than the one it was rejected with.
#[tokio::test(start_paused = true)]
async fn during_a_401_storm_no_request_is_resent_with_the_token_it_was_rejected_with() {
    let source = source();
    let api = source.api();
    let auth = AuthLayer::builder(source.clone())
        .jitter_seed(13)
        .build()
        .unwrap();
    // (request id, token) of every request the API receives, first sends and resends alike.
    let sends = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let recorder = {
        let sends = Arc::clone(&sends);
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let id = req.headers()["x-id"].to_str().unwrap().to_owned();
            let token = req.headers()["authorization"].to_str().unwrap().to_owned();
            sends.lock().unwrap().push((id, token));
            let mut api = api.clone();
            async move { tower::Service::call(&mut api, req).await }
        })
    };
    let svc = ServiceBuilder::new().layer(auth.clone()).service(recorder);
    let request = |id: String| {
        Request::post("https://api.test/items")
            .header("x-id", id)
            .body(Full::new(Bytes::from_static(b"p")))
            .unwrap()
    };
    svc.clone().oneshot(request("warm".into())).await.unwrap();

    // 20 callers, a request each every 10 ms, for 5 s of rejections.
    source.api().force_status(Some(StatusCode::UNAUTHORIZED));
    for round in 0..500 {
        let mut set = JoinSet::new();
        for caller in 0..20 {
            let svc = svc.clone();
            let request = request(format!("{round}/{caller}"));
            set.spawn(async move { svc.oneshot(request).await.unwrap().status() });
        }
        for status in set.join_all().await {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        tokio::time::advance(Duration::from_millis(10)).await;
    }

    let mut by_request = std::collections::HashMap::<String, Vec<String>>::new();
    for (id, token) in sends.lock().unwrap().iter().skip(1) {
        by_request
            .entry(id.clone())
            .or_default()
            .push(token.clone());
    }
    assert_eq!(by_request.len(), 500 * 20);
    let mut resent = 0;
    for (id, tokens) in &by_request {
        match tokens.as_slice() {
            [_] => {}
            [first, second] => {
                assert_ne!(
                    first, second,
                    "request {id} was resent with its rejected token"
                );
                resent += 1;
            }
            more => panic!("request {id} was sent {} times", more.len()),
        }
    }
    let stats = auth.stats();
    assert_eq!(stats.retries, resent);
    assert!(resent > 0, "some requests were resent with a new token");
    assert!(
        stats.not_resent > 0,
        "some requests were rejected with a kept token and not resent"
    );
}

/// An inner service that logs each readiness poll and each call, and keeps tower's contract in
/// view: a call on an instance that was not polled ready since its last call is logged so.
#[derive(Clone)]
struct ReadinessLog {
    api: ProtectedApi,
    log: Arc<Mutex<Vec<String>>>,
    ready: bool,
}

impl tower::Service<Request<Full<Bytes>>> for ReadinessLog {
    type Response = http::Response<String>;
    type Error = ApiDown;
    type Future = <ProtectedApi as tower::Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ApiDown>> {
        self.log.lock().unwrap().push("ready".into());
        let ready = tower::Service::<Request<Full<Bytes>>>::poll_ready(&mut self.api, cx);
        self.ready = ready.is_ready();
        ready
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let token = req.headers()["authorization"].to_str().unwrap();
        let unreadied = if std::mem::take(&mut self.ready) {
            ""
        } else {
            " on an instance not polled ready"
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("call with {token}{unreadied}"));
        self.api.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn the_resend_polls_the_inner_services_readiness_again() {
    let source = source();
    let log = Arc::new(Mutex::new(Vec::new()));
    let inner = ReadinessLog {
        api: source.api(),
        log: Arc::clone(&log),
        ready: false,
    };
    let auth = AuthLayer::new(source.clone());
    auth.token().await.unwrap();
    source.api().revoke("tok-1");

    let svc = ServiceBuilder::new().layer(auth.clone()).service(inner);
    let response = svc.oneshot(post("once")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the resend succeeded");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "ready",
            "call with Bearer tok-1",
            "ready",
            "call with Bearer tok-2"
        ]
    );
    assert_eq!(auth.stats().retries, 1);
}

/// An inner service that counts how often it is cloned.
struct CountedClones {
    api: ProtectedApi,
    clones: Arc<AtomicUsize>,
}

impl Clone for CountedClones {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        CountedClones {
            api: self.api.clone(),
            clones: Arc::clone(&self.clones),
        }
    }
}

impl tower::Service<Request<Full<Bytes>>> for CountedClones {
    type Response = http::Response<String>;
    type Error = ApiDown;
    type Future = <ProtectedApi as tower::Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ApiDown>> {
        tower::Service::<Request<Full<Bytes>>>::poll_ready(&mut self.api, cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.api.call(req)
    }
}

/// tower's `Retry` keeps a clone of the inner service in every request's future; the layer
/// keeps one per service (shared with its clones) and clones it only for a resend.
#[tokio::test(start_paused = true)]
async fn the_inner_service_is_cloned_for_a_resend_only_when_one_happens() {
    let source = source();
    let clones = Arc::new(AtomicUsize::new(0));
    let inner = CountedClones {
        api: source.api(),
        clones: Arc::clone(&clones),
    };
    let auth = AuthLayer::new(source.clone());
    auth.token().await.unwrap();
    let mut svc = ServiceBuilder::new().layer(auth.clone()).service(inner);

    for _ in 0..100 {
        let ready = svc.ready().await.unwrap();
        let response = tower::Service::call(ready, post("kept")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        clones.load(SeqCst),
        1,
        "one spare, made at the first request"
    );

    for _ in 0..100 {
        let response = svc.clone().oneshot(post("kept")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        clones.load(SeqCst),
        101,
        "the caller's clones, nothing more"
    );

    source.api().revoke("tok-1");
    let response = svc.clone().oneshot(post("resent")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the resend succeeded");
    assert_eq!(response.body(), "resent");
    assert_eq!(auth.stats().retries, 1);
    assert_eq!(
        clones.load(SeqCst),
        103,
        "the caller's clone and the resend's"
    );

    // A service changed through `get_mut` resends through a copy of what it is now.
    let mut changed = svc.clone();
    let before = clones.load(SeqCst);
    let _ = changed.get_mut();
    // Past the backoff after the first rejection: a second revocation is not a storm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.api().revoke("tok-2");
    let ready = changed.ready().await.unwrap();
    let response = tower::Service::call(ready, post("again")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        clones.load(SeqCst) - before,
        2,
        "a new spare from the changed service, and the resend's clone of it"
    );
}

/// `StaticToken`'s documented behaviour after a 401: the layer asks the source again, gets the
/// same token, resends once with it, and the caller gets the second 401.
#[tokio::test(start_paused = true)]
async fn a_static_token_rejected_with_401_is_asked_for_again_and_resent_once() {
    let asks = Arc::new(AtomicUsize::new(0));
    let key = StaticToken::new("my-api-key");
    let counted = tower_bearer::source::from_fn({
        let asks = Arc::clone(&asks);
        move || {
            asks.fetch_add(1, SeqCst);
            let key = key.clone();
            async move { key.fetch().await }
        }
    });
    let api = source().api();
    api.force_status(Some(StatusCode::UNAUTHORIZED));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(counted))
        .service(api.clone());

    let response = svc.oneshot(post("once")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.body(),
        "once",
        "the second 401, as the API sent it"
    );
    assert_eq!(api.seen(), ["my-api-key", "my-api-key"], "one resend");
    assert_eq!(asks.load(SeqCst), 2, "the source was asked twice");
}

/// How the in-process API reads a request body, for every body type the replay table lists:
/// some (`()`, `&'static str`, `Bytes`, ...) are not `http_body::Body`, but the layer takes any
/// body, so the API reads each its own way.
trait ReadBody: Send + 'static {
    fn read(self) -> Reading;
}

/// The API reading a body.
type Reading = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>>;

macro_rules! read_in_memory {
    ($($ty:ty => $bytes:expr),* $(,)?) => {$(
        impl ReadBody for $ty {
            fn read(self) -> Reading {
                let bytes: fn($ty) -> Bytes = $bytes;
                Box::pin(std::future::ready(Ok(bytes(self))))
            }
        }
    )*};
}

read_in_memory!(
    () => |()| Bytes::new(),
    &'static str => |s| Bytes::from_static(s.as_bytes()),
    &'static [u8] => Bytes::from_static,
    Bytes => |b| b,
    Vec<u8> => Bytes::from,
);

macro_rules! read_http_body {
    ($($ty:ty),* $(,)?) => {$(
        impl ReadBody for $ty {
            fn read(self) -> Reading {
                Box::pin(async move {
                    let collected = http_body_util::BodyExt::collect(self).await;
                    Ok(collected.map_err(BoxError::from)?.to_bytes())
                })
            }
        }
    )*};
}

read_http_body!(
    String,
    Full<Bytes>,
    Full<&'static [u8]>,
    http_body_util::Empty<Bytes>,
    BoxBody<Bytes, BoxError>,
    UnsyncBoxBody<Bytes, BoxError>,
    BoxBody<Bytes, Infallible>,
    UnsyncBoxBody<Bytes, Infallible>,
    ReplayableBody,
    Chunks,
);
#[cfg(feature = "axum")]
read_http_body!(axum::body::Body);
#[cfg(feature = "tonic")]
read_http_body!(tonic::body::Body);

/// A body type the replay table does not list: a bare stream, as hyper's `Incoming` is.
type Chunks = http_body_util::StreamBody<
    tokio_stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, BoxError>>>,
>;

/// `chunks` as a stream of data frames, then `error` if given: a body that fails after them.
fn chunks(chunks: &[&'static str], error: Option<&'static str>) -> Chunks {
    let mut frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    if let Some(error) = error {
        frames.push(Err(error.into()));
    }
    http_body_util::StreamBody::new(tokio_stream::iter(frames))
}

/// What came of one request whose first send carried a token the API no longer accepts.
struct AfterA401 {
    status: StatusCode,
    /// The body of the response: the API echoes the body it read.
    echoed: String,
    stats: tower_bearer::Stats,
    /// The tokens the API saw, in order.
    tokens: Vec<String>,
    /// The bodies the API read, in order; a body that failed reads as `<failed: ...>`.
    bodies: Vec<String>,
}

/// Sends `body` through a fresh layer whose cached token (tok-1) the API has revoked: the API
/// answers the first send 401.
async fn sent_after_a_401<B: ReadBody>(body: B) -> AfterA401 {
    let source = source();
    let api = source.api();
    let reader = tower::service_fn(move |request: Request<B>| {
        let mut api = api.clone();
        async move {
            let (parts, body) = request.into_parts();
            let read = match body.read().await {
                Ok(bytes) => bytes,
                Err(err) => Bytes::from(format!("<failed: {err}>")),
            };
            let request = Request::from_parts(parts, Full::new(read));
            tower::Service::call(&mut api, request).await
        }
    });
    let auth = AuthLayer::new(source.clone());
    auth.token().await.unwrap();
    source.api().revoke("tok-1");
    let svc = ServiceBuilder::new().layer(auth.clone()).service(reader);
    let request = Request::post("https://api.test/upload").body(body).unwrap();
    let response = svc.oneshot(request).await.unwrap();
    let api = source.api();
    AfterA401 {
        status: response.status(),
        echoed: response.into_body(),
        stats: auth.stats(),
        tokens: api.seen(),
        bodies: api.state().bodies.lock().unwrap().clone(),
    }
}

/// Each body type of the replay table that is resent (within the replay limit): after a 401
/// the request is resent once with a new token, the API reads the same bytes both times, and
/// the caller gets the 200.
#[tokio::test(start_paused = true)]
async fn every_body_type_the_replay_table_lists_is_resent_with_the_same_bytes_after_a_401() {
    type Outcome = std::pin::Pin<Box<dyn Future<Output = AfterA401>>>;
    fn case<B: ReadBody>(body: B) -> Outcome {
        Box::pin(sent_after_a_401(body))
    }
    let streamed = || http_body_util::BodyExt::map_err(chunks(&["pay", "load"], None), |e| e);
    let infallible = || Full::new(Bytes::from_static(b"payload"));
    let cases: Vec<(&str, &str, Outcome)> = vec![
        ("()", "", case(())),
        ("&'static str", "payload", case("payload")),
        ("&'static [u8]", "payload", case(&b"payload"[..])),
        ("Bytes", "payload", case(Bytes::from_static(b"payload"))),
        ("Full<Bytes>", "payload", case(infallible())),
        (
            "Full<&'static [u8]>",
            "payload",
            case(Full::new(&b"payload"[..])),
        ),
        (
            "Empty<Bytes>",
            "",
            case(http_body_util::Empty::<Bytes>::new()),
        ),
        ("String", "payload", case(String::from("payload"))),
        ("Vec<u8>", "payload", case(b"payload".to_vec())),
        (
            "BoxBody<Bytes, BoxError>",
            "payload",
            case(BoxBody::<Bytes, BoxError>::new(streamed())),
        ),
        (
            "UnsyncBoxBody<Bytes, BoxError>",
            "payload",
            case(UnsyncBoxBody::<Bytes, BoxError>::new(streamed())),
        ),
        (
            "BoxBody<Bytes, Infallible>",
            "payload",
            case(BoxBody::<Bytes, Infallible>::new(infallible())),
        ),
        (
            "UnsyncBoxBody<Bytes, Infallible>",
            "payload",
            case(UnsyncBoxBody::<Bytes, Infallible>::new(infallible())),
        ),
        (
            "ReplayableBody",
            "payload",
            case(ReplayableBody::new(streamed())),
        ),
        #[cfg(feature = "axum")]
        (
            "axum::body::Body",
            "payload",
            case(axum::body::Body::new(streamed())),
        ),
        #[cfg(feature = "tonic")]
        (
            "tonic::body::Body",
            "payload",
            case(tonic::body::Body::new(streamed())),
        ),
    ];

    for (body_type, expected, outcome) in cases {
        let outcome = outcome.await;
        assert_eq!(outcome.status, StatusCode::OK, "{body_type}");
        assert_eq!(outcome.echoed, expected, "{body_type}");
        assert_eq!(
            outcome.tokens,
            ["tok-1", "tok-2"],
            "{body_type}: resent once"
        );
        assert_eq!(
            outcome.bodies,
            [expected, expected],
            "{body_type}: the API read the same bytes both times"
        );
        assert_eq!(
            (outcome.stats.retries, outcome.stats.not_resent),
            (1, 0),
            "{body_type}"
        );
    }
}

/// A streaming body whose original fails after its first chunk cannot be resent whole, so it is
/// not resent: the caller gets the 401, counted as not resent.
#[tokio::test(start_paused = true)]
async fn a_boxed_body_that_fails_after_a_chunk_is_not_resent_and_its_401_goes_to_the_caller() {
    let failing = BoxBody::<Bytes, BoxError>::new(chunks(&["a"], Some("upload broke")));
    let outcome = sent_after_a_401(failing).await;
    assert_eq!(outcome.status, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome.tokens, ["tok-1"], "sent once");
    assert_eq!(outcome.bodies, ["<failed: upload broke>"]);
    assert_eq!((outcome.stats.retries, outcome.stats.not_resent), (0, 1));
}

/// A body type the replay table does not list (a bare `StreamBody`, as hyper's `Incoming`) is
/// sent once: the caller gets the 401, counted as not resent.
#[tokio::test(start_paused = true)]
async fn a_body_type_the_replay_table_does_not_list_is_sent_once_and_its_401_goes_to_the_caller() {
    let outcome = sent_after_a_401(chunks(&["pay", "load"], None)).await;
    assert_eq!(outcome.status, StatusCode::UNAUTHORIZED);
    assert_eq!(outcome.echoed, "payload");
    assert_eq!(outcome.tokens, ["tok-1"], "sent once");
    assert_eq!((outcome.stats.retries, outcome.stats.not_resent), (0, 1));
}
