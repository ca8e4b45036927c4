//! [`Pipeline`]: the encoder a [`CodecSpec`] describes, with its state, and the sparse container.
//!
//! The sparse container (`SPARSE` id) is `[header: n = keys · dim][dim: varint][keys][values]`,
//! where keys are coded by [`crate::encode_keys`] and values are a nested payload of `n` elements
//! from the pipeline's own codec.

use crate::feedback::ErrorFeedback;
use crate::format::{self, Reader, Set};
use crate::keys::{self, Sparse};
use crate::spec::CodecSpec;
use crate::{CodecError, Encoder, SpecError, id, lossless, precision, quantize, sketchml, sparsify};

/// An encoder built from a [`CodecSpec`], holding the state of its stages (error-feedback
/// residuals, random streams). Keep one per tensor or table: state from one tensor applied to
/// another is wrong, not merely wasteful.
#[derive(Debug)]
pub struct Pipeline {
    spec: CodecSpec,
    encoder: Box<dyn Encoder>,
}

impl Pipeline {
    /// The encoder for `spec`, with random streams seeded from 0.
    pub fn new(spec: &CodecSpec) -> Self {
        Self::with_seed(spec, 0)
    }

    /// The encoder for `spec` with random streams (random-k, QSGD, TernGrad) seeded from `seed`.
    /// Give each worker its own seed, or their random choices coincide.
    pub fn with_seed(spec: &CodecSpec, seed: u64) -> Self {
        Self { spec: spec.clone(), encoder: build(spec, seed) }
    }

    /// Parses a spec string such as `ef(topk:0.01)|zstd:3` and builds its encoder.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        Ok(Self::new(&spec.parse()?))
    }

    /// The spec this pipeline was built from.
    pub fn spec(&self) -> &CodecSpec {
        &self.spec
    }

    /// Appends the payload for a dense gradient to `out`.
    pub fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        self.encoder.encode(values, out);
    }

    /// Appends the payload for the values of keyed rows (`dim` values per key, concatenated in
    /// `rows`), without the keys: for a transport that sends the keys itself. Error feedback keeps
    /// its residual per key, so rows of an embedding table pushed in different calls each get
    /// their own carry-over.
    ///
    /// # Panics
    /// If `rows.len() != keys.len() · dim`.
    pub fn encode_rows(&mut self, keys: &[u64], dim: usize, rows: &[f32], out: &mut Vec<u8>) {
        assert_eq!(
            rows.len(),
            keys.len() * dim,
            "encode_rows: {} keys of dim {dim} need {} values",
            keys.len(),
            keys.len() * dim
        );
        self.encoder.encode_rows(keys, dim, rows, out);
    }

    /// Adds `scale` times what error feedback still holds back of each key's row to `rows`
    /// (`dim` values per key): the part of earlier [`Self::encode_rows`] calls that no payload has
    /// carried yet. A trainer that reads rows back from a server adds it to see its own updates
    /// whole (read-my-writes), as it would without compression. No-op for pipelines without
    /// error feedback.
    ///
    /// # Panics
    /// If `rows.len() != keys.len() · dim`.
    pub fn add_held_back_rows(&self, keys: &[u64], dim: usize, scale: f32, rows: &mut [f32]) {
        assert_eq!(rows.len(), keys.len() * dim, "add_held_back_rows: {} keys of dim {dim}", keys.len());
        self.encoder.add_held_back_rows(keys, dim, scale, rows);
    }

    /// Takes every row error feedback still holds back (ascending keys, `dim` values each) and
    /// forgets it, so that a trainer can push it uncoded after its last step: without that, what
    /// error feedback held back at the end is lost. Empty for pipelines without error feedback.
    pub fn take_held_back_rows(&mut self) -> Sparse {
        self.encoder.take_held_back_rows()
    }

    /// Appends a self-contained sparse payload: `keys` (strictly ascending) delta-coded, then the
    /// values through this pipeline as in [`Self::encode_rows`]. Decode with [`decode_sparse`].
    pub fn encode_sparse(
        &mut self,
        keys: &[u64],
        dim: usize,
        rows: &[f32],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        if rows.len() != keys.len() * dim {
            return Err(CodecError::Invalid {
                what: "sparse rows",
                why: format!("{} keys of dim {dim} need {} values, got {}", keys.len(), keys.len() * dim, rows.len()),
            });
        }
        let start = out.len();
        format::put_header(out, id::SPARSE, rows.len());
        format::put_varint(out, dim as u64);
        if let Err(e) = keys::encode_keys(keys, out) {
            out.truncate(start);
            return Err(e);
        }
        self.encoder.encode_rows(keys, dim, rows, out);
        Ok(())
    }
}

/// Decodes a payload of [`Pipeline::encode_sparse`], refusing more than `max_elements` values.
pub fn decode_sparse(payload: &[u8], max_elements: usize) -> Result<Sparse, CodecError> {
    let mut r = Reader::new(payload);
    let h = format::read_header(&mut r)?;
    if h.id != id::SPARSE {
        return Err(CodecError::Invalid { what: "codec id", why: format!("{} is not a sparse payload", h.id) });
    }
    if h.version != format::VERSION {
        return Err(CodecError::Version { id: h.id, version: h.version });
    }
    if h.elements > max_elements as u64 {
        return Err(CodecError::TooLong { elements: h.elements, max: max_elements });
    }
    let n = h.elements as usize;
    let dim = r.varint("dim")?;
    let keys = keys::read_keys(&mut r, n)?;
    if (keys.len() as u128) * u128::from(dim) != n as u128 {
        return Err(CodecError::Invalid {
            what: "sparse rows",
            why: format!("{} keys of dim {dim} are not the {n} elements the header says", keys.len()),
        });
    }
    let mut rows = vec![0.0; n];
    crate::decode_with(r.rest(), &mut rows, Set, 1)?;
    Ok(Sparse { keys, dim: dim as usize, rows })
}

/// The encoder for one spec, stages nested as the spec nests them.
pub(crate) fn build(spec: &CodecSpec, seed: u64) -> Box<dyn Encoder> {
    match spec {
        CodecSpec::Raw => Box::new(lossless::Raw),
        CodecSpec::Fp16 => Box::new(precision::Fp16),
        CodecSpec::Bf16 => Box::new(precision::Bf16),
        CodecSpec::TopK { ratio, approx } => Box::new(sparsify::TopK::new(*ratio, *approx, seed)),
        CodecSpec::RandomK { ratio } => Box::new(sparsify::RandomK::new(*ratio, seed)),
        CodecSpec::Threshold { tau } => Box::new(sparsify::Threshold::new(*tau)),
        CodecSpec::OneBit { block } => Box::new(quantize::OneBit::new(*block)),
        CodecSpec::SignSgd { block } => Box::new(quantize::SignSgd::new(*block)),
        CodecSpec::Qsgd { levels, bucket } => Box::new(quantize::Qsgd::new(*levels, *bucket, seed)),
        CodecSpec::TernGrad { bucket } => Box::new(quantize::TernGrad::new(*bucket, seed)),
        CodecSpec::SketchMl { buckets, groups, rows, cols } => {
            Box::new(sketchml::SketchMl::new(*buckets, *groups, *rows, *cols))
        }
        CodecSpec::ErrorFeedback(inner) => Box::new(ErrorFeedback::new(build(inner, seed))),
        CodecSpec::Zstd { inner, level, shuffle } => {
            Box::new(lossless::Zstd::new(build(inner, seed), *level, *shuffle))
        }
    }
}
