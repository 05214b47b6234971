//! Payload kinds carried inside a sealed letter: text, acknowledgements, identity updates and
//! the Subspace payment kinds. Unknown kinds decode to [`Payload::Unknown`] and re-encode to
//! the same bytes, so a client can store and forward kinds it does not understand.

use crate::keys::PublicKey;
use crate::wire::{DecodeError, Reader, Writer};

/// Largest encoded payload body: what fits in one NIP-44 plaintext with the letter header.
pub const MAX_BODY_LEN: usize = 65_000;
/// Longest record id, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 128;
/// Most entries in one acknowledgement.
pub const MAX_ACK_ENTRIES: usize = 256;
/// Most transactions in one payment.
pub const MAX_PAYMENT_TRANSACTIONS: usize = 16;
/// Longest memo, in bytes.
pub const MAX_MEMO_LEN: usize = 4096;
/// Longest Bitcoin address or payment request id, in bytes.
pub const MAX_SHORT_TEXT_LEN: usize = 128;

/// The numeric kind of each payload, as written on the wire.
pub mod kind {
    /// UTF-8 text.
    pub const TEXT: u16 = 1;
    /// Acknowledgement of received records.
    pub const ACK: u16 = 2;
    /// A new signed identity card for the sender.
    pub const IDENTITY_UPDATE: u16 = 3;
    /// A request to be paid.
    pub const PAYMENT_REQUEST: u16 = 16;
    /// A payment (signed transactions).
    pub const PAYMENT: u16 = 17;
    /// A private memo about a transaction.
    pub const MEMO: u16 = 18;
}

/// One record acknowledged by its receiver: which record, fetched from which relay, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEntry {
    /// The record id in the sender's outbox (or a drop's letter id).
    pub record_id: String,
    /// The relay the receiver fetched it from.
    pub relay: PublicKey,
    /// When the receiver fetched it (unix milliseconds).
    pub read_at: u64,
}

/// A request to be paid (the BIP-70 `PaymentRequest` idea, carried privately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// The requester's id for this request, echoed by the payment.
    pub request_id: String,
    /// Amount in satoshis.
    pub amount_sat: u64,
    /// Where to pay: a Bitcoin address.
    pub address: String,
    /// A private note to the payer.
    pub memo: String,
    /// When the request lapses (unix milliseconds), if it does.
    pub expires_at: Option<u64>,
}

/// A payment: the signed transactions themselves, sent straight to the payee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The request this pays, if any (empty for an unsolicited payment).
    pub request_id: String,
    /// Serialized Bitcoin transactions.
    pub transactions: Vec<Vec<u8>>,
    /// Where to send a refund, if one is due.
    pub refund_address: Option<String>,
    /// A private note to the payee.
    pub memo: String,
}

/// A private memo attached to a transaction already on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    /// The transaction id (internal byte order).
    pub txid: [u8; 32],
    /// The note.
    pub memo: String,
}

/// The content of a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// UTF-8 text.
    Text(String),
    /// Acknowledgements of records received.
    Ack(Vec<AckEntry>),
    /// The sender's new identity card, in its canonical signed bytes.
    IdentityUpdate(Vec<u8>),
    /// A request to be paid.
    PaymentRequest(PaymentRequest),
    /// A payment.
    Payment(Payment),
    /// A memo about a transaction.
    Memo(Memo),
    /// A kind this version does not know; kept as bytes.
    Unknown {
        /// The kind number.
        kind: u16,
        /// The body bytes.
        body: Vec<u8>,
    },
}

/// Why a payload could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A field is longer than the protocol allows.
    #[error("`{field}` is {len} bytes; at most {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record id breaks the record id rules.
    #[error(transparent)]
    RecordId(#[from] RecordIdError),
    /// A kind number that belongs to a known kind was given as `Unknown`.
    #[error("kind {0} is a known kind; build it with its own variant")]
    KnownKindAsUnknown(u16),
}

/// Why a record id is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordIdError {
    /// Empty.
    #[error("record id is empty")]
    Empty,
    /// Longer than [`MAX_RECORD_ID_LEN`] bytes.
    #[error("record id is {0} bytes; at most 128 allowed")]
    TooLong(usize),
    /// Contains a character outside `A-Z a-z 0-9 . _ ~ -`.
    #[error("record id may only contain A-Z, a-z, 0-9, '.', '_', '~' and '-'")]
    InvalidCharacter,
    /// `.` or `..`, which would name a directory in the path form.
    #[error("record id may not be '.' or '..'")]
    DotSegment,
}

/// Checks the record id rules: 1 to 128 bytes of `A-Z a-z 0-9 . _ ~ -`, and not `.` or `..`.
/// These are the URL path characters that need no escaping, so a record id is always one
/// path segment.
pub fn validate_record_id(id: &str) -> Result<(), RecordIdError> {
    if id.is_empty() {
        return Err(RecordIdError::Empty);
    }
    if id.len() > MAX_RECORD_ID_LEN {
        return Err(RecordIdError::TooLong(id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')) {
        return Err(RecordIdError::InvalidCharacter);
    }
    if id == "." || id == ".." {
        return Err(RecordIdError::DotSegment);
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), PayloadError> {
    if len > max { Err(PayloadError::TooLong { field, len, max }) } else { Ok(()) }
}

impl Payload {
    /// The wire kind number.
    pub fn kind(&self) -> u16 {
        match self {
            Payload::Text(_) => kind::TEXT,
            Payload::Ack(_) => kind::ACK,
            Payload::IdentityUpdate(_) => kind::IDENTITY_UPDATE,
            Payload::PaymentRequest(_) => kind::PAYMENT_REQUEST,
            Payload::Payment(_) => kind::PAYMENT,
            Payload::Memo(_) => kind::MEMO,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    /// Checks every limit, so that an encoded payload always decodes again (and a decoded one
    /// always validates): the field limits the decoder enforces, then the encoded size.
    pub fn validate(&self) -> Result<(), PayloadError> {
        self.validate_fields()?;
        check_len("payload body", self.encode_body().len(), MAX_BODY_LEN)
    }

    fn validate_fields(&self) -> Result<(), PayloadError> {
        match self {
            Payload::Text(text) => check_len("text", text.len(), MAX_BODY_LEN),
            Payload::Ack(entries) => {
                check_len("ack entries", entries.len(), MAX_ACK_ENTRIES)?;
                for entry in entries {
                    validate_record_id(&entry.record_id)?;
                }
                Ok(())
            }
            Payload::IdentityUpdate(card) => check_len("card", card.len(), MAX_BODY_LEN),
            Payload::PaymentRequest(req) => {
                check_len("request id", req.request_id.len(), MAX_SHORT_TEXT_LEN)?;
                check_len("address", req.address.len(), MAX_SHORT_TEXT_LEN)?;
                check_len("memo", req.memo.len(), MAX_MEMO_LEN)
            }
            Payload::Payment(pay) => {
                check_len("request id", pay.request_id.len(), MAX_SHORT_TEXT_LEN)?;
                check_len("transactions", pay.transactions.len(), MAX_PAYMENT_TRANSACTIONS)?;
                if let Some(refund) = &pay.refund_address {
                    check_len("refund address", refund.len(), MAX_SHORT_TEXT_LEN)?;
                }
                check_len("memo", pay.memo.len(), MAX_MEMO_LEN)
            }
            Payload::Memo(memo) => check_len("memo", memo.memo.len(), MAX_MEMO_LEN),
            Payload::Unknown { kind, body } => {
                if matches!(
                    *kind,
                    kind::TEXT
                        | kind::ACK
                        | kind::IDENTITY_UPDATE
                        | kind::PAYMENT_REQUEST
                        | kind::PAYMENT
                        | kind::MEMO
                ) {
                    return Err(PayloadError::KnownKindAsUnknown(*kind));
                }
                check_len("body", body.len(), MAX_BODY_LEN)
            }
        }
    }

    /// The body bytes (without the kind).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Payload::Text(text) => {
                w.raw(text.as_bytes());
            }
            Payload::Ack(entries) => {
                w.u16(entries.len() as u16);
                for entry in entries {
                    w.var8(entry.record_id.as_bytes()).raw(&entry.relay.to_bytes()).u64(entry.read_at);
                }
            }
            Payload::IdentityUpdate(card) => {
                w.raw(card);
            }
            Payload::PaymentRequest(req) => {
                w.var8(req.request_id.as_bytes())
                    .u64(req.amount_sat)
                    .var8(req.address.as_bytes())
                    .var16(req.memo.as_bytes())
                    .opt_u64(req.expires_at);
            }
            Payload::Payment(pay) => {
                w.var8(pay.request_id.as_bytes()).u8(pay.transactions.len() as u8);
                for tx in &pay.transactions {
                    w.var32(tx);
                }
                match &pay.refund_address {
                    Some(address) => w.flag(true).var8(address.as_bytes()),
                    None => w.flag(false),
                };
                w.var16(pay.memo.as_bytes());
            }
            Payload::Memo(memo) => {
                w.raw(&memo.txid).var16(memo.memo.as_bytes());
            }
            Payload::Unknown { body, .. } => {
                w.raw(body);
            }
        }
        w.finish()
    }

    /// Decodes a body of the given kind.
    pub fn decode_body(kind: u16, body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_BODY_LEN {
            return Err(DecodeError::TooLong { field: "body", len: body.len(), max: MAX_BODY_LEN });
        }
        let mut r = Reader::new(body);
        let payload = match kind {
            kind::TEXT => {
                let text =
                    std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8 { field: "text" })?;
                r.take(body.len(), "text")?;
                Payload::Text(text.to_owned())
            }
            kind::ACK => {
                let count = r.u16("ack count")? as usize;
                if count > MAX_ACK_ENTRIES {
                    return Err(DecodeError::TooLong {
                        field: "ack entries",
                        len: count,
                        max: MAX_ACK_ENTRIES,
                    });
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let record_id = read_record_id(&mut r)?;
                    let relay = read_public_key(&mut r, "ack relay")?;
                    let read_at = r.u64("ack read_at")?;
                    entries.push(AckEntry { record_id, relay, read_at });
                }
                Payload::Ack(entries)
            }
            kind::IDENTITY_UPDATE => {
                r.take(body.len(), "card")?;
                Payload::IdentityUpdate(body.to_vec())
            }
            kind::PAYMENT_REQUEST => Payload::PaymentRequest(PaymentRequest {
                request_id: r.str8(MAX_SHORT_TEXT_LEN, "request id")?.to_owned(),
                amount_sat: r.u64("amount")?,
                address: r.str8(MAX_SHORT_TEXT_LEN, "address")?.to_owned(),
                memo: r.str16(MAX_MEMO_LEN, "memo")?.to_owned(),
                expires_at: r.opt_u64("expires_at")?,
            }),
            kind::PAYMENT => {
                let request_id = r.str8(MAX_SHORT_TEXT_LEN, "request id")?.to_owned();
                let count = r.u8("transaction count")? as usize;
                if count > MAX_PAYMENT_TRANSACTIONS {
                    return Err(DecodeError::TooLong {
                        field: "transactions",
                        len: count,
                        max: MAX_PAYMENT_TRANSACTIONS,
                    });
                }
                let mut transactions = Vec::with_capacity(count);
                for _ in 0..count {
                    transactions.push(r.var32(MAX_BODY_LEN, "transaction")?.to_vec());
                }
                let refund_address = if r.flag("refund address")? {
                    Some(r.str8(MAX_SHORT_TEXT_LEN, "refund address")?.to_owned())
                } else {
                    None
                };
                let memo = r.str16(MAX_MEMO_LEN, "memo")?.to_owned();
                Payload::Payment(Payment { request_id, transactions, refund_address, memo })
            }
            kind::MEMO => Payload::Memo(Memo {
                txid: r.array("txid")?,
                memo: r.str16(MAX_MEMO_LEN, "memo")?.to_owned(),
            }),
            other => {
                r.take(body.len(), "body")?;
                Payload::Unknown { kind: other, body: body.to_vec() }
            }
        };
        r.finish()?;
        Ok(payload)
    }
}

/// Reads a u8-prefixed record id and checks the record id rules.
pub(crate) fn read_record_id(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let id = r.str8(MAX_RECORD_ID_LEN, "record id")?;
    validate_record_id(id).map_err(|e| DecodeError::InvalidValue {
        field: "record id",
        reason: match e {
            RecordIdError::Empty => "empty",
            RecordIdError::TooLong(_) => "too long",
            RecordIdError::InvalidCharacter => "character outside A-Z a-z 0-9 . _ ~ -",
            RecordIdError::DotSegment => "'.' and '..' are not record ids",
        },
    })?;
    Ok(id.to_owned())
}

/// Reads a 32-byte x-only public key.
pub(crate) fn read_public_key(r: &mut Reader<'_>, field: &'static str) -> Result<PublicKey, DecodeError> {
    let bytes: [u8; 32] = r.array(field)?;
    PublicKey::from_bytes(&bytes).map_err(|_| DecodeError::InvalidPublicKey { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> PublicKey {
        crate::keys::SecretKey::from_bytes(&[1; 32]).expect("valid").public_key()
    }

    #[test]
    fn every_kind_round_trips() {
        let payloads = vec![
            Payload::Text("héllo".into()),
            Payload::Ack(vec![AckEntry { record_id: "r-1".into(), relay: relay(), read_at: 5 }]),
            Payload::IdentityUpdate(vec![1, 2, 3]),
            Payload::PaymentRequest(PaymentRequest {
                request_id: "inv-7".into(),
                amount_sat: 21_000,
                address: "bc1qexample".into(),
                memo: "coffee".into(),
                expires_at: Some(99),
            }),
            Payload::Payment(Payment {
                request_id: "inv-7".into(),
                transactions: vec![vec![0xde, 0xad], vec![]],
                refund_address: Some("bc1qrefund".into()),
                memo: String::new(),
            }),
            Payload::Memo(Memo { txid: [7; 32], memo: "rent".into() }),
            Payload::Unknown { kind: 999, body: vec![9, 9] },
        ];
        for payload in payloads {
            payload.validate().expect("valid");
            let body = payload.encode_body();
            assert_eq!(Payload::decode_body(payload.kind(), &body), Ok(payload));
        }
    }

    #[test]
    fn record_id_rules() {
        let check =
            |id: &str, expected: Result<(), RecordIdError>| assert_eq!(validate_record_id(id), expected);
        check("abc-DEF_1.2~3", Ok(()));
        check("", Err(RecordIdError::Empty));
        check(".", Err(RecordIdError::DotSegment));
        check("..", Err(RecordIdError::DotSegment));
        check("../etc", Err(RecordIdError::InvalidCharacter));
        check("a/b", Err(RecordIdError::InvalidCharacter));
        check("a b", Err(RecordIdError::InvalidCharacter));
        check("é", Err(RecordIdError::InvalidCharacter));
        check(&"a".repeat(128), Ok(()));
        check(&"a".repeat(129), Err(RecordIdError::TooLong(129)));
    }

    #[test]
    fn validate_and_decode_agree_at_the_size_limit() {
        // Found by fuzzing: a payment whose fields each pass but whose encoding is too long.
        let big = Payload::Payment(Payment {
            request_id: "q".repeat(128),
            transactions: vec![vec![0u8; (MAX_BODY_LEN - MAX_MEMO_LEN) / 16]; 16],
            refund_address: Some("r".repeat(128)),
            memo: "m".repeat(MAX_MEMO_LEN),
        });
        assert!(matches!(big.validate(), Err(PayloadError::TooLong { field: "payload body", .. })));
        // And a body the decoder accepts is one validate accepts.
        let mut w = Writer::new();
        w.var8(b"").u8(1).var32(&vec![0u8; 64_000]).flag(false).var16(b"");
        let decoded = Payload::decode_body(kind::PAYMENT, &w.finish()).expect("decodes");
        assert_eq!(decoded.validate(), Ok(()));
    }

    #[test]
    fn bad_bodies_fail_cleanly() {
        assert!(Payload::decode_body(kind::TEXT, &[0xff]).is_err());
        assert!(Payload::decode_body(kind::ACK, &[0, 1, 0]).is_err());
        assert!(Payload::decode_body(kind::MEMO, &[0; 31]).is_err());
        assert!(Payload::decode_body(kind::PAYMENT, &[0, 200]).is_err());
        assert!(Payload::decode_body(kind::PAYMENT_REQUEST, &[]).is_err());
        assert!(
            Payload::Unknown { kind: kind::TEXT, body: vec![] }.validate()
                == Err(PayloadError::KnownKindAsUnknown(kind::TEXT))
        );
    }
}
