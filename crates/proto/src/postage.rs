//! Drop postage: single-use blind tokens (RFC 9497 VOPRF, ristretto255-SHA512) that a relay
//! issues to accounts or under a per-IP quota and redeems once per drop, without being able
//! to link a redeemed token to the issuance it came from.
//!
//! The flow, client and relay:
//! 1. the client draws random 32-byte token inputs and blinds them ([`blind`]): an
//!    [`IssueRequest`] of blinded elements and a [`BlindState`] it keeps;
//! 2. the relay evaluates them under its key for the epoch ([`PostageKey::evaluate`]) and
//!    returns an [`IssueResponse`] with one batched DLEQ proof;
//! 3. the client checks the proof against the epoch key the relay publishes for everyone and
//!    unblinds ([`BlindState::finalize`]): each [`Token`] is an input and its PRF output;
//! 4. to post a drop, the client binds one token to the drop ([`Token::stamp`]): the [`Stamp`]
//!    carries the input and an HMAC keyed by the PRF output over the drop's tag and envelope
//!    hash, so the output never travels;
//! 5. the relay recomputes the PRF output from the input ([`PostageKey::check_stamp`]),
//!    checks the MAC, and records [`Stamp::spent_id`] so the token is never accepted twice.
//!
//! Pure: keys derive from the relay's secret key and the epoch number; randomness comes only
//! from the `rng` arguments; time comes in as unix seconds.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use voprf::{BlindedElement, EvaluationElement, Group, Proof, Ristretto255, VoprfClient, VoprfServer};
use zeroize::{Zeroize, Zeroizing};

use crate::hash::{tagged_hash, tags};
use crate::keys::SecretKey;
use crate::receipt::drop_hash;
use crate::tag::Tag;
use crate::wire::{DecodeError, Reader, Writer};

/// The postage-keys relay document body (document kind 3), defined with the other relay
/// documents in [`crate::receipt`] and re-exported here beside the keys it publishes.
pub use crate::receipt::PostageKeys;

/// The RFC 9497 ciphersuite: ristretto255 with SHA-512.
type Suite = Ristretto255;

/// Most blinded elements in one issuance request.
pub const MAX_ISSUE: usize = 64;
/// A compressed ristretto255 point.
pub const ELEMENT_LEN: usize = 32;
/// A VOPRF proof: two ristretto255 scalars `(c, s)`.
pub const PROOF_LEN: usize = 64;
/// A token's PRF output (SHA-512).
pub const OUTPUT_LEN: usize = 64;
/// A token input.
pub const INPUT_LEN: usize = 32;
/// A stamp's MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Version byte of stamp bytes.
pub const STAMP_VERSION: u8 = 1;
/// Length of a stamp's bytes: version, epoch, input, MAC.
pub const STAMP_LEN: usize = 1 + 8 + INPUT_LEN + MAC_LEN;
/// Prefix of the RFC 9497 `info` string a postage key is derived with (then the epoch, u64 BE).
pub const KEY_INFO_PREFIX: &[u8] = b"pigeonhole postage v1";

/// Why postage did not decode, issue, finalize or check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostageError {
    /// Malformed bytes.
    #[error("malformed postage: {0}")]
    Decode(#[from] DecodeError),
    /// Malformed JSON (syntax, unknown fields, bad hex).
    #[error("malformed postage JSON: {0}")]
    Json(String),
    /// A batch with no element or more than [`MAX_ISSUE`].
    #[error("{count} elements; a batch holds 1 to 64")]
    Count {
        /// The number found.
        count: usize,
    },
    /// An element is not the encoding of a ristretto255 point other than the identity.
    #[error("element {index} is not a valid ristretto255 point")]
    InvalidElement {
        /// Its position in the batch.
        index: usize,
    },
    /// A published postage key is not a valid ristretto255 point.
    #[error("the postage public key is not a valid ristretto255 point")]
    InvalidPublicKey,
    /// The response does not answer as many elements as were blinded.
    #[error("the response holds {got} elements for {expected} blinded")]
    CountMismatch {
        /// Elements blinded.
        expected: usize,
        /// Elements answered.
        got: usize,
    },
    /// The DLEQ proof is malformed or does not verify against the epoch's published key.
    #[error("the issuance proof does not verify against the epoch's public key")]
    BadProof,
    /// The stamp's MAC does not verify: another tag, envelope, key or a forged stamp.
    #[error("the stamp does not verify for this drop")]
    BadStamp,
    /// Made for, or checked under, another epoch.
    #[error("epoch {got}; expected {expected}")]
    WrongEpoch {
        /// The epoch of the key or state doing the check.
        expected: u64,
        /// The epoch in the message.
        got: u64,
    },
}

impl PostageError {
    /// The same refusal as a [`DecodeError`], for decoders (requests) that speak only those.
    pub(crate) fn into_decode_error(self) -> DecodeError {
        match self {
            PostageError::Decode(error) => error,
            PostageError::Count { count: 0 } => DecodeError::TooShort { field: "blinded", len: 0, min: 1 },
            PostageError::Count { count } => {
                DecodeError::TooLong { field: "blinded", len: count, max: MAX_ISSUE }
            }
            PostageError::InvalidElement { .. } => {
                DecodeError::InvalidValue { field: "blinded", reason: "not a valid ristretto255 point" }
            }
            _ => DecodeError::InvalidValue { field: "postage", reason: "invalid issuance request" },
        }
    }
}

/// The epoch that `unix_secs` falls in: `unix_secs / epoch_secs`. An `epoch_secs` of 0 (which
/// [`crate::receipt::PostageKeys`] never carries) is treated as 1.
pub fn epoch_of(unix_secs: u64, epoch_secs: u32) -> u64 {
    unix_secs / u64::from(epoch_secs.max(1))
}

/// First second of `epoch` (unix seconds), saturating.
pub fn epoch_start(epoch: u64, epoch_secs: u32) -> u64 {
    epoch.saturating_mul(u64::from(epoch_secs.max(1)))
}

/// First second after `epoch` (unix seconds, exclusive end), saturating.
pub fn epoch_end(epoch: u64, epoch_secs: u32) -> u64 {
    epoch_start(epoch.saturating_add(1), epoch_secs)
}

/// Whether a relay accepts stamps of `epoch` at `now_secs`: from `grace_secs` before the epoch
/// starts (clients whose clocks run ahead) until `grace_secs` after it ends (tokens bought
/// late in an epoch). Outside this window the relay need not remember the epoch's spent ids.
pub fn is_redeemable(epoch: u64, now_secs: u64, epoch_secs: u32, grace_secs: u32) -> bool {
    let grace = u64::from(grace_secs);
    now_secs.saturating_add(grace) >= epoch_start(epoch, epoch_secs)
        && now_secs < epoch_end(epoch, epoch_secs).saturating_add(grace)
}

/// Checks that 32 bytes are a postage public key (a ristretto255 point, not the identity).
pub fn check_public_key(key: &[u8; ELEMENT_LEN]) -> Result<(), PostageError> {
    Suite::deserialize_elem(key).map(|_| ()).map_err(|_| PostageError::InvalidPublicKey)
}

/// `info` for RFC 9497 DeriveKeyPair: [`KEY_INFO_PREFIX`] then the epoch as a u64, big-endian.
fn key_info(epoch: u64) -> Vec<u8> {
    [KEY_INFO_PREFIX, &epoch.to_be_bytes()].concat()
}

/// Copies a fixed-size serialization out of the VOPRF crate's `GenericArray`.
fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // The lengths are fixed by the ciphersuite's types; the tests pin them.
    out.copy_from_slice(bytes);
    out
}

/// `HMAC-SHA256(key = output, "pigeonhole/v1/postage-stamp" || tag || drop_hash)`.
fn stamp_mac(output: &[u8; OUTPUT_LEN], tag: &Tag, drop_hash: &[u8; 32]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(output).expect("HMAC accepts keys of any length");
    mac.update(tags::POSTAGE_STAMP.as_bytes());
    mac.update(&tag.0);
    mac.update(drop_hash);
    mac.finalize().into_bytes().into()
}

/// A relay's secret postage key for one epoch. Zeroized on drop; `Debug` shows only the
/// epoch and the public key.
#[derive(Clone)]
pub struct PostageKey {
    epoch: u64,
    server: VoprfServer<Suite>,
}

impl PostageKey {
    /// Derives the relay's key for `epoch` (RFC 9497 DeriveKeyPair): seed =
    /// `H_postage-seed(relay secret key)`, info = `"pigeonhole postage v1" || u64 epoch`.
    /// Deterministic, so the relay stores nothing per epoch and every restart agrees.
    pub fn derive(relay_secret: &SecretKey, epoch: u64) -> PostageKey {
        let secret = relay_secret.to_bytes();
        let seed = Zeroizing::new(tagged_hash(tags::POSTAGE_SEED, &[&secret[..]]));
        // DeriveKeyPair fails only for an info string over 65,532 bytes (ours is 29) or when
        // 256 successive hash-to-scalar attempts all give zero (probability about 2^-64000).
        let server = VoprfServer::new_from_seed(&seed[..], &key_info(epoch))
            .expect("DeriveKeyPair succeeds for a 32-byte seed and a short info string");
        PostageKey { epoch, server }
    }

    /// The epoch this key serves.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public key (a compressed ristretto255 point) the relay publishes for the epoch.
    pub fn public_key(&self) -> [u8; ELEMENT_LEN] {
        to_array(&Suite::serialize_elem(self.server.get_public_key()))
    }

    /// Evaluates a batch of blinded elements and proves, with one batched DLEQ proof, that
    /// every answer used the key behind [`PostageKey::public_key`].
    pub fn evaluate<R: rand_core::RngCore + rand_core::CryptoRng>(
        &self,
        request: &IssueRequest,
        rng: &mut R,
    ) -> Result<IssueResponse, PostageError> {
        if request.epoch != self.epoch {
            return Err(PostageError::WrongEpoch { expected: self.epoch, got: request.epoch });
        }
        let blinded = request.decode_elements()?;
        let result = self
            .server
            .batch_blind_evaluate(rng, &blinded)
            .map_err(|_| PostageError::Count { count: blinded.len() })?;
        Ok(IssueResponse {
            epoch: self.epoch,
            evaluated: result.messages.iter().map(|element| to_array(&element.serialize())).collect(),
            proof: to_array(&result.proof.serialize()),
        })
    }

    /// Checks a stamp on the drop `(tag, envelope)`: recomputes the token's PRF output from
    /// its input and compares the MAC in constant time. Does not check that the token is
    /// unspent: the relay looks up [`Stamp::spent_id`] for that.
    pub fn check_stamp(&self, stamp: &Stamp, tag: &Tag, envelope: &[u8]) -> Result<(), PostageError> {
        self.check_stamp_for_hash(stamp, tag, &drop_hash(envelope))
    }

    /// [`PostageKey::check_stamp`] for a relay that already computed the envelope's
    /// [`drop_hash`].
    pub fn check_stamp_for_hash(
        &self,
        stamp: &Stamp,
        tag: &Tag,
        drop_hash: &[u8; 32],
    ) -> Result<(), PostageError> {
        if stamp.epoch != self.epoch {
            return Err(PostageError::WrongEpoch { expected: self.epoch, got: stamp.epoch });
        }
        let output = self.server.evaluate(&stamp.input).map_err(|_| PostageError::BadStamp)?;
        let output = Zeroizing::new(to_array::<OUTPUT_LEN>(&output));
        let expected = Zeroizing::new(stamp_mac(&output, tag, drop_hash));
        if bool::from(expected.ct_eq(&stamp.mac)) { Ok(()) } else { Err(PostageError::BadStamp) }
    }
}

impl fmt::Debug for PostageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostageKey")
            .field("epoch", &self.epoch)
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// What the client keeps between [`blind`] and [`BlindState::finalize`]: the token inputs and
/// their blinding scalars. Zeroized on drop; `Debug` shows only the epoch and the count.
pub struct BlindState {
    epoch: u64,
    inputs: Vec<[u8; INPUT_LEN]>,
    clients: Vec<VoprfClient<Suite>>,
}

/// Draws `count` random token inputs for `epoch` and blinds them. `count` is clamped to
/// `1..=MAX_ISSUE`; the request's `blinded.len()` is the number actually drawn. Randomness
/// is drawn per token in order: the 32-byte input, then the blinding scalar (64 bytes,
/// reduced), so a seeded RNG reproduces a request exactly.
pub fn blind<R: rand_core::RngCore + rand_core::CryptoRng>(
    count: usize,
    epoch: u64,
    rng: &mut R,
) -> (IssueRequest, BlindState) {
    let count = count.clamp(1, MAX_ISSUE);
    let mut inputs = Vec::with_capacity(count);
    let mut clients = Vec::with_capacity(count);
    let mut blinded = Vec::with_capacity(count);
    while inputs.len() < count {
        let mut input = [0u8; INPUT_LEN];
        rng.fill_bytes(&mut input);
        // Blinding fails only if the input hashes to the identity (probability about 2^-252):
        // draw another input rather than fail.
        if let Ok(result) = VoprfClient::<Suite>::blind(&input, rng) {
            blinded.push(to_array(&result.message.serialize()));
            clients.push(result.state);
            inputs.push(input);
        }
        input.zeroize();
    }
    (IssueRequest { epoch, blinded }, BlindState { epoch, inputs, clients })
}

impl BlindState {
    /// The epoch the tokens are for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of tokens blinded.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether no token was blinded (never true for a state made by [`blind`]).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Keeps only the first `n` blinded tokens: a relay that grants less than was asked (the
    /// rest of a daily quota) evaluates the first `n` elements of the request, and the client
    /// truncates before [`BlindState::finalize`].
    pub fn truncate(&mut self, n: usize) {
        self.inputs.truncate(n);
        self.clients.truncate(n);
    }

    /// Checks the relay's batched proof against `public_key` (the key the relay publishes for
    /// this epoch, the same for every client) and unblinds: one [`Token`] per input, in order.
    pub fn finalize(
        self,
        response: &IssueResponse,
        public_key: &[u8; 32],
    ) -> Result<Vec<Token>, PostageError> {
        if response.epoch != self.epoch {
            return Err(PostageError::WrongEpoch { expected: self.epoch, got: response.epoch });
        }
        if response.evaluated.len() != self.clients.len() {
            return Err(PostageError::CountMismatch {
                expected: self.clients.len(),
                got: response.evaluated.len(),
            });
        }
        let key = Suite::deserialize_elem(public_key).map_err(|_| PostageError::InvalidPublicKey)?;
        let evaluated = response.decode_elements()?;
        let proof = Proof::<Suite>::deserialize(&response.proof).map_err(|_| PostageError::BadProof)?;
        let outputs = VoprfClient::batch_finalize(&self.inputs, &self.clients, &evaluated, &proof, key)
            .map_err(|_| PostageError::BadProof)?;
        let mut tokens = Vec::with_capacity(self.inputs.len());
        for (input, output) in self.inputs.iter().zip(outputs) {
            // Unblinding fails only for an input outside 1..=65535 bytes; ours are 32.
            let output = output.map_err(|_| PostageError::BadProof)?;
            tokens.push(Token { epoch: self.epoch, input: *input, output: to_array(&output) });
        }
        Ok(tokens)
    }
}

impl Drop for BlindState {
    fn drop(&mut self) {
        // The clients (blinding scalars) zeroize themselves.
        for input in &mut self.inputs {
            input.zeroize();
        }
    }
}

impl fmt::Debug for BlindState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindState").field("epoch", &self.epoch).field("count", &self.inputs.len()).finish()
    }
}

/// A finalized postage token: an input and its PRF output under the epoch's key. The output
/// is a secret (whoever holds it can spend the token); it is zeroized on drop and not shown
/// by `Debug`. JSON (for the client's database): `{"epoch", "input": hex, "output": hex}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The epoch whose key evaluated it.
    pub epoch: u64,
    /// The random input the client chose.
    #[serde(with = "hex_fixed")]
    pub input: [u8; INPUT_LEN],
    /// The PRF output (RFC 9497 Finalize).
    #[serde(with = "hex_fixed")]
    pub output: [u8; OUTPUT_LEN],
}

impl Token {
    /// Binds the token to one drop: the stamp's MAC covers the tag and `SHA-256(envelope)`.
    pub fn stamp(&self, tag: &Tag, envelope: &[u8]) -> Stamp {
        self.stamp_for_hash(tag, &drop_hash(envelope))
    }

    /// [`Token::stamp`] from an already computed [`drop_hash`].
    pub fn stamp_for_hash(&self, tag: &Tag, drop_hash: &[u8; 32]) -> Stamp {
        Stamp { epoch: self.epoch, input: self.input, mac: stamp_mac(&self.output, tag, drop_hash) }
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("token JSON serializes")
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self, PostageError> {
        serde_json::from_str(text).map_err(|e| PostageError::Json(e.to_string()))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.output.zeroize();
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("epoch", &self.epoch)
            .field("input", &hex::encode(self.input))
            .finish_non_exhaustive()
    }
}

/// Postage on one drop: the token's epoch and input, and a MAC keyed by the token's PRF
/// output over the drop. Bytes: `u8 version = 1 || u64 epoch || [32] input || [32] mac`;
/// JSON `{"epoch", "input": hex, "mac": hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// The epoch of the key that issued the token.
    pub epoch: u64,
    /// The token's input.
    #[serde(with = "hex_fixed")]
    pub input: [u8; INPUT_LEN],
    /// `HMAC-SHA256(output, "pigeonhole/v1/postage-stamp" || tag || SHA-256(envelope))`.
    #[serde(with = "hex_fixed")]
    pub mac: [u8; MAC_LEN],
}

impl Stamp {
    /// The key under which the relay records the token spent:
    /// `H_postage-spent(u64 epoch || input)`. It names the token, not the drop, so the same
    /// token on a second drop is refused.
    pub fn spent_id(&self) -> [u8; 32] {
        tagged_hash(tags::POSTAGE_SPENT, &[&self.epoch.to_be_bytes(), &self.input])
    }

    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(STAMP_LEN);
        w.u8(STAMP_VERSION).u64(self.epoch).raw(&self.input).raw(&self.mac);
        w.finish()
    }

    /// Decodes canonical bytes (does not check the MAC; see [`PostageKey::check_stamp`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PostageError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("stamp version")?;
        if version != STAMP_VERSION {
            return Err(DecodeError::UnknownVersion(version).into());
        }
        let stamp = Self { epoch: r.u64("epoch")?, input: r.array("input")?, mac: r.array("mac")? };
        r.finish()?;
        Ok(stamp)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stamp JSON serializes")
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Self, PostageError> {
        serde_json::from_str(text).map_err(|e| PostageError::Json(e.to_string()))
    }
}

/// A client's request for tokens: blinded elements for one epoch. Bytes:
/// `u64 epoch || u8 count (1..=64) || [32] element…`; JSON `{"epoch", "blinded": [hex…]}`.
/// Every element must decode as a ristretto255 point other than the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The epoch whose key should evaluate the elements.
    pub epoch: u64,
    /// The blinded elements (compressed ristretto255 points).
    #[serde(with = "hex_list")]
    pub blinded: Vec<[u8; ELEMENT_LEN]>,
}

impl IssueRequest {
    /// Checks the count and that every element is a valid point.
    pub fn validate(&self) -> Result<(), PostageError> {
        self.decode_elements().map(|_| ())
    }

    fn decode_elements(&self) -> Result<Vec<BlindedElement<Suite>>, PostageError> {
        check_count(self.blinded.len())?;
        self.blinded
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                BlindedElement::deserialize(bytes).map_err(|_| PostageError::InvalidElement { index })
            })
            .collect()
    }

    /// Canonical bytes (also the body of a signed `postage` request).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(9 + ELEMENT_LEN * self.blinded.len());
        self.encode_to(&mut w);
        w.finish()
    }

    pub(crate) fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch).u8(self.blinded.len() as u8);
        for element in &self.blinded {
            w.raw(element);
        }
    }

    /// Decodes and validates canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PostageError> {
        let mut r = Reader::new(bytes);
        let request = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(request)
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, PostageError> {
        let epoch = r.u64("epoch")?;
        let count = usize::from(r.u8("blinded count")?);
        check_count(count)?;
        let mut blinded = Vec::with_capacity(count);
        for _ in 0..count {
            blinded.push(r.array("blinded element")?);
        }
        let request = Self { epoch, blinded };
        request.validate()?;
        Ok(request)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("issue request JSON serializes")
    }

    /// Parses and validates the JSON form (the body of an anonymous issuance).
    pub fn from_json(text: &str) -> Result<Self, PostageError> {
        let request: Self = serde_json::from_str(text).map_err(|e| PostageError::Json(e.to_string()))?;
        request.validate()?;
        Ok(request)
    }
}

/// The relay's answer: the evaluated elements in request order and one batched DLEQ proof.
/// Bytes: `u64 epoch || u8 count (1..=64) || [32] element… || [64] proof`; JSON
/// `{"epoch", "evaluated": [hex…], "proof": hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueResponse {
    /// The epoch whose key evaluated the elements.
    pub epoch: u64,
    /// The evaluated elements (compressed ristretto255 points).
    #[serde(with = "hex_list")]
    pub evaluated: Vec<[u8; ELEMENT_LEN]>,
    /// The batched DLEQ proof `(c, s)`: two canonical ristretto255 scalars.
    #[serde(with = "hex_fixed")]
    pub proof: [u8; PROOF_LEN],
}

impl IssueResponse {
    /// Checks the count, that every element is a valid point and that the proof is two
    /// canonical scalars (it does not verify the proof: [`BlindState::finalize`] does).
    pub fn validate(&self) -> Result<(), PostageError> {
        self.decode_elements()?;
        Proof::<Suite>::deserialize(&self.proof).map(|_| ()).map_err(|_| PostageError::BadProof)
    }

    fn decode_elements(&self) -> Result<Vec<EvaluationElement<Suite>>, PostageError> {
        check_count(self.evaluated.len())?;
        self.evaluated
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                EvaluationElement::deserialize(bytes).map_err(|_| PostageError::InvalidElement { index })
            })
            .collect()
    }

    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(9 + ELEMENT_LEN * self.evaluated.len() + PROOF_LEN);
        w.u64(self.epoch).u8(self.evaluated.len() as u8);
        for element in &self.evaluated {
            w.raw(element);
        }
        w.raw(&self.proof);
        w.finish()
    }

    /// Decodes and validates canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PostageError> {
        let mut r = Reader::new(bytes);
        let epoch = r.u64("epoch")?;
        let count = usize::from(r.u8("evaluated count")?);
        check_count(count)?;
        let mut evaluated = Vec::with_capacity(count);
        for _ in 0..count {
            evaluated.push(r.array("evaluated element")?);
        }
        let proof = r.array("proof")?;
        r.finish()?;
        let response = Self { epoch, evaluated, proof };
        response.validate()?;
        Ok(response)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("issue response JSON serializes")
    }

    /// Parses and validates the JSON form.
    pub fn from_json(text: &str) -> Result<Self, PostageError> {
        let response: Self = serde_json::from_str(text).map_err(|e| PostageError::Json(e.to_string()))?;
        response.validate()?;
        Ok(response)
    }
}

fn check_count(count: usize) -> Result<(), PostageError> {
    if (1..=MAX_ISSUE).contains(&count) { Ok(()) } else { Err(PostageError::Count { count }) }
}

/// Serde adapter: a fixed-size byte array as lower-case hex (either case accepted).
pub(crate) mod hex_fixed {
    pub(crate) fn serialize<S: serde::Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::to_hex(bytes))
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        crate::deserialize_str(deserializer, |text| {
            let mut out = [0u8; N];
            hex::decode_to_slice(text.as_bytes(), &mut out).map(|()| out)
        })
    }
}

/// Serde adapter: a list of 32-byte values as hex strings.
mod hex_list {
    pub(super) fn serialize<S: serde::Serializer>(
        values: &[[u8; 32]],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|v| crate::to_hex(v)))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = <Vec<std::borrow::Cow<'de, str>> as serde::Deserialize>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text.as_bytes(), &mut out)
                    .map(|()| out)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const EPOCH: u64 = 20_000;

    fn relay() -> SecretKey {
        SecretKey::from_bytes(&[9; 32]).expect("valid scalar")
    }

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    /// Blind, evaluate, finalize: `count` tokens of `EPOCH` from `relay()`.
    fn issue(count: usize, seed: u8) -> (PostageKey, IssueRequest, IssueResponse, Vec<Token>) {
        let key = PostageKey::derive(&relay(), EPOCH);
        let mut rng = rng(seed);
        let (request, state) = blind(count, EPOCH, &mut rng);
        let response = key.evaluate(&request, &mut rng).expect("evaluates");
        let tokens = state.finalize(&response, &key.public_key()).expect("finalizes");
        (key, request, response, tokens)
    }

    #[test]
    fn sizes_match_the_ciphersuite() {
        let (key, request, response, tokens) = issue(3, 1);
        assert_eq!(Suite::serialize_elem(Suite::base_elem()).len(), ELEMENT_LEN);
        assert_eq!(
            Proof::<Suite>::deserialize(&response.proof).expect("canonical").serialize().len(),
            PROOF_LEN
        );
        assert_eq!(key.server.evaluate(&tokens[0].input).expect("evaluates").len(), OUTPUT_LEN);
        assert_eq!(request.to_bytes().len(), 9 + 3 * 32);
        assert_eq!(response.to_bytes().len(), 9 + 3 * 32 + 64);
        assert_eq!(tokens[0].stamp(&Tag([1; 20]), b"x").to_bytes().len(), STAMP_LEN);
    }

    #[test]
    fn round_trip_and_stamps_bind_the_drop() {
        let (key, request, response, tokens) = issue(5, 2);
        assert_eq!(tokens.len(), 5);
        assert_eq!(IssueRequest::from_bytes(&request.to_bytes()).as_ref(), Ok(&request));
        assert_eq!(IssueRequest::from_json(&request.to_json()).as_ref(), Ok(&request));
        assert_eq!(IssueResponse::from_bytes(&response.to_bytes()).as_ref(), Ok(&response));
        assert_eq!(IssueResponse::from_json(&response.to_json()).as_ref(), Ok(&response));
        let tag = Tag([0xab; 20]);
        for token in &tokens {
            assert_eq!(Token::from_json(&token.to_json()).as_ref(), Ok(token));
            let stamp = token.stamp(&tag, b"envelope");
            assert_eq!(key.check_stamp(&stamp, &tag, b"envelope"), Ok(()));
            assert_eq!(Stamp::from_bytes(&stamp.to_bytes()).as_ref(), Ok(&stamp));
            assert_eq!(Stamp::from_json(&stamp.to_json()).as_ref(), Ok(&stamp));
            assert_eq!(key.check_stamp(&stamp, &Tag([0xac; 20]), b"envelope"), Err(PostageError::BadStamp));
            assert_eq!(key.check_stamp(&stamp, &tag, b"envelopf"), Err(PostageError::BadStamp));
            let next = PostageKey::derive(&relay(), EPOCH + 1);
            assert_eq!(
                next.check_stamp(&stamp, &tag, b"envelope"),
                Err(PostageError::WrongEpoch { expected: EPOCH + 1, got: EPOCH })
            );
            // The same epoch number under another relay's key.
            let other = PostageKey::derive(&SecretKey::from_bytes(&[8; 32]).expect("valid"), EPOCH);
            assert_eq!(other.check_stamp(&stamp, &tag, b"envelope"), Err(PostageError::BadStamp));
            // A stamp moved into another epoch (its spent id changes, the MAC does not help).
            let mut moved = stamp.clone();
            moved.epoch += 1;
            assert_eq!(next.check_stamp(&moved, &tag, b"envelope"), Err(PostageError::BadStamp));
        }
        let ids: std::collections::HashSet<_> =
            tokens.iter().map(|t| t.stamp(&tag, b"envelope").spent_id()).collect();
        assert_eq!(ids.len(), 5);
        // The spent id names the token, not the drop.
        assert_eq!(tokens[0].stamp(&tag, b"a").spent_id(), tokens[0].stamp(&Tag([0; 20]), b"b").spent_id());
    }

    #[test]
    fn keys_are_deterministic_per_relay_and_epoch() {
        let a = PostageKey::derive(&relay(), 7).public_key();
        assert_eq!(a, PostageKey::derive(&relay(), 7).public_key());
        assert_ne!(a, PostageKey::derive(&relay(), 8).public_key());
        assert_ne!(a, PostageKey::derive(&SecretKey::from_bytes(&[8; 32]).expect("valid"), 7).public_key());
        assert_eq!(check_public_key(&a), Ok(()));
        assert_eq!(check_public_key(&[0; 32]), Err(PostageError::InvalidPublicKey));
        assert!(!format!("{:?}", PostageKey::derive(&relay(), 7)).contains("sk"));
    }

    #[test]
    fn finalize_refuses_other_keys_and_tampering() {
        let key = PostageKey::derive(&relay(), EPOCH);
        let other = PostageKey::derive(&relay(), EPOCH + 1);
        let mut r = rng(3);
        let (request, state) = blind(4, EPOCH, &mut r);
        let response = key.evaluate(&request, &mut r).expect("evaluates");
        // Verified against the wrong epoch's key: the relay cannot use a per-account key.
        let (_, state2) = blind(4, EPOCH, &mut rng(3));
        assert_eq!(state2.finalize(&response, &other.public_key()).err(), Some(PostageError::BadProof));
        let mut bad = response.clone();
        bad.proof[0] ^= 1;
        let (_, state3) = blind(4, EPOCH, &mut rng(3));
        assert!(state3.finalize(&bad, &key.public_key()).is_err());
        let mut short = response.clone();
        short.evaluated.pop();
        let (_, state4) = blind(4, EPOCH, &mut rng(3));
        assert_eq!(
            state4.finalize(&short, &key.public_key()).err(),
            Some(PostageError::CountMismatch { expected: 4, got: 3 })
        );
        // A response evaluated under another key for the same epoch number.
        let rogue = PostageKey::derive(&SecretKey::from_bytes(&[7; 32]).expect("valid"), EPOCH);
        let rogue_response = rogue.evaluate(&request, &mut r).expect("evaluates");
        let (_, state5) = blind(4, EPOCH, &mut rng(3));
        assert_eq!(state5.finalize(&rogue_response, &key.public_key()).err(), Some(PostageError::BadProof));
        assert_eq!(state.finalize(&response, &key.public_key()).map(|t| t.len()), Ok(4));
        assert_eq!(
            other.evaluate(&request, &mut r).err(),
            Some(PostageError::WrongEpoch { expected: EPOCH + 1, got: EPOCH })
        );
    }

    #[test]
    fn counts_and_points_are_checked() {
        let key = PostageKey::derive(&relay(), EPOCH);
        let (request, _) = blind(2, EPOCH, &mut rng(4));
        let empty = IssueRequest { epoch: EPOCH, blinded: vec![] };
        assert_eq!(key.evaluate(&empty, &mut rng(4)).err(), Some(PostageError::Count { count: 0 }));
        let many = IssueRequest { epoch: EPOCH, blinded: vec![request.blinded[0]; 65] };
        assert_eq!(IssueRequest::from_bytes(&many.to_bytes()).err(), Some(PostageError::Count { count: 65 }));
        let mut bad = request.clone();
        bad.blinded[1] = [0xff; 32];
        assert_eq!(
            IssueRequest::from_bytes(&bad.to_bytes()).err(),
            Some(PostageError::InvalidElement { index: 1 })
        );
        assert_eq!(
            IssueRequest::from_json(&bad.to_json()).err(),
            Some(PostageError::InvalidElement { index: 1 })
        );
        // The identity encodes as 32 zero bytes and is refused.
        bad.blinded[1] = [0; 32];
        assert_eq!(bad.validate(), Err(PostageError::InvalidElement { index: 1 }));
        assert!(IssueRequest::from_json(r#"{"epoch":1,"blinded":[],"x":1}"#).is_err());
        assert_eq!(blind(0, EPOCH, &mut rng(4)).0.blinded.len(), 1);
        assert_eq!(blind(1000, EPOCH, &mut rng(4)).0.blinded.len(), MAX_ISSUE);
        let (full, _) = blind(MAX_ISSUE, EPOCH, &mut rng(4));
        assert_eq!(key.evaluate(&full, &mut rng(4)).map(|r| r.evaluated.len()), Ok(MAX_ISSUE));
    }

    #[test]
    fn epochs() {
        assert_eq!(epoch_of(86_399, 86_400), 0);
        assert_eq!(epoch_of(86_400, 86_400), 1);
        assert_eq!(epoch_of(5, 0), 5);
        assert_eq!(epoch_start(2, 3600), 7200);
        assert_eq!(epoch_end(2, 3600), 10_800);
        assert_eq!(epoch_end(u64::MAX, 3600), u64::MAX);
        assert!(is_redeemable(2, 7200, 3600, 0));
        assert!(!is_redeemable(2, 10_800, 3600, 0));
        assert!(is_redeemable(2, 10_800 + 599, 3600, 600));
        assert!(!is_redeemable(2, 10_800 + 600, 3600, 600));
        assert!(is_redeemable(2, 7200 - 600, 3600, 600));
        assert!(!is_redeemable(2, 7200 - 601, 3600, 600));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let (_, _, _, tokens) = issue(1, 5);
        let shown = format!("{:?}", tokens[0]);
        assert!(!shown.contains(&hex::encode(tokens[0].output)));
        let (_, state) = blind(2, EPOCH, &mut rng(5));
        assert_eq!(format!("{state:?}"), "BlindState { epoch: 20000, count: 2 }");
    }

    /// Every 32-byte window of `haystack`.
    fn windows(bytes: &[u8]) -> std::collections::HashSet<&[u8]> {
        bytes.windows(32).collect()
    }

    #[test]
    fn issuance_and_redemption_share_nothing_but_the_epoch() {
        let (_, request, response, tokens) = issue(8, 6);
        let tag = Tag([0x42; 20]);
        let issued = [request.to_bytes(), response.to_bytes()].concat();
        for token in &tokens {
            let stamp = token.stamp(&tag, b"some envelope").to_bytes();
            let stamp_windows = windows(&stamp);
            assert!(windows(&issued).is_disjoint(&stamp_windows));
            // Nor any 8-byte window beyond the epoch number itself.
            let epoch = EPOCH.to_be_bytes();
            for window in stamp.windows(8).filter(|w| *w != epoch) {
                assert!(!issued.windows(8).any(|w| w == window), "shared 8 bytes {}", hex::encode(window));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_flipped_stamp_bit_fails(bit in 0usize..(STAMP_LEN * 8), seed: u8) {
            let (key, _, _, tokens) = issue(1, seed);
            let tag = Tag([seed; 20]);
            let bytes = tokens[0].stamp(&tag, b"env").to_bytes();
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let ok = Stamp::from_bytes(&bad).map(|s| key.check_stamp(&s, &tag, b"env").is_ok()).unwrap_or(false);
            prop_assert!(!ok);
        }

        #[test]
        fn any_flipped_request_bit_fails(bit in 0usize..((9 + 2 * 32) * 8), seed: u8) {
            let key = PostageKey::derive(&relay(), EPOCH);
            let mut r = rng(seed);
            let (request, state) = blind(2, EPOCH, &mut r);
            let mut bad = request.to_bytes();
            bad[bit / 8] ^= 1 << (bit % 8);
            let ok = IssueRequest::from_bytes(&bad)
                .and_then(|req| key.evaluate(&req, &mut r))
                .and_then(|resp| state.finalize(&resp, &key.public_key()))
                .is_ok();
            prop_assert!(!ok);
        }

        #[test]
        fn any_flipped_response_bit_fails(bit in 0usize..((9 + 2 * 32 + 64) * 8), seed: u8) {
            let key = PostageKey::derive(&relay(), EPOCH);
            let mut r = rng(seed);
            let (request, state) = blind(2, EPOCH, &mut r);
            let mut bad = key.evaluate(&request, &mut r).expect("evaluates").to_bytes();
            bad[bit / 8] ^= 1 << (bit % 8);
            let ok = IssueResponse::from_bytes(&bad)
                .and_then(|resp| state.finalize(&resp, &key.public_key()))
                .is_ok();
            prop_assert!(!ok);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Stamp::from_bytes(&bytes);
            let _ = IssueRequest::from_bytes(&bytes);
            let _ = IssueResponse::from_bytes(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            let _ = Stamp::from_json(&text);
            let _ = IssueRequest::from_json(&text);
            let _ = IssueResponse::from_json(&text);
            let _ = Token::from_json(&text);
        }
    }
}
