//! Invariants shared by the fuzz targets in `fuzz_targets/`.
//!
//! A target does more than look for panics: every message a decoder accepts must encode back to
//! the bytes it came from (the encoding is canonical; a key list may change form, see
//! [`check_message`]), and decoding that again must give the same message.

use bytes::Bytes;
use paramserv::proto::wire::{KeySet, Kind, Message};

/// Every kind the wire knows, in kind-byte order.
pub fn all_kinds() -> Vec<Kind> {
    (0..=u8::MAX).filter_map(|b| Kind::try_from(b).ok()).collect()
}

/// `==`, except that `f64` values compare by bits, so a NaN equals itself.
pub fn bit_eq(a: &Message, b: &Message) -> bool {
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    match (a, b) {
        (Message::Barrier { id, worker, values }, Message::Barrier { id: id2, worker: worker2, values: values2 }) => {
            id == id2 && worker == worker2 && bits(values) == bits(values2)
        }
        (Message::Release { id, values }, Message::Release { id: id2, values: values2 }) => {
            id == id2 && bits(values) == bits(values2)
        }
        _ => a == b,
    }
}

/// Checks a message that decoded from `payload` as `kind`: it has that kind, encoding it gives
/// back `payload` byte for byte except for a key list, and decode(encode(m)) == m.
///
/// A key list may come back in another form: the sender picks a fixed or a delta list from the
/// keys, and a delta list has more than one encoding (varints or bit packing, wider blocks than
/// needed, padding bits). Then the bytes around the key set must be unchanged, and the sender's
/// encoding must be a fixed point: encoding what it decodes to gives it back.
pub fn check_message(kind: Kind, request_id: u64, payload: &[u8], m: &Message) {
    assert_eq!(m.kind(), kind);
    let out = m.encode(request_id).expect("a decoded message fits a frame");
    assert_eq!(out.kind(), kind);
    assert_eq!(out.request_id(), request_id);
    let again = out.contiguous_payload();
    if again[..] != *payload {
        let (head, tail) = key_list_span(m).unwrap_or_else(|| panic!("re-encoding {m:?} changed its bytes"));
        assert_eq!(&again[..head], &payload[..head], "re-encoding {m:?} changed bytes before its keys");
        let (end, end_again) = (payload.len() - tail, again.len() - tail);
        assert_eq!(&again[end_again..], &payload[end..], "re-encoding {m:?} changed bytes after its keys");
    }
    let back = Message::decode(kind, again.clone()).expect("a re-encoded message decodes");
    assert!(bit_eq(&back, m), "decode(encode(m)) != m: {back:?} != {m:?}");
    let third = back.encode(request_id).expect("a decoded message fits a frame").contiguous_payload();
    assert_eq!(third, again, "the sender's encoding of {m:?} is not a fixed point");
}

/// For a pull or push naming a key list: how many payload bytes come before its key set (table,
/// step flag, step) and how many after it (a push's values).
fn key_list_span(m: &Message) -> Option<(usize, usize)> {
    let (step, after) = match m {
        Message::Pull { step, keys: KeySet::List(_), .. } => (step, 0),
        Message::Push { step, keys: KeySet::List(_), values, .. } => (step, values.len()),
        _ => return None,
    };
    Some((4 + 1 + if step.is_some() { 12 } else { 0 }, after))
}

/// Decodes `payload` as `kind` both whole and cut into two pieces at `cut`, checks the two agree,
/// and checks the round trip of what was accepted.
pub fn check_payload(kind: Kind, payload: &Bytes, cut: usize) {
    let whole = Message::decode(kind, payload.clone());
    let parts = Message::decode_parts(kind, payload.slice(..cut), payload.slice(cut..));
    match (&whole, &parts) {
        (Ok(a), Ok(b)) => assert!(bit_eq(a, b), "cut at {cut}: {b:?} != {a:?}"),
        (Err(a), Err(b)) => assert_eq!(a, b, "cut at {cut}"),
        _ => panic!("cut at {cut} changed the outcome: whole {whole:?}, in two pieces {parts:?}"),
    }
    if let Ok(m) = whole {
        check_message(kind, 0, payload, &m);
    }
}

/// Codec payloads: the three decoders of `paramserv_codecs` agree on every input. Whatever
/// `decode` accepts, `decode_into` gives bit for bit and `decode_add` into zeros gives by value;
/// whatever it refuses, the others refuse too when the length matches.
pub fn check_codec_payload(payload: &[u8], n: usize) {
    use paramserv_codecs::{decode, decode_add, decode_into, decoded_len};
    let whole = decode(payload, n);
    let mut into = vec![0.0f32; n];
    let into_result = decode_into(payload, &mut into);
    let mut added = vec![0.0f32; n];
    let add_result = decode_add(payload, 1.0, &mut added);
    match (&whole, decoded_len(payload)) {
        (Ok(values), Ok(len)) => {
            assert_eq!(values.len() as u64, len);
            if values.len() == n {
                into_result.expect("decode accepted it");
                add_result.expect("decode accepted it");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(values), bits(&into));
                assert!(values.iter().zip(&added).all(|(v, a)| v == a || (v.is_nan() && a.is_nan())));
            }
        }
        (Err(e), Ok(len)) if len == n as u64 => {
            assert_eq!(into_result.as_ref(), Err(e));
            assert!(add_result.is_err());
        }
        _ => {}
    }
}

/// A codec body from fuzz input: the first two bytes are the element count (little endian), the
/// rest is the body after the header of codec `id`, version 1. Checked with
/// [`check_codec_payload`].
pub fn check_codec_body(id: u8, data: &[u8]) {
    let [lo, hi, body @ ..] = data else { return };
    let n = usize::from(u16::from_le_bytes([*lo, *hi]));
    let mut payload = vec![id, 1];
    let mut v = n as u64;
    while v >= 0x80 {
        payload.push(v as u8 | 0x80);
        v >>= 7;
    }
    payload.push(v as u8);
    payload.extend_from_slice(body);
    check_codec_payload(&payload, n);
}
