//! The local cluster: training converges, every transport counts the same bytes, and the worker
//! API returns what a single-process reference model holds.

use std::collections::HashMap;

use paramserv::apps::run_app;
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::partition::{KeyRange, Partitioning};
use paramserv::proto::wire::KeyCoding;
use paramserv::server::table::Init;
use paramserv::transport::Transport;
use paramserv::worker::{Values, Worker, WorkerError};

use crate::util::{bounded, custom, small_logreg, table};

async fn train(
    servers: u32,
    workers: u32,
    transport: Transport,
    colocate: bool,
    partitioning: Partitioning,
) -> paramserv::apps::JobReport {
    let cluster = LocalCluster { colocate, ..LocalCluster::new(servers, workers, transport) };
    let reports = bounded(cluster.run(&small_logreg(partitioning), |w| run_app(w, |_| {}))).await.unwrap();
    assert_eq!(reports.len(), workers as usize);
    for r in &reports[1..] {
        assert_eq!(r.final_loss, reports[0].final_loss, "every worker reports the same global loss");
        assert_eq!(r.bytes_sent, reports[0].bytes_sent, "every worker reports the same totals");
    }
    reports.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_converges_on_every_transport_and_partitioning() {
    for (transport, partitioning) in [
        (Transport::Inproc, Partitioning::Range),
        (Transport::Tcp, Partitioning::Range),
        (Transport::Inproc, Partitioning::Hash),
    ] {
        let r = train(2, 3, transport, false, partitioning).await;
        assert!((r.initial_loss - std::f64::consts::LN_2).abs() < 1e-9, "zero weights start at ln 2");
        assert!(
            r.final_loss < 0.75 * r.initial_loss,
            "{transport}/{partitioning:?}: {} -> {}",
            r.initial_loss,
            r.final_loss
        );
        assert!(r.losses.windows(2).all(|w| w[1] < w[0]), "loss falls every epoch: {:?}", r.losses);
        assert_eq!(r.links.len(), 6);
        assert!(r.links.iter().all(|l| l.counters.frames_sent > 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_inproc_count_identical_bytes() {
    // Byte counts depend only on each worker's own requests, so they match with many workers.
    let inproc = train(2, 2, Transport::Inproc, false, Partitioning::Range).await;
    let tcp = train(2, 2, Transport::Tcp, false, Partitioning::Range).await;
    for (a, b) in inproc.links.iter().zip(&tcp.links) {
        assert_eq!(a, b, "link counters differ between transports");
    }
    // With one worker the order of updates is fixed, so the model is bit-identical too. (With
    // several, asynchronous pushes reach a server in any order and float sums differ slightly.)
    let inproc1 = train(2, 1, Transport::Inproc, false, Partitioning::Range).await;
    let tcp1 = train(2, 1, Transport::Tcp, false, Partitioning::Range).await;
    assert_eq!(inproc1.losses, tcp1.losses, "the same job computes the same model");
    assert_eq!(inproc.header_bytes_sent % 16, 0);
    assert_eq!(inproc.bytes_sent, inproc.header_bytes_sent + inproc.payload_bytes_sent);
}

/// `key_coding = "fixed"` sends every key list 8 bytes a key: the same requests, so the same model
/// (one worker: bit for bit), and more bytes than the delta-coded lists of the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_key_coding_trains_the_same_model_with_eight_bytes_a_key() {
    let run = async |coding: KeyCoding| {
        let mut job = small_logreg(Partitioning::Range);
        job.key_coding = coding;
        bounded(LocalCluster::new(2, 1, Transport::Tcp).run(&job, |w| run_app(w, |_| {}))).await.unwrap().remove(0)
    };
    let delta = run(KeyCoding::Delta).await;
    let fixed = run(KeyCoding::Fixed).await;
    assert_eq!(delta.losses, fixed.losses, "the key coding changes no value");
    assert_eq!(delta.header_bytes_sent, fixed.header_bytes_sent, "the same requests");
    assert!(
        fixed.payload_bytes_sent > delta.payload_bytes_sent * 5 / 4,
        "fixed keys {} bytes, delta {}",
        fixed.payload_bytes_sent,
        delta.payload_bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colocated_workers_reach_their_own_rows_without_frames() {
    let apart = train(2, 2, Transport::Inproc, false, Partitioning::Range).await;
    let together = train(2, 2, Transport::Inproc, true, Partitioning::Range).await;
    let (apart1, together1) = (
        train(2, 1, Transport::Inproc, false, Partitioning::Range).await,
        train(2, 1, Transport::Inproc, true, Partitioning::Range).await,
    );
    assert_eq!(together1.losses, apart1.losses, "shared memory and frames compute the same model");
    // Worker w lives on node w: its link to server w carries nothing.
    for l in &together.links {
        let c = l.counters;
        if l.worker == l.server {
            assert_eq!((c.frames_sent, c.frames_received), (0, 0), "{l:?}");
        } else {
            assert!(c.frames_sent > 0, "{l:?}");
        }
    }
    assert!(together.bytes_sent < apart.bytes_sent);
}

/// A single-process model of one table: what the cluster must hold after the same pushes.
struct Reference {
    dim: usize,
    rows: HashMap<u64, Vec<f32>>,
}

impl Reference {
    async fn snapshot(worker: &Worker, table: u32, rows: u64) -> Self {
        let dim = worker.dim(table).unwrap();
        let all = worker.pull(table, KeyRange::new(0, rows).unwrap()).await.unwrap();
        Self { dim, rows: (0..rows).map(|k| (k, all[k as usize * dim..(k as usize + 1) * dim].to_vec())).collect() }
    }

    fn push(&mut self, keys: &[u64], grads: &[f32], lr: f32) {
        for (k, g) in keys.iter().zip(grads.chunks(self.dim)) {
            for (w, g) in self.rows.get_mut(k).unwrap().iter_mut().zip(g) {
                *w += -lr * g;
            }
        }
    }

    fn rows(&self, keys: &[u64]) -> Vec<f32> {
        keys.iter().flat_map(|k| self.rows[k].clone()).collect()
    }
}

/// Exercises lists (sorted, unsorted, with duplicates), ranges, `Values`, splitting into many
/// requests, and many requests in flight, against [`Reference`].
async fn api_against_reference(worker: Worker) -> Result<(), WorkerError> {
    let t = worker.table("emb")?;
    let (rows, lr) = (1000u64, worker.job().optimizer.lr());
    let mut reference = Reference::snapshot(&worker, t, rows).await;
    let dim = reference.dim;
    let grads =
        |n: usize, salt: f32| -> Vec<f32> { (0..n * dim).map(|i| ((i % 11) as f32 - 5.0) * 0.01 + salt).collect() };

    let sorted: Vec<u64> = (0..rows).step_by(3).collect();
    let g = grads(sorted.len(), 0.1);
    worker.push(t, &sorted, &g).await?;
    reference.push(&sorted, &g, lr);

    let unsorted: Vec<u64> = vec![999, 5, 500, 5, 250, 0, 751, 999];
    let g = grads(unsorted.len(), -0.2);
    worker.push(t, &unsorted, &g).await?;
    reference.push(&unsorted, &g, lr);

    let range = KeyRange::new(100, 900).unwrap();
    let keys: Vec<u64> = range.keys().collect();
    let g = grads(keys.len(), 0.05);
    worker.push_values(t, range, &Values::from_vec(g.clone())).await?;
    reference.push(&keys, &g, lr);

    assert_eq!(worker.pull(t, &unsorted).await?, reference.rows(&unsorted));
    assert_eq!(worker.pull(t, range).await?, reference.rows(&keys));
    assert_eq!(worker.pull_values(t, &sorted).await?.to_vec(), reference.rows(&sorted));
    assert_eq!(worker.pull_values(t, KeyRange::new(7, 8).unwrap()).await?.to_vec(), reference.rows(&[7]));
    let empty: &[u64] = &[];
    assert!(worker.pull(t, empty).await?.is_empty());

    // A pull started right after a background push, before its acknowledgement, reads it: each
    // server serves one worker's requests in the order they were queued.
    let g = grads(unsorted.len(), 0.3);
    let pending = worker.push_in_background(t, &unsorted, &g).await?;
    reference.push(&unsorted, &g, lr);
    assert_eq!(worker.pull(t, &unsorted).await?, reference.rows(&unsorted));
    pending.wait().await?;
    let too_short = worker.push_in_background(t, &unsorted, &g[1..]).await;
    assert!(too_short.is_err(), "a push with the wrong number of values is refused before sending");

    // Many requests in flight on the same connections, from clones of the worker.
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let w = worker.clone();
            tokio::spawn(async move { w.pull(t, &[i, rows - 1 - i]).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(task.await.unwrap()?, reference.rows(&[i, rows - 1 - i]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_api_matches_a_reference_model() {
    for (transport, partitioning, colocate) in [
        (Transport::Inproc, Partitioning::Range, false),
        (Transport::Tcp, Partitioning::Hash, false),
        (Transport::Inproc, Partitioning::Hash, true),
        (Transport::Tcp, Partitioning::Range, true),
    ] {
        let job = custom(vec![table("emb", 1000, 5, partitioning)]);
        let cluster = LocalCluster { colocate, ..LocalCluster::new(3, 1, transport) };
        bounded(cluster.run(&job, api_against_reference))
            .await
            .unwrap_or_else(|e| panic!("{transport}/{partitioning:?}/{colocate}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_model_on_any_number_of_servers() {
    let mut spec = table("emb", 300, 4, Partitioning::Hash);
    spec.init = Init::Normal { sigma: 0.3 };
    let job = custom(vec![spec]);
    let mut models = Vec::new();
    for servers in [1, 2, 5] {
        let pulled = bounded(
            LocalCluster::new(servers, 1, Transport::Inproc)
                .run(&job, |w: Worker| async move { w.pull(0, KeyRange::new(0, 300).unwrap()).await }),
        )
        .await
        .unwrap();
        models.push(pulled.into_iter().next().unwrap());
    }
    assert_eq!(models[0], models[1]);
    assert_eq!(models[0], models[2]);
    assert!(models[0].iter().any(|v| *v != 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_sum_every_workers_values() {
    let job = custom(vec![table("t", 10, 1, Partitioning::Range)]);
    let sums = bounded(LocalCluster::new(1, 4, Transport::Inproc).run(&job, |w: Worker| async move {
        let r = f64::from(w.rank());
        let first = w.barrier(&[1.0, r]).await?;
        let second = w.barrier(&[]).await?;
        Ok((first, second))
    }))
    .await
    .unwrap();
    for (first, second) in sums {
        assert_eq!(first, [4.0, 6.0]);
        assert!(second.is_empty());
    }
}
