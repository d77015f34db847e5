//! Tests that run as several OS processes: the test binary starts copies of itself, each
//! running one test as a worker (told so by an environment variable), and waits for them.

use std::{
    process::Output,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::task::JoinSet;

/// Runs `count` copies of this test binary, each running the test `test` (`--exact`, ignored
/// tests included) with `variable` set to `value`, at once. Waits for them all (120 s at most),
/// asserts each succeeded (showing a failed one's stderr), and returns their output.
pub async fn run_workers(test: &str, count: usize, variable: &str, value: &str) -> Vec<Output> {
    let exe = std::env::current_exe().unwrap();
    let mut workers = JoinSet::new();
    for _ in 0..count {
        let mut child = tokio::process::Command::new(&exe);
        child
            .args([test, "--exact", "--nocapture", "--include-ignored"])
            .arg("--test-threads=1")
            .env(variable, value)
            .kill_on_drop(true);
        workers.spawn(async move { child.output().await });
    }
    let outputs = tokio::time::timeout(Duration::from_secs(120), workers.join_all())
        .await
        .expect("the worker processes finished within 120 s");
    outputs
        .into_iter()
        .map(|output| {
            let output = output.expect("a worker process started");
            assert!(
                output.status.success(),
                "a worker failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            output
        })
        .collect()
}

/// The refresh tokens a stand-in IdP received are all different, at least `at_least` of
/// them: none was sent twice.
pub fn each_sent_once(sent: &[String], at_least: usize) {
    let distinct: std::collections::HashSet<_> = sent.iter().collect();
    assert_eq!(
        distinct.len(),
        sent.len(),
        "a refresh token sent twice: {sent:?}"
    );
    assert!(sent.len() >= at_least, "{} refreshes", sent.len());
}

/// What a worker process of the shared-store tests does: asks for a token, rejects it (so the
/// next ask needs a new one), `rounds` times. Panics, failing the process, on an error.
pub async fn ask_and_reject(auth: &tower_bearer::AuthLayer, rounds: usize) {
    for round in 0..rounds {
        let token = auth
            .token()
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        auth.invalidate(&token);
    }
}

/// Milliseconds since the Unix epoch: the clock processes agree on a common start with.
pub fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Sleeps until `at` (milliseconds since the Unix epoch); returns at once if it has passed.
pub async fn until_unix_ms(at: u64) {
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await;
}

/// The line each worker printed after `tag` (`"stats "`, say): its counts as `name=value`.
pub fn reported(outputs: &[Output], tag: &str) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.split_once(tag).map(|(_, s)| s.to_owned()))
        })
        .collect()
}

/// The number `name=` gives in a line [`reported`] returned.
pub fn reported_number(line: &str, name: &str) -> u64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .parse()
        .unwrap()
}
