//! `recvmmsg(2)`/`sendmmsg(2)` datapath, plus the C socket-address type the io_uring datapath
//! shares.
//!
//! Receives: try `recvmmsg(MSG_DONTWAIT | MSG_TRUNC)` into the batch's own buffers (data is often
//! already queued, which saves the `poll`), and only when nothing came `poll(POLLIN)` until the
//! deadline. Sends: `sendmmsg(MSG_DONTWAIT)` straight from the batch's buffers, resuming after a
//! partial send; an error concerns the first unsent message, which is skipped or retried.
//!
//! With GSO each message of the `sendmmsg` is a run of datagrams (see [`super::gso_run`]): one
//! iovec per datagram and a `UDP_SEGMENT` control message; a run that fails for a
//! per-destination reason or `EIO` is sent again one datagram at a time, and if that works where
//! the GSO send got `EIO`/`EINVAL`/`EMSGSIZE`, the socket stops using GSO. With GRO the receive
//! goes into buffers of [`GRO_BUFFER_BYTES`] the socket owns (a coalesced buffer would not fit a
//! batch slot), and their datagrams are copied into the batch; what does not fit stays for the
//! next call, and no new `recvmmsg` is made until it is delivered.
//!
//! Why libc and not nix's safe wrappers: nix 0.32's `sendmmsg` reports the number of datagrams
//! sent only through an iterator that reads its (never written) address storage with
//! `assume_init`, and its `recvmmsg` never resets `msg_namelen` between calls. Both system calls
//! are synchronous, so every pointer handed to the kernel here is only used during the call.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr;
use std::time::Duration;

use super::{
    BatchSocket, DatapathKind, GRO_BUFFER_BYTES, Offloads, RecvBatch, Refused, SEGMENT_CMSG_SPACE, SegmentCmsg,
    SendBatch, SendFailure, enable_gro, gro_segment_size, gso_refused, gso_run, gso_send_failed, gso_supported,
    poll_then_drain, send_each, split_coalesced, wait_writable,
};

/// A socket address in the C layout the kernel reads and writes: `sockaddr_in` or `sockaddr_in6`.
///
/// Invariant: all `size_of::<Self>()` bytes are initialised (every constructor starts from the
/// larger, zeroed `sockaddr_in6`), so reading either variant is sound: both are plain integers
/// for which every bit pattern is valid.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// `msg_namelen` to offer the kernel for a received address.
    pub(super) const CAPACITY: libc::socklen_t = size_of::<Self>() as libc::socklen_t;

    /// All zero (family `AF_UNSPEC`).
    pub(super) fn zeroed() -> Self {
        Self {
            v6: libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            },
        }
    }

    /// `addr` in C layout, with the length to pass as `msg_namelen`.
    pub(super) fn new(addr: SocketAddr) -> (Self, libc::socklen_t) {
        let mut raw = Self::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                // Writing a `Copy` union field is safe; the bytes past `sockaddr_in` stay zero.
                raw.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                (raw, size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(a) => {
                raw.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                (raw, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }

    /// The address the kernel wrote, given the `msg_namelen` it reported; `None` for a family other
    /// than IPv4/IPv6 or a short length.
    pub(super) fn to_socket_addr(self, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        // SAFETY: see the type's invariant: every byte is initialised and both variants accept any
        // bit pattern. `sin6_family` and `sin_family` are the same first two bytes.
        let family = unsafe { self.v6.sin6_family } as libc::c_int;
        if family == libc::AF_INET && len >= size_of::<libc::sockaddr_in>() {
            // SAFETY: as above.
            let a = unsafe { self.v4 };
            let ip = Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        } else if family == libc::AF_INET6 && len >= size_of::<libc::sockaddr_in6>() {
            // SAFETY: as above.
            let a = unsafe { self.v6 };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        } else {
            None
        }
    }

    /// Parses a C socket address from bytes the kernel wrote (as in a multishot receive buffer);
    /// `None` for a family other than IPv4/IPv6 or too few bytes.
    pub(super) fn parse(bytes: &[u8]) -> Option<SocketAddr> {
        let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| [b[0], b[1]]);
        let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| [b[0], b[1], b[2], b[3]]);
        let family = libc::c_int::from(u16::from_ne_bytes(u16_at(0)?));
        let port = u16::from_be_bytes(u16_at(2)?);
        if family == libc::AF_INET && bytes.len() >= size_of::<libc::sockaddr_in>() {
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32_at(4)?), port)))
        } else if family == libc::AF_INET6 && bytes.len() >= size_of::<libc::sockaddr_in6>() {
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            let flowinfo = u32::from_ne_bytes(u32_at(4)?);
            let scope_id = u32::from_ne_bytes(u32_at(24)?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id)))
        } else {
            None
        }
    }

    /// The bytes of this address, as the kernel sees them.
    #[cfg(test)]
    fn bytes(&self) -> [u8; size_of::<Self>()] {
        // SAFETY: every byte is initialised (type invariant), and any bytes are a valid `[u8; N]`
        // of the same size.
        unsafe { mem::transmute(*self) }
    }

    /// Pointer for `msg_name`.
    pub(super) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        ptr::from_mut(self).cast()
    }
}

/// An all-zero `msghdr`/`mmsghdr`.
pub(super) fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a C struct of integers and raw pointers (plus padding on some targets),
    // for which all-zero bytes are a valid value (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

/// The result of a receive that failed with `errno` (read now): `Ok(progress)` if that only means
/// "nothing queued".
fn recv_error(progress: usize) -> io::Result<usize> {
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(progress),
        // A pending ICMP error reported on the socket (only with IP_RECVERR): not ours to handle.
        Some(errno) if super::is_soft_recv_error(errno) => Ok(progress),
        _ => Err(e),
    }
}

/// `mmsghdr` arrays reused by every call. Between calls their pointers dangle and are never read;
/// each call rewrites every pointer it passes to the kernel.
/// Points receive header `i` at address `i`, iovec `i` and (if given) control buffer `i`. Only
/// computes pointers; the caller's `recvmmsg` is what relies on them.
fn point_recv_headers(
    msgs: &mut [libc::mmsghdr],
    iov_base: *mut libc::iovec,
    addr_base: *mut RawAddr,
    ctrl_base: Option<*mut Control>,
) {
    for (i, m) in msgs.iter_mut().enumerate() {
        m.msg_hdr = zeroed_msghdr();
        m.msg_hdr.msg_name = addr_base.wrapping_add(i).cast();
        m.msg_hdr.msg_namelen = RawAddr::CAPACITY;
        m.msg_hdr.msg_iov = iov_base.wrapping_add(i);
        m.msg_hdr.msg_iovlen = 1;
        if let Some(ctrl) = ctrl_base {
            m.msg_hdr.msg_control = ctrl.wrapping_add(i).cast();
            m.msg_hdr.msg_controllen = CONTROL_LEN as _;
        }
        m.msg_len = 0;
    }
}

struct Headers {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
    /// Control buffers: `UDP_SEGMENT` on send, `UDP_GRO` on receive.
    ctrls: Vec<Control>,
    /// (first datagram, end) of each message of the current send.
    runs: Vec<(usize, usize)>,
}

/// One message's control buffer, aligned for `cmsghdr`; room for a few control messages.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// Bytes of a [`Control`]: a `UDP_GRO` message needs `CMSG_SPACE(sizeof(int))` = 24.
const CONTROL_LEN: usize = 64;
const _: () = assert!(SEGMENT_CMSG_SPACE <= CONTROL_LEN);

// SAFETY: the raw pointers inside `msgs`/`iovs` make `Headers` !Send by default. They are only
// dereferenced (by the kernel) during a system call made through `&mut MmsgSocket` on the calling
// thread, and are rewritten before every call, so moving the arrays to another thread is sound.
unsafe impl Send for Headers {}

impl Headers {
    /// Grows every array to at least `n` entries.
    fn ensure(&mut self, n: usize) {
        while self.msgs.len() < n {
            self.msgs.push(libc::mmsghdr { msg_hdr: zeroed_msghdr(), msg_len: 0 });
            self.iovs.push(libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 });
            self.addrs.push(RawAddr::zeroed());
            self.ctrls.push(Control([0; CONTROL_LEN]));
        }
    }
}

/// GRO receive memory: `bufs.len() / stride` buffers of `stride` bytes, and what the last
/// `recvmmsg` put in them that is not yet in a batch.
struct GroArea {
    bufs: Vec<u8>,
    stride: usize,
    /// (full length, stored length, GRO segment size, source) of buffer `i` of the last receive.
    held: Vec<(usize, usize, Option<usize>, Option<SocketAddr>)>,
    /// The first held buffer not yet delivered, and the byte of it to go on at.
    next: usize,
    offset: usize,
}

/// Most buffers one GRO `recvmmsg` fills (64 KiB each).
const GRO_RECVS: usize = 64;

/// A UDP socket using `recvmmsg`/`sendmmsg`.
pub(super) struct MmsgSocket {
    socket: UdpSocket,
    hdrs: Headers,
    send_errors: u64,
    gso: bool,
    /// `Some` when `UDP_GRO` is on.
    gro: Option<GroArea>,
}

impl MmsgSocket {
    /// Makes `socket` nonblocking and checks that the kernel accepts `recvmmsg`/`sendmmsg` (a
    /// seccomp filter may not). `batch` presizes the header arrays. Turns on the offloads in `want`
    /// that the kernel has.
    pub(super) fn new(socket: UdpSocket, batch: usize, want: Offloads) -> Result<Self, Refused> {
        if let Err(error) = socket.set_nonblocking(true) {
            return Err(Refused { error, socket });
        }
        let mut hdrs =
            Headers { msgs: Vec::new(), iovs: Vec::new(), addrs: Vec::new(), ctrls: Vec::new(), runs: Vec::new() };
        hdrs.ensure(batch.max(1));
        let fd = socket.as_raw_fd();
        // Zero-length calls: they check the system calls exist and touch no datagram.
        // SAFETY: `vlen` is 0, so the kernel reads no header; the pointer is valid anyway.
        let r = unsafe { libc::recvmmsg(fd, hdrs.msgs.as_mut_ptr(), 0, libc::MSG_DONTWAIT, ptr::null_mut()) };
        let s = if r < 0 {
            r
        } else {
            // SAFETY: as above.
            unsafe { libc::sendmmsg(fd, hdrs.msgs.as_mut_ptr(), 0, libc::MSG_DONTWAIT) }
        };
        if r < 0 || s < 0 {
            return Err(Refused { error: io::Error::last_os_error(), socket });
        }
        let gso = want.gso && gso_supported(&socket);
        let gro = (want.gro && enable_gro(&socket)).then(|| GroArea {
            bufs: Vec::new(),
            stride: GRO_BUFFER_BYTES,
            held: Vec::new(),
            next: 0,
            offset: 0,
        });
        Ok(Self { socket, hdrs, send_errors: 0, gso, gro })
    }

    /// The receive step with GRO on: delivers held datagrams, then (if the batch has room) one
    /// `recvmmsg` into the GRO buffers, and delivers from those. Returns how many buffers were
    /// received or finished (kept or truncated), 0 if none.
    fn recv_once_gro(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut progress = self.deliver_held(batch);
        if batch.is_full() {
            return Ok(progress.max(1));
        }
        let Some(area) = &mut self.gro else { return Ok(progress) };
        let stride = GRO_BUFFER_BYTES.max(batch.max_datagram() + 1);
        let n = (batch.capacity() - batch.len()).min(GRO_RECVS);
        if area.stride != stride || area.bufs.len() < n * stride {
            area.stride = stride;
            area.bufs.resize(n * stride, 0);
        }
        self.hdrs.ensure(n);
        let Headers { msgs, iovs, addrs, ctrls, .. } = &mut self.hdrs;
        let base = area.bufs.as_mut_ptr();
        for (i, iov) in iovs[..n].iter_mut().enumerate() {
            // In bounds: buffer i spans [i * stride, (i + 1) * stride) of `bufs` (resized above).
            *iov = libc::iovec { iov_base: base.wrapping_add(i * stride).cast(), iov_len: stride };
        }
        let (iov_base, addr_base, ctrl_base) = (iovs.as_mut_ptr(), addrs.as_mut_ptr(), ctrls.as_mut_ptr());
        point_recv_headers(&mut msgs[..n], iov_base, addr_base, Some(ctrl_base));
        // SAFETY: `msgs[..n]` are initialised headers whose `msg_name` points at `addrs[i]`
        // (`CAPACITY` bytes), whose `msg_control` points at `ctrls[i]` (`CONTROL_LEN` bytes) and
        // whose single iovec points at buffer i of `area.bufs` (`stride` bytes, inside `bufs`,
        // which holds `n * stride`). All of it is exclusively borrowed for this synchronous call.
        // `n <= msgs.len()` (and `ctrls`, `addrs`, `iovs`) by `ensure`.
        let r = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return recv_error(progress);
        }
        let got = r as usize;
        area.held.clear();
        area.next = 0;
        area.offset = 0;
        for (i, m) in msgs[..got].iter().enumerate() {
            let full = m.msg_len as usize;
            let stored = full.min(stride);
            // `msg_controllen` is the length of the control data the kernel wrote.
            let ctrl_len = m.msg_hdr.msg_controllen.min(CONTROL_LEN);
            let seg = gro_segment_size(&ctrls[i].0[..ctrl_len]);
            // A source that is not IPv4/IPv6 is impossible on an inet UDP socket; such a buffer
            // is dropped rather than given an invented source.
            let from = addrs[i].to_socket_addr(m.msg_hdr.msg_namelen);
            area.held.push((full, stored, seg, from));
        }
        progress += got;
        self.deliver_held(batch);
        Ok(progress)
    }

    /// Copies held GRO datagrams into `batch` until it is full or none are left; returns how many
    /// held buffers were finished.
    fn deliver_held(&mut self, batch: &mut RecvBatch) -> usize {
        let Some(area) = &mut self.gro else { return 0 };
        let mut finished = 0;
        while let Some(&(full, stored, seg, from)) = area.held.get(area.next) {
            let start = area.next * area.stride;
            let data = &area.bufs[start..start + stored];
            if let Some(from) = from
                && !split_coalesced(data, full, seg, from, &mut area.offset, batch)
            {
                break;
            }
            area.next += 1;
            area.offset = 0;
            finished += 1;
        }
        finished
    }

    /// One `recvmmsg(MSG_DONTWAIT)` into the batch's slots; returns how many datagrams the kernel
    /// delivered (kept or truncated), 0 if none were queued.
    fn recv_once(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        let n = batch.capacity();
        let max = batch.max_datagram();
        self.hdrs.ensure(n);
        let Headers { msgs, iovs, addrs, .. } = &mut self.hdrs;
        let (slots, stride) = batch.slots_mut();
        let base = slots.as_mut_ptr();
        for (i, iov) in iovs[..n].iter_mut().enumerate() {
            // In bounds: slot i spans [i * stride, (i + 1) * stride) of `slots`, and max < stride.
            *iov = libc::iovec { iov_base: base.wrapping_add(i * stride).cast(), iov_len: max };
        }
        let (iov_base, addr_base) = (iovs.as_mut_ptr(), addrs.as_mut_ptr());
        point_recv_headers(&mut msgs[..n], iov_base, addr_base, None);
        // SAFETY: `msgs[..n]` are initialised headers whose `msg_name` points at `addrs[i]`
        // (`CAPACITY` bytes) and whose single iovec points at slot i of the batch (`max` bytes,
        // inside `slots`). All of it is exclusively borrowed for this synchronous call and not
        // touched through any other path until it returns. `n <= msgs.len()` by `ensure`.
        let r = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return recv_error(0);
        }
        let got = r as usize;
        for (i, m) in msgs[..got].iter().enumerate() {
            // With MSG_TRUNC, msg_len is the datagram's full length.
            let mut len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                len = len.max(max + 1);
            }
            // A source that is not IPv4/IPv6 is impossible on an inet UDP socket; such a datagram
            // would be dropped rather than given an invented source.
            if let Some(from) = addrs[i].to_socket_addr(m.msg_hdr.msg_namelen) {
                batch.commit(i, len, from);
            }
        }
        Ok(got)
    }

    fn send_all(&mut self, batch: &SendBatch) -> io::Result<()> {
        let n = batch.len();
        self.hdrs.ensure(n);
        let Headers { msgs, iovs, addrs, ctrls, runs } = &mut self.hdrs;
        runs.clear();
        let mut i = 0;
        while i < n {
            let end = if self.gso { gso_run(batch, i) } else { i + 1 };
            runs.push((i, end));
            i = end;
        }
        for (iov, (data, _)) in iovs.iter_mut().zip(batch.iter()) {
            *iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        }
        for (k, &(first, end)) in runs.iter().enumerate() {
            let (data, to) = batch.get(first);
            let (raw, len) = RawAddr::new(to);
            addrs[k] = raw;
            msgs[k].msg_hdr = zeroed_msghdr();
            msgs[k].msg_hdr.msg_namelen = len;
            if end - first > 1 {
                let seg = u16::try_from(data.len()).expect("gso_run keeps segments within u16");
                ctrls[k].0[..SEGMENT_CMSG_SPACE].copy_from_slice(&SegmentCmsg::new(seg).0);
            }
        }
        // Raw pointers are taken after the last indexed write to `iovs`/`addrs`/`ctrls`, and
        // `msgs` is only reached through `msg_base` once that is taken.
        let (iov_base, addr_base, ctrl_base) = (iovs.as_mut_ptr(), addrs.as_mut_ptr(), ctrls.as_mut_ptr());
        for (k, &(first, end)) in runs.iter().enumerate() {
            let m = &mut msgs[k];
            m.msg_hdr.msg_name = addr_base.wrapping_add(k).cast();
            m.msg_hdr.msg_iov = iov_base.wrapping_add(first);
            m.msg_hdr.msg_iovlen = end - first;
            if end - first > 1 {
                m.msg_hdr.msg_control = ctrl_base.wrapping_add(k).cast();
                m.msg_hdr.msg_controllen = SEGMENT_CMSG_SPACE as _;
            }
        }
        let msg_base = msgs.as_mut_ptr();
        let m = runs.len();
        let mut start = 0;
        while start < m {
            // SAFETY: `msgs[start..m]` are initialised headers pointing at `addrs[k]` (with its
            // length), `iovs[first..end]` of their run (each pointing at a datagram of `batch`) and,
            // for a run, `ctrls[k]` (`SEGMENT_CMSG_SPACE` bytes); all borrowed for this synchronous
            // call, and the kernel only reads them. `start < m <= n <= msgs.len()`.
            let r = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    msg_base.add(start),
                    (m - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                start += r as usize;
                continue;
            }
            // r == 0 cannot happen for a non-empty vector; treat it like a full queue.
            let e = if r == 0 { io::Error::from_raw_os_error(libc::EAGAIN) } else { io::Error::last_os_error() };
            // The error concerns message `start`, the first one not sent.
            let (first, end) = runs[start];
            let errno = e.raw_os_error().unwrap_or(0);
            if end - first > 1 && gso_send_failed(errno) {
                let sent = send_each(&self.socket, (first..end).map(|i| batch.get(i)), &mut self.send_errors)?;
                if gso_refused(errno, sent) {
                    self.gso = false;
                }
                start += 1;
                continue;
            }
            match SendFailure::of_error(&e) {
                SendFailure::Retry => wait_writable(&self.socket)?,
                SendFailure::Skip => {
                    self.send_errors += 1;
                    start += 1;
                }
                SendFailure::Fatal => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsFd for MmsgSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl BatchSocket for MmsgSocket {
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize> {
        if self.gro.is_some() {
            poll_then_drain(self, batch, timeout, Self::recv_once_gro)
        } else {
            poll_then_drain(self, batch, timeout, Self::recv_once)
        }
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
        DatapathKind::Mmsg
    }

    fn send_errors(&self) -> u64 {
        self.send_errors
    }

    fn offloads(&self) -> Offloads {
        Offloads { gso: self.gso, gro: self.gro.is_some() }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::tests as scenario;
    use super::*;

    scenario_tests!(DatapathKind::Mmsg);

    /// A socket with `SO_NO_CHECK` (no UDP checksums on send), on which the kernel refuses GSO
    /// sends with `EINVAL` while single datagrams go out.
    pub(crate) fn no_checksum_socket() -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live `c_int` whose size is passed; the fd is open.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                ptr::from_ref(&one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
        socket
    }

    #[test]
    fn gso_refused_falls_back() {
        let Ok(mut tx) = MmsgSocket::new(no_checksum_socket(), 32, Offloads::ALL) else { panic!("mmsg refused") };
        scenario::gso_refused_falls_back(&mut tx);
    }

    #[test]
    fn raw_addr_round_trips_v4_and_v6() {
        for addr in ["127.0.0.1:9000", "10.1.2.3:1", "[::1]:443", "[fe80::1%3]:5"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (raw, len) = RawAddr::new(addr);
            assert_eq!(raw.to_socket_addr(len), Some(addr));
        }
        assert_eq!(RawAddr::zeroed().to_socket_addr(RawAddr::CAPACITY), None);
        let (raw, _) = RawAddr::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(raw.to_socket_addr(4), None, "a short length is refused");
        assert_eq!(RawAddr::parse(&raw.bytes()[..4]), None, "a short length is refused");
        assert_eq!(RawAddr::parse(&[]), None);
    }

    #[test]
    fn raw_addr_parses_kernel_bytes() {
        for addr in ["127.0.0.1:9000", "[::1]:443", "[fe80::1%3]:5"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (raw, len) = RawAddr::new(addr);
            assert_eq!(RawAddr::parse(&raw.bytes()[..len as usize]), Some(addr));
            assert_eq!(RawAddr::parse(&raw.bytes()), Some(addr));
        }
    }
}
