//! `switch-agent`: the emulated aggregation switch as a daemon.
//!
//! Binds one UDP socket, runs the agent loop on one thread until SIGINT or SIGTERM, and with
//! `--stats` prints packets/s, drops and served retransmits per job at every interval. Refuses to
//! start with limits that promise jobs the pool cap would refuse (`--max-slots` × `--max-values`
//! above `--max-pool-bytes`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use paramserv_switch::daemon::{Daemon, DaemonConfig, DaemonStats};
use paramserv_switch::datapath::{DatapathChoice, Faults};
use paramserv_switch::proto::agent::{AgentConfig, DEFAULT_MAX_POOL_BYTES};
use paramserv_switch::proto::fixed::MAX_WORKERS;

/// SwitchML-style in-network aggregation, emulated over UDP.
#[derive(Debug, Parser)]
#[command(name = "switch-agent", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9720")]
    listen: SocketAddr,
    /// Socket implementation: auto (io_uring, else recvmmsg/sendmmsg, else plain), io_uring, mmsg, plain.
    #[arg(long, default_value = "auto")]
    datapath: DatapathChoice,
    /// Datagrams per receive or send batch (1 to 1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Jobs held at once; a join for another job is refused.
    #[arg(long, default_value_t = AgentConfig::default().max_jobs)]
    max_jobs: usize,
    /// Slots one job's pool may have (at most 32768).
    #[arg(long, default_value_t = AgentConfig::default().max_slots, value_parser = clap::value_parser!(u16).range(1..=32768))]
    max_slots: u16,
    /// Values one packet may carry (2048 fits a 9000-byte jumbo frame).
    #[arg(long, default_value_t = AgentConfig::default().max_values, value_parser = clap::value_parser!(u16).range(1..))]
    max_values: u16,
    /// Bytes one job's slot pool may take (64 MiB); --max-slots × --max-values must fit, at about
    /// 16 bytes per slot and value.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_POOL_BYTES)]
    max_pool_bytes: usize,
    /// Print counters to stdout every SECONDS (1 when given without a value).
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1", value_parser = positive_seconds)]
    stats: Option<Duration>,
    /// Faults injected on the agent's sends, e.g. `drop=0.01,dup=0.01,reorder=0.01` (testing).
    #[arg(long, value_name = "SPEC", default_value = "none")]
    faults: Faults,
    /// Seed of the fault injector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let every = args.stats;
    let mut config = DaemonConfig::new(args.listen);
    config.datapath = args.datapath;
    config.batch = args.batch as usize;
    // Exits with 2 and the usage line, like any other bad flag.
    config.agent = agent_config(&args).unwrap_or_else(|e| Args::command().error(ErrorKind::ArgumentConflict, e).exit());
    config.faults = args.faults;
    config.seed = args.seed;
    let mut daemon = Daemon::bind(config).with_context(|| format!("binding {}", args.listen))?;
    let addr = daemon.local_addr()?;
    eprintln!("switch-agent listening on {addr} (datapath {})", daemon.datapath());
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let mut last = DaemonStats::default();
    let stats = daemon.run(&stop, every, |now, elapsed| {
        print_stats(&last, now, elapsed);
        last = now.clone();
    })?;
    eprintln!(
        "switch-agent stopped: {} datagrams in, {} out, {} malformed, {} for unknown jobs",
        stats.received, stats.sent, stats.agent.malformed, stats.agent.unknown_job
    );
    Ok(())
}

/// The agent's limits, unless their largest job would not fit in the pool cap (every join of that
/// size would be refused, long after startup).
fn agent_config(args: &Args) -> Result<AgentConfig, String> {
    let config = AgentConfig {
        max_jobs: args.max_jobs,
        max_slots: args.max_slots,
        max_values: args.max_values,
        max_pool_bytes: args.max_pool_bytes,
        ..AgentConfig::default()
    };
    let needed = config.largest_pool_bytes();
    if needed > config.max_pool_bytes {
        return Err(format!(
            "--max-slots {} with --max-values {} makes a pool of {needed} bytes for a job of {MAX_WORKERS} workers, \
             above --max-pool-bytes {}: lower --max-slots or --max-values, or raise --max-pool-bytes to {needed}",
            config.max_slots, config.max_values, config.max_pool_bytes
        ));
    }
    Ok(config)
}

fn positive_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected a positive number of seconds, not {s:?}")),
    }
}

fn print_stats(last: &DaemonStats, now: &DaemonStats, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    println!(
        "in {:.0} pkt/s, out {:.0} pkt/s, malformed {}, unknown job {}, unexpected kind {}, refused joins {}, \
         truncated {}, send errors {}",
        rate(now.received, last.received),
        rate(now.sent, last.sent),
        now.agent.malformed,
        now.agent.unknown_job,
        now.agent.unexpected_kind,
        now.agent.refused,
        now.truncated,
        now.send_errors
    );
    for (job, s) in &now.jobs {
        let before = last.jobs.get(job).copied().unwrap_or_default();
        println!(
            "  job {job}: {:.0} pkt/s in, {:.0} rounds/s, retransmits served {}, duplicates {}, stale {}, invalid {}, \
             overflows {}, restarts {}, queue full {}",
            rate(s.received, before.received),
            rate(s.rounds, before.rounds),
            s.retransmits_served,
            s.duplicates,
            s.stale,
            s.invalid,
            s.overflows,
            s.restarts,
            s.pending_full
        );
    }
}
