//! Canonical byte encoding shared by every signed and sealed structure: big-endian fixed-width
//! integers, length-prefixed byte strings, one-byte presence flags. A `Reader` never panics
//! and rejects trailing bytes, so each value has exactly one encoding.

/// Why a byte string did not decode. Every decoder in the crate returns this (possibly wrapped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before `field` was complete.
    #[error("input ends inside `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes were left over after a complete value.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A length prefix is larger than the field allows.
    #[error("`{field}` is {len} bytes long; at most {max} allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field is shorter than the minimum (for example an empty record id).
    #[error("`{field}` is {len} bytes long; at least {min} required")]
    TooShort {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A text field is not UTF-8.
    #[error("`{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// The structure's version byte is not one this implementation speaks.
    #[error("unsupported version {0}")]
    UnknownVersion(u8),
    /// A type or kind discriminant is unknown.
    #[error("unknown `{field}` value {value}")]
    UnknownType {
        /// The discriminant field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A presence flag is neither 0 nor 1.
    #[error("flag `{field}` is {value}; must be 0 or 1")]
    InvalidFlag {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// A public key is not a valid x-only secp256k1 point.
    #[error("`{field}` is not a valid secp256k1 x-only public key")]
    InvalidPublicKey {
        /// The field.
        field: &'static str,
    },
    /// A field decoded but breaks a rule of the protocol.
    #[error("`{field}`: {reason}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The rule broken.
        reason: &'static str,
    },
}

/// Builds canonical bytes.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity) }
    }

    /// Appends one byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.buf.push(value);
        self
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends bytes with no length prefix (fixed-size fields).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a u8 length then the bytes. Callers validate lengths before encoding; a
    /// longer slice here is a bug, so it is truncated-checked by `debug_assert`.
    pub fn var8(&mut self, bytes: &[u8]) -> &mut Self {
        debug_assert!(bytes.len() <= u8::MAX as usize);
        self.u8(bytes.len() as u8).raw(bytes)
    }

    /// Appends a u16 length then the bytes.
    pub fn var16(&mut self, bytes: &[u8]) -> &mut Self {
        debug_assert!(bytes.len() <= u16::MAX as usize);
        self.u16(bytes.len() as u16).raw(bytes)
    }

    /// Appends a u32 length then the bytes.
    pub fn var32(&mut self, bytes: &[u8]) -> &mut Self {
        debug_assert!(bytes.len() <= u32::MAX as usize);
        self.u32(bytes.len() as u32).raw(bytes)
    }

    /// Appends a presence flag (0 or 1).
    pub fn flag(&mut self, present: bool) -> &mut Self {
        self.u8(u8::from(present))
    }

    /// Appends an optional u64 as a flag and, if present, the value.
    pub fn opt_u64(&mut self, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.flag(true).u64(v),
            None => self.flag(false),
        }
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Finishes and returns the bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical bytes. Every method checks bounds and returns a `DecodeError` naming
/// the field it was reading.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes consumed so far (for hashing a prefix of the input).
    pub fn consumed(&self) -> &'a [u8] {
        &self.buf[..self.pos]
    }

    /// Takes `len` raw bytes.
    pub fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated { field });
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn checked_len(len: usize, max: usize, field: &'static str) -> Result<usize, DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        Ok(len)
    }

    /// Reads a u8-length-prefixed byte string of at most `max` bytes.
    pub fn var8(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = Self::checked_len(self.u8(field)? as usize, max, field)?;
        self.take(len, field)
    }

    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn var16(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = Self::checked_len(self.u16(field)? as usize, max, field)?;
        self.take(len, field)
    }

    /// Reads a u32-length-prefixed byte string of at most `max` bytes.
    pub fn var32(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = Self::checked_len(self.u32(field)? as usize, max, field)?;
        self.take(len, field)
    }

    /// Reads a u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str16(&mut self, max: usize, field: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.var16(max, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads a u8-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str8(&mut self, max: usize, field: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.var8(max, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads a presence flag; anything but 0 or 1 is an error.
    pub fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidFlag { field, value }),
        }
    }

    /// Reads an optional u64 written by [`Writer::opt_u64`].
    pub fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        if self.flag(field)? { Ok(Some(self.u64(field)?)) } else { Ok(None) }
    }

    /// Checks that the input is fully consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_consumption() {
        let mut w = Writer::new();
        w.u8(7).u16(513).u32(70000).u64(1 << 40).var8(b"ab").var16(b"cde").var32(b"").flag(true);
        w.opt_u64(Some(9)).opt_u64(None);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u16("b"), Ok(513));
        assert_eq!(r.u32("c"), Ok(70000));
        assert_eq!(r.u64("d"), Ok(1 << 40));
        assert_eq!(r.var8(2, "e"), Ok(&b"ab"[..]));
        assert_eq!(r.str16(3, "f"), Ok("cde"));
        assert_eq!(r.var32(0, "g"), Ok(&b""[..]));
        assert_eq!(r.flag("h"), Ok(true));
        assert_eq!(r.opt_u64("i"), Ok(Some(9)));
        assert_eq!(r.opt_u64("j"), Ok(None));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let check = |bytes: &[u8], expected: DecodeError| {
            let mut r = Reader::new(bytes);
            let got = r.var16(3, "label").map(|_| ()).and_then(|_| r.finish());
            assert_eq!(got, Err(expected));
        };
        check(&[0], DecodeError::Truncated { field: "label" });
        check(&[0, 4, 1, 2, 3, 4], DecodeError::TooLong { field: "label", len: 4, max: 3 });
        check(&[0, 2, 1], DecodeError::Truncated { field: "label" });
        check(&[0, 1, 1, 9], DecodeError::TrailingBytes(1));
        let mut r = Reader::new(&[2]);
        assert_eq!(r.flag("f"), Err(DecodeError::InvalidFlag { field: "f", value: 2 }));
        let mut r = Reader::new(&[0, 2, 0xff, 0xfe]);
        assert_eq!(r.str16(9, "s"), Err(DecodeError::InvalidUtf8 { field: "s" }));
    }
}
