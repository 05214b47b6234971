//! Model check: random sequences of puts, reads, pages read after a cursor (as listeners and
//! syncs read), deletes, expiry, account writes, drops, drop expiry, stamp pruning and issuance
//! charges give the same observable results on `FjallStore` as on `MemoryStore` (the reference
//! model), with the Fjall store closed and reopened at random points, and its list of recent
//! records off, small enough to overflow, or at its default size.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 12).

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::tag::{Prefix, Tag};
use pigeonhole_store::{
    Account, AccountStatus, FjallConfig, FjallStore, ListQuery, MemoryStore, NewDrop, NewRecord, PageRead,
    Store, StoreError,
};
use proptest::prelude::*;

const OWNERS: u8 = 3;
const RECEIVERS: u8 = 3;
const IDS: u8 = 4;
const TAGS: u8 = 2;
const CLOCKS: [u64; 5] = [0, 40, 100, 150, 400];
/// Tag heads of drops: pairs in one 16-bit bucket, neighbours one bit apart at bits 1, 16, 17
/// and 32, so bucket caps and prefix boundaries come up often.
const HEADS: [u32; 7] =
    [0x0000_0000, 0x0000_8000, 0x0001_0000, 0x8000_0000, 0xffff_ffff, 0xffff_fffe, 0x1234_5678];
const STAMPS: u8 = 6;
const EPOCHS: u8 = 3;
/// (bits, value) of the prefixes observed.
const PREFIXES: [(u8, u32); 10] = [
    (0, 0),
    (1, 0),
    (1, 0x8000_0000),
    (3, 0),
    (16, 0),
    (17, 0),
    (17, 0x0000_8000),
    (31, 0xffff_fffe),
    (32, 0xffff_fffe),
    (32, 0x1234_5678),
];

fn key(n: u8) -> PublicKey {
    SecretKey::from_bytes(&[n + 1; 32]).expect("valid secret").public_key()
}
fn owner(i: u8) -> PublicKey {
    key(i)
}
fn receiver(i: u8) -> PublicKey {
    key(10 + i)
}
fn id(i: u8) -> String {
    format!("id-{i}")
}
fn tag(i: u8) -> Tag {
    Tag([i + 1; 20])
}

#[derive(Debug, Clone)]
struct Spec {
    owner: u8,
    receiver: u8,
    id: u8,
    hash: u8,
    tag: Option<u8>,
    stored_at: u64,
    ttl: u64,
    max_pulls: u32,
    len: usize,
}

impl Spec {
    fn record(&self) -> NewRecord {
        NewRecord {
            owner: owner(self.owner),
            receiver: receiver(self.receiver),
            record_id: id(self.id),
            tag: self.tag.map(tag),
            stored_at: self.stored_at,
            expires_at: self.stored_at + self.ttl,
            max_pulls: self.max_pulls,
            record_hash: [self.hash; 32],
            bytes: (0..self.len).map(|i| (i as u8).wrapping_mul(self.hash + 3) ^ self.id).collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct DropSpec {
    head: u8,
    epoch: u8,
    stamp: u8,
    stored_at: u64,
    ttl: u64,
    len: usize,
}

impl DropSpec {
    fn drop(&self) -> NewDrop {
        let head = HEADS[usize::from(self.head)];
        let filler = [self.stamp ^ self.head << 4; 20];
        NewDrop {
            tag: Prefix::truncate(32, head).expect("32 bits").apply(&filler),
            stamp_epoch: u64::from(self.epoch),
            stamp_id: [self.stamp; 32],
            stored_at: self.stored_at,
            expires_at: self.stored_at + self.ttl,
            drop_hash: [self.stamp ^ 0x5a; 32],
            bytes: (0..self.len).map(|i| (i as u8) ^ self.stamp).collect(),
        }
    }
}

/// Where a page starts: just before the `n` newest records of its outbox (a live listener,
/// or one a few records behind), or at a fixed sequence number (a reader far behind).
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Behind(usize),
    At(u64),
}

impl Cursor {
    fn seq<S: Store>(self, s: &S, owner: &PublicKey, receiver: &PublicKey) -> u64 {
        match self {
            Cursor::Behind(n) => {
                let live = s.fetch_after(owner, receiver, 0, 1_000, 0).expect("fetch");
                live.len().checked_sub(n + 1).map_or(0, |i| live[i].meta.seq)
            }
            Cursor::At(seq) => seq,
        }
    }
}

fn cursor() -> impl Strategy<Value = Cursor> {
    prop_oneof![3 => (0..4usize).prop_map(Cursor::Behind), 1 => (0..30u64).prop_map(Cursor::At)]
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<Spec>),
    Read {
        owner: u8,
        receiver: u8,
        id: u8,
        now: u64,
    },
    /// `read_after_many`: pages of (owner, receiver, cursor, limit, max bytes).
    ReadAfter {
        pages: Vec<(u8, u8, Cursor, usize, usize)>,
        now: u64,
    },
    Delete {
        owner: u8,
        receiver: u8,
        id: u8,
    },
    Expire {
        now: u64,
        limit: usize,
    },
    Account {
        key: u8,
        suspended: bool,
        max_bytes: u64,
    },
    PutDrops {
        drops: Vec<DropSpec>,
        bucket_cap: u32,
    },
    ExpireDrops {
        now: u64,
        limit: usize,
    },
    PruneStamps {
        before_epoch: u64,
        limit: usize,
    },
    Charge {
        account: u8,
        day: u64,
        count: u32,
        max_per_day: u32,
    },
    /// Closes and reopens the Fjall store (nothing to do for the model).
    Reopen,
}

fn drop_spec() -> impl Strategy<Value = DropSpec> {
    (0..HEADS.len() as u8, 0..EPOCHS, 0..STAMPS, 0..20u64, 1..20u64, 0..40usize).prop_map(
        |(head, epoch, stamp, stored_at, ttl, len)| DropSpec {
            head,
            epoch,
            stamp,
            stored_at: stored_at * 10,
            ttl: ttl * 10,
            len,
        },
    )
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (0..OWNERS, 0..RECEIVERS, 0..IDS, 0..2u8),
        prop::option::of(0..TAGS),
        // Times on a grid of 10, so that expiry boundaries (`expires_at == now`, a write
        // accepted exactly when the record at its path expires) come up often.
        (0..20u64, 1..20u64, 0..3u32, 0..40usize),
    )
        .prop_map(|((owner, receiver, id, hash), tag, (stored_at, ttl, max_pulls, len))| Spec {
            owner,
            receiver,
            id,
            hash,
            tag,
            stored_at: stored_at * 10,
            ttl: ttl * 10,
            max_pulls,
            len,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(spec(), 0..6).prop_map(Op::Put),
        3 => (0..OWNERS, 0..RECEIVERS, 0..IDS, 0..40u64)
            .prop_map(|(owner, receiver, id, now)| Op::Read { owner, receiver, id, now: now * 10 }),
        6 => (prop::collection::vec((0..OWNERS, 0..RECEIVERS, cursor(), 0..4usize, 0..60usize), 1..4), 0..40u64)
            .prop_map(|(pages, now)| Op::ReadAfter { pages, now: now * 10 }),
        1 => (0..OWNERS, 0..RECEIVERS, 0..IDS).prop_map(|(owner, receiver, id)| Op::Delete { owner, receiver, id }),
        1 => (0..40u64, 0..4usize).prop_map(|(now, limit)| Op::Expire { now: now * 10, limit }),
        1 => (0..OWNERS, any::<bool>(), 0..3u64)
            .prop_map(|(key, suspended, max_bytes)| Op::Account { key, suspended, max_bytes }),
        3 => (prop::collection::vec(drop_spec(), 0..6), 0..4u32)
            .prop_map(|(drops, bucket_cap)| Op::PutDrops { drops, bucket_cap }),
        1 => (0..40u64, 0..4usize).prop_map(|(now, limit)| Op::ExpireDrops { now: now * 10, limit }),
        1 => (0..=u64::from(EPOCHS), 0..4usize)
            .prop_map(|(before_epoch, limit)| Op::PruneStamps { before_epoch, limit }),
        1 => (0..2u8, 0..2u64, 0..5u32, 0..8u32)
            .prop_map(|(account, day, count, max_per_day)| Op::Charge { account, day, count, max_per_day }),
        1 => Just(Op::Reopen),
    ]
}

fn apply<S: Store>(s: &S, op: &Op) -> String {
    match op {
        Op::Put(specs) => {
            let batch: Vec<_> = specs.iter().map(Spec::record).collect();
            format!("{:?}", s.put_batch(&batch))
        }
        Op::Read { owner: o, receiver: r, id: i, now } => {
            format!("{:?}", s.read(&owner(*o), &receiver(*r), &id(*i), *now))
        }
        Op::ReadAfter { pages, now } => {
            let pages: Vec<_> = pages
                .iter()
                .map(|&(o, r, cursor, limit, max_bytes)| PageRead {
                    owner: owner(o),
                    receiver: receiver(r),
                    after_seq: cursor.seq(s, &owner(o), &receiver(r)),
                    limit,
                    max_bytes,
                })
                .collect();
            format!("{:?}", s.read_after_many(&pages, *now))
        }
        Op::Delete { owner: o, receiver: r, id: i } => {
            format!("{:?}", s.delete(&owner(*o), &receiver(*r), &id(*i)))
        }
        Op::Expire { now, limit } => format!("{:?}", s.expire(*now, *limit)),
        Op::Account { key: k, suspended, max_bytes } => {
            let account = Account {
                key: owner(*k),
                status: if *suspended { AccountStatus::Suspended } else { AccountStatus::Active },
                created_at: 1,
                max_bytes: *max_bytes,
                max_records_per_day: 2,
            };
            format!("{:?}", s.put_account(&account))
        }
        Op::PutDrops { drops, bucket_cap } => {
            let batch: Vec<_> = drops.iter().map(DropSpec::drop).collect();
            format!("{:?}", s.put_drops(&batch, *bucket_cap))
        }
        Op::ExpireDrops { now, limit } => format!("{:?}", s.expire_drops(*now, *limit)),
        Op::PruneStamps { before_epoch, limit } => format!("{:?}", s.prune_stamps(*before_epoch, *limit)),
        Op::Charge { account, day, count, max_per_day } => {
            format!("{:?}", s.charge_issuance(&[*account; 32], *day, *count, *max_per_day))
        }
        Op::Reopen => String::new(),
    }
}

/// Everything the trait lets a caller see, as text.
fn observe<S: Store>(s: &S) -> Result<Vec<String>, StoreError> {
    let mut seen = vec![format!("last_seq {}", s.last_seq()), format!("totals {:?}", s.totals()?)];
    for o in 0..OWNERS {
        seen.push(format!("owner {o} {:?}", s.owner_usage(&owner(o))?));
        seen.push(format!("account {o} {:?}", s.account(&owner(o))?));
        seen.push(format!("usage {o} {:?}", s.usage(&owner(o), None, None, 1_000)?));
        seen.push(format!("usage window {o} {:?}", s.usage(&owner(o), Some(50), Some(250), 3)?));
        for r in 0..RECEIVERS {
            for now in CLOCKS {
                let query = ListQuery {
                    owner: owner(o),
                    receiver: receiver(r),
                    after_seq: 0,
                    after_ts: None,
                    before_ts: None,
                    limit: 1_000,
                };
                seen.push(format!("list {o} {r} {now} {:?}", s.list(&query, now)?));
                let filtered =
                    ListQuery { after_seq: 2, after_ts: Some(30), before_ts: Some(170), limit: 2, ..query };
                seen.push(format!("list filtered {o} {r} {now} {:?}", s.list(&filtered, now)?));
                seen.push(format!(
                    "fetch {o} {r} {now} {:?}",
                    s.fetch_after(&owner(o), &receiver(r), 1, 1_000, now)?
                ));
                for i in 0..IDS {
                    seen.push(format!(
                        "get {o} {r} {i} {now} {:?}",
                        s.get(&owner(o), &receiver(r), &id(i), now)?
                    ));
                }
            }
        }
    }
    for t in 0..TAGS {
        for now in CLOCKS {
            seen.push(format!("tag {t} {now} {:?}", s.list_by_tag(&tag(t), 0, 1_000, now)?));
        }
    }
    seen.push(format!("drop totals {:?}", s.drop_totals()?));
    for (bits, value) in PREFIXES {
        let prefix = Prefix::new(bits, value).expect("valid prefix");
        for now in CLOCKS {
            seen.push(format!("drops {prefix} {now} {:?}", s.fetch_drops(&prefix, 0, 1_000, now)?));
            seen.push(format!("drops page {prefix} {now} {:?}", s.fetch_drops(&prefix, 3, 2, now)?));
        }
    }
    for epoch in 0..EPOCHS {
        for stamp in 0..STAMPS {
            seen.push(format!("stamp {epoch} {stamp} {:?}", s.stamp_spent(u64::from(epoch), &[stamp; 32])?));
        }
    }
    Ok(seen)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn fjall_matches_the_memory_model(
        ops in prop::collection::vec(op(), 1..40),
        // The list of recent records (the model has 9 outboxes of up to 4 live records each):
        // off; dropping records of an outbox, starting over, or both often; the default.
        (recent_outboxes, recent_per_outbox) in prop_oneof![
            Just((0, 0)), Just((16, 1)), Just((16, 2)), Just((2, 8)), Just((4, 2)), Just((32_768, 8))
        ],
    ) {
        let model = MemoryStore::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = FjallConfig { recent_outboxes, recent_per_outbox, ..FjallConfig::default() };
        let mut fjall = FjallStore::open_with(dir.path(), config.clone()).expect("open");
        for (step, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                drop(fjall);
                fjall = FjallStore::open_with(dir.path(), config.clone()).expect("reopen");
            }
            let expected = apply(&model, op);
            let got = apply(&fjall, op);
            prop_assert_eq!(&got, &expected, "step {} {:?}", step, op);
            let expected = observe(&model).expect("model reads");
            let got = observe(&fjall).expect("fjall reads");
            for (g, e) in got.iter().zip(&expected) {
                prop_assert_eq!(g, e, "after step {} {:?}", step, op);
            }
            prop_assert_eq!(got.len(), expected.len());
        }
        let totals = fjall.verify().expect("verify");
        prop_assert_eq!(totals, model.totals().expect("totals"));
    }
}
