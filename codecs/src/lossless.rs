//! Lossless stages: framed raw `f32`, and zstd over any codec's payload with an optional byte
//! shuffle.
//!
//! zstd on raw gradients gains little (about 1.08x): the low mantissa bytes are noise. The shuffle
//! (Blosc's) regroups the payload so all first bytes of each 4-byte word come first, then all
//! second bytes, and so on; the sign-and-exponent bytes, which repeat, then sit together where
//! zstd finds them. The zstd body is one frame with its content size, which the decoder checks
//! against what the caller's buffer can hold before allocating anything.

use crate::format::{self, Reader, Sink, put_all};
use crate::{CodecError, Encoder, id};

/// Framed little-endian `f32`: header, then 4 bytes an element.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw;

impl Encoder for Raw {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::RAW, values.len());
        crate::raw::encode_into(values, out);
    }
}

pub(crate) fn decode_raw<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let body = r.bytes(out.len() * 4, "raw values")?;
    r.finish("raw")?;
    put_all(sink, out, body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    Ok(())
}

/// Width of the shuffle's words: the bytes of an `f32`.
const SHUFFLE_WIDTH: usize = 4;
/// Flag bit: the compressed bytes were shuffled.
const FLAG_SHUFFLE: u8 = 1;

/// zstd over an inner encoder's payload.
pub(crate) struct Zstd {
    inner: Box<dyn Encoder>,
    level: i32,
    shuffle: bool,
    compressor: zstd::bulk::Compressor<'static>,
    payload: Vec<u8>,
    shuffled: Vec<u8>,
    frame: Vec<u8>,
}

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd")
            .field("inner", &self.inner)
            .field("level", &self.level)
            .field("shuffle", &self.shuffle)
            .finish()
    }
}

impl Zstd {
    pub(crate) fn new(inner: Box<dyn Encoder>, level: i32, shuffle: bool) -> Self {
        let compressor = zstd::bulk::Compressor::new(level).expect("levels are checked when the spec is parsed");
        Self { inner, level, shuffle, compressor, payload: Vec::new(), shuffled: Vec::new(), frame: Vec::new() }
    }

    fn finish(&mut self, elements: usize, out: &mut Vec<u8>) {
        format::put_header(out, id::ZSTD, elements);
        let src = if self.shuffle {
            shuffle(&self.payload, &mut self.shuffled);
            out.push(FLAG_SHUFFLE);
            &self.shuffled
        } else {
            out.push(0);
            &self.payload
        };
        self.frame.clear();
        self.frame.reserve(zstd::zstd_safe::compress_bound(src.len()));
        self.compressor.compress_to_buffer(src, &mut self.frame).expect("the buffer holds zstd's bound");
        out.extend_from_slice(&self.frame);
    }
}

impl Encoder for Zstd {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        self.payload.clear();
        self.inner.encode(values, &mut self.payload);
        self.finish(values.len(), out);
    }

    fn encode_rows(&mut self, keys: &[u64], dim: usize, rows: &[f32], out: &mut Vec<u8>) {
        self.payload.clear();
        self.inner.encode_rows(keys, dim, rows, &mut self.payload);
        self.finish(rows.len(), out);
    }

    fn add_held_back_rows(&self, keys: &[u64], dim: usize, scale: f32, rows: &mut [f32]) {
        self.inner.add_held_back_rows(keys, dim, scale, rows);
    }

    fn take_held_back_rows(&mut self) -> crate::Sparse {
        self.inner.take_held_back_rows()
    }
}

/// The largest inner payload a zstd stage accepts for `elements` values: above what any codec
/// writes (raw needs 4 bytes an element, pairs at most 13, the largest SketchML sketch 4 rows × 8
/// columns × 16 bits = 64 plus its positions), far below what a crafted content size could ask for.
fn max_inner_len(elements: usize) -> usize {
    elements.saturating_mul(80).saturating_add(4096)
}

pub(crate) fn decode_zstd<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S, depth: u32) -> Result<(), CodecError> {
    let flags = r.u8("zstd flags")?;
    if flags & !FLAG_SHUFFLE != 0 {
        return Err(CodecError::Invalid { what: "zstd flags", why: format!("unknown bits {flags:#04x}") });
    }
    let frame = r.take_rest();
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(CodecError::Invalid { what: "zstd frame", why: "no content size".into() }),
        Err(_) => return Err(CodecError::Invalid { what: "zstd frame", why: "not a zstd frame header".into() }),
    };
    let max = max_inner_len(out.len());
    if size > max as u64 {
        return Err(CodecError::Invalid {
            what: "zstd frame",
            why: format!("content size {size} is more than {max}, the most {} elements need", out.len()),
        });
    }
    let mut inner = Vec::with_capacity(size as usize);
    let zstd_err = |e: std::io::Error| CodecError::Invalid { what: "zstd frame", why: e.to_string() };
    // Into the Vec's spare capacity, which is the content size: zstd refuses to write past it.
    let written =
        zstd::bulk::Decompressor::new().map_err(zstd_err)?.decompress_to_buffer(frame, &mut inner).map_err(zstd_err)?;
    if written as u64 != size {
        return Err(CodecError::Invalid { what: "zstd frame", why: format!("{written} bytes, header said {size}") });
    }
    if flags & FLAG_SHUFFLE != 0 {
        let mut plain = Vec::new();
        unshuffle(&inner, &mut plain);
        inner = plain;
    }
    crate::decode_with(&inner, out, sink, depth + 1)
}

/// Byte shuffle: of each 4-byte word of `src`, byte 0 goes to the first quarter, byte 1 to the
/// second, and so on; a tail of fewer than 4 bytes is copied as is.
fn shuffle(src: &[u8], dst: &mut Vec<u8>) {
    let words = src.len() / SHUFFLE_WIDTH;
    dst.clear();
    dst.resize(src.len(), 0);
    let (planes, tail) = dst.split_at_mut(words * SHUFFLE_WIDTH);
    let (p0, rest) = planes.split_at_mut(words);
    let (p1, rest) = rest.split_at_mut(words);
    let (p2, p3) = rest.split_at_mut(words);
    for (i, w) in src.chunks_exact(SHUFFLE_WIDTH).enumerate() {
        p0[i] = w[0];
        p1[i] = w[1];
        p2[i] = w[2];
        p3[i] = w[3];
    }
    tail.copy_from_slice(&src[words * SHUFFLE_WIDTH..]);
}

fn unshuffle(src: &[u8], dst: &mut Vec<u8>) {
    let words = src.len() / SHUFFLE_WIDTH;
    dst.clear();
    dst.resize(src.len(), 0);
    let (p0, rest) = src.split_at(words);
    let (p1, rest) = rest.split_at(words);
    let (p2, rest) = rest.split_at(words);
    let (p3, tail) = rest.split_at(words);
    for (i, w) in dst.chunks_exact_mut(SHUFFLE_WIDTH).enumerate() {
        w.copy_from_slice(&[p0[i], p1[i], p2[i], p3[i]]);
    }
    dst[words * SHUFFLE_WIDTH..].copy_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pipeline, decode, decode_add};
    use proptest::prelude::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest! {
        #[test]
        fn lossless_pipelines_round_trip_bit_for_bit(
            values in proptest::collection::vec(any::<f32>(), 0..600),
            spec in prop_oneof![Just("raw"), Just("raw|zstd:1"), Just("raw|zstd:3,shuffle"), Just("raw|zstd:-1|zstd:1")],
        ) {
            let mut p = Pipeline::parse(spec).unwrap();
            let mut payload = Vec::new();
            p.encode(&values, &mut payload);
            prop_assert_eq!(bits(&decode(&payload, values.len()).unwrap()), bits(&values));
        }

        #[test]
        fn shuffle_is_a_permutation(src in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (mut s, mut back) = (Vec::new(), Vec::new());
            shuffle(&src, &mut s);
            unshuffle(&s, &mut back);
            prop_assert_eq!(back, src);
        }
    }

    #[test]
    fn shuffle_helps_zstd_on_gradients() {
        // Smooth, gradient-like values: the exponent bytes repeat, the mantissa bytes do not.
        let values: Vec<f32> = (0..1 << 16).map(|i| ((i as f32) * 0.001).sin() * 1e-3).collect();
        let size = |spec: &str| {
            let mut out = Vec::new();
            Pipeline::parse(spec).unwrap().encode(&values, &mut out);
            out.len()
        };
        let (plain, shuffled) = (size("raw|zstd:3"), size("raw|zstd:3,shuffle"));
        assert!(shuffled * 10 < plain * 9, "shuffled {shuffled} bytes vs plain {plain}");
    }

    #[test]
    fn a_content_size_beyond_the_buffer_is_refused_before_allocating() {
        let mut payload = Vec::new();
        Pipeline::parse("raw|zstd:1").unwrap().encode(&vec![0.0; 100_000], &mut payload);
        // The same frame claimed for 10 elements: its 400_0xx bytes of content cannot be 10 values.
        let mut forged = Vec::new();
        format::put_header(&mut forged, id::ZSTD, 10);
        let body_at = 2 + format::varint_len(100_000);
        forged.extend_from_slice(&payload[body_at..]);
        let err = decode_add(&forged, 1.0, &mut [0.0; 10]).unwrap_err();
        assert!(err.to_string().contains("content size"), "{err}");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut payload = Vec::new();
        Pipeline::parse("raw|zstd|zstd|zstd|zstd").unwrap().encode(&[1.0], &mut payload);
        assert_eq!(decode(&payload, 1), Err(CodecError::TooDeep));
    }
}
