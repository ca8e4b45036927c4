//! paramserv-switch: SwitchML-style in-network aggregation, emulated in software over UDP.
//!
//! Workers cut a dense gradient into chunks, convert each chunk to int32 fixed point with a shared
//! exponent, and send it to the agent, which sums the chunks of all workers in a bounded pool of
//! slots and hands every worker the sum. Lost packets are recovered with shadow slots and
//! retransmission, as in Sapio et al. (NSDI'21).
//!
//! Layout:
//! - [`proto`]: the sans-IO core (packet format, fixed point, the agent's slot pool, a worker's
//!   endpoint): no sockets, no runtime, no clock reads; time is passed in.
//! - [`datapath`]: batched UDP sockets (io_uring, recvmmsg/sendmmsg, plain) and the seeded fault
//!   injector that tests and benchmarks wrap around them.
//! - [`daemon`]: the agent's single-threaded loop (the `switch-agent` binary runs it).
//! - [`client`]: [`client::AllReduce`], the blocking all-reduce workers use.
//!
//! This crate depends on no other paramserv crate and on no async runtime: the agent is one
//! thread on one socket, and the client blocks its caller (the PS runs it on a blocking thread).

pub mod client;
pub mod daemon;
pub mod datapath;
pub mod proto;
