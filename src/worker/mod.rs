//! The worker's client API: `pull`, `push` and `barrier`.
//!
//! A request names a table and rows, either as a key list or as a key range. The [`Worker`] cuts
//! it by owning server through the job's key directory, cuts each server's part into requests of
//! about `request_bytes`, and sends them all at once: many requests are in flight on each
//! connection, and replies are written into place as they arrive. A range stays a range on the
//! wire (no key per row). Rows held by the worker's own node are read and written in shared memory,
//! without frames.
//!
//! Codecs: a table's push codec (the job's `codec`, or the table's own) encodes the values of
//! every push request this worker sends over a link, through one stateful pipeline per table (its
//! error-feedback residuals are kept per row key); a coded pull reply is decoded into place. Rows
//! on the worker's own node move through shared memory and skip codecs: no bytes cross a link.
//! [`Worker::codec_traffic`] reports, per table, the values' bytes before and after coding.
//!
//! Every call either completes or fails with a [`WorkerError`] saying which server refused what,
//! or which connection was lost; nothing is silently dropped.

mod remote;
mod values;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use paramserv_codecs::{Pipeline, raw};

use crate::cluster::job::{Aggregation, JobConfig};
use crate::cluster::session::Session;
use crate::proto::partition::{KeyDirectory, KeyRange, KeySplit, Partitioning, RouteError};
use crate::proto::wire::{self, ErrorCode, Frame, KeyCoding, KeysRef, Message, Step, TableId, WireError};
use crate::server::{Shard, ShardError, ShardKeys};
use crate::transport::LinkCounters;
pub(crate) use remote::RemoteServer;
pub use values::Values;

/// Why a worker call failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No table by that name.
    #[error("unknown table '{0}'")]
    UnknownTableName(String),
    /// A key or range the job's directory refuses (unknown table, key out of range).
    #[error("{0}")]
    Route(#[from] RouteError),
    /// A buffer of the wrong length for the rows asked for.
    #[error("table '{table}' has dimension {dim}: {rows} rows need {want} values, got {got}")]
    WrongLength {
        /// Table name.
        table: String,
        /// Row dimension.
        dim: usize,
        /// Rows in the request.
        rows: usize,
        /// Values needed.
        want: usize,
        /// Values given.
        got: usize,
    },
    /// A server answered with an error.
    #[error("server {server} refused the request ({code}): {message}")]
    Rejected {
        /// Server rank.
        server: u32,
        /// Error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The connection to a server is gone.
    #[error("server {server} unreachable: {reason}")]
    ConnectionLost {
        /// Server rank.
        server: u32,
        /// Why.
        reason: String,
    },
    /// Too many requests to one server await replies (cancelled requests count until answered).
    #[error("server {server} has {outstanding} requests outstanding; try again when some complete")]
    Overloaded {
        /// Server rank.
        server: u32,
        /// Requests awaiting replies.
        outstanding: usize,
    },
    /// A server answered with something that is not a reply to the request.
    #[error("server {server} sent an invalid reply: {detail}")]
    BadReply {
        /// Server rank.
        server: u32,
        /// What was wrong.
        detail: String,
    },
    /// The shard of this worker's own node refused the request.
    #[error("local shard: {0}")]
    Local(#[from] ShardError),
    /// A request could not be encoded.
    #[error("cannot encode request: {0}")]
    Encode(#[from] WireError),
    /// The coordinator is gone or aborted the job.
    #[error("{0}")]
    Coordinator(String),
    /// The app running on the worker failed.
    #[error("{0}")]
    App(String),
    /// The all-reduce through the switch agent failed.
    #[error("switch aggregation of table '{table}': {reason}")]
    Switch {
        /// Table name.
        table: String,
        /// Why.
        reason: String,
    },
}

/// Result alias for worker calls.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

/// Rows a request names.
#[derive(Clone, Copy, Debug)]
pub enum Keys<'a> {
    /// Explicit keys, in the order values are returned or given.
    List(&'a [u64]),
    /// A key range `[start, end)`, values in key order.
    Range(KeyRange),
}

impl Keys<'_> {
    /// Number of rows named.
    pub fn len(&self) -> usize {
        match self {
            Self::List(k) => k.len(),
            Self::Range(r) => r.len() as usize,
        }
    }

    /// Whether no row is named.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> From<&'a [u64]> for Keys<'a> {
    fn from(k: &'a [u64]) -> Self {
        Self::List(k)
    }
}

impl<'a> From<&'a Vec<u64>> for Keys<'a> {
    fn from(k: &'a Vec<u64>) -> Self {
        Self::List(k)
    }
}

impl<'a, const N: usize> From<&'a [u64; N]> for Keys<'a> {
    fn from(k: &'a [u64; N]) -> Self {
        Self::List(k)
    }
}

impl From<KeyRange> for Keys<'_> {
    fn from(r: KeyRange) -> Self {
        Self::Range(r)
    }
}

/// A read started by [`Worker::prefetch`]; await it when the step that needs the rows starts.
#[derive(Debug)]
pub struct Prefetch(tokio::task::JoinHandle<Result<Vec<f32>>>);

impl Prefetch {
    /// The rows (`dim` values per row, in key order).
    pub async fn wait(self) -> Result<Vec<f32>> {
        self.0.await.map_err(|e| WorkerError::App(format!("a prefetch task failed: {e}")))?
    }
}

/// A push started by [`Worker::push_in_background`].
#[derive(Debug)]
pub struct PendingPush(tokio::task::JoinHandle<Result<()>>);

impl PendingPush {
    /// Waits until every server has applied its part of the push.
    pub async fn wait(self) -> Result<()> {
        self.0.await.map_err(|e| WorkerError::App(format!("a background push task failed: {e}")))?
    }
}

/// How a worker reaches one server.
pub(crate) enum ServerLink {
    /// The shard lives in this process: shared memory.
    Local(Arc<Shard>),
    /// Over a link.
    Remote(RemoteServer),
}

/// Traffic of one worker–server link.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LinkReport {
    /// Worker rank.
    pub worker: u32,
    /// Server rank.
    pub server: u32,
    /// Its counters (zero for a shard on the worker's own node).
    #[serde(flatten)]
    pub counters: LinkCounters,
}

/// Bytes of a table's values through this worker: as raw `f32` would be, and as sent or received.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CodecTraffic {
    /// Table name.
    pub table: String,
    /// Push codec (`raw` when none).
    pub codec: String,
    /// Pull codec (`raw` when none).
    pub pull_codec: String,
    /// Bytes pushed values would take as raw `f32`.
    pub push_raw_bytes: u64,
    /// Bytes of pushed values on the wire.
    pub push_wire_bytes: u64,
    /// Bytes pulled values would take as raw `f32`.
    pub pull_raw_bytes: u64,
    /// Bytes of pulled values on the wire.
    pub pull_wire_bytes: u64,
    /// `push_raw_bytes / push_wire_bytes` (1 when nothing was pushed).
    pub push_ratio: f64,
    /// `pull_raw_bytes / pull_wire_bytes` (1 when nothing was pulled).
    pub pull_ratio: f64,
}

/// UDP traffic of switch aggregation (`aggregation = "switch"`): bytes of the datagrams
/// exchanged with the switch agent, joins and retransmissions included (UDP payloads: the
/// agent's 32-byte packet headers and values; IP and UDP headers are not counted, as the link
/// counters leave out TCP's).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Serialize)]
pub struct SwitchTraffic {
    /// Bytes sent to the agent.
    pub bytes_sent: u64,
    /// Bytes received from the agent.
    pub bytes_received: u64,
}

impl CodecTraffic {
    fn with_ratios(mut self) -> Self {
        let ratio = |raw: u64, wire: u64| if wire == 0 { 1.0 } else { raw as f64 / wire as f64 };
        self.push_ratio = ratio(self.push_raw_bytes, self.push_wire_bytes);
        self.pull_ratio = ratio(self.pull_raw_bytes, self.pull_wire_bytes);
        self
    }

    /// The four counters, for summing across workers at a barrier.
    fn to_vec(&self) -> [f64; 4] {
        [self.push_raw_bytes, self.push_wire_bytes, self.pull_raw_bytes, self.pull_wire_bytes].map(|b| b as f64)
    }
}

/// A table's codecs on this worker.
struct TableCodec {
    /// The push encoder, `None` for raw. Its state (residuals, random stream) is this worker's.
    push: Option<std::sync::Mutex<Pipeline>>,
    /// Pull replies arrive coded.
    pull_coded: bool,
    /// `push_raw`, `push_wire`, `pull_raw`, `pull_wire` bytes.
    bytes: [AtomicU64; 4],
}

impl TableCodec {
    fn count(&self, pull: bool, raw: usize, wire: usize) {
        let at = if pull { 2 } else { 0 };
        self.bytes[at].fetch_add(raw as u64, Ordering::Relaxed);
        self.bytes[at + 1].fetch_add(wire as u64, Ordering::Relaxed);
    }
}

struct Inner {
    rank: u32,
    workers: u32,
    job: Arc<JobConfig>,
    directory: KeyDirectory,
    servers: Vec<ServerLink>,
    addresses: Vec<String>,
    session: Arc<Session>,
    next_barrier: AtomicU64,
    /// The step this worker works on (see [`crate::proto::consistency`]).
    step: AtomicU64,
    /// By table id.
    codecs: Vec<TableCodec>,
    /// With `aggregation = "switch"`: the all-reduce clients.
    switch: Option<SwitchLink>,
}

/// A worker's all-reduce clients on the switch agent: one agent job per table, joined on first use.
struct SwitchLink {
    agent: Option<std::net::SocketAddr>,
    /// Agent job id of table 0; table `t` uses `base + t`.
    job_base: u32,
    /// By table id; `None` until joined, and while an all-reduce runs on a blocking thread.
    clients: Vec<tokio::sync::Mutex<Option<paramserv_switch::client::AllReduce>>>,
    /// Bytes sent to and received from the agent, over every table's client.
    bytes: [AtomicU64; 2],
}

/// Joins agent job `job` as worker `rank` of `workers` (blocking).
fn join_switch(
    agent: std::net::SocketAddr,
    job: u32,
    rank: u32,
    workers: u32,
) -> std::result::Result<paramserv_switch::client::AllReduce, String> {
    use paramserv_switch::client::{AllReduce, ClientConfig};
    use paramserv_switch::proto::agent::JobParams;
    let (values, slots) = SWITCH_PARAMS;
    let workers = u16::try_from(workers).map_err(|_| format!("{workers} workers: the switch takes at most 256"))?;
    let rank = u16::try_from(rank).map_err(|_| format!("worker rank {rank} above the switch's limit"))?;
    let params = JobParams { workers, slots, values };
    AllReduce::connect(ClientConfig::new(agent, job, rank, params)).map_err(|e| e.to_string())
}

/// Values per packet and slots of the switch jobs: SwitchML's 256-value packets, 128 in flight.
const SWITCH_PARAMS: (u16, u16) = (256, 128);

/// An agent job id every worker of this run derives alike (FNV-1a over the job's configuration,
/// its servers and the run id the coordinator assigned), so that two jobs sharing an agent do
/// not meet, even two runs of an identical job at the same time: their run ids differ.
fn switch_job_base(job: &JobConfig, servers: &[String], run: u64) -> u32 {
    let text = format!("{job:?}{servers:?}{run}");
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    // Room for one job per table above the base.
    h & !0xffff
}

/// A worker's handle on the cluster. Cheap to clone: clones share connections, so one worker may
/// run many requests from many tasks at once.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("rank", &self.inner.rank).field("servers", &self.inner.servers.len()).finish()
    }
}

/// Where the values of one chunk go in the caller's buffer (in rows).
#[derive(Clone, Copy, Debug)]
enum Dest<'p> {
    /// Contiguous rows starting at this row.
    Rows(usize),
    /// These rows, in order.
    Positions(&'p [usize]),
}

enum PartKeys<'a> {
    Borrowed(&'a [u64]),
    Owned(Vec<u64>),
    Range(KeyRange),
}

enum PartDest {
    Rows(usize),
    Positions(Vec<usize>),
}

/// The rows of a request that one server holds.
struct Part<'a> {
    server: u32,
    keys: PartKeys<'a>,
    dest: PartDest,
}

/// One request's worth of a part.
struct Chunk<'p> {
    server: u32,
    keys: KeysRef<'p>,
    rows: usize,
    dest: Dest<'p>,
}

impl Part<'_> {
    fn chunks(&self, rows_per: usize, coding: KeyCoding) -> Vec<Chunk<'_>> {
        let server = self.server;
        match (&self.keys, &self.dest) {
            (PartKeys::Borrowed(k), dest) => list_chunks(server, k, dest, rows_per, coding),
            (PartKeys::Owned(k), dest) => list_chunks(server, k, dest, rows_per, coding),
            (PartKeys::Range(r), PartDest::Rows(first)) => (r.start()..r.end())
                .step_by(rows_per)
                .map(|s| {
                    let sub = KeyRange::new(s, (s + rows_per as u64).min(r.end())).expect("inside the range");
                    Chunk {
                        server,
                        keys: KeysRef::Range(sub),
                        rows: sub.len() as usize,
                        dest: Dest::Rows(first + (s - r.start()) as usize),
                    }
                })
                .collect(),
            // A window of a hash-partitioned range, sized when it was cut: one request.
            (PartKeys::Range(r), PartDest::Positions(p)) => {
                vec![Chunk { server, keys: KeysRef::Range(*r), rows: p.len(), dest: Dest::Positions(p) }]
            }
        }
    }
}

fn list_chunks<'p>(
    server: u32,
    keys: &'p [u64],
    dest: &'p PartDest,
    rows_per: usize,
    coding: KeyCoding,
) -> Vec<Chunk<'p>> {
    keys.chunks(rows_per)
        .enumerate()
        .map(|(i, k)| {
            let at = i * rows_per;
            let dest = match dest {
                PartDest::Rows(first) => Dest::Rows(first + at),
                PartDest::Positions(p) => Dest::Positions(&p[at..at + k.len()]),
            };
            Chunk { server, keys: KeysRef::list(k, coding), rows: k.len(), dest }
        })
        .collect()
}

impl Worker {
    pub(crate) fn new(
        rank: u32,
        workers: u32,
        job: Arc<JobConfig>,
        servers: Vec<ServerLink>,
        addresses: Vec<String>,
        session: Arc<Session>,
        run: u64,
    ) -> Self {
        let directory = job.directory(servers.len() as u32);
        let (next_barrier, step) = (AtomicU64::new(0), AtomicU64::new(0));
        let codecs = job
            .codecs()
            .into_iter()
            .enumerate()
            .map(|(i, c)| TableCodec {
                // Each worker and table draws its own random stream (random-k, QSGD, TernGrad).
                push: c.push.map(|spec| {
                    let stream = job.seed ^ (u64::from(rank) << 32) ^ (i as u64) ^ 0x5eed_c0de;
                    std::sync::Mutex::new(Pipeline::with_seed(&spec, stream))
                }),
                pull_coded: c.pull.is_some(),
                bytes: Default::default(),
            })
            .collect();
        let switch = (job.aggregation == Aggregation::Switch).then(|| SwitchLink {
            // Parsed by `JobConfig::validate`; `None` (no address) fails `push_dense` with a message.
            agent: job.switch.as_deref().and_then(|a| a.parse().ok()),
            job_base: switch_job_base(&job, &addresses, run),
            clients: job.tables.iter().map(|_| tokio::sync::Mutex::new(None)).collect(),
            bytes: Default::default(),
        });
        Self {
            inner: Arc::new(Inner {
                rank,
                workers,
                job,
                directory,
                servers,
                addresses,
                session,
                next_barrier,
                step,
                codecs,
                switch,
            }),
        }
    }

    /// Reads rows of `table` into `out` (`dim` values per row, in key order). Under BSP, SSP and
    /// backup workers the read belongs to the current [`Worker::step`] and waits until the
    /// strategy allows it.
    pub async fn pull_into<'k>(&self, table: TableId, keys: impl Into<Keys<'k>>, out: &mut [f32]) -> Result<()> {
        self.pull_into_at(table, keys.into(), out, self.tag(0)).await
    }

    /// Starts reading the rows the next step needs, now, so that the read overlaps this step's
    /// compute (Dean et al., NeurIPS'12); await the handle when the next step starts. The read
    /// belongs to the next step, so BSP, SSP and backup workers answer it only when they would
    /// answer that step's pull.
    pub fn prefetch(&self, table: TableId, keys: Vec<u64>) -> Prefetch {
        let (worker, tag) = (self.clone(), self.tag(1));
        Prefetch(tokio::spawn(async move {
            let mut out = vec![0.0; keys.len() * worker.dim(table)?];
            worker.pull_into_at(table, Keys::List(&keys), &mut out, tag).await?;
            Ok(out)
        }))
    }

    /// Finishes the current step: every push of it has been acknowledged, so the coordinator may
    /// count it. Returns whether the step's pushes count (false: a backup worker was late and its
    /// pushes were dropped); the worker then works on [`Worker::step`].
    pub async fn clock(&self) -> Result<bool> {
        let step = self.inner.step.load(Ordering::Acquire);
        if !self.inner.job.consistency.is_gated() {
            self.inner.step.store(step + 1, Ordering::Release);
            return Ok(true);
        }
        let (next, admitted) =
            self.inner.session.clock(self.inner.rank, step).await.map_err(WorkerError::Coordinator)?;
        self.inner.step.store(next, Ordering::Release);
        Ok(admitted)
    }

    /// The step this worker works on: 0 at first, advanced by [`Worker::clock`] (by more than one
    /// when a late backup worker catches up).
    pub fn step(&self) -> u64 {
        self.inner.step.load(Ordering::Acquire)
    }

    /// The step tag of a request `ahead` steps from now, if the strategy gates requests.
    fn tag(&self, ahead: u64) -> Option<Step> {
        self.inner.job.consistency.is_gated().then(|| Step { worker: self.inner.rank, step: self.step() + ahead })
    }

    async fn pull_into_at(&self, table: TableId, keys: Keys<'_>, out: &mut [f32], tag: Option<Step>) -> Result<()> {
        let dim = self.check_len(table, &keys, out.len())?;
        let parts = self.split(table, keys)?;
        let mut inflight = FuturesUnordered::new();
        for part in &parts {
            for chunk in self.requests(part, dim) {
                match &self.inner.servers[chunk.server as usize] {
                    ServerLink::Local(shard) => pull_local(shard, table, &chunk, dim, out)?,
                    ServerLink::Remote(remote) => inflight.push(async move {
                        let reply = remote.request(|id| wire::encode_pull(id, table, tag, chunk.keys)).await?;
                        Ok::<_, WorkerError>((chunk, reply))
                    }),
                }
            }
        }
        while let Some(done) = inflight.next().await {
            let (chunk, reply) = done?;
            self.take_reply(table, &chunk, dim, reply, out)?;
        }
        Ok(())
    }

    /// Reads rows of `table` into a new vector (`dim` values per row, in key order).
    pub async fn pull<'k>(&self, table: TableId, keys: impl Into<Keys<'k>>) -> Result<Vec<f32>> {
        let keys = keys.into();
        let mut out = vec![0.0; keys.len() * self.dim(table)?];
        self.pull_into(table, keys, &mut out).await?;
        Ok(out)
    }

    /// Reads rows of `table` as a [`Values`] buffer (`dim` values per row, in key order).
    ///
    /// Zero copy when one reply answers the whole request (the rows of one server, within one
    /// request's size): the received bytes are handed back as they are. Otherwise the replies are
    /// assembled with one copy, as [`Worker::pull_into`] does.
    pub async fn pull_values<'k>(&self, table: TableId, keys: impl Into<Keys<'k>>) -> Result<Values> {
        let keys = keys.into();
        let dim = self.dim(table)?;
        let parts = self.split(table, keys)?;
        if let [part] = &parts[..]
            && !self.inner.codecs[table as usize].pull_coded
            && let [chunk] = &self.requests(part, dim)[..]
            && let (Dest::Rows(0), ServerLink::Remote(remote)) =
                (chunk.dest, &self.inner.servers[chunk.server as usize])
        {
            let reply = remote.request(|id| wire::encode_pull(id, table, self.tag(0), chunk.keys)).await?;
            let values = pull_reply(chunk, dim, reply)?;
            self.inner.codecs[table as usize].count(true, values.len(), values.len());
            return Ok(Values::from_bytes(values).expect("length checked by pull_reply"));
        }
        let mut out = vec![0.0; keys.len() * dim];
        self.pull_into_at(table, keys, &mut out, self.tag(0)).await?;
        Ok(Values::from_vec(out))
    }

    /// Pushes gradients for rows of `table` (`dim` values per row, in key order). Returns once
    /// every server has applied its part.
    pub async fn push<'k>(&self, table: TableId, keys: impl Into<Keys<'k>>, grads: &[f32]) -> Result<()> {
        self.push_from(table, keys.into(), Source::Slice(grads)).await
    }

    /// Pushes a gradient for every row of `table` (`rows × dim` values, in key order); every
    /// worker calls it once per step. With `aggregation = "switch"` the workers sum their
    /// gradients in the switch agent and one worker per step (in turn) pushes the sum, so the
    /// servers take one push per step instead of one per worker; otherwise it is [`push`](Self::push)
    /// over the whole table.
    pub async fn push_dense(&self, table: TableId, grads: &[f32]) -> Result<()> {
        let spec = self.inner.job.tables.get(table as usize).ok_or(RouteError::UnknownTable(table))?;
        let all = Keys::Range(KeyRange::new(0, spec.rows).expect("0 <= rows"));
        let Some(link) = &self.inner.switch else {
            return self.push(table, all, grads).await;
        };
        self.check_len(table, &all, grads.len())?;
        let fail = |reason: String| WorkerError::Switch { table: spec.name.clone(), reason };
        let agent = link.agent.ok_or_else(|| fail("the job names no switch agent (--switch ADDR)".into()))?;
        let mut slot = link.clients[table as usize].lock().await;
        let client = slot.take();
        let (job, rank, workers) = (link.job_base + table, self.inner.rank, self.inner.workers);
        let mut sum = grads.to_vec();
        let (client, sum, outcome, bytes) = tokio::task::spawn_blocking(move || {
            // A new client's counters start at its join, which counts too.
            let before = client.as_ref().map(paramserv_switch::client::AllReduce::stats).unwrap_or_default();
            let mut client = match client.map_or_else(|| join_switch(agent, job, rank, workers), Ok) {
                Ok(c) => c,
                Err(e) => return (None, sum, Err(e), [0; 2]),
            };
            let outcome = client.all_reduce(&mut sum).map_err(|e| e.to_string());
            let after = client.stats();
            let bytes = [
                after.bytes_sent.saturating_sub(before.bytes_sent),
                after.bytes_received.saturating_sub(before.bytes_received),
            ];
            (Some(client), sum, outcome, bytes)
        })
        .await
        .map_err(|e| fail(format!("the all-reduce thread failed: {e}")))?;
        *slot = client;
        drop(slot);
        // A failed all-reduce's datagrams crossed the network too.
        for (counter, n) in link.bytes.iter().zip(bytes) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        outcome.map_err(fail)?;
        if (self.step() + u64::from(table)) % u64::from(workers) == u64::from(rank) {
            self.push(table, all, &sum).await?;
        }
        Ok(())
    }

    /// Pushes gradients held in a [`Values`] buffer: the bytes go into frames without being copied
    /// (rows that must be regrouped by server, as with unsorted keys, are gathered first).
    pub async fn push_values<'k>(&self, table: TableId, keys: impl Into<Keys<'k>>, grads: &Values) -> Result<()> {
        self.push_from(table, keys.into(), Source::Shared(grads)).await
    }

    async fn push_from(&self, table: TableId, keys: Keys<'_>, grads: Source<'_>) -> Result<()> {
        self.push_coded_as(table, keys, grads, Coding::Table).await
    }

    async fn push_coded_as(&self, table: TableId, keys: Keys<'_>, grads: Source<'_>, coding: Coding) -> Result<()> {
        let dim = self.check_len(table, &keys, grads.len())?;
        let parts = self.split(table, keys)?;
        // A flush is no step's push: servers apply it on arrival, whatever the consistency.
        let tag = if coding == Coding::Flush { None } else { self.tag(0) };
        let mut inflight = FuturesUnordered::new();
        for part in &parts {
            for chunk in self.requests(part, dim) {
                let payload = grads.chunk(chunk.dest, chunk.rows, dim);
                match &self.inner.servers[chunk.server as usize] {
                    ServerLink::Local(shard) => shard.push_from(table, shard_keys(chunk.keys), &payload.to_f32())?,
                    ServerLink::Remote(remote) => {
                        let payload = self.coded(table, &chunk, dim, payload, coding);
                        inflight.push(async move {
                            let reply = remote.request(|id| encode_push(id, table, tag, &chunk, &payload)).await?;
                            push_acknowledged(chunk.server, reply)
                        })
                    }
                }
            }
        }
        while let Some(done) = inflight.next().await {
            done?;
        }
        Ok(())
    }

    /// Starts a push and returns once its frames are queued, without waiting for the servers to
    /// acknowledge it; [`PendingPush::wait`] waits for that and reports errors. Rows on this
    /// worker's own node are updated before this returns. Each server serves one worker's requests
    /// in the order they were queued, so a pull or prefetch started after this returns reads this
    /// push's update: pushing in the background costs no staleness, only the errors arrive later.
    pub async fn push_in_background<'k>(
        &self,
        table: TableId,
        keys: impl Into<Keys<'k>>,
        grads: &[f32],
    ) -> Result<PendingPush> {
        let keys = keys.into();
        let grads = Source::Slice(grads);
        let dim = self.check_len(table, &keys, grads.len())?;
        let parts = self.split(table, keys)?;
        let tag = self.tag(0);
        let mut sent = Vec::new();
        for part in &parts {
            for chunk in self.requests(part, dim) {
                let payload = grads.chunk(chunk.dest, chunk.rows, dim);
                match &self.inner.servers[chunk.server as usize] {
                    ServerLink::Local(shard) => shard.push_from(table, shard_keys(chunk.keys), &payload.to_f32())?,
                    ServerLink::Remote(remote) => {
                        let payload = self.coded(table, &chunk, dim, payload, Coding::Table);
                        sent.push((
                            chunk.server,
                            remote.send(|id| encode_push(id, table, tag, &chunk, &payload)).await?,
                        ))
                    }
                }
            }
        }
        Ok(PendingPush(tokio::spawn(async move {
            for (server, request) in sent {
                push_acknowledged(server, request.reply().await?)?;
            }
            Ok(())
        })))
    }

    /// Waits until every worker of the job reaches this barrier; returns the element-wise sums of
    /// every worker's `values` (all workers must bring the same number of values).
    pub async fn barrier(&self, values: &[f64]) -> Result<Vec<f64>> {
        let id = self.inner.next_barrier.fetch_add(1, Ordering::Relaxed);
        self.inner.session.barrier(self.inner.rank, id, values.to_vec()).await.map_err(WorkerError::Coordinator)
    }

    /// The byte counters of every worker–server link of the job, gathered at a barrier that every
    /// worker must call.
    pub async fn cluster_links(&self) -> Result<Vec<LinkReport>> {
        let (n, m) = (self.inner.workers as usize, self.inner.servers.len());
        const FIELDS: usize = 6;
        let mut values = vec![0.0; n * m * FIELDS];
        for (s, link) in self.links().iter().enumerate() {
            let at = (self.inner.rank as usize * m + s) * FIELDS;
            values[at..at + FIELDS].copy_from_slice(&link.counters.to_vec());
        }
        let sums = self.barrier(&values).await?;
        Ok((0..n * m)
            .map(|i| LinkReport {
                worker: (i / m) as u32,
                server: (i % m) as u32,
                counters: LinkCounters::from_slice(&sums[i * FIELDS..(i + 1) * FIELDS]),
            })
            .collect())
    }

    /// This worker's links, one per server.
    pub fn links(&self) -> Vec<LinkReport> {
        self.inner
            .servers
            .iter()
            .enumerate()
            .map(|(s, link)| LinkReport {
                worker: self.inner.rank,
                server: s as u32,
                counters: match link {
                    ServerLink::Local(_) => LinkCounters::default(),
                    ServerLink::Remote(r) => r.counters(),
                },
            })
            .collect()
    }

    /// The id of the table named `name`.
    pub fn table(&self, name: &str) -> Result<TableId> {
        self.inner
            .job
            .tables
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as TableId)
            .ok_or_else(|| WorkerError::UnknownTableName(name.to_owned()))
    }

    /// Values per row of `table`.
    pub fn dim(&self, table: TableId) -> Result<usize> {
        self.inner.directory.placement(table)?;
        Ok(self.inner.job.tables[table as usize].dim as usize)
    }

    /// Adds `scale` times what `table`'s push codec still holds back of this worker's pushes to
    /// the rows of `keys` (`rows` holds `keys.len() · dim` values): error feedback's residuals,
    /// pushed by this worker and not yet sent. Rows pulled and then corrected this way show the
    /// worker its own updates whole (read-my-writes), as a raw table would; with SGD at rate 1 on
    /// the servers (which subtract what is pushed) the scale is -1. Nothing changes for raw
    /// tables, for codecs without error feedback, and for rows on this worker's own node (their
    /// pushes skip codecs).
    pub fn add_held_back(&self, table: TableId, keys: &[u64], scale: f32, rows: &mut [f32]) -> Result<()> {
        let dim = self.check_len(table, &Keys::List(keys), rows.len())?;
        if let Some(pipeline) = &self.inner.codecs[table as usize].push {
            pipeline
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .add_held_back_rows(keys, dim, scale, rows);
        }
        Ok(())
    }

    /// Pushes what `table`'s push codec still holds back of this worker's pushes (error
    /// feedback's residual rows), uncoded, and forgets it; returns the number of rows pushed (0
    /// for raw tables and codecs without error feedback). Call it after the last step: otherwise
    /// what error feedback held back then never reaches the servers. The push carries no step, so
    /// servers apply it on arrival under any consistency; it returns once they have.
    pub async fn flush_held_back(&self, table: TableId) -> Result<usize> {
        self.dim(table)?;
        let Some(pipeline) = &self.inner.codecs[table as usize].push else {
            return Ok(0);
        };
        let held = pipeline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take_held_back_rows();
        if !held.keys.is_empty() {
            self.push_coded_as(table, Keys::List(&held.keys), Source::Slice(&held.rows), Coding::Flush).await?;
        }
        Ok(held.keys.len())
    }

    /// This worker's rank, `0..workers()`.
    pub fn rank(&self) -> u32 {
        self.inner.rank
    }

    /// Number of workers in the job.
    pub fn workers(&self) -> u32 {
        self.inner.workers
    }

    /// Number of servers in the job.
    pub fn servers(&self) -> u32 {
        self.inner.servers.len() as u32
    }

    /// Where server `server` listens, as the coordinator announced it.
    pub fn server_address(&self, server: u32) -> Option<&str> {
        self.inner.addresses.get(server as usize).map(String::as_str)
    }

    /// The job configuration.
    pub fn job(&self) -> &JobConfig {
        &self.inner.job
    }

    /// The values of every table this worker pushed and pulled over links, as raw `f32` and on
    /// the wire (zeros for tables it did not touch).
    pub fn codec_traffic(&self) -> Vec<CodecTraffic> {
        let codecs = self.inner.job.codecs();
        self.inner
            .job
            .tables
            .iter()
            .zip(&self.inner.codecs)
            .zip(codecs)
            .map(|((t, c), specs)| {
                let b = |i: usize| c.bytes[i].load(Ordering::Relaxed);
                let name =
                    |s: Option<paramserv_codecs::CodecSpec>| s.map_or_else(|| "raw".to_owned(), |s| s.to_string());
                CodecTraffic {
                    table: t.name.clone(),
                    codec: name(specs.push),
                    pull_codec: name(specs.pull),
                    push_raw_bytes: b(0),
                    push_wire_bytes: b(1),
                    pull_raw_bytes: b(2),
                    pull_wire_bytes: b(3),
                    ..CodecTraffic::default()
                }
                .with_ratios()
            })
            .collect()
    }

    /// [`Worker::codec_traffic`] summed over every worker of the job, at a barrier that every
    /// worker must call.
    pub async fn cluster_codec_traffic(&self) -> Result<Vec<CodecTraffic>> {
        let mine = self.codec_traffic();
        let values: Vec<f64> = mine.iter().flat_map(CodecTraffic::to_vec).collect();
        let sums = self.barrier(&values).await?;
        Ok(mine
            .into_iter()
            .zip(sums.chunks_exact(4))
            .map(|(t, s)| {
                CodecTraffic {
                    push_raw_bytes: s[0] as u64,
                    push_wire_bytes: s[1] as u64,
                    pull_raw_bytes: s[2] as u64,
                    pull_wire_bytes: s[3] as u64,
                    ..t
                }
                .with_ratios()
            })
            .collect())
    }

    /// This worker's traffic with the switch agent (zero unless `aggregation = "switch"`). Not in
    /// [`Worker::links`]: those count the PS transport only.
    pub fn switch_traffic(&self) -> SwitchTraffic {
        self.inner.switch.as_ref().map_or_else(SwitchTraffic::default, |link| SwitchTraffic {
            bytes_sent: link.bytes[0].load(Ordering::Relaxed),
            bytes_received: link.bytes[1].load(Ordering::Relaxed),
        })
    }

    /// [`Worker::switch_traffic`] summed over every worker of the job, at a barrier that every
    /// worker must call.
    pub async fn cluster_switch_traffic(&self) -> Result<SwitchTraffic> {
        let mine = self.switch_traffic();
        let sums = self.barrier(&[mine.bytes_sent as f64, mine.bytes_received as f64]).await?;
        let at = |i: usize| sums.get(i).copied().unwrap_or(0.0) as u64;
        Ok(SwitchTraffic { bytes_sent: at(0), bytes_received: at(1) })
    }

    /// A push request's values, through the table's codec when it has one (a flush through the
    /// lossless `raw` codec: the servers of a coded table read codec payloads); counted either way.
    fn coded<'g>(
        &self,
        table: TableId,
        chunk: &Chunk<'_>,
        dim: usize,
        payload: Payload<'g>,
        coding: Coding,
    ) -> Payload<'g> {
        let codec = &self.inner.codecs[table as usize];
        let raw_bytes = chunk.rows * dim * raw::ELEM_BYTES;
        let Some(pipeline) = &codec.push else {
            codec.count(false, raw_bytes, raw_bytes);
            return payload;
        };
        let keys: Cow<'_, [u64]> = match chunk.keys {
            KeysRef::List(k) | KeysRef::FixedList(k) => Cow::Borrowed(k),
            KeysRef::Range(r) => Cow::Owned(r.keys().collect()),
        };
        let mut out = Vec::new();
        match coding {
            Coding::Table => pipeline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).encode_rows(
                &keys,
                dim,
                &payload.to_f32(),
                &mut out,
            ),
            Coding::Flush => {
                Pipeline::new(&paramserv_codecs::CodecSpec::Raw).encode_rows(&keys, dim, &payload.to_f32(), &mut out)
            }
        }
        codec.count(false, raw_bytes, out.len());
        Payload::Coded(out.into())
    }

    /// Writes a pull reply's rows into place, decoding them when the table's pulls are coded.
    fn take_reply(&self, table: TableId, chunk: &Chunk<'_>, dim: usize, reply: Frame, out: &mut [f32]) -> Result<()> {
        let codec = &self.inner.codecs[table as usize];
        if !codec.pull_coded {
            let values = pull_reply(chunk, dim, reply)?;
            codec.count(true, values.len(), values.len());
            scatter(&values, chunk.dest, chunk.rows, dim, out);
            return Ok(());
        }
        let values = match expect_reply(chunk.server, reply)? {
            Message::PullReply { values } => values,
            other => return Err(bad_reply(chunk.server, format!("a {} answering a pull", other.kind()))),
        };
        codec.count(true, chunk.rows * dim * raw::ELEM_BYTES, values.len());
        let undecodable = |e: paramserv_codecs::CodecError| bad_reply(chunk.server, format!("coded pull reply: {e}"));
        match chunk.dest {
            Dest::Rows(first) => {
                paramserv_codecs::decode_into(&values, &mut out[first * dim..(first + chunk.rows) * dim])
                    .map_err(undecodable)?;
            }
            Dest::Positions(positions) => {
                let mut rows = vec![0.0; chunk.rows * dim];
                paramserv_codecs::decode_into(&values, &mut rows).map_err(undecodable)?;
                for (row, &pos) in rows.chunks_exact(dim).zip(positions) {
                    out[pos * dim..(pos + 1) * dim].copy_from_slice(row);
                }
            }
        }
        Ok(())
    }

    /// `part` cut into requests of about the job's request size, key lists in the job's coding.
    fn requests<'p>(&self, part: &'p Part<'_>, dim: usize) -> Vec<Chunk<'p>> {
        part.chunks(self.rows_per_request(dim), self.inner.job.key_coding)
    }

    fn rows_per_request(&self, dim: usize) -> usize {
        (self.inner.job.request_bytes as usize / (dim * raw::ELEM_BYTES + 8)).max(1)
    }

    fn check_len(&self, table: TableId, keys: &Keys<'_>, values: usize) -> Result<usize> {
        let dim = self.dim(table)?;
        let rows = keys.len();
        let want = rows.saturating_mul(dim);
        if values != want {
            let table = self.inner.job.tables[table as usize].name.clone();
            return Err(WorkerError::WrongLength { table, dim, rows, want, got: values });
        }
        Ok(dim)
    }

    /// Cuts a request by owning server.
    fn split<'a>(&self, table: TableId, keys: Keys<'a>) -> Result<Vec<Part<'a>>> {
        let dir = &self.inner.directory;
        Ok(match keys {
            Keys::List(list) => match dir.split_keys(table, list)? {
                KeySplit::Slices(slices) => slices
                    .into_iter()
                    .map(|(server, at, keys)| Part { server, keys: PartKeys::Borrowed(keys), dest: PartDest::Rows(at) })
                    .collect(),
                KeySplit::Scattered(parts) => parts
                    .into_iter()
                    .map(|p| Part {
                        server: p.server,
                        keys: PartKeys::Owned(p.keys),
                        dest: PartDest::Positions(p.positions),
                    })
                    .collect(),
            },
            Keys::Range(range) => {
                let placement = *dir.placement(table)?;
                let per_server = dir.split_range(table, range)?;
                match placement.scheme() {
                    Partitioning::Range => per_server
                        .into_iter()
                        .map(|(server, sub, _)| Part {
                            server,
                            keys: PartKeys::Range(sub),
                            dest: PartDest::Rows((sub.start() - range.start()) as usize),
                        })
                        .collect(),
                    Partitioning::Hash => {
                        // Each window of the range goes to every server holding keys in it; the
                        // server answers with the rows it holds, in key order.
                        let window = (self.rows_per_request(self.dim(table)?) * placement.servers() as usize) as u64;
                        let mut parts = Vec::new();
                        for start in (range.start()..range.end()).step_by(window as usize) {
                            let w = KeyRange::new(start, (start + window).min(range.end())).expect("inside the range");
                            let mut positions = vec![Vec::new(); placement.servers() as usize];
                            for k in w.keys() {
                                positions[placement.owner(k) as usize].push((k - range.start()) as usize);
                            }
                            for (server, pos) in positions.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                                parts.push(Part {
                                    server: server as u32,
                                    keys: PartKeys::Range(w),
                                    dest: PartDest::Positions(pos),
                                });
                            }
                        }
                        parts
                    }
                }
            }
        })
    }
}

fn shard_keys(keys: KeysRef<'_>) -> ShardKeys<'_> {
    match keys {
        KeysRef::Range(r) => ShardKeys::Range(r),
        KeysRef::List(k) | KeysRef::FixedList(k) => ShardKeys::Slice(k),
    }
}

fn pull_local(shard: &Shard, table: TableId, chunk: &Chunk<'_>, dim: usize, out: &mut [f32]) -> Result<()> {
    match chunk.dest {
        Dest::Rows(first) => {
            shard.pull_into(table, shard_keys(chunk.keys), &mut out[first * dim..(first + chunk.rows) * dim])?
        }
        Dest::Positions(positions) => {
            let mut rows = vec![0.0; chunk.rows * dim];
            shard.pull_into(table, shard_keys(chunk.keys), &mut rows)?;
            for (row, &pos) in rows.chunks_exact(dim).zip(positions) {
                out[pos * dim..(pos + 1) * dim].copy_from_slice(row);
            }
        }
    }
    Ok(())
}

/// Where a push's values come from.
#[derive(Clone, Copy)]
enum Source<'g> {
    Slice(&'g [f32]),
    Shared(&'g Values),
}

/// How a push's values are coded.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Coding {
    /// Through the table's push codec.
    Table,
    /// Losslessly: the last push of what the table's codec held back.
    Flush,
}

/// One request's values.
enum Payload<'g> {
    Slice(Cow<'g, [f32]>),
    Shared(Values),
    /// A codec payload.
    Coded(bytes::Bytes),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Slice(s) => s.len(),
            Self::Shared(v) => v.len(),
        }
    }

    /// The values of a chunk: borrowed or shared when contiguous, gathered otherwise.
    fn chunk(&self, dest: Dest<'_>, rows: usize, dim: usize) -> Payload<'_> {
        match (self, dest) {
            (Self::Slice(g), Dest::Rows(first)) => Payload::Slice(Cow::Borrowed(&g[first * dim..(first + rows) * dim])),
            (Self::Shared(v), Dest::Rows(first)) => Payload::Shared(v.slice(first * dim..(first + rows) * dim)),
            (_, Dest::Positions(p)) => {
                let mut out = Vec::with_capacity(p.len() * dim);
                for &pos in p {
                    match self {
                        Self::Slice(g) => out.extend_from_slice(&g[pos * dim..(pos + 1) * dim]),
                        Self::Shared(v) => out.extend(v.slice(pos * dim..(pos + 1) * dim).iter()),
                    }
                }
                Payload::Slice(Cow::Owned(out))
            }
        }
    }
}

impl Payload<'_> {
    fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Self::Slice(s) => Cow::Borrowed(s),
            Self::Shared(v) => v.as_f32().map_or_else(|| Cow::Owned(v.to_vec()), Cow::Borrowed),
            Self::Coded(_) => unreachable!("coded payloads are only sent"),
        }
    }
}

/// The values of a pull reply, checked against the chunk it answers.
fn pull_reply(chunk: &Chunk<'_>, dim: usize, reply: Frame) -> Result<bytes::Bytes> {
    let values = match expect_reply(chunk.server, reply)? {
        Message::PullReply { values } => values,
        other => return Err(bad_reply(chunk.server, format!("a {} answering a pull", other.kind()))),
    };
    if values.len() != chunk.rows * dim * raw::ELEM_BYTES {
        return Err(bad_reply(
            chunk.server,
            format!("{} value bytes for {} rows of dimension {dim}", values.len(), chunk.rows),
        ));
    }
    Ok(values)
}

/// Writes a checked reply's rows into place.
fn scatter(values: &[u8], dest: Dest<'_>, rows: usize, dim: usize, out: &mut [f32]) {
    let lengths = "reply length checked against the chunk";
    match dest {
        Dest::Rows(first) => raw::decode_into(values, &mut out[first * dim..(first + rows) * dim]).expect(lengths),
        Dest::Positions(positions) => {
            for (row, &pos) in values.chunks_exact(dim * raw::ELEM_BYTES).zip(positions) {
                raw::decode_into(row, &mut out[pos * dim..(pos + 1) * dim]).expect(lengths);
            }
        }
    }
}

fn expect_reply(server: u32, reply: Frame) -> Result<Message> {
    match reply.message() {
        Ok(Message::Error { code, message }) => Err(WorkerError::Rejected { server, code, message }),
        Ok(m) => Ok(m),
        Err(e) => Err(bad_reply(server, e.to_string())),
    }
}

/// The frame of one push request.
fn encode_push(
    id: u64,
    table: TableId,
    tag: Option<Step>,
    chunk: &Chunk<'_>,
    payload: &Payload<'_>,
) -> std::result::Result<wire::OutFrame, WireError> {
    match payload {
        Payload::Slice(v) => wire::encode_push(id, table, tag, chunk.keys, v),
        Payload::Shared(v) => wire::encode_push_bulk(id, table, tag, chunk.keys, v.as_bytes().clone()),
        Payload::Coded(bytes) => wire::encode_push_bulk(id, table, tag, chunk.keys, bytes.clone()),
    }
}

/// `Ok` if `reply` acknowledges a push.
fn push_acknowledged(server: u32, reply: Frame) -> Result<()> {
    match expect_reply(server, reply)? {
        Message::PushAck => Ok(()),
        other => Err(bad_reply(server, format!("a {} answering a push", other.kind()))),
    }
}

fn bad_reply(server: u32, detail: String) -> WorkerError {
    WorkerError::BadReply { server, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::job::AppConfig;
    use crate::server::table::TableSpec;

    #[test]
    fn identical_jobs_of_different_runs_get_different_agent_jobs() {
        let job = JobConfig::new(AppConfig::Custom, vec![TableSpec::new("dense", 1000, 1)]).unwrap();
        // In-process servers of two `local` runs have the same names.
        let servers = ["server-0".to_owned()];
        let bases: Vec<u32> = (1..=8).map(|run| switch_job_base(&job, &servers, run)).collect();
        for (i, a) in bases.iter().enumerate() {
            assert_eq!(a & 0xffff, 0, "the low 16 bits are left for the table");
            for b in &bases[i + 1..] {
                assert_ne!(a, b, "runs of one job met on the agent: {bases:x?}");
            }
        }
        // Every worker of one run derives the base from the same assignment: they agree.
        let again = JobConfig::new(AppConfig::Custom, vec![TableSpec::new("dense", 1000, 1)]).unwrap();
        assert_eq!(switch_job_base(&again, &servers, 3), bases[2]);
    }
}
