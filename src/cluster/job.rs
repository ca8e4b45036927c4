//! The job configuration: defined once (on the coordinator or the local cluster) and handed to every
//! node as TOML inside the `Assign` message, so all nodes run the same tables, seed and app.

use paramserv_codecs::CodecSpec;

use crate::apps::logreg::LogregConfig;
use crate::apps::partition::DataPartition;
use crate::proto::consistency::Consistency;
use crate::proto::partition::{KeyDirectory, Placement};
use crate::proto::wire::{KeyCoding, Limits};
use crate::server::optimizer::OptimizerSpec;
use crate::server::table::{TableCodecs, TableSpec};

/// Why a configuration was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A value outside what it may be.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The TOML could not be read.
    #[error("{0}")]
    Toml(String),
}

fn invalid(field: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, detail: detail.into() }
}

/// What the workers run.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum AppConfig {
    /// Logistic regression with sparse features on a seeded synthetic dataset.
    Logreg(LogregConfig),
    /// word2vec (skip-gram with negative sampling) on a corpus.
    Word2vec(crate::apps::word2vec::train::Word2vecConfig),
    /// A job driven by library code (benchmarks, tests, examples); not runnable from the CLI's
    /// worker processes.
    Custom,
}

impl AppConfig {
    /// The app's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Logreg(_) => "logreg",
            Self::Word2vec(_) => "word2vec",
            Self::Custom => "custom",
        }
    }

    /// How the app's samples are spread over workers unless the job says otherwise. word2vec
    /// deals sentences round-robin, so every worker trains on the whole corpus's mix in file
    /// order, as gensim's threads take its jobs: contiguous shares of a corpus made of parts
    /// (the Bible, then WordNet glosses) gave each worker one part, and cost 0.03 of WordSim-353
    /// Spearman on that corpus.
    pub fn default_partition(&self) -> DataPartition {
        match self {
            Self::Word2vec(_) => DataPartition::RoundRobin,
            Self::Logreg(_) | Self::Custom => DataPartition::Contiguous,
        }
    }
}

/// Everything every node of a job must agree on.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Seed of initializers and synthetic data.
    pub seed: u64,
    /// How servers apply pushes, for every table that does not name its own.
    pub optimizer: OptimizerSpec,
    /// Largest frame payload any node accepts.
    pub max_frame_bytes: u32,
    /// Target size of one worker request; larger pulls and pushes are split into requests of
    /// about this size, all in flight at once.
    pub request_bytes: u32,
    /// The app.
    pub app: AppConfig,
    /// The tables, by id.
    pub tables: Vec<TableSpec>,
    /// How updates from many workers are combined.
    #[serde(default)]
    pub consistency: Consistency,
    /// Which samples each worker trains on.
    #[serde(default)]
    pub partition: DataPartition,
    /// Draw new sample orders every epoch.
    #[serde(default)]
    pub reshuffle: bool,
    /// Start each minibatch's pull during the previous minibatch's compute.
    #[serde(default)]
    pub prefetch: bool,
    /// How workers write key lists on the wire. Left out of the TOML when it is the default, so
    /// nodes of the build before the option still take the jobs that do not use it.
    #[serde(default, skip_serializing_if = "KeyCoding::is_default")]
    pub key_coding: KeyCoding,
    /// Push and pull every `nfetch` minibatches, updating a local copy in between (1: every one).
    #[serde(default = "one")]
    pub nfetch: u32,
    /// The codec pipeline pushes go through, for every table that does not name its own; `None`:
    /// raw `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<CodecSpec>,
    /// The codec pipeline pull replies go through, likewise; `None`: raw `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_codec: Option<CodecSpec>,
    /// Where the dense gradients of [`Worker::push_dense`](crate::worker::Worker::push_dense) are
    /// summed.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// The switch agent (`HOST:PORT`) for `aggregation = "switch"`; the local cluster starts one
    /// on loopback when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
}

/// Where dense gradients are summed.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Every worker pushes its gradient; the servers add them up.
    #[default]
    Server,
    /// Workers all-reduce the gradient through the switch agent (SwitchML-style int32 fixed
    /// point), and one worker per step pushes the sum: the servers receive one push per step, not
    /// one per worker. Needs BSP.
    Switch,
}

fn one() -> u32 {
    1
}

impl JobConfig {
    /// Default learning rate.
    pub const DEFAULT_LR: f32 = 4.0;
    /// Default optimizer: SGD at the default learning rate.
    pub const DEFAULT_OPTIMIZER: OptimizerSpec = OptimizerSpec::Sgd { lr: Self::DEFAULT_LR };
    /// Default request size: large enough to amortize per-request costs, small enough to pipeline.
    pub const DEFAULT_REQUEST_BYTES: u32 = 2 << 20;

    /// A job of `app` over `tables` with default settings.
    pub fn new(app: AppConfig, tables: Vec<TableSpec>) -> Result<Self, ConfigError> {
        let partition = app.default_partition();
        let job = Self {
            seed: 1,
            optimizer: Self::DEFAULT_OPTIMIZER,
            max_frame_bytes: Limits::DEFAULT_MAX_FRAME,
            request_bytes: Self::DEFAULT_REQUEST_BYTES,
            app,
            tables,
            consistency: Consistency::default(),
            partition,
            reshuffle: false,
            prefetch: false,
            key_coding: KeyCoding::Delta,
            nfetch: 1,
            codec: None,
            pull_codec: None,
            aggregation: Aggregation::Server,
            switch: None,
        };
        job.validate()?;
        Ok(job)
    }

    /// The optimizer of every table, by table id.
    pub fn optimizers(&self) -> Vec<OptimizerSpec> {
        self.tables.iter().map(|t| t.optimizer.unwrap_or(self.optimizer)).collect()
    }

    /// The codecs of every table, by table id. `raw` is spelled `None`: raw payloads carry no
    /// codec header, so a job without codecs puts the same bytes on the wire as before codecs
    /// existed.
    pub fn codecs(&self) -> Vec<TableCodecs> {
        let pick = |own: &Option<CodecSpec>, job: &Option<CodecSpec>| {
            own.as_ref().or(job.as_ref()).filter(|c| **c != CodecSpec::Raw).cloned()
        };
        self.tables
            .iter()
            .map(|t| TableCodecs { push: pick(&t.codec, &self.codec), pull: pick(&t.pull_codec, &self.pull_codec) })
            .collect()
    }

    /// Checks every setting; every entry point of a job calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.aggregation == Aggregation::Switch && self.consistency != Consistency::Bsp {
            return Err(invalid(
                "aggregation",
                format!(
                    "switch sums every worker's gradient of a step at once, so it needs --consistency bsp \
                     (not {})",
                    self.consistency
                ),
            ));
        }
        if let Some(addr) = &self.switch
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid("switch", format!("{addr:?} is not an IP:PORT address")));
        }
        for (t, codecs) in self.tables.iter().zip(self.codecs()) {
            if let Some(pull) = codecs.pull.filter(CodecSpec::has_error_feedback) {
                return Err(invalid(
                    "pull_codec",
                    format!(
                        "{pull} for table '{}': error feedback keeps one residual per receiver, and a server \
                         answers many workers; use a codec without ef(...) for pulls",
                        t.name
                    ),
                ));
            }
        }
        self.optimizer.validate().map_err(|e| invalid("optimizer", e))?;
        for t in &self.tables {
            if let Some(o) = &t.optimizer {
                o.validate().map_err(|e| invalid("optimizer", format!("of table '{}': {e}", t.name)))?;
            }
        }
        if self.consistency == Consistency::Hogwild
            && let Some(o) = self.optimizers().into_iter().find(|o| !o.is_elementwise())
        {
            return Err(invalid(
                "optimizer",
                format!(
                    "{} under hogwild (lock-free updates need an element-wise rule: \
                     sgd, momentum, nesterov, adagrad, rmsprop or adam)",
                    o.name()
                ),
            ));
        }
        if self.max_frame_bytes < 64 << 10 {
            return Err(invalid("max_frame_bytes", format!("{} (must be at least 65536)", self.max_frame_bytes)));
        }
        if self.request_bytes == 0 || self.request_bytes > self.max_frame_bytes / 2 {
            return Err(invalid(
                "request_bytes",
                format!(
                    "{} (must be between 1 and half of max_frame_bytes, {})",
                    self.request_bytes,
                    self.max_frame_bytes / 2
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tables {
            if !names.insert(t.name.as_str()) {
                return Err(invalid("tables", format!("two tables are named '{}'", t.name)));
            }
            if t.rows == 0 || t.dim == 0 {
                return Err(invalid("tables", format!("table '{}' needs at least one row and one column", t.name)));
            }
            let row_bytes = u64::from(t.dim) * 4 + 8 + 64;
            if row_bytes > u64::from(self.max_frame_bytes) {
                return Err(invalid(
                    "tables",
                    format!(
                        "a row of table '{}' ({} bytes) does not fit max_frame_bytes {}",
                        t.name, row_bytes, self.max_frame_bytes
                    ),
                ));
            }
        }
        match &self.app {
            AppConfig::Logreg(l) => l.validate()?,
            AppConfig::Word2vec(w) => {
                w.validate()?;
                if self.nfetch > 1 {
                    return Err(invalid(
                        "nfetch",
                        "word2vec trains each minibatch on local copies already: use --batch-words for larger steps",
                    ));
                }
                if self.aggregation == Aggregation::Switch {
                    return Err(invalid(
                        "aggregation",
                        "word2vec pushes sparse rows; switch aggregation sums dense tensors (use server)",
                    ));
                }
            }
            AppConfig::Custom => {}
        }
        if self.nfetch == 0 {
            return Err(invalid("nfetch", "0 (must be at least 1: push and pull every n minibatches)"));
        }
        if self.nfetch > 1 && self.prefetch {
            return Err(invalid("prefetch", "cannot be combined with nfetch > 1 (nfetch already pulls ahead)"));
        }
        Ok(())
    }

    /// The job as TOML, as sent to every node.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a job configuration always serializes")
    }

    /// Reads and validates a job sent by the coordinator. A job without `partition` gets its
    /// app's default, as the CLI gives it.
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        let toml_error = |e: toml::de::Error| ConfigError::Toml(format!("job configuration: {e}"));
        let table: toml::Table = s.parse().map_err(toml_error)?;
        let names_partition = table.contains_key("partition");
        let mut job: Self = table.try_into().map_err(toml_error)?;
        if !names_partition {
            job.partition = job.app.default_partition();
        }
        job.validate()?;
        Ok(job)
    }

    /// Frame limits of the job.
    pub fn limits(&self) -> Limits {
        Limits { max_frame: self.max_frame_bytes }
    }

    /// The key directory of the job on `servers` servers.
    pub fn directory(&self, servers: u32) -> KeyDirectory {
        KeyDirectory::new(self.tables.iter().map(|t| Placement::new(t.rows, servers, t.partitioning)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::table::Init;

    fn table(name: &str) -> TableSpec {
        TableSpec {
            name: name.into(),
            rows: 10,
            dim: 4,
            init: Init::Normal { sigma: 0.1 },
            partitioning: Default::default(),
            optimizer: None,
            codec: None,
            pull_codec: None,
        }
    }

    #[test]
    fn jobs_round_trip_through_toml() {
        let mut job = JobConfig::new(AppConfig::Logreg(LogregConfig::default()), vec![table("a"), table("b")]).unwrap();
        assert_eq!(JobConfig::from_toml(&job.to_toml()).unwrap(), job);
        // The default key coding is left out, so nodes that predate the option take the job.
        assert!(!job.to_toml().contains("key_coding"), "{}", job.to_toml());
        job.key_coding = KeyCoding::Fixed;
        assert!(job.to_toml().contains("key_coding = \"fixed\""), "{}", job.to_toml());
        assert_eq!(JobConfig::from_toml(&job.to_toml()).unwrap(), job);
    }

    #[test]
    fn a_job_without_partition_gets_its_apps_default() {
        use crate::apps::word2vec::{corpus::Corpus, train::Word2vecConfig};
        let w2v = Word2vecConfig { vocab_size: 100, ..Word2vecConfig::new(Corpus::File("corpus.txt".into())) };
        let tables = w2v.tables(Default::default());
        let word2vec = JobConfig::new(AppConfig::Word2vec(w2v), tables).unwrap();
        let logreg = JobConfig::new(AppConfig::Logreg(LogregConfig::default()), vec![table("a")]).unwrap();
        for (job, default) in [(word2vec, DataPartition::RoundRobin), (logreg, DataPartition::Contiguous)] {
            let without: String =
                job.to_toml().lines().filter(|l| !l.starts_with("partition =")).map(|l| format!("{l}\n")).collect();
            assert_ne!(without, job.to_toml(), "the job names its partition");
            assert_eq!(JobConfig::from_toml(&without).unwrap().partition, default);
            // One that is named is kept.
            let named = format!("partition = \"random\"\n{without}");
            assert_eq!(JobConfig::from_toml(&named).unwrap().partition, DataPartition::Random);
        }
    }

    #[test]
    fn codecs_resolve_per_table_and_travel_as_strings() {
        let mut job = JobConfig::new(AppConfig::Custom, vec![table("a"), table("b"), table("c")]).unwrap();
        job.codec = Some("ef(topk:0.01)|zstd:3".parse().unwrap());
        job.tables[1].codec = Some("fp16".parse().unwrap());
        job.tables[2].codec = Some(CodecSpec::Raw);
        job.tables[2].pull_codec = Some("raw|zstd:1,shuffle".parse().unwrap());
        let toml = job.to_toml();
        assert!(toml.contains("codec = \"ef(topk:0.01)|zstd:3\"") && toml.contains("codec = \"fp16\""), "{toml}");
        let back = JobConfig::from_toml(&toml).unwrap();
        assert_eq!(back, job);
        let codecs = back.codecs();
        assert_eq!(codecs[0].push, job.codec, "a table without its own codec takes the job's");
        assert_eq!(codecs[1].push, Some(CodecSpec::Fp16));
        assert_eq!(codecs[2].push, None, "raw needs no codec header");
        assert_eq!(codecs[2].pull, Some("raw|zstd:1,shuffle".parse().unwrap()));
        // A bad spec in a job file is refused by the same parser, with the list of codecs.
        let err = JobConfig::from_toml(&toml.replace("fp16", "fp17")).unwrap_err().to_string();
        assert!(err.contains("unknown codec \"fp17\"") && err.contains("valid codecs"), "{err}");
        let mut j = job;
        j.tables[0].pull_codec = Some("ef(fp16)".parse().unwrap());
        assert!(j.validate().unwrap_err().to_string().contains("error feedback keeps one residual per receiver"));
    }

    #[test]
    fn invalid_jobs_are_refused_with_the_setting_named() {
        let base = JobConfig::new(AppConfig::Custom, vec![table("a")]).unwrap();
        let mut j = base.clone();
        j.optimizer = OptimizerSpec::Sgd { lr: -0.1 };
        assert!(j.validate().unwrap_err().to_string().contains("invalid optimizer: sgd: lr = -0.1 is out of range"));
        let mut j = base.clone();
        j.tables[0].optimizer = Some(OptimizerSpec::Adam { lr: 0.1, beta1: 1.0, beta2: 0.9, eps: 1e-8 });
        let err = j.validate().unwrap_err().to_string();
        assert!(err.contains("of table 'a'") && err.contains("beta1 = 1 is out of range"), "{err}");
        let mut j = base.clone();
        j.consistency = Consistency::Hogwild;
        j.optimizer = "shampoo".parse().unwrap();
        assert!(j.validate().unwrap_err().to_string().contains("shampoo under hogwild"));
        let mut j = base.clone();
        j.tables.push(table("a"));
        assert!(j.validate().unwrap_err().to_string().contains("two tables are named 'a'"));
        let mut j = base.clone();
        j.tables[0].dim = 1 << 30;
        assert!(j.validate().unwrap_err().to_string().contains("does not fit"));
        let mut j = base;
        j.request_bytes = j.max_frame_bytes;
        assert!(j.validate().is_err());
        assert!(matches!(JobConfig::from_toml("seed = 'x'"), Err(ConfigError::Toml(_))));
    }
}
