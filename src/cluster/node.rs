//! A node: a process (or task) that hosts a server shard, some workers, or both (as in Lapse and
//! NuPS), and runs the job's life with the coordinator.
//!
//! The order: listen (if hosting a shard) → join the coordinator → receive the job → build the
//! shard and report ready → wait for start → connect every worker to every server and run the
//! app → leave → wait for shutdown. If the job fails anywhere (the coordinator aborts, a server
//! vanishes, the app fails) the node stops and returns the reason; a failing app tells the
//! coordinator why, so every other node learns it too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::job::JobConfig;
use super::session::{Session, Stage};
use crate::proto::consistency::Consistency;
use crate::proto::wire::{ErrorCode, Join, Message, PeerRole};
use crate::server::Shard;
use crate::server::gated::GatedShard;
use crate::transport::handshake::{self, Auth, HandshakeError};
use crate::transport::{Connection, Listener, Net};
use crate::worker::{RemoteServer, ServerLink, Worker, WorkerError};

/// How long a peer may take to complete the hello handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failing node waits for its connections to tell their workers why.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections a server keeps open at once; more are refused with a reason. Each can hold a
/// frame in flight and a queue of replies, so this bounds what peers can make a server hold.
const MAX_CONNECTIONS: usize = 1024;

/// What a node hosts and where it finds the coordinator.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Coordinator address.
    pub coordinator: String,
    /// Job id and secret.
    pub auth: Auth,
    /// The shard this node hosts, if any.
    pub server: Option<ServerConfig>,
    /// Workers this node runs.
    pub workers: u32,
    /// A label for the coordinator's messages (host and pid by default).
    pub label: String,
    /// How long joining may take before the node gives up.
    pub join_timeout: Duration,
}

/// Where a node's shard listens.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// Address to tell workers, if not the bound one (e.g. behind NAT).
    pub advertise: Option<String>,
}

/// Why a node stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The shard could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The job failed (the reason comes from the coordinator or from this node).
    #[error("{0}")]
    Job(String),
}

/// One finished worker's result.
#[derive(Debug)]
pub struct WorkerOutput<T> {
    /// Worker rank.
    pub rank: u32,
    /// What the app returned.
    pub output: T,
}

/// Runs a node until the job ends. `app` runs once per hosted worker.
pub async fn run_node<T, F, Fut>(net: Net, cfg: NodeConfig, app: F) -> Result<Vec<WorkerOutput<T>>, NodeError>
where
    T: Send + 'static,
    F: Fn(Worker) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, WorkerError>> + Send + 'static,
{
    let deadline = Instant::now() + cfg.join_timeout;
    let mut listener = match &cfg.server {
        Some(s) => Some(
            net.listen(&s.listen, Default::default())
                .await
                .map_err(|source| NodeError::Listen { addr: s.listen.clone(), source })?,
        ),
        None => None,
    };
    let (steps_tx, mut steps) = tokio::sync::mpsc::unbounded_channel();
    let session = Arc::new(
        Session::connect(&net, &cfg.coordinator, &cfg.auth, deadline, steps_tx).await.map_err(NodeError::Job)?,
    );
    let listen = match (&listener, &cfg.server) {
        (Some(l), Some(s)) => {
            advertised(l, s, session.local).map_err(|source| NodeError::Listen { addr: s.listen.clone(), source })?
        }
        _ => String::new(),
    };
    let join = Join { server: cfg.server.is_some(), workers: cfg.workers, listen, label: cfg.label.clone() };
    session.join(join).await.map_err(NodeError::Job)?;
    // The coordinator enforces the join timeout and names who is missing; this bound only keeps
    // the node from waiting forever on a coordinator that has stalled.
    let assembled = Instant::now() + cfg.join_timeout;
    let stalled = |stage: &str| {
        NodeError::Job(format!(
            "joined the coordinator at {} but the job was not {stage} within {:?}",
            cfg.coordinator, cfg.join_timeout
        ))
    };
    let assign = tokio::time::timeout_at(assembled, session.assignment())
        .await
        .map_err(|_| stalled("assigned"))?
        .map_err(NodeError::Job)?;
    let job = Arc::new(JobConfig::from_toml(&assign.job).map_err(|e| NodeError::Job(e.to_string()))?);
    let servers = assign.servers.len() as u32;

    // The shard, if hosted: build it, serve it, report ready.
    let mut serving = JoinSet::new();
    // Set when the node stops on a failure: connections tell their workers why before closing.
    let (farewell, farewell_rx) = watch::channel(None::<String>);
    let shard = match (assign.server_rank, listener.take()) {
        (Some(rank), Some(mut listener)) => {
            let job2 = job.clone();
            let built = tokio::task::spawn_blocking(move || {
                Shard::new(rank, &job2.tables, &job2.directory(servers), job2.seed, &job2.optimizers())
                    .map(|s| s.with_reply_limit(job2.max_frame_bytes as usize).with_codecs(&job2.codecs(), job2.seed))
                    .map(|s| if job2.consistency == Consistency::Hogwild { s.lock_free() } else { s })
            })
            .await
            .map_err(|e| format!("building the shard failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
            let shard = match built {
                Ok(shard) => Arc::new(shard),
                Err(reason) => {
                    // Tell the coordinator, so every node learns why instead of seeing a disconnect.
                    let _ = session.send(Message::Abort { reason: reason.clone() }).await;
                    session.flush().await;
                    return Err(NodeError::Job(reason));
                }
            };
            listener.set_limits(job.limits());
            let gated = Arc::new(GatedShard::new(shard.clone(), job.consistency, assign.total_workers));
            serving.spawn(serve(listener, gated.clone(), cfg.auth.clone(), farewell_rx.clone()));
            // The coordinator's word on finished steps reaches the gate in the order it was sent.
            let (session2, gated2, mut stop) = (session.clone(), gated.clone(), farewell_rx.clone());
            serving.spawn(async move {
                loop {
                    let event = tokio::select! {
                        event = steps.recv() => event,
                        _ = stop.changed() => None,
                    };
                    let Some(event) = event else { return };
                    if let Err(e) = gated2.handle_event(event).await {
                        let reason = format!("server {rank}: {e}");
                        let _ = session2.send(Message::Abort { reason }).await;
                        return;
                    }
                }
            });
            session.send(Message::Ready { server: rank }).await.map_err(NodeError::Job)?;
            Some(shard)
        }
        (None, _) => None,
        (Some(rank), None) => {
            return Err(NodeError::Job(format!("assigned server rank {rank} but this node hosts no shard")));
        }
    };
    let result = run_workers(&net, &cfg, &session, &job, &assign, shard, assembled, app).await;
    if let Err(e) = &result
        && !serving.is_empty()
    {
        farewell.send_replace(Some(e.to_string()));
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async { while serving.join_next().await.is_some() {} }).await;
    }
    result
}

/// The rest of a node's life once its shard (if any) serves: start, run the workers, leave, and
/// wait for shutdown.
#[allow(clippy::too_many_arguments)]
async fn run_workers<T, F, Fut>(
    net: &Net,
    cfg: &NodeConfig,
    session: &Arc<Session>,
    job: &Arc<JobConfig>,
    assign: &Arc<crate::proto::wire::Assign>,
    shard: Option<Arc<Shard>>,
    assembled: Instant,
    app: F,
) -> Result<Vec<WorkerOutput<T>>, NodeError>
where
    T: Send + 'static,
    F: Fn(Worker) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, WorkerError>> + Send + 'static,
{
    let stalled = |stage: &str| {
        NodeError::Job(format!(
            "joined the coordinator at {} but the job was not {stage} within {:?}",
            cfg.coordinator, cfg.join_timeout
        ))
    };
    tokio::time::timeout_at(assembled, session.wait_for(Stage::Started))
        .await
        .map_err(|_| stalled("started"))?
        .map_err(NodeError::Job)?;

    // The workers.
    let mut running = JoinSet::new();
    for rank in assign.first_worker..assign.first_worker + assign.workers {
        let (net, auth, job, assign, session, shard, app) =
            (net.clone(), cfg.auth.clone(), job.clone(), assign.clone(), session.clone(), shard.clone(), app.clone());
        running.spawn(async move {
            let mut links = Vec::with_capacity(assign.servers.len());
            for (s, addr) in assign.servers.iter().enumerate() {
                let s = s as u32;
                links.push(match (&shard, assign.server_rank) {
                    (Some(shard), Some(own)) if own == s => ServerLink::Local(shard.clone()),
                    _ => ServerLink::Remote(
                        RemoteServer::connect(&net, addr, s, &auth, job.limits(), HANDSHAKE_TIMEOUT).await?,
                    ),
                });
            }
            let servers = assign.servers.clone();
            let worker = Worker::new(rank, assign.total_workers, job, links, servers, session.clone(), assign.run);
            let output = app(worker).await?;
            session.send(Message::Leave { worker: rank }).await.map_err(WorkerError::Coordinator)?;
            Ok::<_, WorkerError>(WorkerOutput { rank, output })
        });
    }
    let mut outputs = Vec::new();
    let failure = loop {
        tokio::select! {
            done = running.join_next() => match done {
                None => break None,
                Some(Ok(Ok(out))) => outputs.push(out),
                Some(Ok(Err(e))) => break Some(e.to_string()),
                Some(Err(e)) => break Some(format!("a worker task failed: {e}")),
            },
            reason = session.failed() => return Err(NodeError::Job(reason)),
        }
    };
    if let Some(reason) = failure {
        // Tell the coordinator why, so the other nodes hear the cause, not just a disconnect.
        let _ = session.send(Message::Abort { reason: reason.clone() }).await;
        session.flush().await;
        return Err(NodeError::Job(reason));
    }
    session.wait_for(Stage::Shutdown).await.map_err(NodeError::Job)?;
    outputs.sort_by_key(|o| o.rank);
    Ok(outputs)
}

/// The address workers should dial: the advertised one, else the bound one with an unspecified
/// IP replaced by the IP this host reaches the coordinator from.
fn advertised(listener: &Listener, s: &ServerConfig, via: Option<std::net::SocketAddr>) -> std::io::Result<String> {
    if let Some(a) = &s.advertise {
        return Ok(a.clone());
    }
    let bound = listener.local_addr()?;
    match (bound.parse::<std::net::SocketAddr>(), via) {
        (Ok(mut addr), Some(via)) if addr.ip().is_unspecified() => {
            addr.set_ip(via.ip());
            Ok(addr.to_string())
        }
        _ => Ok(bound),
    }
}

/// Accepts worker connections and serves each on its own task until the node stops.
async fn serve(
    mut listener: Listener,
    shard: Arc<GatedShard>,
    auth: Auth,
    mut farewell: watch::Receiver<Option<String>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = farewell.changed() => {
                // Every connection says goodbye on its own; wait for them to have done so.
                while conns.join_next().await.is_some() {}
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(conn) if conns.len() >= MAX_CONNECTIONS => {
                    tracing::warn!("server {}: refusing {}: {MAX_CONNECTIONS} connections open", shard.shard().rank(), conn.peer);
                    conns.spawn(super::coordinator::refuse(conn, format!("this server has {MAX_CONNECTIONS} connections open")));
                }
                Ok(conn) => {
                    conns.spawn(serve_connection(conn, shard.clone(), auth.clone(), farewell.clone()));
                }
                Err(e) => {
                    tracing::warn!("server {}: accept failed: {e}", shard.shard().rank());
                    if matches!(listener, Listener::Inproc { .. }) {
                        return;
                    }
                    // E.g. out of file descriptors: back off instead of spinning on the error.
                    tokio::time::sleep(super::coordinator::ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one connection: handshake, then answer every request in order. A bad request gets an
/// error reply; corrupt framing closes only this connection.
async fn serve_connection(
    mut conn: Connection,
    shard: Arc<GatedShard>,
    auth: Auth,
    mut farewell: watch::Receiver<Option<String>>,
) {
    let rank = shard.shard().rank();
    match handshake::accept(&mut conn, &auth, &[PeerRole::Worker, PeerRole::Client], HANDSHAKE_TIMEOUT).await {
        Ok(_) => {}
        Err(e @ HandshakeError::Rejected { .. }) => {
            tracing::warn!("server {rank}: {e}");
            conn.tx.flush().await;
            return;
        }
        Err(e) => {
            tracing::warn!("server {rank}: {e}");
            return;
        }
    }
    loop {
        let next = tokio::select! {
            next = conn.rx.recv() => next,
            _ = farewell.changed() => {
                let reason = farewell.borrow().clone().unwrap_or_default();
                let notice = Message::Error { code: ErrorCode::Unsupported, message: format!("server stopping: {reason}") };
                if let Ok(frame) = notice.encode(0) {
                    let _ = conn.tx.send(frame).await;
                    conn.tx.flush().await;
                }
                return;
            }
        };
        match next {
            Ok(Some(frame)) => {
                if shard.handle(frame, &conn.tx).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("server {rank}: closing the connection from {}: {e}", conn.peer);
                let notice = Message::Error { code: ErrorCode::Malformed, message: format!("closing: {e}") };
                if let Ok(frame) = notice.encode(0) {
                    let _ = conn.tx.send(frame).await;
                    conn.tx.flush().await;
                }
                return;
            }
        }
    }
}
