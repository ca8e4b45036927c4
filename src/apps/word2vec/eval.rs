//! Evaluation of word vectors: word similarity (Spearman), analogies (3CosAdd), and the planted-group
//! score of the synthetic corpus.
//!
//! The similarity and analogy scores follow gensim 4.x (`KeyedVectors.evaluate_word_pairs` and
//! `evaluate_word_analogies` with their default arguments), so numbers can be compared with
//! published ones and with gensim on the same vectors:
//! - Only the `restrict` most frequent words are looked at ([`Embeddings`] are most frequent first).
//! - Case-insensitive by default, by gensim's rule: words are compared in upper case, and where
//!   several vocabulary words fold to the same key, the first (most frequent) one is used.
//! - A pair or question with a word outside the restricted vocabulary is skipped and counted, not
//!   scored as wrong (gensim's `dummy4unknown=False`).
//! - Similarity is the cosine; Spearman's rho gives tied values their average rank
//!   (`scipy.stats.spearmanr`).
//! - An analogy `a : b :: c : ?` is answered by the word of the restricted vocabulary, other than
//!   `a`, `b` and `c`, whose unit vector has the largest dot product with `b̂ + ĉ - â` (the unit
//!   vectors of the three words). gensim's `most_similar(positive=[b, c], negative=[a])` ranks by
//!   the cosine with the normalized mean of the same three unit vectors, which orders words the
//!   same way. Like gensim, it looks at the 5 best candidates and skips those that fold to `a`, `b`
//!   or `c` (other case variants of the question's words); zero vectors are never an answer. (A zero
//!   vector as a question word makes every gensim score of that question NaN; here it counts as
//!   zero.)
//!
//! Where gensim stops with an exception on a bad line, we skip the line and count it in
//! `malformed_lines`: a line that is not UTF-8, a question before the first `: section` line. Lines
//! with the wrong number of fields and similarity scores that are not finite numbers are skipped and
//! counted as in gensim (which logs them). Blank lines are skipped without being counted.
//!
//! Files are parsed once ([`WordPairs`], [`Analogies`]) and evaluated against any number of
//! embeddings, e.g. after every epoch. The analogy search is one matrix product per block of
//! questions (ndarray's `matrixmultiply` kernels), followed by a top-5 scan of each row.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};

use super::vectors::Embeddings;

/// Why an evaluation file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", origin(path))]
    Read {
        /// The file (`None` for a reader given to `parse`).
        path: Option<PathBuf>,
        /// The cause.
        source: io::Error,
    },
    /// Not one line of the file is a valid pair or question.
    #[error("{}: no valid line ({malformed_lines} malformed)", origin(path))]
    NoValidLine {
        /// The file (`None` for a reader given to `parse`).
        path: Option<PathBuf>,
        /// Lines skipped as malformed.
        malformed_lines: usize,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref().map_or_else(|| "the input".into(), |p| p.display().to_string())
}

impl EvalError {
    fn with_path(self, p: &Path) -> Self {
        match self {
            Self::Read { source, .. } => Self::Read { path: Some(p.to_owned()), source },
            Self::NoValidLine { malformed_lines, .. } => {
                Self::NoValidLine { path: Some(p.to_owned()), malformed_lines }
            }
        }
    }
}

/// One human judgement: the similarity of `a` and `b` is `score`.
#[derive(Clone, Debug, PartialEq)]
pub struct WordPair {
    /// First word, as written in the file.
    pub a: String,
    /// Second word, as written in the file.
    pub b: String,
    /// The human score (finite).
    pub score: f64,
}

/// A word-similarity file (WordSim-353, SimLex-999, ...): lines `word1<TAB>word2<TAB>score`, lines
/// starting with `#` are comments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WordPairs {
    /// The valid lines, in file order.
    pub pairs: Vec<WordPair>,
    /// Lines skipped as malformed: not UTF-8, not three tab-separated fields, or a score that is
    /// not a finite number.
    pub malformed_lines: usize,
}

impl WordPairs {
    /// Reads and parses the file at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| EvalError::Read { path: Some(path.to_owned()), source })?;
        Self::parse(BufReader::new(file)).map_err(|e| e.with_path(path))
    }

    /// Parses a word-similarity file. Words are kept as written (not trimmed, not folded); the
    /// score may have surrounding whitespace. Fails only on a read error or when no line is valid.
    pub fn parse(r: impl BufRead) -> Result<Self, EvalError> {
        let mut out = Self::default();
        for_each_line(r, |line| {
            let Some(line) = line else {
                out.malformed_lines += 1;
                return;
            };
            if line.starts_with('#') || line.trim().is_empty() {
                return;
            }
            let mut fields = line.split('\t');
            let pair = match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(a), Some(b), Some(score), None) => score
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite())
                    .map(|score| WordPair { a: a.to_owned(), b: b.to_owned(), score }),
                _ => None,
            };
            match pair {
                Some(p) => out.pairs.push(p),
                None => out.malformed_lines += 1,
            }
        })?;
        if out.pairs.is_empty() {
            return Err(EvalError::NoValidLine { path: None, malformed_lines: out.malformed_lines });
        }
        Ok(out)
    }
}

/// A section of an analogy file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnalogySection {
    /// The name after `: `.
    pub name: String,
    /// Questions `a b c d`: `a` is to `b` as `c` is to `d`; words as written in the file.
    pub questions: Vec<[String; 4]>,
}

/// An analogy file in the `questions-words.txt` format: `: name` lines start sections, other lines
/// are questions `a b c d`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analogies {
    /// Sections in file order (empty ones included, as gensim reports them).
    pub sections: Vec<AnalogySection>,
    /// Lines skipped as malformed: not UTF-8, not four words, or a question before the first
    /// section line.
    pub malformed_lines: usize,
}

impl Analogies {
    /// Reads and parses the file at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| EvalError::Read { path: Some(path.to_owned()), source })?;
        Self::parse(BufReader::new(file)).map_err(|e| e.with_path(path))
    }

    /// Parses an analogy file. A section line starts with `": "`; the name is what follows with
    /// leading `:` and spaces and trailing whitespace removed (gensim's rule). Fails only on a read
    /// error or when there is no question at all.
    pub fn parse(r: impl BufRead) -> Result<Self, EvalError> {
        let mut out = Self::default();
        for_each_line(r, |line| {
            let Some(line) = line else {
                out.malformed_lines += 1;
                return;
            };
            if line.starts_with(": ") {
                let name = line.trim_start_matches([':', ' ']).trim_matches(is_py_space);
                out.sections.push(AnalogySection { name: name.to_owned(), questions: Vec::new() });
                return;
            }
            let mut words = line.split(is_py_space).filter(|w| !w.is_empty());
            let question = match (words.next(), words.next(), words.next(), words.next(), words.next()) {
                (None, ..) => return, // blank
                (Some(a), Some(b), Some(c), Some(d), None) => [a, b, c, d].map(str::to_owned),
                _ => {
                    out.malformed_lines += 1;
                    return;
                }
            };
            match out.sections.last_mut() {
                Some(section) => section.questions.push(question),
                None => out.malformed_lines += 1,
            }
        })?;
        if out.total() == 0 {
            return Err(EvalError::NoValidLine { path: None, malformed_lines: out.malformed_lines });
        }
        Ok(out)
    }

    /// Number of questions in all sections.
    pub fn total(&self) -> usize {
        self.sections.iter().map(|s| s.questions.len()).sum()
    }
}

/// Whitespace as Python's `str.split()` sees it: Unicode White_Space plus the ASCII separators
/// U+001C to U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Calls `f` with every line of `r` without its line ending (`\n` or `\r\n`), or `None` for a line
/// that is not UTF-8.
fn for_each_line(mut r: impl BufRead, mut f: impl FnMut(Option<&str>)) -> Result<(), EvalError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf).map_err(|source| EvalError::Read { path: None, source })?;
        if n == 0 {
            return Ok(());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        f(std::str::from_utf8(line).ok());
    }
}

/// Settings of [`evaluate_similarity`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimilarityOptions {
    /// Only the first `restrict` words are known (gensim's default: 300 000).
    pub restrict: usize,
    /// Compare words in upper case (gensim's default: true).
    pub case_insensitive: bool,
}

impl Default for SimilarityOptions {
    fn default() -> Self {
        Self { restrict: 300_000, case_insensitive: true }
    }
}

/// How well cosine similarities follow human judgements.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimilarityScore {
    /// Spearman's rank correlation between human scores and cosines; `None` with fewer than two
    /// pairs used, when either side is constant, or when a cosine is not finite.
    pub spearman: Option<f64>,
    /// Pearson's correlation between human scores and cosines (`None` likewise).
    pub pearson: Option<f64>,
    /// Pairs with both words known.
    pub pairs_used: usize,
    /// Valid pairs in the file.
    pub pairs_total: usize,
    /// Pairs with an unknown word (`pairs_total - pairs_used`).
    pub oov_pairs: usize,
    /// `pairs_used / pairs_total` (gensim reports `100 × (1 - coverage)` as its OOV ratio).
    pub coverage: f64,
    /// Lines of the file skipped as malformed.
    pub malformed_lines: usize,
}

/// Reads the word-similarity file at `path` and scores `emb` on it (see the module doc for
/// gensim's conventions). To evaluate many embeddings, parse once with [`WordPairs::read`] and call
/// [`WordPairs::evaluate`].
pub fn evaluate_similarity(
    path: impl AsRef<Path>,
    emb: &Embeddings,
    opts: &SimilarityOptions,
) -> Result<SimilarityScore, EvalError> {
    Ok(WordPairs::read(path)?.evaluate(emb, opts))
}

/// Reads the analogy file at `path` and scores `emb` on it, case-insensitively, attempting only
/// questions whose words are among the `restrict` most frequent (see the module doc and
/// [`AnalogyOptions`]). To evaluate many embeddings, parse once with [`Analogies::read`] and call
/// [`Analogies::evaluate`].
pub fn evaluate_analogies(
    path: impl AsRef<Path>,
    emb: &Embeddings,
    restrict: usize,
) -> Result<AnalogyScore, EvalError> {
    Ok(Analogies::read(path)?.evaluate(emb, &AnalogyOptions { restrict, case_insensitive: true }))
}

impl WordPairs {
    /// Scores `emb` on these pairs (see the module doc for gensim's conventions).
    pub fn evaluate(&self, emb: &Embeddings, opts: &SimilarityOptions) -> SimilarityScore {
        let vocab = Vocab::new(emb, opts.restrict, opts.case_insensitive);
        let norms = emb.norms();
        let (mut gold, mut model) = (Vec::new(), Vec::new());
        for p in &self.pairs {
            if let (Some(a), Some(b)) = (vocab.get(&p.a), vocab.get(&p.b)) {
                gold.push(p.score);
                model.push(cosine(emb.row(a), norms[a], emb.row(b), norms[b]));
            }
        }
        let finite = model.iter().all(|x| x.is_finite());
        let total = self.pairs.len();
        SimilarityScore {
            spearman: if finite { pearson(&ranks(&gold), &ranks(&model)) } else { None },
            pearson: if finite { pearson(&gold, &model) } else { None },
            pairs_used: gold.len(),
            pairs_total: total,
            oov_pairs: total - gold.len(),
            coverage: ratio(gold.len(), total),
            malformed_lines: self.malformed_lines,
        }
    }
}

/// `a · b / (|a| |b|)` in `f64`; 0 when either vector is zero (gensim's `unitvec` leaves a zero
/// vector as it is).
fn cosine(a: &[f32], na: f64, b: &[f32], nb: f64) -> f64 {
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    dot / (na * nb)
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Ranks from 1, tied values sharing the average of their ranks (`scipy.stats.rankdata`).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let j = i + order[i..].iter().take_while(|&&t| v[t] == v[order[i]]).count();
        let rank = (i + 1 + j) as f64 / 2.0; // the mean of ranks i+1 ..= j
        order[i..j].iter().for_each(|&t| r[t] = rank);
        i = j;
    }
    r
}

/// Pearson's correlation, `None` for fewer than two values or a constant side.
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 || n != y.len() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Settings of [`evaluate_analogies`].
#[derive(Clone, Debug, PartialEq)]
pub struct AnalogyOptions {
    /// Only questions whose four words are among the first `restrict` words are attempted, and
    /// answers are searched among them (default 30 000, as the original tool's `compute-accuracy`
    /// is usually run; gensim's default is 300 000).
    pub restrict: usize,
    /// Compare words in upper case (gensim's default: true).
    pub case_insensitive: bool,
}

impl Default for AnalogyOptions {
    fn default() -> Self {
        Self { restrict: 30_000, case_insensitive: true }
    }
}

/// Analogy results of one section.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SectionScore {
    /// The section's name.
    pub name: String,
    /// Questions answered right.
    pub correct: usize,
    /// Questions with all four words known.
    pub attempted: usize,
    /// Questions in the section.
    pub total: usize,
}

/// Analogy results.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AnalogyScore {
    /// `correct / attempted`, 0 when nothing was attempted (as gensim).
    pub accuracy: f64,
    /// Questions answered right.
    pub correct: usize,
    /// Questions with all four words known.
    pub attempted: usize,
    /// Questions in the file.
    pub total: usize,
    /// `attempted / total`.
    pub coverage: f64,
    /// Per section, in file order.
    pub sections: Vec<SectionScore>,
    /// Lines of the file skipped as malformed.
    pub malformed_lines: usize,
}

/// Candidates gensim's `evaluate_word_analogies` looks at (`most_similar(..., topn=5)`).
const ANALOGY_CANDIDATES: usize = 5;
/// Questions per matrix product.
const QUERY_BLOCK: usize = 512;
/// Vocabulary rows per matrix product (the 4 MiB score block stays in cache).
const ROW_BLOCK: usize = 2048;
/// Scores per test against the current `k`-th best before they are looked at one by one.
const SCAN_CHUNK: usize = 16;

impl Analogies {
    /// Scores `emb` on these questions by 3CosAdd (see the module doc for gensim's conventions).
    pub fn evaluate(&self, emb: &Embeddings, opts: &AnalogyOptions) -> AnalogyScore {
        let vocab = Vocab::new(emb, opts.restrict, opts.case_insensitive);
        let rows = vocab.rows;
        let unit = emb.normalized();
        let table = ArrayView2::from_shape((rows, emb.dim), &unit.data[..rows * emb.dim])
            .expect("rows <= len: the vocabulary is a prefix of the embeddings");
        let usable = usable_rows(emb, rows);

        // Canonical indices (a, b, c, d) of the attempted questions, and their sections.
        let mut asked: Vec<([usize; 4], usize)> = Vec::new();
        for (s, section) in self.sections.iter().enumerate() {
            for q in &section.questions {
                if let [Some(a), Some(b), Some(c), Some(d)] = [0, 1, 2, 3].map(|i| vocab.get(&q[i])) {
                    asked.push(([a, b, c, d], s));
                }
            }
        }
        let mut queries = Array2::<f32>::zeros((asked.len(), emb.dim));
        for (mut query, ([a, b, c, _], _)) in queries.rows_mut().into_iter().zip(&asked) {
            let (a, b, c) = (unit.row(*a), unit.row(*b), unit.row(*c));
            query.iter_mut().enumerate().for_each(|(k, x)| *x = b[k] + c[k] - a[k]);
        }
        let best = top_k(queries.view(), table, ANALOGY_CANDIDATES, |q, x| {
            let [a, b, c, _] = asked[q].0;
            !usable[x] || x == a || x == b || x == c
        });

        let mut sections: Vec<SectionScore> = self
            .sections
            .iter()
            .map(|s| SectionScore { name: s.name.clone(), correct: 0, attempted: 0, total: s.questions.len() })
            .collect();
        for (([a, b, c, d], s), candidates) in asked.iter().zip(&best) {
            // gensim: the first candidate that does not fold to a question word, else the last one.
            let mut predicted = None;
            for &(_, x) in candidates {
                predicted = Some(vocab.key_of[x]);
                if ![*a, *b, *c].contains(&vocab.key_of[x]) {
                    break;
                }
            }
            sections[*s].attempted += 1;
            sections[*s].correct += usize::from(predicted == Some(*d));
        }
        let correct = sections.iter().map(|s| s.correct).sum();
        let total = self.total();
        AnalogyScore {
            accuracy: ratio(correct, asked.len()),
            correct,
            attempted: asked.len(),
            total,
            coverage: ratio(asked.len(), total),
            sections,
            malformed_lines: self.malformed_lines,
        }
    }
}

/// The planted-group score of the synthetic corpus: for every known word of every group, the
/// fraction of its `k` nearest neighbours by cosine (over the whole vocabulary, itself excluded)
/// that are in its group, where `k` is the number of the group's known words minus one; the mean
/// over those words. Words are matched exactly; a group with fewer than two known words adds
/// nothing. 1.0 is perfect; random vectors score about `group size / vocabulary size`. `None` when
/// no group has two known words.
pub fn planted_group_score(emb: &Embeddings, groups: &[Vec<String>]) -> Option<f64> {
    let mut index = HashMap::with_capacity(emb.len());
    for (i, w) in emb.words.iter().enumerate() {
        index.entry(w.as_str()).or_insert(i);
    }
    let unit = emb.normalized();
    let table = ArrayView2::from_shape((emb.len(), emb.dim), &unit.data[..]).expect("len × dim values: an invariant");
    let usable = usable_rows(emb, emb.len());
    // Every group's known rows, sorted; groups with fewer than two are left out.
    let known: Vec<Vec<usize>> = groups
        .iter()
        .map(|group| {
            let mut rows: Vec<usize> = group.iter().filter_map(|w| index.get(w.as_str()).copied()).collect();
            rows.sort_unstable();
            rows.dedup();
            rows
        })
        .filter(|rows| rows.len() >= 2)
        .collect();
    // One search for all members (group, row), with the largest group's k: a smaller group's
    // `k` nearest are the first `k` of that list.
    let members: Vec<(usize, usize)> =
        known.iter().enumerate().flat_map(|(g, rows)| rows.iter().map(move |&r| (g, r))).collect();
    if members.is_empty() {
        return None;
    }
    let mut queries = Array2::<f32>::zeros((members.len(), emb.dim));
    for (mut q, &(_, row)) in queries.rows_mut().into_iter().zip(&members) {
        q.iter_mut().zip(unit.row(row)).for_each(|(x, &y)| *x = y);
    }
    let k_max = known.iter().map(|rows| rows.len() - 1).max().expect("members is not empty");
    let best = top_k(queries.view(), table, k_max, |q, x| !usable[x] || x == members[q].1);
    let sum: f64 = members
        .iter()
        .zip(&best)
        .map(|(&(g, _), neighbours)| {
            let k = known[g].len() - 1;
            let hits = neighbours.iter().take(k).filter(|(_, x)| known[g].binary_search(x).is_ok()).count();
            hits as f64 / k as f64
        })
        .sum();
    Some(sum / members.len() as f64)
}

/// Rows whose vectors have a finite, nonzero length: only they can be a nearest neighbour (gensim's
/// scores for a zero vector are NaN, which never ranks first).
fn usable_rows(emb: &Embeddings, rows: usize) -> Vec<bool> {
    (0..rows).map(|i| emb.row(i).iter().any(|&x| x != 0.0) && emb.row(i).iter().all(|x| x.is_finite())).collect()
}

/// For every row of `queries`, the `k` rows of `table` with the largest dot products, best first,
/// leaving out rows `x` with `skip(query, x)`. Equal scores keep the lower row first; NaN scores
/// never enter. Blocks of queries run on scoped threads, one per core (the result does not depend
/// on their number).
fn top_k(
    queries: ArrayView2<'_, f32>,
    table: ArrayView2<'_, f32>,
    k: usize,
    skip: impl Fn(usize, usize) -> bool + Sync,
) -> Vec<Vec<(f32, usize)>> {
    let blocks = queries.nrows().div_ceil(QUERY_BLOCK);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(blocks);
    if threads <= 1 {
        return top_k_serial(queries, table, k, 0, &skip);
    }
    let per_thread = blocks.div_ceil(threads) * QUERY_BLOCK;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..queries.nrows())
            .step_by(per_thread)
            .map(|q0| {
                let part = queries.slice_move(s![q0..(q0 + per_thread).min(queries.nrows()), ..]);
                let skip = &skip;
                scope.spawn(move || top_k_serial(part, table, k, q0, skip))
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// [`top_k`] on one thread; query `i` of `queries` is query `offset + i` for `skip`.
fn top_k_serial(
    queries: ArrayView2<'_, f32>,
    table: ArrayView2<'_, f32>,
    k: usize,
    offset: usize,
    skip: &(impl Fn(usize, usize) -> bool + Sync),
) -> Vec<Vec<(f32, usize)>> {
    let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(k + 1); queries.nrows()];
    if k == 0 {
        return best;
    }
    let mut scores = Array2::<f32>::zeros((QUERY_BLOCK.min(queries.nrows()), ROW_BLOCK.min(table.nrows())));
    for q0 in (0..queries.nrows()).step_by(QUERY_BLOCK) {
        let q1 = (q0 + QUERY_BLOCK).min(queries.nrows());
        let block = queries.slice(s![q0..q1, ..]);
        for x0 in (0..table.nrows()).step_by(ROW_BLOCK) {
            let x1 = (x0 + ROW_BLOCK).min(table.nrows());
            let mut out = scores.slice_mut(s![..q1 - q0, ..x1 - x0]);
            general_mat_mul(1.0, &block, &table.slice(s![x0..x1, ..]).t(), 0.0, &mut out);
            for (i, row) in out.rows().into_iter().enumerate() {
                let top = &mut best[q0 + i];
                let mut worst = if top.len() < k { f32::NEG_INFINITY } else { top[k - 1].0 };
                let row = row.as_slice().expect("rows of a standard-layout array are contiguous");
                for (c, chunk) in row.chunks(SCAN_CHUNK).enumerate() {
                    // Branch-free, so it vectorizes; most chunks hold nothing better.
                    if !chunk.iter().fold(false, |any, &s| any | (s > worst)) {
                        continue;
                    }
                    for (j, &score) in chunk.iter().enumerate() {
                        let x = x0 + c * SCAN_CHUNK + j;
                        // `>` is false for NaN, and keeps an earlier row ahead of a later equal one.
                        if score > worst && !skip(offset + q0 + i, x) {
                            let at = top.partition_point(|&(s, _)| s >= score);
                            top.insert(at, (score, x));
                            top.truncate(k);
                            if top.len() == k {
                                worst = top[k - 1].0;
                            }
                        }
                    }
                }
            }
        }
    }
    best
}

/// Word → row over the first `rows` words, folded to upper case when case-insensitive; the first
/// row wins, as in gensim's `{k.upper(): index for k in reversed(keys)}`.
struct Vocab<'a> {
    map: HashMap<Cow<'a, str>, usize>,
    /// For every row, the row its folded word maps to.
    key_of: Vec<usize>,
    rows: usize,
    case_insensitive: bool,
}

impl<'a> Vocab<'a> {
    fn new(emb: &'a Embeddings, restrict: usize, case_insensitive: bool) -> Self {
        let rows = restrict.min(emb.len());
        let mut map = HashMap::with_capacity(rows);
        let mut key_of = Vec::with_capacity(rows);
        for (i, w) in emb.words[..rows].iter().enumerate() {
            let key = fold(w, case_insensitive);
            key_of.push(match map.entry(key) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => *e.insert(i),
            });
        }
        Self { map, key_of, rows, case_insensitive }
    }

    fn get(&self, word: &str) -> Option<usize> {
        self.map.get(&fold(word, self.case_insensitive)).copied()
    }
}

fn fold(w: &str, case_insensitive: bool) -> Cow<'_, str> {
    if case_insensitive { Cow::Owned(w.to_uppercase()) } else { Cow::Borrowed(w) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn emb(words: &[&str], dim: usize, data: &[f32]) -> Embeddings {
        Embeddings::new(words.iter().map(|w| w.to_string()).collect(), dim, data.to_vec())
    }

    fn pairs(text: &str) -> WordPairs {
        WordPairs::parse(text.as_bytes()).unwrap()
    }

    fn analogies(text: &str) -> Analogies {
        Analogies::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0, 10.0]), vec![2.0, 4.0, 2.0, 5.0, 2.0]);
        assert_eq!(ranks(&[3.0, 1.0, 2.0, 2.0]), vec![4.0, 1.0, 2.5, 2.5]);
        assert_eq!(ranks(&[]), Vec::<f64>::new());
    }

    #[test]
    fn spearman_with_ties_matches_scipy() {
        // scipy.stats.spearmanr([1, 2, 2, 3, 4], [1, 3, 2, 2, 5]) = 0.763158 (0.7631578947368421):
        // ranks [1, 2.5, 2.5, 4, 5] and [1, 4, 2.5, 2.5, 5].
        let x = [1.0, 2.0, 2.0, 3.0, 4.0];
        let y = [1.0, 3.0, 2.0, 2.0, 5.0];
        let rho = pearson(&ranks(&x), &ranks(&y)).unwrap();
        assert!((rho - 0.763_157_894_736_842_1).abs() < 1e-12, "{rho}");
        assert_eq!(pearson(&[1.0], &[2.0]), None);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-15);
    }

    /// Unit vectors at `angles` (radians) in the plane.
    fn circle(words: &[&str], angles: &[f32]) -> Embeddings {
        emb(words, 2, &angles.iter().flat_map(|a| [a.cos(), a.sin()]).collect::<Vec<_>>())
    }

    #[test]
    fn similarity_counts_oov_and_malformed_lines_and_folds_case() {
        // cos(x, y) = cos(angle difference): a–b 0.1 apart, a–c 0.5, a–d 1.0.
        let e = circle(&["a", "b", "c", "d", "A"], &[0.0, 0.1, 0.5, 1.0, 3.0]);
        let p = pairs(
            "# comment\n\
             A\tb\t9\n\
             a\tc\t5\r\n\
             a\td\t1\n\
             a\tzzz\t3\n\
             \n\
             a\tb\n\
             a\tb\tnine\n\
             a\tb\tinf\n\
             a\tb\t1\t2\n",
        );
        assert_eq!(p.pairs.len(), 4);
        assert_eq!(p.malformed_lines, 4);
        let s = p.evaluate(&e, &SimilarityOptions::default());
        // "A" folds to the key of "a" (row 0), not to row 4 (a later case variant).
        assert!((s.spearman.unwrap() - 1.0).abs() < 1e-12, "{s:?}");
        assert_eq!((s.pairs_used, s.pairs_total, s.oov_pairs, s.malformed_lines), (3, 4, 1, 4));
        assert_eq!(s.coverage, 0.75);
        let want = pearson(&[9.0, 5.0, 1.0], &[0.1f64.cos(), 0.5f64.cos(), 1.0f64.cos()]).unwrap();
        assert!((s.pearson.unwrap() - want).abs() < 1e-6);

        // Case-sensitive, "A" is row 4, opposite "b".
        let s = p.evaluate(&e, &SimilarityOptions { case_insensitive: false, ..Default::default() });
        assert!(s.spearman.unwrap() < 1.0);
        // Restricted to the first two words, only a–b is known: no correlation.
        let s = p.evaluate(&e, &SimilarityOptions { restrict: 2, ..Default::default() });
        assert_eq!((s.pairs_used, s.spearman, s.pearson), (1, None, None));
    }

    #[test]
    fn similarity_ties_share_ranks() {
        let e = emb(&["a", "b", "c", "d"], 2, &[1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0]);
        // Model cosines: a–b = c–d = b–c = 0, a–c = -1. Human scores rank a–b first.
        let p = pairs("a\tb\t4\nc\td\t3\nb\tc\t3\na\tc\t1\n");
        let s = p.evaluate(&e, &SimilarityOptions::default());
        let want = pearson(&[4.0, 2.5, 2.5, 1.0], &[3.0, 3.0, 3.0, 1.0]).unwrap();
        assert!((s.spearman.unwrap() - want).abs() < 1e-12, "{:?} vs {want}", s.spearman);
    }

    #[test]
    fn files_without_valid_lines_are_errors_that_say_so() {
        let e = WordPairs::parse("# only\nx\ty\n".as_bytes()).unwrap_err();
        assert!(matches!(e, EvalError::NoValidLine { path: None, malformed_lines: 1 }));
        assert_eq!(e.to_string(), "the input: no valid line (1 malformed)");
        let e = Analogies::parse(": capitals\n: empty\n".as_bytes()).unwrap_err();
        assert!(matches!(e, EvalError::NoValidLine { malformed_lines: 0, .. }));
        let e = WordPairs::read("/nonexistent/ws353.tsv").unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent/ws353.tsv: "), "{e}");
        let e = Analogies::read("/nonexistent/questions.txt").unwrap_err();
        assert!(matches!(&e, EvalError::Read { path: Some(p), .. } if p == Path::new("/nonexistent/questions.txt")));
    }

    #[test]
    fn analogy_files_parse_as_gensim_does() {
        let a = Analogies::parse(
            &b"a b c\n\
             : : capital-common \n\
             Athens Greece Baghdad  Iraq\r\n\
             \n\
             one two three\n\
             : empty\n\
             : x\n\
             p\tq r s\n\
             \xff\n"[..],
        )
        .unwrap();
        let names: Vec<&str> = a.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["capital-common", "empty", "x"]);
        assert_eq!(a.sections[0].questions, vec![["Athens", "Greece", "Baghdad", "Iraq"].map(String::from)]);
        assert_eq!(a.sections[2].questions, vec![["p", "q", "r", "s"].map(String::from)]);
        // "a b c" (three words, and before any section), "one two three", the invalid UTF-8.
        assert_eq!(a.malformed_lines, 3);
        assert_eq!(a.total(), 2);
    }

    /// Words on a plane built so that b - a + c = d exactly: man/woman, king/queen.
    fn royals() -> Embeddings {
        emb(
            &["man", "woman", "king", "queen", "apple", "Queen", "pear"],
            3,
            &[
                1.0, 0.0, 0.0, // man
                1.0, 1.0, 0.0, // woman
                1.0, 0.0, 1.0, // king
                1.0, 1.0, 1.0, // queen
                0.0, 0.0, 1.0, // apple
                1.0, 1.0, 1.1, // Queen: a case variant, almost queen
                -1.0, 0.2, 0.0, // pear
            ],
        )
    }

    #[test]
    fn an_analogy_solved_by_construction() {
        let q = analogies(": royals\nman woman king queen\nking queen man woman\nMAN KING WOMAN QUEEN\n");
        let s = q.evaluate(&royals(), &AnalogyOptions::default());
        assert_eq!((s.correct, s.attempted, s.total, s.accuracy, s.coverage), (3, 3, 3, 1.0, 1.0));
        assert_eq!(s.sections, vec![SectionScore { name: "royals".into(), correct: 3, attempted: 3, total: 3 }]);
    }

    #[test]
    fn question_words_are_never_the_answer() {
        // In the second and third questions c is "queen": b - a + c is closest to "Queen" (1.27),
        // then "queen", then "king" (0.61), "apple" (0.58). "queen" is a question word, and
        // "Queen" folds to it: the answer is "king".
        let q = analogies(": x\nman woman king queen\nman woman queen king\nman woman queen apple\n");
        let s = q.evaluate(&royals(), &AnalogyOptions::default());
        assert_eq!((s.correct, s.attempted), (2, 3));
        // Case-sensitive, "Queen" is a word of its own, and it is the closest every time.
        let s = q.evaluate(&royals(), &AnalogyOptions { case_insensitive: false, ..Default::default() });
        assert_eq!((s.correct, s.attempted), (0, 3));
    }

    #[test]
    fn restrict_cuts_questions_and_candidates() {
        let q = analogies(": a\nman woman king queen\n: b\nman woman king apple\nman woman king pear\n");
        // With 4 words, apple and pear are unknown: one question attempted.
        let s = q.evaluate(&royals(), &AnalogyOptions { restrict: 4, ..Default::default() });
        assert_eq!((s.correct, s.attempted, s.total), (1, 1, 3));
        assert!((s.coverage - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(s.sections[1], SectionScore { name: "b".into(), correct: 0, attempted: 0, total: 2 });
        // With 3 words nothing is attempted: accuracy 0, as gensim.
        let s = q.evaluate(&royals(), &AnalogyOptions { restrict: 3, ..Default::default() });
        assert_eq!((s.correct, s.attempted, s.accuracy, s.coverage), (0, 0, 0.0, 0.0));
        // Words beyond the cut are not candidates: with the three question words only, nothing is
        // left to predict, and the question counts as attempted and wrong (gensim predicts None).
        let q = analogies(": a\nman woman king man\n");
        let s = q.evaluate(&royals(), &AnalogyOptions { restrict: 3, ..Default::default() });
        assert_eq!((s.correct, s.attempted), (0, 1));
    }

    #[test]
    fn zero_vectors_are_never_answers() {
        let e = emb(&["a", "b", "c", "zero", "d"], 2, &[1.0, 0.0, 0.0, 1.0, 1.0, 0.1, 0.0, 0.0, -1.0, -1.0]);
        // b - a + c points up; "d" scores below 0, "zero" would score 0 if it were a candidate.
        let q = analogies(": s\na b c d\n");
        let s = q.evaluate(&e, &AnalogyOptions::default());
        assert_eq!((s.correct, s.attempted), (1, 1));
    }

    #[test]
    fn top_k_keeps_the_best_and_earlier_ties() {
        let table = Array2::from_shape_vec((5, 1), vec![1.0, 3.0, 2.0, 3.0, f32::NAN]).unwrap();
        let queries = Array2::from_shape_vec((2, 1), vec![1.0, -1.0]).unwrap();
        let best = top_k(queries.view(), table.view(), 2, |_, x| x == 2);
        assert_eq!(best, vec![vec![(3.0, 1), (3.0, 3)], vec![(-1.0, 0), (-3.0, 1)]]);
        let best = top_k(queries.view(), table.view(), 9, |_, _| false);
        assert_eq!(best[0].iter().map(|b| b.1).collect::<Vec<_>>(), vec![1, 3, 2, 0]);
    }

    #[test]
    fn top_k_matches_a_sort_across_blocks_and_threads() {
        // Small integers: every dot product is exact, and many are equal.
        let mut state = 12_345u64;
        let mut next = move |_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % 5) as f32 - 2.0
        };
        let (nq, nt, dim, k) = (QUERY_BLOCK + 77, ROW_BLOCK + 300, 6, 5);
        let queries = Array2::from_shape_fn((nq, dim), &mut next);
        let table = Array2::from_shape_fn((nt, dim), &mut next);
        let skip = |q: usize, x: usize| (q + x).is_multiple_of(7);
        let got = top_k(queries.view(), table.view(), k, skip);
        assert_eq!(got, top_k_serial(queries.view(), table.view(), k, 0, &skip));
        for (q, got) in got.iter().enumerate() {
            let mut all: Vec<(f32, usize)> =
                (0..nt).filter(|&x| !skip(q, x)).map(|x| (queries.row(q).dot(&table.row(x)), x)).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            assert_eq!(got, &all, "query {q}");
        }
    }

    #[test]
    fn planted_groups() {
        // Two tight groups in opposite directions, and a loner.
        let e = emb(
            &["a1", "a2", "a3", "b1", "b2", "b3", "x"],
            2,
            &[1.0, 0.0, 1.0, 0.1, 1.0, -0.2, -1.0, 0.0, -1.0, 0.1, -1.0, -0.2, 0.0, 1.0],
        );
        let g = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(planted_group_score(&e, &[g(&["a1", "a2", "a3"]), g(&["b1", "b2", "b3"])]), Some(1.0));
        // A group mixing the two: a1's 2 neighbours are a2, a3 (1 of 2 in the group {a1, a2, b1}) ...
        let mixed = planted_group_score(&e, &[g(&["a1", "a2", "b1"])]).unwrap();
        // a1: {a2, a3} → 1/2; a2: {a1, a3} → 1/2; b1: {b2, b3} → 0.
        assert!((mixed - 1.0 / 3.0).abs() < 1e-12, "{mixed}");
        // Unknown words are left out, and k follows the known ones (k = 1, not 2).
        assert_eq!(planted_group_score(&e, &[g(&["a1", "a2", "nope"])]), Some(1.0));
        // Groups of different sizes: {a1, a2, a3} score 1 each (k = 2); in {a1, b1} (k = 1) neither
        // has the other as its nearest.
        let two = planted_group_score(&e, &[g(&["a1", "a2", "a3"]), g(&["a1", "b1"])]).unwrap();
        assert!((two - 0.6).abs() < 1e-12, "{two}");
        assert_eq!(planted_group_score(&e, &[g(&["nope"]), g(&["x"])]), None);
        assert_eq!(planted_group_score(&e, &[]), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_random_bytes(bytes in vec(any::<u8>(), 0..300)) {
            let _ = WordPairs::parse(&bytes[..]);
            let _ = Analogies::parse(&bytes[..]);
        }

        #[test]
        fn parsers_never_panic_on_mutated_files(
            edits in vec((any::<prop::sample::Index>(), prop::sample::select(b"\t\n\r :#\xc3\xff0.5eE-a".to_vec())), 0..8),
        ) {
            let mut p = b"# c\nlove\tsex\t6.77\ntiger\tcat\t7.35\n".to_vec();
            let mut q = b": capital\nAthens Greece Baghdad Iraq\n: b\na b c d\n".to_vec();
            for (i, b) in &edits {
                let i = i.index(p.len());
                p[i] = *b;
                let j = i % q.len();
                q[j] = *b;
            }
            if let Ok(w) = WordPairs::parse(&p[..]) {
                prop_assert!(w.pairs.len() + w.malformed_lines <= p.split(|&b| b == b'\n').count());
                prop_assert!(w.pairs.iter().all(|p| p.score.is_finite()));
            }
            if let Ok(a) = Analogies::parse(&q[..]) {
                prop_assert!(a.total() + a.malformed_lines + a.sections.len() <= q.split(|&b| b == b'\n').count());
            }
        }

        #[test]
        fn scores_stay_in_range(
            words in 1usize..12, dim in 0usize..4, seed in vec(-1.0f32..1.0, 48), restrict in 0usize..14,
        ) {
            let names: Vec<String> = (0..words).map(|i| format!("w{}", i % 7)).collect();
            let data: Vec<f32> = (0..words * dim).map(|i| seed[i % seed.len()]).collect();
            let e = Embeddings::new(names, dim, data);
            let p = pairs("w0\tw1\t1\nw1\tw2\t2\nw3\tw4\t3\nw5\tw6\t0\n");
            let s = p.evaluate(&e, &SimilarityOptions { restrict, case_insensitive: true });
            prop_assert!(s.spearman.is_none_or(|r| (-1.0..=1.0).contains(&r)));
            prop_assert_eq!(s.pairs_used + s.oov_pairs, s.pairs_total);
            let q = analogies(": s\nw0 w1 w2 w3\nw1 w2 w3 w4\nw4 w5 w6 w0\n");
            let a = q.evaluate(&e, &AnalogyOptions { restrict, case_insensitive: false });
            prop_assert!(a.correct <= a.attempted && a.attempted <= a.total);
            let g = planted_group_score(&e, &[vec!["w0".into(), "w1".into(), "w2".into()]]);
            prop_assert!(g.is_none_or(|g| (0.0..=1.0).contains(&g)));
        }
    }
}
