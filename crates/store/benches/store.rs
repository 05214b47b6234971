//! Criterion benchmarks of the embedded store: `FjallStore::put_batch` of 1,000 records of
//! 1.2 KiB (one durable commit for all of them), and of one record (one durable commit each);
//! `put_drops` of 1,000 drops of 1 KiB (stamps checked and spent, bucket counts, 8 prefix index
//! entries each, one durable commit); `fetch_drops` on a store of 100,000 drops at prefix
//! lengths 8 and 16 (the index granularities) and 7 and 3 (one with the most index entries
//! skipped per match, one that walks the drops themselves); and the two reads the relay makes
//! before it accepts each write (`account` and `owner_usage`), on a store of 64 accounts that
//! has taken 50,000 records; and `read_after_many` of pages of 512 records from one outbox of
//! 50,000, as the relay serves a receiver that syncs (each read counted: a usage entry and a
//! pull count written, one commit per page); and `read_after_many` of 64 live pages (one new
//! record each, from 64 of 256 outboxes holding 50,000 records), as the delivery thread serves
//! listeners woken by a commit, with the store's list of recent records and without it (every
//! page walking its outbox index), so the two compare within one run. Throughput is in
//! records or drops written or returned, or in writes checked.
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
use pigeonhole_proto::tag::{Prefix, Tag};
use pigeonhole_store::{
    Account, AccountStatus, DropOutcome, FjallStore, NewDrop, NewRecord, PageRead, PutOutcome, Store,
};

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

/// Size of one drop's envelope.
const DROP_LEN: usize = 1_024;
/// Drops in the store that `fetch_drops` is measured on.
const FETCH_STORE_DROPS: u64 = 100_000;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `count` new drops with random tags and never-used stamps (`next` counts them).
fn drops(next: &mut u64, count: usize) -> Vec<NewDrop> {
    (0..count)
        .map(|_| {
            *next += 1;
            let n = *next;
            let mut tag = [0u8; 20];
            for (i, chunk) in tag.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&mix(n << 2 | i as u64).to_be_bytes()[..chunk.len()]);
            }
            let mut stamp_id = [0u8; 32];
            stamp_id[..8].copy_from_slice(&mix(n ^ 1 << 63).to_be_bytes());
            stamp_id[8..16].copy_from_slice(&n.to_be_bytes());
            NewDrop {
                tag: Tag(tag),
                stamp_epoch: 1,
                stamp_id,
                stored_at: 1_700_000_000_000 + n,
                expires_at: 1_700_000_000_000 + n + 7 * 86_400_000,
                drop_hash: [(n % 256) as u8; 32],
                bytes: vec![(n % 256) as u8; DROP_LEN],
            }
        })
        .collect()
}

fn bench_drops(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FjallStore::open(dir.path()).expect("open store");
    let mut next = 0u64;
    // A cap no bucket reaches here, so that the bucket counts are read and written.
    let bucket_cap = 1_000_000;
    let put = |batch: Vec<NewDrop>| {
        let outcomes = store.put_drops(black_box(&batch), bucket_cap).expect("put_drops");
        debug_assert!(outcomes.iter().all(|o| matches!(o, DropOutcome::Stored { .. })));
        outcomes
    };
    let mut group = c.benchmark_group("fjall_put_drops");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("1000x1KiB", |b| {
        b.iter_batched(|| drops(&mut next, BATCH), put, BatchSize::PerIteration)
    });
    group.finish();

    // Top the store up to 100,000 drops, then fetch.
    while next < FETCH_STORE_DROPS {
        let count = (FETCH_STORE_DROPS - next).min(BATCH as u64) as usize;
        put(drops(&mut next, count));
    }
    let now = 1_700_000_000_000;
    let middle = store.last_seq() / 2;
    let mut group = c.benchmark_group("fjall_fetch_drops_100k");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (bits, after_seq, limit) in
        [(8, 0, 100), (8, middle, 100), (16, 0, 100), (7, 0, 100), (3, middle, 100)]
    {
        // Prefixes of the tags of stored drops, taken in turn.
        let prefixes: Vec<Prefix> = (1..=64u64)
            .map(|n| {
                Prefix::truncate(
                    bits,
                    u32::from_be_bytes(
                        drops(&mut (n * 997 - 1), 1)[0].tag.0[..4].try_into().expect("4 bytes"),
                    ),
                )
                .expect("bits")
            })
            .collect();
        let returned: usize =
            prefixes.iter().map(|p| store.fetch_drops(p, after_seq, limit, now).expect("fetch").len()).sum();
        group.throughput(Throughput::Elements((returned / prefixes.len()).max(1) as u64));
        let cursor = if after_seq == 0 { "start" } else { "middle" };
        let mut turn = 0;
        group.bench_function(format!("L={bits}/from_{cursor}/limit_{limit}"), |b| {
            b.iter(|| {
                turn = (turn + 1) % prefixes.len();
                black_box(store.fetch_drops(&prefixes[turn], after_seq, limit, now).expect("fetch"))
            })
        });
    }
    group.finish();
}

/// The reads `prepare_write` makes for every write: the writer's account, then its usage.
fn bench_write_checks(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FjallStore::open(dir.path()).expect("open store");
    let owners: Vec<_> = (1..=64).map(key).collect();
    let receivers: Vec<_> = (65..=96).map(key).collect();
    for owner in &owners {
        let account = Account {
            key: *owner,
            status: AccountStatus::Active,
            created_at: 1_700_000_000_000,
            max_bytes: 0,
            max_records_per_day: 0,
        };
        store.put_account(&account).expect("put_account");
    }
    let mut next = 0u64;
    for _ in 0..50 {
        store.put_batch(&records(&mut next, BATCH, &owners, &receivers)).expect("put_batch");
    }
    let mut group = c.benchmark_group("fjall_write_checks");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    let mut turn = 0;
    group.bench_function("account+owner_usage", |b| {
        b.iter(|| {
            turn = (turn + 1) % owners.len();
            let owner = &owners[turn];
            let account = store.account(black_box(owner)).expect("account").expect("registered");
            black_box((account, store.owner_usage(owner).expect("usage")))
        })
    });
    group.finish();
}

/// Records in the one outbox that `read_after_many` pages through.
const SYNC_OUTBOX: u64 = 50_000;
/// Records per page, as the relay pushes to a syncing receiver (at most 512 or 1 MiB).
const SYNC_PAGE: usize = 512;

fn bench_sync_pages(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FjallStore::open(dir.path()).expect("open store");
    let (owner, receiver) = (key(1), key(2));
    let mut next = 0u64;
    for _ in 0..SYNC_OUTBOX / BATCH as u64 {
        store.put_batch(&records(&mut next, BATCH, &[owner], &[receiver])).expect("put_batch");
    }
    let mut group = c.benchmark_group("fjall_read_after_many");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(SYNC_PAGE as u64));
    let mut after_seq = 0u64;
    group.bench_function("page_of_512_from_50k", |b| {
        b.iter(|| {
            let page = PageRead { owner, receiver, after_seq, limit: SYNC_PAGE, max_bytes: 1 << 20 };
            let served =
                store.read_after_many(black_box(&[page]), 1_700_000_000_000).expect("read_after_many");
            debug_assert_eq!(served[0].records.len(), SYNC_PAGE);
            after_seq = (after_seq + SYNC_PAGE as u64) % (SYNC_OUTBOX - SYNC_PAGE as u64);
            black_box(served)
        })
    });
    group.finish();
}

/// Outboxes of the store the live pages are read from, and pages per group.
const LIVE_OUTBOXES: usize = 256;
const LIVE_PAGES: usize = 64;

fn bench_live_pages(c: &mut Criterion) {
    let mut group = c.benchmark_group("fjall_read_after_many");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(LIVE_PAGES as u64));
    let owners: Vec<_> = (0..16).map(|i| key(10 + i)).collect();
    let receivers: Vec<_> = (0..16).map(|i| key(30 + i)).collect();
    for (name, recent_outboxes) in [("live_pages_64_of_256_outboxes", 32_768), ("live_pages_64_walking", 0)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = pigeonhole_store::FjallConfig { recent_outboxes, ..Default::default() };
        let store = FjallStore::open_with(dir.path(), config).expect("open store");
        let (mut next, mut n) = (0u64, 0usize);
        // The two newest sequence numbers of each outbox (round-robin over all of them).
        let mut newest = vec![(0u64, 0u64); LIVE_OUTBOXES];
        for _ in 0..SYNC_OUTBOX / BATCH as u64 {
            let mut batch = records(&mut next, BATCH, &owners, &receivers);
            for record in &mut batch {
                record.owner = owners[n % LIVE_OUTBOXES / 16];
                record.receiver = receivers[n % 16];
                n += 1;
            }
            for (i, outcome) in store.put_batch(&batch).expect("put_batch").into_iter().enumerate() {
                let PutOutcome::Stored { seq } = outcome else { panic!("not stored: {outcome:?}") };
                let outbox = (n - BATCH + i) % LIVE_OUTBOXES;
                newest[outbox] = (newest[outbox].1, seq);
            }
        }
        // Each page asks for what its listener has not seen: the newest record of its outbox.
        let pages: Vec<_> = (0..LIVE_PAGES)
            .map(|k| {
                let outbox = k * LIVE_OUTBOXES / LIVE_PAGES;
                PageRead {
                    owner: owners[outbox / 16],
                    receiver: receivers[outbox % 16],
                    after_seq: newest[outbox].0,
                    limit: SYNC_PAGE,
                    max_bytes: 1 << 20,
                }
            })
            .collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                let served =
                    store.read_after_many(black_box(&pages), 1_700_000_000_000).expect("read_after_many");
                debug_assert!(served.iter().all(|page| page.records.len() == 1));
                black_box(served)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_put_batch,
    bench_drops,
    bench_write_checks,
    bench_sync_pages,
    bench_live_pages
);
criterion_main!(benches);
