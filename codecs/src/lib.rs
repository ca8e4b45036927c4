//! Gradient codecs: turn `f32` gradients into bytes and back, for any trainer.
//!
//! This crate is usable on its own: it depends on no other paramserv crate and on no async runtime,
//! so a trainer that is not built on paramserv can link it and nothing else.
//!
//! What is here now is the baseline every other codec is measured against: [`raw`], the lossless
//! little-endian `f32` layout the parameter server puts on the wire. Lossy codecs (fp16/bf16,
//! sparsification, 1-bit with error feedback, QSGD, TernGrad, sketches) and lossless stages
//! (zstd) arrive as further modules with the same shape: an encoder that appends to a caller-owned
//! buffer and a decoder that never panics on bytes it did not produce.
//!
//! Refuses: IO, threads, clocks and global state. Codec state (residuals) lives in values the
//! caller owns.

pub mod raw;

/// Why a payload could not be decoded.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
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
        have: usize,
    },
}
