//! Batched UDP datapath: moves datagrams between one socket and the agent in batches, on one thread.
//!
//! [`open`] binds a UDP socket and returns it as a [`BatchSocket`] built on the fastest
//! implementation this kernel allows, trying them in this order:
//!
//! | [`DatapathKind`] | receive | send |
//! |---|---|---|
//! | `IoUring` | one multishot `RECVMSG` request over a provided-buffer ring | one `SEND` request per datagram, submitted together |
//! | `Mmsg` | `poll(POLLIN)` then `recvmmsg(MSG_DONTWAIT)` | `sendmmsg`, resumed after partial sends |
//! | `Plain` | `poll(POLLIN)` then `recv_from` until `WouldBlock` | `send_to` per datagram |
//!
//! Every implementation behaves the same way; the tests run one scenario list against each of them.
//! [`FaultInjector`] wraps any [`BatchSocket`] to drop, duplicate or reorder datagrams on the send
//! side with a seeded RNG (it is a wrapper, never a flag inside a transport).
//!
//! What it refuses to do:
//! - **Interpret datagrams.** No parsing, no protocol state, no retransmission: bytes and
//!   addresses in, bytes and addresses out. The protocol core lives in [`crate::proto`].
//! - **Threads, locks or an async runtime.** A socket belongs to one thread at a time.
//! - **Promise order or delivery.** It is UDP. In particular the io_uring datapath may reorder
//!   datagrams of one send batch when the kernel has to wait for room in the send queue.
//! - **Hand out truncated datagrams.** A datagram longer than `max_datagram` is dropped by
//!   [`BatchSocket::recv_batch`] and counted in [`RecvBatch::truncated`]; it never appears in the
//!   batch, so a caller cannot mistake its first bytes for a whole packet.
//! - **Lend caller memory to the kernel beyond a call.** The io_uring datapath copies each
//!   datagram between the caller's batch and buffers that the socket owns. The design decision
//!   and its trade-off: one `memcpy` per datagram (about 300 bytes) buys soundness that does not
//!   depend on the caller. No caller buffer is ever in flight when a call returns, not even after an
//!   error, so the batch types need no pinning and no lifetimes tied to the socket.
//!
//! The io_uring datapath needs Linux 6.0 (multishot receive, `SEND` with an address); on older
//! kernels, or where io_uring is disabled (`kernel.io_uring_disabled`, container seccomp
//! profiles), `Auto` falls back to recvmmsg/sendmmsg, which Linux has had since 3.0.
//!
//! `unsafe` code is confined to `uring.rs` and `mmsg.rs` (system calls on raw `msghdr`s, the
//! provided-buffer ring); this file, `plain.rs` and `fault.rs` are safe Rust. Linux only.

/// The shared socket scenarios as `#[test]`s of one datapath kind (used in each kind's module).
#[cfg(test)]
macro_rules! scenario_tests {
    ($kind:expr) => {
        #[test]
        fn round_trip() {
            scenario::round_trip($kind);
        }

        #[test]
        fn idle_timeout() {
            scenario::idle_timeout($kind);
        }

        #[test]
        fn truncation() {
            scenario::truncation($kind);
        }

        #[test]
        fn bad_destinations() {
            scenario::bad_destinations($kind);
        }

        #[test]
        fn jumbo() {
            scenario::jumbo($kind);
        }

        #[test]
        fn same_size_run() {
            scenario::same_size_run($kind);
        }

        #[test]
        fn mixed_destinations_and_sizes() {
            scenario::mixed_destinations_and_sizes($kind);
        }

        #[test]
        fn short_last_segment() {
            scenario::short_last_segment($kind);
        }

        #[test]
        fn truncation_in_a_run() {
            scenario::truncation_in_a_run($kind);
        }

        #[test]
        fn coalesced_into_small_batch() {
            scenario::coalesced_into_small_batch($kind);
        }
    };
}

mod fault;
mod mmsg;
mod plain;
mod uring;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

pub use fault::{FaultInjector, FaultStats, Faults, FaultsError};

/// Kernel socket buffer size requested by [`open`], so that bursts from many workers are queued
/// rather than dropped.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Which implementation a socket uses (printed by the daemon at start).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum DatapathKind {
    /// io_uring `RECVMSG`/`SENDMSG` requests.
    IoUring,
    /// `recvmmsg(2)` and `sendmmsg(2)`.
    Mmsg,
    /// `recv_from`/`send_to`, one datagram per system call.
    Plain,
}

impl DatapathKind {
    /// Every kind, fastest first: the order in which [`DatapathChoice::Auto`] tries them.
    pub const ALL: [Self; 3] = [Self::IoUring, Self::Mmsg, Self::Plain];

    /// The name printed by `Display` and accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Mmsg => "recvmmsg/sendmmsg",
            Self::Plain => "plain",
        }
    }
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatapathKind {
    type Err = ParseDatapathError;

    /// Accepts the `Display` names plus the short forms `uring` and `mmsg`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<DatapathChoice>()? {
            DatapathChoice::IoUring => Ok(Self::IoUring),
            DatapathChoice::Mmsg => Ok(Self::Mmsg),
            DatapathChoice::Plain => Ok(Self::Plain),
            DatapathChoice::Auto => Err(ParseDatapathError(s.to_owned())),
        }
    }
}

/// Which implementation [`open`] should use (a configuration value).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum DatapathChoice {
    /// The fastest one that works here: io_uring, then recvmmsg/sendmmsg, then plain.
    #[default]
    Auto,
    /// io_uring only; [`open`] fails if the kernel refuses it.
    IoUring,
    /// recvmmsg/sendmmsg only.
    Mmsg,
    /// `recv_from`/`send_to` only (always available).
    Plain,
}

impl fmt::Display for DatapathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::IoUring => "io_uring",
            Self::Mmsg => "mmsg",
            Self::Plain => "plain",
        })
    }
}

impl FromStr for DatapathChoice {
    type Err = ParseDatapathError;

    /// `auto`, `io_uring` (or `uring`), `mmsg` (or `recvmmsg/sendmmsg`), `plain`; ASCII case is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Self::IoUring),
            "mmsg" | "recvmmsg/sendmmsg" => Ok(Self::Mmsg),
            "plain" => Ok(Self::Plain),
            _ => Err(ParseDatapathError(s.to_owned())),
        }
    }
}

/// A datapath name that [`DatapathChoice`] or [`DatapathKind`] does not know.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("unknown datapath `{0}` (expected auto, io_uring, uring, mmsg or plain)")]
pub struct ParseDatapathError(pub String);

/// Received datagrams: a fixed number of buffers of `max_datagram` bytes each, reused by every
/// [`BatchSocket::recv_batch`] call.
#[derive(Debug)]
pub struct RecvBatch {
    /// `capacity` slots of `stride = max_datagram + 1` bytes. The spare byte lets implementations
    /// without `MSG_TRUNC` see that a datagram was longer than `max_datagram`.
    buf: Vec<u8>,
    max_datagram: usize,
    /// (slot, length, source) of each datagram held, in arrival order.
    entries: Vec<(usize, usize, SocketAddr)>,
    capacity: usize,
    truncated: usize,
}

impl RecvBatch {
    /// A batch of `capacity` buffers of `max_datagram` bytes each.
    ///
    /// # Panics
    /// If `capacity` or `max_datagram` is zero, or the buffers don't fit in memory.
    pub fn new(capacity: usize, max_datagram: usize) -> Self {
        assert!(capacity > 0 && max_datagram > 0, "RecvBatch needs capacity > 0 and max_datagram > 0");
        let stride = max_datagram.checked_add(1).expect("max_datagram + 1 overflows usize");
        let bytes = capacity.checked_mul(stride).expect("capacity * max_datagram overflows usize");
        Self { buf: vec![0; bytes], max_datagram, entries: Vec::with_capacity(capacity), capacity, truncated: 0 }
    }

    /// Number of datagrams held after the last [`BatchSocket::recv_batch`].
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the last [`BatchSocket::recv_batch`] received nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Datagram `i` and its source address.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let (slot, len, from) = self.entries[i];
        (&self.slot(slot)[..len], from)
    }

    /// The datagrams held, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.entries.iter().map(|&(slot, len, from)| (&self.slot(slot)[..len], from))
    }

    /// Most datagrams one [`BatchSocket::recv_batch`] call can return.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Longest datagram kept whole; longer ones are dropped and counted in [`Self::truncated`].
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Datagrams longer than [`Self::max_datagram`] that the last [`BatchSocket::recv_batch`]
    /// received and dropped. They are not in the batch.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    fn stride(&self) -> usize {
        self.max_datagram + 1
    }

    fn slot(&self, slot: usize) -> &[u8] {
        let stride = self.stride();
        &self.buf[slot * stride..(slot + 1) * stride]
    }

    /// Empties the batch before a receive.
    pub(crate) fn reset(&mut self) {
        self.entries.clear();
        self.truncated = 0;
    }

    /// Whether no more datagrams fit.
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() == self.capacity
    }

    /// All slot memory (`capacity * stride` bytes) and the stride, for implementations that hand
    /// several slots to one system call. Slot `k` starts at `k * stride`.
    pub(crate) fn slots_mut(&mut self) -> (&mut [u8], usize) {
        let stride = self.stride();
        (&mut self.buf, stride)
    }

    /// The slot the next datagram should be written to (`max_datagram + 1` bytes).
    ///
    /// # Panics
    /// If the batch is full.
    pub(crate) fn next_slot_mut(&mut self) -> &mut [u8] {
        assert!(!self.is_full(), "RecvBatch is full");
        let (slot, stride) = (self.entries.len(), self.stride());
        &mut self.buf[slot * stride..(slot + 1) * stride]
    }

    /// Records that slot `slot` holds a datagram of `len` bytes from `from`, or counts it as truncated
    /// when `len` (the datagram's full length, which may exceed what was stored) is above
    /// `max_datagram`. Returns whether it was kept.
    ///
    /// Slots must be committed in increasing order and at most once per receive.
    pub(crate) fn commit(&mut self, slot: usize, len: usize, from: SocketAddr) -> bool {
        debug_assert!(slot < self.capacity && self.entries.last().is_none_or(|e| e.0 < slot));
        if len > self.max_datagram {
            self.truncated += 1;
            false
        } else {
            self.entries.push((slot, len, from));
            true
        }
    }

    /// Counts a truncated datagram that was never written to a slot.
    pub(crate) fn count_truncated(&mut self) {
        self.truncated += 1;
    }
}

/// Datagrams to send, built in place.
#[derive(Debug)]
pub struct SendBatch {
    /// `capacity` slots of `max_datagram` bytes.
    buf: Vec<u8>,
    max_datagram: usize,
    /// (length, destination) of each committed datagram; datagram `i` is in slot `i`.
    entries: Vec<(usize, SocketAddr)>,
    capacity: usize,
}

impl SendBatch {
    /// A batch of up to `capacity` datagrams of at most `max_datagram` bytes each.
    ///
    /// # Panics
    /// If `capacity` or `max_datagram` is zero, or the buffers don't fit in memory.
    pub fn new(capacity: usize, max_datagram: usize) -> Self {
        assert!(capacity > 0 && max_datagram > 0, "SendBatch needs capacity > 0 and max_datagram > 0");
        let bytes = capacity.checked_mul(max_datagram).expect("capacity * max_datagram overflows usize");
        Self { buf: vec![0; bytes], max_datagram, entries: Vec::with_capacity(capacity), capacity }
    }

    /// A zeroed-or-stale buffer of `max_datagram` bytes for the next datagram; call
    /// [`Self::commit`] after writing to it.
    ///
    /// # Panics
    /// If the batch is full.
    pub fn next_buffer(&mut self) -> &mut [u8] {
        assert!(!self.is_full(), "SendBatch is full ({} datagrams)", self.capacity);
        let i = self.entries.len();
        &mut self.buf[i * self.max_datagram..(i + 1) * self.max_datagram]
    }

    /// Adds the first `len` bytes of [`Self::next_buffer`] as a datagram to `to`.
    ///
    /// # Panics
    /// If the batch is full or `len > max_datagram`.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        assert!(!self.is_full(), "SendBatch is full ({} datagrams)", self.capacity);
        assert!(len <= self.max_datagram, "datagram of {len} bytes > max_datagram {}", self.max_datagram);
        self.entries.push((len, to));
    }

    /// Copies `datagram` into the batch, addressed to `to`.
    ///
    /// # Panics
    /// If the batch is full or `datagram` is longer than `max_datagram`.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) {
        assert!(
            datagram.len() <= self.max_datagram,
            "datagram of {} bytes > max_datagram {}",
            datagram.len(),
            self.max_datagram
        );
        self.next_buffer()[..datagram.len()].copy_from_slice(datagram);
        self.commit(datagram.len(), to);
    }

    /// Removes every datagram.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of datagrams committed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no datagram is committed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether [`Self::capacity`] datagrams are committed.
    pub fn is_full(&self) -> bool {
        self.entries.len() == self.capacity
    }

    /// Most datagrams the batch holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Longest datagram the batch holds.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Datagram `i` and its destination.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let (len, to) = self.entries[i];
        let start = i * self.max_datagram;
        (&self.buf[start..start + len], to)
    }

    /// The datagrams in the order they were committed.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A UDP socket that moves datagrams in batches. Single-threaded use: `&mut self` everywhere.
pub trait BatchSocket {
    /// Waits up to `timeout` (`None`: no limit; `Some(Duration::ZERO)`: don't wait) for at least
    /// one datagram, then takes as many as are already queued, up to `batch.capacity()`. Replaces
    /// the batch's contents and returns how many datagrams it holds (0 on timeout).
    ///
    /// Datagrams longer than `batch.max_datagram()` are dropped, counted in
    /// [`RecvBatch::truncated`], and don't count as "at least one": the call keeps waiting.
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize>;

    /// [`recv_batch`](Self::recv_batch), but each datagram goes to `each`, in arrival order, and
    /// is not kept: implementations that receive into memory of their own (io_uring's buffer
    /// ring) hand it over in place instead of copying it into `batch`. `batch` bounds how many
    /// datagrams one call takes, counts the truncated ones ([`RecvBatch::truncated`]), and is
    /// otherwise scratch space whose contents afterwards are unspecified. Returns how many
    /// datagrams `each` got.
    fn recv_each(
        &mut self,
        batch: &mut RecvBatch,
        timeout: Option<Duration>,
        each: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        let n = self.recv_batch(batch, timeout)?;
        for (datagram, from) in batch.iter() {
            each(datagram, from);
        }
        Ok(n)
    }

    /// Sends every datagram in `batch` and clears it (also when it returns `Err`).
    ///
    /// A datagram the kernel refuses for a per-destination reason (`ECONNREFUSED` from an earlier
    /// ICMP error, `EHOSTUNREACH`, `ENETUNREACH`, `EACCES`, `EMSGSIZE`, `EINVAL` for port 0, ...) is
    /// counted in [`Self::send_errors`] and skipped; the rest of the batch is still sent. (Linux
    /// reports ICMP errors to an unconnected UDP socket only with `IP_RECVERR`, so a closed port
    /// is usually silent.) When the send queue is full (`EAGAIN`, `ENOBUFS`) it waits for room
    /// instead of dropping. Returns `Err` only when the socket itself is broken.
    fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()>;

    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The implementation behind this socket.
    fn kind(&self) -> DatapathKind;

    /// Datagrams skipped by [`Self::send_batch`] because of per-destination errors, since creation.
    fn send_errors(&self) -> u64;

    /// The kernel offloads in use now. GSO may switch off after creation (the first time the kernel
    /// refuses a segmented send); GRO is decided at creation.
    fn offloads(&self) -> Offloads {
        Offloads::NONE
    }
}

impl<S: BatchSocket + ?Sized> BatchSocket for Box<S> {
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize> {
        (**self).recv_batch(batch, timeout)
    }

    fn recv_each(
        &mut self,
        batch: &mut RecvBatch,
        timeout: Option<Duration>,
        each: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        (**self).recv_each(batch, timeout, each)
    }

    fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        (**self).send_batch(batch)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        (**self).local_addr()
    }

    fn kind(&self) -> DatapathKind {
        (**self).kind()
    }

    fn send_errors(&self) -> u64 {
        (**self).send_errors()
    }

    fn offloads(&self) -> Offloads {
        (**self).offloads()
    }
}

/// Binds `addr` with the chosen implementation.
///
/// `Auto` tries io_uring (ring setup, a probe for the opcodes it needs, and one datagram sent to
/// itself through them), then
/// recvmmsg/sendmmsg, then plain, and returns the first that works. An explicit choice that isn't
/// available here is an error that says why. `batch` sizes the io_uring datapath (its send window,
/// and a quarter of its receive buffers) and presizes the mmsg one; `max_datagram` sizes the
/// io_uring buffers and should match the batches passed to the socket (a longer datagram counts as
/// truncated). `SO_RCVBUF`/`SO_SNDBUF` are raised to [`SOCKET_BUFFER_BYTES`]
/// (best effort: `SO_*BUFFORCE` when privileged, else capped by `net.core.{r,w}mem_max`).
/// Kernel offloads: UDP GSO wherever the kernel allows; GRO on the io_uring datapath only
/// ([`Offloads::default_for`]).
pub fn open(
    addr: SocketAddr,
    choice: DatapathChoice,
    batch: usize,
    max_datagram: usize,
) -> io::Result<Box<dyn BatchSocket + Send>> {
    open_impl(addr, choice, batch, max_datagram, Offloads::default_for)
}

/// [`open`], asking for the kernel offloads in `want` (best effort: [`BatchSocket::offloads`] says
/// which are on). The plain datapath uses none.
pub fn open_with(
    addr: SocketAddr,
    choice: DatapathChoice,
    batch: usize,
    max_datagram: usize,
    want: Offloads,
) -> io::Result<Box<dyn BatchSocket + Send>> {
    open_impl(addr, choice, batch, max_datagram, |_| want)
}

fn open_impl(
    addr: SocketAddr,
    choice: DatapathChoice,
    batch: usize,
    max_datagram: usize,
    want: impl Fn(DatapathKind) -> Offloads,
) -> io::Result<Box<dyn BatchSocket + Send>> {
    if batch == 0 || max_datagram == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("datapath needs batch > 0 and max_datagram > 0 (got {batch}, {max_datagram})"),
        ));
    }
    let socket = UdpSocket::bind(addr)?;
    set_buffer_sizes(&socket, SOCKET_BUFFER_BYTES);
    let unavailable =
        |kind: DatapathKind, e: io::Error| io::Error::new(e.kind(), format!("{kind} datapath unavailable: {e}"));
    let (uring_wants, mmsg_wants) = (want(DatapathKind::IoUring), want(DatapathKind::Mmsg));
    match choice {
        DatapathChoice::IoUring => match uring::UringSocket::new(socket, batch, max_datagram, uring_wants) {
            Ok(s) => Ok(Box::new(s)),
            Err(r) => Err(unavailable(DatapathKind::IoUring, r.error)),
        },
        DatapathChoice::Mmsg => match mmsg::MmsgSocket::new(socket, batch, mmsg_wants) {
            Ok(s) => Ok(Box::new(s)),
            Err(r) => Err(unavailable(DatapathKind::Mmsg, r.error)),
        },
        DatapathChoice::Plain => Ok(Box::new(plain::PlainSocket::new(socket)?)),
        DatapathChoice::Auto => {
            let socket = match uring::UringSocket::new(socket, batch, max_datagram, uring_wants) {
                Ok(s) => return Ok(Box::new(s)),
                Err(r) => r.socket,
            };
            let socket = match mmsg::MmsgSocket::new(socket, batch, mmsg_wants) {
                Ok(s) => return Ok(Box::new(s)),
                Err(r) => r.socket,
            };
            Ok(Box::new(plain::PlainSocket::new(socket)?))
        }
    }
}

/// Checks whether `kind` works on this machine without keeping a socket: `Err` says why not.
/// [`open`] with [`DatapathChoice::Auto`] picks the first kind of [`DatapathKind::ALL`] for
/// which this succeeds.
pub fn probe(kind: DatapathKind) -> io::Result<()> {
    match kind {
        DatapathKind::IoUring => uring::probe(),
        DatapathKind::Mmsg => {
            let socket = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
            mmsg::MmsgSocket::new(socket, 1, Offloads::NONE).map(drop).map_err(|r| r.error)
        }
        DatapathKind::Plain => Ok(()),
    }
}

/// A socket an implementation could not use, handed back so [`open`] can try the next one.
pub(crate) struct Refused {
    pub(crate) error: io::Error,
    pub(crate) socket: UdpSocket,
}

/// What to do about a failed send of one datagram.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum SendFailure {
    /// Interrupted or the send queue is full: wait for room, then send the same datagram again.
    Retry,
    /// Something about this datagram or its destination: count it and go on with the next.
    Skip,
    /// The socket is broken.
    Fatal,
}

impl SendFailure {
    /// Classifies the `errno` of a failed `sendmsg`-like call.
    pub(crate) fn of(errno: i32) -> Self {
        match errno {
            libc::EINTR | libc::EAGAIN | libc::ENOBUFS => Self::Retry,
            libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EACCES
            | libc::EPERM
            | libc::EMSGSIZE
            | libc::EINVAL
            | libc::EADDRNOTAVAIL
            | libc::EAFNOSUPPORT
            | libc::EDESTADDRREQ => Self::Skip,
            _ => Self::Fatal,
        }
    }

    /// Classifies an [`io::Error`] from a send; errors without an `errno` are fatal.
    pub(crate) fn of_error(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::of(errno),
            None if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Self::Retry,
            None => Self::Fatal,
        }
    }
}

/// UDP kernel offloads: several datagrams per system call and per trip through the stack.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Offloads {
    /// Generic segmentation offload: [`BatchSocket::send_batch`] sends each run of consecutive
    /// datagrams to one destination with one length (the last may be shorter) as one `sendmsg`
    /// with a `UDP_SEGMENT` control message; the kernel (or the NIC) cuts it into the datagrams.
    pub gso: bool,
    /// Generic receive offload (`UDP_GRO`): the kernel may hand over several datagrams from one
    /// source, of one length, in one buffer; [`BatchSocket::recv_batch`] splits them again.
    pub gro: bool,
}

impl Offloads {
    /// Both offloads.
    pub const ALL: Self = Self { gso: true, gro: true };
    /// Segmentation on send only (what [`open`] asks for on recvmmsg).
    pub const SEND: Self = Self { gso: true, gro: false };
    /// Neither offload: one datagram per `sendmsg` and per received buffer.
    pub const NONE: Self = Self { gso: false, gro: false };

    /// What [`open`] asks for on `kind`: GSO everywhere; GRO only where coalesced buffers are
    /// handed over in place (io_uring's [`BatchSocket::recv_each`]). Where splitting them means a
    /// copy (recvmmsg), the copy costs more than the saved receives. Measured with
    /// `bench allreduce`, 2 workers on loopback: with GRO the io_uring agent's goodput rose 1.15x
    /// with 8 KiB packets and 4x with 64-value packets.
    pub fn default_for(kind: DatapathKind) -> Self {
        match kind {
            DatapathKind::IoUring => Self::ALL,
            DatapathKind::Mmsg | DatapathKind::Plain => Self::SEND,
        }
    }
}

/// Most segments in one GSO send: `UDP_MAX_SEGMENTS` is 64 up to Linux 6.9 and 128 since 6.10;
/// 64 works on every kernel with GSO.
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: one IPv4 UDP datagram (65535 - 20 - 8).
pub(crate) const GSO_MAX_BYTES: usize = 65_507;
/// Receive buffer for one GRO-coalesced buffer: a whole IP packet's worth, so none is truncated.
pub(crate) const GRO_BUFFER_BYTES: usize = 65_536;

/// Whether the kernel knows `UDP_SEGMENT` (reading the option needs the same kernel as using it).
pub(crate) fn gso_supported(socket: &UdpSocket) -> bool {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment).is_ok()
}

/// Turns `UDP_GRO` on; returns whether the kernel accepted it.
pub(crate) fn enable_gro(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
}

/// The end (exclusive) of the GSO run that starts at datagram `start` of `batch`: the following
/// datagrams to the same destination with the same length, then at most one shorter non-empty
/// one, within [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`]. `start + 1` means "send it alone".
pub(crate) fn gso_run(batch: &SendBatch, start: usize) -> usize {
    let (first, to) = batch.get(start);
    let seg = first.len();
    let mut end = start + 1;
    if seg == 0 || seg > usize::from(u16::MAX) {
        return end;
    }
    let mut total = seg;
    while end < batch.len() && end - start < GSO_MAX_SEGMENTS {
        let (d, t) = batch.get(end);
        if t != to || d.is_empty() || d.len() > seg || total + d.len() > GSO_MAX_BYTES {
            break;
        }
        total += d.len();
        end += 1;
        if d.len() < seg {
            break;
        }
    }
    end
}

/// Bytes of a control buffer holding one `UDP_SEGMENT` message (`CMSG_SPACE(sizeof(u16))`).
pub(crate) const SEGMENT_CMSG_SPACE: usize = cmsg_align(CMSG_HDR) + cmsg_align(size_of::<u16>());

/// `sizeof(struct cmsghdr)`.
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();

/// `CMSG_ALIGN`: control-message parts are aligned to the size of `long`.
const fn cmsg_align(n: usize) -> usize {
    (n + size_of::<libc::c_long>() - 1) & !(size_of::<libc::c_long>() - 1)
}

/// A control buffer with one `UDP_SEGMENT` message of segment size `seg`, aligned like a
/// `cmsghdr` (as `CMSG_FIRSTHDR` expects).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub(crate) struct SegmentCmsg(pub(crate) [u8; SEGMENT_CMSG_SPACE]);

impl SegmentCmsg {
    pub(crate) fn new(seg: u16) -> Self {
        let mut b = [0u8; SEGMENT_CMSG_SPACE];
        let word = size_of::<libc::size_t>();
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then the data.
        b[..word].copy_from_slice(&(cmsg_align(CMSG_HDR) + size_of::<u16>()).to_ne_bytes());
        b[word..word + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        b[word + 4..word + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
        let data = cmsg_align(CMSG_HDR);
        b[data..data + 2].copy_from_slice(&seg.to_ne_bytes());
        Self(b)
    }
}

/// The segment size of a `UDP_GRO` control message in `control` (control data as the kernel wrote
/// it), or `None` if there is none. Never panics on malformed input.
pub(crate) fn gro_segment_size(mut control: &[u8]) -> Option<usize> {
    let word = size_of::<libc::size_t>();
    let hdr = cmsg_align(CMSG_HDR);
    while control.len() >= hdr {
        let len = usize::from_ne_bytes(control.get(..word)?.try_into().ok()?);
        let level = i32::from_ne_bytes(control.get(word..word + 4)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(control.get(word + 4..word + 8)?.try_into().ok()?);
        if len < hdr || len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            // The kernel writes an `int`.
            let v = i32::from_ne_bytes(control.get(hdr..hdr + 4)?.try_into().ok()?);
            return usize::try_from(v).ok().filter(|&v| v > 0);
        }
        control = control.get(cmsg_align(len)..).unwrap_or(&[]);
    }
    None
}

/// Where [`split_coalesced`] puts datagrams: a [`RecvBatch`] (copies) or a [`Visit`] (hands them
/// over in place).
pub(crate) trait DatagramSink {
    /// Whether no more datagrams fit.
    fn is_full(&self) -> bool;
    /// Longest datagram kept.
    fn max_datagram(&self) -> usize;
    /// Takes a datagram of at most `max_datagram` bytes.
    fn take(&mut self, datagram: &[u8], from: SocketAddr);
    /// Counts a datagram that was too long or cut off.
    fn count_truncated(&mut self);
    /// Datagrams taken so far.
    fn taken(&self) -> usize;
}

impl DatagramSink for RecvBatch {
    fn is_full(&self) -> bool {
        Self::is_full(self)
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn take(&mut self, datagram: &[u8], from: SocketAddr) {
        let len = datagram.len();
        self.next_slot_mut()[..len].copy_from_slice(datagram);
        self.commit(self.len(), len, from);
    }

    fn count_truncated(&mut self) {
        Self::count_truncated(self);
    }

    fn taken(&self) -> usize {
        self.len()
    }
}

/// A [`DatagramSink`] that hands each datagram to a closure, up to `batch.capacity()` of them,
/// counting truncated ones in `batch` (whose slots it leaves alone).
pub(crate) struct Visit<'a, 'f> {
    pub(crate) batch: &'a mut RecvBatch,
    pub(crate) each: &'a mut (dyn FnMut(&[u8], SocketAddr) + 'f),
    pub(crate) handed: usize,
}

impl DatagramSink for Visit<'_, '_> {
    fn is_full(&self) -> bool {
        self.handed == self.batch.capacity
    }

    fn max_datagram(&self) -> usize {
        self.batch.max_datagram
    }

    fn take(&mut self, datagram: &[u8], from: SocketAddr) {
        (self.each)(datagram, from);
        self.handed += 1;
    }

    fn count_truncated(&mut self) {
        self.batch.count_truncated();
    }

    fn taken(&self) -> usize {
        self.handed
    }
}

/// Puts the datagrams of one received buffer into `sink`, starting at byte `*offset`, until the
/// buffer is used up (returns `true`) or `sink` is full (returns `false`; `*offset` says where to
/// go on). `full_len` is the buffer's length as the kernel reported it (more than `data.len()` if
/// it was truncated); `seg` is the GRO segment size, `None` for a single datagram. A datagram
/// longer than `sink.max_datagram()` or cut off by truncation is counted as truncated.
pub(crate) fn split_coalesced(
    data: &[u8],
    full_len: usize,
    seg: Option<usize>,
    from: SocketAddr,
    offset: &mut usize,
    sink: &mut impl DatagramSink,
) -> bool {
    if full_len == 0 {
        if sink.is_full() {
            return false;
        }
        sink.take(&[], from);
        return true;
    }
    let seg = seg.filter(|&s| s > 0).unwrap_or(full_len);
    while *offset < full_len {
        if sink.is_full() {
            return false;
        }
        let len = seg.min(full_len - *offset);
        let end = *offset + len;
        match data.get(*offset..end) {
            Some(d) if len <= sink.max_datagram() => sink.take(d, from),
            _ => sink.count_truncated(),
        }
        *offset = end;
    }
    true
}

/// Sends `datagrams` with one `send_to` each, waiting for room when the queue is full and counting
/// per-destination failures in `send_errors`. Returns how many the kernel took.
pub(crate) fn send_each<'a>(
    socket: &UdpSocket,
    datagrams: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
    send_errors: &mut u64,
) -> io::Result<usize> {
    let mut sent = 0;
    for (data, to) in datagrams {
        loop {
            match socket.send_to(data, to) {
                Ok(_) => {
                    sent += 1;
                    break;
                }
                Err(e) => match SendFailure::of_error(&e) {
                    SendFailure::Retry => wait_writable(socket)?,
                    SendFailure::Skip => {
                        *send_errors += 1;
                        break;
                    }
                    SendFailure::Fatal => return Err(e),
                },
            }
        }
    }
    Ok(sent)
}

/// Whether a GSO send (of more than one segment) that failed with `errno` should be sent again one
/// datagram at a time: a per-destination error must be counted per datagram, and `EIO` means
/// the kernel cannot segment here (for example checksum offload is off).
pub(crate) fn gso_send_failed(errno: i32) -> bool {
    errno == libc::EIO || SendFailure::of(errno) == SendFailure::Skip
}

/// After a failed GSO send with `errno` was sent again one by one and `sent_singly` of its
/// datagrams went through: whether GSO itself was the problem (then the socket stops using it).
pub(crate) fn gso_refused(errno: i32, sent_singly: usize) -> bool {
    sent_singly > 0 && matches!(errno, libc::EIO | libc::EINVAL | libc::EMSGSIZE)
}

/// Whether a failed receive only reports an earlier ICMP error for some destination (possible with
/// `IP_RECVERR`): the socket is fine, so the receive is simply tried again.
pub(crate) fn is_soft_recv_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EMSGSIZE
            | libc::EPROTO
    )
}

/// Longest single wait for room in the send queue before the datagram is tried again. `ENOBUFS`
/// (a full device queue) does not show up in `POLLOUT`, so the wait must be bounded.
const SEND_RETRY_WAIT: Duration = Duration::from_millis(1);

/// Waits until `fd` is writable, at most [`SEND_RETRY_WAIT`].
pub(crate) fn wait_writable(fd: &impl AsFd) -> io::Result<()> {
    wait_for(fd, PollFlags::POLLOUT, Some(SEND_RETRY_WAIT)).map(drop)
}

/// Polls `fd` for `events` for up to `timeout` (`None`: no limit). Returns whether it became
/// ready; an interrupted poll counts as "not ready" so the caller re-checks its deadline.
/// The receive loop of the poll-based kinds: drain what is queued; if nothing, wait for
/// readability until the deadline and drain again.
pub(crate) fn poll_then_drain<S: AsFd>(
    socket: &mut S,
    batch: &mut RecvBatch,
    timeout: Option<Duration>,
    mut drain: impl FnMut(&mut S, &mut RecvBatch) -> io::Result<usize>,
) -> io::Result<usize> {
    batch.reset();
    let deadline = deadline_after(timeout);
    loop {
        let got = drain(socket, batch)?;
        if !batch.is_empty() {
            return Ok(batch.len());
        }
        if got > 0 {
            // Only truncated datagrams: more may be queued behind them.
            continue;
        }
        let left = remaining(deadline);
        if left == Some(Duration::ZERO) {
            return Ok(0);
        }
        wait_for(socket, PollFlags::POLLIN, left)?;
    }
}

pub(crate) fn wait_for(fd: &impl AsFd, events: PollFlags, timeout: Option<Duration>) -> io::Result<bool> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Round up: a 0.5 ms wait must not become a busy loop of 0 ms polls.
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    match nix::poll::poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Time left until `deadline` (`None`: no limit); `Some(ZERO)` once it has passed.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// The deadline `timeout` from now; `None` for no limit (also when it would overflow `Instant`).
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Raises the socket's receive and send buffers to `bytes`, best effort.
fn set_buffer_sizes(socket: &UdpSocket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    // SO_*BUFFORCE ignores net.core.*mem_max but needs CAP_NET_ADMIN; fall back to the capped one.
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
    if setsockopt(socket, sockopt::SndBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &bytes);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Scenarios every implementation runs (from the test module of its own file), plus tests of
    //! the batch types and of [`open`].

    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn localhost() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn choice(kind: DatapathKind) -> DatapathChoice {
        match kind {
            DatapathKind::IoUring => DatapathChoice::IoUring,
            DatapathKind::Mmsg => DatapathChoice::Mmsg,
            DatapathKind::Plain => DatapathChoice::Plain,
        }
    }

    /// A socket of `kind` with every offload it supports (so the scenarios cover GSO and GRO),
    /// or `None` (with a message) if this machine refuses io_uring.
    pub(crate) fn open_kind(kind: DatapathKind, batch: usize, max: usize) -> Option<Box<dyn BatchSocket + Send>> {
        match open_with(localhost(), choice(kind), batch, max, Offloads::ALL) {
            Ok(s) => {
                assert_eq!(s.kind(), kind);
                Some(s)
            }
            Err(e) if kind == DatapathKind::IoUring => {
                eprintln!("skipping io_uring test: {e}");
                None
            }
            Err(e) => panic!("open({kind}) failed: {e}"),
        }
    }

    /// Receives on `rx` until `want` datagrams came or `limit` passed; calls `each` per datagram.
    /// Returns how many came and how many were reported truncated. Calls alternate between
    /// `recv_batch` and `recv_each`, so every scenario checks both.
    fn receive(
        rx: &mut dyn BatchSocket,
        batch: &mut RecvBatch,
        want: usize,
        limit: Duration,
        mut each: impl FnMut(&[u8], SocketAddr),
    ) -> (usize, usize) {
        let deadline = Instant::now() + limit;
        let (mut got, mut truncated) = (0, 0);
        let mut in_place = false;
        while got < want && Instant::now() < deadline {
            let n = if in_place {
                rx.recv_each(batch, Some(Duration::from_millis(50)), &mut each).unwrap()
            } else {
                let n = rx.recv_batch(batch, Some(Duration::from_millis(50))).unwrap();
                assert_eq!(n, batch.len());
                batch.iter().for_each(|(d, from)| each(d, from));
                n
            };
            assert!(n <= batch.capacity());
            truncated += batch.truncated();
            got += n;
            in_place = !in_place;
        }
        (got, truncated)
    }

    /// Datagram `k` of the round trip: `k` as 4 bytes, then a pattern; 4..=1403 bytes long.
    fn datagram(k: u32) -> Vec<u8> {
        let len = 4 + (k as usize * 37) % 1400;
        let mut d = k.to_le_bytes().to_vec();
        d.extend((4..len).map(|j| (k as usize * 131 + j * 7) as u8));
        d
    }

    /// 200 datagrams of varying sizes plus an empty one from A to B arrive once each, intact, from
    /// A's address. The sender keeps only 8 requests in flight and the receiver takes 16 per
    /// call, fewer than the 64 it has armed.
    pub(crate) fn round_trip(kind: DatapathKind) {
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 8, 1500), open_kind(kind, 64, 1500)) else { return };
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut send = SendBatch::new(64, 1500);
        let mut recv = RecvBatch::new(16, 1500);
        let mut seen: HashMap<u32, usize> = HashMap::new();
        let mut empty = 0;
        let total = 200u32;
        let (mut sent, mut received) = (0, 0);
        for k in 0..=total {
            if k == total {
                send.push(&[], b_addr);
            } else {
                send.push(&datagram(k), b_addr);
            }
            sent += 1;
            if send.is_full() || k == total {
                a.send_batch(&mut send).unwrap();
                assert!(send.is_empty());
                // Drain before sending more, so a small default SO_RCVBUF cannot drop any.
                let (got, _) = receive(&mut *b, &mut recv, sent - received, Duration::from_secs(5), |d, from| {
                    assert_eq!(from, a_addr);
                    if d.is_empty() {
                        empty += 1;
                        return;
                    }
                    let k = u32::from_le_bytes(d[..4].try_into().unwrap());
                    assert_eq!(d, datagram(k), "datagram {k} corrupted");
                    *seen.entry(k).or_default() += 1;
                });
                received += got;
            }
        }
        assert_eq!(empty, 1, "the empty datagram arrives once");
        assert_eq!(
            seen.len(),
            total as usize,
            "missing: {:?}",
            (0..total).filter(|k| !seen.contains_key(k)).collect::<Vec<_>>()
        );
        assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
        assert_eq!(a.send_errors(), 0);
        assert_eq!(b.recv_batch(&mut recv, Some(Duration::ZERO)).unwrap(), 0, "nothing extra");
    }

    /// An idle socket returns 0 after about the timeout; `Some(ZERO)` returns at once.
    pub(crate) fn idle_timeout(kind: DatapathKind) {
        let Some(mut s) = open_kind(kind, 16, 512) else { return };
        let mut batch = RecvBatch::new(16, 512);
        for _ in 0..3 {
            let t0 = Instant::now();
            assert_eq!(s.recv_batch(&mut batch, Some(Duration::from_millis(10))).unwrap(), 0);
            let took = t0.elapsed();
            assert!(took >= Duration::from_millis(9), "returned after {took:?}, before the timeout");
            assert!(took < Duration::from_secs(1), "returned after {took:?}");
            assert!(batch.is_empty());
        }
        let t0 = Instant::now();
        assert_eq!(s.recv_batch(&mut batch, Some(Duration::ZERO)).unwrap(), 0);
        assert!(t0.elapsed() < Duration::from_millis(500), "ZERO waited {:?}", t0.elapsed());
    }

    /// Datagrams longer than `max_datagram` are dropped and counted; one of exactly
    /// `max_datagram` bytes is kept.
    pub(crate) fn truncation(kind: DatapathKind) {
        let Some(mut rx) = open_kind(kind, 16, 512) else { return };
        let dst = rx.local_addr().unwrap();
        let tx = UdpSocket::bind(localhost()).unwrap();
        for len in [2000, 513, 512, 100] {
            tx.send_to(&vec![len as u8; len], dst).unwrap();
        }
        let mut batch = RecvBatch::new(16, 512);
        let mut lens = Vec::new();
        let (_, truncated) = receive(&mut *rx, &mut batch, 2, Duration::from_secs(5), |d, _| lens.push(d.len()));
        assert_eq!(lens, [512, 100]);
        assert_eq!(truncated, 2, "the 2000- and 513-byte datagrams are reported truncated");
        // Only truncated datagrams queued: the call waits out its timeout and returns 0.
        tx.send_to(&[1; 600], dst).unwrap();
        let t0 = Instant::now();
        let n = rx.recv_batch(&mut batch, Some(Duration::from_millis(200))).unwrap();
        assert_eq!((n, batch.len()), (0, 0));
        assert!(t0.elapsed() >= Duration::from_millis(150));
    }

    /// Sending to a closed port, to port 0 (EINVAL) and to an IPv6 address from an IPv4 socket
    /// (EAFNOSUPPORT) does not fail the batch: the datagrams to B around them still arrive.
    pub(crate) fn bad_destinations(kind: DatapathKind) {
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 16, 512), open_kind(kind, 16, 512)) else { return };
        let b_addr = b.local_addr().unwrap();
        let closed = {
            let s = UdpSocket::bind(localhost()).unwrap();
            s.local_addr().unwrap()
        };
        let port0: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let mut send = SendBatch::new(32, 512);
        let mut want = 0u8;
        for round in 0..3 {
            for dst in [b_addr, closed, b_addr, port0, b_addr, v6, b_addr] {
                if dst == b_addr {
                    send.push(&[want], dst);
                    want += 1;
                } else {
                    send.push(&[0xff], dst);
                }
            }
            a.send_batch(&mut send).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert_eq!(a.send_errors(), 6, "port 0 and the IPv6 destination, three rounds each");
        let mut recv = RecvBatch::new(16, 512);
        let mut got = Vec::new();
        receive(&mut *b, &mut recv, usize::from(want), Duration::from_secs(5), |d, _| got.push(d[0]));
        got.sort_unstable();
        assert_eq!(got, (0..want).collect::<Vec<_>>());
    }

    /// 9000-byte datagrams (jumbo frames) pass whole, in both directions.
    pub(crate) fn jumbo(kind: DatapathKind) {
        const MAX: usize = 9000;
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 8, MAX), open_kind(kind, 8, MAX)) else { return };
        for flip in [false, true] {
            let (tx, rx) = if flip { (&mut b, &mut a) } else { (&mut a, &mut b) };
            let dst = rx.local_addr().unwrap();
            let mut send = SendBatch::new(8, MAX);
            for i in 0..8u8 {
                let buf = send.next_buffer();
                buf.iter_mut().enumerate().for_each(|(j, x)| *x = i ^ j as u8);
                send.commit(MAX - usize::from(i), dst);
            }
            tx.send_batch(&mut send).unwrap();
            let mut recv = RecvBatch::new(8, MAX);
            let mut seen = 0u32;
            let (got, truncated) = receive(&mut **rx, &mut recv, 8, Duration::from_secs(5), |d, _| {
                let i = (MAX - d.len()) as u8;
                assert!(d.iter().enumerate().all(|(j, &x)| x == i ^ j as u8), "datagram {i} corrupted");
                seen |= 1 << i;
            });
            assert_eq!((got, truncated, seen), (8, 0, 0xff));
        }
    }

    /// Datagram `k` of `len` bytes (at least 4): `k` as 4 bytes, then a pattern.
    fn sized(k: u32, len: usize) -> Vec<u8> {
        let mut d = k.to_le_bytes().to_vec();
        d.extend((4..len).map(|j| (k as usize * 131 + j * 7) as u8));
        d
    }

    /// Receives exactly the datagrams `want` (in any order) on `rx`, each once, from `from`.
    fn expect_set(rx: &mut dyn BatchSocket, recv: &mut RecvBatch, from: SocketAddr, want: &[Vec<u8>]) {
        let mut left: HashMap<Vec<u8>, usize> = HashMap::new();
        for d in want {
            *left.entry(d.clone()).or_default() += 1;
        }
        let (got, truncated) = receive(rx, recv, want.len(), Duration::from_secs(5), |d, src| {
            assert_eq!(src, from, "source address");
            let n = left.get_mut(d).unwrap_or_else(|| panic!("unexpected datagram of {} bytes", d.len()));
            assert!(*n > 0, "datagram of {} bytes arrived twice", d.len());
            *n -= 1;
        });
        assert_eq!((got, truncated), (want.len(), 0));
        assert!(left.values().all(|&n| n == 0));
        assert_eq!(rx.recv_batch(recv, Some(Duration::ZERO)).unwrap(), 0, "nothing extra");
    }

    /// Offloads are on for the kinds that have them (this kernel has both).
    fn check_offloads(s: &dyn BatchSocket) {
        let want = if s.kind() == DatapathKind::Plain { Offloads::NONE } else { Offloads::ALL };
        assert_eq!(s.offloads(), want, "{}", s.kind());
    }

    /// 200 datagrams of one size to one destination (GSO runs, GRO-coalesced on loopback) arrive
    /// once each, intact, from the sender.
    pub(crate) fn same_size_run(kind: DatapathKind) {
        const LEN: usize = 1200;
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 64, 1500), open_kind(kind, 64, 1500)) else { return };
        check_offloads(&*a);
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut send = SendBatch::new(100, 1500);
        let mut recv = RecvBatch::new(64, 1500);
        for half in 0..2u32 {
            let want: Vec<Vec<u8>> = (half * 100..(half + 1) * 100).map(|k| sized(k, LEN)).collect();
            want.iter().for_each(|d| send.push(d, b_addr));
            a.send_batch(&mut send).unwrap();
            expect_set(&mut *b, &mut recv, a_addr, &want);
        }
        assert_eq!(a.send_errors(), 0);
        check_offloads(&*a);
    }

    /// One batch to two destinations with runs of several sizes, empty datagrams and short tails
    /// arrives intact at each.
    pub(crate) fn mixed_destinations_and_sizes(kind: DatapathKind) {
        let (Some(mut a), Some(mut b), Some(mut c)) =
            (open_kind(kind, 64, 2000), open_kind(kind, 64, 2000), open_kind(kind, 64, 2000))
        else {
            return;
        };
        let (a_addr, b_addr, c_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap(), c.local_addr().unwrap());
        let plan: &[(bool, usize, usize)] = &[
            (true, 500, 5),
            (false, 500, 3),
            (true, 300, 1),
            (true, 500, 2),
            (true, 200, 2),
            (false, 0, 1),
            (false, 700, 70),
            (true, 2000, 3),
            (true, 4, 1),
            (true, 1999, 4),
            (false, 700, 1),
            (true, 0, 2),
        ];
        let mut send = SendBatch::new(128, 2000);
        let (mut to_b, mut to_c) = (Vec::new(), Vec::new());
        let mut k = 0u32;
        for &(is_b, len, count) in plan {
            for _ in 0..count {
                let d = if len == 0 { Vec::new() } else { sized(k, len) };
                k += 1;
                send.push(&d, if is_b { b_addr } else { c_addr });
                if is_b { to_b.push(d) } else { to_c.push(d) }
            }
        }
        a.send_batch(&mut send).unwrap();
        assert_eq!(a.send_errors(), 0);
        expect_set(&mut *b, &mut RecvBatch::new(16, 2000), a_addr, &to_b);
        expect_set(&mut *c, &mut RecvBatch::new(16, 2000), a_addr, &to_c);
    }

    /// A run's shorter last datagram arrives with its own length, after the full-size ones.
    pub(crate) fn short_last_segment(kind: DatapathKind) {
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 16, 1500), open_kind(kind, 16, 1500)) else { return };
        let b_addr = b.local_addr().unwrap();
        let mut send = SendBatch::new(16, 1500);
        for k in 0..10 {
            send.push(&sized(k, 1000), b_addr);
        }
        send.push(&sized(10, 123), b_addr);
        send.push(&sized(11, 1000), b_addr);
        a.send_batch(&mut send).unwrap();
        let mut lens = HashMap::new();
        let (got, _) = receive(&mut *b, &mut RecvBatch::new(16, 1500), 12, Duration::from_secs(5), |d, _| {
            let k = u32::from_le_bytes(d[..4].try_into().unwrap());
            assert_eq!(d, sized(k, d.len()), "datagram {k} corrupted");
            lens.insert(k, d.len());
        });
        assert_eq!(got, 12);
        assert_eq!(lens[&10], 123);
        assert!((0..12).filter(|&k| k != 10).all(|k| lens[&k] == 1000), "{lens:?}");
    }

    /// In a run whose datagrams are longer than the receiver's `max_datagram` each one is
    /// counted as truncated, and a shorter last one that fits is kept.
    pub(crate) fn truncation_in_a_run(kind: DatapathKind) {
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 16, 1500), open_kind(kind, 16, 512)) else { return };
        let b_addr = b.local_addr().unwrap();
        let mut send = SendBatch::new(16, 1500);
        for k in 0..5 {
            send.push(&sized(k, 600), b_addr);
        }
        send.push(&sized(5, 512), b_addr);
        a.send_batch(&mut send).unwrap();
        let mut recv = RecvBatch::new(16, 512);
        let mut lens = Vec::new();
        let (_, truncated) = receive(&mut *b, &mut recv, 1, Duration::from_secs(5), |d, _| lens.push(d.len()));
        assert_eq!(lens, [512]);
        assert_eq!(truncated, 5);
    }

    /// 50 datagrams coalesced by GRO into one buffer, received 4 at a time: none is lost and
    /// their order holds.
    pub(crate) fn coalesced_into_small_batch(kind: DatapathKind) {
        let (Some(mut a), Some(mut b)) = (open_kind(kind, 64, 1500), open_kind(kind, 4, 1000)) else { return };
        let b_addr = b.local_addr().unwrap();
        let mut send = SendBatch::new(64, 1500);
        for k in 0..50 {
            send.push(&sized(k, 1000), b_addr);
        }
        a.send_batch(&mut send).unwrap();
        let mut recv = RecvBatch::new(4, 1000);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let check = |d: &[u8]| {
            let k = u32::from_le_bytes(d[..4].try_into().unwrap());
            assert_eq!(d, sized(k, 1000));
            k
        };
        while got.len() < 50 && Instant::now() < deadline {
            // Alternately copied out and handed over in place: a coalesced buffer split across
            // calls resumes where the other kind of call stopped.
            let n = if got.len() % 8 < 4 {
                let n = b.recv_batch(&mut recv, Some(Duration::from_millis(50))).unwrap();
                got.extend(recv.iter().map(|(d, _)| check(d)));
                n
            } else {
                b.recv_each(&mut recv, Some(Duration::from_millis(50)), &mut |d, _| got.push(check(d))).unwrap()
            };
            assert!(n <= 4);
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert_eq!(b.recv_batch(&mut recv, Some(Duration::ZERO)).unwrap(), 0, "nothing extra");
    }

    /// `tx` (a socket on which the kernel refuses GSO) still delivers every datagram, counts no
    /// error, and reports GSO off afterwards.
    pub(crate) fn gso_refused_falls_back(tx: &mut dyn BatchSocket) {
        assert!(tx.offloads().gso, "GSO on before the first send");
        let rx = UdpSocket::bind(localhost()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut send = SendBatch::new(32, 1500);
        for round in 0..2 {
            for k in 0..20 {
                send.push(&sized(k, 800), rx.local_addr().unwrap());
            }
            tx.send_batch(&mut send).unwrap();
            let mut got = Vec::new();
            let mut buf = [0; 2000];
            for _ in 0..20 {
                let (n, _) = rx.recv_from(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
            got.sort();
            let mut want: Vec<_> = (0..20).map(|k| sized(k, 800)).collect();
            want.sort();
            assert_eq!(got, want, "round {round}");
            assert!(!tx.offloads().gso, "GSO off once refused");
        }
        assert_eq!(tx.send_errors(), 0);
    }

    #[test]
    fn gso_runs_group_same_destination_and_length() {
        let (b, c): (SocketAddr, SocketAddr) = ((Ipv4Addr::LOCALHOST, 7).into(), (Ipv4Addr::LOCALHOST, 8).into());
        let mut s = SendBatch::new(200, 2000);
        let runs = |s: &SendBatch| {
            let mut v = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let e = gso_run(s, i);
                v.push(e - i);
                i = e;
            }
            v
        };
        for (to, len) in [(b, 10), (b, 10), (b, 5), (b, 5), (c, 5), (b, 0), (b, 0), (b, 7), (b, 8), (b, 8)] {
            s.push(&vec![1; len], to);
        }
        assert_eq!(runs(&s), [3, 1, 1, 1, 1, 1, 2]);
        s.clear();
        (0..150).for_each(|_| s.push(&[2; 100], b));
        assert_eq!(runs(&s), [64, 64, 22], "at most GSO_MAX_SEGMENTS");
        s.clear();
        (0..40).for_each(|_| s.push(&[2; 2000], b));
        assert_eq!(runs(&s), [32, 8], "at most GSO_MAX_BYTES");
    }

    #[test]
    fn gro_control_parses_and_never_panics() {
        let mut c = SegmentCmsg::new(1234).0.to_vec();
        // A UDP_SEGMENT message is not UDP_GRO; rewrite the type and the data as an int.
        assert_eq!(gro_segment_size(&c), None);
        let word = size_of::<libc::size_t>();
        c[word + 4..word + 8].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        c[..word].copy_from_slice(&(cmsg_align(CMSG_HDR) + 4).to_ne_bytes());
        let d = cmsg_align(CMSG_HDR);
        c[d..d + 4].copy_from_slice(&1234i32.to_ne_bytes());
        assert_eq!(gro_segment_size(&c), Some(1234));
        for cut in 0..c.len() {
            let _ = gro_segment_size(&c[..cut]);
        }
        let mut bad = c.clone();
        bad[..word].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(gro_segment_size(&bad), None);
        assert_eq!(gro_segment_size(&[]), None);
    }

    #[test]
    fn split_coalesced_resumes_and_truncates() {
        let from: SocketAddr = (Ipv4Addr::LOCALHOST, 7).into();
        let data: Vec<u8> = (0..25).collect();
        let mut b = RecvBatch::new(2, 10);
        let mut off = 0;
        assert!(!split_coalesced(&data, 25, Some(10), from, &mut off, &mut b));
        assert_eq!(b.iter().map(|(d, _)| d.to_vec()).collect::<Vec<_>>(), [data[..10].to_vec(), data[10..20].to_vec()]);
        b.reset();
        assert!(split_coalesced(&data, 25, Some(10), from, &mut off, &mut b));
        assert_eq!(b.get(0).0, &data[20..]);
        // Truncated by the kernel (only 25 of 30 bytes stored): the cut-off third is counted.
        let mut b = RecvBatch::new(3, 10);
        off = 0;
        assert!(split_coalesced(&data, 30, Some(10), from, &mut off, &mut b));
        assert_eq!((b.len(), b.truncated()), (2, 1));
        b.reset();
        off = 0;
        assert!(split_coalesced(&data, 25, None, from, &mut off, &mut b));
        assert_eq!((b.len(), b.truncated()), (0, 1));
        assert!(split_coalesced(&[], 0, None, from, &mut 0, &mut b));
        assert_eq!(b.get(0).0, b"");
    }

    #[test]
    fn auto_picks_io_uring_here() {
        let s = open(localhost(), DatapathChoice::Auto, 32, 1500).unwrap();
        assert_eq!(s.offloads(), Offloads::default_for(s.kind()), "open() asks for the default offloads");
        match probe(DatapathKind::IoUring) {
            Ok(()) => assert_eq!(s.kind(), DatapathKind::IoUring),
            Err(why) => {
                eprintln!("io_uring refused here ({why}); auto fell back to {}", s.kind());
                assert_eq!(s.kind(), DatapathKind::Mmsg);
            }
        }
        assert!(probe(DatapathKind::Mmsg).is_ok() && probe(DatapathKind::Plain).is_ok());
    }

    #[test]
    fn open_rejects_zero_sizes() {
        for (batch, max) in [(0, 100), (8, 0)] {
            let e = open(localhost(), DatapathChoice::Plain, batch, max).err().expect("zero size refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn names_parse_and_print() {
        for (s, c) in [
            ("auto", DatapathChoice::Auto),
            ("io_uring", DatapathChoice::IoUring),
            ("uring", DatapathChoice::IoUring),
            ("mmsg", DatapathChoice::Mmsg),
            ("Plain", DatapathChoice::Plain),
        ] {
            assert_eq!(s.parse::<DatapathChoice>(), Ok(c));
        }
        assert_eq!(DatapathChoice::default(), DatapathChoice::Auto);
        let err = "dpdk".parse::<DatapathChoice>().unwrap_err();
        assert!(err.to_string().contains("auto, io_uring"), "{err}");
        for kind in DatapathKind::ALL {
            assert_eq!(kind.to_string().parse::<DatapathKind>(), Ok(kind));
            assert_eq!(choice(kind).to_string().parse::<DatapathChoice>(), Ok(choice(kind)));
        }
        assert_eq!(DatapathKind::Mmsg.to_string(), "recvmmsg/sendmmsg");
        assert!("auto".parse::<DatapathKind>().is_err());
    }

    #[test]
    fn send_batch_builds_in_place() {
        let to: SocketAddr = (Ipv4Addr::LOCALHOST, 7).into();
        let mut b = SendBatch::new(3, 8);
        assert!(b.is_empty() && !b.is_full() && b.capacity() == 3);
        b.next_buffer()[..3].copy_from_slice(b"abc");
        b.commit(3, to);
        b.push(b"12345678", to);
        b.push(b"", to);
        assert!(b.is_full() && b.len() == 3);
        assert_eq!(b.get(0), (&b"abc"[..], to));
        assert_eq!(b.iter().map(|(d, _)| d.len()).collect::<Vec<_>>(), [3, 8, 0]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.next_buffer().len(), 8);
    }

    #[test]
    #[should_panic(expected = "max_datagram")]
    fn send_batch_refuses_oversize() {
        SendBatch::new(2, 4).push(b"12345", (Ipv4Addr::LOCALHOST, 7).into());
    }

    #[test]
    #[should_panic(expected = "full")]
    fn send_batch_refuses_overflow() {
        let mut b = SendBatch::new(1, 4);
        b.push(b"1", (Ipv4Addr::LOCALHOST, 7).into());
        b.next_buffer();
    }

    #[test]
    fn recv_batch_commit_keeps_order_and_counts_truncated() {
        let from: SocketAddr = (Ipv4Addr::LOCALHOST, 7).into();
        let mut b = RecvBatch::new(4, 4);
        assert_eq!(b.next_slot_mut().len(), 5, "one spare byte per slot");
        let (slots, stride) = b.slots_mut();
        slots[..4].copy_from_slice(b"abcd");
        slots[2 * stride..2 * stride + 2].copy_from_slice(b"xy");
        assert!(b.commit(0, 4, from));
        assert!(!b.commit(1, 9, from));
        assert!(b.commit(2, 2, from));
        assert_eq!((b.len(), b.truncated()), (2, 1));
        assert_eq!(b.get(1), (&b"xy"[..], from));
        assert_eq!(b.iter().map(|(d, _)| d.to_vec()).collect::<Vec<_>>(), [b"abcd".to_vec(), b"xy".to_vec()]);
        b.reset();
        assert!(b.is_empty() && b.truncated() == 0);
    }
}

#[cfg(test)]
mod throughput {
    //! By-hand measurement, not a test of speed:
    //! `cargo test --release -p paramserv-switch datapath::throughput -- --ignored --nocapture`
    //!
    //! 2026-11-24, 2-vCPU AMD EPYC VM (Firecracker), Linux 6.18, loopback, 300-byte datagrams,
    //! batch 64, one sender thread and socket to one receiver thread and socket, 2 s each, three
    //! runs (the sender is the bottleneck; nothing was lost):
    //!
    //! | kind | datagrams/s | sender CPU/datagram | receiver CPU/datagram | send only |
    //! |---|---|---|---|---|
    //! | io_uring | 305k–322k | 3.1–3.3 µs | 1.6–1.7 µs | 414k/s, 2.4 µs |
    //! | recvmmsg/sendmmsg | 336k–360k | 2.8–3.0 µs | 1.6–1.8 µs | 433k/s, 2.3 µs |
    //! | plain | 252k–258k | 3.9–4.0 µs | 1.8 µs | 335k/s, 3.0 µs |

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::tests::open_kind;
    use super::*;

    const DATAGRAM: usize = 300;
    const BATCH: usize = 64;
    const RUN: Duration = Duration::from_secs(2);

    /// CPU time this thread has used (from /proc/thread-self/schedstat).
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        Duration::from_nanos(stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
    }

    struct Run {
        sent_per_s: f64,
        received_per_s: f64,
        datagrams_per_recv_call: f64,
        send_cpu_per_datagram: Duration,
        recv_cpu_per_datagram: Duration,
    }

    /// One sender socket -> one receiver socket of `kind`, each on its own thread.
    fn measure(kind: DatapathKind) -> Option<Run> {
        let mut rx = open_kind(kind, BATCH, 1500)?;
        let mut tx = open_kind(kind, BATCH, 1500)?;
        let dst = rx.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut batch = SendBatch::new(BATCH, 1500);
                let mut sent = 0u64;
                let (t0, cpu0) = (Instant::now(), thread_cpu());
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..BATCH {
                        let buf = batch.next_buffer();
                        buf[..8].copy_from_slice(&(sent + i as u64).to_le_bytes());
                        batch.commit(DATAGRAM, dst);
                    }
                    tx.send_batch(&mut batch).unwrap();
                    sent += BATCH as u64;
                }
                (sent, t0.elapsed(), thread_cpu() - cpu0)
            })
        };
        let mut batch = RecvBatch::new(BATCH, 1500);
        let (mut received, mut calls) = (0u64, 0u64);
        let (t0, cpu0) = (Instant::now(), thread_cpu());
        while t0.elapsed() < RUN {
            received += rx.recv_batch(&mut batch, Some(Duration::from_millis(10))).unwrap() as u64;
            calls += 1;
        }
        let (took, recv_cpu) = (t0.elapsed(), thread_cpu() - cpu0);
        stop.store(true, Ordering::Relaxed);
        let (sent, send_took, send_cpu) = sender.join().unwrap();
        Some(Run {
            sent_per_s: sent as f64 / send_took.as_secs_f64(),
            received_per_s: received as f64 / took.as_secs_f64(),
            datagrams_per_recv_call: received as f64 / calls.max(1) as f64,
            send_cpu_per_datagram: send_cpu / u32::try_from(sent.max(1)).unwrap_or(u32::MAX),
            recv_cpu_per_datagram: recv_cpu / u32::try_from(received.max(1)).unwrap_or(u32::MAX),
        })
    }

    /// Datagrams per second and CPU per datagram of a sender of `kind` alone: the destination is a
    /// socket nobody reads (the kernel drops what does not fit its queue), so no receiver wakes.
    fn measure_send_only(kind: DatapathKind) -> Option<(f64, Duration)> {
        let mut tx = open_kind(kind, BATCH, 1500)?;
        let sink = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let dst = sink.local_addr().unwrap();
        let mut batch = SendBatch::new(BATCH, 1500);
        let mut sent = 0u64;
        let (t0, cpu0) = (Instant::now(), thread_cpu());
        while t0.elapsed() < RUN {
            for _ in 0..BATCH {
                batch.push(&[7; DATAGRAM], dst);
            }
            tx.send_batch(&mut batch).unwrap();
            sent += BATCH as u64;
        }
        let cpu = thread_cpu() - cpu0;
        Some((sent as f64 / t0.elapsed().as_secs_f64(), cpu / u32::try_from(sent).unwrap_or(u32::MAX)))
    }

    #[test]
    #[ignore = "measurement, run by hand"]
    fn loopback_300_byte_datagrams() {
        for kind in DatapathKind::ALL {
            match measure(kind) {
                Some(r) => println!(
                    "{kind:>18}: sent {:>8.0}/s, received {:>8.0}/s ({:.1}%), {:.1} per recv_batch, \
                     CPU per datagram: send {:?}, receive {:?}",
                    r.sent_per_s,
                    r.received_per_s,
                    100.0 * r.received_per_s / r.sent_per_s,
                    r.datagrams_per_recv_call,
                    r.send_cpu_per_datagram,
                    r.recv_cpu_per_datagram,
                ),
                None => println!("{kind:>18}: unavailable"),
            }
            if let Some((rate, cpu)) = measure_send_only(kind) {
                println!("{kind:>18}: send only {rate:>8.0}/s, CPU per datagram {cpu:?}");
            }
        }
    }
}
