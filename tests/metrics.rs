//! The `metrics` feature: fetches, retries within a fetch, rejections, resends, waits and stale
//! tokens served reach the metrics facade.
#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use http::Request;
use http_body_util::Empty;
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use support::CountingSource;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::AuthLayer;

fn counter(
    snapshot: &[(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    label: Option<(&str, &str)>,
) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| key.kind() == MetricKind::Counter && key.key().name() == name)
        .filter(|(key, ..)| {
            label.is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn fetches_rejections_and_resends_are_counted() {
    // A global recorder: this file has this one test.
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
            Some(("outcome", "success"))
        ),
        3,
        "tok-2, tok-3 and the other layer's token"
    );
    assert_eq!(
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            Some(("outcome", "transient_error"))
        ),
        2,
        "fetch 1 and the background refresh"
    );
    assert_eq!(counter(&snapshot, "tower_bearer.token.rejected", None), 1);
    assert_eq!(
        counter(&snapshot, "tower_bearer.token.served_stale", None),
        2
    );
    assert_eq!(
        counter(&snapshot, "tower_bearer.token.fetch.retries", None),
        1
    );
    assert_eq!(counter(&snapshot, "tower_bearer.requests.retried", None), 1);
    assert_eq!(counter(&snapshot, "tower_bearer.token.waiters", None), 4);
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
    let fetches = |layer| {
        counter(
            &snapshot,
            "tower_bearer.token.fetches",
            Some(("layer", layer)),
        )
    };
    assert_eq!(fetches("billing"), 4, "tok-2, tok-3 and two failures");
    assert_eq!(fetches("search"), 1);
    let retries = |layer| {
        counter(
            &snapshot,
            "tower_bearer.token.fetch.retries",
            Some(("layer", layer)),
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
