//! What relays sign: write and drop receipts batched under one Merkle root per commit group,
//! and relay documents (info, usage reports, postage keys).
//!
//! A relay that commits a group of writes and drops together signs one [`CommitHeader`] over
//! the RFC 6962 Merkle tree hash of the group's leaves ([`ReceiptLeaf`] for writes,
//! [`DropLeaf`] for drops; their first bytes differ, so one kind never passes for the other),
//! and hands each sender its leaf, an inclusion proof and the signed header. One signature per
//! group instead of one per write; each receipt still proves on its own that the relay
//! accepted that exact record or drop.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{InclusionProof, RootHash};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::hash::{tagged_hash, tags};
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::payload::{read_public_key, read_record_id, validate_record_id};
use crate::postage::check_public_key;
use crate::request::hex_array;
use crate::tag::Tag;
use crate::wire::{DecodeError, Reader, Writer};

/// Version byte of receipts and relay documents (and the first byte of a write leaf).
pub const RECEIPT_VERSION: u8 = 1;
/// First byte of a drop leaf: distinct from a write leaf's, so the two never collide.
pub const DROP_LEAF_VERSION: u8 = 2;
/// Most postage keys in one postage-keys document.
pub const MAX_POSTAGE_KEYS: usize = 4;
/// Largest commit group (leaves under one signature).
pub const MAX_GROUP_SIZE: u32 = 1 << 16;
/// Longest inclusion proof: log2 of the largest group.
pub const MAX_PROOF_LEN: usize = 16;
/// Largest relay document body.
pub const MAX_DOCUMENT_BODY_LEN: usize = 1 << 20;
/// Most entries in one usage report.
pub const MAX_USAGE_ENTRIES: usize = 10_000;

/// Why a receipt or document did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Malformed bytes.
    #[error("malformed receipt: {0}")]
    Decode(#[from] DecodeError),
    /// Malformed JSON.
    #[error("malformed receipt JSON: {0}")]
    Json(String),
    /// Signed by, or naming, a different relay than expected.
    #[error("the receipt is from another relay")]
    WrongRelay,
    /// The relay's signature does not verify.
    #[error("the relay's signature does not verify")]
    BadSignature,
    /// The inclusion proof does not lead from the leaf to the signed root.
    #[error("the inclusion proof does not match the signed root")]
    BadProof,
    /// The group is empty or larger than [`MAX_GROUP_SIZE`].
    #[error("a commit group holds 1 to 65536 leaves")]
    GroupSize,
    /// [`CommitGroup::sign_with_aux`] was asked to sign a group holding drops: use
    /// [`CommitGroup::sign_all_with_aux`], which returns receipts of both kinds.
    #[error("the group holds drop leaves; sign it with sign_all")]
    HasDrops,
}

/// The hash a drop receipt and a postage stamp commit to: `SHA-256(envelope bytes)`.
pub fn drop_hash(envelope: &[u8]) -> [u8; 32] {
    crate::hash::sha256(envelope)
}

/// What a relay attests for one accepted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReceiptLeaf {
    /// The relay's key.
    pub relay: PublicKey,
    /// The outbox owner (the writer).
    pub owner: PublicKey,
    /// The receiver of the record.
    pub receiver: PublicKey,
    /// The record id.
    pub record_id: String,
    /// [`crate::request::Message::record_hash`] of the stored write.
    #[serde(with = "hex_array")]
    pub record_hash: [u8; 32],
    /// The relay's sequence number for the record.
    pub seq: u64,
    /// When the relay stored it (unix ms).
    pub stored_at: u64,
    /// When the relay will drop it (unix ms).
    pub expires_at: u64,
}

impl ReceiptLeaf {
    /// Canonical bytes (the Merkle leaf input).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(200);
        w.u8(RECEIPT_VERSION)
            .raw(&self.relay.to_bytes())
            .raw(&self.owner.to_bytes())
            .raw(&self.receiver.to_bytes())
            .var8(self.record_id.as_bytes())
            .raw(&self.record_hash)
            .u64(self.seq)
            .u64(self.stored_at)
            .u64(self.expires_at);
        w.finish()
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("leaf version")?;
        if version != RECEIPT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        Ok(Self {
            relay: read_public_key(r, "relay")?,
            owner: read_public_key(r, "owner")?,
            receiver: read_public_key(r, "receiver")?,
            record_id: read_record_id(r)?,
            record_hash: r.array("record hash")?,
            seq: r.u64("seq")?,
            stored_at: r.u64("stored_at")?,
            expires_at: r.u64("expires_at")?,
        })
    }
}

/// What a relay attests for one accepted drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DropLeaf {
    /// The relay's key.
    pub relay: PublicKey,
    /// The drop's tag.
    pub tag: Tag,
    /// [`drop_hash`] of the stored envelope.
    #[serde(with = "hex_array")]
    pub drop_hash: [u8; 32],
    /// The relay's sequence number for the drop.
    pub seq: u64,
    /// When the relay stored it (unix ms).
    pub stored_at: u64,
    /// When the relay will drop it (unix ms).
    pub expires_at: u64,
}

impl DropLeaf {
    /// Canonical bytes (the Merkle leaf input):
    /// `0x02 || [32] relay || [20] tag || [32] drop_hash || u64 seq || u64 stored_at || u64 expires_at`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(112);
        w.u8(DROP_LEAF_VERSION)
            .raw(&self.relay.to_bytes())
            .raw(&self.tag.0)
            .raw(&self.drop_hash)
            .u64(self.seq)
            .u64(self.stored_at)
            .u64(self.expires_at);
        w.finish()
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("leaf version")?;
        if version != DROP_LEAF_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        Ok(Self {
            relay: read_public_key(r, "relay")?,
            tag: Tag(r.array("tag")?),
            drop_hash: r.array("drop hash")?,
            seq: r.u64("seq")?,
            stored_at: r.u64("stored_at")?,
            expires_at: r.u64("expires_at")?,
        })
    }
}

/// The header a relay signs for a commit group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommitHeader {
    /// The relay's key.
    pub relay: PublicKey,
    /// RFC 6962 Merkle tree hash (SHA-256) of the group's leaf bytes.
    #[serde(with = "hex_array")]
    pub root: [u8; 32],
    /// Number of leaves in the group.
    pub tree_size: u32,
    /// When the group became durable (unix ms).
    pub committed_at: u64,
}

impl CommitHeader {
    /// Canonical bytes covered by the signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(80);
        w.u8(RECEIPT_VERSION)
            .raw(&self.relay.to_bytes())
            .raw(&self.root)
            .u32(self.tree_size)
            .u64(self.committed_at);
        w.finish()
    }

    /// The tagged hash the relay signs.
    pub fn signing_hash(&self) -> [u8; 32] {
        tagged_hash(tags::COMMIT, &[&self.to_bytes()])
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("commit version")?;
        if version != RECEIPT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        Ok(Self {
            relay: read_public_key(r, "relay")?,
            root: r.array("root")?,
            tree_size: r.u32("tree size")?,
            committed_at: r.u64("committed_at")?,
        })
    }
}

/// A receipt for one write: its leaf, where it sits in the group, the path to the root, and
/// the relay's signed header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WriteReceipt {
    /// What the relay attests.
    pub leaf: ReceiptLeaf,
    /// The leaf's index in the group.
    pub index: u32,
    /// RFC 6962 inclusion proof: sibling hashes from the leaf up.
    #[serde(with = "hex_hash_list")]
    pub proof: Vec<[u8; 32]>,
    /// The signed header.
    pub commit: CommitHeader,
    /// The relay's BIP-340 signature over the header.
    pub sig: Signature,
}

impl WriteReceipt {
    /// Verifies the receipt was issued by `relay`: names, signature and inclusion proof.
    pub fn verify(&self, relay: &PublicKey) -> Result<(), ReceiptError> {
        if self.leaf.relay != *relay {
            return Err(ReceiptError::WrongRelay);
        }
        verify_inclusion(relay, self.leaf.to_bytes(), self.index, &self.proof, &self.commit, &self.sig)
    }

    /// Canonical bytes (for storing receipts).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_receipt(&self.leaf.to_bytes(), self.index, &self.proof, &self.commit, &self.sig)
    }

    /// Decodes canonical bytes (does not verify; call [`WriteReceipt::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let (leaf, index, proof, commit, sig) = decode_receipt(bytes, ReceiptLeaf::decode_from)?;
        Ok(Self { leaf, index, proof, commit, sig })
    }

    /// JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("receipt JSON serializes")
    }

    /// Parses the JSON form (does not verify).
    pub fn from_json(text: &str) -> Result<Self, ReceiptError> {
        let receipt: Self = serde_json::from_str(text).map_err(|e| ReceiptError::Json(e.to_string()))?;
        validate_record_id(&receipt.leaf.record_id).map_err(|e| ReceiptError::Json(e.to_string()))?;
        if receipt.proof.len() > MAX_PROOF_LEN {
            return Err(ReceiptError::GroupSize);
        }
        Ok(receipt)
    }
}

/// Checks a receipt's commit header and inclusion proof: `relay` signed the header, and
/// `leaf_bytes` sits at `index` under its root.
fn verify_inclusion(
    relay: &PublicKey,
    leaf_bytes: Vec<u8>,
    index: u32,
    proof: &[[u8; 32]],
    commit: &CommitHeader,
    sig: &Signature,
) -> Result<(), ReceiptError> {
    if commit.relay != *relay {
        return Err(ReceiptError::WrongRelay);
    }
    if commit.tree_size == 0 || commit.tree_size > MAX_GROUP_SIZE || proof.len() > MAX_PROOF_LEN {
        return Err(ReceiptError::GroupSize);
    }
    relay.verify(&commit.signing_hash(), sig).map_err(|_| ReceiptError::BadSignature)?;
    let root = RootHash::<Sha256>::new(commit.root.into(), u64::from(commit.tree_size));
    let proof = InclusionProof::<Sha256>::from_digests(proof.iter().map(|h| h.into()));
    root.verify_inclusion(&leaf_bytes, u64::from(index), &proof).map_err(|_| ReceiptError::BadProof)
}

/// `var16(leaf) || u32 index || u8 count || [32] proof hash… || commit || [64] sig`.
fn encode_receipt(
    leaf_bytes: &[u8],
    index: u32,
    proof: &[[u8; 32]],
    commit: &CommitHeader,
    sig: &Signature,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(512);
    w.var16(leaf_bytes).u32(index).u8(proof.len() as u8);
    for hash in proof {
        w.raw(hash);
    }
    w.raw(&commit.to_bytes()).raw(&sig.to_bytes());
    w.finish()
}

type DecodedReceipt<L> = (L, u32, Vec<[u8; 32]>, CommitHeader, Signature);

fn decode_receipt<L>(
    bytes: &[u8],
    decode_leaf: fn(&mut Reader<'_>) -> Result<L, DecodeError>,
) -> Result<DecodedReceipt<L>, ReceiptError> {
    let mut r = Reader::new(bytes);
    let leaf_bytes = r.var16(512, "leaf")?;
    let mut leaf_reader = Reader::new(leaf_bytes);
    let leaf = decode_leaf(&mut leaf_reader)?;
    leaf_reader.finish()?;
    let index = r.u32("index")?;
    let count = r.u8("proof length")? as usize;
    if count > MAX_PROOF_LEN {
        return Err(DecodeError::TooLong { field: "proof", len: count, max: MAX_PROOF_LEN }.into());
    }
    let mut proof = Vec::with_capacity(count);
    for _ in 0..count {
        proof.push(r.array("proof hash")?);
    }
    let commit = CommitHeader::decode_from(&mut r)?;
    let sig = Signature::from_bytes(r.array("signature")?);
    r.finish()?;
    Ok((leaf, index, proof, commit, sig))
}

/// A receipt for one drop: its leaf, where it sits in the group, the path to the root, and
/// the relay's signed header. The same shape as [`WriteReceipt`], with a [`DropLeaf`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DropReceipt {
    /// What the relay attests.
    pub leaf: DropLeaf,
    /// The leaf's index in the group.
    pub index: u32,
    /// RFC 6962 inclusion proof: sibling hashes from the leaf up.
    #[serde(with = "hex_hash_list")]
    pub proof: Vec<[u8; 32]>,
    /// The signed header.
    pub commit: CommitHeader,
    /// The relay's BIP-340 signature over the header.
    pub sig: Signature,
}

impl DropReceipt {
    /// Verifies the receipt was issued by `relay`: names, signature and inclusion proof.
    pub fn verify(&self, relay: &PublicKey) -> Result<(), ReceiptError> {
        if self.leaf.relay != *relay {
            return Err(ReceiptError::WrongRelay);
        }
        verify_inclusion(relay, self.leaf.to_bytes(), self.index, &self.proof, &self.commit, &self.sig)
    }

    /// Canonical bytes: the write receipt layout with a drop leaf inside.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_receipt(&self.leaf.to_bytes(), self.index, &self.proof, &self.commit, &self.sig)
    }

    /// Decodes canonical bytes (does not verify; call [`DropReceipt::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let (leaf, index, proof, commit, sig) = decode_receipt(bytes, DropLeaf::decode_from)?;
        Ok(Self { leaf, index, proof, commit, sig })
    }

    /// JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("receipt JSON serializes")
    }

    /// Parses the JSON form (does not verify).
    pub fn from_json(text: &str) -> Result<Self, ReceiptError> {
        let receipt: Self = serde_json::from_str(text).map_err(|e| ReceiptError::Json(e.to_string()))?;
        if receipt.proof.len() > MAX_PROOF_LEN {
            return Err(ReceiptError::GroupSize);
        }
        Ok(receipt)
    }
}

/// A receipt of either kind, as [`CommitGroup::sign_all_with_aux`] returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// For a write ([`CommitGroup::push`]).
    Write(WriteReceipt),
    /// For a drop ([`CommitGroup::push_drop`]).
    Drop(DropReceipt),
}

impl Receipt {
    /// Verifies the receipt was issued by `relay`.
    pub fn verify(&self, relay: &PublicKey) -> Result<(), ReceiptError> {
        match self {
            Receipt::Write(receipt) => receipt.verify(relay),
            Receipt::Drop(receipt) => receipt.verify(relay),
        }
    }
}

/// A leaf waiting in a commit group.
enum GroupLeaf {
    Write(ReceiptLeaf),
    Drop(DropLeaf),
}

impl GroupLeaf {
    fn relay(&self) -> &PublicKey {
        match self {
            GroupLeaf::Write(leaf) => &leaf.relay,
            GroupLeaf::Drop(leaf) => &leaf.relay,
        }
    }
}

/// Builds the receipts of one commit group: push the leaves, then sign once.
#[derive(Default)]
pub struct CommitGroup {
    tree: MemoryBackedTree<Sha256, Vec<u8>>,
    leaves: Vec<GroupLeaf>,
    drops: usize,
}

impl CommitGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    fn push_leaf(&mut self, bytes: Vec<u8>, leaf: GroupLeaf) -> Result<u32, ReceiptError> {
        if self.leaves.len() >= MAX_GROUP_SIZE as usize {
            return Err(ReceiptError::GroupSize);
        }
        self.tree.push(bytes);
        self.leaves.push(leaf);
        Ok((self.leaves.len() - 1) as u32)
    }

    /// Adds a write leaf; returns its index, or `GroupSize` when the group is full.
    pub fn push(&mut self, leaf: ReceiptLeaf) -> Result<u32, ReceiptError> {
        self.push_leaf(leaf.to_bytes(), GroupLeaf::Write(leaf))
    }

    /// Adds a drop leaf; returns its index, or `GroupSize` when the group is full. A group
    /// holding drops is signed with [`CommitGroup::sign_all_with_aux`].
    pub fn push_drop(&mut self, leaf: DropLeaf) -> Result<u32, ReceiptError> {
        let index = self.push_leaf(leaf.to_bytes(), GroupLeaf::Drop(leaf))?;
        self.drops += 1;
        Ok(index)
    }

    /// Number of leaves so far (writes and drops).
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Signs the group's root with randomness from `rng`; see [`CommitGroup::sign_with_aux`].
    pub fn sign<R: rand_core::RngCore + rand_core::CryptoRng>(
        self,
        relay_key: &SecretKey,
        committed_at: u64,
        rng: &mut R,
    ) -> Result<Vec<WriteReceipt>, ReceiptError> {
        let mut aux = [0u8; 32];
        rng.fill_bytes(&mut aux);
        self.sign_with_aux(relay_key, committed_at, &aux)
    }

    /// Signs a group of writes only with explicit auxiliary bytes and returns one receipt per
    /// leaf, in push order. A group holding drops is refused with `HasDrops` (nothing is
    /// signed): use [`CommitGroup::sign_all_with_aux`].
    pub fn sign_with_aux(
        self,
        relay_key: &SecretKey,
        committed_at: u64,
        aux: &[u8; 32],
    ) -> Result<Vec<WriteReceipt>, ReceiptError> {
        if self.drops > 0 {
            return Err(ReceiptError::HasDrops);
        }
        let receipts = self.sign_all_with_aux(relay_key, committed_at, aux)?;
        Ok(receipts
            .into_iter()
            .filter_map(|receipt| match receipt {
                Receipt::Write(receipt) => Some(receipt),
                Receipt::Drop(_) => None,
            })
            .collect())
    }

    /// Signs the group's root with randomness from `rng`; see
    /// [`CommitGroup::sign_all_with_aux`].
    pub fn sign_all<R: rand_core::RngCore + rand_core::CryptoRng>(
        self,
        relay_key: &SecretKey,
        committed_at: u64,
        rng: &mut R,
    ) -> Result<Vec<Receipt>, ReceiptError> {
        let mut aux = [0u8; 32];
        rng.fill_bytes(&mut aux);
        self.sign_all_with_aux(relay_key, committed_at, &aux)
    }

    /// Signs the group's root (writes and drops together) with explicit auxiliary bytes and
    /// returns one receipt per leaf, of the leaf's kind, in push order.
    pub fn sign_all_with_aux(
        self,
        relay_key: &SecretKey,
        committed_at: u64,
        aux: &[u8; 32],
    ) -> Result<Vec<Receipt>, ReceiptError> {
        if self.leaves.is_empty() {
            return Err(ReceiptError::GroupSize);
        }
        let relay = relay_key.public_key();
        if self.leaves.iter().any(|leaf| *leaf.relay() != relay) {
            return Err(ReceiptError::WrongRelay);
        }
        let root = self.tree.root();
        let mut root_bytes = [0u8; 32];
        root_bytes.copy_from_slice(root.as_bytes());
        let commit =
            CommitHeader { relay, root: root_bytes, tree_size: self.leaves.len() as u32, committed_at };
        let sig = relay_key.sign_with_aux(&commit.signing_hash(), aux);
        let receipts = self
            .leaves
            .into_iter()
            .enumerate()
            .map(|(index, leaf)| {
                let proof = self.tree.prove_inclusion(index);
                let proof = proof
                    .as_bytes()
                    .chunks_exact(32)
                    .map(|chunk| {
                        let mut hash = [0u8; 32];
                        hash.copy_from_slice(chunk);
                        hash
                    })
                    .collect();
                let (index, commit) = (index as u32, commit.clone());
                match leaf {
                    GroupLeaf::Write(leaf) => {
                        Receipt::Write(WriteReceipt { leaf, index, proof, commit, sig })
                    }
                    GroupLeaf::Drop(leaf) => Receipt::Drop(DropReceipt { leaf, index, proof, commit, sig }),
                }
            })
            .collect();
        Ok(receipts)
    }
}

/// Kinds of relay documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DocumentKind {
    /// The relay's info document (software, policies, limits, prices).
    Info = 1,
    /// A usage report.
    UsageReport = 2,
    /// The relay's postage public keys (current and next epochs).
    PostageKeys = 3,
}

impl DocumentKind {
    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            1 => Ok(Self::Info),
            2 => Ok(Self::UsageReport),
            3 => Ok(Self::PostageKeys),
            value => Err(DecodeError::UnknownType { field: "document kind", value: u64::from(value) }),
        }
    }
}

/// A document signed by a relay: a kind, the relay's key, a time and canonical body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDocument {
    /// What the body is.
    pub kind: DocumentKind,
    /// The relay's key.
    pub relay: PublicKey,
    /// When the relay made it (unix ms).
    pub timestamp: u64,
    /// The kind's canonical body bytes.
    pub body: Vec<u8>,
    /// The relay's signature.
    pub sig: Signature,
}

fn document_signing_bytes(kind: DocumentKind, relay: &PublicKey, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(body.len() + 48);
    w.u8(RECEIPT_VERSION).u8(kind as u8).raw(&relay.to_bytes()).u64(timestamp).var32(body);
    w.finish()
}

impl RelayDocument {
    /// Signs a body with explicit auxiliary bytes.
    pub fn sign_with_aux(
        kind: DocumentKind,
        relay_key: &SecretKey,
        timestamp: u64,
        body: Vec<u8>,
        aux: &[u8; 32],
    ) -> Self {
        let relay = relay_key.public_key();
        let digest =
            tagged_hash(tags::RELAY_DOCUMENT, &[&document_signing_bytes(kind, &relay, timestamp, &body)]);
        let sig = relay_key.sign_with_aux(&digest, aux);
        Self { kind, relay, timestamp, body, sig }
    }

    /// Verifies the signature and that the document comes from `relay`.
    pub fn verify(&self, relay: &PublicKey) -> Result<(), ReceiptError> {
        if self.relay != *relay {
            return Err(ReceiptError::WrongRelay);
        }
        let digest = tagged_hash(
            tags::RELAY_DOCUMENT,
            &[&document_signing_bytes(self.kind, &self.relay, self.timestamp, &self.body)],
        );
        relay.verify(&digest, &self.sig).map_err(|_| ReceiptError::BadSignature)
    }

    /// Canonical bytes: signed bytes then signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = document_signing_bytes(self.kind, &self.relay, self.timestamp, &self.body);
        bytes.extend_from_slice(&self.sig.to_bytes());
        bytes
    }

    /// Decodes canonical bytes (does not verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("document version")?;
        if version != RECEIPT_VERSION {
            return Err(DecodeError::UnknownVersion(version).into());
        }
        let kind = DocumentKind::from_byte(r.u8("document kind")?)?;
        let relay = read_public_key(&mut r, "relay")?;
        let timestamp = r.u64("timestamp")?;
        let body = r.var32(MAX_DOCUMENT_BODY_LEN, "body")?.to_vec();
        let sig = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        Ok(Self { kind, relay, timestamp, body, sig })
    }
}

/// One read of the account's outbox, as the relay logged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UsageEntry {
    /// Who read (the outbox's receiver).
    pub receiver: PublicKey,
    /// Which record (path `/account/outbox/receiver/recordId`).
    pub record_id: String,
    /// Bytes served.
    pub bytes: u32,
    /// When (unix ms).
    pub read_at: u64,
}

/// The seed's `UsageReport`: every read of one account's outboxes in a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UsageReport {
    /// The outbox owner the report is about.
    pub account: PublicKey,
    /// Window start (unix ms), if bounded.
    pub after_ts: Option<u64>,
    /// Window end (unix ms), if bounded.
    pub before_ts: Option<u64>,
    /// The reads.
    pub reads: Vec<UsageEntry>,
}

impl UsageReport {
    /// Canonical body bytes.
    pub fn to_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.reads.len() * 64);
        w.raw(&self.account.to_bytes())
            .opt_u64(self.after_ts)
            .opt_u64(self.before_ts)
            .u32(self.reads.len() as u32);
        for read in &self.reads {
            w.raw(&read.receiver.to_bytes())
                .var8(read.record_id.as_bytes())
                .u32(read.bytes)
                .u64(read.read_at);
        }
        w.finish()
    }

    /// Decodes body bytes.
    pub fn from_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let account = read_public_key(&mut r, "account")?;
        let after_ts = r.opt_u64("afterTs")?;
        let before_ts = r.opt_u64("beforeTs")?;
        let count = r.u32("read count")? as usize;
        if count > MAX_USAGE_ENTRIES {
            return Err(DecodeError::TooLong { field: "reads", len: count, max: MAX_USAGE_ENTRIES });
        }
        let mut reads = Vec::with_capacity(count);
        for _ in 0..count {
            reads.push(UsageEntry {
                receiver: read_public_key(&mut r, "receiver")?,
                record_id: read_record_id(&mut r)?,
                bytes: r.u32("bytes")?,
                read_at: r.u64("read_at")?,
            });
        }
        r.finish()?;
        Ok(Self { account, after_ts, before_ts, reads })
    }

    /// Signs the report as a relay document.
    pub fn sign_with_aux(&self, relay_key: &SecretKey, timestamp: u64, aux: &[u8; 32]) -> RelayDocument {
        RelayDocument::sign_with_aux(DocumentKind::UsageReport, relay_key, timestamp, self.to_body(), aux)
    }

    /// Verifies a relay document and decodes the report in it.
    pub fn from_document(document: &RelayDocument, relay: &PublicKey) -> Result<Self, ReceiptError> {
        document.verify(relay)?;
        if document.kind != DocumentKind::UsageReport {
            return Err(
                DecodeError::UnknownType { field: "document kind", value: document.kind as u64 }.into()
            );
        }
        Ok(Self::from_body(&document.body)?)
    }
}

/// The body of a relay's info document: what it runs, who may register, its limits and its
/// announced prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayInfo {
    /// Software name and version, e.g. `pigeonhole/0.1.0`.
    pub software: String,
    /// Account policy: 0 open, 1 invite, 2 contract.
    pub policy: u8,
    /// Largest record content accepted, in bytes.
    pub max_record_bytes: u32,
    /// TTL applied to writes that ask for 0, in seconds.
    pub default_ttl_secs: u32,
    /// Longest TTL granted, in seconds.
    pub max_ttl_secs: u32,
    /// Reads per record before deletion (0 = unlimited).
    pub pull_limit: u32,
    /// Accepted request clock skew, in seconds.
    pub max_skew_secs: u32,
    /// Default account quota: bytes stored.
    pub max_account_bytes: u64,
    /// Default account quota: records per day.
    pub max_records_per_day: u32,
    /// Price of storage, msat per GiB per day.
    pub storage_msat_per_gib_day: u64,
    /// Price of bandwidth, msat per GiB served.
    pub bandwidth_msat_per_gib: u64,
    /// Price of an account, msat per 30 days.
    pub account_msat_per_month: u64,
}

/// Longest software string in an info document.
pub const MAX_SOFTWARE_LEN: usize = 64;

impl RelayInfo {
    /// Canonical body bytes.
    pub fn to_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96);
        w.var8(self.software.as_bytes())
            .u8(self.policy)
            .u32(self.max_record_bytes)
            .u32(self.default_ttl_secs)
            .u32(self.max_ttl_secs)
            .u32(self.pull_limit)
            .u32(self.max_skew_secs)
            .u64(self.max_account_bytes)
            .u32(self.max_records_per_day)
            .u64(self.storage_msat_per_gib_day)
            .u64(self.bandwidth_msat_per_gib)
            .u64(self.account_msat_per_month);
        w.finish()
    }

    /// Decodes body bytes.
    pub fn from_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let info = Self {
            software: r.str8(MAX_SOFTWARE_LEN, "software")?.to_owned(),
            policy: r.u8("policy")?,
            max_record_bytes: r.u32("max_record_bytes")?,
            default_ttl_secs: r.u32("default_ttl_secs")?,
            max_ttl_secs: r.u32("max_ttl_secs")?,
            pull_limit: r.u32("pull_limit")?,
            max_skew_secs: r.u32("max_skew_secs")?,
            max_account_bytes: r.u64("max_account_bytes")?,
            max_records_per_day: r.u32("max_records_per_day")?,
            storage_msat_per_gib_day: r.u64("storage price")?,
            bandwidth_msat_per_gib: r.u64("bandwidth price")?,
            account_msat_per_month: r.u64("account price")?,
        };
        r.finish()?;
        if info.policy > 2 {
            return Err(DecodeError::UnknownType { field: "policy", value: u64::from(info.policy) });
        }
        Ok(info)
    }

    /// Signs the info as a relay document.
    pub fn sign_with_aux(&self, relay_key: &SecretKey, timestamp: u64, aux: &[u8; 32]) -> RelayDocument {
        RelayDocument::sign_with_aux(DocumentKind::Info, relay_key, timestamp, self.to_body(), aux)
    }

    /// Verifies a relay document and decodes the info in it.
    pub fn from_document(document: &RelayDocument, relay: &PublicKey) -> Result<Self, ReceiptError> {
        document.verify(relay)?;
        if document.kind != DocumentKind::Info {
            return Err(
                DecodeError::UnknownType { field: "document kind", value: document.kind as u64 }.into()
            );
        }
        Ok(Self::from_body(&document.body)?)
    }
}

/// The body of a relay's postage-keys document: how long an epoch lasts, the grace around
/// it, and the public key of each listed epoch (the relay publishes the current and the next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostageKeys {
    /// Length of an epoch in seconds (epoch = unix seconds / epoch_secs); never 0.
    pub epoch_secs: u32,
    /// Seconds before an epoch starts and after it ends during which its stamps are accepted.
    pub grace_secs: u32,
    /// `(epoch, compressed ristretto255 public key)`, 1 to 4, epochs strictly ascending.
    #[serde(with = "postage_key_list")]
    pub keys: Vec<(u64, [u8; 32])>,
}

impl PostageKeys {
    /// The published key of `epoch`, if listed.
    pub fn key_for(&self, epoch: u64) -> Option<[u8; 32]> {
        self.keys.iter().find(|(e, _)| *e == epoch).map(|(_, key)| *key)
    }

    /// Checks the limits: `epoch_secs` not 0, 1 to 4 keys, epochs strictly ascending, every
    /// key a valid ristretto255 point.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.epoch_secs == 0 {
            return Err(DecodeError::InvalidValue { field: "epoch_secs", reason: "must not be 0" });
        }
        let count = self.keys.len();
        if count == 0 {
            return Err(DecodeError::TooShort { field: "postage keys", len: 0, min: 1 });
        }
        if count > MAX_POSTAGE_KEYS {
            return Err(DecodeError::TooLong { field: "postage keys", len: count, max: MAX_POSTAGE_KEYS });
        }
        if self.keys.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(DecodeError::InvalidValue { field: "postage keys", reason: "epochs not ascending" });
        }
        if self.keys.iter().any(|(_, key)| check_public_key(key).is_err()) {
            return Err(DecodeError::InvalidValue {
                field: "postage key",
                reason: "not a valid ristretto255 point",
            });
        }
        Ok(())
    }

    /// Canonical body bytes:
    /// `u32 epoch_secs || u32 grace_secs || u8 count || (u64 epoch || [32] key)…`.
    pub fn to_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(9 + 40 * self.keys.len());
        w.u32(self.epoch_secs).u32(self.grace_secs).u8(self.keys.len() as u8);
        for (epoch, key) in &self.keys {
            w.u64(*epoch).raw(key);
        }
        w.finish()
    }

    /// Decodes and validates body bytes.
    pub fn from_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let epoch_secs = r.u32("epoch_secs")?;
        let grace_secs = r.u32("grace_secs")?;
        let count = usize::from(r.u8("postage key count")?);
        if count > MAX_POSTAGE_KEYS {
            return Err(DecodeError::TooLong { field: "postage keys", len: count, max: MAX_POSTAGE_KEYS });
        }
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            keys.push((r.u64("epoch")?, r.array("postage key")?));
        }
        r.finish()?;
        let document = Self { epoch_secs, grace_secs, keys };
        document.validate()?;
        Ok(document)
    }

    /// Signs the keys as a relay document.
    pub fn sign_with_aux(&self, relay_key: &SecretKey, timestamp: u64, aux: &[u8; 32]) -> RelayDocument {
        RelayDocument::sign_with_aux(DocumentKind::PostageKeys, relay_key, timestamp, self.to_body(), aux)
    }

    /// Verifies a relay document and decodes the postage keys in it.
    pub fn from_document(document: &RelayDocument, relay: &PublicKey) -> Result<Self, ReceiptError> {
        document.verify(relay)?;
        if document.kind != DocumentKind::PostageKeys {
            return Err(
                DecodeError::UnknownType { field: "document kind", value: document.kind as u64 }.into()
            );
        }
        Ok(Self::from_body(&document.body)?)
    }
}

/// Serde adapter: postage keys as `[{"epoch": n, "key": hex}, …]`.
mod postage_key_list {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        epoch: u64,
        #[serde(with = "crate::request::hex_array")]
        key: [u8; 32],
    }

    pub(super) fn serialize<S: serde::Serializer>(
        keys: &[(u64, [u8; 32])],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(keys.iter().map(|(epoch, key)| Entry { epoch: *epoch, key: *key }))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(u64, [u8; 32])>, D::Error> {
        Ok(Vec::<Entry>::deserialize(deserializer)?
            .into_iter()
            .map(|entry| (entry.epoch, entry.key))
            .collect())
    }
}

/// Serde adapter: a list of 32-byte hashes as hex strings.
mod hex_hash_list {
    use serde::{Deserialize as _, Serialize as _};

    pub(super) fn serialize<S: serde::Serializer>(
        hashes: &[[u8; 32]],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        hashes.iter().map(|h| crate::to_hex(h)).collect::<Vec<_>>().serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out).map(|_| out).map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    fn leaf(seq: u64) -> ReceiptLeaf {
        ReceiptLeaf {
            relay: key(9).public_key(),
            owner: key(1).public_key(),
            receiver: key(2).public_key(),
            record_id: format!("r{seq}"),
            record_hash: [seq as u8; 32],
            seq,
            stored_at: 1000 + seq,
            expires_at: 9000 + seq,
        }
    }

    fn receipts(n: u64) -> Vec<WriteReceipt> {
        let mut group = CommitGroup::new();
        for seq in 0..n {
            group.push(leaf(seq)).expect("fits");
        }
        group.sign_with_aux(&key(9), 5000, &[0; 32]).expect("signs")
    }

    #[test]
    fn every_receipt_in_groups_of_any_size_verifies() {
        for n in [1, 2, 3, 5, 8, 13, 64, 100] {
            let all = receipts(n);
            assert_eq!(all.len() as u64, n);
            for receipt in &all {
                assert_eq!(receipt.verify(&key(9).public_key()), Ok(()), "group {n} index {}", receipt.index);
                assert_eq!(WriteReceipt::from_bytes(&receipt.to_bytes()).as_ref(), Ok(receipt));
                assert_eq!(WriteReceipt::from_json(&receipt.to_json()).as_ref(), Ok(receipt));
            }
        }
    }

    #[test]
    fn tampered_receipts_fail() {
        let relay = key(9).public_key();
        let all = receipts(7);
        let mut r = all[3].clone();
        r.leaf.seq += 1;
        assert_eq!(r.verify(&relay), Err(ReceiptError::BadProof));
        let mut r = all[3].clone();
        r.index = 4;
        assert_eq!(r.verify(&relay), Err(ReceiptError::BadProof));
        let mut r = all[3].clone();
        r.commit.committed_at += 1;
        assert_eq!(r.verify(&relay), Err(ReceiptError::BadSignature));
        let mut r = all[3].clone();
        r.proof[0][0] ^= 1;
        assert_eq!(r.verify(&relay), Err(ReceiptError::BadProof));
        assert_eq!(all[3].verify(&key(8).public_key()), Err(ReceiptError::WrongRelay));
        // A leaf moved into another group's receipt does not verify.
        let mut r = all[3].clone();
        r.leaf = leaf(99);
        assert_eq!(r.verify(&relay), Err(ReceiptError::BadProof));
    }

    #[test]
    fn flipped_bits_in_receipt_bytes_fail() {
        let relay = key(9).public_key();
        let bytes = receipts(5)[2].to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = WriteReceipt::from_bytes(&bad).map(|r| r.verify(&relay).is_ok()).unwrap_or(false);
            assert!(!ok, "byte {i}");
        }
    }

    #[test]
    fn root_matches_rfc6962_definition() {
        // MTH of two leaves: SHA-256(0x01 || SHA-256(0x00 || d0) || SHA-256(0x00 || d1)).
        use sha2::Digest;
        let all = receipts(2);
        let leaf_hash =
            |d: &[u8]| -> [u8; 32] { Sha256::new().chain_update([0u8]).chain_update(d).finalize().into() };
        let expected: [u8; 32] = Sha256::new()
            .chain_update([1u8])
            .chain_update(leaf_hash(&leaf(0).to_bytes()))
            .chain_update(leaf_hash(&leaf(1).to_bytes()))
            .finalize()
            .into();
        assert_eq!(all[0].commit.root, expected);
    }

    #[test]
    fn usage_report_signs_and_verifies() {
        let report = UsageReport {
            account: key(1).public_key(),
            after_ts: Some(1),
            before_ts: None,
            reads: vec![UsageEntry {
                receiver: key(2).public_key(),
                record_id: "r1".into(),
                bytes: 1200,
                read_at: 7,
            }],
        };
        let doc = report.sign_with_aux(&key(9), 77, &[0; 32]);
        let parsed = RelayDocument::from_bytes(&doc.to_bytes()).expect("decodes");
        assert_eq!(UsageReport::from_document(&parsed, &key(9).public_key()), Ok(report));
        let mut bad = parsed.clone();
        bad.body[40] ^= 1;
        assert_eq!(UsageReport::from_document(&bad, &key(9).public_key()), Err(ReceiptError::BadSignature));
    }

    fn drop_leaf(seq: u64) -> DropLeaf {
        DropLeaf {
            relay: key(9).public_key(),
            tag: Tag([seq as u8; 20]),
            drop_hash: drop_hash(&seq.to_be_bytes()),
            seq,
            stored_at: 2000 + seq,
            expires_at: 8000 + seq,
        }
    }

    /// A group of `n` leaves alternating write, drop, write, ...
    fn mixed(n: u64) -> Vec<Receipt> {
        let mut group = CommitGroup::new();
        for seq in 0..n {
            let index = if seq % 2 == 0 { group.push(leaf(seq)) } else { group.push_drop(drop_leaf(seq)) };
            assert_eq!(index, Ok(seq as u32));
        }
        group.sign_all_with_aux(&key(9), 5000, &[0; 32]).expect("signs")
    }

    #[test]
    fn mixed_groups_give_receipts_of_both_kinds_in_push_order() {
        let relay = key(9).public_key();
        for n in [1, 2, 3, 7, 64] {
            let all = mixed(n);
            assert_eq!(all.len() as u64, n);
            for (seq, receipt) in all.iter().enumerate() {
                assert_eq!(receipt.verify(&relay), Ok(()));
                match receipt {
                    Receipt::Write(r) => {
                        assert_eq!(seq % 2, 0);
                        assert_eq!(r.leaf, leaf(seq as u64));
                    }
                    Receipt::Drop(r) => {
                        assert_eq!(seq % 2, 1);
                        assert_eq!(r.leaf, drop_leaf(seq as u64));
                        assert_eq!(DropReceipt::from_bytes(&r.to_bytes()).as_ref(), Ok(r));
                        assert_eq!(DropReceipt::from_json(&r.to_json()).as_ref(), Ok(r));
                        // Neither decoder takes the other kind's bytes.
                        assert!(WriteReceipt::from_bytes(&r.to_bytes()).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn all_write_groups_sign_the_same_either_way() {
        let mut a = CommitGroup::new();
        let mut b = CommitGroup::new();
        for seq in 0..5 {
            a.push(leaf(seq)).expect("fits");
            b.push(leaf(seq)).expect("fits");
        }
        let writes = a.sign_with_aux(&key(9), 5000, &[0; 32]).expect("signs");
        let all = b.sign_all_with_aux(&key(9), 5000, &[0; 32]).expect("signs");
        assert_eq!(all, writes.into_iter().map(Receipt::Write).collect::<Vec<_>>());
        let mut with_drop = CommitGroup::new();
        with_drop.push(leaf(0)).expect("fits");
        with_drop.push_drop(drop_leaf(1)).expect("fits");
        assert_eq!(with_drop.sign_with_aux(&key(9), 1, &[0; 32]).err(), Some(ReceiptError::HasDrops));
    }

    #[test]
    fn tampered_drop_receipts_fail() {
        let relay = key(9).public_key();
        let all = mixed(6);
        let Receipt::Drop(base) = &all[3] else { panic!("index 3 is a drop") };
        let check = |edit: &dyn Fn(&mut DropReceipt), expected: ReceiptError| {
            let mut r = base.clone();
            edit(&mut r);
            assert_eq!(r.verify(&relay), Err(expected));
        };
        check(&|r| r.leaf.seq += 1, ReceiptError::BadProof);
        check(&|r| r.leaf.tag.0[0] ^= 1, ReceiptError::BadProof);
        check(&|r| r.leaf.drop_hash[31] ^= 1, ReceiptError::BadProof);
        check(&|r| r.index = 2, ReceiptError::BadProof);
        check(&|r| r.commit.committed_at += 1, ReceiptError::BadSignature);
        assert_eq!(base.verify(&key(8).public_key()), Err(ReceiptError::WrongRelay));
        let bytes = base.to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = DropReceipt::from_bytes(&bad).map(|r| r.verify(&relay).is_ok()).unwrap_or(false);
            assert!(!ok, "byte {i}");
        }
    }

    #[test]
    fn postage_keys_sign_and_verify() {
        let relay = key(9);
        let keys = PostageKeys {
            epoch_secs: 86_400,
            grace_secs: 3600,
            keys: vec![
                (20_000, crate::postage::PostageKey::derive(&relay, 20_000).public_key()),
                (20_001, crate::postage::PostageKey::derive(&relay, 20_001).public_key()),
            ],
        };
        assert_eq!(PostageKeys::from_body(&keys.to_body()).as_ref(), Ok(&keys));
        let json = serde_json::to_string(&keys).expect("serializes");
        assert!(json.starts_with(r#"{"epochSecs":86400,"graceSecs":3600,"keys":[{"epoch":20000,"key":""#));
        assert_eq!(serde_json::from_str::<PostageKeys>(&json).expect("parses"), keys);
        let doc = keys.sign_with_aux(&relay, 77, &[0; 32]);
        let parsed = RelayDocument::from_bytes(&doc.to_bytes()).expect("decodes");
        assert_eq!(PostageKeys::from_document(&parsed, &relay.public_key()).as_ref(), Ok(&keys));
        assert!(UsageReport::from_document(&parsed, &relay.public_key()).is_err());
        assert_eq!(keys.key_for(20_001), Some(keys.keys[1].1));
        assert_eq!(keys.key_for(19_999), None);
        let refuse = |edit: &dyn Fn(&mut PostageKeys)| {
            let mut bad = keys.clone();
            edit(&mut bad);
            assert!(PostageKeys::from_body(&bad.to_body()).is_err());
        };
        refuse(&|k| k.epoch_secs = 0);
        refuse(&|k| k.keys.clear());
        refuse(&|k| k.keys = vec![k.keys[0]; 5]);
        refuse(&|k| k.keys.reverse());
        refuse(&|k| k.keys[1].0 = k.keys[0].0);
        refuse(&|k| k.keys[0].1 = [0xff; 32]);
        let mut trailing = keys.to_body();
        trailing.push(0);
        assert!(PostageKeys::from_body(&trailing).is_err());
    }
}
