//! word2vec: skip-gram with negative sampling (Mikolov et al., NeurIPS'13) trained on the
//! parameter server, as the original tool and gensim train it.
//!
//! - [`corpus`]: plain-text corpora read as a stream, the vocabulary, subsampling, the
//!   negative-sampling distribution, and the seeded synthetic corpus with planted word groups.
//! - [`vectors`]: trained embeddings and the word2vec text and binary formats.
//! - [`eval`]: word-similarity (Spearman) and analogy (3CosAdd) scores as gensim computes them, and
//!   the planted-group score of the synthetic corpus.

pub mod corpus;
pub mod eval;
pub mod sgns;
pub mod train;
pub mod vectors;

use std::io::BufWriter;

use corpus::Corpus;
use train::{ANALOGY_RESTRICT, Word2vecConfig, Word2vecReport};
use vectors::Embeddings;

/// Scores of the trained vectors; each `None` when not asked for (or, for Spearman, undefined).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Spearman correlation on `--eval-similarity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_spearman: Option<f64>,
    /// Share of its pairs whose words are both known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_coverage: Option<f64>,
    /// Its lines skipped as malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_malformed_lines: Option<u64>,
    /// 3CosAdd accuracy on `--eval-analogy` (30k most frequent words).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analogy_accuracy: Option<f64>,
    /// Share of its questions attempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analogy_coverage: Option<f64>,
    /// Its lines skipped as malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analogy_malformed_lines: Option<u64>,
    /// The synthetic corpus's planted-group score: the mean share of each planted word's nearest
    /// neighbours from its own group (1 is perfect, about group size / vocabulary for noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planted_group_score: Option<f64>,
}

impl Evaluation {
    const FIELDS: usize = 7;

    fn fields(&self) -> [Option<f64>; Self::FIELDS] {
        [
            self.similarity_spearman,
            self.similarity_coverage,
            self.similarity_malformed_lines.map(|n| n as f64),
            self.analogy_accuracy,
            self.analogy_coverage,
            self.analogy_malformed_lines.map(|n| n as f64),
            self.planted_group_score,
        ]
    }

    /// As barrier values: a presence flag and the value per field (so 0 is told from `None`).
    pub(crate) fn to_values(self) -> Vec<f64> {
        self.fields().iter().flat_map(|f| [f64::from(u8::from(f.is_some())), f.unwrap_or(0.0)]).collect()
    }

    /// From summed barrier values to which one worker contributed [`Self::to_values`].
    pub(crate) fn from_values(v: &[f64]) -> Self {
        let at =
            |i: usize| (v.get(2 * i).copied().unwrap_or(0.0) > 0.0).then(|| v.get(2 * i + 1).copied().unwrap_or(0.0));
        Self {
            similarity_spearman: at(0),
            similarity_coverage: at(1),
            similarity_malformed_lines: at(2).map(|n| n as u64),
            analogy_accuracy: at(3),
            analogy_coverage: at(4),
            analogy_malformed_lines: at(5).map(|n| n as u64),
            planted_group_score: at(6),
        }
    }
}

/// word2vec's figures in the job report (`paramserv word2vec --json`), next to the common ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Word2vecSummary {
    /// Corpus words as read (before min-count and subsampling) times epochs, per training second.
    pub words_per_s: f64,
    /// Words in the vocabulary.
    pub vocab_size: u64,
    /// Corpus words as read, one pass.
    pub corpus_words: u64,
    /// Scores of the trained vectors.
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

impl Word2vecSummary {
    /// The figures of a run.
    pub fn of(r: &Word2vecReport) -> Self {
        Self {
            words_per_s: r.words_per_s,
            vocab_size: r.vocab_size,
            corpus_words: r.corpus_words,
            evaluation: r.evaluation,
        }
    }
}

/// Writes `vectors` where `cfg` says and evaluates them.
pub(crate) fn evaluate_and_write(cfg: &Word2vecConfig, vectors: &Embeddings) -> Result<Evaluation, String> {
    if let Some(path) = &cfg.out {
        let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut w = BufWriter::new(file);
        let written =
            if cfg.binary { vectors::write_binary(vectors, &mut w) } else { vectors::write_text(vectors, &mut w) };
        written
            .and_then(|()| std::io::Write::flush(&mut w).map_err(Into::into))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut e = Evaluation::default();
    if let Some(path) = &cfg.eval_similarity {
        let s =
            eval::evaluate_similarity(path, vectors, &eval::SimilarityOptions::default()).map_err(|e| e.to_string())?;
        e.similarity_spearman = s.spearman;
        e.similarity_coverage = Some(s.coverage);
        e.similarity_malformed_lines = Some(s.malformed_lines as u64);
    }
    if let Some(path) = &cfg.eval_analogy {
        let a = eval::evaluate_analogies(path, vectors, ANALOGY_RESTRICT).map_err(|e| e.to_string())?;
        e.analogy_accuracy = Some(a.accuracy);
        e.analogy_coverage = Some(a.coverage);
        e.analogy_malformed_lines = Some(a.malformed_lines as u64);
    }
    if let Corpus::Synthetic(s) = &cfg.corpus {
        e.planted_group_score = eval::planted_group_score(vectors, &s.planted_groups());
    }
    Ok(e)
}
