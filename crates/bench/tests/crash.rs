//! A short run of `scripts/crash.sh`: three rounds of ingest, kill -9 of the relay while acks
//! flow, restart on the same data directory, `check`. Every round must find every
//! acknowledged record.
//!
//! The script runs the debug binaries cargo built for this test: `pigeonhole-bench` (this
//! package's) and the relay `pigeonhole` of crates/cli, looked up next to it as
//! `tests/end_to_end.rs` does. `cargo test --workspace` (or `cargo nextest run --workspace`)
//! builds it; a test run of this package alone needs `cargo build -p pigeonhole` first, and
//! fails saying so otherwise. Needs bash, awk, sed and coreutils.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{bench, relay_binary};

#[test]
fn three_crash_rounds_lose_no_acknowledged_write() {
    // The script wants both binaries in one directory (BIN): link them into a fresh one, so
    // that the test does not depend on where cargo or nextest put each.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bench(), bin.path().join("pigeonhole-bench")).unwrap();
    std::os::unix::fs::symlink(relay_binary(), bin.path().join("pigeonhole")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/crash.sh");

    let output = Command::new("bash")
        .arg(&script)
        .env("ROUNDS", "3")
        .env("RUN_SECONDS", "2")
        .env("CLIENTS", "4")
        .env("POOL", "8")
        .env("BIN", bin.path())
        .env("WORK", work.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary_path = work.path().join("summary.json");
    let summary_text = std::fs::read_to_string(&summary_path).unwrap_or_default();
    let context = format!(
        "crash.sh exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nsummary:\n{summary_text}",
        output.status
    );
    assert!(output.status.success(), "{context}");
    let summary: Value = serde_json::from_str(&summary_text).unwrap_or_else(|e| panic!("{e}: {context}"));
    assert_eq!(summary["passed"], Value::Bool(true), "{context}");
    assert_eq!(summary["rounds_run"].as_u64(), Some(3), "{context}");
    assert_eq!(summary["missing"].as_u64(), Some(0), "{context}");
    let rounds = summary["per_round"].as_array().expect("per_round");
    assert_eq!(rounds.len(), 3, "{context}");
    let mut logged = 0;
    for round in rounds {
        assert!(round["acked_round"].as_u64().is_some_and(|n| n > 0), "acks before the kill: {round}");
        assert_eq!(round["ingest_running_at_kill"], Value::Bool(true), "killed while acks flowed: {round}");
        assert_eq!(round["relay_restarted"], Value::Bool(true), "{round}");
        assert_eq!(round["missing"].as_u64(), Some(0), "{round}");
        logged += round["acked_round"].as_u64().unwrap_or(0);
        assert_eq!(round["acked"].as_u64(), Some(logged), "each check covers every round so far: {round}");
        assert_eq!(round["found"].as_u64(), Some(logged), "{round}");
        assert_eq!(round["passed"], Value::Bool(true), "{round}");
    }
    assert_eq!(summary["acked_total"].as_u64(), Some(logged), "{context}");
}
