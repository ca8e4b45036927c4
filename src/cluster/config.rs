//! The command line, parsed once: flags, `PS_*` environment variables and a TOML file.
//!
//! Every flag also reads from an environment variable (`--servers` from `PS_NUM_SERVERS`,
//! `--coordinator` from `PS_COORDINATOR`, ...) and from the file given with `--config` (or
//! `PS_CONFIG`). Precedence: flag, then environment, then file, then default. A switch such as
//! `--json` reads `1`/`0`, `yes`/`no`, `on`/`off` or `true`/`false` from its variable
//! (`PS_JSON=1`). Durations (`--join-timeout`) are `500ms`, `30s`, `2m`, `1h` or seconds, at most
//! 7 days.
//!
//! The file uses the flags' long names as keys. A top-level key applies to every command that has
//! that flag and is ignored by the others. A table `[commands.<command>]` (`[commands.worker]`,
//! `[commands.coordinator]`, ...) applies to that command only and wins over top-level keys. The
//! command tables sit under `commands` because a command and a flag can share a name: the
//! `coordinator` command and the `--coordinator` address of the other nodes. Errors are reported
//! instead of skipped, so a typo never passes silently: a key no command knows, a key the named
//! command does not have, a command that does not exist, an array for a flag that takes one value
//! and a value of the wrong TOML type. These checks cover the whole file whichever command reads
//! it; a value itself (`epochs = "x"`) is checked only by a command that uses it.
//!
//! This module has no parser of its own for the file. Each setting becomes one `--key=value`
//! argument, appended to the command line unless a flag or an environment variable already set
//! it, and clap parses the result. (The `=` keeps a value such as `-s3` from being read as a
//! flag.) File values are thus checked by the same code as flags. The trade-off is that clap
//! reports a bad value from the file in terms of the flag it became, e.g. `invalid value 'x' for
//! '--epochs <EPOCHS>'`, without naming the file.
//!
//! ```toml
//! coordinator = "10.0.0.1:7000"
//! secret = "change-me"
//! job-id = "ctr-2026-11"
//!
//! [commands.coordinator]
//! listen = "0.0.0.0:7000"
//! servers = 2
//! workers = 4
//! epochs = 10
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use paramserv_codecs::CodecSpec;

use super::job::{AppConfig, ConfigError, JobConfig};
use crate::apps::logreg::LogregConfig;
use crate::apps::partition::DataPartition;
use crate::apps::word2vec::corpus::{Corpus, SyntheticCorpus};
use crate::apps::word2vec::train::Word2vecConfig;
use crate::proto::consistency::Consistency;
use crate::proto::partition::Partitioning;
use crate::server::optimizer::OptimizerSpec;
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
    /// Train word2vec (skip-gram, negative sampling) in an in-process cluster: `local --app
    /// word2vec` with 1 server and 2 workers by default. Without --corpus it trains on the
    /// built-in synthetic corpus.
    #[command(
        mut_arg("app", |a| a.default_value("word2vec").hide(true)),
        mut_arg("servers", |a| a.default_value("1")),
        mut_arg("workers", |a| a.default_value("2"))
    )]
    Word2vec(LocalArgs),
    /// The main demo: word2vec on the built-in corpus once per codec pipeline, in an in-process
    /// cluster, and a table of bytes on the wire, saving vs raw, words/s, loss and quality.
    Demo(DemoArgs),
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
    #[arg(long, env = "PS_APP", default_value = "logreg", value_parser = ["logreg", "word2vec"])]
    pub app: String,
    /// Passes over the data.
    #[arg(long, env = "PS_EPOCHS", default_value_t = 5)]
    pub epochs: u32,
    /// Samples per minibatch.
    #[arg(long, env = "PS_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: u32,
    /// How servers apply pushes: sgd, momentum, nesterov, adagrad, rmsprop, adam or shampoo, with
    /// hyper-parameters as `name:key=value,...` (e.g. `adam:lr=0.001,beta1=0.9,beta2=0.999,eps=1e-8`;
    /// unnamed ones take the literature's defaults).
    #[arg(long, env = "PS_OPTIMIZER", default_value_t = JobConfig::DEFAULT_OPTIMIZER)]
    pub optimizer: OptimizerSpec,
    /// Learning rate: overrides the optimizer's `lr`.
    #[arg(long, env = "PS_LR")]
    pub lr: Option<f32>,
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
    /// Probability that a sample's label is flipped (0: separable classes, whose loss keeps
    /// falling; with noise the loss has a floor where runs can be compared).
    #[arg(long, env = "PS_LABEL_NOISE", default_value_t = 0.0)]
    pub label_noise: f64,
    /// How table rows are placed on servers: range (contiguous key ranges) or hash.
    #[arg(long, env = "PS_PLACEMENT", default_value = "range")]
    pub placement: Partitioning,
    /// Update strategy: asp, bsp, ssp:S (at most S steps ahead of the slowest worker), backup:B
    /// (each step takes the first workers - B pushes) or hogwild (threads of one process, no locks).
    #[arg(long, env = "PS_CONSISTENCY", default_value = "asp")]
    pub consistency: Consistency,
    /// Which samples each worker trains on: contiguous, round-robin, random or overlap [default:
    /// round-robin for word2vec, contiguous otherwise].
    #[arg(long, env = "PS_PARTITION")]
    pub partition: Option<DataPartition>,
    /// Draw new sample orders every epoch.
    #[arg(long, env = "PS_RESHUFFLE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub reshuffle: bool,
    /// Pull each minibatch's rows during the previous minibatch's compute.
    #[arg(long, env = "PS_PREFETCH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub prefetch: bool,
    /// How workers write key lists: delta (ascending lists as bit-packed gaps; 2.9x fewer bytes on
    /// the wire in `bench sparse`) or fixed (8 bytes a key; no coding work, for very fast links).
    #[arg(long, env = "PS_KEY_CODING", default_value = "delta", value_name = "delta|fixed")]
    pub key_coding: crate::proto::wire::KeyCoding,
    /// Push the accrued gradient and pull fresh rows every N minibatches, training a local copy in
    /// between (Dean et al.'s nfetch; 1 = every minibatch).
    #[arg(long, env = "PS_NFETCH", default_value_t = 1)]
    pub nfetch: u32,
    /// Codec pipeline for pushes, e.g. `ef(topk:0.01)|zstd:3`, `ef(onebit)`, `fp16`, `sketchml`
    /// (a wrong spec lists every codec and its parameters). Default: raw f32.
    #[arg(long, env = "PS_CODEC")]
    pub codec: Option<CodecSpec>,
    /// Codec pipeline for pull replies, e.g. `raw|zstd:1,shuffle` or `fp16`. Default: raw f32.
    #[arg(long, env = "PS_PULL_CODEC")]
    pub pull_codec: Option<CodecSpec>,
    /// Codec for one table's pushes, as `TABLE=SPEC` (repeatable; wins over --codec). In the
    /// config file: `table-codec = ["weights=fp16"]`.
    #[arg(long, value_name = "TABLE=SPEC", value_parser = parse_table_codec, action = ArgAction::Append)]
    pub table_codec: Vec<(String, CodecSpec)>,
    /// Codec for one table's pull replies, as `TABLE=SPEC` (repeatable; wins over --pull-codec).
    #[arg(long, value_name = "TABLE=SPEC", value_parser = parse_table_codec, action = ArgAction::Append)]
    pub table_pull_codec: Vec<(String, CodecSpec)>,
    /// Where dense gradients are summed: server (every worker pushes) or switch (all-reduce
    /// through the switch agent, one push of the sum per step; needs --consistency bsp).
    #[arg(long, env = "PS_AGGREGATION", default_value = "server", value_enum)]
    pub aggregation: crate::cluster::job::Aggregation,
    /// The switch agent's address for --aggregation switch (`local` starts one when unset).
    #[arg(long, env = "PS_SWITCH", value_name = "ADDR")]
    pub switch: Option<String>,
    /// Initial values: zeros, constant:C, uniform:A,B or normal:SIGMA.
    #[arg(long, env = "PS_INIT", default_value = "zeros")]
    pub init: Init,
    /// Largest frame any node accepts, in bytes.
    #[arg(long, env = "PS_MAX_FRAME_BYTES", default_value_t = crate::proto::wire::Limits::DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: u32,
    /// Target size of one worker request in bytes; bigger pulls and pushes are split.
    #[arg(long, env = "PS_REQUEST_BYTES", default_value_t = JobConfig::DEFAULT_REQUEST_BYTES)]
    pub request_bytes: u32,
    /// word2vec's settings (with `--app word2vec`).
    #[command(flatten)]
    pub word2vec: Word2vecArgs,
}

/// word2vec's settings, named as in the original tool (`--app word2vec`, `paramserv word2vec`).
#[derive(Clone, Debug, Args)]
pub struct Word2vecArgs {
    /// Plain-text corpus: one sentence per line, or one long line like text8. Default: the
    /// built-in synthetic corpus (Zipfian vocabulary with planted groups of related words).
    #[arg(long, env = "PS_CORPUS", value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Values per word vector.
    #[arg(long, env = "PS_DIM", default_value_t = 100)]
    pub dim: u32,
    /// Largest distance between a word and its context words (shrunk at random per word).
    #[arg(long, env = "PS_WINDOW", default_value_t = 5)]
    pub window: u32,
    /// Negative samples per (context, word) pair, drawn from unigram^0.75.
    #[arg(long, env = "PS_NEGATIVE", default_value_t = 5)]
    pub negative: u32,
    /// Words seen fewer times are dropped.
    #[arg(long, env = "PS_MIN_COUNT", default_value_t = 5)]
    pub min_count: u64,
    /// Subsampling threshold for frequent words (0: off).
    #[arg(long, env = "PS_SAMPLE", default_value_t = 1e-3)]
    pub sample: f64,
    /// Starting learning rate (decays linearly to --min-alpha).
    #[arg(long, env = "PS_ALPHA", default_value_t = 0.025)]
    pub alpha: f32,
    /// Final learning rate.
    #[arg(long, env = "PS_MIN_ALPHA", default_value_t = 0.0001)]
    pub min_alpha: f32,
    /// Corpus words per minibatch of each worker: each worker pulls and pushes once per minibatch
    /// [default: 20000 / workers; the workers' changes to the same rows in one step add up, and
    /// with more workers and the same minibatch they overshoot].
    #[arg(long, env = "PS_BATCH_WORDS")]
    pub batch_words: Option<u32>,
    /// Write the word vectors here (word2vec text format; --binary for the binary one).
    #[arg(long, env = "PS_OUT", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write --out in the binary word2vec format.
    #[arg(long, env = "PS_BINARY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub binary: bool,
    /// Word-similarity file (WordSim-353 style: word1 TAB word2 TAB score): Spearman and coverage.
    #[arg(long, env = "PS_EVAL_SIMILARITY", value_name = "FILE")]
    pub eval_similarity: Option<PathBuf>,
    /// Analogy file (questions-words format): 3CosAdd accuracy over the 30k most frequent words.
    #[arg(long, env = "PS_EVAL_ANALOGY", value_name = "FILE")]
    pub eval_analogy: Option<PathBuf>,
}

impl Default for Word2vecArgs {
    /// The flags' defaults (and `PS_*` environment variables, as on the command line).
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            word2vec: Word2vecArgs,
        }
        Only::try_parse_from(["word2vec"]).expect("the word2vec flags' defaults parse").word2vec
    }
}

impl Word2vecArgs {
    /// Corpus words a step takes from the corpus, over all workers, unless `--batch-words` says
    /// how many each worker takes (2 workers at 10,000 each, as gensim's jobs of 10,000 words).
    pub const STEP_WORDS: u32 = 20_000;

    /// The app's configuration for a job of `workers` workers (reads the corpus for its vocabulary
    /// size).
    pub fn config(&self, epochs: u32, workers: u32) -> Result<Word2vecConfig, ConfigError> {
        let corpus = match &self.corpus {
            Some(path) => Corpus::File(path.clone()),
            None => Corpus::Synthetic(SyntheticCorpus::default()),
        };
        let cfg = Word2vecConfig {
            dim: self.dim,
            window: self.window,
            negative: self.negative,
            min_count: self.min_count,
            sample: self.sample,
            epochs,
            alpha: self.alpha,
            min_alpha: self.min_alpha,
            batch_words: self.batch_words.unwrap_or((Self::STEP_WORDS / workers.max(1)).max(1)),
            out: self.out.clone(),
            binary: self.binary,
            eval_similarity: self.eval_similarity.clone(),
            eval_analogy: self.eval_analogy.clone(),
            ..Word2vecConfig::new(corpus)
        };
        // Settings first: a bad flag is reported without reading a large corpus.
        Word2vecConfig { vocab_size: 1, ..cfg.clone() }.validate()?;
        // Evaluation files before training, not after it (worker 0 reads them again at the end).
        let unusable =
            |field, e: crate::apps::word2vec::eval::EvalError| ConfigError::Invalid { field, detail: e.to_string() };
        if let Some(path) = &cfg.eval_similarity {
            crate::apps::word2vec::eval::WordPairs::read(path).map_err(|e| unusable("eval-similarity", e))?;
        }
        if let Some(path) = &cfg.eval_analogy {
            crate::apps::word2vec::eval::Analogies::read(path).map_err(|e| unusable("eval-analogy", e))?;
        }
        cfg.with_vocabulary().map_err(|e| ConfigError::Invalid { field: "corpus", detail: e.to_string() })
    }
}

/// `paramserv demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Codec pipelines to compare, separated by `;` (specs contain commas). Savings are against
    /// `raw`, which runs first whether listed or not.
    #[arg(long, value_delimiter = ';', default_value = "raw;fp16;ef(topk:0.01);ef(onebit);sketchml;qsgd;terngrad")]
    pub codecs: Vec<CodecSpec>,
    /// Workers of the in-process cluster.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Server shards of the in-process cluster.
    #[arg(long, default_value_t = 1)]
    pub servers: u32,
    /// Passes over the corpus per run.
    #[arg(long, default_value_t = 5)]
    pub epochs: u32,
    /// Plain-text corpus instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Print one JSON object per codec instead of the table.
    #[arg(long, action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// `TABLE=SPEC`, for --table-codec and --table-pull-codec.
fn parse_table_codec(text: &str) -> Result<(String, CodecSpec), String> {
    let Some((table, spec)) = text.split_once('=') else {
        return Err(format!("expected TABLE=SPEC, e.g. weights=fp16, got {text:?}"));
    };
    Ok((table.to_owned(), spec.parse().map_err(|e: paramserv_codecs::SpecError| e.to_string())?))
}

impl JobArgs {
    /// The job these flags describe, for `workers` workers.
    pub fn job(&self, workers: u32) -> Result<JobConfig, ConfigError> {
        let (app, mut tables) = match self.app.as_str() {
            "word2vec" => {
                let cfg = self.word2vec.config(self.epochs, workers)?;
                let tables = cfg.tables(self.placement);
                (AppConfig::Word2vec(cfg), tables)
            }
            _ => {
                let logreg = LogregConfig {
                    features: self.features,
                    samples: self.samples,
                    nnz: self.nnz,
                    batch: self.batch_size,
                    epochs: self.epochs,
                    label_noise: self.label_noise,
                };
                let tables = logreg.tables(self.placement, self.init);
                (AppConfig::Logreg(logreg), tables)
            }
        };
        for (overrides, pull) in [(&self.table_codec, false), (&self.table_pull_codec, true)] {
            for (name, spec) in overrides {
                let Some(t) = tables.iter_mut().find(|t| &t.name == name) else {
                    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                    return Err(ConfigError::Invalid {
                        field: if pull { "table-pull-codec" } else { "table-codec" },
                        detail: format!("no table named '{name}' (the job's tables: {})", names.join(", ")),
                    });
                };
                *(if pull { &mut t.pull_codec } else { &mut t.codec }) = Some(spec.clone());
            }
        }
        let partition = app.default_partition();
        let job = JobConfig {
            seed: self.seed,
            optimizer: match self.lr {
                Some(lr) => self.optimizer.with_lr(lr),
                None => self.optimizer,
            },
            max_frame_bytes: self.max_frame_bytes,
            request_bytes: self.request_bytes,
            tables,
            app,
            consistency: self.consistency,
            partition: self.partition.unwrap_or(partition),
            reshuffle: self.reshuffle,
            prefetch: self.prefetch,
            key_coding: self.key_coding,
            nfetch: self.nfetch,
            codec: self.codec.clone(),
            pull_codec: self.pull_codec.clone(),
            aggregation: self.aggregation,
            switch: self.switch.clone(),
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
    #[arg(long, env = "PS_COLOCATE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub colocate: bool,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
    /// Give up if the cluster has not assembled within this time.
    #[arg(long, env = "PS_JOIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Fail the job if a node stays silent this long (it stopped, or hangs).
    #[arg(long, env = "PS_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
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
    /// Fail the job if a node stays silent this long (it stopped, hangs, or its host is cut off);
    /// nodes give up on a coordinator silent for as long.
    #[arg(long, env = "PS_HEARTBEAT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
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
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
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
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
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
    /// Steps per second of the logreg job with slow workers, under an update strategy.
    Stragglers(crate::bench::StragglerArgs),
    /// Step time with and without prefetching the next step's rows.
    Prefetch(crate::bench::PrefetchArgs),
    /// Encode and decode speed, wire ratio and error of codec pipelines, on one core.
    Codecs(crate::bench::CodecArgs),
    /// All-reduce goodput through the emulated switch or the PS, with injected loss.
    Allreduce(crate::bench::AllReduceArgs),
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap's own error (also `--help` and `--version`).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has a bad setting.
    #[error("config file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: FileError,
    },
}

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not valid TOML.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A top-level key that is no command's flag.
    #[error("unknown setting '{0}'")]
    UnknownSetting(String),
    /// A top-level table named after a command; command tables go under `[commands]`.
    #[error("[{0}] is not a setting; settings for `paramserv {0}` go in [commands.{0}]")]
    CommandOutsideCommands(String),
    /// `commands`, or an entry of it, is not a table.
    #[error("'{key}' must be a table of command settings such as [commands.worker], not a TOML {found}")]
    NotATable {
        /// `commands` or `commands.<name>`.
        key: String,
        /// The TOML type found instead.
        found: &'static str,
    },
    /// `[commands.<name>]` for a command that reads no config file.
    #[error("unknown command '{name}' in [commands.{name}] (commands that read a config file: {known})")]
    UnknownCommand {
        /// The table's name.
        name: String,
        /// The commands that read a config file, comma-separated.
        known: String,
    },
    /// A key in `[commands.<command>]` that the command does not have.
    #[error("'{key}' in [commands.{command}] is not a setting of `paramserv {command}`")]
    NotASetting {
        /// The command.
        command: String,
        /// The key.
        key: String,
    },
    /// `config` in a config file.
    #[error("'config' cannot be set from a config file")]
    Config,
    /// An array for a flag that takes one value.
    #[error("'{key}' takes one value, not an array")]
    Array {
        /// The key.
        key: String,
    },
    /// A value of a TOML type the flag cannot take.
    #[error("'{key}' cannot be a TOML {found}{}", if *.switch { " (it is a switch: true or false)" } else { "" })]
    Type {
        /// The key.
        key: String,
        /// The TOML type found.
        found: &'static str,
        /// Whether the flag is a switch, which takes only a boolean.
        switch: bool,
    },
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
    let text = std::fs::read_to_string(&path).map_err(|source| CliError::Read { path: path.clone(), source })?;
    let extra = text
        .parse::<toml::Table>()
        .map_err(FileError::from)
        .and_then(|table| file_args(&cmd, name, sub, &table))
        .map_err(|source| CliError::File { path, source })?;
    let mut all = args;
    all.extend(extra);
    Ok(Cli::try_parse_from(all)?)
}

/// The flags the file adds to command `name`, each as one `--key=value` argument: every setting
/// not already given by a flag or an environment variable. Every setting is checked, also those
/// for other commands, so whether a file is valid does not depend on the command that reads it.
fn file_args(
    cmd: &clap::Command,
    name: &str,
    given: &clap::ArgMatches,
    table: &toml::Table,
) -> Result<Vec<OsString>, FileError> {
    // The commands a file can configure: those with `--config`.
    let configurable = || cmd.get_subcommands().filter(|c| flag(c, "config").is_some());
    // (key, its arguments) for command `name`: top-level settings, then its table's.
    let mut top: Vec<(&str, Vec<OsString>)> = Vec::new();
    let mut own: Vec<(&str, Vec<OsString>)> = Vec::new();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("commands", toml::Value::Table(commands)) => {
                for (command, entry) in commands {
                    let toml::Value::Table(t) = entry else {
                        return Err(FileError::NotATable {
                            key: format!("commands.{command}"),
                            found: entry.type_str(),
                        });
                    };
                    let Some(c) = configurable().find(|c| c.get_name() == command) else {
                        let known = configurable().map(|c| c.get_name()).collect::<Vec<_>>().join(", ");
                        return Err(FileError::UnknownCommand { name: command.clone(), known });
                    };
                    for (k, v) in t {
                        let Some(arg) = flag(c, k).filter(|_| k != "config") else {
                            return Err(FileError::NotASetting { command: command.clone(), key: k.clone() });
                        };
                        let args = flag_args(arg, k, v)?;
                        if command == name {
                            own.push((k, args));
                        }
                    }
                }
            }
            ("commands", other) => return Err(FileError::NotATable { key: key.clone(), found: other.type_str() }),
            ("config", _) => return Err(FileError::Config),
            (_, toml::Value::Table(_)) if cmd.find_subcommand(key).is_some() => {
                return Err(FileError::CommandOutsideCommands(key.clone()));
            }
            _ => {
                let mut known = false;
                for c in configurable() {
                    if let Some(arg) = flag(c, key) {
                        known = true;
                        let args = flag_args(arg, key, value)?;
                        if c.get_name() == name {
                            top.push((key, args));
                        }
                    }
                }
                if !known {
                    return Err(FileError::UnknownSetting(key.clone()));
                }
            }
        }
    }
    top.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    let mut out = Vec::new();
    for (key, args) in top.into_iter().chain(own) {
        let arg = flag(cmd.find_subcommand(name).expect("clap matched this subcommand"), key)
            .expect("a key is kept only if command `name` has its flag");
        if !matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            out.extend(args);
        }
    }
    Ok(out)
}

/// The flag of command `c` whose long name is `key`.
fn flag<'c>(c: &'c clap::Command, key: &str) -> Option<&'c clap::Arg> {
    c.get_arguments().find(|a| a.get_long() == Some(key))
}

/// The file's `key = value` as arguments for the flag `arg`: `--key=value` (once per element of
/// an array, if the flag takes several), `--key` for a switch set to true, nothing for one set to
/// false.
fn flag_args(arg: &clap::Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, FileError> {
    let action = arg.get_action();
    let values = match value {
        toml::Value::Array(items) if matches!(action, ArgAction::Append) => items.iter().collect(),
        toml::Value::Array(_) => return Err(FileError::Array { key: key.to_owned() }),
        v => vec![v],
    };
    let switch = matches!(action, ArgAction::SetTrue);
    let mut args = Vec::new();
    for v in values {
        match (v, switch) {
            (toml::Value::Boolean(true), true) => args.push(format!("--{key}").into()),
            (toml::Value::Boolean(false), true) => {}
            (toml::Value::String(s), false) => args.push(format!("--{key}={s}").into()),
            (toml::Value::Integer(_) | toml::Value::Float(_), false) => args.push(format!("--{key}={v}").into()),
            (other, _) => return Err(FileError::Type { key: key.to_owned(), found: other.type_str(), switch }),
        }
    }
    Ok(args)
}

/// The longest duration any flag accepts. Longer ones are typos, and adding them to an `Instant`
/// can overflow (which panics).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a duration flag was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with a unit.
    #[error("'{0}' is not a duration (e.g. 500ms, 30s, 2m)")]
    Malformed(String),
    /// A number with a unit this parser does not know.
    #[error("unknown unit '{unit}' in '{text}' (use ms, s, m or h)")]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The unit.
        unit: String,
    },
    /// Below zero.
    #[error("'{0}' is negative")]
    Negative(String),
    /// Above [`MAX_DURATION`] (infinity included).
    #[error("'{0}' is longer than the maximum of {max}h (7 days)", max = MAX_DURATION.as_secs() / 3600)]
    TooLong(String),
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a plain number of seconds, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(DurationError::Negative(s.to_owned()));
    }
    // Only digits and dots before the unit: no sign, `inf`, `NaN` or exponent reaches `parse`.
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| DurationError::Malformed(s.to_owned()))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(DurationError::UnknownUnit { text: s.to_owned(), unit: other.to_owned() }),
    };
    // A long enough digit string parses to infinity; NaN cannot arise but is refused all the same.
    if secs.is_nan() || secs > MAX_DURATION.as_secs_f64() {
        return Err(DurationError::TooLong(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
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
            Command::Local(l) | Command::Word2vec(l) => l,
            other => panic!("expected local or word2vec, got {other:?}"),
        }
    }

    /// The job a `local` or `word2vec` command line describes.
    fn job_of(args: &[&str]) -> JobConfig {
        let l = local(parse_from(args).unwrap());
        l.job.job(l.workers).unwrap()
    }

    fn coordinator(cli: Cli) -> CoordinatorArgs {
        match cli.command {
            Command::Coordinator(c) => c,
            other => panic!("expected coordinator, got {other:?}"),
        }
    }

    fn file(text: &str) -> tempfile_path::TempToml {
        tempfile_path::TempToml::new(text)
    }

    /// `paramserv <command> --config <file of text>`, with `extra` flags after.
    fn parse_with_file(command: &str, text: &str, extra: &[&str]) -> Result<Cli, CliError> {
        let f = file(text);
        let mut args = vec!["paramserv", command, "--config", f.0.to_str().unwrap()];
        args.extend(extra);
        parse_from(args)
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
            "coordinator = 'filehost:1'\nepochs = 9\njob-id = 'from-file'\n\
             [commands.worker]\njson = true\n[commands.local]\nservers = 7\n",
        );
        let path = f.0.to_str().unwrap();
        let w = worker(parse_from(["paramserv", "worker", "--config", path, "--job-id", "flag"]).unwrap());
        assert_eq!(w.connect.coordinator.as_deref(), Some("filehost:1"));
        assert_eq!(w.auth.job_id, "flag");
        assert!(w.json);
        let l = local(parse_from(["paramserv", "local", "--config", path, "--workers", "3"]).unwrap());
        assert_eq!((l.servers, l.workers, l.job.epochs), (7, 3, 9));
        assert!(!l.json, "[commands.worker] applies to the worker only");
    }

    #[test]
    fn word2vec_deals_sentences_round_robin_unless_told_otherwise() {
        let corpus = file(&"a b c d e\n".repeat(5));
        let path = corpus.0.to_str().unwrap();
        let partition = |args: &[&str]| job_of(args).partition;
        assert_eq!(partition(&["paramserv", "word2vec", "--corpus", path]), DataPartition::RoundRobin);
        assert_eq!(
            partition(&["paramserv", "word2vec", "--corpus", path, "--partition", "contiguous"]),
            DataPartition::Contiguous
        );
        assert_eq!(partition(&["paramserv", "local"]), DataPartition::Contiguous);
        assert_eq!(partition(&["paramserv", "local", "--partition", "random"]), DataPartition::Random);
    }

    #[test]
    fn word2vec_steps_take_about_20000_words_over_all_workers_unless_told_otherwise() {
        let corpus = file(&"a b c d e\n".repeat(5));
        let path = corpus.0.to_str().unwrap();
        let batch = |args: &[&str]| match job_of(args).app {
            AppConfig::Word2vec(cfg) => cfg.batch_words,
            other => panic!("a word2vec job, got {other:?}"),
        };
        assert_eq!(batch(&["paramserv", "word2vec", "--corpus", path]), 10_000);
        assert_eq!(batch(&["paramserv", "word2vec", "--corpus", path, "--workers", "4"]), 5_000);
        assert_eq!(batch(&["paramserv", "word2vec", "--corpus", path, "--workers", "4", "--batch-words", "777"]), 777);
    }

    #[test]
    fn a_command_table_wins_over_top_level_keys() {
        let text = "epochs = 3\n[commands.local]\nepochs = 8\n[commands.coordinator]\nepochs = 4\n";
        assert_eq!(local(parse_with_file("local", text, &[]).unwrap()).job.epochs, 8);
        assert_eq!(coordinator(parse_with_file("coordinator", text, &[]).unwrap()).job.epochs, 4);
    }

    /// The module doc's example, as a user would write it: the shared `coordinator` address is the
    /// nodes' flag and `[commands.coordinator]` the coordinator command's settings.
    #[test]
    fn the_module_doc_example_configures_coordinator_and_worker() {
        let source = include_str!("config.rs");
        let example: String = source
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.strip_prefix("//!").unwrap().trim_start()))
            .collect();
        assert!(example.contains("[commands.coordinator]"), "example not found: {example}");
        let c = coordinator(parse_with_file("coordinator", &example, &[]).unwrap());
        assert_eq!((c.listen.as_str(), c.servers, c.workers, c.job.epochs), ("0.0.0.0:7000", 2, 4, 10));
        assert_eq!((c.auth.job_id.as_str(), c.auth.secret.as_deref()), ("ctr-2026-11", Some("change-me")));
        let w = worker(parse_with_file("worker", &example, &[]).unwrap());
        assert_eq!(w.connect.coordinator.as_deref(), Some("10.0.0.1:7000"));
        assert_eq!((w.auth.job_id.as_str(), w.auth.secret.as_deref()), ("ctr-2026-11", Some("change-me")));
    }

    #[test]
    fn file_values_starting_with_a_dash_are_values() {
        let text = "coordinator = 'h:1'\nsecret = '-s3'\nlabel = '--json'\njob-id = '-'\n";
        let w = worker(parse_with_file("worker", text, &[]).unwrap());
        assert_eq!(w.auth.secret.as_deref(), Some("-s3"));
        assert_eq!(w.connect.label.as_deref(), Some("--json"));
        assert_eq!(w.auth.job_id, "-");
        assert!(!w.json, "a label is not a flag");
        // Numbers go through the same path: a negative one reaches the job's own check.
        let l = local(parse_with_file("local", "lr = -1.0", &[]).unwrap());
        assert_eq!(l.job.lr, Some(-1.0));
    }

    #[test]
    fn unknown_keys_are_errors() {
        for (text, want) in [
            ("epocs = 3", "unknown setting 'epocs'"),
            ("[commands.worker]\nservers = 3", "'servers' in [commands.worker] is not a setting of `paramserv worker`"),
            ("[commands.worker]\nconfig = 'x.toml'", "'config' in [commands.worker]"),
            ("config = 'x.toml'", "'config' cannot be set from a config file"),
            ("epochs = [1, 2]", "'epochs' takes one value, not an array"),
            ("[commands.local]\nepochs = [1, 2]", "'epochs' takes one value, not an array"),
            ("[commands.local]\njson = 'yes'", "'json' cannot be a TOML string (it is a switch: true or false)"),
            ("json = 1", "'json' cannot be a TOML integer (it is a switch: true or false)"),
            ("epochs = true", "'epochs' cannot be a TOML boolean"),
            ("init = { kind = 'zeros' }", "'init' cannot be a TOML table"),
            (
                "commands = 3",
                "'commands' must be a table of command settings such as [commands.worker], not a TOML integer",
            ),
            ("[commands]\nlocal = 'x'", "'commands.local' must be a table of command settings"),
            (
                "[commands.trainer]\nepochs = 1",
                "unknown command 'trainer' in [commands.trainer] (commands that read a config file: local, ",
            ),
            ("[commands.bench]\njson = true", "unknown command 'bench'"),
            (
                "[worker]\njson = true",
                "[worker] is not a setting; settings for `paramserv worker` go in [commands.worker]",
            ),
            ("[coordinator]\nlisten = '0.0.0.0:7000'", "go in [commands.coordinator]"),
            ("epochs = 1\nepochs = 2", "duplicate key"),
        ] {
            let err = parse_with_file("local", text, &[]).unwrap_err();
            assert!(matches!(err, CliError::File { .. }), "{text}: {err:?}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        // A setting is checked even when the command reading the file does not use it.
        for (command, text, want) in [
            ("worker", "epochs = [1, 2]", "'epochs' takes one value"),
            ("coordinator", "[commands.worker]\njson = 'yes'", "'json' cannot be a TOML string"),
            ("local", "[commands.worker]\nlabel = [1]", "'label' takes one value"),
        ] {
            let err = parse_with_file(command, text, &[]).unwrap_err();
            assert!(err.to_string().contains(want), "{command}, {text}: {err}");
        }
        let err = parse_from(["paramserv", "local", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert!(err.to_string().contains("cannot read config file /nonexistent/x.toml"), "{err}");
    }

    #[test]
    fn the_old_layout_with_a_coordinator_address_and_table_is_refused() {
        // Invalid TOML (the key `coordinator` twice), which is why command tables moved.
        let err = parse_with_file("worker", "coordinator = 'h:1'\n[coordinator]\nservers = 2\n", &[]).unwrap_err();
        assert!(err.to_string().contains("duplicate key"), "{err}");
    }

    #[test]
    fn a_flag_that_is_given_is_not_read_from_the_file_but_still_checked() {
        let l = local(parse_with_file("local", "epochs = 4\nservers = 3", &["--epochs", "6"]).unwrap());
        assert_eq!((l.job.epochs, l.servers), (6, 3));
        let err = parse_with_file("local", "epochs = [1, 2]", &["--epochs", "6"]).unwrap_err();
        assert!(err.to_string().contains("'epochs' takes one value, not an array"), "{err}");
    }

    #[test]
    fn switches_read_the_usual_spellings() {
        let cmd = Cli::command();
        let mut switches = 0;
        let mut commands: Vec<&clap::Command> = cmd.get_subcommands().collect();
        while let Some(c) = commands.pop() {
            commands.extend(c.get_subcommands());
            for arg in c.get_arguments().filter(|a| matches!(a.get_action(), ArgAction::SetTrue)) {
                let Some(env) = arg.get_env() else { continue };
                switches += 1;
                let parser = arg.get_value_parser();
                let accepted: Vec<_> = parser.possible_values().map(Iterator::collect).unwrap_or_default();
                for spelling in ["1", "0", "yes", "no", "on", "off", "true", "false"] {
                    assert!(
                        accepted.iter().any(|p: &clap::builder::PossibleValue| p.matches(spelling, false)),
                        "{} --{} ({env:?}) refuses '{spelling}'",
                        c.get_name(),
                        arg.get_long().unwrap()
                    );
                }
            }
        }
        // json on local, worker, node and the five benches; colocate, iperf3, vs-tcp; reshuffle,
        // prefetch and binary on local and coordinator; json, colocate, reshuffle, prefetch and
        // binary on word2vec. (`bench codecs --sparse` has no
        // variable: it is a shape, not a setting.)
        assert_eq!(switches, 22);
        let l = local(parse_from(["paramserv", "local", "--json", "--colocate"]).unwrap());
        assert!(l.json && l.colocate);
        let l = local(parse_with_file("local", "json = true\ncolocate = false", &[]).unwrap());
        assert!(l.json && !l.colocate);
        assert!(
            parse_from(["paramserv", "local", "--json=yes"]).is_err(),
            "a switch takes no value on the command line"
        );
    }

    #[test]
    fn job_flags_are_checked() {
        let l = local(parse_from(["paramserv", "local", "--lr=-1"]).unwrap());
        assert!(
            l.job.job(l.workers).unwrap_err().to_string().contains("invalid optimizer: sgd: lr = -1 is out of range")
        );
        let l = local(parse_from(["paramserv", "local", "--optimizer", "adam:beta2=0.5", "--lr", "0.01"]).unwrap());
        assert_eq!(
            l.job.job(l.workers).unwrap().optimizer,
            OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.5, eps: 1e-8 }
        );
        let err = parse_from(["paramserv", "local", "--optimizer", "adamw"]).unwrap_err().to_string();
        assert!(err.contains("--optimizer") && err.contains("unknown optimizer 'adamw'"), "{err}");
        let err = parse_from(["paramserv", "local", "--optimizer", "adam:beta1=1"]).unwrap_err().to_string();
        assert!(err.contains("beta1 = 1 is out of range (must be in [0, 1))"), "{err}");
        assert!(parse_from(["paramserv", "local", "--init", "gaussian"]).is_err());
        assert!(parse_from(["paramserv", "local", "--placement", "modulo"]).is_err());
        assert!(parse_from(["paramserv", "local", "--transport", "udp"]).is_err());
        let l = local(parse_from(["paramserv", "local", "--init", "normal:0.1", "--placement", "hash"]).unwrap());
        let job = l.job.job(l.workers).unwrap();
        assert_eq!((job.tables[0].init, job.tables[0].partitioning), (Init::Normal { sigma: 0.1 }, Partitioning::Hash));
        assert_eq!(job.key_coding, crate::proto::wire::KeyCoding::Delta);
        assert_eq!(
            job_of(&["paramserv", "local", "--key-coding", "fixed"]).key_coding,
            crate::proto::wire::KeyCoding::Fixed
        );
        let err = parse_from(["paramserv", "local", "--key-coding", "varint"]).unwrap_err().to_string();
        assert!(err.contains("unknown key coding 'varint' (expected 'delta' or 'fixed')"), "{err}");
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
        assert_eq!(parse_duration("168h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("soon"), Err(DurationError::Malformed("soon".into())));
        assert!(matches!(parse_duration("3 weeks"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("1e3s"), Err(DurationError::UnknownUnit { .. })));
        for s in ["NaN", "inf", "infs", ".", "1.2.3s"] {
            assert_eq!(parse_duration(s), Err(DurationError::Malformed(s.into())), "{s}");
        }
        assert_eq!(parse_duration("-5s"), Err(DurationError::Negative("-5s".into())));
    }

    #[test]
    fn durations_that_would_overflow_an_instant_are_refused() {
        let huge = "9".repeat(400); // parses to infinity
        for s in ["5000000000000000h", "168.01h", "604801", "10081m", huge.as_str()] {
            assert_eq!(parse_duration(s), Err(DurationError::TooLong(s.into())), "{s}");
        }
        let err = parse_from(["paramserv", "local", "--join-timeout", "5000000000000000h"]).unwrap_err();
        assert!(err.to_string().contains("longer than the maximum of 168h (7 days)"), "{err}");
    }
}
