//! The command line, parsed once: flags, `PS_*` environment variables and a TOML file.
//!
//! Every flag also reads from an environment variable (`--servers` from `PS_NUM_SERVERS`,
//! `--coordinator` from `PS_COORDINATOR`, ...) and from the file given with `--config` (or
//! `PS_CONFIG`). Precedence: flag, then environment, then file, then default.
//!
//! The file uses the flags' long names as keys. Top-level keys apply to every command that has
//! that flag; a table named after a command (`[worker]`, `[coordinator]`, ...) applies to that
//! command only and wins over top-level keys. A key no command knows is an error, so a typo never
//! passes silently.
//!
//! ```toml
//! coordinator = "10.0.0.1:7000"
//! job-id = "ctr-2026-11"
//! epochs = 10
//! [coordinator]
//! listen = "0.0.0.0:7000"
//! servers = 2
//! workers = 4
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use super::job::{AppConfig, ConfigError, JobConfig};
use crate::apps::logreg::LogregConfig;
use crate::proto::partition::Partitioning;
use crate::server::table::Init;
use crate::transport::Transport;
use crate::transport::handshake::Auth;

/// paramserv: a parameter server whose edge is communication.
#[derive(Debug, Parser)]
#[command(name = "paramserv", version, about, propagate_version = true, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cluster in this process: coordinator, servers and workers (the quick start).
    Local(LocalArgs),
    /// Run the coordinator of a multi-process job; it defines the job for every node.
    Coordinator(CoordinatorArgs),
    /// Run one server shard.
    Server(ServerArgs),
    /// Run one worker.
    Worker(WorkerArgs),
    /// Run a server shard and workers in one process (workers reach its rows in shared memory).
    Node(NodeArgs),
    /// End-to-end benchmarks.
    Bench(BenchArgs),
}

/// What the job runs; defined on the coordinator (or `local`) and handed to every node.
#[derive(Clone, Debug, Args)]
pub struct JobArgs {
    /// App to run.
    #[arg(long, env = "PS_APP", default_value = "logreg", value_parser = ["logreg"])]
    pub app: String,
    /// Passes over the data.
    #[arg(long, env = "PS_EPOCHS", default_value_t = 5)]
    pub epochs: u32,
    /// Samples per minibatch.
    #[arg(long, env = "PS_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: u32,
    /// Learning rate servers apply pushes with.
    #[arg(long, env = "PS_LR", default_value_t = JobConfig::DEFAULT_LR)]
    pub lr: f32,
    /// Seed of the model's initial values and of the synthetic data.
    #[arg(long, env = "PS_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Features of the synthetic dataset (rows of the weight table).
    #[arg(long, env = "PS_FEATURES", default_value_t = 100_000)]
    pub features: u64,
    /// Samples of the synthetic dataset.
    #[arg(long, env = "PS_SAMPLES", default_value_t = 200_000)]
    pub samples: u64,
    /// Non-zero features per sample.
    #[arg(long, env = "PS_NNZ", default_value_t = 20)]
    pub nnz: u32,
    /// How rows are spread over servers: range or hash.
    #[arg(long, env = "PS_PARTITIONING", default_value = "range")]
    pub partitioning: Partitioning,
    /// Initial values: zeros, constant:C, uniform:A,B or normal:SIGMA.
    #[arg(long, env = "PS_INIT", default_value = "zeros")]
    pub init: Init,
    /// Largest frame any node accepts, in bytes.
    #[arg(long, env = "PS_MAX_FRAME_BYTES", default_value_t = crate::proto::wire::Limits::DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: u32,
    /// Target size of one worker request in bytes; bigger pulls and pushes are split.
    #[arg(long, env = "PS_REQUEST_BYTES", default_value_t = JobConfig::DEFAULT_REQUEST_BYTES)]
    pub request_bytes: u32,
}

impl JobArgs {
    /// The job these flags describe.
    pub fn job(&self) -> Result<JobConfig, ConfigError> {
        let logreg = LogregConfig {
            features: self.features,
            samples: self.samples,
            nnz: self.nnz,
            batch: self.batch_size,
            epochs: self.epochs,
        };
        let job = JobConfig {
            seed: self.seed,
            lr: self.lr,
            max_frame_bytes: self.max_frame_bytes,
            request_bytes: self.request_bytes,
            tables: logreg.tables(self.partitioning, self.init),
            app: AppConfig::Logreg(logreg),
        };
        job.validate()?;
        Ok(job)
    }
}

/// Who the node is to its peers.
#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// Job id; nodes of another job are refused.
    #[arg(long, env = "PS_JOB_ID", default_value = "paramserv")]
    pub job_id: String,
    /// Shared secret every node must prove it knows (never sent in clear).
    #[arg(long, env = "PS_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

impl AuthArgs {
    /// The handshake identity.
    pub fn auth(&self) -> Auth {
        Auth { job_id: self.job_id.clone(), secret: self.secret.as_ref().map(|s| s.as_bytes().to_vec()) }
    }
}

/// How a node finds the coordinator.
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// Coordinator address (host:port).
    #[arg(long, env = "PS_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Give up if the job has not assembled within this time (e.g. 500ms, 30s, 2m).
    #[arg(long, env = "PS_JOIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Label in the coordinator's messages (default: host name and process id).
    #[arg(long, env = "PS_LABEL")]
    pub label: Option<String>,
}

impl ConnectArgs {
    /// The coordinator address, which must be given one way or another.
    pub fn coordinator(&self) -> Result<String, ConfigError> {
        self.coordinator.clone().ok_or_else(|| ConfigError::Invalid {
            field: "coordinator",
            detail: "no address given (--coordinator, PS_COORDINATOR or 'coordinator' in the config file)".into(),
        })
    }

    /// The label, defaulting to host and pid.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "localhost".into());
            format!("{host} pid {}", std::process::id())
        })
    }
}

/// `paramserv local`.
#[derive(Clone, Debug, Args)]
pub struct LocalArgs {
    /// Server shards.
    #[arg(long, env = "PS_NUM_SERVERS", default_value_t = 2)]
    pub servers: u32,
    /// Workers.
    #[arg(long, env = "PS_NUM_WORKERS", default_value_t = 4)]
    pub workers: u32,
    /// How the roles talk: inproc (encoded frames over channels) or tcp (loopback sockets).
    #[arg(long, env = "PS_TRANSPORT", default_value = "inproc", value_enum)]
    pub transport: Transport,
    /// Put the workers on the server nodes (shared-memory access to their own rows).
    #[arg(long, env = "PS_COLOCATE")]
    pub colocate: bool,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long, env = "PS_JSON")]
    pub json: bool,
    /// Give up if the cluster has not assembled within this time.
    #[arg(long, env = "PS_JOIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// The job.
    #[command(flatten)]
    pub job: JobArgs,
    /// TOML file with settings.
    #[arg(long, env = "PS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `paramserv coordinator`.
#[derive(Clone, Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to listen on.
    #[arg(long, env = "PS_LISTEN", default_value = "0.0.0.0:7000")]
    pub listen: String,
    /// Server shards to expect.
    #[arg(long, env = "PS_NUM_SERVERS", default_value_t = 1)]
    pub servers: u32,
    /// Workers to expect.
    #[arg(long, env = "PS_NUM_WORKERS", default_value_t = 1)]
    pub workers: u32,
    /// Fail if the job has not assembled within this time, naming who is missing.
    #[arg(long, env = "PS_JOIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Job id and secret.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The job.
    #[command(flatten)]
    pub job: JobArgs,
    /// TOML file with settings.
    #[arg(long, env = "PS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where a node's shard listens, and where workers should dial it.
#[derive(Clone, Debug, Args)]
pub struct ShardArgs {
    /// Address the shard listens on (port 0 picks one).
    #[arg(long, env = "PS_LISTEN", default_value = "0.0.0.0:0")]
    pub listen: String,
    /// Address workers should dial, if not the listen address with this host's IP.
    #[arg(long, env = "PS_ADVERTISE")]
    pub advertise: Option<String>,
}

impl ShardArgs {
    /// The node's shard configuration.
    pub fn server(&self) -> super::node::ServerConfig {
        super::node::ServerConfig { listen: self.listen.clone(), advertise: self.advertise.clone() }
    }
}

/// `paramserv server`.
#[derive(Clone, Debug, Args)]
pub struct ServerArgs {
    /// Coordinator and timeouts.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Job id and secret.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where the shard listens.
    #[command(flatten)]
    pub shard: ShardArgs,
    /// TOML file with settings.
    #[arg(long, env = "PS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `paramserv worker`.
#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator and timeouts.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Job id and secret.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Print one JSON object at the end (the same as `local --json`).
    #[arg(long, env = "PS_JSON")]
    pub json: bool,
    /// TOML file with settings.
    #[arg(long, env = "PS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `paramserv node`.
#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    /// Coordinator and timeouts.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Job id and secret.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where the shard listens.
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Workers this node runs.
    #[arg(long, env = "PS_NODE_WORKERS", default_value_t = 1)]
    pub workers: u32,
    /// Print one JSON object at the end (the same as `local --json`).
    #[arg(long, env = "PS_JSON")]
    pub json: bool,
    /// TOML file with settings.
    #[arg(long, env = "PS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `paramserv bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: BenchCommand,
}

/// The benchmarks.
#[derive(Clone, Debug, Subcommand)]
pub enum BenchCommand {
    /// Dense push/pull goodput and latency (ps-lite's test_benchmark shape).
    Pushpull(crate::bench::PushPullArgs),
    /// Push and pull of millions of sparse keys (ps-lite's test_kv_app_benchmark shape).
    Sparse(crate::bench::SparseArgs),
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap's own error (also `--help` and `--version`).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The config file is unreadable or has a bad key.
    #[error("{0}")]
    Config(String),
}

/// Parses the process's command line, environment and config file.
pub fn parse() -> Result<Cli, CliError> {
    parse_from(std::env::args_os())
}

/// Parses `args` (with the program name first), the environment and the config file they name.
pub fn parse_from(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Cli, CliError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let path = match sub.try_get_one::<PathBuf>("config") {
        Ok(Some(p)) => p.clone(),
        _ => return Ok(Cli::from_arg_matches(&matches)?),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Config(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table =
        text.parse().map_err(|e| CliError::Config(format!("config file {}: {e}", path.display())))?;
    let extra = file_args(&cmd, name, sub, &table)
        .map_err(|e| CliError::Config(format!("config file {}: {e}", path.display())))?;
    let mut all = args;
    all.extend(extra);
    Ok(Cli::try_parse_from(all)?)
}

/// The flags the file adds to command `name`: every setting not already given by a flag or an
/// environment variable.
fn file_args(
    cmd: &clap::Command,
    name: &str,
    given: &clap::ArgMatches,
    table: &toml::Table,
) -> Result<Vec<OsString>, String> {
    let sub = cmd.find_subcommand(name).expect("clap matched this subcommand");
    let has = |c: &clap::Command, key: &str| c.get_arguments().any(|a| a.get_long() == Some(key));
    let mut settings: Vec<(&str, &toml::Value)> = Vec::new();
    let mut section = None;
    for (key, value) in table {
        match (value, cmd.find_subcommand(key)) {
            (toml::Value::Table(t), Some(other)) => {
                if let Some(bad) = t.keys().find(|k| !has(other, k) || *k == "config") {
                    return Err(format!("'{bad}' in [{key}] is not a setting of `paramserv {key}`"));
                }
                if key == name {
                    section = Some(t);
                }
            }
            _ if key == "config" => return Err("'config' cannot be set from a config file".into()),
            _ if cmd.get_subcommands().any(|c| has(c, key)) => {
                if has(sub, key) {
                    settings.push((key, value));
                }
            }
            _ => return Err(format!("unknown setting '{key}'")),
        }
    }
    if let Some(t) = section {
        settings.retain(|(k, _)| !t.contains_key(*k));
        settings.extend(t.iter().map(|(k, v)| (k.as_str(), v)));
    }
    let mut out = Vec::new();
    for (key, value) in settings {
        let arg = sub.get_arguments().find(|a| a.get_long() == Some(key)).expect("checked above");
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            match (v, arg.get_action()) {
                (toml::Value::Boolean(true), ArgAction::SetTrue) => out.push(format!("--{key}").into()),
                (toml::Value::Boolean(false), ArgAction::SetTrue) => {}
                (toml::Value::String(s), _) => out.extend([format!("--{key}").into(), s.into()]),
                (toml::Value::Integer(_) | toml::Value::Float(_), _) => {
                    out.extend([format!("--{key}").into(), v.to_string().into()])
                }
                (other, _) => return Err(format!("'{key}' cannot be {}", other.type_str())),
            }
        }
    }
    Ok(out)
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit '{other}' in '{s}' (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(cli: Cli) -> WorkerArgs {
        match cli.command {
            Command::Worker(w) => w,
            other => panic!("expected worker, got {other:?}"),
        }
    }

    fn local(cli: Cli) -> LocalArgs {
        match cli.command {
            Command::Local(l) => l,
            other => panic!("expected local, got {other:?}"),
        }
    }

    fn file(text: &str) -> tempfile_path::TempToml {
        tempfile_path::TempToml::new(text)
    }

    /// A TOML file that removes itself.
    mod tempfile_path {
        pub(super) struct TempToml(pub(super) std::path::PathBuf);
        impl TempToml {
            pub(super) fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "paramserv-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for TempToml {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let f = file(
            "coordinator = 'filehost:1'\nepochs = 9\njob-id = 'from-file'\n[worker]\njson = true\n[local]\nservers = 7\n",
        );
        let path = f.0.to_str().unwrap();
        let w = worker(parse_from(["paramserv", "worker", "--config", path, "--job-id", "flag"]).unwrap());
        assert_eq!(w.connect.coordinator.as_deref(), Some("filehost:1"));
        assert_eq!(w.auth.job_id, "flag");
        assert!(w.json);
        let l = local(parse_from(["paramserv", "local", "--config", path, "--workers", "3"]).unwrap());
        assert_eq!((l.servers, l.workers, l.job.epochs), (7, 3, 9));
    }

    #[test]
    fn unknown_keys_are_errors() {
        for (text, want) in [
            ("epocs = 3", "unknown setting 'epocs'"),
            ("[worker]\nservers = 3", "'servers' in [worker]"),
            ("config = 'x.toml'", "cannot be set"),
            ("epochs = [1, 2]\n[local]\njson = 'yes'", ""),
        ] {
            let f = file(text);
            let err = parse_from(["paramserv", "local", "--config", f.0.to_str().unwrap()]).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let err = parse_from(["paramserv", "local", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert!(err.to_string().contains("cannot read config file"), "{err}");
    }

    #[test]
    fn job_flags_are_checked() {
        let l = local(parse_from(["paramserv", "local", "--lr=-1"]).unwrap());
        assert!(l.job.job().unwrap_err().to_string().contains("invalid lr"));
        assert!(parse_from(["paramserv", "local", "--init", "gaussian"]).is_err());
        assert!(parse_from(["paramserv", "local", "--partitioning", "modulo"]).is_err());
        assert!(parse_from(["paramserv", "local", "--transport", "udp"]).is_err());
        let l = local(parse_from(["paramserv", "local", "--init", "normal:0.1", "--partitioning", "hash"]).unwrap());
        let job = l.job.job().unwrap();
        assert_eq!((job.tables[0].init, job.tables[0].partitioning), (Init::Normal { sigma: 0.1 }, Partitioning::Hash));
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let l = local(parse_from(["paramserv", "local", "--epochs", "3", "--epochs", "7"]).unwrap());
        assert_eq!(l.job.epochs, 7);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }
}
