//! Running a job: its configuration, the role runners, and the local in-process cluster.
//!
//! - [`job`]: the job configuration every node receives from the coordinator.
//! - [`config`]: the command line, `PS_*` environment variables and TOML files, parsed once.
//! - [`coordinator`], [`node`]: the roles as async functions; a process runs one of them, a local
//!   cluster runs them all as tasks.
//! - [`local`]: the local cluster.

pub mod config;
pub mod coordinator;
pub mod job;
pub mod local;
pub mod node;
pub(crate) mod session;
