//! Logistic regression with sparse binary features on a seeded synthetic dataset.
//!
//! The dataset is a pure function of the job seed: sample `i` has `nnz` features drawn with a skew
//! towards low ids (so some parameters are hot, as in real sparse data), and its label is the sign
//! of a hidden weight vector's score, so the data are separable and the loss can fall far below
//! its starting value `ln 2`. Each worker generates only its own contiguous share of the samples.
//!
//! Per minibatch a worker pulls the weights of the batch's features, computes the gradient of the
//! mean logistic loss, and pushes it; servers apply `w -= lr × g`. After every epoch the workers
//! meet at a barrier, evaluate the loss on their shares and sum it at a second barrier, so every
//! worker reports the same global loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::loss::{LossSum, logistic};
use super::partition::{self, DataPartition};
use crate::cluster::job::{Aggregation, ConfigError};
use crate::proto::partition::Partitioning;
use crate::rng::SplitMix64;
use crate::server::table::{Init, TableSpec};
use crate::worker::{CodecTraffic, LinkReport, Prefetch, SwitchTraffic, Worker, WorkerError};

/// Name of the weight table.
pub const TABLE: &str = "weights";

/// The dataset and the training schedule.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogregConfig {
    /// Number of features (rows of the weight table).
    pub features: u64,
    /// Number of samples, split over workers.
    pub samples: u64,
    /// Features drawn per sample (duplicates merge).
    pub nnz: u32,
    /// Samples per minibatch.
    pub batch: u32,
    /// Passes over the data.
    pub epochs: u32,
    /// Probability that a label is flipped. At 0 the classes are separable and the loss falls
    /// towards 0 for as long as training runs; label noise gives the loss a floor, so runs that
    /// train differently (codecs, strategies) can be compared where each has converged.
    #[serde(default)]
    pub label_noise: f64,
}

impl Default for LogregConfig {
    fn default() -> Self {
        Self { features: 100_000, samples: 200_000, nnz: 20, batch: 64, epochs: 5, label_noise: 0.0 }
    }
}

impl LogregConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, detail: String| Err(ConfigError::Invalid { field, detail });
        if self.features == 0 {
            return bad("features", "must be at least 1".into());
        }
        if self.samples == 0 {
            return bad("samples", "must be at least 1".into());
        }
        if !(1..=4096).contains(&self.nnz) {
            return bad("nnz", format!("{} (must be 1 to 4096)", self.nnz));
        }
        if self.batch == 0 {
            return bad("batch size", "must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&self.label_noise) {
            return bad("label noise", format!("{} (must be in [0, 0.5])", self.label_noise));
        }
        Ok(())
    }

    /// The job's tables.
    pub fn tables(&self, partitioning: Partitioning, init: Init) -> Vec<TableSpec> {
        vec![TableSpec { init, partitioning, ..TableSpec::new(TABLE, self.features, 1) }]
    }
}

/// One sample: sorted distinct feature ids and a label in {-1, +1}.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Active features (value 1), sorted, distinct.
    pub features: Vec<u64>,
    /// Label, -1 or +1.
    pub label: f32,
}

/// Stream tags, so samples and hidden weights never share random numbers.
const SAMPLE_STREAM: u64 = 0x5a3f_11c2_0000_0001;
const WEIGHT_STREAM: u64 = 0x5a3f_11c2_0000_0002;

/// Sample `index` of the dataset of `cfg` seeded with `seed`.
pub fn sample(seed: u64, cfg: &LogregConfig, index: u64) -> Sample {
    let mut rng = SplitMix64::for_item(seed ^ SAMPLE_STREAM, index);
    let mut features: Vec<u64> = (0..cfg.nnz)
        .map(|_| {
            // u² skews draws towards low ids: the first features are hot.
            let u = rng.next_f64();
            ((u * u * cfg.features as f64) as u64).min(cfg.features - 1)
        })
        .collect();
    features.sort_unstable();
    features.dedup();
    let score: f64 = features.iter().map(|&f| SplitMix64::for_item(seed ^ WEIGHT_STREAM, f).next_normal()).sum();
    let label = if score >= 0.0 { 1.0 } else { -1.0 };
    // Drawn after the features, so a noise level changes labels and nothing else.
    let flip = cfg.label_noise > 0.0 && rng.next_f64() < cfg.label_noise;
    Sample { features, label: if flip { -label } else { label } }
}

/// The samples worker `rank` of `workers` evaluates the loss on: a contiguous share.
pub fn eval_share(seed: u64, cfg: &LogregConfig, rank: u32, workers: u32) -> Vec<Sample> {
    let (r, n) = (u128::from(rank), u128::from(workers));
    let total = u128::from(cfg.samples);
    let (start, end) = ((total * r / n) as u64, (total * (r + 1) / n) as u64);
    (start..end).map(|i| sample(seed, cfg, i)).collect()
}

/// The loss after one epoch.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: u32,
    /// Mean logistic loss over all samples of all workers.
    pub loss: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

/// What a training run produced; every worker returns the same global figures, except the
/// per-worker step counts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainReport {
    /// Mean loss before training.
    pub initial_loss: f64,
    /// Mean loss after the last epoch.
    pub final_loss: f64,
    /// Loss after each epoch.
    pub losses: Vec<f64>,
    /// Epochs run.
    pub epochs: u32,
    /// Steps of the job (each step pushes once per worker: `nfetch` minibatches).
    pub steps: u64,
    /// Steps this worker computed.
    pub worker_steps: u64,
    /// Of those, steps whose pushes were dropped because they came late (backup workers).
    pub late_steps: u64,
    /// Seconds from the first minibatch to the last barrier.
    pub seconds: f64,
    /// Bytes of every worker–server link.
    pub links: Vec<LinkReport>,
    /// Per table: values' bytes as raw `f32` and on the wire, summed over workers.
    pub codecs: Vec<CodecTraffic>,
    /// Bytes exchanged with the switch agent, summed over workers (zero without switch
    /// aggregation; not in `links`).
    pub switch: SwitchTraffic,
}

/// Extra behaviour for experiments (benchmarks), not part of the job configuration.
#[derive(Clone, Default)]
pub struct TrainHooks {
    /// Extra compute time of worker `rank` in step `step`, slept after computing: a way to make
    /// stragglers.
    pub step_delay: Option<Arc<dyn Fn(u32, u64) -> Duration + Send + Sync>>,
}

impl std::fmt::Debug for TrainHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainHooks").field("step_delay", &self.step_delay.is_some()).finish()
    }
}

/// One epoch's minibatches of a worker, generated once: `order` is the sample order they came
/// from, so an epoch with the same order (no reshuffling) reuses them.
struct EpochData {
    epoch: u64,
    order: Vec<u64>,
    batches: Vec<Arc<[Sample]>>,
}

impl EpochData {
    /// Makes `self` hold `epoch`'s minibatches.
    fn load(this: &mut Option<Self>, worker: &Worker, cfg: &LogregConfig, epoch: u64) {
        if this.as_ref().is_some_and(|d| d.epoch == epoch) {
            return;
        }
        let job = worker.job();
        let order = partition::share(
            job.partition,
            cfg.samples,
            worker.rank(),
            worker.workers(),
            job.seed,
            epoch,
            job.reshuffle,
        );
        if let Some(d) = this.as_mut().filter(|d| d.order == order) {
            d.epoch = epoch;
            return;
        }
        let batches = order
            .chunks(cfg.batch as usize)
            .map(|c| c.iter().map(|&i| sample(job.seed, cfg, i)).collect::<Vec<_>>().into())
            .collect();
        *this = Some(Self { epoch, order, batches });
    }
}

/// Minibatches per epoch, the same for every worker: the largest share's.
fn batches_per_epoch(worker: &Worker, cfg: &LogregConfig) -> u64 {
    let share = match worker.job().partition {
        DataPartition::Overlap => cfg.samples,
        _ => cfg.samples.div_ceil(u64::from(worker.workers())),
    };
    share.div_ceil(u64::from(cfg.batch)).max(1)
}

/// Trains on `worker`'s data; calls `on_epoch` after every epoch with the global loss.
///
/// The job's consistency strategy decides what each pull sees and which pushes count; this loop
/// only pulls, computes, pushes and reports every step. A step covers `nfetch` minibatches: the
/// rows they need are pulled once, trained locally, and the accrued gradient pushed once. With
/// `prefetch` the next step's rows are pulled while this step computes.
pub async fn train(
    worker: &Worker,
    cfg: &LogregConfig,
    hooks: &TrainHooks,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<TrainReport, WorkerError> {
    let table = worker.table(TABLE)?;
    let job = worker.job().clone();
    let nfetch = u64::from(job.nfetch);
    let steps_per_epoch = batches_per_epoch(worker, cfg).div_ceil(nfetch);
    let total = u64::from(cfg.epochs) * steps_per_epoch;
    // The rate of the local model update between fetches (nfetch > 1).
    let local_lr = job.optimizers()[table as usize].lr();

    let eval = eval_share(job.seed, cfg, worker.rank(), worker.workers());
    let eval_keys = sorted_features(eval.iter());
    let initial_loss = global_loss(worker, table, &eval, &eval_keys).await?;
    let start = Instant::now();
    let mut losses = Vec::with_capacity(cfg.epochs as usize);
    let (mut worker_steps, mut late_steps) = (0u64, 0u64);
    let mut data: Option<EpochData> = None;
    // The step a prefetch was started for, and its keys and handle.
    let mut prefetched: Option<(u64, Vec<u64>, Prefetch)> = None;
    while worker.step() < total {
        let step = worker.step();
        let group = step_samples(worker, cfg, &mut data, step, steps_per_epoch, nfetch);
        let keys = sorted_features(group.iter().flat_map(|b| b.iter()));
        let mut weights = match prefetched.take() {
            Some((s, k, handle)) if s == step && k == keys => handle.wait().await?,
            // A late backup worker jumped past the prefetched step: read afresh.
            _ => worker.pull(table, &keys).await?,
        };
        if job.prefetch && step + 1 < total {
            let next = step_samples(worker, cfg, &mut data, step + 1, steps_per_epoch, nfetch);
            let next_keys = sorted_features(next.iter().flat_map(|b| b.iter()));
            let handle = worker.prefetch(table, next_keys.clone());
            prefetched = Some((step + 1, next_keys, handle));
        }
        let mut accrued = vec![0.0f32; keys.len()];
        for samples in &group {
            let grads = gradient(samples, &keys, &weights);
            for ((a, w), g) in accrued.iter_mut().zip(weights.iter_mut()).zip(&grads) {
                *a += g;
                if nfetch > 1 {
                    // nfetch: train the local copy too (Dean et al., NeurIPS'12).
                    *w -= local_lr * g;
                }
            }
        }
        if let Some(delay) = &hooks.step_delay {
            tokio::time::sleep(delay(worker.rank(), step)).await;
        }
        if job.aggregation == Aggregation::Switch {
            // The switch sums whole tensors: scatter the step's rows into the dense gradient.
            let mut dense = vec![0.0f32; cfg.features as usize];
            for (k, a) in keys.iter().zip(&accrued) {
                dense[*k as usize] = *a;
            }
            worker.push_dense(table, &dense).await?;
        } else {
            worker.push(table, &keys, &accrued).await?;
        }
        worker_steps += 1;
        if !worker.clock().await? {
            late_steps += 1;
        }
        // Evaluate after each epoch every worker passes; a late backup worker may skip steps but
        // passes every epoch boundary exactly once.
        while losses.len() < cfg.epochs as usize && worker.step() >= (losses.len() as u64 + 1) * steps_per_epoch {
            if losses.len() + 1 == cfg.epochs as usize {
                // The model is final: what error feedback still holds back goes to the servers
                // (uncoded, counted in the bytes) before the last loss is measured.
                worker.flush_held_back(table).await?;
            }
            worker.barrier(&[]).await?;
            let loss = global_loss(worker, table, &eval, &eval_keys).await?;
            losses.push(loss);
            on_epoch(&EpochStats { epoch: losses.len() as u32, loss, seconds: start.elapsed().as_secs_f64() });
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let links = worker.cluster_links().await?;
    let codecs = worker.cluster_codec_traffic().await?;
    let switch = worker.cluster_switch_traffic().await?;
    Ok(TrainReport {
        initial_loss,
        final_loss: *losses.last().expect("at least one epoch"),
        losses,
        epochs: cfg.epochs,
        steps: total,
        worker_steps,
        late_steps,
        seconds,
        links,
        codecs,
        switch,
    })
}

/// The minibatches (sample indices) of `step`: `nfetch` consecutive minibatches of its epoch,
/// wrapping around a share with fewer minibatches than the largest one.
fn step_samples(
    worker: &Worker,
    cfg: &LogregConfig,
    data: &mut Option<EpochData>,
    step: u64,
    steps_per_epoch: u64,
    nfetch: u64,
) -> Vec<Arc<[Sample]>> {
    EpochData::load(data, worker, cfg, step / steps_per_epoch);
    let batches = &data.as_ref().expect("loaded just above").batches;
    if batches.is_empty() {
        return Vec::new();
    }
    let first = (step % steps_per_epoch) * nfetch;
    (first..first + nfetch).map(|b| batches[(b % batches.len() as u64) as usize].clone()).collect()
}

/// The distinct features of some samples, sorted.
fn sorted_features<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<u64> {
    let mut keys: Vec<u64> = samples.flat_map(|s| s.features.iter().copied()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The gradient of the mean logistic loss of `batch` for the weights of `keys`.
fn gradient(batch: &[Sample], keys: &[u64], weights: &[f32]) -> Vec<f32> {
    let mut grads = vec![0.0f32; keys.len()];
    if batch.is_empty() {
        return grads;
    }
    let scale = 1.0 / batch.len() as f32;
    for s in batch {
        let idx: Vec<usize> =
            s.features.iter().map(|f| keys.binary_search(f).expect("keys hold every feature")).collect();
        let score: f32 = idx.iter().map(|&i| weights[i]).sum();
        // d/dw log(1 + exp(-y w·x)) = -y σ(-y w·x) x
        let g = -s.label * sigmoid(-s.label * score) * scale;
        for i in idx {
            grads[i] += g;
        }
    }
    grads
}

/// Mean loss over every sample, each counted once (every worker evaluates a contiguous share,
/// whatever the training partition), summed at a barrier.
async fn global_loss(worker: &Worker, table: u32, data: &[Sample], keys: &[u64]) -> Result<f64, WorkerError> {
    let weights = worker.pull(table, keys).await?;
    let mut sum = LossSum::default();
    for s in data {
        let score: f32 =
            s.features.iter().map(|f| weights[keys.binary_search(f).expect("eval keys hold every feature")]).sum();
        sum.add(logistic(f64::from(s.label) * f64::from(score)));
    }
    let total = worker.barrier(&sum.to_vec()).await?;
    Ok(LossSum::from_slice(&total).mean())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_is_a_function_of_the_seed() {
        let cfg = LogregConfig::default();
        assert_eq!(sample(3, &cfg, 17), sample(3, &cfg, 17));
        assert_ne!(sample(3, &cfg, 17), sample(4, &cfg, 17));
        let whole = eval_share(3, &cfg, 0, 1);
        let parts: Vec<Sample> = (0..3).flat_map(|r| eval_share(3, &cfg, r, 3)).collect();
        assert_eq!(whole, parts, "shares are disjoint and cover the data");
    }

    #[test]
    fn samples_are_sorted_distinct_and_labels_balanced() {
        let cfg = LogregConfig::default();
        let data = eval_share(1, &cfg, 0, 1);
        assert!(data.iter().all(|s| s.features.windows(2).all(|w| w[0] < w[1]) && !s.features.is_empty()));
        assert!(data.iter().all(|s| s.features.iter().all(|&f| f < cfg.features)));
        let positive = data.iter().filter(|s| s.label > 0.0).count() as f64 / data.len() as f64;
        assert!((0.4..0.6).contains(&positive), "{positive}");
    }
}
