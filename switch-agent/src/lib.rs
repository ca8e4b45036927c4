//! paramserv-switch: SwitchML-style in-network aggregation, emulated in software over UDP.
//!
//! Workers cut a dense gradient into chunks, convert each chunk to int32 fixed point with a shared
//! exponent, and send it to the agent, which sums the chunks of all workers in a bounded pool of
//! slots and hands every worker the sum. Lost packets are recovered with shadow slots and
//! retransmission, as in Sapio et al. (NSDI'21).
//!
//! Layout: [`proto`] is the sans-IO core (packet views, slot pool, fixed-point conversion: no
//! sockets, no runtime, no clock reads; time is passed in). The daemon and the all-reduce client
//! are thin drivers around it. This crate depends on no other paramserv crate.
//!
//! Status: the crate exists so the workspace layering is fixed and checked from the start; the
//! aggregation protocol itself is built under its own issue.

pub mod proto;
