//! The `metrics` feature: fetches, retries within a fetch, rejections, resends, waits and stale
//! tokens served reach the metrics facade.
#![cfg(feature = "metrics")]

mod support;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{Empty, StreamBody};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use support::{CountingSource, StandInEndpoint};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::{AuthLayer, ClientCredentials};

fn counter(
    snapshot: &[(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| key.kind() == MetricKind::Counter && key.key().name() == name)
        .filter(|(key, ..)| {
            labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn fetches_rejections_and_resends_are_counted() {
    // The global recorder; the file's other test records into a recorder of its own thread.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let source = CountingSource::new(Duration::from_millis(1), Some(Duration::from_secs(3600)));
    source.fail_fetch(1);
    let auth = AuthLayer::builder(source.clone())
        .name("billing")
        .backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth.clone())
        .service(source.api());
    let get = || {
        Request::get("https://api.test/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    assert!(svc.clone().oneshot(get()).await.is_err(), "fetch 1 fails");
    svc.clone().oneshot(get()).await.unwrap();
    source.api().revoke("tok-2");
    svc.clone().oneshot(get()).await.unwrap();
    // Past tok-3's refresh target, with the endpoint down: served stale, twice.
    source.set_down(true);
    tokio::time::advance(Duration::from_secs(3600 - 25)).await;
    svc.clone().oneshot(get()).await.unwrap();
    svc.oneshot(get()).await.unwrap();
    // The background refresh they started fails.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(auth.stats().fetch_failures, 2);

    // Another layer: a transient failure, retried within the fetch.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = calls.clone();
    let flaky = tower_bearer::source::from_fn(move || {
        let first = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            if first {
                Err(tower_bearer::Error::Timeout(Duration::from_secs(1)))
            } else {
                Ok(tower_bearer::Token::new("t"))
            }
        }
    });
    let other = AuthLayer::builder(flaky).name("search").build().unwrap();
    other.token().await.unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            &[("outcome", "success")]
        ),
        3,
        "tok-2, tok-3 and the other layer's token"
    );
    assert_eq!(
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            &[("outcome", "transient_error")]
        ),
        2,
        "fetch 1 and the background refresh"
    );
    assert_eq!(counter(&snapshot, "tower_bearer.token.rejected", &[]), 1);
    assert_eq!(
        counter(&snapshot, "tower_bearer.token.served_stale", &[]),
        2
    );
    assert_eq!(
        counter(&snapshot, "tower_bearer.token.fetch.retries", &[]),
        1
    );
    assert_eq!(counter(&snapshot, "tower_bearer.requests.retried", &[]), 1);
    assert_eq!(counter(&snapshot, "tower_bearer.token.waiters", &[]), 4);
    assert!(
        snapshot
            .iter()
            .any(|(key, ..)| key.kind() == MetricKind::Histogram
                && key.key().name() == "tower_bearer.token.fetch.duration")
    );
    assert!(snapshot.iter().any(|(key, _, _, value)| key.key().name()
        == "tower_bearer.token.lifetime"
        && matches!(value, DebugValue::Gauge(g) if g.into_inner() > 3500.0)));

    // The two layers report apart: by the `layer` label.
    let fetches = |layer| counter(&snapshot, "tower_bearer.token.fetches", &[("layer", layer)]);
    assert_eq!(fetches("billing"), 4, "tok-2, tok-3 and two failures");
    assert_eq!(fetches("search"), 1);
    let retries = |layer| {
        counter(
            &snapshot,
            "tower_bearer.token.fetch.retries",
            &[("layer", layer)],
        )
    };
    assert_eq!((retries("billing"), retries("search")), (0, 1));
    let gauges: Vec<_> = snapshot
        .iter()
        .filter(|(key, ..)| key.key().name() == "tower_bearer.token.lifetime")
        .filter_map(|(key, ..)| key.key().labels().find(|l| l.key() == "layer"))
        .map(|l| l.value().to_owned())
        .collect();
    assert!(
        gauges.contains(&"billing".to_owned()) && gauges.contains(&"search".to_owned()),
        "one lifetime gauge per layer: {gauges:?}"
    );
}

/// An endpoint answering `invalid_client` is a terminal failure, in the stats and in the
/// metrics; a 401 on a body that cannot be resent is counted as not resent, in both; and the
/// metrics of layers given no name carry `layer="default"`.
#[test]
fn terminal_failures_and_unresent_401s_are_counted_under_the_default_layer_name() {
    // A recorder of this thread only, so that the file's other test (and its global recorder)
    // sees none of this; the runtime is current-thread, so every task runs on this thread.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (terminal, unresent) = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let endpoint =
                StandInEndpoint::json(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#)
                    .await;
            let source = ClientCredentials::builder(endpoint.url("/token"))
                .client_id("app")
                .client_secret("wrong")
                .build()
                .unwrap();
            let terminal = AuthLayer::new(source);
            let err = terminal.token().await.unwrap_err();
            assert_eq!(err.oauth().map(|e| e.code()), Some("invalid_client"));

            // A bare stream body cannot be resent: its 401 goes to the caller.
            let source = CountingSource::new(Duration::ZERO, Some(Duration::from_secs(3600)));
            let unresent = AuthLayer::new(source.clone());
            unresent.token().await.unwrap();
            source.api().revoke("tok-1");
            let svc = ServiceBuilder::new()
                .layer(unresent.clone())
                .service(source.api());
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"x")))];
            let body = StreamBody::new(tokio_stream::iter(frames));
            let request = Request::post("https://api.test/").body(body).unwrap();
            let response = svc.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            (terminal.stats(), unresent.stats())
        })
    });

    assert_eq!(
        (terminal.fetch_failures, terminal.terminal_failures),
        (1, 1)
    );
    assert_eq!((unresent.retries, unresent.not_resent), (0, 1));

    let snapshot = snapshotter.snapshot().into_vec();
    let default = ("layer", "default");
    assert_eq!(
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            &[default, ("outcome", "terminal_error")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            &[("outcome", "transient_error")]
        ),
        0
    );
    assert_eq!(
        counter(&snapshot, "tower_bearer.requests.not_resent", &[default]),
        1
    );
    assert_eq!(counter(&snapshot, "tower_bearer.requests.retried", &[]), 0);
    let unlabelled: Vec<_> = snapshot
        .iter()
        .filter(|(key, ..)| {
            !key.key()
                .labels()
                .any(|l| l.key() == "layer" && l.value() == "default")
        })
        .map(|(key, ..)| key.key().name().to_owned())
        .collect();
    assert!(
        unlabelled.is_empty(),
        "without layer=\"default\": {unlabelled:?}"
    );
}
