//! Requests (the seed's `{msg: {type, from, to, timestamp, request, sig}}`): their canonical
//! bytes, BIP-340 signatures over a tagged hash of those bytes, and the JSON form that maps
//! one-to-one onto them.
//!
//! `from` is the signer. For `write`, `to` is the record's receiver (the signed write *is* the
//! stored record). For every other request, `to` is the relay's key, so a request signed for
//! one relay cannot be replayed to another.
//!
//! A `postage` request (type 9) asks the relay to evaluate blinded postage elements for the
//! signer's account ([`crate::postage`]); its body is the [`IssueRequest`] bytes.

use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hash::{tagged_hash, tags};
use crate::keys::{PublicKey, SecretKey, Signature, SignatureError};
use crate::payload::{read_public_key, read_record_id, validate_record_id};
use crate::postage::IssueRequest;
use crate::seal::MAX_ENVELOPE_LEN;
use crate::tag::Tag;
use crate::wire::{DecodeError, Reader, Writer};

/// Version byte of the request format.
pub const REQUEST_VERSION: u8 = 1;
/// Largest `content` of a write: one sealed envelope.
pub const MAX_CONTENT_LEN: usize = MAX_ENVELOPE_LEN;
/// Longest invite code, in bytes.
pub const MAX_INVITE_LEN: usize = 128;

/// Store a record in the signer's outbox to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Write {
    /// The record's id, unique within the outbox to this receiver.
    pub record_id: String,
    /// Seconds the relay should keep it (the relay may cap it).
    pub ttl: u32,
    /// An optional 160-bit tag, indexed by the relay.
    pub tag: Option<Tag>,
    /// The sealed envelope (base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

/// Fetch one record at `/owner/outbox/receiver/recordId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Read {
    /// The outbox owner (the record's sender).
    pub owner: PublicKey,
    /// The receiver the outbox is addressed to.
    pub receiver: PublicKey,
    /// The record id.
    pub record_id: String,
}

/// List record ids in `/owner/outbox/receiver/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inventory {
    /// The outbox owner.
    pub owner: PublicKey,
    /// The receiver.
    pub receiver: PublicKey,
    /// Only records stored after this time (unix ms).
    pub after_ts: Option<u64>,
    /// Only records stored before this time (unix ms).
    pub before_ts: Option<u64>,
    /// Only records with a sequence number greater than this.
    pub after_seq: Option<u64>,
    /// At most this many ids (the relay may return fewer).
    pub limit: u32,
}

/// Subscribe to new records in `/owner/outbox/receiver/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listen {
    /// The outbox owner.
    pub owner: PublicKey,
    /// The receiver.
    pub receiver: PublicKey,
    /// Start after this time (unix ms).
    pub after_ts: Option<u64>,
    /// Start after this sequence number (takes precedence over `after_ts`).
    pub after_seq: Option<u64>,
}

/// Remove a record from the signer's own outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delete {
    /// The receiver the outbox is addressed to.
    pub receiver: PublicKey,
    /// The record id.
    pub record_id: String,
}

/// Ask for the relay's signed report of reads of the signer's outboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Usage {
    /// Reads after this time (unix ms).
    pub after_ts: Option<u64>,
    /// Reads before this time (unix ms).
    pub before_ts: Option<u64>,
}

/// Open an account for the signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Register {
    /// An invite code, for relays whose policy asks for one.
    pub invite: Option<String>,
}

/// Answer a relay's session challenge, proving control of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Session {
    /// The 32 random bytes the relay issued (hex in JSON).
    #[serde(with = "hex_array")]
    pub challenge: [u8; 32],
}

/// Every request kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `write`
    Write(Write),
    /// `read`
    Read(Read),
    /// `inventory`
    Inventory(Inventory),
    /// `listen`
    Listen(Listen),
    /// `delete`
    Delete(Delete),
    /// `usage` (the seed's `RequestUsage`)
    Usage(Usage),
    /// `register`
    Register(Register),
    /// `session`
    Session(Session),
    /// `postage`: blind tokens issued against the signer's account.
    Postage(IssueRequest),
}

impl Request {
    /// The wire discriminant.
    pub fn type_byte(&self) -> u8 {
        match self {
            Request::Write(_) => 1,
            Request::Read(_) => 2,
            Request::Inventory(_) => 3,
            Request::Listen(_) => 4,
            Request::Delete(_) => 5,
            Request::Usage(_) => 6,
            Request::Register(_) => 7,
            Request::Session(_) => 8,
            Request::Postage(_) => 9,
        }
    }

    /// The JSON `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Write(_) => "write",
            Request::Read(_) => "read",
            Request::Inventory(_) => "inventory",
            Request::Listen(_) => "listen",
            Request::Delete(_) => "delete",
            Request::Usage(_) => "usage",
            Request::Register(_) => "register",
            Request::Session(_) => "session",
            Request::Postage(_) => "postage",
        }
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let record_id = |id: &str| {
            validate_record_id(id).map_err(|_| DecodeError::InvalidValue {
                field: "record id",
                reason: "breaks the record id rules",
            })
        };
        match self {
            Request::Write(w) => {
                record_id(&w.record_id)?;
                if w.content.len() > MAX_CONTENT_LEN {
                    return Err(DecodeError::TooLong {
                        field: "content",
                        len: w.content.len(),
                        max: MAX_CONTENT_LEN,
                    });
                }
                Ok(())
            }
            Request::Read(r) => record_id(&r.record_id),
            Request::Delete(d) => record_id(&d.record_id),
            Request::Register(Register { invite: Some(code) }) if code.len() > MAX_INVITE_LEN => {
                Err(DecodeError::TooLong { field: "invite", len: code.len(), max: MAX_INVITE_LEN })
            }
            Request::Postage(issue) => issue.validate().map_err(|e| e.into_decode_error()),
            _ => Ok(()),
        }
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            Request::Write(x) => {
                w.var8(x.record_id.as_bytes()).u32(x.ttl);
                match &x.tag {
                    Some(tag) => w.flag(true).raw(&tag.0),
                    None => w.flag(false),
                };
                w.var32(&x.content);
            }
            Request::Read(x) => {
                w.raw(&x.owner.to_bytes()).raw(&x.receiver.to_bytes()).var8(x.record_id.as_bytes());
            }
            Request::Inventory(x) => {
                w.raw(&x.owner.to_bytes()).raw(&x.receiver.to_bytes());
                w.opt_u64(x.after_ts).opt_u64(x.before_ts).opt_u64(x.after_seq).u32(x.limit);
            }
            Request::Listen(x) => {
                w.raw(&x.owner.to_bytes()).raw(&x.receiver.to_bytes());
                w.opt_u64(x.after_ts).opt_u64(x.after_seq);
            }
            Request::Delete(x) => {
                w.raw(&x.receiver.to_bytes()).var8(x.record_id.as_bytes());
            }
            Request::Usage(x) => {
                w.opt_u64(x.after_ts).opt_u64(x.before_ts);
            }
            Request::Register(x) => {
                match &x.invite {
                    Some(code) => w.flag(true).var8(code.as_bytes()),
                    None => w.flag(false),
                };
            }
            Request::Session(x) => {
                w.raw(&x.challenge);
            }
            Request::Postage(x) => x.encode_to(w),
        }
    }

    fn decode_body(type_byte: u8, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match type_byte {
            1 => {
                let record_id = read_record_id(r)?;
                let ttl = r.u32("ttl")?;
                let tag = if r.flag("tag")? { Some(Tag(r.array("tag")?)) } else { None };
                let content = r.var32(MAX_CONTENT_LEN, "content")?.to_vec();
                Request::Write(Write { record_id, ttl, tag, content })
            }
            2 => Request::Read(Read {
                owner: read_public_key(r, "owner")?,
                receiver: read_public_key(r, "receiver")?,
                record_id: read_record_id(r)?,
            }),
            3 => Request::Inventory(Inventory {
                owner: read_public_key(r, "owner")?,
                receiver: read_public_key(r, "receiver")?,
                after_ts: r.opt_u64("afterTs")?,
                before_ts: r.opt_u64("beforeTs")?,
                after_seq: r.opt_u64("afterSeq")?,
                limit: r.u32("limit")?,
            }),
            4 => Request::Listen(Listen {
                owner: read_public_key(r, "owner")?,
                receiver: read_public_key(r, "receiver")?,
                after_ts: r.opt_u64("afterTs")?,
                after_seq: r.opt_u64("afterSeq")?,
            }),
            5 => Request::Delete(Delete {
                receiver: read_public_key(r, "receiver")?,
                record_id: read_record_id(r)?,
            }),
            6 => Request::Usage(Usage { after_ts: r.opt_u64("afterTs")?, before_ts: r.opt_u64("beforeTs")? }),
            7 => {
                let invite =
                    if r.flag("invite")? { Some(r.str8(MAX_INVITE_LEN, "invite")?.to_owned()) } else { None };
                Request::Register(Register { invite })
            }
            8 => Request::Session(Session { challenge: r.array("challenge")? }),
            9 => Request::Postage(IssueRequest::decode_from(r).map_err(|e| e.into_decode_error())?),
            value => return Err(DecodeError::UnknownType { field: "request type", value: u64::from(value) }),
        })
    }
}

/// An unsigned request: what a signature covers, and what travels inside an authenticated
/// session (where the session, not a per-request signature, binds `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The signer.
    pub from: PublicKey,
    /// The receiver for `write`; the relay for every other request.
    pub to: PublicKey,
    /// When the signer made the request (unix milliseconds).
    pub timestamp: u64,
    /// What is asked.
    pub request: Request,
}

/// A request with its signature, verified when it was decoded or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMessage {
    message: Message,
    sig: Signature,
}

/// Why a request was refused at decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The bytes are malformed.
    #[error("malformed request: {0}")]
    Decode(#[from] DecodeError),
    /// The JSON is malformed, has unknown fields or wrong types.
    #[error("malformed request JSON: {0}")]
    Json(String),
    /// The signature does not verify for `from` over exactly these bytes.
    #[error("the signature does not verify for `from` over this request")]
    BadSignature,
}

impl From<SignatureError> for RequestError {
    fn from(_: SignatureError) -> Self {
        RequestError::BadSignature
    }
}

impl Message {
    /// Checks the request's limits (record ids, sizes).
    pub fn validate(&self) -> Result<(), DecodeError> {
        self.request.validate()
    }

    /// The canonical bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(
            128 + if let Request::Write(x) = &self.request { x.content.len() } else { 0 },
        );
        w.u8(REQUEST_VERSION)
            .u8(self.request.type_byte())
            .raw(&self.from.to_bytes())
            .raw(&self.to.to_bytes())
            .u64(self.timestamp);
        self.request.encode_body(&mut w);
        w.finish()
    }

    /// The tagged hash a signature covers; also the request's identity for replay caches.
    pub fn signing_hash(&self) -> [u8; 32] {
        tagged_hash(tags::REQUEST, &[&self.signing_bytes()])
    }

    /// The identity of a stored record: the hash of its unsigned bytes under the record tag,
    /// which write receipts commit to.
    pub fn record_hash(&self) -> [u8; 32] {
        tagged_hash(tags::RECORD, &[&self.signing_bytes()])
    }

    /// Decodes unsigned canonical bytes (session frames).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let message = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(message)
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("version")?;
        if version != REQUEST_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let type_byte = r.u8("request type")?;
        if !(1..=9).contains(&type_byte) {
            return Err(DecodeError::UnknownType { field: "request type", value: u64::from(type_byte) });
        }
        let from = read_public_key(r, "from")?;
        let to = read_public_key(r, "to")?;
        let timestamp = r.u64("timestamp")?;
        let request = Request::decode_body(type_byte, r)?;
        let message = Message { from, to, timestamp, request };
        message.validate()?;
        Ok(message)
    }

    /// Signs with explicit BIP-340 auxiliary bytes. The key must be `from`'s.
    pub fn sign_with_aux(self, key: &SecretKey, aux: &[u8; 32]) -> Result<SignedMessage, RequestError> {
        if key.public_key() != self.from {
            return Err(RequestError::BadSignature);
        }
        self.validate()?;
        let sig = key.sign_with_aux(&self.signing_hash(), aux);
        Ok(SignedMessage { message: self, sig })
    }

    /// Signs with randomness from `rng`.
    pub fn sign<R: rand_core::RngCore + rand_core::CryptoRng>(
        self,
        key: &SecretKey,
        rng: &mut R,
    ) -> Result<SignedMessage, RequestError> {
        let mut aux = [0u8; 32];
        rng.fill_bytes(&mut aux);
        self.sign_with_aux(key, &aux)
    }

    /// Whether the timestamp is within `max_skew_ms` of `now_ms` either way.
    pub fn is_fresh(&self, now_ms: u64, max_skew_ms: u64) -> bool {
        self.timestamp.abs_diff(now_ms) <= max_skew_ms
    }

    /// The unsigned JSON form `{"msg": {...}}` (no `sig`), used inside sessions.
    pub fn to_json(&self) -> String {
        json_string(self, None)
    }

    /// Parses the unsigned JSON form.
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let (message, sig) = parse_json(text)?;
        unsigned(message, sig)
    }

    /// Parses the object that the unsigned JSON form wraps as `{"msg": ...}`, alone: what a
    /// session frame carries beside its id. Accepts exactly what [`Message::from_json`] accepts
    /// inside the wrapper.
    pub fn from_json_msg(msg: &str) -> Result<Self, RequestError> {
        let msg: JsonMsgIn<'_> = serde_json::from_str(msg).map_err(|e| RequestError::Json(e.to_string()))?;
        let (message, sig) = parse_msg(msg)?;
        unsigned(message, sig)
    }
}

impl SignedMessage {
    /// The request.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the request out.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.sig
    }

    /// Canonical bytes: the signed bytes followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.message.signing_bytes();
        bytes.extend_from_slice(&self.sig.to_bytes());
        bytes
    }

    /// Decodes canonical bytes and verifies the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RequestError> {
        let mut r = Reader::new(bytes);
        let message = Message::decode_from(&mut r)?;
        let signed_len = r.consumed().len();
        let sig = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        let digest = tagged_hash(tags::REQUEST, &[&bytes[..signed_len]]);
        message.from.verify(&digest, &sig)?;
        Ok(Self { message, sig })
    }

    /// Decodes canonical bytes **without** checking the signature. Only for bytes this process
    /// verified before and kept in storage it controls (a relay serving its own records); any
    /// bytes from outside go through [`SignedMessage::from_bytes`].
    pub fn from_trusted_bytes(bytes: &[u8]) -> Result<Self, RequestError> {
        let mut r = Reader::new(bytes);
        let message = Message::decode_from(&mut r)?;
        let sig = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        Ok(Self { message, sig })
    }

    /// The JSON form `{"msg": {"v", "type", "from", "to", "timestamp", "request", "sig"}}`.
    pub fn to_json(&self) -> String {
        json_string(&self.message, Some(&self.sig))
    }

    /// Parses the JSON form and verifies the signature over the canonical bytes it maps to.
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let (message, sig) = parse_json(text)?;
        let sig = sig.ok_or_else(|| RequestError::Json("missing field `sig`".into()))?;
        message.from.verify(&message.signing_hash(), &sig)?;
        Ok(Self { message, sig })
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    msg: JsonMsgOut<'a>,
}

#[derive(Serialize)]
struct JsonMsgOut<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    from: PublicKey,
    to: PublicKey,
    timestamp: u64,
    request: JsonRequestOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<&'a Signature>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonRequestOut<'a> {
    Write(&'a Write),
    Read(&'a Read),
    Inventory(&'a Inventory),
    Listen(&'a Listen),
    Delete(&'a Delete),
    Usage(&'a Usage),
    Register(&'a Register),
    Session(&'a Session),
    Postage(&'a IssueRequest),
}

fn json_out<'a>(message: &'a Message, sig: Option<&'a Signature>) -> JsonOut<'a> {
    let request = match &message.request {
        Request::Write(x) => JsonRequestOut::Write(x),
        Request::Read(x) => JsonRequestOut::Read(x),
        Request::Inventory(x) => JsonRequestOut::Inventory(x),
        Request::Listen(x) => JsonRequestOut::Listen(x),
        Request::Delete(x) => JsonRequestOut::Delete(x),
        Request::Usage(x) => JsonRequestOut::Usage(x),
        Request::Register(x) => JsonRequestOut::Register(x),
        Request::Session(x) => JsonRequestOut::Session(x),
        Request::Postage(x) => JsonRequestOut::Postage(x),
    };
    JsonOut {
        msg: JsonMsgOut {
            v: REQUEST_VERSION,
            kind: message.request.type_name(),
            from: message.from,
            to: message.to,
            timestamp: message.timestamp,
            request,
            sig,
        },
    }
}

fn json_string(message: &Message, sig: Option<&Signature>) -> String {
    // Plain strings, numbers and options serialize without error.
    serde_json::to_string(&json_out(message, sig)).expect("request JSON serializes")
}

/// A request's JSON form (`{"msg": {...}}`, with `sig` when `sig` is given) as a value that
/// serializes in place inside a larger document, byte for byte what
/// [`Message::to_json`] / [`SignedMessage::to_json`] produce, without building that string
/// first.
#[derive(Debug, Clone, Copy)]
pub struct MessageJson<'a> {
    message: &'a Message,
    sig: Option<&'a Signature>,
}

impl Serialize for MessageJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json_out(self.message, self.sig).serialize(serializer)
    }
}

impl Message {
    /// The JSON form to serialize in place; `sig` is the request's signature, if it has one
    /// (it is not checked here).
    pub fn json<'a>(&'a self, sig: Option<&'a Signature>) -> MessageJson<'a> {
        MessageJson { message: self, sig }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonIn<'a> {
    #[serde(borrow)]
    msg: JsonMsgIn<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMsgIn<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: String,
    from: PublicKey,
    to: PublicKey,
    timestamp: u64,
    #[serde(borrow)]
    request: &'a RawValue,
    sig: Option<Signature>,
}

fn parse_json(text: &str) -> Result<(Message, Option<Signature>), RequestError> {
    let envelope: JsonIn<'_> = serde_json::from_str(text).map_err(|e| RequestError::Json(e.to_string()))?;
    parse_msg(envelope.msg)
}

/// A message parsed as unsigned: one with a `sig` is refused.
fn unsigned(message: Message, sig: Option<Signature>) -> Result<Message, RequestError> {
    if sig.is_some() {
        return Err(RequestError::Json("unexpected `sig` in an unsigned message".into()));
    }
    Ok(message)
}

fn parse_msg(msg: JsonMsgIn<'_>) -> Result<(Message, Option<Signature>), RequestError> {
    let json = |e: serde_json::Error| RequestError::Json(e.to_string());
    if msg.v != REQUEST_VERSION {
        return Err(DecodeError::UnknownVersion(msg.v).into());
    }
    let body = msg.request.get();
    let request = match msg.kind.as_str() {
        "write" => Request::Write(serde_json::from_str(body).map_err(json)?),
        "read" => Request::Read(serde_json::from_str(body).map_err(json)?),
        "inventory" => Request::Inventory(serde_json::from_str(body).map_err(json)?),
        "listen" => Request::Listen(serde_json::from_str(body).map_err(json)?),
        "delete" => Request::Delete(serde_json::from_str(body).map_err(json)?),
        "usage" => Request::Usage(serde_json::from_str(body).map_err(json)?),
        "register" => Request::Register(serde_json::from_str(body).map_err(json)?),
        "session" => Request::Session(serde_json::from_str(body).map_err(json)?),
        "postage" => Request::Postage(serde_json::from_str(body).map_err(json)?),
        other => return Err(RequestError::Json(format!("unknown request type `{other}`"))),
    };
    let message = Message { from: msg.from, to: msg.to, timestamp: msg.timestamp, request };
    message.validate()?;
    Ok((message, msg.sig))
}

/// Serde adapter: bytes as standard base64 with padding.
pub(crate) mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;

    pub(crate) fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        crate::deserialize_str(deserializer, |text| BASE64.decode(text.as_bytes()))
    }
}

/// Serde adapter: a 32-byte array (keys, hashes) as 64 hex characters.
pub(crate) use crate::postage::hex_fixed as hex_array;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    fn all_requests() -> Vec<Request> {
        let (a, b) = (key(1).public_key(), key(2).public_key());
        vec![
            Request::Write(Write {
                record_id: "r1".into(),
                ttl: 3600,
                tag: Some(Tag([7; 20])),
                content: vec![1, 2, 3],
            }),
            Request::Write(Write { record_id: "r2".into(), ttl: 0, tag: None, content: vec![] }),
            Request::Read(Read { owner: a, receiver: b, record_id: "r1".into() }),
            Request::Inventory(Inventory {
                owner: a,
                receiver: b,
                after_ts: Some(5),
                before_ts: None,
                after_seq: Some(9),
                limit: 100,
            }),
            Request::Listen(Listen { owner: a, receiver: b, after_ts: None, after_seq: Some(1) }),
            Request::Delete(Delete { receiver: b, record_id: "r1".into() }),
            Request::Usage(Usage { after_ts: Some(1), before_ts: Some(2) }),
            Request::Register(Register { invite: Some("code-1".into()) }),
            Request::Register(Register { invite: None }),
            Request::Session(Session { challenge: [9; 32] }),
            Request::Postage(postage_request()),
        ]
    }

    fn postage_request() -> IssueRequest {
        use rand_core::SeedableRng;
        crate::postage::blind(3, 42, &mut rand_chacha::ChaCha20Rng::from_seed([1; 32])).0
    }

    #[test]
    fn postage_requests_refuse_bad_elements_and_counts() {
        let mut issue = postage_request();
        issue.blinded[2] = [0xff; 32];
        let m = message(Request::Postage(issue.clone()));
        assert!(m.clone().sign_with_aux(&key(1), &[0; 32]).is_err());
        let good =
            message(Request::Postage(postage_request())).sign_with_aux(&key(1), &[0; 32]).expect("signs");
        let bytes = good.message().signing_bytes();
        // The last element replaced by bytes that are not a point: refused at decoding.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 32..].fill(0xff);
        assert!(matches!(Message::decode(&bad), Err(DecodeError::InvalidValue { field: "blinded", .. })));
        // Count 0 and 65.
        let header = 1 + 1 + 32 + 32 + 8 + 8;
        let mut zero = bytes[..header].to_vec();
        zero.push(0);
        assert!(matches!(Message::decode(&zero), Err(DecodeError::TooShort { .. })));
        let mut many = bytes[..header].to_vec();
        many.push(65);
        many.extend(std::iter::repeat_n(bytes[header + 1..header + 33].to_vec(), 65).flatten());
        assert!(matches!(Message::decode(&many), Err(DecodeError::TooLong { .. })));
        let json = good.message().to_json().replace(&hex::encode(issue.blinded[0]), &"ff".repeat(32));
        assert!(Message::from_json(&json).is_err());
    }

    fn message(request: Request) -> Message {
        Message { from: key(1).public_key(), to: key(3).public_key(), timestamp: 1_700_000_000_123, request }
    }

    #[test]
    fn bytes_and_json_round_trip_for_every_kind() {
        for request in all_requests() {
            let signed = message(request).sign_with_aux(&key(1), &[0; 32]).expect("signs");
            assert_eq!(SignedMessage::from_bytes(&signed.to_bytes()), Ok(signed.clone()));
            assert_eq!(SignedMessage::from_json(&signed.to_json()), Ok(signed.clone()));
            let unsigned = signed.message().clone();
            assert_eq!(Message::decode(&unsigned.signing_bytes()), Ok(unsigned.clone()));
            assert_eq!(Message::from_json(&unsigned.to_json()), Ok(unsigned));
        }
    }

    #[test]
    fn in_place_json_is_the_json_form() {
        for request in all_requests() {
            let signed = message(request).sign_with_aux(&key(1), &[0; 32]).expect("signs");
            let inner = signed.message().json(Some(signed.signature()));
            assert_eq!(serde_json::to_string(&inner).expect("serializes"), signed.to_json());
            let nested = serde_json::to_string(&[inner]).expect("serializes");
            assert_eq!(nested, format!("[{}]", signed.to_json()), "compact inside a document too");
            let unsigned = signed.message();
            assert_eq!(serde_json::to_string(&unsigned.json(None)).expect("serializes"), unsigned.to_json());
        }
    }

    #[test]
    fn the_msg_object_alone_parses_as_the_wrapped_form() {
        let inner = |json: &str| {
            let value: serde_json::Value = serde_json::from_str(json).expect("json");
            value["msg"].to_string()
        };
        for request in all_requests() {
            let signed = message(request).sign_with_aux(&key(1), &[0; 32]).expect("signs");
            let unsigned = signed.message().clone();
            assert_eq!(Message::from_json_msg(&inner(&unsigned.to_json())), Ok(unsigned));
            // A signed object is not an unsigned message, wrapped or not.
            assert!(Message::from_json(&signed.to_json()).is_err());
            assert!(Message::from_json_msg(&inner(&signed.to_json())).is_err());
        }
        let json = message(all_requests().remove(6)).to_json();
        let check = |text: String| assert!(Message::from_json_msg(&text).is_err(), "{text}");
        check(json.clone()); // the wrapper itself is not a `msg` object
        check(inner(&json).replace("\"v\":1", "\"v\":2"));
        check(inner(&json).replacen("\"from\"", "\"extra\":0,\"from\"", 1));
        check(format!("{} ", inner(&json)).replacen('}', "}}", 1));
        check("{}".into());
        check(String::new());
    }

    #[test]
    fn json_strings_parse_borrowed_escaped_or_owned() {
        // Content whose base64 holds `/` and `+`, which JSON may escape (`\/`).
        let write =
            Write { record_id: "r1".into(), ttl: 60, tag: None, content: vec![0xff, 0xef, 0xfe, 0x3e] };
        let m = message(Request::Write(write));
        let json = m.to_json();
        assert!(json.contains("/+/+"), "{json}");
        // As written (borrowed from the text), with escapes (copied), and from an owned value.
        assert_eq!(Message::from_json(&json), Ok(m.clone()));
        let escaped = json.replace("/+/+", "\\/+\\/+");
        assert_ne!(escaped, json);
        assert_eq!(Message::from_json(&escaped), Ok(m.clone()));
        let from = m.from.to_hex();
        let key_escaped = json.replace(&from, &format!("\\u00{:x}{}", from.as_bytes()[0], &from[1..]));
        assert_ne!(key_escaped, json);
        assert_eq!(Message::from_json(&key_escaped), Ok(m.clone()));
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        let owned: PublicKey = serde_json::from_value(value["msg"]["from"].clone()).expect("owned string");
        assert_eq!(owned, m.from);
        // Not a string: refused, whatever the type.
        assert!(Message::from_json(&json.replace(&format!("\"{from}\""), "7")).is_err());
        assert!(serde_json::from_str::<PublicKey>("[1]").is_err());
    }

    #[test]
    fn json_edits_break_the_signature() {
        let signed = message(all_requests().remove(2)).sign_with_aux(&key(1), &[0; 32]).expect("signs");
        let json = signed.to_json();
        let changed = json.replace("\"recordId\":\"r1\"", "\"recordId\":\"r2\"");
        assert_ne!(changed, json);
        assert_eq!(SignedMessage::from_json(&changed), Err(RequestError::BadSignature));
        let changed_ts = json.replace("1700000000123", "1700000000124");
        assert_eq!(SignedMessage::from_json(&changed_ts), Err(RequestError::BadSignature));
    }

    #[test]
    fn json_rejects_unknowns() {
        let signed = message(all_requests().remove(6)).sign_with_aux(&key(1), &[0; 32]).expect("signs");
        let json = signed.to_json();
        let check = |text: String| assert!(SignedMessage::from_json(&text).is_err(), "{text}");
        check(json.replace("\"v\":1", "\"v\":2"));
        check(json.replace("\"type\":\"usage\"", "\"type\":\"nuke\""));
        check(json.replacen("\"afterTs\"", "\"extra\":0,\"afterTs\"", 1));
        check(json.replacen("\"from\"", "\"extra\":0,\"from\"", 1));
        check(json.replace("\"sig\":\"", "\"sig\":\"zz"));
        check("{}".into());
        check("[]".into());
        check(String::new());
    }

    #[test]
    fn cannot_sign_for_someone_else() {
        assert_eq!(
            message(all_requests().remove(0)).sign_with_aux(&key(2), &[0; 32]),
            Err(RequestError::BadSignature)
        );
    }

    #[test]
    fn bad_record_ids_are_refused_everywhere() {
        let mut m = message(Request::Read(Read {
            owner: key(1).public_key(),
            receiver: key(2).public_key(),
            record_id: "../x".into(),
        }));
        assert!(m.clone().sign_with_aux(&key(1), &[0; 32]).is_err());
        m.request = Request::Delete(Delete { receiver: key(2).public_key(), record_id: String::new() });
        assert!(m.sign_with_aux(&key(1), &[0; 32]).is_err());
    }

    #[test]
    fn freshness_window() {
        let m = message(all_requests().remove(6));
        assert!(m.is_fresh(1_700_000_000_123 + 30_000, 30_000));
        assert!(!m.is_fresh(1_700_000_000_123 + 30_001, 30_000));
        assert!(m.is_fresh(1_700_000_000_123 - 30_000, 30_000));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_flipped_bit_fails_verification(index in 0usize..11, bit in 0usize..4096) {
            let request = all_requests().remove(index);
            let bytes = message(request).sign_with_aux(&key(1), &[0; 32]).expect("signs").to_bytes();
            let bit = bit % (bytes.len() * 8);
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(SignedMessage::from_bytes(&bad).is_err());
        }

        #[test]
        fn write_round_trips(id in "[A-Za-z0-9._~-]{1,128}", ttl: u32, ts: u64, content in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assume!(id != "." && id != "..");
            let mut m = message(Request::Write(Write { record_id: id, ttl, tag: None, content }));
            m.timestamp = ts;
            let signed = m.sign_with_aux(&key(1), &[0; 32]).expect("signs");
            prop_assert_eq!(SignedMessage::from_bytes(&signed.to_bytes()), Ok(signed.clone()));
            prop_assert_eq!(SignedMessage::from_json(&signed.to_json()), Ok(signed));
        }
    }
}
