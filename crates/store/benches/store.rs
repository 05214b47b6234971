//! Criterion benchmarks of the embedded store's write path: `FjallStore::put_batch` of 1,000
//! records of 1.2 KiB (one durable commit for all of them), and of one record (one durable
//! commit each). Throughput is in records.
//!
//! Every commit waits for an fsync, so the figures are mostly the disk's: compare runs on the
//! same machine only. The store lives in a temporary directory on the default temp filesystem
//! (`TMPDIR`); point that at the relay's data disk to measure it.
//!
//! Run: `cargo bench -p pigeonhole-store --bench store` (about 30 s); quick check that every
//! benchmark runs once: `cargo bench -p pigeonhole-store --bench store -- --test`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::tag::Tag;
use pigeonhole_store::{FjallStore, NewRecord, PutOutcome, Store};

/// Size of one record's bytes (a sealed letter of about a kilobyte).
const RECORD_LEN: usize = 1_229;
/// Records in the large batch.
const BATCH: usize = 1_000;

fn key(n: u8) -> PublicKey {
    SecretKey::from_bytes(&[n; 32]).expect("valid secret").public_key()
}

/// `count` new records with ids that were never used before (`next` counts them).
fn records(next: &mut u64, count: usize, owners: &[PublicKey], receivers: &[PublicKey]) -> Vec<NewRecord> {
    (0..count)
        .map(|_| {
            *next += 1;
            let n = *next;
            NewRecord {
                owner: owners[(n % owners.len() as u64) as usize],
                receiver: receivers[(n / 7 % receivers.len() as u64) as usize],
                record_id: format!("rec-{n}"),
                tag: n.is_multiple_of(2).then_some(Tag([(n % 251) as u8; 20])),
                stored_at: 1_700_000_000_000 + n,
                expires_at: 1_700_000_000_000 + n + 7 * 86_400_000,
                max_pulls: 0,
                record_hash: [(n % 256) as u8; 32],
                bytes: vec![(n % 256) as u8; RECORD_LEN],
            }
        })
        .collect()
}

fn bench_put_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FjallStore::open(dir.path()).expect("open store");
    let owners: Vec<_> = (1..=16).map(key).collect();
    let receivers: Vec<_> = (17..=48).map(key).collect();
    let mut next = 0u64;
    let mut put = |batch: Vec<NewRecord>| {
        let outcomes = store.put_batch(black_box(&batch)).expect("put_batch");
        debug_assert!(outcomes.iter().all(|o| matches!(o, PutOutcome::Stored { .. })));
        outcomes
    };

    let mut group = c.benchmark_group("fjall_put_batch");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1000x1.2KiB", |b| {
        b.iter_batched(|| records(&mut next, BATCH, &owners, &receivers), &mut put, BatchSize::PerIteration)
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("1x1.2KiB", |b| {
        b.iter_batched(|| records(&mut next, 1, &owners, &receivers), &mut put, BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, bench_put_batch);
criterion_main!(benches);
