//! `paramserv_codecs` signsgd bodies (codec id `id::SIGNSGD`): the three decoders agree, none panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv_codecs::id;

fuzz_target!(|data: &[u8]| paramserv_fuzz::check_codec_body(id::SIGNSGD, data));
