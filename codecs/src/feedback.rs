//! Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what a lossy codec dropped is
//! added to the next input, so nothing is lost, only delayed.
//!
//! Per call: `corrected = input + residual`, `payload = inner(corrected)`,
//! `residual = corrected - decode(payload)`. Hence `decode(payload) + new residual == input + old
//! residual` up to one rounding of the subtraction, which the property test checks.
//!
//! Two kinds of state, both owned by the wrapper: one residual vector for [`Encoder::encode`]
//! (a dense tensor; a call with another length starts a fresh residual), and one residual row
//! per key for [`Encoder::encode_rows`] (rows of an embedding table; memory grows with the number
//! of distinct keys pushed, at most the table's size).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{Encoder, Sparse, decode_into};

/// Row keys hashed by one SplitMix64 finalizer: keys are not chosen by an adversary, and the
/// standard library's SipHash made the per-key lookups most of a sparse encode's time.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, key: u64) {
        let mut state = self.0 ^ key;
        self.0 = crate::rng::splitmix64(&mut state);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Error feedback around any encoder.
#[derive(Debug)]
pub struct ErrorFeedback {
    inner: Box<dyn Encoder>,
    residual: Vec<f32>,
    rows: KeyedResidual,
    corrected: Vec<f32>,
    decoded: Vec<f32>,
}

/// Residual rows by key, in one flat buffer.
#[derive(Debug, Default)]
struct KeyedResidual {
    dim: usize,
    slot: HashMap<u64, usize, BuildHasherDefault<KeyHasher>>,
    data: Vec<f32>,
}

impl KeyedResidual {
    fn row(&self, key: u64) -> Option<&[f32]> {
        self.slot.get(&key).map(|&at| &self.data[at..at + self.dim])
    }

    fn row_mut(&mut self, key: u64) -> &mut [f32] {
        let dim = self.dim;
        let at = *self.slot.entry(key).or_insert_with(|| {
            self.data.resize(self.data.len() + dim, 0.0);
            self.data.len() - dim
        });
        &mut self.data[at..at + dim]
    }
}

impl ErrorFeedback {
    /// Wraps `inner`, with zero residuals.
    pub fn new(inner: Box<dyn Encoder>) -> Self {
        Self { inner, residual: Vec::new(), rows: KeyedResidual::default(), corrected: Vec::new(), decoded: Vec::new() }
    }

    /// The dense residual the next [`Encoder::encode`] adds to its input.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// The residual row of `key` the next [`Encoder::encode_rows`] adds, if the key has one.
    pub fn row_residual(&self, key: u64) -> Option<&[f32]> {
        self.rows.row(key)
    }

    /// Encodes `self.corrected` into `out` and leaves its reconstruction in `self.decoded`.
    fn encode_corrected(&mut self, keys: Option<(&[u64], usize)>, out: &mut Vec<u8>) {
        let start = out.len();
        match keys {
            Some((keys, dim)) => self.inner.encode_rows(keys, dim, &self.corrected, out),
            None => self.inner.encode(&self.corrected, out),
        }
        self.decoded.resize(self.corrected.len(), 0.0);
        decode_into(&out[start..], &mut self.decoded).expect("an encoder decodes its own payload");
    }
}

impl Encoder for ErrorFeedback {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        if self.residual.len() != values.len() {
            self.residual = vec![0.0; values.len()];
        }
        self.corrected.clear();
        self.corrected.extend(values.iter().zip(&self.residual).map(|(v, r)| v + r));
        self.encode_corrected(None, out);
        for ((r, c), d) in self.residual.iter_mut().zip(&self.corrected).zip(&self.decoded) {
            *r = c - d;
        }
    }

    fn encode_rows(&mut self, keys: &[u64], dim: usize, rows: &[f32], out: &mut Vec<u8>) {
        if self.rows.dim != dim {
            self.rows = KeyedResidual { dim, ..KeyedResidual::default() };
        }
        self.corrected.clear();
        self.corrected.extend_from_slice(rows);
        if dim > 0 {
            for (key, row) in keys.iter().zip(self.corrected.chunks_exact_mut(dim)) {
                if let Some(r) = self.rows.row(*key) {
                    row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
                }
            }
        }
        self.encode_corrected(Some((keys, dim)), out);
        if dim > 0 {
            for ((key, c), d) in keys.iter().zip(self.corrected.chunks_exact(dim)).zip(self.decoded.chunks_exact(dim)) {
                for ((r, c), d) in self.rows.row_mut(*key).iter_mut().zip(c).zip(d) {
                    *r = c - d;
                }
            }
        }
    }

    fn add_held_back_rows(&self, keys: &[u64], dim: usize, scale: f32, rows: &mut [f32]) {
        debug_assert_eq!(keys.len() * dim, rows.len());
        if dim > 0 && self.rows.dim == dim {
            for (key, row) in keys.iter().zip(rows.chunks_exact_mut(dim)) {
                if let Some(r) = self.rows.row(*key) {
                    row.iter_mut().zip(r).for_each(|(v, r)| *v += scale * r);
                }
            }
        }
        // Not the inner stage's too: this residual is already input minus what payloads carried.
    }

    fn take_held_back_rows(&mut self) -> Sparse {
        let rows = std::mem::take(&mut self.rows);
        let dim = rows.dim;
        // Rows whose residual is all zeros hold nothing back (a lossless step sent them whole).
        let mut keys: Vec<(u64, usize)> =
            rows.slot.into_iter().filter(|&(_, at)| rows.data[at..at + dim].iter().any(|&r| r != 0.0)).collect();
        keys.sort_unstable();
        let held = Sparse {
            keys: keys.iter().map(|&(k, _)| k).collect(),
            dim,
            rows: keys.iter().flat_map(|&(_, at)| &rows.data[at..at + dim]).copied().collect(),
        };
        // This residual alone is what the payloads have not carried (input minus what they decode
        // to, whatever an inner feedback stage keeps); an inner stage's state goes with it.
        drop(self.inner.take_held_back_rows());
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::build;
    use crate::spec::CodecSpec;
    use proptest::prelude::*;

    fn lossy() -> impl Strategy<Value = CodecSpec> {
        prop_oneof![
            Just(CodecSpec::TopK { ratio: 0.1, approx: false }),
            Just(CodecSpec::TopK { ratio: 0.1, approx: true }),
            Just(CodecSpec::RandomK { ratio: 0.2 }),
            Just(CodecSpec::Threshold { tau: 0.5 }),
            Just(CodecSpec::OneBit { block: 16 }),
            Just(CodecSpec::SignSgd { block: 16 }),
            Just(CodecSpec::Qsgd { levels: 4, bucket: 16 }),
            Just(CodecSpec::TernGrad { bucket: 16 }),
            Just(CodecSpec::Fp16),
            Just(CodecSpec::Bf16),
            Just(CodecSpec::SketchMl { buckets: 16, groups: 4, rows: 2, cols: 0.5 }),
        ]
    }

    /// `a ≈ b` up to the rounding of one subtraction and one addition of numbers of this size.
    fn close(a: f32, b: f32, scale: f32) -> bool {
        (a - b).abs() <= 4.0 * f32::EPSILON * scale.max(f32::MIN_POSITIVE)
    }

    proptest! {
        #[test]
        fn decoded_plus_new_residual_is_input_plus_old_residual(
            spec in lossy(),
            steps in proptest::collection::vec(proptest::collection::vec(-4f32..4.0, 64), 1..5),
        ) {
            let mut ef = ErrorFeedback::new(build(&spec, 1));
            for input in &steps {
                let old = ef.residual().to_vec();
                let old = if old.is_empty() { vec![0.0; input.len()] } else { old };
                let mut payload = Vec::new();
                ef.encode(input, &mut payload);
                let decoded = crate::decode(&payload, input.len()).unwrap();
                for i in 0..input.len() {
                    let lhs = decoded[i] + ef.residual()[i];
                    let rhs = input[i] + old[i];
                    let scale = decoded[i].abs() + ef.residual()[i].abs() + input[i].abs() + old[i].abs();
                    prop_assert!(close(lhs, rhs, scale), "{spec}: element {i}: {lhs} != {rhs}");
                }
            }
        }

        #[test]
        fn keyed_rows_carry_their_own_residual(
            spec in lossy(),
            pushes in proptest::collection::vec(
                (proptest::collection::btree_set(0u64..20, 1..8), proptest::collection::vec(-4f32..4.0, 8 * 4)), 1..6),
        ) {
            let dim = 4;
            let mut ef = ErrorFeedback::new(build(&spec, 2));
            let mut reference: HashMap<u64, Vec<f32>> = HashMap::new();
            for (keys, values) in pushes {
                let keys: Vec<u64> = keys.into_iter().collect();
                let rows = &values[..keys.len() * dim];
                let mut payload = Vec::new();
                ef.encode_rows(&keys, dim, rows, &mut payload);
                let decoded = crate::decode(&payload, rows.len()).unwrap();
                for (j, key) in keys.iter().enumerate() {
                    let old = reference.remove(key).unwrap_or_else(|| vec![0.0; dim]);
                    let new = ef.row_residual(*key).expect("every pushed key has a residual").to_vec();
                    for c in 0..dim {
                        let (d, v) = (decoded[j * dim + c], rows[j * dim + c]);
                        let scale = d.abs() + new[c].abs() + v.abs() + old[c].abs();
                        prop_assert!(close(d + new[c], v + old[c], scale), "{spec}: key {key} col {c}");
                    }
                    reference.insert(*key, new);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn payloads_plus_what_is_held_back_are_everything_pushed(
            spec in prop_oneof![Just("ef(topk:0.25)"), Just("ef(onebit:4)|zstd:1"), Just("ef(terngrad)"), Just("ef(ef(topk:0.25))")],
            pushes in proptest::collection::vec(
                (proptest::collection::btree_set(0u64..12, 1..6), proptest::collection::vec(-4f32..4.0, 6 * 3)), 1..6),
        ) {
            let dim = 3;
            let mut pipeline = crate::Pipeline::parse(spec).unwrap();
            let (mut pushed, mut arrived) = (vec![0.0f32; 12 * dim], vec![0.0f32; 12 * dim]);
            for (keys, values) in &pushes {
                let keys: Vec<u64> = keys.iter().copied().collect();
                let rows = &values[..keys.len() * dim];
                let mut payload = Vec::new();
                pipeline.encode_rows(&keys, dim, rows, &mut payload);
                let decoded = crate::decode(&payload, rows.len()).unwrap();
                for (j, &key) in keys.iter().enumerate() {
                    for c in 0..dim {
                        pushed[key as usize * dim + c] += rows[j * dim + c];
                        arrived[key as usize * dim + c] += decoded[j * dim + c];
                    }
                }
            }
            let keys: Vec<u64> = (0..12).collect();
            let mut seen = arrived.clone();
            pipeline.add_held_back_rows(&keys, dim, 1.0, &mut seen);
            let mut back = arrived.clone();
            pipeline.add_held_back_rows(&keys, dim, -1.0, &mut back);
            for i in 0..seen.len() {
                let scale = 8.0 * pushes.len() as f32 * 4.0;
                prop_assert!((seen[i] - pushed[i]).abs() <= 8.0 * f32::EPSILON * scale, "{spec}: {i}: {} vs {}", seen[i], pushed[i]);
                // Held back, subtracted: the mirror image around what arrived.
                prop_assert!((seen[i] + back[i] - 2.0 * arrived[i]).abs() <= 8.0 * f32::EPSILON * scale);
            }
            // Taken: the same rows, once; afterwards nothing is held back.
            let held = pipeline.take_held_back_rows();
            prop_assert!(held.keys.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(held.rows.len(), held.keys.len() * dim);
            let mut flushed = arrived.clone();
            for (k, row) in held.keys.iter().zip(held.rows.chunks_exact(dim)) {
                for c in 0..dim {
                    flushed[*k as usize * dim + c] += row[c];
                }
            }
            prop_assert_eq!(&flushed, &seen);
            let mut after = arrived.clone();
            pipeline.add_held_back_rows(&keys, dim, 1.0, &mut after);
            prop_assert_eq!(&after, &arrived);
            prop_assert!(pipeline.take_held_back_rows().keys.is_empty());
        }
    }

    #[test]
    fn stages_without_feedback_hold_nothing_back() {
        for spec in ["raw", "fp16", "topk:0.25", "qsgd", "raw|zstd:1"] {
            let mut pipeline = crate::Pipeline::parse(spec).unwrap();
            pipeline.encode_rows(&[1, 4], 2, &[0.5, -1.0, 2.0, 0.25], &mut Vec::new());
            let mut rows = [1.0f32, 2.0, 3.0, 4.0];
            pipeline.add_held_back_rows(&[1, 4], 2, 1.0, &mut rows);
            assert_eq!(rows, [1.0, 2.0, 3.0, 4.0], "{spec}");
        }
    }

    #[test]
    fn top_k_with_feedback_sends_everything_eventually() {
        // A constant gradient through top-1 of 4: each element's residual grows until it wins,
        // so over 4 steps every element is sent, and the sum of what was decoded equals the sum
        // of the inputs minus what is still in the residual.
        let mut ef = ErrorFeedback::new(build(&CodecSpec::TopK { ratio: 0.25, approx: false }, 0));
        let input = [1.0, 0.99, 0.98, 0.97];
        let mut sent = [0.0f32; 4];
        for _ in 0..4 {
            let mut payload = Vec::new();
            ef.encode(&input, &mut payload);
            crate::decode_add(&payload, 1.0, &mut sent).unwrap();
        }
        assert!(sent.iter().all(|s| *s > 0.0), "every element was sent at least once: {sent:?}");
        for i in 0..4 {
            assert!((sent[i] + ef.residual()[i] - 4.0 * input[i]).abs() < 1e-5);
        }
    }
}
