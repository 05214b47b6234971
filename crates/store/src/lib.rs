//! Relay storage: the [`Store`] trait that the relay engine uses, its embedded backend on
//! fjall (an LSM tree, chosen by measurement: see `ARCHITECTURE.md`), an in-memory backend for
//! engine tests, and a conformance suite every backend must pass.
//!
//! A store keeps outbox records under `/owner/outbox/receiver/recordId`, assigns each a
//! monotonic sequence number, indexes them by path, by outbox and sequence, by expiry and by
//! tag, counts reads against a pull limit, keeps the usage log that usage reports are built
//! from, and holds relay accounts. It also keeps *drops* (anonymous sealed envelopes posted
//! under a 160-bit tag, fetched by tag prefix), the postage stamps they spent, per-bucket
//! drop counts, and postage issuance counters. It knows nothing of HTTP, signatures or policy.

use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::tag::{Prefix, Tag};

mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod fjall_store;
mod memory_store;
mod read_cache;
mod recent;

pub use fjall_store::{FjallConfig, FjallStore};
pub use memory_store::MemoryStore;

/// A record accepted by the relay, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Outbox owner (the writer).
    pub owner: PublicKey,
    /// Receiver.
    pub receiver: PublicKey,
    /// Record id (already validated by the protocol rules).
    pub record_id: String,
    /// Optional 160-bit tag (indexed).
    pub tag: Option<Tag>,
    /// When the relay accepted it (unix ms).
    pub stored_at: u64,
    /// When it expires (unix ms).
    pub expires_at: u64,
    /// Reads allowed before it is deleted; 0 means unlimited.
    pub max_pulls: u32,
    /// `Message::record_hash` of the write; equal hashes at the same path mean the same write.
    pub record_hash: [u8; 32],
    /// The bytes served to the receiver (opaque to the store).
    pub bytes: Vec<u8>,
}

/// One keyspace of an LSM backend: how many files it is spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceStats {
    /// The keyspace (table) name.
    pub name: &'static str,
    /// Sorted tables on disk, over all levels.
    pub tables: usize,
    /// Tables in level 0 (flushed, not compacted yet): a backlog when it grows.
    pub l0_tables: usize,
    /// Blob files holding separated values (records' and drops' envelopes).
    pub blob_files: usize,
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored under a new sequence number.
    Stored {
        /// The assigned sequence number.
        seq: u64,
    },
    /// The same write (same path, same record hash) is already stored: nothing changed.
    Duplicate {
        /// The existing record's sequence number.
        seq: u64,
        /// The existing record's `stored_at`.
        stored_at: u64,
        /// The existing record's `expires_at`.
        expires_at: u64,
    },
    /// A different record already has this path: nothing changed.
    Conflict,
}

/// A record's metadata, as inventory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// Sequence number.
    pub seq: u64,
    /// Outbox owner.
    pub owner: PublicKey,
    /// Receiver.
    pub receiver: PublicKey,
    /// Record id.
    pub record_id: String,
    /// Tag, if any.
    pub tag: Option<Tag>,
    /// Accepted at (unix ms).
    pub stored_at: u64,
    /// Expires at (unix ms).
    pub expires_at: u64,
    /// Reads allowed (0 = unlimited).
    pub max_pulls: u32,
    /// Reads so far.
    pub pulls: u32,
    /// Size of the stored bytes.
    pub size: u32,
    /// Record hash.
    pub record_hash: [u8; 32],
}

/// A record with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Metadata.
    pub meta: RecordMeta,
    /// The bytes given at write time.
    pub bytes: Vec<u8>,
}

/// Which records of one outbox to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Outbox owner.
    pub owner: PublicKey,
    /// Receiver.
    pub receiver: PublicKey,
    /// Only `seq > after_seq`.
    pub after_seq: u64,
    /// Only `stored_at > after_ts`, if set.
    pub after_ts: Option<u64>,
    /// Only `stored_at < before_ts`, if set.
    pub before_ts: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// One read, as logged for usage reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Outbox owner (the account billed).
    pub owner: PublicKey,
    /// Who read.
    pub receiver: PublicKey,
    /// Which record.
    pub record_id: String,
    /// Bytes served.
    pub bytes: u32,
    /// When (unix ms).
    pub read_at: u64,
}

/// One record to serve, by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadKey {
    /// Outbox owner.
    pub owner: PublicKey,
    /// Receiver.
    pub receiver: PublicKey,
    /// Record id.
    pub record_id: String,
}

/// Most reads in one [`Store::read_batch`], and most records one [`Store::read_after_many`]
/// serves in all.
pub const MAX_READ_BATCH: usize = 1 << 16;

/// One outbox page to serve to its receiver: see [`Store::read_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRead {
    /// Outbox owner.
    pub owner: PublicKey,
    /// Receiver (the reader).
    pub receiver: PublicKey,
    /// Serve records with `seq > after_seq`.
    pub after_seq: u64,
    /// Most records of the page.
    pub limit: usize,
    /// Most record bytes of the page after its first record.
    pub max_bytes: usize,
}

/// One page served by [`Store::read_after_many`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedPage {
    /// The records served, in order, each with whether its read used it up (`exhausted` as
    /// in [`ReadOutcome::Served`]).
    pub records: Vec<(StoredRecord, bool)>,
    /// Whether the page stopped at a bound (its `limit`, its `max_bytes`, or the group's
    /// [`MAX_READ_BATCH`]) rather than at the end of the outbox: more records may follow the
    /// last one served. `false` means every live record after `after_seq` was served.
    pub more: bool,
}

/// Result of counting one read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "a read is served right away; boxing would add an allocation")]
pub enum ReadOutcome {
    /// No such record (or already expired or exhausted).
    NotFound,
    /// The record, served; `meta.pulls` includes this read. If this read used up the pull
    /// limit, the record has been deleted and `exhausted` is true.
    Served {
        /// The record.
        record: StoredRecord,
        /// Whether this was the last allowed read.
        exhausted: bool,
    },
}

/// How an account may use the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// May write.
    Active,
    /// Registered but may not write (suspended by the operator, or a lapsed contract).
    Suspended,
}

/// A relay account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's key.
    pub key: PublicKey,
    /// Status.
    pub status: AccountStatus,
    /// When it was created (unix ms).
    pub created_at: u64,
    /// Quota: bytes stored at once (0 = the relay default).
    pub max_bytes: u64,
    /// Quota: records accepted per day (0 = the relay default).
    pub max_records_per_day: u32,
}

/// Totals over the store, over one owner's outboxes, or over drops ([`Store::drop_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Records (or drops) stored.
    pub records: u64,
    /// Bytes of record (or drop) data stored.
    pub bytes: u64,
}

/// Bits of a tag that name its bucket: the unit of [`Store::put_drops`]'s `bucket_cap` (the
/// first 16 bits, so 65,536 buckets).
pub const DROP_BUCKET_BITS: u8 = 16;

/// The bucket of a tag: its first [`DROP_BUCKET_BITS`] bits.
pub fn drop_bucket(tag: &Tag) -> u16 {
    (tag.head() >> (32 - u32::from(DROP_BUCKET_BITS))) as u16
}

/// A drop accepted by the relay, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDrop {
    /// The drop's 160-bit tag (indexed by prefix).
    pub tag: Tag,
    /// The postage stamp's epoch (spent stamps are kept per epoch and pruned by epoch).
    pub stamp_epoch: u64,
    /// The postage stamp's spent id (unique per stamp).
    pub stamp_id: [u8; 32],
    /// When the relay accepted it (unix ms).
    pub stored_at: u64,
    /// When it expires (unix ms).
    pub expires_at: u64,
    /// SHA-256 of the envelope (for receipts).
    pub drop_hash: [u8; 32],
    /// The sealed envelope, opaque to the store.
    pub bytes: Vec<u8>,
}

/// What happened to one drop of a [`Store::put_drops`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropOutcome {
    /// Stored, and its stamp recorded as spent.
    Stored {
        /// The assigned sequence number (from the same counter as records).
        seq: u64,
    },
    /// The stamp was already spent (earlier, or by an earlier drop of this batch): nothing
    /// stored.
    Spent,
    /// The drop's bucket already holds `bucket_cap` live drops: nothing stored, and the stamp
    /// is **not** spent.
    BucketFull,
}

/// A stored drop, as [`Store::fetch_drops`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDrop {
    /// Sequence number (shared with records).
    pub seq: u64,
    /// The drop's tag.
    pub tag: Tag,
    /// Accepted at (unix ms).
    pub stored_at: u64,
    /// Expires at (unix ms).
    pub expires_at: u64,
    /// SHA-256 of the envelope.
    pub drop_hash: [u8; 32],
    /// The sealed envelope.
    pub bytes: Vec<u8>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full (or the quota of the filesystem is reached): writes fail, reads work.
    #[error("storage is full")]
    Full,
    /// The data on disk is damaged or was written by an incompatible version.
    #[error("store is corrupted or incompatible: {0}")]
    Corrupted(String),
    /// Any other I/O failure of the backend.
    #[error("storage I/O error: {0}")]
    Io(String),
}

/// The storage a relay runs on. Implementations are internally synchronized; the relay calls
/// [`Store::put_batch`] from one commit thread and everything else from many threads.
pub trait Store: Send + Sync + 'static {
    /// Stores a batch atomically and **durably**: when this returns `Ok`, every `Stored`
    /// record survives a crash (kill -9, power loss after the call returned). Sequence
    /// numbers are assigned in batch order and are greater than every earlier one.
    fn put_batch(&self, batch: &[NewRecord]) -> Result<Vec<PutOutcome>, StoreError>;

    /// The record at a path, if stored and not expired at `now`.
    fn get(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
        now: u64,
    ) -> Result<Option<StoredRecord>, StoreError>;

    /// Records of one outbox, in sequence order, not expired at `now`.
    fn list(&self, query: &ListQuery, now: u64) -> Result<Vec<RecordMeta>, StoreError>;

    /// Records (with bytes) of one outbox with `seq > after_seq`, in order, not expired at `now`.
    fn fetch_after(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Metadata of records carrying `tag`, with `seq > after_seq`, in order, not expired at `now`.
    fn list_by_tag(
        &self,
        tag: &Tag,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<RecordMeta>, StoreError>;

    /// Serves one read: counts it, logs it for usage reports, and deletes the record if the
    /// read reaches its pull limit. The count and the log entry are durable when this returns.
    fn read(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
        now: u64,
    ) -> Result<ReadOutcome, StoreError>;

    /// Serves several reads in one durable commit, in order, exactly as if [`Store::read`] were
    /// called for each (a record named twice is counted twice). Listen deliveries use this so
    /// that every record handed to a receiver is counted and logged without one fsync each.
    /// At most [`MAX_READ_BATCH`] keys.
    fn read_batch(&self, reads: &[ReadKey], now: u64) -> Result<Vec<ReadOutcome>, StoreError>;

    /// Serves the next page of one outbox to its receiver (a listen's push, a sync's page):
    /// the live records with `seq > after_seq`, oldest first, at most `limit` of them and, after
    /// the first, no more than `max_bytes` of record bytes in all. Each is counted and logged
    /// exactly as [`Store::read`] would count it, all in one commit, which need not be durable
    /// when this returns: a backend may let it become durable with its next durable write (it
    /// must survive the process being killed). A machine crash can then forget the last counts,
    /// so a record may be served once more than its pull limit and a usage report may miss the
    /// last reads: never a lost record, never a read charged that did not happen. Listens push
    /// records to many subscribers after every commit; an fsync per push would make the
    /// readers, not the writers, what bounds a relay. Returns the served
    /// records (with `exhausted` as in [`ReadOutcome::Served`]) in order; the cursor to resume
    /// from is the last one's `seq`, or `after_seq` when none was served.
    ///
    /// The default serves the one page through [`Store::read_after_many`].
    fn read_after(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
        now: u64,
    ) -> Result<Vec<(StoredRecord, bool)>, StoreError> {
        let page = PageRead { owner: *owner, receiver: *receiver, after_seq, limit, max_bytes };
        Ok(self.read_after_many(std::slice::from_ref(&page), now)?.pop().unwrap_or_default().records)
    }

    /// Serves several pages as [`Store::read_after`] would serve each, in order, in one commit
    /// (same durability): a group of listens woken by one write costs one commit, not one
    /// each. A record on two pages is counted twice, and one whose pull limit the first page
    /// reached is not on the second. At most [`MAX_READ_BATCH`] records are served in all:
    /// the pages after that come back short (with [`ServedPage::more`] set), and their readers
    /// resume from their cursors.
    ///
    /// The default is, for each page, [`Store::fetch_after`] then [`Store::read_batch`] (one
    /// commit per page); a backend that can walk the outboxes inside its write should override
    /// it.
    fn read_after_many(&self, pages: &[PageRead], now: u64) -> Result<Vec<ServedPage>, StoreError> {
        let mut left = MAX_READ_BATCH;
        let mut served = Vec::with_capacity(pages.len());
        for page in pages {
            let limit = page.limit.min(left);
            if page.after_seq == u64::MAX || limit == 0 {
                served.push(ServedPage {
                    records: Vec::new(),
                    more: page.after_seq != u64::MAX && page.limit > 0,
                });
                continue;
            }
            let mut records = self.fetch_after(&page.owner, &page.receiver, page.after_seq, limit, now)?;
            let mut more = records.len() >= limit;
            let mut total = 0usize;
            let keep = records
                .iter()
                .take_while(|r| {
                    let first = total == 0;
                    total = total.saturating_add(r.bytes.len());
                    first || total <= page.max_bytes
                })
                .count();
            more |= keep < records.len();
            records.truncate(keep);
            let keys: Vec<ReadKey> = records
                .iter()
                .map(|r| ReadKey {
                    owner: page.owner,
                    receiver: page.receiver,
                    record_id: r.meta.record_id.clone(),
                })
                .collect();
            let records: Vec<_> = self
                .read_batch(&keys, now)?
                .into_iter()
                .filter_map(|outcome| match outcome {
                    ReadOutcome::Served { record, exhausted } => Some((record, exhausted)),
                    ReadOutcome::NotFound => None,
                })
                .collect();
            left -= records.len().min(left);
            served.push(ServedPage { records, more });
        }
        Ok(served)
    }

    /// Deletes a record; returns whether it existed.
    fn delete(&self, owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> Result<bool, StoreError>;

    /// Deletes up to `limit` records whose `expires_at <= now`; returns how many.
    fn expire(&self, now: u64, limit: usize) -> Result<usize, StoreError>;

    /// Usage log of one owner's outboxes, `after_ts < read_at < before_ts`, oldest first.
    fn usage(
        &self,
        owner: &PublicKey,
        after_ts: Option<u64>,
        before_ts: Option<u64>,
        limit: usize,
    ) -> Result<Vec<UsageRow>, StoreError>;

    /// Creates or replaces an account (durably).
    fn put_account(&self, account: &Account) -> Result<(), StoreError>;

    /// An account, if registered.
    fn account(&self, key: &PublicKey) -> Result<Option<Account>, StoreError>;

    /// Records and bytes stored by one owner (for quotas).
    fn owner_usage(&self, owner: &PublicKey) -> Result<Usage, StoreError>;

    /// Records and bytes stored in total (for metrics).
    fn totals(&self) -> Result<Usage, StoreError>;

    /// The highest sequence number ever assigned (0 if none), to records or drops.
    fn last_seq(&self) -> u64;

    /// The storage engine's shape, one entry per keyspace, for operators' gauges (empty for a
    /// backend without one).
    fn keyspace_stats(&self) -> Vec<KeyspaceStats> {
        Vec::new()
    }

    /// Stores drops atomically and **durably** (the same guarantee as [`Store::put_batch`]:
    /// when `Ok` returns, every `Stored` drop *and* its spent stamp survive kill -9). In batch
    /// order, per drop:
    /// - [`DropOutcome::Spent`] if its stamp (epoch and id) is already recorded as spent, or
    ///   was spent by an earlier drop of this batch;
    /// - else [`DropOutcome::BucketFull`] if the drop's bucket (the first
    ///   [`DROP_BUCKET_BITS`] bits of its tag) already holds `bucket_cap` live drops
    ///   (0 = no cap);
    /// - else the stamp is recorded as spent, the drop gets the next sequence number (the same
    ///   counter as records, so [`Store::last_seq`] covers both) and is stored.
    ///
    /// A drop counts against its bucket from when it is stored until [`Store::expire_drops`]
    /// removes it (an expired drop not yet removed still counts, as expired
    /// records count in [`Store::totals`]).
    fn put_drops(&self, batch: &[NewDrop], bucket_cap: u32) -> Result<Vec<DropOutcome>, StoreError>;

    /// Whether a stamp is recorded as spent (an early check; [`Store::put_drops`] is the
    /// authority).
    fn stamp_spent(&self, epoch: u64, stamp_id: &[u8; 32]) -> Result<bool, StoreError>;

    /// Drops whose tag matches `prefix` ([`Prefix::matches`]) with `seq > after_seq`, in
    /// sequence order, not expired at `now`, at most `limit`.
    fn fetch_drops(
        &self,
        prefix: &Prefix,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredDrop>, StoreError>;

    /// Deletes up to `limit` drops with `expires_at <= now`, in `(expires_at, seq)` order,
    /// freeing their bucket capacity; returns how many.
    fn expire_drops(&self, now: u64, limit: usize) -> Result<usize, StoreError>;

    /// Forgets up to `limit` spent stamps of epochs `< before_epoch` (the relay refuses their
    /// stamps by epoch anyway), oldest epoch first; returns how many.
    fn prune_stamps(&self, before_epoch: u64, limit: usize) -> Result<usize, StoreError>;

    /// Drops stored (expired or not, until removed) and their bytes, in [`Usage`]'s `records`
    /// and `bytes` (for metrics and disk accounting).
    fn drop_totals(&self) -> Result<Usage, StoreError>;

    /// Postage issuance quota: durably adds up to `count` to `account`'s tokens issued on
    /// `day` without going over `max_per_day`; returns how many were granted (0 = used up).
    /// `account` is a 32-byte key (an account's public key bytes).
    fn charge_issuance(
        &self,
        account: &[u8; 32],
        day: u64,
        count: u32,
        max_per_day: u32,
    ) -> Result<u32, StoreError>;
}
