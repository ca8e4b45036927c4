//! Least-squares regression of a dense model on a local cluster, through the public API only.
//!
//! The model is one table of 256 rows × 1 value, read and updated as one key range (no key per
//! row on the wire). Four workers each fit their own share of a synthetic dataset; after every
//! epoch they meet at a barrier that sums their losses.
//!
//! Run: `cargo run --release --example dense_regression`

use paramserv::cluster::job::{AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::partition::{KeyRange, Partitioning};
use paramserv::server::optimizer::OptimizerSpec;
use paramserv::server::table::{Init, TableSpec};
use paramserv::transport::Transport;
use paramserv::worker::{Values, Worker, WorkerError};

const DIM: u64 = 256;
const SAMPLES_PER_WORKER: usize = 512;
const EPOCHS: usize = 20;

/// Uniform noise in [-0.5, 0.5) from a hash of `i`, so the example needs no extra crate.
fn noise(i: u64) -> f32 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

async fn fit(worker: Worker) -> Result<Vec<f64>, WorkerError> {
    let table = worker.table("w")?;
    let model = KeyRange::new(0, DIM).expect("0 <= DIM");
    let truth: Vec<f32> = (0..DIM).map(|j| noise(j + 1) * 4.0).collect();
    let base = u64::from(worker.rank()) * 1_000_003;
    let data: Vec<(Vec<f32>, f32)> = (0..SAMPLES_PER_WORKER as u64)
        .map(|i| {
            let x: Vec<f32> = (0..DIM).map(|j| noise(base + i * DIM + j)).collect();
            let y = x.iter().zip(&truth).map(|(a, b)| a * b).sum::<f32>() + 0.01 * noise(base + i);
            (x, y)
        })
        .collect();
    let mut losses = Vec::new();
    for _ in 0..EPOCHS {
        let w = worker.pull(table, model).await?;
        let mut grad = vec![0.0f32; DIM as usize];
        let mut loss = 0.0f64;
        for (x, y) in &data {
            let err = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() - y;
            loss += f64::from(err * err) / 2.0;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += err * xi / SAMPLES_PER_WORKER as f32;
            }
        }
        // Hand the gradient over without a copy; the server applies w -= lr * g.
        worker.push_values(table, model, &Values::from_vec(grad)).await?;
        let total = worker.barrier(&[loss, SAMPLES_PER_WORKER as f64]).await?;
        losses.push(total[0] / total[1]);
    }
    Ok(losses)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = TableSpec {
        name: "w".into(),
        rows: DIM,
        dim: 1,
        init: Init::Zeros,
        partitioning: Partitioning::Range,
        optimizer: None,
        codec: None,
        pull_codec: None,
    };
    let mut job = JobConfig::new(AppConfig::Custom, vec![table])?;
    job.optimizer = OptimizerSpec::Sgd { lr: 1.0 };
    let cluster = LocalCluster::new(2, 4, Transport::Inproc);
    let losses = cluster.run(&job, fit).await?;
    for (epoch, loss) in losses[0].iter().enumerate().step_by(4) {
        println!("epoch {:>2}: mean squared error / 2 = {loss:.5}", epoch + 1);
    }
    let (first, last) = (losses[0][0], *losses[0].last().expect("EPOCHS > 0"));
    println!("{first:.4} -> {last:.4}");
    assert!(last < first / 10.0, "the model should fit the data");
    Ok(())
}
