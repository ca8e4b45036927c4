//! Jobs that run on the cluster, and the report the CLI prints for them.
//!
//! [`run_app`] runs the job's app on one worker and returns a [`JobReport`] that every worker of
//! the job agrees on (losses and byte counts are reduced across workers), so `paramserv local
//! --json` and each `paramserv worker --json` print the same object.

pub mod logreg;
pub mod loss;
pub mod partition;
pub mod word2vec;

use crate::cluster::job::AppConfig;
use crate::worker::{CodecTraffic, LinkReport, Worker, WorkerError};

/// The job's summary, as printed with `--json`. Byte totals cover every byte the workers moved:
/// the PS links' (`header_* + payload_*`) and, with switch aggregation, the switch agent's UDP
/// traffic (`switch_*`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobReport {
    /// App name.
    pub app: String,
    /// Mean loss before training.
    pub initial_loss: f64,
    /// Mean loss after training.
    pub final_loss: f64,
    /// Epochs run.
    pub epochs: u32,
    /// Loss after every epoch.
    pub losses: Vec<f64>,
    /// Bytes all workers sent: to servers (headers and payloads) plus, with switch aggregation,
    /// to the switch agent (`switch_bytes_sent`).
    pub bytes_sent: u64,
    /// Bytes all workers received: from servers plus from the switch agent
    /// (`switch_bytes_received`).
    pub bytes_received: u64,
    /// Header bytes sent.
    pub header_bytes_sent: u64,
    /// Payload bytes sent.
    pub payload_bytes_sent: u64,
    /// Header bytes received.
    pub header_bytes_received: u64,
    /// Payload bytes received.
    pub payload_bytes_received: u64,
    /// UDP payload bytes all workers sent to the switch agent (`aggregation = "switch"`; else 0).
    pub switch_bytes_sent: u64,
    /// UDP payload bytes all workers received from the switch agent.
    pub switch_bytes_received: u64,
    /// Training time in seconds.
    pub seconds: f64,
    /// Servers in the job.
    pub servers: u32,
    /// Workers in the job.
    pub workers: u32,
    /// Every worker–server link's counters.
    pub links: Vec<LinkReport>,
    /// Per table: its codecs and the bytes of its values as raw `f32` and on the wire.
    pub codecs: Vec<CodecTraffic>,
    /// word2vec's figures (words/s, evaluation scores), at the top level of the JSON.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub word2vec: Option<word2vec::Word2vecSummary>,
}

/// Runs the job's app on `worker`; `on_epoch` sees each epoch's global loss.
pub async fn run_app(worker: Worker, on_epoch: impl FnMut(&logreg::EpochStats)) -> Result<JobReport, WorkerError> {
    run_app_with_progress(worker, on_epoch, |_| {}).await
}

/// [`run_app`], with `on_step` called after each of this worker's steps where the app reports
/// progress (word2vec).
pub async fn run_app_with_progress(
    worker: Worker,
    on_epoch: impl FnMut(&logreg::EpochStats),
    on_step: impl Fn(&word2vec::train::StepProgress),
) -> Result<JobReport, WorkerError> {
    let app = worker.job().app.clone();
    let (mut report, links, switch) = match &app {
        AppConfig::Logreg(cfg) => {
            let r = logreg::train(&worker, cfg, &logreg::TrainHooks::default(), on_epoch).await?;
            let report = JobReport::new(&app, &worker, r.initial_loss, r.losses, r.seconds, r.codecs);
            (report, r.links, r.switch)
        }
        AppConfig::Word2vec(cfg) => {
            let r = word2vec::train::train(&worker, cfg, on_epoch, on_step).await?;
            // The output vectors start at zero, so every pair's loss starts at (1 + negative) ln 2.
            let initial = f64::from(1 + cfg.negative) * std::f64::consts::LN_2;
            let mut report = JobReport::new(&app, &worker, initial, r.losses.clone(), r.seconds, r.codecs.clone());
            report.word2vec = Some(word2vec::Word2vecSummary::of(&r));
            (report, r.links, r.switch)
        }
        AppConfig::Custom => {
            return Err(WorkerError::App("a custom job has no app to run from the command line".into()));
        }
    };
    let mut total = crate::transport::LinkCounters::default();
    for l in &links {
        total += l.counters;
    }
    report.bytes_sent = total.bytes_sent() + switch.bytes_sent;
    report.bytes_received = total.bytes_received() + switch.bytes_received;
    report.header_bytes_sent = total.header_sent;
    report.payload_bytes_sent = total.payload_sent;
    report.header_bytes_received = total.header_received;
    report.payload_bytes_received = total.payload_received;
    report.switch_bytes_sent = switch.bytes_sent;
    report.switch_bytes_received = switch.bytes_received;
    report.links = links;
    Ok(report)
}

impl JobReport {
    /// A report without byte counts yet.
    fn new(
        app: &AppConfig,
        worker: &Worker,
        initial_loss: f64,
        losses: Vec<f64>,
        seconds: f64,
        codecs: Vec<CodecTraffic>,
    ) -> Self {
        Self {
            app: app.name().into(),
            initial_loss,
            final_loss: losses.last().copied().unwrap_or(initial_loss),
            epochs: losses.len() as u32,
            losses,
            bytes_sent: 0,
            bytes_received: 0,
            header_bytes_sent: 0,
            payload_bytes_sent: 0,
            header_bytes_received: 0,
            payload_bytes_received: 0,
            switch_bytes_sent: 0,
            switch_bytes_received: 0,
            seconds,
            servers: worker.servers(),
            workers: worker.workers(),
            links: Vec::new(),
            codecs,
            word2vec: None,
        }
    }
}
