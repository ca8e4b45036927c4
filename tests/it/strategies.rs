//! Update strategies and optimizers end to end: the logreg job converges under each of them, a
//! worker that vanishes fails a BSP job by name and leaves a backup-worker job running.

use std::sync::{Arc, Mutex};

use paramserv::apps::logreg::{self, LogregConfig, TrainHooks, TrainReport};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::consistency::Consistency;
use paramserv::proto::partition::{KeyRange, Partitioning};
use paramserv::server::table::Init;
use paramserv::transport::Transport;
use paramserv::worker::{Worker, WorkerError};

use crate::util::{bounded, custom, small_logreg, table};

fn logreg_cfg(job: &paramserv::cluster::job::JobConfig) -> LogregConfig {
    match &job.app {
        paramserv::cluster::job::AppConfig::Logreg(cfg) => cfg.clone(),
        other => panic!("not a logreg job: {other:?}"),
    }
}

/// Trains the small logreg job under `consistency` with `optimizer`; returns rank 0's report.
async fn train(consistency: Consistency, optimizer: &str, transport: Transport) -> TrainReport {
    train_with(consistency, optimizer, transport, |_| {}).await
}

async fn train_with(
    consistency: Consistency,
    optimizer: &str,
    transport: Transport,
    tweak: impl FnOnce(&mut paramserv::cluster::job::JobConfig),
) -> TrainReport {
    let mut job = small_logreg(Partitioning::Range);
    tweak(&mut job);
    job.consistency = consistency;
    job.optimizer = optimizer.parse().unwrap();
    job.validate().unwrap();
    let cfg = logreg_cfg(&job);
    let servers = if consistency == Consistency::Hogwild { 1 } else { 2 };
    let cluster = LocalCluster::new(servers, 3, transport);
    let reports = bounded(cluster.run(&job, move |w: Worker| {
        let cfg = cfg.clone();
        async move { logreg::train(&w, &cfg, &TrainHooks::default(), |_| {}).await }
    }))
    .await
    .unwrap_or_else(|e| panic!("{consistency}/{optimizer}: {e}"));
    reports.into_iter().next().unwrap()
}

fn assert_converged(r: &TrainReport, what: &str) {
    assert!((r.initial_loss - std::f64::consts::LN_2).abs() < 1e-9, "{what}: zero weights start at ln 2");
    assert!(r.final_loss < 0.5 * r.initial_loss, "{what}: {} -> {}", r.initial_loss, r.final_loss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_converges_under_every_strategy() {
    for consistency in ["asp", "bsp", "ssp:2", "backup:1", "hogwild"] {
        let consistency: Consistency = consistency.parse().unwrap();
        let r = train(consistency, "sgd:lr=4", Transport::Inproc).await;
        assert_converged(&r, &consistency.to_string());
        if consistency.is_gated() {
            assert!(r.steps > 0, "{consistency}: steps are counted");
        }
    }
    // Over TCP as well, for the strategies whose gate answers remote requests.
    for consistency in ["bsp", "ssp:1"] {
        let r = train(consistency.parse().unwrap(), "sgd:lr=4", Transport::Tcp).await;
        assert_converged(&r, consistency);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_converges_under_every_optimizer() {
    // Learning rates of each rule's own scale; Shampoo on a one-column table keeps its right-hand
    // statistics only (the 1000-row side is over max_dim), the dense test below uses both.
    for optimizer in [
        "sgd:lr=4",
        "momentum:lr=0.5,mu=0.9",
        "nesterov:lr=0.5,mu=0.9",
        "adagrad:lr=0.5",
        "rmsprop:lr=0.1",
        "adam:lr=0.1",
        "shampoo:lr=4,max_dim=64",
    ] {
        for consistency in [Consistency::Bsp, Consistency::Asp] {
            let r = train(consistency, optimizer, Transport::Inproc).await;
            assert_converged(&r, &format!("{consistency}/{optimizer}"));
        }
    }
    // Element-wise rules also run lock-free.
    for optimizer in ["momentum:lr=0.5", "adam:lr=0.1"] {
        let r = train(Consistency::Hogwild, optimizer, Transport::Inproc).await;
        assert_converged(&r, &format!("hogwild/{optimizer}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_and_nfetch_train_as_well_with_fewer_round_trips() {
    for consistency in [Consistency::Asp, Consistency::Bsp] {
        let plain = train(consistency, "sgd:lr=4", Transport::Tcp).await;
        let prefetched = train_with(consistency, "sgd:lr=4", Transport::Tcp, |j| j.prefetch = true).await;
        assert_converged(&prefetched, &format!("{consistency} with prefetch"));
        assert_eq!(prefetched.steps, plain.steps, "prefetch changes when rows arrive, not the steps");
        let nfetch = train_with(consistency, "sgd:lr=4", Transport::Tcp, |j| j.nfetch = 4).await;
        assert_converged(&nfetch, &format!("{consistency} with nfetch 4"));
        // One push and one pull per 4 minibatches (per epoch, rounded up).
        let (n, p) = (nfetch.steps, plain.steps);
        assert!(n * 4 >= p && n * 4 < p + 4 * 3, "{n} steps with nfetch 4, {p} without");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shampoo_preconditions_both_sides_of_a_dense_table() {
    // Least squares on a 16 x 8 table split into two 8 x 8 blocks: minimize |W - T|^2 / 2.
    let (rows, dim) = (16u64, 8u32);
    let target: Vec<f32> = (0..rows * u64::from(dim)).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
    let mut job = custom(vec![table("w", rows, dim, Partitioning::Range)]);
    job.tables[0].init = Init::Zeros;
    job.optimizer = "shampoo:lr=0.5,update_every=2".parse().unwrap();
    job.consistency = Consistency::Bsp;
    let all = KeyRange::new(0, rows).unwrap();
    let losses = bounded(LocalCluster::new(2, 2, Transport::Inproc).run(&job, move |w: Worker| {
        let target = target.clone();
        async move {
            let loss = |v: &[f32]| v.iter().zip(&target).map(|(a, b)| f64::from(a - b).powi(2) / 2.0).sum::<f64>();
            let first = loss(&w.pull(0, all).await?);
            for _ in 0..30 {
                let v = w.pull(0, all).await?;
                let grad: Vec<f32> = v.iter().zip(&target).map(|(a, b)| a - b).collect();
                w.push(0, all, &grad).await?;
                w.clock().await?;
            }
            Ok::<_, WorkerError>((first, loss(&w.pull(0, all).await?)))
        }
    }))
    .await
    .unwrap();
    for (first, last) in losses {
        assert!(last < 0.1 * first, "{first} -> {last}");
    }
}

/// Runs 3 workers where worker 1 vanishes at once; returns the run's error, if any, and the
/// reports of the workers that finished.
async fn one_worker_vanishes(consistency: Consistency) -> (Option<String>, Vec<TrainReport>) {
    let mut job = small_logreg(Partitioning::Range);
    job.consistency = consistency;
    let cfg = logreg_cfg(&job);
    let finished = Arc::new(Mutex::new(Vec::new()));
    let done = finished.clone();
    let mut cluster = LocalCluster::new(2, 3, Transport::Inproc);
    // The failure is noticed by the closed connection, well within this.
    cluster.heartbeat_timeout = std::time::Duration::from_secs(20);
    let result = bounded(cluster.run(&job, move |w: Worker| {
        let (cfg, done) = (cfg.clone(), done.clone());
        async move {
            if w.rank() == 1 {
                return Err(WorkerError::App("worker 1 crashed on purpose".into()));
            }
            let report = logreg::train(&w, &cfg, &TrainHooks::default(), |_| {}).await?;
            done.lock().unwrap().push(report);
            Ok(())
        }
    }))
    .await;
    let reports = std::mem::take(&mut *finished.lock().unwrap());
    (result.err().map(|e| e.to_string()), reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_worker_fails_bsp_by_name_and_backup_continues() {
    let (err, finished) = one_worker_vanishes(Consistency::Bsp).await;
    let err = err.expect("a BSP job cannot go on without a worker");
    assert!(err.contains("worker 1"), "the error names the worker: {err}");
    assert!(finished.is_empty(), "no BSP worker finished training without worker 1");

    let (err, finished) = one_worker_vanishes(Consistency::Backup { backups: 1 }).await;
    assert_eq!(finished.len(), 2, "both remaining workers trained to the end (run: {err:?})");
    for r in &finished {
        assert_converged(r, "backup:1 with a worker gone");
    }
}
