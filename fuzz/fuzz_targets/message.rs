//! The payload decoder: byte 0 picks the kind, byte 1 where the payload is cut into the two
//! pieces `Message::decode_parts` reads across, and the rest is the payload.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use paramserv::proto::wire::Kind;
use paramserv_fuzz::{all_kinds, check_payload};

fuzz_target!(|data: &[u8]| {
    let [k, cut, rest @ ..] = data else { return };
    // A kind byte no message has still picks a kind, so no input is wasted.
    let kind = Kind::try_from(*k).unwrap_or_else(|_| {
        let kinds = all_kinds();
        kinds[usize::from(*k) % kinds.len()]
    });
    let payload = Bytes::copy_from_slice(rest);
    // Spread the 256 byte values over every cut point, 0..=len.
    let cut = usize::from(*cut) * (payload.len() + 1) / 256;
    check_payload(kind, &payload, cut);
});
