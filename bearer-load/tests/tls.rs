//! HTTPS against a server with a self-signed certificate (rcgen, tokio-rustls, hyper) that
//! records each request's HTTP version.

mod support;

use support::{api_server, run};

/// With `--cacert` every request succeeds; without it every request fails with a TLS error,
/// counted as such, and the exit status is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_needs_cacert() {
    let (addr, seen, pem) = api_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let cacert = dir.path().join("ca.pem");
    std::fs::write(&cacert, pem.unwrap()).unwrap();
    let url = format!("https://{addr}/items");
    let token = [("BEARER_LOAD_TOKEN", "tls-test-token")];

    let cacert = cacert.to_str().unwrap();
    let out = run(
        &[
            "--url",
            &url,
            "--cacert",
            cacert,
            "--requests",
            "50",
            "--json",
        ],
        &token,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.requests, report.succeeded), (50, 50));
    assert_eq!(seen.tokens().get("Bearer tls-test-token"), Some(&50));

    let out = run(&["--url", &url, "--requests", "5", "--json"], &token).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let report = out.report();
    assert_eq!((report.failed, report.errors.tls), (5, 5), "{report:?}");
    let example = &report.error_examples["tls"];
    assert!(example.contains("certificate"), "{example}");
    assert_eq!(
        seen.requests(),
        50,
        "no request got through without the certificate"
    );

    // A --cacert that holds no certificate is refused before the run.
    let out = run(
        &["--url", &url, "--cacert", "Cargo.toml", "--requests", "1"],
        &token,
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("Cargo.toml"), "{}", out.stderr);
}

/// Over TLS the client offers h2 and HTTP/1.1 by ALPN: a server that takes h2 sees every
/// request as HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_is_negotiated_by_alpn() {
    let (addr, seen, pem) = api_server(true).await;
    let dir = tempfile::tempdir().unwrap();
    let cacert = dir.path().join("ca.pem");
    std::fs::write(&cacert, pem.unwrap()).unwrap();
    let url = format!("https://{addr}/items");
    let args = [
        "--url",
        &url,
        "--cacert",
        cacert.to_str().unwrap(),
        "--requests",
        "100",
        "--concurrency",
        "8",
        "--json",
    ];
    let out = run(&args, &[("BEARER_LOAD_TOKEN", "t")]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.report().succeeded, 100);
    assert_eq!(
        seen.versions(),
        [("HTTP/2.0".to_string(), 100)].into_iter().collect()
    );
}

/// Plain http:// speaks HTTP/1.1, and `--http2` h2c by prior knowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_by_default_and_h2c_with_http2() {
    for (flag, version) in [(None, "HTTP/1.1"), (Some("--http2"), "HTTP/2.0")] {
        let (addr, seen, _) = api_server(false).await;
        let url = format!("http://{addr}/items");
        let mut args = vec!["--url", &url, "--requests", "40", "--json"];
        args.extend(flag);
        let out = run(&args, &[("BEARER_LOAD_TOKEN", "t")]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            seen.versions(),
            [(version.to_string(), 40)].into_iter().collect()
        );
    }
}
