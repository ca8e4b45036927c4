//! `paramserv_codecs` randomk bodies (codec id `id::RANDOMK`): the three decoders agree, none panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv_codecs::id;

fuzz_target!(|data: &[u8]| paramserv_fuzz::check_codec_body(id::RANDOMK, data));
