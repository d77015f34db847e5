//! bearer-load against its built-in demo: what it reports is what the demo's servers saw.

mod support;

use support::run;

/// The closed loop over HTTP/1.1 and h2c: every request the tool counts reached the API and
/// was answered (the API saw one more per 401 resend), and every token fetch the layer counts
/// is a request the token endpoint answered with a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_counts_match_what_the_servers_saw() {
    for protocol in [&[][..], &["--http2"][..]] {
        let mut args = vec![
            "--demo",
            "--duration",
            "1s",
            "--concurrency",
            "16",
            "--json",
        ];
        args.extend_from_slice(protocol);
        let out = run(&args, &[]).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let report = out.report();
        let demo = report.demo.expect("the demo's counts");
        assert!(
            report.requests > 100,
            "{args:?}: only {} requests",
            report.requests
        );
        assert_eq!(report.failed, 0);
        assert_eq!(report.succeeded, report.requests);
        assert_eq!(report.status_codes.get("200"), Some(&report.requests));
        assert_eq!(
            demo.api_requests,
            report.requests + report.tokens.resent,
            "{args:?}"
        );
        assert_eq!(demo.api_ok, report.requests);
        assert_eq!(report.tokens.fetches, demo.token_requests, "{args:?}");
        assert_eq!(demo.tokens_issued, demo.token_requests);
        assert!(report.tokens.fetches >= 1);
        assert_eq!(report.mode, "closed");
        assert_eq!(report.concurrency, Some(16));
        assert_eq!(report.threads, Some(cores().min(16)), "{args:?}");
    }
}

/// The closed loop's threads: one per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Workers on every core's runtime share one token: 16 workers for a second, tokens that live
/// a minute, one fetch; and with tokens that live a second, each refresh is one fetch for all
/// of them and no request is ever rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_every_cores_runtime_share_one_token() {
    for (lifetime, duration) in [("60s", "1s"), ("1s", "3s")] {
        let args = [
            "--demo",
            "--duration",
            duration,
            "--token-lifetime",
            lifetime,
            "--concurrency",
            "16",
            "--json",
        ];
        let out = run(&args, &[]).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let report = out.report();
        let demo = report.demo.expect("the demo's counts");
        assert_eq!(report.threads, Some(cores().min(16)));
        assert_eq!(report.tokens.fetches, demo.token_requests);
        assert_eq!(demo.api_rejected, 0, "{args:?}");
        assert_eq!(report.succeeded, report.requests);
        if lifetime == "60s" {
            assert_eq!(report.tokens.fetches, 1, "{args:?}");
        } else {
            // A 1 s token is refreshed about every 0.4 s (its margin, then the last fifth of
            // what is left): about 8 fetches in 3 s for all the workers, where a fetch per
            // runtime would be twice that, and a fetch per worker far more.
            assert!(
                (3..=12).contains(&report.tokens.fetches),
                "{args:?}: {} fetches",
                report.tokens.fetches
            );
        }
    }
}

/// The text summary names the same counts, and what the demo servers counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_no_arguments_prints_a_summary() {
    let out = run(&["--requests", "500", "--quiet"], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "requests       500 (500 ok, 0 failed)",
        "status codes   200: 500",
        "errors         none",
        "token fetches  1 (0 failed",
        "demo servers   1 token requests (1 tokens issued), 500 API requests (500 answered 200, 0 answered 401)",
        "latency histogram",
    ] {
        assert!(out.stdout.contains(line), "no `{line}` in:\n{}", out.stdout);
    }
}

/// `--json` prints one object with every documented field; the mirror refuses unknown fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_has_every_field() {
    for args in [
        &["--demo", "--requests", "200", "--json"][..],
        &["--demo", "--rate", "200", "--requests", "100", "--json"][..],
    ] {
        let out = run(args, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let report = out.report(); // checks every key
        assert_eq!(report.schema, 1);
        assert_eq!(report.protocol, "http");
        let l = &report.latency;
        assert!(l.min_ms <= l.p50_ms && l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms);
        assert!(l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms && l.mean_ms > 0.0);
        let e = &report.errors;
        assert_eq!(
            e.connect + e.timeout + e.tls + e.body + e.token + e.other,
            0
        );
        assert_eq!(report.tokens.fetch_failures, 0);
        assert!(report.duration_s > 0.0 && report.achieved_rate > 0.0);
        if report.mode == "open" {
            assert_eq!(
                (report.rate, report.max_in_flight),
                (Some(200.0), Some(10_000))
            );
            assert_eq!(report.concurrency, None);
            assert_eq!(report.threads, None);
            assert!(report.offered_rate.is_some());
            assert_eq!(l.from, "intended_start");
        } else {
            assert_eq!(report.concurrency, Some(64));
            assert_eq!(report.threads, Some(cores().min(64)));
            assert_eq!((report.rate, report.offered_rate), (None, None));
            assert_eq!(report.late_starts, 0);
            assert_eq!(l.from, "send");
        }
    }
}

/// The demo API over TLS (a self-signed certificate the tool trusts), h2 by ALPN or forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_over_tls() {
    for extra in [&[][..], &["--http2"][..]] {
        let mut args = vec!["--demo", "--tls", "--requests", "300", "--json"];
        args.extend_from_slice(extra);
        let out = run(&args, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let report = out.report();
        assert_eq!(report.succeeded, 300);
        assert_eq!(report.demo.unwrap().api_ok, 300);
    }
}

/// Bad flags exit 2 (clap), a missing token source exits 3, and neither panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_a_panic() {
    for args in [
        &["--rate", "0"][..],
        &["--rate", "10", "--concurrency", "4"],
        &["--duration", "soon"],
        &["--header", "no colon"],
        &["--requests", "0"],
        &["--url", "http://127.0.0.1:9/x", "--demo"],
    ] {
        let out = run(args, &[]).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = run(&["--url", "http://127.0.0.1:9/x"], &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("no token source"), "{}", out.stderr);
    let out = run(
        &["--url", "ftp://127.0.0.1/x"],
        &[("BEARER_LOAD_TOKEN", "t")],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// A refused connection is counted as a connect error and the exit status is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_exit_non_zero() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x");
    let out = run(
        &["--url", &url, "--requests", "5", "--json"],
        &[("BEARER_LOAD_TOKEN", "t")],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.failed, report.errors.connect), (5, 5));
}
