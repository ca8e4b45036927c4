//! Moving frames between nodes: tokio TCP and in-process links, with per-link byte counters.
//!
//! Both transports move the same encoded frames ([`OutFrame`] in, [`Frame`] out) through the same
//! checks (magic, version, size limit), so byte counts, limits and error paths are identical in a
//! one-process test and on a cluster. TCP writes header and payload with one vectored write
//! (batching queued frames into one `writev`) on a socket with `TCP_NODELAY`; the in-process link
//! hands the payload `Bytes` over without copying it.
//!
//! A connection is a [`LinkTx`] (cloneable, any task may send) and a [`LinkRx`] (one reader). For
//! TCP a writer task owns the socket's write half; [`LinkTx::flush`] waits until everything queued
//! before it is written (so a process can exit without cutting off its last words), and dropping
//! every `LinkTx` lets the writer finish the queue and shut the write side down.
//!
//! Refuses: protocol decisions. What a frame means is decided in `proto` and by the roles.

pub mod handshake;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::proto::wire::{self, Frame, HEADER_LEN, Limits, OutFrame, WireError};

/// Frames queued per link direction before a sender waits.
const QUEUE_FRAMES: usize = 256;
/// Payload bytes queued per link direction before a sender waits: a peer that stops reading
/// holds up its own requests, not the node's memory. A larger frame waits for an empty queue.
const QUEUE_BYTES: usize = 32 << 20;
/// Frames gathered into one vectored write at most.
const WRITE_BATCH: usize = 64;
/// Smallest free space the TCP reader keeps in its buffer before a read.
const READ_CHUNK: usize = 64 * 1024;
/// TCP keepalive: a silent peer is declared dead after about idle + interval × retries (25 s).
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Which transport a cluster uses.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// In-process channels carrying encoded frames (one process only).
    #[default]
    Inproc,
    /// TCP sockets.
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inproc => "inproc",
            Self::Tcp => "tcp",
        })
    }
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame; the connection must close.
    #[error("corrupt frame from peer: {0}")]
    Wire(#[from] WireError),
    /// The peer closed the connection in the middle of a frame.
    #[error("peer closed the connection mid-frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The link is closed; nothing more can be sent.
    #[error("connection closed")]
    Closed,
    /// Nobody listens at that in-process address.
    #[error("no in-process endpoint named '{0}'")]
    NoEndpoint(String),
}

/// Byte and frame counters of one link, as seen from one end.
#[derive(Debug, Default)]
pub struct LinkStats {
    header_sent: AtomicU64,
    payload_sent: AtomicU64,
    frames_sent: AtomicU64,
    header_received: AtomicU64,
    payload_received: AtomicU64,
    frames_received: AtomicU64,
}

impl LinkStats {
    fn on_send(&self, payload: usize) {
        self.header_sent.fetch_add(HEADER_LEN as u64, Ordering::Relaxed);
        self.payload_sent.fetch_add(payload as u64, Ordering::Relaxed);
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn on_receive(&self, payload: usize) {
        self.header_received.fetch_add(HEADER_LEN as u64, Ordering::Relaxed);
        self.payload_received.fetch_add(payload as u64, Ordering::Relaxed);
        self.frames_received.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> LinkCounters {
        LinkCounters {
            header_sent: self.header_sent.load(Ordering::Relaxed),
            payload_sent: self.payload_sent.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            header_received: self.header_received.load(Ordering::Relaxed),
            payload_received: self.payload_received.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`LinkStats`].
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct LinkCounters {
    /// Header bytes sent.
    pub header_sent: u64,
    /// Payload bytes sent.
    pub payload_sent: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Header bytes received.
    pub header_received: u64,
    /// Payload bytes received.
    pub payload_received: u64,
    /// Frames received.
    pub frames_received: u64,
}

impl LinkCounters {
    /// All bytes sent.
    pub fn bytes_sent(&self) -> u64 {
        self.header_sent + self.payload_sent
    }

    /// All bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.header_received + self.payload_received
    }

    /// The counters as a fixed-order vector (for summing at a barrier).
    pub fn to_vec(&self) -> [f64; 6] {
        [
            self.header_sent as f64,
            self.payload_sent as f64,
            self.frames_sent as f64,
            self.header_received as f64,
            self.payload_received as f64,
            self.frames_received as f64,
        ]
    }

    /// Inverse of [`LinkCounters::to_vec`].
    pub fn from_slice(v: &[f64]) -> Self {
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0) as u64;
        Self {
            header_sent: at(0),
            payload_sent: at(1),
            frames_sent: at(2),
            header_received: at(3),
            payload_received: at(4),
            frames_received: at(5),
        }
    }
}

impl std::ops::AddAssign for LinkCounters {
    fn add_assign(&mut self, o: Self) {
        self.header_sent += o.header_sent;
        self.payload_sent += o.payload_sent;
        self.frames_sent += o.frames_sent;
        self.header_received += o.header_received;
        self.payload_received += o.payload_received;
        self.frames_received += o.frames_received;
    }
}

/// What travels down a link's queue.
#[derive(Debug)]
enum Outgoing {
    /// A frame and its share of the link's byte budget, returned when it leaves the queue; on an
    /// emulated link, also when its last byte arrives.
    Frame(OutFrame, OwnedSemaphorePermit, Option<Instant>),
    /// Answered once every frame queued before it has been written.
    Flush(oneshot::Sender<()>),
}

/// The sending half of a link. Cheap to clone; any task may send.
#[derive(Clone, Debug)]
pub struct LinkTx {
    tx: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
    stats: Arc<LinkStats>,
    /// Whether a writer task sits between us and the peer (TCP); in-process sends land in the
    /// peer's queue directly, so there is nothing to flush.
    writer: bool,
    /// The emulated wire of an in-process link, if its network has one.
    pipe: Option<Arc<Pipe>>,
}

/// An emulated network for in-process links: each direction of each link is a pipe of
/// `gbit_s` bandwidth and `latency` one-way delay. Frames leave one after another and each
/// arrives when its last byte would, so transfer time costs the clock, not the CPU, as on a real
/// network (on loopback TCP, moving bytes is CPU work that competes with everything else).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LinkModel {
    /// Bandwidth per direction, Gbit/s.
    pub gbit_s: f64,
    /// One-way delay.
    pub latency: std::time::Duration,
}

impl LinkModel {
    /// A model, if `gbit_s` is a positive finite bandwidth.
    pub fn new(gbit_s: f64, latency: std::time::Duration) -> Result<Self, String> {
        if !(gbit_s.is_finite() && gbit_s > 0.0) {
            return Err(format!("an emulated link needs a positive bandwidth in Gbit/s (got {gbit_s})"));
        }
        Ok(Self { gbit_s, latency })
    }

    fn transfer_time(&self, bytes: usize) -> std::time::Duration {
        std::time::Duration::from_secs_f64(bytes as f64 * 8.0 / (self.gbit_s * 1e9))
    }
}

/// One direction of an emulated link.
#[derive(Debug)]
struct Pipe {
    model: LinkModel,
    /// When the last queued frame's last byte leaves.
    free_at: Mutex<Instant>,
}

impl Pipe {
    /// When a frame of `bytes` sent now arrives.
    fn arrival(&self, bytes: usize) -> Instant {
        let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        let done = (*free_at).max(Instant::now()) + self.model.transfer_time(bytes);
        *free_at = done;
        done + self.model.latency
    }
}

impl LinkTx {
    /// Queues a frame; waits while the queue is full. Fails once the link is closed.
    pub async fn send(&self, frame: OutFrame) -> Result<(), LinkError> {
        let payload = frame.payload_len();
        let share = u32::try_from(payload.clamp(1, QUEUE_BYTES)).expect("QUEUE_BYTES fits a u32");
        let permit = self.budget.clone().acquire_many_owned(share).await.expect("the budget is never closed");
        let arrival = self.pipe.as_ref().map(|p| p.arrival(HEADER_LEN + payload));
        self.tx.send(Outgoing::Frame(frame, permit, arrival)).await.map_err(|_| LinkError::Closed)?;
        self.stats.on_send(payload);
        Ok(())
    }

    /// Waits until every frame queued so far has been handed to the operating system (TCP) or
    /// to the peer's queue (in-process). Returns at once if the link is closed.
    pub async fn flush(&self) {
        if !self.writer {
            return;
        }
        let (done, written) = oneshot::channel();
        if self.tx.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// This link's counters.
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }
}

enum RxInner {
    Tcp { rd: OwnedReadHalf, buf: BytesMut },
    Inproc { rx: mpsc::Receiver<Outgoing> },
}

/// The receiving half of a link.
pub struct LinkRx {
    inner: RxInner,
    limits: Limits,
    stats: Arc<LinkStats>,
}

impl fmt::Debug for LinkRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            RxInner::Tcp { .. } => "tcp",
            RxInner::Inproc { .. } => "inproc",
        };
        f.debug_struct("LinkRx").field("transport", &kind).field("limits", &self.limits).finish()
    }
}

impl LinkRx {
    /// The next frame; `Ok(None)` when the peer closed the link cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Frame>, LinkError> {
        let frame = match &mut self.inner {
            RxInner::Tcp { rd, buf } => loop {
                if let Some(frame) = wire::decode_frame(buf, &self.limits)? {
                    break frame;
                }
                if buf.capacity() - buf.len() < READ_CHUNK {
                    buf.reserve(READ_CHUNK);
                }
                if rd.read_buf(buf).await? == 0 {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let need = match wire::HeaderRepr::parse_bytes(buf, &self.limits) {
                        Ok(h) => HEADER_LEN + h.payload_len as usize,
                        Err(_) => HEADER_LEN,
                    };
                    return Err(LinkError::Truncated { have: buf.len(), need });
                }
            },
            RxInner::Inproc { rx } => loop {
                match rx.recv().await {
                    // Dropping the permit here: the frame is ours now, no longer queued.
                    Some(Outgoing::Frame(out, _permit, arrival)) => {
                        if let Some(at) = arrival {
                            tokio::time::sleep_until(at).await;
                        }
                        break Frame::from_out(out, &self.limits)?;
                    }
                    // Never sent in-process (see `LinkTx::flush`); answering it is harmless.
                    Some(Outgoing::Flush(done)) => {
                        let _ = done.send(());
                    }
                    None => return Ok(None),
                }
            },
        };
        self.stats.on_receive(frame.payload_len());
        Ok(Some(frame))
    }

    /// Changes the size limit (e.g. once the job's configuration is known).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The size limit in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// This link's counters.
    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }
}

/// Both halves of a link plus where it goes.
#[derive(Debug)]
pub struct Connection {
    /// Sending half.
    pub tx: LinkTx,
    /// Receiving half.
    pub rx: LinkRx,
    /// The peer's address, for messages.
    pub peer: String,
    /// Our own socket address (TCP only): the address peers reach this host at.
    pub local: Option<SocketAddr>,
}

impl Connection {
    fn tcp(stream: TcpStream, limits: Limits) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        // A peer whose host vanishes sends no FIN: keepalive turns the silence into an error.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        let peer = stream.peer_addr()?.to_string();
        let local = Some(stream.local_addr()?);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let to = peer.clone();
        tokio::spawn(async move {
            if let Err(e) = write_loop(wr, rx).await {
                tracing::debug!("writing to {to} failed: {e}");
            }
        });
        let stats = Arc::new(LinkStats::default());
        Ok(Self {
            tx: LinkTx {
                tx,
                budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
                stats: stats.clone(),
                writer: true,
                pipe: None,
            },
            rx: LinkRx { inner: RxInner::Tcp { rd, buf: BytesMut::with_capacity(READ_CHUNK) }, limits, stats },
            peer,
            local,
        })
    }

    /// Two connected in-process ends.
    fn inproc_pair(a_name: &str, b_name: &str, limits: Limits, model: Option<LinkModel>) -> (Self, Self) {
        let (a_tx, b_rx) = mpsc::channel(QUEUE_FRAMES);
        let (b_tx, a_rx) = mpsc::channel(QUEUE_FRAMES);
        let end = |tx, rx, peer: &str| {
            let stats = Arc::new(LinkStats::default());
            Self {
                tx: LinkTx {
                    tx,
                    budget: Arc::new(Semaphore::new(QUEUE_BYTES)),
                    stats: stats.clone(),
                    writer: false,
                    pipe: model.map(|model| Arc::new(Pipe { model, free_at: Mutex::new(Instant::now()) })),
                },
                rx: LinkRx { inner: RxInner::Inproc { rx }, limits, stats },
                peer: peer.to_owned(),
                local: None,
            }
        };
        (end(a_tx, a_rx, b_name), end(b_tx, b_rx, a_name))
    }
}

/// Writes queued frames, gathering up to [`WRITE_BATCH`] of them into each vectored write.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) -> io::Result<()> {
    let mut batch: Vec<OutFrame> = Vec::with_capacity(WRITE_BATCH);
    let mut permits = Vec::with_capacity(WRITE_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(f, permit, _) => {
                    batch.push(f);
                    permits.push(permit);
                }
                Outgoing::Flush(done) => flushes.push(done),
            }
            if batch.len() < WRITE_BATCH && flushes.is_empty() {
                next = rx.try_recv().ok();
            }
        }
        let mut slices: Vec<IoSlice<'_>> = batch
            .iter()
            .flat_map(|f| [IoSlice::new(&f.header), IoSlice::new(&f.payload), IoSlice::new(&f.bulk)])
            .filter(|s| !s.is_empty())
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = wr.write_vectored(rest).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        drop(slices);
        batch.clear();
        permits.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    wr.shutdown().await
}

type InprocAcceptor = mpsc::Sender<Connection>;

/// A registry of in-process endpoints: the "network" of a local cluster.
#[derive(Clone, Debug, Default)]
pub struct InprocNet {
    endpoints: Arc<Mutex<HashMap<String, InprocAcceptor>>>,
    next_id: Arc<AtomicU64>,
    /// The emulated wire of every link, if any.
    model: Option<LinkModel>,
}

/// The network a node lives on.
#[derive(Clone, Debug)]
pub enum Net {
    /// TCP sockets; addresses are `host:port`.
    Tcp,
    /// In-process links; addresses are names.
    Inproc(InprocNet),
}

impl Net {
    /// A network of the given transport (a fresh in-process registry for [`Transport::Inproc`]).
    pub fn new(transport: Transport) -> Self {
        match transport {
            Transport::Tcp => Self::Tcp,
            Transport::Inproc => Self::Inproc(InprocNet::default()),
        }
    }

    /// An in-process network whose links are emulated wires of `model`.
    pub fn emulated(model: LinkModel) -> Self {
        Self::Inproc(InprocNet { model: Some(model), ..Default::default() })
    }

    /// Listens at `addr` (`host:port`, port 0 picks one; or any name for in-process, where a
    /// name ending in `*` gets a unique suffix).
    pub async fn listen(&self, addr: &str, limits: Limits) -> io::Result<Listener> {
        match self {
            Self::Tcp => Ok(Listener::Tcp { listener: TcpListener::bind(addr).await?, limits }),
            Self::Inproc(net) => {
                let name = match addr.strip_suffix('*') {
                    Some(prefix) => format!("{prefix}{}", net.next_id.fetch_add(1, Ordering::Relaxed)),
                    None => addr.to_owned(),
                };
                let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
                let mut eps = net.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
                if eps.contains_key(&name) {
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("in-process name '{name}' is taken")));
                }
                eps.insert(name.clone(), tx);
                Ok(Listener::Inproc { name, rx, net: net.clone() })
            }
        }
    }

    /// Connects to `addr`.
    pub async fn connect(&self, addr: &str, limits: Limits) -> Result<Connection, LinkError> {
        match self {
            Self::Tcp => Ok(Connection::tcp(TcpStream::connect(addr).await?, limits)?),
            Self::Inproc(net) => {
                let acceptor = net
                    .endpoints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(addr)
                    .cloned()
                    .ok_or_else(|| LinkError::NoEndpoint(addr.to_owned()))?;
                let me = format!("inproc-client-{}", net.next_id.fetch_add(1, Ordering::Relaxed));
                let (ours, theirs) = Connection::inproc_pair(&me, addr, limits, net.model);
                acceptor.send(theirs).await.map_err(|_| LinkError::NoEndpoint(addr.to_owned()))?;
                Ok(ours)
            }
        }
    }
}

/// Accepts connections.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp {
        /// The socket.
        listener: TcpListener,
        /// Limits for accepted links.
        limits: Limits,
    },
    /// An in-process endpoint.
    Inproc {
        /// Its name.
        name: String,
        /// Incoming connections.
        rx: mpsc::Receiver<Connection>,
        /// The registry, to unregister on drop.
        net: InprocNet,
    },
}

impl Listener {
    /// The address peers connect to.
    pub fn local_addr(&self) -> io::Result<String> {
        match self {
            Self::Tcp { listener, .. } => Ok(listener.local_addr()?.to_string()),
            Self::Inproc { name, .. } => Ok(name.clone()),
        }
    }

    /// Changes the limits of connections accepted from now on (in-process links take the
    /// connecting side's limits).
    pub fn set_limits(&mut self, new: Limits) {
        if let Self::Tcp { limits, .. } = self {
            *limits = new;
        }
    }

    /// The next connection.
    pub async fn accept(&mut self) -> io::Result<Connection> {
        match self {
            Self::Tcp { listener, limits } => {
                let (stream, _) = listener.accept().await?;
                Connection::tcp(stream, *limits)
            }
            Self::Inproc { rx, .. } => rx.recv().await.ok_or_else(|| io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Inproc { name, net, .. } = self {
            net.endpoints.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Kind, Message};
    use bytes::Bytes;

    async fn pair(net: &Net) -> (Connection, Connection) {
        let mut l =
            net.listen(if matches!(net, Net::Tcp) { "127.0.0.1:0" } else { "srv" }, Limits::default()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(net.connect(&addr, Limits::default()), l.accept());
        (a.unwrap(), b.unwrap())
    }

    #[tokio::test]
    async fn both_transports_move_frames_and_count_the_same_bytes() {
        let mut counts = Vec::new();
        for net in [Net::Tcp, Net::new(Transport::Inproc)] {
            let (a, mut b) = pair(&net).await;
            let frames = [
                Message::Start.encode(0).unwrap(),
                OutFrame::new(Kind::PullReply, 5, Bytes::from(vec![7u8; 300_000])).unwrap(),
                wire::encode_push_bulk(6, 1, None, wire::KeysRef::List(&[4]), Bytes::from(vec![1u8; 4000])).unwrap(),
                Message::Abort { reason: "x".into() }.encode(9).unwrap(),
            ];
            for f in frames.clone() {
                a.tx.send(f).await.unwrap();
            }
            for f in &frames {
                let got = b.rx.recv().await.unwrap().unwrap();
                assert_eq!(
                    (got.kind, got.request_id, got.message()),
                    (f.kind(), f.request_id(), Frame::from_out(f.clone(), &Limits::default()).unwrap().message())
                );
            }
            a.tx.flush().await;
            drop(a.tx);
            assert!(b.rx.recv().await.unwrap().is_none(), "a clean close between frames");
            let sent = a.rx.stats().snapshot();
            let received = b.rx.stats().snapshot();
            assert_eq!((sent.header_sent, sent.payload_sent), (received.header_received, received.payload_received));
            assert_eq!(sent.header_sent, 4 * HEADER_LEN as u64);
            counts.push(sent);
        }
        assert_eq!(counts[0], counts[1], "tcp and inproc count identical bytes");
    }

    // Paused clock: the timeout below elapses only once every task is idle, i.e. once the sender
    // can make no more progress, so "stalled" is a fact, not a race.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_holds_up_its_sender_not_unbounded_memory() {
        for net in [Net::Tcp, Net::new(Transport::Inproc)] {
            let (a, mut b) = pair(&net).await;
            let frame = || OutFrame::new(Kind::PullReply, 1, Bytes::from(vec![0u8; 4 << 20])).unwrap();
            // Far more than the budget, sent while nobody reads: the sender must stall.
            let sender = tokio::spawn(async move {
                for _ in 0..64 {
                    a.tx.send(frame()).await.unwrap();
                }
                a
            });
            let mut sender = sender;
            let stalled = tokio::time::timeout(std::time::Duration::from_secs(3600), &mut sender).await.is_err();
            assert!(stalled, "{net:?}: 256 MiB were queued for a peer that reads nothing");
            // Once the peer reads, everything arrives.
            for _ in 0..64 {
                b.rx.recv().await.unwrap().unwrap();
            }
            sender.await.unwrap();
        }
    }

    // Paused clock: time moves only by the emulated wire's sleeps, so arrival times are exact.
    #[tokio::test(start_paused = true)]
    async fn an_emulated_link_delivers_each_frame_when_its_last_byte_arrives() {
        let model = LinkModel::new(1.0, std::time::Duration::from_micros(100)).unwrap();
        let (a, mut b) = pair(&Net::emulated(model)).await;
        let start = Instant::now();
        let payload = 1_000_000 - HEADER_LEN;
        for id in 1..=3 {
            a.tx.send(OutFrame::new(Kind::PullReply, id, Bytes::from(vec![0u8; payload])).unwrap()).await.unwrap();
        }
        for id in 1..=3u64 {
            let frame = b.rx.recv().await.unwrap().unwrap();
            assert_eq!(frame.request_id, id, "in order");
            // 8 ms per megabyte at 1 Gbit/s, frames back to back, plus the one-way delay.
            let expect = std::time::Duration::from_micros(8_000 * id + 100);
            let took = start.elapsed();
            assert!(took >= expect && took < expect + std::time::Duration::from_millis(2), "frame {id} at {took:?}");
        }
        assert!(LinkModel::new(0.0, Default::default()).unwrap_err().contains("positive bandwidth"));
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_by_both_transports() {
        for net in [Net::Tcp, Net::new(Transport::Inproc)] {
            let (a, mut b) = pair(&net).await;
            b.rx.set_limits(Limits { max_frame: 1000 });
            a.tx.send(OutFrame::new(Kind::PullReply, 1, Bytes::from(vec![0u8; 1001])).unwrap()).await.unwrap();
            let err = b.rx.recv().await.unwrap_err();
            assert!(matches!(err, LinkError::Wire(WireError::TooLarge { len: 1001, max: 1000 })), "{err}");
        }
    }

    #[tokio::test]
    async fn a_peer_vanishing_mid_frame_is_an_error() {
        let net = Net::Tcp;
        let mut l = net.listen("127.0.0.1:0", Limits::default()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        let mut b = l.accept().await.unwrap();
        let f = OutFrame::new(Kind::PullReply, 1, Bytes::from(vec![1u8; 100])).unwrap();
        raw.write_all(&f.header).await.unwrap();
        raw.write_all(&f.payload[..40]).await.unwrap();
        drop(raw);
        let err = b.rx.recv().await.unwrap_err();
        assert!(matches!(err, LinkError::Truncated { have: 56, need: 116 }), "{err}");
    }

    #[tokio::test]
    async fn inproc_names_are_unique_and_released() {
        let net = Net::new(Transport::Inproc);
        let l = net.listen("server", Limits::default()).await.unwrap();
        assert!(net.listen("server", Limits::default()).await.is_err());
        drop(l);
        assert!(matches!(net.connect("server", Limits::default()).await, Err(LinkError::NoEndpoint(_))));
        let a = net.listen("w*", Limits::default()).await.unwrap();
        let b = net.listen("w*", Limits::default()).await.unwrap();
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }
}
