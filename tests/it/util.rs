//! Shared fixtures: small jobs, time bounds, and child processes with deadlines.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use paramserv::apps::logreg::LogregConfig;
use paramserv::cluster::job::{AppConfig, JobConfig};
use paramserv::proto::partition::Partitioning;
use paramserv::server::optimizer::OptimizerSpec;
use paramserv::server::table::{Init, TableSpec};

/// Every async test runs under this bound.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `fut` or fails the test after [`TEST_TIMEOUT`].
pub(crate) async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut).await.expect("the test did not finish within its time bound")
}

/// A logistic regression job small enough for debug builds.
pub(crate) fn small_logreg(partitioning: Partitioning) -> JobConfig {
    let cfg = LogregConfig { features: 2_000, samples: 4_000, nnz: 10, batch: 32, epochs: 3, label_noise: 0.0 };
    let mut job = JobConfig::new(AppConfig::Logreg(cfg.clone()), cfg.tables(partitioning, Init::Zeros)).unwrap();
    job.optimizer = OptimizerSpec::Sgd { lr: 4.0 };
    job
}

/// A custom job over `tables`, with small requests so that requests get split.
pub(crate) fn custom(tables: Vec<TableSpec>) -> JobConfig {
    let mut job = JobConfig::new(AppConfig::Custom, tables).unwrap();
    job.optimizer = OptimizerSpec::Sgd { lr: 1.0 };
    job.request_bytes = 4096;
    job.validate().unwrap();
    job
}

pub(crate) fn table(name: &str, rows: u64, dim: u32, partitioning: Partitioning) -> TableSpec {
    TableSpec {
        name: name.into(),
        rows,
        dim,
        init: Init::Uniform { low: -1.0, high: 1.0 },
        partitioning,
        optimizer: None,
        codec: None,
        pull_codec: None,
    }
}

/// The `paramserv` binary with a clean `PS_*` environment.
pub(crate) fn paramserv() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paramserv"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PS_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Waits for `child` to exit, killing it and failing the test after `limit`.
pub(crate) fn wait_output(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("waiting for a child"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{what} (pid {pid}) did not exit within {limit:?}");
        }
    }
}

/// Reads the first stdout line of `child` within `limit`; the rest of stdout is left unread.
pub(crate) fn first_line(child: &mut Child, limit: Duration) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        std::io::copy(&mut r, &mut std::io::sink()).ok();
    });
    rx.recv_timeout(limit).expect("no first line in time")
}

/// Kills a child when dropped (a failing test must not leave processes behind).
pub(crate) struct KillOnDrop(pub(crate) Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free loopback port: bound, then released (a port nobody listens on).
pub(crate) fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How long a python child (gensim import, oracle script) may take.
pub(crate) const PYTHON_LIMIT: Duration = Duration::from_secs(300);

/// A python that can import gensim, numpy and scipy, or `None` (the oracle tests skip).
pub(crate) fn gensim_python() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| match std::env::var("PARAMSERV_PYTHON") {
            Ok(p) if !p.is_empty() => {
                assert!(has_gensim(&p), "PARAMSERV_PYTHON={p} cannot import gensim, numpy and scipy");
                Some(p)
            }
            _ => has_gensim("python3").then(|| "python3".to_owned()),
        })
        .as_deref()
}

fn has_gensim(python: &str) -> bool {
    let child = Command::new(python)
        .args(["-c", "import gensim, numpy, scipy"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    child.is_ok_and(|c| wait_output(c, PYTHON_LIMIT, "python probing for gensim").status.success())
}
