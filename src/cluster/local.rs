//! A whole cluster in one process: a coordinator, M servers and N workers as tasks, joined over
//! in-process links or loopback TCP. The roles are the same code that runs as separate processes.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

use super::coordinator::{new_run, run_coordinator};
use paramserv_switch::daemon::{DaemonConfig, SpawnedDaemon};

use super::job::{Aggregation, ConfigError, JobConfig};
use super::node::{NodeConfig, ServerConfig, WorkerOutput, run_node};
use crate::proto::consistency::Consistency;
use crate::proto::coordinator::CoordinatorConfig;
use crate::transport::handshake::Auth;
use crate::transport::{LinkModel, Net, Transport};
use crate::worker::{Worker, WorkerError};

/// Shape of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    /// Server shards.
    pub servers: u32,
    /// Workers.
    pub workers: u32,
    /// How the roles talk.
    pub transport: Transport,
    /// Put workers on the server nodes (spread evenly), so each reaches its own node's rows in
    /// shared memory; otherwise every worker is a node of its own.
    pub colocate: bool,
    /// Job id and secret (exercises the same handshake as a real cluster).
    pub auth: Auth,
    /// How long the cluster may take to assemble.
    pub join_timeout: Duration,
    /// How long a node may stay silent before the job fails.
    pub heartbeat_timeout: Duration,
    /// In-process links only: emulate this wire instead of handing frames over at once.
    pub link: Option<LinkModel>,
}

/// Why a local run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The job configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The cluster shape is invalid.
    #[error("{0}")]
    Shape(String),
    /// The coordinator could not listen.
    #[error("cannot start the coordinator: {0}")]
    Listen(std::io::Error),
    /// The job failed.
    #[error("{0}")]
    Failed(String),
}

impl LocalCluster {
    /// A cluster of `servers` and `workers` over `transport`, with default settings.
    pub fn new(servers: u32, workers: u32, transport: Transport) -> Self {
        Self {
            servers,
            workers,
            transport,
            colocate: false,
            auth: Auth { job_id: "local".into(), secret: None },
            join_timeout: Duration::from_secs(30),
            heartbeat_timeout: crate::proto::coordinator::DEFAULT_HEARTBEAT_TIMEOUT,
            link: None,
        }
    }

    /// Runs `job` with `app` on every worker; returns the workers' outputs by rank.
    pub async fn run<T, F, Fut>(&self, job: &JobConfig, app: F) -> Result<Vec<T>, ClusterError>
    where
        T: Send + 'static,
        F: Fn(Worker) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<T, WorkerError>> + Send + 'static,
    {
        job.validate()?;
        if self.servers == 0 || self.workers == 0 {
            return Err(ClusterError::Shape(format!(
                "a cluster needs at least one server and one worker (got {} and {})",
                self.servers, self.workers
            )));
        }
        let net = match (self.transport, self.link) {
            (_, None) => Net::new(self.transport),
            (Transport::Inproc, Some(model)) => Net::emulated(model),
            (Transport::Tcp, Some(_)) => {
                return Err(ClusterError::Shape("an emulated link needs the in-process transport".into()));
            }
        };
        let listen = match self.transport {
            Transport::Tcp => "127.0.0.1:0",
            Transport::Inproc => "coordinator",
        };
        let listener = net.listen(listen, Default::default()).await.map_err(ClusterError::Listen)?;
        let coordinator = listener.local_addr().map_err(ClusterError::Listen)?;
        // Switch aggregation without an agent address: run one on loopback for this job.
        let mut own_agent = None;
        let job = &match (job.aggregation, &job.switch) {
            (Aggregation::Switch, None) => {
                let config = DaemonConfig::new(([127, 0, 0, 1], 0).into());
                let agent = SpawnedDaemon::spawn(config).map_err(ClusterError::Listen)?;
                let mut with_agent = job.clone();
                with_agent.switch = Some(agent.addr().to_string());
                own_agent = Some(agent);
                with_agent
            }
            _ => job.clone(),
        };
        let cfg = CoordinatorConfig {
            servers: self.servers,
            workers: self.workers,
            job: job.to_toml(),
            join_timeout: self.join_timeout,
            heartbeat_timeout: self.heartbeat_timeout,
            consistency: job.consistency,
            run: new_run(),
        };
        // Refused here, before any node starts waiting for a coordinator that will not run.
        crate::proto::coordinator::Coordinator::new(cfg.clone(), std::time::Instant::now())
            .map_err(|e| ClusterError::Shape(e.to_string()))?;
        let coord = tokio::spawn(run_coordinator(listener, cfg, self.auth.clone()));

        let server_listen = match self.transport {
            Transport::Tcp => "127.0.0.1:0",
            Transport::Inproc => "server-*",
        };
        let node = |server: bool, workers: u32, label: String| NodeConfig {
            coordinator: coordinator.clone(),
            auth: self.auth.clone(),
            server: server.then(|| ServerConfig { listen: server_listen.into(), advertise: None }),
            workers,
            label,
            join_timeout: self.join_timeout,
        };
        let mut nodes = JoinSet::new();
        // Hogwild workers are threads of the server's process.
        if self.colocate || job.consistency == Consistency::Hogwild {
            for s in 0..self.servers {
                let workers = self.workers / self.servers + u32::from(s < self.workers % self.servers);
                nodes.spawn(run_node(net.clone(), node(true, workers, format!("node {s}")), app.clone()));
            }
        } else {
            for s in 0..self.servers {
                nodes.spawn(run_node(net.clone(), node(true, 0, format!("server task {s}")), app.clone()));
            }
            for w in 0..self.workers {
                nodes.spawn(run_node(net.clone(), node(false, 1, format!("worker task {w}")), app.clone()));
            }
        }
        let mut outputs: Vec<WorkerOutput<T>> = Vec::new();
        let mut node_failure = None;
        while let Some(done) = nodes.join_next().await {
            match done {
                Ok(Ok(out)) => outputs.extend(out),
                Ok(Err(e)) => node_failure = node_failure.or(Some(e.to_string())),
                Err(e) => node_failure = node_failure.or(Some(format!("a node task failed: {e}"))),
            }
        }
        // The coordinator's reason names the cause; a node's may only say "aborted".
        match coord.await {
            Ok(Err(reason)) => return Err(ClusterError::Failed(reason)),
            Err(e) => return Err(ClusterError::Failed(format!("the coordinator task failed: {e}"))),
            Ok(Ok(())) => {}
        }
        if let Some(reason) = node_failure {
            return Err(ClusterError::Failed(reason));
        }
        if let Some(agent) = own_agent {
            // Stopping joins the agent's thread: not on a runtime thread.
            let _ = tokio::task::spawn_blocking(move || agent.stop()).await;
        }
        outputs.sort_by_key(|o| o.rank);
        Ok(outputs.into_iter().map(|o| o.output).collect())
    }
}
