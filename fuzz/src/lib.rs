//! Invariants shared by the fuzz targets in `fuzz_targets/`.
//!
//! A target does more than look for panics: every message a decoder accepts must encode back to
//! the bytes it came from (the encoding is canonical), and decoding that again must give the same
//! message.

use bytes::Bytes;
use paramserv::proto::wire::{Kind, Message};

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
/// back `payload` byte for byte, and decode(encode(m)) == m.
pub fn check_message(kind: Kind, request_id: u64, payload: &[u8], m: &Message) {
    assert_eq!(m.kind(), kind);
    let out = m.encode(request_id).expect("a decoded message fits a frame");
    assert_eq!(out.kind(), kind);
    assert_eq!(out.request_id(), request_id);
    let again = out.contiguous_payload();
    assert_eq!(&again[..], payload, "re-encoding {m:?} changed its bytes");
    let back = Message::decode(kind, again).expect("a re-encoded message decodes");
    assert!(bit_eq(&back, m), "decode(encode(m)) != m: {back:?} != {m:?}");
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
