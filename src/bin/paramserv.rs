//! The `paramserv` command line: run a local cluster, a role of a multi-process job, or a benchmark.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

// Frames of a megabyte are allocated and freed constantly; glibc returns such blocks to the kernel
// and pays page faults to get them back, mimalloc keeps them (about 2x the goodput in-process).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;

use anyhow::{Context, Result};
use paramserv::apps::logreg::EpochStats;
use paramserv::apps::word2vec::train::StepProgress;
use paramserv::apps::{JobReport, run_app, run_app_with_progress};
use paramserv::bench::{self, BenchError};
use paramserv::cluster::config::{
    self, BenchCommand, CliError, Command, ConnectArgs, DemoArgs, LocalArgs, Word2vecArgs,
};
use paramserv::cluster::coordinator::{new_run, run_coordinator};
use paramserv::cluster::job::{AppConfig, JobConfig};
use paramserv::cluster::local::LocalCluster;
use paramserv::cluster::node::{NodeConfig, ServerConfig, run_node};
use paramserv::proto::consistency::Consistency;
use paramserv::proto::coordinator::CoordinatorConfig;
use paramserv::transport::handshake::Auth;
use paramserv::transport::{Net, Transport};
use paramserv::worker::Worker;
use paramserv_codecs::CodecSpec;

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e) => {
            err_line(format_args!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PS_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            err_line(format_args!("error: {e:#}"));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Like clap's usage errors, an invalid job exits with 2; a failed run with 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.is::<Invalid>() { 2 } else { 1 }
}

/// A job or setting found invalid before anything ran or printed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Invalid(Box<dyn std::error::Error + Send + Sync>);

/// `e` as an [`Invalid`] error, which exits with code 2.
fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> anyhow::Error {
    Invalid(e.into()).into()
}

/// A benchmark's bad flags are invalid; anything else failed at run time.
fn bench_error(e: BenchError) -> anyhow::Error {
    match e {
        BenchError::Args(_) => invalid(e),
        e => e.into(),
    }
}

/// Checks the shape of a job before anything starts.
fn check_shape(servers: u32, workers: u32, consistency: Consistency) -> Result<()> {
    if servers == 0 || workers == 0 {
        return Err(invalid(format!(
            "a job needs at least one server and one worker (got --servers {servers} --workers {workers})"
        )));
    }
    consistency.check(workers).map_err(invalid)?;
    if consistency == Consistency::Hogwild && servers != 1 {
        return Err(invalid(format!(
            "--consistency hogwild runs every worker as a thread of one server's process: it needs \
             --servers 1 (got {servers})"
        )));
    }
    Ok(())
}

/// Writes a line to stdout with [`write_line`].
fn out_line(line: impl Display) {
    write_line(std::io::stdout().lock(), line);
}

/// Writes a line to stderr with [`write_line`].
fn err_line(line: impl Display) {
    write_line(std::io::stderr().lock(), line);
}

/// Writes `line` and a newline, dropping it if `w` fails. `println!` panics instead when stdout is
/// closed (`paramserv local | head -1`), which fails the worker task that prints.
fn write_line(mut w: impl Write, line: impl Display) {
    let _ = writeln!(w, "{line}");
}

/// `paramserv local` and `paramserv word2vec`: a whole job in this process.
async fn run_local(a: LocalArgs) -> Result<()> {
    let job = a.job.job(a.workers).map_err(invalid)?;
    check_shape(a.servers, a.workers, job.consistency)?;
    let cluster = LocalCluster {
        colocate: a.colocate,
        join_timeout: a.join_timeout,
        heartbeat_timeout: a.heartbeat_timeout,
        ..LocalCluster::new(a.servers, a.workers, a.transport)
    };
    if !a.json {
        out_line(format_args!(
            "paramserv local: {} server(s), {} worker(s), {} transport{}, app {}",
            a.servers,
            a.workers,
            a.transport,
            if a.colocate { ", colocated" } else { "" },
            job.app.name()
        ));
    }
    let json = a.json;
    // Progress of worker 0 on long runs (the bar hides itself when stderr is not a terminal).
    let bar = (!json && matches!(job.app, AppConfig::Word2vec(_))).then(|| Arc::new(Progress::new(a.workers)));
    let started = Instant::now();
    let reports = cluster
        .run(&job, {
            let bar = bar.clone();
            move |worker| {
                let bar = bar.clone();
                async move {
                    let rank = worker.rank();
                    let on_epoch = {
                        let bar = bar.clone();
                        move |e: &EpochStats| {
                            if rank == 0 {
                                match &bar {
                                    Some(b) => b.println(epoch_line(e)),
                                    None => print_epoch(e, json),
                                }
                            }
                        }
                    };
                    run_app_with_progress(worker, on_epoch, move |p| {
                        if let Some(b) = bar.as_ref().filter(|_| rank == 0) {
                            b.update(p);
                        }
                    })
                    .await
                }
            }
        })
        .await?;
    if let Some(b) = bar {
        b.finish();
    }
    let report = reports.into_iter().next().context("the cluster had no workers")?;
    finish(&report, a.transport, json, started)
}

/// A progress bar over worker 0's corpus words, with the cluster's estimated words/s (worker 0's
/// times the workers), the step's loss and worker 0's bytes/s.
struct Progress {
    bar: indicatif::ProgressBar,
    workers: u32,
    started: Instant,
}

impl Progress {
    fn new(workers: u32) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
                .expect("a valid progress template")
                .progress_chars("=> "),
        );
        Self { bar, workers, started: Instant::now() }
    }

    fn update(&self, p: &StepProgress) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_length(p.total_words);
        self.bar.set_position(p.words);
        self.bar.set_message(format!(
            "{:.0} words/s, loss {:.4}, {:.1} MB/s",
            p.words as f64 * f64::from(self.workers) / secs,
            p.loss,
            p.bytes as f64 / secs / 1e6
        ));
    }

    /// Prints above the bar, or plainly when the bar is hidden (stderr is not a terminal).
    fn println(&self, line: String) {
        if self.bar.is_hidden() { out_line(line) } else { self.bar.println(line) }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `paramserv demo`: word2vec once per codec pipeline, and the table users come for.
async fn run_demo(a: DemoArgs) -> Result<()> {
    let mut codecs = vec![CodecSpec::Raw];
    codecs.extend(a.codecs.iter().filter(|c| **c != CodecSpec::Raw).cloned());
    let args = Word2vecArgs { corpus: a.corpus.clone(), ..Word2vecArgs::default() };
    let cfg = args.config(a.epochs, a.workers).map_err(invalid)?;
    let tables = cfg.tables(Default::default());
    let base = JobConfig::new(AppConfig::Word2vec(cfg), tables).map_err(invalid)?;
    check_shape(a.servers, a.workers, base.consistency)?;
    if !a.json {
        let corpus =
            a.corpus.as_ref().map_or_else(|| "the built-in synthetic corpus".to_owned(), |p| p.display().to_string());
        out_line(format_args!(
            "paramserv demo: word2vec on {corpus}, {} server(s), {} worker(s) in-process, {} epoch(s) per codec",
            a.servers, a.workers, a.epochs
        ));
        out_line(format_args!(
            "{:<22} {:>14} {:>8} {:>12} {:>10} {:>9}  {}",
            "codec",
            "bytes pushed",
            "saving",
            "words/s",
            "final loss",
            "quality",
            "(quality: planted-group score, 1 = perfect)"
        ));
    }
    let mut raw_bytes = None;
    for codec in codecs {
        let mut job = base.clone();
        job.codec = (codec != CodecSpec::Raw).then(|| codec.clone());
        job.validate().map_err(invalid)?;
        let reports = LocalCluster::new(a.servers, a.workers, Transport::Inproc)
            .run(&job, |worker| async move { run_app(worker, |_| {}).await })
            .await
            .with_context(|| format!("the run with codec {codec}"))?;
        let r = reports.into_iter().next().context("the cluster had no workers")?;
        // Pushes: what workers sent to servers (keys, headers and coded values).
        let pushed = r.bytes_sent;
        let base_bytes = *raw_bytes.get_or_insert(pushed);
        let saving = base_bytes as f64 / pushed.max(1) as f64;
        let w2v = r.word2vec.as_ref().context("a word2vec report")?;
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["codec"] = serde_json::json!(codec.to_string());
            v["saving_vs_raw"] = serde_json::json!(saving);
            out_line(v);
        } else {
            out_line(format_args!(
                "{:<22} {:>14} {:>7.1}x {:>12.0} {:>10.4} {:>9}",
                codec.to_string(),
                pushed,
                saving,
                w2v.words_per_s,
                r.final_loss,
                w2v.evaluation.planted_group_score.map_or_else(|| "-".to_owned(), |q| format!("{q:.3}"))
            ));
        }
    }
    Ok(())
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Local(a) | Command::Word2vec(a) => run_local(a).await,
        Command::Demo(a) => run_demo(a).await,
        Command::Coordinator(a) => {
            let job = a.job.job(a.workers).map_err(invalid)?;
            check_shape(a.servers, a.workers, job.consistency)?;
            if job.aggregation == paramserv::cluster::job::Aggregation::Switch && job.switch.is_none() {
                return Err(invalid(
                    "--aggregation switch needs --switch ADDR for a multi-process job (only `local` starts its own agent)",
                ));
            }
            let net = Net::Tcp;
            let listener = net
                .listen(&a.listen, Default::default())
                .await
                .with_context(|| format!("cannot listen on {}", a.listen))?;
            let addr = listener.local_addr()?;
            // The first line says where we listen, so scripts using port 0 can find us.
            out_line(format_args!("coordinator listening on {addr}"));
            let cfg = CoordinatorConfig {
                servers: a.servers,
                workers: a.workers,
                job: job.to_toml(),
                join_timeout: a.join_timeout,
                heartbeat_timeout: a.heartbeat_timeout,
                consistency: job.consistency,
                run: new_run(),
            };
            run_coordinator(listener, cfg, a.auth.auth()).await.map_err(anyhow::Error::msg)?;
            out_line(format_args!(
                "job finished: {} server(s) and {} worker(s) shut down cleanly",
                a.servers, a.workers
            ));
            Ok(())
        }
        Command::Server(a) => {
            let cfg = node_config(&a.connect, a.auth.auth(), Some(a.shard.server()), 0)?;
            out_line(format_args!("server: joining coordinator {}", cfg.coordinator));
            run_node(Net::Tcp, cfg, |w| run_app(w, |_| {})).await?;
            out_line("server: job finished, shut down");
            Ok(())
        }
        Command::Worker(a) => {
            let cfg = node_config(&a.connect, a.auth.auth(), None, 1)?;
            run_workers(cfg, a.json).await
        }
        Command::Node(a) => {
            let cfg = node_config(&a.connect, a.auth.auth(), Some(a.shard.server()), a.workers)?;
            run_workers(cfg, a.json).await
        }
        Command::Bench(b) => match b.which {
            BenchCommand::Pushpull(a) => {
                let r = bench::pushpull(&a).await.map_err(bench_error)?;
                if a.json {
                    out_line(serde_json::to_string(&r)?);
                } else {
                    out_line(format_args!(
                        "pushpull ({:?}, {}): {:.2} Gbit/s goodput, p50 {} us, p99 {} us, {} bytes on the wire{}{}",
                        r.mode,
                        r.transport,
                        r.goodput_gbit_s,
                        r.p50_us,
                        r.p99_us,
                        r.bytes_on_wire,
                        r.iperf3_gbit_s
                            .map(|i| format!("; iperf3 {i:.2} Gbit/s (ratio {:.2})", r.goodput_gbit_s / i))
                            .unwrap_or_default(),
                        r.tcp_goodput_gbit_s
                            .map(|t| format!("; tcp {t:.2} Gbit/s (ratio {:.2})", r.goodput_gbit_s / t))
                            .unwrap_or_default()
                    ));
                }
                Ok(())
            }
            BenchCommand::Sparse(a) => {
                let r = bench::sparse(&a).await.map_err(bench_error)?;
                if a.json {
                    out_line(serde_json::to_string(&r)?);
                } else {
                    out_line(format_args!(
                        "sparse ({} keys x {}, {}): push {:.1} ms, pull {:.1} ms, {:.1} M keys/s; as one range: push {:.1} ms, pull {:.1} ms",
                        r.keys,
                        r.dim,
                        r.transport,
                        r.push_ms,
                        r.pull_ms,
                        r.keys_per_s / 1e6,
                        r.range_push_ms,
                        r.range_pull_ms
                    ));
                }
                Ok(())
            }
            BenchCommand::Stragglers(a) => {
                let r = bench::stragglers(&a).await.map_err(bench_error)?;
                if a.json {
                    out_line(serde_json::to_string(&r)?);
                } else {
                    out_line(format_args!(
                        "stragglers ({}, {} of {} workers {}x slower, {:?}): {:.1} steps/s, loss {:.4} -> {:.4}, {} late steps{}",
                        r.consistency,
                        r.slow,
                        r.workers,
                        r.slowdown,
                        r.pattern,
                        r.steps_per_s,
                        r.initial_loss,
                        r.final_loss,
                        r.late_steps,
                        match (r.speedup_vs_bsp, r.loss_vs_bsp) {
                            (Some(s), Some(l)) =>
                                format!("; vs bsp in this run: {s:.2}x steps/s, loss {:+.2}%", l * 100.0),
                            _ => String::new(),
                        }
                    ));
                }
                Ok(())
            }
            BenchCommand::Codecs(a) => {
                // CPU work only: no runtime thread needs to wait on it.
                let reports = tokio::task::spawn_blocking(move || {
                    let r = bench::codecs(&a);
                    (a, r)
                })
                .await?;
                let (a, reports) = (reports.0, reports.1.map_err(bench_error)?);
                for r in &reports {
                    if a.json {
                        out_line(serde_json::to_string(r)?);
                    } else {
                        out_line(format_args!(
                            "{:<28} encode {:>6.2} GB/s  decode {:>6.2} GB/s  {:>11} -> {:>10} B  ratio {:>7.2}x  rel L2 error {:.2e}",
                            r.codec, r.encode_gb_s, r.decode_gb_s, r.bytes_in, r.bytes_out, r.ratio, r.rel_l2_error
                        ));
                    }
                }
                Ok(())
            }
            BenchCommand::Allreduce(a) => {
                // Worker threads block on their sockets: keep them off the runtime.
                let (a, r) = tokio::task::spawn_blocking(move || {
                    let r = bench::allreduce(&a);
                    (a, r)
                })
                .await?;
                let r = r.map_err(bench_error)?;
                if a.json {
                    out_line(serde_json::to_string(&r)?);
                } else {
                    let agent = match (r.agent_pps, r.udp_baseline_pps) {
                        (Some(p), Some(b)) => {
                            format!(", agent {p:.0} pkt/s in ({:.2}x of a plain UDP pair's {b:.0})", p / b)
                        }
                        (Some(p), None) => format!(", agent {p:.0} pkt/s in"),
                        _ => String::new(),
                    };
                    out_line(format_args!(
                        "allreduce {:?} ({} workers, {} floats): {:.3} s, {:.2} Gbit/s{agent}, {} retransmits, \
                         max error {:.3e} (bound {:.3e}), verified {}",
                        r.backend,
                        r.workers,
                        r.floats,
                        r.seconds,
                        r.goodput_gbit_s,
                        r.retransmits,
                        r.max_abs_error,
                        r.error_bound,
                        r.verified
                    ));
                }
                Ok(())
            }
            BenchCommand::Prefetch(a) => {
                let r = bench::prefetch(&a).await.map_err(bench_error)?;
                if a.json {
                    out_line(serde_json::to_string(&r)?);
                } else {
                    out_line(format_args!(
                        "prefetch ({}, {} rows x {}): pull {:.2} ms, compute {:.2} ms; step {:.2} ms without, \
                         {:.2} ms with prefetch (ratio {:.2}), {:.2} ms with prefetch and background push (ratio {:.2})",
                        r.transport,
                        r.rows,
                        r.dim,
                        r.pull_ms,
                        r.compute_ms,
                        r.step_ms_without,
                        r.step_ms_prefetch,
                        r.ratio_prefetch,
                        r.step_ms_prefetch_background_push,
                        r.ratio_prefetch_background_push
                    ));
                }
                Ok(())
            }
        },
    }
}

fn node_config(c: &ConnectArgs, auth: Auth, server: Option<ServerConfig>, workers: u32) -> Result<NodeConfig> {
    Ok(NodeConfig {
        coordinator: c.coordinator().map_err(invalid)?,
        auth,
        server,
        workers,
        label: c.label(),
        join_timeout: c.join_timeout,
    })
}

async fn run_workers(cfg: NodeConfig, json: bool) -> Result<()> {
    let started = Instant::now();
    // One line per epoch per process, from the process's first worker.
    let first = Arc::new(FirstWorker::default());
    let reports = run_node(Net::Tcp, cfg, move |worker: Worker| {
        let rank = worker.rank();
        first.add(rank);
        let first = first.clone();
        async move {
            run_app(worker, move |e| {
                if first.is(rank) {
                    print_epoch(e, json)
                }
            })
            .await
        }
    })
    .await?;
    match reports.into_iter().next() {
        Some(r) => finish(&r.output, Transport::Tcp, json, started),
        None => Ok(()),
    }
}

/// The lowest rank among a process's workers.
///
/// Each worker is added before it trains. An epoch ends at a barrier that every worker of the job
/// reaches, so by the first epoch's line every worker of the process has been added.
#[derive(Debug)]
struct FirstWorker(AtomicU32);

impl Default for FirstWorker {
    fn default() -> Self {
        Self(AtomicU32::new(u32::MAX))
    }
}

impl FirstWorker {
    /// Adds the worker of rank `rank`.
    fn add(&self, rank: u32) {
        self.0.fetch_min(rank, Ordering::SeqCst);
    }

    /// Whether `rank` is the lowest rank added.
    fn is(&self, rank: u32) -> bool {
        self.0.load(Ordering::SeqCst) == rank
    }
}

fn epoch_line(e: &EpochStats) -> String {
    format!("epoch {:>3}  loss {:.6}  ({:.2} s)", e.epoch, e.loss, e.seconds)
}

fn print_epoch(e: &EpochStats, json: bool) {
    let line = epoch_line(e);
    // With --json, stdout carries only the final object.
    if json { err_line(line) } else { out_line(line) }
}

fn finish(r: &JobReport, transport: Transport, json: bool, started: Instant) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["transport"] = serde_json::json!(transport.to_string());
        out_line(v);
        return Ok(());
    }
    out_line(format_args!(
        "initial loss {:.6} -> final loss {:.6} after {} epoch(s) in {:.2} s (wall {:.2} s)",
        r.initial_loss,
        r.final_loss,
        r.epochs,
        r.seconds,
        started.elapsed().as_secs_f64()
    ));
    if let Some(w) = &r.word2vec {
        out_line(format_args!(
            "word2vec: {:.0} words/s ({} corpus words x {} epoch(s)), vocabulary {}",
            w.words_per_s, w.corpus_words, r.epochs, w.vocab_size
        ));
        let e = &w.evaluation;
        if let Some(c) = e.similarity_coverage {
            out_line(format_args!(
                "  similarity: Spearman {}, coverage {:.1}%, {} malformed line(s) skipped",
                e.similarity_spearman.map_or_else(|| "undefined".to_owned(), |s| format!("{s:.4}")),
                c * 100.0,
                e.similarity_malformed_lines.unwrap_or(0)
            ));
        }
        if let (Some(a), Some(c)) = (e.analogy_accuracy, e.analogy_coverage) {
            out_line(format_args!(
                "  analogies (3CosAdd, 30k most frequent words): accuracy {:.2}%, coverage {:.1}%, {} malformed line(s) skipped",
                a * 100.0,
                c * 100.0,
                e.analogy_malformed_lines.unwrap_or(0)
            ));
        }
        if let Some(q) = e.planted_group_score {
            out_line(format_args!("  planted groups: score {q:.3} (1 = every nearest neighbour in its group)"));
        }
    }
    out_line(format_args!(
        "workers sent {} bytes (header {}, payload {}) and received {} bytes (header {}, payload {})",
        r.bytes_sent,
        r.header_bytes_sent,
        r.payload_bytes_sent,
        r.bytes_received,
        r.header_bytes_received,
        r.payload_bytes_received
    ));
    if r.switch_bytes_sent + r.switch_bytes_received > 0 {
        out_line(format_args!(
            "  switch agent (UDP payloads, in the totals above): sent {} bytes, received {} bytes",
            r.switch_bytes_sent, r.switch_bytes_received
        ));
    }
    for t in &r.codecs {
        out_line(format_args!(
            "  table '{}': pushed values {} B on the wire ({} B as f32, {:.1}x, codec {}); pulled {} B ({} B as f32, {:.1}x, codec {})",
            t.table,
            t.push_wire_bytes,
            t.push_raw_bytes,
            t.push_ratio,
            t.codec,
            t.pull_wire_bytes,
            t.pull_raw_bytes,
            t.pull_ratio,
            t.pull_codec
        ));
    }
    for l in &r.links {
        let c = l.counters;
        out_line(format_args!(
            "  worker {} <-> server {}: sent {} + {} B in {} frames, received {} + {} B in {} frames (header + payload)",
            l.worker,
            l.server,
            c.header_sent,
            c.payload_sent,
            c.frames_sent,
            c.header_received,
            c.payload_received,
            c.frames_received
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramserv::cluster::job::ConfigError;

    /// A stdout whose reader has gone, as after `paramserv local | head -1`.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_pipe_drops_the_line() {
        write_line(ClosedPipe, format_args!("epoch {:>3}", 1));
        let mut buf = Vec::new();
        write_line(&mut buf, format_args!("epoch {:>3}", 1));
        assert_eq!(buf, b"epoch   1\n");
    }

    #[test]
    fn an_invalid_job_exits_with_2_and_a_failed_run_with_1() {
        let config = ConfigError::Invalid { field: "lr", detail: "-1 (must be a positive number)".into() };
        assert_eq!(exit_code(&invalid(config)), 2);
        assert_eq!(exit_code(&check_shape(0, 4, Consistency::Asp).unwrap_err()), 2);
        assert!(check_shape(1, 1, Consistency::Asp).is_ok());
        assert_eq!(exit_code(&check_shape(1, 2, Consistency::Backup { backups: 2 }).unwrap_err()), 2);
        assert!(check_shape(2, 2, Consistency::Hogwild).unwrap_err().to_string().contains("--servers 1"));
        assert_eq!(exit_code(&bench_error(BenchError::Args("--rounds".into()))), 2);
        assert_eq!(exit_code(&bench_error(BenchError::Iperf3("gone".into()))), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot reach the coordinator")), 1);
        let cli = config::parse_from(["paramserv", "worker"]).unwrap();
        let Command::Worker(w) = cli.command else { panic!("parsed a worker") };
        let missing = node_config(&w.connect, w.auth.auth(), None, 1).unwrap_err();
        assert_eq!(exit_code(&missing), 2, "{missing}");
        // The message is the inner error's, unchanged.
        assert_eq!(invalid("bad").to_string(), "bad");
    }

    #[test]
    fn the_first_worker_is_the_lowest_rank_of_the_process() {
        // A process hosting ranks 1 and 2 (another holds 0): rank 1 prints, though `rank % 2 == 0`
        // picked rank 2. The order workers start in does not matter.
        for order in [[2, 1], [1, 2]] {
            let first = FirstWorker::default();
            order.into_iter().for_each(|r| first.add(r));
            assert!(first.is(1) && !first.is(2), "{order:?}");
        }
        let first = FirstWorker::default();
        (3..6).rev().for_each(|r| first.add(r));
        assert_eq!((3..6).filter(|&r| first.is(r)).collect::<Vec<_>>(), [3]);
    }
}
