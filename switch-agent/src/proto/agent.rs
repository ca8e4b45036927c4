//! The agent: what the programmable switch does, as a state machine.
//!
//! Input is datagrams ([`Agent::handle_datagram`]); output is datagrams to send
//! ([`Agent::poll_transmit`], call it until `None` after every batch of input). No clock: the agent
//! never times anything out, workers do (Sapio et al., NSDI'21, §4: the switch is passive).
//!
//! **Slots and rounds.** A job has a pool of `slots`, each with two sets (the shadow copy). Round
//! `r` of slot `i` uses set `r & 1`. A round collects one contribution from every worker (a
//! per-set bitmap rejects duplicates), adds their int32 values, keeps the maximum of their next
//! exponents, and when complete sends the result to every worker. The result stays in its set
//! until round `r + 2` reuses it, which cannot start before every worker has contributed to round
//! `r + 1`, i.e. has received result `r`; meanwhile a worker whose result was lost retransmits its
//! contribution and gets the kept result back (a *served retransmit*).
//!
//! **Stale packets.** Unlike SwitchML, packets carry the round number, so a delayed duplicate of an
//! old round is recognised and dropped instead of being added into a later round that happens to
//! use the same set. A new round of a slot is accepted only when it is the successor of the slot's
//! newest round and that round is complete.
//!
//! Refuses: packets that fail [`Packet::new_checked`], for unknown jobs, from worker ids outside
//! the job, for slots outside the pool, with more values than the job's packet size, or whose
//! offset, count or exponent disagree with the round's other contributions. Each is dropped and
//! counted ([`AgentStats`], [`JobStats`]); nothing else changes.

use std::collections::{HashMap, VecDeque};

use bitvec::vec::BitVec;

use crate::proto::fixed::{self, MAX_WORKERS};
use crate::proto::packet::{
    EXPONENT_NONE, FLAG_OVERFLOW, HEADER_LEN, Kind, Packet, PacketRepr, RefuseReason, SlotId, WireError,
};

/// Limits that bound the agent's memory.
///
/// A join is admitted when its slots, values and workers are within the limits and its pool
/// ([`JobParams::pool_bytes`]) within `max_pool_bytes`. Limits whose largest job
/// ([`AgentConfig::largest_pool_bytes`]) exceeds `max_pool_bytes` promise jobs they refuse; the
/// `switch-agent` binary refuses to start with them. The defaults hold the largest job.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AgentConfig {
    /// Jobs held at once.
    pub max_jobs: usize,
    /// Slots in one job's pool (at most 2^15).
    pub max_slots: u16,
    /// Values in one packet.
    pub max_values: u16,
    /// Bytes of pool one job may take ([`JobParams::pool_bytes`]).
    pub max_pool_bytes: usize,
    /// Transmissions queued before further served retransmits are dropped.
    pub max_pending: usize,
}

/// Default of [`AgentConfig::max_pool_bytes`]: 64 MiB.
pub const DEFAULT_MAX_POOL_BYTES: usize = 64 << 20;

impl Default for AgentConfig {
    fn default() -> Self {
        // 1024 slots of 2048 values (jumbo frames) take about 32 MiB: within the pool cap.
        Self {
            max_jobs: 64,
            max_slots: 1024,
            max_values: 2048,
            max_pool_bytes: DEFAULT_MAX_POOL_BYTES,
            max_pending: 1 << 16,
        }
    }
}

impl AgentConfig {
    /// Pool bytes of the largest job these limits admit: [`MAX_WORKERS`] workers, `max_slots`
    /// slots of `max_values` values.
    pub fn largest_pool_bytes(&self) -> usize {
        let slots = self.max_slots.min(1 << 15);
        JobParams { workers: MAX_WORKERS, slots, values: self.max_values }.pool_bytes()
    }
}

/// Counters of packets that belong to no job.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct AgentStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams that are not valid packets (bad length, magic, version, kind, flags).
    pub malformed: u64,
    /// Packets for a job the agent does not hold.
    pub unknown_job: u64,
    /// Packets of a kind the agent does not accept (results, acks).
    pub unexpected_kind: u64,
    /// Joins refused.
    pub refused: u64,
}

/// Counters of one job.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct JobStats {
    /// Packets received for the job (all kinds).
    pub received: u64,
    /// Contributions added into a round.
    pub contributions: u64,
    /// Rounds completed.
    pub rounds: u64,
    /// Result packets queued (one per worker per round, plus served retransmits).
    pub results: u64,
    /// Results sent again to a worker that retransmitted after the round completed.
    pub retransmits_served: u64,
    /// Duplicate contributions to a round still open (dropped).
    pub duplicates: u64,
    /// Contributions to a round that is neither open nor next (dropped).
    pub stale: u64,
    /// Packets with a worker, slot or count outside the job, or disagreeing with their round.
    pub invalid: u64,
    /// Rounds whose int32 sum overflowed (a worker ignored the agreed exponent).
    pub overflows: u64,
    /// Served retransmits dropped because the output queue was full.
    pub pending_full: u64,
    /// Times a worker joined with a new session and the job's rounds started over.
    pub restarts: u64,
}

/// Why [`Agent::handle_datagram`] dropped a datagram. Every drop is also counted.
#[derive(Clone, Debug, Eq, thiserror::Error, PartialEq)]
pub enum Dropped {
    /// Not a valid packet.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// No such job.
    #[error("unknown job {0}")]
    UnknownJob(u32),
    /// A kind workers do not send.
    #[error("agents do not accept {0:?} packets")]
    UnexpectedKind(Kind),
    /// Outside the job's parameters, or disagreeing with the round.
    #[error("invalid for job {job}: {what}")]
    Invalid {
        /// The job.
        job: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// A duplicate contribution to an open round.
    #[error("duplicate contribution")]
    Duplicate,
    /// A contribution to an old round, or to a round that cannot start yet.
    #[error("stale round")]
    Stale,
    /// A join the agent refused (a refuse packet is sent back).
    #[error("join refused: {0}")]
    Refused(RefuseReason),
}

/// The parameters every worker of a job agrees on.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct JobParams {
    /// Workers contributing to each round.
    pub workers: u16,
    /// Slots in the pool.
    pub slots: u16,
    /// Values per packet.
    pub values: u16,
}

impl JobParams {
    /// Bytes of agent memory the job's slot pool takes, as the agent allocates it: per slot its
    /// record (two sets, SwitchML's shadow copy) and per set the int32 sums, their big-endian
    /// copy and a contributor bitmap. Capped by [`AgentConfig::max_pool_bytes`].
    pub fn pool_bytes(&self) -> usize {
        // The bitmap is whole words of bits.
        let bitmap = usize::from(self.workers).div_ceil(usize::BITS as usize) * size_of::<usize>();
        let set = 8 * usize::from(self.values) + bitmap;
        usize::from(self.slots) * (size_of::<Slot>() + 2 * set)
    }
}

#[derive(Debug)]
struct Round {
    live: bool,
    round: u32,
    seen: BitVec,
    count: u16,
    offset: u64,
    values: u16,
    exponent: i8,
    next_exponent: i8,
    overflow: bool,
    sums: Vec<i32>,
    /// The sums as big-endian bytes, written once when the round completes: every worker's copy
    /// of the result (and every served retransmit) is then a plain copy.
    result: Vec<u8>,
}

impl Round {
    fn new(workers: u16, values: u16) -> Self {
        Self {
            live: false,
            round: 0,
            seen: BitVec::repeat(false, workers as usize),
            count: 0,
            offset: 0,
            values: 0,
            exponent: EXPONENT_NONE,
            next_exponent: EXPONENT_NONE,
            overflow: false,
            sums: vec![0; values as usize],
            result: vec![0; 4 * values as usize],
        }
    }

    fn complete(&self, workers: u16) -> bool {
        self.live && self.count == workers
    }
}

#[derive(Debug)]
struct Slot {
    sets: [Round; 2],
    /// The set of the newest round, once the slot has run one.
    newest: Option<usize>,
}

#[derive(Debug)]
struct Job<A> {
    params: JobParams,
    addrs: Vec<Option<A>>,
    /// The session each worker joined with.
    sessions: Vec<Option<i32>>,
    joined: BitVec,
    slots: Vec<Slot>,
    stats: JobStats,
}

#[derive(Clone, Copy, Debug)]
enum Transmit<A> {
    /// Result of `round` in `slot`, to one worker or (`None`) to all.
    Result { job: u32, slot: SlotId, round: u32, to: Option<u16> },
    /// A control packet with up to three values.
    Control { to: A, repr: PacketRepr, values: [i32; 3] },
}

/// The emulated switch. `A` is the transport's address type (a `SocketAddr` for UDP).
#[derive(Debug)]
pub struct Agent<A> {
    config: AgentConfig,
    jobs: HashMap<u32, Job<A>>,
    /// Counters of the most recently ended jobs, oldest first.
    ended: VecDeque<(u32, JobStats)>,
    pending: VecDeque<Transmit<A>>,
    /// Results being sent worker by worker.
    wave: Option<Wave>,
    stats: AgentStats,
}

/// Results of one job for every worker, sent worker-major: all of them to worker 0, then to 1...
#[derive(Debug)]
struct Wave {
    job: u32,
    entries: Vec<(SlotId, u32)>,
    /// The worker being sent to, and the next entry for it.
    worker: u16,
    index: usize,
}

/// Results in one wave: a segmented send carries at most 64 datagrams.
const WAVE_MAX: usize = 64;

/// Ended jobs whose counters are kept.
const ENDED_KEPT: usize = 256;

impl<A: Copy + Eq> Agent<A> {
    /// An agent holding no jobs.
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            jobs: HashMap::new(),
            ended: VecDeque::new(),
            pending: VecDeque::new(),
            wave: None,
            stats: AgentStats::default(),
        }
    }

    /// Takes one datagram from `from`. A dropped datagram is counted and reported; the agent's
    /// state is unchanged by it.
    pub fn handle_datagram(&mut self, from: A, bytes: &[u8]) -> Result<(), Dropped> {
        self.stats.received += 1;
        let packet = match Packet::new_checked(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        match packet.kind() {
            Kind::Contribution => self.contribution(from, &packet),
            Kind::Join => self.join(from, &packet),
            Kind::Leave => self.leave(from, &packet),
            other => {
                self.stats.unexpected_kind += 1;
                Err(Dropped::UnexpectedKind(other))
            }
        }
    }

    /// Writes the next datagram to send into `buf` (at least `HEADER_LEN + 4 · max_values`
    /// bytes) and returns its destination and length.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(A, usize)> {
        loop {
            if let Some(w) = &mut self.wave {
                if w.index == w.entries.len() {
                    w.index = 0;
                    w.worker += 1;
                }
                let (job_id, worker) = (w.job, w.worker);
                let Some(j) = self.jobs.get_mut(&job_id).filter(|j| worker < j.params.workers) else {
                    self.wave = None;
                    continue;
                };
                let (slot, round) = w.entries[w.index];
                w.index += 1;
                if let Some(out) = Self::emit_result(j, job_id, slot, round, worker, buf) {
                    return Some(out);
                }
                continue;
            }
            match *self.pending.front()? {
                Transmit::Control { to, repr, values } => {
                    self.pending.pop_front();
                    let len = repr.emit_with(buf, &values[..repr.count as usize]);
                    return Some((to, len));
                }
                Transmit::Result { job, slot, round, to: Some(worker) } => {
                    self.pending.pop_front();
                    let Some(j) = self.jobs.get_mut(&job) else { continue };
                    if let Some(out) = Self::emit_result(j, job, slot, round, worker, buf) {
                        return Some(out);
                    }
                }
                Transmit::Result { job, to: None, .. } => {
                    // Results for every worker: gather the queued ones of this job into a wave
                    // sent worker by worker, so that consecutive datagrams share a destination
                    // (the datapath sends such runs as one segmented send).
                    let mut entries = Vec::new();
                    while let Some(&Transmit::Result { job: j, slot, round, to: None }) = self.pending.front() {
                        if j != job || entries.len() == WAVE_MAX {
                            break;
                        }
                        entries.push((slot, round));
                        self.pending.pop_front();
                    }
                    self.wave = Some(Wave { job, entries, worker: 0, index: 0 });
                }
            }
        }
    }

    /// Writes the result of `round` in `slot` for `worker` into `buf`, unless the set was reused
    /// since it was queued or the worker's address is unknown.
    fn emit_result(
        j: &mut Job<A>,
        job_id: u32,
        slot: SlotId,
        round: u32,
        worker: u16,
        buf: &mut [u8],
    ) -> Option<(A, usize)> {
        // The job may have been freed and joined again with a smaller pool since this was queued.
        let r = &j.slots.get(slot.index as usize)?.sets[slot.set as usize];
        if !r.live || r.round != round || worker >= j.params.workers {
            return None;
        }
        let to = j.addrs[worker as usize]?;
        let repr = PacketRepr {
            kind: Kind::Result,
            job: job_id,
            worker,
            slot,
            round,
            offset: r.offset,
            count: r.values,
            exponent: r.exponent,
            next_exponent: r.next_exponent,
            flags: if r.overflow { FLAG_OVERFLOW } else { 0 },
        };
        j.stats.results += 1;
        let len = repr.buffer_len();
        repr.emit(&mut buf[..len]);
        buf[HEADER_LEN..len].copy_from_slice(&r.result[..len - HEADER_LEN]);
        Some((to, len))
    }

    /// Counters of datagrams that reached no job.
    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// Counters of one job.
    pub fn job_stats(&self, job: u32) -> Option<JobStats> {
        self.jobs.get(&job).map(|j| j.stats)
    }

    /// Counters of jobs that ended (every worker left), oldest first; the last 256 are kept.
    pub fn ended_jobs(&self) -> impl Iterator<Item = (u32, JobStats)> + '_ {
        self.ended.iter().copied()
    }

    /// Every job held, with its parameters and counters.
    pub fn jobs(&self) -> impl Iterator<Item = (u32, JobParams, JobStats)> + '_ {
        self.jobs.iter().map(|(id, j)| (*id, j.params, j.stats))
    }

    /// Bytes a buffer for [`poll_transmit`](Self::poll_transmit) needs.
    pub fn max_datagram(&self) -> usize {
        HEADER_LEN + 4 * self.config.max_values as usize
    }

    fn refuse(&mut self, to: A, job: u32, worker: u16, reason: RefuseReason) -> Result<(), Dropped> {
        self.stats.refused += 1;
        let repr = PacketRepr::control(Kind::Refuse, job, worker, 1);
        self.pending.push_back(Transmit::Control { to, repr, values: [reason.code(), 0, 0] });
        Err(Dropped::Refused(reason))
    }

    fn join<T: AsRef<[u8]>>(&mut self, from: A, p: &Packet<T>) -> Result<(), Dropped> {
        let (job_id, worker) = (p.job(), p.worker());
        let params = match (p.count(), p.value(0), p.value(1), p.value(2)) {
            (3 | 4, Some(w), Some(s), Some(v)) => (u16::try_from(w), u16::try_from(s), u16::try_from(v)),
            _ => {
                self.stats.malformed += 1;
                return Err(Dropped::Invalid { job: job_id, what: "join without workers, slots and values" });
            }
        };
        let session = p.value(3).unwrap_or(0);
        let (Ok(workers), Ok(slots), Ok(values)) = params else {
            return self.refuse(from, job_id, worker, RefuseReason::Limits);
        };
        let params = JobParams { workers, slots, values };
        if !(1..=MAX_WORKERS).contains(&workers)
            || !(1..=self.config.max_slots.min(1 << 15)).contains(&slots)
            || !(1..=self.config.max_values).contains(&values)
            || params.pool_bytes() > self.config.max_pool_bytes
        {
            return self.refuse(from, job_id, worker, RefuseReason::Limits);
        }
        if worker >= workers {
            return self.refuse(from, job_id, worker, RefuseReason::BadWorker);
        }
        match self.jobs.get(&job_id).map(|j| j.params) {
            Some(existing) if existing != params => {
                return self.refuse(from, job_id, worker, RefuseReason::JobMismatch);
            }
            Some(_) => {}
            None if self.jobs.len() >= self.config.max_jobs => {
                return self.refuse(from, job_id, worker, RefuseReason::TooManyJobs);
            }
            None => {
                let slots = (0..slots)
                    .map(|_| Slot { sets: [Round::new(workers, values), Round::new(workers, values)], newest: None })
                    .collect();
                let job = Job {
                    params,
                    addrs: vec![None; workers as usize],
                    sessions: vec![None; workers as usize],
                    joined: BitVec::repeat(false, workers as usize),
                    slots,
                    stats: JobStats::default(),
                };
                self.jobs.insert(job_id, job);
            }
        }
        let j = self.jobs.get_mut(&job_id).expect("inserted or present above");
        j.stats.received += 1;
        j.addrs[worker as usize] = Some(from);
        j.joined.set(worker as usize, true);
        let known = j.sessions[worker as usize].replace(session);
        if known.is_some_and(|k| k != session) {
            // A new incarnation of this worker: forget every round (the others' retransmissions
            // bring their contributions back; nothing completes before this worker takes part).
            j.stats.restarts += 1;
            for slot in &mut j.slots {
                slot.newest = None;
                for r in &mut slot.sets {
                    r.live = false;
                }
            }
        }
        let repr = PacketRepr::control(Kind::JoinAck, job_id, worker, 3);
        let values = [i32::from(workers), i32::from(slots), i32::from(values)];
        self.pending.push_back(Transmit::Control { to: from, repr, values });
        Ok(())
    }

    fn leave<T: AsRef<[u8]>>(&mut self, from: A, p: &Packet<T>) -> Result<(), Dropped> {
        let (job_id, worker) = (p.job(), p.worker());
        // A leave for a job already gone is acknowledged too: the first ack may have been lost.
        if let Some(j) = self.jobs.get_mut(&job_id) {
            if worker >= j.params.workers {
                j.stats.invalid += 1;
                return Err(Dropped::Invalid { job: job_id, what: "worker id outside the job" });
            }
            j.stats.received += 1;
            j.joined.set(worker as usize, false);
            if j.joined.not_any() {
                let stats = j.stats;
                self.jobs.remove(&job_id);
                if self.ended.len() == ENDED_KEPT {
                    self.ended.pop_front();
                }
                self.ended.push_back((job_id, stats));
            }
        }
        let repr = PacketRepr::control(Kind::LeaveAck, job_id, worker, 0);
        self.pending.push_back(Transmit::Control { to: from, repr, values: [0; 3] });
        Ok(())
    }

    fn contribution<T: AsRef<[u8]>>(&mut self, from: A, p: &Packet<T>) -> Result<(), Dropped> {
        let job_id = p.job();
        let Some(j) = self.jobs.get_mut(&job_id) else {
            self.stats.unknown_job += 1;
            return Err(Dropped::UnknownJob(job_id));
        };
        j.stats.received += 1;
        let (worker, slot, round, count) = (p.worker(), p.slot(), p.round(), p.count());
        let invalid = |j: &mut Job<A>, what| {
            j.stats.invalid += 1;
            Err(Dropped::Invalid { job: job_id, what })
        };
        if worker >= j.params.workers {
            return invalid(j, "worker id outside the job");
        }
        if slot.index >= j.params.slots {
            return invalid(j, "slot outside the pool");
        }
        if count > j.params.values {
            return invalid(j, "more values than the job's packet size");
        }
        let workers = j.params.workers;
        let s = &mut j.slots[slot.index as usize];
        let set = slot.set as usize;
        let open = s.sets[set].live && s.sets[set].round == round;
        if open {
            let r = &mut s.sets[set];
            if r.seen[worker as usize] {
                if r.complete(workers) {
                    if self.pending.len() >= self.config.max_pending {
                        j.stats.pending_full += 1;
                    } else {
                        j.stats.retransmits_served += 1;
                        j.addrs[worker as usize] = Some(from);
                        self.pending.push_back(Transmit::Result { job: job_id, slot, round, to: Some(worker) });
                    }
                    return Ok(());
                }
                j.stats.duplicates += 1;
                return Err(Dropped::Duplicate);
            }
            if r.offset != p.offset() || r.values != count || r.exponent != p.exponent() {
                return invalid(j, "offset, count or exponent differs from the round's");
            }
        } else {
            // Only the successor of the newest round, once that is complete, may start.
            let may_start = match s.newest {
                None => true,
                Some(newest) => {
                    let n = &s.sets[newest];
                    newest != set && n.complete(workers) && n.round.wrapping_add(1) == round
                }
            };
            if !may_start {
                j.stats.stale += 1;
                return Err(Dropped::Stale);
            }
            let r = &mut s.sets[set];
            r.live = true;
            r.round = round;
            r.seen.fill(false);
            r.count = 0;
            r.offset = p.offset();
            r.values = count;
            r.exponent = p.exponent();
            r.next_exponent = EXPONENT_NONE;
            r.overflow = false;
            r.sums[..count as usize].fill(0);
            s.newest = Some(set);
        }
        let r = &mut s.sets[set];
        r.seen.set(worker as usize, true);
        r.count += 1;
        r.next_exponent = r.next_exponent.max(p.next_exponent());
        r.overflow |= fixed::add_be(&mut r.sums[..count as usize], p.value_bytes());
        j.addrs[worker as usize] = Some(from);
        j.stats.contributions += 1;
        if r.count == workers {
            fixed::put_be(&r.sums[..count as usize], &mut r.result[..4 * count as usize]);
            j.stats.rounds += 1;
            if r.overflow {
                j.stats.overflows += 1;
            }
            self.pending.push_back(Transmit::Result { job: job_id, slot, round, to: None });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_hold_their_largest_job() {
        let c = AgentConfig::default();
        assert!(c.largest_pool_bytes() <= c.max_pool_bytes, "{} > {}", c.largest_pool_bytes(), c.max_pool_bytes);
        // Twice the slots would not fit: the limits are not far looser than the cap.
        let doubled = AgentConfig { max_slots: 2 * c.max_slots, ..c };
        assert!(doubled.largest_pool_bytes() > c.max_pool_bytes);
    }

    #[test]
    fn a_join_above_the_pool_cap_is_refused() {
        let params = JobParams { workers: 2, slots: 64, values: 256 };
        let join = |max_pool_bytes: usize| {
            let mut agent: Agent<u8> = Agent::new(AgentConfig { max_pool_bytes, ..AgentConfig::default() });
            let repr = PacketRepr::control(Kind::Join, 1, 0, 3);
            let mut buf = vec![0u8; HEADER_LEN + 12];
            let len = repr.emit_with(&mut buf, &[2, 64, 256]);
            agent.handle_datagram(0, &buf[..len])
        };
        assert_eq!(join(params.pool_bytes()), Ok(()));
        assert_eq!(join(params.pool_bytes() - 1), Err(Dropped::Refused(RefuseReason::Limits)));
        // The pool is at least the two sets' sums and their big-endian copies.
        assert!(params.pool_bytes() >= 16 * 64 * 256);
    }
}
