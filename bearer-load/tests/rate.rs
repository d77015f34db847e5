//! The open model holds the asked rate.

mod support;

/// `--rate 500 --duration 10s`: 5,000 requests are due; the tool starts within 2 % of them by
/// their intended time (late starts are those more than 5 ms behind), and what it started and
/// completed per second is within 2 % of 500. Its own test binary, so no other test competes for
/// the two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_holds_the_asked_rate() {
    let out = support::run(
        &["--demo", "--rate", "500", "--duration", "10s", "--json"],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!(report.mode, "open");
    let on_time = report.requests - report.late_starts;
    assert!(
        (on_time as f64 - 5000.0).abs() <= 100.0,
        "{on_time} of {} on time",
        report.requests
    );
    let offered = report.offered_rate.unwrap();
    assert!((offered - 500.0).abs() <= 10.0, "offered {offered}/s");
    assert!(
        (report.achieved_rate - 500.0).abs() <= 10.0,
        "achieved {}/s",
        report.achieved_rate
    );
    assert_eq!(report.failed, 0);
    assert_eq!(report.demo.unwrap().api_ok, report.requests);
}
