//! Jobs that run on the cluster, and the report the CLI prints for them.
//!
//! [`run_app`] runs the job's app on one worker and returns a [`JobReport`] that every worker of
//! the job agrees on (losses and byte counts are reduced across workers), so `paramserv local
//! --json` and each `paramserv worker --json` print the same object.

pub mod logreg;
pub mod loss;
pub mod partition;

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
}

/// Runs the job's app on `worker`; `on_epoch` sees each epoch's global loss.
pub async fn run_app(worker: Worker, on_epoch: impl FnMut(&logreg::EpochStats)) -> Result<JobReport, WorkerError> {
    let app = worker.job().app.clone();
    let report = match &app {
        AppConfig::Logreg(cfg) => logreg::train(&worker, cfg, &logreg::TrainHooks::default(), on_epoch).await?,
        AppConfig::Custom => {
            return Err(WorkerError::App("a custom job has no app to run from the command line".into()));
        }
    };
    let mut total = crate::transport::LinkCounters::default();
    for l in &report.links {
        total += l.counters;
    }
    Ok(JobReport {
        app: app.name().into(),
        initial_loss: report.initial_loss,
        final_loss: report.final_loss,
        epochs: report.epochs,
        losses: report.losses,
        bytes_sent: total.bytes_sent() + report.switch.bytes_sent,
        bytes_received: total.bytes_received() + report.switch.bytes_received,
        header_bytes_sent: total.header_sent,
        payload_bytes_sent: total.payload_sent,
        header_bytes_received: total.header_received,
        payload_bytes_received: total.payload_received,
        switch_bytes_sent: report.switch.bytes_sent,
        switch_bytes_received: report.switch.bytes_received,
        seconds: report.seconds,
        servers: worker.servers(),
        workers: worker.workers(),
        links: report.links,
        codecs: report.codecs,
    })
}
