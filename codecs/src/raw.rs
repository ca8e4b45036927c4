//! Lossless little-endian `f32`: 4 bytes an element, no header.
//!
//! This is the layout of every value payload on the parameter server's wire and the 1.0x baseline
//! of every compression ratio. Decoding reads with `chunks_exact`, so it works on unaligned buffers
//! (a slice of a received frame) and cannot read past the end.

use crate::CodecError;

/// Bytes one element takes.
pub const ELEM_BYTES: usize = 4;

/// Appends `values` to `out` as little-endian `f32`.
pub fn encode_into(values: &[f32], out: &mut Vec<u8>) {
    put_slice(values, out);
}

/// Appends `values` as little-endian `f32` to any `BufMut` (e.g. a `BytesMut` frame being built).
pub fn put_slice(values: &[f32], out: &mut impl bytes::BufMut) {
    if cfg!(target_endian = "little") {
        // The in-memory layout is the wire layout: one copy.
        out.put_slice(bytemuck::cast_slice(values));
    } else {
        for v in values {
            out.put_f32_le(*v);
        }
    }
}

/// Number of elements in a payload, or an error if it is ragged.
pub fn element_count(payload: &[u8]) -> Result<usize, CodecError> {
    if !payload.len().is_multiple_of(ELEM_BYTES) {
        return Err(CodecError::Ragged { len: payload.len(), elem: ELEM_BYTES });
    }
    Ok(payload.len() / ELEM_BYTES)
}

/// Decodes `payload` into `out`, which must have exactly as many elements as the payload.
pub fn decode_into(payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_len(payload, out.len())?;
    if cfg!(target_endian = "little") {
        // Bytes from the wire need not be 4-byte aligned; copying into `out` as bytes is.
        bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(payload);
        return Ok(());
    }
    for (dst, src) in out.iter_mut().zip(payload.chunks_exact(ELEM_BYTES)) {
        *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
    }
    Ok(())
}

/// `out[i] += scale * payload[i]`: the server's apply step, fused with decoding so the payload is
/// read once.
pub fn add_scaled_into(payload: &[u8], scale: f32, out: &mut [f32]) -> Result<(), CodecError> {
    check_len(payload, out.len())?;
    for (dst, src) in out.iter_mut().zip(payload.chunks_exact(ELEM_BYTES)) {
        *dst += scale * f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
    }
    Ok(())
}

/// Decodes a whole payload into a new vector.
pub fn decode(payload: &[u8]) -> Result<Vec<f32>, CodecError> {
    let mut out = vec![0.0; element_count(payload)?];
    decode_into(payload, &mut out)?;
    Ok(out)
}

fn check_len(payload: &[u8], want: usize) -> Result<(), CodecError> {
    let have = element_count(payload)?;
    if have != want {
        return Err(CodecError::Length { want, have: have as u64 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_little_endian() {
        let mut out = Vec::new();
        encode_into(&[1.0, -2.5], &mut out);
        assert_eq!(out, [0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0]);
    }

    #[test]
    fn ragged_and_short_payloads_are_errors() {
        assert_eq!(decode(&[0; 5]), Err(CodecError::Ragged { len: 5, elem: 4 }));
        let mut out = [0.0; 3];
        assert_eq!(decode_into(&[0; 8], &mut out), Err(CodecError::Length { want: 3, have: 2 }));
        assert_eq!(add_scaled_into(&[0; 16], 1.0, &mut out), Err(CodecError::Length { want: 3, have: 4 }));
    }

    proptest! {
        #[test]
        fn round_trip_is_bit_exact(values in proptest::collection::vec(any::<f32>(), 0..512)) {
            let mut bytes = Vec::new();
            encode_into(&values, &mut bytes);
            let mut via_bufmut = Vec::new();
            put_slice(&values, &mut via_bufmut);
            prop_assert_eq!(&bytes, &via_bufmut);
            let back = decode(&bytes).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back), bits(&values));
        }

        #[test]
        fn add_scaled_matches_decode_then_add(
            pairs in proptest::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 0..256),
            scale in -2f32..2.0,
        ) {
            let (base, grad): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let mut bytes = Vec::new();
            encode_into(&grad, &mut bytes);
            let mut fused = base.clone();
            add_scaled_into(&bytes, scale, &mut fused).unwrap();
            let expect: Vec<f32> = base.iter().zip(&grad).map(|(b, g)| b + scale * g).collect();
            prop_assert_eq!(fused, expect);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
