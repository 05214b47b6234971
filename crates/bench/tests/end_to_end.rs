//! The real binaries, briefly: `pigeonhole-bench` against a `pigeonhole serve` child process.
//!
//! The relay binary belongs to another package, so it is looked up next to the benchmark's own
//! executable (target/<profile>/pigeonhole). `cargo test --workspace` builds it; a test run of
//! this package alone needs `cargo build -p pigeonhole` first, and fails saying so otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

mod common;
use common::{bench, relay_binary};

/// A relay child process, killed when dropped.
struct RelayProcess {
    child: Child,
    url: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut child = Command::new(relay_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the relay prints its address").unwrap();
        std::thread::spawn(move || for _ in lines {});
        let url = first.strip_prefix("listening on ").expect("`listening on URL`").trim().to_owned();
        Self { child, url, data, _dir: dir }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark with `args` and parses its `--json` output.
fn run_bench(args: &[&str]) -> (bool, Value) {
    let output = Command::new(bench()).args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?}: no JSON on stdout ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (output.status.success(), value)
}

#[test]
fn every_acknowledged_write_is_found_by_check() {
    let relay = RelayProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acked.txt");
    let (pid, log_path) = (relay.child.id().to_string(), log.to_str().unwrap());
    let data = relay.data.to_str().unwrap();
    let common = ["--relay", relay.url.as_str(), "--relay-pid", pid.as_str(), "--relay-data", data];

    let mut ingest = vec!["ingest", "--clients", "4", "--seconds", "3", "--warmup", "0.5", "--pool", "8"];
    ingest.extend(["--acked-log", log_path]);
    ingest.extend(common);
    let (ok, report) = run_bench(&ingest);
    assert!(ok, "{report}");
    let acked = report["acked_total"].as_u64().unwrap();
    assert!(acked > 0, "{report}");
    assert!(report["writes_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["acked_log"]["lines"].as_u64(), Some(acked), "one line per ack: {report}");
    assert!(report["relay_after"]["rss_kb"].as_u64().unwrap() > 0, "{report}");
    assert!(report["relay_after"]["disk_bytes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count() as u64, acked);

    let mut check = vec!["check", "--acked-log", log_path];
    check.extend(common);
    let (ok, report) = run_bench(&check);
    assert!(ok, "{report}");
    assert_eq!(report["acked"].as_u64(), Some(acked), "{report}");
    assert_eq!(report["missing"].as_u64(), Some(0), "{report}");

    // A record the relay never stored is reported missing, with a failing exit status.
    let outbox = first_outbox(&log);
    std::fs::write(&log, format!("{outbox} never-written\n").as_bytes()).unwrap();
    let (ok, report) = run_bench(&check);
    assert!(!ok, "{report}");
    assert_eq!(report["missing"].as_u64(), Some(1), "{report}");
}

/// `owner_hex receiver_hex` of the log's first line.
fn first_outbox(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines().next().unwrap().split(' ').take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn sync_pulls_every_record_from_a_spawned_relay() {
    let relay = relay_binary();
    let (ok, report) = run_bench(&[
        "sync",
        "--spawn",
        "--pigeonhole",
        relay.to_str().unwrap(),
        "--records",
        "2000",
        "--pool",
        "16",
    ]);
    assert!(ok, "{report}");
    assert_eq!(report["records"].as_u64(), Some(2000), "{report}");
    assert!(report["records_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["relay_after"]["disk_bytes"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn deliver_pushes_every_acknowledged_record_to_its_receiver() {
    let relay = relay_binary();
    let (ok, report) = run_bench(&[
        "deliver",
        "--spawn",
        "--pigeonhole",
        relay.to_str().unwrap(),
        "--rate",
        "200",
        "--seconds",
        "2",
        "--writers",
        "4",
        "--receivers",
        "2",
    ]);
    assert!(ok, "{report}");
    let acked = report["acked"].as_u64().unwrap();
    let delivered = report["delivered"].as_u64().unwrap();
    assert!(acked > 0 && delivered > 0, "{report}");
    assert_eq!(report["missing"].as_u64(), Some(0), "every acked record is pushed: {report}");
    assert!(delivered >= acked, "{report}");
    assert_eq!(
        report["listens"].as_u64(),
        Some(8),
        "round-robin: every receiver hears every writer: {report}"
    );
    for latency in ["delivery_latency", "ack_latency"] {
        for field in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(report[latency][field].as_f64().is_some(), "{latency}.{field}: {report}");
        }
        assert!(report[latency]["samples"].as_u64().unwrap() > 0, "{latency}: {report}");
    }
    assert!(report["delivered_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["verify_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["relay_after"]["rss_kb"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn fill_stores_records_that_a_restarted_relay_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = relay_binary();
    let data_arg = data.to_str().unwrap();
    let fill = |records: &str| {
        run_bench(&[
            "fill",
            "--data",
            data_arg,
            "--records",
            records,
            "--owners",
            "4",
            "--receivers",
            "3",
            "--batch",
            "500",
            "--pool",
            "4",
            "--restarts",
            "1",
            "--pigeonhole",
            relay.to_str().unwrap(),
        ])
    };
    let (ok, report) = fill("1200");
    assert!(ok, "{report}");
    assert_eq!(report["records_added"], 1200);
    assert_eq!(report["records_in_store"], 1200);
    assert!(report["stored_bytes"].as_u64().unwrap() > 1200 * 1000, "{report}");
    assert!(report["disk_per_stored_byte"].as_f64().unwrap() > 0.0, "{report}");
    let restart = &report["restarts"][0];
    // Three receivers, each with 100-id pages listed from its first outbox.
    assert!(restart["listed"].as_u64().unwrap() >= 3 * 100, "{report}");
    assert!(restart["serving_ms"].as_f64().unwrap() >= restart["listening_ms"].as_f64().unwrap());
    // A second fill adds to the same store under fresh record ids.
    let (ok, report) = fill("300");
    assert!(ok, "{report}");
    assert_eq!(report["records_in_store"], 1500);
}
