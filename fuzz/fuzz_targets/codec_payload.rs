//! Whole `paramserv_codecs` payloads, any codec id and nesting (zstd around another codec): the
//! first two bytes are the caller's element count, the rest the payload.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [lo, hi, payload @ ..] = data else { return };
    paramserv_fuzz::check_codec_payload(payload, usize::from(u16::from_le_bytes([*lo, *hi])));
});
