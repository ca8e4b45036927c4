//! The analogy file parser (questions-words format) on arbitrary bytes: it never panics, every
//! question has four non-empty whitespace-free words, it never reports more lines than the input
//! has, and scoring against vectors of the file's own words gives consistent counts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv::apps::word2vec::eval::{Analogies, AnalogyOptions};
use paramserv::apps::word2vec::vectors::Embeddings;

/// Vectors for up to 64 distinct words, a pure function of the words.
fn embeddings<'a>(words: impl Iterator<Item = &'a str>) -> Embeddings {
    let mut names: Vec<String> = Vec::new();
    for w in words {
        if names.len() < 64 && !names.iter().any(|n| n == w) {
            names.push(w.to_owned());
        }
    }
    let dim = 3;
    let data = names
        .iter()
        .flat_map(|w| {
            let h = w.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            (0..dim).map(move |k| ((h >> (8 * k)) & 0xff) as f32 - 127.5)
        })
        .collect();
    Embeddings::new(names, dim, data)
}

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Analogies::parse(data) else { return };
    let lines = data.split(|&b| b == b'\n').count();
    assert!(a.total() >= 1);
    assert!(a.total() + a.sections.len() + a.malformed_lines <= lines);
    for q in a.sections.iter().flat_map(|s| &s.questions) {
        assert!(q.iter().all(|w| !w.is_empty() && !w.contains(char::is_whitespace)), "{q:?}");
    }
    let emb = embeddings(a.sections.iter().flat_map(|s| &s.questions).flatten().map(String::as_str));
    let restrict = usize::from(data[0] % 80);
    for case_insensitive in [false, true] {
        let s = a.evaluate(&emb, &AnalogyOptions { restrict, case_insensitive });
        assert_eq!((s.total, s.malformed_lines, s.sections.len()), (a.total(), a.malformed_lines, a.sections.len()));
        assert!(s.correct <= s.attempted && s.attempted <= s.total);
        assert_eq!(s.correct, s.sections.iter().map(|x| x.correct).sum::<usize>());
        assert_eq!(s.attempted, s.sections.iter().map(|x| x.attempted).sum::<usize>());
        for (x, section) in s.sections.iter().zip(&a.sections) {
            assert!(x.correct <= x.attempted && x.attempted <= x.total && x.total == section.questions.len());
        }
    }
});
