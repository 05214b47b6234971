//! Identity cards: a signed statement of a key's label, relays and drop prefix, shared as a
//! `.pigeon` JSON file or as a compact `pigeoncard1...` bech32m string of the same bytes.

use crate::hash::{tagged_hash, tags};
use crate::keys::{KeyError, PublicKey, SecretKey, Signature, decode_bech32m, encode_bech32m};
use crate::payload::read_public_key;
use crate::tag::Prefix;
use crate::wire::{DecodeError, Reader, Writer};

/// Version byte of the card format.
pub const CARD_VERSION: u8 = 1;
/// Human-readable part of the compact string.
pub const CARD_HRP: &str = "pigeoncard";
/// File extension of a card file.
pub const CARD_EXTENSION: &str = "pigeon";
/// Longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Most relays on one card.
pub const MAX_RELAYS: usize = 8;
/// Longest relay URL, in bytes.
pub const MAX_RELAY_URL_LEN: usize = 200;
/// Largest encoded card (with signature), chosen so the bech32m string stays within the
/// checksum's 1023-character design length.
pub const MAX_CARD_LEN: usize = 620;

/// Why a card is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// The card bytes are malformed.
    #[error("malformed card: {0}")]
    Decode(#[from] DecodeError),
    /// The compact string is not a valid `pigeoncard1...` string.
    #[error("invalid card string: {0}")]
    Text(#[from] KeyError),
    /// The JSON form is malformed or has unknown fields.
    #[error("invalid card JSON: {0}")]
    Json(String),
    /// The JSON `type` is not `Identity`.
    #[error("card type is `{0}`, expected `Identity`")]
    WrongType(String),
    /// The card version is not one this implementation reads.
    #[error("unsupported card version {0}")]
    UnsupportedVersion(u8),
    /// The signature does not verify against the card's own key.
    #[error("the card's signature does not verify: it was altered or not signed by its key")]
    BadSignature,
    /// A field breaks a limit or rule.
    #[error("invalid card: {0}")]
    Invalid(&'static str),
}

/// The signed content of an identity card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardContent {
    /// A name the owner chose; shown, never trusted.
    pub label: String,
    /// The identity.
    pub pubkey: PublicKey,
    /// Relay base URLs where the owner's outbox lives, in order of preference.
    pub relays: Vec<String>,
    /// The owner's drop prefix.
    pub prefix: Prefix,
    /// When the owner made this card (unix milliseconds); a newer card replaces an older one.
    pub updated: u64,
}

/// A verified identity card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityCard {
    content: CardContent,
    sig: Signature,
}

fn validate_relay_url(url: &str) -> Result<(), CardError> {
    if url.len() > MAX_RELAY_URL_LEN {
        return Err(CardError::Invalid("relay URL longer than 200 bytes"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(CardError::Invalid("relay URL must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(CardError::Invalid("relay URL has no host"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CardError::Invalid("relay URL must be printable ASCII without spaces"));
    }
    Ok(())
}

impl CardContent {
    /// Checks every rule that decoding checks, so a card that signs always parses.
    pub fn validate(&self) -> Result<(), CardError> {
        if self.label.len() > MAX_LABEL_LEN {
            return Err(CardError::Invalid("label longer than 64 bytes"));
        }
        if self.label.chars().any(char::is_control) {
            return Err(CardError::Invalid("label contains control characters"));
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(CardError::Invalid("more than 8 relays"));
        }
        for (i, url) in self.relays.iter().enumerate() {
            validate_relay_url(url)?;
            if self.relays[..i].contains(url) {
                return Err(CardError::Invalid("the same relay is listed twice"));
            }
        }
        if self.signing_bytes().len() + 64 > MAX_CARD_LEN {
            return Err(CardError::Invalid(
                "card too large for its compact string: use fewer or shorter relay URLs",
            ));
        }
        Ok(())
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.u8(CARD_VERSION)
            .var8(self.label.as_bytes())
            .raw(&self.pubkey.to_bytes())
            .u8(self.relays.len() as u8);
        for url in &self.relays {
            w.var8(url.as_bytes());
        }
        w.u8(self.prefix.bits()).u32(self.prefix.value()).u64(self.updated);
        w.finish()
    }

    /// Signs with explicit BIP-340 auxiliary bytes. The key must be the card's own.
    pub fn sign_with_aux(self, key: &SecretKey, aux: &[u8; 32]) -> Result<IdentityCard, CardError> {
        if key.public_key() != self.pubkey {
            return Err(CardError::Invalid("signing key is not the card's key"));
        }
        self.validate()?;
        let sig = key.sign_with_aux(&tagged_hash(tags::CARD, &[&self.signing_bytes()]), aux);
        Ok(IdentityCard { content: self, sig })
    }

    /// Signs with randomness from `rng`.
    pub fn sign<R: rand_core::RngCore + rand_core::CryptoRng>(
        self,
        key: &SecretKey,
        rng: &mut R,
    ) -> Result<IdentityCard, CardError> {
        let mut aux = [0u8; 32];
        rng.fill_bytes(&mut aux);
        self.sign_with_aux(key, &aux)
    }
}

/// JSON form of a card (the `.pigeon` file).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CardJson {
    #[serde(rename = "type")]
    kind: String,
    v: u8,
    label: String,
    pubkey: PublicKey,
    relays: Vec<String>,
    prefix: Prefix,
    updated: u64,
    sig: Signature,
}

impl IdentityCard {
    /// The signed content.
    pub fn content(&self) -> &CardContent {
        &self.content
    }

    /// The owner's signature.
    pub fn signature(&self) -> &Signature {
        &self.sig
    }

    /// The canonical bytes: content then signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.content.signing_bytes();
        bytes.extend_from_slice(&self.sig.to_bytes());
        bytes
    }

    /// Decodes canonical bytes and verifies the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CardError> {
        if bytes.len() > MAX_CARD_LEN {
            return Err(DecodeError::TooLong { field: "card", len: bytes.len(), max: MAX_CARD_LEN }.into());
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("card version")?;
        if version != CARD_VERSION {
            return Err(CardError::UnsupportedVersion(version));
        }
        let label = r.str8(MAX_LABEL_LEN, "label")?.to_owned();
        let pubkey = read_public_key(&mut r, "pubkey")?;
        let count = r.u8("relay count")? as usize;
        if count > MAX_RELAYS {
            return Err(DecodeError::TooLong { field: "relays", len: count, max: MAX_RELAYS }.into());
        }
        let mut relays = Vec::with_capacity(count);
        for _ in 0..count {
            relays.push(r.str8(MAX_RELAY_URL_LEN, "relay url")?.to_owned());
        }
        let bits = r.u8("prefix bits")?;
        let value = r.u32("prefix value")?;
        let prefix = Prefix::new(bits, value).map_err(|_| DecodeError::InvalidValue {
            field: "prefix",
            reason: "over 32 bits or value bits past length",
        })?;
        let updated = r.u64("updated")?;
        let sig = Signature::from_bytes(r.array("signature")?);
        r.finish()?;
        Self::verified(CardContent { label, pubkey, relays, prefix, updated }, sig)
    }

    fn verified(content: CardContent, sig: Signature) -> Result<Self, CardError> {
        content.validate()?;
        let digest = tagged_hash(tags::CARD, &[&content.signing_bytes()]);
        content.pubkey.verify(&digest, &sig).map_err(|_| CardError::BadSignature)?;
        Ok(Self { content, sig })
    }

    /// The compact `pigeoncard1...` string.
    pub fn to_bech32m(&self) -> String {
        encode_bech32m(CARD_HRP, &self.to_bytes())
    }

    /// Parses and verifies a compact string.
    pub fn from_bech32m(text: &str) -> Result<Self, CardError> {
        let bytes = decode_bech32m(text.trim(), CARD_HRP)?;
        Self::from_bytes(&bytes)
    }

    /// The `.pigeon` JSON form.
    pub fn to_json(&self) -> String {
        let json = CardJson {
            kind: "Identity".into(),
            v: CARD_VERSION,
            label: self.content.label.clone(),
            pubkey: self.content.pubkey,
            relays: self.content.relays.clone(),
            prefix: self.content.prefix,
            updated: self.content.updated,
            sig: self.sig,
        };
        // Serializing plain strings and numbers into a String cannot fail.
        serde_json::to_string_pretty(&json).expect("card JSON serializes")
    }

    /// Parses and verifies the `.pigeon` JSON form.
    pub fn from_json(text: &str) -> Result<Self, CardError> {
        let json: CardJson = serde_json::from_str(text).map_err(|e| CardError::Json(e.to_string()))?;
        if json.kind != "Identity" {
            return Err(CardError::WrongType(json.kind));
        }
        if json.v != CARD_VERSION {
            return Err(CardError::UnsupportedVersion(json.v));
        }
        let content = CardContent {
            label: json.label,
            pubkey: json.pubkey,
            relays: json.relays,
            prefix: json.prefix,
            updated: json.updated,
        };
        Self::verified(content, json.sig)
    }

    /// Parses either form: JSON (starts with `{`) or the compact string.
    pub fn parse(text: &str) -> Result<Self, CardError> {
        if text.trim_start().starts_with('{') { Self::from_json(text) } else { Self::from_bech32m(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretKey {
        SecretKey::from_bytes(&[4; 32]).expect("valid")
    }

    fn content() -> CardContent {
        CardContent {
            label: "Alice".into(),
            pubkey: secret().public_key(),
            relays: vec!["https://relay.example.org".into(), "http://127.0.0.1:7070".into()],
            prefix: Prefix::new(8, 0xa100_0000).expect("ok"),
            updated: 1_700_000_000_000,
        }
    }

    #[test]
    fn all_forms_round_trip() {
        let card = content().sign_with_aux(&secret(), &[0; 32]).expect("signs");
        assert_eq!(IdentityCard::from_bytes(&card.to_bytes()), Ok(card.clone()));
        assert_eq!(IdentityCard::parse(&card.to_bech32m()), Ok(card.clone()));
        assert_eq!(IdentityCard::parse(&card.to_json()), Ok(card.clone()));
        assert!(card.to_bech32m().starts_with("pigeoncard1"));
    }

    #[test]
    fn largest_card_fits_its_string() {
        let mut c = content();
        c.label = "x".repeat(MAX_LABEL_LEN);
        c.relays = (0..8).map(|i| format!("https://relay{i}.example.org:443/pigeonhole/v1/x")).collect();
        let card = c.sign_with_aux(&secret(), &[0; 32]).expect("signs");
        assert!(card.to_bytes().len() <= MAX_CARD_LEN);
        assert_eq!(IdentityCard::parse(&card.to_bech32m()), Ok(card));
    }

    #[test]
    fn tampering_is_detected() {
        let card = content().sign_with_aux(&secret(), &[0; 32]).expect("signs");
        let json = card.to_json().replace("Alice", "Mallory");
        assert_eq!(IdentityCard::from_json(&json), Err(CardError::BadSignature));
        let mut bytes = card.to_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                bytes[i] ^= 1 << bit;
                assert!(IdentityCard::from_bytes(&bytes).is_err(), "byte {i} bit {bit}");
                bytes[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn invalid_content_is_refused() {
        let check = |change: fn(&mut CardContent)| {
            let mut c = content();
            change(&mut c);
            assert!(matches!(c.sign_with_aux(&secret(), &[0; 32]), Err(CardError::Invalid(_))));
        };
        check(|c| c.label = "x".repeat(65));
        check(|c| c.label = "a\nb".into());
        check(|c| c.relays = vec!["ftp://x".into()]);
        check(|c| c.relays = vec!["https://".into()]);
        check(|c| c.relays = vec!["https://a b".into()]);
        check(|c| c.relays = vec!["https://a".into(), "https://a".into()]);
        check(|c| c.relays = (0..9).map(|i| format!("https://r{i}")).collect());
        check(|c| c.relays = (0..8).map(|i| format!("https://{i}{}", "r".repeat(70))).collect());
    }

    #[test]
    fn json_rejects_unknown_fields_and_types() {
        let card = content().sign_with_aux(&secret(), &[0; 32]).expect("signs");
        let extra = card.to_json().replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(IdentityCard::from_json(&extra), Err(CardError::Json(_))));
        let wrong = card.to_json().replace("\"Identity\"", "\"Contact\"");
        assert_eq!(IdentityCard::from_json(&wrong), Err(CardError::WrongType("Contact".into())));
    }
}
