//! Fixed-point conversion: f32 chunks to int32 with a shared exponent, and back.
//!
//! For a chunk, every worker finds `e`, the unbiased binary exponent of its largest |x|
//! (so max |x| < 2^(e+1)); the agent keeps the maximum `E` over workers. All workers then scale
//! by the same factor
//!
//! ```text
//! scale(N, E) = INT32_MAX / (N · 2^(E+1))        (SwitchML's INT32_MAX / (N · 2^e), e = E + 1)
//! q = round_half_even(x · scale)                 computed in f64, exact up to one rounding
//! ```
//!
//! so each |q| ≤ (1 − 2^-24)·INT32_MAX/N + 1/2 and the int32 sum of N workers cannot overflow
//! for N ≤ [`MAX_WORKERS`] (the 2^-24 margin of an f32's mantissa covers N/2 ≤ 128 of rounding).
//! The sum converts back as `(Σq / scale) as f32`.
//!
//! **Error bound.** Each worker's rounding is at most 1/2 a unit, so against the exact sum S of the
//! inputs, |Σq/scale − S| ≤ N/(2·scale) = N²·2^E / INT32_MAX; the final conversion to f32 adds at
//! most 2^-24 of the result's magnitude. [`error_bound`] returns that bound (with a 2^-40
//! relative slack for the f64 arithmetic), and tests check it against an f64 sum.
//!
//! Exponents are `i8`: E ∈ [−127, 127] covers every finite f32 (subnormals count as E = −127),
//! and [`EXPONENT_NONE`] (−128) marks an all-zero chunk. Non-finite inputs have no fixed-point
//! form: [`exponent`] reports them and the client refuses the tensor.

use multiversion::multiversion;

use crate::proto::packet::EXPONENT_NONE;

/// Workers one job may have: the overflow margin above holds up to here.
pub const MAX_WORKERS: u16 = 256;

/// The exponent of a chunk: `Some(E)` with max |x| < 2^(E+1), [`EXPONENT_NONE`] when all values
/// are zero; `None` if a value is NaN or infinite.
pub fn exponent(values: &[f32]) -> Option<i8> {
    // Max over the raw magnitude bits: monotone in |x| for finite floats, NaN/inf sort highest.
    let max_bits = values.iter().map(|v| v.to_bits() & 0x7fff_ffff).max().unwrap_or(0);
    if max_bits >= 0x7f80_0000 {
        return None;
    }
    if max_bits == 0 {
        return Some(EXPONENT_NONE);
    }
    let biased = (max_bits >> 23) as i32;
    // Subnormals (biased 0) are below 2^-126: E = -127 covers them.
    Some((biased - 127).max(-127) as i8)
}

/// The factor a chunk with agreed exponent `e` is scaled by, for `workers` contributors.
pub fn scale(workers: u16, e: i8) -> f64 {
    debug_assert!((1..=MAX_WORKERS).contains(&workers));
    // EXPONENT_NONE: every value is zero, any scale works; use the smallest exponent's.
    let e = i32::from(e.max(-127));
    f64::from(i32::MAX) / (f64::from(workers) * 2f64.powi(e + 1))
}

/// Adding and subtracting 1.5 · 2^52 rounds half to even (IEEE default rounding) for |v| < 2^51,
/// like `round_ties_even`, but vectorizes where that is a libm call per element on baseline
/// x86_64. Rust never fuses the multiply and add, so every build rounds the same way.
const ROUND: f64 = 6_755_399_441_055_744.0;

/// Converts `values` with exponent `e` into `out` (same length).
pub fn quantize(values: &[f32], workers: u16, e: i8, out: &mut [i32]) {
    let s = scale(workers, e);
    for (q, &x) in out.iter_mut().zip(values) {
        // `as` saturates; the exponent makes saturation impossible for values it covers.
        *q = ((f64::from(x) * s + ROUND) - ROUND) as i32;
    }
}

/// [`quantize`] straight into a packet's value bytes (big-endian `i32`, `4 · values.len()` bytes).
pub fn quantize_be(values: &[f32], workers: u16, e: i8, out: &mut [u8]) {
    quantize_be_kernel(values, scale(workers, e), out);
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn quantize_be_kernel(values: &[f32], s: f64, out: &mut [u8]) {
    for (dst, &x) in out.chunks_exact_mut(4).zip(values) {
        // After adding 1.5 · 2^52 the integer sits in the low mantissa bits, in two's complement
        // for |v| < 2^31: reading the bits is the conversion, and it vectorizes where `as i32`
        // (saturating) does not.
        let q = (f64::from(x) * s + ROUND).to_bits() as u32;
        dst.copy_from_slice(&q.to_be_bytes());
    }
}

/// Converts summed fixed-point values back into `out` (same length).
pub fn dequantize(sums: &[i32], workers: u16, e: i8, out: &mut [f32]) {
    let s = scale(workers, e);
    for (x, &q) in out.iter_mut().zip(sums) {
        *x = (f64::from(q) / s) as f32;
    }
}

/// [`dequantize`] straight from a packet's value bytes (big-endian `i32`).
pub fn dequantize_be(sums: &[u8], workers: u16, e: i8, out: &mut [f32]) {
    dequantize_be_kernel(sums, scale(workers, e), out);
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn dequantize_be_kernel(sums: &[u8], s: f64, out: &mut [f32]) {
    for (x, q) in out.iter_mut().zip(sums.chunks_exact(4)) {
        let q = i32::from_be_bytes([q[0], q[1], q[2], q[3]]);
        *x = (f64::from(q) / s) as f32;
    }
}

/// Writes `values` as big-endian bytes into `out` (`4 · values.len()` bytes).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
pub fn put_be(values: &[i32], out: &mut [u8]) {
    for (dst, v) in out.chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

/// Adds big-endian `i32` values into `sums` with wrapping; returns whether any addition overflowed.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
pub fn add_be(sums: &mut [i32], values: &[u8]) -> bool {
    // Overflow by the sign rule (the result's sign differs from both operands'), OR-ed into one
    // word: vectorizes, where `overflowing_add` per element does not.
    let mut overflow = 0i32;
    for (sum, v) in sums.iter_mut().zip(values.chunks_exact(4)) {
        let b = i32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        let s = sum.wrapping_add(b);
        overflow |= (s ^ *sum) & (s ^ b);
        *sum = s;
    }
    overflow < 0
}

/// Largest |result − exact sum| for one element whose exact sum has magnitude `magnitude`, with
/// `workers` contributors and agreed exponent `e`.
pub fn error_bound(workers: u16, e: i8, magnitude: f64) -> f64 {
    if e == EXPONENT_NONE {
        return 0.0;
    }
    let rounding = f64::from(workers) / (2.0 * scale(workers, e));
    let bound = rounding + (magnitude + rounding) * 2f64.powi(-24);
    bound * (1.0 + 2f64.powi(-40))
}

/// What an all-reduce of `inputs` (one tensor per worker, equal lengths, finite) through an agent
/// must return, bit for bit, with `values` elements per packet; `None` if the lengths differ, a
/// value is not finite, or there are more than [`MAX_WORKERS`] inputs.
pub fn reference_sum(inputs: &[&[f32]], values: usize) -> Option<Vec<f32>> {
    let workers = u16::try_from(inputs.len()).ok().filter(|w| (1..=MAX_WORKERS).contains(w))?;
    let len = inputs[0].len();
    if values == 0 || inputs.iter().any(|i| i.len() != len) {
        return None;
    }
    let mut out = vec![0f32; len];
    let (mut q, mut sums) = (vec![0i32; values], vec![0i32; values]);
    for (c, out) in out.chunks_mut(values).enumerate() {
        let range = c * values..c * values + out.len();
        let mut e = EXPONENT_NONE;
        for input in inputs {
            e = e.max(exponent(&input[range.clone()])?);
        }
        sums[..out.len()].fill(0);
        for input in inputs {
            quantize(&input[range.clone()], workers, e, &mut q[..out.len()]);
            for (s, q) in sums.iter_mut().zip(&q[..out.len()]) {
                *s = s.checked_add(*q).expect("the scale leaves room for every worker's value");
            }
        }
        dequantize(&sums[..out.len()], workers, e, out);
    }
    Some(out)
}

/// The largest exponent over `inputs` of each chunk of `values` elements (for error bounds).
pub fn chunk_exponents(inputs: &[&[f32]], values: usize) -> Vec<i8> {
    let len = inputs.first().map_or(0, |i| i.len());
    (0..len.div_ceil(values.max(1)))
        .map(|c| {
            let range = c * values..((c + 1) * values).min(len);
            inputs.iter().filter_map(|i| exponent(&i[range.clone()])).max().unwrap_or(EXPONENT_NONE)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn exponents() {
        assert_eq!(exponent(&[]), Some(EXPONENT_NONE));
        assert_eq!(exponent(&[0.0, -0.0]), Some(EXPONENT_NONE));
        assert_eq!(exponent(&[1.0]), Some(0));
        assert_eq!(exponent(&[-1.5, 0.25]), Some(0));
        assert_eq!(exponent(&[2.0]), Some(1));
        assert_eq!(exponent(&[0.75]), Some(-1));
        assert_eq!(exponent(&[f32::MAX]), Some(127));
        assert_eq!(exponent(&[f32::MIN_POSITIVE]), Some(-126));
        assert_eq!(exponent(&[1e-45]), Some(-127));
        assert_eq!(exponent(&[1.0, f32::NAN]), None);
        assert_eq!(exponent(&[f32::NEG_INFINITY]), None);
    }

    /// The worst case: every worker at the largest value its exponent allows, all one sign.
    #[test]
    fn extreme_values_never_overflow() {
        for workers in [1u16, 2, 3, 8, 100, 255, MAX_WORKERS] {
            for e in [-127i8, -20, 0, 1, 60, 127] {
                let top = f32::from_bits(((i32::from(e) + 127).max(0) as u32) << 23 | 0x007f_ffff);
                let top = if e == -127 { f32::from_bits(0x007f_ffff) } else { top };
                assert_eq!(exponent(&[top]), Some(e), "{top}");
                for sign in [1.0f32, -1.0] {
                    let mut q = [0i32];
                    quantize(&[sign * top], workers, e, &mut q);
                    let mut be = [0u8; 4];
                    quantize_be(&[sign * top], workers, e, &mut be);
                    assert_eq!(i32::from_be_bytes(be), q[0], "the bit trick agrees at the extremes");
                    let total = i64::from(q[0]) * i64::from(workers);
                    assert!(total.abs() <= i64::from(i32::MAX), "workers {workers} e {e}: {total}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn quantize_rounds_half_to_even(x in any::<f32>().prop_filter("finite", |x| x.is_finite()), workers in 1u16..=256) {
            let e = exponent(&[x]).unwrap();
            let mut q = [0i32];
            quantize(&[x], workers, e, &mut q);
            prop_assert_eq!(q[0], (f64::from(x) * scale(workers, e)).round_ties_even() as i32);
        }

        #[test]
        fn byte_kernels_match_the_plain_ones(values in proptest::collection::vec(-1e3f32..1e3, 0..300), workers in 2u16..=8) {
            let e = exponent(&values).unwrap();
            let mut q = vec![0i32; values.len()];
            quantize(&values, workers, e, &mut q);
            let mut bytes = vec![0u8; 4 * values.len()];
            quantize_be(&values, workers, e, &mut bytes);
            let from_bytes: Vec<i32> = bytes.chunks_exact(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect();
            prop_assert_eq!(&from_bytes, &q);
            let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            dequantize(&q, workers, e, &mut a);
            dequantize_be(&bytes, workers, e, &mut b);
            prop_assert_eq!(a, b);
            let mut again = vec![0u8; bytes.len()];
            put_be(&q, &mut again);
            prop_assert_eq!(&again, &bytes);
            let mut sums = q.clone();
            prop_assert!(!add_be(&mut sums, &bytes));
            let mut near = vec![i32::MAX; q.len()];
            prop_assert_eq!(add_be(&mut near, &bytes), q.iter().any(|&v| v > 0), "overflow found iff one happened");
            prop_assert!(sums.iter().zip(&q).all(|(s, q)| *s == q.wrapping_mul(2)));
        }

        #[test]
        fn sum_is_within_the_bound_of_an_f64_sum(
            workers in 1u16..=16,
            chunks in proptest::collection::vec(proptest::collection::vec(-1e6f32..1e6, 8), 16),
            scale_pow in -30i32..30,
        ) {
            let workers_data: Vec<Vec<f32>> = chunks.iter().take(workers as usize)
                .map(|c| c.iter().map(|v| v * 2f32.powi(scale_pow)).collect()).collect();
            let n = workers_data.len() as u16;
            let e = workers_data.iter().map(|c| exponent(c).unwrap()).max().unwrap();
            let mut sums = [0i32; 8];
            for c in &workers_data {
                let mut q = [0i32; 8];
                quantize(c, n, e, &mut q);
                for (s, q) in sums.iter_mut().zip(q) {
                    *s = s.checked_add(q).expect("no overflow by construction");
                }
            }
            let mut out = [0f32; 8];
            dequantize(&sums, n, e, &mut out);
            for i in 0..8 {
                let exact: f64 = workers_data.iter().map(|c| f64::from(c[i])).sum();
                let err = (f64::from(out[i]) - exact).abs();
                let bound = error_bound(n, e, exact.abs());
                prop_assert!(err <= bound, "element {i}: |{} - {exact}| = {err} > bound {bound} (workers {n}, e {e})", out[i]);
            }
        }
    }
}
