//! Sans-IO core of the switch agent: packet layout, slot pool and fixed-point arithmetic.
//!
//! Refuses: sockets, threads, async runtimes and clock reads. Everything here is driven by the
//! caller, who passes bytes and the current time in and takes packets to send out.
//!
//! - [`packet`]: the wire format, byte by byte, as a checked view and an owned header.
//! - [`fixed`]: f32 ↔ int32 with a shared exponent, and the error bound of a sum.
//! - [`agent`]: the switch: slot pool, contributor bitmaps, int32 sums, shadow copies, jobs.
//! - [`endpoint`]: a worker's side: join, chunking over the pool, retransmission.
//!
//! Two workers summing through an agent, with the "network" a loop in this example:
//!
//! ```
//! use std::time::Instant;
//! use paramserv_switch::proto::agent::{Agent, AgentConfig, JobParams};
//! use paramserv_switch::proto::endpoint::{Endpoint, EndpointConfig};
//!
//! let params = JobParams { workers: 2, slots: 4, values: 64 };
//! let mut agent = Agent::new(AgentConfig::default());
//! let mut workers: Vec<Endpoint> =
//!     (0..2).map(|w| Endpoint::new(EndpointConfig::new(7, w, params)).unwrap()).collect();
//! let inputs = [vec![1.5f32; 1000], vec![-0.25f32; 1000]];
//! for (w, input) in workers.iter_mut().zip(&inputs) {
//!     w.start(input).unwrap();
//! }
//! let now = Instant::now();
//! let mut buf = vec![0u8; 2048];
//! while !workers.iter().all(|w| w.is_idle()) {
//!     for (id, w) in workers.iter_mut().enumerate() {
//!         while let Some(len) = w.poll_transmit(now, &mut buf) {
//!             let _ = agent.handle_datagram(id, &buf[..len]); // the address is the worker's index
//!         }
//!     }
//!     while let Some((to, len)) = agent.poll_transmit(&mut buf) {
//!         workers[to].handle_datagram(now, &buf[..len]);
//!     }
//! }
//! for w in &mut workers {
//!     assert!(w.finish().unwrap().unwrap().iter().all(|&x| x == 1.25));
//! }
//! ```

pub mod agent;
pub mod endpoint;
pub mod fixed;
pub mod packet;
