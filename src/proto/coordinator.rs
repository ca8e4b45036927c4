//! The coordinator's protocol: membership, rank assignment, readiness, barriers and shutdown.
//!
//! [`Coordinator`] is a state machine with no IO and no clock: the driver feeds it what happened
//! (`handle_join`, `handle_message`, `handle_disconnect`, `handle_timeout`, each with `now`) and
//! sends what it asks for (`poll_transmit`). Poll order after every input: drain
//! [`Coordinator::poll_transmit`], then check [`Coordinator::outcome`], then sleep until
//! [`Coordinator::poll_timeout`].
//!
//! The life of a job:
//! 1. **Joining.** Nodes join with what they host (a server shard, some workers). A join that would
//!    exceed the expected counts is refused. A node that disconnects while joining frees its place.
//! 2. **Preparing.** When all `servers` and `workers` are present, ranks are fixed in join order and
//!    every node gets [`Assign`]: its ranks, the job configuration and every server's address.
//!    Servers build their shards and answer `Ready`.
//! 3. **Running.** When every server is ready, every node gets `Start`. Workers meet at barriers,
//!    each contributing a vector that is summed (that is how losses and byte counts are reduced).
//! 4. **Done.** When every worker has left, every node gets `Shutdown`. If anything goes wrong
//!    (the join deadline passes, a member disconnects early, a member breaks the protocol, a
//!    member stops answering heartbeats) every node gets `Abort` with a reason that names who is
//!    missing or what happened.
//!
//! Liveness: from its join on, every member gets a `Heartbeat` every `heartbeat_timeout / 5` and
//! must answer; a member heard from for no `heartbeat_timeout` fails the job. This catches what a
//! closed connection does not: a stopped or wedged process, a host cut off without a reset.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::consistency::{ClockEvent, ClockTable, Consistency};
use super::wire::{Assign, Join, Message};

/// A connection, as numbered by the driver.
pub type ConnId = u64;

/// What the coordinator expects of the job.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Number of server shards.
    pub servers: u32,
    /// Number of workers.
    pub workers: u32,
    /// The job configuration handed to every node.
    pub job: String,
    /// How long joining and preparing may take in total.
    pub join_timeout: Duration,
    /// How long a member may stay silent before the job fails.
    pub heartbeat_timeout: Duration,
    /// How workers' updates are combined (decides what a finished step means).
    pub consistency: Consistency,
    /// Tells this run of the job from every other, including runs of an identical job at the same
    /// time: every node gets it in [`Assign::run`] (workers derive their switch agent job ids from
    /// it). The driver draws it at random, e.g. with [`new_run`](crate::cluster::coordinator::new_run);
    /// the core reads no random source.
    pub run: u64,
}

/// Default for [`CoordinatorConfig::heartbeat_timeout`]: generous enough for a node busy building
/// a large shard or a GC-paused peer, short enough that a dead job is noticed in half a minute.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// A coordinator configuration that cannot run a job.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("invalid coordinator configuration: {0}")]
pub struct InvalidConfig(pub String);

/// Longest timeout taken: far beyond any job's assembly, and safe to add to any `Instant`.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A message to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// Destination connection.
    pub to: ConnId,
    /// Request id to send it with (the barrier's request id for a `Release`, else 0).
    pub request_id: u64,
    /// The message.
    pub message: Message,
    /// Whether the driver closes the connection after sending it.
    pub close: bool,
}

/// How the job ended.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Outcome {
    /// Every worker finished.
    Finished,
    /// The job failed; the reason was sent to every node.
    Failed(String),
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Phase {
    Joining,
    Preparing,
    Running,
    Done,
}

#[derive(Debug)]
struct Member {
    conn: ConnId,
    join: Join,
    server_rank: Option<u32>,
    first_worker: u32,
    ready: bool,
    last_seen: Instant,
}

impl Member {
    fn describe(&self) -> String {
        let first = self.first_worker;
        let what = match (self.join.server, self.server_rank, self.join.workers) {
            (true, None, _) => "a server not yet ranked".to_owned(),
            (true, Some(r), 0) => format!("server {r}"),
            (true, Some(r), w) => format!("server {r} with {w} worker(s)"),
            (false, _, 1) => format!("worker {first}"),
            (false, _, w) => format!("workers {first}..{}", first + w),
        };
        format!("{what} ({})", self.join.label)
    }

    fn hosts_worker(&self, w: u32) -> bool {
        self.first_worker <= w && w < self.first_worker + self.join.workers
    }
}

#[derive(Debug)]
struct OpenBarrier {
    id: u64,
    arrived: Vec<bool>,
    count: u32,
    sums: Vec<f64>,
    waiters: Vec<(ConnId, u64)>,
}

/// The coordinator state machine. See the module docs for the life of a job.
#[derive(Debug)]
pub struct Coordinator {
    cfg: CoordinatorConfig,
    deadline: Instant,
    next_heartbeat: Instant,
    phase: Phase,
    members: Vec<Member>,
    ready: u32,
    left: Vec<bool>,
    barrier: Option<OpenBarrier>,
    clocks: ClockTable,
    out: VecDeque<Transmit>,
    outcome: Option<Outcome>,
}

impl Coordinator {
    /// A coordinator started at `now`; the join deadline is `now + join_timeout`.
    pub fn new(mut cfg: CoordinatorConfig, now: Instant) -> Result<Self, InvalidConfig> {
        if cfg.servers == 0 || cfg.workers == 0 {
            return Err(InvalidConfig(format!(
                "a job needs at least one server and one worker (got {} and {})",
                cfg.servers, cfg.workers
            )));
        }
        if cfg.heartbeat_timeout < Duration::from_millis(50) {
            return Err(InvalidConfig(format!("heartbeat timeout {:?} is below 50 ms", cfg.heartbeat_timeout)));
        }
        cfg.consistency.check(cfg.workers).map_err(InvalidConfig)?;
        if cfg.consistency == Consistency::Hogwild && cfg.servers != 1 {
            return Err(InvalidConfig(format!(
                "--consistency hogwild runs every worker as a thread of one server's process: it needs exactly \
                 1 server (got {})",
                cfg.servers
            )));
        }
        cfg.join_timeout = cfg.join_timeout.min(MAX_TIMEOUT);
        cfg.heartbeat_timeout = cfg.heartbeat_timeout.min(MAX_TIMEOUT);
        let deadline = now + cfg.join_timeout;
        let next_heartbeat = now + cfg.heartbeat_timeout / 5;
        let left = vec![false; cfg.workers as usize];
        let clocks = ClockTable::new(cfg.consistency, cfg.workers);
        Ok(Self {
            cfg,
            deadline,
            next_heartbeat,
            phase: Phase::Joining,
            members: Vec::new(),
            ready: 0,
            left,
            barrier: None,
            clocks,
            out: VecDeque::new(),
            outcome: None,
        })
    }

    /// A node on `conn` asks to join.
    pub fn handle_join(&mut self, now: Instant, conn: ConnId, join: Join) {
        if let Err(reason) = self.admit(&join) {
            self.send(conn, 0, Message::Refused { reason }, true);
            return;
        }
        let member = Member { conn, join, server_rank: None, first_worker: 0, ready: false, last_seen: now };
        self.members.push(member);
        let (servers, workers) = self.joined();
        if servers == self.cfg.servers && workers == self.cfg.workers {
            self.assign();
        }
    }

    /// A member sent `msg` with `request_id`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, request_id: u64, msg: Message) {
        let Some(idx) = self.members.iter().position(|m| m.conn == conn) else {
            self.send(conn, request_id, Message::Refused { reason: "join before sending anything else".into() }, true);
            return;
        };
        self.members[idx].last_seen = now;
        let result = match msg {
            Message::Heartbeat => Ok(()),
            Message::Ready { server } => self.on_ready(idx, server),
            Message::Barrier { id, worker, values } => self.on_barrier(idx, request_id, id, worker, values),
            Message::Leave { worker } => self.on_leave(idx, worker),
            Message::Clock { worker, step } => self.on_clock(idx, request_id, worker, step),
            Message::Abort { reason } => {
                let who = self.members[idx].describe();
                // A worker node that gives up is lost like one that vanished: backup workers
                // go on without it (within B); everything else fails the job.
                match self.lose_workers(idx) {
                    Ok(()) => {
                        self.members.remove(idx);
                    }
                    Err(why) => {
                        let why = if matches!(self.cfg.consistency, Consistency::Backup { .. }) {
                            why
                        } else {
                            String::new()
                        };
                        self.fail(format!("{who} failed: {reason}{why}"));
                    }
                }
                return;
            }
            other => Err(format!("sent an unexpected {} message", other.kind())),
        };
        if let Err(why) = result {
            let who = self.members[idx].describe();
            self.fail(format!("{who} broke the protocol: {why}"));
        }
    }

    /// The connection `conn` is gone.
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnId) {
        let Some(idx) = self.members.iter().position(|m| m.conn == conn) else { return };
        match self.phase {
            Phase::Joining => {
                self.members.remove(idx);
            }
            Phase::Preparing | Phase::Running => {
                let m = &self.members[idx];
                let finished = !m.join.server && self.hosted(m).all(|w| self.left[w as usize]);
                if !finished {
                    let who = m.describe();
                    if let Err(why) = self.lose_workers(idx) {
                        self.fail(format!("{who} disconnected before the job finished{why}"));
                    }
                }
            }
            Phase::Done => {}
        }
    }

    /// Time has reached `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        let silent = self.members.iter().position(|m| now >= m.last_seen + self.cfg.heartbeat_timeout);
        if let Some(idx) = silent {
            let m = &self.members[idx];
            let reason = format!(
                "{} stopped responding: nothing heard for {:?} (the process is stopped or wedged, or its host is cut off)",
                m.describe(),
                self.cfg.heartbeat_timeout
            );
            let conn = m.conn;
            match self.lose_workers(idx) {
                // Backup workers: the job goes on without it; tell it to stop.
                Ok(()) => {
                    self.members.remove(idx);
                    self.send(conn, 0, Message::Abort { reason }, true);
                }
                Err(_) => self.fail(reason),
            }
            return;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.cfg.heartbeat_timeout / 5;
            let conns: Vec<ConnId> = self.members.iter().map(|m| m.conn).collect();
            for conn in conns {
                self.send(conn, 0, Message::Heartbeat, false);
            }
        }
        if now < self.deadline {
            return;
        }
        match self.phase {
            Phase::Joining => {
                let reason = self.missing_report();
                self.fail(reason);
            }
            Phase::Preparing => {
                let not_ready: Vec<String> =
                    self.members.iter().filter(|m| m.join.server && !m.ready).map(Member::describe).collect();
                let reason = format!(
                    "servers not ready within the join timeout of {:?}: {}",
                    self.cfg.join_timeout,
                    not_ready.join(", ")
                );
                self.fail(reason);
            }
            Phase::Running | Phase::Done => {}
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let join = matches!(self.phase, Phase::Joining | Phase::Preparing).then_some(self.deadline);
        let silence = self.members.iter().map(|m| m.last_seen + self.cfg.heartbeat_timeout).min();
        let ping = (!self.members.is_empty()).then_some(self.next_heartbeat);
        [join, silence, ping].into_iter().flatten().min()
    }

    /// How the job ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Servers and workers joined so far.
    pub fn joined(&self) -> (u32, u32) {
        let servers = self.members.iter().filter(|m| m.join.server).count() as u32;
        let workers = self.members.iter().map(|m| m.join.workers).sum();
        (servers, workers)
    }

    fn admit(&self, join: &Join) -> Result<(), String> {
        if self.cfg.consistency == Consistency::Hogwild && join.workers > 0 && !join.server {
            return Err("under --consistency hogwild every worker runs in the server's process: start it with \
                        `paramserv node --workers N` (or `paramserv local --servers 1 --colocate`)"
                .into());
        }
        if self.phase != Phase::Joining {
            return Err(format!(
                "the cluster is complete ({} servers, {} workers) and takes no more nodes",
                self.cfg.servers, self.cfg.workers
            ));
        }
        if !join.server && join.workers == 0 {
            return Err("a node must host a server shard or at least one worker".into());
        }
        if join.server && join.listen.is_empty() {
            return Err("a server must say where it listens".into());
        }
        let (servers, workers) = self.joined();
        if join.server && servers >= self.cfg.servers {
            return Err(format!("all {} servers of this job have joined already", self.cfg.servers));
        }
        if workers.saturating_add(join.workers) > self.cfg.workers {
            return Err(format!(
                "{} more worker(s) would exceed the job's {} workers ({} joined)",
                join.workers, self.cfg.workers, workers
            ));
        }
        Ok(())
    }

    fn assign(&mut self) {
        self.phase = Phase::Preparing;
        let (mut next_server, mut next_worker) = (0, 0);
        for m in &mut self.members {
            if m.join.server {
                m.server_rank = Some(next_server);
                next_server += 1;
            }
            m.first_worker = next_worker;
            next_worker += m.join.workers;
        }
        let mut servers = vec![String::new(); self.cfg.servers as usize];
        for m in &self.members {
            if let Some(r) = m.server_rank {
                servers[r as usize].clone_from(&m.join.listen);
            }
        }
        let assigns: Vec<(ConnId, Message)> = self
            .members
            .iter()
            .map(|m| {
                let msg = Message::Assign(Assign {
                    server_rank: m.server_rank,
                    first_worker: m.first_worker,
                    workers: m.join.workers,
                    total_workers: self.cfg.workers,
                    job: self.cfg.job.clone(),
                    servers: servers.clone(),
                    heartbeat_ms: u32::try_from((self.cfg.heartbeat_timeout / 5).as_millis()).unwrap_or(u32::MAX),
                    run: self.cfg.run,
                });
                (m.conn, msg)
            })
            .collect();
        for (conn, msg) in assigns {
            self.send(conn, 0, msg, false);
        }
        if self.cfg.servers == 0 {
            self.start();
        }
    }

    fn on_ready(&mut self, idx: usize, server: u32) -> Result<(), String> {
        if self.phase != Phase::Preparing {
            return Err("reported ready outside the preparing phase".into());
        }
        let m = &mut self.members[idx];
        if m.server_rank != Some(server) {
            return Err(format!("reported ready for server {server}, which it does not host"));
        }
        if std::mem::replace(&mut m.ready, true) {
            return Err("reported ready twice".into());
        }
        self.ready += 1;
        if self.ready == self.cfg.servers {
            self.start();
        }
        Ok(())
    }

    fn start(&mut self) {
        self.phase = Phase::Running;
        let conns: Vec<ConnId> = self.members.iter().map(|m| m.conn).collect();
        for conn in conns {
            self.send(conn, 0, Message::Start, false);
        }
    }

    fn on_barrier(
        &mut self,
        idx: usize,
        request_id: u64,
        id: u64,
        worker: u32,
        values: Vec<f64>,
    ) -> Result<(), String> {
        if self.phase != Phase::Running {
            return Err(format!("arrived at barrier {id} before the job started"));
        }
        let m = &self.members[idx];
        if !m.hosts_worker(worker) {
            return Err(format!("arrived at a barrier for worker {worker}, which it does not host"));
        }
        if self.left[worker as usize] {
            return Err(format!("worker {worker} arrived at barrier {id} after it left"));
        }
        if let Some(gone) = self.left.iter().position(|l| *l) {
            return Err(format!(
                "worker {worker} arrived at barrier {id}, which worker {gone} can never reach: it has finished"
            ));
        }
        if self.clocks.is_gone(worker) {
            return Err(format!("worker {worker} arrived at barrier {id} after it was given up for lost"));
        }
        let n = self.cfg.workers as usize;
        let b = self.barrier.get_or_insert_with(|| OpenBarrier {
            id,
            arrived: vec![false; n],
            count: 0,
            sums: vec![0.0; values.len()],
            waiters: Vec::new(),
        });
        if b.id != id {
            return Err(format!("worker {worker} arrived at barrier {id} while barrier {} is open", b.id));
        }
        if std::mem::replace(&mut b.arrived[worker as usize], true) {
            return Err(format!("worker {worker} arrived at barrier {id} twice"));
        }
        if values.len() != b.sums.len() {
            return Err(format!(
                "worker {worker} brought {} values to barrier {id}, others brought {}",
                values.len(),
                b.sums.len()
            ));
        }
        for (s, v) in b.sums.iter_mut().zip(values) {
            *s += v;
        }
        b.count += 1;
        b.waiters.push((self.members[idx].conn, request_id));
        self.release_barrier_if_complete();
        Ok(())
    }

    /// Releases the open barrier once every live worker is there.
    fn release_barrier_if_complete(&mut self) {
        let live = self.live_workers();
        if self.barrier.as_ref().is_some_and(|b| b.count >= live) {
            let b = self.barrier.take().expect("checked just above");
            for (conn, req) in b.waiters {
                self.send(conn, req, Message::Release { id: b.id, values: b.sums.clone() }, false);
            }
        }
    }

    fn on_clock(&mut self, idx: usize, request_id: u64, worker: u32, step: u64) -> Result<(), String> {
        if self.phase != Phase::Running {
            return Err(format!("reported step {step} before the job started"));
        }
        if !self.members[idx].hosts_worker(worker) {
            return Err(format!("reported a step for worker {worker}, which it does not host"));
        }
        if !self.cfg.consistency.is_gated() {
            return Err(format!("reported step {step}, but under {} nobody counts steps", self.cfg.consistency));
        }
        let ack = self.clocks.handle_clock(worker, step)?;
        let conn = self.members[idx].conn;
        self.send(conn, request_id, Message::ClockAck { next_step: ack.next_step, admitted: ack.admitted }, false);
        self.broadcast_clock_events();
        Ok(())
    }

    /// Sends what the clock table decided to every server.
    fn broadcast_clock_events(&mut self) {
        while let Some(event) = self.clocks.poll_event() {
            let msg = match event {
                ClockEvent::Progress { complete } => Message::Progress { complete },
                ClockEvent::Commit { step, workers } => Message::Commit { step, workers },
            };
            let servers: Vec<ConnId> =
                self.members.iter().filter(|m| m.server_rank.is_some()).map(|m| m.conn).collect();
            for conn in servers {
                self.send(conn, 0, msg.clone(), false);
            }
        }
    }

    /// Gives up member `idx`'s workers. Fine for a worker-only node while the strategy tolerates
    /// it (backup workers); otherwise `Err` holds the reason to add to the failure.
    fn lose_workers(&mut self, idx: usize) -> Result<(), String> {
        let m = &self.members[idx];
        if m.join.server || self.phase != Phase::Running {
            return Err(String::new());
        }
        let lost: Vec<u32> = self.hosted(m).filter(|w| !self.left[*w as usize]).collect();
        for w in lost {
            self.clocks.handle_gone(w).map_err(|e| format!(" ({e})"))?;
        }
        // Steps and barriers no longer wait for it; the job may even be done.
        self.broadcast_clock_events();
        self.release_barrier_if_complete();
        self.finish_if_all_left();
        Ok(())
    }

    fn live_workers(&self) -> u32 {
        (0..self.cfg.workers).filter(|w| !self.clocks.is_gone(*w)).count() as u32
    }

    fn hosted(&self, m: &Member) -> std::ops::Range<u32> {
        m.first_worker..m.first_worker + m.join.workers
    }

    fn on_leave(&mut self, idx: usize, worker: u32) -> Result<(), String> {
        if self.phase != Phase::Running {
            return Err(format!("worker {worker} left before the job started"));
        }
        if !self.members[idx].hosts_worker(worker) {
            return Err(format!("left for worker {worker}, which it does not host"));
        }
        if std::mem::replace(&mut self.left[worker as usize], true) {
            return Err(format!("worker {worker} left twice"));
        }
        if let Some(b) = &self.barrier {
            return Err(format!("worker {worker} left while {} worker(s) wait at barrier {}", b.count, b.id));
        }
        self.finish_if_all_left();
        Ok(())
    }

    /// Shuts the job down once every worker that is not lost has left.
    fn finish_if_all_left(&mut self) {
        if self.phase == Phase::Running
            && (0..self.cfg.workers).all(|w| self.left[w as usize] || self.clocks.is_gone(w))
        {
            self.phase = Phase::Done;
            self.outcome = Some(Outcome::Finished);
            let conns: Vec<ConnId> = self.members.iter().map(|m| m.conn).collect();
            for conn in conns {
                self.send(conn, 0, Message::Shutdown, true);
            }
        }
    }

    fn missing_report(&self) -> String {
        let (servers, workers) = self.joined();
        let mut s = format!(
            "join timed out after {:?}: {servers} of {} server(s) and {workers} of {} worker(s) joined; missing",
            self.cfg.join_timeout, self.cfg.servers, self.cfg.workers
        );
        let missing_servers = self.cfg.servers - servers;
        let missing_workers = self.cfg.workers - workers;
        if missing_servers > 0 {
            write!(s, " {missing_servers} server(s)").expect("writing to a String");
        }
        if missing_workers > 0 {
            let sep = if missing_servers > 0 { " and" } else { "" };
            write!(s, "{sep} {missing_workers} worker(s)").expect("writing to a String");
        }
        if !self.members.is_empty() {
            let joined: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    let what = match (m.join.server, m.join.workers) {
                        (true, 0) => "server".to_owned(),
                        (true, w) => format!("server + {w} worker(s)"),
                        (false, w) => format!("{w} worker(s)"),
                    };
                    format!("{what} from {}", m.join.label)
                })
                .collect();
            write!(s, "; joined: {}", joined.join(", ")).expect("writing to a String");
        }
        s
    }

    fn fail(&mut self, reason: String) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        self.barrier = None;
        let conns: Vec<ConnId> = self.members.iter().map(|m| m.conn).collect();
        for conn in conns {
            self.send(conn, 0, Message::Abort { reason: reason.clone() }, true);
        }
        self.outcome = Some(Outcome::Failed(reason));
    }

    fn send(&mut self, to: ConnId, request_id: u64, message: Message, close: bool) {
        self.out.push_back(Transmit { to, request_id, message, close });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: u32, workers: u32) -> CoordinatorConfig {
        CoordinatorConfig {
            servers,
            workers,
            job: "app = 'logreg'".into(),
            join_timeout: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(60),
            consistency: Consistency::Asp,
            run: 0x5eed,
        }
    }

    fn coord(servers: u32, workers: u32) -> (Coordinator, Instant) {
        let now = Instant::now();
        (Coordinator::new(config(servers, workers), now).unwrap(), now)
    }

    fn server(label: &str) -> Join {
        Join { server: true, workers: 0, listen: format!("{label}:1"), label: label.into() }
    }

    fn worker(label: &str) -> Join {
        Join { server: false, workers: 1, listen: String::new(), label: label.into() }
    }

    fn drain(c: &mut Coordinator) -> Vec<Transmit> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    /// Joins 1 server (conn 1) and 2 workers (conns 2, 3) and gets them running.
    fn running() -> (Coordinator, Instant) {
        let (mut c, now) = coord(1, 2);
        c.handle_join(now, 1, server("s"));
        c.handle_join(now, 2, worker("w0"));
        c.handle_join(now, 3, worker("w1"));
        let assigns = drain(&mut c);
        assert_eq!(assigns.len(), 3);
        c.handle_message(now, 1, 0, Message::Ready { server: 0 });
        let starts = drain(&mut c);
        assert!(starts.iter().all(|t| t.message == Message::Start));
        (c, now)
    }

    #[test]
    fn full_life_of_a_job() {
        let (mut c, now) = running();
        c.handle_message(now, 2, 41, Message::Barrier { id: 0, worker: 0, values: vec![1.0, 10.0] });
        assert!(drain(&mut c).is_empty(), "barrier waits for every worker");
        c.handle_message(now, 3, 77, Message::Barrier { id: 0, worker: 1, values: vec![2.0, 20.0] });
        let released = drain(&mut c);
        assert_eq!(
            released.iter().map(|t| (t.to, t.request_id)).collect::<Vec<_>>(),
            [(2, 41), (3, 77)],
            "each waiter is answered with its own request id"
        );
        assert!(released.iter().all(|t| t.message == Message::Release { id: 0, values: vec![3.0, 30.0] }));
        c.handle_message(now, 2, 0, Message::Leave { worker: 0 });
        c.handle_disconnect(now, 2);
        assert_eq!(c.outcome(), None, "a worker that left may disconnect");
        c.handle_message(now, 3, 0, Message::Leave { worker: 1 });
        let bye = drain(&mut c);
        assert_eq!(bye.len(), 3);
        assert!(bye.iter().all(|t| t.message == Message::Shutdown && t.close));
        assert_eq!(c.outcome(), Some(&Outcome::Finished));
    }

    #[test]
    fn ranks_follow_join_order_and_assign_carries_the_job() {
        let (mut c, now) = coord(2, 2);
        c.handle_join(now, 10, worker("w-a"));
        c.handle_join(now, 11, server("s-a"));
        c.handle_join(now, 12, Join { server: true, workers: 1, listen: "s-b:1".into(), label: "node".into() });
        let out = drain(&mut c);
        let assign = |conn| {
            out.iter()
                .find_map(|t| match (&t.message, t.to == conn) {
                    (Message::Assign(a), true) => Some(a.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!((assign(10).server_rank, assign(10).first_worker, assign(10).workers), (None, 0, 1));
        assert_eq!((assign(11).server_rank, assign(11).workers), (Some(0), 0));
        assert_eq!((assign(12).server_rank, assign(12).first_worker), (Some(1), 1));
        assert_eq!(assign(12).servers, ["s-a:1", "s-b:1"]);
        assert_eq!(assign(12).job, "app = 'logreg'");
        // Every node of the run learns the run id.
        assert!([10, 11, 12].iter().all(|&c| assign(c).run == 0x5eed));
    }

    #[test]
    fn join_timeout_names_who_is_missing() {
        let (mut c, now) = coord(2, 3);
        c.handle_join(now, 1, server("host-a"));
        c.handle_join(now, 2, worker("host-b"));
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
        c.handle_timeout(now + Duration::from_secs(4));
        assert_eq!(c.outcome(), None);
        c.handle_timeout(now + Duration::from_secs(5));
        let Some(Outcome::Failed(reason)) = c.outcome() else { panic!("expected failure") };
        assert!(reason.contains("1 of 2 server(s) and 1 of 3 worker(s) joined"), "{reason}");
        assert!(reason.contains("missing 1 server(s) and 2 worker(s)"), "{reason}");
        assert!(reason.contains("server from host-a") && reason.contains("1 worker(s) from host-b"), "{reason}");
        let aborts = drain(&mut c);
        assert_eq!(aborts.len(), 2);
        assert!(aborts.iter().all(|t| matches!(t.message, Message::Abort { .. }) && t.close));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn extra_and_empty_nodes_are_refused_without_hurting_the_job() {
        let (mut c, now) = coord(1, 1);
        c.handle_join(now, 1, server("s"));
        c.handle_join(now, 2, server("s2"));
        c.handle_join(now, 3, Join { server: false, workers: 0, listen: String::new(), label: "x".into() });
        c.handle_join(now, 4, Join { server: false, workers: 2, listen: String::new(), label: "y".into() });
        let refused = drain(&mut c);
        assert_eq!(refused.iter().map(|t| t.to).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(refused.iter().all(|t| matches!(t.message, Message::Refused { .. }) && t.close));
        c.handle_join(now, 5, worker("w"));
        assert_eq!(drain(&mut c).len(), 2, "the job still assembles");
        c.handle_join(now, 6, worker("late"));
        let late = drain(&mut c);
        assert!(matches!(&late[0].message, Message::Refused { reason } if reason.contains("complete")));
    }

    #[test]
    fn a_node_leaving_while_joining_frees_its_place() {
        let (mut c, now) = coord(1, 1);
        c.handle_join(now, 1, worker("first"));
        c.handle_disconnect(now, 1);
        assert_eq!(c.joined(), (0, 0));
        c.handle_join(now, 2, worker("second"));
        c.handle_join(now, 3, server("s"));
        assert_eq!(drain(&mut c).len(), 2);
    }

    #[test]
    fn early_disconnect_aborts_everyone() {
        let (mut c, now) = running();
        c.handle_disconnect(now, 1);
        let Some(Outcome::Failed(reason)) = c.outcome() else { panic!("expected failure") };
        assert!(reason.contains("server 0 (s) disconnected"), "{reason}");
        assert_eq!(drain(&mut c).len(), 3);
    }

    #[test]
    fn protocol_violations_fail_the_job_with_a_reason() {
        let cases: Vec<(ConnId, Message, &str)> = vec![
            (2, Message::Barrier { id: 0, worker: 1, values: vec![] }, "does not host"),
            (2, Message::Ready { server: 0 }, "outside the preparing phase"),
            (2, Message::Start, "unexpected Start"),
        ];
        for (conn, msg, expect) in cases {
            let (mut c, now) = running();
            c.handle_message(now, conn, 0, msg);
            let Some(Outcome::Failed(reason)) = c.outcome() else { panic!("expected failure") };
            assert!(reason.contains(expect), "{reason}");
        }
        let (mut c, now) = running();
        c.handle_message(now, 2, 1, Message::Barrier { id: 0, worker: 0, values: vec![1.0] });
        c.handle_message(now, 3, 1, Message::Barrier { id: 1, worker: 1, values: vec![1.0] });
        assert!(matches!(c.outcome(), Some(Outcome::Failed(r)) if r.contains("while barrier 0 is open")));
        let (mut c, now) = running();
        c.handle_message(now, 2, 1, Message::Barrier { id: 0, worker: 0, values: vec![1.0] });
        c.handle_message(now, 3, 0, Message::Leave { worker: 1 });
        assert!(matches!(c.outcome(), Some(Outcome::Failed(r)) if r.contains("wait at barrier 0")));
    }

    #[test]
    fn a_failing_node_reason_reaches_everyone() {
        let (mut c, now) = running();
        c.handle_message(now, 3, 0, Message::Abort { reason: "out of memory".into() });
        let aborts = drain(&mut c);
        assert_eq!(aborts.len(), 3);
        for t in aborts {
            let Message::Abort { reason } = t.message else { panic!("expected an abort") };
            assert_eq!(reason, "worker 1 (w1) failed: out of memory");
        }
    }

    #[test]
    fn a_barrier_no_one_can_complete_fails_instead_of_hanging() {
        let (mut c, now) = running();
        c.handle_message(now, 2, 0, Message::Leave { worker: 0 });
        c.handle_message(now, 3, 5, Message::Barrier { id: 0, worker: 1, values: vec![] });
        let Some(Outcome::Failed(reason)) = c.outcome() else { panic!("expected failure") };
        assert!(reason.contains("which worker 0 can never reach"), "{reason}");
    }

    #[test]
    fn silent_members_fail_the_job_and_heartbeats_keep_them_alive() {
        let mut cfg = config(1, 1);
        cfg.heartbeat_timeout = Duration::from_secs(10);
        let now = Instant::now();
        let mut c = Coordinator::new(cfg, now).unwrap();
        c.handle_join(now, 1, server("s"));
        c.handle_join(now, 2, worker("w"));
        drain(&mut c);
        // Every 2 s (timeout / 5) every member is asked.
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(2)));
        let t = now + Duration::from_secs(2);
        c.handle_timeout(t);
        let pings = drain(&mut c);
        assert_eq!(pings.iter().filter(|p| p.message == Message::Heartbeat).count(), 2);
        // The server answers and reports ready; the worker stays silent.
        c.handle_message(t, 1, 0, Message::Heartbeat);
        c.handle_message(t, 1, 0, Message::Ready { server: 0 });
        let mut at = t;
        while c.outcome().is_none() {
            at = c.poll_timeout().expect("a running job has a timeout");
            c.handle_timeout(at);
            c.handle_message(at, 1, 0, Message::Heartbeat);
        }
        let Some(Outcome::Failed(reason)) = c.outcome() else { panic!("expected failure") };
        assert!(reason.contains("worker 0 (w) stopped responding"), "{reason}");
        assert_eq!(at, now + Duration::from_secs(10), "failed exactly when the worker's silence ran out");
    }

    #[test]
    fn configurations_that_cannot_run_are_refused() {
        let now = Instant::now();
        assert!(Coordinator::new(config(0, 1), now).is_err());
        assert!(Coordinator::new(config(1, 0), now).is_err());
        let mut cfg = config(1, 1);
        cfg.heartbeat_timeout = Duration::from_millis(1);
        assert!(Coordinator::new(cfg, now).is_err());
        let mut cfg = config(1, 1);
        cfg.join_timeout = Duration::MAX;
        let c = Coordinator::new(cfg, now).unwrap();
        assert!(c.poll_timeout().is_some(), "a huge timeout is capped, not an overflow");
    }

    #[test]
    fn servers_that_never_get_ready_time_out() {
        let (mut c, now) = coord(1, 1);
        c.handle_join(now, 1, server("slow"));
        c.handle_join(now, 2, worker("w"));
        drain(&mut c);
        c.handle_timeout(now + Duration::from_secs(6));
        assert!(
            matches!(c.outcome(), Some(Outcome::Failed(r)) if r.contains("not ready") && r.contains("server 0 (slow)"))
        );
    }
}
