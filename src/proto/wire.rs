//! Frames: the byte layout of everything paramserv nodes say to each other.
//!
//! A frame is a 16-byte header followed by `len` payload bytes. All integers are little-endian.
//!
//! ```text
//!  0      2    3    4          8                  16
//!  +------+----+----+----------+------------------+-------------------
//!  | "PS" | ver| kind| len u32 | request id u64   | payload (len bytes)
//!  +------+----+----+----------+------------------+-------------------
//! ```
//!
//! The request id ties a reply to its request; unsolicited messages use id 0. Each [`Message`]
//! variant has one kind byte and a fixed payload layout, documented on the variant.
//!
//! Pulls and pushes name their rows with a key set, in one of three forms (see [`KeySet`]):
//!
//! ```text
//!  tag 0  range        [0][start u64][end u64]
//!  tag 1  fixed list   [1][n u32][n × key u64]
//!  tag 2  delta list   [2][len u32][len bytes: paramserv_codecs::encode_keys of the keys]
//! ```
//!
//! A sender writes a list in the delta form when its keys strictly ascend and there are at most
//! [`MAX_DELTA_KEYS`] of them, and in the fixed form otherwise (unsorted or repeated keys, whose
//! order the reply must keep, or a job with [`KeyCoding::Fixed`]). Sorted sparse keys then cost their gaps' bit width instead of 8
//! bytes each. A receiver reads either into the same [`KeyList`].
//!
//! Guarantees: decoding never panics, whatever the bytes. Every length taken from the wire is
//! checked against the bytes that are actually there, and the frame length is checked against the
//! configured [`Limits::max_frame`] before a buffer is reserved for it. Bulk data (values, and the
//! keys of a fixed list) comes back as [`Bytes`] slices of the received payload, not copies; a
//! delta list is decoded into a buffer of its own, at most [`Limits::max_delta_keys`] keys long.
//!
//! Zero copy on the way out: a frame's payload may be held in two pieces, a small `head` (fixed
//! fields and keys) and a `bulk` buffer (values) that the sender already had as [`Bytes`]. The
//! payload is their concatenation: TCP writes both with one vectored write, an in-process link
//! hands both over, and the decoder reads across the seam, so no side ever copies the values to
//! put them into a frame.
//!
//! Three outcomes are kept apart: [`decode_frame`] returns `Ok(None)` when it needs more bytes, a
//! [`WireError`] when the stream is corrupt (the connection must close), and a frame whose payload
//! fails [`Message::decode`] is one bad request that gets an error reply.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use paramserv_codecs::CodecError;

use super::partition::KeyRange;

/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"PS";
/// Version of the frame layout and of the message set.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Bytes in a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes in a handshake proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Most keys a sender puts in a delta-coded key list: as many as a fixed list carries in a frame
/// of [`Limits::DEFAULT_MAX_FRAME`]. A receiver caps what it decodes by its own limit, see
/// [`Limits::max_delta_keys`].
pub const MAX_DELTA_KEYS: usize = Limits::DEFAULT_MAX_FRAME as usize / 8;

mod field {
    use std::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const KIND: usize = 3;
    pub(super) const LEN: Range<usize> = 4..8;
    pub(super) const REQUEST: Range<usize> = 8..16;
}

/// Table identifier: the table's index in the job configuration.
pub type TableId = u32;

/// Why bytes could not be read as a frame or a message.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a field needs.
    #[error("truncated: needed {need} bytes, had {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The frame does not start with the magic bytes: not a paramserv peer.
    #[error("bad magic {0:02x?}: not a paramserv frame")]
    BadMagic([u8; 2]),
    /// The peer speaks another version of the protocol.
    #[error("peer speaks wire version {0}, this build speaks {VERSION}")]
    UnsupportedVersion(u8),
    /// A kind byte no message has.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A frame longer than the configured maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length the header announced.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// Bytes left over after the message was read.
    #[error("{extra} unexpected trailing bytes in a {kind} message")]
    Trailing {
        /// The message kind.
        kind: Kind,
        /// Bytes left over.
        extra: usize,
    },
    /// A field holds a value its type does not allow.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// Caps on what a peer may make us allocate.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Limits {
    /// Largest frame payload accepted, in bytes.
    pub max_frame: u32,
}

impl Limits {
    /// Default cap: 64 MiB, far above what one request carries (workers split requests into
    /// chunks of a few MiB) and far below what would hurt a server.
    pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

    /// Most keys a received delta-coded list may decode to: as many as a fixed list carries in a
    /// frame of `max_frame` bytes (and never more than [`MAX_DELTA_KEYS`]). A delta list can code
    /// a key in a bit, so without this a frame within the limit could make the receiver allocate
    /// 64 times more for its keys than the limit lets a fixed list cost.
    pub fn max_delta_keys(&self) -> usize {
        (self.max_frame as usize / 8).min(MAX_DELTA_KEYS)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame: Self::DEFAULT_MAX_FRAME }
    }
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $val:expr,)*) => {
        /// The message kind byte of a frame header.
        #[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
        #[repr(u8)]
        pub enum Kind { $($(#[$doc])* $name = $val,)* }

        impl TryFrom<u8> for Kind {
            type Error = WireError;
            fn try_from(b: u8) -> Result<Self> {
                match b { $($val => Ok(Self::$name),)* other => Err(WireError::UnknownKind(other)) }
            }
        }

        impl fmt::Display for Kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$name => stringify!($name),)* })
            }
        }
    };
}

kinds! {
    /// Acceptor's handshake opener.
    Challenge = 1,
    /// Initiator's handshake answer.
    Hello = 2,
    /// Handshake accepted.
    Welcome = 3,
    /// Handshake or join refused.
    Refused = 4,
    /// A node asks to join the cluster.
    Join = 10,
    /// The coordinator hands a node its ranks and the job.
    Assign = 11,
    /// A server shard is built and serving.
    Ready = 12,
    /// Every server is ready: workers may start.
    Start = 13,
    /// A worker arrives at a barrier.
    Barrier = 14,
    /// Every worker arrived at a barrier.
    Release = 15,
    /// A worker has finished.
    Leave = 16,
    /// The job is over: exit cleanly.
    Shutdown = 17,
    /// The job failed: exit with an error.
    Abort = 18,
    /// Liveness: the coordinator asks, a node answers.
    Heartbeat = 19,
    /// Read rows.
    Pull = 20,
    /// Rows read.
    PullReply = 21,
    /// Add gradients to rows.
    Push = 22,
    /// Gradients applied.
    PushAck = 23,
    /// A request failed.
    Error = 24,
    /// A worker finished a step (to the coordinator).
    Clock = 30,
    /// The coordinator's answer: the worker's next step.
    ClockAck = 31,
    /// Every worker finished the steps before `complete` (to servers).
    Progress = 32,
    /// A step is committed with these workers' pushes (to servers, backup workers).
    Commit = 33,
}

/// A checked view over a frame header. Once [`FrameHeader::new_checked`] succeeded, no accessor
/// can panic.
#[derive(Clone, Copy, Debug)]
pub struct FrameHeader<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> FrameHeader<T> {
    /// Wraps `buf` after checking it holds a whole header with our magic and version.
    pub fn new_checked(buf: T) -> Result<Self> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { need: HEADER_LEN, have: b.len() });
        }
        let magic = [b[field::MAGIC.start], b[field::MAGIC.start + 1]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion(b[field::VERSION]));
        }
        Ok(Self { buf })
    }

    /// The raw kind byte.
    pub fn kind(&self) -> u8 {
        self.buf.as_ref()[field::KIND]
    }

    /// Payload length announced by the header.
    pub fn payload_len(&self) -> u32 {
        let mut b = &self.buf.as_ref()[field::LEN];
        b.get_u32_le()
    }

    /// Request id.
    pub fn request_id(&self) -> u64 {
        let mut b = &self.buf.as_ref()[field::REQUEST];
        b.get_u64_le()
    }
}

/// An owned, validated frame header.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct HeaderRepr {
    /// Message kind.
    pub kind: Kind,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// Request id (0 for unsolicited messages).
    pub request_id: u64,
}

impl HeaderRepr {
    /// Parses a checked header, enforcing `limits`.
    pub fn parse<T: AsRef<[u8]>>(hdr: &FrameHeader<T>, limits: &Limits) -> Result<Self> {
        let payload_len = hdr.payload_len();
        if payload_len > limits.max_frame {
            return Err(WireError::TooLarge { len: payload_len.into(), max: limits.max_frame.into() });
        }
        Ok(Self { kind: Kind::try_from(hdr.kind())?, payload_len, request_id: hdr.request_id() })
    }

    /// Parses the first [`HEADER_LEN`] bytes of `bytes`.
    pub fn parse_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        Self::parse(&FrameHeader::new_checked(bytes)?, limits)
    }

    /// Writes the header into `out`, which must be exactly [`HEADER_LEN`] bytes.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION] = VERSION;
        out[field::KIND] = self.kind as u8;
        out[field::LEN].copy_from_slice(&self.payload_len.to_le_bytes());
        out[field::REQUEST].copy_from_slice(&self.request_id.to_le_bytes());
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.emit(&mut out);
        out
    }
}

/// A frame ready to send: the header and the payload's two pieces, kept apart so a transport can
/// write them with one vectored call and an in-process link can hand them over without copying.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct OutFrame {
    /// Encoded header.
    pub header: [u8; HEADER_LEN],
    /// First part of the payload.
    pub payload: Bytes,
    /// Rest of the payload (often empty): a buffer the sender already held.
    pub bulk: Bytes,
}

impl OutFrame {
    /// Builds a frame from a kind, request id and an already encoded payload.
    ///
    /// Fails with [`WireError::TooLarge`] if the payload does not fit the header's length field.
    pub fn new(kind: Kind, request_id: u64, payload: Bytes) -> Result<Self> {
        Self::with_bulk(kind, request_id, payload, Bytes::new())
    }

    /// Builds a frame whose payload is `head` followed by `bulk`.
    pub fn with_bulk(kind: Kind, request_id: u64, head: Bytes, bulk: Bytes) -> Result<Self> {
        let len = head.len() as u64 + bulk.len() as u64;
        let payload_len = u32::try_from(len).map_err(|_| WireError::TooLarge { len, max: u32::MAX.into() })?;
        let header = HeaderRepr { kind, payload_len, request_id }.to_bytes();
        Ok(Self { header, payload: head, bulk })
    }

    /// Payload bytes (both pieces).
    pub fn payload_len(&self) -> usize {
        self.payload.len() + self.bulk.len()
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The payload as one contiguous buffer (copies only if it is in two non-empty pieces).
    pub fn contiguous_payload(&self) -> Bytes {
        match (self.payload.is_empty(), self.bulk.is_empty()) {
            (_, true) => self.payload.clone(),
            (true, false) => self.bulk.clone(),
            (false, false) => [&self.payload[..], &self.bulk[..]].concat().into(),
        }
    }

    /// The kind recorded in the header.
    pub fn kind(&self) -> Kind {
        Kind::try_from(self.header[field::KIND]).expect("an OutFrame is only built from a Kind")
    }

    /// The request id recorded in the header.
    pub fn request_id(&self) -> u64 {
        FrameHeader::new_checked(&self.header[..])
            .expect("an OutFrame header is emitted by HeaderRepr::emit")
            .request_id()
    }
}

/// A received frame: header fields and the payload, not yet decoded.
///
/// The payload is `payload` followed by `bulk`; a frame read from a byte stream has it all in
/// `payload`, a frame handed over in-process keeps the sender's two pieces.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Frame {
    /// Message kind.
    pub kind: Kind,
    /// Request id.
    pub request_id: u64,
    /// First part of the payload.
    pub payload: Bytes,
    /// Rest of the payload (empty for frames read from a stream).
    pub bulk: Bytes,
    /// The receiver's limits the frame was checked against; decoding the message keeps to them.
    pub limits: Limits,
}

impl Frame {
    /// Decodes the payload as the message its kind names, within the receiver's limits.
    pub fn message(&self) -> Result<Message> {
        Message::decode_within(self.kind, self.payload.clone(), self.bulk.clone(), &self.limits)
    }

    /// Payload bytes (both pieces).
    pub fn payload_len(&self) -> usize {
        self.payload.len() + self.bulk.len()
    }

    /// Builds a received frame from a sent one, checking the header as a receiver would.
    pub fn from_out(out: OutFrame, limits: &Limits) -> Result<Self> {
        let hdr = HeaderRepr::parse_bytes(&out.header, limits)?;
        if hdr.payload_len as usize != out.payload_len() {
            return Err(WireError::Invalid {
                field: "frame length",
                detail: format!("header says {} bytes, payload has {}", hdr.payload_len, out.payload_len()),
            });
        }
        Ok(Self { kind: hdr.kind, request_id: hdr.request_id, payload: out.payload, bulk: out.bulk, limits: *limits })
    }
}

/// Most bytes reserved ahead of what has arrived: a bare header announcing a large frame cannot
/// make a connection cost more than this before the payload actually comes.
const RESERVE_AHEAD: usize = 4 << 20;

/// Takes one whole frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame; in that case it reserves room for
/// the rest of the frame (after checking the length against `limits`; at most 4 MiB
/// at a time), so the caller's next reads fill it without reallocating. An error means the
/// stream is corrupt.
pub fn decode_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let hdr = HeaderRepr::parse_bytes(&buf[..HEADER_LEN], limits)?;
    let total = HEADER_LEN + hdr.payload_len as usize;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    let payload = frame.freeze();
    Ok(Some(Frame { kind: hdr.kind, request_id: hdr.request_id, payload, bulk: Bytes::new(), limits: *limits }))
}

/// Which rows a request names: a key range (no key per row on the wire) or a list of keys.
///
/// On the wire a key set is a tag byte and its fields:
///
/// * tag 0, a range: `start u64, end u64`.
/// * tag 1, a fixed list: `n u32, n × key u64`.
/// * tag 2, a delta list: `len u32` and `len` bytes of [`paramserv_codecs::encode_keys`] output
///   (the key count, then the gaps between strictly ascending keys as varints or bit-packed
///   blocks, whichever is smaller), at most [`MAX_DELTA_KEYS`] keys.
///
/// The encoder picks the list form from the keys: delta when they strictly ascend and are at
/// most [`MAX_DELTA_KEYS`], fixed otherwise. The decoder takes both forms, so a received fixed
/// list of ascending keys is valid, though this build never sends one.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum KeySet {
    /// The keys of `[start, end)` that the receiving shard holds, ascending.
    Range(KeyRange),
    /// Explicit keys in request order, held as 8 bytes each, little-endian, whichever form they
    /// came in.
    List(KeyList),
}

impl KeySet {
    const TAG_RANGE: u8 = 0;
    const TAG_LIST: u8 = 1;
    const TAG_DELTA: u8 = 2;
}

/// A list of `u64` keys kept as received bytes (a multiple of 8 long).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyList {
    bytes: Bytes,
}

impl KeyList {
    /// Wraps bytes that hold whole keys.
    pub fn from_bytes(bytes: Bytes) -> Result<Self> {
        if !bytes.len().is_multiple_of(8) {
            return Err(WireError::Invalid {
                field: "key list",
                detail: format!("{} bytes is not a whole number of 8-byte keys", bytes.len()),
            });
        }
        Ok(Self { bytes })
    }

    /// Encodes keys.
    pub fn from_keys(keys: &[u64]) -> Self {
        let mut b = BytesMut::with_capacity(keys.len() * 8);
        put_keys(keys, &mut b);
        Self { bytes: b.freeze() }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.bytes.len() / 8
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The keys in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("chunk of 8")))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// The keys of a request as the sender holds them, for encoding without an intermediate copy.
#[derive(Clone, Copy, Debug)]
pub enum KeysRef<'a> {
    /// A key range.
    Range(KeyRange),
    /// Explicit keys, delta-coded on the wire when they strictly ascend.
    List(&'a [u64]),
    /// Explicit keys, 8 bytes each on the wire whatever their order ([`KeyCoding::Fixed`]).
    FixedList(&'a [u64]),
}

impl<'a> KeysRef<'a> {
    /// `keys` as a list in the form `coding` names.
    pub fn list(keys: &'a [u64], coding: KeyCoding) -> Self {
        match coding {
            KeyCoding::Delta => Self::List(keys),
            KeyCoding::Fixed => Self::FixedList(keys),
        }
    }
}

/// How a sender writes the key lists of its pulls and pushes. Receivers read both forms whatever
/// they send.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyCoding {
    /// Strictly ascending lists as the gaps between keys (varints or bit-packed blocks), others
    /// 8 bytes a key: fewer bytes (2.9x fewer on the wire in `bench sparse`), more CPU.
    #[default]
    Delta,
    /// Every list 8 bytes a key: no coding work, for links faster than the coder.
    Fixed,
}

impl KeyCoding {
    /// Whether this is [`KeyCoding::Delta`], the default.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl std::str::FromStr for KeyCoding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "delta" => Ok(Self::Delta),
            "fixed" => Ok(Self::Fixed),
            other => Err(format!("unknown key coding '{other}' (expected 'delta' or 'fixed')")),
        }
    }
}

impl fmt::Display for KeyCoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delta => "delta",
            Self::Fixed => "fixed",
        })
    }
}

/// A key set in the form it goes on the wire. A delta list is encoded when this is built, once,
/// so the frame buffer can be sized exactly before anything is written.
enum WireKeys<'a> {
    /// Tag 0.
    Range(KeyRange),
    /// Tag 1, from the sender's keys.
    Fixed(&'a [u64]),
    /// Tag 1, from keys already held as 8-byte little-endian bytes.
    FixedBytes(&'a KeyList),
    /// Tag 2: the output of [`paramserv_codecs::encode_keys`].
    Delta(Vec<u8>),
}

impl<'a> WireKeys<'a> {
    fn new(keys: KeysRef<'a>) -> Result<Self> {
        Ok(match keys {
            KeysRef::Range(r) => Self::Range(r),
            KeysRef::List(k) if let Some(coded) = delta_encode(k) => Self::Delta(coded),
            KeysRef::List(k) | KeysRef::FixedList(k) => {
                len_u32(k.len(), "key list")?;
                Self::Fixed(k)
            }
        })
    }

    fn of_set(keys: &'a KeySet) -> Result<Self> {
        Ok(match keys {
            KeySet::Range(r) => Self::Range(*r),
            KeySet::List(l) if let Some(coded) = delta_encode(&l.iter().collect::<Vec<_>>()) => Self::Delta(coded),
            KeySet::List(l) => {
                len_u32(l.len(), "key list")?;
                Self::FixedBytes(l)
            }
        })
    }

    /// Bytes [`Self::put`] writes.
    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Range(_) => 16,
            Self::Fixed(k) => 4 + k.len() * 8,
            Self::FixedBytes(l) => 4 + l.as_bytes().len(),
            Self::Delta(d) => 4 + d.len(),
        }
    }

    fn put(&self, out: &mut BytesMut) {
        match self {
            Self::Range(r) => {
                out.put_u8(KeySet::TAG_RANGE);
                out.put_u64_le(r.start());
                out.put_u64_le(r.end());
            }
            Self::Fixed(keys) => {
                out.put_u8(KeySet::TAG_LIST);
                out.put_u32_le(u32::try_from(keys.len()).expect("key count checked in WireKeys::new"));
                put_keys(keys, out);
            }
            Self::FixedBytes(list) => {
                out.put_u8(KeySet::TAG_LIST);
                out.put_u32_le(u32::try_from(list.len()).expect("key count checked in WireKeys::of_set"));
                out.put_slice(list.as_bytes());
            }
            Self::Delta(d) => {
                out.put_u8(KeySet::TAG_DELTA);
                out.put_u32_le(u32::try_from(d.len()).expect("MAX_DELTA_KEYS keys take less than 4 GiB"));
                out.put_slice(d);
            }
        }
    }
}

/// The delta form of `keys`, or `None` when a list goes in the fixed form: more than
/// [`MAX_DELTA_KEYS`] keys, or keys that do not strictly ascend (`encode_keys` finds out in the
/// same pass that sizes the coding).
fn delta_encode(keys: &[u64]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    (keys.len() <= MAX_DELTA_KEYS && paramserv_codecs::encode_keys(keys, &mut out).is_ok()).then_some(out)
}

fn put_keys(keys: &[u64], out: &mut BytesMut) {
    out.reserve(keys.len() * 8);
    for k in keys {
        out.put_u64_le(*k);
    }
}

/// Which worker's which step a pull or push belongs to (see [`super::consistency`]).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Step {
    /// Worker rank.
    pub worker: u32,
    /// The worker's step.
    pub step: u64,
}

/// The role a node announces when it says hello.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum PeerRole {
    /// A node joining the coordinator.
    Node = 1,
    /// A worker connecting to a server.
    Worker = 2,
    /// Anything else (tools, tests).
    Client = 3,
}

impl TryFrom<u8> for PeerRole {
    type Error = WireError;
    fn try_from(b: u8) -> Result<Self> {
        match b {
            1 => Ok(Self::Node),
            2 => Ok(Self::Worker),
            3 => Ok(Self::Client),
            other => Err(invalid("peer role", format!("unknown role {other}"))),
        }
    }
}

/// Handshake answer: who is connecting, for which job, and proof of the shared secret.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Hello {
    /// Protocol version the peer speaks.
    pub version: u16,
    /// Role of the connecting peer.
    pub role: PeerRole,
    /// Job the peer belongs to.
    pub job_id: String,
    /// The initiator's own challenge: the acceptor's welcome must prove the secret over it.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC over the acceptor's challenge, present when the peer has a secret.
    pub proof: Option<[u8; PROOF_LEN]>,
}

/// What a joining node offers the cluster.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Join {
    /// Whether the node hosts a server shard.
    pub server: bool,
    /// How many workers the node runs.
    pub workers: u32,
    /// Where the node's shard listens (`host:port` or an in-process name); empty without a shard.
    pub listen: String,
    /// A label for messages (host name, pid).
    pub label: String,
}

/// The coordinator's answer once the cluster is complete: who the node is and what to run.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Assign {
    /// The node's server rank, if it hosts a shard.
    pub server_rank: Option<u32>,
    /// Rank of the node's first worker.
    pub first_worker: u32,
    /// Number of workers on the node.
    pub workers: u32,
    /// Total workers in the job.
    pub total_workers: u32,
    /// The job configuration (TOML), defined once on the coordinator.
    pub job: String,
    /// Listen addresses of all servers, by rank.
    pub servers: Vec<String>,
    /// The coordinator sends a heartbeat at least this often (milliseconds); a node that hears
    /// nothing for five times as long may consider it gone.
    pub heartbeat_ms: u32,
    /// This run of the job, the same for every node of the run and drawn afresh for each run
    /// (see [`CoordinatorConfig::run`](super::coordinator::CoordinatorConfig::run)).
    pub run: u64,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `nonce[16]`.
    Challenge {
        /// Fresh random bytes the proof must cover.
        nonce: [u8; NONCE_LEN],
    },
    /// `version u16, role u8, job str, nonce[16], has_proof u8, [proof 32]`.
    Hello(Hello),
    /// `has_proof u8, [proof 32]`: the acceptor's proof over the hello's nonce.
    Welcome {
        /// Present when the acceptor has a secret.
        proof: Option<[u8; PROOF_LEN]>,
    },
    /// `reason str`.
    Refused {
        /// Why.
        reason: String,
    },
    /// `server u8, workers u32, listen str, label str`.
    Join(Join),
    /// `has_server u8, [server_rank u32], first_worker u32, workers u32, total_workers u32,
    /// job str, n u32, n × server str, heartbeat_ms u32, run u64`.
    Assign(Assign),
    /// `server_rank u32`.
    Ready {
        /// Rank of the server that is ready.
        server: u32,
    },
    /// Empty.
    Start,
    /// `id u64, worker u32, n u32, n × f64`: arrive at barrier `id` contributing `values`.
    Barrier {
        /// Barrier sequence number.
        id: u64,
        /// Worker rank arriving.
        worker: u32,
        /// Values summed over all workers.
        values: Vec<f64>,
    },
    /// `id u64, n u32, n × f64`: the barrier is complete; `values` are the sums.
    Release {
        /// Barrier sequence number.
        id: u64,
        /// Element-wise sums of every worker's values.
        values: Vec<f64>,
    },
    /// `worker u32`.
    Leave {
        /// Worker rank that finished.
        worker: u32,
    },
    /// Empty.
    Shutdown,
    /// `reason str`.
    Abort {
        /// Why the job failed.
        reason: String,
    },
    /// Empty.
    Heartbeat,
    /// `table u32, has_step u8, [worker u32, step u64], keys`, where `keys` is a [`KeySet`]:
    /// `0, start u64, end u64` (a range), `1, n u32, n × key u64` (a fixed list) or
    /// `2, len u32, len bytes` (a delta-coded list of strictly ascending keys).
    Pull {
        /// Table.
        table: TableId,
        /// The reader's step, if the read is part of one (gated by the consistency strategy).
        step: Option<Step>,
        /// Rows to read.
        keys: KeySet,
    },
    /// `values` (the whole payload): little-endian `f32`, rows in request order.
    PullReply {
        /// Row values.
        values: Bytes,
    },
    /// `table u32, has_step u8, [worker u32, step u64], keys, values` (the rest of the payload,
    /// little-endian `f32`). `keys` is a [`KeySet`] as in [`Message::Pull`].
    Push {
        /// Table.
        table: TableId,
        /// The writer's step, if the push is part of one.
        step: Option<Step>,
        /// Rows to update.
        keys: KeySet,
        /// Gradients, rows in key order.
        values: Bytes,
    },
    /// Empty.
    PushAck,
    /// `code u16, message str`.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// `worker u32, step u64`: worker `worker` finished step `step` (its pushes are acknowledged).
    Clock {
        /// Worker rank.
        worker: u32,
        /// The finished step.
        step: u64,
    },
    /// `next_step u64, admitted u8`.
    ClockAck {
        /// The step the worker works on next.
        next_step: u64,
        /// Whether the finished step's pushes count (false: late, dropped).
        admitted: bool,
    },
    /// `complete u64`: every live worker finished the steps before `complete`.
    Progress {
        /// Steps every worker finished.
        complete: u64,
    },
    /// `step u64, n u32, n × worker u32`: `step` is committed with these workers' pushes.
    Commit {
        /// The step.
        step: u64,
        /// Workers whose pushes count.
        workers: Vec<u32>,
    },
}

/// Why a request failed, as carried by [`Message::Error`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum ErrorCode {
    /// The request's payload could not be decoded.
    Malformed,
    /// No table with that id.
    UnknownTable,
    /// A key outside the table or not held by this shard.
    KeyOutOfRange,
    /// Values are not a whole number of rows.
    WrongDimension,
    /// Value rows and keys disagree in number.
    LengthMismatch,
    /// The request kind is not served here.
    Unsupported,
    /// The reply would exceed the frame limit.
    TooLarge,
    /// A code this build does not know (kept so it can be reported).
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::Malformed => 1,
            Self::UnknownTable => 2,
            Self::KeyOutOfRange => 3,
            Self::WrongDimension => 4,
            Self::LengthMismatch => 5,
            Self::Unsupported => 6,
            Self::TooLarge => 7,
            Self::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::Malformed,
            2 => Self::UnknownTable,
            3 => Self::KeyOutOfRange,
            4 => Self::WrongDimension,
            5 => Self::LengthMismatch,
            6 => Self::Unsupported,
            7 => Self::TooLarge,
            c => Self::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed request"),
            Self::UnknownTable => f.write_str("unknown table"),
            Self::KeyOutOfRange => f.write_str("key out of range"),
            Self::WrongDimension => f.write_str("wrong row dimension"),
            Self::LengthMismatch => f.write_str("length mismatch"),
            Self::Unsupported => f.write_str("unsupported request"),
            Self::TooLarge => f.write_str("reply too large"),
            Self::Other(c) => write!(f, "error code {c}"),
        }
    }
}

impl Message {
    /// The kind byte this message is sent with.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Challenge { .. } => Kind::Challenge,
            Self::Hello(_) => Kind::Hello,
            Self::Welcome { .. } => Kind::Welcome,
            Self::Refused { .. } => Kind::Refused,
            Self::Join(_) => Kind::Join,
            Self::Assign(_) => Kind::Assign,
            Self::Ready { .. } => Kind::Ready,
            Self::Start => Kind::Start,
            Self::Barrier { .. } => Kind::Barrier,
            Self::Release { .. } => Kind::Release,
            Self::Leave { .. } => Kind::Leave,
            Self::Shutdown => Kind::Shutdown,
            Self::Abort { .. } => Kind::Abort,
            Self::Heartbeat => Kind::Heartbeat,
            Self::Pull { .. } => Kind::Pull,
            Self::PullReply { .. } => Kind::PullReply,
            Self::Push { .. } => Kind::Push,
            Self::PushAck => Kind::PushAck,
            Self::Error { .. } => Kind::Error,
            Self::Clock { .. } => Kind::Clock,
            Self::ClockAck { .. } => Kind::ClockAck,
            Self::Progress { .. } => Kind::Progress,
            Self::Commit { .. } => Kind::Commit,
        }
    }

    /// Encodes the message as a frame with `request_id`.
    ///
    /// Fails only if a field is too long for its length prefix or the payload exceeds 4 GiB.
    pub fn encode(&self, request_id: u64) -> Result<OutFrame> {
        let mut out = BytesMut::new();
        match self {
            Self::Challenge { nonce } => out.put_slice(nonce),
            Self::Hello(h) => {
                out.put_u16_le(h.version);
                out.put_u8(h.role as u8);
                put_str(&mut out, &h.job_id)?;
                out.put_slice(&h.nonce);
                put_proof(&mut out, &h.proof);
            }
            Self::Welcome { proof } => put_proof(&mut out, proof),
            Self::Start | Self::Shutdown | Self::PushAck | Self::Heartbeat => {}
            Self::Refused { reason } | Self::Abort { reason } => put_str(&mut out, reason)?,
            Self::Join(j) => {
                out.put_u8(j.server.into());
                out.put_u32_le(j.workers);
                put_str(&mut out, &j.listen)?;
                put_str(&mut out, &j.label)?;
            }
            Self::Assign(a) => {
                match a.server_rank {
                    Some(r) => {
                        out.put_u8(1);
                        out.put_u32_le(r);
                    }
                    None => out.put_u8(0),
                }
                out.put_u32_le(a.first_worker);
                out.put_u32_le(a.workers);
                out.put_u32_le(a.total_workers);
                put_str(&mut out, &a.job)?;
                out.put_u32_le(len_u32(a.servers.len(), "server list")?);
                for s in &a.servers {
                    put_str(&mut out, s)?;
                }
                out.put_u32_le(a.heartbeat_ms);
                out.put_u64_le(a.run);
            }
            Self::Ready { server } => out.put_u32_le(*server),
            Self::Barrier { id, worker, values } => {
                out.put_u64_le(*id);
                out.put_u32_le(*worker);
                put_f64s(&mut out, values)?;
            }
            Self::Release { id, values } => {
                out.put_u64_le(*id);
                put_f64s(&mut out, values)?;
            }
            Self::Leave { worker } => out.put_u32_le(*worker),
            Self::Pull { table, step, keys } => {
                put_rows_head(&mut out, *table, *step);
                put_keyset(&mut out, keys)?;
            }
            Self::PullReply { values } => out.put_slice(values),
            Self::Push { table, step, keys, values } => {
                put_rows_head(&mut out, *table, *step);
                put_keyset(&mut out, keys)?;
                out.put_slice(values);
            }
            Self::Error { code, message } => {
                out.put_u16_le(code.to_u16());
                put_str(&mut out, message)?;
            }
            Self::Clock { worker, step } => {
                out.put_u32_le(*worker);
                out.put_u64_le(*step);
            }
            Self::ClockAck { next_step, admitted } => {
                out.put_u64_le(*next_step);
                out.put_u8((*admitted).into());
            }
            Self::Progress { complete } => out.put_u64_le(*complete),
            Self::Commit { step, workers } => {
                out.put_u64_le(*step);
                out.put_u32_le(len_u32(workers.len(), "worker list")?);
                for w in workers {
                    out.put_u32_le(*w);
                }
            }
        }
        OutFrame::new(self.kind(), request_id, out.freeze())
    }

    /// Decodes a payload of the given kind under the default [`Limits`]. Bulk fields are slices
    /// of `payload`.
    pub fn decode(kind: Kind, payload: Bytes) -> Result<Self> {
        Self::decode_parts(kind, payload, Bytes::new())
    }

    /// Decodes a payload held as `head` followed by `bulk`, under the default [`Limits`].
    pub fn decode_parts(kind: Kind, head: Bytes, bulk: Bytes) -> Result<Self> {
        Self::decode_within(kind, head, bulk, &Limits::default())
    }

    /// Decodes a payload held as `head` followed by `bulk`, allocating no more than `limits` allow.
    /// Fields may straddle the seam; a bulk field that lies wholly in one piece is a slice of it,
    /// not a copy.
    pub fn decode_within(kind: Kind, head: Bytes, bulk: Bytes, limits: &Limits) -> Result<Self> {
        let mut r = Reader { buf: head.chain(bulk), max_delta_keys: limits.max_delta_keys() };
        let msg = match kind {
            Kind::Challenge => Self::Challenge { nonce: r.array()? },
            Kind::Hello => {
                let version = r.u16()?;
                let role = PeerRole::try_from(r.u8()?)?;
                let job_id = r.str()?;
                let nonce = r.array()?;
                let proof = r.proof()?;
                Self::Hello(Hello { version, role, job_id, nonce, proof })
            }
            Kind::Welcome => Self::Welcome { proof: r.proof()? },
            Kind::Heartbeat => Self::Heartbeat,
            Kind::Start => Self::Start,
            Kind::Shutdown => Self::Shutdown,
            Kind::PushAck => Self::PushAck,
            Kind::Refused => Self::Refused { reason: r.str()? },
            Kind::Abort => Self::Abort { reason: r.str()? },
            Kind::Join => Self::Join(Join {
                server: r.bool("server flag")?,
                workers: r.u32()?,
                listen: r.str()?,
                label: r.str()?,
            }),
            Kind::Assign => {
                let server_rank = if r.bool("server flag")? { Some(r.u32()?) } else { None };
                let first_worker = r.u32()?;
                let workers = r.u32()?;
                let total_workers = r.u32()?;
                let job = r.str()?;
                let n = r.count(4)?;
                let servers = (0..n).map(|_| r.str()).collect::<Result<_>>()?;
                let heartbeat_ms = r.u32()?;
                let run = r.u64()?;
                Self::Assign(Assign {
                    server_rank,
                    first_worker,
                    workers,
                    total_workers,
                    job,
                    servers,
                    heartbeat_ms,
                    run,
                })
            }
            Kind::Ready => Self::Ready { server: r.u32()? },
            Kind::Barrier => Self::Barrier { id: r.u64()?, worker: r.u32()?, values: r.f64s()? },
            Kind::Release => Self::Release { id: r.u64()?, values: r.f64s()? },
            Kind::Leave => Self::Leave { worker: r.u32()? },
            Kind::Pull => Self::Pull { table: r.u32()?, step: r.step()?, keys: r.keyset()? },
            Kind::PullReply => Self::PullReply { values: r.rest() },
            Kind::Push => Self::Push { table: r.u32()?, step: r.step()?, keys: r.keyset()?, values: r.rest() },
            Kind::Clock => Self::Clock { worker: r.u32()?, step: r.u64()? },
            Kind::ClockAck => Self::ClockAck { next_step: r.u64()?, admitted: r.bool("admitted flag")? },
            Kind::Progress => Self::Progress { complete: r.u64()? },
            Kind::Commit => {
                let step = r.u64()?;
                let n = r.count(4)?;
                Self::Commit { step, workers: (0..n).map(|_| r.u32()).collect::<Result<_>>()? }
            }
            Kind::Error => Self::Error { code: ErrorCode::from_u16(r.u16()?), message: r.str()? },
        };
        if r.buf.has_remaining() {
            return Err(WireError::Trailing { kind, extra: r.buf.remaining() });
        }
        Ok(msg)
    }
}

/// Bytes of a pull's or push's fields before its keys.
const ROWS_HEAD_MAX: usize = 4 + 1 + 4 + 8;

fn put_rows_head(out: &mut BytesMut, table: TableId, step: Option<Step>) {
    out.put_u32_le(table);
    match step {
        Some(s) => {
            out.put_u8(1);
            out.put_u32_le(s.worker);
            out.put_u64_le(s.step);
        }
        None => out.put_u8(0),
    }
}

/// Encodes a push straight from the caller's slices: one copy of keys and values, into the frame.
pub fn encode_push(
    request_id: u64,
    table: TableId,
    step: Option<Step>,
    keys: KeysRef<'_>,
    values: &[f32],
) -> Result<OutFrame> {
    let keys = WireKeys::new(keys)?;
    let mut out = BytesMut::with_capacity(ROWS_HEAD_MAX + keys.encoded_len() + values.len() * 4);
    put_rows_head(&mut out, table, step);
    keys.put(&mut out);
    paramserv_codecs::raw::put_slice(values, &mut out);
    OutFrame::new(Kind::Push, request_id, out.freeze())
}

/// Encodes a push whose values the caller already holds as little-endian `f32` bytes: the values
/// travel as the frame's bulk piece, uncopied.
pub fn encode_push_bulk(
    request_id: u64,
    table: TableId,
    step: Option<Step>,
    keys: KeysRef<'_>,
    values: Bytes,
) -> Result<OutFrame> {
    let keys = WireKeys::new(keys)?;
    let mut head = BytesMut::with_capacity(ROWS_HEAD_MAX + keys.encoded_len());
    put_rows_head(&mut head, table, step);
    keys.put(&mut head);
    OutFrame::with_bulk(Kind::Push, request_id, head.freeze(), values)
}

/// Encodes a pull straight from the caller's keys.
pub fn encode_pull(request_id: u64, table: TableId, step: Option<Step>, keys: KeysRef<'_>) -> Result<OutFrame> {
    let keys = WireKeys::new(keys)?;
    let mut out = BytesMut::with_capacity(ROWS_HEAD_MAX + keys.encoded_len());
    put_rows_head(&mut out, table, step);
    keys.put(&mut out);
    OutFrame::new(Kind::Pull, request_id, out.freeze())
}

fn invalid(field: &'static str, detail: String) -> WireError {
    WireError::Invalid { field, detail }
}

fn len_u32(len: usize, what: &'static str) -> Result<u32> {
    u32::try_from(len).map_err(|_| invalid(what, format!("{len} elements do not fit a u32 count")))
}

fn put_str(out: &mut BytesMut, s: &str) -> Result<()> {
    out.put_u32_le(len_u32(s.len(), "string")?);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_proof(out: &mut BytesMut, proof: &Option<[u8; PROOF_LEN]>) {
    match proof {
        Some(p) => {
            out.put_u8(1);
            out.put_slice(p);
        }
        None => out.put_u8(0),
    }
}

fn put_f64s(out: &mut BytesMut, values: &[f64]) -> Result<()> {
    out.put_u32_le(len_u32(values.len(), "value list")?);
    for v in values {
        out.put_f64_le(*v);
    }
    Ok(())
}

fn put_keyset(out: &mut BytesMut, keys: &KeySet) -> Result<()> {
    let keys = WireKeys::of_set(keys)?;
    out.reserve(keys.encoded_len());
    keys.put(out);
    Ok(())
}

/// Reads fields off a payload; every read checks the remaining length first.
struct Reader {
    buf: bytes::buf::Chain<Bytes, Bytes>,
    max_delta_keys: usize,
}

impl Reader {
    fn need(&self, n: usize) -> Result<()> {
        if self.buf.remaining() < n {
            return Err(WireError::Truncated { need: n, have: self.buf.remaining() });
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        let have = self.buf.remaining();
        self.buf.try_get_u8().map_err(|_| WireError::Truncated { need: 1, have })
    }

    fn step(&mut self) -> Result<Option<Step>> {
        Ok(if self.bool("step flag")? { Some(Step { worker: self.u32()?, step: self.u64()? }) } else { None })
    }

    fn proof(&mut self) -> Result<Option<[u8; PROOF_LEN]>> {
        Ok(if self.bool("proof flag")? { Some(self.array()?) } else { None })
    }

    fn bool(&mut self, field: &'static str) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(field, format!("{b} is not 0 or 1"))),
        }
    }

    fn u16(&mut self) -> Result<u16> {
        let have = self.buf.remaining();
        self.buf.try_get_u16_le().map_err(|_| WireError::Truncated { need: 2, have })
    }

    fn u32(&mut self) -> Result<u32> {
        let have = self.buf.remaining();
        self.buf.try_get_u32_le().map_err(|_| WireError::Truncated { need: 4, have })
    }

    fn u64(&mut self) -> Result<u64> {
        let have = self.buf.remaining();
        self.buf.try_get_u64_le().map_err(|_| WireError::Truncated { need: 8, have })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.need(N)?;
        let mut a = [0; N];
        self.buf.copy_to_slice(&mut a);
        Ok(a)
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes> {
        self.need(n)?;
        // Zero-copy when the n bytes lie in one piece.
        Ok(self.buf.copy_to_bytes(n))
    }

    /// A `u32` element count whose elements take at least `min_elem` bytes each; checked against
    /// the bytes left, so a forged count cannot make us allocate.
    fn count(&mut self, min_elem: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        let need =
            n.checked_mul(min_elem).ok_or(WireError::Truncated { need: usize::MAX, have: self.buf.remaining() })?;
        self.need(need)?;
        Ok(n)
    }

    fn str(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| invalid("string", e.to_string()))
    }

    fn f64s(&mut self) -> Result<Vec<f64>> {
        let n = self.count(8)?;
        (0..n)
            .map(|_| {
                let have = self.buf.remaining();
                self.buf.try_get_f64_le().map_err(|_| WireError::Truncated { need: 8, have })
            })
            .collect()
    }

    fn keyset(&mut self) -> Result<KeySet> {
        match self.u8()? {
            KeySet::TAG_RANGE => {
                let (start, end) = (self.u64()?, self.u64()?);
                let range = KeyRange::new(start, end).map_err(|e| invalid("key range", e.to_string()))?;
                Ok(KeySet::Range(range))
            }
            KeySet::TAG_LIST => {
                let n = self.count(8)?;
                Ok(KeySet::List(KeyList { bytes: self.bytes(n * 8)? }))
            }
            KeySet::TAG_DELTA => {
                let len = self.u32()? as usize;
                let coded = self.bytes(len)?;
                let keys = paramserv_codecs::decode_keys_le(&coded, self.max_delta_keys).map_err(|e| match e {
                    CodecError::TooLong { elements, max } => invalid(
                        "key list",
                        format!("a delta-coded list of {elements} keys, more than the {max} allowed"),
                    ),
                    e => invalid("key list", format!("malformed delta-coded list: {e}")),
                })?;
                Ok(KeySet::List(KeyList { bytes: keys.into() }))
            }
            t => Err(invalid("key set tag", format!("unknown tag {t}"))),
        }
    }

    fn rest(&mut self) -> Bytes {
        let n = self.buf.remaining();
        self.buf.copy_to_bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A push of two keys [7, 9] to table 3 with values [1.0, -2.0], request id 0x0102. The keys
    /// ascend, so they go as a delta list.
    static PUSH_FRAME: [u8; 16 + 4 + 1 + 1 + 4 + 4 + 8] = [
        b'P', b'S', 1, 22, 22, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0, // header
        3, 0, 0, 0, // table
        0, // no step
        2, 4, 0, 0, 0, // delta list tag, coded length
        2, 0, 7, 2, // key count 2, varint mode, first key 7, gap 2
        0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, // values
    ];

    /// The same push with the keys in the order [9, 7]: not ascending, so a fixed list.
    static PUSH_FRAME_FIXED: [u8; 16 + 4 + 1 + 1 + 4 + 16 + 8] = [
        b'P', b'S', 1, 22, 34, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0, // header
        3, 0, 0, 0, // table
        0, // no step
        1, 2, 0, 0, 0, // list tag, count
        9, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, // keys
        0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, // values
    ];

    /// Where the values start in both golden frames.
    const VALUES_AT: usize = PUSH_FRAME.len() - 8;

    /// The key set tag's offset in the payload of a pull or push without a step.
    const TAG_AT: usize = 4 + 1;

    #[test]
    fn deconstruct() {
        for (golden, expect, payload_len) in [(&PUSH_FRAME[..], [7, 9], 22), (&PUSH_FRAME_FIXED[..], [9, 7], 34)] {
            let hdr = FrameHeader::new_checked(golden).unwrap();
            assert_eq!(hdr.kind(), Kind::Push as u8);
            assert_eq!(hdr.payload_len(), payload_len);
            assert_eq!(hdr.request_id(), 0x0102);
            let mut buf = BytesMut::from(golden);
            let frame = decode_frame(&mut buf, &Limits::default()).unwrap().unwrap();
            assert!(buf.is_empty());
            let Message::Push { table, keys: KeySet::List(keys), values, .. } = frame.message().unwrap() else {
                panic!("expected a push with a key list");
            };
            assert_eq!(table, 3);
            assert_eq!(keys.iter().collect::<Vec<_>>(), expect);
            assert_eq!(paramserv_codecs::raw::decode(&values).unwrap(), [1.0, -2.0]);
        }
    }

    #[test]
    fn construct() {
        for (golden, keys) in [(&PUSH_FRAME[..], [7, 9]), (&PUSH_FRAME_FIXED[..], [9, 7])] {
            let out = encode_push(0x0102, 3, None, KeysRef::List(&keys), &[1.0, -2.0]).unwrap();
            let mut header = [0xa5; HEADER_LEN];
            let payload_len = (golden.len() - HEADER_LEN) as u32;
            HeaderRepr { kind: Kind::Push, payload_len, request_id: 0x0102 }.emit(&mut header);
            assert_eq!(out.header, header);
            let mut bytes = out.header.to_vec();
            bytes.extend_from_slice(&out.payload);
            assert_eq!(bytes, golden, "keys {keys:?}");
            let generic = Message::Push {
                table: 3,
                step: None,
                keys: KeySet::List(KeyList::from_keys(&keys)),
                values: Bytes::copy_from_slice(&golden[golden.len() - 8..]),
            }
            .encode(0x0102)
            .unwrap();
            assert_eq!(generic, out, "keys {keys:?}");
        }
    }

    /// Golden payloads of the control messages, byte by byte.
    #[test]
    fn control_messages_have_their_documented_layout() {
        let cases: Vec<(Message, Vec<u8>)> = vec![
            (
                Message::Join(Join { server: true, workers: 2, listen: "h:1".into(), label: "n".into() }),
                [&[1u8][..], &2u32.to_le_bytes(), &3u32.to_le_bytes(), b"h:1", &1u32.to_le_bytes(), b"n"].concat(),
            ),
            (
                Message::Assign(Assign {
                    server_rank: Some(3),
                    first_worker: 4,
                    workers: 1,
                    total_workers: 8,
                    job: "j".into(),
                    servers: vec!["a".into()],
                    heartbeat_ms: 6000,
                    run: 0x0123_4567_89ab_cdef,
                }),
                [
                    &[1u8][..],
                    &3u32.to_le_bytes(),
                    &4u32.to_le_bytes(),
                    &1u32.to_le_bytes(),
                    &8u32.to_le_bytes(),
                    &1u32.to_le_bytes(),
                    b"j",
                    &1u32.to_le_bytes(),
                    &1u32.to_le_bytes(),
                    b"a",
                    &6000u32.to_le_bytes(),
                    &0x0123_4567_89ab_cdefu64.to_le_bytes(),
                ]
                .concat(),
            ),
            (
                Message::Barrier { id: 9, worker: 2, values: vec![1.5] },
                [&9u64.to_le_bytes()[..], &2u32.to_le_bytes(), &1u32.to_le_bytes(), &1.5f64.to_le_bytes()].concat(),
            ),
            (Message::Welcome { proof: None }, vec![0]),
            (Message::Heartbeat, vec![]),
            (
                Message::Error { code: ErrorCode::TooLarge, message: "x".into() },
                [&7u16.to_le_bytes()[..], &1u32.to_le_bytes(), b"x"].concat(),
            ),
        ];
        for (msg, payload) in cases {
            let frame = msg.encode(5).unwrap();
            assert_eq!(frame.payload, payload, "{msg:?}");
            assert_eq!(Message::decode(msg.kind(), Bytes::from(payload)).unwrap(), msg);
        }
    }

    #[test]
    fn a_payload_in_two_pieces_decodes_like_one() {
        let values = Bytes::copy_from_slice(&PUSH_FRAME[VALUES_AT..]);
        let two = encode_push_bulk(0x0102, 3, None, KeysRef::List(&[7, 9]), values.clone()).unwrap();
        let one = encode_push(0x0102, 3, None, KeysRef::List(&[7, 9]), &[1.0, -2.0]).unwrap();
        assert_eq!(two.header, one.header);
        assert_eq!(two.contiguous_payload(), one.payload);
        let frame = Frame::from_out(two, &Limits::default()).unwrap();
        let Message::Push { values: got, .. } = frame.message().unwrap() else { panic!("expected a push") };
        assert_eq!(got, values);
        assert_eq!(got.as_ptr(), values.as_ptr(), "the bulk piece is handed over, not copied");
        // Any cut of a payload into two pieces decodes to the same message.
        let whole = Bytes::copy_from_slice(&PUSH_FRAME[16..]);
        let expect = Message::decode(Kind::Push, whole.clone()).unwrap();
        for cut in 0..=whole.len() {
            assert_eq!(
                Message::decode_parts(Kind::Push, whole.slice(..cut), whole.slice(cut..)).unwrap(),
                expect,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn incomplete_frames_ask_for_more_and_reserve() {
        let limits = Limits::default();
        for cut in 0..PUSH_FRAME.len() {
            let mut buf = BytesMut::from(&PUSH_FRAME[..cut]);
            assert_eq!(decode_frame(&mut buf, &limits).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "an incomplete frame is left in place");
            if cut >= HEADER_LEN {
                assert!(buf.capacity() >= PUSH_FRAME.len());
            }
        }
    }

    #[test]
    fn a_bare_header_reserves_a_bounded_amount() {
        let mut header = [0; HEADER_LEN];
        HeaderRepr { kind: Kind::PullReply, payload_len: 60 << 20, request_id: 1 }.emit(&mut header);
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(decode_frame(&mut buf, &Limits::default()).unwrap(), None);
        assert!(buf.capacity() <= HEADER_LEN + RESERVE_AHEAD + 64, "reserved {}", buf.capacity());
    }

    #[test]
    fn oversize_frame_is_refused_before_reserving() {
        let mut header = [0; HEADER_LEN];
        HeaderRepr { kind: Kind::Push, payload_len: u32::MAX, request_id: 1 }.emit(&mut header);
        let mut buf = BytesMut::from(&header[..]);
        let err = decode_frame(&mut buf, &Limits { max_frame: 1 << 20 }).unwrap_err();
        assert_eq!(err, WireError::TooLarge { len: u32::MAX.into(), max: 1 << 20 });
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn header_errors_name_the_problem() {
        let mut bad = PUSH_FRAME;
        bad[0] = b'G';
        assert_eq!(FrameHeader::new_checked(&bad[..]).unwrap_err(), WireError::BadMagic(*b"GS"));
        let mut bad = PUSH_FRAME;
        bad[2] = 9;
        assert_eq!(FrameHeader::new_checked(&bad[..]).unwrap_err(), WireError::UnsupportedVersion(9));
        let mut bad = PUSH_FRAME;
        bad[3] = 200;
        let hdr = FrameHeader::new_checked(&bad[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&hdr, &Limits::default()).unwrap_err(), WireError::UnknownKind(200));
    }

    #[test]
    fn forged_counts_are_errors_not_allocations() {
        // An Assign claiming 2^32-1 server addresses in a 30-byte payload.
        let mut p = BytesMut::new();
        p.put_u8(0);
        p.put_u32_le(0);
        p.put_u32_le(1);
        p.put_u32_le(1);
        p.put_u32_le(0);
        p.put_u32_le(u32::MAX);
        let err = Message::decode(Kind::Assign, p.freeze()).unwrap_err();
        assert!(matches!(err, WireError::Truncated { .. }), "{err}");
        // A key list whose count disagrees with its bytes.
        let mut p = BytesMut::new();
        p.put_u32_le(0);
        p.put_u8(0); // no step
        p.put_u8(1);
        p.put_u32_le(3);
        p.put_u64_le(1);
        let err = Message::decode(Kind::Pull, p.freeze()).unwrap_err();
        assert_eq!(err, WireError::Truncated { need: 24, have: 8 });
    }

    #[test]
    fn inverted_key_range_is_invalid() {
        let mut p = BytesMut::new();
        p.put_u32_le(0);
        p.put_u8(0); // no step
        p.put_u8(0);
        p.put_u64_le(10);
        p.put_u64_le(5);
        assert!(matches!(Message::decode(Kind::Pull, p.freeze()), Err(WireError::Invalid { field: "key range", .. })));
    }

    /// The payload of a pull of table 0, no step, whose key set is `keys` (tag and all).
    fn pull_payload(keys: &[u8]) -> Bytes {
        [&[0u8, 0, 0, 0, 0][..], keys].concat().into()
    }

    /// A delta list's key set bytes: tag 2, the length, `coded`.
    fn delta_set(coded: &[u8]) -> Vec<u8> {
        [&[KeySet::TAG_DELTA][..], &(coded.len() as u32).to_le_bytes(), coded].concat()
    }

    #[test]
    fn key_lists_round_trip_in_order_in_the_form_their_order_picks() {
        let cases: [(&[u64], u8); 10] = [
            (&[1, 2, 3, 1000, 1 << 40], KeySet::TAG_DELTA),
            (&[0, u64::MAX], KeySet::TAG_DELTA),
            (&[42], KeySet::TAG_DELTA),
            (&[u64::MAX], KeySet::TAG_DELTA),
            (&[], KeySet::TAG_DELTA),
            (&[5, 3, 9], KeySet::TAG_LIST),
            (&[9, 7], KeySet::TAG_LIST),
            (&[4, 4, 7], KeySet::TAG_LIST),
            (&[1, 2, 2, 3], KeySet::TAG_LIST),
            (&[u64::MAX, 0], KeySet::TAG_LIST),
        ];
        let keys_of = |m: Message| match m {
            Message::Pull { keys: KeySet::List(l), .. } | Message::Push { keys: KeySet::List(l), .. } => {
                l.iter().collect::<Vec<_>>()
            }
            other => panic!("expected a key list, got {other:?}"),
        };
        for (keys, tag) in cases {
            let values: Vec<f32> = (0..keys.len()).map(|i| i as f32).collect();
            let value_bytes = Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
            let step = Some(Step { worker: 1, step: 2 });
            let frames = [
                encode_pull(1, 0, None, KeysRef::List(keys)).unwrap(),
                encode_push(1, 0, None, KeysRef::List(keys), &values).unwrap(),
                encode_push_bulk(1, 0, None, KeysRef::List(keys), value_bytes.clone()).unwrap(),
                Message::Pull { table: 0, step: None, keys: KeySet::List(KeyList::from_keys(keys)) }.encode(1).unwrap(),
            ];
            for out in frames {
                let kind = out.kind();
                assert_eq!(out.contiguous_payload()[TAG_AT], tag, "{kind} of {keys:?}");
                let m = Frame::from_out(out, &Limits::default()).unwrap().message().unwrap();
                if let Message::Push { values, .. } = &m {
                    assert_eq!(values, &value_bytes, "{kind} of {keys:?}");
                }
                assert_eq!(keys_of(m), keys, "{kind} of {keys:?}");
            }
            // With a step, and through the generic encoder: the same form, the same keys.
            let m = Message::Push { table: 0, step, keys: KeySet::List(KeyList::from_keys(keys)), values: value_bytes };
            let payload = m.encode(1).unwrap().contiguous_payload();
            assert_eq!(payload[TAG_AT + 12], tag, "push with a step of {keys:?}");
            assert_eq!(Message::decode(Kind::Push, payload).unwrap(), m);
        }
    }

    #[test]
    fn an_ascending_fixed_list_still_decodes_and_is_sent_as_a_delta_list() {
        let fixed = [&[KeySet::TAG_LIST, 2, 0, 0, 0][..], &1u64.to_le_bytes(), &5u64.to_le_bytes()].concat();
        let m = Message::decode(Kind::Pull, pull_payload(&fixed)).unwrap();
        assert_eq!(m, Message::Pull { table: 0, step: None, keys: KeySet::List(KeyList::from_keys(&[1, 5])) });
        assert_eq!(m.encode(0).unwrap().payload, pull_payload(&delta_set(&[2, 0, 1, 4])));
    }

    #[test]
    fn sorted_sparse_keys_cost_a_fraction_of_8_bytes_a_key() {
        // 1000 keys spread over ~8500 rows, gaps of 1 to 16.
        let keys: Vec<u64> =
            (0..1000u64).scan(1 << 20, |k, i| Some(std::mem::replace(k, *k + 1 + (i * 7919) % 16))).collect();
        assert!(keys.is_sorted_by(|a, b| a < b));
        let mut reversed = keys.clone();
        reversed.reverse();
        let delta = encode_pull(1, 0, None, KeysRef::List(&keys)).unwrap().payload;
        let fixed = encode_pull(1, 0, None, KeysRef::List(&reversed)).unwrap().payload;
        assert_eq!((delta[TAG_AT], fixed[TAG_AT]), (KeySet::TAG_DELTA, KeySet::TAG_LIST));
        assert_eq!(fixed.len(), TAG_AT + 1 + 4 + 8000);
        // Gaps below 32 pack into 5 bits each: about 640 bytes instead of 8000.
        assert!(delta.len() < 700, "{} bytes for 1000 keys", delta.len());
        let Message::Pull { keys: KeySet::List(back), .. } = Message::decode(Kind::Pull, delta).unwrap() else {
            panic!("a pull with a key list")
        };
        assert_eq!(back.iter().collect::<Vec<_>>(), keys);
    }

    #[test]
    fn the_delta_form_is_limited_to_max_delta_keys() {
        // The count is tested before the keys are read (the zeroed pages are never touched).
        assert!(delta_encode(&vec![0u64; MAX_DELTA_KEYS + 1]).is_none());
        assert!(delta_encode(&[1, 2, 4]).is_some());
        assert!(delta_encode(&[]).is_some());
        assert!(delta_encode(&[3, 3]).is_none());
    }

    #[test]
    fn a_receiver_decodes_no_more_delta_keys_than_its_frame_limit_allows() {
        // 131,073 consecutive keys code into 17 KiB, well inside a 1 MiB frame, but as a fixed
        // list they would take 1 MiB + 8 bytes: a node with that limit refuses them.
        let small = Limits { max_frame: 1 << 20 };
        assert_eq!(small.max_delta_keys(), 131_072);
        let pull = |n: u64| {
            let keys: Vec<u64> = (0..n).collect();
            Message::Pull { table: 0, step: None, keys: KeySet::List(KeyList::from_keys(&keys)) }.encode(1).unwrap()
        };
        let over = Frame::from_out(pull(131_073), &small).expect("the frame itself is small");
        assert!(over.payload_len() < 18 << 10, "{} bytes", over.payload_len());
        let err = over.message().unwrap_err();
        assert!(
            matches!(&err, WireError::Invalid { field: "key list", detail } if detail.contains("131072 allowed")),
            "{err:?}"
        );
        // The same frame is fine under the default limit, and a list at the cap under the small one.
        assert!(Frame::from_out(pull(131_073), &Limits::default()).unwrap().message().is_ok());
        assert!(Frame::from_out(pull(131_072), &small).unwrap().message().is_ok());
        // A stream-read frame carries the limit too.
        let mut buf = BytesMut::new();
        let out = pull(131_073);
        buf.extend_from_slice(&out.header);
        buf.extend_from_slice(&out.contiguous_payload());
        assert!(decode_frame(&mut buf, &small).unwrap().unwrap().message().is_err());
    }

    #[test]
    fn malformed_delta_lists_are_errors() {
        use WireError::Truncated as T;
        let varint = |mut v: u64| {
            let mut b = Vec::new();
            while v >= 0x80 {
                b.push(v as u8 | 0x80);
                v >>= 7;
            }
            b.push(v as u8);
            b
        };
        let too_many = [varint(MAX_DELTA_KEYS as u64 + 1), vec![1, 0, 1, 0xff]].concat();
        let at_the_limit = [varint(MAX_DELTA_KEYS as u64), vec![1, 0, 1, 0xff]].concat();
        let past_the_end = [&[KeySet::TAG_DELTA, 10, 0, 0, 0][..], &[2, 0, 7]].concat();
        let huge_len = [&[KeySet::TAG_DELTA][..], &u32::MAX.to_le_bytes()].concat();
        let overflow = [&[2, 0][..], &varint(u64::MAX), &[1]].concat();
        let long_varint = [1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0];
        let huge_count = [varint(u64::MAX), vec![0, 0]].concat();
        // 130 keys, bit packed, first key 0, a first block of width 1 with 2 of its 17 bytes.
        let short_block = [&varint(130)[..], &[1, 0, 1, 7, 0xff]].concat();
        let truncated: [(&str, Vec<u8>, WireError); 4] = [
            ("tag without a length", vec![KeySet::TAG_DELTA], T { need: 4, have: 0 }),
            ("half a length", vec![KeySet::TAG_DELTA, 4, 0], T { need: 4, have: 2 }),
            ("length past the end", past_the_end, T { need: 10, have: 3 }),
            ("length u32::MAX", huge_len, T { need: u32::MAX as usize, have: 0 }),
        ];
        let invalid: [(&str, Vec<u8>, &str); 15] = [
            ("empty coded bytes", delta_set(&[]), "key count"),
            ("no mode", delta_set(&[2]), "key mode"),
            ("no first key", delta_set(&[2, 0]), "first key"),
            ("a gap short", delta_set(&[3, 0, 5, 1]), "truncated"),
            ("a block short", delta_set(&short_block), "truncated"),
            ("repeated key (zero gap), varints", delta_set(&[2, 0, 5, 0]), "repeated key"),
            ("repeated key (zero gap), packed", delta_set(&[3, 1, 5, 1, 0b01]), "repeated key"),
            ("gap past u64::MAX", delta_set(&overflow), "overflows"),
            ("unknown mode", delta_set(&[2, 7, 5, 1]), "key mode"),
            ("block wider than 64 bits", delta_set(&[2, 1, 5, 65, 1, 0, 0, 0, 0, 0, 0, 0, 0]), "width"),
            ("varint over 10 bytes", delta_set(&long_varint), "varint"),
            ("bytes after the keys", delta_set(&[1, 0, 5, 9]), "after the end"),
            ("count over MAX_DELTA_KEYS", delta_set(&too_many), "more than the 8388608 allowed"),
            ("count u64::MAX", delta_set(&huge_count), "more than the"),
            ("MAX_DELTA_KEYS keys in 4 bytes", delta_set(&at_the_limit), "truncated"),
        ];
        let check = |what: &str, set: &[u8], expect: &dyn Fn(&WireError) -> bool| {
            let err = Message::decode(Kind::Pull, pull_payload(set)).unwrap_err();
            assert!(expect(&err), "{what}: {err:?}");
            // In a push the values follow: a length that runs into them swallows them, which
            // leaves the coded keys with trailing bytes or the payload short.
            let push = [&pull_payload(set)[..], &1.0f32.to_le_bytes()].concat();
            assert!(
                matches!(
                    Message::decode(Kind::Push, push.into()),
                    Err(WireError::Invalid { field: "key list", .. } | WireError::Truncated { .. })
                ),
                "{what} in a push"
            );
        };
        for (what, set, want) in truncated {
            check(what, &set, &|e| *e == want);
        }
        for (what, set, detail) in invalid {
            check(
                what,
                &set,
                &|e| matches!(e, WireError::Invalid { field: "key list", detail: d } if d.contains(detail)),
            );
        }
        // Well formed, for contrast: varint and packed forms of [5, 6, 8].
        for coded in [&[3, 0, 5, 1, 2][..], &[3, 1, 5, 2, 0b1001]] {
            let m = Message::decode(Kind::Pull, pull_payload(&delta_set(coded))).unwrap();
            assert_eq!(m, Message::Pull { table: 0, step: None, keys: KeySet::List(KeyList::from_keys(&[5, 6, 8])) });
        }
    }

    // Property tests: no input makes a decoder panic, and every message survives the wire.

    /// Every kind the wire knows, found by asking `Kind::try_from` about every byte.
    fn all_kinds() -> Vec<Kind> {
        (0..=u8::MAX).filter_map(|b| Kind::try_from(b).ok()).collect()
    }

    /// `==`, except that `f64` values compare by bits, so a NaN equals itself.
    fn bit_eq(a: &Message, b: &Message) -> bool {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        match (a, b) {
            (
                Message::Barrier { id, worker, values },
                Message::Barrier { id: id2, worker: worker2, values: values2 },
            ) => id == id2 && worker == worker2 && bits(values) == bits(values2),
            (Message::Release { id, values }, Message::Release { id: id2, values: values2 }) => {
                id == id2 && bits(values) == bits(values2)
            }
            _ => a == b,
        }
    }

    /// Checks a message decoded from `payload` as `kind`: it has that kind, encoding it gives back
    /// `payload` byte for byte (the encoding is canonical) except for a key list, and decoding that
    /// again gives the same message.
    ///
    /// A key list may come back in another form: the sender picks fixed or delta from the keys, and
    /// a delta list has more than one encoding (varints or bit packing, wider blocks than needed,
    /// any padding bits). What holds there is that the bytes around the key set are unchanged and
    /// that the sender's encoding is a fixed point: encoding what it decodes to gives it back.
    fn check_decoded(kind: Kind, payload: &[u8], m: &Message) -> Result<(), TestCaseError> {
        prop_assert_eq!(m.kind(), kind);
        let out = m.encode(7).expect("a decoded message fits a frame");
        let again = out.contiguous_payload();
        if &again[..] != payload {
            let Some((head, tail)) = key_list_span(m) else {
                return Err(TestCaseError::fail(format!("re-encoding {m:?} changed its bytes")));
            };
            prop_assert_eq!(&again[..head], &payload[..head], "re-encoding {:?} changed bytes before its keys", m);
            prop_assert_eq!(
                &again[again.len() - tail..],
                &payload[payload.len() - tail..],
                "re-encoding {:?} changed bytes after its keys",
                m
            );
        }
        let back = Message::decode(kind, again.clone()).expect("a re-encoded message decodes");
        prop_assert!(bit_eq(&back, m), "decode→encode→decode drifted: {back:?} != {m:?}");
        let third = back.encode(7).expect("a decoded message fits a frame").contiguous_payload();
        prop_assert_eq!(third, again, "the sender's encoding of {:?} is not a fixed point", m);
        Ok(())
    }

    /// For a pull or push naming a key list: how many payload bytes come before its key set and
    /// how many after it.
    fn key_list_span(m: &Message) -> Option<(usize, usize)> {
        let (step, after) = match m {
            Message::Pull { step, keys: KeySet::List(_), .. } => (step, 0),
            Message::Push { step, keys: KeySet::List(_), values, .. } => (step, values.len()),
            _ => return None,
        };
        Some((TAG_AT + if step.is_some() { 12 } else { 0 }, after))
    }

    fn wire_string() -> impl Strategy<Value = String> {
        // Multi-byte characters put UTF-8 sequences across the cut points of `decode_parts`.
        "\\PC{0,12}"
    }

    fn wire_f64s() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![any::<f64>(), any::<u64>().prop_map(f64::from_bits)], 0..8)
    }

    /// Key lists of every shape: any order (the fixed form), few distinct keys (repeats, the
    /// fixed form), and strictly ascending (the delta form) with gaps of every width, or dense
    /// enough and long enough for several bit-packed blocks.
    fn key_list() -> impl Strategy<Value = Vec<u64>> {
        prop_oneof![
            prop::collection::vec(any::<u64>(), 0..16),
            prop::collection::vec(0u64..4, 0..16),
            prop::collection::btree_set(any::<u64>(), 0..40).prop_map(|k| k.into_iter().collect()),
            (any::<u64>(), prop::collection::vec(1u64..20, 0..300)).prop_map(|(first, gaps)| {
                let mut keys = vec![first];
                keys.extend(gaps.iter().scan(first, |k, g| {
                    *k = k.checked_add(*g)?;
                    Some(*k)
                }));
                keys
            }),
        ]
    }

    fn key_set() -> impl Strategy<Value = KeySet> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(a, b)| KeySet::Range(KeyRange::new(a.min(b), a.max(b)).expect("min <= max"))),
            key_list().prop_map(|k| KeySet::List(KeyList::from_keys(&k))),
        ]
    }

    fn any_step() -> impl Strategy<Value = Option<Step>> {
        any::<Option<(u32, u64)>>().prop_map(|s| s.map(|(worker, step)| Step { worker, step }))
    }

    /// Row values: little-endian `f32`, so a multiple of 4 bytes.
    fn f32_bytes() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<[u8; 4]>(), 0..32).prop_map(|v| Bytes::from(v.concat()))
    }

    /// Messages of one kind. The match is exhaustive, so a new kind needs a strategy here.
    fn message_of(kind: Kind) -> BoxedStrategy<Message> {
        match kind {
            Kind::Challenge => any::<[u8; NONCE_LEN]>().prop_map(|nonce| Message::Challenge { nonce }).boxed(),
            Kind::Hello => (
                any::<u16>(),
                prop::sample::select(vec![PeerRole::Node, PeerRole::Worker, PeerRole::Client]),
                wire_string(),
                any::<[u8; NONCE_LEN]>(),
                any::<Option<[u8; PROOF_LEN]>>(),
            )
                .prop_map(|(version, role, job_id, nonce, proof)| {
                    Message::Hello(Hello { version, role, job_id, nonce, proof })
                })
                .boxed(),
            Kind::Welcome => any::<Option<[u8; PROOF_LEN]>>().prop_map(|proof| Message::Welcome { proof }).boxed(),
            Kind::Heartbeat => Just(Message::Heartbeat).boxed(),
            Kind::Refused => wire_string().prop_map(|reason| Message::Refused { reason }).boxed(),
            Kind::Join => (any::<bool>(), any::<u32>(), wire_string(), wire_string())
                .prop_map(|(server, workers, listen, label)| Message::Join(Join { server, workers, listen, label }))
                .boxed(),
            Kind::Assign => (
                any::<Option<u32>>(),
                any::<(u32, u32, u32)>(),
                wire_string(),
                prop::collection::vec(wire_string(), 0..4),
                any::<(u32, u64)>(),
            )
                .prop_map(|(server_rank, (first_worker, workers, total_workers), job, servers, (heartbeat_ms, run))| {
                    Message::Assign(Assign {
                        server_rank,
                        first_worker,
                        workers,
                        total_workers,
                        job,
                        servers,
                        heartbeat_ms,
                        run,
                    })
                })
                .boxed(),
            Kind::Ready => any::<u32>().prop_map(|server| Message::Ready { server }).boxed(),
            Kind::Start => Just(Message::Start).boxed(),
            Kind::Barrier => (any::<u64>(), any::<u32>(), wire_f64s())
                .prop_map(|(id, worker, values)| Message::Barrier { id, worker, values })
                .boxed(),
            Kind::Release => {
                (any::<u64>(), wire_f64s()).prop_map(|(id, values)| Message::Release { id, values }).boxed()
            }
            Kind::Leave => any::<u32>().prop_map(|worker| Message::Leave { worker }).boxed(),
            Kind::Shutdown => Just(Message::Shutdown).boxed(),
            Kind::Abort => wire_string().prop_map(|reason| Message::Abort { reason }).boxed(),
            Kind::Pull => (any::<u32>(), any_step(), key_set())
                .prop_map(|(table, step, keys)| Message::Pull { table, step, keys })
                .boxed(),
            Kind::PullReply => f32_bytes().prop_map(|values| Message::PullReply { values }).boxed(),
            Kind::Push => (any::<u32>(), any_step(), key_set(), f32_bytes())
                .prop_map(|(table, step, keys, values)| Message::Push { table, step, keys, values })
                .boxed(),
            Kind::Clock => any::<(u32, u64)>().prop_map(|(worker, step)| Message::Clock { worker, step }).boxed(),
            Kind::ClockAck => {
                any::<(u64, bool)>().prop_map(|(next_step, admitted)| Message::ClockAck { next_step, admitted }).boxed()
            }
            Kind::Progress => any::<u64>().prop_map(|complete| Message::Progress { complete }).boxed(),
            Kind::Commit => (any::<u64>(), prop::collection::vec(any::<u32>(), 0..8))
                .prop_map(|(step, workers)| Message::Commit { step, workers })
                .boxed(),
            Kind::PushAck => Just(Message::PushAck).boxed(),
            // Decoding maps known codes to their variant, so only canonical codes round-trip.
            Kind::Error => (any::<u16>().prop_map(ErrorCode::from_u16), wire_string())
                .prop_map(|(code, message)| Message::Error { code, message })
                .boxed(),
        }
    }

    /// Any message, every kind equally likely.
    fn any_message() -> impl Strategy<Value = Message> {
        prop::sample::select(all_kinds()).prop_flat_map(message_of)
    }

    /// Bytes for the frame decoder: pure noise, or a plausible header (valid magic and version, a
    /// kind byte and length that may or may not be valid) followed by noise.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let kind = prop_oneof![prop::sample::select(all_kinds()).prop_map(|k| k as u8), any::<u8>()];
        let len = prop_oneof![0u32..64, 0u32..4096, any::<u32>()];
        let framed = (kind, len, any::<u64>(), prop::collection::vec(any::<u8>(), 0..4096)).prop_map(
            |(kind, len, id, noise)| {
                let mut b = [&MAGIC[..], &[VERSION, kind]].concat();
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&noise);
                b
            },
        );
        prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), framed]
    }

    /// Payloads: noise, or a run of the fields decoders read (flags, small counts and lengths,
    /// integers), so that the noise often gets past the first length check.
    fn payload_bytes() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            (0u8..3).prop_map(|b| vec![b]),
            (0u32..8).prop_map(|n| n.to_le_bytes().to_vec()),
            any::<u64>().prop_map(|n| n.to_le_bytes().to_vec()),
        ];
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            prop::collection::vec(field, 0..48).prop_map(|f| f.concat()),
        ]
    }

    /// Takes frames off `input` until the decoder wants more or fails, checking what it consumes.
    fn drain_frames(input: &[u8], limits: &Limits) -> Result<Vec<Frame>, TestCaseError> {
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        loop {
            let before = buf.clone();
            match decode_frame(&mut buf, limits) {
                Ok(Some(frame)) => {
                    let used = before.len() - buf.len();
                    prop_assert_eq!(used, HEADER_LEN + frame.payload_len(), "a frame consumes its header and payload");
                    prop_assert!(frame.payload_len() <= limits.max_frame as usize);
                    prop_assert!(frame.bulk.is_empty());
                    prop_assert_eq!(before[3], frame.kind as u8);
                    prop_assert_eq!(&frame.payload[..], &before[HEADER_LEN..used]);
                    prop_assert_eq!(&buf[..], &before[used..], "the rest stays in the buffer");
                    frames.push(frame);
                }
                Ok(None) => {
                    prop_assert_eq!(&buf[..], &before[..], "Ok(None) leaves the buffer as it was");
                    break;
                }
                Err(_) => break,
            }
        }
        let used: usize = frames.iter().map(|f| HEADER_LEN + f.payload_len()).sum();
        prop_assert!(used <= input.len(), "consumed {used} bytes of {}", input.len());
        Ok(frames)
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Flip(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Delete(prop::sample::Index),
        Truncate(prop::sample::Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        use prop::sample::Index;
        prop_oneof![
            3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
            1 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
            1 => any::<Index>().prop_map(Edit::Delete),
            1 => any::<Index>().prop_map(Edit::Truncate),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
        match edit {
            Edit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
            _ if bytes.is_empty() => {}
            Edit::Flip(at, bit) => {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Edit::Delete(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Edit::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decode_frame_consumes_exactly_one_frame(input in stream_bytes(), small in 0u32..128) {
            drain_frames(&input, &Limits::default())?;
            drain_frames(&input, &Limits { max_frame: small })?;
        }

        #[test]
        fn random_payloads_decode_as_every_kind_without_panicking(
            payload in payload_bytes(),
            cut in any::<prop::sample::Index>(),
        ) {
            let payload = Bytes::from(payload);
            let cut = cut.index(payload.len() + 1);
            for kind in all_kinds() {
                let whole = Message::decode(kind, payload.clone());
                let parts = Message::decode_parts(kind, payload.slice(..cut), payload.slice(cut..));
                match (whole, parts) {
                    (Ok(a), Ok(b)) => {
                        prop_assert!(bit_eq(&a, &b), "{kind} cut at {cut}: {b:?} != {a:?}");
                        check_decoded(kind, &payload, &a)?;
                    }
                    (a, b) => prop_assert_eq!(a, b, "{} cut at {}", kind, cut),
                }
            }
        }

        #[test]
        fn mutated_frames_decode_without_panicking(
            m in any_message(),
            id in any::<u64>(),
            edits in prop::collection::vec(edit(), 1..8),
        ) {
            let out = m.encode(id).unwrap();
            let mut bytes = [&out.header[..], &out.contiguous_payload()].concat();
            for e in &edits {
                apply(&mut bytes, e);
            }
            for frame in drain_frames(&bytes, &Limits::default())? {
                if let Ok(got) = frame.message() {
                    check_decoded(frame.kind, &frame.payload, &got)?;
                }
            }
            // The payload alone, as the kind it was sent with: reaches the payload decoder even
            // when an edit broke the header.
            let payload = Bytes::copy_from_slice(&bytes[HEADER_LEN.min(bytes.len())..]);
            if let Ok(got) = Message::decode(m.kind(), payload.clone()) {
                check_decoded(m.kind(), &payload, &got)?;
            }
        }

        #[test]
        fn single_byte_changes_are_refused_or_canonical(m in any_message()) {
            let payload = m.encode(0).unwrap().contiguous_payload();
            for at in 0..payload.len() {
                let old = payload[at];
                for new in [old ^ 1, old ^ 0x80, 0, 1, 2, 0xff] {
                    let mut changed = payload.to_vec();
                    changed[at] = new;
                    if let Ok(got) = Message::decode(m.kind(), Bytes::from(changed.clone())) {
                        check_decoded(m.kind(), &changed, &got)?;
                    }
                }
            }
        }

        #[test]
        fn key_lists_take_the_delta_form_exactly_when_they_ascend(keys in key_list()) {
            let payload = encode_pull(1, 0, None, KeysRef::List(&keys)).unwrap().payload;
            let ascending = keys.is_sorted_by(|a, b| a < b);
            prop_assert_eq!(payload[TAG_AT], if ascending { KeySet::TAG_DELTA } else { KeySet::TAG_LIST });
            if ascending {
                let mut coded = Vec::new();
                paramserv_codecs::encode_keys(&keys, &mut coded).unwrap();
                prop_assert_eq!(&payload[TAG_AT..], &delta_set(&coded)[..]);
            }
            let Message::Pull { keys: KeySet::List(back), .. } = Message::decode(Kind::Pull, payload).unwrap() else {
                return Err(TestCaseError::fail("a pull with a key list"));
            };
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), keys);
        }

        #[test]
        fn random_delta_lists_decode_without_panicking(
            count in prop_oneof![0u8..8, 120u8..128, any::<u8>()],
            mode in 0u8..3,
            coded in prop::collection::vec(any::<u8>(), 0..64),
            extra in -2i64..3,
            cut in any::<prop::sample::Index>(),
        ) {
            // A plausible start (a small count and a known mode) followed by noise, with a
            // length that is right or a little off.
            let coded = [&[count & 0x7f, mode][..], &coded].concat();
            let len = (coded.len() as i64 + extra).max(0) as u32;
            let set = [&[KeySet::TAG_DELTA][..], &len.to_le_bytes(), &coded].concat();
            let payload = pull_payload(&set);
            let whole = Message::decode(Kind::Pull, payload.clone());
            let cut = cut.index(payload.len() + 1);
            let parts = Message::decode_parts(Kind::Pull, payload.slice(..cut), payload.slice(cut..));
            prop_assert_eq!(&whole, &parts, "cut at {}", cut);
            match whole {
                Ok(m) => {
                    let Message::Pull { keys: KeySet::List(keys), .. } = &m else {
                        return Err(TestCaseError::fail("a pull with a key list"));
                    };
                    prop_assert!(keys.iter().is_sorted_by(|a, b| a < b));
                    check_decoded(Kind::Pull, &payload, &m)?;
                }
                Err(e) => prop_assert!(
                    matches!(
                        e,
                        WireError::Invalid { field: "key list", .. }
                            | WireError::Truncated { .. }
                            | WireError::Trailing { .. }
                    ),
                    "{e:?}"
                ),
            }
        }

        #[test]
        fn every_message_round_trips(m in any_message(), id in any::<u64>()) {
            let out = m.encode(id).unwrap();
            let mut buf = BytesMut::from(&[&out.header[..], &out.contiguous_payload()].concat()[..]);
            let frame = decode_frame(&mut buf, &Limits::default()).unwrap().expect("a whole frame");
            prop_assert!(buf.is_empty());
            prop_assert_eq!(frame.kind, m.kind());
            prop_assert_eq!(frame.request_id, id);
            let back = frame.message().unwrap();
            prop_assert!(bit_eq(&back, &m), "decode(encode(m)) != m: {back:?} != {m:?}");
            check_decoded(m.kind(), &frame.payload, &back)?;
            for cut in 0..=frame.payload.len() {
                let (head, bulk) = (frame.payload.slice(..cut), frame.payload.slice(cut..));
                let parts = Message::decode_parts(m.kind(), head, bulk).unwrap();
                prop_assert!(bit_eq(&parts, &m), "cut at {cut}: {parts:?} != {m:?}");
            }
        }
    }
}
