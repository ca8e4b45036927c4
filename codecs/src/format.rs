//! The payload frame every codec shares, and the checked reader decoders parse bodies with.
//!
//! A payload is `[codec id: u8][version: u8][element count: LEB128 varint][body]`. The element
//! count is the length of the dense `f32` vector the payload decodes to, so a decoder can refuse a
//! payload before touching its body when the caller's buffer has another length, and a stage that
//! wraps another payload (zstd) can check that the inner one describes the same vector.
//!
//! [`Reader`] is the only way bodies are read: every read is bounds-checked and returns
//! [`CodecError::Truncated`] instead of panicking, and [`Reader::count`] refuses a count whose items
//! could not fit in the bytes that are left, so no decoder allocates more than its payload justifies.

use crate::CodecError;

/// Version every codec writes today. A decoder refuses other versions by name.
pub(crate) const VERSION: u8 = 1;

/// Largest varint: 10 bytes carry 64 bits.
const MAX_VARINT_BYTES: usize = 10;

/// Appends the shared header.
pub(crate) fn put_header(out: &mut Vec<u8>, id: u8, elements: usize) {
    out.push(id);
    out.push(VERSION);
    put_varint(out, elements as u64);
}

/// Appends `v` as an unsigned LEB128 varint (7 bits a byte, low group first).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes [`put_varint`] writes for `v`.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The parsed shared header of a payload.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) struct Header {
    pub(crate) id: u8,
    pub(crate) version: u8,
    /// Length of the dense vector the payload decodes to.
    pub(crate) elements: u64,
}

/// Reads the shared header, leaving `r` at the body.
pub(crate) fn read_header(r: &mut Reader<'_>) -> Result<Header, CodecError> {
    let id = r.u8("codec id")?;
    let version = r.u8("version")?;
    let elements = r.varint("element count")?;
    Ok(Header { id, version, elements })
}

/// A bounds-checked cursor over a payload.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes, without consuming them.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() {
            return Err(CodecError::Truncated { what, need: n, have: self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes every unread byte.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().expect("8 bytes")))
    }

    /// An unsigned LEB128 varint; overlong or overflowing encodings are errors.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err(CodecError::Invalid { what, why: "varint overflows 64 bits".into() });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Invalid { what, why: "varint longer than 10 bytes".into() })
    }

    /// A varint count of items that take at least `bits_each` bits each of what is left. Refusing
    /// counts the payload cannot hold is what bounds every allocation by the payload's size.
    pub(crate) fn count(&mut self, what: &'static str, bits_each: u64) -> Result<usize, CodecError> {
        let n = self.varint(what)?;
        let need_bits = u128::from(n) * u128::from(bits_each);
        let have_bits = self.buf.len() as u128 * 8;
        if need_bits > have_bits {
            return Err(CodecError::Invalid {
                what,
                why: format!("{n} items of {bits_each} bits cannot fit in the {} bytes left", self.buf.len()),
            });
        }
        usize::try_from(n).map_err(|_| CodecError::Invalid { what, why: format!("{n} does not fit in usize") })
    }

    /// Errors unless every byte was read.
    pub(crate) fn finish(&self, codec: &'static str) -> Result<(), CodecError> {
        if self.buf.is_empty() { Ok(()) } else { Err(CodecError::TrailingBytes { codec, extra: self.buf.len() }) }
    }
}

/// Where decoded values go: the caller's buffer overwritten, or added into with a scale.
///
/// Decoders are generic over it, so each mode is compiled into its own loop with no branch per
/// element.
pub(crate) trait Sink: Copy {
    /// Prepares `out` for a codec that writes only some elements (sparse codecs): overwriting
    /// zeroes it, adding leaves it.
    fn clear(self, out: &mut [f32]);
    /// Delivers value `v` to `dst`.
    fn put(self, dst: &mut f32, v: f32);
}

/// Overwrite: `out[i] = v`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Set;

impl Sink for Set {
    #[inline]
    fn clear(self, out: &mut [f32]) {
        out.fill(0.0);
    }
    #[inline(always)]
    fn put(self, dst: &mut f32, v: f32) {
        *dst = v;
    }
}

/// Add: `out[i] += scale · v`, the server's apply step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddScaled(pub(crate) f32);

impl Sink for AddScaled {
    #[inline]
    fn clear(self, _out: &mut [f32]) {}
    #[inline(always)]
    fn put(self, dst: &mut f32, v: f32) {
        *dst += self.0 * v;
    }
}

/// Delivers a run of values to the matching run of `out` (lengths equal, checked by the caller).
#[inline(always)]
pub(crate) fn put_all<S: Sink>(sink: S, out: &mut [f32], values: impl Iterator<Item = f32>) {
    for (dst, v) in out.iter_mut().zip(values) {
        sink.put(dst, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint("v").unwrap(), v);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut r = Reader::new(&bytes);
            let _ = read_header(&mut r);
            let _ = r.count("n", 32);
            let _ = r.u64("u");
        }
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut r = Reader::new(&[0xff; 11]);
        assert!(matches!(r.varint("v"), Err(CodecError::Invalid { .. })));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert!(matches!(r.varint("v"), Err(CodecError::Invalid { .. })));
        let mut r = Reader::new(&[0x80]);
        assert!(matches!(r.varint("v"), Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn counts_beyond_the_payload_are_refused() {
        // 1000 items of 32 bits in 4 bytes.
        let mut buf = Vec::new();
        put_varint(&mut buf, 1000);
        buf.extend_from_slice(&[0; 4]);
        assert!(matches!(Reader::new(&buf).count("n", 32), Err(CodecError::Invalid { .. })));
        let mut buf = Vec::new();
        put_varint(&mut buf, 1);
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(Reader::new(&buf).count("n", 32).unwrap(), 1);
    }
}
