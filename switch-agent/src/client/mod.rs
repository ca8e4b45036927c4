//! The all-reduce client: f32 slices in, the sum over every worker of the job out, through an agent.
//!
//! [`AllReduce`] drives one [`Endpoint`] over one batched UDP socket on the caller's thread
//! (blocking): it joins the job when created, then each [`AllReduce::all_reduce`] keeps the whole
//! slot pool in flight until every chunk's result is back. Each call must be made by every worker
//! of the job with a tensor of the same length.
//!
//! Refuses: datagrams from any address but the agent's (ignored), non-finite inputs, and waiting
//! forever: every call has a deadline ([`ClientConfig::timeout`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::datapath::{self, BatchSocket, DatapathChoice, DatapathKind, FaultInjector, Faults, RecvBatch, SendBatch};
use crate::proto::agent::JobParams;
use crate::proto::endpoint::{Endpoint, EndpointConfig, EndpointError, EndpointStats};

/// How a worker reaches its agent and job.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The agent.
    pub agent: SocketAddr,
    /// Local address to bind (`None`: the unspecified address of the agent's family, any port).
    pub bind: Option<SocketAddr>,
    /// Job id, worker id, pool and timeouts.
    pub endpoint: EndpointConfig,
    /// Socket implementation.
    pub datapath: DatapathChoice,
    /// Faults injected on this worker's sends (tests and benchmarks).
    pub faults: Faults,
    /// Seed of the fault injector.
    pub seed: u64,
    /// Longest a join or one all-reduce may take.
    pub timeout: Duration,
}

impl ClientConfig {
    /// Worker `worker` of job `job` with `params`, talking to `agent`; 30 s deadline, no faults.
    pub fn new(agent: SocketAddr, job: u32, worker: u16, params: JobParams) -> Self {
        let mut endpoint = EndpointConfig::new(job, worker, params);
        endpoint.session = new_session();
        Self {
            agent,
            bind: None,
            endpoint,
            datapath: DatapathChoice::Auto,
            faults: Faults::default(),
            seed: u64::from(worker),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A session id unlikely to repeat: this process, a counter, and the time.
fn new_session() -> u32 {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut h = u64::from(std::process::id()) << 32 ^ u64::from(n) ^ nanos as u64;
    // splitmix64's finalizer: every input bit moves the output.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) as u32
}

/// Why an all-reduce failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The protocol refused (join refused, bad input, overflow, bad configuration).
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The agent did not answer in time.
    #[error("no answer from the agent at {agent} within {timeout:?} ({what})")]
    Timeout {
        /// The agent.
        agent: SocketAddr,
        /// The deadline.
        timeout: Duration,
        /// What was waited for.
        what: &'static str,
    },
}

/// A worker's all-reduce over an agent.
pub struct AllReduce {
    socket: Box<dyn BatchSocket + Send>,
    endpoint: Endpoint,
    config: ClientConfig,
    rx: RecvBatch,
    tx: SendBatch,
    /// Datagrams from other addresses.
    foreign: u64,
    /// Datagrams longer than the longest packet of the job, dropped unread.
    truncated: u64,
}

impl std::fmt::Debug for AllReduce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllReduce").field("config", &self.config).field("kind", &self.socket.kind()).finish()
    }
}

impl AllReduce {
    /// Binds a socket and joins the job (waits for the agent's answer).
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let endpoint = Endpoint::new(config.endpoint)?;
        let bind = config.bind.unwrap_or_else(|| match config.agent.ip() {
            IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        });
        let max = endpoint.max_datagram();
        // Results arrive one per slot: a batch as large as the pool (bounded) drains them in one call.
        let batch = (config.endpoint.params.slots as usize).clamp(8, 256);
        let inner = datapath::open(bind, config.datapath, batch, max)?;
        let socket: Box<dyn BatchSocket + Send> = if config.faults.is_none() {
            inner
        } else {
            Box::new(FaultInjector::new(inner, config.faults, config.seed))
        };
        let mut client = Self {
            socket,
            endpoint,
            rx: RecvBatch::new(batch, max),
            tx: SendBatch::new(batch, max),
            config,
            foreign: 0,
            truncated: 0,
        };
        client.drive(|e| e.is_joined(), "join")?;
        Ok(client)
    }

    /// Replaces `data` with the element-wise sum of every worker's `data`.
    pub fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), ClientError> {
        self.endpoint.start(data)?;
        self.drive(Endpoint::is_idle, "all-reduce")?;
        let out = self.endpoint.finish().expect("idle: the operation ended")?;
        data.copy_from_slice(out);
        Ok(())
    }

    /// [`all_reduce`](Self::all_reduce) without copying the tensor in or out: the vector's buffer
    /// moves into the endpoint and the sum's buffer moves back. On an error, `data` may hold
    /// another buffer, of unspecified length and contents.
    pub fn all_reduce_vec(&mut self, data: &mut Vec<f32>) -> Result<(), ClientError> {
        self.endpoint.start_with(data)?;
        let driven = self.drive(Endpoint::is_idle, "all-reduce");
        match self.endpoint.finish_into(data) {
            // Finished: the endpoint's own error (overflow, refusal) if it failed.
            Some(r) => Ok(r?),
            // Still running: the driver's error (socket, timeout).
            None => driven,
        }
    }

    /// Leaves the job (the agent forgets it once every worker left), waiting for the agent's ack.
    /// Dropping the client without this sends one leave and does not wait.
    pub fn leave(mut self) -> Result<(), ClientError> {
        self.endpoint.leave();
        self.drive(Endpoint::has_left, "leave")
    }

    /// Counters of the protocol endpoint.
    pub fn stats(&self) -> EndpointStats {
        self.endpoint.stats()
    }

    /// Datagrams received from addresses other than the agent's.
    pub fn foreign_datagrams(&self) -> u64 {
        self.foreign
    }

    /// Datagrams longer than this job's packets, dropped unread (they come from no agent of
    /// this job: its packets all fit).
    pub fn truncated_datagrams(&self) -> u64 {
        self.truncated
    }

    /// The socket implementation in use.
    pub fn datapath(&self) -> DatapathKind {
        self.socket.kind()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends, receives and runs timers until `done` holds, the endpoint fails, or the deadline.
    fn drive(&mut self, done: impl Fn(&Endpoint) -> bool, what: &'static str) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.config.timeout;
        let agent = self.config.agent;
        loop {
            let now = Instant::now();
            self.endpoint.handle_timeout(now);
            while let Some(len) = self.endpoint.poll_transmit(now, self.tx.next_buffer()) {
                self.tx.commit(len, agent);
                if self.tx.is_full() {
                    self.socket.send_batch(&mut self.tx)?;
                }
            }
            if !self.tx.is_empty() {
                self.socket.send_batch(&mut self.tx)?;
            }
            if let Some(e) = self.endpoint.error() {
                return Err(e.clone().into());
            }
            if done(&self.endpoint) {
                return Ok(());
            }
            if now >= deadline {
                // Slots are left mid-round: later calls say so instead of "already running".
                self.endpoint.abandon();
                return Err(ClientError::Timeout { agent, timeout: self.config.timeout, what });
            }
            let wake = self.endpoint.poll_timeout().unwrap_or(deadline).min(deadline);
            let (endpoint, foreign) = (&mut self.endpoint, &mut self.foreign);
            let mut received_at = None;
            self.socket.recv_each(&mut self.rx, Some(wake.saturating_duration_since(now)), &mut |bytes, from| {
                if from != agent {
                    *foreign += 1;
                    return;
                }
                let now = *received_at.get_or_insert_with(Instant::now);
                endpoint.handle_datagram(now, bytes);
            })?;
            self.truncated += self.rx.truncated() as u64;
        }
    }
}

impl Drop for AllReduce {
    fn drop(&mut self) {
        if !self.endpoint.is_joined() {
            return;
        }
        // Best effort: one leave, no wait for the ack (a lost one leaves the job on the agent
        // until its other workers leave).
        self.endpoint.leave();
        let now = Instant::now();
        if let Some(len) = self.endpoint.poll_transmit(now, self.tx.next_buffer()) {
            self.tx.commit(len, self.config.agent);
            let _ = self.socket.send_batch(&mut self.tx);
        }
    }
}
