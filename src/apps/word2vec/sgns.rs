//! The skip-gram negative-sampling update of one minibatch on local copies of the rows it uses.
//!
//! As in the original tool and gensim: for each (context, centre) pair the context word's input
//! vector `x` predicts the centre word's output vector (label 1) and `negative` sampled words'
//! output vectors (label 0); each output vector moves by `g · x` at once, `x` moves by the sum of
//! `g · y` after all of them, with `g = (label − σ(x·y)) · α`. σ comes from a table over
//! [−6, 6] and saturates outside it, like theirs. Pure computation: no IO, no allocation per
//! pair; the caller owns the rows and pushes their change.

use multiversion::multiversion;

/// Dot products beyond ±`MAX_EXP` saturate the sigmoid (the original tool's constant).
const MAX_EXP: f32 = 6.0;
/// Entries of the sigmoid and log-sigmoid tables over [−MAX_EXP, MAX_EXP].
const TABLE_SIZE: usize = 1000;

/// σ and log σ, tabulated like the original tool's `expTable`.
#[derive(Clone, Debug)]
pub struct SigmoidTable {
    sigmoid: Vec<f32>,
    log_sigmoid: Vec<f32>,
}

impl Default for SigmoidTable {
    fn default() -> Self {
        let at = |i: usize| (i as f32 / TABLE_SIZE as f32 * 2.0 - 1.0) * MAX_EXP;
        let sigmoid = (0..TABLE_SIZE).map(|i| 1.0 / (1.0 + (-at(i)).exp())).collect();
        let log_sigmoid = (0..TABLE_SIZE).map(|i| -(1.0 + (-at(i)).exp()).ln()).collect();
        Self { sigmoid, log_sigmoid }
    }
}

impl SigmoidTable {
    fn index(f: f32) -> usize {
        (((f + MAX_EXP) * (TABLE_SIZE as f32 / MAX_EXP / 2.0)) as usize).min(TABLE_SIZE - 1)
    }

    /// σ(f), 0 below −6 and 1 above 6.
    pub fn sigmoid(&self, f: f32) -> f32 {
        if f <= -MAX_EXP {
            0.0
        } else if f >= MAX_EXP {
            1.0
        } else {
            self.sigmoid[Self::index(f)]
        }
    }

    /// log σ(f), linear (≈ f) below −6 and 0 above 6.
    pub fn log_sigmoid(&self, f: f32) -> f32 {
        if f <= -MAX_EXP {
            f
        } else if f >= MAX_EXP {
            0.0
        } else {
            self.log_sigmoid[Self::index(f)]
        }
    }
}

/// One minibatch in local row numbers: pair `p` trains input row `pairs[p].0` (the context word)
/// against output row `pairs[p].1` (the centre word) and output rows
/// `negatives[p * negative..(p + 1) * negative]`.
#[derive(Clone, Debug, Default)]
pub struct Pairs {
    /// (input row, output row) per pair, in training order.
    pub pairs: Vec<(u32, u32)>,
    /// `negative` output rows per pair.
    pub negatives: Vec<u32>,
    /// Negatives per pair.
    pub negative: usize,
}

/// Trains `batch` on `input` and `output` (rows of `dim` values) at rate `alpha`; returns the sum
/// of the pairs' losses, −log σ(x·y) − Σ log σ(−x·n), measured before each update.
///
/// A negative equal to its pair's centre word is skipped, as in the original tool.
///
/// # Panics
/// If a row number is out of range or `dim` is 0.
// Compiled per instruction set (one dispatch per minibatch): `dot` and `axpy` inline into it.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub fn train_pairs(
    batch: &Pairs,
    input: &mut [f32],
    output: &mut [f32],
    dim: usize,
    alpha: f32,
    table: &SigmoidTable,
) -> f64 {
    assert!(dim > 0, "dim must be positive");
    let mut neu1e = vec![0.0f32; dim];
    let mut loss = 0.0f64;
    for (p, &(ctx, centre)) in batch.pairs.iter().enumerate() {
        let negatives = &batch.negatives[p * batch.negative..(p + 1) * batch.negative];
        let x = &mut input[ctx as usize * dim..(ctx as usize + 1) * dim];
        neu1e.fill(0.0);
        let mut pair_loss = 0.0f32;
        for (target, label) in std::iter::once((centre, 1.0f32)).chain(negatives.iter().map(|&n| (n, 0.0))) {
            if label == 0.0 && target == centre {
                continue;
            }
            let y = &mut output[target as usize * dim..(target as usize + 1) * dim];
            let f = dot(x, y);
            pair_loss -= if label == 1.0 { table.log_sigmoid(f) } else { table.log_sigmoid(-f) };
            let g = (label - table.sigmoid(f)) * alpha;
            // neu1e += g·y and y += g·x in one pass over y (the update reads y before changing it).
            for ((e, y), x) in neu1e.iter_mut().zip(y.iter_mut()).zip(x.iter()) {
                let old = *y;
                *e = g.mul_add(old, *e);
                *y = g.mul_add(*x, old);
            }
        }
        axpy(1.0, &neu1e, x);
        loss += f64::from(pair_loss);
    }
    loss
}

/// `a · b`, with 16 independent partial sums so that the compiler vectorizes it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a · x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = a.mul_add(*x, *y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update is the gradient step of the pair's loss: for a tiny rate, the loss measured
    /// again falls by about α·|∇|² (checked against a finite difference of the exact loss).
    #[test]
    fn one_pair_moves_down_the_exact_gradient() {
        let dim = 20;
        let mut input: Vec<f32> = (0..dim * 2).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.05).collect();
        let mut output: Vec<f32> = (0..dim * 3).map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.05).collect();
        let batch = Pairs { pairs: vec![(1, 0)], negatives: vec![2], negative: 1 };
        let exact = |input: &[f32], output: &[f32]| {
            let x = &input[dim..2 * dim];
            let (y, n) = (&output[..dim], &output[2 * dim..3 * dim]);
            let d = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| f64::from(p * q)).sum::<f64>();
            let ls = |f: f64| -(1.0 + (-f).exp()).ln();
            -ls(d(x, y)) - ls(-d(x, n))
        };
        let before = exact(&input, &output);
        let table = SigmoidTable::default();
        let measured = train_pairs(&batch, &mut input, &mut output, dim, 1e-3, &table);
        assert!((measured - before).abs() < 0.01, "table loss {measured} vs exact {before}");
        let after = exact(&input, &output);
        assert!(after < before, "the loss fell: {before} -> {after}");
    }

    /// A naive per-element implementation agrees with the vectorized one.
    #[test]
    fn matches_a_scalar_reference() {
        let dim = 37;
        let table = SigmoidTable::default();
        let init = |n: usize, k: usize| (0..n).map(|i| ((i * k % 17) as f32 - 8.0) * 0.03).collect::<Vec<f32>>();
        let (mut input, mut output) = (init(dim * 4, 7), init(dim * 5, 11));
        let (mut ri, mut ro) = (input.clone(), output.clone());
        let batch =
            Pairs { pairs: vec![(0, 1), (2, 1), (3, 4), (0, 0)], negatives: vec![2, 3, 1, 4, 0, 1, 2, 3], negative: 2 };
        train_pairs(&batch, &mut input, &mut output, dim, 0.025, &table);
        for (p, &(c, t)) in batch.pairs.iter().enumerate() {
            let mut e = vec![0.0f32; dim];
            for (target, label) in
                [(t, 1.0f32)].into_iter().chain(batch.negatives[p * 2..p * 2 + 2].iter().map(|&n| (n, 0.0)))
            {
                if label == 0.0 && target == t {
                    continue;
                }
                let (c, target) = (c as usize, target as usize);
                let f: f32 = (0..dim).map(|i| ri[c * dim + i] * ro[target * dim + i]).sum();
                let g = (label - table.sigmoid(f)) * 0.025;
                for i in 0..dim {
                    e[i] += g * ro[target * dim + i];
                    ro[target * dim + i] += g * ri[c * dim + i];
                }
            }
            for i in 0..dim {
                ri[c as usize * dim + i] += e[i];
            }
        }
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&input, &ri) && close(&output, &ro));
    }

    #[test]
    fn the_sigmoid_table_saturates_and_is_accurate_inside() {
        let t = SigmoidTable::default();
        assert_eq!((t.sigmoid(-7.0), t.sigmoid(7.0)), (0.0, 1.0));
        for f in [-5.9f32, -1.0, 0.0, 0.5, 3.0, 5.9] {
            assert!((t.sigmoid(f) - 1.0 / (1.0 + (-f).exp())).abs() < 0.01, "{f}");
            assert!((t.log_sigmoid(f) + (1.0 + (-f).exp()).ln()).abs() < 0.02, "{f}");
        }
    }
}
