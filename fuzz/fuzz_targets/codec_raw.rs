//! The lossless `f32` codec: whatever `raw::decode` accepts, encoding gives back bit for bit.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use paramserv_codecs::{CodecError, raw};

fuzz_target!(|data: &[u8]| {
    let values = match raw::decode(data) {
        Ok(values) => values,
        Err(e) => {
            assert_eq!(e, CodecError::Ragged { len: data.len(), elem: raw::ELEM_BYTES });
            return;
        }
    };
    assert_eq!(values.len() * raw::ELEM_BYTES, data.len());
    let mut out = Vec::new();
    raw::encode_into(&values, &mut out);
    assert_eq!(out, data);
    let mut via_bufmut = BytesMut::new();
    raw::put_slice(&values, &mut via_bufmut);
    assert_eq!(&via_bufmut[..], data);
    let mut into = vec![0.0; values.len()];
    raw::decode_into(data, &mut into).expect("the length was checked by decode");
    assert!(into.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()));
    let mut summed = vec![0.0; values.len()];
    raw::add_scaled_into(data, 1.0, &mut summed).expect("the length was checked by decode");
    assert!(summed.iter().zip(&values).all(|(s, v)| s == v || (s.is_nan() && v.is_nan())));
    // One element too many is a length error, not a read past the end.
    let want = values.len() + 1;
    let err = raw::decode_into(data, &mut vec![0.0; want]).unwrap_err();
    assert_eq!(err, CodecError::Length { want, have: values.len() as u64 });
});
