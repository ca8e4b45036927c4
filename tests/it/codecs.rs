//! Codec pipelines in the parameter server: compressed pushes train the logreg job as well as raw
//! ones when error feedback carries what they drop, lossless pulls change nothing, and the byte
//! counters show what each codec saved.

use paramserv::apps::logreg::{self, LogregConfig, TrainHooks, TrainReport};
use paramserv::cluster::job::{AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::proto::consistency::Consistency;
use paramserv::proto::partition::Partitioning;
use paramserv::server::table::Init;
use paramserv::transport::Transport;
use paramserv::worker::Worker;

use crate::util::{bounded, custom, table};

/// A logreg job whose loss has a floor: 10% of the labels are flipped and there are 40 samples a
/// feature, so the model cannot memorize the noise, and runs compare where each has converged.
fn job(push: Option<&str>, pull: Option<&str>, consistency: Consistency, epochs: u32) -> JobConfig {
    let cfg = LogregConfig { features: 500, samples: 20_000, nnz: 10, batch: 32, epochs, label_noise: 0.1 };
    let mut job = JobConfig::new(AppConfig::Logreg(cfg.clone()), cfg.tables(Partitioning::Range, Init::Zeros)).unwrap();
    job.optimizer = "sgd:lr=1".parse().unwrap();
    job.consistency = consistency;
    job.codec = push.map(|s| s.parse().unwrap());
    job.pull_codec = pull.map(|s| s.parse().unwrap());
    job.validate().unwrap();
    job
}

async fn train(job: &JobConfig, workers: u32) -> TrainReport {
    let AppConfig::Logreg(cfg) = job.app.clone() else { unreachable!("a logreg job") };
    let reports = bounded(LocalCluster::new(2, workers, Transport::Inproc).run(job, move |w: Worker| {
        let cfg: LogregConfig = cfg.clone();
        async move { logreg::train(&w, &cfg, &TrainHooks::default(), |_| {}).await }
    }))
    .await
    .unwrap_or_else(|e| panic!("{:?}: {e}", job.codec));
    reports.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_feedback_makes_compressed_pushes_train_within_one_percent_of_raw() {
    const EPOCHS: u32 = 10;
    let raw = train(&job(None, None, Consistency::Bsp, EPOCHS), 2).await;
    for codec in ["ef(topk:0.01)", "ef(onebit)"] {
        let r = train(&job(Some(codec), None, Consistency::Bsp, EPOCHS), 2).await;
        let gap = (r.final_loss - raw.final_loss) / raw.final_loss;
        assert!(
            gap.abs() <= 0.01,
            "{codec}: final loss {} vs raw {} ({:+.2}%)",
            r.final_loss,
            raw.final_loss,
            gap * 100.0
        );
        let t = &r.codecs[0];
        assert_eq!(t.codec, codec, "reports name the codec as it was given");
        assert!(t.push_ratio > 10.0, "{codec} pushed {} of {} bytes", t.push_wire_bytes, t.push_raw_bytes);
    }
}

/// The trainer flushes error feedback's remainder before the last loss: the servers hold every
/// gradient, and nothing is left held back after training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logreg_leaves_nothing_held_back() {
    let job = job(Some("ef(topk:0.01)"), None, Consistency::Bsp, 2);
    let AppConfig::Logreg(cfg) = job.app.clone() else { unreachable!("a logreg job") };
    let left = bounded(LocalCluster::new(2, 2, Transport::Inproc).run(&job, move |w: Worker| {
        let cfg: LogregConfig = cfg.clone();
        async move {
            logreg::train(&w, &cfg, &TrainHooks::default(), |_| {}).await?;
            w.flush_held_back(w.table(logreg::TABLE)?).await
        }
    }))
    .await
    .unwrap();
    assert_eq!(left, [0, 0], "rows still held back after training");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossless_pull_codecs_change_nothing_and_the_counters_show_the_bytes() {
    // One worker under BSP: the run is deterministic, so a lossless codec must give the same loss
    // bit for bit.
    let raw = train(&job(None, None, Consistency::Bsp, 2), 1).await;
    let zstd = train(&job(None, Some("raw|zstd:1,shuffle"), Consistency::Bsp, 2), 1).await;
    assert_eq!(raw.losses, zstd.losses);
    let (r, z) = (&raw.codecs[0], &zstd.codecs[0]);
    assert_eq!((r.codec.as_str(), r.pull_codec.as_str()), ("raw", "raw"));
    assert_eq!(z.pull_codec, "raw|zstd:1,shuffle");
    assert_eq!(r.pull_raw_bytes, z.pull_raw_bytes, "the same rows were pulled");
    assert_eq!(r.pull_wire_bytes, r.pull_raw_bytes, "raw pulls are their raw size");
    // The link counters carry exactly the codec's difference (small pulls of random-looking
    // weights do not shrink under zstd: its frame costs more than it saves here).
    let received = |t: &TrainReport| t.links.iter().map(|l| l.counters.payload_received as i64).sum::<i64>();
    assert_eq!(received(&zstd) - received(&raw), z.pull_wire_bytes as i64 - r.pull_wire_bytes as i64);

    let fp16 = train(&job(Some("fp16"), None, Consistency::Bsp, 2), 1).await;
    let t = &fp16.codecs[0];
    assert!((t.push_ratio - 2.0).abs() < 0.05, "{t:?}");
    assert!((fp16.final_loss - raw.final_loss).abs() < 1e-3 * raw.final_loss, "fp16 gradients train as well");
}

/// A top-k push with error feedback sends a tenth of the values and holds back the rest:
/// `add_held_back` shows the worker its own pushes whole, and `flush_held_back` puts the rest on
/// the servers, after which nothing is held back and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_error_feedback_holds_back_is_readable_and_then_flushed() {
    let mut job = custom(vec![table("emb", 40, 4, Partitioning::Range)]);
    job.codec = Some("ef(topk:0.1)".parse().unwrap());
    job.validate().unwrap();
    bounded(LocalCluster::new(2, 1, Transport::Inproc).run(&job, |w: Worker| async move {
        let t = w.table("emb")?;
        let keys: Vec<u64> = (0..40).step_by(3).collect();
        let before = w.pull(t, keys.as_slice()).await?;
        let mut pushed = vec![0.0f32; before.len()];
        for step in 0..5 {
            let grads: Vec<f32> = (0..pushed.len()).map(|i| ((i * 7 + step * 3) % 11) as f32 - 5.0).collect();
            w.push(t, keys.as_slice(), &grads).await?;
            pushed.iter_mut().zip(&grads).for_each(|(p, g)| *p += g);
        }
        // Servers apply SGD at rate 1: the rows should be `before - pushed`.
        let whole: Vec<f32> = before.iter().zip(&pushed).map(|(b, p)| b - p).collect();
        let close = |a: &[f32]| a.iter().zip(&whole).all(|(a, w)| (a - w).abs() < 1e-4);
        let mut rows = w.pull(t, keys.as_slice()).await?;
        assert!(!close(&rows), "top-10% of five pushes cannot have carried them whole");
        w.add_held_back(t, &keys, -1.0, &mut rows)?;
        assert!(close(&rows), "pulled rows with the held-back part: {rows:?} vs {whole:?}");

        let flushed = w.flush_held_back(t).await?;
        assert!(flushed > 0 && flushed <= keys.len(), "{flushed} rows flushed");
        let rows = w.pull(t, keys.as_slice()).await?;
        assert!(close(&rows), "after the flush the servers hold every push: {rows:?} vs {whole:?}");
        let mut again = rows.clone();
        w.add_held_back(t, &keys, -1.0, &mut again)?;
        assert_eq!(again, rows, "nothing is held back after a flush");
        assert_eq!(w.flush_held_back(t).await?, 0);
        let codec = &w.codec_traffic()[0];
        assert!(codec.push_wire_bytes > 0 && codec.push_ratio > 1.0, "{codec:?}");
        Ok::<_, paramserv::worker::WorkerError>(())
    }))
    .await
    .unwrap();
}
