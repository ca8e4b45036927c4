//! The data side of word2vec: corpora read as a stream of sentences, the vocabulary, subsampling,
//! the negative-sampling distribution, and a seeded synthetic corpus with planted word groups.
//!
//! Conventions follow gensim (`LineSentence`, `Word2Vec.build_vocab`), which the trainer is
//! compared with, and the original word2vec tool where the two agree:
//!
//! | what | here | gensim | original tool |
//! |---|---|---|---|
//! | sentence | one line (`\n`); a line of more than [`MAX_SENTENCE_TOKENS`] tokens is cut into sentences of that many | same (`LineSentence`, `MAX_WORDS_IN_BATCH`) | 1,000 kept words |
//! | tokens | split on whitespace as Python's `str.split()` (Unicode `White_Space` plus U+001C..U+001F) | same | `' '`, `\t`, `\n` |
//! | end of line | no token | no token | a `</s>` token |
//! | vocabulary | count ≥ `min_count`, most frequent first, ties by word | same (ties unordered) | same, `</s>` first |
//! | out-of-vocabulary tokens | dropped from the sentence, counted in its `raw_tokens` | same | same |
//! | subsampling | [`keep_probabilities`] | same formula | same formula |
//! | negatives | count^0.75, alias table, O(1) | count^0.75, cumulative table, O(log V) | count^0.75, 10^8-entry table |
//!
//! Files are read in chunks ([`READ_CHUNK`]) through one buffer that only ever holds a chunk and
//! the token in progress, so a 100 MB single-line file (text8) needs no more memory than a small
//! one. Tokens are looked up as `&str` slices of that buffer: the only allocations per token are
//! a new word's during [`Corpus::scan`] and the decoding of a token with invalid UTF-8.
//!
//! What it refuses to do: no lowercasing, no punctuation handling, no Unicode normalization
//! (tokens are exactly the bytes between separators, decoded as UTF-8 with invalid sequences
//! replaced by U+FFFD and counted); no token longer than [`MAX_TOKEN_BYTES`] (the file is not
//! text, and memory would be unbounded); no shuffling (sentences come in file order, numbered from
//! 0; which worker trains on which is [`crate::apps::partition`]'s business); no compressed
//! input (pass any decompressing [`Read`] to [`TextReader`]).
//!
//! Design decision: one pass per use. [`Corpus::scan`] reads everything once for the vocabulary,
//! and [`Corpus::sentences_filtered`] reads again for each share of sentences, instead of caching
//! the corpus as ids; the cost is a tokenizing pass per read, the gain that no corpus has to fit
//! in memory and that a worker holds only the ids of its own share.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::rng::SplitMix64;

/// Most tokens in one sentence: longer lines are cut (gensim's `MAX_WORDS_IN_BATCH`).
pub const MAX_SENTENCE_TOKENS: u32 = 10_000;

/// Longest token, in bytes, a text corpus may have; a longer one is a [`CorpusError::TokenTooLong`].
pub const MAX_TOKEN_BYTES: usize = 1 << 20;

/// Bytes asked of the reader at a time.
pub const READ_CHUNK: usize = 256 << 10;

/// The exponent of the negative-sampling distribution (count^0.75) of the original tool and gensim.
pub const DEFAULT_NEGATIVE_POWER: f64 = 0.75;

/// Errors of reading a corpus or building its vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The corpus file does not exist.
    #[error("corpus file {} not found", path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// Reading (or, for [`SyntheticCorpus::write_text`], writing) failed.
    #[error("reading corpus {corpus}: {source}")]
    Io {
        /// The corpus (a file's path).
        corpus: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The corpus has no token at all.
    #[error("corpus {corpus} is empty: it has no words (tokens separated by whitespace)")]
    Empty {
        /// The corpus.
        corpus: String,
    },
    /// Every word is rarer than `min_count`.
    #[error(
        "no word of corpus {corpus} occurs {min_count} times or more (the most frequent, '{most_frequent}', occurs \
         {count} times): use a --min-count of at most {count}"
    )]
    BelowMinCount {
        /// The corpus.
        corpus: String,
        /// The threshold asked for.
        min_count: u64,
        /// The most frequent word.
        most_frequent: String,
        /// Its count.
        count: u64,
    },
    /// A token is longer than [`MAX_TOKEN_BYTES`].
    #[error("corpus {corpus} has a token of more than {max} bytes at byte {offset}: is it a text file?")]
    TokenTooLong {
        /// The corpus.
        corpus: String,
        /// Where the token starts, in bytes from the start of the input.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// More distinct words than `u32` ids can number.
    #[error("corpus {corpus} has {words} distinct words above min-count, more than 2^32 ids can number")]
    TooManyWords {
        /// The corpus.
        corpus: String,
        /// Distinct words that would be in the vocabulary.
        words: usize,
    },
    /// A setting of a [`SyntheticCorpus`] is out of range.
    #[error("invalid synthetic corpus: {field} {detail}")]
    InvalidSynthetic {
        /// The setting.
        field: &'static str,
        /// Its value and what it must be.
        detail: String,
    },
}

/// A `Result` with a [`CorpusError`].
pub type Result<T, E = CorpusError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Vocabulary

/// The words of a corpus that occur at least `min_count` times, with their counts. Ids are
/// `0..len()`, the most frequent word first, ties broken by the word (byte order), so the same
/// counts give the same ids on every node. Never empty.
#[derive(Clone, PartialEq)]
pub struct Vocab {
    words: Vec<String>,
    counts: Vec<u64>,
    ids: HashMap<WordKey, u32>,
    corpus_words: u64,
    retained_words: u64,
    min_count: u64,
}

impl Vocab {
    /// The vocabulary of words counted `counts` (a word given twice has its counts added), keeping
    /// those with a count of at least `min_count` (0 acts as 1: a word never seen is never kept).
    pub fn from_counts<W: Into<String>>(counts: impl IntoIterator<Item = (W, u64)>, min_count: u64) -> Result<Self> {
        let mut merged: HashMap<String, u64> = HashMap::new();
        for (w, c) in counts {
            let e = merged.entry(w.into()).or_default();
            *e = e.saturating_add(c);
        }
        Self::build(merged.into_iter().collect(), min_count, "given as counts")
    }

    /// Builds the vocabulary of `counts` (distinct words) for the corpus named `corpus`.
    fn build(counts: Vec<(String, u64)>, min_count: u64, corpus: &str) -> Result<Self> {
        let corpus_words = counts.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c));
        if corpus_words == 0 {
            return Err(CorpusError::Empty { corpus: corpus.into() });
        }
        let min = min_count.max(1);
        let (mut kept, dropped): (Vec<_>, Vec<_>) = counts.into_iter().partition(|(_, c)| *c >= min);
        if kept.is_empty() {
            let (most_frequent, count) = dropped
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .expect("some word has a count: corpus_words > 0");
            return Err(CorpusError::BelowMinCount { corpus: corpus.into(), min_count, most_frequent, count });
        }
        if u32::try_from(kept.len()).is_err() {
            return Err(CorpusError::TooManyWords { corpus: corpus.into(), words: kept.len() });
        }
        // Words are distinct, so the order is total and an unstable sort is deterministic.
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (words, counts): (Vec<String>, Vec<u64>) = kept.into_iter().unzip();
        let ids = words.iter().enumerate().map(|(i, w)| (WordKey::new(w), i as u32)).collect();
        let retained_words = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
        Ok(Self { words, counts, ids, corpus_words, retained_words, min_count: min })
    }

    /// Number of words (at least 1).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Always false: a vocabulary has at least one word.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Word `id`.
    ///
    /// # Panics
    /// If `id >= len()`.
    pub fn word(&self, id: u32) -> &str {
        &self.words[id as usize]
    }

    /// How often word `id` occurs in the corpus.
    ///
    /// # Panics
    /// If `id >= len()`.
    pub fn count(&self, id: u32) -> u64 {
        self.counts[id as usize]
    }

    /// The id of `word`, if it is in the vocabulary.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(&WordKey::new(word)).copied()
    }

    /// All words, by id (most frequent first).
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// All counts, by id (descending).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Tokens of the corpus, rare words included (gensim's `corpus_total_words`; the original
    /// tool's "words in train file" minus its `</s>` tokens).
    pub fn corpus_words(&self) -> u64 {
        self.corpus_words
    }

    /// Tokens of vocabulary words: the sum of [`Self::counts`] (gensim's `retain_total`, the
    /// original tool's `train_words`), the total subsampling is relative to.
    pub fn retained_words(&self) -> u64 {
        self.retained_words
    }

    /// The threshold the vocabulary was built with (at least 1).
    pub fn min_count(&self) -> u64 {
        self.min_count
    }
}

impl fmt::Debug for Vocab {
    /// The sizes and the most frequent words, not the whole table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top: Vec<_> = self.words.iter().zip(&self.counts).take(8).collect();
        f.debug_struct("Vocab")
            .field("len", &self.words.len())
            .field("corpus_words", &self.corpus_words)
            .field("retained_words", &self.retained_words)
            .field("min_count", &self.min_count)
            .field("most_frequent", &top)
            .finish_non_exhaustive()
    }
}

/// Bytes of a word kept in place in a [`WordKey`].
const INLINE_WORD: usize = 22;

/// A word as a hash-map key: up to [`INLINE_WORD`] bytes in place, longer ones on the heap.
/// Comparing a key in place costs no pointer to follow, which in a large vocabulary is a cache
/// miss and was most of a lookup's time; building one for a lookup costs no allocation.
#[derive(Clone, Debug)]
enum WordKey {
    Inline(u8, [u8; INLINE_WORD]),
    Heap(Box<str>),
}

impl WordKey {
    fn new(word: &str) -> Self {
        match u8::try_from(word.len()) {
            Ok(len) if word.len() <= INLINE_WORD => {
                let mut b = [0; INLINE_WORD];
                b[..word.len()].copy_from_slice(word.as_bytes());
                Self::Inline(len, b)
            }
            _ => Self::Heap(word.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline(len, b) => &b[..usize::from(*len)],
            Self::Heap(s) => s.as_bytes(),
        }
    }

    fn into_string(self) -> String {
        match self {
            // The bytes are a whole `&str`'s, so nothing is replaced.
            Self::Inline(..) => String::from_utf8_lossy(self.as_bytes()).into_owned(),
            Self::Heap(s) => s.into(),
        }
    }
}

impl PartialEq for WordKey {
    fn eq(&self, other: &Self) -> bool {
        // The length decides the variant; unused inline bytes are zeros.
        match (self, other) {
            (Self::Inline(a, x), Self::Inline(b, y)) => a == b && x == y,
            (Self::Heap(x), Self::Heap(y)) => x == y,
            _ => false,
        }
    }
}

impl Eq for WordKey {}

impl Hash for WordKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

/// What one pass over a corpus saw.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Serialize)]
pub struct CorpusStats {
    /// Sentences (non-empty lines, long lines counting once per cut piece); also the number of
    /// [`Sentence`]s that [`Corpus::sentences`] yields and one more than the last index.
    pub sentences: u64,
    /// Tokens, rare words included.
    pub corpus_words: u64,
    /// Distinct tokens, rare words included.
    pub distinct_words: u64,
    /// Tokens that had bytes that are not UTF-8 (decoded with U+FFFD in their place).
    pub invalid_utf8_tokens: u64,
    /// Bytes read (for the synthetic corpus: the bytes of [`SyntheticCorpus::write_text`]'s text).
    pub bytes: u64,
}

/// One sentence of a corpus as vocabulary ids.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Sentence {
    /// Its number in the corpus, from 0, counted as [`Corpus::scan`] counts (skipped sentences
    /// included).
    pub index: u64,
    /// Ids of its vocabulary words, in order; other tokens are dropped.
    pub words: Vec<u32>,
    /// Tokens read for it, dropped ones included (at most [`MAX_SENTENCE_TOKENS`]).
    pub raw_tokens: u32,
}

// ---------------------------------------------------------------------------------------------
// Corpora

/// Where sentences come from. In a job config it reads `corpus = { file = "text8" }` or
/// `[corpus.synthetic]` with [`SyntheticCorpus`]'s settings (all optional).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Corpus {
    /// A plain-text file, one sentence per line (or one huge line, like text8), UTF-8.
    File(PathBuf),
    /// The built-in seeded corpus with planted word groups.
    Synthetic(SyntheticCorpus),
}

impl Default for Corpus {
    /// The default synthetic corpus.
    fn default() -> Self {
        Self::Synthetic(SyntheticCorpus::default())
    }
}

impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Synthetic(s) => write!(f, "{s}"),
        }
    }
}

impl Corpus {
    /// Reads the whole corpus once: the vocabulary of words seen at least `min_count` times and
    /// what the pass saw.
    pub fn scan(&self, min_count: u64) -> Result<(Vocab, CorpusStats)> {
        match self {
            Self::File(path) => self.open(path)?.scan(min_count),
            Self::Synthetic(s) => s.scan(min_count),
        }
    }

    /// Every sentence, in corpus order, as ids of `vocab`.
    pub fn sentences<'v>(&self, vocab: &'v Vocab) -> Result<Sentences<'v, impl FnMut(u64) -> bool>> {
        self.sentences_filtered(vocab, |_| true)
    }

    /// The sentences whose index `keep` accepts, in corpus order, as ids of `vocab`. `keep` is
    /// called exactly once per sentence, with increasing indices, before the sentence is read; a
    /// skipped sentence is tokenized (to find where it ends) but neither decoded nor looked up,
    /// and a skipped synthetic sentence is not generated.
    pub fn sentences_filtered<'v, F: FnMut(u64) -> bool>(&self, vocab: &'v Vocab, keep: F) -> Result<Sentences<'v, F>> {
        let inner = match self {
            Self::File(path) => SentencesInner::Text(self.open(path)?.sentences_filtered(vocab, keep)),
            Self::Synthetic(s) => SentencesInner::Synthetic(s.sentences_filtered(vocab, keep)?),
        };
        Ok(Sentences { inner })
    }

    fn open(&self, path: &Path) -> Result<TextReader<File>> {
        match File::open(path) {
            Ok(f) => Ok(TextReader::new(self.to_string(), f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CorpusError::NotFound { path: path.to_owned() }),
            Err(source) => Err(CorpusError::Io { corpus: self.to_string(), source }),
        }
    }
}

/// The sentences of a [`Corpus`], read as they are needed; see [`Corpus::sentences_filtered`].
/// After an error it yields nothing more.
pub struct Sentences<'v, F> {
    inner: SentencesInner<'v, F>,
}

enum SentencesInner<'v, F> {
    Text(TextSentences<'v, File, F>),
    Synthetic(SyntheticSentences<F>),
}

impl<F: FnMut(u64) -> bool> Iterator for Sentences<'_, F> {
    type Item = Result<Sentence>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            SentencesInner::Text(s) => s.next(),
            SentencesInner::Synthetic(s) => s.next(),
        }
    }
}

impl<F> fmt::Debug for Sentences<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, next) = match &self.inner {
            SentencesInner::Text(s) => ("text", s.reader.sentences),
            SentencesInner::Synthetic(s) => ("synthetic", s.next),
        };
        f.debug_struct("Sentences").field("kind", &kind).field("next_index", &next).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// Byte classes: part of a token, a separator, the line end, or the lead byte of a multi-byte
/// UTF-8 character that may be whitespace.
const TOKEN: u8 = 0;
const SPACE: u8 = 1;
const NEWLINE: u8 = 2;
const WIDE: u8 = 3;

const CLASS: [u8; 256] = {
    let mut t = [TOKEN; 256];
    let mut b = 0x09;
    while b <= 0x0d {
        t[b] = SPACE;
        b += 1;
    }
    let mut b = 0x1c;
    while b <= 0x1f {
        t[b] = SPACE;
        b += 1;
    }
    t[b' ' as usize] = SPACE;
    t[b'\n' as usize] = NEWLINE;
    t[0xc2] = WIDE;
    t[0xe1] = WIDE;
    t[0xe2] = WIDE;
    t[0xe3] = WIDE;
    t
};

/// Whether `c` separates tokens: Python's `str.isspace()`, which gensim's `str.split()` uses,
/// that is Unicode `White_Space` plus the separators U+001C..U+001F.
pub fn is_separator(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// What the bytes at a [`WIDE`] lead byte are.
#[derive(Debug, Eq, PartialEq)]
enum Wide {
    /// A whitespace character of this many bytes.
    Space(usize),
    /// Something else (a lead byte is never part of an earlier character, so a whitespace
    /// character encoded here is one even after invalid bytes).
    Other,
    /// A proper prefix of a whitespace character: more bytes decide.
    NeedMore,
}

/// Reads the bytes at a [`WIDE`] lead byte (`b[0]`).
fn wide(b: &[u8]) -> Wide {
    match b {
        [0xc2] | [0xe1] | [0xe1, 0x9a] | [0xe2] | [0xe2, 0x80 | 0x81] | [0xe3] | [0xe3, 0x80] => Wide::NeedMore,
        // U+0085, U+00A0
        [0xc2, 0x85 | 0xa0, ..] => Wide::Space(2),
        // U+1680
        [0xe1, 0x9a, 0x80, ..] => Wide::Space(3),
        // U+2000..U+200A, U+2028, U+2029, U+202F
        [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..] => Wide::Space(3),
        // U+205F
        [0xe2, 0x81, 0x9f, ..] => Wide::Space(3),
        // U+3000
        [0xe3, 0x80, 0x80, ..] => Wide::Space(3),
        _ => Wide::Other,
    }
}

/// What the tokenizer found next.
enum Event {
    /// A token: its bytes in the buffer.
    Token(Range<usize>),
    /// A `\n`.
    LineEnd,
    /// The end of the input.
    Eof,
}

/// Sentences of plain text read from any byte stream (a file, a decompressor, a byte slice):
/// the tokenizer behind [`Corpus::File`], public for other sources.
///
/// Lines are sentences; empty and whitespace-only lines are no sentence; a line of more than
/// [`MAX_SENTENCE_TOKENS`] tokens is cut into sentences of that many. Sentences are numbered from
/// 0 in the order they are read.
pub struct TextReader<R> {
    name: String,
    reader: R,
    /// Bytes `pos..end` are read and not yet consumed.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    chunk: usize,
    /// Input offset of `buf[0]`.
    offset: u64,
    bytes: u64,
    sentences: u64,
    tokens: u64,
    invalid: u64,
    max_sentence: u32,
}

impl<R: Read> TextReader<R> {
    /// Reads `reader`, named `name` in error messages, [`READ_CHUNK`] bytes at a time.
    pub fn new(name: impl Into<String>, reader: R) -> Self {
        Self::with_chunk_size(name, reader, READ_CHUNK)
    }

    /// Reads `reader` asking for `chunk` bytes at a time (at least 1): a small chunk puts tokens
    /// across chunk boundaries, for tests.
    pub fn with_chunk_size(name: impl Into<String>, reader: R, chunk: usize) -> Self {
        Self {
            name: name.into(),
            reader,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            eof: false,
            chunk: chunk.max(1),
            offset: 0,
            bytes: 0,
            sentences: 0,
            tokens: 0,
            invalid: 0,
            max_sentence: MAX_SENTENCE_TOKENS,
        }
    }

    /// Reads the next sentence, calling `on_token` with each of its tokens (invalid UTF-8
    /// replaced by U+FFFD). Returns its number of tokens, or `None` at the end of the input.
    pub fn next_sentence(&mut self, on_token: impl FnMut(&str)) -> Result<Option<u32>> {
        self.read_sentence(Some(on_token))
    }

    /// Reads past the next sentence without decoding its tokens. Returns its number of tokens,
    /// or `None` at the end of the input.
    pub fn skip_sentence(&mut self) -> Result<Option<u32>> {
        self.read_sentence(None::<fn(&str)>)
    }

    /// Reads the rest of the input and builds its vocabulary (see [`Corpus::scan`]).
    pub fn scan(mut self, min_count: u64) -> Result<(Vocab, CorpusStats)> {
        let mut counts: HashMap<WordKey, u64> = HashMap::new();
        let mut count = |w: &str| *counts.entry(WordKey::new(w)).or_default() += 1;
        while self.next_sentence(&mut count)?.is_some() {}
        let stats = CorpusStats {
            sentences: self.sentences,
            corpus_words: self.tokens,
            distinct_words: counts.len() as u64,
            invalid_utf8_tokens: self.invalid,
            bytes: self.bytes,
        };
        let counts = counts.into_iter().map(|(w, c)| (w.into_string(), c)).collect();
        Ok((Vocab::build(counts, min_count, &self.name)?, stats))
    }

    /// The sentences of the rest of the input whose index `keep` accepts, as ids of `vocab` (see
    /// [`Corpus::sentences_filtered`]).
    pub fn sentences_filtered<F: FnMut(u64) -> bool>(self, vocab: &Vocab, keep: F) -> TextSentences<'_, R, F> {
        TextSentences { reader: self, vocab, keep, done: false }
    }

    /// Sentences read or skipped so far: the index of the next one.
    pub fn sentences_read(&self) -> u64 {
        self.sentences
    }

    /// Tokens read so far, in read and skipped sentences.
    pub fn tokens_read(&self) -> u64 {
        self.tokens
    }

    /// Tokens of read (not skipped) sentences that had invalid UTF-8.
    pub fn invalid_utf8_tokens(&self) -> u64 {
        self.invalid
    }

    /// Bytes taken from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    fn read_sentence(&mut self, mut on_token: Option<impl FnMut(&str)>) -> Result<Option<u32>> {
        let mut raw = 0u32;
        loop {
            match self.next_event()? {
                Event::Token(r) => {
                    raw += 1;
                    self.tokens += 1;
                    if let Some(f) = on_token.as_mut() {
                        let bytes = &self.buf[r];
                        match std::str::from_utf8(bytes) {
                            Ok(s) => f(s),
                            Err(_) => {
                                self.invalid += 1;
                                f(&String::from_utf8_lossy(bytes));
                            }
                        }
                    }
                    if raw >= self.max_sentence {
                        break;
                    }
                }
                Event::LineEnd if raw > 0 => break,
                Event::LineEnd => {}
                Event::Eof if raw > 0 => break,
                Event::Eof => return Ok(None),
            }
        }
        self.sentences += 1;
        Ok(Some(raw))
    }

    /// The next token, line end or end of input.
    fn next_event(&mut self) -> Result<Event> {
        if let Some(e) = self.skip_separators(true)? {
            return Ok(e);
        }
        // A token starts at `pos`; `len` of its bytes are known.
        let mut len = 0;
        loop {
            let mut i = self.pos + len;
            while i < self.end && CLASS[usize::from(self.buf[i])] == TOKEN {
                i += 1;
            }
            len = i - self.pos;
            if i < self.end {
                if CLASS[usize::from(self.buf[i])] != WIDE {
                    break;
                }
                match wide(&self.buf[i..self.end]) {
                    Wide::Space(_) => break,
                    Wide::NeedMore if !self.eof => {
                        self.refill()?;
                    }
                    _ => len += 1,
                }
            } else if !self.refill()? {
                break;
            }
        }
        if len > MAX_TOKEN_BYTES {
            return Err(self.too_long());
        }
        let start = self.pos;
        self.pos += len;
        Ok(Event::Token(start..start + len))
    }

    /// Whether a sentence follows: skips separators and line ends up to the next token, which
    /// changes no sentence since line ends before a sentence's first token end nothing.
    fn sentence_follows(&mut self) -> Result<bool> {
        Ok(self.skip_separators(false)?.is_none())
    }

    /// Skips separators (line ends too unless `stop_at_line_end`): `None` if a token starts at
    /// `pos`, else the line end (consumed) or the end of the input.
    fn skip_separators(&mut self, stop_at_line_end: bool) -> Result<Option<Event>> {
        loop {
            if self.pos == self.end && !self.refill()? {
                return Ok(Some(Event::Eof));
            }
            match CLASS[usize::from(self.buf[self.pos])] {
                SPACE => self.pos += 1,
                NEWLINE => {
                    self.pos += 1;
                    if stop_at_line_end {
                        return Ok(Some(Event::LineEnd));
                    }
                }
                WIDE => match wide(&self.buf[self.pos..self.end]) {
                    Wide::Space(n) => self.pos += n,
                    // Refilling keeps `pos..end` and reads more, or hits the end of the input.
                    Wide::NeedMore if !self.eof => {
                        self.refill()?;
                    }
                    _ => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
    }

    /// Keeps the unconsumed bytes `pos..end` and reads up to a chunk more after them. False at
    /// the end of the input.
    fn refill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let kept = self.end - self.pos;
        if kept > MAX_TOKEN_BYTES {
            return Err(self.too_long());
        }
        // Room for a chunk after the kept bytes; shifting them to the front only when needed keeps
        // the copying linear when a reader hands out little at a time.
        if self.buf.len() - self.end < self.chunk {
            self.buf.copy_within(self.pos..self.end, 0);
            self.offset += self.pos as u64;
            (self.pos, self.end) = (0, kept);
            if self.buf.len() < kept + self.chunk {
                self.buf.resize(kept + 2 * self.chunk, 0);
            }
        }
        let room = self.end..self.end + self.chunk;
        loop {
            match self.reader.read(&mut self.buf[room.clone()]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    // A reader claiming more than it was given is clipped, not trusted.
                    let n = n.min(self.chunk);
                    self.end += n;
                    self.bytes += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(CorpusError::Io { corpus: self.name.clone(), source }),
            }
        }
    }

    fn too_long(&self) -> CorpusError {
        CorpusError::TokenTooLong {
            corpus: self.name.clone(),
            offset: self.offset + self.pos as u64,
            max: MAX_TOKEN_BYTES,
        }
    }
}

impl<R> fmt::Debug for TextReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextReader")
            .field("name", &self.name)
            .field("bytes", &self.bytes)
            .field("sentences", &self.sentences)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// The sentences of a [`TextReader`] as vocabulary ids; see [`TextReader::sentences_filtered`].
/// After an error it yields nothing more.
pub struct TextSentences<'v, R, F> {
    reader: TextReader<R>,
    vocab: &'v Vocab,
    keep: F,
    done: bool,
}

impl<R: Read, F: FnMut(u64) -> bool> Iterator for TextSentences<'_, R, F> {
    type Item = Result<Sentence>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            // Known before asking `keep`, so that it is asked exactly once per sentence.
            match self.reader.sentence_follows() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            let index = self.reader.sentences;
            let read = if (self.keep)(index) {
                let mut words = Vec::new();
                let vocab = self.vocab;
                let found = self.reader.next_sentence(|w| {
                    if let Some(id) = vocab.id(w) {
                        words.push(id);
                    }
                });
                found.map(|r| r.map(|raw| Some((raw, words))))
            } else {
                self.reader.skip_sentence().map(|r| r.map(|_| None))
            };
            match read {
                Ok(Some(Some((raw_tokens, words)))) => return Some(Ok(Sentence { index, words, raw_tokens })),
                Ok(Some(None)) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl<R, F> fmt::Debug for TextSentences<'_, R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextSentences").field("reader", &self.reader).field("done", &self.done).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Subsampling and negative sampling

/// Per word id, the probability of keeping an occurrence when subsampling frequent words with
/// threshold `sample`: `(sqrt(f / (sample·T)) + 1) · sample·T / f`, at most 1, where `f` is the
/// word's count and `T` the vocabulary's [`Vocab::retained_words`]. This is the original tool's
/// formula, and gensim's (`Word2Vec.prepare_vocab`, which also reads a `sample` of 1 or more as
/// the count `sample · (3 + √5) / 2` that plays the part of `sample·T`; so does this).
/// A `sample` of 0, negative, NaN or infinite disables subsampling: every probability is 1.
pub fn keep_probabilities(vocab: &Vocab, sample: f64) -> Vec<f32> {
    if !(sample > 0.0 && sample.is_finite()) {
        return vec![1.0; vocab.len()];
    }
    let threshold = if sample < 1.0 {
        sample * vocab.retained_words() as f64
    } else {
        (sample * (3.0 + 5f64.sqrt()) / 2.0).floor()
    };
    vocab
        .counts()
        .iter()
        .map(|&c| {
            let f = c as f64;
            (((f / threshold).sqrt() + 1.0) * threshold / f).min(1.0) as f32
        })
        .collect()
}

/// Draws ids from a fixed discrete distribution in O(1) with Vose's alias method: bin `i` of `n`
/// keeps `i` with probability `threshold / 2^32` and gives `alias` otherwise.
#[derive(Clone, Debug)]
struct AliasTable {
    bins: Vec<Bin>,
}

#[derive(Clone, Copy, Debug)]
struct Bin {
    threshold: u32,
    alias: u32,
}

impl AliasTable {
    /// The table of `weights` (finite, at least 0, some above 0, fewer than 2^32): only
    /// correctly rounded arithmetic, so every machine builds the same table.
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let sum: f64 = weights.iter().sum();
        debug_assert!(n > 0 && u32::try_from(n).is_ok() && sum > 0.0 && sum.is_finite());
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
        let mut bins = vec![Bin { threshold: u32::MAX, alias: 0 }; n];
        let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..n as u32).partition(|&i| scaled[i as usize] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            let p = scaled[s as usize];
            bins[s as usize] = Bin { threshold: (p * 4_294_967_296.0).round() as u32, alias: l };
            scaled[l as usize] = (scaled[l as usize] + p) - 1.0;
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left is full up to rounding: it keeps itself.
        for i in small.into_iter().chain(large) {
            bins[i as usize] = Bin { threshold: u32::MAX, alias: i };
        }
        // A threshold that rounded up to 2^32 saturates: make those bins keep themselves too.
        for (i, b) in bins.iter_mut().enumerate() {
            if b.threshold == u32::MAX {
                b.alias = i as u32;
            }
        }
        Self { bins }
    }

    /// An id, from 64 random bits: the high part of `random · n` picks the bin, the low part is
    /// the uniform position inside it.
    fn sample(&self, random: u64) -> u32 {
        let m = u128::from(random) * self.bins.len() as u128;
        let (i, frac) = ((m >> 64) as usize, (m as u64 >> 32) as u32);
        let bin = self.bins[i];
        if frac < bin.threshold { i as u32 } else { bin.alias }
    }

    /// The exact probability of each id under [`Self::sample`] (up to the 2^-64 granularity of
    /// the random input).
    fn probabilities(&self) -> Vec<f64> {
        let mut mass = vec![0u64; self.bins.len()];
        for (i, b) in self.bins.iter().enumerate() {
            mass[i] += u64::from(b.threshold);
            mass[b.alias as usize] += (1u64 << 32) - u64::from(b.threshold);
        }
        let total = self.bins.len() as f64 * 4_294_967_296.0;
        mass.into_iter().map(|m| m as f64 / total).collect()
    }
}

/// The noise distribution of negative sampling: word `i` with probability proportional to
/// `count(i)^power`, drawn in O(1) from one `u64` (Vose's alias method).
#[derive(Clone, Debug)]
pub struct NegativeSampler {
    table: AliasTable,
    power: f64,
}

impl NegativeSampler {
    /// The distribution of `vocab`'s counts raised to `power` ([`DEFAULT_NEGATIVE_POWER`] in the
    /// original tool and gensim; 0 is uniform, 1 the unigram distribution).
    ///
    /// # Panics
    /// If `power` is not finite.
    pub fn new(vocab: &Vocab, power: f64) -> Self {
        assert!(power.is_finite(), "negative sampling power {power} is not a finite number");
        // count^power relative to the largest, in logarithms, so no power overflows.
        let logs: Vec<f64> = vocab.counts().iter().map(|&c| power * (c as f64).ln()).collect();
        let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logs.iter().map(|l| (l - top).exp()).collect();
        Self { table: AliasTable::new(&weights), power }
    }

    /// A word id drawn from 64 uniformly random bits.
    pub fn sample(&self, random: u64) -> u32 {
        self.table.sample(random)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.table.bins.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.table.bins.is_empty()
    }

    /// The exponent.
    pub fn power(&self) -> f64 {
        self.power
    }

    /// Per word id, the exact probability that [`Self::sample`] draws it (the table's, which
    /// matches `count^power` normalized to within about 2^-32 per word).
    pub fn probabilities(&self) -> Vec<f64> {
        self.table.probabilities()
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic corpus

/// Stream tag, so synthetic sentences share no random numbers with other uses of the seed.
const SENTENCE_STREAM: u64 = 0x7732_7663_6f72_7075;

/// Most words (background and planted) a synthetic corpus may have.
pub const MAX_SYNTHETIC_WORDS: u64 = 1 << 24;

/// A seeded corpus with planted structure, generated sentence by sentence on the fly: a pure
/// function of these settings, so every node and every call sees the same sentences, and a
/// worker generates only the sentences it trains on.
///
/// Background words `w0`, `w1`, ... follow Zipf's law with exponent 1 (`w0` most frequent).
/// Planted groups `g0_0`, `g0_1`, ..., `g1_0`, ... are sets of related words: each sentence has a
/// topic group, drawn uniformly, and each of its tokens is, with probability
/// `topic_probability`, a member of that group (uniformly), else a background word. Words of a
/// group thus share contexts and end up near each other; the background is noise shared by all.
///
/// The Zipf exponent is fixed at 1 because weights `1/(k+1)` need only correctly rounded
/// arithmetic, so the generator is bit-identical on every machine (a `powf` might not be).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticCorpus {
    /// Background words.
    pub background_words: u32,
    /// Planted groups.
    pub groups: u32,
    /// Words per group.
    pub group_size: u32,
    /// Sentences.
    pub sentences: u64,
    /// Tokens per sentence (1 to [`MAX_SENTENCE_TOKENS`]).
    pub sentence_length: u32,
    /// Probability that a token comes from the sentence's topic group.
    pub topic_probability: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for SyntheticCorpus {
    /// About a million tokens: 50,000 sentences of 20, over 5,000 background words and 50 groups
    /// of 10 words, 8% of tokens from the topic group (each planted word occurs about 160 times).
    /// Hard enough to tell training that works from training that does not in 5 epochs: with 2
    /// workers, raw f32 pushes reach a planted-group score of 1.0, `terngrad` about 0.3 (at 7% the
    /// raw score falls to about 0.8, at 5% nothing is learnt).
    fn default() -> Self {
        Self {
            background_words: 5_000,
            groups: 50,
            group_size: 10,
            sentences: 50_000,
            sentence_length: 20,
            topic_probability: 0.08,
            seed: 0x5eed_2fec,
        }
    }
}

impl fmt::Display for SyntheticCorpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synthetic ({} sentences of {}, {} background words, {} groups of {}, seed {})",
            self.sentences, self.sentence_length, self.background_words, self.groups, self.group_size, self.seed
        )
    }
}

impl SyntheticCorpus {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(CorpusError::InvalidSynthetic { field, detail });
        if self.background_words == 0 {
            return bad("background_words", "0 (must be at least 1)".into());
        }
        if self.groups == 0 {
            return bad("groups", "0 (must be at least 1)".into());
        }
        if self.group_size < 2 {
            return bad("group_size", format!("{} (must be at least 2)", self.group_size));
        }
        let words = u64::from(self.background_words) + u64::from(self.groups) * u64::from(self.group_size);
        if words > MAX_SYNTHETIC_WORDS {
            return bad("words", format!("{words} in all (must be at most {MAX_SYNTHETIC_WORDS})"));
        }
        if self.sentences == 0 {
            return bad("sentences", "0 (must be at least 1)".into());
        }
        if !(1..=MAX_SENTENCE_TOKENS).contains(&self.sentence_length) {
            return bad("sentence_length", format!("{} (must be 1 to {MAX_SENTENCE_TOKENS})", self.sentence_length));
        }
        if !(0.0..=1.0).contains(&self.topic_probability) {
            return bad("topic_probability", format!("{} (must be in [0, 1])", self.topic_probability));
        }
        Ok(())
    }

    /// Tokens in the corpus.
    pub fn tokens(&self) -> u64 {
        self.sentences.saturating_mul(u64::from(self.sentence_length))
    }

    /// The planted groups' words, group by group.
    pub fn planted_groups(&self) -> Vec<Vec<String>> {
        (0..self.groups).map(|g| (0..self.group_size).map(|j| format!("g{g}_{j}")).collect()).collect()
    }

    /// Reads the whole corpus once (see [`Corpus::scan`]).
    pub fn scan(&self, min_count: u64) -> Result<(Vocab, CorpusStats)> {
        let generator = Generator::new(self)?;
        let names = self.names();
        let mut counts = vec![0u64; names.len()];
        let mut sentence = Vec::new();
        for index in 0..self.sentences {
            generator.sentence(index, &mut sentence);
            for &w in &sentence {
                counts[w as usize] += 1;
            }
        }
        let bytes = counts.iter().zip(&names).map(|(&c, n)| c * (n.len() as u64 + 1)).sum();
        let seen: Vec<(String, u64)> = names.into_iter().zip(counts).filter(|(_, c)| *c > 0).collect();
        let stats = CorpusStats {
            sentences: self.sentences,
            corpus_words: self.tokens(),
            distinct_words: seen.len() as u64,
            invalid_utf8_tokens: 0,
            bytes,
        };
        Ok((Vocab::build(seen, min_count, &self.to_string())?, stats))
    }

    /// The sentences whose index `keep` accepts, as ids of `vocab` (see
    /// [`Corpus::sentences_filtered`]); only those are generated.
    fn sentences_filtered<F: FnMut(u64) -> bool>(&self, vocab: &Vocab, keep: F) -> Result<SyntheticSentences<F>> {
        let generator = Generator::new(self)?;
        let ids = self.names().iter().map(|n| vocab.id(n)).collect();
        Ok(SyntheticSentences { generator, ids, next: 0, keep, buf: Vec::new() })
    }

    /// Writes the corpus as text, one sentence per line and tokens separated by spaces: the file
    /// other tools (gensim) can train on, which [`Corpus::File`] reads back as the same sentences.
    pub fn write_text(&self, mut out: impl Write) -> Result<()> {
        let generator = Generator::new(self)?;
        let names = self.names();
        let (mut sentence, mut line) = (Vec::new(), Vec::new());
        for index in 0..self.sentences {
            generator.sentence(index, &mut sentence);
            line.clear();
            for &w in &sentence {
                line.extend_from_slice(names[w as usize].as_bytes());
                line.push(b' ');
            }
            *line.last_mut().expect("a sentence has at least one token: validated") = b'\n';
            out.write_all(&line).map_err(|source| CorpusError::Io { corpus: self.to_string(), source })?;
        }
        out.flush().map_err(|source| CorpusError::Io { corpus: self.to_string(), source })
    }

    /// Every word's name, by generator index: background words, then groups.
    fn names(&self) -> Vec<String> {
        let background = (0..self.background_words).map(|k| format!("w{k}"));
        background.chain(self.planted_groups().into_iter().flatten()).collect()
    }
}

/// Makes the sentences of a [`SyntheticCorpus`] as generator indices: background word `k` is
/// `k`, member `j` of group `g` is `background_words + g·group_size + j`.
#[derive(Clone, Debug)]
struct Generator {
    background: AliasTable,
    cfg: SyntheticCorpus,
}

impl Generator {
    fn new(cfg: &SyntheticCorpus) -> Result<Self> {
        cfg.validate()?;
        let weights: Vec<f64> = (0..cfg.background_words).map(|k| 1.0 / (f64::from(k) + 1.0)).collect();
        Ok(Self { background: AliasTable::new(&weights), cfg: cfg.clone() })
    }

    /// Sentence `index` into `out`.
    fn sentence(&self, index: u64, out: &mut Vec<u32>) {
        let c = &self.cfg;
        let mut rng = SplitMix64::for_item(c.seed ^ SENTENCE_STREAM, index);
        let pick = |r: u64, n: u32| ((u128::from(r) * u128::from(n)) >> 64) as u32;
        let topic = pick(rng.next_u64(), c.groups);
        let first = c.background_words + topic * c.group_size;
        out.clear();
        for _ in 0..c.sentence_length {
            let from_topic = rng.next_f64() < c.topic_probability;
            let r = rng.next_u64();
            out.push(if from_topic { first + pick(r, c.group_size) } else { self.background.sample(r) });
        }
    }
}

/// The sentences of a [`SyntheticCorpus`] as vocabulary ids.
struct SyntheticSentences<F> {
    generator: Generator,
    /// Per generator index, the vocabulary id.
    ids: Vec<Option<u32>>,
    next: u64,
    keep: F,
    buf: Vec<u32>,
}

impl<F: FnMut(u64) -> bool> Iterator for SyntheticSentences<F> {
    type Item = Result<Sentence>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.generator.cfg.sentences {
            let index = self.next;
            self.next += 1;
            if (self.keep)(index) {
                self.generator.sentence(index, &mut self.buf);
                let words = self.buf.iter().filter_map(|&w| self.ids[w as usize]).collect();
                return Some(Ok(Sentence { index, words, raw_tokens: self.generator.cfg.sentence_length }));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sentences of `bytes` as the tokenizer reads them, `chunk` bytes at a time, with
    /// sentences cut at `max` tokens; and the count of invalid tokens.
    fn tokenize(bytes: &[u8], chunk: usize, max: u32) -> (Vec<Vec<String>>, u64) {
        let mut r = TextReader::with_chunk_size("test", bytes, chunk);
        r.max_sentence = max;
        let mut out = Vec::new();
        loop {
            let mut s = Vec::new();
            match r.next_sentence(|w| s.push(w.to_owned())).unwrap() {
                Some(n) => {
                    assert_eq!(n as usize, s.len());
                    out.push(s);
                }
                None => break,
            }
        }
        assert_eq!(r.bytes_read(), bytes.len() as u64);
        (out, r.invalid_utf8_tokens())
    }

    /// The slow oracle: decode everything lossily, cut lines at `\n`, split with
    /// [`is_separator`], cut long lines.
    fn oracle(bytes: &[u8], max: u32) -> Vec<Vec<String>> {
        let text = String::from_utf8_lossy(bytes);
        let mut out = Vec::new();
        for line in text.split('\n') {
            let tokens: Vec<String> = line.split(is_separator).filter(|t| !t.is_empty()).map(String::from).collect();
            out.extend(tokens.chunks(max as usize).map(<[String]>::to_vec));
        }
        out
    }

    #[test]
    fn wide_whitespace_is_exactly_the_separators() {
        let all = || (0..=0x10_ffffu32).filter_map(char::from_u32);
        let wide_spaces: Vec<String> =
            all().filter(|&c| is_separator(c) && c.len_utf8() > 1).map(String::from).collect();
        for c in all() {
            let mut b = [0u8; 4];
            let s = c.encode_utf8(&mut b).as_bytes();
            let sep = match CLASS[usize::from(s[0])] {
                SPACE | NEWLINE => s.len() == 1,
                WIDE => {
                    // A proper prefix asks for more bytes iff it starts some whitespace character.
                    for k in 1..s.len() {
                        let starts_space = wide_spaces.iter().any(|w| w.len() > k && w.as_bytes()[..k] == s[..k]);
                        assert_eq!(wide(&s[..k]) == Wide::NeedMore, starts_space, "{k} bytes of {c:?}");
                    }
                    wide(s) == Wide::Space(s.len())
                }
                _ => false,
            };
            assert_eq!(sep, is_separator(c), "{:?} (U+{:04X})", c, c as u32);
        }
    }

    #[test]
    fn whitespace_after_invalid_bytes_still_separates() {
        // A cut-off three-byte sequence, then U+3000, then a lone continuation byte.
        let (s, invalid) = tokenize(b"a\xe2\x80\xe3\x80\x80b\x80 c\r\n\n\x1fd", 2, 100);
        assert_eq!(s, [vec!["a\u{fffd}".to_owned(), "b\u{fffd}".into(), "c".into()], vec!["d".to_owned()]]);
        assert_eq!(invalid, 2);
    }

    #[test]
    fn a_long_line_is_cut_into_sentences_of_at_most_max_tokens() {
        let (s, _) = tokenize(b"a b c d e\nf g\n", 3, 2);
        assert_eq!(s, [vec!["a", "b"], vec!["c", "d"], vec!["e"], vec!["f", "g"]]);
        // Exactly the maximum: no empty sentence after it.
        let (s, _) = tokenize(b"a b\n\nc", 1, 2);
        assert_eq!(s, [vec!["a", "b"], vec!["c"]]);
    }

    #[test]
    fn a_token_longer_than_the_limit_is_an_error_whatever_the_chunking() {
        let mut long = vec![b'x'; MAX_TOKEN_BYTES + 1];
        long.extend_from_slice(b" y");
        for chunk in [READ_CHUNK, MAX_TOKEN_BYTES + 5] {
            let mut r = TextReader::with_chunk_size("big", &long[..], chunk);
            let e = r.next_sentence(|_| {}).unwrap_err();
            assert!(matches!(e, CorpusError::TokenTooLong { offset: 0, .. }), "{e}");
        }
        long[0] = b' ';
        let mut r = TextReader::with_chunk_size("big", &long[..], 1000);
        let mut lens = Vec::new();
        assert_eq!(r.next_sentence(|w| lens.push(w.len())).unwrap(), Some(2));
        assert_eq!(lens, [MAX_TOKEN_BYTES, 1]);
    }

    #[test]
    fn vocabulary_order_and_min_count() {
        let v = Vocab::from_counts([("b", 3), ("a", 3), ("c", 5), ("rare", 1), ("b", 1)], 2).unwrap();
        assert_eq!(v.words(), ["c", "b", "a"]);
        assert_eq!(v.counts(), [5, 4, 3]);
        assert_eq!((v.id("a"), v.id("rare"), v.word(1), v.count(0)), (Some(2), None, "b", 5));
        assert_eq!((v.corpus_words(), v.retained_words(), v.len(), v.min_count()), (13, 12, 3, 2));
        let e = Vocab::from_counts([("b", 3), ("a", 3)], 4).unwrap_err();
        assert!(matches!(&e, CorpusError::BelowMinCount { most_frequent, count: 3, .. } if most_frequent == "a"));
        assert!(matches!(Vocab::from_counts([("a", 0)], 0), Err(CorpusError::Empty { .. })));
    }

    #[test]
    fn keep_probabilities_are_the_formula() {
        let v = Vocab::from_counts([("a", 900), ("b", 90), ("c", 10)], 1).unwrap();
        // sample·T = 1: p = sqrt(1/f) + 1/f.
        let p = keep_probabilities(&v, 1e-3);
        let want = [1.0 / 30.0 + 1.0 / 900.0, (1.0f64 / 90.0).sqrt() + 1.0 / 90.0, (0.1f64).sqrt() + 0.1];
        for (got, want) in p.iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-7, "{got} vs {want}");
        }
        assert!(keep_probabilities(&v, 0.0).iter().all(|&p| p == 1.0));
        assert!(keep_probabilities(&v, f64::NAN).iter().all(|&p| p == 1.0));
        // gensim's shorthand: sample 10 means a threshold count of floor(10 · 2.618) = 26.
        let p = keep_probabilities(&v, 10.0);
        assert!((f64::from(p[0]) - ((900.0f64 / 26.0).sqrt() + 1.0) * 26.0 / 900.0).abs() < 1e-7);
        assert_eq!(p[2], 1.0);
    }

    #[test]
    fn the_alias_table_has_exactly_the_weights() {
        for weights in [vec![1.0], vec![1.0, 0.0, 3.0], (1..=1000).map(|k| 1.0 / f64::from(k)).collect::<Vec<_>>()] {
            let t = AliasTable::new(&weights);
            let sum: f64 = weights.iter().sum();
            for (p, w) in t.probabilities().iter().zip(&weights) {
                assert!((p - w / sum).abs() < 1e-9, "{p} vs {}", w / sum);
            }
            // The extreme random inputs are in range.
            for r in [0, u64::MAX] {
                assert!((t.sample(r) as usize) < weights.len());
            }
        }
    }

    #[test]
    fn synthetic_generation_is_bit_stable() {
        // A change here changes every node's corpus: the generator is part of the format.
        let g = Generator::new(&SyntheticCorpus { background_words: 50, ..SyntheticCorpus::default() }).unwrap();
        let mut s = Vec::new();
        g.sentence(12_345, &mut s);
        assert_eq!(s.len(), 20);
        let again = {
            let mut t = Vec::new();
            g.clone().sentence(12_345, &mut t);
            t
        };
        assert_eq!(s, again);
    }

    /// Bytes that exercise the tokenizer: ASCII words, every kind of separator, multi-byte
    /// whitespace (whole and cut), other multi-byte characters and invalid bytes.
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            &b"a"[..],
            b"xyz",
            b" ",
            b"\t",
            b"\n",
            b"\r",
            b"\x0b\x0c\x1c\x1f",
            "\u{85}".as_bytes(),
            "\u{a0}".as_bytes(),
            "\u{1680}".as_bytes(),
            "\u{2003}".as_bytes(),
            "\u{2028}".as_bytes(),
            "\u{205f}".as_bytes(),
            "\u{3000}".as_bytes(),
            "é".as_bytes(),
            "\u{2010}".as_bytes(),
            "\u{e100}".as_bytes(),
            "日本".as_bytes(),
            b"\xe2\x80",
            b"\xe3",
            b"\xc2",
            b"\x80",
            b"\xff",
            b"\xed\xa0\x80",
        ]);
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn the_tokenizer_matches_the_lossy_split_oracle(bytes in pieces(), chunk in 1usize..9, max in 1u32..6) {
            let (got, invalid) = tokenize(&bytes, chunk, max);
            prop_assert_eq!(&got, &oracle(&bytes, max));
            // No valid U+FFFD in the input: the invalid tokens are those with one.
            let want = got.iter().flatten().filter(|t| t.contains('\u{fffd}')).count() as u64;
            prop_assert_eq!(invalid, want);
            for t in got.iter().flatten() {
                prop_assert!(!t.is_empty() && !t.chars().any(is_separator), "token {:?}", t);
            }
        }

        #[test]
        fn the_tokenizer_never_panics_and_joins_back(bytes in prop::collection::vec(any::<u8>(), 0..300), chunk in 1usize..40) {
            let (got, _) = tokenize(&bytes, chunk, MAX_SENTENCE_TOKENS);
            let joined: Vec<&str> = got.iter().flatten().map(String::as_str).collect();
            let text = String::from_utf8_lossy(&bytes);
            let normalized: Vec<&str> = text.split(is_separator).filter(|t| !t.is_empty()).collect();
            prop_assert_eq!(joined.join(" "), normalized.join(" "));
        }
    }
}
