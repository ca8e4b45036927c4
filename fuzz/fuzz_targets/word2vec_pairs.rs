//! The word-similarity file parser (WordSim-353 format) on arbitrary bytes: it never panics, it
//! accepts only finite scores and tab-free words, it never reports more lines than the input has,
//! and scoring the pairs against vectors of their own words gives correlations in [-1, 1] and
//! consistent counts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv::apps::word2vec::eval::{SimilarityOptions, WordPairs};
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
    let Ok(p) = WordPairs::parse(data) else { return };
    let lines = data.split(|&b| b == b'\n').count();
    assert!(!p.pairs.is_empty());
    assert!(p.pairs.len() + p.malformed_lines <= lines);
    for pair in &p.pairs {
        assert!(pair.score.is_finite());
        assert!(![&pair.a, &pair.b].iter().any(|w| w.contains(['\t', '\n'])));
    }
    let emb = embeddings(p.pairs.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]));
    let restrict = usize::from(data[0] % 80);
    for case_insensitive in [false, true] {
        let s = p.evaluate(&emb, &SimilarityOptions { restrict, case_insensitive });
        assert_eq!(s.pairs_total, p.pairs.len());
        assert_eq!(s.pairs_used + s.oov_pairs, s.pairs_total);
        assert_eq!(s.malformed_lines, p.malformed_lines);
        assert!((0.0..=1.0).contains(&s.coverage));
        for r in [s.spearman, s.pearson].into_iter().flatten() {
            assert!((-1.0..=1.0).contains(&r), "correlation {r}");
        }
    }
});
