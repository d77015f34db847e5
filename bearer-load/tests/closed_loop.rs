//! The closed loop's workers on their own connections: the token on every request, a
//! connection per worker, and `--timeout` kept by one timer per worker that is moved on only
//! when it fires early.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

/// An API on 127.0.0.1 that answers `delay` late: 200 to `Bearer static-token`, 401 otherwise.
/// Counts connections.
async fn api(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let counting = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = format!("http://{}/items", counting.local_addr().unwrap());
    // A front that counts connections and relays them to the API.
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = counting.accept().await.unwrap();
            counted.fetch_add(1, SeqCst);
            let target = url
                .trim_start_matches("http://")
                .trim_end_matches("/items")
                .to_owned();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    tokio::spawn(bearer_load::demo::serve(
        listener,
        None,
        move |request| async move {
            tokio::time::sleep(delay).await;
            let ok = request
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer static-token");
            let mut response = Response::new(Full::new(Bytes::new()));
            if !ok {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            response
        },
    ));
    (front, connections)
}

/// Every request carries the token, and each worker keeps one connection: 4 workers, 400
/// requests, 4 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_sends_on_one_connection_of_its_own() {
    let (url, connections) = api(Duration::ZERO).await;
    let out = support::run(
        &["--url", &url, "-c", "4", "-n", "400", "--json"],
        &[("BEARER_LOAD_TOKEN", "static-token")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!(report.succeeded, 400, "{:?}", report.status_codes);
    assert_eq!(connections.load(SeqCst), 4, "one connection per worker");
}

/// Answers 100 ms late under a 250 ms timeout, three per worker: the worker's timer, armed
/// when the worker started, fires during its third request, which has time left, so it is
/// moved on and no request times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_within_the_timeout_is_not_a_timeout() {
    let (url, _) = api(Duration::from_millis(100)).await;
    let out = support::run(
        &[
            "--url",
            &url,
            "-c",
            "2",
            "-n",
            "6",
            "--timeout",
            "250ms",
            "--json",
        ],
        &[("BEARER_LOAD_TOKEN", "static-token")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!(report.errors.timeout, 0, "{:?}", report.error_examples);
    assert_eq!(report.succeeded, 6);
}

/// A server that never answers: each request is a timeout once `--timeout` has passed, not
/// before (two per worker, one after the other: at least twice the timeout in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_answer_times_out_after_the_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let out = support::run(
        &[
            "--url",
            &url,
            "-c",
            "2",
            "-n",
            "4",
            "--timeout",
            "300ms",
            "--json",
        ],
        &[("BEARER_LOAD_TOKEN", "static-token")],
    )
    .await;
    let report = out.report();
    assert_eq!(report.errors.timeout, 4, "{:?}", report.error_examples);
    assert!(report.duration_s >= 0.6, "{} s", report.duration_s);
}
