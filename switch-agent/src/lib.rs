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
//!
//! # Packet format
//!
//! Every packet, in both directions, is one UDP datagram with a 32-byte header followed by
//! `count` big-endian `i32` values. All fields are in network byte order.
//!
//! ```text
//! offset size field
//!  0     2    magic 0x5357 ("SW"): anything else is a foreign datagram
//!  2     1    version (1)
//!  3     1    kind: 1 contribution (worker -> agent), 2 result (agent -> worker),
//!             3 join, 4 join-ack, 5 refuse, 6 leave, 7 leave-ack
//!  4     4    job id
//!  8     2    worker id (the sender's, or in agent -> worker packets the recipient's)
//! 10     2    slot: bits 0-14 the slot index in the job's pool, bit 15 the pool set
//!             (SwitchML's shadow copy: rounds alternate between the two sets, set = round & 1)
//! 12     4    round: how many rounds this slot has run before this one (wraps)
//! 16     8    chunk offset: index of the chunk's first element in the tensor
//! 24     2    count: i32 values that follow
//! 26     1    exponent (i8): the values are scaled for max |x| < 2^(exponent+1); -128: all zero
//! 27     1    next exponent (i8): the sender's exponent for the next chunk this slot carries;
//!             in a result, the maximum over all workers
//! 28     1    flags: bit 0 overflow (results only); other bits must be zero
//! 29     3    reserved, zero
//! 32     4·n  values (i32, big-endian). Join carries 4: workers, slots, values per packet and
//!             the worker's session (a join with a session new for that worker id restarts the
//!             job's rounds); join-ack echoes the first 3; refuse carries 1: the reason code
//!             (see [`proto::packet::RefuseReason`])
//! ```
//!
//! A job starts with every worker sending a join (the agent answers join-ack, or refuse with a
//! reason); each all-reduce then runs rounds per slot (contribution -> result); leave frees the job
//! once every worker sent it.
//!
//! # Fixed point
//!
//! Per chunk, workers agree on the largest exponent one round ahead and scale by
//! `INT32_MAX / (N · 2^(E+1))`, so the int32 sum of N ≤ 256 workers cannot overflow; the result is
//! within `N² · 2^E / INT32_MAX` (plus f32 rounding of the result) of the exact sum. Details and
//! the bound's derivation: [`proto::fixed`].
//!
//! # Loss recovery
//!
//! Each slot has two pool sets used by alternate rounds; the agent keeps a round's result until
//! the round after next reuses its set, and answers a retransmitted contribution to a complete
//! round with that result. Rounds are numbered, so late duplicates of old rounds are dropped.
//! Workers retransmit after a timeout estimated from measured round trips, doubled per expiry.
//! Results are integer sums, so drops, duplicates and reordering leave them bit-identical.
//! Details: [`proto::agent`], [`proto::endpoint`].

pub mod client;
pub mod daemon;
pub mod datapath;
pub mod proto;
