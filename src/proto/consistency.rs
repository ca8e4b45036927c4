//! Update strategies: when a push is applied and when a pull may be answered.
//!
//! Workers count steps from 0. In step `t` a worker pulls (tagged `t`), computes, pushes (tagged
//! `t`), waits until every server acknowledged its pushes, and then reports "step `t` done" to the
//! coordinator. Two state machines turn those reports into decisions:
//!
//! - [`ClockTable`] (on the coordinator) keeps every worker's clock and decides, once, what a
//!   finished step means: under BSP and SSP it tracks `complete`, the number of steps every worker
//!   has finished; under backup workers it admits the first N reports of the open step and
//!   commits the step with exactly those workers.
//! - [`Gate`] (on every server) buffers or applies pushes and serves or holds pulls, from the
//!   steps tagged on them and the [`ClockEvent`]s the coordinator broadcasts.
//!
//! | strategy | a push tagged `t` | a pull tagged `t` is answered when |
//! |---|---|---|
//! | `asp` | applied on arrival | at once |
//! | `bsp` | buffered; all pushes of step `t` applied together once every worker finished `t` | every worker finished step `t - 1` (`complete >= t`): it sees every update of steps `< t` and nothing later |
//! | `ssp:S` | applied on arrival | the slowest worker finished step `t - S - 1` (`complete >= t - S`) (Ho et al., NeurIPS'13) |
//! | `backup:B` | buffered; applied if the worker is among the first N = workers - B to finish step `t`, dropped (and counted) otherwise (Abadi et al., OSDI'16) | step `t - 1` is committed |
//! | `hogwild` | workers are threads of the server's process writing shared rows without locks (see [`crate::server`]) | at once |
//!
//! Why the order is safe: a worker reports a step only after its pushes for it were acknowledged,
//! so a server has every push of a step (applied or buffered) before the coordinator's broadcast
//! about that step can arrive. Pulls and pushes that carry no step (evaluation reads, tools) are
//! not gated.
//!
//! Poll order on a [`Gate`], after every input: drain [`Gate::poll_apply`] (apply each batch, in
//! order), then [`Gate::poll_serve`] (answer each pull), so a released pull sees the batches
//! committed before it.
//!
//! Refuses: IO, clocks and threads; both machines are driven by their callers.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

/// How updates from many workers are combined.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Consistency {
    /// Asynchronous: every push applied on arrival, every pull answered at once.
    #[default]
    Asp,
    /// Bulk synchronous: steps applied whole, reads see exactly the finished steps.
    Bsp,
    /// Stale synchronous: a worker may run at most `staleness` steps ahead of the slowest.
    Ssp {
        /// S, the number of steps a worker may be ahead.
        staleness: u32,
    },
    /// Synchronous with backup workers: each step takes the first workers - B reports.
    Backup {
        /// B, the number of backup workers.
        backups: u32,
    },
    /// Lock-free shared-memory updates by threads of one process (Recht et al., NeurIPS'11).
    Hogwild,
}

impl Consistency {
    /// Whether pulls and pushes carry steps and workers report them.
    pub fn is_gated(&self) -> bool {
        matches!(self, Self::Bsp | Self::Ssp { .. } | Self::Backup { .. })
    }

    /// Checks the strategy against the job's worker count.
    pub fn check(&self, workers: u32) -> Result<(), String> {
        match *self {
            Self::Backup { backups } if backups >= workers => Err(format!(
                "--consistency backup:{backups} needs fewer backup workers than workers (B < N+B = {workers}); \
                 valid: backup:0 to backup:{}",
                workers.saturating_sub(1)
            )),
            _ => Ok(()),
        }
    }

    /// Reports needed to finish a step: all workers, or all but the backups.
    pub fn quorum(&self, workers: u32) -> u32 {
        match *self {
            Self::Backup { backups } => workers.saturating_sub(backups),
            _ => workers,
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Asp => f.write_str("asp"),
            Self::Bsp => f.write_str("bsp"),
            Self::Ssp { staleness } => write!(f, "ssp:{staleness}"),
            Self::Backup { backups } => write!(f, "backup:{backups}"),
            Self::Hogwild => f.write_str("hogwild"),
        }
    }
}

impl FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let count = |what: &str, example: &str| -> Result<u32, String> {
            let a = arg.ok_or_else(|| format!("--consistency {name} needs {what}, e.g. {example}"))?;
            a.trim().parse::<u32>().map_err(|_| {
                format!("--consistency {s}: {what} must be a whole number >= 0 (0 to {}), e.g. {example}", u32::MAX)
            })
        };
        let plain = |c: Self| match arg {
            None => Ok(c),
            Some(_) => Err(format!("--consistency {name} takes no argument (got '{s}')")),
        };
        match name {
            "asp" => plain(Self::Asp),
            "bsp" => plain(Self::Bsp),
            "hogwild" => plain(Self::Hogwild),
            "ssp" => Ok(Self::Ssp { staleness: count("a staleness bound S", "ssp:3")? }),
            "backup" => Ok(Self::Backup { backups: count("a number of backup workers B", "backup:1")? }),
            _ => Err(format!("unknown consistency '{s}' (expected asp, bsp, ssp:S, backup:B or hogwild)")),
        }
    }
}

serde_as_string!(Consistency);

/// The coordinator's answer to a worker that finished a step.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct ClockAck {
    /// The step the worker works on next.
    pub next_step: u64,
    /// Whether the finished step's pushes count (false: late under backup workers, dropped).
    pub admitted: bool,
}

/// What servers must learn about finished steps.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ClockEvent {
    /// Every live worker has finished steps `0..complete` (BSP, SSP).
    Progress {
        /// Steps every worker has finished.
        complete: u64,
    },
    /// Step `step` is committed with the pushes of exactly these workers (backup workers).
    Commit {
        /// The step.
        step: u64,
        /// Workers whose pushes count, in the order they finished.
        workers: Vec<u32>,
    },
}

/// Every worker's clock, on the coordinator. See the module docs.
#[derive(Debug)]
pub struct ClockTable {
    mode: Consistency,
    quorum: u32,
    clocks: Vec<u64>,
    gone: Vec<bool>,
    complete: u64,
    /// Backup workers: the open step and who finished it so far.
    open: u64,
    admitted: Vec<u32>,
    events: VecDeque<ClockEvent>,
}

impl ClockTable {
    /// A table for `workers` workers under `mode` (which must have passed [`Consistency::check`]).
    pub fn new(mode: Consistency, workers: u32) -> Self {
        Self {
            mode,
            quorum: mode.quorum(workers),
            clocks: vec![0; workers as usize],
            gone: vec![false; workers as usize],
            complete: 0,
            open: 0,
            admitted: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// Worker `worker` finished step `step`. `Err` is a protocol violation.
    pub fn handle_clock(&mut self, worker: u32, step: u64) -> Result<ClockAck, String> {
        let w = worker as usize;
        if w >= self.clocks.len() || self.gone[w] {
            return Err(format!("step report from worker {worker}, which is not a live worker of this job"));
        }
        match self.mode {
            Consistency::Backup { .. } => {
                if step < self.open {
                    // Late: step `step` was committed without this worker; it continues at the
                    // open step with fresh parameters.
                    self.clocks[w] = self.open;
                    return Ok(ClockAck { next_step: self.open, admitted: false });
                }
                if step > self.open {
                    return Err(format!(
                        "worker {worker} reported step {step} while step {} is open (it must pull before each step)",
                        self.open
                    ));
                }
                if self.admitted.contains(&worker) {
                    return Err(format!("worker {worker} reported step {step} twice"));
                }
                self.admitted.push(worker);
                self.clocks[w] = step + 1;
                if self.admitted.len() as u32 >= self.quorum {
                    self.commit_open();
                }
                Ok(ClockAck { next_step: step + 1, admitted: true })
            }
            _ => {
                if step != self.clocks[w] {
                    return Err(format!(
                        "worker {worker} reported step {step} but is at step {} (steps are reported in order)",
                        self.clocks[w]
                    ));
                }
                self.clocks[w] = step + 1;
                self.advance();
                Ok(ClockAck { next_step: step + 1, admitted: true })
            }
        }
    }

    /// Worker `worker` is gone. Backup workers tolerate losing up to B workers; the other
    /// strategies cannot finish a step without it (`Err` says why).
    pub fn handle_gone(&mut self, worker: u32) -> Result<(), String> {
        let w = worker as usize;
        if w >= self.gone.len() || std::mem::replace(&mut self.gone[w], true) {
            return Ok(());
        }
        match self.mode {
            Consistency::Backup { backups } => {
                let live = self.gone.iter().filter(|g| !**g).count() as u32;
                if live < self.quorum {
                    return Err(format!(
                        "{} of {} workers are gone; backup:{backups} tolerates at most {backups}",
                        self.gone.len() as u32 - live,
                        self.gone.len()
                    ));
                }
                self.admitted.retain(|a| *a != worker);
                Ok(())
            }
            _ => Err(format!("under {} every worker must finish every step", self.mode)),
        }
    }

    /// Whether `worker` is gone.
    pub fn is_gone(&self, worker: u32) -> bool {
        self.gone.get(worker as usize).copied().unwrap_or(true)
    }

    /// The next event to broadcast to every server.
    pub fn poll_event(&mut self) -> Option<ClockEvent> {
        self.events.pop_front()
    }

    fn commit_open(&mut self) {
        let workers = std::mem::take(&mut self.admitted);
        self.events.push_back(ClockEvent::Commit { step: self.open, workers });
        self.open += 1;
    }

    fn advance(&mut self) {
        let min = self.clocks.iter().zip(&self.gone).filter(|(_, g)| !**g).map(|(c, _)| *c).min();
        if let Some(min) = min
            && min > self.complete
        {
            self.complete = min;
            self.events.push_back(ClockEvent::Progress { complete: min });
        }
    }
}

/// What a server does with a push.
#[derive(Debug, Eq, PartialEq)]
pub enum PushDecision<P> {
    /// Apply it now.
    Apply(P),
    /// Held until its step is committed (acknowledge it now).
    Buffered,
    /// Its step was committed without it: dropped and counted (acknowledge it now).
    Dropped,
}

/// A push or pull the gate cannot accept.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum GateError {
    /// Under BSP a push for a step every worker already finished: a worker broke the protocol.
    #[error("push for step {step} arrived after every worker finished it (bsp)")]
    Late {
        /// The push's step.
        step: u64,
    },
    /// Events arrived out of order.
    #[error("{0}")]
    Order(String),
}

/// One committed step's pushes, to be applied together.
#[derive(Debug, PartialEq)]
pub struct Batch<P> {
    /// The pushes, in arrival order.
    pub pushes: Vec<P>,
    /// Factor for the summed gradients: `workers / counted` under backup workers, so a step that
    /// counts N of N+B workers moves the model as far as one that counts all (Chen et al., 2016,
    /// "Revisiting distributed synchronous SGD"); 1 otherwise.
    pub scale: f32,
}

/// A server's side of the strategy. `P` is a buffered push, `Q` a held pull; see the module docs
/// for the poll order.
#[derive(Debug)]
pub struct Gate<P, Q> {
    mode: Consistency,
    workers: u32,
    complete: u64,
    committed: u64,
    pending: BTreeMap<u64, Vec<(u32, P)>>,
    held: Vec<(u64, Q)>,
    apply: VecDeque<Batch<P>>,
    serve: VecDeque<Q>,
    dropped: u64,
}

impl<P, Q> Gate<P, Q> {
    /// A gate for `mode` in a job of `workers` workers.
    pub fn new(mode: Consistency, workers: u32) -> Self {
        Self {
            mode,
            workers,
            complete: 0,
            committed: 0,
            pending: BTreeMap::new(),
            held: Vec::new(),
            apply: VecDeque::new(),
            serve: VecDeque::new(),
            dropped: 0,
        }
    }

    /// A push from `worker` tagged `step` (`None`: not part of a step, applied at once).
    pub fn handle_push(&mut self, worker: u32, step: Option<u64>, push: P) -> Result<PushDecision<P>, GateError> {
        let Some(step) = step else { return Ok(PushDecision::Apply(push)) };
        match self.mode {
            Consistency::Asp | Consistency::Hogwild | Consistency::Ssp { .. } => Ok(PushDecision::Apply(push)),
            Consistency::Bsp => {
                if step < self.complete {
                    return Err(GateError::Late { step });
                }
                self.pending.entry(step).or_default().push((worker, push));
                Ok(PushDecision::Buffered)
            }
            Consistency::Backup { .. } => {
                if step < self.committed {
                    self.dropped += 1;
                    return Ok(PushDecision::Dropped);
                }
                self.pending.entry(step).or_default().push((worker, push));
                Ok(PushDecision::Buffered)
            }
        }
    }

    /// A pull tagged `step`; `Some` means answer it now, `None` that it is held.
    pub fn handle_pull(&mut self, step: Option<u64>, pull: Q) -> Option<Q> {
        match step {
            Some(step) if !self.allows(step) => {
                self.held.push((step, pull));
                None
            }
            _ => Some(pull),
        }
    }

    /// The coordinator's broadcast.
    pub fn handle_event(&mut self, event: ClockEvent) -> Result<(), GateError> {
        match event {
            ClockEvent::Progress { complete } => {
                if complete <= self.complete {
                    return Ok(());
                }
                if self.mode == Consistency::Bsp {
                    let later = self.pending.split_off(&complete);
                    for (_, batch) in std::mem::replace(&mut self.pending, later) {
                        self.apply.push_back(Batch { pushes: batch.into_iter().map(|(_, p)| p).collect(), scale: 1.0 });
                    }
                }
                self.complete = complete;
            }
            ClockEvent::Commit { step, workers } => {
                if step != self.committed {
                    return Err(GateError::Order(format!(
                        "commit of step {step} arrived while step {} is open",
                        self.committed
                    )));
                }
                let batch = self.pending.remove(&step).unwrap_or_default();
                let mut keep = Vec::with_capacity(batch.len());
                for (w, p) in batch {
                    if workers.contains(&w) {
                        keep.push(p);
                    } else {
                        self.dropped += 1;
                    }
                }
                let scale = if workers.is_empty() { 1.0 } else { self.workers as f32 / workers.len() as f32 };
                self.apply.push_back(Batch { pushes: keep, scale });
                self.committed = step + 1;
            }
        }
        let held = std::mem::take(&mut self.held);
        for (step, pull) in held {
            if self.allows(step) {
                self.serve.push_back(pull);
            } else {
                self.held.push((step, pull));
            }
        }
        Ok(())
    }

    /// The next batch of pushes to apply together (one step's), in step order.
    pub fn poll_apply(&mut self) -> Option<Batch<P>> {
        self.apply.pop_front()
    }

    /// The next held pull that may now be answered.
    pub fn poll_serve(&mut self) -> Option<Q> {
        self.serve.pop_front()
    }

    /// Pushes dropped so far (backup workers).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Pulls held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn allows(&self, step: u64) -> bool {
        match self.mode {
            Consistency::Asp | Consistency::Hogwild => true,
            Consistency::Bsp => self.complete >= step,
            Consistency::Ssp { staleness } => self.complete.saturating_add(u64::from(staleness)) >= step,
            Consistency::Backup { .. } => self.committed >= step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn strategies_parse_and_print() {
        for (s, c) in [
            ("asp", Consistency::Asp),
            ("bsp", Consistency::Bsp),
            ("ssp:3", Consistency::Ssp { staleness: 3 }),
            ("ssp:0", Consistency::Ssp { staleness: 0 }),
            ("backup:1", Consistency::Backup { backups: 1 }),
            ("hogwild", Consistency::Hogwild),
        ] {
            assert_eq!(s.parse::<Consistency>(), Ok(c));
            assert_eq!(c.to_string(), s);
        }
        for (bad, says) in [
            ("ssp", "needs a staleness bound"),
            ("ssp:-1", "whole number >= 0"),
            ("ssp:x", "whole number >= 0"),
            ("backup", "needs a number of backup workers"),
            ("bsp:2", "takes no argument"),
            ("eventual", "expected asp, bsp, ssp:S, backup:B or hogwild"),
        ] {
            let err = bad.parse::<Consistency>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = Consistency::Backup { backups: 8 }.check(8).unwrap_err();
        assert!(err.contains("backup:0 to backup:7"), "{err}");
        assert!(Consistency::Backup { backups: 7 }.check(8).is_ok());
    }

    #[test]
    fn bsp_applies_a_step_whole_and_serves_the_next_step_after_it() {
        let mut table = ClockTable::new(Consistency::Bsp, 2);
        let mut gate: Gate<&str, &str> = Gate::new(Consistency::Bsp, 2);
        assert_eq!(gate.handle_pull(Some(0), "pull w0 s0"), Some("pull w0 s0"), "step 0 reads the initial model");
        assert_eq!(gate.handle_push(0, Some(0), "push w0 s0"), Ok(PushDecision::Buffered));
        table.handle_clock(0, 0).unwrap();
        assert_eq!(table.poll_event(), None, "worker 1 has not finished step 0");
        assert_eq!(gate.handle_pull(Some(1), "pull w0 s1"), None, "held until step 0 is complete");
        assert_eq!(gate.handle_push(1, Some(0), "push w1 s0"), Ok(PushDecision::Buffered));
        table.handle_clock(1, 0).unwrap();
        let event = table.poll_event().unwrap();
        assert_eq!(event, ClockEvent::Progress { complete: 1 });
        gate.handle_event(event).unwrap();
        assert_eq!(gate.poll_apply(), Some(Batch { pushes: vec!["push w0 s0", "push w1 s0"], scale: 1.0 }));
        assert_eq!(gate.poll_serve(), Some("pull w0 s1"));
        assert_eq!(gate.handle_push(0, Some(0), "late"), Err(GateError::Late { step: 0 }));
    }

    #[test]
    fn backup_commits_with_the_first_n_and_drops_the_rest() {
        let mut table = ClockTable::new(Consistency::Backup { backups: 1 }, 3);
        let mut gate: Gate<u32, &str> = Gate::new(Consistency::Backup { backups: 1 }, 3);
        for w in 0..3 {
            assert_eq!(gate.handle_push(w, Some(0), w), Ok(PushDecision::Buffered));
        }
        assert_eq!(table.handle_clock(2, 0), Ok(ClockAck { next_step: 1, admitted: true }));
        assert_eq!(table.handle_clock(0, 0), Ok(ClockAck { next_step: 1, admitted: true }));
        let commit = table.poll_event().unwrap();
        assert_eq!(commit, ClockEvent::Commit { step: 0, workers: vec![2, 0] });
        assert_eq!(table.handle_clock(1, 0), Ok(ClockAck { next_step: 1, admitted: false }), "late");
        gate.handle_event(commit).unwrap();
        assert_eq!(
            gate.poll_apply(),
            Some(Batch { pushes: vec![0, 2], scale: 1.5 }),
            "pushes of admitted workers, in arrival order, weighed as a full step"
        );
        assert_eq!(gate.dropped(), 1);
        assert_eq!(gate.handle_push(1, Some(0), 1), Ok(PushDecision::Dropped), "a push for a committed step");
        assert_eq!(gate.dropped(), 2);
        // Losing one worker is tolerated, losing two is not.
        assert!(table.handle_gone(1).is_ok());
        assert!(table.handle_gone(0).unwrap_err().contains("tolerates at most 1"));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut t = ClockTable::new(Consistency::Ssp { staleness: 1 }, 2);
        assert!(t.handle_clock(0, 1).unwrap_err().contains("is at step 0"));
        assert!(t.handle_clock(7, 0).unwrap_err().contains("not a live worker"));
        assert!(t.handle_gone(1).unwrap_err().contains("every worker must finish"));
        let mut b = ClockTable::new(Consistency::Backup { backups: 1 }, 3);
        assert!(b.handle_clock(0, 3).unwrap_err().contains("while step 0 is open"));
        b.handle_clock(0, 0).unwrap();
        assert!(b.handle_clock(0, 0).unwrap_err().contains("twice"));
        let mut g: Gate<(), ()> = Gate::new(Consistency::Backup { backups: 1 }, 3);
        assert!(g.handle_event(ClockEvent::Commit { step: 4, workers: vec![] }).is_err());
    }

    /// A simulated cluster: `n` workers, one server gate, the coordinator's clock table, and a
    /// seeded scheduler that delivers each worker's next message and the coordinator's broadcasts
    /// in random interleavings. Every served pull checks the strategy's read guarantee.
    struct Sim {
        mode: Consistency,
        table: ClockTable,
        gate: Gate<(u32, u64), (u32, u64)>,
        /// Per worker: where it is in its step.
        workers: Vec<Phase>,
        steps: u64,
        /// Broadcasts not yet delivered to the server (FIFO, as on one connection).
        in_flight: VecDeque<ClockEvent>,
        applied: HashSet<(u32, u64)>,
        admitted: HashSet<(u32, u64)>,
        all_pushes: HashSet<(u32, u64)>,
        reads: u64,
    }

    #[derive(Clone, Copy, Debug, Eq, PartialEq)]
    enum Phase {
        /// Will send a pull for this step.
        Pull(u64),
        /// Pull held at the server.
        Waiting(u64),
        /// Will push (after computing) for this step.
        Push(u64),
        /// Will report this step to the coordinator.
        Clock(u64),
        Done,
    }

    impl Sim {
        fn new(mode: Consistency, n: u32, steps: u64) -> Self {
            Self {
                mode,
                table: ClockTable::new(mode, n),
                gate: Gate::new(mode, n),
                workers: vec![Phase::Pull(0); n as usize],
                steps,
                in_flight: VecDeque::new(),
                applied: HashSet::new(),
                admitted: HashSet::new(),
                all_pushes: HashSet::new(),
                reads: 0,
            }
        }

        /// Actions that can happen now: worker i's next message, or the next broadcast.
        fn enabled(&self) -> Vec<usize> {
            let mut e: Vec<usize> = (0..self.workers.len())
                .filter(|&i| matches!(self.workers[i], Phase::Pull(_) | Phase::Push(_) | Phase::Clock(_)))
                .collect();
            if !self.in_flight.is_empty() {
                e.push(usize::MAX);
            }
            e
        }

        fn step(&mut self, pick: usize) -> Result<(), TestCaseError> {
            if pick == usize::MAX {
                let ev = self.in_flight.pop_front().expect("enabled only when non-empty");
                self.gate.handle_event(ev).map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.drain()?;
                return Ok(());
            }
            let w = pick as u32;
            match self.workers[pick] {
                Phase::Pull(t) => match self.gate.handle_pull(Some(t), (w, t)) {
                    Some(p) => self.serve(p)?,
                    None => self.workers[pick] = Phase::Waiting(t),
                },
                Phase::Push(t) => {
                    self.all_pushes.insert((w, t));
                    match self.gate.handle_push(w, Some(t), (w, t)).map_err(|e| TestCaseError::fail(e.to_string()))? {
                        PushDecision::Apply(p) => {
                            self.applied.insert(p);
                        }
                        PushDecision::Buffered | PushDecision::Dropped => {}
                    }
                    self.workers[pick] = Phase::Clock(t);
                }
                Phase::Clock(t) => {
                    let ack = self.table.handle_clock(w, t).map_err(TestCaseError::fail)?;
                    if ack.admitted {
                        self.admitted.insert((w, t));
                    }
                    while let Some(ev) = self.table.poll_event() {
                        self.in_flight.push_back(ev);
                    }
                    self.workers[pick] =
                        if ack.next_step >= self.steps { Phase::Done } else { Phase::Pull(ack.next_step) };
                }
                Phase::Waiting(_) | Phase::Done => unreachable!("not enabled"),
            }
            Ok(())
        }

        fn drain(&mut self) -> Result<(), TestCaseError> {
            while let Some(batch) = self.gate.poll_apply() {
                for p in batch.pushes {
                    prop_assert!(self.applied.insert(p), "push {p:?} applied twice");
                }
            }
            while let Some(p) = self.gate.poll_serve() {
                self.serve(p)?;
            }
            Ok(())
        }

        /// A pull (w, t) is answered now: check what the reader sees.
        fn serve(&mut self, (w, t): (u32, u64)) -> Result<(), TestCaseError> {
            self.reads += 1;
            let n = self.workers.len() as u32;
            match self.mode {
                Consistency::Bsp => {
                    // Every update of steps < t, and nothing later: no partial clock.
                    let want: HashSet<(u32, u64)> = (0..n).flat_map(|v| (0..t).map(move |s| (v, s))).collect();
                    prop_assert_eq!(&self.applied, &want, "bsp read of worker {} at step {}", w, t);
                }
                Consistency::Ssp { staleness } => {
                    // Every update of steps <= t - S - 1, i.e. of steps < t - S.
                    let bound = t.saturating_sub(u64::from(staleness));
                    for v in 0..n {
                        for s in 0..bound {
                            prop_assert!(
                                self.applied.contains(&(v, s)),
                                "ssp:{} read of worker {} at step {} misses ({}, {})",
                                staleness,
                                w,
                                t,
                                v,
                                s
                            );
                        }
                    }
                }
                Consistency::Backup { .. } => {
                    for p in &self.applied {
                        prop_assert!(self.admitted.contains(p), "late push {p:?} was applied");
                    }
                }
                Consistency::Asp | Consistency::Hogwild => {}
            }
            self.workers[w as usize] = Phase::Push(t);
            Ok(())
        }
    }

    fn run(mode: Consistency, n: u32, steps: u64, schedule: &[usize]) -> Result<Sim, TestCaseError> {
        let mut sim = Sim::new(mode, n, steps);
        // Bounded: each action moves a worker or delivers a broadcast; a livelock fails the test.
        for i in 0..(n as usize * steps as usize * 8 + 64) {
            let enabled = sim.enabled();
            if enabled.is_empty() {
                break;
            }
            let pick = enabled[schedule[i % schedule.len()] % enabled.len()];
            sim.step(pick)?;
        }
        prop_assert!(sim.enabled().is_empty(), "the cluster never went idle");
        Ok(sim)
    }

    fn modes() -> impl Strategy<Value = Consistency> {
        prop_oneof![
            Just(Consistency::Bsp),
            (0u32..4).prop_map(|staleness| Consistency::Ssp { staleness }),
            (0u32..3).prop_map(|backups| Consistency::Backup { backups }),
            Just(Consistency::Asp),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn random_interleavings_keep_every_guarantee_and_finish(
            mode in modes(),
            n in 3u32..6,
            steps in 1u64..8,
            schedule in prop::collection::vec(any::<usize>(), 1..64),
        ) {
            let sim = run(mode, n, steps, &schedule)?;
            prop_assert!(sim.workers.iter().all(|p| *p == Phase::Done), "every worker finishes: {:?}", sim.workers);
            prop_assert!(sim.reads >= u64::from(n), "every worker read at least once");
            match mode {
                Consistency::Backup { backups } => {
                    // Every committed step took exactly the quorum; the rest were dropped.
                    let quorum = u64::from(n - backups);
                    let committed = sim.applied.iter().map(|(_, s)| *s).max().map_or(0, |s| s + 1);
                    prop_assert!(sim.applied.len() as u64 <= committed * quorum);
                    prop_assert_eq!(sim.gate.dropped() + sim.applied.len() as u64, sim.all_pushes.len() as u64 - pending_in(&sim));
                }
                Consistency::Bsp | Consistency::Ssp { .. } | Consistency::Asp => {
                    // Nothing is lost: every push of a finished step is applied (BSP applies the
                    // last step once its progress is delivered, which the run does).
                    prop_assert_eq!(&sim.applied, &sim.all_pushes);
                }
                Consistency::Hogwild => {}
            }
        }
    }

    /// Pushes still buffered for a step not yet committed at the end of a backup run.
    fn pending_in(sim: &Sim) -> u64 {
        sim.gate.pending.values().map(|v| v.len() as u64).sum()
    }
}
