//! A worker's side of a job: join, then all-reduce f32 tensors through the agent's slot pool.
//!
//! The tensor is cut into chunks of the job's packet size; chunk `c` travels in slot `c % slots`,
//! so every slot of the pool carries one packet in flight and the pool is a self-clocked window
//! (each result releases the slot's next chunk). Per slot the first round of an operation carries
//! only the exponent of the slot's first chunk; every later round carries one chunk's values,
//! scaled by the exponent agreed in the round before, plus the exponent of the slot's next chunk
//! (SwitchML's exponents one batch ahead).
//!
//! Every packet in flight has a retransmission timeout: the round trip estimated from earlier
//! results as TCP estimates it (smoothed mean plus four deviations), doubled on each expiry of
//! that packet up to a cap. Without it, a pool of hundreds of packets in flight on a busy agent
//! waits longer than any fixed small timeout and every slot retransmits spuriously. Results are integer sums,
//! so the output does not depend on which copies of which packets arrived: with drops, duplicates
//! and reordering it is bit-identical to the run without.
//!
//! Drive it like the agent: feed datagrams to [`Endpoint::handle_datagram`], send what
//! [`Endpoint::poll_transmit`] gives until `None`, wait until [`Endpoint::poll_timeout`] (or a
//! datagram), then [`Endpoint::handle_timeout`]. Time is always passed in.
//!
//! Refuses: non-finite inputs (they have no fixed-point form), a second operation while one is
//! running, and results that disagree with the packet they answer (counted as ignored).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::proto::agent::JobParams;
use crate::proto::fixed;
use crate::proto::packet::{EXPONENT_NONE, FLAG_OVERFLOW, HEADER_LEN, Kind, Packet, PacketRepr, RefuseReason, SlotId};

/// A worker's view of its job.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct EndpointConfig {
    /// Job id, shared by every worker of the job.
    pub job: u32,
    /// This worker's id, below `params.workers`.
    pub worker: u16,
    /// Workers, slots and values per packet.
    pub params: JobParams,
    /// Retransmission timeout before the first round-trip sample.
    pub initial_rto: Duration,
    /// Floor of the estimated timeout.
    pub min_rto: Duration,
    /// A packet's timeout doubles on each expiry up to this.
    pub max_rto: Duration,
    /// Tells this incarnation of the worker from an earlier one: a join with a session the agent
    /// has not seen for this worker id restarts the job's rounds (a worker that was restarted,
    /// or a job that was never left, would otherwise meet round numbers it cannot know).
    pub session: u32,
}

impl EndpointConfig {
    /// Defaults for a loopback or LAN agent: 5 ms before the first sample, then the estimate but
    /// at least 10 ms, doubling to at most 500 ms.
    pub fn new(job: u32, worker: u16, params: JobParams) -> Self {
        Self {
            job,
            worker,
            params,
            initial_rto: Duration::from_millis(5),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_millis(500),
            session: 0,
        }
    }
}

/// What can go wrong with an operation.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum EndpointError {
    /// The agent refused the join.
    #[error("the agent refused job {job}: {reason}")]
    Refused {
        /// The job.
        job: u32,
        /// Why.
        reason: RefuseReason,
    },
    /// An input value is NaN or infinite.
    #[error("element {index} is {value}: only finite values can be summed in fixed point")]
    NonFinite {
        /// Where.
        index: usize,
        /// What.
        value: f32,
    },
    /// An operation is already running.
    #[error("an all-reduce is already running on this endpoint")]
    Busy,
    /// The agent reported an int32 overflow in a sum (a worker ignored the agreed exponent).
    #[error("the agent's int32 sum overflowed at element offset {offset}")]
    Overflow {
        /// Offset of the chunk.
        offset: u64,
    },
    /// The agent agreed on an exponent below this worker's own for a chunk.
    #[error("the agent's exponent for the chunk at element offset {offset} is below this worker's")]
    BadExponent {
        /// Offset of the chunk.
        offset: u64,
    },
    /// An earlier operation was abandoned mid-way (its caller gave up waiting); the slots it left
    /// mid-round cannot be resynchronised, so the endpoint takes no more operations.
    #[error("an earlier all-reduce on this endpoint was abandoned; join again with a new endpoint")]
    Abandoned,
    /// Invalid configuration.
    #[error("invalid endpoint configuration: {0}")]
    Config(&'static str),
}

/// Counters of one endpoint, over its lifetime.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct EndpointStats {
    /// Packets handed out by `poll_transmit` (including retransmissions).
    pub sent: u64,
    /// Of those, retransmissions after a timeout.
    pub retransmits: u64,
    /// Results accepted.
    pub results: u64,
    /// Datagrams ignored: invalid, foreign, for another job or worker, or answering no packet in flight.
    pub ignored: u64,
    /// Elements all-reduced.
    pub elements: u64,
    /// Bytes of the packets handed out by `poll_transmit` (UDP payloads: header and values).
    pub bytes_sent: u64,
    /// Bytes of every datagram handed to `handle_datagram`, ignored ones included: they crossed
    /// the network as well.
    pub bytes_received: u64,
}

#[derive(Debug)]
struct SlotState {
    /// Round of the packet in flight (or of the next one when idle).
    round: u32,
    /// Exponent of the next chunk, sent with the packet in flight.
    next_exponent: i8,
    /// Chunk whose values the packet carries (`None`: exponent only) while in flight.
    carries: Option<Option<usize>>,
    /// The chunk this slot sends next.
    next_chunk: usize,
    deadline: Option<Instant>,
    /// First transmission of the packet in flight (for round-trip samples).
    sent_at: Option<Instant>,
    /// The packet in flight was sent more than once: its result gives no sample (Karn).
    resent: bool,
    /// Expiries of the packet in flight: its timeout is the estimate times 2^backoff.
    backoff: u32,
    /// Exponent the packet's values use.
    exponent: i8,
    /// In the transmit queue.
    queued: bool,
}

#[derive(Debug)]
enum JoinState {
    Joining { deadline: Option<Instant>, rto: Duration, queued: bool },
    Joined,
    Leaving { deadline: Option<Instant>, rto: Duration, queued: bool },
    Left,
    Failed(EndpointError),
}

#[derive(Debug)]
struct Operation {
    exponents: Vec<i8>,
    remaining: usize,
    failed: Option<EndpointError>,
}

/// One worker's side of a job.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    state: JoinState,
    slots: Vec<SlotState>,
    queue: VecDeque<u16>,
    /// Input, then output, of the running or last operation.
    data: Vec<f32>,
    op: Option<Operation>,
    rtt: RttEstimator,
    stats: EndpointStats,
}

/// Smoothed round trip and its variation, as TCP keeps them (RFC 6298 §2). A result arrives
/// only once every worker contributed, so the samples include waiting for the slowest worker:
/// exactly the time after which a retransmission is not spurious.
#[derive(Clone, Copy, Debug, Default)]
struct RttEstimator {
    smoothed: Option<Duration>,
    variation: Duration,
}

impl RttEstimator {
    fn sample(&mut self, rtt: Duration) {
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.variation = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.variation = (self.variation * 3 + diff) / 4;
                self.smoothed = Some((s * 7 + rtt) / 8);
            }
        }
    }

    fn timeout(&self, config: &EndpointConfig) -> Duration {
        match self.smoothed {
            None => config.initial_rto,
            Some(s) => (s + self.variation * 4).clamp(config.min_rto, config.max_rto),
        }
    }
}

impl Endpoint {
    /// An endpoint that starts by joining its job.
    pub fn new(config: EndpointConfig) -> Result<Self, EndpointError> {
        let p = config.params;
        if p.workers == 0 || p.workers > fixed::MAX_WORKERS {
            return Err(EndpointError::Config("workers must be in 1..=256"));
        }
        if config.worker >= p.workers {
            return Err(EndpointError::Config("worker id must be below the worker count"));
        }
        if p.slots == 0 || p.slots > 1 << 15 {
            return Err(EndpointError::Config("slots must be in 1..=32768"));
        }
        if p.values == 0 {
            return Err(EndpointError::Config("values per packet must be at least 1"));
        }
        if config.min_rto.is_zero() || config.max_rto < config.initial_rto.max(config.min_rto) {
            return Err(EndpointError::Config("timeouts must be positive, the maximum at least the others"));
        }
        let slots = (0..p.slots)
            .map(|_| SlotState {
                round: 0,
                next_exponent: EXPONENT_NONE,
                carries: None,
                next_chunk: 0,
                deadline: None,
                sent_at: None,
                resent: false,
                backoff: 0,
                exponent: EXPONENT_NONE,
                queued: false,
            })
            .collect();
        Ok(Self {
            config,
            state: JoinState::Joining { deadline: None, rto: config.initial_rto, queued: true },
            slots,
            queue: VecDeque::new(),
            data: Vec::new(),
            op: None,
            rtt: RttEstimator::default(),
            stats: EndpointStats::default(),
        })
    }

    /// Starts summing `input` with the other workers' tensors of the same length. Packets go out
    /// once the join is acknowledged.
    pub fn start(&mut self, input: &[f32]) -> Result<(), EndpointError> {
        let exponents = self.check_start(input)?;
        self.data.clear();
        self.data.extend_from_slice(input);
        self.begin(exponents);
        Ok(())
    }

    /// [`start`](Self::start) without copying: the tensor is swapped out of `input` (which gets
    /// a spare buffer back) and [`finish_into`](Self::finish_into) swaps the sum back in.
    pub fn start_with(&mut self, input: &mut Vec<f32>) -> Result<(), EndpointError> {
        let exponents = self.check_start(input)?;
        std::mem::swap(&mut self.data, input);
        self.begin(exponents);
        Ok(())
    }

    /// Refuses a start that cannot run; otherwise the exponent of every chunk.
    fn check_start(&self, input: &[f32]) -> Result<Vec<i8>, EndpointError> {
        if let JoinState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if self.op.is_some() {
            return Err(EndpointError::Busy);
        }
        let k = self.config.params.values as usize;
        let mut exponents = Vec::with_capacity(input.len().div_ceil(k));
        for (c, chunk) in input.chunks(k).enumerate() {
            match fixed::exponent(chunk) {
                Some(e) => exponents.push(e),
                None => {
                    let (i, &value) =
                        chunk.iter().enumerate().find(|(_, v)| !v.is_finite()).expect("a chunk without an exponent");
                    return Err(EndpointError::NonFinite { index: c * k + i, value });
                }
            }
        }
        Ok(exponents)
    }

    fn begin(&mut self, exponents: Vec<i8>) {
        let input_len = self.data.len();
        let chunks = exponents.len();
        self.op = Some(Operation { exponents, remaining: chunks, failed: None });
        self.stats.elements += input_len as u64;
        for s in 0..(self.slots.len().min(chunks)) {
            // Round 0 of this operation in slot s: the exponent of chunk s only.
            self.slots[s].next_chunk = s;
            self.build(s, None, EXPONENT_NONE);
            self.enqueue(s);
        }
    }

    /// Asks the agent to forget this worker; the job is removed once all its workers left.
    pub fn leave(&mut self) {
        if !matches!(self.state, JoinState::Leaving { .. } | JoinState::Left) {
            self.state = JoinState::Leaving { deadline: None, rto: self.config.initial_rto, queued: true };
        }
    }

    /// Takes a datagram from the agent. Anything that does not answer a packet in flight is
    /// counted and ignored.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.bytes_received += bytes.len() as u64;
        let Ok(p) = Packet::new_checked(bytes) else {
            self.stats.ignored += 1;
            return;
        };
        if p.job() != self.config.job || p.worker() != self.config.worker {
            self.stats.ignored += 1;
            return;
        }
        match p.kind() {
            Kind::JoinAck => {
                let p0 = self.config.params;
                let expected = [i32::from(p0.workers), i32::from(p0.slots), i32::from(p0.values)];
                if matches!(self.state, JoinState::Joining { .. }) && p.values().eq(expected) {
                    self.state = JoinState::Joined;
                } else {
                    self.stats.ignored += 1;
                }
            }
            Kind::Refuse if matches!(self.state, JoinState::Joining { .. }) => {
                let reason = RefuseReason::from_code(p.value(0).unwrap_or(0));
                let e = EndpointError::Refused { job: self.config.job, reason };
                if let Some(op) = &mut self.op {
                    op.failed = Some(e.clone());
                }
                self.state = JoinState::Failed(e);
            }
            Kind::LeaveAck if matches!(self.state, JoinState::Leaving { .. }) => self.state = JoinState::Left,
            Kind::Result => self.result(now, &p),
            _ => self.stats.ignored += 1,
        }
    }

    /// Writes the next packet to send into `buf` (at least [`max_datagram`](Self::max_datagram)
    /// bytes) and returns its length; `now` starts its retransmission timer.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let (job, worker) = (self.config.job, self.config.worker);
        let control = match &mut self.state {
            JoinState::Joining { deadline, rto, queued } if *queued => Some((Kind::Join, deadline, rto, queued)),
            JoinState::Leaving { deadline, rto, queued } if *queued => Some((Kind::Leave, deadline, rto, queued)),
            JoinState::Joined => None,
            _ => return None,
        };
        if let Some((kind, deadline, rto, queued)) = control {
            *queued = false;
            *deadline = Some(now + *rto);
            let p = self.config.params;
            let count = if kind == Kind::Join { 4 } else { 0 };
            let repr = PacketRepr::control(kind, job, worker, count);
            let values = [i32::from(p.workers), i32::from(p.slots), i32::from(p.values), self.config.session as i32];
            let len = repr.emit_with(buf, &values[..count as usize]);
            self.stats.sent += 1;
            self.stats.bytes_sent += len as u64;
            return Some(len);
        }
        let (s, slot) = loop {
            let s = self.queue.pop_front()? as usize;
            let slot = &mut self.slots[s];
            slot.queued = false;
            // Answered while queued, with nothing after it: nothing to send.
            if slot.carries.is_some() {
                break (s, slot);
            }
        };
        match slot.sent_at {
            None => slot.sent_at = Some(now),
            Some(_) => slot.resent = true,
        }
        let rto = (self.rtt.timeout(&self.config) * 2u32.saturating_pow(slot.backoff)).min(self.config.max_rto);
        slot.deadline = Some(now + rto);
        let len = self.emit(s, buf);
        self.stats.sent += 1;
        self.stats.bytes_sent += len as u64;
        Some(len)
    }

    /// When the earliest retransmission timer expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            JoinState::Joining { deadline, .. } | JoinState::Leaving { deadline, .. } => return *deadline,
            JoinState::Joined => {}
            _ => return None,
        }
        self.op.as_ref()?;
        self.slots.iter().filter_map(|s| s.deadline).min()
    }

    /// Queues every packet whose timer expired at `now` for retransmission, doubling its timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max = self.config.max_rto;
        match &mut self.state {
            JoinState::Joining { deadline, rto, queued } | JoinState::Leaving { deadline, rto, queued } => {
                if deadline.is_some_and(|d| d <= now) {
                    *deadline = None;
                    *rto = (*rto * 2).min(max);
                    *queued = true;
                    self.stats.retransmits += 1;
                }
                return;
            }
            JoinState::Joined => {}
            _ => return,
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.deadline.is_some_and(|d| d <= now) {
                s.deadline = None;
                s.backoff = s.backoff.saturating_add(1);
                self.stats.retransmits += 1;
                if !s.queued {
                    s.queued = true;
                    self.queue.push_back(i as u16);
                }
            }
        }
    }

    /// Whether the running operation finished (successfully or not), or none is running.
    pub fn is_idle(&self) -> bool {
        match &self.op {
            None => true,
            Some(op) => op.remaining == 0 || op.failed.is_some(),
        }
    }

    /// Ends the finished operation: the summed tensor, or why it failed. `None` while it runs.
    pub fn finish(&mut self) -> Option<Result<&[f32], EndpointError>> {
        if !self.is_idle() {
            return None;
        }
        let op = self.op.take()?;
        if let Some(e) = op.failed {
            // A failed operation leaves slots mid-round; the endpoint cannot resynchronise.
            self.state = JoinState::Failed(e.clone());
            return Some(Err(e));
        }
        Some(Ok(&self.data))
    }

    /// [`finish`](Self::finish), swapping the summed tensor into `out` (see
    /// [`start_with`](Self::start_with)).
    pub fn finish_into(&mut self, out: &mut Vec<f32>) -> Option<Result<(), EndpointError>> {
        Some(match self.finish()? {
            Ok(_) => {
                std::mem::swap(&mut self.data, out);
                Ok(())
            }
            Err(e) => Err(e),
        })
    }

    /// Gives up on the running operation (the caller's deadline passed): every later
    /// [`start`](Self::start) fails with [`EndpointError::Abandoned`] rather than
    /// [`EndpointError::Busy`].
    pub fn abandon(&mut self) {
        if self.op.take().is_some() {
            self.queue.clear();
            for slot in &mut self.slots {
                (slot.queued, slot.deadline, slot.carries) = (false, None, None);
            }
            self.state = JoinState::Failed(EndpointError::Abandoned);
        }
    }

    /// Whether the join was acknowledged (and the endpoint has not left or failed).
    pub fn is_joined(&self) -> bool {
        matches!(self.state, JoinState::Joined)
    }

    /// Whether the leave was acknowledged.
    pub fn has_left(&self) -> bool {
        matches!(self.state, JoinState::Left)
    }

    /// Why the endpoint stopped, if it failed.
    pub fn error(&self) -> Option<&EndpointError> {
        match &self.state {
            JoinState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Bytes a buffer for [`poll_transmit`](Self::poll_transmit) needs.
    pub fn max_datagram(&self) -> usize {
        HEADER_LEN + 4 * self.config.params.values as usize
    }

    /// Makes slot `s` carry `chunk`'s values (if any) scaled with `exponent`, plus the exponent
    /// of the chunk after it in this slot. The bytes are written when sent ([`Self::emit`]):
    /// the chunk's input stays in `data` until its result arrives, so a retransmission writes the
    /// same bytes again without keeping a copy.
    fn build(&mut self, s: usize, chunk: Option<usize>, exponent: i8) {
        let stride = self.slots.len();
        let op = self.op.as_ref().expect("build runs within an operation");
        let next = match chunk {
            None => Some(s),
            Some(c) => Some(c + stride).filter(|&n| n < op.exponents.len()),
        };
        let slot = &mut self.slots[s];
        slot.next_exponent = next.map_or(EXPONENT_NONE, |n| op.exponents[n]);
        slot.carries = Some(chunk);
        slot.exponent = exponent;
    }

    /// Writes slot `s`'s packet in flight into `buf`; returns its length.
    fn emit(&self, s: usize, buf: &mut [u8]) -> usize {
        let k = self.config.params.values as usize;
        let slot = &self.slots[s];
        let chunk = slot.carries.expect("emit runs for a slot in flight");
        let (offset, values) = match chunk {
            None => (s * k, &[][..]),
            Some(c) => (c * k, &self.data[c * k..((c + 1) * k).min(self.data.len())]),
        };
        let repr = PacketRepr {
            kind: Kind::Contribution,
            job: self.config.job,
            worker: self.config.worker,
            slot: SlotId::for_round(s as u16, slot.round),
            round: slot.round,
            offset: offset as u64,
            count: values.len() as u16,
            exponent: slot.exponent,
            next_exponent: slot.next_exponent,
            flags: 0,
        };
        let len = repr.buffer_len();
        repr.emit(&mut buf[..len]);
        fixed::quantize_be(values, self.config.params.workers, slot.exponent, &mut buf[HEADER_LEN..len]);
        len
    }

    fn result<T: AsRef<[u8]>>(&mut self, now: Instant, p: &Packet<T>) {
        let s = p.slot().index as usize;
        let k = self.config.params.values as usize;
        let Some(slot) = self.slots.get(s) else {
            self.stats.ignored += 1;
            return;
        };
        let Some(carries) = slot.carries else {
            self.stats.ignored += 1;
            return;
        };
        let expected_offset = (carries.unwrap_or(s) * k) as u64;
        let expected_count = carries.map_or(0, |c| ((c + 1) * k).min(self.data.len()) - c * k);
        if self.op.is_none()
            || p.round() != slot.round
            || p.offset() != expected_offset
            || p.count() as usize != expected_count
            || p.exponent() != slot.exponent
        {
            self.stats.ignored += 1;
            return;
        }
        self.stats.results += 1;
        let workers = self.config.params.workers;
        let op = self.op.as_mut().expect("checked above");
        if let Some(c) = carries {
            if p.flags() & FLAG_OVERFLOW != 0 {
                op.failed = Some(EndpointError::Overflow { offset: p.offset() });
            }
            let out = &mut self.data[c * k..c * k + expected_count];
            fixed::dequantize_be(p.value_bytes(), workers, p.exponent(), out);
            op.remaining -= 1;
        }
        let slot = &mut self.slots[s];
        slot.carries = None;
        slot.deadline = None;
        if let (Some(sent), false) = (slot.sent_at, slot.resent) {
            self.rtt.sample(now.saturating_duration_since(sent));
        }
        slot.sent_at = None;
        slot.resent = false;
        slot.backoff = 0;
        slot.round = slot.round.wrapping_add(1);
        let next = match carries {
            None => Some(slot.next_chunk),
            Some(c) => Some(c + self.slots.len()).filter(|&n| n < op.exponents.len()),
        };
        if let Some(n) = next {
            // The agent's maximum includes this worker's exponent; a smaller one would scale our
            // values past int32 (only a faulty agent sends it).
            if p.next_exponent() < op.exponents[n] {
                op.failed = Some(EndpointError::BadExponent { offset: (n * k) as u64 });
                return;
            }
            self.slots[s].next_chunk = n;
            self.build(s, Some(n), p.next_exponent());
            self.enqueue(s);
        }
    }

    fn enqueue(&mut self, s: usize) {
        // A queued retransmission sends whatever packet the slot holds when it is popped.
        if !self.slots[s].queued {
            self.slots[s].queued = true;
            self.queue.push_back(s as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::agent::{Agent, AgentConfig};

    /// One worker and an agent on a lossless wire, plus garbage: the byte counters match the
    /// datagrams exchanged exactly.
    #[test]
    fn byte_counters_count_every_datagram_both_ways() {
        let params = JobParams { workers: 1, slots: 4, values: 16 };
        let mut agent: Agent<u8> = Agent::new(AgentConfig::default());
        let mut e = Endpoint::new(EndpointConfig::new(9, 0, params)).unwrap();
        let input: Vec<f32> = (0..100).map(|i| i as f32 / 8.0).collect();
        e.start(&input).unwrap();
        let now = Instant::now();
        let (mut sent, mut received) = (0u64, 0u64);
        let (mut buf, mut out) = (vec![0u8; e.max_datagram()], vec![0u8; agent.max_datagram()]);
        for _ in 0..1000 {
            while let Some(len) = e.poll_transmit(now, &mut buf) {
                sent += len as u64;
                let _ = agent.handle_datagram(0, &buf[..len]);
            }
            while let Some((_, len)) = agent.poll_transmit(&mut out) {
                received += len as u64;
                e.handle_datagram(now, &out[..len]);
            }
            if e.is_joined() && e.is_idle() {
                break;
            }
        }
        assert_eq!(e.finish().unwrap().unwrap(), &input[..], "one worker: the sum is its input");
        e.handle_datagram(now, b"not a packet");
        let stats = e.stats();
        assert_eq!((stats.bytes_sent, stats.bytes_received), (sent, received + 12));
        let tensor = 4 * input.len() as u64;
        assert!(stats.bytes_sent > tensor && stats.bytes_received > tensor, "{stats:?}");
    }
}
