//! [`MemoryStore`]: the [`Store`] semantics on in-memory ordered maps, for engine unit tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::RwLock;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::tag::{TAG_LEN, Tag};

use crate::codec::check_new_record;
use crate::{
    Account, ListQuery, MAX_READ_BATCH, NewRecord, PutOutcome, ReadKey, ReadOutcome, RecordMeta, Store,
    StoreError, StoredRecord, Usage, UsageRow,
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
    receivers: BTreeSet<(Key, u64)>,
    tags: BTreeSet<([u8; TAG_LEN], u64)>,
    expiry: BTreeSet<(u64, u64)>,
    /// (owner, read_at, unique counter) → row.
    usage: BTreeMap<(Key, u64, u64), UsageRow>,
    usage_counter: u64,
    accounts: HashMap<Key, Account>,
    owners: HashMap<Key, Usage>,
    totals: Usage,
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
        self.receivers.insert((receiver, seq));
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
        self.receivers.remove(&(receiver, seq));
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

    fn fetch_for_receiver(
        &self,
        receiver: &PublicKey,
        after_seq: u64,
        limit: usize,
        now: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let inner = self.inner.read();
        let receiver = receiver.to_bytes();
        let Some(start) = after_seq.checked_add(1) else { return Ok(Vec::new()) };
        let seqs = inner.receivers.range((receiver, start)..=(receiver, u64::MAX)).map(|k| k.1);
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
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;

    #[test]
    fn conformance() {
        crate::conformance::run_all(MemoryStore::new);
    }
}
