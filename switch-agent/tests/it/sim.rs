//! The protocol on a simulated network (STYLE habit 8): one agent, N endpoints, a virtual clock,
//! seeded drop / duplicate / reorder on every link, and a bounded drive loop. No sockets, no sleeps.
//!
//! Checks Sapio et al. (NSDI'21) §4 (loss recovery with shadow copies) and §3.3 (fixed point with
//! exponents one batch ahead) on our packet format.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use paramserv_switch::proto::agent::{Agent, AgentConfig, JobParams};
use paramserv_switch::proto::endpoint::{Endpoint, EndpointConfig, EndpointError};
use paramserv_switch::proto::fixed::{self, chunk_exponents, error_bound, reference_sum};
use paramserv_switch::proto::packet::{Kind, PacketRepr, RefuseReason, SlotId};

/// Per-datagram fault probabilities, applied on every link in both directions.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    drop: f64,
    duplicate: f64,
    reorder: f64,
}

/// splitmix64: enough randomness for faults and inputs, fixed by the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Node addresses: the agent is `AGENT`, endpoint `i` of job slot `j` is `(j, i)`.
type Addr = (usize, usize);
const AGENT: Addr = (usize::MAX, usize::MAX);

/// A datagram on the wire: (deliver at, sequence, to, from, bytes).
type InFlight = (Instant, u64, Addr, Addr, Vec<u8>);

struct Sim {
    now: Instant,
    rng: Rng,
    faults: Faults,
    agent: Agent<Addr>,
    /// Endpoints per job.
    jobs: Vec<Vec<Endpoint>>,
    wire: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Every datagram an endpoint sent, for replay tests.
    log: Vec<Vec<u8>>,
    buf: Vec<u8>,
    delivered: u64,
}

const LATENCY: Duration = Duration::from_micros(20);

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
        Self {
            now: Instant::now(),
            rng: Rng(seed),
            faults,
            agent: Agent::new(AgentConfig::default()),
            jobs: Vec::new(),
            wire: BinaryHeap::new(),
            seq: 0,
            log: Vec::new(),
            buf: vec![0; 1 << 16],
            delivered: 0,
        }
    }

    fn add_job(&mut self, job: u32, params: JobParams) -> usize {
        let eps = (0..params.workers)
            .map(|w| {
                let mut c = EndpointConfig::new(job, w, params);
                c.initial_rto = Duration::from_micros(200);
                c.min_rto = Duration::from_micros(100);
                c.max_rto = Duration::from_millis(5);
                Endpoint::new(c).unwrap()
            })
            .collect();
        self.jobs.push(eps);
        self.jobs.len() - 1
    }

    fn send(&mut self, from: Addr, to: Addr, bytes: Vec<u8>) {
        let f = self.faults;
        if self.rng.unit() < f.drop {
            return;
        }
        let copies = if self.rng.unit() < f.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            // Reordered datagrams take up to 50 latencies longer.
            let extra = if self.rng.unit() < f.reorder {
                LATENCY * (1 + (self.rng.next() % 50) as u32)
            } else {
                Duration::ZERO
            };
            self.seq += 1;
            self.wire.push(Reverse((self.now + LATENCY + extra, self.seq, to, from, bytes.clone())));
        }
    }

    /// Moves everything queued onto the wire.
    fn flush(&mut self) {
        for j in 0..self.jobs.len() {
            for i in 0..self.jobs[j].len() {
                while let Some(len) = self.jobs[j][i].poll_transmit(self.now, &mut self.buf) {
                    let bytes = self.buf[..len].to_vec();
                    self.log.push(bytes.clone());
                    self.send((j, i), AGENT, bytes);
                }
            }
        }
        while let Some((to, len)) = self.agent.poll_transmit(&mut self.buf) {
            let bytes = self.buf[..len].to_vec();
            self.send(AGENT, to, bytes);
        }
    }

    fn deliver(&mut self, to: Addr, from: Addr, bytes: &[u8]) {
        self.delivered += 1;
        if to == AGENT {
            let _ = self.agent.handle_datagram(from, bytes);
        } else {
            self.jobs[to.0][to.1].handle_datagram(self.now, bytes);
        }
    }

    fn idle(&self) -> bool {
        self.jobs.iter().flatten().all(|e| e.is_idle() && (e.is_joined() || e.error().is_some() || e.has_left()))
    }

    /// Runs until every endpoint is idle; false if that takes more than `max_steps` events.
    fn drive_bounded(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            self.flush();
            if self.idle() && self.wire.is_empty() {
                return true;
            }
            let next_timer = self.jobs.iter().flatten().filter_map(|e| e.poll_timeout()).min();
            let next_packet = self.wire.peek().map(|Reverse(p)| p.0);
            let take_packet = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return self.idle(),
            };
            if take_packet {
                let Reverse((at, _, to, from, bytes)) = self.wire.pop().expect("peeked above");
                self.now = self.now.max(at);
                self.deliver(to, from, &bytes);
            } else {
                self.now = self.now.max(next_timer.expect("a timer is due"));
                for e in self.jobs.iter_mut().flatten() {
                    e.handle_timeout(self.now);
                }
            }
        }
        false
    }

    /// Starts `inputs[i]` on endpoint `i` of job `j`.
    fn start(&mut self, j: usize, inputs: &[Vec<f32>]) {
        for (e, input) in self.jobs[j].iter_mut().zip(inputs) {
            e.start(input).unwrap();
        }
    }

    fn results(&mut self, j: usize) -> Vec<Vec<f32>> {
        self.jobs[j].iter_mut().map(|e| e.finish().expect("idle").expect("succeeded").to_vec()).collect()
    }

    fn all_reduce(&mut self, j: usize, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.start(j, inputs);
        assert!(self.drive_bounded(5_000_000), "the all-reduce never finished");
        self.results(j)
    }
}

/// Worker inputs whose magnitude varies by chunk over many octaves, so exponents differ.
fn inputs(rng: &mut Rng, workers: usize, len: usize, values: usize) -> Vec<Vec<f32>> {
    let scales: Vec<f32> = (0..len.div_ceil(values)).map(|_| 2f32.powi((rng.next() % 40) as i32 - 20)).collect();
    (0..workers)
        .map(|_| {
            (0..len)
                .map(|i| if rng.next().is_multiple_of(17) { 0.0 } else { rng.normal() * scales[i / values] })
                .collect()
        })
        .collect()
}

fn refs(inputs: &[Vec<f32>]) -> Vec<&[f32]> {
    inputs.iter().map(Vec::as_slice).collect()
}

#[test]
fn sums_are_within_the_documented_bound_of_an_f64_sum() {
    for workers in [2u16, 3, 4, 8] {
        let params = JobParams { workers, slots: 8, values: 64 };
        let mut sim = Sim::new(u64::from(workers), Faults::default());
        let j = sim.add_job(1, params);
        let data = inputs(&mut sim.rng, workers as usize, 64 * 40 + 17, 64);
        let out = sim.all_reduce(j, &data);
        let exps = chunk_exponents(&refs(&data), 64);
        let mut worst = 0f64;
        for i in 0..data[0].len() {
            let exact: f64 = data.iter().map(|d| f64::from(d[i])).sum();
            let err = (f64::from(out[0][i]) - exact).abs();
            let bound = error_bound(workers, exps[i / 64], exact.abs());
            assert!(err <= bound, "workers {workers} element {i}: error {err} > bound {bound}");
            worst = worst.max(err / bound.max(f64::MIN_POSITIVE));
        }
        assert!(worst > 0.0, "rounding happened somewhere, or the check tests nothing");
        for o in &out {
            assert_eq!(o, &out[0], "every worker gets the same sum");
        }
        assert_eq!(out[0], reference_sum(&refs(&data), 64).unwrap(), "bit-identical to the fixed-point reference");
    }
}

#[test]
fn loss_duplicates_and_reordering_give_bit_identical_results() {
    for (workers, seed) in [(2u16, 1u64), (4, 2), (8, 3)] {
        let params = JobParams { workers, slots: 16, values: 64 };
        let mut clean = Sim::new(seed, Faults::default());
        let j = clean.add_job(9, params);
        let data = inputs(&mut clean.rng, workers as usize, 64 * 100 + 5, 64);
        let expected = clean.all_reduce(j, &data);

        let faults = Faults { drop: 0.05, duplicate: 0.05, reorder: 0.1 };
        let mut lossy = Sim::new(seed + 100, faults);
        let j = lossy.add_job(9, params);
        // Two operations back to back: rounds continue across operations.
        let first = lossy.all_reduce(j, &data);
        let second = lossy.all_reduce(j, &data);
        for out in first.iter().chain(&second) {
            assert!(
                out.iter().zip(&expected[0]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "workers {workers}: results differ"
            );
        }
        let stats = lossy.agent.job_stats(9).unwrap();
        let retransmits: u64 = lossy.jobs[j].iter().map(|e| e.stats().retransmits).sum();
        assert!(retransmits > 0 && stats.retransmits_served > 0, "the faults exercised recovery: {stats:?}");
        assert!(stats.duplicates + stats.stale > 0, "duplicates reached the agent: {stats:?}");
        assert_eq!(stats.overflows, 0);
    }
}

#[test]
fn replayed_packets_of_an_earlier_operation_are_never_added() {
    // SwitchML's seen-bitmap alone would take a late copy of round r as a contribution to round
    // r + 2 (same pool set); the round number rejects it.
    let params = JobParams { workers: 3, slots: 4, values: 16 };
    let mut sim = Sim::new(5, Faults::default());
    let j = sim.add_job(3, params);
    let first = inputs(&mut sim.rng, 3, 16 * 12, 16);
    sim.all_reduce(j, &first);
    let old = std::mem::take(&mut sim.log);
    let second = inputs(&mut sim.rng, 3, 16 * 12, 16);
    sim.start(j, &second);
    // Interleave every old datagram with the new operation.
    for (i, bytes) in old.into_iter().enumerate() {
        sim.send((j, i % 3), AGENT, bytes);
        sim.drive_bounded(3);
    }
    assert!(sim.drive_bounded(1_000_000));
    let out = sim.results(j);
    assert_eq!(out[0], reference_sum(&refs(&second), 16).unwrap());
    assert!(sim.agent.job_stats(3).unwrap().stale > 0);
}

#[test]
fn two_jobs_at_once_do_not_interfere() {
    let mut sim = Sim::new(11, Faults { drop: 0.02, duplicate: 0.02, reorder: 0.02 });
    let a = sim.add_job(100, JobParams { workers: 2, slots: 8, values: 32 });
    let b = sim.add_job(200, JobParams { workers: 3, slots: 4, values: 64 });
    let da = inputs(&mut sim.rng, 2, 32 * 50, 32);
    let db = inputs(&mut sim.rng, 3, 64 * 30 + 1, 64);
    sim.start(a, &da);
    sim.start(b, &db);
    assert!(sim.drive_bounded(5_000_000));
    assert_eq!(sim.results(a)[1], reference_sum(&refs(&da), 32).unwrap());
    assert_eq!(sim.results(b)[2], reference_sum(&refs(&db), 64).unwrap());
    assert_eq!(sim.agent.jobs().count(), 2);
}

#[test]
fn malformed_and_foreign_datagrams_are_counted_and_change_nothing() {
    let params = JobParams { workers: 2, slots: 4, values: 16 };
    let mut sim = Sim::new(21, Faults::default());
    let j = sim.add_job(4, params);
    let data = inputs(&mut sim.rng, 2, 16 * 20, 16);
    sim.start(j, &data);
    let mut garbage = Vec::new();
    for n in 0..300 {
        let len = (sim.rng.next() % 120) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| sim.rng.next() as u8).collect();
        if n % 3 == 0 && g.len() >= 4 {
            g[..4].copy_from_slice(&[0x53, 0x57, 1, 1]); // our magic, version, kind: gets past the first checks
        }
        garbage.push(g);
    }
    // A well-formed contribution for a job nobody joined, and one from a worker outside the job.
    let mut foreign = vec![0u8; 32];
    PacketRepr { job: 999, ..PacketRepr::control(Kind::Contribution, 999, 0, 0) }.emit(&mut foreign);
    let mut outside = vec![0u8; 32];
    PacketRepr::control(Kind::Contribution, 4, 7, 0).emit(&mut outside);
    garbage.push(foreign);
    garbage.push(outside);
    for g in garbage {
        sim.send((j, 0), AGENT, g.clone());
        sim.send(AGENT, (j, 1), g); // and at an endpoint
        sim.drive_bounded(2);
    }
    assert!(sim.drive_bounded(1_000_000));
    assert_eq!(sim.results(j)[0], reference_sum(&refs(&data), 16).unwrap());
    let stats = sim.agent.stats();
    assert!(stats.malformed > 250, "{stats:?}");
    assert_eq!(stats.unknown_job, 1);
    assert_eq!(sim.agent.job_stats(4).unwrap().invalid, 1);
    assert!(sim.jobs[j][1].stats().ignored >= 300);
}

#[test]
fn edge_lengths_and_repeated_operations() {
    let params = JobParams { workers: 2, slots: 3, values: 8 };
    let mut sim = Sim::new(31, Faults { drop: 0.1, duplicate: 0.0, reorder: 0.0 });
    let j = sim.add_job(5, params);
    for len in [0usize, 1, 7, 8, 9, 24, 25, 100] {
        let data = inputs(&mut sim.rng, 2, len, 8);
        let out = sim.all_reduce(j, &data);
        assert_eq!(out[0], reference_sum(&refs(&data), 8).unwrap(), "length {len}");
    }
    // Zeros everywhere: exponent "none", exact zeros back.
    let zeros = vec![vec![0f32; 20], vec![-0f32; 20]];
    assert!(sim.all_reduce(j, &zeros)[0].iter().all(|&x| x == 0.0));
}

#[test]
fn refused_joins_and_bad_inputs_are_errors() {
    let mut sim = Sim::new(41, Faults::default());
    let a = sim.add_job(6, JobParams { workers: 2, slots: 4, values: 16 });
    // Same job id, other pool size.
    let b = sim.add_job(6, JobParams { workers: 2, slots: 8, values: 16 });
    // Too large a packet for the agent.
    let c = sim.add_job(7, JobParams { workers: 1, slots: 4, values: 4096 });
    assert!(sim.drive_bounded(100_000));
    assert!(sim.jobs[a].iter().all(Endpoint::is_joined));
    for e in &sim.jobs[b] {
        assert_eq!(e.error(), Some(&EndpointError::Refused { job: 6, reason: RefuseReason::JobMismatch }));
    }
    assert_eq!(sim.jobs[c][0].error(), Some(&EndpointError::Refused { job: 7, reason: RefuseReason::Limits }));
    let e = &mut sim.jobs[a][0];
    assert!(matches!(e.start(&[1.0, f32::NAN]), Err(EndpointError::NonFinite { index: 1, .. })));
    e.start(&[1.0]).unwrap();
    assert_eq!(e.start(&[1.0]), Err(EndpointError::Busy));
}

#[test]
fn jobs_are_removed_when_every_worker_left() {
    let mut sim = Sim::new(51, Faults { drop: 0.2, duplicate: 0.0, reorder: 0.0 });
    let j = sim.add_job(8, JobParams { workers: 2, slots: 2, values: 4 });
    sim.all_reduce(j, &[vec![1.0; 9], vec![2.0; 9]]);
    sim.jobs[j][0].leave();
    assert!(sim.drive_bounded(100_000));
    assert!(sim.agent.job_stats(8).is_some(), "one worker is still in");
    sim.jobs[j][1].leave();
    assert!(sim.drive_bounded(100_000));
    assert!(sim.jobs[j].iter().all(Endpoint::has_left));
    assert!(sim.agent.job_stats(8).is_none());
}

#[test]
fn an_overflowing_sum_is_reported_not_wrapped() {
    // A worker that ignores the agreed exponent: two contributions of i32::MAX / 2 + 1.
    let mut agent: Agent<u8> = Agent::new(AgentConfig::default());
    let mut buf = vec![0u8; 256];
    let params = [2, 1, 1];
    for w in 0..2u16 {
        let len = PacketRepr::control(Kind::Join, 1, w, 3).emit_with(&mut buf, &params);
        agent.handle_datagram(w as u8, &buf[..len]).unwrap();
    }
    while agent.poll_transmit(&mut buf).is_some() {}
    for w in 0..2u16 {
        let repr = PacketRepr {
            kind: Kind::Contribution,
            job: 1,
            worker: w,
            slot: SlotId::for_round(0, 0),
            round: 0,
            offset: 0,
            count: 1,
            exponent: 0,
            next_exponent: 0,
            flags: 0,
        };
        let len = repr.emit_with(&mut buf, &[i32::MAX / 2 + 1]);
        agent.handle_datagram(w as u8, &buf[..len]).unwrap();
    }
    let (_, len) = agent.poll_transmit(&mut buf).unwrap();
    let p = paramserv_switch::proto::packet::Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!(p.flags() & paramserv_switch::proto::packet::FLAG_OVERFLOW, 1);
    assert_eq!(agent.job_stats(1).unwrap().overflows, 1);
    let _ = fixed::MAX_WORKERS;
}

#[test]
fn an_agent_exponent_below_the_workers_own_fails_the_operation() {
    // One worker, talking to a faulty "agent" that answers the exponent round with a lower
    // exponent than the worker announced.
    let params = JobParams { workers: 1, slots: 1, values: 4 };
    let mut e = Endpoint::new(EndpointConfig::new(1, 0, params)).unwrap();
    let now = Instant::now();
    let mut buf = vec![0u8; 256];
    let len = e.poll_transmit(now, &mut buf).unwrap(); // join
    assert_eq!(paramserv_switch::proto::packet::Packet::new_checked(&buf[..len]).unwrap().kind(), Kind::Join);
    let ack = PacketRepr::control(Kind::JoinAck, 1, 0, 3).emit_with(&mut buf, &[1, 1, 4]);
    let ack = buf[..ack].to_vec();
    e.handle_datagram(now, &ack);
    e.start(&[1000.0, 1.0, 2.0, 3.0]).unwrap();
    let len = e.poll_transmit(now, &mut buf).unwrap();
    let p = paramserv_switch::proto::packet::Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!(p.next_exponent(), 9, "1000 < 2^10");
    let mut bad = PacketRepr::parse(&p);
    bad.kind = Kind::Result;
    bad.next_exponent = 3;
    let len = bad.emit_with(&mut buf, &[]);
    let bad = buf[..len].to_vec();
    e.handle_datagram(now, &bad);
    assert!(e.is_idle());
    assert_eq!(e.finish().unwrap().unwrap_err(), EndpointError::BadExponent { offset: 0 });
}

#[test]
fn a_job_freed_and_joined_again_with_a_smaller_pool_in_one_batch_does_not_crash_the_agent() {
    // A round completes in slot 7 (its results queued), the job is freed and joined again with
    // one slot, all before the agent's output is polled.
    let mut agent: Agent<u8> = Agent::new(AgentConfig::default());
    let mut buf = vec![0u8; 4096];
    let join = |buf: &mut Vec<u8>, slots: i32| {
        let len = PacketRepr::control(Kind::Join, 1, 0, 3).emit_with(buf, &[1, slots, 4]);
        buf[..len].to_vec()
    };
    let first = join(&mut buf, 8);
    agent.handle_datagram(0, &first).unwrap();
    let repr = PacketRepr {
        kind: Kind::Contribution,
        job: 1,
        worker: 0,
        slot: SlotId::for_round(7, 0),
        round: 0,
        offset: 0,
        count: 0,
        exponent: paramserv_switch::proto::packet::EXPONENT_NONE,
        next_exponent: 0,
        flags: 0,
    };
    let len = repr.emit_with(&mut buf, &[]);
    let contribution = buf[..len].to_vec();
    agent.handle_datagram(0, &contribution).unwrap();
    let len = PacketRepr::control(Kind::Leave, 1, 0, 0).emit_with(&mut buf, &[]);
    let leave = buf[..len].to_vec();
    agent.handle_datagram(0, &leave).unwrap();
    let second = join(&mut buf, 1);
    agent.handle_datagram(0, &second).unwrap();
    let mut kinds = Vec::new();
    while let Some((_, len)) = agent.poll_transmit(&mut buf) {
        kinds.push(paramserv_switch::proto::packet::Packet::new_checked(&buf[..len]).unwrap().kind());
    }
    assert_eq!(kinds, [Kind::JoinAck, Kind::LeaveAck, Kind::JoinAck], "the stale result is not sent");
}

#[test]
fn new_worker_incarnations_restart_a_job_that_was_never_left() {
    // A run that stopped without leaving leaves its job on the agent, its slots at round > 0. New
    // endpoints (new sessions) for the same job start at round 0: their joins restart the rounds.
    let params = JobParams { workers: 2, slots: 4, values: 8 };
    let mut sim = Sim::new(61, Faults { drop: 0.05, duplicate: 0.02, reorder: 0.02 });
    let j = sim.add_job(9, params);
    let data = inputs(&mut sim.rng, 2, 8 * 10, 8);
    sim.all_reduce(j, &data);
    sim.all_reduce(j, &data);
    sim.jobs[j] = (0..2)
        .map(|w| {
            let mut c = EndpointConfig::new(9, w, params);
            c.initial_rto = Duration::from_micros(200);
            c.min_rto = Duration::from_micros(100);
            c.max_rto = Duration::from_millis(5);
            c.session = 7;
            Endpoint::new(c).unwrap()
        })
        .collect();
    let out = sim.all_reduce(j, &data);
    assert_eq!(out[0], reference_sum(&refs(&data), 8).unwrap());
    assert!(sim.agent.job_stats(9).unwrap().restarts >= 1);
}

#[test]
fn an_abandoned_operation_fails_later_starts_with_a_clear_error() {
    let params = JobParams { workers: 2, slots: 2, values: 4 };
    let mut sim = Sim::new(71, Faults::default());
    let j = sim.add_job(12, params);
    assert!(sim.drive_bounded(10_000));
    let e = &mut sim.jobs[j][0];
    e.start(&[1.0; 10]).unwrap();
    assert_eq!(e.start(&[1.0; 10]), Err(EndpointError::Busy));
    // Worker 1 never starts: worker 0's caller gives up.
    e.abandon();
    assert!(e.is_idle() && e.poll_timeout().is_none());
    assert_eq!(e.start(&[1.0; 10]), Err(EndpointError::Abandoned));
}
