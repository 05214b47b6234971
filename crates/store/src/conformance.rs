//! The behaviour every [`Store`] backend must have, as a suite of cases run against a fresh
//! store each.
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     pigeonhole_store::conformance::run_all(MyStore::new);
//! }
//! ```
//!
//! Besides what the trait documents, the suite pins down these choices:
//! - `put_batch` on an empty slice returns an empty vector and assigns nothing;
//! - a record whose id breaks the protocol rules fails the whole batch with an error and
//!   nothing of the batch is stored;
//! - within one batch, the first write at a path wins: later writes at the same path are
//!   `Duplicate` of it (same hash) or `Conflict`;
//! - a record stored by an earlier batch whose `expires_at <= stored_at` of a new write at the
//!   same path no longer holds the path: it is deleted and the new write is `Stored`;
//! - `delete` reports whether the record was still stored, even if expired at the caller's
//!   clock but not yet removed by `expire`;
//! - `expire` removes records in `(expires_at, seq)` order;
//! - usage rows with the same `read_at` come back in the order of the reads;
//! - `owner_usage` and `totals` count what is stored, expired or not, until it is removed;
//! - drops are not records: `totals` and `owner_usage` never count them, `drop_totals` does
//!   (expired or not, until `expire_drops` removes them), and so do the bucket counts that
//!   `bucket_cap` is checked against;
//! - a drop removed by `expire_drops` leaves its stamp spent; only `prune_stamps` forgets it;
//! - `put_drops` on an empty slice returns an empty vector; a batch in which nothing is stored
//!   assigns no sequence number;
//! - `expire_drops` removes drops in `(expires_at, seq)` order; `prune_stamps` forgets stamps
//!   in `(epoch, stamp id)` order;
//! - `charge_issuance` with `count = 0` grants 0 and changes nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::tag::{Prefix, TAG_LEN, Tag};

use crate::{
    Account, AccountStatus, DROP_BUCKET_BITS, DropOutcome, ListQuery, NewDrop, NewRecord, PageRead,
    PutOutcome, ReadOutcome, RecordMeta, ServedPage, Store, StoredDrop, StoredRecord, Usage, drop_bucket,
};

/// One case of the suite: a name and a check run against a fresh store.
pub type Case<S> = (&'static str, fn(&S));

/// Runs every case of [`cases`] against a fresh store from `make`, and panics listing the
/// cases that failed (with their messages).
pub fn run_all<S: Store>(make: impl Fn() -> S) {
    let mut failures = Vec::new();
    for (name, case) in cases::<S>() {
        let store = make();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&store))) {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            failures.push(format!("- {name}: {message}"));
        }
    }
    assert!(failures.is_empty(), "{} conformance case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// Every case of the suite, by name (to run one at a time when debugging a backend).
pub fn cases<S: Store>() -> Vec<Case<S>> {
    vec![
        ("put_get_round_trip", put_get_round_trip::<S>),
        ("empty_and_invalid_batches", empty_and_invalid_batches::<S>),
        ("seq_monotonic", seq_monotonic::<S>),
        ("duplicate_and_conflict_across_batches", duplicate_and_conflict_across_batches::<S>),
        ("duplicate_and_conflict_within_batch", duplicate_and_conflict_within_batch::<S>),
        ("expired_path_is_reusable", expired_path_is_reusable::<S>),
        ("list_filters_and_limits", list_filters_and_limits::<S>),
        ("fetch_after_order_and_paging", fetch_after_order_and_paging::<S>),
        ("list_by_tag", list_by_tag::<S>),
        ("reads_filter_expired", reads_filter_expired::<S>),
        ("expire_removes_everything", expire_removes_everything::<S>),
        ("read_counts_and_logs", read_counts_and_logs::<S>),
        ("pull_limit_exhaustion", pull_limit_exhaustion::<S>),
        ("read_batch_counts_each_read", read_batch_counts_each_read::<S>),
        ("read_after_serves_a_counted_page", read_after_serves_a_counted_page::<S>),
        (
            "read_after_many_counts_pages_as_one_after_another",
            read_after_many_counts_pages_as_one_after_another::<S>,
        ),
        ("usage_window", usage_window::<S>),
        ("usage_logs_every_read_of_a_large_commit", usage_logs_every_read_of_a_large_commit::<S>),
        ("delete", delete::<S>),
        ("accounts", accounts::<S>),
        ("owner_usage_and_totals", owner_usage_and_totals::<S>),
        ("last_seq", last_seq::<S>),
        ("concurrent_writers_and_readers", concurrent_writers_and_readers::<S>),
        ("drop_round_trip", drop_round_trip::<S>),
        ("stamp_spent_across_batches", stamp_spent_across_batches::<S>),
        ("stamp_spent_within_batch", stamp_spent_within_batch::<S>),
        ("bucket_full_does_not_spend_the_stamp", bucket_full_does_not_spend_the_stamp::<S>),
        ("fetch_drops_by_prefix", fetch_drops_by_prefix::<S>),
        ("expired_drops", expired_drops::<S>),
        ("prune_stamps", prune_stamps::<S>),
        ("charge_issuance", charge_issuance::<S>),
        ("drops_and_records_share_the_sequence", drops_and_records_share_the_sequence::<S>),
        ("concurrent_drops_spend_each_stamp_once", concurrent_drops_spend_each_stamp_once::<S>),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn key(n: u8) -> PublicKey {
    SecretKey::from_bytes(&[n; 32]).expect("1..=255 repeated is a valid secret key").public_key()
}

fn alice() -> PublicKey {
    key(1)
}
fn bob() -> PublicKey {
    key(2)
}
fn carol() -> PublicKey {
    key(3)
}
fn dave() -> PublicKey {
    key(4)
}

const FOREVER: u64 = u64::MAX;

fn rec(owner: PublicKey, receiver: PublicKey, id: &str) -> NewRecord {
    NewRecord {
        owner,
        receiver,
        record_id: id.to_owned(),
        tag: None,
        stored_at: 1_000,
        expires_at: FOREVER,
        max_pulls: 0,
        record_hash: hash_of(id, 0),
        bytes: format!("bytes of {id}").into_bytes(),
    }
}

fn hash_of(id: &str, variant: u8) -> [u8; 32] {
    let mut h = [variant; 32];
    for (i, b) in id.bytes().enumerate() {
        h[i % 32] ^= b;
    }
    h
}

fn with(mut r: NewRecord, f: impl FnOnce(&mut NewRecord)) -> NewRecord {
    f(&mut r);
    r
}

fn stored(outcome: &PutOutcome) -> u64 {
    match outcome {
        PutOutcome::Stored { seq } => *seq,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn put_one<S: Store>(s: &S, r: NewRecord) -> u64 {
    let out = s.put_batch(&[r]).expect("put_batch");
    assert_eq!(out.len(), 1);
    stored(&out[0])
}

fn put_all<S: Store>(s: &S, records: Vec<NewRecord>) -> Vec<u64> {
    s.put_batch(&records).expect("put_batch").iter().map(stored).collect()
}

fn query(owner: PublicKey, receiver: PublicKey) -> ListQuery {
    ListQuery { owner, receiver, after_seq: 0, after_ts: None, before_ts: None, limit: 1_000 }
}

fn seqs(metas: &[RecordMeta]) -> Vec<u64> {
    metas.iter().map(|m| m.seq).collect()
}

fn rseqs(records: &[StoredRecord]) -> Vec<u64> {
    records.iter().map(|r| r.meta.seq).collect()
}

fn ids(metas: &[RecordMeta]) -> Vec<&str> {
    metas.iter().map(|m| m.record_id.as_str()).collect()
}

fn served<S: Store>(
    s: &S,
    owner: PublicKey,
    receiver: PublicKey,
    id: &str,
    now: u64,
) -> (StoredRecord, bool) {
    match s.read(&owner, &receiver, id, now).expect("read") {
        ReadOutcome::Served { record, exhausted } => (record, exhausted),
        ReadOutcome::NotFound => panic!("read of {id} at {now}: NotFound"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

fn put_get_round_trip<S: Store>(s: &S) {
    let r = with(rec(alice(), bob(), "r-1"), |r| {
        r.tag = Some(Tag([0xab; TAG_LEN]));
        r.stored_at = 10;
        r.expires_at = 500;
        r.max_pulls = 3;
        r.bytes = (0..=255u8).cycle().take(3_000).collect();
    });
    let seq = put_one(s, r.clone());
    let got = s.get(&alice(), &bob(), "r-1", 10).expect("get").expect("stored");
    assert_eq!(
        got.meta,
        RecordMeta {
            seq,
            owner: alice(),
            receiver: bob(),
            record_id: "r-1".into(),
            tag: r.tag,
            stored_at: 10,
            expires_at: 500,
            max_pulls: 3,
            pulls: 0,
            size: 3_000,
            record_hash: r.record_hash,
        }
    );
    assert_eq!(got.bytes, r.bytes);
    // Other paths: different id, swapped owner and receiver, other receiver.
    assert_eq!(s.get(&alice(), &bob(), "r-2", 10).expect("get"), None);
    assert_eq!(s.get(&bob(), &alice(), "r-1", 10).expect("get"), None);
    assert_eq!(s.get(&alice(), &carol(), "r-1", 10).expect("get"), None);
    // Empty bytes round-trip too.
    let empty = with(rec(alice(), bob(), "empty"), |r| r.bytes = Vec::new());
    put_one(s, empty);
    let got = s.get(&alice(), &bob(), "empty", 0).expect("get").expect("stored");
    assert_eq!((got.bytes.len(), got.meta.size, got.meta.tag), (0, 0, None));
}

fn empty_and_invalid_batches<S: Store>(s: &S) {
    assert_eq!(s.put_batch(&[]).expect("empty batch"), Vec::new());
    assert_eq!(s.last_seq(), 0);
    for bad in ["", "a/b", "..", "sp ace", &"x".repeat(129)] {
        let batch = [rec(alice(), bob(), "good"), rec(alice(), bob(), bad)];
        assert!(s.put_batch(&batch).is_err(), "record id {bad:?} must be refused");
    }
    assert_eq!(s.last_seq(), 0, "a refused batch assigns nothing");
    assert_eq!(s.get(&alice(), &bob(), "good", 0).expect("get"), None, "a refused batch stores nothing");
    assert_eq!(s.totals().expect("totals"), Usage::default());
    // The longest valid id works.
    let long = "y".repeat(128);
    put_one(s, rec(alice(), bob(), &long));
    assert!(s.get(&alice(), &bob(), &long, 0).expect("get").is_some());
}

fn seq_monotonic<S: Store>(s: &S) {
    let mut last = 0;
    for batch in 0..5 {
        let records: Vec<_> = (0..7).map(|i| rec(alice(), bob(), &format!("b{batch}-{i}"))).collect();
        let seqs = put_all(s, records);
        assert_eq!(seqs.len(), 7);
        for seq in seqs {
            assert!(seq > last, "seq {seq} not above {last}");
            last = seq;
        }
        assert_eq!(s.last_seq(), last);
    }
    // Deleting the newest record does not let its number be reused.
    assert!(s.delete(&alice(), &bob(), "b4-6").expect("delete"));
    let next = put_one(s, rec(alice(), bob(), "after-delete"));
    assert!(next > last);
    // Seqs stay increasing across owners and receivers.
    let next2 = put_one(s, rec(carol(), dave(), "x"));
    assert!(next2 > next);
}

fn duplicate_and_conflict_across_batches<S: Store>(s: &S) {
    let original = with(rec(alice(), bob(), "r"), |r| {
        r.stored_at = 100;
        r.expires_at = 900;
    });
    let seq = put_one(s, original.clone());
    let before = (s.totals().expect("totals"), s.last_seq());
    // Same path, same hash, later retry with other times: the existing record's times.
    let retry = with(original.clone(), |r| {
        r.stored_at = 200;
        r.expires_at = 2_000;
        r.bytes = b"ignored".to_vec();
    });
    assert_eq!(
        s.put_batch(&[retry]).expect("put"),
        vec![PutOutcome::Duplicate { seq, stored_at: 100, expires_at: 900 }]
    );
    let other = with(original.clone(), |r| r.record_hash = hash_of("r", 1));
    assert_eq!(s.put_batch(&[other]).expect("put"), vec![PutOutcome::Conflict]);
    assert_eq!((s.totals().expect("totals"), s.last_seq()), before, "nothing changed");
    assert_eq!(s.get(&alice(), &bob(), "r", 0).expect("get").expect("stored").bytes, original.bytes);
    // Mixed batch: new records still get numbers, duplicates and conflicts do not.
    let out = s
        .put_batch(&[
            rec(alice(), bob(), "n1"),
            original.clone(),
            with(original, |r| r.record_hash = [7; 32]),
            rec(alice(), bob(), "n2"),
        ])
        .expect("put");
    assert!(matches!(out[0], PutOutcome::Stored { seq: a } if a > seq));
    assert_eq!(out[1], PutOutcome::Duplicate { seq, stored_at: 100, expires_at: 900 });
    assert_eq!(out[2], PutOutcome::Conflict);
    assert!(stored(&out[3]) > stored(&out[0]));
    assert_eq!(s.last_seq(), stored(&out[3]));
}

fn duplicate_and_conflict_within_batch<S: Store>(s: &S) {
    let a = with(rec(alice(), bob(), "a"), |r| {
        r.stored_at = 5;
        r.expires_at = 50;
    });
    let a_again = with(a.clone(), |r| {
        r.stored_at = 6;
        r.bytes = b"second copy".to_vec();
    });
    let a_other = with(a.clone(), |r| r.record_hash = hash_of("a", 9));
    // Even when the first one would already be expired for the later write, the first
    // write at a path within a batch wins.
    let a_late = with(a.clone(), |r| {
        r.stored_at = 60;
        r.record_hash = hash_of("a", 3);
    });
    let b = rec(alice(), bob(), "b");
    let out = s.put_batch(&[a.clone(), a_again, a_other, a_late, b]).expect("put");
    let seq_a = stored(&out[0]);
    assert_eq!(out[1], PutOutcome::Duplicate { seq: seq_a, stored_at: 5, expires_at: 50 });
    assert_eq!(out[2], PutOutcome::Conflict);
    assert_eq!(out[3], PutOutcome::Conflict);
    assert!(stored(&out[4]) > seq_a);
    assert_eq!(s.get(&alice(), &bob(), "a", 0).expect("get").expect("stored").bytes, a.bytes);
    assert_eq!(s.totals().expect("totals").records, 2);
    // The same id under another receiver or owner is another path.
    let out = s.put_batch(&[rec(alice(), carol(), "a"), rec(carol(), bob(), "a")]).expect("put");
    assert!(out.iter().all(|o| matches!(o, PutOutcome::Stored { .. })), "{out:?}");
}

fn expired_path_is_reusable<S: Store>(s: &S) {
    let old = with(rec(alice(), bob(), "p"), |r| {
        r.stored_at = 10;
        r.expires_at = 100;
        r.tag = Some(Tag([1; TAG_LEN]));
    });
    let old_seq = put_one(s, old.clone());
    // Not yet expired when the new write was accepted: the path is still held.
    let early = with(old.clone(), |r| {
        r.stored_at = 99;
        r.record_hash = hash_of("p", 1);
    });
    assert_eq!(s.put_batch(&[early]).expect("put"), vec![PutOutcome::Conflict]);
    // Expired (expires_at <= stored_at): replaced, even with the same hash.
    let new = with(old.clone(), |r| {
        r.stored_at = 100;
        r.expires_at = 1_000;
        r.tag = None;
        r.bytes = b"new".to_vec();
    });
    let new_seq = put_one(s, new);
    assert!(new_seq > old_seq);
    let got = s.get(&alice(), &bob(), "p", 100).expect("get").expect("stored");
    assert_eq!((got.meta.seq, got.bytes.as_slice()), (new_seq, b"new".as_slice()));
    assert_eq!(seqs(&s.list(&query(alice(), bob()), 0).expect("list")), vec![new_seq]);
    assert_eq!(s.list_by_tag(&Tag([1; TAG_LEN]), 0, 10, 0).expect("by tag"), Vec::new());
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage { records: 1, bytes: 3 });
    assert_eq!(s.totals().expect("totals"), Usage { records: 1, bytes: 3 });
    // The old record's expiry entry went with it.
    assert_eq!(s.expire(500, 10).expect("expire"), 0);
    assert!(s.get(&alice(), &bob(), "p", 500).expect("get").is_some());
}

fn list_filters_and_limits<S: Store>(s: &S) {
    // Six records in alice→bob with stored_at 10..=60, interleaved with other outboxes.
    let mut mine = Vec::new();
    for i in 1..=6u64 {
        let r = with(rec(alice(), bob(), &format!("m{i}")), |r| r.stored_at = i * 10);
        mine.push(put_one(s, r));
        put_one(s, with(rec(alice(), carol(), &format!("m{i}")), |r| r.stored_at = i * 10));
        put_one(s, with(rec(carol(), bob(), &format!("m{i}")), |r| r.stored_at = i * 10));
    }
    let q = query(alice(), bob());
    let all = s.list(&q, 0).expect("list");
    assert_eq!(seqs(&all), mine);
    assert_eq!(ids(&all), ["m1", "m2", "m3", "m4", "m5", "m6"]);
    assert!(all.iter().all(|m| m.owner == alice() && m.receiver == bob() && m.pulls == 0));
    assert_eq!(all[0].size, "bytes of m1".len() as u32);

    let list = |f: &dyn Fn(&mut ListQuery)| {
        let mut q = q.clone();
        f(&mut q);
        seqs(&s.list(&q, 0).expect("list"))
    };
    assert_eq!(list(&|q| q.after_seq = mine[2]), mine[3..]);
    assert_eq!(list(&|q| q.after_seq = mine[5]), Vec::<u64>::new());
    assert_eq!(list(&|q| q.after_seq = u64::MAX), Vec::<u64>::new());
    assert_eq!(list(&|q| q.after_ts = Some(30)), mine[3..]);
    assert_eq!(list(&|q| q.before_ts = Some(30)), mine[..2]);
    assert_eq!(list(&|q| q.before_ts = Some(0)), Vec::<u64>::new());
    assert_eq!(list(&|q| q.after_ts = Some(u64::MAX)), Vec::<u64>::new());
    assert_eq!(
        list(&|q| {
            q.after_ts = Some(10);
            q.before_ts = Some(60);
        }),
        mine[1..5]
    );
    assert_eq!(
        list(&|q| {
            q.after_ts = Some(30);
            q.before_ts = Some(40);
        }),
        Vec::<u64>::new()
    );
    assert_eq!(list(&|q| q.limit = 2), mine[..2]);
    assert_eq!(list(&|q| q.limit = 0), Vec::<u64>::new());
    // The limit counts results after filtering.
    assert_eq!(
        list(&|q| {
            q.after_ts = Some(20);
            q.limit = 2;
        }),
        mine[2..4]
    );
    assert_eq!(
        list(&|q| {
            q.after_seq = mine[3];
            q.after_ts = Some(10);
            q.before_ts = Some(60);
        }),
        mine[4..5]
    );
    // An outbox with nothing in it.
    assert_eq!(s.list(&query(bob(), alice()), 0).expect("list"), Vec::new());
}

fn fetch_after_order_and_paging<S: Store>(s: &S) {
    let mut mine = Vec::new();
    for i in 0..10 {
        let seqs = put_all(
            s,
            vec![
                rec(alice(), bob(), &format!("f{i}")),
                rec(alice(), carol(), &format!("f{i}")),
                rec(dave(), bob(), &format!("f{i}")),
            ],
        );
        mine.push(seqs[0]);
    }
    let all = s.fetch_after(&alice(), &bob(), 0, 100, 0).expect("fetch");
    assert_eq!(rseqs(&all), mine);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.meta.record_id, format!("f{i}"));
        assert_eq!(r.bytes, format!("bytes of f{i}").into_bytes());
    }
    // Paging by the last sequence number seen.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.fetch_after(&alice(), &bob(), after, 3, 0).expect("fetch");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().expect("non-empty").meta.seq;
        seen.extend(rseqs(&page));
    }
    assert_eq!(seen, mine);
    assert_eq!(s.fetch_after(&alice(), &bob(), 0, 0, 0).expect("fetch"), Vec::new());
    assert_eq!(s.fetch_after(&alice(), &bob(), u64::MAX, 10, 0).expect("fetch"), Vec::new());
    assert_eq!(s.fetch_after(&bob(), &alice(), 0, 10, 0).expect("fetch"), Vec::new());
}

fn list_by_tag<S: Store>(s: &S) {
    let t1 = Tag([0x11; TAG_LEN]);
    let t2 = Tag([0x22; TAG_LEN]);
    // t1 and another tag sharing its first 19 bytes, to check exact matching.
    let mut near = [0x11; TAG_LEN];
    near[TAG_LEN - 1] = 0x12;
    let near = Tag(near);
    let mut t1_seqs = Vec::new();
    for i in 0..6 {
        let tag = match i % 3 {
            0 => Some(t1),
            1 => Some(t2),
            _ => None,
        };
        let owner = if i % 2 == 0 { alice() } else { carol() };
        let seq = put_one(s, with(rec(owner, bob(), &format!("t{i}")), |r| r.tag = tag));
        if tag == Some(t1) {
            t1_seqs.push(seq);
        }
        put_one(s, with(rec(dave(), bob(), &format!("n{i}")), |r| r.tag = Some(near)));
    }
    let seq = put_one(
        s,
        with(rec(carol(), dave(), "t1-expiring"), |r| {
            r.tag = Some(t1);
            r.expires_at = 70;
        }),
    );
    let got = s.list_by_tag(&t1, 0, 100, 0).expect("by tag");
    let mut want = t1_seqs.clone();
    want.push(seq);
    assert_eq!(seqs(&got), want);
    assert!(got.iter().all(|m| m.tag == Some(t1)));
    assert_eq!(got[0].record_id, "t0");
    assert_eq!(seqs(&s.list_by_tag(&t1, 0, 100, 70).expect("by tag")), t1_seqs);
    assert_eq!(seqs(&s.list_by_tag(&t1, t1_seqs[0], 100, 70).expect("by tag")), t1_seqs[1..]);
    assert_eq!(seqs(&s.list_by_tag(&t1, 0, 1, 0).expect("by tag")), t1_seqs[..1]);
    assert_eq!(s.list_by_tag(&t1, 0, 0, 0).expect("by tag"), Vec::new());
    assert_eq!(s.list_by_tag(&t2, 0, 100, 0).expect("by tag").len(), 2);
    assert_eq!(s.list_by_tag(&near, 0, 100, 0).expect("by tag").len(), 6);
    assert_eq!(s.list_by_tag(&Tag([0; TAG_LEN]), 0, 100, 0).expect("by tag"), Vec::new());
}

fn reads_filter_expired<S: Store>(s: &S) {
    let tag = Tag([5; TAG_LEN]);
    let r = with(rec(alice(), bob(), "e"), |r| {
        r.stored_at = 10;
        r.expires_at = 100;
        r.tag = Some(tag);
    });
    put_one(s, r);
    let visible = |now| {
        [
            s.get(&alice(), &bob(), "e", now).expect("get").is_some(),
            !s.list(&query(alice(), bob()), now).expect("list").is_empty(),
            !s.fetch_after(&alice(), &bob(), 0, 10, now).expect("fetch").is_empty(),
            !s.list_by_tag(&tag, 0, 10, now).expect("by tag").is_empty(),
        ]
    };
    assert_eq!(visible(0), [true; 4]);
    assert_eq!(visible(99), [true; 4]);
    assert_eq!(visible(100), [false; 4], "expires_at <= now is expired");
    assert_eq!(visible(u64::MAX), [false; 4]);
    assert_eq!(s.read(&alice(), &bob(), "e", 100).expect("read"), ReadOutcome::NotFound);
    assert_eq!(s.usage(&alice(), None, None, 10).expect("usage"), Vec::new(), "no read was served");
    // Still stored (and counted) until expire runs.
    assert_eq!(s.totals().expect("totals").records, 1);
    assert_eq!(visible(99), [true; 4]);
}

fn expire_removes_everything<S: Store>(s: &S) {
    let tag = Tag([9; TAG_LEN]);
    // Five records expiring at 100, 200, ..., 500 (inserted out of expiry order), and one
    // that never expires.
    let mut by_expiry = Vec::new();
    for (i, exp) in [300u64, 100, 500, 200, 400].into_iter().enumerate() {
        let owner = if i % 2 == 0 { alice() } else { carol() };
        let id = format!("x{exp}");
        put_one(
            s,
            with(rec(owner, bob(), &id), |r| {
                r.stored_at = 1;
                r.expires_at = exp;
                r.tag = Some(tag);
                r.bytes = vec![0; 10];
            }),
        );
        by_expiry.push((exp, owner, id));
    }
    by_expiry.sort_by_key(|e| e.0);
    put_one(s, with(rec(alice(), bob(), "keep"), |r| r.tag = Some(tag)));
    let keep_len = u64::from(s.get(&alice(), &bob(), "keep", 0).expect("get").expect("kept").meta.size);
    // Read one so it has a pull count to remove as well.
    served(s, alice(), bob(), "x300", 5);
    assert_eq!(s.totals().expect("totals"), Usage { records: 6, bytes: 50 + keep_len });

    assert_eq!(s.expire(99, 100).expect("expire"), 0);
    assert_eq!(s.expire(0, 100).expect("expire"), 0);
    assert_eq!(s.expire(1_000, 0).expect("expire"), 0);
    // At 300, three are due; a limit of 2 takes the two that expire first.
    assert_eq!(s.expire(300, 2).expect("expire"), 2);
    assert!(s.get(&carol(), &bob(), "x100", 0).expect("get").is_none());
    assert!(s.get(&carol(), &bob(), "x200", 0).expect("get").is_none());
    assert!(s.get(&alice(), &bob(), "x300", 0).expect("get").is_some());
    assert_eq!(s.expire(300, 10).expect("expire"), 1);
    assert_eq!(s.expire(300, 10).expect("expire"), 0);
    assert_eq!(s.expire(1_000, 10).expect("expire"), 2);

    // Gone from every index, even when asked with a clock before their expiry.
    assert_eq!(ids(&s.list(&query(alice(), bob()), 0).expect("list")), ["keep"]);
    assert_eq!(s.list(&query(carol(), bob()), 0).expect("list"), Vec::new());
    assert_eq!(s.fetch_after(&carol(), &bob(), 0, 10, 0).expect("fetch"), Vec::new());
    assert_eq!(ids(&s.list_by_tag(&tag, 0, 10, 0).expect("by tag")), ["keep"]);
    let to_bob = s.fetch_after(&alice(), &bob(), 0, 10, 0).expect("fetch");
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0].meta.record_id, "keep");
    for (_, owner, id) in &by_expiry {
        assert!(s.get(owner, &bob(), id, 0).expect("get").is_none());
        assert!(!s.delete(owner, &bob(), id).expect("delete"), "{id} already removed");
        assert_eq!(s.read(owner, &bob(), id, 0).expect("read"), ReadOutcome::NotFound);
    }
    // Counters follow.
    assert_eq!(s.owner_usage(&carol()).expect("usage"), Usage::default());
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage { records: 1, bytes: keep_len });
    assert_eq!(s.totals().expect("totals"), Usage { records: 1, bytes: keep_len });
    // Paths are free again, and a new record there starts with no pulls.
    let seq = put_one(s, rec(alice(), bob(), "x300"));
    let again = s.get(&alice(), &bob(), "x300", 0).expect("get").expect("stored");
    assert_eq!((again.meta.seq, again.meta.pulls), (seq, 0));
    // The usage log is kept.
    assert_eq!(s.usage(&alice(), None, None, 10).expect("usage").len(), 1);
}

fn read_counts_and_logs<S: Store>(s: &S) {
    let r = with(rec(alice(), bob(), "r"), |r| r.bytes = vec![7; 42]);
    let seq = put_one(s, r);
    put_one(s, rec(carol(), bob(), "other"));
    for n in 1..=3u32 {
        let (record, exhausted) = served(s, alice(), bob(), "r", 100 + u64::from(n));
        assert!(!exhausted);
        assert_eq!((record.meta.seq, record.meta.pulls), (seq, n));
        assert_eq!(record.bytes, vec![7; 42]);
    }
    assert_eq!(s.get(&alice(), &bob(), "r", 0).expect("get").expect("stored").meta.pulls, 3);
    assert_eq!(s.list(&query(alice(), bob()), 0).expect("list")[0].pulls, 3);
    assert_eq!(s.fetch_after(&alice(), &bob(), 0, 10, 0).expect("fetch")[0].meta.pulls, 3);
    let rows = s.usage(&alice(), None, None, 100).expect("usage");
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.owner, alice());
        assert_eq!(row.receiver, bob());
        assert_eq!(row.record_id, "r");
        assert_eq!(row.bytes, 42);
        assert_eq!(row.read_at, 101 + i as u64);
    }
    // Reads of missing records change nothing.
    assert_eq!(s.read(&alice(), &bob(), "missing", 200).expect("read"), ReadOutcome::NotFound);
    assert_eq!(s.read(&bob(), &alice(), "r", 200).expect("read"), ReadOutcome::NotFound);
    assert_eq!(s.usage(&alice(), None, None, 100).expect("usage").len(), 3);
    // Other owners' logs are separate.
    assert_eq!(s.usage(&carol(), None, None, 100).expect("usage"), Vec::new());
    served(s, carol(), bob(), "other", 300);
    assert_eq!(s.usage(&carol(), None, None, 100).expect("usage").len(), 1);
    assert_eq!(s.usage(&alice(), None, None, 100).expect("usage").len(), 3);
    // Reading does not change what is stored.
    assert_eq!(s.totals().expect("totals").records, 2);
}

fn read_batch_counts_each_read<S: Store>(s: &S) {
    let key = |id: &str| crate::ReadKey { owner: alice(), receiver: bob(), record_id: id.to_owned() };
    put_one(s, with(rec(alice(), bob(), "a"), |r| r.max_pulls = 2));
    put_one(s, rec(alice(), bob(), "b"));
    assert_eq!(s.read_batch(&[], 100).expect("empty batch"), Vec::new());
    // "a" named three times: served, served and exhausted, then gone.
    let outcomes =
        s.read_batch(&[key("a"), key("b"), key("a"), key("missing"), key("a")], 100).expect("batch");
    let summary: Vec<Option<(u32, bool)>> = outcomes
        .iter()
        .map(|o| match o {
            ReadOutcome::NotFound => None,
            ReadOutcome::Served { record, exhausted } => Some((record.meta.pulls, *exhausted)),
        })
        .collect();
    assert_eq!(summary, vec![Some((1, false)), Some((1, false)), Some((2, true)), None, None]);
    assert_eq!(s.get(&alice(), &bob(), "a", 100).expect("get"), None);
    assert_eq!(s.get(&alice(), &bob(), "b", 100).expect("get").expect("kept").meta.pulls, 1);
    // Every served read is logged, in order, even within one batch.
    let rows = s.usage(&alice(), None, None, 100).expect("usage");
    assert_eq!(rows.iter().map(|r| r.record_id.as_str()).collect::<Vec<_>>(), vec!["a", "b", "a"]);
    assert!(rows.iter().all(|r| r.read_at == 100));
    // A single read after a batch continues the same counts and log.
    assert!(matches!(s.read(&alice(), &bob(), "b", 101).expect("read"), ReadOutcome::Served { .. }));
    assert_eq!(s.usage(&alice(), None, None, 100).expect("usage").len(), 4);
}

fn read_after_serves_a_counted_page<S: Store>(s: &S) {
    let page = |after: u64, limit: usize, max_bytes: usize, now: u64| -> Vec<(String, u32, bool)> {
        s.read_after(&alice(), &bob(), after, limit, max_bytes, now)
            .expect("read_after")
            .into_iter()
            .map(|(r, exhausted)| (r.meta.record_id, r.meta.pulls, exhausted))
            .collect()
    };
    let a = put_one(s, with(rec(alice(), bob(), "a"), |r| r.bytes = vec![1; 100]));
    put_one(
        s,
        with(rec(alice(), bob(), "b"), |r| {
            r.bytes = vec![2; 100];
            r.max_pulls = 1;
        }),
    );
    put_one(s, with(rec(alice(), carol(), "other-outbox"), |r| r.bytes = vec![3; 10]));
    put_one(
        s,
        with(rec(alice(), bob(), "c"), |r| {
            r.bytes = vec![4; 100];
            r.expires_at = 50;
        }),
    );
    put_one(s, with(rec(alice(), bob(), "d"), |r| r.bytes = vec![5; 300]));
    // Nothing after the end, nothing for a zero limit, and nothing is counted for either.
    assert_eq!(page(u64::MAX, 10, 1 << 20, 10), Vec::new());
    assert_eq!(page(0, 0, 1 << 20, 10), Vec::new());
    // The first record is served whatever the byte bound; the bound stops the page after it.
    assert_eq!(page(0, 10, 1, 10), vec![("a".to_owned(), 1, false)]);
    assert_eq!(page(0, 10, 200, 11), vec![("a".to_owned(), 2, false), ("b".to_owned(), 1, true)]);
    // "b" was used up; "c" has expired at 60 and is skipped without counting; other outboxes
    // never appear; the limit counts served records.
    assert_eq!(page(a, 1, 1 << 20, 60), vec![("d".to_owned(), 1, false)]);
    assert_eq!(page(0, 10, 1 << 20, 60), vec![("a".to_owned(), 3, false), ("d".to_owned(), 2, false)]);
    assert_eq!(s.get(&alice(), &bob(), "b", 60).expect("get"), None);
    // Every served record was logged exactly as a read would log it.
    let rows = s.usage(&alice(), None, None, 100).expect("usage");
    assert_eq!(
        rows.iter().map(|r| r.record_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "a", "b", "d", "a", "d"]
    );
    // A single read afterwards continues the same count.
    match s.read(&alice(), &bob(), "d", 61).expect("read") {
        ReadOutcome::Served { record, exhausted } => assert_eq!((record.meta.pulls, exhausted), (3, false)),
        ReadOutcome::NotFound => panic!("\"d\" is still stored"),
    }
}

fn read_after_many_counts_pages_as_one_after_another<S: Store>(s: &S) {
    let page = |owner: PublicKey, receiver: PublicKey, after_seq: u64, limit: usize| PageRead {
        owner,
        receiver,
        after_seq,
        limit,
        max_bytes: 1 << 20,
    };
    type Summary = Vec<(Vec<(String, u32, bool)>, bool)>;
    let summary = |pages: Vec<ServedPage>| -> Summary {
        pages
            .into_iter()
            .map(|p| {
                let records = p
                    .records
                    .into_iter()
                    .map(|(r, exhausted)| (r.meta.record_id, r.meta.pulls, exhausted))
                    .collect();
                (records, p.more)
            })
            .collect()
    };
    assert_eq!(s.read_after_many(&[], 10).expect("no pages"), Vec::<ServedPage>::new());
    put_one(s, with(rec(alice(), bob(), "twice"), |r| r.max_pulls = 2));
    let b = put_one(s, rec(alice(), bob(), "b"));
    put_one(s, rec(carol(), bob(), "from-carol"));
    let before = s.totals().expect("totals");
    // The same outbox on three pages (two listens of one receiver, say): "twice" is counted on
    // the first two and used up by the second, so the third no longer has it; another outbox
    // and an empty page sit between them.
    let pages = [
        page(alice(), bob(), 0, 10),
        page(carol(), bob(), 0, 10),
        page(alice(), bob(), 0, 1),
        page(alice(), carol(), 0, 10),
        page(alice(), bob(), 0, 10),
        page(alice(), bob(), b, 10),
    ];
    // `more` is set only on the page its limit cut short.
    assert_eq!(
        summary(s.read_after_many(&pages, 20).expect("read_after_many")),
        vec![
            (vec![("twice".to_owned(), 1, false), ("b".to_owned(), 1, false)], false),
            (vec![("from-carol".to_owned(), 1, false)], false),
            (vec![("twice".to_owned(), 2, true)], true),
            (vec![], false),
            (vec![("b".to_owned(), 2, false)], false),
            (vec![], false),
        ]
    );
    // The used-up record left the store once, and its bytes left the totals once.
    assert_eq!(s.get(&alice(), &bob(), "twice", 20).expect("get"), None);
    let after = s.totals().expect("totals");
    assert_eq!(before.records - after.records, 1);
    assert_eq!(s.owner_usage(&alice()).expect("usage").records, 1);
    // Each serve was logged under its own key, and the counts go on from there.
    assert_eq!(s.usage(&alice(), None, None, 100).expect("usage").len(), 4);
    assert_eq!(s.usage(&carol(), None, None, 100).expect("usage").len(), 1);
    assert_eq!(
        summary(s.read_after_many(&[page(alice(), bob(), 0, 10)], 21).expect("again")),
        vec![(vec![("b".to_owned(), 3, false)], false)]
    );
    // A page its byte bound cut short says so too; the next one, which ends with the outbox,
    // does not.
    put_one(s, rec(alice(), bob(), "c"));
    let small = PageRead { max_bytes: 1, ..page(alice(), bob(), 0, 10) };
    assert_eq!(
        summary(s.read_after_many(&[small, page(alice(), bob(), b, 10)], 22).expect("cut by bytes")),
        vec![(vec![("b".to_owned(), 4, false)], true), (vec![("c".to_owned(), 1, false)], false)]
    );
}

fn pull_limit_exhaustion<S: Store>(s: &S) {
    let tag = Tag([3; TAG_LEN]);
    let r = with(rec(alice(), bob(), "twice"), |r| {
        r.max_pulls = 2;
        r.tag = Some(tag);
        r.bytes = vec![1; 20];
    });
    let seq = put_one(s, r.clone());
    put_one(s, with(rec(alice(), bob(), "once"), |r| r.max_pulls = 1));
    let (first, exhausted) = served(s, alice(), bob(), "twice", 10);
    assert!(!exhausted);
    assert_eq!(first.meta.pulls, 1);
    let (second, exhausted) = served(s, alice(), bob(), "twice", 11);
    assert!(exhausted, "the second read of max_pulls = 2 exhausts it");
    assert_eq!((second.meta.seq, second.meta.pulls, second.bytes.clone()), (seq, 2, r.bytes.clone()));
    // Deleted everywhere.
    assert_eq!(s.get(&alice(), &bob(), "twice", 0).expect("get"), None);
    assert_eq!(s.read(&alice(), &bob(), "twice", 12).expect("read"), ReadOutcome::NotFound);
    assert_eq!(ids(&s.list(&query(alice(), bob()), 0).expect("list")), ["once"]);
    assert_eq!(s.list_by_tag(&tag, 0, 10, 0).expect("by tag"), Vec::new());
    assert_eq!(s.fetch_after(&alice(), &bob(), 0, 10, 0).expect("fetch").len(), 1);
    assert_eq!(s.expire(u64::MAX - 1, 10).expect("expire"), 0, "no expiry entry left behind");
    assert!(!s.delete(&alice(), &bob(), "twice").expect("delete"));
    assert_eq!(s.owner_usage(&alice()).expect("usage").records, 1);
    // Both reads were logged.
    let rows = s.usage(&alice(), None, None, 10).expect("usage");
    assert_eq!(rows.iter().map(|r| (r.read_at, r.bytes)).collect::<Vec<_>>(), [(10, 20), (11, 20)]);
    // max_pulls = 1: the first read exhausts it.
    let (record, exhausted) = served(s, alice(), bob(), "once", 20);
    assert!(exhausted);
    assert_eq!(record.meta.pulls, 1);
    assert_eq!(s.totals().expect("totals"), Usage::default());
    // The path can be written again, with a fresh count.
    put_one(s, r);
    let (again, exhausted) = served(s, alice(), bob(), "twice", 30);
    assert_eq!((again.meta.pulls, exhausted), (1, false));
}

fn usage_logs_every_read_of_a_large_commit<S: Store>(s: &S) {
    // Two owners' records read in one batch, interleaved, more reads than any one usage entry
    // of a backend may hold: every read is listed for its owner, in order, and a limit cuts
    // the list anywhere.
    let key = |owner: PublicKey, id: String| crate::ReadKey { owner, receiver: bob(), record_id: id };
    for i in 0..4 {
        put_one(s, rec(alice(), bob(), &format!("a{i}")));
        put_one(s, rec(carol(), bob(), &format!("c{i}")));
    }
    let mut reads = Vec::new();
    for n in 0..700 {
        reads.push(key(alice(), format!("a{}", n % 4)));
        if n % 3 == 0 {
            reads.push(key(carol(), format!("c{}", n % 4)));
        }
    }
    let outcomes = s.read_batch(&reads, 50).expect("batch");
    assert!(outcomes.iter().all(|o| matches!(o, ReadOutcome::Served { .. })));
    let ids = |owner: PublicKey, limit: usize| -> Vec<String> {
        s.usage(&owner, None, None, limit).expect("usage").into_iter().map(|r| r.record_id).collect()
    };
    let expected = |owner: PublicKey| -> Vec<String> {
        reads.iter().filter(|k| k.owner == owner).map(|k| k.record_id.clone()).collect()
    };
    assert_eq!(ids(alice(), 10_000), expected(alice()));
    assert_eq!(ids(carol(), 10_000), expected(carol()));
    for limit in [1, 255, 256, 257, 699] {
        assert_eq!(ids(alice(), limit), expected(alice())[..limit], "limit {limit}");
    }
    // A later read is listed after them.
    served(s, alice(), bob(), "a0", 60);
    let rows = s.usage(&alice(), None, None, 10_000).expect("usage");
    assert_eq!(rows.len(), 701);
    assert_eq!((rows[700].read_at, rows[700].record_id.as_str()), (60, "a0"));
    assert!(rows[..700].iter().all(|r| r.read_at == 50 && r.receiver == bob() && r.owner == alice()));
    assert_eq!(s.get(&alice(), &bob(), "a0", 60).expect("get").expect("stored").meta.pulls, 176);
}

fn usage_window<S: Store>(s: &S) {
    for id in ["u1", "u2", "u3"] {
        put_one(s, rec(alice(), bob(), id));
    }
    put_one(s, rec(alice(), carol(), "u1"));
    put_one(s, rec(dave(), bob(), "d"));
    // Reads at 10, 20 (twice, in this order), 30, 40; and dave's at 20.
    served(s, alice(), bob(), "u1", 10);
    served(s, alice(), bob(), "u3", 20);
    served(s, alice(), carol(), "u1", 20);
    served(s, dave(), bob(), "d", 20);
    served(s, alice(), bob(), "u2", 30);
    served(s, alice(), bob(), "u1", 40);
    let window = |after, before, limit| {
        s.usage(&alice(), after, before, limit)
            .expect("usage")
            .iter()
            .map(|r| (r.read_at, r.receiver, r.record_id.clone()))
            .collect::<Vec<_>>()
    };
    let all = window(None, None, 100);
    assert_eq!(
        all,
        vec![
            (10, bob(), "u1".to_owned()),
            (20, bob(), "u3".to_owned()),
            (20, carol(), "u1".to_owned()),
            (30, bob(), "u2".to_owned()),
            (40, bob(), "u1".to_owned()),
        ]
    );
    assert_eq!(window(Some(10), Some(30), 100), all[1..3]);
    assert_eq!(window(Some(9), Some(31), 100), all[..4]);
    assert_eq!(window(Some(10), None, 100), all[1..]);
    assert_eq!(window(None, Some(20), 100), all[..1]);
    assert_eq!(window(Some(20), Some(30), 100), Vec::new());
    assert_eq!(window(Some(40), None, 100), Vec::new());
    assert_eq!(window(Some(u64::MAX), None, 100), Vec::new());
    assert_eq!(window(None, Some(0), 100), Vec::new());
    assert_eq!(window(None, None, 2), all[..2]);
    assert_eq!(window(Some(10), None, 1), all[1..2]);
    assert_eq!(window(None, None, 0), Vec::new());
    assert_eq!(s.usage(&dave(), None, None, 10).expect("usage").len(), 1);
    assert_eq!(s.usage(&bob(), None, None, 10).expect("usage"), Vec::new());
}

fn delete<S: Store>(s: &S) {
    let tag = Tag([4; TAG_LEN]);
    let r = with(rec(alice(), bob(), "d"), |r| {
        r.tag = Some(tag);
        r.expires_at = 100;
    });
    put_one(s, r.clone());
    put_one(s, rec(alice(), bob(), "stay"));
    served(s, alice(), bob(), "d", 1);
    assert!(s.delete(&alice(), &bob(), "d").expect("delete"));
    assert!(!s.delete(&alice(), &bob(), "d").expect("delete again"));
    assert!(!s.delete(&alice(), &bob(), "never").expect("delete missing"));
    assert_eq!(s.get(&alice(), &bob(), "d", 0).expect("get"), None);
    assert_eq!(ids(&s.list(&query(alice(), bob()), 0).expect("list")), ["stay"]);
    assert_eq!(s.list_by_tag(&tag, 0, 10, 0).expect("by tag"), Vec::new());
    assert_eq!(s.fetch_after(&alice(), &bob(), 0, 10, 0).expect("fetch").len(), 1);
    assert_eq!(s.expire(1_000, 10).expect("expire"), 0, "its expiry entry is gone");
    assert_eq!(s.owner_usage(&alice()).expect("usage").records, 1);
    // Deleting an expired (not yet collected) record reports that it was there.
    put_one(s, with(r.clone(), |r| r.record_id = "old".into()));
    assert!(s.delete(&alice(), &bob(), "old").expect("delete"));
    // Re-put at a deleted path: new seq, no pulls.
    let seq = put_one(s, r);
    let got = s.get(&alice(), &bob(), "d", 0).expect("get").expect("stored");
    assert_eq!((got.meta.seq, got.meta.pulls), (seq, 0));
    // The usage log outlives the record.
    assert_eq!(s.usage(&alice(), None, None, 10).expect("usage").len(), 1);
}

fn accounts<S: Store>(s: &S) {
    assert_eq!(s.account(&alice()).expect("account"), None);
    let account = Account {
        key: alice(),
        status: AccountStatus::Active,
        created_at: 1_700_000_000_000,
        max_bytes: 1 << 30,
        max_records_per_day: 10_000,
    };
    s.put_account(&account).expect("put");
    assert_eq!(s.account(&alice()).expect("account"), Some(account.clone()));
    assert_eq!(s.account(&bob()).expect("account"), None);
    let replaced =
        Account { status: AccountStatus::Suspended, max_bytes: 0, max_records_per_day: 0, ..account };
    s.put_account(&replaced).expect("replace");
    assert_eq!(s.account(&alice()).expect("account"), Some(replaced.clone()));
    let other = Account { key: bob(), ..replaced.clone() };
    s.put_account(&other).expect("put");
    assert_eq!(s.account(&bob()).expect("account"), Some(other));
    assert_eq!(s.account(&alice()).expect("account"), Some(replaced));
    // Accounts are not records.
    assert_eq!(s.totals().expect("totals"), Usage::default());
    assert_eq!(s.last_seq(), 0);
}

fn owner_usage_and_totals<S: Store>(s: &S) {
    assert_eq!(s.totals().expect("totals"), Usage::default());
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage::default());
    let sized =
        |owner, receiver, id: &str, len: usize| with(rec(owner, receiver, id), |r| r.bytes = vec![0; len]);
    put_all(
        s,
        vec![
            sized(alice(), bob(), "a1", 100),
            sized(alice(), carol(), "a2", 50),
            sized(carol(), bob(), "c1", 7),
            with(sized(alice(), bob(), "a3", 1_000), |r| r.expires_at = 10),
            with(sized(carol(), bob(), "c2", 3), |r| r.max_pulls = 1),
        ],
    );
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage { records: 3, bytes: 1_150 });
    assert_eq!(s.owner_usage(&carol()).expect("usage"), Usage { records: 2, bytes: 10 });
    assert_eq!(s.owner_usage(&bob()).expect("usage"), Usage::default(), "receivers are not billed");
    assert_eq!(s.totals().expect("totals"), Usage { records: 5, bytes: 1_160 });
    // Duplicates and conflicts change nothing.
    let out = s.put_batch(&[sized(alice(), bob(), "a1", 100), sized(alice(), bob(), "a1", 1)]).expect("put");
    assert!(matches!(out[0], PutOutcome::Duplicate { .. }));
    assert_eq!(s.totals().expect("totals"), Usage { records: 5, bytes: 1_160 });
    // Expired but not yet removed: still counted.
    assert_eq!(s.owner_usage(&alice()).expect("usage").records, 3);
    assert_eq!(s.expire(10, 100).expect("expire"), 1);
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage { records: 2, bytes: 150 });
    assert!(s.delete(&alice(), &carol(), "a2").expect("delete"));
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage { records: 1, bytes: 100 });
    served(s, carol(), bob(), "c2", 1);
    assert_eq!(s.owner_usage(&carol()).expect("usage"), Usage { records: 1, bytes: 7 });
    served(s, carol(), bob(), "c1", 1);
    assert_eq!(
        s.owner_usage(&carol()).expect("usage"),
        Usage { records: 1, bytes: 7 },
        "reads are not deletes"
    );
    assert_eq!(s.totals().expect("totals"), Usage { records: 2, bytes: 107 });
    assert!(s.delete(&alice(), &bob(), "a1").expect("delete"));
    assert!(s.delete(&carol(), &bob(), "c1").expect("delete"));
    assert_eq!(s.owner_usage(&alice()).expect("usage"), Usage::default());
    assert_eq!(s.totals().expect("totals"), Usage::default());
}

fn last_seq<S: Store>(s: &S) {
    assert_eq!(s.last_seq(), 0);
    let seqs = put_all(s, vec![rec(alice(), bob(), "l1"), rec(alice(), bob(), "l2")]);
    assert_eq!(s.last_seq(), seqs[1]);
    // Duplicates, reads, deletes and expiry assign nothing.
    assert!(matches!(
        s.put_batch(&[rec(alice(), bob(), "l1")]).expect("put")[0],
        PutOutcome::Duplicate { .. }
    ));
    served(s, alice(), bob(), "l1", 1);
    assert!(s.delete(&alice(), &bob(), "l2").expect("delete"));
    assert!(s.delete(&alice(), &bob(), "l1").expect("delete"));
    s.expire(u64::MAX, 10).expect("expire");
    assert_eq!(s.last_seq(), seqs[1]);
    assert_eq!(put_one(s, rec(alice(), bob(), "l3")), seqs[1] + 1);
}

fn concurrent_writers_and_readers<S: Store>(s: &S) {
    const BATCHES: usize = 8;
    std::thread::scope(|scope| {
        for writer in 0..2u8 {
            scope.spawn(move || {
                let owner = key(10 + writer);
                for b in 0..BATCHES {
                    let batch: Vec<_> = (0..3).map(|i| rec(owner, bob(), &format!("w{b}-{i}"))).collect();
                    let seqs = put_all(s, batch);
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                    served(s, owner, bob(), &format!("w{b}-0"), 5);
                }
            });
        }
        for _ in 0..2 {
            scope.spawn(|| {
                for round in 0..20u8 {
                    let got = s.fetch_after(&key(10 + round % 2), &bob(), 0, 1_000, 0).expect("fetch");
                    assert!(got.windows(2).all(|w| w[0].meta.seq < w[1].meta.seq), "in order");
                    assert!(
                        got.iter().all(|r| r.bytes == format!("bytes of {}", r.meta.record_id).into_bytes())
                    );
                }
            });
        }
    });
    let mut all = s.fetch_after(&key(10), &bob(), 0, 1_000, 0).expect("fetch");
    all.extend(s.fetch_after(&key(11), &bob(), 0, 1_000, 0).expect("fetch"));
    assert_eq!(all.len(), 2 * BATCHES * 3);
    let mut seqs = rseqs(&all);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), all.len(), "sequence numbers are unique");
    assert_eq!(s.last_seq(), *seqs.last().expect("non-empty"));
    assert_eq!(s.totals().expect("totals").records, (2 * BATCHES * 3) as u64);
    assert_eq!(s.usage(&key(10), None, None, 100).expect("usage").len(), BATCHES);
}

// ---------------------------------------------------------------------------------------------
// Drops

/// A small deterministic mixer (tags and stamps spread over the whole space).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A tag whose first 32 bits are `head`, the rest filled from `n`.
fn tag_with_head(head: u32, n: u64) -> Tag {
    let mut tag = [0u8; TAG_LEN];
    tag[..4].copy_from_slice(&head.to_be_bytes());
    for (i, chunk) in tag[4..].chunks_mut(8).enumerate() {
        let bytes = mix(n ^ (i as u64) << 56).to_be_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    Tag(tag)
}

fn stamp_id(n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(n.wrapping_mul(4) + i as u64).to_be_bytes());
    }
    id
}

/// Drop number `n` under `tag`, paid with stamp `n` of epoch 7.
fn new_drop(tag: Tag, n: u64) -> NewDrop {
    NewDrop {
        tag,
        stamp_epoch: 7,
        stamp_id: stamp_id(n),
        stored_at: 1_000,
        expires_at: FOREVER,
        drop_hash: [n as u8; 32],
        bytes: format!("sealed drop {n}").into_bytes(),
    }
}

fn drop_stored(outcome: &DropOutcome) -> u64 {
    match outcome {
        DropOutcome::Stored { seq } => *seq,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn put_drops_all<S: Store>(s: &S, drops: &[NewDrop], cap: u32) -> Vec<u64> {
    s.put_drops(drops, cap).expect("put_drops").iter().map(drop_stored).collect()
}

fn dseqs(drops: &[StoredDrop]) -> Vec<u64> {
    drops.iter().map(|d| d.seq).collect()
}

fn prefix(bits: u8, value: u32) -> Prefix {
    Prefix::truncate(bits, value).expect("bits <= 32")
}

fn fetch<S: Store>(s: &S, p: &Prefix, after_seq: u64, limit: usize, now: u64) -> Vec<StoredDrop> {
    s.fetch_drops(p, after_seq, limit, now).expect("fetch_drops")
}

fn drop_round_trip<S: Store>(s: &S) {
    assert_eq!(s.put_drops(&[], 0).expect("empty batch"), Vec::new());
    assert_eq!(s.last_seq(), 0);
    let d = NewDrop {
        stored_at: 10,
        expires_at: 500,
        bytes: (0..=255u8).cycle().take(3_000).collect(),
        ..new_drop(tag_with_head(0xdead_beef, 1), 1)
    };
    let seq = drop_stored(&s.put_drops(std::slice::from_ref(&d), 0).expect("put")[0]);
    assert_eq!(s.last_seq(), seq);
    let expected = StoredDrop {
        seq,
        tag: d.tag,
        stored_at: 10,
        expires_at: 500,
        drop_hash: d.drop_hash,
        bytes: d.bytes.clone(),
    };
    for bits in [0, 2, 4, 13, 16, 32] {
        assert_eq!(fetch(s, &prefix(bits, 0xdead_beef), 0, 10, 10), vec![expected.clone()], "L={bits}");
    }
    assert_eq!(fetch(s, &prefix(32, 0xdead_beee), 0, 10, 10), Vec::new());
    assert_eq!(fetch(s, &prefix(1, 0), 0, 10, 10), Vec::new());
    assert!(s.stamp_spent(7, &d.stamp_id).expect("spent"));
    assert!(!s.stamp_spent(8, &d.stamp_id).expect("spent"), "a stamp is its epoch and id");
    assert!(!s.stamp_spent(7, &stamp_id(2)).expect("spent"));
    assert_eq!(s.drop_totals().expect("drop totals"), Usage { records: 1, bytes: 3_000 });
    assert_eq!(s.totals().expect("totals"), Usage::default(), "drops are not records");
    // Empty bytes round-trip too.
    let empty = NewDrop { bytes: Vec::new(), ..new_drop(tag_with_head(1, 2), 2) };
    let seq = put_drops_all(s, &[empty], 0)[0];
    let got = fetch(s, &prefix(32, 1), 0, 10, 0);
    assert_eq!((dseqs(&got), got[0].bytes.len()), (vec![seq], 0));
}

fn stamp_spent_across_batches<S: Store>(s: &S) {
    let first = new_drop(tag_with_head(0x1111_0000, 1), 1);
    let seq = put_drops_all(s, std::slice::from_ref(&first), 0)[0];
    let before = (s.drop_totals().expect("totals"), s.last_seq());
    // The same stamp on another drop, in another bucket, later.
    let again = NewDrop { tag: tag_with_head(0x2222_0000, 9), bytes: b"other".to_vec(), ..first.clone() };
    assert_eq!(s.put_drops(std::slice::from_ref(&again), 0).expect("put"), vec![DropOutcome::Spent]);
    assert_eq!(
        s.put_drops(std::slice::from_ref(&first), 0).expect("put"),
        vec![DropOutcome::Spent],
        "an exact retry too"
    );
    assert_eq!((s.drop_totals().expect("totals"), s.last_seq()), before, "nothing stored or numbered");
    assert_eq!(fetch(s, &Prefix::EMPTY, 0, 10, 0).len(), 1);
    assert_eq!(dseqs(&fetch(s, &prefix(32, 0x1111_0000), 0, 10, 0)), vec![seq]);
    assert_eq!(fetch(s, &prefix(32, 0x2222_0000), 0, 10, 0), Vec::new());
    // A mixed batch: the spent one is refused, the others stored in order.
    let out = s
        .put_drops(&[new_drop(tag_with_head(5, 2), 2), again, new_drop(tag_with_head(5, 3), 3)], 0)
        .expect("put");
    assert_eq!(out[1], DropOutcome::Spent);
    assert!(drop_stored(&out[0]) > seq && drop_stored(&out[2]) == drop_stored(&out[0]) + 1);
    // The same id in another epoch is another stamp.
    let other_epoch = NewDrop { stamp_epoch: 8, ..first };
    assert!(matches!(s.put_drops(&[other_epoch], 0).expect("put")[0], DropOutcome::Stored { .. }));
}

fn stamp_spent_within_batch<S: Store>(s: &S) {
    let a = new_drop(tag_with_head(0xabcd_0000, 1), 1);
    let a_twin = NewDrop { tag: tag_with_head(0x0000_0001, 2), bytes: b"twin".to_vec(), ..a.clone() };
    let b = new_drop(tag_with_head(0xabcd_0000, 3), 3);
    let out = s.put_drops(&[a.clone(), a_twin.clone(), b, a_twin], 0).expect("put");
    let first = drop_stored(&out[0]);
    assert_eq!(out[1], DropOutcome::Spent);
    assert_eq!(drop_stored(&out[2]), first + 1, "a refused drop takes no number");
    assert_eq!(out[3], DropOutcome::Spent);
    assert_eq!(s.last_seq(), first + 1);
    assert_eq!(s.drop_totals().expect("totals").records, 2);
    assert_eq!(fetch(s, &prefix(32, 1), 0, 10, 0), Vec::new());
    assert_eq!(fetch(s, &prefix(16, 0xabcd_0000), 0, 10, 0)[0].bytes, a.bytes);
    // A batch of nothing but spent stamps assigns nothing.
    assert_eq!(s.put_drops(&[a.clone(), a], 0).expect("put"), vec![DropOutcome::Spent; 2]);
    assert_eq!(s.last_seq(), first + 1);
}

fn bucket_full_does_not_spend_the_stamp<S: Store>(s: &S) {
    assert_eq!(DROP_BUCKET_BITS, 16);
    // Bucket 0x1234: heads that differ only after the first 16 bits share it.
    let in_bucket = |n: u64| new_drop(tag_with_head(0x1234_0000 | (mix(n) as u32 & 0xffff), n), n);
    assert_eq!(drop_bucket(&in_bucket(1).tag), 0x1234);
    put_drops_all(s, &[in_bucket(1), in_bucket(2)], 2);
    let third = in_bucket(3);
    assert_eq!(s.put_drops(std::slice::from_ref(&third), 2).expect("put"), vec![DropOutcome::BucketFull]);
    assert!(!s.stamp_spent(7, &third.stamp_id).expect("spent"), "BucketFull spends nothing");
    assert_eq!(s.drop_totals().expect("totals").records, 2);
    // Neighbouring buckets (one bit apart, in the 16th bit or the first) are not full.
    let next_bucket = NewDrop { tag: tag_with_head(0x1235_0000, 3), ..third.clone() };
    let far_bucket = new_drop(tag_with_head(0x9234_0000, 4), 4);
    let seqs = put_drops_all(s, &[next_bucket, far_bucket], 2);
    assert!(s.stamp_spent(7, &third.stamp_id).expect("spent"), "the same stamp was usable elsewhere");
    // A spent stamp into a full bucket is Spent (checked first).
    let spent_into_full = NewDrop { tag: in_bucket(9).tag, ..third };
    assert_eq!(s.put_drops(&[spent_into_full], 2).expect("put"), vec![DropOutcome::Spent]);
    // Within one batch, drops stored earlier count against the cap; a BucketFull drop's stamp
    // stays usable by a later drop of the same batch.
    let fresh = |n: u64| new_drop(tag_with_head(0x7777_0000 + n as u32, n), n);
    let retry_elsewhere = NewDrop { tag: tag_with_head(0x6666_0000, 99), ..fresh(12) };
    let out = s.put_drops(&[fresh(10), fresh(11), fresh(12), retry_elsewhere], 2).expect("put");
    assert!(matches!(out[0], DropOutcome::Stored { .. }) && matches!(out[1], DropOutcome::Stored { .. }));
    assert_eq!(out[2], DropOutcome::BucketFull);
    assert_eq!(drop_stored(&out[3]), drop_stored(&out[1]) + 1);
    // A larger cap, and cap 0 (no cap), admit more to the same bucket.
    assert!(matches!(s.put_drops(&[in_bucket(20)], 3).expect("put")[0], DropOutcome::Stored { .. }));
    assert_eq!(s.put_drops(&[in_bucket(21)], 3).expect("put"), vec![DropOutcome::BucketFull]);
    put_drops_all(s, &(30..40).map(in_bucket).collect::<Vec<_>>(), 0);
    assert_eq!(fetch(s, &prefix(16, 0x1234_0000), 0, 100, 0).len(), 2 + 1 + 10);
    assert!(seqs[1] > seqs[0]);
}

/// Drops spread over many buckets, with heads one bit away from `BASE` at every position, so
/// that every prefix length has matching and non-matching neighbours.
const BASE: u32 = 0xa5c3_5a3c;

fn spread_drops(count: u64) -> Vec<NewDrop> {
    (0..count)
        .map(|n| {
            let head = match n % 3 {
                0 => BASE ^ 1u32.checked_shl((n / 3 % 33) as u32).unwrap_or(0),
                1 => mix(n) as u32,
                _ => {
                    // BASE's first 32 - k bits, then k random bits.
                    let k = (n / 3 % 32) as u32;
                    BASE & (u32::MAX << k) | (mix(n) as u32).checked_shr(32 - k).unwrap_or(0)
                }
            };
            let mut d = new_drop(tag_with_head(head, n), n);
            if n % 7 == 3 {
                d.expires_at = 500;
            }
            d
        })
        .collect()
}

fn fetch_drops_by_prefix<S: Store>(s: &S) {
    let drops = spread_drops(450);
    let mut all = Vec::new();
    for (i, chunk) in drops.chunks(50).enumerate() {
        // Records in between: drop sequence numbers have gaps.
        put_one(s, rec(alice(), bob(), &format!("gap{i}")));
        let seqs = put_drops_all(s, chunk, 0);
        for (d, seq) in chunk.iter().zip(seqs) {
            all.push(StoredDrop {
                seq,
                tag: d.tag,
                stored_at: d.stored_at,
                expires_at: d.expires_at,
                drop_hash: d.drop_hash,
                bytes: d.bytes.clone(),
            });
        }
    }
    let buckets: std::collections::HashSet<u16> = all.iter().map(|d| drop_bucket(&d.tag)).collect();
    assert!(buckets.len() > 100, "tags cover many buckets");
    for bits in [0u8, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32] {
        let mut prefixes = vec![prefix(bits, BASE), prefix(bits, mix(u64::from(bits)) as u32)];
        if bits > 0 {
            // The sibling of BASE's prefix: differs in its last bit.
            prefixes.push(prefix(bits, BASE ^ (1 << (32 - u32::from(bits)))));
        }
        for p in prefixes {
            for now in [0, 500] {
                let expected: Vec<StoredDrop> =
                    all.iter().filter(|d| p.matches(&d.tag) && d.expires_at > now).cloned().collect();
                let got = fetch(s, &p, 0, 10_000, now);
                assert_eq!(dseqs(&got), dseqs(&expected), "prefix {p} at {now}");
                assert_eq!(got, expected, "prefix {p} at {now}: contents");
                // Paging with a cursor returns the same, in pages of 3.
                let mut paged = Vec::new();
                let mut cursor = 0;
                loop {
                    let page = fetch(s, &p, cursor, 3, now);
                    assert!(page.len() <= 3);
                    let Some(last) = page.last() else { break };
                    cursor = last.seq;
                    paged.extend(page);
                }
                assert_eq!(dseqs(&paged), dseqs(&expected), "prefix {p} at {now}: paged");
                // A cursor in the middle, and one between two matching drops.
                if let Some(middle) = expected.get(expected.len() / 2) {
                    let k = expected.len() / 2;
                    assert_eq!(dseqs(&fetch(s, &p, middle.seq, 10_000, now)), dseqs(&expected[k + 1..]));
                    assert_eq!(
                        dseqs(&fetch(s, &p, middle.seq - 1, 2, now)),
                        dseqs(&expected[k..(k + 2).min(expected.len())])
                    );
                }
                assert_eq!(fetch(s, &p, 0, 0, now), Vec::new());
                assert_eq!(fetch(s, &p, u64::MAX, 10, now), Vec::new());
                assert_eq!(fetch(s, &p, s.last_seq(), 10, now), Vec::new());
            }
        }
    }
    // Sanity of the fixture: the long prefixes of BASE match several drops.
    assert!(fetch(s, &prefix(32, BASE), 0, 10_000, 0).len() >= 10);
    assert!(fetch(s, &prefix(17, BASE), 0, 10_000, 0).len() >= 20);
}

fn expired_drops<S: Store>(s: &S) {
    let in_bucket = |n: u64, expires_at: u64| NewDrop {
        expires_at,
        bytes: vec![n as u8; 10],
        ..new_drop(tag_with_head(0x4242_0000 + n as u32, n), n)
    };
    let seqs = put_drops_all(s, &[in_bucket(1, 200), in_bucket(2, 100), in_bucket(3, FOREVER)], 3);
    let p = prefix(16, 0x4242_0000);
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 99)), seqs);
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 100)), vec![seqs[0], seqs[2]], "expires_at <= now is expired");
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 200)), vec![seqs[2]]);
    assert_eq!(dseqs(&fetch(s, &Prefix::EMPTY, 0, 10, 200)), vec![seqs[2]]);
    // Expired but not removed: still counted against the bucket and in the totals.
    assert_eq!(s.put_drops(&[in_bucket(4, FOREVER)], 3).expect("put"), vec![DropOutcome::BucketFull]);
    assert_eq!(s.drop_totals().expect("totals"), Usage { records: 3, bytes: 30 });
    assert_eq!(s.expire_drops(99, 10).expect("expire"), 0);
    assert_eq!(s.expire_drops(150, 0).expect("expire"), 0);
    assert_eq!(s.expire_drops(150, 10).expect("expire"), 1);
    assert_eq!(s.drop_totals().expect("totals"), Usage { records: 2, bytes: 20 });
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 0)), vec![seqs[0], seqs[2]], "removed everywhere");
    assert_eq!(dseqs(&fetch(s, &Prefix::EMPTY, 0, 10, 0)), vec![seqs[0], seqs[2]]);
    // The freed capacity is usable; the removed drop's stamp stays spent.
    let seq4 = put_drops_all(s, &[in_bucket(4, 300)], 3)[0];
    assert_eq!(s.put_drops(&[in_bucket(2, FOREVER)], 0).expect("put"), vec![DropOutcome::Spent]);
    // Removal in (expires_at, seq) order, `limit` at a time.
    assert_eq!(s.expire_drops(FOREVER - 1, 1).expect("expire"), 1);
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 0)), vec![seqs[2], seq4]);
    assert_eq!(s.expire_drops(FOREVER - 1, 10).expect("expire"), 1);
    assert_eq!(dseqs(&fetch(s, &p, 0, 10, 0)), vec![seqs[2]]);
    assert_eq!(s.expire_drops(FOREVER - 1, 10).expect("expire"), 0);
    assert_eq!(s.drop_totals().expect("totals"), Usage { records: 1, bytes: 10 });
    put_drops_all(s, &[in_bucket(5, 1), in_bucket(6, 1)], 3);
    assert_eq!(s.put_drops(&[in_bucket(7, 1)], 3).expect("put"), vec![DropOutcome::BucketFull]);
    // Records are not drops: `expire` leaves drops alone and `expire_drops` leaves records.
    put_one(s, with(rec(alice(), bob(), "r"), |r| r.expires_at = 1));
    assert_eq!(s.expire(1, 10).expect("expire"), 1);
    assert_eq!(s.drop_totals().expect("totals").records, 3);
    put_one(s, with(rec(alice(), bob(), "r"), |r| r.expires_at = 1));
    assert_eq!(s.expire_drops(1, 10).expect("expire"), 2);
    assert_eq!(s.totals().expect("totals").records, 1);
    assert_eq!(s.drop_totals().expect("totals"), Usage { records: 1, bytes: 10 });
}

fn prune_stamps<S: Store>(s: &S) {
    let stamped =
        |epoch: u64, n: u64| NewDrop { stamp_epoch: epoch, ..new_drop(tag_with_head(n as u32, n), n) };
    let drops: Vec<_> =
        (1..=3u64).flat_map(|epoch| (0..4).map(move |i| stamped(epoch, epoch * 10 + i))).collect();
    put_drops_all(s, &drops, 0);
    assert_eq!(s.prune_stamps(1, 100).expect("prune"), 0, "no epoch below 1");
    assert_eq!(s.prune_stamps(2, 0).expect("prune"), 0);
    assert_eq!(s.prune_stamps(2, 100).expect("prune"), 4);
    for d in &drops {
        assert_eq!(
            s.stamp_spent(d.stamp_epoch, &d.stamp_id).expect("spent"),
            d.stamp_epoch >= 2,
            "{}",
            d.stamp_epoch
        );
    }
    // `limit` at a time, oldest epoch first.
    assert_eq!(s.prune_stamps(FOREVER, 3).expect("prune"), 3);
    assert_eq!(drops.iter().filter(|d| s.stamp_spent(d.stamp_epoch, &d.stamp_id).expect("spent")).count(), 5);
    assert!(drops[8..].iter().all(|d| s.stamp_spent(d.stamp_epoch, &d.stamp_id).expect("spent")));
    assert_eq!(s.prune_stamps(3, 100).expect("prune"), 1);
    assert_eq!(s.prune_stamps(3, 100).expect("prune"), 0);
    // The drops stay; a forgotten stamp is no longer refused by the store (the relay refuses
    // its epoch).
    assert_eq!(s.drop_totals().expect("totals").records, 12);
    assert_eq!(fetch(s, &Prefix::EMPTY, 0, 100, 0).len(), 12);
    let reused = NewDrop { tag: tag_with_head(0xffff_ffff, 1), ..drops[0].clone() };
    assert!(matches!(s.put_drops(&[reused], 0).expect("put")[0], DropOutcome::Stored { .. }));
}

fn charge_issuance<S: Store>(s: &S) {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    assert_eq!(s.charge_issuance(&a, 100, 4, 10).expect("charge"), 4);
    assert_eq!(s.charge_issuance(&a, 100, 4, 10).expect("charge"), 4);
    assert_eq!(s.charge_issuance(&a, 100, 4, 10).expect("charge"), 2, "partial grant up to the maximum");
    assert_eq!(s.charge_issuance(&a, 100, 1, 10).expect("charge"), 0, "used up");
    assert_eq!(
        s.charge_issuance(&a, 100, 5, 12).expect("charge"),
        2,
        "a raised maximum grants the difference"
    );
    assert_eq!(s.charge_issuance(&a, 100, 5, 3).expect("charge"), 0, "a lowered maximum grants nothing");
    assert_eq!(s.charge_issuance(&a, 101, 7, 10).expect("charge"), 7, "per day");
    assert_eq!(s.charge_issuance(&a, 99, 20, 10).expect("charge"), 10);
    assert_eq!(s.charge_issuance(&b, 100, 3, 10).expect("charge"), 3, "per account");
    assert_eq!(s.charge_issuance(&b, 100, 0, 10).expect("charge"), 0);
    assert_eq!(s.charge_issuance(&b, 102, 5, 0).expect("charge"), 0);
    assert_eq!(s.charge_issuance(&b, 100, u32::MAX, u32::MAX).expect("charge"), u32::MAX - 3);
    assert_eq!(s.charge_issuance(&b, 100, 1, u32::MAX).expect("charge"), 0);
    assert_eq!(s.charge_issuance(&a, 101, 3, 10).expect("charge"), 3);
    assert_eq!(s.last_seq(), 0, "issuance assigns no sequence numbers");
    assert_eq!(s.drop_totals().expect("totals"), Usage::default());
}

fn drops_and_records_share_the_sequence<S: Store>(s: &S) {
    let r1 = put_one(s, rec(alice(), bob(), "r1"));
    let d = put_drops_all(s, &[new_drop(tag_with_head(1, 1), 1), new_drop(tag_with_head(2, 2), 2)], 0);
    let r2 = put_one(s, rec(alice(), bob(), "r2"));
    let d3 = put_drops_all(s, &[new_drop(tag_with_head(3, 3), 3)], 0)[0];
    assert_eq!(vec![r1, d[0], d[1], r2, d3], (r1..r1 + 5).collect::<Vec<_>>());
    assert_eq!(s.last_seq(), d3);
    // Removing the newest drop does not let its number be reused.
    assert_eq!(s.prune_stamps(FOREVER, 100).expect("prune"), 3);
    let short = NewDrop { expires_at: 5, ..new_drop(tag_with_head(4, 4), 4) };
    let d4 = put_drops_all(s, &[short], 0)[0];
    assert_eq!(s.expire_drops(5, 10).expect("expire"), 1);
    assert_eq!(put_one(s, rec(alice(), bob(), "r3")), d4 + 1);
    assert_eq!(s.totals().expect("totals").records, 3);
    assert_eq!(s.drop_totals().expect("totals").records, 3);
}

fn concurrent_drops_spend_each_stamp_once<S: Store>(s: &S) {
    const STAMPS: u64 = 40;
    let stored: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..3u64)
            .map(|writer| {
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for chunk in 0..STAMPS / 8 {
                        // Every writer tries every stamp, under its own tags.
                        let batch: Vec<_> = (chunk * 8..chunk * 8 + 8)
                            .map(|n| NewDrop {
                                tag: tag_with_head((writer as u32) << 28 | n as u32, n),
                                ..new_drop(Tag([0; TAG_LEN]), n)
                            })
                            .collect();
                        for (d, outcome) in batch.iter().zip(s.put_drops(&batch, 0).expect("put")) {
                            if let DropOutcome::Stored { seq } = outcome {
                                mine.push((seq, d.stamp_id));
                            }
                        }
                        let _ = fetch(s, &prefix(4, (writer as u32) << 28), 0, 1_000, 0);
                    }
                    mine.into_iter().map(|(seq, _)| seq).collect::<Vec<u64>>()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().expect("writer")).collect()
    });
    let mut all: Vec<u64> = stored.into_iter().flatten().collect();
    assert_eq!(all.len() as u64, STAMPS, "each stamp stored exactly once");
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, STAMPS);
    assert_eq!(fetch(s, &Prefix::EMPTY, 0, 1_000, 0).len() as u64, STAMPS);
}
