//! `--aggregation switch`: dense gradients summed in the switch agent, one push of the sum per step.

use paramserv::apps::run_app;
use paramserv::cluster::job::{Aggregation, AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::consistency::Consistency;
use paramserv::proto::partition::{KeyRange, Partitioning};
use paramserv::server::optimizer::OptimizerSpec;
use paramserv::server::table::TableSpec;
use paramserv::transport::Transport;
use paramserv::worker::{SwitchTraffic, Worker, WorkerError};
use paramserv_switch::daemon::{DaemonConfig, SpawnedDaemon};

use crate::util::{bounded, small_logreg};

const ROWS: u64 = 1000;
const STEPS: u64 = 6;

/// Each worker pushes a different dense gradient every step; returns the final model, the
/// payload bytes this worker sent to the servers and its traffic with the switch agent.
async fn steps(worker: Worker) -> Result<(Vec<f32>, u64, SwitchTraffic), WorkerError> {
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
    Ok((model, sent, worker.switch_traffic()))
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
    let pushed = |r: &[(Vec<f32>, u64, SwitchTraffic)]| r.iter().map(|w| w.1).sum::<u64>();
    let (by_server, by_switch) = (pushed(&server), pushed(&switch));
    assert!(
        by_switch * 2 < by_server,
        "switch aggregation sent {by_switch} payload bytes to the servers, server aggregation {by_server}"
    );
    // The tensor crossed to the agent and back on every step; none of it is in the link counters.
    let tensor = STEPS * ROWS * 4;
    for (rank, w) in switch.iter().enumerate() {
        assert!(w.2.bytes_sent >= tensor && w.2.bytes_received >= tensor, "worker {rank}: {:?}", w.2);
    }
    assert!(server.iter().all(|w| w.2 == SwitchTraffic::default()), "no agent traffic without the switch");
}

/// `paramserv local --json`'s report: its byte totals include the agent's UDP traffic, shown on
/// its own too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_report_counts_the_bytes_exchanged_with_the_switch() {
    let (servers, workers) = (1, 2);
    let mut job = small_logreg(Partitioning::Range);
    job.consistency = Consistency::Bsp;
    job.aggregation = Aggregation::Switch;
    let AppConfig::Logreg(cfg) = job.app.clone() else { unreachable!("a logreg job") };
    let cluster = LocalCluster::new(servers, workers, Transport::Inproc);
    let reports = bounded(cluster.run(&job, |w| run_app(w, |_| {}))).await.unwrap();
    let r = &reports[0];
    // Every worker all-reduces the dense gradient (features f32) at least once per epoch, and
    // gets the sum back.
    let tensor = u64::from(workers) * u64::from(cfg.epochs) * cfg.features * 4;
    assert!(r.switch_bytes_sent >= tensor && r.switch_bytes_received >= tensor, "{r:?}");
    assert_eq!(r.bytes_sent, r.header_bytes_sent + r.payload_bytes_sent + r.switch_bytes_sent);
    assert_eq!(r.bytes_received, r.header_bytes_received + r.payload_bytes_received + r.switch_bytes_received);
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["switch_bytes_sent"], r.switch_bytes_sent);
    assert_eq!(json["switch_bytes_received"], r.switch_bytes_received);
}

/// Two runs of one job at the same time on one agent: the in-process servers of both are named
/// alike, so only the run id keeps their agent jobs apart. Each must train what it trains alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_jobs_sharing_an_agent_do_not_meet() {
    let agent = SpawnedDaemon::spawn(DaemonConfig::new(([127, 0, 0, 1], 0).into())).unwrap();
    let mut shared = job(Aggregation::Switch);
    shared.switch = Some(agent.addr().to_string());
    let run = |job: JobConfig| async move { LocalCluster::new(1, 2, Transport::Inproc).run(&job, steps).await };
    let alone = bounded(run(job(Aggregation::Switch))).await.unwrap();
    let (a, b) = bounded(async { tokio::join!(run(shared.clone()), run(shared.clone())) }).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    for (name, r) in [("first", &a), ("second", &b)] {
        for (x, y) in alone[0].0.iter().zip(&r[0].0) {
            assert!((x - y).abs() <= 1e-5, "{name} run: {y}, alone: {x}");
        }
    }
    tokio::task::spawn_blocking(move || agent.stop()).await.unwrap().unwrap();
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
