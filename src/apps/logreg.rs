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

use std::time::Instant;

use super::loss::{LossSum, logistic};
use crate::cluster::job::ConfigError;
use crate::proto::partition::Partitioning;
use crate::rng::SplitMix64;
use crate::server::table::{Init, TableSpec};
use crate::worker::{LinkReport, Worker, WorkerError};

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
}

impl Default for LogregConfig {
    fn default() -> Self {
        Self { features: 100_000, samples: 200_000, nnz: 20, batch: 64, epochs: 5 }
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
        Ok(())
    }

    /// The job's tables.
    pub fn tables(&self, partitioning: Partitioning, init: Init) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE.into(), rows: self.features, dim: 1, init, partitioning }]
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
    Sample { features, label: if score >= 0.0 { 1.0 } else { -1.0 } }
}

/// The samples worker `rank` of `workers` trains on: a contiguous share.
pub fn share(seed: u64, cfg: &LogregConfig, rank: u32, workers: u32) -> Vec<Sample> {
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

/// What a training run produced; every worker returns the same global figures.
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
    /// Seconds from the first minibatch to the last barrier.
    pub seconds: f64,
    /// Bytes of every worker–server link.
    pub links: Vec<LinkReport>,
}

/// Trains on `worker`'s share; calls `on_epoch` after every epoch with the global loss.
pub async fn train(
    worker: &Worker,
    cfg: &LogregConfig,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<TrainReport, WorkerError> {
    let table = worker.table(TABLE)?;
    let seed = worker.job().seed;
    let data = share(seed, cfg, worker.rank(), worker.workers());
    let mut eval_keys: Vec<u64> = data.iter().flat_map(|s| s.features.iter().copied()).collect();
    eval_keys.sort_unstable();
    eval_keys.dedup();

    let initial_loss = global_loss(worker, table, &data, &eval_keys).await?;
    let start = Instant::now();
    let mut losses = Vec::with_capacity(cfg.epochs as usize);
    let mut keys = Vec::new();
    let mut grads = Vec::new();
    for epoch in 1..=cfg.epochs {
        for batch in data.chunks(cfg.batch as usize) {
            keys.clear();
            keys.extend(batch.iter().flat_map(|s| s.features.iter().copied()));
            keys.sort_unstable();
            keys.dedup();
            let weights = worker.pull(table, &keys).await?;
            grads.clear();
            grads.resize(keys.len(), 0.0f32);
            let scale = 1.0 / batch.len() as f32;
            for s in batch {
                let idx: Vec<usize> =
                    s.features.iter().map(|f| keys.binary_search(f).expect("batch keys hold every feature")).collect();
                let score: f32 = idx.iter().map(|&i| weights[i]).sum();
                // d/dw log(1 + exp(-y w·x)) = -y σ(-y w·x) x
                let g = -s.label * sigmoid(-s.label * score) * scale;
                for i in idx {
                    grads[i] += g;
                }
            }
            worker.push(table, &keys, &grads).await?;
        }
        // Every push of this epoch is applied before anyone evaluates.
        worker.barrier(&[]).await?;
        let loss = global_loss(worker, table, &data, &eval_keys).await?;
        losses.push(loss);
        on_epoch(&EpochStats { epoch, loss, seconds: start.elapsed().as_secs_f64() });
    }
    let seconds = start.elapsed().as_secs_f64();
    let links = worker.cluster_links().await?;
    Ok(TrainReport {
        initial_loss,
        final_loss: *losses.last().expect("at least one epoch"),
        losses,
        epochs: cfg.epochs,
        seconds,
        links,
    })
}

/// Mean loss over every worker's share, summed at a barrier.
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
        let whole = share(3, &cfg, 0, 1);
        let parts: Vec<Sample> = (0..3).flat_map(|r| share(3, &cfg, r, 3)).collect();
        assert_eq!(whole, parts, "shares are disjoint and cover the data");
    }

    #[test]
    fn samples_are_sorted_distinct_and_labels_balanced() {
        let cfg = LogregConfig::default();
        let data = share(1, &cfg, 0, 1);
        assert!(data.iter().all(|s| s.features.windows(2).all(|w| w[0] < w[1]) && !s.features.is_empty()));
        assert!(data.iter().all(|s| s.features.iter().all(|&f| f < cfg.features)));
        let positive = data.iter().filter(|s| s.label > 0.0).count() as f64 / data.len() as f64;
        assert!((0.4..0.6).contains(&positive), "{positive}");
    }
}
