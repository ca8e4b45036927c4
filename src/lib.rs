//! paramserv: a parameter server for distributed machine learning whose edge is communication.
//!
//! M servers own key ranges of tables; N workers pull rows, compute, and push gradients; a
//! coordinator runs membership, barriers and shutdown. Everything runs in one process (the local
//! cluster, over in-process links or loopback TCP) or as separate processes on many hosts.
//!
//! The map:
//! - [`proto`]: the sans-IO core. Frames and messages ([`proto::wire`]), key → server routing
//!   ([`proto::partition`]), the hello handshake ([`proto::handshake`]), the coordinator's state
//!   machine ([`proto::coordinator`]). No IO, no runtime, no clock reads.
//! - [`server`]: a shard's tables and the requests that read and update them.
//! - [`worker`]: the client API — `pull`, `push`, `barrier` — with request splitting by server and
//!   many requests in flight per connection.
//! - [`transport`]: tokio TCP and in-process links that move the same encoded frames, the
//!   handshake driver, and per-link byte counters.
//! - [`cluster`]: configuration parsed once (flags, `PS_*` environment, TOML), the role runners
//!   (coordinator, server, worker, node) and the local cluster.
//! - [`apps`]: jobs to run on the cluster (logistic regression on a seeded synthetic dataset).
//! - [`bench`](mod@bench): end-to-end benchmarks (`paramserv bench ...`).
//!
//! Design decision: every frame is encoded even between tasks of one process, so byte counts and
//! code paths are the same in a test and on a cluster; the cost is one encode per message, which a
//! zero-copy payload keeps small. Only a worker's access to rows held by its own node skips
//! frames, through [`server::Shard`]'s shared-memory path.

//!
//! A whole cluster in one process, trained through the worker API (the same code runs against
//! servers on other hosts):
//!
//! ```
//! use paramserv::cluster::job::{AppConfig, JobConfig};
//! use paramserv::cluster::local::LocalCluster;
//! use paramserv::proto::partition::KeyRange;
//! use paramserv::server::table::TableSpec;
//! use paramserv::transport::Transport;
//! use paramserv::worker::Worker;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let table = TableSpec::new("w", 256, 1); // 256 rows of 1 value, zeros, split by key range
//! let mut job = JobConfig::new(AppConfig::Custom, vec![table])?;
//! job.optimizer = "sgd:lr=0.1".parse()?; // four workers push every step (or adam, shampoo, ...)
//! job.codec = Some("fp16".parse()?); // pushes in half precision (or ef(topk:0.01)|zstd:3, ...)
//! let model = KeyRange::new(0, 256)?;
//! let losses = LocalCluster::new(2, 4, Transport::Inproc)
//!     .run(&job, move |worker: Worker| async move {
//!         let mut loss = Vec::new();
//!         for _ in 0..10 {
//!             let w = worker.pull(0, model).await?; // the whole model: one range, no key per row
//!             let grad: Vec<f32> = w.iter().map(|x| x - 1.0).collect(); // of (w - 1)² / 2
//!             worker.push(0, model, &grad).await?; // servers apply w -= lr × g
//!             let mine = grad.iter().map(|g| f64::from(g * g) / 2.0).sum::<f64>();
//!             loss.push(worker.barrier(&[mine]).await?[0]); // summed over all workers
//!         }
//!         Ok(loss)
//!     })
//!     .await?;
//! assert!(losses[0].last() < losses[0].first());
//! # Ok(()) }
//! ```

/// Implements the `TryFrom<String>` / `Into<String>` pair that `#[serde(try_from = "String",
/// into = "String")]` needs, through the type's `FromStr` (error `String`) and `Display`, so a
/// value read from a config file passes the same checks as one given on the command line.
macro_rules! serde_as_string {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> Self {
                v.to_string()
            }
        }
    };
}

pub mod apps;
pub mod bench;
pub mod cluster;
pub mod proto;
mod rng;
pub mod server;
pub mod transport;
pub mod worker;
