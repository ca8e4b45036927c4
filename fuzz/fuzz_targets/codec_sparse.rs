//! Sparse payloads (`decode_sparse`) and key lists (`decode_keys`): whatever decodes has strictly
//! ascending keys and `keys · dim` values, and key lists re-encode to the same keys.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv_codecs::{decode_keys, decode_sparse, encode_keys};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = decode_sparse(data, 1 << 16) {
        assert!(s.keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.keys.len() * s.dim, s.rows.len());
    }
    if let Ok(keys) = decode_keys(data, 1 << 16) {
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let mut again = Vec::new();
        encode_keys(&keys, &mut again).expect("ascending keys encode");
        assert_eq!(decode_keys(&again, keys.len()).unwrap(), keys);
    }
});
