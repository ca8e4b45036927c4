//! Plain datapath: a nonblocking [`std::net::UdpSocket`], one system call per datagram. Always
//! available; the baseline the other datapaths are measured against.
//!
//! Receives drain `recv_from` until `WouldBlock`, and `poll(POLLIN)` until the deadline only when
//! nothing was queued. Each slot of a [`RecvBatch`] has one spare byte, so a datagram that fills
//! it was longer than `max_datagram` and is counted as truncated (std has no `MSG_TRUNC`).
//!
//! It uses no kernel offloads (no UDP GSO or GRO): it stays the one-datagram-per-call baseline,
//! and safe Rust.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use super::{BatchSocket, DatapathKind, RecvBatch, SendBatch, is_soft_recv_error, poll_then_drain, send_each};

/// A UDP socket moving one datagram per system call.
pub(super) struct PlainSocket {
    socket: UdpSocket,
    send_errors: u64,
}

impl PlainSocket {
    /// Makes `socket` nonblocking.
    pub(super) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self { socket, send_errors: 0 })
    }

    /// Takes every queued datagram that fits; returns how many the kernel delivered (kept or
    /// truncated).
    fn drain(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut got = 0;
        while !batch.is_full() {
            let slot = batch.len();
            match self.socket.recv_from(batch.next_slot_mut()) {
                Ok((len, from)) => {
                    got += 1;
                    // `len == max_datagram + 1` (the slot's size) means the datagram was longer.
                    batch.commit(slot, len, from);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error().is_some_and(is_soft_recv_error) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

impl AsFd for PlainSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl BatchSocket for PlainSocket {
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize> {
        poll_then_drain(self, batch, timeout, Self::drain)
    }

    fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        let r = send_each(&self.socket, batch.iter(), &mut self.send_errors).map(drop);
        batch.clear();
        r
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn kind(&self) -> DatapathKind {
        DatapathKind::Plain
    }

    fn send_errors(&self) -> u64 {
        self.send_errors
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests as scenario;
    use super::*;

    scenario_tests!(DatapathKind::Plain);
}
