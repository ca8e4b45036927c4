//! The sans-IO core of paramserv: frames, routing, the handshake and the coordinator's protocol.
//!
//! Nothing in this module does IO, spawns a thread, or reads a clock: time is passed in, bytes go
//! in and messages come out. That keeps every protocol decision testable in microseconds and
//! deterministic, and it is checked mechanically by `.ci/run`.
//!
//! A walk through one exchange, with no network at all:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::BytesMut;
//! use paramserv::proto::coordinator::{Coordinator, CoordinatorConfig};
//! use paramserv::proto::partition::{KeyDirectory, KeySplit, Partitioning, Placement};
//! use paramserv::proto::wire::{self, Join, KeysRef, Limits, Message};
//!
//! // A coordinator expecting one server and one worker.
//! let now = Instant::now();
//! let cfg = CoordinatorConfig {
//!     servers: 1,
//!     workers: 1,
//!     job: "seed = 1".into(),
//!     join_timeout: Duration::from_secs(5),
//!     heartbeat_timeout: Duration::from_secs(30),
//!     consistency: Default::default(),
//!     run: 1,
//! };
//! let mut coord = Coordinator::new(cfg, now).unwrap();
//! coord.handle_join(now, 1, Join { server: true, workers: 0, listen: "10.0.0.1:7000".into(), label: "a".into() });
//! coord.handle_join(now, 2, Join { server: false, workers: 1, listen: String::new(), label: "b".into() });
//! let assigned = coord.poll_transmit().unwrap();
//! assert!(matches!(assigned.message, Message::Assign(_)));
//!
//! // The worker routes keys of table 0 (100 rows on 1 server) and encodes a push.
//! let dir = KeyDirectory::new(vec![Placement::new(100, 1, Partitioning::Range)]);
//! let keys = [3, 5];
//! let KeySplit::Slices(parts) = dir.split_keys(0, &keys).unwrap() else { unreachable!() };
//! assert_eq!(parts, [(0, 0, &keys[..])]);
//! let frame = wire::encode_push(7, 0, None, KeysRef::List(&keys), &[0.5, -0.5]).unwrap();
//!
//! // The server takes it off a byte stream and decodes it without copying the values.
//! let mut stream = BytesMut::new();
//! stream.extend_from_slice(&frame.header);
//! stream.extend_from_slice(&frame.payload);
//! let received = wire::decode_frame(&mut stream, &Limits::default()).unwrap().unwrap();
//! assert_eq!(received.request_id, 7);
//! let Message::Push { table, values, .. } = received.message().unwrap() else { unreachable!() };
//! assert_eq!((table, values.len()), (0, 8));
//! ```

pub mod consistency;
pub mod coordinator;
pub mod handshake;
pub mod partition;
pub mod request;
pub mod wire;
