//! io_uring datapath: one multishot `RECVMSG` request fed by a provided-buffer ring, and one
//! `SEND` request (with a destination address) per datagram. Needs Linux 6.0; [`probe`] checks by
//! sending a datagram to itself.
//!
//! Receiving: a single multishot request stays armed; for each datagram the kernel takes a buffer
//! from a ring of `4 * batch` buffers the socket owns ([`BufRing`]), writes the source address and
//! payload into it and posts one completion. `recv_each` hands each payload to the caller where it
//! lies and gives the buffer back to the ring; `recv_batch` copies it into the caller's
//! [`RecvBatch`] first. One request instead of `batch` armed ones means one wait-queue entry on the
//! socket, so a datagram wakes one request, not all of them (with `batch` armed `RECVMSG`s the
//! receiver spent about twice the CPU per datagram). When the ring runs dry the request ends
//! (`ENOBUFS`) and is re-armed once buffers are back; datagrams wait in the socket's queue
//! meanwhile. The request is armed by the first receive, so the thread that receives is the one
//! that submitted it.
//!
//! Sending: each datagram goes out from where it lies in the caller's [`SendBatch`], which
//! `send_batch` borrows until it has reaped every send's completion (also on its error paths). A
//! send slot ([`OpMem`]) holds the rest of a request's memory: the destination address, each in a
//! heap cell that never moves. All are submitted with one `io_uring_enter`; receive completions
//! reaped meanwhile are queued, not lost. Not copying the datagrams raised `bench allreduce` goodput
//! with 8 KiB packets by about 10%: a copy per datagram in each direction was a third of the bytes
//! moved in user space.
//!
//! Offloads. With GSO a send slot covers a whole run of datagrams (see [`super::gso_run`]), one
//! iovec each, and goes out as one `SENDMSG` whose `msghdr`, iovecs and `UDP_SEGMENT` control
//! message live in the slot too; a single datagram still goes out as a `SEND`. A run that fails for
//! a per-destination reason or `EIO` is sent again one datagram at a time with `send_to` (the
//! socket is blocking), and if that works where the GSO send got `EIO`/`EINVAL`/`EMSGSIZE`, the
//! socket stops using GSO. With GRO each ring buffer has room for a coalesced buffer (64 KiB of
//! payload) and for the `UDP_GRO` control message, which [`types::RecvMsgOut`] hands over; a
//! buffer's datagrams go to the caller one by one, and when the batch fills in the middle of one,
//! the rest stays (the buffer is not given back) for the next call.
//!
//! The ring is set up with `IORING_SETUP_COOP_TASKRUN` when the kernel has it (5.19): completions
//! are not pushed to the receiving thread with an interrupt but run when it next enters the
//! kernel, which it does to wait anyway. That cut the sender's CPU per datagram by about 15% in
//! the loopback measurement.
//!
//! Soundness rests on one rule: memory a request may use (send slots, the buffer ring and its
//! buffers, the multishot `msghdr`; the batch being sent, which the kernel only reads) is touched
//! by Rust only while no request refers to it (a send slot in `free_send`; a buffer the kernel
//! handed over in a completion and that is not yet back in the ring), and it is freed only once no
//! request refers to it. `Drop` cancels every request and waits for their last completions; if
//! that does not finish, it leaks the memory rather than free something the kernel may still write.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::mmsg::{RawAddr, zeroed_msghdr};
use super::{
    BatchSocket, DatagramSink, DatapathKind, GRO_BUFFER_BYTES, GSO_MAX_SEGMENTS, Offloads, RecvBatch, Refused,
    SEGMENT_CMSG_SPACE, SegmentCmsg, SendBatch, SendFailure, Visit, deadline_after, enable_gro, gro_segment_size,
    gso_refused, gso_run, gso_send_failed, gso_supported, is_soft_recv_error, remaining, send_each, split_coalesced,
    wait_writable,
};

/// `user_data` bit marking a send slot.
const SEND: u64 = 1 << 63;
/// `user_data` of the multishot receive request.
const RECV: u64 = 1 << 62;
/// `user_data` of cancel requests, whose completions are ignored.
const CANCEL: u64 = 1 << 61;
/// Buffer group id of the socket's buffer ring (each socket has its own io_uring).
const BGID: u16 = 0;
/// How long `Drop` waits for cancelled requests before it leaks their memory instead.
const DROP_DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// `msg_namelen` for receives: room for an IPv6 source address.
const NAME_LEN: usize = RawAddr::CAPACITY as usize;
/// Bytes the kernel puts before the address in a multishot receive buffer
/// (`struct io_uring_recvmsg_out`).
const RECVMSG_OUT_LEN: usize = 16;
/// `msg_controllen` for receives with GRO: room for the `UDP_GRO` message (24 bytes) and more.
const CONTROL_LEN: usize = 64;
/// Most ring buffers with GRO on (each holds 64 KiB of payload): 8 MiB.
const GRO_MAX_BUFFERS: usize = 128;

/// Checks that this kernel lets us create a ring with the features and opcodes the datapath
/// uses, and that they work: a `SEND` with a destination address to a fresh socket, received by a
/// multishot `RECVMSG` from a provided-buffer ring (both Linux 6.0; older kernels fail them with
/// `EINVAL`, which the opcode probe cannot tell).
pub(super) fn probe() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    check(&ring)?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    // Request memory lives on the heap so that it can be leaked if a request does not finish.
    let mut bufs = BufRing::new(2, 64)?;
    bufs.register(&ring)?;
    let hdr = multishot_msghdr(0);
    let mut dest = Box::new(RawAddr::new(socket.local_addr()?));
    let payload: Box<[u8]> = Box::new(*b"probe");
    let send = opcode::Send::new(types::Fd(socket.as_raw_fd()), payload.as_ptr(), payload.len() as u32)
        .dest_addr(dest.0.as_mut_ptr().cast())
        .dest_addr_len(dest.1)
        .build()
        .user_data(SEND);
    let recv = recv_multishot(&socket, &hdr);
    let cancel = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
    // SAFETY: the requests use `payload`, `dest`, `hdr` and `bufs`, heap memory that is only freed
    // at the end of this function once both requests have posted their last completion, and is
    // leaked otherwise.
    unsafe { ring.submission().push_multiple(&[send, recv]) }
        .map_err(|_| io::Error::other("fresh io_uring submission queue full"))?;
    let (mut sent, mut received, mut recv_done, mut cancelled) = (None, None, false, false);
    let mut wait_error = None;
    let deadline = deadline_after(Some(Duration::from_secs(1)));
    while !(sent.is_some() && recv_done) {
        let left = remaining(deadline);
        if left == Some(Duration::ZERO) {
            break;
        }
        // No early return while requests may be in flight: the memory must be leaked first.
        if let Err(e) = submit_and_wait(&ring, left) {
            wait_error = Some(e);
            break;
        }
        for cqe in ring.completion() {
            match cqe.user_data() {
                SEND => sent = Some(cqe.result()),
                RECV => {
                    received.get_or_insert(cqe.result());
                    recv_done |= !cqueue::more(cqe.flags());
                }
                _ => {}
            }
        }
        if !cancelled && !recv_done && (received.is_some() || sent.is_some_and(|r| r < 0)) {
            // SAFETY: a cancel request points at no memory.
            cancelled = unsafe { ring.submission().push(&cancel) }.is_ok();
        }
    }
    if sent.is_some() && recv_done {
        let _ = ring.submitter().unregister_buf_ring(BGID);
        drop((bufs, hdr, dest, payload));
    } else {
        // A request may still use this memory: never free it.
        mem::forget((bufs, hdr, dest, payload));
    }
    if let Some(e) = wait_error {
        return Err(e);
    }
    let failed = |what: &str, r: i32| {
        let e = io::Error::from_raw_os_error(-r);
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring {what} failed (needs Linux 6.0): {e}")))
    };
    match (sent, received) {
        (Some(s), _) if s < 0 => failed("IORING_OP_SEND with a destination address", s),
        (_, Some(r)) if r < 0 => failed("multishot IORING_OP_RECVMSG", r),
        (Some(_), Some(_)) => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::TimedOut, "io_uring probe datagram did not arrive within 1 s")),
    }
}

fn check(ring: &IoUring) -> io::Result<()> {
    let unsupported = |what: &str| Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks {what}")));
    if !ring.params().is_feature_ext_arg() {
        return unsupported("IORING_FEAT_EXT_ARG (wait with timeout, Linux 5.11)");
    }
    if !ring.params().is_feature_nodrop() {
        return unsupported("IORING_FEAT_NODROP (Linux 5.5)");
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return unsupported(name);
        }
    }
    Ok(())
}

/// The `msghdr` of the multishot receive: only `msg_namelen` and `msg_controllen` matter.
fn multishot_msghdr(control_len: usize) -> Box<libc::msghdr> {
    let mut hdr = Box::new(zeroed_msghdr());
    hdr.msg_namelen = RawAddr::CAPACITY;
    hdr.msg_controllen = control_len as _;
    hdr
}

/// The multishot receive request for `socket`, buffers from group [`BGID`].
fn recv_multishot(socket: &UdpSocket, hdr: &libc::msghdr) -> squeue::Entry {
    opcode::RecvMsgMulti::new(types::Fd(socket.as_raw_fd()), ptr::from_ref(hdr), BGID)
        // MSG_TRUNC: the reported payload length is the datagram's full length.
        .flags(libc::MSG_TRUNC as u32)
        .build()
        .user_data(RECV)
}

/// Submits queued requests and waits up to `timeout` for at least one completion
/// (`Some(ZERO)`: just submit). It may return early (a signal, or submissions counted as
/// progress), so callers loop on their own deadline.
fn submit_and_wait(ring: &IoUring, timeout: Option<Duration>) -> io::Result<()> {
    let r = match timeout {
        None => ring.submit_and_wait(1),
        Some(t) if t.is_zero() => ring.submit(),
        Some(t) => {
            let ts = types::Timespec::from(t);
            let args = types::SubmitArgs::new().timespec(&ts);
            ring.submitter().submit_with_args(1, &args)
        }
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A provided-buffer ring: `entries` buffers of `buf_len` bytes, and the page-aligned ring of
/// `io_uring_buf` descriptors through which they are lent to the kernel.
///
/// Every buffer is in exactly one place: in the ring (the kernel may write it) or handed to us by a
/// completion (ours until [`Self::give_back`]). The memory is freed by `Drop`, which the owner must
/// only let run once no request can pick a buffer any more (or `mem::forget` the ring).
struct BufRing {
    /// `entries` descriptors; the kernel reads them up to the tail, which lives in the reserved
    /// field of descriptor 0 and is only written through an atomic.
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    entries: u16,
    buf_len: usize,
    /// Our copy of the tail: the next descriptor to fill.
    tail: u16,
}

impl BufRing {
    /// Allocates `entries` (a power of two) buffers of `buf_len` bytes, all initially in the ring
    /// (published when registered).
    fn new(entries: u16, buf_len: usize) -> io::Result<Self> {
        assert!(entries.is_power_of_two(), "buffer ring size must be a power of two");
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "io_uring buffer ring too large");
        u32::try_from(buf_len).map_err(|_| too_big())?;
        let ring_bytes = usize::from(entries) * size_of::<types::BufRingEntry>();
        let ring_layout = Layout::from_size_align(ring_bytes, 4096).map_err(|_| too_big())?;
        let bufs_bytes = usize::from(entries).checked_mul(buf_len).ok_or_else(too_big)?;
        let bufs_layout = Layout::from_size_align(bufs_bytes.max(1), 64).map_err(|_| too_big())?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, and `max(1)`).
        let (ring, bufs) = unsafe { (alloc::alloc_zeroed(ring_layout), alloc::alloc_zeroed(bufs_layout)) };
        if ring.is_null() || bufs.is_null() {
            alloc::handle_alloc_error(if ring.is_null() { ring_layout } else { bufs_layout });
        }
        let mut this = Self { ring: ring.cast(), ring_layout, bufs, bufs_layout, entries, buf_len, tail: 0 };
        for bid in 0..entries {
            this.give_back(bid);
        }
        Ok(this)
    }

    /// Registers the ring with `uring` as group [`BGID`] and publishes every buffer.
    fn register(&mut self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: `ring` points at `entries` descriptors, page-aligned, valid until `self` is
        // dropped, which the owner only lets happen once no request can use the group (see type doc).
        unsafe { uring.submitter().register_buf_ring_with_flags(self.ring as u64, self.entries, BGID, 0)? };
        self.publish();
        Ok(())
    }

    /// Puts buffer `bid` back at the tail; the kernel sees it after [`Self::publish`].
    fn give_back(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index < entries`, so the descriptor is inside the allocation. The descriptor at
        // the tail is not one the kernel reads: it only reads from its head up to the published
        // tail, and at most `entries` buffers exist, so the slot at our tail is free. The tail field
        // shares descriptor 0 but is only written by `publish` and read by the kernel; the setters
        // below write other fields.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(self.bufs.wrapping_add(usize::from(bid) * self.buf_len) as u64);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: `ring` is the base of a live, initialised ring, so `tail` is the address of
        // descriptor 0's reserved field, a 2-byte aligned u16 that the kernel only reads (with
        // acquire semantics) and that we only write through this atomic.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.ring).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// `bid` must have been handed to us by a completion and not given back since.
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_len, "buffer {bid} of {len} bytes out of range");
        // SAFETY: in bounds by the assert. The kernel handed the buffer over with the completion
        // (which we read with acquire ordering) and gets it back only through `give_back`, which
        // needs `&mut self`, so it does not write it while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.buf_len), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the owner guarantees no request can use
        // them any more (or forgets `self` instead of dropping it).
        unsafe {
            alloc::dealloc(self.ring.cast(), self.ring_layout);
            alloc::dealloc(self.bufs, self.bufs_layout);
        }
    }
}

/// Memory one send request points the kernel at, besides the datagrams themselves (which stay in
/// the caller's [`SendBatch`]): the destination, and with GSO the `msghdr`, one iovec per
/// datagram of the run and the `UDP_SEGMENT` control message.
struct OpMem {
    addr: RawAddr,
    addr_len: libc::socklen_t,
    /// The run: datagrams `first..end` of the batch being sent.
    first: usize,
    end: usize,
    /// Segment size (the length of the first datagram) and total bytes of the run.
    seg: usize,
    len: usize,
    /// One per datagram of the run, pointing into the batch.
    iovs: Vec<libc::iovec>,
    hdr: libc::msghdr,
    cmsg: SegmentCmsg,
}

impl OpMem {
    fn new() -> UnsafeCell<Self> {
        UnsafeCell::new(Self {
            addr: RawAddr::zeroed(),
            addr_len: 0,
            first: 0,
            end: 0,
            seg: 0,
            len: 0,
            iovs: Vec::with_capacity(GSO_MAX_SEGMENTS),
            hdr: zeroed_msghdr(),
            cmsg: SegmentCmsg::new(0),
        })
    }
}

/// Bookkeeping of requests, separate from the ring so completions can be handled while the
/// completion queue is borrowed.
struct Track {
    /// Whether the multishot receive is queued or active.
    recv_armed: bool,
    /// Buffers currently in the ring (the rest are ours, waiting in `ready`).
    bufs_in_ring: usize,
    /// Received datagrams not yet copied out: (buffer id, bytes the kernel wrote).
    ready: VecDeque<(u16, usize)>,
    /// A receive error that is not about one datagram, reported by the next `recv_batch`.
    recv_error: Option<io::Error>,
    /// Send slots no request refers to.
    free_send: Vec<usize>,
    /// Send requests queued or in the kernel.
    sends_in_flight: usize,
    /// Send slots whose request failed with "queue full": sent again once there is room.
    retry: Vec<usize>,
    /// First fatal send error of the current `send_batch`.
    send_fatal: Option<io::Error>,
    send_errors: u64,
    /// Segments in each send slot's request (more than 1: a GSO send).
    segs: Vec<usize>,
    /// GSO send slots whose request failed with the given errno: sent again one by one.
    split: Vec<(usize, i32)>,
    /// Bytes of the payload of the front of `ready` already copied out (GRO: the batch filled up in
    /// the middle of a coalesced buffer).
    ready_offset: usize,
}

impl Track {
    fn handle_completion(&mut self, user_data: u64, res: i32, flags: u32) {
        match user_data {
            CANCEL => {}
            RECV => {
                if !cqueue::more(flags) {
                    self.recv_armed = false;
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.bufs_in_ring -= 1;
                    // An error with a buffer does not happen; treat it as an empty write so the
                    // buffer still goes back.
                    self.ready.push_back((bid, usize::try_from(res).unwrap_or(0)));
                }
                // ENOBUFS: the ring ran dry; ECANCELED: the submitting thread exited. Either way
                // the request ended and is re-armed by the next `recv_batch`.
                if res < 0
                    && !matches!(-res, libc::ENOBUFS | libc::ECANCELED | libc::EINTR | libc::EAGAIN)
                    && !is_soft_recv_error(-res)
                {
                    self.recv_error.get_or_insert(io::Error::from_raw_os_error(-res));
                }
            }
            _ if user_data & SEND != 0 => {
                let slot = (user_data & !SEND) as usize;
                self.sends_in_flight -= 1;
                if res < 0 && self.segs[slot] > 1 && gso_send_failed(-res) {
                    self.split.push((slot, -res));
                    return;
                }
                let failure = match res {
                    0.. => None,
                    // Cancelled (the submitting thread exited): just send it again.
                    r if -r == libc::ECANCELED => Some(SendFailure::Retry),
                    r => Some(SendFailure::of(-r)),
                };
                match failure {
                    None => self.free_send.push(slot),
                    Some(SendFailure::Retry) => self.retry.push(slot),
                    Some(SendFailure::Skip) => {
                        self.send_errors += 1;
                        self.free_send.push(slot);
                    }
                    Some(SendFailure::Fatal) => {
                        self.send_fatal.get_or_insert(io::Error::from_raw_os_error(-res));
                        self.free_send.push(slot);
                    }
                }
            }
            _ => debug_assert!(false, "unknown io_uring user_data {user_data:#x}"),
        }
    }
}

/// A UDP socket driven through an io_uring.
pub(super) struct UringSocket {
    ring: IoUring,
    socket: UdpSocket,
    /// Buffers of the multishot receive. This and the next two fields are memory requests use:
    /// `Drop` frees them only once no request is left, and leaks them otherwise.
    bufs: ManuallyDrop<BufRing>,
    /// The multishot receive's `msghdr`.
    recv_hdr: ManuallyDrop<Box<libc::msghdr>>,
    /// Send slot memory. A cell is reached (through `UnsafeCell::get`) only while its slot is out
    /// of flight: in `free_send`, being filled after leaving it, or in `retry`.
    send_mem: ManuallyDrop<Box<[UnsafeCell<OpMem>]>>,
    track: Track,
    gso: bool,
    gro: bool,
}

// SAFETY: `UringSocket` is !Send only because of raw pointers (`BufRing`, `msghdr`s) and
// `UnsafeCell`. They point only at heap memory this struct owns, which does not move when the
// struct moves, and they are dereferenced only by the kernel or through `&mut self`/`&self` of
// the one owner. The ring is not tied to a thread: requests of a thread that exits are cancelled by
// the kernel and come back as `ECANCELED`, which re-arms the receive and resends the datagram.
unsafe impl Send for UringSocket {}

impl UringSocket {
    /// Sets up a ring with a multishot receive over `4 * batch` buffers and `batch` send slots,
    /// each of `max_datagram` bytes. Hands `socket` back if the kernel refuses io_uring or lacks a
    /// feature the datapath needs. Turns on the offloads in `want` that the kernel has.
    pub(super) fn new(socket: UdpSocket, batch: usize, max_datagram: usize, want: Offloads) -> Result<Self, Refused> {
        let gro = want.gro && enable_gro(&socket);
        let gso = want.gso && gso_supported(&socket);
        match Self::build(&socket, batch, max_datagram, gro) {
            Ok((ring, bufs)) => Ok(Self {
                gso,
                gro,
                ring,
                socket,
                track: Track {
                    recv_armed: false,
                    bufs_in_ring: usize::from(bufs.entries),
                    ready: VecDeque::new(),
                    recv_error: None,
                    free_send: (0..batch).rev().collect(),
                    sends_in_flight: 0,
                    retry: Vec::new(),
                    send_fatal: None,
                    send_errors: 0,
                    segs: vec![0; batch],
                    split: Vec::new(),
                    ready_offset: 0,
                },
                bufs: ManuallyDrop::new(bufs),
                recv_hdr: ManuallyDrop::new(multishot_msghdr(if gro { CONTROL_LEN } else { 0 })),
                send_mem: ManuallyDrop::new((0..batch).map(|_| OpMem::new()).collect()),
            }),
            Err(error) => {
                if gro {
                    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::UdpGroSegment, &false);
                }
                Err(Refused { error, socket })
            }
        }
    }

    fn build(socket: &UdpSocket, batch: usize, max_datagram: usize, gro: bool) -> io::Result<(IoUring, BufRing)> {
        probe()?;
        // The kernel waits for room in the send queue itself (poll-armed retry) on a blocking
        // socket; a nonblocking one would make it fail with EAGAIN instead.
        socket.set_nonblocking(false)?;
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, format!("batch {batch} too large for io_uring"));
        // Buffers: 4 per batch slot (at least 64, at most 32768, the kernel's limit).
        // With GRO, a buffer holds a coalesced buffer of up to 64 KiB, so fewer are needed (and
        // more would cost much memory).
        let mut buffers = batch.checked_mul(4).ok_or_else(too_big)?.clamp(64, 1 << 15).next_power_of_two();
        let (control, payload) = if gro {
            buffers = buffers.min(GRO_MAX_BUFFERS);
            (CONTROL_LEN, max_datagram.max(GRO_BUFFER_BYTES))
        } else {
            (0, max_datagram)
        };
        let buf_len = (RECVMSG_OUT_LEN + NAME_LEN + control).checked_add(payload).ok_or_else(too_big)?;
        // Submission queue: the sends of one window, the receive and cancels (more are submitted in
        // turns). Completion queue: one per buffer, per send and per cancel, with room to spare.
        let sq = batch.checked_add(8).ok_or_else(too_big)?.next_power_of_two();
        let cq = (buffers + 2 * sq).next_power_of_two();
        let (sq, cq) = (u32::try_from(sq).map_err(|_| too_big())?, u32::try_from(cq).map_err(|_| too_big())?);
        // COOP_TASKRUN (5.19): see the module doc. Not DEFER_TASKRUN: it ties the ring to one
        // thread, and a `BatchSocket` may move between threads.
        let ring = match IoUring::builder().setup_cqsize(cq).setup_coop_taskrun().setup_taskrun_flag().build(sq) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder().setup_cqsize(cq).build(sq)?,
            r => r?,
        };
        check(&ring)?;
        let mut bufs = BufRing::new(u16::try_from(buffers).map_err(|_| too_big())?, buf_len)?;
        bufs.register(&ring)?;
        Ok((ring, bufs))
    }

    /// Queues `entry`, first submitting what is queued if the submission queue is full.
    ///
    /// # Safety
    /// Everything `entry` points at must stay valid until its last completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: forwarded to the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Queues the multishot receive if it is not active and the ring has buffers for it.
    fn arm_recv(&mut self) -> io::Result<()> {
        if self.track.recv_armed || self.track.bufs_in_ring == 0 {
            return Ok(());
        }
        let entry = recv_multishot(&self.socket, &self.recv_hdr);
        // SAFETY: the request reads `recv_hdr` (a heap box) and writes into buffers of `bufs`; both
        // live as long as `self`, and Drop waits for the request's last completion or leaks them.
        unsafe { self.push(&entry)? };
        self.track.recv_armed = true;
        Ok(())
    }

    /// Moves every queued completion into `track`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            self.track.handle_completion(cqe.user_data(), cqe.result(), cqe.flags());
        }
    }

    /// Puts ready datagrams into `sink` until it is full, giving their buffers back. A coalesced
    /// (GRO) buffer whose datagrams do not all fit stays at the front of `ready`.
    fn take_ready(&mut self, sink: &mut impl DatagramSink) {
        let mut gave_back = false;
        while !sink.is_full() {
            let Some(&(bid, written)) = self.track.ready.front() else { break };
            let buf = self.bufs.buf(bid, written.min(self.bufs.buf_len));
            if let Ok(out) = types::RecvMsgOut::parse(buf, &self.recv_hdr) {
                let len = out.incoming_payload_len() as usize;
                let seg = gro_segment_size(out.control_data());
                // A source that is not IPv4/IPv6 is impossible on an inet UDP socket; such a
                // datagram would be dropped rather than given an invented source.
                if let Some(from) = RawAddr::parse(out.name_data())
                    && !split_coalesced(out.payload_data(), len, seg, from, &mut self.track.ready_offset, sink)
                {
                    break;
                }
            }
            self.track.ready.pop_front();
            self.track.ready_offset = 0;
            self.bufs.give_back(bid);
            self.track.bufs_in_ring += 1;
            gave_back = true;
        }
        if gave_back {
            self.bufs.publish();
        }
    }

    /// Points free send slot `slot` at datagrams `first..end` of `batch` (one GSO run, or one
    /// datagram) and queues its request.
    fn queue_send(&mut self, slot: usize, batch: &SendBatch, first: usize, end: usize) -> io::Result<()> {
        let cell = self.send_mem[slot].get();
        // SAFETY: the slot was just taken from `free_send`, so no request refers to its memory and
        // this is the only reference to it.
        let mem = unsafe { &mut *cell };
        mem.iovs.clear();
        mem.len = 0;
        for i in first..end {
            let (data, _) = batch.get(i);
            // The kernel only reads through it (`iov_base` is `*mut` by C's signature).
            mem.iovs.push(libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() });
            mem.len += data.len();
        }
        let (first_data, to) = batch.get(first);
        (mem.addr, mem.addr_len) = RawAddr::new(to);
        (mem.first, mem.end, mem.seg) = (first, end, first_data.len());
        self.track.segs[slot] = end - first;
        self.resend(slot)
    }

    /// Queues the request of send slot `slot`, whose memory is already filled in and whose
    /// datagrams are in the batch `send_all` is sending.
    fn resend(&mut self, slot: usize) -> io::Result<()> {
        let cell = self.send_mem[slot].get();
        // SAFETY: the slot is out of flight (just filled, or its last request completed), so this
        // is the only reference to its memory.
        let mem = unsafe { &mut *cell };
        let fd = types::Fd(self.socket.as_raw_fd());
        let entry = if mem.iovs.len() > 1 {
            let seg = u16::try_from(mem.seg).expect("gso_run keeps segments within u16");
            mem.cmsg = SegmentCmsg::new(seg);
            mem.hdr = zeroed_msghdr();
            mem.hdr.msg_name = mem.addr.as_mut_ptr();
            mem.hdr.msg_namelen = mem.addr_len;
            mem.hdr.msg_iov = mem.iovs.as_mut_ptr();
            mem.hdr.msg_iovlen = mem.iovs.len() as _;
            mem.hdr.msg_control = ptr::from_mut(&mut mem.cmsg).cast();
            mem.hdr.msg_controllen = SEGMENT_CMSG_SPACE as _;
            opcode::SendMsg::new(fd, ptr::from_ref(&mem.hdr)).build()
        } else {
            let len = u32::try_from(mem.len).expect("a datagram is at most max_datagram bytes");
            opcode::Send::new(fd, mem.iovs[0].iov_base.cast_const().cast(), len)
                .dest_addr(mem.addr.as_mut_ptr().cast())
                .dest_addr_len(mem.addr_len)
                .build()
        }
        .user_data(SEND | slot as u64);
        // SAFETY: the request reads this slot's heap cell (`addr`, and for a GSO send `hdr`, the
        // `iovs` buffer and `cmsg`, which point only into the same cell), which is neither touched
        // (the slot stays out of `free_send` until the completion is reaped) nor freed (Drop waits
        // for the completion or leaks) meanwhile; the cell lives in a boxed slice and `iovs` never
        // grows past its capacity, so the pointers stay valid. It also reads the datagrams in the
        // caller's batch, borrowed by `send_all` until every request has completed.
        unsafe { self.push(&entry)? };
        self.track.sends_in_flight += 1;
        Ok(())
    }

    /// Sends `batch` with the datagrams read in place. Returns only once no request refers to
    /// the batch any more: after an error too, it first waits for the requests in flight (if the
    /// ring itself fails meanwhile, a request still queued may later read the batch's reused
    /// memory: it would send stale bytes, never write ours).
    fn send_all(&mut self, batch: &SendBatch) -> io::Result<()> {
        let r = self.send_runs(batch);
        if r.is_err() {
            // Retries and splits refer to this batch: they are not carried into the next one.
            let stale = self.track.retry.drain(..).chain(self.track.split.drain(..).map(|(s, _)| s));
            self.track.free_send.extend(stale.collect::<Vec<_>>());
            let deadline = deadline_after(Some(DROP_DRAIN_LIMIT));
            while self.track.sends_in_flight > 0 {
                let left = remaining(deadline);
                if left == Some(Duration::ZERO) || submit_and_wait(&self.ring, left).is_err() {
                    break;
                }
                self.reap();
                let stale = self.track.retry.drain(..).chain(self.track.split.drain(..).map(|(s, _)| s));
                self.track.free_send.extend(stale.collect::<Vec<_>>());
            }
        }
        r
    }

    fn send_runs(&mut self, batch: &SendBatch) -> io::Result<()> {
        self.track.send_fatal = None;
        let mut next = 0;
        loop {
            if self.track.send_fatal.is_none() {
                while next < batch.len() {
                    let Some(slot) = self.track.free_send.pop() else { break };
                    let end = if self.gso { gso_run(batch, next) } else { next + 1 };
                    if let Err(e) = self.queue_send(slot, batch, next, end) {
                        self.track.free_send.push(slot);
                        return Err(e);
                    }
                    next = end;
                }
            }
            self.split_failed_runs(batch)?;
            if !self.track.retry.is_empty() && self.track.sends_in_flight == 0 {
                // Everything else is done and the queue was full: wait for room, then resend.
                wait_writable(&self.socket)?;
                while let Some(&slot) = self.track.retry.last() {
                    // On error the slot stays in `retry`, so it is neither lost nor sent twice.
                    self.resend(slot)?;
                    self.track.retry.pop();
                }
            }
            let queued_all = next == batch.len() || self.track.send_fatal.is_some();
            if queued_all
                && self.track.sends_in_flight == 0
                && self.track.retry.is_empty()
                && self.track.split.is_empty()
            {
                break;
            }
            submit_and_wait(&self.ring, None)?;
            self.reap();
        }
        self.track.send_fatal.take().map_or(Ok(()), Err)
    }

    /// Sends the datagrams of each failed GSO run again one at a time, and stops using GSO if
    /// that shows the kernel refused the segmentation itself.
    fn split_failed_runs(&mut self, batch: &SendBatch) -> io::Result<()> {
        while let Some((slot, errno)) = self.track.split.pop() {
            let cell = self.send_mem[slot].get();
            // SAFETY: the slot's request completed (that is how it got into `split`), so no
            // request refers to its memory; only shared access here.
            let (first, end) = unsafe { ((*cell).first, (*cell).end) };
            let sent = send_each(&self.socket, (first..end).map(|i| batch.get(i)), &mut self.track.send_errors);
            self.track.free_send.push(slot);
            if gso_refused(errno, sent?) {
                self.gso = false;
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for datagrams and puts those ready into `sink` (see
    /// [`BatchSocket::recv_batch`]).
    fn receive(&mut self, sink: &mut impl DatagramSink, timeout: Option<Duration>) -> io::Result<usize> {
        if let Some(e) = self.track.recv_error.take() {
            return Err(e);
        }
        let deadline = deadline_after(timeout);
        let mut entered = false;
        loop {
            self.reap();
            self.take_ready(sink);
            let armed = self.arm_recv();
            if sink.taken() > 0 {
                // A failed re-arm is retried by the next call; these datagrams are not dropped for it.
                return Ok(sink.taken());
            }
            armed?;
            if let Some(e) = self.track.recv_error.take() {
                return Err(e);
            }
            let left = remaining(deadline);
            if entered && left == Some(Duration::ZERO) {
                return Ok(0);
            }
            // Also submits a (re-)armed receive, so datagrams already queued complete inline.
            submit_and_wait(&self.ring, left)?;
            entered = true;
        }
    }

    /// Cancels every request and waits for their last completions. Returns whether none is left.
    fn cancel_all(&mut self) -> bool {
        let done = |t: &Track| !t.recv_armed && t.sends_in_flight == 0;
        if done(&self.track) {
            return true;
        }
        // In-flight sends are the slots neither free nor waiting for a retry.
        let mut idle = vec![false; self.send_mem.len()];
        for &s in self.track.free_send.iter().chain(&self.track.retry).chain(self.track.split.iter().map(|(s, _)| s)) {
            idle[s] = true;
        }
        let sends = (0..idle.len()).filter(|&s| !idle[s]).map(|s| SEND | s as u64);
        let targets: Vec<u64> = self.track.recv_armed.then_some(RECV).into_iter().chain(sends).collect();
        for user_data in targets {
            let entry = opcode::AsyncCancel::new(user_data).build().user_data(CANCEL);
            // SAFETY: a cancel request points at no memory.
            if unsafe { self.push(&entry) }.is_err() {
                break;
            }
        }
        let deadline = deadline_after(Some(DROP_DRAIN_LIMIT));
        while !done(&self.track) {
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) || submit_and_wait(&self.ring, left).is_err() {
                break;
            }
            self.reap();
        }
        done(&self.track)
    }
}

impl BatchSocket for UringSocket {
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize> {
        batch.reset();
        self.receive(batch, timeout)
    }

    fn recv_each(
        &mut self,
        batch: &mut RecvBatch,
        timeout: Option<Duration>,
        each: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        batch.reset();
        self.receive(&mut Visit { batch, each, handed: 0 }, timeout)
    }

    fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        let r = self.send_all(batch);
        batch.clear();
        r
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn kind(&self) -> DatapathKind {
        DatapathKind::IoUring
    }

    fn send_errors(&self) -> u64 {
        self.track.send_errors
    }

    fn offloads(&self) -> Offloads {
        Offloads { gso: self.gso, gro: self.gro }
    }
}

impl Drop for UringSocket {
    fn drop(&mut self) {
        if self.cancel_all() {
            // No request is left, so nothing can pick a buffer; unregistering is tidiness (the
            // ring's own teardown would do it too).
            let _ = self.ring.submitter().unregister_buf_ring(BGID);
            // SAFETY: no request is left to use this memory (`cancel_all` saw every last
            // completion), and these fields are not used again: `self` is being dropped.
            unsafe {
                ManuallyDrop::drop(&mut self.bufs);
                ManuallyDrop::drop(&mut self.recv_hdr);
                ManuallyDrop::drop(&mut self.send_mem);
            }
        }
        // Otherwise some request may still write into the buffers or read slot memory: the three
        // fields are leaked. Leaked memory is never reused, so the kernel may keep using it.
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests as scenario;
    use super::*;

    scenario_tests!(DatapathKind::IoUring);

    fn uring_socket(batch: usize, max: usize) -> Option<UringSocket> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        match UringSocket::new(socket, batch, max, Offloads::ALL) {
            Ok(s) => Some(s),
            Err(r) => {
                eprintln!("skipping io_uring test: {}", r.error);
                None
            }
        }
    }

    /// Receives `n` one-byte-index datagrams (index `i` as 4 bytes) and checks they came in order.
    fn receive_in_order(rx: &mut dyn BatchSocket, batch: &mut RecvBatch, n: u32) {
        let mut next = 0u32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while next < n && std::time::Instant::now() < deadline {
            rx.recv_batch(batch, Some(Duration::from_millis(50))).unwrap();
            for (d, _) in batch.iter() {
                assert_eq!(d, next.to_le_bytes(), "datagram {next}");
                next += 1;
            }
        }
        assert_eq!(next, n, "only {next} of {n} datagrams arrived");
    }

    /// 150 datagrams queued before the first receive, but only 64 buffers and a caller taking one
    /// at a time: the multishot receive runs the ring dry (`ENOBUFS`), ends, and is re-armed as
    /// buffers come back; nothing is lost and the order holds.
    #[test]
    fn buffer_ring_runs_dry_and_rearms() {
        let Some(mut rx) = uring_socket(1, 64) else { return };
        assert_eq!(rx.bufs.entries, 64);
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let dst = rx.local_addr().unwrap();
        for i in 0..150u32 {
            tx.send_to(&i.to_le_bytes(), dst).unwrap();
        }
        receive_in_order(&mut rx, &mut RecvBatch::new(1, 64), 150);
        assert_eq!(rx.track.bufs_in_ring, 64, "every buffer is back in the ring");
    }

    /// The thread that armed the receive exits, so the kernel cancels its request; the socket,
    /// now on another thread, re-arms and keeps receiving.
    #[test]
    fn keeps_receiving_after_the_arming_thread_exits() {
        let Some(rx) = uring_socket(16, 64) else { return };
        let mut rx = std::thread::spawn(move || {
            let mut rx = rx;
            assert_eq!(rx.recv_batch(&mut RecvBatch::new(16, 64), Some(Duration::ZERO)).unwrap(), 0);
            assert!(rx.track.recv_armed);
            rx
        })
        .join()
        .unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for i in 0..20u32 {
            tx.send_to(&i.to_le_bytes(), rx.local_addr().unwrap()).unwrap();
        }
        receive_in_order(&mut rx, &mut RecvBatch::new(16, 64), 20);
    }

    /// `cancel_all` (what Drop does) gets the last completion of every request, promptly, also
    /// with datagrams waiting in the ring and in the ready queue.
    #[test]
    fn drop_waits_for_every_request() {
        let Some(mut s) = uring_socket(8, 64) else { return };
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut batch = RecvBatch::new(1, 64);
        assert_eq!(s.recv_batch(&mut batch, Some(Duration::ZERO)).unwrap(), 0);
        for i in 0..5u32 {
            tx.send_to(&i.to_le_bytes(), s.local_addr().unwrap()).unwrap();
        }
        assert_eq!(s.recv_batch(&mut batch, Some(Duration::from_secs(5))).unwrap(), 1);
        let t0 = std::time::Instant::now();
        assert!(s.cancel_all(), "every request finished");
        assert!(t0.elapsed() < Duration::from_secs(1), "took {:?}", t0.elapsed());
        assert!(!s.track.recv_armed && s.track.sends_in_flight == 0);
        drop(s);
    }

    #[test]
    fn gso_refused_falls_back() {
        let socket = super::super::mmsg::tests::no_checksum_socket();
        let mut tx = match UringSocket::new(socket, 8, 1500, Offloads::ALL) {
            Ok(s) => s,
            Err(r) => return eprintln!("skipping io_uring test: {}", r.error),
        };
        scenario::gso_refused_falls_back(&mut tx);
    }

    #[test]
    fn probe_works_here() {
        if let Err(e) = probe() {
            eprintln!("io_uring unavailable here: {e}");
        }
    }
}
