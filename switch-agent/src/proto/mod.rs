//! Sans-IO core of the switch agent: packet layout, slot pool and fixed-point arithmetic.
//!
//! Refuses: sockets, threads, async runtimes and clock reads. Everything here is driven by the
//! caller, who passes bytes and the current time in and takes packets to send out.
