//! `--aggregation switch`: dense gradients summed in the switch agent, one push of the sum per step.

use paramserv::cluster::job::{Aggregation, AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::consistency::Consistency;
use paramserv::proto::partition::KeyRange;
use paramserv::server::optimizer::OptimizerSpec;
use paramserv::server::table::TableSpec;
use paramserv::transport::Transport;
use paramserv::worker::{Worker, WorkerError};

use crate::util::bounded;

const ROWS: u64 = 1000;
const STEPS: u64 = 6;

/// Each worker pushes a different dense gradient every step; returns the final model and the
/// payload bytes this worker sent to the servers.
async fn steps(worker: Worker) -> Result<(Vec<f32>, u64), WorkerError> {
    let all = KeyRange::new(0, ROWS).unwrap();
    let rank = u64::from(worker.rank());
    for step in 0..STEPS {
        let w = worker.pull(0, all).await?;
        assert_eq!(w.len(), ROWS as usize);
        let grad: Vec<f32> = (0..ROWS)
            .map(|i| ((i * 31 + rank * 17 + step * 7) % 97) as f32 / 97.0 - 0.5 + w[i as usize] * 0.1)
            .collect();
        worker.push_dense(0, &grad).await?;
        worker.clock().await?;
    }
    let model = worker.pull(0, all).await?;
    let sent = worker.links().iter().map(|l| l.counters.payload_sent).sum();
    Ok((model, sent))
}

fn job(aggregation: Aggregation) -> JobConfig {
    let mut job = JobConfig::new(AppConfig::Custom, vec![TableSpec::new("dense", ROWS, 1)]).unwrap();
    job.optimizer = OptimizerSpec::Sgd { lr: 0.5 };
    job.consistency = Consistency::Bsp;
    job.aggregation = aggregation;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_aggregation_trains_the_same_model_with_one_push_per_step() {
    let workers = 3;
    let run = |aggregation| async move {
        bounded(LocalCluster::new(2, workers, Transport::Tcp).run(&job(aggregation), steps)).await.unwrap()
    };
    let server = run(Aggregation::Server).await;
    let switch = run(Aggregation::Switch).await;
    // Fixed point rounds each sum by at most N²·2^E/INT32_MAX (E: exponent of the largest |g| < 1):
    // far below 1e-5 after six steps of rate 0.5.
    for (a, b) in server[0].0.iter().zip(&switch[0].0) {
        assert!((a - b).abs() <= 1e-5, "server {a} vs switch {b}");
    }
    assert!(server[0].0.iter().any(|&w| w != 0.0), "the model moved");
    for w in &switch {
        assert_eq!(w.0, switch[0].0, "every worker reads the same model");
    }
    // Server aggregation: every worker pushes every step. Switch: one push per step in all.
    let pushed = |r: &[(Vec<f32>, u64)]| r.iter().map(|w| w.1).sum::<u64>();
    let (by_server, by_switch) = (pushed(&server), pushed(&switch));
    assert!(
        by_switch * 2 < by_server,
        "switch aggregation sent {by_switch} payload bytes to the servers, server aggregation {by_server}"
    );
}

#[test]
fn switch_aggregation_needs_bsp_and_a_valid_address() {
    let mut j = job(Aggregation::Switch);
    j.consistency = Consistency::Asp;
    assert!(j.validate().unwrap_err().to_string().contains("needs --consistency bsp"));
    let mut j = job(Aggregation::Switch);
    j.switch = Some("not-an-address".into());
    assert!(j.validate().unwrap_err().to_string().contains("is not an IP:PORT address"));
}
