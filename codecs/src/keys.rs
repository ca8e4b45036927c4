//! Sorted keys as deltas: LEB128 varints or bit-packed blocks, whichever is smaller.
//!
//! Layout: `[count: varint]`, and when the count is not zero `[mode: u8][first key: varint]
//! [count - 1 deltas]`, each delta the gap to the previous key (at least 1: keys strictly ascend).
//! Mode 0 writes each delta as a varint; mode 1 writes blocks of [`BLOCK`] deltas, each
//! `[width: u8][BLOCK · width bits, LSB first]` (the last block holds the remainder), so runs of
//! small gaps cost their bit width and no more. The encoder sizes both and keeps the smaller.

use crate::CodecError;
use crate::format::{Reader, put_varint, varint_len};

/// Deltas per bit-packed block.
pub(crate) const BLOCK: usize = 128;

const MODE_VARINT: u8 = 0;
const MODE_PACKED: u8 = 1;

/// A sparse gradient: strictly ascending keys, and `dim` values per key in `rows`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sparse {
    /// Row keys, strictly ascending.
    pub keys: Vec<u64>,
    /// Values per key.
    pub dim: usize,
    /// `keys.len() · dim` values, row after row.
    pub rows: Vec<f32>,
}

/// The gaps between consecutive keys (one fewer than the keys).
fn gaps(keys: &[u64]) -> impl Iterator<Item = u64> + '_ {
    keys.windows(2).map(|w| w[1] - w[0])
}

fn width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Appends `keys` (strictly ascending) in the smaller of the two layouts.
pub fn encode_keys(keys: &[u64], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let Some(&first) = keys.first() else {
        put_varint(out, 0);
        return Ok(());
    };
    // One pass checks the order and sizes both layouts; block b holds gaps b·BLOCK.., that is
    // the keys b·BLOCK ..= (b + 1)·BLOCK.
    let blocks = || (0..keys.len() - 1).step_by(BLOCK).map(|s| (s, &keys[s..(s + BLOCK + 1).min(keys.len())]));
    let mut packed_bytes = 0usize;
    let mut widths = Vec::with_capacity((keys.len() - 1).div_ceil(BLOCK));
    for (start, block) in blocks() {
        // Branch-free so that it vectorizes: the widest gap is as wide as the OR of all of them.
        let (mut any_gap_bits, mut descending) = (0u64, false);
        for (a, b) in block.iter().zip(&block[1..]) {
            descending |= b <= a;
            any_gap_bits |= b.wrapping_sub(*a);
        }
        if descending {
            let i = block.windows(2).position(|p| p[1] <= p[0]).expect("a pair out of order");
            let at = start + i;
            return Err(CodecError::Invalid {
                what: "keys",
                why: format!("not strictly ascending at position {}: {} then {}", at + 1, keys[at], keys[at + 1]),
            });
        }
        let block_width = width(any_gap_bits);
        packed_bytes += 1 + ((block.len() - 1) * block_width as usize).div_ceil(8);
        widths.push(block_width);
    }
    // Varints are sized only as far as they could still win (a varint is at least a byte, so
    // packing below a byte a gap wins without sizing them at all).
    let mut varint_bytes = keys.len() - 1;
    for gap in gaps(keys) {
        if varint_bytes > packed_bytes {
            break;
        }
        varint_bytes += varint_len(gap) - 1;
    }
    put_varint(out, keys.len() as u64);
    if varint_bytes <= packed_bytes {
        out.push(MODE_VARINT);
        put_varint(out, first);
        out.reserve(varint_bytes);
        gaps(keys).for_each(|d| put_varint(out, d));
    } else {
        out.push(MODE_PACKED);
        put_varint(out, first);
        out.reserve(packed_bytes);
        for ((_, block), w) in blocks().zip(widths) {
            out.push(w as u8);
            pack_block(block, w, out);
        }
    }
    Ok(())
}

/// The gaps of `block` (keys), `w` bits each, least significant bit first, with one 64-bit
/// accumulator (a gap that does not fit spills into the next word).
fn pack_block(block: &[u64], w: u32, out: &mut Vec<u8>) {
    if w == 0 {
        return;
    }
    let (mut word, mut used) = (0u64, 0u32);
    for (a, b) in block.iter().zip(&block[1..]) {
        let gap = b - a; // below 2^w: w is the widest gap's width
        word |= gap << used;
        used += w;
        if used >= 64 {
            out.extend_from_slice(&word.to_le_bytes());
            used -= 64;
            // The bits of `gap` that did not fit (none when it ended exactly at the word's end).
            word = if used == 0 { 0 } else { gap >> (w - used) };
        }
    }
    out.extend_from_slice(&word.to_le_bytes()[..used.div_ceil(8) as usize]);
}

/// Where decoded keys go: a vector of keys, or their 8-byte little-endian form.
pub(crate) trait KeySink {
    /// Room for `n` more keys.
    fn reserve(&mut self, n: usize);
    /// Appends a key.
    fn push(&mut self, key: u64);
    /// Appends keys.
    fn extend_keys(&mut self, keys: &[u64]);
    /// Keys appended so far.
    fn count(&self) -> usize;
}

impl KeySink for Vec<u64> {
    fn reserve(&mut self, n: usize) {
        Self::reserve(self, n);
    }
    #[inline]
    fn push(&mut self, key: u64) {
        Self::push(self, key);
    }
    fn extend_keys(&mut self, keys: &[u64]) {
        self.extend_from_slice(keys);
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// Keys as 8-byte little-endian words, back to back.
struct LittleEndian(Vec<u8>);

impl KeySink for LittleEndian {
    fn reserve(&mut self, n: usize) {
        self.0.reserve(n * 8);
    }
    #[inline]
    fn push(&mut self, key: u64) {
        self.0.extend_from_slice(&key.to_le_bytes());
    }
    fn extend_keys(&mut self, keys: &[u64]) {
        let start = self.0.len();
        self.0.resize(start + keys.len() * 8, 0);
        for (out, k) in self.0[start..].chunks_exact_mut(8).zip(keys) {
            out.copy_from_slice(&k.to_le_bytes());
        }
    }
    fn count(&self) -> usize {
        self.0.len() / 8
    }
}

/// Decodes a whole payload of [`encode_keys`], refusing more than `max_keys` keys.
pub fn decode_keys(payload: &[u8], max_keys: usize) -> Result<Vec<u64>, CodecError> {
    let mut r = Reader::new(payload);
    let mut keys = Vec::new();
    read_keys_into(&mut r, max_keys, &mut keys)?;
    r.finish("keys")?;
    Ok(keys)
}

/// [`decode_keys`], with the keys as 8-byte little-endian words back to back (the layout of a
/// key list in a frame), written once, without an intermediate vector of keys.
pub fn decode_keys_le(payload: &[u8], max_keys: usize) -> Result<Vec<u8>, CodecError> {
    let mut r = Reader::new(payload);
    let mut keys = LittleEndian(Vec::new());
    read_keys_into(&mut r, max_keys, &mut keys)?;
    r.finish("keys")?;
    Ok(keys.0)
}

/// Reads keys from `r`, leaving it after them.
pub(crate) fn read_keys(r: &mut Reader<'_>, max_keys: usize) -> Result<Vec<u64>, CodecError> {
    let mut keys = Vec::new();
    read_keys_into(r, max_keys, &mut keys)?;
    Ok(keys)
}

fn read_keys_into(r: &mut Reader<'_>, max_keys: usize, keys: &mut impl KeySink) -> Result<(), CodecError> {
    // Every key takes at least one bit (packed, width 0 blocks aside: those cost a byte per block).
    let n = r.varint("key count")?;
    if n > max_keys as u64 {
        return Err(CodecError::TooLong { elements: n, max: max_keys });
    }
    let n = n as usize;
    if n == 0 {
        return Ok(());
    }
    let mode = r.u8("key mode")?;
    let first = r.varint("first key")?;
    let gaps = n - 1;
    let mut prev = first;
    match mode {
        MODE_VARINT => {
            // A varint is at least a byte.
            if gaps > r.remaining() {
                return Err(CodecError::Truncated { what: "key gaps", need: gaps, have: r.remaining() });
            }
            keys.reserve(n);
            keys.push(first);
            for at in 1..n {
                keys.push(next_key(&mut prev, r.varint("key gap")?, at)?);
            }
        }
        MODE_PACKED => {
            // A block is at least its width byte, and a gap at least a bit.
            if gaps.div_ceil(BLOCK) > r.remaining() {
                return Err(CodecError::Truncated {
                    what: "key blocks",
                    need: gaps.div_ceil(BLOCK),
                    have: r.remaining(),
                });
            }
            if gaps > r.remaining() * 8 {
                return Err(CodecError::Truncated { what: "key gaps", need: gaps.div_ceil(8), have: r.remaining() });
            }
            keys.reserve(n);
            keys.push(first);
            let mut left = gaps;
            // A block at a time: gaps, then checks, then running sums, then out in one piece.
            let mut block = [0u64; BLOCK];
            while left > 0 {
                let len = left.min(BLOCK);
                let w = u32::from(r.u8("key block width")?);
                if w > 64 {
                    return Err(CodecError::Invalid { what: "key block width", why: format!("{w} bits") });
                }
                let body = r.bytes((len * w as usize).div_ceil(8), "key block")?;
                let mut bits = BitReader::new(body);
                let block = &mut block[..len];
                block.iter_mut().for_each(|g| *g = bits.get(w));
                if let Some(i) = block.iter().position(|&g| g == 0) {
                    let at = keys.count() + i;
                    return Err(CodecError::Invalid { what: "keys", why: format!("repeated key at position {at}") });
                }
                // At most 128 gaps below 2^64 each: the sum fits a u128.
                let total: u128 = block.iter().map(|&g| u128::from(g)).sum();
                if u128::from(prev) + total > u128::from(u64::MAX) {
                    return Err(CodecError::Invalid { what: "keys", why: "a gap overflows u64".into() });
                }
                for g in block.iter_mut() {
                    prev += *g;
                    *g = prev;
                }
                keys.extend_keys(block);
                left -= len;
            }
        }
        other => return Err(CodecError::Invalid { what: "key mode", why: format!("{other}") }),
    }
    Ok(())
}

/// The key `gap` after `prev` (the key at position `at`), which becomes the new `prev`.
#[inline]
fn next_key(prev: &mut u64, gap: u64, at: usize) -> Result<u64, CodecError> {
    if gap == 0 {
        return Err(CodecError::Invalid { what: "keys", why: format!("repeated key at position {at}") });
    }
    *prev =
        prev.checked_add(gap).ok_or_else(|| CodecError::Invalid { what: "keys", why: "a gap overflows u64".into() })?;
    Ok(*prev)
}

/// Reads values written least significant bit first (by [`pack_block`]). Reading past the end gives zero bits; callers size the
/// slice from the count first.
pub(crate) struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
    acc: u128,
    len: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, acc: 0, len: 0 }
    }

    #[inline]
    pub(crate) fn get(&mut self, w: u32) -> u64 {
        if self.len < w {
            // Eight bytes at a time where there are eight (len + 64 <= 127 fits the u128).
            if let Some(word) = self.buf.get(self.pos..self.pos + 8) {
                let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
                self.acc |= u128::from(word) << self.len;
                self.pos += 8;
                self.len += 64;
            } else {
                while self.len < w {
                    let b = self.buf.get(self.pos).copied().unwrap_or(0);
                    self.pos += 1;
                    self.acc |= u128::from(b) << self.len;
                    self.len += 8;
                }
            }
        }
        let v = if w == 64 { self.acc as u64 } else { (self.acc as u64) & ((1u64 << w) - 1) };
        self.acc >>= w;
        self.len -= w;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Appends values of a given bit width, least significant bit first, a bit at a time in effect:
    /// the reference [`pack_block`] must agree with.
    struct BitWriter<'a> {
        out: &'a mut Vec<u8>,
        acc: u128,
        len: u32,
    }

    impl<'a> BitWriter<'a> {
        fn new(out: &'a mut Vec<u8>) -> Self {
            Self { out, acc: 0, len: 0 }
        }

        /// Appends the low `w` bits of `v` (`w <= 64`).
        #[inline]
        fn put(&mut self, v: u64, w: u32) {
            let v = if w == 64 { v } else { v & ((1u64 << w) - 1) };
            self.acc |= u128::from(v) << self.len;
            self.len += w;
            // Eight bytes at a time: the same little-endian stream, a fraction of the pushes.
            if self.len >= 64 {
                self.out.extend_from_slice(&(self.acc as u64).to_le_bytes());
                self.acc >>= 64;
                self.len -= 64;
            }
        }

        /// Writes the last partial bytes, zero-padded.
        fn flush(mut self) {
            while self.len > 0 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len = self.len.saturating_sub(8);
            }
        }
    }

    proptest! {
        #[test]
        fn keys_round_trip(keys in proptest::collection::btree_set(any::<u64>(), 0..400)) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let mut out = Vec::new();
            encode_keys(&keys, &mut out).unwrap();
            let le: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
            prop_assert_eq!(decode_keys_le(&out, keys.len()).unwrap(), le);
            prop_assert_eq!(decode_keys(&out, keys.len()).unwrap(), keys);
        }

        #[test]
        fn dense_runs_pack_below_a_byte_a_key(start in 0u64..1 << 40, gaps in proptest::collection::vec(1u64..4, 256..1024)) {
            let keys: Vec<u64> = gaps.iter().scan(start, |k, g| { *k += g; Some(*k) }).collect();
            let mut out = Vec::new();
            encode_keys(&keys, &mut out).unwrap();
            prop_assert!(out.len() * 3 < keys.len() + 64, "{} bytes for {} keys", out.len(), keys.len());
            prop_assert_eq!(decode_keys(&out, keys.len()).unwrap(), keys);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..500) {
            let le = decode_keys_le(&bytes, max);
            if let Ok(keys) = decode_keys(&bytes, max) {
                prop_assert!(keys.len() <= max);
                prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(le.unwrap(), keys.iter().flat_map(|k| k.to_le_bytes()).collect::<Vec<u8>>());
            } else {
                prop_assert!(le.is_err());
            }
        }

        #[test]
        fn packed_blocks_are_what_the_bit_writer_writes(
            // Widths to 56 bits: a block of such gaps from below 2^62 never passes 2^64.
            start in 0u64..1 << 62, w in 1u32..=56, gaps in proptest::collection::vec(any::<u64>(), 0..BLOCK),
        ) {
            let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
            let keys: Vec<u64> = std::iter::once(start)
                .chain(gaps.iter().scan(start, |k, g| { *k += (g & mask).max(1); Some(*k) }))
                .collect();
            let mut want = Vec::new();
            let mut bits = BitWriter::new(&mut want);
            keys.windows(2).for_each(|p| bits.put(p[1].wrapping_sub(p[0]), w));
            bits.flush();
            let mut got = Vec::new();
            pack_block(&keys, w, &mut got);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn bits_round_trip(values in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..100)) {
            let mut out = Vec::new();
            let mut w = BitWriter::new(&mut out);
            for &(v, width) in &values { w.put(v, width); }
            w.flush();
            let mut r = BitReader::new(&out);
            for &(v, width) in &values {
                let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
                prop_assert_eq!(r.get(width), v & mask);
            }
        }
    }

    #[test]
    fn unsorted_and_repeated_keys_are_refused() {
        assert!(encode_keys(&[3, 2], &mut Vec::new()).is_err());
        assert!(encode_keys(&[3, 3], &mut Vec::new()).is_err());
        // A hand-made payload with a zero delta after the first key.
        let err = decode_keys(&[2, MODE_VARINT, 5, 0], 10).unwrap_err();
        assert!(err.to_string().contains("repeated key"), "{err}");
        let err = decode_keys(&[2, MODE_PACKED, 5, 1, 0], 10).unwrap_err();
        assert!(err.to_string().contains("repeated key"), "{err}");
        assert!(matches!(decode_keys(&[200, 1, MODE_VARINT], 10), Err(CodecError::TooLong { .. })));
    }
}
