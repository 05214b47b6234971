//! Crash test: a child process (this test binary, re-executed) writes batches to a
//! `FjallStore` and prints each batch once `put_batch` has returned; the parent kills it with
//! SIGKILL at a random moment, reopens the store, and checks that every acknowledged record
//! is there with its exact bytes and sequence numbers, that the batch in flight is all there or
//! not at all, and that the store verifies. Rounds reuse the same directory, so each round
//! also recovers the damage of the ones before.
//!
//! `PIGEONHOLE_CRASH_ROUNDS` sets the number of rounds (default 5).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::tag::Tag;
use pigeonhole_store::{FjallStore, NewRecord, PutOutcome, ReadOutcome, Store};
use rand::Rng;

const CHILD_ENV: &str = "PIGEONHOLE_CRASH_CHILD";
const BASE_ENV: &str = "PIGEONHOLE_CRASH_BATCH_BASE";
const ROUNDS_ENV: &str = "PIGEONHOLE_CRASH_ROUNDS";

fn key(n: u64) -> PublicKey {
    SecretKey::from_bytes(&[n as u8 + 1; 32]).expect("valid secret").public_key()
}

/// A small deterministic generator, so the parent can rebuild what the child wrote.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Batch number `batch`: 1 to 40 records of 0 to 4,000 bytes.
fn batch_records(batch: u64) -> Vec<NewRecord> {
    let count = mix(batch) % 40 + 1;
    (0..count)
        .map(|i| {
            let seed = mix(batch << 8 | i);
            let len = (seed % 4_001) as usize;
            NewRecord {
                owner: key(seed % 3),
                receiver: key(3 + (seed >> 8) % 3),
                record_id: format!("b{batch}-{i}"),
                tag: seed.is_multiple_of(4).then_some(Tag([(seed >> 16) as u8; 20])),
                stored_at: 1,
                expires_at: u64::MAX,
                max_pulls: 0,
                record_hash: [(seed >> 24) as u8; 32],
                bytes: (0..len).map(|j| mix(seed ^ j as u64) as u8).collect(),
            }
        })
        .collect()
}

/// The child: writes batches until killed, acknowledging each on stdout.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let base: u64 = std::env::var(BASE_ENV).expect("batch base").parse().expect("number");
    let store = FjallStore::open(Path::new(&dir)).expect("child open");
    let mut out = std::io::stdout().lock();
    for batch in base.. {
        let records = batch_records(batch);
        let outcomes = store.put_batch(&records).expect("put_batch");
        let seqs: Vec<u64> = outcomes
            .iter()
            .map(|o| match o {
                PutOutcome::Stored { seq } => *seq,
                other => panic!("batch {batch}: {other:?}"),
            })
            .collect();
        writeln!(out, "ack {batch} {} {}", seqs[0], seqs[seqs.len() - 1]).expect("stdout");
        out.flush().expect("flush");
        // Reads write too (pull counts and the usage log): crash in those as well.
        if batch % 3 == 0 {
            let r = &records[0];
            let read = store.read(&r.owner, &r.receiver, &r.record_id, 5).expect("read");
            assert!(matches!(read, ReadOutcome::Served { .. }));
        }
    }
}

/// Whether each record of `batch` is present: checks the bytes and numbers of those present.
fn presence(store: &FjallStore, batch: u64, first_seq: Option<u64>) -> Vec<bool> {
    batch_records(batch)
        .iter()
        .enumerate()
        .map(|(i, r)| match store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get") {
            None => false,
            Some(got) => {
                assert_eq!(got.bytes, r.bytes, "batch {batch} record {i}: bytes differ");
                assert_eq!(got.meta.record_hash, r.record_hash);
                assert_eq!(got.meta.tag, r.tag);
                if let Some(first) = first_seq {
                    assert_eq!(got.meta.seq, first + i as u64, "batch {batch} record {i}: seq");
                }
                true
            }
        })
        .collect()
}

#[test]
fn crash_rounds() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let rounds: u64 = std::env::var(ROUNDS_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::thread_rng();
    // Every acknowledged batch so far: batch → (first seq, last seq).
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for round in 0..rounds {
        let started = Instant::now();
        let base = round * 1_000_000;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(BASE_ENV, base.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment once the child is writing.
        let mut lines = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("the child acknowledges a batch");
            let is_ack = line.starts_with("ack ");
            lines.push(line);
            if is_ack {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..=600)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        reader.join().expect("reader");
        lines.extend(rx.try_iter());

        let mut last_batch = None;
        for line in lines.iter().filter_map(|l| l.strip_prefix("ack ")) {
            let fields: Vec<u64> = line.split(' ').map(|f| f.parse().expect("number")).collect();
            let [batch, first, last] = fields[..] else { panic!("bad line {line:?}") };
            assert_eq!(last - first + 1, batch_records(batch).len() as u64);
            assert!(acked.values().all(|&(_, l)| l < first), "seqs increase across batches and restarts");
            acked.insert(batch, (first, last));
            last_batch = Some(batch);
        }
        let last_batch = last_batch.expect("at least one acknowledged batch");

        let store = FjallStore::open(dir.path()).expect("reopen after kill -9");
        for (&batch, &(first, _)) in &acked {
            let present = presence(&store, batch, Some(first));
            assert!(present.iter().all(|&p| p), "round {round}: acknowledged batch {batch} lost records");
        }
        // The batch in flight at the kill is atomic; nothing after it was started.
        let in_flight = presence(&store, last_batch + 1, None);
        assert!(
            in_flight.iter().all(|&p| p) || in_flight.iter().all(|&p| !p),
            "round {round}: batch {} partially stored: {in_flight:?}",
            last_batch + 1
        );
        assert!(presence(&store, last_batch + 2, None).iter().all(|&p| !p));
        let max_acked = acked.values().map(|&(_, l)| l).max().expect("non-empty");
        assert!(store.last_seq() >= max_acked);
        store.verify().expect("the store verifies after the crash");
        let elapsed = started.elapsed();
        let batches = lines.iter().filter(|l| l.starts_with("ack ")).count();
        let in_flight = if in_flight[0] { "stored" } else { "absent" };
        // Shown with --nocapture.
        writeln!(
            std::io::stderr(),
            "round {round}: {batches} batches acknowledged (up to seq {max_acked}), the batch in flight \
             was {in_flight}, all {} acknowledged batches intact; {elapsed:?}",
            acked.len()
        )
        .ok();
    }
}
