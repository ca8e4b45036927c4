//! The word2vec vectors reader, text and binary, on arbitrary bytes: it never panics, and whatever
//! it accepts writes back in either format and reads again to the same words and values (bit for
//! bit; NaN as NaN, since the text format keeps no NaN payload).

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv::apps::word2vec::vectors::{self, Embeddings, Format};

fn same(a: &Embeddings, b: &Embeddings) -> bool {
    a.words == b.words
        && a.dim == b.dim
        && a.data.len() == b.data.len()
        && a.data.iter().zip(&b.data).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fuzz_target!(|data: &[u8]| {
    for format in [Format::Text, Format::Binary] {
        let Ok(e) = vectors::read(data, format) else { continue };
        assert_eq!(e.data.len(), e.words.len() * e.dim);
        assert!(e.dim >= 1 && e.dim <= vectors::MAX_DIM);
        let (mut text, mut binary) = (Vec::new(), Vec::new());
        vectors::write_text(&e, &mut text).expect("what reads is writable");
        vectors::write_binary(&e, &mut binary).expect("what reads is writable");
        let from_text = vectors::read(&text[..], Format::Text).expect("written text reads");
        let from_binary = vectors::read(&binary[..], Format::Binary).expect("written binary reads");
        assert!(same(&from_text, &e), "text round trip changed {format:?} input");
        assert!(same(&from_binary, &e), "binary round trip changed {format:?} input");
        if format == Format::Binary {
            // Bits survive the binary format, NaN payloads included.
            assert!(e.data.iter().zip(&from_binary.data).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
});
