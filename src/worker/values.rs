//! [`Values`]: an immutable, cheaply cloneable buffer of `f32` in wire layout.
//!
//! The zero-copy currency of the worker API, as ps-lite's `SArray` is for `ZPush`/`ZPull`:
//! pushing a `Values` puts its bytes into frames without copying them, and a pull answered by
//! one reply hands back the received bytes as they are. Clones share the buffer.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use paramserv_codecs::{CodecError, raw};

/// `f32` values stored as little-endian bytes. See the module docs.
#[derive(Clone, Default, Eq, PartialEq)]
pub struct Values {
    bytes: Bytes,
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values").field("len", &self.len()).finish()
    }
}

/// Lends a `Vec<f32>`'s memory as bytes, so `Bytes` can own it without a copy.
struct F32Owner(Vec<f32>);

impl AsRef<[u8]> for F32Owner {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Values {
    /// Takes ownership of `values`; no copy on little-endian machines.
    pub fn from_vec(values: Vec<f32>) -> Self {
        if cfg!(target_endian = "little") {
            Self { bytes: Bytes::from_owner(F32Owner(values)) }
        } else {
            Self::from_slice(&values)
        }
    }

    /// Copies `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut out = Vec::with_capacity(values.len() * raw::ELEM_BYTES);
        raw::encode_into(values, &mut out);
        Self { bytes: out.into() }
    }

    /// Wraps received bytes (a whole number of values).
    pub fn from_bytes(bytes: Bytes) -> Result<Self, CodecError> {
        raw::element_count(&bytes)?;
        Ok(Self { bytes })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / raw::ELEM_BYTES
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Value `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<f32> {
        let b = self.bytes.get(i * raw::ELEM_BYTES..(i + 1) * raw::ELEM_BYTES)?;
        Some(f32::from_le_bytes(b.try_into().expect("a 4-byte slice")))
    }

    /// The values in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.bytes.chunks_exact(raw::ELEM_BYTES).map(|c| f32::from_le_bytes(c.try_into().expect("a 4-byte chunk")))
    }

    /// The values as a slice, without copying, when the buffer is 4-byte aligned (usually; a
    /// buffer cut out of a received stream at an odd offset is not) on a little-endian machine.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if cfg!(target_endian = "little") { bytemuck::try_cast_slice(&self.bytes).ok() } else { None }
    }

    /// Copies the values into `out`, which must be exactly as long.
    pub fn copy_to(&self, out: &mut [f32]) -> Result<(), CodecError> {
        raw::decode_into(&self.bytes, out)
    }

    /// The values in a new vector.
    pub fn to_vec(&self) -> Vec<f32> {
        self.iter().collect()
    }

    /// Values `range`, sharing the buffer. Panics if the range is out of bounds, like slicing.
    pub fn slice(&self, range: Range<usize>) -> Self {
        Self { bytes: self.bytes.slice(range.start * raw::ELEM_BYTES..range.end * raw::ELEM_BYTES) }
    }

    /// The bytes (little-endian `f32`).
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl From<Vec<f32>> for Values {
    fn from(v: Vec<f32>) -> Self {
        Self::from_vec(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_share_memory_and_read_back() {
        let v = Values::from_vec(vec![1.0, -2.0, 3.5]);
        assert_eq!(v.len(), 3);
        assert_eq!(v.to_vec(), [1.0, -2.0, 3.5]);
        assert_eq!(v.as_f32(), Some(&[1.0, -2.0, 3.5][..]));
        let tail = v.slice(1..3);
        assert_eq!(tail.to_vec(), [-2.0, 3.5]);
        assert_eq!(tail.as_bytes().as_ptr(), v.as_bytes()[4..].as_ptr(), "slices share the buffer");
        assert_eq!(v.get(2), Some(3.5));
        assert_eq!(v.get(3), None);
        let mut out = [0.0; 2];
        tail.copy_to(&mut out).unwrap();
        assert_eq!(out, [-2.0, 3.5]);
        assert!(tail.copy_to(&mut [0.0; 3]).is_err());
        assert_eq!(Values::from_slice(&[1.0, -2.0, 3.5]), v);
        assert!(Values::from_bytes(Bytes::from_static(&[1, 2, 3])).is_err());
    }
}
