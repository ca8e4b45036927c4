//! The `paramserv` command line: run a local cluster, a role of a multi-process job, or a benchmark.

use std::process::ExitCode;

// Frames of a megabyte are allocated and freed constantly; glibc returns such blocks to the kernel
// and pays page faults to get them back, mimalloc keeps them (about 2x the goodput in-process).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use paramserv::apps::logreg::EpochStats;
use paramserv::apps::{JobReport, run_app};
use paramserv::bench;
use paramserv::cluster::config::{self, BenchCommand, CliError, Command, ConnectArgs};
use paramserv::cluster::coordinator::run_coordinator;
use paramserv::cluster::local::LocalCluster;
use paramserv::cluster::node::{NodeConfig, ServerConfig, run_node};
use paramserv::proto::coordinator::CoordinatorConfig;
use paramserv::transport::handshake::Auth;
use paramserv::transport::{Net, Transport};

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(e @ CliError::Config(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PS_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Local(a) => {
            let job = a.job.job()?;
            let cluster = LocalCluster {
                colocate: a.colocate,
                join_timeout: a.join_timeout,
                ..LocalCluster::new(a.servers, a.workers, a.transport)
            };
            if !a.json {
                println!(
                    "paramserv local: {} server(s), {} worker(s), {} transport{}, app {}",
                    a.servers,
                    a.workers,
                    a.transport,
                    if a.colocate { ", colocated" } else { "" },
                    job.app.name()
                );
            }
            let json = a.json;
            let started = Instant::now();
            let reports = cluster
                .run(&job, move |worker| async move {
                    let rank = worker.rank();
                    run_app(worker, move |e| {
                        if rank == 0 {
                            print_epoch(e, json)
                        }
                    })
                    .await
                })
                .await?;
            let report = reports.into_iter().next().context("the cluster had no workers")?;
            finish(&report, a.transport, json, started)
        }
        Command::Coordinator(a) => {
            let job = a.job.job()?;
            if a.servers == 0 || a.workers == 0 {
                bail!(
                    "a job needs at least one server and one worker (got --servers {} --workers {})",
                    a.servers,
                    a.workers
                );
            }
            let net = Net::Tcp;
            let listener = net
                .listen(&a.listen, Default::default())
                .await
                .with_context(|| format!("cannot listen on {}", a.listen))?;
            let addr = listener.local_addr()?;
            // The first line says where we listen, so scripts using port 0 can find us.
            println!("coordinator listening on {addr}");
            let cfg = CoordinatorConfig {
                servers: a.servers,
                workers: a.workers,
                job: job.to_toml(),
                join_timeout: a.join_timeout,
                heartbeat_timeout: paramserv::proto::coordinator::DEFAULT_HEARTBEAT_TIMEOUT,
            };
            run_coordinator(listener, cfg, a.auth.auth()).await.map_err(anyhow::Error::msg)?;
            println!("job finished: {} server(s) and {} worker(s) shut down cleanly", a.servers, a.workers);
            Ok(())
        }
        Command::Server(a) => {
            let cfg = node_config(&a.connect, a.auth.auth(), Some(a.shard.server()), 0)?;
            run_node(Net::Tcp, cfg, |w| run_app(w, |_| {})).await?;
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
                let r = bench::pushpull(&a).await?;
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
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
                    );
                }
                Ok(())
            }
            BenchCommand::Sparse(a) => {
                let r = bench::sparse(&a).await?;
                if a.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "sparse ({} keys x {}, {}): push {:.1} ms, pull {:.1} ms, {:.1} M keys/s; as one range: push {:.1} ms, pull {:.1} ms",
                        r.keys,
                        r.dim,
                        r.transport,
                        r.push_ms,
                        r.pull_ms,
                        r.keys_per_s / 1e6,
                        r.range_push_ms,
                        r.range_pull_ms
                    );
                }
                Ok(())
            }
        },
    }
}

fn node_config(c: &ConnectArgs, auth: Auth, server: Option<ServerConfig>, workers: u32) -> Result<NodeConfig> {
    Ok(NodeConfig {
        coordinator: c.coordinator()?,
        auth,
        server,
        workers,
        label: c.label(),
        join_timeout: c.join_timeout,
    })
}

async fn run_workers(cfg: NodeConfig, json: bool) -> Result<()> {
    let started = Instant::now();
    let first = cfg.workers.max(1);
    let reports = run_node(Net::Tcp, cfg, move |worker| async move {
        // One line per epoch per process, from the process's first worker.
        let lead = worker.rank() % first == 0;
        run_app(worker, move |e| {
            if lead {
                print_epoch(e, json)
            }
        })
        .await
    })
    .await?;
    match reports.into_iter().next() {
        Some(r) => finish(&r.output, Transport::Tcp, json, started),
        None => Ok(()),
    }
}

fn print_epoch(e: &EpochStats, json: bool) {
    let line = format!("epoch {:>3}  loss {:.6}  ({:.2} s)", e.epoch, e.loss, e.seconds);
    // With --json, stdout carries only the final object.
    if json { eprintln!("{line}") } else { println!("{line}") }
}

fn finish(r: &JobReport, transport: Transport, json: bool, started: Instant) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["transport"] = serde_json::json!(transport.to_string());
        println!("{v}");
        return Ok(());
    }
    println!(
        "initial loss {:.6} -> final loss {:.6} after {} epoch(s) in {:.2} s (wall {:.2} s)",
        r.initial_loss,
        r.final_loss,
        r.epochs,
        r.seconds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "workers sent {} bytes (header {}, payload {}) and received {} bytes (header {}, payload {})",
        r.bytes_sent,
        r.header_bytes_sent,
        r.payload_bytes_sent,
        r.bytes_received,
        r.header_bytes_received,
        r.payload_bytes_received
    );
    for l in &r.links {
        let c = l.counters;
        println!(
            "  worker {} <-> server {}: sent {} + {} B in {} frames, received {} + {} B in {} frames (header + payload)",
            l.worker,
            l.server,
            c.header_sent,
            c.payload_sent,
            c.frames_sent,
            c.header_received,
            c.payload_received,
            c.frames_received
        );
    }
    Ok(())
}
