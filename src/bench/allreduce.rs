//! `paramserv bench allreduce`: all-reduce goodput through the switch agent or through the PS.
//!
//! - `--backend switch`: every worker is a thread with its own UDP socket and [`AllReduce`]
//!   client; the agent is started on its own thread (unless `--switch ADDR` names a running one).
//!   `--loss P` drops each datagram with probability P on every socket, agent and workers, so a
//!   round trip loses about 2P. The UDP sender/receiver pair the agent is measured against runs
//!   in the same process first (`--udp-baseline-seconds`, 0 to skip), on plain sockets unless
//!   `--udp-baseline-datapath` says otherwise.
//! - `--backend ps`: a local cluster (one server, `--transport`); each worker pushes its tensor to
//!   a dense table and, after a barrier, pulls the table: the sum of every worker's tensor.
//!
//! Goodput counts the tensor once per all-reduce per worker (`floats · 32 bits / seconds`), the
//! convention of SwitchML's benchmark. `verified` means every worker's result is bit-identical to
//! the fixed-point reference ([`reference_sum`]) for the switch, and within the error bound of
//! f32 addition of the f64 sum for the PS.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::ArgAction;
use clap::builder::BoolishValueParser;
use paramserv_switch::client::{AllReduce, ClientConfig};
use paramserv_switch::daemon::{DaemonConfig, SpawnedDaemon};
use paramserv_switch::datapath::{self, DatapathChoice, Faults, RecvBatch, SendBatch};
use paramserv_switch::proto::agent::{AgentConfig, JobParams};
use paramserv_switch::proto::fixed::{chunk_exponents, error_bound, reference_sum};

use crate::bench::BenchError;
use crate::cluster::local::LocalCluster;
use crate::server::table::{Init, TableSpec};
use crate::transport::Transport;
use crate::worker::{Values, Worker};

/// Which aggregation path `allreduce` measures.
#[derive(Clone, Copy, Debug, Eq, PartialEq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The emulated switch.
    Switch,
    /// The parameter server: push, barrier, pull.
    Ps,
}

/// Flags of `paramserv bench allreduce`.
#[derive(Clone, Debug, clap::Args)]
pub struct AllReduceArgs {
    /// Aggregation path.
    #[arg(long, default_value = "switch", value_enum)]
    pub backend: Backend,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Elements of the tensor each worker contributes.
    #[arg(long, default_value_t = 4_000_000)]
    pub floats: usize,
    /// Probability of dropping each datagram, on every socket (switch backend).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Values per packet (64 and 256 as in SwitchML; 2048 fills a 9000-byte jumbo frame; more
    /// on loopback only).
    #[arg(long, default_value_t = 256)]
    pub elems_per_packet: u16,
    /// Slots of the job's pool, each one packet in flight per worker.
    #[arg(long, default_value_t = 128)]
    pub slots: u16,
    /// A running agent to use instead of starting one.
    #[arg(long, value_name = "ADDR")]
    pub switch: Option<SocketAddr>,
    /// Socket implementation of the agent and the workers.
    #[arg(long, default_value = "auto")]
    pub datapath: DatapathChoice,
    /// Measured all-reduces (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds of the UDP sender/receiver baseline (switch backend; 0 skips it).
    #[arg(long, default_value_t = 1.0)]
    pub udp_baseline_seconds: f64,
    /// Socket implementation of the baseline pair: plain (one datagram per system call, the
    /// reference the agent is held to) or the agent's own (`auto`, `io_uring`, `mmsg`: batched,
    /// with segmentation offload).
    #[arg(long, default_value = "plain")]
    pub udp_baseline_datapath: DatapathChoice,
    /// PS transport (ps backend).
    #[arg(long, default_value = "tcp", value_enum)]
    pub transport: Transport,
    /// Job id on the agent.
    #[arg(long, default_value_t = 1)]
    pub job: u32,
    /// Seed of the inputs and the fault injectors.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long, action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// Result of `allreduce`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllReduceReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Aggregation path.
    pub backend: Backend,
    /// Socket implementation (switch backend).
    pub datapath: Option<String>,
    /// PS transport (ps backend).
    pub transport: Option<Transport>,
    /// Workers.
    pub workers: u16,
    /// Elements per worker.
    pub floats: usize,
    /// Values per packet (switch backend).
    pub elems_per_packet: u16,
    /// Slots (switch backend).
    pub slots: u16,
    /// Injected drop probability per datagram.
    pub loss: f64,
    /// Measured all-reduces.
    pub rounds: u32,
    /// Median seconds of one all-reduce (slowest worker).
    pub seconds: f64,
    /// Tensor bits per second of one worker.
    pub goodput_gbit_s: f64,
    /// Datagrams the agent received per second during the measured rounds (switch backend).
    pub agent_pps: Option<f64>,
    /// Datagrams the agent sent per second during the measured rounds (switch backend).
    pub agent_tx_pps: Option<f64>,
    /// Packets/s a UDP sender/receiver pair reached in this run (300-byte datagrams, batches of
    /// 64, `--udp-baseline-datapath`).
    pub udp_baseline_pps: Option<f64>,
    /// `agent_pps / udp_baseline_pps`.
    pub agent_vs_baseline: Option<f64>,
    /// Retransmissions by all workers during the measured rounds.
    pub retransmits: u64,
    /// Largest |result − f64 sum| over elements and workers.
    pub max_abs_error: f64,
    /// The documented bound at the element where the error was largest relative to its bound.
    pub error_bound: f64,
    /// Whether every worker's result matched the reference (see the module doc).
    pub verified: bool,
}

/// Runs `paramserv bench allreduce` (blocking: call from a blocking thread).
pub fn allreduce(args: &AllReduceArgs) -> Result<AllReduceReport, BenchError> {
    if args.workers == 0 || args.rounds == 0 || args.floats == 0 {
        return Err(BenchError::Args("--workers, --rounds and --floats must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&args.loss) {
        return Err(BenchError::Args(format!("--loss {} must be in [0, 1)", args.loss)));
    }
    let inputs = make_inputs(args.workers as usize, args.floats, args.seed);
    match args.backend {
        Backend::Switch => switch(args, &inputs),
        Backend::Ps => ps(args, &inputs),
    }
}

fn make_inputs(workers: usize, floats: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..workers)
        .map(|w| {
            let mut rng = crate::rng::SplitMix64::for_item(seed, w as u64);
            // Gradient-like magnitudes: uniform in ±0.01.
            (0..floats).map(|_| ((rng.next_f64() - 0.5) * 2e-2) as f32).collect()
        })
        .collect()
}

struct Accuracy {
    max_abs_error: f64,
    error_bound: f64,
}

/// Largest error against the f64 sum, and the bound where the error is tightest against it.
fn accuracy(inputs: &[Vec<f32>], out: &[f32], bound: impl Fn(usize, f64) -> f64) -> (Accuracy, bool) {
    let mut acc = Accuracy { max_abs_error: 0.0, error_bound: 0.0 };
    let (mut worst, mut within) = (-1.0f64, true);
    for (i, &o) in out.iter().enumerate() {
        let exact: f64 = inputs.iter().map(|x| f64::from(x[i])).sum();
        let err = (f64::from(o) - exact).abs();
        let b = bound(i, exact.abs());
        within &= err <= b;
        acc.max_abs_error = acc.max_abs_error.max(err);
        let rel = if b > 0.0 { err / b } else { err };
        if rel > worst {
            worst = rel;
            acc.error_bound = b;
        }
    }
    (acc, within)
}

fn switch(args: &AllReduceArgs, inputs: &[Vec<f32>]) -> Result<AllReduceReport, BenchError> {
    let io = |what: &str, e: std::io::Error| BenchError::Args(format!("{what}: {e}"));
    let faults = Faults { drop: args.loss, ..Faults::default() };
    let baseline = if args.udp_baseline_seconds > 0.0 {
        Some(
            udp_baseline(args.udp_baseline_datapath, Duration::from_secs_f64(args.udp_baseline_seconds))
                .map_err(|e| io("UDP baseline", e))?,
        )
    } else {
        None
    };
    let params = JobParams { workers: args.workers, slots: args.slots, values: args.elems_per_packet };
    let daemon = match args.switch {
        Some(_) => None,
        None => {
            let mut config = DaemonConfig::new("127.0.0.1:0".parse().expect("a valid address"));
            config.datapath = args.datapath;
            config.faults = faults;
            config.seed = args.seed ^ 0xa6e7;
            // The agent is this run's own: large enough for whatever job the flags ask for.
            let default = AgentConfig::default();
            config.agent = AgentConfig {
                max_slots: args.slots.max(default.max_slots),
                max_values: args.elems_per_packet.max(default.max_values),
                max_pool_bytes: params.pool_bytes().max(default.max_pool_bytes),
                ..default
            };
            Some(SpawnedDaemon::spawn(config).map_err(|e| io("starting the agent", e))?)
        }
    };
    let agent = args.switch.or(daemon.as_ref().map(SpawnedDaemon::addr)).expect("an agent: given or started");
    let total_rounds = args.rounds + 1;
    let barrier = Arc::new(Barrier::new(args.workers as usize + 1));
    let mut threads = Vec::new();
    for (w, input) in inputs.iter().enumerate() {
        let mut config = ClientConfig::new(agent, args.job, w as u16, params);
        config.datapath = args.datapath;
        config.faults = faults;
        config.seed = args.seed.wrapping_add(w as u64 + 1);
        let (input, barrier) = (input.clone(), Arc::clone(&barrier));
        threads.push(std::thread::spawn(move || -> Result<(Vec<f64>, Vec<f32>, u64), String> {
            // A worker that fails keeps meeting the others at the barriers (doing nothing), so that
            // nobody waits forever; its error is reported at the end.
            let mut client = AllReduce::connect(config).map_err(|e| format!("worker {w}: {e}"));
            let mut data = input.clone();
            let mut times = Vec::new();
            let mut retransmits_before = 0;
            let mut failure = None;
            for round in 0..total_rounds {
                barrier.wait();
                if let (Ok(c), None) = (&mut client, &failure) {
                    if round == 1 {
                        retransmits_before = c.stats().retransmits;
                    }
                    // The tensor moves into the client and the sum's buffer back: no copies.
                    data.clear();
                    data.extend_from_slice(&input);
                    let t = Instant::now();
                    match c.all_reduce_vec(&mut data) {
                        Ok(()) => times.push(t.elapsed().as_secs_f64()),
                        Err(e) => failure = Some(format!("worker {w}: {e}")),
                    }
                }
                barrier.wait();
            }
            let client = client?;
            if let Some(e) = failure {
                return Err(e);
            }
            let retransmits = client.stats().retransmits - retransmits_before;
            client.leave().map_err(|e| format!("worker {w} leaving: {e}"))?;
            Ok((times, data, retransmits))
        }));
    }
    // Rounds are aligned by the barrier: snapshot the agent's counters at the measured ones.
    let counters = daemon.as_ref().map(SpawnedDaemon::counters);
    let mut measured = None;
    for round in 0..total_rounds {
        barrier.wait();
        if round == 1 {
            measured = counters.as_ref().map(|c| (c.snapshot(), Instant::now()));
        }
        barrier.wait();
    }
    let agent_rates = measured.zip(counters.as_ref()).map(|((before, t0), c)| {
        let (after, secs) = (c.snapshot(), t0.elapsed().as_secs_f64());
        ((after.0 - before.0) as f64 / secs, (after.1 - before.1) as f64 / secs)
    });
    let mut outs = Vec::new();
    let (mut retransmits, mut per_round) = (0, vec![0f64; total_rounds as usize]);
    for t in threads {
        let (times, data, r) =
            t.join().map_err(|_| BenchError::Args("a worker thread panicked".into()))?.map_err(BenchError::Args)?;
        for (m, t) in per_round.iter_mut().zip(times) {
            *m = m.max(t);
        }
        retransmits += r;
        outs.push(data);
    }
    let datapath = daemon.as_ref().map(|d| d.datapath().to_string());
    drop(daemon);
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let reference = reference_sum(&refs, args.elems_per_packet as usize).expect("finite inputs of one length");
    let verified = outs.iter().all(|o| o.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()));
    let exps = chunk_exponents(&refs, args.elems_per_packet as usize);
    let k = args.elems_per_packet as usize;
    let (acc, _) = accuracy(inputs, &outs[0], |i, m| error_bound(args.workers, exps[i / k], m));
    let seconds = median(&per_round[1..]);
    Ok(AllReduceReport {
        bench: "allreduce",
        backend: Backend::Switch,
        datapath,
        transport: None,
        workers: args.workers,
        floats: args.floats,
        elems_per_packet: args.elems_per_packet,
        slots: args.slots,
        loss: args.loss,
        rounds: args.rounds,
        seconds,
        goodput_gbit_s: args.floats as f64 * 32.0 / seconds / 1e9,
        agent_pps: agent_rates.map(|r| r.0),
        agent_tx_pps: agent_rates.map(|r| r.1),
        udp_baseline_pps: baseline,
        agent_vs_baseline: agent_rates.zip(baseline).map(|(r, b)| r.0 / b),
        retransmits,
        max_abs_error: acc.max_abs_error,
        error_bound: acc.error_bound,
        verified,
    })
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Packets/s one sender socket gets through to one receiver socket on loopback: 300-byte
/// datagrams in batches of 64 through `choice`, for `duration`.
fn udp_baseline(choice: DatapathChoice, duration: Duration) -> std::io::Result<f64> {
    const SIZE: usize = 300;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
    let mut rx = datapath::open(any, choice, 64, SIZE)?;
    let to = rx.local_addr()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut tx = datapath::open(any, choice, 64, SIZE)?;
        let mut batch = SendBatch::new(64, SIZE);
        let payload = [0x5au8; SIZE];
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            while !batch.is_full() {
                batch.push(&payload, to);
            }
            tx.send_batch(&mut batch)?;
        }
        Ok(())
    });
    let mut batch = RecvBatch::new(64, SIZE);
    // Let the sender fill the pipe, then count.
    let warm = Instant::now() + Duration::from_millis(100);
    while Instant::now() < warm {
        rx.recv_batch(&mut batch, Some(Duration::from_millis(10)))?;
    }
    let (start, mut received) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        received += rx.recv_batch(&mut batch, Some(Duration::from_millis(10)))? as u64;
    }
    let pps = received as f64 / start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().map_err(|_| std::io::Error::other("the baseline sender panicked"))??;
    Ok(pps)
}

fn ps(args: &AllReduceArgs, inputs: &[Vec<f32>]) -> Result<AllReduceReport, BenchError> {
    const DIM: usize = 1024;
    let rows = args.floats.div_ceil(DIM) as u64;
    let table = TableSpec { init: Init::Zeros, ..TableSpec::new("sum", rows, DIM as u32) };
    // SGD with rate 1: each push subtracts the gradient, so a round's sum is before − after.
    let mut job = super::custom_job(vec![table], 4 << 20, 64 << 20)?;
    job.optimizer = crate::server::optimizer::OptimizerSpec::Sgd { lr: 1.0 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Args(format!("tokio runtime: {e}")))?;
    let total_rounds = args.rounds + 1;
    let inputs = Arc::new(inputs.to_vec());
    let floats = args.floats;
    let cluster = LocalCluster::new(1, u32::from(args.workers), args.transport);
    let shared = Arc::clone(&inputs);
    let runs = runtime.block_on(cluster.run(&job, move |worker: Worker| {
        let inputs = Arc::clone(&shared);
        async move {
            let keys: Vec<u64> = (0..rows).collect();
            let mut padded = inputs[worker.rank() as usize].clone();
            padded.resize(rows as usize * DIM, 0.0);
            let grads = Values::from_vec(padded);
            let mut times = Vec::new();
            let mut before = worker.pull(0, &keys[..]).await?;
            let mut last = Vec::new();
            for _ in 0..total_rounds {
                worker.barrier(&[]).await?;
                let t = Instant::now();
                worker.push_values(0, &keys[..], &grads).await?;
                worker.barrier(&[]).await?;
                let after = worker.pull(0, &keys[..]).await?;
                last = before.iter().zip(&after).take(floats).map(|(b, a)| b - a).collect::<Vec<f32>>();
                times.push(t.elapsed().as_secs_f64());
                before = after;
            }
            Ok::<_, crate::worker::WorkerError>((times, last))
        }
    }))?;
    let mut per_round = vec![0f64; total_rounds as usize];
    let mut verified = true;
    let mut acc = Accuracy { max_abs_error: 0.0, error_bound: 0.0 };
    let sum_abs: Vec<f64> = (0..floats).map(|i| inputs.iter().map(|x| f64::from(x[i]).abs()).sum()).collect();
    // f32 addition of N terms plus the before − after subtraction of running totals.
    let total = f64::from(total_rounds) * f64::from(args.workers);
    let bound = |i: usize, _m: f64| sum_abs[i] * total * 2.0 * f64::from(f32::EPSILON);
    for (times, out) in &runs {
        for (m, t) in per_round.iter_mut().zip(times) {
            *m = m.max(*t);
        }
        let (a, within) = accuracy(&inputs, out, bound);
        verified &= within;
        if a.max_abs_error >= acc.max_abs_error {
            acc = a;
        }
    }
    let seconds = median(&per_round[1..]);
    Ok(AllReduceReport {
        bench: "allreduce",
        backend: Backend::Ps,
        datapath: None,
        transport: Some(args.transport),
        workers: args.workers,
        floats: args.floats,
        elems_per_packet: args.elems_per_packet,
        slots: args.slots,
        loss: 0.0,
        rounds: args.rounds,
        seconds,
        goodput_gbit_s: args.floats as f64 * 32.0 / seconds / 1e9,
        agent_pps: None,
        agent_tx_pps: None,
        udp_baseline_pps: None,
        agent_vs_baseline: None,
        retransmits: 0,
        max_abs_error: acc.max_abs_error,
        error_bound: acc.error_bound,
        verified,
    })
}
