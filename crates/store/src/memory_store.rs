//! [`MemoryStore`]: the [`Store`] semantics on in-memory ordered maps, for engine unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use parking_lot::RwLock;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::tag::{Prefix, TAG_LEN, Tag};

use crate::codec::{check_new_drop, check_new_record};
use crate::{
    Account, DropOutcome, ListQuery, MAX_READ_BATCH, NewDrop, NewRecord, PutOutcome, ReadKey, ReadOutcome,
    RecordMeta, Store, StoreError, StoredDrop, StoredRecord, Usage, UsageRow, drop_bucket,
};

type Key = [u8; 32];

/// A [`Store`] held in memory: ordered maps behind one lock.
///
/// **Not durable**: everything is lost when the value is dropped, and nothing survives a
/// crash, so this backend breaks the durability promise of [`Store::put_batch`]. It exists for
/// engine unit tests and as the reference model the embedded backend is checked against; a
/// relay must run on [`FjallStore`](crate::FjallStore).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Clone)]
struct Entry {
    meta: RecordMeta,
    bytes: Vec<u8>,
}

impl Entry {
    fn stored(&self) -> StoredRecord {
        StoredRecord { meta: self.meta.clone(), bytes: self.bytes.clone() }
    }

    fn live(&self, now: u64) -> bool {
        self.meta.expires_at > now
    }
}

#[derive(Debug, Default)]
struct Inner {
    last_seq: u64,
    records: BTreeMap<u64, Entry>,
    paths: HashMap<(Key, Key, String), u64>,
    outbox: BTreeSet<(Key, Key, u64)>,
    tags: BTreeSet<([u8; TAG_LEN], u64)>,
    expiry: BTreeSet<(u64, u64)>,
    /// (owner, read_at, unique counter) → row.
    usage: BTreeMap<(Key, u64, u64), UsageRow>,
    usage_counter: u64,
    accounts: HashMap<Key, Account>,
    owners: HashMap<Key, Usage>,
    totals: Usage,
    /// Drops by sequence number; a prefix query scans them all (the model, not the fast path).
    drops: BTreeMap<u64, StoredDrop>,
    /// (expires_at, seq) of every drop.
    drop_expiry: BTreeSet<(u64, u64)>,
    /// Spent stamps: (epoch, stamp id).
    stamps: BTreeSet<(u64, [u8; 32])>,
    /// Live drops per bucket (absent = 0).
    buckets: HashMap<u16, u64>,
    drop_totals: Usage,
    /// (account, day) → tokens issued.
    issuance: HashMap<(Key, u64), u32>,
}

fn path_of(owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> (Key, Key, String) {
    (owner.to_bytes(), receiver.to_bytes(), record_id.to_owned())
}

impl Inner {
    fn seq_at(&self, owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> Option<u64> {
        self.paths.get(&path_of(owner, receiver, record_id)).copied()
    }

    fn insert(&mut self, seq: u64, record: &NewRecord) {
        let meta = RecordMeta {
            seq,
            owner: record.owner,
            receiver: record.receiver,
            record_id: record.record_id.clone(),
            tag: record.tag,
            stored_at: record.stored_at,
            expires_at: record.expires_at,
            max_pulls: record.max_pulls,
            pulls: 0,
            size: u32::try_from(record.bytes.len()).expect("checked by check_new_record"),
            record_hash: record.record_hash,
        };
        let (owner, receiver) = (record.owner.to_bytes(), record.receiver.to_bytes());
        self.paths.insert((owner, receiver, record.record_id.clone()), seq);
        self.outbox.insert((owner, receiver, seq));
        if let Some(tag) = record.tag {
            self.tags.insert((tag.0, seq));
        }
        self.expiry.insert((record.expires_at, seq));
        let size = u64::from(meta.size);
        let counters = self.owners.entry(owner).or_default();
        counters.records += 1;
        counters.bytes += size;
        self.totals.records += 1;
        self.totals.bytes += size;
        self.records.insert(seq, Entry { meta, bytes: record.bytes.clone() });
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.records.remove(&seq)?;
        let meta = &entry.meta;
        let (owner, receiver) = (meta.owner.to_bytes(), meta.receiver.to_bytes());
        self.paths.remove(&(owner, receiver, meta.record_id.clone()));
        self.outbox.remove(&(owner, receiver, seq));
        if let Some(tag) = meta.tag {
            self.tags.remove(&(tag.0, seq));
        }
        self.expiry.remove(&(meta.expires_at, seq));
        let size = u64::from(meta.size);
        if let Some(counters) = self.owners.get_mut(&owner) {
            counters.records -= 1;
            counters.bytes -= size;
            if counters.records == 0 {
                self.owners.remove(&owner);
            }
        }
        self.totals.records -= 1;
        self.totals.bytes -= size;
        Some(entry)
    }

    /// Live records among `seqs` (in the order given), at most `limit`.
    fn collect<'a>(
        &'a self,
        seqs: impl Iterator<Item = u64> + 'a,
        now: u64,
        limit: usize,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        seqs.filter_map(|seq| self.records.get(&seq)).filter(move |e| e.live(now)).take(limit)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn put_batch(&self, batch: &[NewRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        for record in batch {
            check_new_record(record)?;
        }
        let mut inner = self.inner.write();
        let first_new = inner.last_seq + 1;
        let mut outcomes = Vec::with_capacity(batch.len());
        for record in batch {
            if let Some(seq) = inner.seq_at(&record.owner, &record.receiver, &record.record_id) {
                let existing = &inner.records[&seq].meta;
                // A record stored by an earlier batch that has expired by the time this write
                // was accepted no longer holds its path; one stored earlier in this batch does.
                let replace = seq < first_new && existing.expires_at <= record.stored_at;
                if !replace {
                    outcomes.push(if existing.record_hash == record.record_hash {
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
                inner.remove(seq);
            }
            inner.last_seq += 1;
            let seq = inner.last_seq;
            inner.insert(seq, record);
            outcomes.push(PutOutcome::Stored { seq });
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
        let inner = self.inner.read();
        let entry = inner.seq_at(owner, receiver, record_id).and_then(|seq| inner.records.get(&seq));
        Ok(entry.filter(|e| e.live(now)).map(Entry::stored))
    }

    fn list(&self, query: &ListQuery, now: u64) -> Result<Vec<RecordMeta>, StoreError> {
        let inner = self.inner.read();
        let (owner, receiver) = (query.owner.to_bytes(), query.receiver.to_bytes());
        let Some(start) = query.after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let seqs = inner.outbox.range((owner, receiver, start)..=(owner, receiver, u64::MAX)).map(|k| k.2);
        let out = seqs
            .filter_map(|seq| inner.records.get(&seq))
            .filter(|e| e.live(now))
            .filter(|e| query.after_ts.is_none_or(|ts| e.meta.stored_at > ts))
            .filter(|e| query.before_ts.is_none_or(|ts| e.meta.stored_at < ts))
            .take(query.limit)
            .map(|e| e.meta.clone())
            .collect();
        Ok(out)
    }

    fn fetch_after(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let inner = self.inner.read();
        let (owner, receiver) = (owner.to_bytes(), receiver.to_bytes());
        let Some(start) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let seqs = inner.outbox.range((owner, receiver, start)..=(owner, receiver, u64::MAX)).map(|k| k.2);
        Ok(inner.collect(seqs, now, limit).map(Entry::stored).collect())
    }

    fn list_by_tag(
        &self,
        tag: &Tag,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<RecordMeta>, StoreError> {
        let inner = self.inner.read();
        let Some(start) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let seqs = inner.tags.range((tag.0, start)..=(tag.0, u64::MAX)).map(|k| k.1);
        Ok(inner.collect(seqs, now, limit).map(|e| e.meta.clone()).collect())
    }

    fn read(
        &self,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
        now: u64,
    ) -> Result<ReadOutcome, StoreError> {
        let mut inner = self.inner.write();
        let Some(seq) = inner.seq_at(owner, receiver, record_id) else { return Ok(ReadOutcome::NotFound) };
        let Some(entry) = inner.records.get_mut(&seq).filter(|e| e.live(now)) else {
            return Ok(ReadOutcome::NotFound);
        };
        entry.meta.pulls = entry.meta.pulls.saturating_add(1);
        let record = entry.stored();
        let exhausted = record.meta.max_pulls != 0 && record.meta.pulls >= record.meta.max_pulls;
        inner.usage_counter += 1;
        let key = (owner.to_bytes(), now, inner.usage_counter);
        let row = UsageRow {
            owner: *owner,
            receiver: *receiver,
            record_id: record_id.to_owned(),
            bytes: record.meta.size,
            read_at: now,
        };
        inner.usage.insert(key, row);
        if exhausted {
            inner.remove(seq);
        }
        Ok(ReadOutcome::Served { record, exhausted })
    }

    fn read_batch(&self, reads: &[ReadKey], now: u64) -> Result<Vec<ReadOutcome>, StoreError> {
        if reads.len() > MAX_READ_BATCH {
            return Err(StoreError::Io(format!(
                "invalid input (caller bug): {} reads in one batch",
                reads.len()
            )));
        }
        reads.iter().map(|key| self.read(&key.owner, &key.receiver, &key.record_id, now)).collect()
    }

    fn delete(&self, owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.inner.write();
        let Some(seq) = inner.seq_at(owner, receiver, record_id) else { return Ok(false) };
        Ok(inner.remove(seq).is_some())
    }

    fn expire(&self, now: u64, limit: usize) -> Result<usize, StoreError> {
        let mut inner = self.inner.write();
        let due: Vec<u64> = inner.expiry.range(..=(now, u64::MAX)).take(limit).map(|k| k.1).collect();
        for &seq in &due {
            inner.remove(seq);
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
        let inner = self.inner.read();
        let owner = owner.to_bytes();
        let rows = inner.usage.range((owner, 0, 0)..=(owner, u64::MAX, u64::MAX)).map(|(_, row)| row);
        Ok(rows
            .filter(|row| after_ts.is_none_or(|ts| row.read_at > ts))
            .filter(|row| before_ts.is_none_or(|ts| row.read_at < ts))
            .take(limit)
            .cloned()
            .collect())
    }

    fn put_account(&self, account: &Account) -> Result<(), StoreError> {
        self.inner.write().accounts.insert(account.key.to_bytes(), account.clone());
        Ok(())
    }

    fn account(&self, key: &PublicKey) -> Result<Option<Account>, StoreError> {
        Ok(self.inner.read().accounts.get(&key.to_bytes()).cloned())
    }

    fn owner_usage(&self, owner: &PublicKey) -> Result<Usage, StoreError> {
        Ok(self.inner.read().owners.get(&owner.to_bytes()).copied().unwrap_or_default())
    }

    fn totals(&self) -> Result<Usage, StoreError> {
        Ok(self.inner.read().totals)
    }

    fn last_seq(&self) -> u64 {
        self.inner.read().last_seq
    }

    fn put_drops(&self, batch: &[NewDrop], bucket_cap: u32) -> Result<Vec<DropOutcome>, StoreError> {
        for drop in batch {
            check_new_drop(drop)?;
        }
        let mut inner = self.inner.write();
        let mut outcomes = Vec::with_capacity(batch.len());
        for drop in batch {
            if inner.stamps.contains(&(drop.stamp_epoch, drop.stamp_id)) {
                outcomes.push(DropOutcome::Spent);
                continue;
            }
            let bucket = drop_bucket(&drop.tag);
            let live = inner.buckets.get(&bucket).copied().unwrap_or(0);
            if bucket_cap != 0 && live >= u64::from(bucket_cap) {
                outcomes.push(DropOutcome::BucketFull);
                continue;
            }
            inner.stamps.insert((drop.stamp_epoch, drop.stamp_id));
            inner.last_seq += 1;
            let seq = inner.last_seq;
            *inner.buckets.entry(bucket).or_default() += 1;
            inner.drop_totals.records += 1;
            inner.drop_totals.bytes += drop.bytes.len() as u64;
            inner.drop_expiry.insert((drop.expires_at, seq));
            let stored = StoredDrop {
                seq,
                tag: drop.tag,
                stored_at: drop.stored_at,
                expires_at: drop.expires_at,
                drop_hash: drop.drop_hash,
                bytes: drop.bytes.clone(),
            };
            inner.drops.insert(seq, stored);
            outcomes.push(DropOutcome::Stored { seq });
        }
        Ok(outcomes)
    }

    fn stamp_spent(&self, epoch: u64, stamp_id: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.inner.read().stamps.contains(&(epoch, *stamp_id)))
    }

    fn fetch_drops(
        &self,
        prefix: &Prefix,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredDrop>, StoreError> {
        let inner = self.inner.read();
        let Some(start) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        Ok(inner
            .drops
            .range(start..)
            .map(|(_, d)| d)
            .filter(|d| prefix.matches(&d.tag) && d.expires_at > now)
            .take(limit)
            .cloned()
            .collect())
    }

    fn expire_drops(&self, now: u64, limit: usize) -> Result<usize, StoreError> {
        let mut inner = self.inner.write();
        let due: Vec<u64> = inner.drop_expiry.range(..=(now, u64::MAX)).take(limit).map(|k| k.1).collect();
        for &seq in &due {
            let Some(drop) = inner.drops.remove(&seq) else { continue };
            inner.drop_expiry.remove(&(drop.expires_at, seq));
            let bucket = drop_bucket(&drop.tag);
            if let Some(count) = inner.buckets.get_mut(&bucket) {
                *count -= 1;
                if *count == 0 {
                    inner.buckets.remove(&bucket);
                }
            }
            inner.drop_totals.records -= 1;
            inner.drop_totals.bytes -= drop.bytes.len() as u64;
        }
        Ok(due.len())
    }

    fn prune_stamps(&self, before_epoch: u64, limit: usize) -> Result<usize, StoreError> {
        let mut inner = self.inner.write();
        let due: HashSet<(u64, [u8; 32])> =
            inner.stamps.range(..(before_epoch, [0; 32])).take(limit).copied().collect();
        inner.stamps.retain(|stamp| !due.contains(stamp));
        Ok(due.len())
    }

    fn drop_totals(&self) -> Result<Usage, StoreError> {
        Ok(self.inner.read().drop_totals)
    }

    fn charge_issuance(
        &self,
        account: &[u8; 32],
        day: u64,
        count: u32,
        max_per_day: u32,
    ) -> Result<u32, StoreError> {
        let mut inner = self.inner.write();
        let issued = inner.issuance.entry((*account, day)).or_default();
        let granted = count.min(max_per_day.saturating_sub(*issued));
        *issued += granted;
        Ok(granted)
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    #[test]
    fn conformance() {
        crate::conformance::run_all(MemoryStore::new);
    }
}
