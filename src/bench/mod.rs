//! End-to-end benchmarks on a local cluster: `paramserv bench pushpull`, `sparse`, `stragglers`,
//! `prefetch`, `codecs` and `allreduce`.
//!
//! Both take the shapes of ps-lite's own benchmarks so the figures compare directly:
//! - `pushpull`: every worker pushes and/or pulls `keys-per-server × servers` keys of
//!   `value-bytes` each, all requests in flight at once, for `rounds` rounds (byteps-branch
//!   `tests/test_benchmark.cc`: 1,024,000-byte values, 40 keys per server). Goodput counts
//!   application payload (values) in both directions; latency is per request.
//! - `sparse`: one push and one pull of `keys` sorted `u64` keys with `dim` `f32` each
//!   (`tests/test_kv_app_benchmark.cc`: 10 M keys, one value each).
//!
//! Results are JSON objects. With `--iperf3`, `pushpull` also measures single-stream loopback TCP
//! with `iperf3` in the same run and reports the ratio, since absolute figures on a shared machine
//! mean little.

mod allreduce;
mod codecs;

pub use allreduce::{AllReduceArgs, AllReduceReport, Backend, allreduce};
pub use codecs::{CodecArgs, CodecReport, codecs};

use std::time::{Duration, Instant};

use clap::ArgAction;
use clap::builder::BoolishValueParser;
use futures::future::try_join_all;
use hdrhistogram::Histogram;

use crate::cluster::job::{AppConfig, JobConfig};
use crate::cluster::local::{ClusterError, LocalCluster};
use crate::proto::consistency::Consistency;
use crate::proto::partition::KeyRange;
use crate::server::table::{Init, TableSpec};
use crate::transport::{LinkCounters, Transport};
use crate::worker::{Values, Worker, WorkerError};

/// Which operations `pushpull` runs.
#[derive(Clone, Copy, Debug, Eq, PartialEq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Push only.
    Push,
    /// Pull only.
    Pull,
    /// Push then pull each key.
    Pushpull,
}

/// Flags of `paramserv bench pushpull`.
#[derive(Clone, Debug, clap::Args)]
pub struct PushPullArgs {
    /// Server shards.
    #[arg(long, env = "PS_NUM_SERVERS", default_value_t = 1)]
    pub servers: u32,
    /// Workers.
    #[arg(long, env = "PS_NUM_WORKERS", default_value_t = 1)]
    pub workers: u32,
    /// Keys per server.
    #[arg(long, env = "PS_KEYS_PER_SERVER", default_value_t = 40)]
    pub keys_per_server: u32,
    /// Bytes of one key's value (a multiple of 4).
    #[arg(long, env = "PS_VALUE_BYTES", default_value_t = 1_024_000)]
    pub value_bytes: u32,
    /// Measured rounds.
    #[arg(long, env = "PS_ROUNDS", default_value_t = 20)]
    pub rounds: u32,
    /// Unmeasured rounds first.
    #[arg(long, env = "PS_WARMUP", default_value_t = 2)]
    pub warmup: u32,
    /// Operations.
    #[arg(long, env = "PS_MODE", default_value = "pushpull", value_enum)]
    pub mode: Mode,
    /// Transport.
    #[arg(long, env = "PS_TRANSPORT", default_value = "tcp", value_enum)]
    pub transport: Transport,
    /// Also measure single-stream loopback TCP with iperf3 (must be installed) in this run.
    #[arg(long, env = "PS_IPERF3", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub iperf3: bool,
    /// Also run the same benchmark over TCP and report the ratio (for `--transport inproc`): three
    /// runs of each, alternating, medians compared.
    #[arg(long, env = "PS_VS_TCP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub vs_tcp: bool,
    /// Print JSON.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// Result of `pushpull`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushPullReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Operations.
    pub mode: Mode,
    /// Transport.
    pub transport: Transport,
    /// Servers.
    pub servers: u32,
    /// Workers.
    pub workers: u32,
    /// Keys per server.
    pub keys_per_server: u32,
    /// Bytes per value.
    pub value_bytes: u32,
    /// Measured rounds.
    pub rounds: u32,
    /// Requests measured.
    pub requests: u64,
    /// Seconds of the measured rounds (slowest worker).
    pub seconds: f64,
    /// Application payload (values pushed and pulled) per second, in Gbit/s.
    pub goodput_gbit_s: f64,
    /// All bytes on the worker–server links during the measured rounds, headers included.
    pub bytes_on_wire: u64,
    /// Median request latency in microseconds.
    pub p50_us: u64,
    /// 99th percentile request latency in microseconds.
    pub p99_us: u64,
    /// iperf3's single-stream loopback throughput in this run, if measured.
    pub iperf3_gbit_s: Option<f64>,
    /// `goodput_gbit_s / iperf3_gbit_s`.
    pub ratio_to_iperf3: Option<f64>,
    /// The same benchmark's goodput over TCP in this run, if measured (with `--vs-tcp` both
    /// goodputs are medians of runs that alternated between the transports).
    pub tcp_goodput_gbit_s: Option<f64>,
    /// `goodput_gbit_s / tcp_goodput_gbit_s`.
    pub ratio_to_tcp: Option<f64>,
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags.
    #[error("{0}")]
    Args(String),
    /// The cluster failed.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// The iperf3 baseline failed.
    #[error("iperf3 baseline: {0}")]
    Iperf3(String),
}

struct WorkerRun {
    seconds: f64,
    payload_bytes: u64,
    wire: LinkCounters,
    latencies: Histogram<u64>,
}

fn wire_delta(worker: &Worker, before: &[crate::worker::LinkReport]) -> LinkCounters {
    let mut total = LinkCounters::default();
    for (now, then) in worker.links().iter().zip(before) {
        let (n, t) = (now.counters, then.counters);
        total += LinkCounters {
            header_sent: n.header_sent - t.header_sent,
            payload_sent: n.payload_sent - t.payload_sent,
            frames_sent: n.frames_sent - t.frames_sent,
            header_received: n.header_received - t.header_received,
            payload_received: n.payload_received - t.payload_received,
            frames_received: n.frames_received - t.frames_received,
        };
    }
    total
}

fn custom_job(tables: Vec<TableSpec>, request_bytes: u32, max_frame_bytes: u32) -> Result<JobConfig, BenchError> {
    let mut job = JobConfig::new(AppConfig::Custom, vec![]).map_err(|e| BenchError::Args(e.to_string()))?;
    job.tables = tables;
    // The values are arbitrary; a tiny rate keeps repeated pushes from overflowing.
    job.optimizer = crate::server::optimizer::OptimizerSpec::Sgd { lr: 1e-6 };
    job.max_frame_bytes = max_frame_bytes;
    job.request_bytes = request_bytes;
    job.validate().map_err(|e| BenchError::Args(e.to_string()))?;
    Ok(job)
}

/// Microseconds from 1 µs to an hour, 3 significant digits. Explicit bounds: an auto-resizing
/// histogram clamps `saturating_record` to its initial range instead of growing.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `paramserv bench pushpull`.
pub async fn pushpull(args: &PushPullArgs) -> Result<PushPullReport, BenchError> {
    if !(args.vs_tcp && args.transport != Transport::Tcp) {
        return pushpull_once(args).await;
    }
    // On a shared machine a burst of noise can hit one run and not the next; alternating the two
    // transports and comparing medians keeps one burst from deciding the ratio.
    let tcp_args = PushPullArgs { transport: Transport::Tcp, iperf3: false, ..args.clone() };
    let (mut runs, mut tcp) = (Vec::new(), Vec::new());
    for _ in 0..VS_TCP_PAIRS {
        runs.push(pushpull_once(args).await?);
        tcp.push(pushpull_once(&tcp_args).await?.goodput_gbit_s);
    }
    runs.sort_by(|a, b| a.goodput_gbit_s.total_cmp(&b.goodput_gbit_s));
    tcp.sort_by(f64::total_cmp);
    let mut report = runs.swap_remove(VS_TCP_PAIRS / 2);
    let tcp = tcp[VS_TCP_PAIRS / 2];
    report.tcp_goodput_gbit_s = Some(tcp);
    report.ratio_to_tcp = Some(report.goodput_gbit_s / tcp);
    Ok(report)
}

/// Runs of each transport `--vs-tcp` alternates; the medians are compared.
const VS_TCP_PAIRS: usize = 3;

async fn pushpull_once(args: &PushPullArgs) -> Result<PushPullReport, BenchError> {
    if args.value_bytes == 0 || !args.value_bytes.is_multiple_of(4) {
        return Err(BenchError::Args(format!("--value-bytes {} must be a positive multiple of 4", args.value_bytes)));
    }
    if args.servers == 0 || args.workers == 0 || args.keys_per_server == 0 || args.rounds == 0 {
        return Err(BenchError::Args("--servers, --workers, --keys-per-server and --rounds must be at least 1".into()));
    }
    let dim = args.value_bytes / 4;
    let keys = u64::from(args.keys_per_server) * u64::from(args.servers);
    let table = TableSpec {
        name: "values".into(),
        rows: keys,
        dim,
        init: Init::Zeros,
        partitioning: Default::default(),
        optimizer: None,
        codec: None,
        pull_codec: None,
    };
    // One request per key, as ps-lite sends one message per key.
    let max_frame = (args.value_bytes + (1 << 20)).max(crate::proto::wire::Limits::DEFAULT_MAX_FRAME);
    let job = custom_job(vec![table], args.value_bytes + 4096, max_frame)?;
    let (mode, rounds, warmup) = (args.mode, args.rounds, args.warmup);
    let cluster = LocalCluster::new(args.servers, args.workers, args.transport);
    let runs = cluster
        .run(&job, move |worker: Worker| async move {
            let dim = dim as usize;
            let keys: Vec<u64> = (0..keys).collect();
            // Shared buffers, pushed without copies as ps-lite's ZPush pushes an SArray.
            let grads = Values::from_vec((0..dim).map(|i| (i % 7) as f32 * 1e-3).collect());
            let mut outs: Vec<Values> = keys.iter().map(|_| Values::default()).collect();
            let mut latencies = latency_histogram();
            let mut before = worker.links();
            let mut start = Instant::now();
            for round in 0..warmup + rounds {
                if round == warmup {
                    worker.barrier(&[]).await?;
                    before = worker.links();
                    start = Instant::now();
                    latencies.reset();
                }
                let ops = keys.iter().zip(outs.iter_mut()).map(|(k, out)| {
                    let (worker, grads) = (&worker, &grads);
                    async move {
                        let mut lat = Vec::with_capacity(2);
                        let key = std::slice::from_ref(k);
                        if mode != Mode::Pull {
                            let t = Instant::now();
                            worker.push_values(0, key, grads).await?;
                            lat.push(t.elapsed());
                        }
                        if mode != Mode::Push {
                            let t = Instant::now();
                            *out = worker.pull_values(0, key).await?;
                            lat.push(t.elapsed());
                        }
                        Ok::<_, WorkerError>(lat)
                    }
                });
                for lat in try_join_all(ops).await?.into_iter().flatten() {
                    latencies.saturating_record(lat.as_micros() as u64);
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            let per_op = u64::from(dim as u32) * 4;
            let ops_per_key = if mode == Mode::Pushpull { 2 } else { 1 };
            let payload_bytes = per_op * keys.len() as u64 * u64::from(rounds) * ops_per_key;
            Ok(WorkerRun { seconds, payload_bytes, wire: wire_delta(&worker, &before), latencies })
        })
        .await?;
    let seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let payload: u64 = runs.iter().map(|r| r.payload_bytes).sum();
    let mut lat = latency_histogram();
    let mut wire = 0;
    for r in &runs {
        lat.add(&r.latencies).expect("histograms of the same shape");
        wire += r.wire.bytes_sent() + r.wire.bytes_received();
    }
    let goodput = payload as f64 * 8.0 / seconds / 1e9;
    let iperf3 = if args.iperf3 { Some(iperf3_loopback(Duration::from_secs(3)).await?) } else { None };
    Ok(PushPullReport {
        bench: "pushpull",
        mode: args.mode,
        transport: args.transport,
        servers: args.servers,
        workers: args.workers,
        keys_per_server: args.keys_per_server,
        value_bytes: args.value_bytes,
        rounds: args.rounds,
        requests: lat.len(),
        seconds,
        goodput_gbit_s: goodput,
        bytes_on_wire: wire,
        p50_us: lat.value_at_quantile(0.5),
        p99_us: lat.value_at_quantile(0.99),
        iperf3_gbit_s: iperf3,
        ratio_to_iperf3: iperf3.map(|i| goodput / i),
        tcp_goodput_gbit_s: None,
        ratio_to_tcp: None,
    })
}

/// Flags of `paramserv bench sparse`.
#[derive(Clone, Debug, clap::Args)]
pub struct SparseArgs {
    /// Keys pushed and pulled.
    #[arg(long, env = "PS_KEYS", default_value_t = 10_000_000)]
    pub keys: u64,
    /// Values per key.
    #[arg(long, env = "PS_DIM", default_value_t = 1)]
    pub dim: u32,
    /// Server shards.
    #[arg(long, env = "PS_NUM_SERVERS", default_value_t = 1)]
    pub servers: u32,
    /// Measured rounds (the median is reported).
    #[arg(long, env = "PS_ROUNDS", default_value_t = 5)]
    pub rounds: u32,
    /// Transport.
    #[arg(long, env = "PS_TRANSPORT", default_value = "tcp", value_enum)]
    pub transport: Transport,
    /// How the key lists go on the wire: delta (ascending lists bit-packed) or fixed (8 bytes a
    /// key).
    #[arg(long, env = "PS_KEY_CODING", default_value = "delta", value_name = "delta|fixed")]
    pub key_coding: crate::proto::wire::KeyCoding,
    /// Print JSON.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// Result of `sparse`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SparseReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Transport.
    pub transport: Transport,
    /// Keys.
    pub keys: u64,
    /// Values per key.
    pub dim: u32,
    /// Servers.
    pub servers: u32,
    /// Measured rounds.
    pub rounds: u32,
    /// How the key lists went on the wire.
    pub key_coding: crate::proto::wire::KeyCoding,
    /// Median time to push every key (explicit key list), milliseconds.
    pub push_ms: f64,
    /// Median time to pull every key (explicit key list), milliseconds.
    pub pull_ms: f64,
    /// Keys per second over push and pull.
    pub keys_per_s: f64,
    /// Median time to push the same rows named as one key range, milliseconds.
    pub range_push_ms: f64,
    /// Median time to pull the same rows named as one key range, milliseconds.
    pub range_pull_ms: f64,
    /// Bytes on the wire for one push and one pull with a key list.
    pub list_bytes_on_wire: u64,
    /// Bytes on the wire for one push and one pull with a key range.
    pub range_bytes_on_wire: u64,
}

/// Runs `paramserv bench sparse`.
pub async fn sparse(args: &SparseArgs) -> Result<SparseReport, BenchError> {
    if args.keys == 0 || args.dim == 0 || args.servers == 0 || args.rounds == 0 {
        return Err(BenchError::Args("--keys, --dim, --servers and --rounds must be at least 1".into()));
    }
    let table = TableSpec {
        name: "sparse".into(),
        rows: args.keys,
        dim: args.dim,
        init: Init::Zeros,
        partitioning: Default::default(),
        optimizer: None,
        codec: None,
        pull_codec: None,
    };
    let mut job =
        custom_job(vec![table], JobConfig::DEFAULT_REQUEST_BYTES, crate::proto::wire::Limits::DEFAULT_MAX_FRAME)?;
    job.key_coding = args.key_coding;
    let (n, dim, rounds) = (args.keys, args.dim as usize, args.rounds);
    let cluster = LocalCluster::new(args.servers, 1, args.transport);
    let mut runs = cluster
        .run(&job, move |worker: Worker| async move {
            let keys: Vec<u64> = (0..n).collect();
            let range = KeyRange::new(0, n).expect("0 <= n");
            let vals: Vec<f32> = (0..keys.len() * dim).map(|i| (i % 13) as f32).collect();
            let mut out = vec![0.0f32; vals.len()];
            let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            let mut bytes = [0u64; 2];
            for round in 0..=rounds {
                let before = worker.links();
                let t = Instant::now();
                worker.push(0, &keys, &vals).await?;
                let push = t.elapsed();
                let t = Instant::now();
                worker.pull_into(0, &keys, &mut out).await?;
                let pull = t.elapsed();
                let w = wire_delta(&worker, &before);
                let before = worker.links();
                let t = Instant::now();
                worker.push(0, range, &vals).await?;
                let range_push = t.elapsed();
                let t = Instant::now();
                worker.pull_into(0, range, &mut out).await?;
                let range_pull = t.elapsed();
                let r = wire_delta(&worker, &before);
                // Round 0 warms up allocations and connections.
                if round > 0 {
                    for (v, d) in times.iter_mut().zip([push, pull, range_push, range_pull]) {
                        v.push(d.as_secs_f64() * 1e3);
                    }
                    bytes = [w.bytes_sent() + w.bytes_received(), r.bytes_sent() + r.bytes_received()];
                }
            }
            Ok((times, bytes))
        })
        .await?;
    let (mut times, bytes) = runs.pop().expect("one worker");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (push_ms, pull_ms, range_push_ms, range_pull_ms) =
        (median(&mut times[0]), median(&mut times[1]), median(&mut times[2]), median(&mut times[3]));
    Ok(SparseReport {
        bench: "sparse",
        transport: args.transport,
        keys: args.keys,
        dim: args.dim,
        servers: args.servers,
        rounds: args.rounds,
        key_coding: args.key_coding,
        push_ms,
        pull_ms,
        keys_per_s: 2.0 * args.keys as f64 / ((push_ms + pull_ms) / 1e3),
        range_push_ms,
        range_pull_ms,
        list_bytes_on_wire: bytes[0],
        range_bytes_on_wire: bytes[1],
    })
}

/// Single-stream loopback TCP throughput measured with `iperf3`, in Gbit/s.
pub async fn iperf3_loopback(duration: Duration) -> Result<f64, BenchError> {
    iperf3_loopback_with(&["iperf3"], duration).await
}

/// How many client runs `iperf3_loopback` tries before it gives up.
const IPERF3_ATTEMPTS: u32 = 50;

/// [`iperf3_loopback`] with `program[0]` run as iperf3, `program[1..]` before its arguments.
async fn iperf3_loopback_with(program: &[&str], duration: Duration) -> Result<f64, BenchError> {
    use tokio::process::Command;
    let err = |e: String| BenchError::Iperf3(e);
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| err(e.to_string()))?.port();
    let (exe, pre) = program.split_first().expect("a program to run");
    let serve = || {
        Command::new(exe)
            .args(pre)
            .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("cannot start iperf3 (apt-get install iperf3): {e}")))
    };
    let mut server = serve()?;
    // The server needs a moment to listen; the client is retried rather than timed. A client that
    // ran but reports an error (its JSON has `error`, e.g. the server was not listening yet) is a
    // failed try like a failed exit code.
    let mut last = String::new();
    for attempt in 0..IPERF3_ATTEMPTS {
        let out = Command::new(exe)
            .args(pre)
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J", "-t", &duration.as_secs().max(1).to_string()])
            .output()
            .await
            .map_err(|e| err(e.to_string()))?;
        let result = if out.status.success() {
            iperf3_gbit_s(&out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stdout).chars().take(300).collect())
        };
        match result {
            Ok(gbit_s) => {
                let _ = server.wait().await;
                return Ok(gbit_s);
            }
            Err(e) => last = e,
        }
        // `-1` makes the server exit after one test, also a failed one: start another.
        if !matches!(server.try_wait(), Ok(None)) {
            server = serve()?;
        }
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt + 1).min(10))).await;
    }
    Err(err(format!("no successful client run in {IPERF3_ATTEMPTS} tries; the last said: {last}")))
}

/// The received throughput in a client's `-J` output, or why there is none.
fn iperf3_gbit_s(stdout: &[u8]) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| format!("unreadable output: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3 reported an error: {}", e.as_str().map_or_else(|| e.to_string(), str::to_owned)));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| "no end.sum_received.bits_per_second in its output".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_output_with_an_error_or_without_a_sum_is_a_failed_run() {
        let ok = br#"{"start":{},"end":{"sum_received":{"bits_per_second":12.5e9}}}"#;
        assert_eq!(iperf3_gbit_s(ok), Ok(12.5));
        let refused =
            br#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert_eq!(
            iperf3_gbit_s(refused),
            Err("iperf3 reported an error: unable to connect to server: Connection refused".into())
        );
        assert!(iperf3_gbit_s(br#"{"end":{}}"#).unwrap_err().contains("no end.sum_received"));
        assert!(iperf3_gbit_s(b"iperf3: error").unwrap_err().contains("unreadable output"));
    }

    /// A fake iperf3 whose first two client runs exit 0 with an error and with no sum, as a real
    /// one does when its server is not ready; the third succeeds.
    #[cfg(unix)]
    #[tokio::test]
    async fn iperf3_retries_a_client_run_that_reported_an_error() {
        let dir = std::env::temp_dir().join(format!("paramserv-iperf3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (script, count) = (dir.join("iperf3.sh"), dir.join("runs"));
        std::fs::write(
            &script,
            format!(
                r#"[ "$1" = -s ] && exit 0
n=$(cat '{count}' 2>/dev/null || echo 0); echo $((n + 1)) > '{count}'
case $n in
  0) echo '{{"start":{{}},"end":{{}},"error":"unable to connect to server: Connection refused"}}' ;;
  1) echo '{{"start":{{}},"end":{{}}}}' ;;
  *) echo '{{"end":{{"sum_received":{{"bits_per_second":8e9}}}}}}' ;;
esac
"#,
                count = count.display()
            ),
        )
        .unwrap();
        let got = iperf3_loopback_with(&["sh", script.to_str().unwrap()], Duration::from_secs(1)).await;
        let runs = std::fs::read_to_string(&count).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.unwrap(), 8.0);
        assert_eq!(runs.trim(), "3");
    }
}

/// Which worker is slow in a step of `paramserv bench stragglers`.
#[derive(Clone, Copy, Debug, Eq, PartialEq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StragglerPattern {
    /// The same `--slow` workers in every step.
    Persistent,
    /// `--slow` workers in every step, a different set each step (seeded).
    Transient,
}

/// Flags of `paramserv bench stragglers`.
#[derive(Clone, Debug, clap::Args)]
pub struct StragglerArgs {
    /// Workers (N + B under backup workers).
    #[arg(long, env = "PS_NUM_WORKERS", default_value_t = 8)]
    pub workers: u32,
    /// Slow workers.
    #[arg(long, default_value_t = 1)]
    pub slow: u32,
    /// How many times longer a slow worker's compute step takes.
    #[arg(long, default_value_t = 3.0)]
    pub slowdown: f64,
    /// Compute time of a normal step, milliseconds (slept, as an accelerator would take; long
    /// enough that compute, not this 2-core machine's communication, sets the pace).
    #[arg(long, default_value_t = 10.0)]
    pub step_ms: f64,
    /// Update strategy to measure.
    #[arg(long, env = "PS_CONSISTENCY", default_value = "bsp")]
    pub consistency: Consistency,
    /// Whether the slow workers are always the same ones.
    #[arg(long, default_value = "persistent", value_enum)]
    pub pattern: StragglerPattern,
    /// Epochs of the logreg job.
    #[arg(long, default_value_t = 5)]
    pub epochs: u32,
    /// Also run BSP on the same job in this run and report the ratios.
    #[arg(long, action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub vs_bsp: bool,
    /// Print JSON.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// Result of `stragglers`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StragglerReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Strategy.
    pub consistency: Consistency,
    /// Workers.
    pub workers: u32,
    /// Slow workers.
    pub slow: u32,
    /// Their slowdown.
    pub slowdown: f64,
    /// Which workers are slow.
    pub pattern: StragglerPattern,
    /// A normal step's compute time, milliseconds.
    pub step_ms: f64,
    /// Steps of the job.
    pub steps: u64,
    /// Training time, seconds.
    pub seconds: f64,
    /// Job steps per second.
    pub steps_per_s: f64,
    /// Mean loss before training.
    pub initial_loss: f64,
    /// Mean loss after training.
    pub final_loss: f64,
    /// Worker steps whose pushes were dropped as late (backup workers).
    pub late_steps: u64,
    /// BSP's steps per second on the same job in this run, if measured.
    pub bsp_steps_per_s: Option<f64>,
    /// BSP's final loss on the same job in this run, if measured.
    pub bsp_final_loss: Option<f64>,
    /// `steps_per_s / bsp_steps_per_s`.
    pub speedup_vs_bsp: Option<f64>,
    /// `final_loss / bsp_final_loss - 1`.
    pub loss_vs_bsp: Option<f64>,
}

/// Runs `paramserv bench stragglers`.
pub async fn stragglers(args: &StragglerArgs) -> Result<StragglerReport, BenchError> {
    if args.workers == 0
        || args.slow > args.workers
        || !args.slowdown.is_finite()
        || args.slowdown < 1.0
        || !args.step_ms.is_finite()
        || args.step_ms < 0.0
    {
        return Err(BenchError::Args(format!(
            "need --workers >= 1, --slow <= --workers, --slowdown >= 1 and --step-ms >= 0 (got {}, {}, {}, {})",
            args.workers, args.slow, args.slowdown, args.step_ms
        )));
    }
    args.consistency.check(args.workers).map_err(BenchError::Args)?;
    let mut report = straggler_run(args, args.consistency).await?;
    if args.vs_bsp {
        let bsp = straggler_run(args, Consistency::Bsp).await?;
        report.bsp_steps_per_s = Some(bsp.steps_per_s);
        report.bsp_final_loss = Some(bsp.final_loss);
        report.speedup_vs_bsp = Some(report.steps_per_s / bsp.steps_per_s);
        report.loss_vs_bsp = Some(report.final_loss / bsp.final_loss - 1.0);
    }
    Ok(report)
}

async fn straggler_run(args: &StragglerArgs, consistency: Consistency) -> Result<StragglerReport, BenchError> {
    use crate::apps::logreg::{self, LogregConfig, TrainHooks};
    // 60 minibatches of 64 per worker and epoch; every worker's samples change each epoch, so a
    // backup worker that is often late does not leave a part of the data unlearned.
    let cfg = LogregConfig {
        features: 10_000,
        samples: u64::from(args.workers) * 64 * 60,
        nnz: 20,
        batch: 64,
        epochs: args.epochs,
        label_noise: 0.0,
    };
    let mut job = JobConfig::new(AppConfig::Logreg(cfg.clone()), cfg.tables(Default::default(), Init::Zeros))
        .map_err(|e| BenchError::Args(e.to_string()))?;
    job.consistency = consistency;
    job.partition = crate::apps::partition::DataPartition::Random;
    job.reshuffle = true;
    let (n, slow, slowdown, base) =
        (args.workers, args.slow, args.slowdown, Duration::from_secs_f64(args.step_ms / 1e3));
    let pattern = args.pattern;
    let delay = move |rank: u32, step: u64| -> Duration {
        let slow_now = match pattern {
            StragglerPattern::Persistent => rank < slow,
            // A different set of `slow` consecutive ranks each step.
            StragglerPattern::Transient => {
                let first = (crate::proto::partition::mix64(step) % u64::from(n)) as u32;
                (rank + n - first) % n < slow
            }
        };
        if slow_now { base.mul_f64(slowdown) } else { base }
    };
    let hooks = TrainHooks { step_delay: Some(std::sync::Arc::new(delay)) };
    let cluster = LocalCluster::new(1, n, Transport::Inproc);
    let reports = cluster
        .run(&job, move |worker: Worker| {
            let (cfg, hooks) = (cfg.clone(), hooks.clone());
            async move { logreg::train(&worker, &cfg, &hooks, |_| {}).await }
        })
        .await?;
    let first = reports.first().expect("a cluster with workers");
    let seconds = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    Ok(StragglerReport {
        bench: "stragglers",
        consistency,
        workers: n,
        slow,
        slowdown,
        pattern,
        step_ms: args.step_ms,
        steps: first.steps,
        seconds,
        steps_per_s: first.steps as f64 / seconds,
        initial_loss: first.initial_loss,
        final_loss: first.final_loss,
        late_steps: reports.iter().map(|r| r.late_steps).sum(),
        bsp_steps_per_s: None,
        bsp_final_loss: None,
        speedup_vs_bsp: None,
        loss_vs_bsp: None,
    })
}

/// Flags of `paramserv bench prefetch`.
#[derive(Clone, Debug, clap::Args)]
pub struct PrefetchArgs {
    /// Rows pulled and pushed per step.
    #[arg(long, default_value_t = 16)]
    pub rows: u32,
    /// Values per row.
    #[arg(long, default_value_t = 16_384)]
    pub dim: u32,
    /// Measured steps per variant.
    #[arg(long, default_value_t = 200)]
    pub steps: u32,
    /// Compute time per step, milliseconds (default: the measured time of a pull, so that
    /// compute and pull take about as long).
    #[arg(long)]
    pub compute_ms: Option<f64>,
    /// Transport.
    #[arg(long, env = "PS_TRANSPORT", default_value = "inproc", value_enum)]
    pub transport: Transport,
    /// Emulated wire of the in-process links, Gbit/s per direction (0: none, frames are handed
    /// over at once). On loopback TCP moving bytes is CPU work, which a machine with few cores
    /// cannot overlap with compute as a network card would.
    #[arg(long, default_value_t = 1.0)]
    pub link_gbit: f64,
    /// One-way delay of the emulated wire, microseconds.
    #[arg(long, default_value_t = 50)]
    pub link_latency_us: u64,
    /// Print JSON.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// Result of `prefetch`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefetchReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Transport.
    pub transport: Transport,
    /// The emulated wire, if any.
    pub link: Option<crate::transport::LinkModel>,
    /// Rows per step.
    pub rows: u32,
    /// Values per row.
    pub dim: u32,
    /// Measured steps per variant.
    pub steps: u32,
    /// Median time of a pull (between pushes, before the measured steps), milliseconds.
    pub pull_ms: f64,
    /// Compute time per step, milliseconds.
    pub compute_ms: f64,
    /// Mean step time without prefetch (pull, compute, push), milliseconds.
    pub step_ms_without: f64,
    /// Mean step time with the next step's pull started before this step's compute.
    pub step_ms_prefetch: f64,
    /// Mean step time with prefetch and the push sent in the background
    /// ([`Worker::push_in_background`]), so that it overlaps the next step's compute.
    pub step_ms_prefetch_background_push: f64,
    /// `step_ms_prefetch / step_ms_without`.
    pub ratio_prefetch: f64,
    /// `step_ms_prefetch_background_push / step_ms_without`.
    pub ratio_prefetch_background_push: f64,
}

/// Stands in for a step's compute: a thread sleeps for `d` (off the runtime's threads, and
/// without the timer wheel's millisecond rounding, so the compute takes `d`, not `d` rounded up).
async fn compute_for(d: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(d)).await.expect("a sleeping thread does not panic");
}

/// Runs `paramserv bench prefetch`: the same steps without prefetch, with prefetch, and with
/// prefetch and background pushes, in one run.
pub async fn prefetch(args: &PrefetchArgs) -> Result<PrefetchReport, BenchError> {
    if args.rows == 0 || args.dim == 0 || args.steps == 0 {
        return Err(BenchError::Args("--rows, --dim and --steps must be at least 1".into()));
    }
    let rows = u64::from(args.rows) * 8;
    let table = TableSpec {
        name: "model".into(),
        rows,
        dim: args.dim,
        init: Init::Zeros,
        partitioning: Default::default(),
        optimizer: None,
        codec: None,
        pull_codec: None,
    };
    let request = (u64::from(args.rows) * u64::from(args.dim) * 4 + 4096).min(u64::from(u32::MAX / 4)) as u32;
    let max_frame = (request * 2 + (1 << 20)).max(crate::proto::wire::Limits::DEFAULT_MAX_FRAME);
    let job = custom_job(vec![table], request, max_frame)?;
    let (steps, per, compute_ms) = (args.steps as usize, args.rows as u64, args.compute_ms);
    let link = match (args.link_gbit, args.transport) {
        (0.0, _) => None,
        (_, Transport::Tcp) => {
            return Err(BenchError::Args(
                "--link-gbit emulates in-process links; give --link-gbit 0 with --transport tcp".into(),
            ));
        }
        (gbit, Transport::Inproc) => Some(
            crate::transport::LinkModel::new(gbit, Duration::from_micros(args.link_latency_us))
                .map_err(|e| BenchError::Args(format!("--link-gbit: {e}")))?,
        ),
    };
    let mut cluster = LocalCluster::new(1, 1, args.transport);
    cluster.link = link;
    let mut runs = cluster
        .run(&job, move |worker: Worker| async move {
            let dim = worker.dim(0)?;
            let keys_of = |step: usize| -> Vec<u64> { (0..per).map(|i| (step as u64 * per + i) % rows).collect() };
            let grads = vec![1e-3f32; per as usize * dim];
            // Calibrate: the median time of a pull within steps of pull and push.
            let mut pulls = Vec::with_capacity(50);
            for s in 0..50 {
                let t = Instant::now();
                worker.pull(0, &keys_of(s)).await?;
                pulls.push(t.elapsed());
                worker.push(0, &keys_of(s), &grads).await?;
            }
            pulls.sort_unstable();
            let pull = pulls[pulls.len() / 2];
            let compute = compute_ms.map_or(pull, |ms| Duration::from_secs_f64(ms / 1e3));
            let t = Instant::now();
            for s in 0..steps {
                let keys = keys_of(s);
                let _rows = worker.pull(0, &keys).await?;
                compute_for(compute).await;
                worker.push(0, &keys, &grads).await?;
            }
            let without = t.elapsed() / steps as u32;
            let t = Instant::now();
            let mut next = worker.prefetch(0, keys_of(0));
            for s in 0..steps {
                let _rows = next.wait().await?;
                next = worker.prefetch(0, keys_of(s + 1));
                compute_for(compute).await;
                worker.push(0, &keys_of(s), &grads).await?;
            }
            let _ = next.wait().await?;
            let prefetched = t.elapsed() / steps as u32;
            // The next step's pull is queued after this step's push on every link, so it still
            // reads that push: the same staleness as with prefetch alone.
            let t = Instant::now();
            let mut next = worker.prefetch(0, keys_of(0));
            let mut pushing: Option<crate::worker::PendingPush> = None;
            for s in 0..steps {
                let _rows = next.wait().await?;
                next = worker.prefetch(0, keys_of(s + 1));
                compute_for(compute).await;
                if let Some(previous) = pushing.take() {
                    previous.wait().await?;
                }
                pushing = Some(worker.push_in_background(0, &keys_of(s), &grads).await?);
            }
            let _ = next.wait().await?;
            if let Some(last) = pushing {
                last.wait().await?;
            }
            let overlapped = t.elapsed() / steps as u32;
            Ok((pull, compute, without, prefetched, overlapped))
        })
        .await?;
    let (pull, compute, without, prefetched, overlapped) = runs.pop().expect("one worker");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(PrefetchReport {
        bench: "prefetch",
        transport: args.transport,
        link,
        rows: args.rows,
        dim: args.dim,
        steps: args.steps,
        pull_ms: ms(pull),
        compute_ms: ms(compute),
        step_ms_without: ms(without),
        step_ms_prefetch: ms(prefetched),
        step_ms_prefetch_background_push: ms(overlapped),
        ratio_prefetch: ms(prefetched) / ms(without),
        ratio_prefetch_background_push: ms(overlapped) / ms(without),
    })
}
