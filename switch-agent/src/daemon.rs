//! The agent's event loop: one thread, one batched UDP socket, the sans-IO [`Agent`] in between.
//!
//! Each turn receives a batch of datagrams, hands each to the agent, and sends everything the agent
//! queued as one batch. The loop stops when the caller's stop flag is set (checked at least every
//! `poll_interval`). It reads the clock only to report rates; the agent itself never times out.
//!
//! Refuses: nothing from the network can stop it. Malformed or foreign datagrams are dropped and
//! counted by the agent; a datagram the kernel truncated is dropped and counted here.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::datapath::{self, BatchSocket, DatapathChoice, DatapathKind, FaultInjector, Faults, RecvBatch, SendBatch};
use crate::proto::agent::{Agent, AgentConfig, AgentStats, JobStats};

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Address to bind (port 0: any free port).
    pub bind: SocketAddr,
    /// Socket implementation.
    pub datapath: DatapathChoice,
    /// Datagrams per receive or send batch.
    pub batch: usize,
    /// Limits of the agent.
    pub agent: AgentConfig,
    /// Faults injected on the agent's sends (tests and benchmarks).
    pub faults: Faults,
    /// Seed of the fault injector.
    pub seed: u64,
    /// How often the stop flag is checked when no datagram arrives.
    pub poll_interval: Duration,
}

impl DaemonConfig {
    /// Defaults for `bind`: automatic datapath, batches of 64, no faults.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            datapath: DatapathChoice::Auto,
            batch: 64,
            agent: AgentConfig::default(),
            faults: Faults::default(),
            seed: 0,
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// Counters of a running or finished daemon.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams dropped because they were longer than the largest packet.
    pub truncated: u64,
    /// The agent's counters of datagrams that reached no job.
    pub agent: AgentStats,
    /// Per job: counters (jobs that ended keep their last counters; a job id reused later
    /// shows the newest job's).
    pub jobs: BTreeMap<u32, JobStats>,
    /// Datagrams the socket could not send (per-destination errors).
    pub send_errors: u64,
}

/// Datagram counts another thread can read while the loop runs.
#[derive(Debug, Default)]
pub struct LiveCounters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl LiveCounters {
    /// Datagrams (received, sent) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.received.load(Ordering::Relaxed), self.sent.load(Ordering::Relaxed))
    }
}

/// A bound agent, ready to run.
pub struct Daemon {
    live: Arc<LiveCounters>,
    socket: Box<dyn BatchSocket + Send>,
    agent: Agent<SocketAddr>,
    config: DaemonConfig,
    stats: DaemonStats,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("kind", &self.socket.kind()).field("config", &self.config).finish()
    }
}

impl Daemon {
    /// Binds the socket.
    pub fn bind(config: DaemonConfig) -> io::Result<Self> {
        let max = max_datagram(&config.agent);
        let inner = datapath::open(config.bind, config.datapath, config.batch, max)?;
        let socket: Box<dyn BatchSocket + Send> = if config.faults.is_none() {
            inner
        } else {
            Box::new(FaultInjector::new(inner, config.faults, config.seed))
        };
        let agent = Agent::new(config.agent);
        Ok(Self { live: Arc::default(), socket, agent, config, stats: DaemonStats::default() })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Which socket implementation is in use.
    pub fn datapath(&self) -> DatapathKind {
        self.socket.kind()
    }

    /// Counters readable from other threads while [`run`](Self::run) runs.
    pub fn counters(&self) -> Arc<LiveCounters> {
        Arc::clone(&self.live)
    }

    /// Runs until `stop` is set. `report` is called about every `report_every` (if given) with
    /// the counters so far and the time since the last call.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        report_every: Option<Duration>,
        mut report: impl FnMut(&DaemonStats, Duration),
    ) -> io::Result<DaemonStats> {
        let max = max_datagram(&self.config.agent);
        let mut rx = RecvBatch::new(self.config.batch, max);
        let mut tx = SendBatch::new(self.config.batch, max);
        let mut last_report = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let agent = &mut self.agent;
            // Dropped datagrams are counted inside the agent.
            let n = self.socket.recv_each(&mut rx, Some(self.config.poll_interval), &mut |bytes, from| {
                let _ = agent.handle_datagram(from, bytes);
            })?;
            self.stats.received += n as u64;
            self.stats.truncated += rx.truncated() as u64;
            while let Some((to, len)) = self.agent.poll_transmit(tx.next_buffer()) {
                tx.commit(len, to);
                self.stats.sent += 1;
                if tx.is_full() {
                    self.socket.send_batch(&mut tx)?;
                }
            }
            if !tx.is_empty() {
                self.socket.send_batch(&mut tx)?;
            }
            self.live.received.store(self.stats.received, Ordering::Relaxed);
            self.live.sent.store(self.stats.sent, Ordering::Relaxed);
            if let Some(every) = report_every {
                let elapsed = last_report.elapsed();
                if elapsed >= every {
                    self.refresh_stats();
                    report(&self.stats, elapsed);
                    last_report = Instant::now();
                }
            }
        }
        self.refresh_stats();
        Ok(self.stats.clone())
    }

    /// Counters so far.
    pub fn stats(&mut self) -> DaemonStats {
        self.refresh_stats();
        self.stats.clone()
    }

    fn refresh_stats(&mut self) {
        self.stats.agent = self.agent.stats();
        self.stats.send_errors = self.socket.send_errors();
        for (id, s) in self.agent.ended_jobs() {
            self.stats.jobs.insert(id, s);
        }
        for (id, _, s) in self.agent.jobs() {
            self.stats.jobs.insert(id, s);
        }
    }
}

/// An agent running on its own thread; stops and joins on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct SpawnedDaemon {
    addr: SocketAddr,
    kind: DatapathKind,
    live: Arc<LiveCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<DaemonStats>>>,
}

impl SpawnedDaemon {
    /// Binds and starts the loop on a new thread.
    pub fn spawn(config: DaemonConfig) -> io::Result<Self> {
        let mut daemon = Daemon::bind(config)?;
        let addr = daemon.local_addr()?;
        let kind = daemon.datapath();
        let live = daemon.counters();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("switch-agent".into())
            .spawn(move || daemon.run(&flag, None, |_, _| {}))?;
        Ok(Self { addr, kind, live, stop, thread: Some(thread) })
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The socket implementation it uses.
    pub fn datapath(&self) -> DatapathKind {
        self.kind
    }

    /// Datagram counts, readable while it runs.
    pub fn counters(&self) -> Arc<LiveCounters> {
        Arc::clone(&self.live)
    }

    /// Stops the loop and returns its final counters.
    pub fn stop(mut self) -> io::Result<DaemonStats> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<DaemonStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| io::Error::other("the agent thread panicked"))?,
            None => Ok(DaemonStats::default()),
        }
    }
}

impl Drop for SpawnedDaemon {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

fn max_datagram(config: &AgentConfig) -> usize {
    crate::proto::packet::HEADER_LEN + 4 * config.max_values as usize
}
