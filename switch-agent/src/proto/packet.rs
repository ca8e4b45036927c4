//! The aggregation packet: a checked zero-copy view ([`Packet`]) and an owned header ([`PacketRepr`]).
//!
//! The byte layout is in the crate documentation ([`crate`], "Packet format").
//!
//! [`Packet::new_checked`] validates the length, magic, version, kind, flags, reserved bytes and
//! the set bit once; after it succeeds no accessor can panic. A datagram with bytes after the
//! values is refused rather than silently truncated.

use std::ops::Range;

use thiserror::Error;

/// First two bytes of every packet.
pub const MAGIC: u16 = 0x5357;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before the values.
pub const HEADER_LEN: usize = 32;
/// The most values one packet can carry (the count field is 16 bits).
pub const MAX_VALUES: usize = u16::MAX as usize;
/// Exponent meaning "every value of the chunk is zero".
pub const EXPONENT_NONE: i8 = i8::MIN;
/// Bit 15 of the slot field: which of the slot's two pool sets the round uses.
const SET_BIT: u16 = 1 << 15;
/// Result flag: an int32 sum overflowed (a worker sent values its exponent did not allow).
pub const FLAG_OVERFLOW: u8 = 1;

mod field {
    use std::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const KIND: usize = 3;
    pub(super) const JOB: Range<usize> = 4..8;
    pub(super) const WORKER: Range<usize> = 8..10;
    pub(super) const SLOT: Range<usize> = 10..12;
    pub(super) const ROUND: Range<usize> = 12..16;
    pub(super) const OFFSET: Range<usize> = 16..24;
    pub(super) const COUNT: Range<usize> = 24..26;
    pub(super) const EXPONENT: usize = 26;
    pub(super) const NEXT_EXPONENT: usize = 27;
    pub(super) const FLAGS: usize = 28;
    pub(super) const RESERVED: Range<usize> = 29..32;
}

/// Why a datagram is not a valid packet.
#[derive(Clone, Debug, Eq, Error, PartialEq)]
pub enum WireError {
    /// Shorter than the header, or than the header plus the values it announces.
    #[error("truncated packet: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header calls for.
        need: usize,
        /// Bytes received.
        have: usize,
    },
    /// Longer than the header plus the values it announces.
    #[error("packet has {extra} bytes after its {count} values")]
    Trailing {
        /// Values announced.
        count: u16,
        /// Bytes beyond them.
        extra: usize,
    },
    /// Not our protocol.
    #[error("foreign datagram (magic {0:#06x})")]
    Foreign(u16),
    /// Our protocol, another version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown packet kind.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// Flag bits this version does not define, or nonzero reserved bytes.
    #[error("undefined flag or reserved bits set ({0:#04x})")]
    Reserved(u8),
    /// The slot's set bit disagrees with the round's parity.
    #[error("pool set bit {set} does not match round {round}")]
    SetMismatch {
        /// The set bit.
        set: u8,
        /// The round.
        round: u32,
    },
}

/// What a packet is for.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Kind {
    /// A worker's chunk for one slot round (worker -> agent).
    Contribution,
    /// The sum of all workers' chunks (agent -> worker).
    Result,
    /// A worker asks to join a job (worker -> agent).
    Join,
    /// The agent accepted a join (agent -> worker).
    JoinAck,
    /// The agent refused a join (agent -> worker).
    Refuse,
    /// A worker leaves its job (worker -> agent).
    Leave,
    /// The agent saw the leave (agent -> worker).
    LeaveAck,
}

impl Kind {
    fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            1 => Self::Contribution,
            2 => Self::Result,
            3 => Self::Join,
            4 => Self::JoinAck,
            5 => Self::Refuse,
            6 => Self::Leave,
            7 => Self::LeaveAck,
            other => return Err(WireError::UnknownKind(other)),
        })
    }

    fn byte(self) -> u8 {
        match self {
            Self::Contribution => 1,
            Self::Result => 2,
            Self::Join => 3,
            Self::JoinAck => 4,
            Self::Refuse => 5,
            Self::Leave => 6,
            Self::LeaveAck => 7,
        }
    }
}

/// Why the agent refused a worker (the value of a refuse packet).
#[derive(Clone, Copy, Debug, Eq, Error, PartialEq)]
pub enum RefuseReason {
    /// The job exists with other parameters.
    #[error("the job exists with another worker count, pool size or packet size")]
    JobMismatch,
    /// The agent holds as many jobs as it is configured for.
    #[error("the agent holds its maximum number of jobs")]
    TooManyJobs,
    /// Workers, slots or values per packet are outside the agent's limits.
    #[error("job parameters outside the agent's limits")]
    Limits,
    /// The worker id is not below the job's worker count.
    #[error("worker id outside the job")]
    BadWorker,
    /// A code this version does not know.
    #[error("unknown refusal {0}")]
    Unknown(i32),
}

impl RefuseReason {
    /// The wire code.
    pub fn code(self) -> i32 {
        match self {
            Self::JobMismatch => 1,
            Self::TooManyJobs => 2,
            Self::Limits => 3,
            Self::BadWorker => 4,
            Self::Unknown(c) => c,
        }
    }

    /// From the wire code.
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::JobMismatch,
            2 => Self::TooManyJobs,
            3 => Self::Limits,
            4 => Self::BadWorker,
            c => Self::Unknown(c),
        }
    }
}

/// A slot of a job's pool, and which of its two sets a round uses.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct SlotId {
    /// Index in the job's pool (below 2^15).
    pub index: u16,
    /// Pool set, 0 or 1.
    pub set: u8,
}

impl SlotId {
    /// The slot used by `round` of slot `index`.
    pub fn for_round(index: u16, round: u32) -> Self {
        Self { index, set: (round & 1) as u8 }
    }

    fn from_field(v: u16) -> Self {
        Self { index: v & !SET_BIT, set: u8::from(v & SET_BIT != 0) }
    }

    fn field(self) -> u16 {
        (self.index & !SET_BIT) | if self.set == 0 { 0 } else { SET_BIT }
    }
}

/// A checked view over a packet's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buf: T,
}

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[r]);
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], r: Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buf` after checking everything the accessors rely on.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated { need: HEADER_LEN, have: b.len() });
        }
        let magic = be16(b, field::MAGIC);
        if magic != MAGIC {
            return Err(WireError::Foreign(magic));
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::Version(b[field::VERSION]));
        }
        Kind::from_byte(b[field::KIND])?;
        let flags = b[field::FLAGS];
        if flags & !FLAG_OVERFLOW != 0 {
            return Err(WireError::Reserved(flags));
        }
        if let Some(&r) = b[field::RESERVED].iter().find(|&&r| r != 0) {
            return Err(WireError::Reserved(r));
        }
        let count = be16(b, field::COUNT);
        let need = HEADER_LEN + 4 * count as usize;
        if b.len() < need {
            return Err(WireError::Truncated { need, have: b.len() });
        }
        if b.len() > need {
            return Err(WireError::Trailing { count, extra: b.len() - need });
        }
        let slot = SlotId::from_field(be16(b, field::SLOT));
        let round = be32(b, field::ROUND);
        if u32::from(slot.set) != round & 1 {
            return Err(WireError::SetMismatch { set: slot.set, round });
        }
        Ok(Self { buf })
    }

    /// Wraps `buf` without checking; for emitting into a buffer of at least the right length.
    /// Accessors may panic until the header is written.
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// The packet kind.
    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.buf.as_ref()[field::KIND]).expect("kind byte checked in new_checked")
    }

    /// Job id.
    pub fn job(&self) -> u32 {
        be32(self.buf.as_ref(), field::JOB)
    }

    /// Worker id.
    pub fn worker(&self) -> u16 {
        be16(self.buf.as_ref(), field::WORKER)
    }

    /// Slot index and pool set.
    pub fn slot(&self) -> SlotId {
        SlotId::from_field(be16(self.buf.as_ref(), field::SLOT))
    }

    /// Round of the slot.
    pub fn round(&self) -> u32 {
        be32(self.buf.as_ref(), field::ROUND)
    }

    /// Element offset of the chunk.
    pub fn offset(&self) -> u64 {
        be64(self.buf.as_ref(), field::OFFSET)
    }

    /// Values carried.
    pub fn count(&self) -> u16 {
        be16(self.buf.as_ref(), field::COUNT)
    }

    /// Exponent the values are scaled for.
    pub fn exponent(&self) -> i8 {
        self.buf.as_ref()[field::EXPONENT] as i8
    }

    /// Exponent of the next chunk.
    pub fn next_exponent(&self) -> i8 {
        self.buf.as_ref()[field::NEXT_EXPONENT] as i8
    }

    /// Flag bits.
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }

    /// The values' bytes: `4 · count` bytes of big-endian `i32`.
    pub fn value_bytes(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }

    /// The values.
    pub fn values(&self) -> impl ExactSizeIterator<Item = i32> + '_ {
        self.value_bytes().chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Value `i`, if there is one.
    pub fn value(&self, i: usize) -> Option<i32> {
        self.values().nth(i)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// The values' bytes, for writing.
    pub fn value_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[HEADER_LEN..]
    }

    /// Writes `values` big-endian after the header; `values.len()` must equal the count written.
    pub fn set_values(&mut self, values: &[i32]) {
        for (dst, v) in self.value_bytes_mut().chunks_exact_mut(4).zip(values) {
            dst.copy_from_slice(&v.to_be_bytes());
        }
    }
}

/// A packet header as plain fields.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PacketRepr {
    /// What the packet is for.
    pub kind: Kind,
    /// Job id.
    pub job: u32,
    /// Worker id (sender, or recipient for agent -> worker packets).
    pub worker: u16,
    /// Slot and pool set.
    pub slot: SlotId,
    /// Round of the slot.
    pub round: u32,
    /// Element offset of the chunk.
    pub offset: u64,
    /// Values that follow.
    pub count: u16,
    /// Exponent the values are scaled for.
    pub exponent: i8,
    /// Exponent of the next chunk (maximum over workers in a result).
    pub next_exponent: i8,
    /// Flag bits.
    pub flags: u8,
}

impl PacketRepr {
    /// A control packet (join, ack, refuse, leave) with no slot state.
    pub fn control(kind: Kind, job: u32, worker: u16, count: u16) -> Self {
        Self {
            kind,
            job,
            worker,
            slot: SlotId { index: 0, set: 0 },
            round: 0,
            offset: 0,
            count,
            exponent: EXPONENT_NONE,
            next_exponent: EXPONENT_NONE,
            flags: 0,
        }
    }

    /// Reads the header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            kind: p.kind(),
            job: p.job(),
            worker: p.worker(),
            slot: p.slot(),
            round: p.round(),
            offset: p.offset(),
            count: p.count(),
            exponent: p.exponent(),
            next_exponent: p.next_exponent(),
            flags: p.flags(),
        }
    }

    /// Bytes of the whole packet: header plus values.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4 * self.count as usize
    }

    /// Writes the header into `buf[..HEADER_LEN]` (the values are the caller's). Panics if `buf` is
    /// shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit(&self, buf: &mut [u8]) {
        assert!(buf.len() >= self.buffer_len(), "emit into {} bytes, packet needs {}", buf.len(), self.buffer_len());
        buf[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        buf[field::VERSION] = VERSION;
        buf[field::KIND] = self.kind.byte();
        buf[field::JOB].copy_from_slice(&self.job.to_be_bytes());
        buf[field::WORKER].copy_from_slice(&self.worker.to_be_bytes());
        buf[field::SLOT].copy_from_slice(&self.slot.field().to_be_bytes());
        buf[field::ROUND].copy_from_slice(&self.round.to_be_bytes());
        buf[field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        buf[field::COUNT].copy_from_slice(&self.count.to_be_bytes());
        buf[field::EXPONENT] = self.exponent as u8;
        buf[field::NEXT_EXPONENT] = self.next_exponent as u8;
        buf[field::FLAGS] = self.flags;
        buf[field::RESERVED].fill(0);
    }

    /// Writes the header and `values` into `buf`; returns the packet's length.
    pub fn emit_with(&self, buf: &mut [u8], values: &[i32]) -> usize {
        debug_assert_eq!(values.len(), self.count as usize);
        self.emit(buf);
        let len = self.buffer_len();
        Packet::new_unchecked(&mut buf[..len]).set_values(values);
        len
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A result for job 7, worker 2, slot 5 set 1, round 3, offset 320, two values.
    static RESULT_BYTES: [u8; 40] = [
        0x53, 0x57, 0x01, 0x02, // magic, version, kind = result
        0x00, 0x00, 0x00, 0x07, // job
        0x00, 0x02, // worker
        0x80, 0x05, // set 1, slot 5
        0x00, 0x00, 0x00, 0x03, // round
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x40, // offset 320
        0x00, 0x02, // count
        0xfd, 0x04, // exponent -3, next exponent 4
        0x01, 0x00, 0x00, 0x00, // flags = overflow, reserved
        0x00, 0x00, 0x01, 0x00, // 256
        0xff, 0xff, 0xff, 0xfe, // -2
    ];

    fn result_repr() -> PacketRepr {
        PacketRepr {
            kind: Kind::Result,
            job: 7,
            worker: 2,
            slot: SlotId { index: 5, set: 1 },
            round: 3,
            offset: 320,
            count: 2,
            exponent: -3,
            next_exponent: 4,
            flags: FLAG_OVERFLOW,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&RESULT_BYTES[..]).unwrap();
        assert_eq!(PacketRepr::parse(&p), result_repr());
        assert_eq!(p.values().collect::<Vec<_>>(), vec![256, -2]);
        assert_eq!(p.value(1), Some(-2));
        assert_eq!(p.value(2), None);
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 40];
        assert_eq!(result_repr().emit_with(&mut buf, &[256, -2]), 40);
        assert_eq!(buf, RESULT_BYTES);
    }

    #[test]
    fn checks() {
        let b = RESULT_BYTES;
        assert_eq!(Packet::new_checked(&b[..31]).unwrap_err(), WireError::Truncated { need: 32, have: 31 });
        assert_eq!(Packet::new_checked(&b[..39]).unwrap_err(), WireError::Truncated { need: 40, have: 39 });
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Packet::new_checked(&long[..]).unwrap_err(), WireError::Trailing { count: 2, extra: 1 });
        let with = |i: usize, v: u8| {
            let mut c = b;
            c[i] = v;
            Packet::new_checked(c).map(|_| ()).unwrap_err()
        };
        assert_eq!(with(0, 0x45), WireError::Foreign(0x4557));
        assert_eq!(with(2, 2), WireError::Version(2));
        assert_eq!(with(3, 0), WireError::UnknownKind(0));
        assert_eq!(with(3, 8), WireError::UnknownKind(8));
        assert_eq!(with(28, 2), WireError::Reserved(2));
        assert_eq!(with(30, 1), WireError::Reserved(1));
        assert_eq!(with(15, 4), WireError::SetMismatch { set: 1, round: 4 });
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let r = PacketRepr::parse(&p);
                prop_assert_eq!(r.buffer_len(), bytes.len());
                let mut again = vec![0u8; bytes.len()];
                let values: Vec<i32> = p.values().collect();
                r.emit_with(&mut again, &values);
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn mutated_packets_never_panic(i in 0usize..40, v in any::<u8>(), cut in 0usize..41) {
            let mut b = RESULT_BYTES.to_vec();
            b[i] = v;
            b.truncate(cut);
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = PacketRepr::parse(&p);
                prop_assert_eq!(p.values().len(), p.count() as usize);
            }
        }

        #[test]
        fn emit_parse_round_trip(job in any::<u32>(), worker in any::<u16>(), index in 0u16..0x8000, round in any::<u32>(),
                                 offset in any::<u64>(), exponent in any::<i8>(), next in any::<i8>(),
                                 values in proptest::collection::vec(any::<i32>(), 0..64)) {
            let repr = PacketRepr {
                kind: Kind::Contribution, job, worker, slot: SlotId::for_round(index, round), round, offset,
                count: values.len() as u16, exponent, next_exponent: next, flags: 0,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit_with(&mut buf, &values);
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(PacketRepr::parse(&p), repr);
            prop_assert_eq!(p.values().collect::<Vec<_>>(), values);
        }
    }
}
