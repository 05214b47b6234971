//! Crash test: a child process (this test binary, re-executed) writes batches to a
//! `FjallStore` and prints each batch once `put_batch` has returned; the parent kills it with
//! SIGKILL at a random moment, reopens the store, and checks that every acknowledged record
//! is there with its exact bytes and sequence numbers, that the batch in flight is all there or
//! not at all, and that the store verifies. After each batch of records the child also posts a
//! batch of drops (acknowledged the same way): every acknowledged drop must be there with its
//! stamp spent, and the drop batch in flight must be all there (drops and stamps) or not at all. Rounds reuse the same directory, so each round
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
use pigeonhole_proto::tag::{Prefix, Tag};
use pigeonhole_store::{DropOutcome, FjallStore, NewDrop, NewRecord, PutOutcome, ReadOutcome, Store};
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

/// The drops posted after record batch `batch`: 1 to 8 drops of 0 to 2,000 bytes, each with its
/// own stamp (epoch = the batch number) and tag.
fn batch_drops(batch: u64) -> Vec<NewDrop> {
    let count = mix(batch ^ 0xd0d0) % 8 + 1;
    (0..count)
        .map(|i| {
            let seed = mix(batch << 8 | i | 1 << 60);
            let mut filler = [0u8; 20];
            for (j, chunk) in filler.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&mix(seed + j as u64).to_be_bytes()[..chunk.len()]);
            }
            let mut stamp_id = [0u8; 32];
            stamp_id[..8].copy_from_slice(&seed.to_be_bytes());
            stamp_id[8..16].copy_from_slice(&i.to_be_bytes());
            NewDrop {
                tag: Tag(filler),
                stamp_epoch: batch,
                stamp_id,
                stored_at: 1,
                expires_at: u64::MAX,
                drop_hash: [(seed >> 8) as u8; 32],
                bytes: (0..(seed % 2_001) as usize).map(|j| mix(seed ^ j as u64) as u8).collect(),
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
        let drops = batch_drops(batch);
        let seqs: Vec<u64> = store
            .put_drops(&drops, 0)
            .expect("put_drops")
            .iter()
            .map(|o| match o {
                DropOutcome::Stored { seq } => *seq,
                other => panic!("drops of batch {batch}: {other:?}"),
            })
            .collect();
        writeln!(out, "drops {batch} {} {}", seqs[0], seqs[seqs.len() - 1]).expect("stdout");
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

/// Whether each drop of `batch` is present: checks its bytes, its number and that its stamp is
/// spent exactly when it is present (both or neither).
fn drop_presence(store: &FjallStore, batch: u64, first_seq: Option<u64>) -> Vec<bool> {
    batch_drops(batch)
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let prefix = Prefix::truncate(32, d.tag.head()).expect("32 bits");
            let found = store.fetch_drops(&prefix, 0, 1_000, 0).expect("fetch_drops");
            let got = found.iter().find(|g| g.tag == d.tag);
            let spent = store.stamp_spent(d.stamp_epoch, &d.stamp_id).expect("stamp_spent");
            assert_eq!(
                spent,
                got.is_some(),
                "batch {batch} drop {i}: stamp spent {spent}, drop stored {}",
                got.is_some()
            );
            if let Some(got) = got {
                assert_eq!(got.bytes, d.bytes, "batch {batch} drop {i}: bytes differ");
                assert_eq!(got.drop_hash, d.drop_hash);
                if let Some(first) = first_seq {
                    assert_eq!(got.seq, first + i as u64, "batch {batch} drop {i}: seq");
                }
            }
            got.is_some()
        })
        .collect()
}

/// The rest of an acknowledgement line after `marker`. The test harness prints
/// `test crash_child ... ` before the child's first line, on the same line.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest)
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
    // Every acknowledged drop batch: batch → first seq.
    let mut acked_drops: BTreeMap<u64, u64> = BTreeMap::new();
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
            let is_ack = after_marker(&line, "ack ").is_some();
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
        let mut last_drop_batch = None;
        for line in lines.iter().filter_map(|l| after_marker(l, "drops ")) {
            let fields: Vec<u64> = line.split(' ').map(|f| f.parse().expect("number")).collect();
            let [batch, first, last] = fields[..] else { panic!("bad line {line:?}") };
            assert_eq!(last - first + 1, batch_drops(batch).len() as u64);
            acked_drops.insert(batch, first);
            last_drop_batch = Some(batch);
        }
        for line in lines.iter().filter_map(|l| after_marker(l, "ack ")) {
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
        for (&batch, &first) in &acked_drops {
            let present = drop_presence(&store, batch, Some(first));
            assert!(present.iter().all(|&p| p), "round {round}: acknowledged drops of batch {batch} lost");
        }
        // The drops after the last acknowledged ones (of this round) are atomic too.
        let next_drops = last_drop_batch.map_or(base, |b| b + 1);
        let in_flight_drops = drop_presence(&store, next_drops, None);
        assert!(
            in_flight_drops.iter().all(|&p| p) || in_flight_drops.iter().all(|&p| !p),
            "round {round}: drops of batch {next_drops} partially stored: {in_flight_drops:?}"
        );
        assert!(drop_presence(&store, next_drops + 1, None).iter().all(|&p| !p));
        let max_acked = acked.values().map(|&(_, l)| l).max().expect("non-empty");
        let drops_total: usize = acked_drops.keys().map(|&b| batch_drops(b).len()).sum();
        assert!(store.drop_totals().expect("drop totals").records >= drops_total as u64);
        assert!(store.last_seq() >= max_acked);
        store.verify().expect("the store verifies after the crash");
        let elapsed = started.elapsed();
        let batches = lines.iter().filter(|l| after_marker(l, "ack ").is_some()).count();
        let in_flight = if in_flight[0] { "stored" } else { "absent" };
        // Shown with --nocapture.
        writeln!(
            std::io::stderr(),
            "round {round}: {batches} batches acknowledged (up to seq {max_acked}), the batch in flight \
             was {in_flight}, all {} acknowledged batches and {} drop batches intact; {elapsed:?}",
            acked.len(),
            acked_drops.len()
        )
        .ok();
    }
}
