//! Gradient codecs: turn `f32` gradients into self-describing bytes and back, for any trainer.
//!
//! This crate is usable on its own: it depends on no other paramserv crate and on no async runtime,
//! so a trainer that is not built on paramserv can link it and nothing else.
//!
//! ```
//! use paramserv_codecs::{Pipeline, decode_add};
//!
//! let mut codec = Pipeline::parse("ef(topk:0.01)|zstd:3").unwrap(); // one per tensor: it keeps the residual
//! let grad: Vec<f32> = (0..10_000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
//! let mut payload = Vec::new();
//! codec.encode(&grad, &mut payload); // ship `payload` however you like
//! let mut weights = vec![0.0f32; grad.len()];
//! decode_add(&payload, -0.1, &mut weights).unwrap(); // weights += -0.1 · decoded gradient
//! assert!(payload.len() * 30 < grad.len() * 4);
//! ```
//!
//! # Shape
//! - Encoding is stateful and owned by the caller: a [`Pipeline`] (built from a [`CodecSpec`], e.g.
//!   parsed from `ef(onebit)`) holds residuals and random streams for one tensor or table.
//! - Decoding is stateless: every payload starts with `[codec id][version][element count]` and
//!   carries its parameters, so [`decode_into`], [`decode_add`] and [`decode`] need nothing but the
//!   bytes. [`decode_add`] adds into the caller's buffer, the server's hot path, without a
//!   temporary vector.
//! - Sparse gradients (sorted keys plus one row of `dim` values per key) go through
//!   [`Pipeline::encode_sparse`] and [`decode_sparse`], which add delta-coded keys to the values'
//!   payload; [`Pipeline::encode_rows`] codes the values of keyed rows alone, for a transport that
//!   sends the keys itself, and keeps error-feedback residuals per key.
//!
//! # Guarantees
//! Lossless codecs round-trip bit for bit. Each lossy codec documents its error bound or its
//! unbiasedness, and a property test checks it. Decoders return [`CodecError`] on truncated,
//! mutated or random bytes, never panic, and never allocate more than the payload and the caller's
//! buffer justify: counts are checked against the bytes left before anything is allocated.
//!
//! Refuses: IO, threads, clocks and global state.
//!
//! [`raw`] is the headerless little-endian `f32` layout the parameter server's frames use for
//! uncompressed rows, kept apart from the framed codecs because it needs no header.

use std::fmt;

mod feedback;
mod format;
mod keys;
mod lossless;
mod pipeline;
mod precision;
mod quantize;
pub mod raw;
mod rng;
mod sketchml;
mod sparsify;
pub mod spec;

pub use feedback::ErrorFeedback;
pub use keys::{Sparse, decode_keys, decode_keys_le, encode_keys};
pub use pipeline::{Pipeline, decode_sparse};
pub use spec::{CodecSpec, SpecError};

use format::{AddScaled, Set, Sink};

/// Codec ids, the first byte of every payload (then the format version, 1, and the element count
/// as a LEB128 varint). Never reuse a number.
pub mod id {
    /// Little-endian `f32`.
    pub const RAW: u8 = 0;
    /// IEEE half precision.
    pub const FP16: u8 = 1;
    /// bfloat16.
    pub const BF16: u8 = 2;
    /// (index, value) pairs: top-k and threshold.
    pub const TOPK: u8 = 3;
    /// Random-k: a seed and the chosen values.
    pub const RANDOMK: u8 = 4;
    /// 1-bit with per-block means of both signs.
    pub const ONEBIT: u8 = 6;
    /// Sign with per-block scale.
    pub const SIGNSGD: u8 = 7;
    /// QSGD.
    pub const QSGD: u8 = 8;
    /// TernGrad.
    pub const TERNGRAD: u8 = 9;
    /// SketchML.
    pub const SKETCHML: u8 = 10;
    /// zstd around another payload.
    pub const ZSTD: u8 = 16;
    /// Keys plus a values payload ([`crate::Pipeline::encode_sparse`]).
    pub const SPARSE: u8 = 32;
}

/// Nesting allowed inside a payload (zstd around a codec is depth 2). Stops a crafted payload
/// from recursing without end.
pub(crate) const MAX_DEPTH: u32 = 4;

/// An encoder: appends the payload for a gradient to a buffer. Built by [`Pipeline`] from a
/// [`CodecSpec`]; implementations keep their state (residuals, random streams) between calls.
pub trait Encoder: Send + fmt::Debug {
    /// Appends the payload for `values` to `out`.
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>);

    /// Appends the payload for the rows of `keys` (`dim` values each, concatenated in `rows`).
    /// Only stateful stages care about the keys: error feedback keeps a residual per key.
    fn encode_rows(&mut self, keys: &[u64], dim: usize, rows: &[f32], out: &mut Vec<u8>) {
        debug_assert_eq!(keys.len() * dim, rows.len());
        self.encode(rows, out);
    }

    /// Adds `scale` times what this stage still holds back of each key's row (error feedback's
    /// residual: pushed by the caller, not yet in any payload) to `rows`. Stateless stages hold
    /// nothing back and leave `rows` as they are.
    fn add_held_back_rows(&self, keys: &[u64], dim: usize, scale: f32, rows: &mut [f32]) {
        let _ = (keys, dim, scale, rows);
    }

    /// Takes every row this stage holds back (ascending keys) and forgets it: for a last push,
    /// uncoded, at the end of training. Stateless stages hold nothing.
    fn take_held_back_rows(&mut self) -> Sparse {
        Sparse::default()
    }
}

/// Why a payload could not be decoded.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is not a whole number of elements.
    #[error("payload of {len} bytes is not a whole number of {elem}-byte elements")]
    Ragged {
        /// Payload length in bytes.
        len: usize,
        /// Element width in bytes.
        elem: usize,
    },
    /// The payload holds a different number of elements than the caller expects.
    #[error("payload holds {have} elements, expected {want}")]
    Length {
        /// Elements the caller expects.
        want: usize,
        /// Elements in the payload.
        have: u64,
    },
    /// The payload ends before a field.
    #[error("payload truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The first byte names no codec this build knows.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// A codec this build knows, in a format version it does not.
    #[error("codec id {id} in format version {version}, this build reads version 1")]
    Version {
        /// Codec id.
        id: u8,
        /// Version in the payload.
        version: u8,
    },
    /// A field holds a value its codec cannot have produced.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Bytes are left after a codec's body.
    #[error("{extra} bytes after the end of a {codec} payload")]
    TrailingBytes {
        /// Codec name.
        codec: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// The payload decodes to more elements than the caller allows.
    #[error("payload decodes to {elements} elements, more than the {max} allowed")]
    TooLong {
        /// Elements in the payload.
        elements: u64,
        /// The caller's limit.
        max: usize,
    },
    /// Stages nest deeper than any pipeline writes.
    #[error("stages nest deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Length of the dense vector `payload` decodes to, read from its header.
pub fn decoded_len(payload: &[u8]) -> Result<u64, CodecError> {
    let mut r = format::Reader::new(payload);
    Ok(format::read_header(&mut r)?.elements)
}

/// Decodes `payload` into `out`, which must have exactly as many elements as the payload.
pub fn decode_into(payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    decode_with(payload, out, Set, 0)
}

/// `out[i] += scale · decoded[i]`: decoding fused with the apply step, so the payload is read once
/// and nothing is allocated (zstd stages excepted: they inflate into a buffer first).
///
/// On an error, `out` may already hold part of the sum: a caller that must stay unchanged on bad
/// input (a server applying a push from the network) decodes into a buffer first.
pub fn decode_add(payload: &[u8], scale: f32, out: &mut [f32]) -> Result<(), CodecError> {
    decode_with(payload, out, AddScaled(scale), 0)
}

/// Decodes a payload into a new vector, refusing payloads of more than `max_elements` elements
/// (the payload says how long it is; the caller says how much memory that may take).
pub fn decode(payload: &[u8], max_elements: usize) -> Result<Vec<f32>, CodecError> {
    let n = decoded_len(payload)?;
    if n > max_elements as u64 {
        return Err(CodecError::TooLong { elements: n, max: max_elements });
    }
    let mut out = vec![0.0; n as usize];
    decode_into(payload, &mut out)?;
    Ok(out)
}

/// The one dispatch on codec id. `depth` counts enclosing stages.
pub(crate) fn decode_with<S: Sink>(payload: &[u8], out: &mut [f32], sink: S, depth: u32) -> Result<(), CodecError> {
    if depth >= MAX_DEPTH {
        return Err(CodecError::TooDeep);
    }
    let mut r = format::Reader::new(payload);
    let h = format::read_header(&mut r)?;
    if h.elements != out.len() as u64 {
        return Err(CodecError::Length { want: out.len(), have: h.elements });
    }
    if h.version != format::VERSION {
        return Err(CodecError::Version { id: h.id, version: h.version });
    }
    match h.id {
        id::RAW => lossless::decode_raw(&mut r, out, sink),
        id::FP16 => precision::decode_fp16(&mut r, out, sink),
        id::BF16 => precision::decode_bf16(&mut r, out, sink),
        id::TOPK => sparsify::decode_pairs(&mut r, out, sink),
        id::RANDOMK => sparsify::decode_randomk(&mut r, out, sink),
        id::ONEBIT => quantize::decode_onebit(&mut r, out, sink),
        id::SIGNSGD => quantize::decode_signsgd(&mut r, out, sink),
        id::QSGD => quantize::decode_qsgd(&mut r, out, sink),
        id::TERNGRAD => quantize::decode_terngrad(&mut r, out, sink),
        id::SKETCHML => sketchml::decode(&mut r, out, sink),
        id::ZSTD => lossless::decode_zstd(&mut r, out, sink, depth),
        other => Err(CodecError::UnknownCodec(other)),
    }
}
