//! The word2vec corpus reader on arbitrary bytes: scanning and streaming agree with each other
//! (sentence count and numbering, token counts, per-word counts), the read chunk size changes
//! nothing, and a filter yields exactly the sentences it keeps.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paramserv::apps::word2vec::corpus::{CorpusError, Sentence, TextReader, is_separator};

fuzz_target!(|data: &[u8]| {
    let min_count = u64::from(data.first().copied().unwrap_or(0) % 4);
    let chunk = 1 + data.last().map_or(0, |b| usize::from(*b) % 29);
    let whole = TextReader::new("fuzz", data).scan(min_count);
    let pieces = TextReader::with_chunk_size("fuzz", data, chunk).scan(min_count);
    let (vocab, stats) = match (whole, pieces) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "reading {chunk} bytes at a time changed the scan");
            a
        }
        (Err(CorpusError::Empty { .. }), Err(CorpusError::Empty { .. })) => return,
        (Err(CorpusError::BelowMinCount { count: a, .. }), Err(CorpusError::BelowMinCount { count: b, .. })) => {
            assert_eq!(a, b);
            assert!(a < min_count.max(1));
            return;
        }
        (a, b) => panic!("the outcome depends on the chunk size: {a:?} vs {b:?}"),
    };
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(!vocab.is_empty() && stats.distinct_words >= vocab.len() as u64);
    for id in 0..vocab.len() as u32 {
        let w = vocab.word(id);
        assert_eq!(vocab.id(w), Some(id));
        assert!(!w.is_empty() && !w.chars().any(is_separator), "token {w:?}");
        assert!(vocab.count(id) >= vocab.min_count());
        if id > 0 {
            let (c0, c1) = (vocab.count(id - 1), vocab.count(id));
            assert!(c0 > c1 || (c0 == c1 && vocab.word(id - 1) < w), "ids {} and {id} out of order", id - 1);
        }
    }

    let all: Vec<Sentence> = TextReader::with_chunk_size("fuzz", data, chunk)
        .sentences_filtered(&vocab, |_| true)
        .map(|s| s.expect("the scan read these bytes without error"))
        .collect();
    assert_eq!(all.len() as u64, stats.sentences);
    let mut seen = vec![0u64; vocab.len()];
    let mut tokens = 0u64;
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.index, i as u64);
        assert!(s.raw_tokens >= 1 && s.words.len() <= s.raw_tokens as usize);
        tokens += u64::from(s.raw_tokens);
        for &id in &s.words {
            seen[id as usize] += 1;
        }
    }
    assert_eq!(tokens, stats.corpus_words);
    assert_eq!(seen, vocab.counts(), "streamed ids do not add up to the scanned counts");

    let odd: Vec<Sentence> =
        TextReader::new("fuzz", data).sentences_filtered(&vocab, |i| i % 2 == 1).map(|s| s.unwrap()).collect();
    let want: Vec<&Sentence> = all.iter().filter(|s| s.index % 2 == 1).collect();
    assert_eq!(odd.iter().collect::<Vec<_>>(), want);
});
