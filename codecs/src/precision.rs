//! Half precision on the wire: IEEE fp16 and bfloat16, 2 bytes an element, round to nearest even.
//!
//! Error bound (checked by the property tests): for finite inputs in the target's normal range the
//! relative error is at most 2^-11 (fp16) or 2^-8 (bf16); fp16 overflows to infinity above 65504
//! and loses relative precision below 6.1e-5 (subnormals, absolute error at most 2^-25). NaN stays
//! NaN. The conversion runs through the `half` crate, which uses the CPU's F16C instructions when
//! it has them; bf16 is a shift with rounding, which the compiler vectorizes.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::format::{self, Reader, Sink, put_all};
use crate::{CodecError, Encoder, id};

/// Elements converted per stack buffer: big enough to amortize the call, small enough for L1.
const CHUNK: usize = 2048;

/// IEEE half precision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fp16;

/// bfloat16.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bf16;

impl Encoder for Fp16 {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::FP16, values.len());
        let start = out.len();
        out.resize(start + values.len() * 2, 0);
        // Straight into the payload when it sits at an even address (big tensors: the header is
        // then 6 bytes); through a small aligned buffer otherwise.
        if let Ok(dst) = bytemuck::try_cast_slice_mut::<u8, u16>(&mut out[start..]) {
            dst.reinterpret_cast_mut::<f16>().convert_from_f32_slice(values);
            if cfg!(target_endian = "big") {
                dst.iter_mut().for_each(|h| *h = h.to_le());
            }
            return;
        }
        let mut buf = [f16::ZERO; CHUNK];
        for (chunk, dst) in values.chunks(CHUNK).zip(out[start..].chunks_mut(CHUNK * 2)) {
            let half = &mut buf[..chunk.len()];
            half.convert_from_f32_slice(chunk);
            for (d, h) in dst.chunks_exact_mut(2).zip(half.iter()) {
                d.copy_from_slice(&h.to_bits().to_le_bytes());
            }
        }
    }
}

impl Encoder for Bf16 {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::BF16, values.len());
        out.reserve(values.len() * 2);
        let mut buf = [0u16; CHUNK];
        for chunk in values.chunks(CHUNK) {
            let half = &mut buf[..chunk.len()];
            for (h, v) in half.iter_mut().zip(chunk) {
                *h = to_bf16_bits(*v);
            }
            out.extend_from_slice(bytemuck::cast_slice(half));
        }
    }
}

/// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
fn to_bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn halves<'a>(r: &mut Reader<'a>, n: usize, codec: &'static str) -> Result<&'a [u8], CodecError> {
    let body = r.bytes(n * 2, "half values")?;
    r.finish(codec)?;
    Ok(body)
}

pub(crate) fn decode_fp16<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let body = halves(r, out.len(), "fp16")?;
    let mut half = [f16::ZERO; CHUNK];
    let mut wide = [0.0f32; CHUNK];
    for (src, dst) in body.chunks(CHUNK * 2).zip(out.chunks_mut(CHUNK)) {
        let n = dst.len();
        for (h, b) in half[..n].iter_mut().zip(src.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
        }
        half[..n].convert_to_f32_slice(&mut wide[..n]);
        put_all(sink, dst, wide[..n].iter().copied());
    }
    Ok(())
}

pub(crate) fn decode_bf16<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let body = halves(r, out.len(), "bf16")?;
    put_all(sink, out, body.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pipeline, decode};
    use proptest::prelude::*;

    fn round_trip(spec: &str, values: &[f32]) -> Vec<f32> {
        let mut payload = Vec::new();
        Pipeline::parse(spec).unwrap().encode(values, &mut payload);
        assert_eq!(payload.len(), 2 + format::varint_len(values.len() as u64) + 2 * values.len());
        decode(&payload, values.len()).unwrap()
    }

    proptest! {
        #[test]
        fn fp16_error_is_within_half_an_ulp(values in proptest::collection::vec(-65000f32..65000.0, 0..3000)) {
            for (v, d) in values.iter().zip(round_trip("fp16", &values)) {
                let bound = if v.abs() >= 6.103_515_6e-5 { v.abs() * 2f32.powi(-11) } else { 2f32.powi(-25) };
                prop_assert!((v - d).abs() <= bound, "{} -> {}", v, d);
                prop_assert_eq!(d, f16::from_f32(*v).to_f32());
            }
        }

        #[test]
        fn bf16_error_is_within_half_an_ulp(values in proptest::collection::vec(any::<f32>(), 0..3000)) {
            for (v, d) in values.iter().zip(round_trip("bf16", &values)) {
                if v.is_nan() {
                    prop_assert!(d.is_nan());
                    continue;
                }
                prop_assert_eq!(to_bf16_bits(*v), half::bf16::from_f32(*v).to_bits());
                if v.is_finite() && d.is_finite() && v.abs() >= f32::MIN_POSITIVE {
                    prop_assert!((v - d).abs() <= v.abs() * 2f32.powi(-8), "{} -> {}", v, d);
                }
            }
        }
    }

    #[test]
    fn fp16_keeps_specials() {
        let d = round_trip("fp16", &[f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e6, -0.0]);
        assert_eq!(d[0], f32::INFINITY);
        assert_eq!(d[1], f32::NEG_INFINITY);
        assert!(d[2].is_nan());
        assert_eq!(d[3], f32::INFINITY, "above 65504 is infinite in fp16");
        assert_eq!(d[4].to_bits(), (-0.0f32).to_bits());
    }
}
