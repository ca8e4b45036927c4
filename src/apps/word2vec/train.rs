//! The word2vec trainer on the parameter server.
//!
//! Two tables of `vocabulary × dim` rows: `w2v_in` (the word vectors, uniform in ±0.5/dim like
//! the original tool) and `w2v_out` (the output vectors, zeros). Every worker reads the same
//! vocabulary from the corpus, trains on its share of the sentences (the job's partition scheme;
//! sentences are the samples), and per step:
//!
//! 1. builds a minibatch from its next sentences: subsampling, a window shrunk at random per word,
//!    `negative` words drawn from unigram^0.75 per pair, so that every row the step touches is
//!    known before it runs;
//! 2. pulls those rows of both tables (with `--prefetch`, pulled while the previous step computed);
//! 3. trains them locally ([`super::sgns`]), pair after pair, at the linearly decaying rate;
//! 4. pushes each row's change through the table's codec pipeline; servers apply plain SGD at
//!    rate 1, so they add the changes. The learning rate is the workers' `alpha`, as in the
//!    original, whatever the job's optimizer.
//!
//! With a codec that has error feedback, a worker adds what its codec still holds back of its own
//! pushes to the rows it pulls (read-my-writes: it trains on its own updates whole, as without
//! compression), and after the last step pushes that remainder uncoded, so the servers' vectors
//! miss nothing. The keys of a minibatch ascend, so key lists travel delta-coded.
//!
//! Every worker runs the same number of steps per epoch (a worker with fewer sentences runs empty
//! steps), so BSP, SSP and backup workers line up. After each epoch the workers sum the loss at a
//! barrier; after the last, worker 0 pulls the word vectors, writes them and evaluates them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::Evaluation;
use super::corpus::{Corpus, CorpusError, CorpusStats, NegativeSampler, Vocab, keep_probabilities};
use super::sgns::{Pairs, SigmoidTable, train_pairs};
use super::vectors::Embeddings;
use crate::apps::logreg::EpochStats;
use crate::apps::loss::LossSum;
use crate::apps::partition;
use crate::cluster::job::ConfigError;
use crate::proto::partition::Partitioning;
use crate::rng::SplitMix64;
use crate::server::optimizer::OptimizerSpec;
use crate::server::table::{Init, TableSpec};
use crate::worker::{CodecTraffic, LinkReport, PendingPush, Prefetch, SwitchTraffic, Worker, WorkerError};

/// Name of the word-vector table.
pub const INPUT_TABLE: &str = "w2v_in";
/// Name of the output-vector table.
pub const OUTPUT_TABLE: &str = "w2v_out";

/// The corpus, the hyper-parameters (named as in the original tool) and what to do with the result.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Word2vecConfig {
    /// Where the sentences come from.
    pub corpus: Corpus,
    /// Values per word vector.
    pub dim: u32,
    /// Largest distance between a centre word and its context words.
    pub window: u32,
    /// Negative samples per (context, centre) pair.
    pub negative: u32,
    /// Words seen fewer times are dropped.
    pub min_count: u64,
    /// Subsampling threshold (0: off).
    pub sample: f64,
    /// Passes over the corpus.
    pub epochs: u32,
    /// Starting learning rate, decaying linearly to `min_alpha`.
    pub alpha: f32,
    /// Final learning rate.
    pub min_alpha: f32,
    /// Corpus words per minibatch (a step pushes once per minibatch).
    pub batch_words: u32,
    /// The vocabulary size the job's tables were made for (checked by every worker, so that nodes
    /// reading different files fail instead of training garbage).
    pub vocab_size: u64,
    /// Where worker 0 writes the vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Write the binary format instead of text.
    #[serde(default)]
    pub binary: bool,
    /// A word-similarity file (WordSim-353 style) to evaluate on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_similarity: Option<PathBuf>,
    /// An analogy file (questions-words style) to evaluate on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_analogy: Option<PathBuf>,
}

impl Word2vecConfig {
    /// The defaults of the original tool's README and gensim (`sg=1`) on `corpus`, whose vocabulary
    /// size is still to be filled in by [`Self::with_vocabulary`].
    pub fn new(corpus: Corpus) -> Self {
        Self {
            corpus,
            dim: 100,
            window: 5,
            negative: 5,
            min_count: 5,
            sample: 1e-3,
            epochs: 5,
            alpha: 0.025,
            min_alpha: 0.0001,
            batch_words: 10_000,
            vocab_size: 0,
            out: None,
            binary: false,
            eval_similarity: None,
            eval_analogy: None,
        }
    }

    /// Reads the corpus (once per process) and records its vocabulary size.
    pub fn with_vocabulary(mut self) -> Result<Self, CorpusError> {
        let scan = scan(&self.corpus, self.min_count)?;
        self.vocab_size = scan.vocab.len() as u64;
        Ok(self)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, detail: String| Err(ConfigError::Invalid { field, detail });
        if !(1..=4096).contains(&self.dim) {
            return bad("dim", format!("{} (must be 1 to 4096)", self.dim));
        }
        if !(1..=100).contains(&self.window) {
            return bad("window", format!("{} (must be 1 to 100)", self.window));
        }
        if !(1..=100).contains(&self.negative) {
            return bad("negative", format!("{} (must be 1 to 100)", self.negative));
        }
        if self.min_count == 0 {
            return bad("min-count", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.sample) {
            return bad("sample", format!("{} (must be in [0, 1))", self.sample));
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0 && (0.0..=self.alpha).contains(&self.min_alpha)) {
            return bad(
                "alpha",
                format!("alpha {} and min-alpha {} (need 0 < min-alpha <= alpha <= 1)", self.alpha, self.min_alpha),
            );
        }
        if self.batch_words == 0 {
            return bad("batch-words", "must be at least 1".into());
        }
        if self.vocab_size == 0 {
            return bad("vocabulary", "the corpus was not read (vocab_size 0)".into());
        }
        Ok(())
    }

    /// The job's tables.
    pub fn tables(&self, partitioning: Partitioning) -> Vec<TableSpec> {
        let half = 0.5 / self.dim as f32;
        // Workers apply the learning rate; servers add the changes.
        let add = Some(OptimizerSpec::Sgd { lr: 1.0 });
        vec![
            TableSpec {
                init: Init::Uniform { low: -half, high: half },
                partitioning,
                optimizer: add,
                ..TableSpec::new(INPUT_TABLE, self.vocab_size, self.dim)
            },
            TableSpec {
                init: Init::Zeros,
                partitioning,
                optimizer: add,
                ..TableSpec::new(OUTPUT_TABLE, self.vocab_size, self.dim)
            },
        ]
    }
}

/// A corpus read once: its vocabulary and counts.
#[derive(Debug)]
pub struct Scan {
    /// The vocabulary.
    pub vocab: Vocab,
    /// Counts of the pass.
    pub stats: CorpusStats,
}

/// The vocabulary of `corpus`, read once per process and shared (workers of an in-process
/// cluster, and the command line before them, read the same file).
pub fn scan(corpus: &Corpus, min_count: u64) -> Result<Arc<Scan>, CorpusError> {
    type Cache = Mutex<HashMap<String, Arc<Scan>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = format!("{corpus:?}/{min_count}");
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(s) = cache.lock().expect("the scan cache is never poisoned").get(&key) {
        return Ok(Arc::clone(s));
    }
    let (vocab, stats) = corpus.scan(min_count)?;
    let scan = Arc::new(Scan { vocab, stats });
    cache.lock().expect("the scan cache is never poisoned").insert(key, Arc::clone(&scan));
    Ok(scan)
}

/// Where training is, for a progress display: called by each worker after each step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepProgress {
    /// This worker's corpus words trained so far, over all epochs.
    pub words: u64,
    /// This worker's corpus words for the whole run.
    pub total_words: u64,
    /// Mean loss per pair of this step.
    pub loss: f64,
    /// Bytes this worker sent and received over its server links so far.
    pub bytes: u64,
}

/// What a run produced; every worker returns the same figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Word2vecReport {
    /// Loss after each epoch.
    pub losses: Vec<f64>,
    /// Loss of the last epoch.
    pub final_loss: f64,
    /// Corpus words as read (before min-count and subsampling) times epochs, per training second:
    /// the convention of gensim's and the original tool's words/s.
    pub words_per_s: f64,
    /// Training seconds, first step to last barrier.
    pub seconds: f64,
    /// Words in the vocabulary.
    pub vocab_size: u64,
    /// Corpus words as read, one pass.
    pub corpus_words: u64,
    /// Steps of the job.
    pub steps: u64,
    /// Scores of the trained vectors.
    pub evaluation: Evaluation,
    /// Bytes of every worker–server link.
    pub links: Vec<LinkReport>,
    /// Per table: values' bytes as raw `f32` and on the wire, summed over workers.
    pub codecs: Vec<CodecTraffic>,
    /// Traffic with the switch agent, summed over workers.
    pub switch: SwitchTraffic,
}

/// Analogy questions are answered among this many most frequent words (gensim's convention for
/// comparisons on large vocabularies).
pub const ANALOGY_RESTRICT: usize = 30_000;

/// One worker's sentences: word ids back to back, and per sentence its index, range and corpus
/// word count.
#[derive(Default)]
struct Share {
    words: Vec<u32>,
    sentences: Vec<(u64, usize, usize, u32)>,
}

impl Share {
    /// The sentences of `indices` (any order), read from the corpus.
    fn load(corpus: &Corpus, vocab: &Vocab, indices: &[u64]) -> Result<Self, CorpusError> {
        let mut wanted = indices.to_vec();
        wanted.sort_unstable();
        let mut share = Self::default();
        for s in corpus.sentences_filtered(vocab, |i| wanted.binary_search(&i).is_ok())? {
            let s = s?;
            let start = share.words.len();
            share.words.extend_from_slice(&s.words);
            share.sentences.push((s.index, start, share.words.len(), s.raw_tokens));
        }
        Ok(share)
    }

    /// Sentence `index`: its word ids and corpus word count.
    fn get(&self, index: u64) -> Option<(&[u32], u32)> {
        let at = self.sentences.binary_search_by_key(&index, |s| s.0).ok()?;
        let (_, start, end, raw) = self.sentences[at];
        Some((&self.words[start..end], raw))
    }
}

/// A step's minibatch: the rows it touches (ascending keys) and its pairs in local row numbers.
struct Minibatch {
    input_keys: Vec<u64>,
    output_keys: Vec<u64>,
    pairs: Pairs,
    /// Corpus words of its sentences (before subsampling).
    words: u64,
}

/// What a worker needs to build minibatches.
struct Builder<'a> {
    cfg: &'a Word2vecConfig,
    keep: Vec<f32>,
    sampler: NegativeSampler,
    /// Per word: its local row in the batch being built (`u32::MAX`: none yet), for both tables.
    input_slot: Vec<u32>,
    output_slot: Vec<u32>,
}

impl<'a> Builder<'a> {
    fn new(cfg: &'a Word2vecConfig, vocab: &Vocab) -> Self {
        let n = vocab.len();
        Self {
            cfg,
            keep: keep_probabilities(vocab, cfg.sample),
            sampler: NegativeSampler::new(vocab, 0.75),
            input_slot: vec![u32::MAX; n],
            output_slot: vec![u32::MAX; n],
        }
    }

    /// The minibatch of `sentences`, drawing subsampling, window and negatives from `rng`.
    fn build<'s>(&mut self, sentences: impl Iterator<Item = (&'s [u32], u32)>, rng: &mut SplitMix64) -> Minibatch {
        let (window, negative) = (self.cfg.window as usize, self.cfg.negative as usize);
        let mut pairs = Pairs { negative, ..Pairs::default() };
        let (mut input_keys, mut output_keys) = (Vec::new(), Vec::new());
        let mut words = 0u64;
        let mut kept = Vec::new();
        let slot = |slots: &mut Vec<u32>, keys: &mut Vec<u64>, w: u32| {
            let s = &mut slots[w as usize];
            if *s == u32::MAX {
                *s = keys.len() as u32;
                keys.push(u64::from(w));
            }
            *s
        };
        for (sentence, raw) in sentences {
            words += u64::from(raw);
            kept.clear();
            // Subsampling: keep word w with probability keep[w] (one draw per occurrence).
            kept.extend(sentence.iter().copied().filter(|&w| {
                let p = self.keep[w as usize];
                p >= 1.0 || rng.next_f32() < p
            }));
            for (i, &centre) in kept.iter().enumerate() {
                let reduced = window - (rng.next_u64() % window as u64) as usize;
                let (lo, hi) = (i.saturating_sub(reduced), (i + reduced + 1).min(kept.len()));
                for (j, &context) in kept.iter().enumerate().take(hi).skip(lo) {
                    if j == i {
                        continue;
                    }
                    let x = slot(&mut self.input_slot, &mut input_keys, context);
                    let y = slot(&mut self.output_slot, &mut output_keys, centre);
                    pairs.pairs.push((x, y));
                    for _ in 0..negative {
                        let n = self.sampler.sample(rng.next_u64());
                        pairs.negatives.push(slot(&mut self.output_slot, &mut output_keys, n));
                    }
                }
            }
        }
        // The slots are reset for the next minibatch.
        for &k in &input_keys {
            self.input_slot[k as usize] = u32::MAX;
        }
        for &k in &output_keys {
            self.output_slot[k as usize] = u32::MAX;
        }
        // Keys in ascending order, local rows renumbered to match: ascending key lists travel
        // delta-coded (a byte or two per key instead of eight).
        let input_rank = sort_keys(&mut input_keys);
        let output_rank = sort_keys(&mut output_keys);
        for (x, y) in &mut pairs.pairs {
            (*x, *y) = (input_rank[*x as usize], output_rank[*y as usize]);
        }
        for n in &mut pairs.negatives {
            *n = output_rank[*n as usize];
        }
        Minibatch { input_keys, output_keys, pairs, words }
    }
}

/// Sorts distinct `keys` and returns, per old position, the key's new position.
fn sort_keys(keys: &mut [u64]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize]);
    let mut rank = vec![0u32; keys.len()];
    for (new, &old) in order.iter().enumerate() {
        rank[old as usize] = new as u32;
    }
    keys.sort_unstable();
    rank
}

/// The sentence indices of `step` (an index range of the epoch's order), as many per step as
/// make about `batch_words` corpus words on average.
fn step_range(step_in_epoch: u64, per_step: u64, share_len: usize) -> std::ops::Range<usize> {
    let start = (step_in_epoch * per_step).min(share_len as u64) as usize;
    let end = ((step_in_epoch + 1) * per_step).min(share_len as u64) as usize;
    start..end
}

/// A step's pulls of both tables, running in the background.
struct Fetch(Prefetch, Prefetch);

impl Fetch {
    /// Starts the pulls of the step after the current one ([`Worker::prefetch`]).
    fn next_step(worker: &Worker, tables: (u32, u32), batch: &Minibatch) -> Self {
        Self(worker.prefetch(tables.0, batch.input_keys.clone()), worker.prefetch(tables.1, batch.output_keys.clone()))
    }

    /// The rows of both tables.
    async fn wait(self) -> Result<(Vec<f32>, Vec<f32>), WorkerError> {
        Ok((self.0.wait().await?, self.1.wait().await?))
    }
}

/// Trains on `worker`'s share; calls `on_epoch` after every epoch with the global loss and
/// `on_step` after each of this worker's steps.
pub async fn train(
    worker: &Worker,
    cfg: &Word2vecConfig,
    mut on_epoch: impl FnMut(&EpochStats),
    on_step: impl Fn(&StepProgress),
) -> Result<Word2vecReport, WorkerError> {
    let app = |e: CorpusError| WorkerError::App(e.to_string());
    let tables = (worker.table(INPUT_TABLE)?, worker.table(OUTPUT_TABLE)?);
    let job = worker.job().clone();
    let scan = scan(&cfg.corpus, cfg.min_count).map_err(app)?;
    let vocab = &scan.vocab;
    if vocab.len() as u64 != cfg.vocab_size {
        return Err(WorkerError::App(format!(
            "this worker's corpus has {} words above min-count {}, the job's tables {}: do all nodes read the \
             same corpus?",
            vocab.len(),
            cfg.min_count,
            cfg.vocab_size
        )));
    }
    let sentences = scan.stats.sentences;
    let corpus_words = vocab.corpus_words();
    // Sentences per step: about `batch_words` corpus words on average.
    let per_step =
        (u128::from(cfg.batch_words) * u128::from(sentences) / u128::from(corpus_words.max(1))).max(1) as u64;
    let share_len = |rank: u32, epoch: u64| {
        partition::share(job.partition, sentences, rank, worker.workers(), job.seed, epoch, job.reshuffle).len()
    };
    // Shares may differ by a sentence; every worker runs the largest share's number of steps.
    let largest = (0..worker.workers()).map(|r| share_len(r, 0)).max().unwrap_or(0) as u64;
    let steps_per_epoch = largest.div_ceil(per_step).max(1);
    let total = u64::from(cfg.epochs) * steps_per_epoch;

    let mut builder = Builder::new(cfg, vocab);
    let table = Arc::new(SigmoidTable::default());
    let dim = cfg.dim as usize;
    // The share, reloaded when an epoch's share is another set of sentences.
    let mut order: Vec<u64> = Vec::new();
    let mut share = Share::default();
    let mut loaded_for: Option<Vec<u64>> = None;
    let mut my_total_words = 0u64;
    let (mut words_done, mut epoch_loss) = (0u64, LossSum::default());
    let mut losses = Vec::with_capacity(cfg.epochs as usize);
    let mut pending_push: Option<(PendingPush, PendingPush)> = None;
    let mut next: Option<(u64, Minibatch, Fetch)> = None;
    let start = Instant::now();

    let mut load_epoch = |epoch: u64, order: &mut Vec<u64>, share: &mut Share| -> Result<(), WorkerError> {
        *order =
            partition::share(job.partition, sentences, worker.rank(), worker.workers(), job.seed, epoch, job.reshuffle);
        let mut set = order.clone();
        set.sort_unstable();
        if loaded_for.as_ref() != Some(&set) {
            *share = Share::load(&cfg.corpus, vocab, &set).map_err(app)?;
            loaded_for = Some(set);
        }
        Ok(())
    };
    load_epoch(0, &mut order, &mut share)?;
    let my_epoch_words: u64 = order.iter().filter_map(|&i| share.get(i)).map(|(_, raw)| u64::from(raw)).sum();
    my_total_words += my_epoch_words * u64::from(cfg.epochs);
    let mut loaded_epoch = 0u64;

    while worker.step() < total {
        let step = worker.step();
        let epoch = step / steps_per_epoch;
        if epoch != loaded_epoch {
            load_epoch(epoch, &mut order, &mut share)?;
            loaded_epoch = epoch;
        }
        let build = |builder: &mut Builder<'_>, order: &[u64], share: &Share, step: u64| {
            let range = step_range(step % steps_per_epoch, per_step, order.len());
            let mut rng = SplitMix64::for_item(job.seed ^ MINIBATCH_STREAM, step * 65_536 + u64::from(worker.rank()));
            builder.build(order[range].iter().filter_map(|&i| share.get(i)), &mut rng)
        };
        let (batch, mut pulled_input, mut pulled_output) = match next.take() {
            Some((s, b, f)) if s == step => {
                let (input, output) = f.wait().await?;
                (b, input, output)
            }
            // No prefetch, or a late backup worker jumped past the prefetched step.
            _ => {
                let b = build(&mut builder, &order, &share, step);
                let (input, output) = tokio::try_join!(
                    worker.pull(tables.0, b.input_keys.as_slice()),
                    worker.pull(tables.1, b.output_keys.as_slice())
                )?;
                (b, input, output)
            }
        };
        // Read-my-writes: what error feedback still holds back of this worker's pushes is part of
        // its rows (servers subtract pushes, hence -1). Without it, a codec that sends 1% of the
        // values a step trains on rows that lack most of the worker's own recent updates.
        worker.add_held_back(tables.0, &batch.input_keys, -1.0, &mut pulled_input)?;
        worker.add_held_back(tables.1, &batch.output_keys, -1.0, &mut pulled_output)?;
        let progress = (words_done as f64 / my_total_words.max(1) as f64).min(1.0) as f32;
        let alpha = cfg.alpha - (cfg.alpha - cfg.min_alpha) * progress;
        let (pairs, table_ref) = (batch.pairs, Arc::clone(&table));
        let (input_before, output_before) = (pulled_input.clone(), pulled_output.clone());
        let (mut input, mut output, pairs_trained, loss) = tokio::task::spawn_blocking(move || {
            let (mut input, mut output) = (pulled_input, pulled_output);
            let loss = train_pairs(&pairs, &mut input, &mut output, dim, alpha, &table_ref);
            (input, output, pairs.pairs.len(), loss)
        })
        .await
        .map_err(|e| WorkerError::App(format!("the training thread failed: {e}")))?;
        // Servers subtract the pushed values (SGD at rate 1): push minus the change.
        for (now, before) in input.iter_mut().zip(&input_before) {
            *now = before - *now;
        }
        for (now, before) in output.iter_mut().zip(&output_before) {
            *now = before - *now;
        }
        if let Some((a, b)) = pending_push.take() {
            a.wait().await?;
            b.wait().await?;
        }
        let push_in = worker.push_in_background(tables.0, batch.input_keys.as_slice(), &input).await?;
        let push_out = worker.push_in_background(tables.1, batch.output_keys.as_slice(), &output).await?;
        pending_push = Some((push_in, push_out));
        // The next step's pulls, sent after this step's pushes so that servers answer them with
        // this worker's change in (a pull sent earlier would miss it, the next push would repeat
        // it, and training diverges). They overlap the acknowledgements, the clock and the next
        // step's minibatch.
        if job.prefetch && step + 1 < total && (step + 1) / steps_per_epoch == epoch {
            let b = build(&mut builder, &order, &share, step + 1);
            let f = Fetch::next_step(worker, tables, &b);
            next = Some((step + 1, b, f));
        }
        words_done += batch.words;
        if pairs_trained > 0 {
            epoch_loss.add_many(loss, pairs_trained as f64);
        }
        on_step(&StepProgress {
            words: words_done,
            total_words: my_total_words,
            loss: if pairs_trained > 0 { loss / pairs_trained as f64 } else { f64::NAN },
            bytes: worker.links().iter().map(|l| l.counters.bytes_sent() + l.counters.bytes_received()).sum(),
        });
        if job.consistency.is_gated()
            && let Some((a, b)) = pending_push.take()
        {
            // A gated step ends once its pushes are applied.
            a.wait().await?;
            b.wait().await?;
        }
        worker.clock().await?;
        while losses.len() < cfg.epochs as usize && worker.step() >= (losses.len() as u64 + 1) * steps_per_epoch {
            if let Some((a, b)) = pending_push.take() {
                a.wait().await?;
                b.wait().await?;
            }
            let total_loss = LossSum::from_slice(&worker.barrier(&epoch_loss.to_vec()).await?);
            epoch_loss = LossSum::default();
            losses.push(total_loss.mean());
            on_epoch(&EpochStats {
                epoch: losses.len() as u32,
                loss: total_loss.mean(),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
    if let Some((a, b)) = pending_push.take() {
        a.wait().await?;
        b.wait().await?;
    }
    // What error feedback still holds back goes to the servers uncoded, and every worker's is in
    // before worker 0 reads the vectors.
    worker.flush_held_back(tables.0).await?;
    worker.flush_held_back(tables.1).await?;
    worker.barrier(&[]).await?;
    let seconds = start.elapsed().as_secs_f64();
    let evaluation = finish(worker, cfg, vocab, tables.0).await?;
    let links = worker.cluster_links().await?;
    let codecs = worker.cluster_codec_traffic().await?;
    let switch = worker.cluster_switch_traffic().await?;
    Ok(Word2vecReport {
        final_loss: *losses.last().expect("at least one epoch"),
        losses,
        words_per_s: (corpus_words * u64::from(cfg.epochs)) as f64 / seconds,
        seconds,
        vocab_size: vocab.len() as u64,
        corpus_words,
        steps: total,
        evaluation,
        links,
        codecs,
        switch,
    })
}

/// Stream tag of minibatch draws (subsampling, windows, negatives).
const MINIBATCH_STREAM: u64 = 0x3c1d_9a2e_0000_0001;

/// Worker 0 pulls the word vectors, writes them and evaluates them; every worker gets the scores.
async fn finish(
    worker: &Worker,
    cfg: &Word2vecConfig,
    vocab: &Vocab,
    input_table: u32,
) -> Result<Evaluation, WorkerError> {
    let mut mine = Evaluation::default().to_values();
    if worker.rank() == 0 {
        let keys: Vec<u64> = (0..vocab.len() as u64).collect();
        let data = worker.pull(input_table, keys.as_slice()).await?;
        let vectors = Embeddings::new(vocab.words().to_vec(), cfg.dim as usize, data);
        let cfg = cfg.clone();
        let evaluation = tokio::task::spawn_blocking(move || super::evaluate_and_write(&cfg, &vectors))
            .await
            .map_err(|e| WorkerError::App(format!("the evaluation thread failed: {e}")))?
            .map_err(WorkerError::App)?;
        mine = evaluation.to_values();
    }
    Ok(Evaluation::from_values(&worker.barrier(&mine).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny synthetic corpus, 2 workers: training lowers the loss well below its start, under
    /// ASP and BSP, with and without prefetch (a prefetch sent before the worker's own last push
    /// misses it: the loss then grew without bound; under BSP, pulling the current step as the
    /// next one hung the first step).
    #[test]
    fn training_lowers_the_loss_with_and_without_prefetch() {
        use crate::apps::word2vec::corpus::SyntheticCorpus;
        use crate::cluster::job::{AppConfig, JobConfig};
        use crate::cluster::local::LocalCluster;
        use crate::proto::consistency::Consistency;
        use crate::transport::Transport;
        let corpus = Corpus::Synthetic(SyntheticCorpus {
            background_words: 300,
            groups: 5,
            group_size: 5,
            sentences: 5_000,
            sentence_length: 10,
            topic_probability: 0.3,
            ..SyntheticCorpus::default()
        });
        let cfg = Word2vecConfig { dim: 16, epochs: 4, batch_words: 2_000, ..Word2vecConfig::new(corpus) }
            .with_vocabulary()
            .unwrap();
        let initial = f64::from(1 + cfg.negative) * std::f64::consts::LN_2;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let strategies = [Consistency::Asp, Consistency::Bsp];
        for (consistency, prefetch) in strategies.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let mut job =
                JobConfig::new(AppConfig::Word2vec(cfg.clone()), cfg.tables(Partitioning::default())).unwrap();
            (job.consistency, job.prefetch) = (consistency, prefetch);
            let reports = runtime
                .block_on(LocalCluster::new(1, 2, Transport::Inproc).run(&job, {
                    let cfg = cfg.clone();
                    move |w| {
                        let cfg = cfg.clone();
                        async move { train(&w, &cfg, |_| {}, |_| {}).await }
                    }
                }))
                .unwrap();
            let r = &reports[0];
            let what = format!("{consistency}, prefetch {prefetch}");
            assert!(r.final_loss < 0.75 * initial, "{what}: {initial} -> {:?}", r.losses);
            assert!(r.losses.windows(2).all(|w| w[1] < w[0]), "{what}: {:?}", r.losses);
            // Random vectors score about group size / vocabulary = 0.015 here.
            assert!(r.evaluation.planted_group_score.is_some_and(|q| q > 0.8), "{:?}", r.evaluation);
        }
    }

    /// Keys ascend (so they travel delta-coded) and local rows still name the right words.
    #[test]
    fn minibatch_keys_ascend_and_pairs_name_the_words_of_the_window() {
        use crate::apps::word2vec::corpus::SyntheticCorpus;
        let vocab = Vocab::from_counts([("a", 50), ("b", 40), ("c", 30), ("d", 20), ("e", 10)], 1).unwrap();
        let cfg = Word2vecConfig {
            window: 1,
            sample: 0.0,
            negative: 3,
            ..Word2vecConfig::new(Corpus::Synthetic(SyntheticCorpus::default()))
        };
        let mut builder = Builder::new(&cfg, &vocab);
        let sentences: [&[u32]; 2] = [&[4, 1, 3], &[2, 0]];
        let batch = builder.build(sentences.iter().map(|s| (*s, s.len() as u32)), &mut SplitMix64::for_item(7, 0));
        for keys in [&batch.input_keys, &batch.output_keys] {
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        }
        let mut pairs: Vec<(u64, u64)> = batch
            .pairs
            .pairs
            .iter()
            .map(|&(x, y)| (batch.input_keys[x as usize], batch.output_keys[y as usize]))
            .collect();
        pairs.sort_unstable();
        // (context, centre) within one word of each other, in the same sentence.
        assert_eq!(pairs, [(0, 2), (1, 3), (1, 4), (2, 0), (3, 1), (4, 1)]);
        assert_eq!(batch.pairs.negatives.len(), 6 * 3);
        assert!(batch.pairs.negatives.iter().all(|&n| (n as usize) < batch.output_keys.len()));
        assert_eq!(batch.words, 5);
        // The slots are reset: the next batch starts afresh.
        let again = builder.build(sentences[1..].iter().map(|s| (*s, s.len() as u32)), &mut SplitMix64::for_item(8, 0));
        assert_eq!(again.input_keys, [0, 2]);
    }

    #[test]
    fn step_ranges_cover_the_share_once() {
        let (len, per) = (10usize, 3u64);
        let ranges: Vec<_> = (0..5).map(|s| step_range(s, per, len)).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..9, 9..10, 10..10]);
    }
}
