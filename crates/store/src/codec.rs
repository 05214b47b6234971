//! Byte layouts of the embedded backend: index keys and stored values, encoded with the
//! protocol's canonical [`Writer`]/[`Reader`] so that every value has exactly one encoding and
//! every decoding failure is a typed error (reported as [`StoreError::Corrupted`], never a
//! panic).
//!
//! Keys put the ordering fields first and big-endian, so that a prefix or range scan of a
//! keyspace returns entries in the order the [`Store`](crate::Store) methods promise.

use pigeonhole_proto::hash::tagged_hash;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::payload::{MAX_RECORD_ID_LEN, validate_record_id};
use pigeonhole_proto::tag::{TAG_LEN, Tag};
use pigeonhole_proto::wire::{DecodeError, Reader, Writer};

use crate::{Account, AccountStatus, NewDrop, NewRecord, RecordMeta, StoreError, StoredDrop, Usage};

/// Length of a public key in keys and values.
pub(crate) const KEY_LEN: usize = 32;

/// Checks what the store needs of a record before anything is written: the record id follows
/// the protocol rules (so it is one short path segment and fits every key), and the bytes fit
/// the `u32` size field. Both are the relay's job; a violation is a caller bug, reported as an
/// error rather than stored.
pub(crate) fn check_new_record(record: &NewRecord) -> Result<(), StoreError> {
    if let Err(e) = validate_record_id(&record.record_id) {
        return Err(StoreError::Io(format!(
            "invalid input (caller bug): record id {:?} breaks the protocol rules: {e}",
            record.record_id
        )));
    }
    if u32::try_from(record.bytes.len()).is_err() {
        return Err(StoreError::Io(format!(
            "invalid input (caller bug): record {:?} has {} bytes, more than a u32 counts",
            record.record_id,
            record.bytes.len()
        )));
    }
    Ok(())
}

/// Checks what the store needs of a drop before anything is written: its bytes fit the `u32`
/// size field (the relay's job; a violation is a caller bug, reported as an error).
pub(crate) fn check_new_drop(drop: &NewDrop) -> Result<(), StoreError> {
    if u32::try_from(drop.bytes.len()).is_err() {
        return Err(StoreError::Io(format!(
            "invalid input (caller bug): a drop of {} bytes, more than a u32 counts",
            drop.bytes.len()
        )));
    }
    Ok(())
}

/// The `Corrupted` error for a value of `keyspace` that did not decode.
pub(crate) fn corrupted(keyspace: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(format!("keyspace `{keyspace}`: {what}"))
}

fn decode_err(keyspace: &'static str) -> impl Fn(DecodeError) -> StoreError {
    move |e| corrupted(keyspace, format_args!("undecodable value: {e}"))
}

fn read_key(r: &mut Reader<'_>, field: &'static str) -> Result<PublicKey, DecodeError> {
    let bytes = r.array::<KEY_LEN>(field)?;
    PublicKey::from_bytes(&bytes).map_err(|_| DecodeError::InvalidPublicKey { field })
}

// ---------------------------------------------------------------------------------------------
// Keys

/// `seq` as a key: 8 bytes big-endian (append-ordered).
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Decodes an 8-byte big-endian integer (a key suffix or a value).
pub(crate) fn be_u64(bytes: &[u8], keyspace: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupted(keyspace, format_args!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

/// The last 8 bytes of an index key, as the sequence number it points to.
pub(crate) fn seq_suffix(key: &[u8], keyspace: &'static str) -> Result<u64, StoreError> {
    let start = key
        .len()
        .checked_sub(8)
        .ok_or_else(|| corrupted(keyspace, format_args!("key of {} bytes is too short", key.len())))?;
    be_u64(&key[start..], keyspace)
}

/// Length of a pair id (see [`pair_id`]).
pub(crate) const PAIR_LEN: usize = 16;

/// Domain tag of [`pair_id`]'s hash.
const PAIR_TAG: &str = "pigeonhole/store/pair";

/// The id of an (owner, receiver) pair that keys `paths` and `outbox`: the first 16 bytes of
/// the tagged SHA-256 of owner ‖ receiver (BIP-340 style tagged hash). Sixteen bytes instead of
/// the two 32-byte keys make every index entry of a record 48 bytes shorter, and those entries
/// are what compaction rewrites (they are keyed by pair, so every flushed table spans the whole
/// key range). Two pairs with one id are not expected before some 2^64 pairs, and each reader of
/// these indexes confirms the pair against the record it loads: a record of another pair under
/// the same id is skipped by a walk, and a write to a path held by another pair's live record is
/// refused as a conflict (the writer picks another record id).
pub(crate) fn pair_id(owner: &PublicKey, receiver: &PublicKey) -> [u8; PAIR_LEN] {
    pair_id_of(&owner.to_bytes(), &receiver.to_bytes())
}

/// [`pair_id`] of two keys' bytes (as the v3 index keys hold them).
pub(crate) fn pair_id_of(owner: &[u8; KEY_LEN], receiver: &[u8; KEY_LEN]) -> [u8; PAIR_LEN] {
    let digest = tagged_hash(PAIR_TAG, &[owner, receiver]);
    let mut id = [0u8; PAIR_LEN];
    id.copy_from_slice(&digest[..PAIR_LEN]);
    #[cfg(test)]
    if NARROW_PAIR_IDS.with(std::cell::Cell::get) {
        // One bit of id: pairs share ids, as the code handling that must be tested.
        id = [id[0] & 1; PAIR_LEN];
    }
    id
}

#[cfg(test)]
thread_local! {
    /// Narrows [`pair_id`] to one bit on this thread (a test of pairs that share an id).
    pub(crate) static NARROW_PAIR_IDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `paths`: pair id ‖ record id.
pub(crate) fn path_key(owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> Vec<u8> {
    pair_path_key(&pair_id(owner, receiver), record_id.as_bytes())
}

/// `paths` key of a pair id and a record id's bytes.
pub(crate) fn pair_path_key(pair: &[u8; PAIR_LEN], record_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(PAIR_LEN + record_id.len());
    key.extend_from_slice(pair);
    key.extend_from_slice(record_id);
    key
}

/// `outbox` prefix: pair id.
pub(crate) fn outbox_prefix(owner: &PublicKey, receiver: &PublicKey) -> [u8; PAIR_LEN] {
    pair_id(owner, receiver)
}

/// `outbox`: pair id ‖ seq.
pub(crate) fn outbox_key(owner: &PublicKey, receiver: &PublicKey, seq: u64) -> [u8; PAIR_LEN + 8] {
    pair_outbox_key(&pair_id(owner, receiver), seq)
}

/// `outbox` key of a pair id and a sequence number.
pub(crate) fn pair_outbox_key(pair: &[u8; PAIR_LEN], seq: u64) -> [u8; PAIR_LEN + 8] {
    let mut key = [0u8; PAIR_LEN + 8];
    key[..PAIR_LEN].copy_from_slice(pair);
    key[PAIR_LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a key of the v3 `paths` (owner ‖ receiver ‖ record id) or `outbox` (owner ‖
/// receiver ‖ seq) index into the pair id of its two keys and the rest.
pub(crate) fn split_v3_pair_key<'a>(
    key: &'a [u8],
    keyspace: &'static str,
) -> Result<([u8; PAIR_LEN], &'a [u8]), StoreError> {
    let halves = key.split_first_chunk::<KEY_LEN>().and_then(|(owner, rest)| {
        rest.split_first_chunk::<KEY_LEN>().map(|(receiver, rest)| (owner, receiver, rest))
    });
    match halves {
        Some((owner, receiver, rest)) if !rest.is_empty() => Ok((pair_id_of(owner, receiver), rest)),
        _ => Err(corrupted(keyspace, format_args!("v3 key of {} bytes is too short", key.len()))),
    }
}

/// `receiver` (the index of format v2, deleted by v3; tests craft v2 stores with it):
/// receiver ‖ seq.
#[cfg(test)]
pub(crate) fn receiver_key(receiver: &PublicKey, seq: u64) -> [u8; KEY_LEN + 8] {
    let mut key = [0u8; KEY_LEN + 8];
    key[..KEY_LEN].copy_from_slice(&receiver.to_bytes());
    key[KEY_LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `expiry`: expires_at ‖ seq.
pub(crate) fn expiry_key(expires_at: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&expires_at.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `tags`: tag ‖ seq.
pub(crate) fn tag_key(tag: &Tag, seq: u64) -> [u8; TAG_LEN + 8] {
    let mut key = [0u8; TAG_LEN + 8];
    key[..TAG_LEN].copy_from_slice(&tag.0);
    key[TAG_LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `usage`: owner ‖ read_at ‖ unique counter.
pub(crate) fn usage_key(owner: &PublicKey, read_at: u64, counter: u64) -> [u8; KEY_LEN + 16] {
    let mut key = [0u8; KEY_LEN + 16];
    key[..KEY_LEN].copy_from_slice(&owner.to_bytes());
    key[KEY_LEN..KEY_LEN + 8].copy_from_slice(&read_at.to_be_bytes());
    key[KEY_LEN + 8..].copy_from_slice(&counter.to_be_bytes());
    key
}

/// Splits a `usage` key into its read time (the owner is known from the scan's prefix).
pub(crate) fn usage_key_read_at(key: &[u8]) -> Result<u64, StoreError> {
    if key.len() != KEY_LEN + 16 {
        return Err(corrupted(
            "usage",
            format_args!("key of {} bytes; expected {}", key.len(), KEY_LEN + 16),
        ));
    }
    be_u64(&key[KEY_LEN..KEY_LEN + 8], "usage")
}

/// The prefix lengths the `drop_prefix` index has entries for: every multiple of 4 up to 32.
pub(crate) const DROP_INDEX_GRANULARITIES: [u8; 8] = [4, 8, 12, 16, 20, 24, 28, 32];

/// The top `bits` bits of `head`, the rest zero.
pub(crate) fn mask_head(head: u32, bits: u8) -> u32 {
    if bits == 0 { 0 } else { head & (u32::MAX << (32 - u32::from(bits))) }
}

/// `drop_prefix` key prefix: `u8 g ‖ u32 head masked to g bits`.
pub(crate) fn drop_prefix_bucket(granularity: u8, head: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = granularity;
    key[1..].copy_from_slice(&mask_head(head, granularity).to_be_bytes());
    key
}

/// `drop_prefix`: `u8 g ‖ u32 head masked to g bits ‖ u64 seq`.
pub(crate) fn drop_prefix_key(granularity: u8, head: u32, seq: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..5].copy_from_slice(&drop_prefix_bucket(granularity, head));
    key[5..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `drop_prefix` value: `u32 full head ‖ u64 expires_at`, so that a query filters the bits past
/// `g` and skips expired drops without loading them.
pub(crate) fn drop_prefix_value(head: u32, expires_at: u64) -> [u8; 12] {
    let mut value = [0u8; 12];
    value[..4].copy_from_slice(&head.to_be_bytes());
    value[4..].copy_from_slice(&expires_at.to_be_bytes());
    value
}

/// One decoded `drop_prefix` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropPrefixEntry {
    pub(crate) granularity: u8,
    pub(crate) masked: u32,
    pub(crate) seq: u64,
    pub(crate) head: u32,
    pub(crate) expires_at: u64,
}

/// Decodes a `drop_prefix` entry, checking that it is well-formed (a known granularity, the
/// masked head agreeing with the full one).
pub(crate) fn decode_drop_prefix(key: &[u8], value: &[u8]) -> Result<DropPrefixEntry, StoreError> {
    let name = "drop_prefix";
    if key.len() != 13 || value.len() != 12 {
        return Err(corrupted(name, format_args!("entry of {}+{} bytes", key.len(), value.len())));
    }
    let granularity = key[0];
    let masked = u32::from_be_bytes([key[1], key[2], key[3], key[4]]);
    let seq = be_u64(&key[5..], name)?;
    let head = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    let expires_at = be_u64(&value[4..], name)?;
    if !DROP_INDEX_GRANULARITIES.contains(&granularity) || mask_head(head, granularity) != masked {
        return Err(corrupted(name, format_args!("malformed entry for seq {seq}")));
    }
    Ok(DropPrefixEntry { granularity, masked, seq, head, expires_at })
}

/// `stamps`: `u64 epoch ‖ [32] stamp id` (value: u64 seq of the drop that spent it), so that
/// the stamps of old epochs are one range at the start of the keyspace.
pub(crate) fn stamp_key(epoch: u64, stamp_id: &[u8; 32]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&epoch.to_be_bytes());
    key[8..].copy_from_slice(stamp_id);
    key
}

/// `drop_buckets`: the u16 bucket, big-endian (value: u64 live drops; absent = 0).
pub(crate) fn bucket_key(bucket: u16) -> [u8; 2] {
    bucket.to_be_bytes()
}

/// `issuance`: `[32] account ‖ u64 day` (value: u32 tokens issued).
pub(crate) fn issuance_key(account: &[u8; 32], day: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(account);
    key[32..].copy_from_slice(&day.to_be_bytes());
    key
}

/// Decodes a 4-byte big-endian value of `keyspace`.
pub(crate) fn be_u32(bytes: &[u8], keyspace: &'static str) -> Result<u32, StoreError> {
    let array: [u8; 4] = bytes
        .try_into()
        .map_err(|_| corrupted(keyspace, format_args!("expected 4 bytes, found {}", bytes.len())))?;
    Ok(u32::from_be_bytes(array))
}

// ---------------------------------------------------------------------------------------------
// Values

/// `drops` value: `[20] tag ‖ u64 stored_at ‖ u64 expires_at ‖ [32] drop_hash ‖ var32(bytes)`.
pub(crate) fn encode_drop(drop: &NewDrop) -> Vec<u8> {
    let mut w = Writer::with_capacity(TAG_LEN + 16 + 32 + 4 + drop.bytes.len());
    w.raw(&drop.tag.0).u64(drop.stored_at).u64(drop.expires_at).raw(&drop.drop_hash).var32(&drop.bytes);
    w.finish()
}

/// Decodes a `drops` value stored under `seq`.
pub(crate) fn decode_drop(seq: u64, value: &[u8]) -> Result<StoredDrop, StoreError> {
    let decode = |value| -> Result<StoredDrop, DecodeError> {
        let mut r = Reader::new(value);
        let tag = Tag(r.array::<TAG_LEN>("tag")?);
        let stored_at = r.u64("stored_at")?;
        let expires_at = r.u64("expires_at")?;
        let drop_hash = r.array::<32>("drop_hash")?;
        let bytes = r.var32(u32::MAX as usize, "bytes")?.to_vec();
        r.finish()?;
        Ok(StoredDrop { seq, tag, stored_at, expires_at, drop_hash, bytes })
    };
    decode(value).map_err(decode_err("drops"))
}

/// The tag of a `drops` value, without decoding the rest (to skip drops a query does not want).
pub(crate) fn drop_value_tag(value: &[u8]) -> Result<Tag, StoreError> {
    Tag::from_slice(value.get(..TAG_LEN).unwrap_or_default())
        .map_err(|_| corrupted("drops", "value too short for a tag"))
}

/// A stored record's metadata without its read count (kept in `pulls`), plus the size of its
/// bytes, decoded from a `records` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMeta {
    pub(crate) owner: PublicKey,
    pub(crate) receiver: PublicKey,
    pub(crate) record_id: String,
    pub(crate) tag: Option<Tag>,
    pub(crate) stored_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) max_pulls: u32,
    pub(crate) record_hash: [u8; 32],
    pub(crate) size: u32,
}

impl StoredMeta {
    /// The public metadata, with the read count and sequence number added.
    pub(crate) fn into_meta(self, seq: u64, pulls: u32) -> RecordMeta {
        RecordMeta {
            seq,
            owner: self.owner,
            receiver: self.receiver,
            record_id: self.record_id,
            tag: self.tag,
            stored_at: self.stored_at,
            expires_at: self.expires_at,
            max_pulls: self.max_pulls,
            pulls,
            size: self.size,
            record_hash: self.record_hash,
        }
    }
}

/// `records` value:
/// `[32] owner ‖ [32] receiver ‖ var8(record id) ‖ flag [20] tag ‖ u64 stored_at ‖
/// u64 expires_at ‖ u32 max_pulls ‖ [32] record_hash ‖ var32(bytes)`.
pub(crate) fn encode_record(record: &NewRecord) -> Vec<u8> {
    let mut w = Writer::with_capacity(2 * KEY_LEN + 1 + record.record_id.len() + 85 + 4 + record.bytes.len());
    w.raw(&record.owner.to_bytes())
        .raw(&record.receiver.to_bytes())
        .var8(record.record_id.as_bytes())
        .flag(record.tag.is_some());
    if let Some(tag) = &record.tag {
        w.raw(&tag.0);
    }
    w.u64(record.stored_at)
        .u64(record.expires_at)
        .u32(record.max_pulls)
        .raw(&record.record_hash)
        .var32(&record.bytes);
    w.finish()
}

/// Decodes a `records` value; returns the metadata and the bytes (borrowed from `value`).
pub(crate) fn decode_record(value: &[u8]) -> Result<(StoredMeta, &[u8]), StoreError> {
    let decode = |value| -> Result<(StoredMeta, &[u8]), DecodeError> {
        let mut r = Reader::new(value);
        let owner = read_key(&mut r, "owner")?;
        let receiver = read_key(&mut r, "receiver")?;
        let record_id = r.str8(MAX_RECORD_ID_LEN, "record id")?;
        validate_record_id(record_id).map_err(|_| DecodeError::InvalidValue {
            field: "record id",
            reason: "breaks the record id rules",
        })?;
        let tag = if r.flag("tag")? { Some(Tag(r.array::<TAG_LEN>("tag")?)) } else { None };
        let stored_at = r.u64("stored_at")?;
        let expires_at = r.u64("expires_at")?;
        let max_pulls = r.u32("max_pulls")?;
        let record_hash = r.array::<32>("record_hash")?;
        let bytes = r.var32(u32::MAX as usize, "bytes")?;
        r.finish()?;
        let size = u32::try_from(bytes.len()).map_err(|_| DecodeError::TooLong {
            field: "bytes",
            len: bytes.len(),
            max: u32::MAX as usize,
        })?;
        let meta = StoredMeta {
            owner,
            receiver,
            record_id: record_id.to_owned(),
            tag,
            stored_at,
            expires_at,
            max_pulls,
            record_hash,
            size,
        };
        Ok((meta, bytes))
    };
    decode(value).map_err(decode_err("records"))
}

/// `pulls` value: u32 reads so far.
pub(crate) fn decode_pulls(value: &[u8]) -> Result<u32, StoreError> {
    let mut r = Reader::new(value);
    let pulls = r.u32("pulls").map_err(decode_err("pulls"))?;
    r.finish().map_err(decode_err("pulls"))?;
    Ok(pulls)
}

/// Appends one read to a `usage` value: `[32] receiver ‖ u32 bytes ‖ var8(record id)`. A value
/// holds one or more reads of its key's owner's records, counted in the same commit (earlier
/// versions wrote one read per value, which decodes the same way).
pub(crate) fn encode_usage_read(value: &mut Vec<u8>, receiver: &PublicKey, bytes: u32, record_id: &str) {
    let mut w = Writer::with_capacity(KEY_LEN + 4 + 1 + record_id.len());
    w.raw(&receiver.to_bytes()).u32(bytes).var8(record_id.as_bytes());
    value.extend_from_slice(&w.finish());
}

/// Decodes a `usage` value into its reads, each (receiver, bytes, record id): at least one.
pub(crate) fn decode_usage(value: &[u8]) -> Result<Vec<(PublicKey, u32, String)>, StoreError> {
    let decode = |value| -> Result<Vec<(PublicKey, u32, String)>, DecodeError> {
        let mut r = Reader::new(value);
        let mut reads = Vec::new();
        loop {
            let receiver = read_key(&mut r, "receiver")?;
            let bytes = r.u32("bytes")?;
            let record_id = r.str8(MAX_RECORD_ID_LEN, "record id")?.to_owned();
            reads.push((receiver, bytes, record_id));
            if r.remaining() == 0 {
                break;
            }
        }
        r.finish()?;
        Ok(reads)
    };
    decode(value).map_err(decode_err("usage"))
}

/// `accounts` value: `u8 status (0 active, 1 suspended) ‖ u64 created_at ‖ u64 max_bytes ‖
/// u32 max_records_per_day` (the key is the account's public key).
pub(crate) fn encode_account(account: &Account) -> Vec<u8> {
    let mut w = Writer::with_capacity(21);
    let status = match account.status {
        AccountStatus::Active => 0,
        AccountStatus::Suspended => 1,
    };
    w.u8(status).u64(account.created_at).u64(account.max_bytes).u32(account.max_records_per_day);
    w.finish()
}

/// Decodes an `accounts` value for `key`.
pub(crate) fn decode_account(key: PublicKey, value: &[u8]) -> Result<Account, StoreError> {
    let decode = |value| -> Result<Account, DecodeError> {
        let mut r = Reader::new(value);
        let status = match r.u8("status")? {
            0 => AccountStatus::Active,
            1 => AccountStatus::Suspended,
            other => return Err(DecodeError::UnknownType { field: "status", value: other.into() }),
        };
        let created_at = r.u64("created_at")?;
        let max_bytes = r.u64("max_bytes")?;
        let max_records_per_day = r.u32("max_records_per_day")?;
        r.finish()?;
        Ok(Account { key, status, created_at, max_bytes, max_records_per_day })
    };
    decode(value).map_err(decode_err("accounts"))
}

/// `owners` value and the `totals` value of `meta`: `u64 records ‖ u64 bytes`.
pub(crate) fn encode_usage_counters(usage: Usage) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&usage.records.to_be_bytes());
    out[8..].copy_from_slice(&usage.bytes.to_be_bytes());
    out
}

/// Decodes an `owners` or `totals` value.
pub(crate) fn decode_usage_counters(value: &[u8], keyspace: &'static str) -> Result<Usage, StoreError> {
    let mut r = Reader::new(value);
    let mut decode = || -> Result<Usage, DecodeError> {
        let records = r.u64("records")?;
        let bytes = r.u64("bytes")?;
        Ok(Usage { records, bytes })
    };
    let usage = decode().map_err(decode_err(keyspace))?;
    r.finish().map_err(decode_err(keyspace))?;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeonhole_proto::keys::SecretKey;

    fn key(n: u8) -> PublicKey {
        SecretKey::from_bytes(&[n; 32]).expect("valid secret").public_key()
    }

    fn record() -> NewRecord {
        NewRecord {
            owner: key(1),
            receiver: key(2),
            record_id: "r-1".into(),
            tag: Some(Tag([7; TAG_LEN])),
            stored_at: 10,
            expires_at: 20,
            max_pulls: 3,
            record_hash: [9; 32],
            bytes: b"hello".to_vec(),
        }
    }

    #[test]
    fn record_round_trip_and_rejections() {
        let r = record();
        let encoded = encode_record(&r);
        let (meta, bytes) = decode_record(&encoded).expect("decodes");
        assert_eq!(bytes, b"hello");
        assert_eq!(meta.owner, r.owner);
        assert_eq!(meta.tag, r.tag);
        assert_eq!(meta.size, 5);
        // Every truncation and a trailing byte are typed errors naming the keyspace.
        for len in 0..encoded.len() {
            match decode_record(&encoded[..len]) {
                Err(StoreError::Corrupted(msg)) => assert!(msg.contains("records"), "{msg}"),
                other => panic!("truncated to {len}: {other:?}"),
            }
        }
        let mut long = encoded.clone();
        long.push(0);
        assert!(matches!(decode_record(&long), Err(StoreError::Corrupted(_))));
        // A bad flag.
        let mut bad = encoded;
        bad[2 * KEY_LEN + 1 + 3] = 7;
        assert!(matches!(decode_record(&bad), Err(StoreError::Corrupted(_))));
    }

    #[test]
    fn account_and_usage_round_trip() {
        let account = Account {
            key: key(3),
            status: AccountStatus::Suspended,
            created_at: 5,
            max_bytes: 6,
            max_records_per_day: 7,
        };
        assert_eq!(decode_account(key(3), &encode_account(&account)).expect("decodes"), account);
        assert!(decode_account(key(3), &[2; 21]).is_err());
        let mut usage = Vec::new();
        encode_usage_read(&mut usage, &key(4), 12, "id");
        assert_eq!(decode_usage(&usage).expect("decodes"), vec![(key(4), 12, "id".to_owned())]);
        encode_usage_read(&mut usage, &key(5), 13, "other");
        assert_eq!(
            decode_usage(&usage).expect("decodes"),
            vec![(key(4), 12, "id".to_owned()), (key(5), 13, "other".to_owned())]
        );
        assert!(decode_usage(&[]).is_err());
        assert!(decode_usage(&usage[..usage.len() - 1]).is_err());
        let counters = Usage { records: 3, bytes: 99 };
        assert_eq!(decode_usage_counters(&encode_usage_counters(counters), "owners").expect("ok"), counters);
        assert!(decode_usage_counters(&[0; 15], "owners").is_err());
    }

    #[test]
    fn drop_round_trip_and_index_entries() {
        let drop = NewDrop {
            tag: Tag([0xa5; TAG_LEN]),
            stamp_epoch: 3,
            stamp_id: [4; 32],
            stored_at: 5,
            expires_at: 6,
            drop_hash: [7; 32],
            bytes: b"sealed".to_vec(),
        };
        let encoded = encode_drop(&drop);
        let got = decode_drop(9, &encoded).expect("decodes");
        assert_eq!((got.seq, got.tag, got.stored_at, got.expires_at), (9, drop.tag, 5, 6));
        assert_eq!((got.drop_hash, got.bytes), (drop.drop_hash, drop.bytes));
        assert_eq!(drop_value_tag(&encoded).expect("tag"), drop.tag);
        for len in 0..encoded.len() {
            assert!(matches!(decode_drop(9, &encoded[..len]), Err(StoreError::Corrupted(_))), "{len}");
        }
        assert!(drop_value_tag(&encoded[..TAG_LEN - 1]).is_err());
        let head = 0xabcd_ef12;
        for g in DROP_INDEX_GRANULARITIES {
            let key = drop_prefix_key(g, head, 77);
            assert_eq!(&key[..5], &drop_prefix_bucket(g, head));
            let entry = decode_drop_prefix(&key, &drop_prefix_value(head, 88)).expect("ok");
            let expected =
                DropPrefixEntry { granularity: g, masked: mask_head(head, g), seq: 77, head, expires_at: 88 };
            assert_eq!(entry, expected);
            // A full head that disagrees with the masked one is damage.
            assert!(decode_drop_prefix(&key, &drop_prefix_value(head ^ 0x8000_0000, 88)).is_err());
            assert!(decode_drop_prefix(&key, &head.to_be_bytes()).is_err(), "short value");
        }
        assert_eq!(mask_head(head, 0), 0);
        assert_eq!(mask_head(head, 12), 0xabc0_0000);
        assert!(decode_drop_prefix(&drop_prefix_key(5, 0, 1), &[0; 12]).is_err(), "unknown granularity");
        assert!(stamp_key(1, &[0xff; 32]) < stamp_key(2, &[0; 32]));
        assert!(drop_prefix_key(8, head, 1) < drop_prefix_key(8, head, 256));
    }

    #[test]
    fn keys_sort_in_store_order() {
        assert!(expiry_key(1, 9) < expiry_key(2, 0));
        assert!(outbox_key(&key(1), &key(2), 255) < outbox_key(&key(1), &key(2), 256));
        assert_eq!(seq_suffix(&receiver_key(&key(1), 77), "receiver").expect("ok"), 77);
        assert_eq!(usage_key_read_at(&usage_key(&key(1), 42, 1)).expect("ok"), 42);
    }
}
