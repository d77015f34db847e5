//! The open model holds the asked rate.

mod support;

/// `--rate 500 --duration 10s`: 5,000 requests are due; the tool starts at least 95 % of them by
/// their intended time (late starts are those more than 5 ms behind), and what it started and
/// completed per second is within 5 % of 500. A closed loop against the demo's fast server
/// would run many times faster, and a schedule that drifts would fall behind by more. Its own
/// test binary, and run alone (see .config/nextest.toml), so no other test competes for the
/// two cores; the margins are for a busy machine all the same.
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
        on_time >= 4_750 && report.requests <= 5_050,
        "{on_time} of {} on time",
        report.requests
    );
    let offered = report.offered_rate.unwrap();
    assert!((offered - 500.0).abs() <= 25.0, "offered {offered}/s");
    assert!(
        (report.achieved_rate - 500.0).abs() <= 25.0,
        "achieved {}/s",
        report.achieved_rate
    );
    assert_eq!(report.failed, 0);
    assert_eq!(report.demo.unwrap().api_ok, report.requests);
}
