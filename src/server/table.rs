//! Table specifications, seeded initializers and the row storage of one shard.
//!
//! Initial values depend only on (job seed, table name, key, column): a row gets the same values on
//! whichever server holds it, so a model is identical on any number of servers.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use paramserv_codecs::CodecSpec;

use crate::proto::partition::{KeyRange, Partitioning, Placement, mix64};
use crate::rng::SplitMix64;

/// A table as the job configuration declares it.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Name workers look the table up by.
    pub name: String,
    /// Number of rows: keys are `0..rows`.
    pub rows: u64,
    /// Values per row.
    pub dim: u32,
    /// Initial values.
    #[serde(default)]
    pub init: Init,
    /// How rows are spread over servers.
    #[serde(default)]
    pub partitioning: Partitioning,
    /// The update rule of this table; `None`: the job's optimizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<crate::server::optimizer::OptimizerSpec>,
    /// The codec pipeline workers push this table's gradients through; `None`: the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<CodecSpec>,
    /// The codec pipeline servers answer this table's pulls with; `None`: the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_codec: Option<CodecSpec>,
}

/// The codecs of one table's traffic, as a job resolves them; `None` is raw `f32`, which needs no
/// codec header.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableCodecs {
    /// Pushes (worker to server).
    pub push: Option<CodecSpec>,
    /// Pull replies (server to worker).
    pub pull: Option<CodecSpec>,
}

impl TableSpec {
    /// A table of `rows` rows of `dim` values: zeros, range-partitioned, with the job's optimizer
    /// and codecs. Set the public fields to change any of that.
    pub fn new(name: impl Into<String>, rows: u64, dim: u32) -> Self {
        Self {
            name: name.into(),
            rows,
            dim,
            init: Init::Zeros,
            partitioning: Partitioning::Range,
            optimizer: None,
            codec: None,
            pull_codec: None,
        }
    }

    /// The seed of this table's initializer within a job seeded with `job_seed`.
    pub fn seed(&self, job_seed: u64) -> u64 {
        // FNV-1a over the name, so the seed does not depend on the table's position in the job.
        let name =
            self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        mix64(job_seed ^ mix64(name))
    }
}

/// How a table's values start.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Init {
    /// All zeros.
    #[default]
    Zeros,
    /// Every value `c`.
    Constant(f32),
    /// Uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f32,
        /// Upper bound.
        high: f32,
    },
    /// Normal with mean 0 and standard deviation `sigma`.
    Normal {
        /// Standard deviation.
        sigma: f32,
    },
}

impl Init {
    /// Fills `row` with the initial values of `key` in a table seeded with `table_seed`.
    pub fn fill(&self, table_seed: u64, key: u64, row: &mut [f32]) {
        let mut rng = SplitMix64::for_item(table_seed, key);
        match *self {
            Self::Zeros => row.fill(0.0),
            Self::Constant(c) => row.fill(c),
            Self::Uniform { low, high } => {
                for v in row {
                    *v = low + (high - low) * rng.next_f32();
                }
            }
            Self::Normal { sigma } => {
                for v in row {
                    *v = (f64::from(sigma) * rng.next_normal()) as f32;
                }
            }
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zeros => f.write_str("zeros"),
            Self::Constant(c) => write!(f, "constant:{c}"),
            Self::Uniform { low, high } => write!(f, "uniform:{low},{high}"),
            Self::Normal { sigma } => write!(f, "normal:{sigma}"),
        }
    }
}

impl FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        let nums = || -> Result<Vec<f32>, String> {
            args.split(',')
                .map(|a| a.trim().parse::<f32>().map_err(|e| format!("initializer '{s}': '{a}': {e}")))
                .collect()
        };
        let init = match (name, args.is_empty()) {
            ("zeros", true) => Self::Zeros,
            ("constant", false) => match nums()?.as_slice() {
                [c] => Self::Constant(*c),
                _ => return Err(format!("initializer '{s}': constant takes one value, e.g. constant:0.5")),
            },
            ("uniform", false) => match nums()?.as_slice() {
                [low, high] if low < high => Self::Uniform { low: *low, high: *high },
                [_, _] => return Err(format!("initializer '{s}': uniform needs low < high")),
                _ => return Err(format!("initializer '{s}': uniform takes two values, e.g. uniform:-0.1,0.1")),
            },
            ("normal", false) => match nums()?.as_slice() {
                [sigma] if *sigma >= 0.0 => Self::Normal { sigma: *sigma },
                _ => return Err(format!("initializer '{s}': normal takes one non-negative sigma, e.g. normal:0.01")),
            },
            _ => {
                return Err(format!(
                    "unknown initializer '{s}' (expected zeros, constant:C, uniform:A,B or normal:SIGMA)"
                ));
            }
        };
        let finite = match init {
            Self::Zeros => true,
            Self::Constant(c) => c.is_finite(),
            Self::Uniform { low, high } => low.is_finite() && high.is_finite(),
            Self::Normal { sigma } => sigma.is_finite(),
        };
        if !finite {
            return Err(format!("initializer '{s}': values must be finite"));
        }
        Ok(init)
    }
}

serde_as_string!(Init);

/// The rows one shard holds, as one flat `Vec<f32>` of `dim`-wide rows.
#[derive(Debug)]
pub(crate) enum RowStore {
    /// The contiguous keys `range`; row of key `k` at `(k - range.start) * dim`.
    Dense { range: KeyRange, dim: usize, data: Vec<f32> },
    /// Any set of keys, found through an index.
    Indexed { index: HashMap<u64, usize>, dim: usize, data: Vec<f32> },
}

impl RowStore {
    /// Builds and initializes the rows `server` holds under `placement`.
    pub(crate) fn build(spec: &TableSpec, placement: &Placement, server: u32, job_seed: u64) -> Self {
        let dim = spec.dim as usize;
        let seed = spec.seed(job_seed);
        match placement.scheme() {
            Partitioning::Range => {
                let range = placement.server_range(server);
                let mut data = vec![0.0; range.len() as usize * dim];
                if spec.init != Init::Zeros {
                    for (key, row) in range.keys().zip(data.chunks_exact_mut(dim.max(1))) {
                        spec.init.fill(seed, key, row);
                    }
                }
                Self::Dense { range, dim, data }
            }
            Partitioning::Hash => {
                let mut index = HashMap::new();
                let mut data = Vec::new();
                for key in placement.server_keys(server) {
                    index.insert(key, data.len());
                    let start = data.len();
                    data.resize(start + dim, 0.0);
                    spec.init.fill(seed, key, &mut data[start..]);
                }
                Self::Indexed { index, dim, data }
            }
        }
    }

    pub(crate) fn dim(&self) -> usize {
        match self {
            Self::Dense { dim, .. } | Self::Indexed { dim, .. } => *dim,
        }
    }

    /// Hands the values over (to lock-free storage), leaving the key index and an empty data vector.
    pub(crate) fn take_data(&mut self) -> Vec<f32> {
        match self {
            Self::Dense { data, .. } | Self::Indexed { data, .. } => std::mem::take(data),
        }
    }

    /// Offset of `key`'s row in the data, if this store holds it.
    pub(crate) fn offset(&self, key: u64) -> Option<usize> {
        match self {
            Self::Dense { range, dim, .. } => range.contains(key).then(|| (key - range.start()) as usize * dim),
            Self::Indexed { index, .. } => index.get(&key).copied(),
        }
    }

    /// The rows of `range`, as one slice, if this store holds the whole range contiguously.
    pub(crate) fn contiguous(&self, range: KeyRange) -> Option<std::ops::Range<usize>> {
        match self {
            _ if range.is_empty() => Some(0..0),
            Self::Dense { range: held, dim, .. } if held.intersect(&range) == range => {
                let start = (range.start().saturating_sub(held.start())) as usize * dim;
                Some(start..start + range.len() as usize * dim)
            }
            _ => None,
        }
    }

    pub(crate) fn data(&self) -> &[f32] {
        match self {
            Self::Dense { data, .. } | Self::Indexed { data, .. } => data,
        }
    }

    pub(crate) fn data_mut(&mut self) -> &mut [f32] {
        match self {
            Self::Dense { data, .. } | Self::Indexed { data, .. } => data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(init: Init, partitioning: Partitioning) -> TableSpec {
        TableSpec {
            name: "emb".into(),
            rows: 97,
            dim: 3,
            init,
            partitioning,
            optimizer: None,
            codec: None,
            pull_codec: None,
        }
    }

    /// The whole table as (key → row), assembled from `servers` shards.
    fn assemble(spec: &TableSpec, servers: u32) -> Vec<Vec<f32>> {
        let placement = Placement::new(spec.rows, servers, spec.partitioning);
        let stores: Vec<RowStore> = (0..servers).map(|s| RowStore::build(spec, &placement, s, 42)).collect();
        (0..spec.rows)
            .map(|k| {
                let s = &stores[placement.owner(k) as usize];
                let off = s.offset(k).expect("owner holds the key");
                s.data()[off..off + 3].to_vec()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_model_on_any_number_of_servers() {
        for init in [Init::Uniform { low: -1.0, high: 1.0 }, Init::Normal { sigma: 0.5 }, Init::Constant(2.0)] {
            let one = assemble(&spec(init, Partitioning::Range), 1);
            for servers in [2, 3, 7] {
                assert_eq!(assemble(&spec(init, Partitioning::Range), servers), one, "{init} on {servers}");
                assert_eq!(assemble(&spec(init, Partitioning::Hash), servers), one, "{init} hashed on {servers}");
            }
        }
    }

    #[test]
    fn initializers_have_their_distribution() {
        let mut row = vec![0.0; 20_000];
        Init::Uniform { low: -0.5, high: 1.5 }.fill(7, 3, &mut row);
        assert!(row.iter().all(|v| (-0.5..1.5).contains(v)));
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "uniform mean {mean}");
        Init::Normal { sigma: 2.0 }.fill(7, 3, &mut row);
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / row.len() as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / row.len() as f64;
        assert!(mean.abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05, "normal mean {mean} sd {}", var.sqrt());
        let mut other = vec![0.0; 20_000];
        Init::Normal { sigma: 2.0 }.fill(8, 3, &mut other);
        assert_ne!(row, other, "another seed gives another model");
    }

    #[test]
    fn initializer_syntax() {
        assert_eq!("zeros".parse(), Ok(Init::Zeros));
        assert_eq!("constant:0.5".parse(), Ok(Init::Constant(0.5)));
        assert_eq!("uniform:-0.1,0.1".parse(), Ok(Init::Uniform { low: -0.1, high: 0.1 }));
        assert_eq!("normal:0.01".parse(), Ok(Init::Normal { sigma: 0.01 }));
        for bad in ["zero", "uniform:1,0", "normal:-1", "constant", "constant:x", "uniform:1", "constant:inf"] {
            assert!(bad.parse::<Init>().is_err(), "{bad} should be refused");
        }
        for init in
            [Init::Zeros, Init::Constant(-3.0), Init::Uniform { low: -1.0, high: 2.0 }, Init::Normal { sigma: 0.1 }]
        {
            assert_eq!(init.to_string().parse(), Ok(init));
        }
    }
}
