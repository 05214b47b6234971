//! [`FjallStore`]: the embedded backend, on the fjall LSM tree.
//!
//! # Layout
//!
//! One fjall database per store directory, with one keyspace per table. Integers in keys are
//! big-endian so that byte order is numeric order; values use the protocol's canonical
//! encoding (`pigeonhole_proto::wire`).
//!
//! | keyspace   | key                                   | value |
//! |------------|---------------------------------------|-------|
//! | `records`  | seq                                   | owner ‖ receiver ‖ var8(record id) ‖ flag tag ‖ stored_at ‖ expires_at ‖ max_pulls ‖ record_hash ‖ var32(bytes) |
//! | `pair_paths` | pair id ‖ record id                 | seq |
//! | `pair_outbox` | pair id ‖ seq                      | (empty) |
//! | `expiry`   | expires_at ‖ seq                      | (empty) |
//! | `tags`     | tag ‖ seq                             | (empty) |
//! | `pulls`    | seq                                   | u32 reads so far (absent = 0) |
//! | `usage`    | owner ‖ read_at ‖ commit number       | (receiver ‖ u32 bytes ‖ var8(record id))+, the owner's reads in one commit |
//! | `accounts` | account key                           | u8 status ‖ created_at ‖ max_bytes ‖ u32 max_records_per_day |
//! | `owners`   | owner                                 | u64 records ‖ u64 bytes (absent = none) |
//! | `drops`    | seq                                   | [20] tag ‖ stored_at ‖ expires_at ‖ drop_hash ‖ var32(bytes) |
//! | `drop_prefix` | u8 g ‖ u32 (tag head masked to g bits) ‖ seq, for g = 4, 8, …, 32 | u32 tag head ‖ u64 expires_at |
//! | `drop_expiry` | expires_at ‖ seq                   | (empty) |
//! | `stamps`   | u64 epoch ‖ [32] stamp id             | seq of the drop that spent it |
//! | `drop_buckets` | u16 bucket (first 16 tag bits)    | u64 live drops (absent = 0) |
//! | `issuance` | [32] account ‖ u64 day                | u32 tokens issued |
//! | `meta`     | `format`, `commit`, `last_seq`, `totals`, `drop_totals` | `pigeonhole-store v4`, u64, u64, u64 records ‖ u64 bytes, u64 drops ‖ u64 bytes |
//!
//! A pair id is the first 16 bytes of a tagged SHA-256 of owner ‖ receiver (`codec::pair_id`):
//! the two indexes of an outbox are keyed by it rather than by both 32-byte keys, as they are
//! what compaction rewrites. Every reader of them confirms the pair against the record it
//! loads, so two pairs with one id (not expected before some 2^64 pairs) cannot see each
//! other's records: a walk skips the other pair's, a lookup answers "not found", and a write to
//! a record id that another pair's live record holds under the shared id is a conflict.
//!
//! Records and drops are keyed by their sequence number (one counter for both), so new ones
//! append to the end of their keyspace; reads are counted in `pulls` so that a read does not
//! rewrite the record. Spent stamps are keyed by epoch first, so forgetting old epochs is a
//! scan of the start of `stamps`. Bucket counts and drop totals are written in the same batch
//! as the drops they count, so a restart needs no rescan.
//!
//! # The drop prefix index
//!
//! A recipient fetches the drops whose tag starts with its prefix of L bits, 0 ≤ L ≤ 32, after
//! a cursor. One index keyed by the tag head would serve a short prefix only by walking every
//! tag under it in tag order, not in sequence order; one index keyed by L-bit bucket would
//! need 33 entries per drop. `drop_prefix` keeps 8: one per granularity g ∈ {4, 8, …, 32},
//! keyed `g ‖ head masked to g bits ‖ seq`. A query of L bits uses g = 4·⌊L/4⌋: it seeks to
//! `g ‖ V masked ‖ after_seq + 1` and walks that g-bucket in sequence order, so the cursor costs
//! one seek and a bucket is never scanned from its beginning. The entries of the g-bucket
//! that do not match the last L − g (at most 3) bits are skipped on the index value alone
//! (it holds the full head and the expiry, so skipped and expired drops are never loaded).
//! Tags past the recipient's prefix are hash output, so about 2^(L−g) ≤ 8 small index
//! entries are read per drop returned; a sender who crafts tags to crowd the neighbours of a
//! prefix pays a stamp per drop, and costs a reader only those skipped 25-byte entries. For
//! L < 4 (g = 0) the query walks `drops` itself from the cursor, filtering on the tag at the
//! start of each value: such a prefix names at least 1/8 of the tag space. The price is 8
//! index entries of 25 bytes per drop written, small beside a drop of a kilobyte. Measured
//! with `benches/store.rs` on a busy 2-core machine: `put_drops` of 1,000 × 1 KiB drops ran at
//! 13–14k drops/s with these 8 granularities and the same within noise with 4 (8, 16, 24,
//! 32), as the durable commit dominates; on 100,000 drops, a fetch of 100 at L = 8 took
//! ~0.38 ms from the start or from a cursor in the middle alike, L = 16 ~18 µs, L = 7 (half
//! of the g = 4 entries skipped) ~0.66 ms, and L = 3 (walking `drops`) ~0.33 ms.
//!
//! # Format versions
//!
//! `meta/format` names the layout. v2 added the drop keyspaces and `meta/drop_totals`; a v1
//! store is a v2 store without drops. v3 dropped the `receiver` index (receiver ‖ seq), which
//! no endpoint read and every record paid for (an entry written, flushed and compacted): a v2
//! store is a v3 store with that keyspace. v4 keys the path and outbox indexes by pair id
//! (`pair_paths`, `pair_outbox`) instead of owner ‖ receiver (`paths`, `outbox`). Opening a
//! v1, v2 or v3 store upgrades it in place: every entry of `paths` and `outbox` is rewritten
//! under its pair id (runs of 2^18 entries sorted in memory and ingested as tables, past the
//! journal, so that restarts do not replay the rewrite), then the marker (and, from v1, the
//! zero drop totals, whose keyspaces must be empty) is written in one durable batch; only then
//! are the old keyspaces (`receiver`, `paths`, `outbox`) deleted. An upgrade cut short before
//! the marker is redone by the next open (the rewrite is idempotent), one cut short after it
//! has its old keyspaces deleted.
//! Any other version is refused, and a build from before a version refuses it.
//!
//! # Durability and the commit witness
//!
//! Every change is one fjall write batch, across all keyspaces, committed with [`DURABLE`]
//! (`PersistMode::SyncData`, i.e. `fdatasync`): the journal's data is on disk before the batch
//! becomes visible to readers and before the call returns. Each batch also bumps the `commit`
//! counter in `meta`.
//!
//! After the batch is durable, the counter is also written to a small file next to the
//! database, `pigeonhole-commit` (the *commit witness*; not fsynced, as it only needs to
//! survive the process, not the machine). The journal recovers by truncating at the first
//! damaged or incomplete entry, which is right for a write torn by a crash but would silently
//! drop acknowledged writes if the journal itself were truncated or damaged. On open, a store
//! whose recovered `commit` counter is lower than the witness has lost acknowledged writes,
//! and opening fails with [`StoreError::Corrupted`] instead of serving the rest.
//!
//! Writes are serialized by one mutex (the relay writes from one commit thread; reads that
//! count pulls also write). Reads take a fjall snapshot, so an index entry and the record it
//! points to are always seen together; an index entry without its record is corruption.
//!
//! # Reads after a recent cursor
//!
//! Under the write mutex the store also keeps the newest sequence numbers of each outbox
//! written to since it opened ([`FjallConfig::recent_outboxes`], `recent.rs`). A counted page
//! read (`read_after_many`) whose cursor they cover loads its records by sequence number
//! instead of walking `pair_outbox`, whose every table a walk must search (pair ids are
//! random). The list is a hint: a listed record that is gone is skipped, as a walk would skip
//! it, and a cursor it does not cover walks.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fjall::config::{FilterPolicy, FilterPolicyEntry, PartitioningPolicy, PinningPolicy};
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, OwnedWriteBatch, PersistMode, Readable,
    Snapshot,
};
use parking_lot::Mutex;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::tag::{Prefix, TAG_LEN, Tag};

use crate::codec::{
    DROP_INDEX_GRANULARITIES, KEY_LEN, PAIR_LEN, StoredMeta, be_u32, be_u64, bucket_key, check_new_drop,
    check_new_record, corrupted, decode_account, decode_drop, decode_drop_prefix, decode_pulls,
    decode_record, decode_usage, decode_usage_counters, drop_prefix_bucket, drop_prefix_key,
    drop_prefix_value, drop_value_tag, encode_account, encode_drop, encode_record, encode_usage_counters,
    encode_usage_read, expiry_key, issuance_key, outbox_key, outbox_prefix, pair_id, pair_outbox_key,
    pair_path_key, path_key, seq_key, seq_suffix, split_v3_pair_key, stamp_key, tag_key, usage_key,
    usage_key_read_at,
};
use crate::read_cache::ReadCache;
use crate::recent::{self, Recent};
use crate::{
    Account, DropOutcome, KeyspaceStats, ListQuery, MAX_READ_BATCH, NewDrop, NewRecord, PageRead, PutOutcome,
    ReadKey, ReadOutcome, RecordMeta, ServedPage, Store, StoreError, StoredDrop, StoredRecord, Usage,
    UsageRow, drop_bucket,
};

/// The format marker stored under `meta/format`.
pub(crate) const FORMAT: &str = "pigeonhole-store v4";
/// Entries in each of the in-memory read caches (accounts, owners' counters): about 2 MiB
/// together, and a relay's active writers fit.
const READ_CACHE_ENTRIES: usize = 16_384;
/// Most reads whose results and batch entries a group of pages reserves room for up front.
const READS_RESERVED: usize = 1024;
const FORMAT_PREFIX: &str = "pigeonhole-store v";
const FORMAT_VERSION: u64 = 4;
/// The earlier versions, upgraded in place on open (see the module documentation): v1 had
/// no drops, v2 a `receiver` index, v3 kept `paths` and `outbox` keyed by both public keys.
const OLDER_FORMATS: [(&str, u64); 3] =
    [("pigeonhole-store v1", 1), ("pigeonhole-store v2", 2), ("pigeonhole-store v3", 3)];
/// The keyspace of the receiver index, which v1 and v2 stores have and v3 deleted.
const LEGACY_RECEIVER_KEYSPACE: &str = "receiver";
/// The v3 (and earlier) path and outbox indexes, keyed owner ‖ receiver: rewritten keyed by
/// pair id into `pair_paths` and `pair_outbox` on upgrade, then deleted.
const LEGACY_PATHS_KEYSPACE: &str = "paths";
const LEGACY_OUTBOX_KEYSPACE: &str = "outbox";
/// Keyspaces of older formats that an upgrade deletes once the new marker is durable.
const LEGACY_KEYSPACE_NAMES: [&str; 3] =
    [LEGACY_RECEIVER_KEYSPACE, LEGACY_PATHS_KEYSPACE, LEGACY_OUTBOX_KEYSPACE];
/// Index entries rewritten per ingested run of the v4 upgrade (sorted in memory: a few tens of
/// megabytes). Tests use runs of a few entries, so that an upgrade spans many.
#[cfg(not(test))]
const UPGRADE_RUN: usize = 1 << 18;
#[cfg(test)]
const UPGRADE_RUN: usize = 16;
/// Level-0 tables the v4 upgrade lets pile up before it waits for compaction.
const UPGRADE_L0_TABLES: usize = 4;

const FORMAT_KEY: &[u8] = b"format";
const COMMIT_KEY: &[u8] = b"commit";
const LAST_SEQ_KEY: &[u8] = b"last_seq";
const TOTALS_KEY: &[u8] = b"totals";
const DROP_TOTALS_KEY: &[u8] = b"drop_totals";

/// File name of the commit witness inside the store directory.
const WITNESS_FILE: &str = "pigeonhole-commit";
const WITNESS_MAGIC: &[u8; 8] = b"PHCOMMIT";
/// The file fjall writes first when it creates a database.
const FJALL_MARKER: &str = "version";

const KEYSPACE_NAMES: [&str; 16] = [
    "records",
    "pair_paths",
    "pair_outbox",
    "expiry",
    "tags",
    "pulls",
    "usage",
    "accounts",
    "owners",
    "drops",
    "drop_prefix",
    "drop_expiry",
    "stamps",
    "drop_buckets",
    "issuance",
    "meta",
];

/// The keyspaces a v1 store did not have (empty when a v1 store is upgraded).
const DROP_KEYSPACE_NAMES: [&str; 6] =
    ["drops", "drop_prefix", "drop_expiry", "stamps", "drop_buckets", "issuance"];

/// Tuning of the embedded backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FjallConfig {
    /// Block cache size in bytes (fjall recommends 20–25% of memory, or the data set if it fits).
    pub cache_bytes: u64,
    /// Background flush and compaction threads; 0 keeps fjall's default (cores, at most 4).
    pub worker_threads: usize,
    /// Most bytes of journal kept before the oldest memtables are flushed to disk: a bound on
    /// the memory all memtables can hold together, and on what a restart replays. At least
    /// 64 MiB (the storage engine's minimum). The default, 128 MiB, is what sets how often the
    /// small-entry indexes are flushed: their memtables fill far slower than the journal, so
    /// journal pressure flushes them, and each flushed table is merged into all of level 1
    /// (their keys are random). At 64 MiB, compaction took 56–65 µs per write on 10 M records,
    /// at 128 MiB 41–42 µs (docs/PERFORMANCE.md, "What changed").
    pub journal_bytes: u64,
    /// Most bytes of one keyspace's memtable before it is flushed (applies to keyspaces this
    /// store creates; existing ones keep the size they were created with).
    pub memtable_bytes: u64,
    /// Runs [`FjallStore::verify`] (a full scan) before `open_with` returns.
    pub verify_on_open: bool,
    /// Deletes the directory when the store is dropped (for tests; see [`FjallStore::temporary`]).
    pub temporary: bool,
    /// Outboxes whose newest sequence numbers are kept in memory, so that a read after a
    /// recent cursor (a live listener's next page) loads its records by sequence number
    /// instead of walking the outbox index. Past this many outboxes written to, the list
    /// starts over. 0 turns it off.
    pub recent_outboxes: usize,
    /// Sequence numbers kept per outbox in that list: a reader further behind walks the index.
    pub recent_per_outbox: usize,
}

impl Default for FjallConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
            worker_threads: 0,
            journal_bytes: 128 * 1024 * 1024,
            memtable_bytes: 8 * 1024 * 1024,
            verify_on_open: false,
            temporary: false,
            recent_outboxes: recent::DEFAULT_OUTBOXES,
            recent_per_outbox: recent::DEFAULT_PER_OUTBOX,
        }
    }
}

/// How every batch is made durable: `fdatasync` of the journal. It writes the data and the
/// metadata needed to read it back (size, block allocation) and skips only timestamps, which
/// recovery never reads; `fsync` would add an inode write to every commit for nothing. New
/// journal files are made durable by the storage engine when it rotates them.
const DURABLE: PersistMode = PersistMode::SyncData;

struct Keyspaces {
    records: Keyspace,
    paths: Keyspace,
    outbox: Keyspace,
    expiry: Keyspace,
    tags: Keyspace,
    pulls: Keyspace,
    usage: Keyspace,
    accounts: Keyspace,
    owners: Keyspace,
    drops: Keyspace,
    drop_prefix: Keyspace,
    drop_expiry: Keyspace,
    stamps: Keyspace,
    drop_buckets: Keyspace,
    issuance: Keyspace,
    meta: Keyspace,
}

/// How a keyspace is read, which decides its tables' filters. A keyspace keeps the options it
/// was created with, so a store made before a change here keeps its old layout (it reads the
/// same either way); only new keyspaces get the new one.
///
/// The engine's default builds one bloom filter per table. Writing a table, it holds a hash of
/// every key until the table is done: a 64 MiB table of small index entries holds millions of
/// keys, so each compaction buffered tens of megabytes of hashes (32 MB in one, and its
/// growth copied it), two compactions at a time. A heap profile of the first ingest on a fresh
/// 10 M-record store caught it at over a quarter of the live heap at its peak, which was the
/// resident-memory target's thin margin. Filters cut into 4 KiB partitions bound that buffer to
/// one partition, and are cached a partition at a time rather than whole.
#[derive(Clone, Copy)]
enum Role {
    /// Sealed envelopes, kept apart in blob files and found by sequence number through an
    /// index entry, so a lookup always finds its key: the last level, which holds most keys,
    /// builds no filter; the levels above build partitioned ones below level 0.
    Envelopes,
    /// Large keyspaces that point lookups often miss (a new record's path, a record never
    /// read, a stamp never spent): partitioned filters below level 0.
    Lookups,
    /// Only ever walked in key order (outboxes, expiries, tags, drops by prefix): a filter
    /// answers point lookups only, so none is built.
    Walks,
    /// Small keyspaces read on every request (accounts, usage): the engine's default, one
    /// filter per table, a few kilobytes.
    Small,
}

impl Role {
    fn options(self, base: KeyspaceCreateOptions) -> KeyspaceCreateOptions {
        // Level 0 holds flushed memtables (8 MiB by default, a few hundred thousand keys at
        // most): one whole filter each, the cheapest to consult, and these are the tables every
        // lookup consults. Compaction writes the levels below in 64 MiB tables: partitioned.
        let partitioned = |options: KeyspaceCreateOptions| {
            options.filter_block_partitioning_policy(PartitioningPolicy::new([false, true]))
        };
        match self {
            // Records and drops carry the sealed envelopes (about a kilobyte and more): kept
            // apart from the keys in blob files, compaction moves small pointers instead of
            // rewriting every envelope at each level, which is what bounds write throughput on
            // a large store. (Stores made before this keep their envelopes inline.)
            Self::Envelopes => partitioned(base)
                .expect_point_read_hits(true)
                .with_kv_separation(Some(KvSeparationOptions::default())),
            Self::Lookups => partitioned(base),
            Self::Walks => base.filter_policy(FilterPolicy::all(FilterPolicyEntry::None)),
            Self::Small => base,
        }
    }
}

impl Keyspaces {
    fn open(db: &Database, memtable_bytes: u64) -> Result<Self, StoreError> {
        // No filter or index block is pinned in memory: they live in the block cache like any
        // other block, so the cache's size bounds them. Pinned (the engine pins the newest
        // tables' blocks), they outlive the level they were pinned for: compaction moves a
        // table that overlaps nothing below it down whole, keeping its pinned blocks, and
        // keyspaces whose keys grow with time (sequence numbers, expiries, one receiver's
        // records) have every table moved that way. A heap profile of a 10-minute soak had them
        // at 30 MB and growing with every record written.
        let base = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(memtable_bytes)
                .filter_block_pinning_policy(PinningPolicy::all(false))
                .index_block_pinning_policy(PinningPolicy::all(false))
        };
        let open = |name: &str, role: Role| db.keyspace(name, || role.options(base())).map_err(fjall_error);
        Ok(Self {
            records: open("records", Role::Envelopes)?,
            paths: open("pair_paths", Role::Lookups)?,
            outbox: open("pair_outbox", Role::Walks)?,
            expiry: open("expiry", Role::Walks)?,
            tags: open("tags", Role::Walks)?,
            pulls: open("pulls", Role::Lookups)?,
            usage: open("usage", Role::Small)?,
            accounts: open("accounts", Role::Small)?,
            owners: open("owners", Role::Small)?,
            drops: open("drops", Role::Envelopes)?,
            drop_prefix: open("drop_prefix", Role::Walks)?,
            drop_expiry: open("drop_expiry", Role::Walks)?,
            stamps: open("stamps", Role::Lookups)?,
            drop_buckets: open("drop_buckets", Role::Small)?,
            issuance: open("issuance", Role::Small)?,
            meta: open("meta", Role::Small)?,
        })
    }

    fn all(&self) -> [(&'static str, &Keyspace); 16] {
        [
            ("records", &self.records),
            ("pair_paths", &self.paths),
            ("pair_outbox", &self.outbox),
            ("expiry", &self.expiry),
            ("tags", &self.tags),
            ("pulls", &self.pulls),
            ("usage", &self.usage),
            ("accounts", &self.accounts),
            ("owners", &self.owners),
            ("drops", &self.drops),
            ("drop_prefix", &self.drop_prefix),
            ("drop_expiry", &self.drop_expiry),
            ("stamps", &self.stamps),
            ("drop_buckets", &self.drop_buckets),
            ("issuance", &self.issuance),
            ("meta", &self.meta),
        ]
    }
}

/// The relay's embedded store: fjall keyspaces in one directory, every write durable before
/// it returns.
///
/// Layout (one keyspace per table, big-endian integers in keys): `records` seq → record;
/// `pair_paths` pair‖id → seq; `pair_outbox` pair‖seq (pair: a 16-byte hash of owner‖receiver);
/// `expiry` expires_at‖seq; `tags` tag‖seq; `pulls` seq → reads; `usage`
/// owner‖read_at‖commit → read; `accounts`; `owners` owner → records‖bytes; `drops` seq →
/// drop; `drop_prefix` g‖masked head‖seq; `drop_expiry` expires_at‖seq; `stamps` epoch‖id;
/// `drop_buckets` bucket → live drops; `issuance` account‖day → issued; `meta` (format
/// `pigeonhole-store v4`, commit counter, last seq, totals, drop totals; v1 to v3 stores are
/// upgraded in place on open).
///
/// Every write (`put_batch`, `put_drops`, `read`, `delete`, `expire`, `expire_drops`,
/// `prune_stamps`, `put_account`, `charge_issuance`) is one atomic batch,
/// fsynced before it returns and before readers can see it; writes are serialized, reads run
/// concurrently on snapshots. Once a write has failed (disk full, I/O error), the engine
/// refuses every later write until the store is reopened; reads keep working. On open, a
/// directory that is not a store, a store of another format, a damaged store, or one that lost
/// acknowledged writes (its journal recovers to an older commit than the one recorded in the
/// `pigeonhole-commit` witness file) is refused with [`StoreError::Corrupted`].
pub struct FjallStore {
    // Field order matters: the keyspace handles go before the database so that a temporary
    // store's directory is removed once the last handle is gone.
    ks: Keyspaces,
    db: Database,
    dir: PathBuf,
    write: Mutex<WriteState>,
    last_seq: AtomicU64,
    /// Set when a write failed for lack of space: fjall then refuses every later write, and
    /// those refusals are reported as [`StoreError::Full`] too.
    full: AtomicBool,
    /// Accounts and owners' counters held in memory: the relay reads both for every write.
    accounts_cache: ReadCache<Account>,
    owners_cache: ReadCache<Usage>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").field("dir", &self.dir).field("last_seq", &self.last_seq()).finish()
    }
}

struct WriteState {
    commit: u64,
    last_seq: u64,
    witness: Witness,
    /// The newest records of each outbox written to, for reads after a recent cursor.
    recent: Recent,
}

/// The commit witness file: `PHCOMMIT ‖ u64 counter ‖ u64 !counter`.
struct Witness {
    file: File,
}

impl Witness {
    fn encode(counter: u64) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(WITNESS_MAGIC);
        out[8..16].copy_from_slice(&counter.to_be_bytes());
        out[16..].copy_from_slice(&(!counter).to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<u64> {
        if bytes.len() != 24 || &bytes[..8] != WITNESS_MAGIC {
            return None;
        }
        let counter = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        let check = u64::from_be_bytes(bytes[16..].try_into().ok()?);
        (check == !counter).then_some(counter)
    }

    /// Reads the witness of `dir`: `Ok(None)` if there is none.
    fn read(dir: &Path) -> Result<Option<u64>, StoreError> {
        let path = dir.join(WITNESS_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(file) => file
                .take(64)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(e, "reading the commit witness"))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e, "opening the commit witness")),
        };
        Witness::decode(&bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupted(format!("the commit witness {} is damaged", path.display())))
    }

    /// Creates the witness with `counter`, durably (written aside, fsynced, renamed).
    fn create(dir: &Path, counter: u64) -> Result<(), StoreError> {
        let ctx = "creating the commit witness";
        let tmp = dir.join(format!("{WITNESS_FILE}.tmp"));
        let mut file = File::create(&tmp).map_err(|e| io_error(e, ctx))?;
        file.write_all(&Self::encode(counter)).map_err(|e| io_error(e, ctx))?;
        file.sync_all().map_err(|e| io_error(e, ctx))?;
        fs::rename(&tmp, dir.join(WITNESS_FILE)).map_err(|e| io_error(e, ctx))?;
        // Best effort: directories cannot be opened for syncing on every platform.
        if let Ok(d) = File::open(dir) {
            d.sync_all().ok();
        }
        Ok(())
    }

    fn open(dir: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join(WITNESS_FILE))
            .map_err(|e| io_error(e, "opening the commit witness"))?;
        Ok(Self { file })
    }

    /// Records that commit `counter` is durable. Not fsynced: the witness must survive the
    /// process (kill -9), and after a power loss a stale witness only means less checking.
    fn record(&mut self, counter: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&Self::encode(counter))
    }
}

fn io_error(e: io::Error, context: &str) -> StoreError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::Full,
        // The engine seeks and reads at offsets and lengths it finds in its files: bad ones
        // come from damaged files.
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
            StoreError::Corrupted(format!("{context}: {e}"))
        }
        _ => StoreError::Io(format!("{context}: {e}")),
    }
}

/// Maps fjall's errors: no space → `Full`; checksum, decoding, version and recovery failures →
/// `Corrupted`; everything else → `Io`.
fn fjall_error(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(e) => io_error(e, "storage engine"),
        fjall::Error::Storage(fjall::LsmError::Io(e)) => io_error(e, "storage engine"),
        fjall::Error::Storage(e) => StoreError::Corrupted(format!("storage engine tables: {e:?}")),
        fjall::Error::JournalRecovery(e) => StoreError::Corrupted(format!("storage engine journal: {e}")),
        fjall::Error::InvalidVersion(v) => {
            StoreError::Corrupted(format!("storage engine format version {v:?} is missing or unknown"))
        }
        e @ (fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::Unrecoverable) => StoreError::Corrupted(format!("storage engine: {e:?}")),
        fjall::Error::Poisoned => StoreError::Io(
            "the storage engine refuses writes after an earlier write failed; restart the relay".into(),
        ),
        fjall::Error::Locked => StoreError::Io("the store is open in another process".into()),
        e => StoreError::Io(format!("storage engine: {e:?}")),
    }
}

/// Maps an error of the engine while it recovers a store: a file it expects that is missing or
/// unreadable is damage to the store, not a passing I/O failure.
fn open_error(e: fjall::Error) -> StoreError {
    let kind = match &e {
        fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Some(e.kind()),
        _ => None,
    };
    match (kind, fjall_error(e)) {
        (Some(io::ErrorKind::NotFound | io::ErrorKind::Other), StoreError::Io(msg)) => {
            StoreError::Corrupted(format!("recovering the store: {msg}"))
        }
        (_, mapped) => mapped,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// One write batch being built under the write lock: the fjall batch plus the owner and total
/// counters it changes, written once at the end.
struct Change<'a> {
    ks: &'a Keyspaces,
    /// The owners' counters as of the last commit, for those held in memory.
    owners_cache: &'a ReadCache<Usage>,
    snap: Snapshot,
    batch: OwnedWriteBatch,
    owners: HashMap<[u8; KEY_LEN], Usage>,
    totals: Usage,
    counters_changed: bool,
    /// Drop totals and the bucket counts this change touches, loaded on first use.
    drops: Option<DropCounters>,
}

/// The drop counters a [`Change`] updates, written once at commit.
struct DropCounters {
    totals: Usage,
    buckets: HashMap<u16, u64>,
}

impl<'a> Change<'a> {
    /// A change to commit under the write lock, which `_locked` proves is held: the snapshot
    /// and the cached counters are then both as of the last commit.
    fn new(store: &'a FjallStore, locked: &WriteState) -> Result<Self, StoreError> {
        Self::with_capacity(store, locked, 0)
    }

    /// [`Change::new`] with room for `items` batch entries, for a change known to write many:
    /// the batch then does not grow (and copy itself) as it fills.
    fn with_capacity(store: &'a FjallStore, _locked: &WriteState, items: usize) -> Result<Self, StoreError> {
        let snap = store.db.snapshot();
        let totals = match snap.get(&store.ks.meta, TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta")?,
            None => Usage::default(),
        };
        Ok(Self {
            ks: &store.ks,
            owners_cache: &store.owners_cache,
            snap,
            // The persistence mode is set when the batch is committed (`commit_as`).
            batch: OwnedWriteBatch::with_capacity(store.db.clone(), items),
            owners: HashMap::new(),
            totals,
            counters_changed: false,
            drops: None,
        })
    }

    fn drop_counters(&mut self) -> Result<&mut DropCounters, StoreError> {
        let counters = match self.drops.take() {
            Some(counters) => counters,
            None => {
                let totals = match self.snap.get(&self.ks.meta, DROP_TOTALS_KEY).map_err(fjall_error)? {
                    Some(v) => decode_usage_counters(&v, "meta")?,
                    None => return Err(corrupted("meta", "the drop totals are missing")),
                };
                DropCounters { totals, buckets: HashMap::new() }
            }
        };
        Ok(self.drops.insert(counters))
    }

    /// The live drop count of `bucket`, as this change will leave it.
    fn bucket(&mut self, bucket: u16) -> Result<&mut u64, StoreError> {
        let known = self.drops.as_ref().is_some_and(|c| c.buckets.contains_key(&bucket));
        let stored = if known {
            0
        } else {
            match self.snap.get(&self.ks.drop_buckets, bucket_key(bucket)).map_err(fjall_error)? {
                Some(v) => be_u64(&v, "drop_buckets")?,
                None => 0,
            }
        };
        Ok(self.drop_counters()?.buckets.entry(bucket).or_insert(stored))
    }

    /// Stores a drop under `seq` with its index entries and its spent stamp. The caller has
    /// counted it in its bucket.
    fn insert_drop(&mut self, seq: u64, drop: &NewDrop, stamp: [u8; 40]) -> Result<(), StoreError> {
        let ks = self.ks;
        let b = &mut self.batch;
        let head = drop.tag.head();
        b.insert(&ks.drops, seq_key(seq), encode_drop(drop));
        for granularity in DROP_INDEX_GRANULARITIES {
            b.insert(
                &ks.drop_prefix,
                drop_prefix_key(granularity, head, seq),
                drop_prefix_value(head, drop.expires_at),
            );
        }
        b.insert(&ks.drop_expiry, expiry_key(drop.expires_at, seq), []);
        b.insert(&ks.stamps, stamp, seq_key(seq));
        let totals = &mut self.drop_counters()?.totals;
        totals.records += 1;
        totals.bytes += drop.bytes.len() as u64;
        Ok(())
    }

    /// Removes a drop and its index entries, and uncounts it from its bucket and the totals.
    fn remove_drop(&mut self, drop: &StoredDrop) -> Result<(), StoreError> {
        let ks = self.ks;
        let b = &mut self.batch;
        let (seq, head) = (drop.seq, drop.tag.head());
        b.remove(&ks.drops, seq_key(seq));
        for granularity in DROP_INDEX_GRANULARITIES {
            b.remove(&ks.drop_prefix, drop_prefix_key(granularity, head, seq));
        }
        b.remove(&ks.drop_expiry, expiry_key(drop.expires_at, seq));
        // Saturating: a damaged counter must not stop deletions; `verify` reports it.
        let live = self.bucket(drop_bucket(&drop.tag))?;
        *live = live.saturating_sub(1);
        let totals = &mut self.drop_counters()?.totals;
        totals.records = totals.records.saturating_sub(1);
        totals.bytes = totals.bytes.saturating_sub(drop.bytes.len() as u64);
        Ok(())
    }

    fn owner(&mut self, owner: &PublicKey) -> Result<&mut Usage, StoreError> {
        let key = owner.to_bytes();
        if !self.owners.contains_key(&key) {
            let current = match self.owners_cache.get(&key) {
                Some(cached) => cached,
                None => match self.snap.get(&self.ks.owners, key).map_err(fjall_error)? {
                    Some(v) => decode_usage_counters(&v, "owners")?,
                    None => Usage::default(),
                },
            };
            self.owners.insert(key, current);
        }
        Ok(self.owners.entry(key).or_default())
    }

    /// The record with sequence number `seq` as of the snapshot.
    fn record(&self, seq: u64) -> Result<Option<fjall::Slice>, StoreError> {
        self.snap.get(&self.ks.records, seq_key(seq)).map_err(fjall_error)
    }

    /// The sequence number stored at a path.
    fn seq_at(&self, path: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.snap.get(&self.ks.paths, path).map_err(fjall_error)? {
            Some(v) => Ok(Some(be_u64(&v, "paths")?)),
            None => Ok(None),
        }
    }

    /// Stores `record` as `seq` in outbox `pair` at `path` (its `paths` key).
    fn insert(
        &mut self,
        seq: u64,
        record: &NewRecord,
        pair: &[u8; PAIR_LEN],
        path: Vec<u8>,
    ) -> Result<(), StoreError> {
        let ks = self.ks;
        let b = &mut self.batch;
        b.insert(&ks.records, seq_key(seq), encode_record(record));
        b.insert(&ks.paths, path, seq_key(seq));
        b.insert(&ks.outbox, pair_outbox_key(pair, seq), []);
        b.insert(&ks.expiry, expiry_key(record.expires_at, seq), []);
        if let Some(tag) = &record.tag {
            b.insert(&ks.tags, tag_key(tag, seq), []);
        }
        let size = record.bytes.len() as u64;
        let owner = self.owner(&record.owner)?;
        owner.records += 1;
        owner.bytes += size;
        self.totals.records += 1;
        self.totals.bytes += size;
        self.counters_changed = true;
        Ok(())
    }

    /// Removes a record and every index entry. `keep_path` leaves the `paths` entry to be
    /// overwritten by the same batch (one batch must not both remove and insert a key).
    fn remove(&mut self, seq: u64, meta: &StoredMeta, keep_path: bool) -> Result<(), StoreError> {
        let ks = self.ks;
        let b = &mut self.batch;
        b.remove(&ks.records, seq_key(seq));
        if !keep_path {
            b.remove(&ks.paths, path_key(&meta.owner, &meta.receiver, &meta.record_id));
        }
        b.remove(&ks.outbox, outbox_key(&meta.owner, &meta.receiver, seq));
        b.remove(&ks.expiry, expiry_key(meta.expires_at, seq));
        if let Some(tag) = &meta.tag {
            b.remove(&ks.tags, tag_key(tag, seq));
        }
        b.remove(&ks.pulls, seq_key(seq));
        let size = u64::from(meta.size);
        // Saturating: a damaged counter must not stop deletions; `verify` reports it.
        let owner = self.owner(&meta.owner)?;
        owner.records = owner.records.saturating_sub(1);
        owner.bytes = owner.bytes.saturating_sub(size);
        self.totals.records = self.totals.records.saturating_sub(1);
        self.totals.bytes = self.totals.bytes.saturating_sub(size);
        self.counters_changed = true;
        Ok(())
    }
}

/// Point lookups a walk makes before it switches to an iterator over `records`.
const LOOKUPS_FIRST: usize = 8;
/// Entries of other records an iterating walk may skip per record it loads (plus
/// [`SKIPS_SLACK`]) before it goes back to point lookups.
const SKIPS_PER_RECORD: usize = 4;
const SKIPS_SLACK: usize = 64;

/// Loads the records of one walk of an index (an outbox, a receiver, a tag), in increasing
/// sequence order, from a snapshot.
///
/// A point lookup searches the memtables and every level of `records` again for each record.
/// A walk that goes on past its first [`LOOKUPS_FIRST`] records instead keeps one iterator
/// over `records` from the next sequence number and steps it forward: the records in between
/// (other outboxes' records) are stepped over on their keys alone, without loading their
/// envelopes. Where the walk's records are sparse in `records` (one outbox among many busy
/// ones), stepping would cost more than searching: past a budget of skipped entries the walk
/// goes back to point lookups.
struct RecordLoader<'a> {
    snap: &'a Snapshot,
    records: &'a Keyspace,
    /// Where the records come from: the index walked, for error messages.
    index: &'static str,
    loaded: usize,
    iterated: usize,
    skipped: usize,
    iter: Option<fjall::Iter>,
    sparse: bool,
}

impl<'a> RecordLoader<'a> {
    fn new(store: &'a FjallStore, snap: &'a Snapshot, index: &'static str) -> Self {
        Self {
            snap,
            records: &store.ks.records,
            index,
            loaded: 0,
            iterated: 0,
            skipped: 0,
            iter: None,
            sparse: false,
        }
    }

    /// The stored value of record `seq`, which must be above every seq loaded before (an
    /// index entry without its record is corruption).
    fn load(&mut self, seq: u64) -> Result<fjall::Slice, StoreError> {
        self.loaded += 1;
        let want = seq_key(seq);
        if self.loaded > LOOKUPS_FIRST && !self.sparse {
            let (snap, records) = (self.snap, self.records);
            let iter = self.iter.get_or_insert_with(|| snap.range(records, want.to_vec()..));
            self.iterated += 1;
            loop {
                let Some(guard) = iter.next() else { return Err(self.missing(seq)) };
                let (key, value) = guard.into_inner_if(|key| key.as_ref() == want).map_err(fjall_error)?;
                match (key.as_ref().cmp(&want[..]), value) {
                    (std::cmp::Ordering::Equal, Some(value)) => return Ok(value),
                    (std::cmp::Ordering::Less, _) => {
                        self.skipped += 1;
                        if self.skipped > SKIPS_PER_RECORD * self.iterated + SKIPS_SLACK {
                            self.sparse = true;
                            self.iter = None;
                            break;
                        }
                    }
                    _ => return Err(self.missing(seq)),
                }
            }
        }
        self.snap.get(self.records, want).map_err(fjall_error)?.ok_or_else(|| self.missing(seq))
    }

    fn missing(&self, seq: u64) -> StoreError {
        corrupted(self.index, format_args!("entry for seq {seq} has no record"))
    }
}

/// Most reads logged in one `usage` value: a long sync's commit writes one value per this many
/// reads of an owner's records, each a few kilobytes at most.
const MAX_READS_PER_USAGE_VALUE: usize = 256;

/// Counts reads inside one commit exactly as reads one after another would count them: a
/// record read twice is counted twice, one a read used up is gone for the reads after it, and
/// every read is logged. The reads of one owner's records in one commit share a usage entry (a
/// live delivery group's pages come from a few writers, a sync's page from one), so logging
/// costs one store entry per owner rather than one per read.
struct ReadCounter {
    /// Usage keys are unique per entry: this commit's number, then the index in it of the
    /// entry's first read.
    counter_base: u64,
    /// Reads counted so far (at most [`MAX_READ_BATCH`]).
    logged: usize,
    pulls_so_far: HashMap<u64, u32>,
    removed: HashSet<u64>,
    /// This commit's usage entries still open, by owner.
    usage: HashMap<[u8; 32], UsageEntry>,
}

/// A usage entry being filled by [`ReadCounter`].
struct UsageEntry {
    key: [u8; 48],
    value: Vec<u8>,
    /// Reads encoded in `value`.
    reads: usize,
}

impl ReadCounter {
    fn new(last_commit: u64) -> Self {
        Self {
            counter_base: (last_commit + 1) << 16,
            logged: 0,
            pulls_so_far: HashMap::new(),
            removed: HashSet::new(),
            usage: HashMap::new(),
        }
    }

    /// Counts and logs one read of the live record `seq`, removing it if that read used it up.
    fn count(
        &mut self,
        store: &FjallStore,
        change: &mut Change<'_>,
        seq: u64,
        meta: StoredMeta,
        bytes: &[u8],
        now: u64,
    ) -> Result<(StoredRecord, bool), StoreError> {
        let before = match self.pulls_so_far.get(&seq) {
            Some(pulls) => *pulls,
            None => store.pulls(&change.snap, seq)?,
        };
        let pulls = before.saturating_add(1);
        let exhausted = meta.max_pulls != 0 && pulls >= meta.max_pulls;
        self.log(store, change, &meta, now);
        if exhausted {
            change.remove(seq, &meta, false)?;
            self.removed.insert(seq);
        } else {
            change.batch.insert(&store.ks.pulls, seq_key(seq), pulls.to_be_bytes());
            self.pulls_so_far.insert(seq, pulls);
        }
        Ok((StoredRecord { meta: meta.into_meta(seq, pulls), bytes: bytes.to_vec() }, exhausted))
    }

    /// Adds a read of `meta`'s record to its owner's usage entry in this commit, starting one if
    /// the owner has none open.
    fn log(&mut self, store: &FjallStore, change: &mut Change<'_>, meta: &StoredMeta, now: u64) {
        let index = self.counter_base + self.logged as u64;
        self.logged += 1;
        let owner = meta.owner.to_bytes();
        let entry = self.usage.entry(owner).or_insert_with(|| UsageEntry {
            key: usage_key(&meta.owner, now, index),
            value: Vec::new(),
            reads: 0,
        });
        encode_usage_read(&mut entry.value, &meta.receiver, meta.size, &meta.record_id);
        entry.reads += 1;
        if entry.reads >= MAX_READS_PER_USAGE_VALUE
            && let Some(full) = self.usage.remove(&owner)
        {
            change.batch.insert(&store.ks.usage, full.key, full.value);
        }
    }

    /// Writes the usage entries still open into the commit: call before committing `change`.
    fn finish(&mut self, store: &FjallStore, change: &mut Change<'_>) {
        for (_, entry) in self.usage.drain() {
            change.batch.insert(&store.ks.usage, entry.key, entry.value);
        }
    }
}

/// One page of [`Store::read_after_many`] being filled, record by record in sequence order.
struct PageFill<'p> {
    page: &'p PageRead,
    /// The page's limit, cut to what the group has left.
    limit: usize,
    served: ServedPage,
    /// Bytes of the records served so far.
    total: usize,
}

impl PageFill<'_> {
    /// Offers record `seq` of the page's outbox (its stored `value`): serves and counts it
    /// unless it belongs to another outbox under the same pair id or has expired. Returns
    /// whether the page takes more records.
    fn offer(
        &mut self,
        store: &FjallStore,
        counter: &mut ReadCounter,
        change: &mut Change<'_>,
        seq: u64,
        value: &[u8],
        now: u64,
    ) -> Result<bool, StoreError> {
        let (meta, bytes) = decode_record(value)?;
        match of_pair(&meta, &self.page.owner, &self.page.receiver) {
            Ok(true) => {}
            Ok(false) => return Ok(true),
            Err(()) => return Err(names_another("outbox", seq)),
        }
        if meta.expires_at <= now {
            return Ok(true);
        }
        if !self.served.records.is_empty() && self.total.saturating_add(bytes.len()) > self.page.max_bytes {
            self.served.more = true;
            return Ok(false);
        }
        self.total = self.total.saturating_add(bytes.len());
        self.served.records.push(counter.count(store, change, seq, meta, bytes, now)?);
        if self.served.records.len() >= self.limit {
            self.served.more = true;
            return Ok(false);
        }
        Ok(true)
    }
}

/// Builds the range `prefix ‖ from ..= prefix ‖ u64::MAX` over keys ending in a sequence number.
fn seq_range(prefix: &[u8], from: u64) -> (Vec<u8>, Vec<u8>) {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&from.to_be_bytes());
    let mut end = prefix.to_vec();
    end.extend_from_slice(&u64::MAX.to_be_bytes());
    (start, end)
}

impl FjallStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty, with the default
    /// [`FjallConfig`].
    ///
    /// Fails with [`StoreError::Corrupted`] if `dir` holds something other than a Pigeonhole
    /// store, a store of another format version, or a store that is damaged or has lost
    /// acknowledged writes.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, FjallConfig::default())
    }

    /// Opens the store in `dir` with `config` (see [`FjallStore::open`]).
    pub fn open_with(dir: &Path, config: FjallConfig) -> Result<Self, StoreError> {
        // The storage engine asserts on some malformed directories; a damaged store must be an
        // error, not a crash.
        catch_unwind(AssertUnwindSafe(|| Self::open_inner(dir, &config))).unwrap_or_else(|panic| {
            Err(StoreError::Corrupted(format!(
                "the storage engine failed while opening {}: {}",
                dir.display(),
                panic_message(panic.as_ref())
            )))
        })
    }

    /// A store in a new directory under the system's temporary directory, deleted when the
    /// store is dropped. For tests (durable like any other store while it lives).
    pub fn temporary() -> Result<Self, StoreError> {
        let dir =
            std::env::temp_dir().join(format!("pigeonhole-store-{}-{}", std::process::id(), unique_suffix()));
        Self::open_with(
            &dir,
            FjallConfig { temporary: true, cache_bytes: 8 * 1024 * 1024, ..Default::default() },
        )
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_inner(dir: &Path, config: &FjallConfig) -> Result<Self, StoreError> {
        let fresh = match fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| io_error(e, "creating the store directory"))?;
                true
            }
            Err(e) => return Err(io_error(e, "reading the store directory")),
        };
        if !fresh && !dir.join(FJALL_MARKER).exists() {
            return Err(StoreError::Corrupted(format!(
                "{} is not a Pigeonhole store: the directory is not empty and holds no store",
                dir.display()
            )));
        }

        let mut builder = Database::builder(dir)
            .cache_size(config.cache_bytes)
            .max_journaling_size(config.journal_bytes.max(64 * 1024 * 1024))
            .temporary(config.temporary);
        if config.worker_threads > 0 {
            builder = builder.worker_threads(config.worker_threads);
        }
        let db = builder.open().map_err(open_error)?;

        let names = db.list_keyspace_names();
        if let Some(name) =
            names.iter().find(|n| !KEYSPACE_NAMES.contains(&&***n) && !LEGACY_KEYSPACE_NAMES.contains(&&***n))
        {
            return Err(StoreError::Corrupted(format!(
                "{} is not a Pigeonhole store: it has a keyspace {:?}",
                dir.display(),
                &**name
            )));
        }
        let ks = Keyspaces::open(&db, config.memtable_bytes.max(1024 * 1024))?;
        // Indexes of older formats, deleted below (after the v3 ones are rewritten).
        let mut legacy = Vec::new();
        for name in LEGACY_KEYSPACE_NAMES {
            if names.iter().any(|n| &**n == name) {
                legacy.push((name, db.keyspace(name, KeyspaceCreateOptions::default).map_err(fjall_error)?));
            }
        }
        let snap = db.snapshot();

        let format = snap.get(&ks.meta, FORMAT_KEY).map_err(fjall_error)?;
        let witness = Witness::read(dir)?;
        // The commit counter, and the version to upgrade from.
        let (commit, upgrade_from) = match format {
            Some(format) => {
                let version = check_format(&format, dir)?;
                let commit = match snap.get(&ks.meta, COMMIT_KEY).map_err(fjall_error)? {
                    Some(v) => be_u64(&v, "meta")?,
                    None => return Err(corrupted("meta", "the commit counter is missing")),
                };
                match witness {
                    Some(acknowledged) if acknowledged > commit => {
                        return Err(StoreError::Corrupted(format!(
                            "{} has lost acknowledged writes: its journal recovers to commit {commit}, \
                             but commit {acknowledged} was acknowledged (truncated or damaged journal)",
                            dir.display()
                        )));
                    }
                    Some(_) => {}
                    // Creation was interrupted after the format was written.
                    None if commit == 0 => Witness::create(dir, 0)?,
                    None => {
                        return Err(StoreError::Corrupted(format!(
                            "{} has no commit witness ({WITNESS_FILE}) but {commit} commits",
                            dir.display()
                        )));
                    }
                }
                if version == 1 {
                    // A v1 store never had drops: its drop keyspaces were just created empty.
                    for (name, keyspace) in ks.all() {
                        if DROP_KEYSPACE_NAMES.contains(&name) && snap.first_key_value(keyspace).is_some() {
                            return Err(StoreError::Corrupted(format!(
                                "{} is marked format v1 but keyspace `{name}` (added in v2) has data",
                                dir.display()
                            )));
                        }
                    }
                }
                (commit, (version < FORMAT_VERSION).then_some(version))
            }
            None => {
                // A new store, or one whose creation was interrupted before the format marker
                // was written (then every keyspace is still empty and there is no witness).
                if let Some(acknowledged) = witness {
                    return Err(StoreError::Corrupted(format!(
                        "{} has lost acknowledged writes: its format marker is gone but commit \
                         {acknowledged} was acknowledged (truncated or damaged journal)",
                        dir.display()
                    )));
                }
                for (name, keyspace) in ks.all() {
                    if snap.first_key_value(keyspace).is_some() {
                        return Err(StoreError::Corrupted(format!(
                            "{} is not a Pigeonhole store: no format marker, but keyspace `{name}` has data",
                            dir.display()
                        )));
                    }
                }
                for (name, keyspace) in legacy.drain(..) {
                    // An older build's creation cut short left its (empty) indexes.
                    if keyspace.first_key_value().is_some() {
                        return Err(StoreError::Corrupted(format!(
                            "{} is not a Pigeonhole store: no format marker, but keyspace `{name}` has data",
                            dir.display()
                        )));
                    }
                    db.delete_keyspace(keyspace).map_err(fjall_error)?;
                }
                let mut batch = db.batch().durability(Some(DURABLE));
                batch.insert(&ks.meta, FORMAT_KEY, FORMAT);
                batch.insert(&ks.meta, COMMIT_KEY, 0u64.to_be_bytes());
                batch.insert(&ks.meta, LAST_SEQ_KEY, 0u64.to_be_bytes());
                batch.insert(&ks.meta, TOTALS_KEY, encode_usage_counters(Usage::default()));
                batch.insert(&ks.meta, DROP_TOTALS_KEY, encode_usage_counters(Usage::default()));
                batch.commit().map_err(fjall_error)?;
                Witness::create(dir, 0)?;
                (0, None)
            }
        };
        // Released before an upgrade: while a snapshot is open, the engine keeps every
        // memtable flushed since in memory (the whole rewrite, 380 MB on a million records).
        drop(snap);
        if let Some(version) = upgrade_from {
            // Partly done by an upgrade cut short: the rewrite is idempotent.
            let legacy_index = |name| legacy.iter().find(|(n, _)| *n == name).map(|(_, k)| k);
            if let Some(paths) = legacy_index(LEGACY_PATHS_KEYSPACE) {
                rekey_paths(paths, &ks.paths)?;
            }
            if let Some(outbox) = legacy_index(LEGACY_OUTBOX_KEYSPACE) {
                rekey_outbox(outbox, &ks.outbox)?;
            }
            // The rewrite is durable already (ingested tables are synced).
            let mut batch = db.batch().durability(Some(DURABLE));
            batch.insert(&ks.meta, FORMAT_KEY, FORMAT);
            if version == 1 {
                batch.insert(&ks.meta, DROP_TOTALS_KEY, encode_usage_counters(Usage::default()));
            }
            batch.commit().map_err(fjall_error)?;
        }
        // With the marker durable; an upgrade cut short after it may have left some.
        for (_, keyspace) in legacy {
            db.delete_keyspace(keyspace).map_err(fjall_error)?;
        }

        let snap = db.snapshot();
        let stored_last = match snap.get(&ks.meta, LAST_SEQ_KEY).map_err(fjall_error)? {
            Some(v) => be_u64(&v, "meta")?,
            None => return Err(corrupted("meta", "the last sequence number is missing")),
        };
        let mut highest = 0;
        for (name, keyspace) in [("records", &ks.records), ("drops", &ks.drops)] {
            if let Some(guard) = snap.last_key_value(keyspace) {
                highest = highest.max(be_u64(&guard.key().map_err(fjall_error)?, name)?);
            }
        }
        if let Some(v) = snap.get(&ks.meta, TOTALS_KEY).map_err(fjall_error)? {
            decode_usage_counters(&v, "meta")?;
        }
        match snap.get(&ks.meta, DROP_TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta")?,
            None => return Err(corrupted("meta", "the drop totals are missing")),
        };
        drop(snap);
        let last_seq = stored_last.max(highest);

        let store = Self {
            ks,
            db,
            dir: dir.to_path_buf(),
            write: Mutex::new(WriteState {
                commit,
                last_seq,
                witness: Witness::open(dir)?,
                recent: Recent::new(last_seq, config.recent_outboxes, config.recent_per_outbox),
            }),
            last_seq: AtomicU64::new(last_seq),
            full: AtomicBool::new(false),
            accounts_cache: ReadCache::new(READ_CACHE_ENTRIES),
            owners_cache: ReadCache::new(READ_CACHE_ENTRIES),
        };
        if config.verify_on_open {
            store.verify()?;
        }
        Ok(store)
    }

    /// Maps an error of a write, remembering a full disk (see [`FjallStore::full`]).
    fn write_error(&self, e: fjall::Error) -> StoreError {
        let poisoned = matches!(e, fjall::Error::Poisoned);
        match fjall_error(e) {
            StoreError::Full => {
                self.full.store(true, Ordering::Relaxed);
                StoreError::Full
            }
            _ if poisoned && self.full.load(Ordering::Relaxed) => StoreError::Full,
            other => other,
        }
    }

    /// Commits `change` durably as commit number `state.commit + 1`, with `last_seq` if the
    /// change assigned sequence numbers.
    fn commit(
        &self,
        state: &mut WriteState,
        change: Change<'_>,
        last_seq: Option<u64>,
    ) -> Result<(), StoreError> {
        self.commit_as(state, change, last_seq, DURABLE)
    }

    /// Commits `change` with `mode`: [`DURABLE`], or `PersistMode::Buffer` (handed to the OS:
    /// it survives the process being killed, and becomes durable with the next durable commit,
    /// since the journal is one file synced in order). Only durable commits update the witness.
    fn commit_as(
        &self,
        state: &mut WriteState,
        change: Change<'_>,
        last_seq: Option<u64>,
        mode: PersistMode,
    ) -> Result<(), StoreError> {
        let Change { ks, mut batch, owners, totals, counters_changed, drops, .. } = change;
        let commit = state.commit + 1;
        if counters_changed {
            for (owner, usage) in &owners {
                if usage.records == 0 && usage.bytes == 0 {
                    batch.remove(&ks.owners, owner);
                } else {
                    batch.insert(&ks.owners, owner, encode_usage_counters(*usage));
                }
            }
            batch.insert(&ks.meta, TOTALS_KEY, encode_usage_counters(totals));
        }
        if let Some(DropCounters { totals, buckets }) = drops {
            for (bucket, live) in buckets {
                if live == 0 {
                    batch.remove(&ks.drop_buckets, bucket_key(bucket));
                } else {
                    batch.insert(&ks.drop_buckets, bucket_key(bucket), live.to_be_bytes());
                }
            }
            batch.insert(&ks.meta, DROP_TOTALS_KEY, encode_usage_counters(totals));
        }
        if let Some(seq) = last_seq {
            batch.insert(&ks.meta, LAST_SEQ_KEY, seq.to_be_bytes());
        }
        batch.insert(&ks.meta, COMMIT_KEY, commit.to_be_bytes());
        // The journal is persisted (synced for DURABLE) before the batch becomes visible.
        if let Err(e) = batch.durability(Some(mode)).commit() {
            // What part of the batch became visible is unknown: the next reads go to the store.
            self.accounts_cache.clear();
            self.owners_cache.clear();
            return Err(self.write_error(e));
        }
        if counters_changed {
            self.owners_cache.committed(owners);
        }
        state.commit = commit;
        if let Some(seq) = last_seq {
            state.last_seq = seq;
            self.last_seq.store(seq, Ordering::Release);
        }
        // The batch is durable: a failure to update the witness only weakens the check on open.
        if mode == DURABLE {
            state.witness.record(commit).ok();
        }
        Ok(())
    }

    fn pulls(&self, snap: &Snapshot, seq: u64) -> Result<u32, StoreError> {
        match snap.get(&self.ks.pulls, seq_key(seq)).map_err(fjall_error)? {
            Some(v) => decode_pulls(&v),
            None => Ok(0),
        }
    }

    /// Walks an index whose keys end in a sequence number, from `start` to `end` inclusive,
    /// loading each record; keeps records live at `now` that pass `keep`, at most `limit`.
    /// `belongs` checks the record against the walk's index entry: `Ok(false)` skips it (another
    /// pair's record under the same pair id), an error reports an entry that names another
    /// record.
    #[allow(clippy::too_many_arguments)]
    fn walk<T>(
        &self,
        snap: &Snapshot,
        index: (&'static str, &Keyspace),
        (start, end): (Vec<u8>, Vec<u8>),
        now: u64,
        limit: usize,
        belongs: impl Fn(&StoredMeta) -> Result<bool, ()>,
        keep: impl Fn(&StoredMeta) -> bool,
        mut make: impl FnMut(u64, StoredMeta, u32, &[u8]) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let (name, keyspace) = index;
        let mut records = RecordLoader::new(self, snap, name);
        for guard in snap.range(keyspace, start..=end) {
            let key = guard.key().map_err(fjall_error)?;
            let seq = seq_suffix(&key, name)?;
            let value = records.load(seq)?;
            let (meta, bytes) = decode_record(&value)?;
            let belongs = belongs(&meta).map_err(|()| names_another(name, seq))?;
            if !belongs {
                continue;
            }
            if meta.expires_at <= now || !keep(&meta) {
                continue;
            }
            let pulls = self.pulls(snap, seq)?;
            out.push(make(seq, meta, pulls, bytes));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Checks the whole store: every record decodes and has exactly its index entries, every
    /// index entry, read count and usage row is well-formed and points at a record, and the
    /// owner counters and totals match the records. Returns the totals. A full scan: for
    /// operators and tests, not for the request path.
    pub fn verify(&self) -> Result<Usage, StoreError> {
        catch_unwind(AssertUnwindSafe(|| self.verify_inner())).unwrap_or_else(|panic| {
            Err(StoreError::Corrupted(format!(
                "the storage engine failed during verification: {}",
                panic_message(panic.as_ref())
            )))
        })
    }

    fn verify_inner(&self) -> Result<Usage, StoreError> {
        let ks = &self.ks;
        let snap = self.db.snapshot();
        let present = |keyspace: &Keyspace, name: &str, key: &[u8], seq: u64| -> Result<(), StoreError> {
            if snap.contains_key(keyspace, key).map_err(fjall_error)? {
                Ok(())
            } else {
                Err(corrupted(name, format_args!("missing the entry of record {seq}")))
            }
        };
        let mut owners: HashMap<[u8; KEY_LEN], Usage> = HashMap::new();
        let mut totals = Usage::default();
        let mut tagged = 0usize;
        let mut highest = 0;
        for guard in snap.iter(&ks.records) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let seq = be_u64(&key, "records")?;
            highest = seq;
            let (meta, _) = decode_record(&value)?;
            let path = path_key(&meta.owner, &meta.receiver, &meta.record_id);
            match snap.get(&ks.paths, &path).map_err(fjall_error)? {
                Some(v) if be_u64(&v, "paths")? == seq => {}
                _ => return Err(corrupted("paths", format_args!("no entry pointing at record {seq}"))),
            }
            present(&ks.outbox, "outbox", &outbox_key(&meta.owner, &meta.receiver, seq), seq)?;
            present(&ks.expiry, "expiry", &expiry_key(meta.expires_at, seq), seq)?;
            if let Some(tag) = &meta.tag {
                present(&ks.tags, "tags", &tag_key(tag, seq), seq)?;
                tagged += 1;
            }
            let size = u64::from(meta.size);
            let owner = owners.entry(meta.owner.to_bytes()).or_default();
            owner.records += 1;
            owner.bytes += size;
            totals.records += 1;
            totals.bytes += size;
        }
        let records = usize::try_from(totals.records).unwrap_or(usize::MAX);
        for (name, keyspace, expected) in [
            ("paths", &ks.paths, records),
            ("outbox", &ks.outbox, records),
            ("expiry", &ks.expiry, records),
            ("tags", &ks.tags, tagged),
        ] {
            let mut count = 0usize;
            for guard in snap.iter(keyspace) {
                let (key, value) = guard.into_inner().map_err(fjall_error)?;
                let valid =
                    if name == "paths" { value.len() == 8 } else { value.is_empty() && key.len() >= 8 };
                if !valid {
                    return Err(corrupted(name, "malformed entry"));
                }
                count += 1;
            }
            if count != expected {
                return Err(corrupted(name, format_args!("{count} entries for {expected} records")));
            }
        }
        for guard in snap.iter(&ks.pulls) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let seq = be_u64(&key, "pulls")?;
            decode_pulls(&value)?;
            if !snap.contains_key(&ks.records, seq_key(seq)).map_err(fjall_error)? {
                return Err(corrupted("pulls", format_args!("read count for missing record {seq}")));
            }
        }
        for guard in snap.iter(&ks.owners) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let stored = decode_usage_counters(&value, "owners")?;
            let owner: [u8; KEY_LEN] =
                (*key).try_into().map_err(|_| corrupted("owners", "key is not a public key"))?;
            if owners.remove(&owner) != Some(stored) {
                return Err(corrupted("owners", "counters do not match the records"));
            }
        }
        if !owners.is_empty() {
            return Err(corrupted("owners", "counters missing for some owners"));
        }
        for guard in snap.iter(&ks.usage) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            usage_key_read_at(&key)?;
            decode_usage(&value)?;
        }
        for guard in snap.iter(&ks.accounts) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let account_key =
                PublicKey::from_slice(&key).map_err(|_| corrupted("accounts", "key is not a public key"))?;
            decode_account(account_key, &value)?;
        }
        let meta_totals = match snap.get(&ks.meta, TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta")?,
            None => return Err(corrupted("meta", "totals missing")),
        };
        if meta_totals != totals {
            return Err(corrupted(
                "meta",
                format_args!("totals {meta_totals:?} but records add up to {totals:?}"),
            ));
        }
        if highest > self.last_seq() {
            return Err(corrupted("meta", "a record has a sequence number above the last one assigned"));
        }
        self.verify_drops(&snap)?;
        Ok(totals)
    }

    /// The drop part of [`FjallStore::verify`]: every drop decodes and has exactly its index
    /// entries, bucket counts and drop totals match the drops, spent stamps and issuance
    /// counters are well-formed, and no drop or stamp names a number above the last assigned.
    fn verify_drops(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let ks = &self.ks;
        let mut totals = Usage::default();
        let mut buckets: HashMap<u16, u64> = HashMap::new();
        let last_seq = self.last_seq();
        for guard in snap.iter(&ks.drops) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let seq = be_u64(&key, "drops")?;
            if seq > last_seq {
                return Err(corrupted("drops", "a drop has a sequence number above the last one assigned"));
            }
            let drop = decode_drop(seq, &value)?;
            let head = drop.tag.head();
            for granularity in DROP_INDEX_GRANULARITIES {
                let entry = snap
                    .get(&ks.drop_prefix, drop_prefix_key(granularity, head, seq))
                    .map_err(fjall_error)?;
                if entry.as_deref() != Some(&drop_prefix_value(head, drop.expires_at)[..]) {
                    return Err(corrupted("drop_prefix", format_args!("missing the entry of drop {seq}")));
                }
            }
            if !snap.contains_key(&ks.drop_expiry, expiry_key(drop.expires_at, seq)).map_err(fjall_error)? {
                return Err(corrupted("drop_expiry", format_args!("missing the entry of drop {seq}")));
            }
            *buckets.entry(drop_bucket(&drop.tag)).or_default() += 1;
            totals.records += 1;
            totals.bytes += drop.bytes.len() as u64;
        }
        let drops = usize::try_from(totals.records).unwrap_or(usize::MAX);
        let mut count = 0usize;
        for guard in snap.iter(&ks.drop_prefix) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            decode_drop_prefix(&key, &value)?;
            count += 1;
        }
        if count != drops * DROP_INDEX_GRANULARITIES.len() {
            return Err(corrupted("drop_prefix", format_args!("{count} entries for {drops} drops")));
        }
        let mut count = 0usize;
        for guard in snap.iter(&ks.drop_expiry) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            if key.len() != 16 || !value.is_empty() {
                return Err(corrupted("drop_expiry", "malformed entry"));
            }
            count += 1;
        }
        if count != drops {
            return Err(corrupted("drop_expiry", format_args!("{count} entries for {drops} drops")));
        }
        for guard in snap.iter(&ks.drop_buckets) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let bucket: [u8; 2] =
                (*key).try_into().map_err(|_| corrupted("drop_buckets", "key is not a bucket"))?;
            let stored = be_u64(&value, "drop_buckets")?;
            if buckets.remove(&u16::from_be_bytes(bucket)) != Some(stored) {
                return Err(corrupted("drop_buckets", "counts do not match the drops"));
            }
        }
        if !buckets.is_empty() {
            return Err(corrupted("drop_buckets", "counts missing for some buckets"));
        }
        for guard in snap.iter(&ks.stamps) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            if key.len() != 40 || be_u64(&value, "stamps")? > last_seq {
                return Err(corrupted("stamps", "malformed entry"));
            }
        }
        for guard in snap.iter(&ks.issuance) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            be_u32(&value, "issuance")?;
            if key.len() != 40 {
                return Err(corrupted("issuance", "malformed key"));
            }
        }
        let stored = match snap.get(&ks.meta, DROP_TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta")?,
            None => return Err(corrupted("meta", "the drop totals are missing")),
        };
        if stored != totals {
            return Err(corrupted(
                "meta",
                format_args!("drop totals {stored:?} but drops add up to {totals:?}"),
            ));
        }
        Ok(())
    }

    /// Looks up the live record at a path as of `snap`.
    fn lookup(
        &self,
        snap: &Snapshot,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
    ) -> Result<Option<(u64, fjall::Slice)>, StoreError> {
        let Some(seq) =
            snap.get(&self.ks.paths, path_key(owner, receiver, record_id)).map_err(fjall_error)?
        else {
            return Ok(None);
        };
        let seq = be_u64(&seq, "paths")?;
        let value = snap
            .get(&self.ks.records, seq_key(seq))
            .map_err(fjall_error)?
            .ok_or_else(|| corrupted("paths", format_args!("entry for seq {seq} has no record")))?;
        let (meta, _) = decode_record(&value)?;
        match of_pair(&meta, owner, receiver) {
            Ok(true) => Ok(Some((seq, value))),
            // Another pair's record at the same pair id and record id: not this path's.
            Ok(false) => Ok(None),
            Err(()) => Err(names_another("paths", seq)),
        }
    }
}

/// Whether a record found through an entry of `owner → receiver`'s pair id in `paths` or
/// `outbox` is that pair's: `Ok(false)` for another pair whose id is the same (the entry is
/// not this pair's), `Err(())` for a record whose pair has another id (a damaged index).
fn of_pair(meta: &StoredMeta, owner: &PublicKey, receiver: &PublicKey) -> Result<bool, ()> {
    if meta.owner == *owner && meta.receiver == *receiver {
        Ok(true)
    } else if pair_id(&meta.owner, &meta.receiver) == pair_id(owner, receiver) {
        Ok(false)
    } else {
        Err(())
    }
}

/// The `Corrupted` error for an entry of index `keyspace` that points at record `seq` of
/// another outbox, tag or path.
fn names_another(keyspace: &str, seq: u64) -> StoreError {
    corrupted(keyspace, format_args!("entry for seq {seq} names another record"))
}

/// Rewrites the v3 `paths` index (owner ‖ receiver ‖ record id → seq) into `pair_paths` (pair
/// id ‖ record id → seq).
fn rekey_paths(legacy: &Keyspace, paths: &Keyspace) -> Result<(), StoreError> {
    rekey(legacy, paths, |key| {
        let (pair, record_id) = split_v3_pair_key(key, LEGACY_PATHS_KEYSPACE)?;
        Ok(pair_path_key(&pair, record_id))
    })
}

/// Rewrites the v3 `outbox` index (owner ‖ receiver ‖ seq) into `pair_outbox` (pair id ‖ seq).
fn rekey_outbox(legacy: &Keyspace, outbox: &Keyspace) -> Result<(), StoreError> {
    rekey(legacy, outbox, |key| {
        let (pair, seq) = split_v3_pair_key(key, LEGACY_OUTBOX_KEYSPACE)?;
        Ok(pair_outbox_key(&pair, be_u64(seq, LEGACY_OUTBOX_KEYSPACE)?).to_vec())
    })
}

fn rekey(
    from: &Keyspace,
    to: &Keyspace,
    new_key: impl Fn(&[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    use std::ops::Bound;
    // Runs of entries read from the old index, sorted by their new keys and ingested as tables:
    // they bypass the journal (a rewrite through it was replayed by every restart until the
    // journal rotated, 1.4 s on a million records) and memtables. A run is durable once
    // ingested (tables and version synced), and ingesting one again after a crash only writes
    // the same entries again.
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut run = Vec::with_capacity(UPGRADE_RUN.min(1 << 16));
        let mut last = None;
        // Each run by its own iterator: an open iterator holds a snapshot.
        for guard in from.range::<&[u8], _>((start, Bound::Unbounded)).take(UPGRADE_RUN) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            run.push((new_key(&key)?, value));
            last = Some(key);
        }
        let Some(last) = last else { return Ok(()) };
        run.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if run.windows(2).any(|w| w[0].0 == w[1].0) {
            // Two outboxes whose pair ids are the same, each with a record of one id (seen
            // when both fall in one run): not expected before some 2^64 outboxes, and not
            // something v4 can hold; `verify` would report one that spans two runs.
            return Err(corrupted(
                "paths",
                "two outboxes share a pair id and a record id; this build cannot upgrade the store",
            ));
        }
        let mut ingestion = to.start_ingestion().map_err(fjall_error)?;
        for (key, value) in run {
            ingestion.write(key, value).map_err(fjall_error)?;
        }
        ingestion.finish().map_err(fjall_error)?;
        after = Some(last.to_vec());
        // Each run is a level-0 run over the whole key range: let compaction merge them as
        // they come rather than leave dozens, which would hold back the relay's first writes.
        while to.l0_table_count() > UPGRADE_L0_TABLES {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The version of a store's format marker if this build reads it (v1 to v3 are upgraded on
/// open), or why not.
fn check_format(format: &[u8], dir: &Path) -> Result<u64, StoreError> {
    if format == FORMAT.as_bytes() {
        return Ok(FORMAT_VERSION);
    }
    if let Some(&(_, version)) = OLDER_FORMATS.iter().find(|(marker, _)| format == marker.as_bytes()) {
        return Ok(version);
    }
    let text = String::from_utf8_lossy(format);
    if let Some(version) = text.strip_prefix(FORMAT_PREFIX).and_then(|v| v.parse::<u64>().ok()) {
        return Err(StoreError::Corrupted(format!(
            "{} holds a store of format v{version}; this build reads v1 to v3 (upgrading them) \
             and v{FORMAT_VERSION}",
            dir.display()
        )));
    }
    Err(StoreError::Corrupted(format!("{} is not a Pigeonhole store: format marker {text:?}", dir.display())))
}

fn unique_suffix() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (COUNTER.fetch_add(1, Ordering::Relaxed) << 48)
}

impl Store for FjallStore {
    fn put_batch(&self, batch: &[NewRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        for record in batch {
            check_new_record(record)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.write.lock();
        // Each record writes itself and 3 or 4 index entries; the counters and `meta` a few more.
        let mut change =
            Change::with_capacity(self, &state, batch.len().saturating_mul(5).saturating_add(8))?;
        let mut next = state.last_seq;
        let mut outcomes = Vec::with_capacity(batch.len());
        // Paths stored earlier in this batch: the first write at a path in a batch wins.
        let mut in_batch: HashMap<Vec<u8>, (u64, &NewRecord)> = HashMap::new();
        // The records stored, by outbox, for the list of recent records once committed.
        let mut stored = Vec::with_capacity(batch.len());
        for record in batch {
            let pair = pair_id(&record.owner, &record.receiver);
            let path = pair_path_key(&pair, record.record_id.as_bytes());
            if let Some(&(seq, earlier)) = in_batch.get(&path) {
                outcomes.push(if earlier.record_hash == record.record_hash {
                    PutOutcome::Duplicate {
                        seq,
                        stored_at: earlier.stored_at,
                        expires_at: earlier.expires_at,
                    }
                } else {
                    PutOutcome::Conflict
                });
                continue;
            }
            if let Some(seq) = change.seq_at(&path)? {
                let value = change
                    .record(seq)?
                    .ok_or_else(|| corrupted("paths", format_args!("entry for seq {seq} has no record")))?;
                let (existing, _) = decode_record(&value)?;
                let same_pair = of_pair(&existing, &record.owner, &record.receiver)
                    .map_err(|()| names_another("paths", seq))?;
                if existing.expires_at > record.stored_at {
                    // A live record of another pair under the same pair id holds the key: a
                    // conflict, so the writer picks another record id.
                    outcomes.push(if same_pair && existing.record_hash == record.record_hash {
                        PutOutcome::Duplicate {
                            seq,
                            stored_at: existing.stored_at,
                            expires_at: existing.expires_at,
                        }
                    } else {
                        PutOutcome::Conflict
                    });
                    continue;
                }
                // Expired by the time this write was accepted: the path is free again.
                change.remove(seq, &existing, true)?;
            }
            next += 1;
            change.insert(next, record, &pair, path.clone())?;
            in_batch.insert(path, (next, record));
            stored.push((pair, next));
            outcomes.push(PutOutcome::Stored { seq: next });
        }
        if next != state.last_seq {
            if let Err(e) = self.commit(&mut state, change, Some(next)) {
                state.recent.disable();
                return Err(e);
            }
            for (pair, seq) in &stored {
                state.recent.stored(pair, *seq);
            }
        }
        Ok(outcomes)
    }

    fn get(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
        now: u64,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let snap = self.db.snapshot();
        let Some((seq, value)) = self.lookup(&snap, owner, receiver, record_id)? else { return Ok(None) };
        let (meta, bytes) = decode_record(&value)?;
        if meta.expires_at <= now {
            return Ok(None);
        }
        let pulls = self.pulls(&snap, seq)?;
        Ok(Some(StoredRecord { meta: meta.into_meta(seq, pulls), bytes: bytes.to_vec() }))
    }

    fn list(&self, query: &ListQuery, now: u64) -> Result<Vec<RecordMeta>, StoreError> {
        let Some(from) = query.after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let snap = self.db.snapshot();
        self.walk(
            &snap,
            ("outbox", &self.ks.outbox),
            seq_range(&outbox_prefix(&query.owner, &query.receiver), from),
            now,
            query.limit,
            |m| of_pair(m, &query.owner, &query.receiver),
            |m| {
                query.after_ts.is_none_or(|ts| m.stored_at > ts)
                    && query.before_ts.is_none_or(|ts| m.stored_at < ts)
            },
            |seq, meta, pulls, _| meta.into_meta(seq, pulls),
        )
    }

    fn fetch_after(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let Some(from) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let snap = self.db.snapshot();
        self.walk(
            &snap,
            ("outbox", &self.ks.outbox),
            seq_range(&outbox_prefix(owner, receiver), from),
            now,
            limit,
            |m| of_pair(m, owner, receiver),
            |_| true,
            |seq, meta, pulls, bytes| StoredRecord {
                meta: meta.into_meta(seq, pulls),
                bytes: bytes.to_vec(),
            },
        )
    }

    fn list_by_tag(
        &self,
        tag: &Tag,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<RecordMeta>, StoreError> {
        let Some(from) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let snap = self.db.snapshot();
        self.walk(
            &snap,
            ("tags", &self.ks.tags),
            seq_range(&tag.0, from),
            now,
            limit,
            |m| if m.tag.as_ref() == Some(tag) { Ok(true) } else { Err(()) },
            |_| true,
            |seq, meta, pulls, _| meta.into_meta(seq, pulls),
        )
    }

    fn read(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
        now: u64,
    ) -> Result<ReadOutcome, StoreError> {
        let key = ReadKey { owner: *owner, receiver: *receiver, record_id: record_id.to_owned() };
        let mut outcomes = self.read_batch(std::slice::from_ref(&key), now)?;
        Ok(outcomes.pop().unwrap_or(ReadOutcome::NotFound))
    }

    fn read_batch(&self, reads: &[ReadKey], now: u64) -> Result<Vec<ReadOutcome>, StoreError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        if reads.len() > MAX_READ_BATCH {
            return Err(StoreError::Io(format!(
                "invalid input (caller bug): {} reads in one batch",
                reads.len()
            )));
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let mut counter = ReadCounter::new(state.commit);
        let mut outcomes = Vec::with_capacity(reads.len());
        for key in reads {
            let Some((seq, value)) = self.lookup(&change.snap, &key.owner, &key.receiver, &key.record_id)?
            else {
                outcomes.push(ReadOutcome::NotFound);
                continue;
            };
            if counter.removed.contains(&seq) {
                outcomes.push(ReadOutcome::NotFound);
                continue;
            }
            let (meta, bytes) = decode_record(&value)?;
            if meta.expires_at <= now {
                outcomes.push(ReadOutcome::NotFound);
                continue;
            }
            let (record, exhausted) = counter.count(self, &mut change, seq, meta, bytes, now)?;
            outcomes.push(ReadOutcome::Served { record, exhausted });
        }
        counter.finish(self, &mut change);
        self.commit(&mut state, change, None)?;
        Ok(outcomes)
    }

    fn read_after_many(&self, pages: &[PageRead], now: u64) -> Result<Vec<ServedPage>, StoreError> {
        // Each page's records are found inside the write, by the list of recent records when
        // it covers the cursor (a live listener's page) or else by a walk of the outbox index;
        // each record is read once, counted and logged, and every page becomes durable in one
        // commit.
        let mut state = self.write.lock();
        // Each read writes a pull count, and each owner read from a usage entry. Room for the
        // reads the pages ask for, up to a bound: a page whose limit is large often finds
        // fewer records.
        let asked = pages.iter().fold(0usize, |sum, page| sum.saturating_add(page.limit));
        let mut change = Change::with_capacity(self, &state, asked.min(READS_RESERVED) + pages.len() + 8)?;
        let mut counter = ReadCounter::new(state.commit);
        let mut served_pages = Vec::with_capacity(pages.len());
        for page in pages {
            let mut served = ServedPage::default();
            let limit = page.limit.min(MAX_READ_BATCH - counter.logged);
            let (Some(from), true) = (page.after_seq.checked_add(1), limit > 0) else {
                // Cut by the group's bound, not at the end of the outbox.
                served.more = page.after_seq != u64::MAX && page.limit > 0;
                served_pages.push(served);
                continue;
            };
            served.records.reserve(limit.min(READS_RESERVED));
            let mut fill = PageFill { page, limit, served, total: 0 };
            let pair = outbox_prefix(&page.owner, &page.receiver);
            let snap = change.snap.clone();
            if let Some(seqs) = state.recent.after(&pair, page.after_seq) {
                // The outbox's records after the cursor are all listed: load them by seq. A
                // listed record since deleted, used up or expired is skipped, as the walk would.
                for seq in seqs {
                    if counter.removed.contains(&seq) {
                        continue;
                    }
                    let Some(value) = snap.get(&self.ks.records, seq_key(seq)).map_err(fjall_error)? else {
                        continue;
                    };
                    if !fill.offer(self, &mut counter, &mut change, seq, &value, now)? {
                        break;
                    }
                }
            } else {
                let (start, end) = seq_range(&pair, from);
                let mut records = RecordLoader::new(self, &snap, "outbox");
                for guard in snap.range(&self.ks.outbox, start..=end) {
                    let key = guard.key().map_err(fjall_error)?;
                    let seq = seq_suffix(&key, "outbox")?;
                    if counter.removed.contains(&seq) {
                        continue;
                    }
                    let value = records.load(seq)?;
                    if !fill.offer(self, &mut counter, &mut change, seq, &value, now)? {
                        break;
                    }
                }
            }
            served_pages.push(fill.served);
        }
        if counter.logged > 0 {
            counter.finish(self, &mut change);
            // Counts of pushed records need not cost an fsync each: see Store::read_after.
            self.commit_as(&mut state, change, None, PersistMode::Buffer)?;
        }
        Ok(served_pages)
    }

    fn delete(&self, owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> Result<bool, StoreError> {
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let Some((seq, value)) = self.lookup(&change.snap, owner, receiver, record_id)? else {
            return Ok(false);
        };
        let (meta, _) = decode_record(&value)?;
        change.remove(seq, &meta, false)?;
        self.commit(&mut state, change, None)?;
        Ok(true)
    }

    fn expire(&self, now: u64, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let mut due = Vec::new();
        for guard in change.snap.range(&self.ks.expiry, ..=expiry_key(now, u64::MAX)).take(limit) {
            let key = guard.key().map_err(fjall_error)?;
            due.push(seq_suffix(&key, "expiry")?);
        }
        for &seq in &due {
            let value = change
                .record(seq)?
                .ok_or_else(|| corrupted("expiry", format_args!("entry for seq {seq} has no record")))?;
            let (meta, _) = decode_record(&value)?;
            change.remove(seq, &meta, false)?;
        }
        if !due.is_empty() {
            self.commit(&mut state, change, None)?;
        }
        Ok(due.len())
    }

    fn usage(
        &self,
        owner: &PublicKey,
        after_ts: Option<u64>,
        before_ts: Option<u64>,
        limit: usize,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let first = match after_ts {
            None => 0,
            Some(ts) => match ts.checked_add(1) {
                Some(first) => first,
                None => return Ok(Vec::new()),
            },
        };
        let last = match before_ts {
            None => u64::MAX,
            Some(ts) => match ts.checked_sub(1) {
                Some(last) => last,
                None => return Ok(Vec::new()),
            },
        };
        if first > last || limit == 0 {
            return Ok(Vec::new());
        }
        let range = usage_key(owner, first, 0)..=usage_key(owner, last, u64::MAX);
        let mut out = Vec::new();
        for guard in self.ks.usage.range(range) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let read_at = usage_key_read_at(&key)?;
            for (receiver, bytes, record_id) in decode_usage(&value)? {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(UsageRow { owner: *owner, receiver, record_id, bytes, read_at });
            }
        }
        Ok(out)
    }

    fn put_account(&self, account: &Account) -> Result<(), StoreError> {
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        change.batch.insert(&self.ks.accounts, account.key.to_bytes(), encode_account(account));
        self.commit(&mut state, change, None)?;
        self.accounts_cache.committed([(account.key.to_bytes(), account.clone())]);
        Ok(())
    }

    fn account(&self, key: &PublicKey) -> Result<Option<Account>, StoreError> {
        self.accounts_cache.read_through(&key.to_bytes(), || {
            match self.ks.accounts.get(key.to_bytes()).map_err(fjall_error)? {
                Some(v) => Ok(Some(decode_account(*key, &v)?)),
                None => Ok(None),
            }
        })
    }

    fn owner_usage(&self, owner: &PublicKey) -> Result<Usage, StoreError> {
        let usage = self.owners_cache.read_through(&owner.to_bytes(), || {
            match self.ks.owners.get(owner.to_bytes()).map_err(fjall_error)? {
                Some(v) => decode_usage_counters(&v, "owners").map(Some),
                None => Ok(Some(Usage::default())),
            }
        })?;
        Ok(usage.unwrap_or_default())
    }

    fn totals(&self) -> Result<Usage, StoreError> {
        match self.ks.meta.get(TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta"),
            None => Err(corrupted("meta", "totals missing")),
        }
    }

    fn keyspace_stats(&self) -> Vec<KeyspaceStats> {
        self.ks
            .all()
            .into_iter()
            .map(|(name, ks)| KeyspaceStats {
                name,
                tables: ks.table_count(),
                l0_tables: ks.l0_table_count(),
                blob_files: ks.blob_file_count(),
            })
            .collect()
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    fn put_drops(&self, batch: &[NewDrop], bucket_cap: u32) -> Result<Vec<DropOutcome>, StoreError> {
        for drop in batch {
            check_new_drop(drop)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let mut next = state.last_seq;
        let mut outcomes = Vec::with_capacity(batch.len());
        // Stamps spent by earlier drops of this batch (not yet in the snapshot).
        let mut spent_here: HashSet<[u8; 40]> = HashSet::new();
        for drop in batch {
            let stamp = stamp_key(drop.stamp_epoch, &drop.stamp_id);
            if spent_here.contains(&stamp)
                || change.snap.contains_key(&self.ks.stamps, stamp).map_err(fjall_error)?
            {
                outcomes.push(DropOutcome::Spent);
                continue;
            }
            let live = change.bucket(drop_bucket(&drop.tag))?;
            if bucket_cap != 0 && *live >= u64::from(bucket_cap) {
                outcomes.push(DropOutcome::BucketFull);
                continue;
            }
            *live += 1;
            next += 1;
            change.insert_drop(next, drop, stamp)?;
            spent_here.insert(stamp);
            outcomes.push(DropOutcome::Stored { seq: next });
        }
        if next != state.last_seq {
            self.commit(&mut state, change, Some(next))?;
        }
        Ok(outcomes)
    }

    fn stamp_spent(&self, epoch: u64, stamp_id: &[u8; 32]) -> Result<bool, StoreError> {
        self.ks.stamps.contains_key(stamp_key(epoch, stamp_id)).map_err(fjall_error)
    }

    fn fetch_drops(
        &self,
        prefix: &Prefix,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredDrop>, StoreError> {
        let Some(from) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let snap = self.db.snapshot();
        let granularity = prefix.bits() / 4 * 4;
        if granularity == 0 {
            // A prefix of fewer than 4 bits names at least 1/8 of all tags: walk the drops.
            for guard in snap.range(&self.ks.drops, seq_key(from)..) {
                let (key, value) = guard.into_inner().map_err(fjall_error)?;
                if !prefix.matches(&drop_value_tag(&value)?) {
                    continue;
                }
                let drop = decode_drop(be_u64(&key, "drops")?, &value)?;
                if drop.expires_at <= now {
                    continue;
                }
                out.push(drop);
                if out.len() >= limit {
                    break;
                }
            }
            return Ok(out);
        }
        let bucket = drop_prefix_bucket(granularity, prefix.value());
        let (start, end) = seq_range(&bucket, from);
        for guard in snap.range(&self.ks.drop_prefix, start..=end) {
            let (key, value) = guard.into_inner().map_err(fjall_error)?;
            let entry = decode_drop_prefix(&key, &value)?;
            if entry.expires_at <= now || !prefix.matches(&head_tag(entry.head)) {
                continue;
            }
            let seq = entry.seq;
            let value = snap
                .get(&self.ks.drops, seq_key(seq))
                .map_err(fjall_error)?
                .ok_or_else(|| corrupted("drop_prefix", format_args!("entry for seq {seq} has no drop")))?;
            let drop = decode_drop(seq, &value)?;
            if drop.tag.head() != entry.head || drop.expires_at != entry.expires_at {
                return Err(corrupted("drop_prefix", format_args!("entry for seq {seq} names another drop")));
            }
            out.push(drop);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn expire_drops(&self, now: u64, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let mut due = Vec::new();
        for guard in change.snap.range(&self.ks.drop_expiry, ..=expiry_key(now, u64::MAX)).take(limit) {
            let key = guard.key().map_err(fjall_error)?;
            due.push(seq_suffix(&key, "drop_expiry")?);
        }
        for &seq in &due {
            let value =
                change.snap.get(&self.ks.drops, seq_key(seq)).map_err(fjall_error)?.ok_or_else(|| {
                    corrupted("drop_expiry", format_args!("entry for seq {seq} has no drop"))
                })?;
            let drop = decode_drop(seq, &value)?;
            change.remove_drop(&drop)?;
        }
        if !due.is_empty() {
            self.commit(&mut state, change, None)?;
        }
        Ok(due.len())
    }

    fn prune_stamps(&self, before_epoch: u64, limit: usize) -> Result<usize, StoreError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        // Stamp keys start with the epoch: every key below the bare epoch is of an older one.
        let mut due = Vec::new();
        for guard in change.snap.range(&self.ks.stamps, ..before_epoch.to_be_bytes()).take(limit) {
            due.push(guard.key().map_err(fjall_error)?);
        }
        for key in &due {
            change.batch.remove(&self.ks.stamps, key.clone());
        }
        if !due.is_empty() {
            self.commit(&mut state, change, None)?;
        }
        Ok(due.len())
    }

    fn drop_totals(&self) -> Result<Usage, StoreError> {
        match self.ks.meta.get(DROP_TOTALS_KEY).map_err(fjall_error)? {
            Some(v) => decode_usage_counters(&v, "meta"),
            None => Err(corrupted("meta", "the drop totals are missing")),
        }
    }

    fn charge_issuance(
        &self,
        account: &[u8; 32],
        day: u64,
        count: u32,
        max_per_day: u32,
    ) -> Result<u32, StoreError> {
        if count == 0 {
            return Ok(0);
        }
        let mut state = self.write.lock();
        let mut change = Change::new(self, &state)?;
        let key = issuance_key(account, day);
        let issued = match change.snap.get(&self.ks.issuance, key).map_err(fjall_error)? {
            Some(v) => be_u32(&v, "issuance")?,
            None => 0,
        };
        let granted = count.min(max_per_day.saturating_sub(issued));
        if granted == 0 {
            return Ok(0);
        }
        change.batch.insert(&self.ks.issuance, key, (issued + granted).to_be_bytes());
        self.commit(&mut state, change, None)?;
        Ok(granted)
    }
}

/// A tag with `head` as its first 32 bits (all a [`Prefix`] looks at).
fn head_tag(head: u32) -> Tag {
    let mut tag = [0u8; TAG_LEN];
    tag[..4].copy_from_slice(&head.to_be_bytes());
    Tag(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{NARROW_PAIR_IDS, receiver_key};
    use pigeonhole_proto::keys::SecretKey;

    #[test]
    fn conformance() {
        crate::conformance::run_all(|| FjallStore::temporary().expect("temporary store"));
    }

    fn key(n: u8) -> PublicKey {
        SecretKey::from_bytes(&[n; 32]).expect("valid secret").public_key()
    }

    fn record(owner: u8, id: &str, len: usize) -> NewRecord {
        NewRecord {
            owner: key(owner),
            receiver: key(100),
            record_id: id.to_owned(),
            tag: Some(Tag([owner; 20])),
            stored_at: 1,
            expires_at: u64::MAX,
            max_pulls: 0,
            record_hash: [owner; 32],
            bytes: (0..len).map(|i| (i as u8) ^ id.len() as u8 ^ owner).collect(),
        }
    }

    /// Writes `batches` batches of `per_batch` records of `len` bytes; returns them.
    fn fill(store: &FjallStore, batches: usize, per_batch: usize, len: usize) -> Vec<NewRecord> {
        let mut all = Vec::new();
        for b in 0..batches {
            let batch: Vec<_> =
                (0..per_batch).map(|i| record((i % 3) as u8 + 1, &format!("r{b}-{i}"), len)).collect();
            let out = store.put_batch(&batch).expect("put");
            assert!(out.iter().all(|o| matches!(o, PutOutcome::Stored { .. })));
            all.extend(batch);
        }
        all
    }

    /// Seqs of the records `read_after` serves from owner 1's outbox after `after_seq`.
    fn read_seqs(store: &FjallStore, after_seq: u64, limit: usize) -> Vec<u64> {
        let page = store.read_after(&key(1), &key(100), after_seq, limit, usize::MAX, 2).expect("read");
        page.iter().map(|(record, _)| record.meta.seq).collect()
    }

    #[test]
    fn reads_after_recent_cursors_find_the_same_records_as_walks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = FjallConfig { recent_outboxes: 16, recent_per_outbox: 2, ..FjallConfig::default() };
        let store = FjallStore::open_with(dir.path(), config.clone()).expect("open");
        // Owner 1's records are 1, 3, 5, 7, 9; owner 2's (another outbox) 2, 4, 6, 8.
        for i in 0..9 {
            let owner = (i % 2) as u8 + 1;
            let out = store.put_batch(&[record(owner, &format!("r{i}"), 10)]).expect("put");
            assert_eq!(out, vec![PutOutcome::Stored { seq: i + 1 }]);
        }
        // The list holds 7 and 9 of owner 1: cursors from 7 are served from it, those below walk.
        assert_eq!(read_seqs(&store, 0, 10), vec![1, 3, 5, 7, 9]);
        assert_eq!(read_seqs(&store, 4, 10), vec![5, 7, 9]);
        assert_eq!(read_seqs(&store, 6, 1), vec![7]);
        assert_eq!(read_seqs(&store, 7, 10), vec![9]);
        assert_eq!(read_seqs(&store, 9, 10), Vec::<u64>::new());
        // A listed record deleted since is skipped.
        assert!(store.delete(&key(1), &key(100), "r8").expect("delete"));
        assert_eq!(read_seqs(&store, 7, 10), Vec::<u64>::new());
        assert_eq!(read_seqs(&store, 0, 10), vec![1, 3, 5, 7]);
        // After a reopen the list is empty: everything up to the last seq walks.
        drop(store);
        let store = FjallStore::open_with(dir.path(), config).expect("reopen");
        assert_eq!(read_seqs(&store, 4, 10), vec![5, 7]);
        store.put_batch(&[record(1, "late", 10)]).expect("put");
        assert_eq!(read_seqs(&store, 7, 10), vec![10]);
        assert_eq!(read_seqs(&store, 0, 10), vec![1, 3, 5, 7, 10]);
    }

    fn assert_corrupted(result: Result<FjallStore, StoreError>, needle: &str) -> String {
        match result {
            Err(StoreError::Corrupted(msg)) => {
                assert!(msg.contains(needle), "message {msg:?} should mention {needle:?}");
                msg
            }
            Err(other) => panic!("expected Corrupted, got {other:?}"),
            Ok(store) => panic!("expected Corrupted, but the store opened: {store:?}"),
        }
    }

    fn largest_file(dir: &Path) -> PathBuf {
        fn walk(dir: &Path, best: &mut Option<(u64, PathBuf)>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let entry = entry.expect("entry");
                let meta = entry.metadata().expect("metadata");
                if meta.is_dir() {
                    walk(&entry.path(), best);
                } else if best.as_ref().is_none_or(|(len, _)| meta.len() > *len) {
                    *best = Some((meta.len(), entry.path()));
                }
            }
        }
        let mut best = None;
        walk(dir, &mut best);
        best.expect("a file").1
    }

    /// The journal is preallocated with zeros: its data ends after the last non-zero byte.
    fn journal_data_len(bytes: &[u8]) -> usize {
        bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    fn with_raw_db(dir: &Path, f: impl FnOnce(&Database)) {
        let db = Database::builder(dir).open().expect("raw open");
        f(&db);
        db.persist(PersistMode::SyncAll).expect("persist");
    }

    #[test]
    fn reopen_keeps_everything_and_continues_the_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let (records, last) = {
            let store = FjallStore::open(&path).expect("open");
            let records = fill(&store, 5, 20, 300);
            let last = store.last_seq();
            assert_eq!(last, 100);
            store
                .put_account(&Account {
                    key: key(1),
                    status: crate::AccountStatus::Active,
                    created_at: 5,
                    max_bytes: 6,
                    max_records_per_day: 7,
                })
                .expect("account");
            assert!(matches!(
                store.read(&key(1), &key(100), "r0-0", 77).expect("read"),
                ReadOutcome::Served { .. }
            ));
            // Delete the newest record: its number must not come back after a restart.
            let newest = &records[99];
            assert!(store.delete(&newest.owner, &newest.receiver, &newest.record_id).expect("delete"));
            store.verify().expect("verify");
            (records, last)
        };
        for round in 0..3 {
            let store = FjallStore::open(&path).expect("reopen");
            assert_eq!(store.last_seq(), last + round);
            for (i, r) in records.iter().enumerate().take(99) {
                let got = store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get").expect("present");
                assert_eq!(got.bytes, r.bytes);
                assert_eq!(got.meta.seq, i as u64 + 1);
            }
            assert_eq!(
                store.get(&key(1), &key(100), "r0-0", 0).expect("get").expect("present").meta.pulls,
                1
            );
            assert_eq!(store.usage(&key(1), None, None, 10).expect("usage").len(), 1);
            assert_eq!(store.account(&key(1)).expect("account").expect("present").max_records_per_day, 7);
            assert_eq!(
                store.totals().expect("totals"),
                Usage { records: 99 + round, bytes: 300 * (99 + round) }
            );
            assert_eq!(store.verify().expect("verify"), store.totals().expect("totals"));
            let seq =
                stored_seq(&store.put_batch(&[record(9, &format!("new{round}"), 300)]).expect("put")[0]);
            assert_eq!(seq, last + round + 1, "numbering continues above every earlier number");
        }
    }

    fn sample_drop(n: u64, head: u32, expires_at: u64) -> NewDrop {
        NewDrop {
            tag: Prefix::truncate(32, head).expect("ok").apply(&[n as u8; TAG_LEN]),
            stamp_epoch: n % 3,
            stamp_id: [n as u8; 32],
            stored_at: 1,
            expires_at,
            drop_hash: [n as u8 ^ 0x55; 32],
            bytes: vec![n as u8; 100 + n as usize],
        }
    }

    #[test]
    fn drops_stamps_and_counts_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let drops: Vec<_> = (0..20u64)
            .map(|n| sample_drop(n, 0xabcd_0000 | n as u32, if n < 5 { 50 } else { u64::MAX }))
            .collect();
        let (seqs, last) = {
            let store = FjallStore::open(&path).expect("open");
            fill(&store, 1, 3, 10);
            let seqs: Vec<u64> = store
                .put_drops(&drops, 20)
                .expect("put")
                .iter()
                .map(|o| match o {
                    DropOutcome::Stored { seq } => *seq,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(store.charge_issuance(&[9; 32], 3, 5, 8).expect("charge"), 5);
            store.verify().expect("verify");
            (seqs, store.last_seq())
        };
        assert_eq!(last, seqs[19]);
        for round in 0..3u64 {
            let store = FjallStore::open(&path).expect("reopen");
            assert_eq!(store.last_seq(), last + round, "numbering continues after the drops");
            for d in &drops {
                assert!(store.stamp_spent(d.stamp_epoch, &d.stamp_id).expect("spent"));
            }
            // The bucket is still full: its count survived.
            let extra = sample_drop(100 + round, 0xabcd_ffff, u64::MAX);
            assert_eq!(
                store.put_drops(std::slice::from_ref(&extra), 20).expect("put"),
                vec![DropOutcome::BucketFull]
            );
            assert_eq!(store.put_drops(&[drops[7].clone()], 0).expect("put"), vec![DropOutcome::Spent]);
            let got = store
                .fetch_drops(&Prefix::truncate(16, 0xabcd_0000).expect("ok"), 0, 100, 60)
                .expect("fetch");
            assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), seqs[5..]);
            assert_eq!(got[0].bytes, drops[5].bytes);
            assert_eq!(
                store.charge_issuance(&[9; 32], 3, 5, 8).expect("charge"),
                if round == 0 { 3 } else { 0 }
            );
            assert_eq!(store.verify().expect("verify"), store.totals().expect("totals"));
            // A record takes the next number, above every drop.
            let seq = stored_seq(&store.put_batch(&[record(9, &format!("d{round}"), 10)]).expect("put")[0]);
            assert_eq!(seq, last + round + 1);
        }
        let store = FjallStore::open(&path).expect("reopen");
        assert_eq!(store.drop_totals().expect("totals").records, 20);
        assert_eq!(store.expire_drops(50, 100).expect("expire"), 5);
        store.verify().expect("verify");
        drop_store_and_reopen(store, &path, |store| {
            assert_eq!(store.drop_totals().expect("totals").records, 15);
            // Five places freed in the bucket.
            let more: Vec<_> = (200..206u64).map(|n| sample_drop(n, 0xabcd_1234, u64::MAX)).collect();
            let out = store.put_drops(&more, 20).expect("put");
            assert_eq!(out.iter().filter(|o| matches!(o, DropOutcome::Stored { .. })).count(), 5);
            assert_eq!(out[5], DropOutcome::BucketFull);
            store.verify().expect("verify");
        });
    }

    fn drop_store_and_reopen(store: FjallStore, path: &Path, f: impl FnOnce(&FjallStore)) {
        std::mem::drop(store);
        let store = FjallStore::open(path).expect("reopen");
        f(&store);
    }

    /// Flushed tables pin no filter or index block: pinned blocks would stay in memory for as
    /// long as the table lives, and append-only keyspaces move their tables down whole.
    #[test]
    fn flushed_tables_pin_nothing() {
        use fjall::AbstractTree as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path()).expect("open");
        fill(&store, 4, 50, 1000);
        let drops: Vec<_> = (0..50u64).map(|n| sample_drop(n, n as u32, u64::MAX)).collect();
        store.put_drops(&drops, 0).expect("put drops");
        let mut tables = 0;
        for (name, ks) in store.ks.all() {
            ks.rotate_memtable_and_wait().expect("flush");
            for table in ks.tree.current_version().iter_tables() {
                tables += 1;
                assert_eq!(table.pinned_filter_size(), 0, "{name} pins a filter block");
                assert_eq!(table.pinned_block_index_size(), 0, "{name} pins an index block");
            }
        }
        assert!(tables >= 8, "the fill should have flushed tables in most keyspaces, got {tables}");
        let stats = store.keyspace_stats();
        assert_eq!(stats.len(), store.ks.all().len());
        assert_eq!(stats.iter().map(|k| k.tables).sum::<usize>(), tables);
        let records = stats.iter().find(|k| k.name == "records").expect("records");
        assert!(
            records.tables >= 1 && records.l0_tables <= records.tables && records.blob_files >= 1,
            "{records:?}"
        );
    }

    /// Each keyspace's tables carry the filters of its role, in level 0 and in the last level
    /// after a full compaction, and every lookup answers the same through them.
    #[test]
    fn filters_follow_how_each_keyspace_is_read() {
        use fjall::AbstractTree as _;
        const WALKED: [&str; 5] = ["pair_outbox", "expiry", "tags", "drop_prefix", "drop_expiry"];
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FjallStore::open(dir.path()).expect("open");
        let records = fill(&store, 4, 50, 200);
        let drops: Vec<_> = (0..50u64).map(|n| sample_drop(n, n as u32, u64::MAX)).collect();
        store.put_drops(&drops, 0).expect("put drops");
        let filters = |ks: &Keyspace| -> Vec<u32> {
            ks.tree.current_version().iter_tables().map(|t| t.filter_size()).collect()
        };
        let mut seen = 0;
        for (name, ks) in store.ks.all() {
            ks.rotate_memtable_and_wait().expect("flush");
            let sizes = filters(ks);
            if sizes.is_empty() {
                continue;
            }
            seen += 1;
            if WALKED.contains(&name) {
                assert!(sizes.iter().all(|&s| s == 0), "{name} is only walked, yet has filters: {sizes:?}");
            } else {
                assert!(sizes.iter().all(|&s| s > 0), "{name} is looked up, yet has no filter: {sizes:?}");
            }
        }
        assert!(seen >= 9, "the fill should have flushed most keyspaces, got {seen}");
        // Compacted into the last level: the envelopes' lookups always hit, so no filter there;
        // a path lookup often misses, so its filter stays.
        let ks = &store.ks;
        for (name, ks, has_filter) in
            [("records", &ks.records, false), ("drops", &ks.drops, false), ("pair_paths", &ks.paths, true)]
        {
            ks.major_compact().expect("compact");
            let sizes = filters(ks);
            assert!(!sizes.is_empty(), "{name} has no table after compaction");
            assert!(sizes.iter().all(|&s| (s > 0) == has_filter), "{name}: {sizes:?}");
        }
        for r in &records {
            let got = store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get").expect("present");
            assert_eq!(got.meta.record_hash, r.record_hash);
        }
        assert!(store.get(&records[0].owner, &records[0].receiver, "absent", 0).expect("get").is_none());
        for d in drops.iter().step_by(7) {
            let prefix = Prefix::truncate(32, d.tag.head()).expect("prefix");
            let got = store.fetch_drops(&prefix, 0, 1_000, 0).expect("fetch");
            assert!(got.iter().any(|g| g.tag == d.tag && g.bytes == d.bytes));
        }
        store.verify().expect("verify");
    }

    #[test]
    fn drops_flushed_to_tables_verify_and_fetch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drops: Vec<_> =
            (0..200u64).map(|n| sample_drop(n, (n as u32).wrapping_mul(0x9e37_79b9), u64::MAX)).collect();
        {
            let store = FjallStore::open(dir.path()).expect("open");
            store.put_drops(&drops, 0).expect("put");
            for (_, ks) in store.ks.all() {
                ks.rotate_memtable_and_wait().expect("flush");
            }
        }
        let store =
            FjallStore::open_with(dir.path(), FjallConfig { verify_on_open: true, ..Default::default() })
                .expect("reopen");
        for d in drops.iter().step_by(17) {
            for bits in [3, 9, 32] {
                let prefix = Prefix::truncate(bits, d.tag.head()).expect("ok");
                let got = store.fetch_drops(&prefix, 0, 1_000, 0).expect("fetch");
                assert!(got.iter().any(|g| g.tag == d.tag && g.bytes == d.bytes));
                assert!(got.iter().all(|g| prefix.matches(&g.tag)));
            }
        }
    }

    #[test]
    fn verify_finds_damaged_drop_indexes() {
        for damage in ["prefix", "bucket", "totals", "expiry"] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let store = FjallStore::open(dir.path()).expect("open");
                store
                    .put_drops(&[sample_drop(1, 0x1234_5678, 9), sample_drop(2, 0x1234_0000, 9)], 0)
                    .expect("put");
            }
            with_raw_db(dir.path(), |db| {
                let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).expect("ks");
                match damage {
                    "prefix" => {
                        ks("drop_prefix").remove(drop_prefix_key(12, 0x1234_5678, 1)).expect("remove")
                    }
                    "bucket" => {
                        ks("drop_buckets").insert(bucket_key(0x1234), 3u64.to_be_bytes()).expect("insert")
                    }
                    "totals" => ks("meta")
                        .insert(DROP_TOTALS_KEY, encode_usage_counters(Usage { records: 2, bytes: 1 }))
                        .expect("insert"),
                    _ => ks("drop_expiry").remove(expiry_key(9, 2)).expect("remove"),
                }
            });
            let store = FjallStore::open(dir.path()).expect("opens: the damage is in the data");
            assert!(matches!(store.verify(), Err(StoreError::Corrupted(_))), "{damage}");
        }
    }

    #[test]
    fn upgrades_a_v1_store_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = fill(&FjallStore::open(dir.path()).expect("create"), 2, 5, 100);
        // What a v1 build left: its marker, no drop totals, no drop keyspaces.
        with_raw_db(dir.path(), |db| {
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta");
            meta.insert(FORMAT_KEY, OLDER_FORMATS[0].0).expect("insert");
            meta.remove(DROP_TOTALS_KEY).expect("remove");
            v3_indexes(db, usize::MAX);
            for name in DROP_KEYSPACE_NAMES {
                let keyspace = db.keyspace(name, KeyspaceCreateOptions::default).expect("ks");
                db.delete_keyspace(keyspace).expect("delete keyspace");
            }
        });
        let store = FjallStore::open(dir.path()).expect("a v1 store opens");
        assert_eq!(store.ks.meta.get(FORMAT_KEY).expect("get").as_deref(), Some(FORMAT.as_bytes()));
        assert_eq!(store.drop_totals().expect("totals"), Usage::default());
        assert_eq!(store.verify().expect("verify").records, records.len() as u64);
        let seq = match store.put_drops(&[sample_drop(1, 1, u64::MAX)], 0).expect("put")[0] {
            DropOutcome::Stored { seq } => seq,
            other => panic!("{other:?}"),
        };
        assert_eq!(seq, records.len() as u64 + 1);
        drop_store_and_reopen(store, dir.path(), |store| {
            assert_eq!(store.drop_totals().expect("totals").records, 1);
            store.verify().expect("verify");
        });
        // A v1 marker over drop data is not a v1 store.
        with_raw_db(dir.path(), |db| {
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta");
            meta.insert(FORMAT_KEY, OLDER_FORMATS[0].0).expect("insert");
        });
        assert_corrupted(FjallStore::open(dir.path()), "added in v2");
    }

    #[test]
    fn upgrades_a_v2_store_in_place_dropping_the_receiver_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = fill(&FjallStore::open(dir.path()).expect("create"), 2, 30, 100);
        // What a v2 build left: its marker and a receiver index entry for every record.
        let seqs: Vec<u64> = (1..=records.len() as u64).collect();
        with_raw_db(dir.path(), |db| {
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta");
            meta.insert(FORMAT_KEY, OLDER_FORMATS[1].0).expect("insert");
            v3_indexes(db, usize::MAX);
            let receiver = db.keyspace(LEGACY_RECEIVER_KEYSPACE, KeyspaceCreateOptions::default).expect("ks");
            for (record, seq) in records.iter().zip(&seqs) {
                receiver.insert(receiver_key(&record.receiver, *seq), []).expect("insert");
            }
            receiver.rotate_memtable_and_wait().expect("flush");
        });
        drop_store_and_reopen(FjallStore::open(dir.path()).expect("a v2 store opens"), dir.path(), |store| {
            assert_eq!(store.ks.meta.get(FORMAT_KEY).expect("get").as_deref(), Some(FORMAT.as_bytes()));
            assert!(!store.db.list_keyspace_names().iter().any(|n| &**n == LEGACY_RECEIVER_KEYSPACE));
            assert_eq!(store.verify().expect("verify").records, records.len() as u64);
            for r in &records {
                let got = store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get").expect("kept");
                assert_eq!(got.bytes, r.bytes);
            }
        });
        // An upgrade cut short after the marker (the index still there) is finished on open.
        with_raw_db(dir.path(), |db| {
            let receiver = db.keyspace(LEGACY_RECEIVER_KEYSPACE, KeyspaceCreateOptions::default).expect("ks");
            receiver.insert(receiver_key(&records[0].receiver, 1), []).expect("insert");
        });
        let store = FjallStore::open(dir.path()).expect("reopen");
        assert!(!store.db.list_keyspace_names().iter().any(|n| &**n == LEGACY_RECEIVER_KEYSPACE));
        store.verify().expect("verify");
    }

    /// Gives a store the v3 indexes (`paths` and `outbox` keyed by owner ‖ receiver, built from
    /// its records) and deletes its v4 ones, except for the first `keep` entries of each (what
    /// an upgrade cut short may have written).
    fn v3_indexes(db: &Database, keep: usize) {
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).expect("ks");
        let (records, paths, outbox) = (ks("records"), ks(LEGACY_PATHS_KEYSPACE), ks(LEGACY_OUTBOX_KEYSPACE));
        for guard in records.iter() {
            let (key, value) = guard.into_inner().expect("entry");
            let (meta, _) = decode_record(&value).expect("record");
            let (owner, receiver) = (meta.owner.to_bytes(), meta.receiver.to_bytes());
            paths.insert([&owner[..], &receiver, meta.record_id.as_bytes()].concat(), &*key).expect("insert");
            outbox.insert([&owner[..], &receiver, &key].concat(), []).expect("insert");
        }
        for name in ["pair_paths", "pair_outbox"] {
            let keyspace = ks(name);
            let doomed: Vec<_> = keyspace.iter().skip(keep).map(|g| g.key().expect("key")).collect();
            for key in doomed {
                keyspace.remove(key).expect("remove");
            }
        }
    }

    /// What every record's indexes say, for comparing a store before and after an upgrade.
    fn index_view(store: &FjallStore, records: &[NewRecord]) -> Vec<(Option<u64>, Vec<u64>)> {
        records
            .iter()
            .map(|r| {
                let got = store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get");
                let query = ListQuery {
                    owner: r.owner,
                    receiver: r.receiver,
                    after_seq: 0,
                    after_ts: None,
                    before_ts: None,
                    limit: 1000,
                };
                let listed = store.list(&query, 0).expect("list").iter().map(|m| m.seq).collect();
                (got.map(|g| g.meta.seq), listed)
            })
            .collect()
    }

    #[test]
    fn upgrades_a_v3_store_in_place_keying_its_indexes_by_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (records, before) = {
            let store = FjallStore::open(dir.path()).expect("create");
            let records = fill(&store, 3, 40, 50);
            let view = index_view(&store, &records);
            (records, view)
        };
        for (case, keep) in [("from scratch", 0), ("cut short before the marker", 25)] {
            with_raw_db(dir.path(), |db| {
                db.keyspace("meta", KeyspaceCreateOptions::default)
                    .expect("meta")
                    .insert(FORMAT_KEY, OLDER_FORMATS[2].0)
                    .expect("insert");
                v3_indexes(db, keep);
            });
            let store = FjallStore::open(dir.path()).expect("a v3 store opens");
            assert_eq!(store.ks.meta.get(FORMAT_KEY).expect("get").as_deref(), Some(FORMAT.as_bytes()));
            let names = store.db.list_keyspace_names();
            assert!(!names.iter().any(|n| LEGACY_KEYSPACE_NAMES.contains(&&**n)), "{case}: {names:?}");
            assert_eq!(store.verify().expect("verify").records, records.len() as u64, "{case}");
            assert_eq!(index_view(&store, &records), before, "{case}");
        }
        // Cut short after the marker: the old indexes are deleted by the next open.
        with_raw_db(dir.path(), |db| v3_indexes(db, usize::MAX));
        assert_eq!(
            FjallStore::open(dir.path()).expect("v4 with v3 leftovers").verify().expect("verify").records,
            records.len() as u64
        );
        drop_store_and_reopen(FjallStore::open(dir.path()).expect("reopen"), dir.path(), |store| {
            assert!(!store.db.list_keyspace_names().iter().any(|n| LEGACY_KEYSPACE_NAMES.contains(&&**n)));
            assert_eq!(index_view(store, &records), before);
        });
        // A damaged v3 key is reported, not upgraded around.
        with_raw_db(dir.path(), |db| {
            db.keyspace("meta", KeyspaceCreateOptions::default)
                .expect("meta")
                .insert(FORMAT_KEY, OLDER_FORMATS[2].0)
                .expect("insert");
            v3_indexes(db, usize::MAX);
            db.keyspace(LEGACY_OUTBOX_KEYSPACE, KeyspaceCreateOptions::default)
                .expect("ks")
                .insert([7u8; 10], [])
                .expect("insert");
        });
        assert_corrupted(FjallStore::open(dir.path()), "too short");
    }

    #[test]
    fn pairs_that_share_an_id_keep_their_records_apart() {
        NARROW_PAIR_IDS.with(|narrow| narrow.set(true));
        let store = FjallStore::temporary().expect("store");
        let pairs: Vec<(PublicKey, PublicKey)> =
            (1..=3).flat_map(|o| (101..=103).map(move |r| (key(o), key(r)))).collect();
        let write = |p: usize, id: &str, expires_at: u64, stored_at: u64| {
            let mut r = record(1, id, 40);
            (r.owner, r.receiver, r.stored_at, r.expires_at) =
                (pairs[p].0, pairs[p].1, stored_at, expires_at);
            r.record_hash = [p as u8; 32];
            r
        };
        // Every pair shares its id with others (one bit of id): each must still see only its own.
        for round in 0..4 {
            let batch: Vec<_> =
                (0..pairs.len()).map(|p| write(p, &format!("p{p}-{round}"), u64::MAX, 1)).collect();
            assert!(
                store.put_batch(&batch).expect("put").iter().all(|o| matches!(o, PutOutcome::Stored { .. }))
            );
        }
        for (p, (owner, receiver)) in pairs.iter().enumerate() {
            let query = ListQuery {
                owner: *owner,
                receiver: *receiver,
                after_seq: 0,
                after_ts: None,
                before_ts: None,
                limit: 100,
            };
            let listed = store.list(&query, 0).expect("list");
            let ids: Vec<_> = listed.iter().map(|m| m.record_id.clone()).collect();
            assert_eq!(ids, (0..4).map(|round| format!("p{p}-{round}")).collect::<Vec<_>>());
            let fetched = store.fetch_after(owner, receiver, 0, 100, 0).expect("fetch");
            assert!(fetched.iter().all(|r| r.meta.owner == *owner && r.meta.receiver == *receiver));
            assert_eq!(fetched.len(), 4);
            assert!(store.get(owner, receiver, &format!("p{p}-0"), 0).expect("get").is_some());
            let other = (p + 1) % pairs.len();
            assert!(store.get(owner, receiver, &format!("p{other}-0"), 0).expect("get").is_none());
        }
        // Two pairs with one id and one record id: the live record holds the key, the other
        // pair's write is a conflict, and once the first has expired the path is free again.
        let same = |a: usize| {
            (0..pairs.len())
                .find(|&b| b != a && pair_id(&pairs[b].0, &pairs[b].1) == pair_id(&pairs[a].0, &pairs[a].1))
        };
        let (a, b) = (0..pairs.len()).find_map(|a| same(a).map(|b| (a, b))).expect("ids collide");
        assert!(matches!(
            store.put_batch(&[write(a, "shared", 10, 1)]).expect("put")[0],
            PutOutcome::Stored { .. }
        ));
        assert_eq!(store.put_batch(&[write(b, "shared", 100, 5)]).expect("put")[0], PutOutcome::Conflict);
        assert!(store.get(&pairs[b].0, &pairs[b].1, "shared", 5).expect("get").is_none());
        assert!(!store.delete(&pairs[b].0, &pairs[b].1, "shared").expect("delete"), "not b's to delete");
        assert!(matches!(
            store.put_batch(&[write(b, "shared", 100, 20)]).expect("put")[0],
            PutOutcome::Stored { .. }
        ));
        assert!(store.get(&pairs[a].0, &pairs[a].1, "shared", 20).expect("get").is_none());
        assert!(store.get(&pairs[b].0, &pairs[b].1, "shared", 20).expect("get").is_some());
        store.verify().expect("verify");
        NARROW_PAIR_IDS.with(|narrow| narrow.set(false));
    }

    fn stored_seq(outcome: &PutOutcome) -> u64 {
        match outcome {
            PutOutcome::Stored { seq } => *seq,
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    #[test]
    fn records_flushed_to_tables_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = {
            let store = FjallStore::open(dir.path()).expect("open");
            let records = fill(&store, 4, 50, 1_000);
            for (_, ks) in store.ks.all() {
                ks.rotate_memtable_and_wait().expect("flush");
            }
            records
        };
        let store =
            FjallStore::open_with(dir.path(), FjallConfig { verify_on_open: true, ..Default::default() })
                .expect("reopen");
        for r in &records {
            assert_eq!(
                store.get(&r.owner, &r.receiver, &r.record_id, 0).expect("get").expect("present").bytes,
                r.bytes
            );
        }
    }

    /// Three outboxes interleaved in sequence order: A has every other record (dense), B every
    /// 150th (sparse), C the rest; part of them flushed to tables, part in the memtable, three
    /// of A's deleted. Returns the store and each outbox's (seq, bytes) in order.
    #[allow(clippy::type_complexity)]
    fn interleaved_outboxes()
    -> (FjallStore, [(PublicKey, PublicKey); 3], HashMap<PublicKey, Vec<(u64, Vec<u8>)>>) {
        let store = FjallStore::temporary().expect("store");
        let outboxes = [(key(1), key(101)), (key(2), key(102)), (key(3), key(103))];
        let [a, b, c] = outboxes;
        let mut expected: HashMap<PublicKey, Vec<(u64, Vec<u8>)>> = HashMap::new();
        let mut seq = 0u64;
        for chunk in 0..6u64 {
            let batch: Vec<NewRecord> = (0..500u64)
                .map(|i| {
                    let n = chunk * 500 + i;
                    let (owner, receiver) = if n % 150 == 7 {
                        b
                    } else if n % 2 == 0 {
                        a
                    } else {
                        c
                    };
                    NewRecord {
                        owner,
                        receiver,
                        record_id: format!("w{n}"),
                        tag: None,
                        stored_at: 1,
                        expires_at: u64::MAX,
                        max_pulls: 0,
                        record_hash: [n as u8; 32],
                        bytes: n.to_be_bytes().repeat(4),
                    }
                })
                .collect();
            store.put_batch(&batch).expect("put");
            for r in batch {
                seq += 1;
                expected.entry(r.owner).or_default().push((seq, r.bytes));
            }
            if chunk % 2 == 0 {
                store.ks.records.rotate_memtable_and_wait().expect("flush");
            }
        }
        for gone in [100u64, 102, 2000] {
            assert!(store.delete(&a.0, &a.1, &format!("w{gone}")).expect("delete"));
            expected.get_mut(&a.0).expect("a").retain(|(_, bytes)| *bytes != gone.to_be_bytes().repeat(4));
        }
        (store, outboxes, expected)
    }

    #[test]
    fn walks_step_over_dense_records_and_look_up_sparse_ones() {
        let (store, outboxes, expected) = interleaved_outboxes();
        for (owner, receiver) in outboxes {
            let want = &expected[&owner];
            // From the start, and from a cursor in the middle.
            for after in [0, want[want.len() / 2].0] {
                let want: Vec<_> = want.iter().filter(|(seq, _)| *seq > after).cloned().collect();
                let got = store.fetch_after(&owner, &receiver, after, 10_000, 0).expect("fetch");
                let got: Vec<_> = got.into_iter().map(|r| (r.meta.seq, r.bytes)).collect();
                assert_eq!(got, want, "fetch_after of outbox {} after {after}", owner.to_hex());
                let page =
                    PageRead { owner, receiver, after_seq: after, limit: 10_000, max_bytes: usize::MAX };
                let read = store.read_after_many(&[page], 0).expect("read").pop().expect("one page");
                assert!(!read.more, "the whole outbox fits the page");
                let read: Vec<_> = read.records.into_iter().map(|(r, _)| (r.meta.seq, r.bytes)).collect();
                assert_eq!(read, want, "read_after_many of outbox {} after {after}", owner.to_hex());
            }
        }
        // Which way each walk went: the dense outbox stepped all the way, the sparse one ran out
        // of skips and went back to lookups.
        let snap = store.db.snapshot();
        for (owner, sparse) in [(key(1), false), (key(2), true)] {
            let mut loader = RecordLoader::new(&store, &snap, "outbox");
            for (seq, bytes) in &expected[&owner] {
                let value = loader.load(*seq).expect("load");
                assert_eq!(decode_record(&value).expect("decode").1, &bytes[..]);
            }
            assert_eq!(loader.sparse, sparse, "outbox {}", owner.to_hex());
            assert!(loader.iterated > 0);
        }
    }

    #[test]
    fn a_walk_finds_a_missing_record_whether_it_looks_up_or_steps() {
        // An outbox entry whose record is gone is corruption.
        let (owner, receiver) = (key(1), key(100));
        let seqs: Vec<u64> = {
            let store = FjallStore::temporary().expect("store");
            fill(&store, 1, 60, 10);
            store
                .fetch_after(&owner, &receiver, 0, 100, 0)
                .expect("fetch")
                .iter()
                .map(|r| r.meta.seq)
                .collect()
        };
        assert_eq!(seqs.len(), 20);
        // The 4th record is looked up, the 16th stepped to, the last past the iterator's end.
        for victim in [seqs[3], seqs[15], seqs[19]] {
            let store = FjallStore::temporary().expect("store");
            fill(&store, 1, 60, 10);
            store.ks.records.remove(seq_key(victim)).expect("remove");
            let err = store.fetch_after(&owner, &receiver, 0, 100, 0).expect_err("missing record");
            assert!(matches!(&err, StoreError::Corrupted(m) if m.contains("has no record")), "{err:?}");
        }
    }

    #[test]
    fn refuses_directories_that_are_not_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("notes.txt"), b"hello").expect("write");
        assert_corrupted(FjallStore::open(dir.path()), "not a Pigeonhole store");
        assert!(!dir.path().join(FJALL_MARKER).exists(), "nothing was created in the foreign directory");

        // Garbage with the names of the engine's files.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FJALL_MARKER), b"\x00garbage").expect("write");
        fs::write(dir.path().join("0.jnl"), b"garbage garbage garbage").expect("write");
        assert_corrupted(FjallStore::open(dir.path()), "");

        // A directory where a journal should be: the engine asserts; open reports it.
        let dir = tempfile::tempdir().expect("tempdir");
        FjallStore::open(dir.path()).expect("create");
        fs::create_dir(dir.path().join("7.jnl")).expect("mkdir");
        assert_corrupted(FjallStore::open(dir.path()), "");

        // Another application's fjall database.
        let dir = tempfile::tempdir().expect("tempdir");
        with_raw_db(dir.path(), |db| {
            db.keyspace("items", KeyspaceCreateOptions::default)
                .expect("ks")
                .insert("a", "b")
                .expect("insert");
        });
        assert_corrupted(FjallStore::open(dir.path()), "keyspace");

        // Our keyspaces with data but no format marker.
        let dir = tempfile::tempdir().expect("tempdir");
        with_raw_db(dir.path(), |db| {
            db.keyspace("records", KeyspaceCreateOptions::default)
                .expect("ks")
                .insert("a", "b")
                .expect("insert");
        });
        assert_corrupted(FjallStore::open(dir.path()), "no format marker");
    }

    #[test]
    fn a_creation_interrupted_before_the_format_marker_completes() {
        let dir = tempfile::tempdir().expect("tempdir");
        with_raw_db(dir.path(), |db| {
            db.keyspace("records", KeyspaceCreateOptions::default).expect("ks");
        });
        let store = FjallStore::open(dir.path()).expect("open");
        fill(&store, 1, 3, 10);
        drop(store);
        assert_eq!(FjallStore::open(dir.path()).expect("reopen").last_seq(), 3);
    }

    #[test]
    fn refuses_other_format_versions_and_garbage_meta() {
        let cases: [(&[u8], &[u8], &str); 6] = [
            (FORMAT_KEY, b"pigeonhole-store v999", "format v999"),
            (FORMAT_KEY, b"pigeonhole-store v0", "format v0"),
            (FORMAT_KEY, b"\xff\xfe garbage", "not a Pigeonhole store"),
            (COMMIT_KEY, b"1234567", "meta"),
            (LAST_SEQ_KEY, b"", "meta"),
            (TOTALS_KEY, b"garbage", "meta"),
        ];
        for (meta_key, value, needle) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            fill(&FjallStore::open(dir.path()).expect("create"), 2, 5, 100);
            with_raw_db(dir.path(), |db| {
                let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta");
                meta.insert(meta_key, value).expect("insert");
            });
            assert_corrupted(FjallStore::open(dir.path()), needle);
        }
        // A missing format marker on a store with data.
        let dir = tempfile::tempdir().expect("tempdir");
        fill(&FjallStore::open(dir.path()).expect("create"), 1, 5, 100);
        with_raw_db(dir.path(), |db| {
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).expect("meta");
            meta.remove(FORMAT_KEY).expect("remove");
        });
        assert_corrupted(FjallStore::open(dir.path()), "format marker is gone");
    }

    #[test]
    fn detects_a_truncated_journal() {
        for keep in [0.0, 0.5, 0.9, 0.999] {
            let dir = tempfile::tempdir().expect("tempdir");
            fill(&FjallStore::open(dir.path()).expect("create"), 10, 10, 1_000);
            let file = largest_file(dir.path());
            assert!(file.extension().is_some_and(|e| e == "jnl"), "largest file is {file:?}");
            let len = journal_data_len(&fs::read(&file).expect("read")) as u64;
            let f = OpenOptions::new().write(true).open(&file).expect("open");
            f.set_len(((len as f64) * keep) as u64).expect("truncate");
            drop(f);
            let msg = assert_corrupted(FjallStore::open(dir.path()), "");
            assert!(msg.contains("lost acknowledged writes") || msg.contains("journal"), "{msg}");
            // And again: the damage is not forgotten after a failed open.
            assert_corrupted(FjallStore::open(dir.path()), "");
        }
    }

    #[test]
    fn detects_flipped_bytes_in_the_journal() {
        for (at, byte) in [(0.5, 0xff), (0.1, 0x01), (0.75, 0x80), (0.0, 0xff), (0.99, 0x55)] {
            let dir = tempfile::tempdir().expect("tempdir");
            fill(&FjallStore::open(dir.path()).expect("create"), 10, 10, 1_000);
            let file = largest_file(dir.path());
            let mut bytes = fs::read(&file).expect("read");
            let len = journal_data_len(&bytes);
            let pos = ((len as f64) * at) as usize;
            for b in &mut bytes[pos..(pos + 4).min(len)] {
                *b ^= byte;
            }
            fs::write(&file, bytes).expect("write");
            assert_corrupted(FjallStore::open(dir.path()), "");
        }
    }

    /// Damage in a table is found by the checksums when the damaged block is read: either
    /// the store refuses to open, or verification and the reads of the damaged records
    /// fail; no read returns wrong bytes.
    #[test]
    fn detects_damaged_tables() {
        for mode in ["flip-middle", "flip-start", "flip-end", "truncate"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let records = {
                let store = FjallStore::open(dir.path()).expect("create");
                let records = fill(&store, 4, 50, 1_000);
                for (_, ks) in store.ks.all() {
                    ks.rotate_memtable_and_wait().expect("flush");
                }
                records
            };
            let file = largest_file(&dir.path().join("keyspaces"));
            let mut bytes = fs::read(&file).expect("read");
            let len = bytes.len();
            match mode {
                "flip-middle" => bytes[len / 2] ^= 0x10,
                "flip-start" => bytes[10] ^= 0x01,
                "flip-end" => bytes[len - 10] ^= 0x40,
                _ => bytes.truncate(len / 3),
            }
            fs::write(&file, bytes).expect("write");
            let store = match FjallStore::open(dir.path()) {
                Err(StoreError::Corrupted(_)) => continue,
                Err(other) => panic!("{mode}: expected Corrupted, got {other:?}"),
                Ok(store) => store,
            };
            assert!(matches!(store.verify(), Err(StoreError::Corrupted(_))), "{mode}: verify must fail");
            let mut failed = 0;
            for r in &records {
                match store.get(&r.owner, &r.receiver, &r.record_id, 0) {
                    Ok(Some(got)) => assert_eq!(got.bytes, r.bytes, "{mode}: wrong bytes served"),
                    Ok(None) => panic!("{mode}: {} silently missing", r.record_id),
                    Err(StoreError::Corrupted(_)) => failed += 1,
                    Err(other) => panic!("{mode}: expected Corrupted, got {other:?}"),
                }
            }
            let _ = failed;
        }
    }

    #[test]
    fn the_commit_witness_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(&FjallStore::open(dir.path()).expect("create"), 2, 2, 10);
        let witness = dir.path().join(WITNESS_FILE);
        let good = fs::read(&witness).expect("read");
        assert_eq!(Witness::decode(&good), Some(2));
        fs::write(&witness, b"garbage").expect("write");
        assert_corrupted(FjallStore::open(dir.path()), "witness");
        fs::remove_file(&witness).expect("remove");
        assert_corrupted(FjallStore::open(dir.path()), "witness");
        // A witness ahead of the store: acknowledged writes are missing.
        fs::write(&witness, Witness::encode(3)).expect("write");
        assert_corrupted(FjallStore::open(dir.path()), "lost acknowledged writes");
        // A stale witness (as after a power loss) is fine, and is brought up to date.
        fs::write(&witness, Witness::encode(1)).expect("write");
        let store = FjallStore::open(dir.path()).expect("open");
        store.put_batch(&[record(1, "one-more", 10)]).expect("put");
        assert_eq!(Witness::decode(&fs::read(&witness).expect("read")), Some(3));
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = FjallStore::open(dir.path()).expect("open");
        match FjallStore::open(dir.path()) {
            Err(StoreError::Io(msg)) => assert!(msg.contains("another process"), "{msg}"),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn maps_errors() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(matches!(io_error(full, "x"), StoreError::Full));
        assert!(matches!(io_error(io::Error::from_raw_os_error(28), "x"), StoreError::Full), "ENOSPC");
        assert!(matches!(io_error(io::Error::from(io::ErrorKind::QuotaExceeded), "x"), StoreError::Full));
        assert!(matches!(
            io_error(io::Error::from(io::ErrorKind::UnexpectedEof), "x"),
            StoreError::Corrupted(_)
        ));
        assert!(matches!(io_error(io::Error::from(io::ErrorKind::PermissionDenied), "x"), StoreError::Io(_)));
        assert!(matches!(fjall_error(fjall::Error::Io(io::Error::from_raw_os_error(28))), StoreError::Full));
        assert!(matches!(fjall_error(fjall::Error::InvalidTrailer), StoreError::Corrupted(_)));
        assert!(matches!(fjall_error(fjall::Error::Unrecoverable), StoreError::Corrupted(_)));
        assert!(matches!(
            fjall_error(fjall::Error::JournalRecovery(fjall::JournalRecoveryError::ChecksumMismatch)),
            StoreError::Corrupted(_)
        ));
        assert!(matches!(
            fjall_error(fjall::Error::Storage(fjall::LsmError::InvalidHeader("x"))),
            StoreError::Corrupted(_)
        ));
        assert!(matches!(fjall_error(fjall::Error::Poisoned), StoreError::Io(_)));
        // After a write failed for lack of space, the engine's refusals are `Full` too.
        let store = FjallStore::temporary().expect("store");
        assert!(matches!(store.write_error(fjall::Error::Poisoned), StoreError::Io(_)));
        assert!(matches!(
            store.write_error(fjall::Error::Io(io::Error::from_raw_os_error(28))),
            StoreError::Full
        ));
        assert!(matches!(store.write_error(fjall::Error::Poisoned), StoreError::Full));
    }

    #[test]
    fn temporary_stores_clean_up() {
        let store = FjallStore::temporary().expect("store");
        let dir = store.dir().to_path_buf();
        fill(&store, 1, 1, 10);
        assert!(dir.exists());
        drop(store);
        assert!(!dir.exists());
    }
}
