//! Trained embeddings, and the word2vec text and binary formats (as written by the original tool
//! and read by gensim's `KeyedVectors.load_word2vec_format`).
//!
//! Both formats start with the header line `COUNT DIM\n`, then hold `COUNT` rows:
//! - text: `word v1 v2 ... vDIM\n`, values separated by one space. [`write_text`] writes each value
//!   with the fewest digits that read back to the same `f32` (as gensim's writer does with numpy's
//!   `str(np.float32)`), so a text file round-trips bit for bit, not only to the original tool's six
//!   decimals.
//! - binary: `word ` then `DIM` little-endian `f32`, then `\n` (the original tool writes the `\n`;
//!   gensim's writer leaves it out and its reader skips it; [`read`] accepts both).
//!
//! [`read`] is strict where gensim is lenient, because a file that does not match its header is
//! usually a bug in whatever wrote it: a row with the wrong number of values, fewer rows than the
//! header counts, data after the last row, a repeated word, a word with whitespace in it and a
//! word that is not valid UTF-8 are all errors ([`VectorsError`]), so whatever [`read`] accepts
//! the writers write back. gensim's default (`unicode_errors='strict'`) also refuses invalid
//! UTF-8; we do not decode lossily, because two truncated words could then collide. Reading never
//! panics, and memory grows with the bytes actually read, not with the counts in the header.
//!
//! Words are whitespace-free by construction (the tokenizer splits on whitespace), so the writers
//! refuse an empty word, a word with ASCII whitespace in it, and a repeated word, before writing
//! anything: such a file would not read back to the same words.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufWriter, Write};

/// Word vectors: row `i` of `data` (`dim` values) belongs to `words[i]`. Words are in the
/// vocabulary's order (most frequent first), which evaluations that restrict themselves to the
/// most frequent words rely on.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// The words, most frequent first.
    pub words: Vec<String>,
    /// Values per vector.
    pub dim: usize,
    /// `words.len() * dim` values, row by row.
    pub data: Vec<f32>,
}

impl Embeddings {
    /// Embeddings of `words` with `data` row by row.
    ///
    /// # Panics
    /// If `data.len() != words.len() * dim`.
    pub fn new(words: Vec<String>, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), words.len() * dim, "{} words of {dim} values", words.len());
        Self { words, dim, data }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether there are no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The vector of word `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The Euclidean length of every row, accumulated in `f64`.
    pub fn norms(&self) -> Vec<f64> {
        (0..self.len()).map(|i| norm(self.row(i))).collect()
    }

    /// The same words with every row scaled to unit length (cosine similarity becomes a dot
    /// product). A zero row stays zero.
    pub fn normalized(&self) -> Self {
        let mut data = self.data.clone();
        if self.dim > 0 {
            for row in data.chunks_exact_mut(self.dim) {
                let n = norm(row);
                if n > 0.0 {
                    row.iter_mut().for_each(|x| *x = (f64::from(*x) / n) as f32);
                }
            }
        }
        Self { words: self.words.clone(), dim: self.dim, data }
    }

    /// The index of the first row of `word` (exact match), by a linear scan; build a map for
    /// many lookups.
    pub fn position(&self, word: &str) -> Option<usize> {
        self.words.iter().position(|w| w == word)
    }
}

/// The Euclidean length of `v`, accumulated in `f64`.
fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// The two word2vec file formats.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Format {
    /// Rows of `word` and little-endian `f32` values.
    Binary,
    /// Rows of `word` and decimal values, separated by spaces.
    Text,
}

/// The largest `DIM` [`read`] accepts: it sizes one row's buffer before the row is read.
pub const MAX_DIM: usize = 1 << 20;

/// Why word vectors could not be read or written. `row` counts vectors from 0 (in the text format
/// row `r` is on line `r + 2`).
#[derive(Debug, thiserror::Error)]
pub enum VectorsError {
    /// The reader or writer failed.
    #[error("word vectors: {0}")]
    Io(#[from] io::Error),
    /// The first line is not `COUNT DIM`.
    #[error("bad header {line:?}: expected \"COUNT DIM\" with DIM from 1 to {MAX_DIM}")]
    Header {
        /// The first line (lossily decoded, at most 100 bytes).
        line: String,
    },
    /// The input ended before the header's count of rows.
    #[error("the input ends after {found} of the {expected} rows its header announces")]
    Truncated {
        /// Rows announced by the header.
        expected: usize,
        /// Complete rows read.
        found: usize,
    },
    /// A text row has another number of values than the header's `DIM`.
    #[error("row {row} ({word:?}) has {found} values; the header says {expected}")]
    WrongDim {
        /// The row.
        row: usize,
        /// Its word.
        word: String,
        /// `DIM`.
        expected: usize,
        /// Values on the row.
        found: usize,
    },
    /// A text value is not a number.
    #[error("row {row} ({word:?}): {value:?} is not a number")]
    NotANumber {
        /// The row.
        row: usize,
        /// Its word.
        word: String,
        /// The value as written (lossily decoded, at most 100 bytes).
        value: String,
    },
    /// A word is not valid UTF-8.
    #[error("row {row}: the word is not valid UTF-8 ({lossy:?})")]
    InvalidUtf8 {
        /// The row.
        row: usize,
        /// The word, decoded with U+FFFD for the invalid bytes (at most 100 bytes).
        lossy: String,
    },
    /// A row has no word.
    #[error("row {row} has an empty word")]
    EmptyWord {
        /// The row.
        row: usize,
    },
    /// A word contains ASCII whitespace other than the space that ends it (a tab, a vertical tab,
    /// a form feed, `\r`; in the binary format also `\n`).
    #[error("row {row}: the word {word:?} contains whitespace")]
    WhitespaceInWord {
        /// The row.
        row: usize,
        /// The word.
        word: String,
    },
    /// A word appears on two rows.
    #[error("row {row} repeats the word {word:?} of row {first}")]
    DuplicateWord {
        /// The later row.
        row: usize,
        /// The word.
        word: String,
        /// The first row with it.
        first: usize,
    },
    /// More than whitespace follows the rows the header announced.
    #[error("data after the {count} rows the header announces")]
    TrailingData {
        /// Rows announced by the header.
        count: usize,
    },
    /// A word cannot be written in a form that reads back to itself.
    #[error("row {row}: cannot write the word {word:?}: {reason}")]
    Unwritable {
        /// The row.
        row: usize,
        /// The word.
        word: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Writes `emb` in the word2vec text format. Values have the fewest digits that read back to the
/// same `f32` (plain decimals from 1e-4 to 1e16, scientific notation outside, as numpy's `str`).
/// Nothing is written if a word is unwritable (see the module doc).
pub fn write_text(emb: &Embeddings, w: impl Write) -> Result<(), VectorsError> {
    check_words(&emb.words)?;
    let mut w = BufWriter::new(w);
    writeln!(w, "{} {}", emb.len(), emb.dim)?;
    let mut line = String::new();
    for (i, word) in emb.words.iter().enumerate() {
        line.clear();
        line.push_str(word);
        for &x in emb.row(i) {
            line.push(' ');
            push_f32(&mut line, x);
        }
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    Ok(())
}

/// Writes `emb` in the word2vec binary format, `\n` after every row as the original tool does.
/// Nothing is written if a word is unwritable (see the module doc).
pub fn write_binary(emb: &Embeddings, w: impl Write) -> Result<(), VectorsError> {
    check_words(&emb.words)?;
    let mut w = BufWriter::new(w);
    writeln!(w, "{} {}", emb.len(), emb.dim)?;
    let mut row = Vec::with_capacity(emb.dim * 4);
    for (i, word) in emb.words.iter().enumerate() {
        row.clear();
        emb.row(i).iter().for_each(|x| row.extend_from_slice(&x.to_le_bytes()));
        w.write_all(word.as_bytes())?;
        w.write_all(b" ")?;
        w.write_all(&row)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Reads embeddings in `format`; see the module doc for what is refused. The whole input must be
/// the file: after the last row only whitespace may follow.
pub fn read(mut r: impl BufRead, format: Format) -> Result<Embeddings, VectorsError> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let (count, dim) = parse_header(&line)?;
    let mut words = Vec::new();
    // Bounded, so a forged count cannot reserve much; beyond that memory follows the input.
    let mut data = Vec::with_capacity(count.saturating_mul(dim).min(1 << 20));
    let mut seen = HashMap::new();
    match format {
        Format::Text => {
            for row in 0..count {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 {
                    return Err(VectorsError::Truncated { expected: count, found: row });
                }
                let text = trim_end_ws(&line);
                let (word, values) = match text.iter().position(|&b| b == b' ') {
                    Some(i) => (&text[..i], &text[i + 1..]),
                    None => (text, &[][..]),
                };
                let word = word_from(word, row)?;
                let mut found = 0;
                for value in values.split(|b| is_ws(*b)).filter(|v| !v.is_empty()) {
                    found += 1;
                    if found > dim {
                        continue; // counted for the error below
                    }
                    let x = std::str::from_utf8(value).ok().and_then(|s| s.parse::<f32>().ok());
                    match x {
                        Some(x) => data.push(x),
                        None => {
                            return Err(VectorsError::NotANumber { row, word, value: lossy(value) });
                        }
                    }
                }
                if found != dim {
                    return Err(VectorsError::WrongDim { row, word, expected: dim, found });
                }
                add_word(&mut words, &mut seen, word, row)?;
            }
        }
        Format::Binary => {
            let bytes = dim.checked_mul(4).expect("dim <= MAX_DIM: checked in parse_header");
            let mut vector = vec![0u8; bytes];
            for row in 0..count {
                skip_ws(&mut r)?;
                line.clear();
                r.read_until(b' ', &mut line)?;
                if line.pop() != Some(b' ') {
                    return Err(VectorsError::Truncated { expected: count, found: row });
                }
                let word = word_from(&line, row)?;
                match r.read_exact(&mut vector) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(VectorsError::Truncated { expected: count, found: row });
                    }
                    Err(e) => return Err(e.into()),
                }
                data.extend(vector.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                add_word(&mut words, &mut seen, word, row)?;
            }
        }
    }
    skip_ws(&mut r)?;
    if !r.fill_buf()?.is_empty() {
        return Err(VectorsError::TrailingData { count });
    }
    Ok(Embeddings::new(words, dim, data))
}

/// `COUNT DIM` from the first line.
fn parse_header(line: &[u8]) -> Result<(usize, usize), VectorsError> {
    let bad = || VectorsError::Header { line: lossy(line) };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<usize>());
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(count)), Some(Ok(dim)), None) if (1..=MAX_DIM).contains(&dim) => Ok((count, dim)),
        _ => Err(bad()),
    }
}

/// ASCII whitespace as Python's `bytes.strip` sees it (which includes vertical tab).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn trim_end_ws(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s
        && is_ws(*last)
    {
        s = rest;
    }
    s
}

/// Consumes whitespace at the front of `r`.
fn skip_ws(r: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.iter().take_while(|&&b| is_ws(b)).count();
        let all = n == buf.len();
        r.consume(n);
        if !all {
            return Ok(());
        }
    }
}

/// At most 100 bytes of `b`, lossily decoded, for error messages.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(100)]).into_owned()
}

fn word_from(bytes: &[u8], row: usize) -> Result<String, VectorsError> {
    match std::str::from_utf8(bytes) {
        Ok("") => Err(VectorsError::EmptyWord { row }),
        Ok(w) if w.bytes().any(is_ws) => Err(VectorsError::WhitespaceInWord { row, word: w.to_owned() }),
        Ok(w) => Ok(w.to_owned()),
        Err(_) => Err(VectorsError::InvalidUtf8 { row, lossy: lossy(bytes) }),
    }
}

fn add_word(
    words: &mut Vec<String>,
    seen: &mut HashMap<String, usize>,
    word: String,
    row: usize,
) -> Result<(), VectorsError> {
    match seen.entry(word) {
        Entry::Occupied(e) => Err(VectorsError::DuplicateWord { row, word: e.key().clone(), first: *e.get() }),
        Entry::Vacant(e) => {
            words.push(e.key().clone());
            e.insert(row);
            Ok(())
        }
    }
}

/// Refuses words that would not read back to themselves.
fn check_words(words: &[String]) -> Result<(), VectorsError> {
    let mut seen = HashSet::with_capacity(words.len());
    for (row, word) in words.iter().enumerate() {
        let bad = |reason| Err(VectorsError::Unwritable { row, word: word.clone(), reason });
        if word.is_empty() {
            return bad("it is empty");
        }
        if word.bytes().any(is_ws) {
            return bad("it contains whitespace");
        }
        if !seen.insert(word.as_str()) {
            return bad("it repeats an earlier word");
        }
    }
    Ok(())
}

/// Appends the shortest decimal that parses back to `x`.
fn push_f32(s: &mut String, x: f32) {
    use std::fmt::Write as _;
    let a = x.abs();
    let r = if a != 0.0 && a.is_finite() && !(1e-4..1e16).contains(&a) { write!(s, "{x:e}") } else { write!(s, "{x}") };
    r.expect("writing to a String cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn emb(words: &[&str], dim: usize, data: &[f32]) -> Embeddings {
        Embeddings::new(words.iter().map(|w| w.to_string()).collect(), dim, data.to_vec())
    }

    fn text(e: &Embeddings) -> String {
        let mut out = Vec::new();
        write_text(e, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn binary(e: &Embeddings) -> Vec<u8> {
        let mut out = Vec::new();
        write_binary(e, &mut out).unwrap();
        out
    }

    fn bits(e: &Embeddings) -> Vec<u32> {
        e.data.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn text_format_is_the_original_one() {
        let e = emb(&["the", "naïve"], 3, &[0.1, -2.5, 0.0, 1e-5, 3e20, -0.0]);
        assert_eq!(text(&e), "2 3\nthe 0.1 -2.5 0\nnaïve 1e-5 3e20 -0\n");
    }

    #[test]
    fn binary_format_is_the_original_one() {
        let e = emb(&["a", "bc"], 2, &[1.0, -2.0, 0.5, 0.25]);
        let mut want = b"2 2\na ".to_vec();
        [1.0f32, -2.0].iter().for_each(|x| want.extend(x.to_le_bytes()));
        want.extend(b"\nbc ");
        [0.5f32, 0.25].iter().for_each(|x| want.extend(x.to_le_bytes()));
        want.push(b'\n');
        assert_eq!(binary(&e), want);
    }

    #[test]
    fn extreme_values_round_trip_through_text() {
        let xs = [
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            f32::EPSILON,
            1e-4,
            9.999_999e-5,
            1e16,
            9.999_999e15,
            0.3,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let e = emb(&["x"], xs.len(), &xs);
        let back = read(text(&e).as_bytes(), Format::Text).unwrap();
        assert_eq!(bits(&back), bits(&e));
    }

    #[test]
    fn gensim_binary_without_newlines_reads() {
        // gensim's writer puts no "\n" after a row.
        let mut b = b"2 1\nx ".to_vec();
        b.extend(1.5f32.to_le_bytes());
        b.extend(b"y ");
        b.extend(2.5f32.to_le_bytes());
        assert_eq!(read(&b[..], Format::Binary).unwrap(), emb(&["x", "y"], 1, &[1.5, 2.5]));
    }

    #[test]
    fn text_tolerates_trailing_spaces_and_crlf() {
        // The original tool writes a space after the last value.
        let e = read(&b"2 2\r\na 1 2 \r\nb 3 4 \n\n"[..], Format::Text).unwrap();
        assert_eq!(e, emb(&["a", "b"], 2, &[1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let t = |s: &str| read(s.as_bytes(), Format::Text).unwrap_err();
        assert!(matches!(t(""), VectorsError::Header { .. }));
        assert!(matches!(t("2\n"), VectorsError::Header { .. }));
        assert!(matches!(t("2 0\n"), VectorsError::Header { .. }));
        assert!(matches!(t("-1 2\n"), VectorsError::Header { .. }));
        assert!(matches!(t("1 2 3\n"), VectorsError::Header { .. }));
        assert!(matches!(t("2 2\na 1 2\n"), VectorsError::Truncated { expected: 2, found: 1 }));
        assert!(matches!(t("1 2\na 1\n"), VectorsError::WrongDim { row: 0, expected: 2, found: 1, .. }));
        assert!(matches!(t("1 2\na 1 2 3\n"), VectorsError::WrongDim { found: 3, .. }));
        assert!(matches!(t("1 2\na\n"), VectorsError::WrongDim { found: 0, .. }));
        let e = t("1 2\na 1 x2\n");
        assert!(matches!(&e, VectorsError::NotANumber { value, .. } if value == "x2"), "{e}");
        assert!(matches!(t("2 1\na 1\na 2\n"), VectorsError::DuplicateWord { row: 1, first: 0, .. }));
        assert!(matches!(t("1 1\na 1\nb 2\n"), VectorsError::TrailingData { count: 1 }));
        assert!(matches!(t("1 1\n 1\n"), VectorsError::EmptyWord { row: 0 }));
        assert!(matches!(t("1 1\na\tb 1\n"), VectorsError::WhitespaceInWord { row: 0, .. }));
        let e = read(&b"1 1\na\xff 1\n"[..], Format::Text).unwrap_err();
        assert!(matches!(&e, VectorsError::InvalidUtf8 { row: 0, lossy } if lossy == "a\u{fffd}"), "{e}");

        let b = |bytes: &[u8]| read(bytes, Format::Binary).unwrap_err();
        assert!(matches!(b(b"1 2\nabc "), VectorsError::Truncated { expected: 1, found: 0 }));
        assert!(matches!(b(b"1 1\nabc \x00\x00\x80"), VectorsError::Truncated { .. }));
        assert!(matches!(b(b"1 1\nabc"), VectorsError::Truncated { .. }));
        assert!(matches!(b(b"1 1\na \0\0\0\0\nxyz"), VectorsError::TrailingData { count: 1 }));
        assert!(matches!(b(b"1 1\n\xc3 \0\0\0\0"), VectorsError::InvalidUtf8 { .. }));
        assert!(matches!(b(b"1 1\na\nb \0\0\0\0"), VectorsError::WhitespaceInWord { row: 0, .. }));
        // The messages name the problem.
        assert_eq!(t("1 2\na 1\n").to_string(), "row 0 (\"a\") has 1 values; the header says 2",);
    }

    #[test]
    fn forged_counts_do_not_allocate() {
        let t = format!("{} {MAX_DIM}\n", usize::MAX);
        assert!(matches!(read(t.as_bytes(), Format::Binary), Err(VectorsError::Truncated { found: 0, .. })));
        assert!(matches!(read(t.as_bytes(), Format::Text), Err(VectorsError::Truncated { found: 0, .. })));
        let t = format!("1 {}\n", MAX_DIM + 1);
        assert!(matches!(read(t.as_bytes(), Format::Binary), Err(VectorsError::Header { .. })));
    }

    #[test]
    fn unwritable_words_are_refused_before_writing() {
        for (words, reason) in [
            (&["a", "b c"][..], "it contains whitespace"),
            (&["a\tb"][..], "it contains whitespace"),
            (&["a\n"][..], "it contains whitespace"),
            (&[""][..], "it is empty"),
            (&["a", "b", "a"][..], "it repeats an earlier word"),
        ] {
            let e = emb(words, 1, &vec![0.0; words.len()]);
            let mut out = Vec::new();
            let err = write_text(&e, &mut out).unwrap_err();
            assert!(matches!(&err, VectorsError::Unwritable { reason: r, .. } if *r == reason), "{words:?}: {err}");
            assert!(out.is_empty());
            assert!(matches!(write_binary(&e, &mut out), Err(VectorsError::Unwritable { .. })));
            assert!(out.is_empty());
        }
    }

    #[test]
    fn normalized_rows_have_unit_length_and_zero_rows_stay_zero() {
        let e = emb(&["a", "b", "c"], 2, &[3.0, 4.0, 0.0, 0.0, -1e-30, 0.0]).normalized();
        assert_eq!(e.data, vec![0.6, 0.8, 0.0, 0.0, -1.0, 0.0]);
        let norms = e.norms();
        assert!((norms[0] - 1.0).abs() < 1e-7 && norms[1] == 0.0 && norms[2] == 1.0, "{norms:?}");
        assert_eq!(e.position("c"), Some(2));
        assert_eq!(e.position("C"), None);
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9éü東京_\\-\\.'#:]{1,12}"
    }

    fn embeddings() -> impl Strategy<Value = Embeddings> {
        (proptest::collection::hash_set(word(), 0..8), 1usize..6).prop_flat_map(|(words, dim)| {
            let words: Vec<String> = words.into_iter().collect();
            let n = words.len() * dim;
            vec(any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite()), n)
                .prop_map(move |data| Embeddings::new(words.clone(), dim, data))
        })
    }

    proptest! {
        #[test]
        fn both_formats_round_trip_bit_for_bit(e in embeddings()) {
            let back = read(text(&e).as_bytes(), Format::Text).unwrap();
            prop_assert_eq!(&back.words, &e.words);
            prop_assert_eq!(bits(&back), bits(&e));
            let back = read(&binary(&e)[..], Format::Binary).unwrap();
            prop_assert_eq!(&back.words, &e.words);
            prop_assert_eq!(bits(&back), bits(&e));
        }

        #[test]
        fn reading_random_bytes_never_panics(bytes in vec(any::<u8>(), 0..200)) {
            let _ = read(&bytes[..], Format::Text);
            let _ = read(&bytes[..], Format::Binary);
        }

        #[test]
        fn reading_mutated_files_never_panics(
            e in embeddings(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            for mut bytes in [text(&e).into_bytes(), binary(&e)] {
                for (i, b) in &edits {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                let cut = cut.index(bytes.len() + 1);
                for format in [Format::Text, Format::Binary] {
                    if let Ok(e) = read(&bytes[..cut], format) {
                        // What reads writes back, in both formats, to the same words and values.
                        for again in [read(text(&e).as_bytes(), Format::Text), read(&binary(&e)[..], Format::Binary)] {
                            let again = again.unwrap();
                            prop_assert_eq!(&again.words, &e.words);
                            let same = |(a, b): (&f32, &f32)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                            prop_assert!(again.data.iter().zip(&e.data).all(same));
                        }
                    }
                }
            }
        }
    }
}
