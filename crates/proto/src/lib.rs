//! Pigeonhole protocol core: keys, canonical bytes, tagged hashes, signatures, sealing,
//! drop tags, drop postage (RFC 9497 VOPRF tokens), identity cards, requests and relay
//! receipts.
//!
//! This crate is pure: it performs no I/O, reads no clock and draws no OS randomness. Time
//! is always an argument, randomness comes from a caller-supplied RNG, and every
//! randomized operation has a `*_with_nonce` (or `*_with_aux`) form for test vectors.

#![forbid(unsafe_code)]

/// Implements serde for a type with a text form: serialize via `$to` (a `String`), deserialize
/// via `$from` (a `&str` parser whose error is `Display`).
macro_rules! impl_text_serde {
    ($ty:ty, $to:ident, $from:ident) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.$to())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                crate::deserialize_str(deserializer, |text| Self::$from(text))
            }
        }
    };
}

/// Deserializes a string and hands it to `parse`, without copying it where the input holds it
/// as it is (serde's `Cow<str>` always copies into a `String`): a request's base64 content and
/// its hex keys are parsed straight from the JSON text.
pub(crate) fn deserialize_str<'de, D, T, E>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    E: std::fmt::Display,
{
    struct Text<F>(F);

    impl<'de, T, E: std::fmt::Display, F: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'de> for Text<F> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        // Borrowed and owned strings come here too (serde's defaults forward them).
        fn visit_str<Err: serde::de::Error>(self, text: &str) -> Result<T, Err> {
            (self.0)(text).map_err(Err::custom)
        }
    }

    deserializer.deserialize_str(Text(parse))
}

/// Lower-case hex of `bytes`. `hex::encode` builds its string one `char` at a time; this
/// fills a buffer with `hex::encode_to_slice`, several times faster on the 32- and 64-byte
/// keys, hashes and signatures that every receipt and answer carries.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    // Cannot fail: the buffer is exactly twice the input.
    let _ = hex::encode_to_slice(bytes, &mut buf);
    // Hex digits are ASCII, so this is always valid UTF-8.
    String::from_utf8(buf).unwrap_or_default()
}

pub mod card;
pub mod drops;
pub mod hash;
pub mod keyfile;
pub mod keys;
pub mod nip44;
pub mod payload;
pub mod postage;
pub mod receipt;
pub mod request;
pub mod seal;
pub mod tag;
pub mod wire;

#[cfg(test)]
mod tests {
    #[test]
    fn to_hex_matches_the_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 32, 64, 256] {
            assert_eq!(super::to_hex(&bytes[..len]), hex::encode(&bytes[..len]));
        }
    }
}
