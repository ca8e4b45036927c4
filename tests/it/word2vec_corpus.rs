//! word2vec corpora: files read as a stream (text8-style single lines, broken bytes, bad input),
//! the vocabulary, the sentence numbering workers share, negative sampling and the synthetic
//! corpus.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use paramserv::apps::word2vec::corpus::{
    Corpus, CorpusError, CorpusStats, MAX_SENTENCE_TOKENS, NegativeSampler, READ_CHUNK, Sentence, SyntheticCorpus,
    TextReader, Vocab, keep_probabilities,
};
use proptest::prelude::*;

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("paramserv-w2v-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn corpus(&self) -> Corpus {
        Corpus::File(self.0.clone())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn all_sentences(corpus: &Corpus, vocab: &Vocab) -> Vec<Sentence> {
    corpus.sentences(vocab).unwrap().map(Result::unwrap).collect()
}

/// The splitmix64 finalizer, for seeded random inputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[test]
fn the_vocabulary_is_sorted_by_count_then_word_and_counts_every_token() {
    let text = b"the cat sat on the mat\n\nthe dog sat\n  \t \nzebra cat\n";
    let f = TempFile::new("vocab.txt", text);
    let (vocab, stats) = f.corpus().scan(2).unwrap();
    assert_eq!(vocab.words(), ["the", "cat", "sat"]);
    assert_eq!(vocab.counts(), [3, 2, 2]);
    assert_eq!((vocab.id("sat"), vocab.id("dog"), vocab.word(0), vocab.count(1)), (Some(2), None, "the", 2));
    assert_eq!((vocab.corpus_words(), vocab.retained_words(), vocab.min_count()), (11, 7, 2));
    assert_eq!(
        stats,
        CorpusStats {
            sentences: 3,
            corpus_words: 11,
            distinct_words: 7,
            invalid_utf8_tokens: 0,
            bytes: text.len() as u64
        }
    );
    // min-count 1 keeps every word; ties in byte order.
    let (all, _) = f.corpus().scan(1).unwrap();
    assert_eq!(all.words(), ["the", "cat", "sat", "dog", "mat", "on", "zebra"]);
    let s = all_sentences(&f.corpus(), &vocab);
    let ids: Vec<_> = s.iter().map(|s| (s.index, s.words.clone(), s.raw_tokens)).collect();
    assert_eq!(ids, [(0, vec![0, 1, 2, 0], 6), (1, vec![0, 2], 3), (2, vec![1], 2)]);
}

#[test]
fn a_text8_style_line_is_cut_into_sentences_of_10000_tokens_with_tokens_intact() {
    // One line of 25,003 distinct tokens of varying length, several read chunks long.
    let n = 2 * MAX_SENTENCE_TOKENS as usize + 5_003;
    let words: Vec<String> = (0..n).map(|i| format!("t{i}{}", "x".repeat(i % 37))).collect();
    let text = words.join(" ");
    assert!(text.len() > 2 * READ_CHUNK, "the line spans several chunks: {} bytes", text.len());
    let f = TempFile::new("text8.txt", text.as_bytes());
    let (vocab, stats) = f.corpus().scan(1).unwrap();
    assert_eq!((vocab.len(), stats.sentences, stats.corpus_words), (n, 3, n as u64));
    assert!(words.iter().all(|w| vocab.id(w).is_some()), "a token was cut at a chunk boundary");
    let sentences = all_sentences(&f.corpus(), &vocab);
    let sizes: Vec<_> = sentences.iter().map(|s| (s.index, s.raw_tokens, s.words.len())).collect();
    assert_eq!(sizes, [(0, 10_000, 10_000), (1, 10_000, 10_000), (2, 5_003, 5_003)]);
    let back: Vec<&str> = sentences.iter().flat_map(|s| &s.words).map(|&id| vocab.word(id)).collect();
    assert_eq!(back, words.iter().map(String::as_str).collect::<Vec<_>>());
    // An odd chunk size puts other tokens across boundaries: same vocabulary.
    let (odd, _) = TextReader::with_chunk_size("odd", text.as_bytes(), 4_093).scan(1).unwrap();
    assert_eq!(odd, vocab);
}

#[test]
fn sentence_numbers_agree_between_scan_sentences_and_filters() {
    let long: Vec<String> = (0..MAX_SENTENCE_TOKENS + 7).map(|i| format!("w{}", i % 13)).collect();
    let text = format!("a b\n\n   \nrare1 rare2\n{}\nb a a\n\t\nc", long.join(" "));
    let f = TempFile::new("numbers.txt", text.as_bytes());
    let corpus = f.corpus();
    let (vocab, stats) = corpus.scan(2).unwrap();
    let all = all_sentences(&corpus, &vocab);
    // "a b", the rare pair (all dropped, still a sentence), the long line cut in two, "b a a", "c".
    assert_eq!(stats.sentences, 6);
    assert_eq!(all.iter().map(|s| s.index).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    assert_eq!(all.iter().map(|s| u64::from(s.raw_tokens)).sum::<u64>(), stats.corpus_words);
    assert_eq!((all[1].raw_tokens, all[1].words.len()), (2, 0));
    assert_eq!((all[2].raw_tokens, all[3].raw_tokens), (MAX_SENTENCE_TOKENS, 7));
    assert!(all[5].words.is_empty(), "'c' occurs once");
    for share in 0..3 {
        let mine: Vec<Sentence> =
            corpus.sentences_filtered(&vocab, |i| i % 3 == share).unwrap().map(Result::unwrap).collect();
        let want: Vec<Sentence> = all.iter().filter(|s| s.index % 3 == share).cloned().collect();
        assert_eq!(mine, want, "share {share}");
    }
    // `keep` sees every index once, in order.
    let mut asked = Vec::new();
    assert_eq!(
        corpus
            .sentences_filtered(&vocab, |i| {
                asked.push(i);
                false
            })
            .unwrap()
            .count(),
        0
    );
    assert_eq!(asked, (0..6).collect::<Vec<_>>());
}

#[test]
fn invalid_utf8_is_decoded_lossily_and_counted() {
    let f = TempFile::new("latin1.txt", b"caf\xe9 caf\xe9 ok\n\xff\xfe ok \xe2\x80\n");
    let (vocab, stats) = f.corpus().scan(1).unwrap();
    assert_eq!((stats.invalid_utf8_tokens, stats.corpus_words, stats.sentences), (4, 6, 2));
    assert_eq!(vocab.count(vocab.id("caf\u{fffd}").unwrap()), 2);
    assert!(vocab.id("\u{fffd}\u{fffd}").is_some() && vocab.id("\u{fffd}").is_some());
    let s = all_sentences(&f.corpus(), &vocab);
    assert_eq!(
        s[0].words,
        [vocab.id("caf\u{fffd}").unwrap(), vocab.id("caf\u{fffd}").unwrap(), vocab.id("ok").unwrap()]
    );
}

#[test]
fn bad_corpora_get_errors_that_name_the_problem() {
    let empty = TempFile::new("empty.txt", b"");
    let blank = TempFile::new("blank.txt", b" \n\t\r\n \xe3\x80\x80 \n");
    for f in [&empty, &blank] {
        let e = f.corpus().scan(1).unwrap_err();
        assert!(matches!(e, CorpusError::Empty { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&f.0.display().to_string()) && msg.contains("empty"), "{msg}");
    }

    let missing = std::env::temp_dir().join("paramserv-w2v-no-such-file.txt");
    let e = Corpus::File(missing.clone()).scan(5).unwrap_err();
    assert!(matches!(&e, CorpusError::NotFound { path } if *path == missing), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()) && e.to_string().contains("not found"));
    let e = Corpus::File(missing).sentences(&Vocab::from_counts([("a", 1)], 1).unwrap()).unwrap_err();
    assert!(matches!(e, CorpusError::NotFound { .. }));

    let rare = TempFile::new("rare.txt", b"a b c b\nb c\n");
    let e = rare.corpus().scan(5).unwrap_err();
    assert!(
        matches!(&e, CorpusError::BelowMinCount { min_count: 5, most_frequent, count: 3, .. } if most_frequent == "b"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("'b', occurs 3 times") && msg.contains("--min-count of at most 3"), "{msg}");

    let e = Corpus::File(std::env::temp_dir()).scan(1).unwrap_err();
    assert!(matches!(e, CorpusError::Io { .. }), "a directory: {e:?}");
    assert!(e.to_string().contains(&std::env::temp_dir().display().to_string()));

    let e = SyntheticCorpus { sentence_length: 0, ..SyntheticCorpus::default() }.scan(1).unwrap_err();
    assert!(e.to_string().contains("sentence_length 0"), "{e}");
}

#[test]
fn keep_probabilities_match_hand_computed_values() {
    // T = 10,000 retained words, sample = 1e-3: sample·T = 10.
    let vocab = Vocab::from_counts([("a", 8_000), ("b", 1_000), ("c", 990), ("d", 10), ("rare", 2)], 5).unwrap();
    assert_eq!(vocab.retained_words(), 10_000);
    let p = keep_probabilities(&vocab, 1e-3);
    let hand = [
        ((8_000f64 / 10.0).sqrt() + 1.0) * 10.0 / 8_000.0, // 0.03661
        ((1_000f64 / 10.0).sqrt() + 1.0) * 10.0 / 1_000.0, // 0.11
        ((990f64 / 10.0).sqrt() + 1.0) * 10.0 / 990.0,
        1.0, // (1 + 1) · 1 = 2, clamped
    ];
    for (i, (got, want)) in p.iter().zip(hand).enumerate() {
        assert!((f64::from(*got) - want).abs() < 1e-6, "word {i}: {got} vs {want}");
    }
    assert!((p[1] - 0.11).abs() < 1e-6);
    assert_eq!(keep_probabilities(&vocab, 0.0), [1.0; 4]);
}

#[test]
fn negative_samples_follow_count_to_the_power() {
    let counts: Vec<(String, u64)> = (1..=40u64).map(|k| (format!("w{k}"), k * k + 3 * k)).collect();
    let vocab = Vocab::from_counts(counts, 1).unwrap();
    for power in [0.75, 0.0, 1.0, -0.5] {
        let sampler = NegativeSampler::new(&vocab, power);
        let weights: Vec<f64> = vocab.counts().iter().map(|&c| (c as f64).powf(power)).collect();
        let sum: f64 = weights.iter().sum();
        let want: Vec<f64> = weights.iter().map(|w| w / sum).collect();
        // The table is exact to about 2^-32.
        for (id, (p, w)) in sampler.probabilities().iter().zip(&want).enumerate() {
            assert!((p - w).abs() < 1e-8, "power {power}, word {id}: table {p}, want {w}");
        }
        // Draws: a chi-square statistic within 6 standard deviations of its mean (df = 39).
        let draws = 400_000u64;
        let mut seen = vec![0u64; vocab.len()];
        let mut state = 0x1234_5678 + power.to_bits();
        for _ in 0..draws {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            seen[sampler.sample(mix(state)) as usize] += 1;
        }
        let chi2: f64 = seen
            .iter()
            .zip(&want)
            .map(|(&o, &p)| {
                let e = p * draws as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        let df = (vocab.len() - 1) as f64;
        assert!(
            chi2 < df + 6.0 * (2.0 * df).sqrt(),
            "power {power}: chi-square {chi2:.1} with {df} degrees of freedom"
        );
    }
    let sampler = NegativeSampler::new(&vocab, 0.75);
    assert!([0, u64::MAX].iter().all(|&r| (sampler.sample(r) as usize) < vocab.len()));
}

/// A small synthetic corpus for debug builds.
fn small_synthetic() -> SyntheticCorpus {
    SyntheticCorpus { sentences: 5_000, ..SyntheticCorpus::default() }
}

#[test]
fn the_default_synthetic_corpus_has_about_a_million_tokens() {
    let s = SyntheticCorpus::default();
    assert!((900_000..=1_100_000).contains(&s.tokens()), "{} tokens", s.tokens());
    let groups = s.planted_groups();
    assert_eq!(groups.len(), s.groups as usize);
    assert!(groups.iter().all(|g| g.len() == s.group_size as usize));
    assert_eq!(groups[3][4], "g3_4");
    let start = Instant::now();
    let (vocab, stats) = Corpus::Synthetic(s.clone()).scan(5).unwrap();
    eprintln!("default synthetic corpus scanned in {:?}: {stats:?}", start.elapsed());
    assert_eq!((stats.sentences, stats.corpus_words), (s.sentences, s.tokens()));
    // Every planted word passes the default min-count many times over (about 160 occurrences).
    assert!(groups.iter().flatten().all(|w| vocab.id(w).is_some_and(|id| vocab.count(id) > 100)));
}

#[test]
fn the_synthetic_corpus_is_a_pure_function_of_its_settings() {
    let s = small_synthetic();
    let corpus = Corpus::Synthetic(s.clone());
    let (vocab, stats) = corpus.scan(1).unwrap();
    assert_eq!(corpus.scan(1).unwrap(), (vocab.clone(), stats));
    let all = all_sentences(&corpus, &vocab);
    assert_eq!(all, all_sentences(&Corpus::Synthetic(s.clone()), &vocab));
    assert_eq!(all.len() as u64, s.sentences);
    assert!(all.iter().all(|x| x.raw_tokens == s.sentence_length && x.words.len() == s.sentence_length as usize));
    // A share is generated alone and equals the same sentences of the whole.
    let share: Vec<Sentence> = corpus.sentences_filtered(&vocab, |i| i % 4 == 1).unwrap().map(Result::unwrap).collect();
    assert_eq!(share, all.iter().filter(|x| x.index % 4 == 1).cloned().collect::<Vec<_>>());
    // Another seed, another corpus.
    let other = Corpus::Synthetic(SyntheticCorpus { seed: s.seed + 1, ..s.clone() });
    assert_ne!(other.scan(1).unwrap().0, vocab);
}

#[test]
fn the_synthetic_corpus_written_as_text_reads_back_the_same() {
    let s = SyntheticCorpus { sentences: 2_000, ..SyntheticCorpus::default() };
    let mut text = Vec::new();
    s.write_text(&mut text).unwrap();
    let f = TempFile::new("synthetic.txt", &text);
    let (vocab, stats) = Corpus::Synthetic(s.clone()).scan(3).unwrap();
    let (file_vocab, file_stats) = f.corpus().scan(3).unwrap();
    assert_eq!((file_vocab.clone(), file_stats), (vocab.clone(), stats));
    assert_eq!(stats.bytes, text.len() as u64);
    assert_eq!(all_sentences(&f.corpus(), &vocab), all_sentences(&Corpus::Synthetic(s), &vocab));
}

#[test]
fn planted_words_appear_as_often_as_planted_and_together() {
    let s = SyntheticCorpus::default();
    let corpus = Corpus::Synthetic(s.clone());
    let (vocab, _) = corpus.scan(1).unwrap();
    // Each planted word: tokens · p / (groups · group_size) = 160, give or take sqrt(160) (Poisson).
    let expected = s.tokens() as f64 * s.topic_probability / f64::from(s.groups * s.group_size);
    for w in s.planted_groups().iter().flatten() {
        let c = vocab.count(vocab.id(w).unwrap()) as f64;
        assert!((c - expected).abs() < 5.0 * expected.sqrt(), "{w}: {c} occurrences, expected about {expected}");
    }
    // The background is Zipfian: w0 takes 1/H(5000) of the background tokens.
    let harmonic: f64 = (1..=s.background_words).map(|k| 1.0 / f64::from(k)).sum();
    let w0 = s.tokens() as f64 * (1.0 - s.topic_probability) / harmonic;
    let c0 = vocab.count(vocab.id("w0").unwrap()) as f64;
    assert!((c0 - w0).abs() < 0.03 * w0, "w0: {c0}, expected about {w0}");
    assert!(vocab.count(vocab.id("w1").unwrap()) as f64 > 0.4 * c0);
    // A sentence's planted words come from one group.
    let group_of = |id: u32| vocab.word(id).strip_prefix('g').and_then(|r| r.split('_').next()?.parse::<u32>().ok());
    for x in all_sentences(&corpus, &vocab).iter().take(2_000) {
        let mut groups: Vec<u32> = x.words.iter().filter_map(|&id| group_of(id)).collect();
        groups.dedup();
        assert!(groups.len() <= 1, "sentence {} mixes groups {groups:?}", x.index);
    }
}

#[test]
fn corpora_go_through_job_configs() {
    for corpus in
        [Corpus::File("data/text8".into()), Corpus::Synthetic(SyntheticCorpus { seed: 9, ..small_synthetic() })]
    {
        let json = serde_json::to_string(&corpus).unwrap();
        assert_eq!(serde_json::from_str::<Corpus>(&json).unwrap(), corpus, "{json}");
    }
    #[derive(serde::Deserialize)]
    struct Job {
        corpus: Corpus,
    }
    let job: Job = toml::from_str("corpus = { file = \"text8\" }").unwrap();
    assert_eq!(job.corpus, Corpus::File("text8".into()));
    let job: Job = toml::from_str("[corpus.synthetic]\nsentences = 10\nseed = 3\n").unwrap();
    assert_eq!(job.corpus, Corpus::Synthetic(SyntheticCorpus { sentences: 10, seed: 3, ..SyntheticCorpus::default() }));
    let e = toml::from_str::<Job>("[corpus.synthetic]\nsentence = 10\n").err().unwrap().to_string();
    assert!(e.contains("unknown field `sentence`"), "{e}");
}

/// A reader that hands out at most a few bytes per call, like a pipe.
struct Trickle<'a>(&'a [u8], usize);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 5 + 1;
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

proptest! {
    #[test]
    fn scan_and_sentences_match_a_naive_model(
        lines in prop::collection::vec(prop::collection::vec(0u8..12, 0..30), 0..40),
        min_count in 1u64..4,
    ) {
        // Words `v0`..`v11`, spaces and tabs between, one line per sentence.
        let text: String = lines
            .iter()
            .map(|l| l.iter().map(|w| format!("v{w}")).collect::<Vec<_>>().join(if l.len() % 2 == 0 { " " } else { " \t " }))
            .collect::<Vec<_>>()
            .join("\n");
        let mut naive: HashMap<String, u64> = HashMap::new();
        for w in lines.iter().flatten() {
            *naive.entry(format!("v{w}")).or_default() += 1;
        }
        let scanned = TextReader::new("prop", Trickle(text.as_bytes(), 0)).scan(min_count);
        let Ok((vocab, stats)) = scanned else {
            let top = naive.values().max().copied().unwrap_or(0);
            prop_assert!(top < min_count, "{:?} with top count {}", scanned.err(), top);
            return Ok(());
        };
        prop_assert_eq!(stats.sentences, lines.iter().filter(|l| !l.is_empty()).count() as u64);
        prop_assert_eq!(stats.distinct_words, naive.len() as u64);
        for (w, &c) in &naive {
            prop_assert_eq!(vocab.id(w).map(|id| vocab.count(id)), (c >= min_count).then_some(c));
        }
        let sentences: Vec<Sentence> =
            TextReader::new("prop", text.as_bytes()).sentences_filtered(&vocab, |_| true).map(Result::unwrap).collect();
        let want: Vec<Vec<u32>> = lines
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.iter().filter_map(|w| vocab.id(&format!("v{w}"))).collect())
            .collect();
        prop_assert_eq!(sentences.iter().map(|s| s.words.clone()).collect::<Vec<_>>(), want);
    }
}

/// Scans and streams a 100 MB text8-like file (one line, Zipfian words over a 250k vocabulary),
/// made once in the temporary directory. Run with
/// `cargo test --release --test it -- --ignored stress_word2vec_corpus --nocapture`.
#[test]
#[ignore]
fn stress_word2vec_corpus_text8_like_speed() {
    let path = std::env::temp_dir().join("paramserv-text8-like.txt");
    if !path.exists() {
        make_text8_like(&path);
    }
    let corpus = Corpus::File(path);
    let start = Instant::now();
    let (vocab, stats) = corpus.scan(5).unwrap();
    let scan = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let ids: usize = corpus.sentences(&vocab).unwrap().map(|s| s.unwrap().words.len()).sum();
    let stream = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let quarter: usize =
        corpus.sentences_filtered(&vocab, |i| i % 4 == 0).unwrap().map(|s| s.unwrap().words.len()).sum();
    let skip = start.elapsed().as_secs_f64();
    let mb = stats.bytes as f64 / 1e6;
    eprintln!("{stats:?}, vocabulary {}", vocab.len());
    eprintln!("scan {scan:.2}s ({:.0} MB/s, {:.1}M tokens/s)", mb / scan, stats.corpus_words as f64 / scan / 1e6);
    eprintln!("sentences {stream:.2}s ({:.0} MB/s, {ids} ids)", mb / stream);
    eprintln!("a quarter of the sentences {skip:.2}s ({quarter} ids)");
}

/// Writes about 100 MB of one line: words of 2 to 10 letters, drawn with Zipf's law.
fn make_text8_like(path: &Path) {
    use std::io::Write;
    let v = 250_000u64;
    let names: Vec<String> = (0..v)
        .map(|k| {
            let mut r = mix(k + 1);
            (0..2 + r % 9)
                .map(|_| {
                    r = mix(r);
                    char::from(b'a' + (r % 26) as u8)
                })
                .collect()
        })
        .collect();
    let cumulative: Vec<f64> = (0..v)
        .scan(0.0, |s, k| {
            *s += 1.0 / (k as f64 + 1.0);
            Some(*s)
        })
        .collect();
    let total = cumulative[cumulative.len() - 1];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let (mut state, mut bytes) = (7u64, 0usize);
    while bytes < 100_000_000 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let u = (mix(state) >> 11) as f64 / (1u64 << 53) as f64 * total;
        let w = &names[cumulative.partition_point(|&c| c < u).min(v as usize - 1)];
        out.write_all(b" ").unwrap();
        out.write_all(w.as_bytes()).unwrap();
        bytes += w.len() + 1;
    }
    out.flush().unwrap();
}
