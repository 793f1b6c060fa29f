//! A tiny binary codec shared by every slate format: LEB128 varints,
//! length-prefixed byte strings, fixed-width ids. The reader is built for
//! untrusted input: every length is checked against what remains (and
//! against a caller's bound) before anything is allocated.

use crate::error::{Error, Result};
use crate::id::Id32;

/// Appends encoded values to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    /// Raw bytes, no length.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// An unsigned LEB128 varint.
    pub fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }
    /// A signed value, zigzag-encoded as a varint.
    pub fn svarint(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.raw(b);
    }
    /// A 32-byte id.
    pub fn id(&mut self, id: &Id32) {
        self.raw(&id.0);
    }
    /// A little-endian u64, fixed width.
    pub fn u64_le(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    /// A little-endian u32, fixed width.
    pub fn u32_le(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
}

/// Reads encoded values from untrusted bytes.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Read `data`, naming it `what` in errors.
    pub fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, pos: 0, what }
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    /// Position from the start.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// A corruption error about this object.
    pub fn corrupt(&self, detail: impl Into<String>) -> Error {
        Error::corrupt(self.what, detail)
    }
    fn truncated(&self) -> Error {
        Error::Truncated { what: self.what }
    }
    /// Exactly `n` raw bytes.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// Check the magic and version header; returns the version.
    pub fn header(&mut self, magic: &[u8; 8], supported: u32) -> Result<u32> {
        if self.remaining() < 8 || self.raw(8)? != magic {
            return Err(Error::BadMagic { what: self.what });
        }
        let version = self.varint()?;
        if version != supported as u64 {
            return Err(Error::UnsupportedVersion {
                what: self.what,
                version: version.min(u32::MAX as u64) as u32,
                supported,
            });
        }
        Ok(version as u32)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.raw(1)?[0])
    }
    /// An unsigned LEB128 varint (at most 10 bytes, no overflow).
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(self.corrupt("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                // One value, one encoding: an overlong form (a last byte
                // of zero) would give signed and hashed records twins.
                if b == 0 && i > 0 {
                    return Err(self.corrupt("varint not in its shortest form"));
                }
                return Ok(v);
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }
    /// A varint that must be at most `max`.
    pub fn varint_max(&mut self, max: u64, field: &str) -> Result<u64> {
        let v = self.varint()?;
        if v > max {
            return Err(self.corrupt(format!("{field} {v} exceeds the limit {max}")));
        }
        Ok(v)
    }
    /// A zigzag-encoded signed varint.
    pub fn svarint(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, field: &str) -> Result<&'a [u8]> {
        let n = self.varint_max(max as u64, field)? as usize;
        self.raw(n)
    }
    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize, field: &str) -> Result<String> {
        let b = self.bytes(max, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt(format!("{field} is not UTF-8")))
    }
    /// A 32-byte id.
    pub fn id(&mut self) -> Result<Id32> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.raw(32)?);
        Ok(Id32(out))
    }
    /// A little-endian u64.
    pub fn u64_le(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.raw(8)?.try_into().unwrap()))
    }
    /// A little-endian u32.
    pub fn u32_le(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.raw(4)?.try_into().unwrap()))
    }
    /// A count of items each at least `min_item_bytes` long: bounded by
    /// what remains, so a forged count cannot make a caller pre-allocate.
    pub fn count(&mut self, min_item_bytes: usize, field: &str) -> Result<usize> {
        let n = self.varint()?;
        let max = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > max {
            return Err(self.corrupt(format!(
                "{field} count {n} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    /// Fail unless every byte was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.corrupt(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v: u64, s: i64) {
            let mut w = Writer::new();
            w.varint(v);
            w.svarint(s);
            let mut r = Reader::new(&w.buf, "test");
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.svarint().unwrap(), s);
            r.finish().unwrap();
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let bad = [0xffu8; 11];
        assert!(Reader::new(&bad, "t").varint().is_err());
        let bad = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(Reader::new(&bad, "t").varint().is_err());
        // Not the shortest form: 0 as two bytes, 1 with a zero tail.
        for bad in [vec![0x80u8, 0x00], vec![0x81, 0x80, 0x00]] {
            let e = Reader::new(&bad, "t").varint().unwrap_err().to_string();
            assert!(e.contains("shortest form"), "{e}");
        }
        assert_eq!(Reader::new(&[0x80, 0x01], "t").varint().unwrap(), 128);
    }

    #[test]
    fn forged_lengths_do_not_allocate() {
        let mut w = Writer::new();
        w.varint(u64::MAX / 2);
        assert!(Reader::new(&w.buf, "t").bytes(1 << 20, "x").is_err());
        assert!(Reader::new(&w.buf, "t").count(1, "x").is_err());
    }
}
