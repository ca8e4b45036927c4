//! A tiny counter-seeded generator shared by initializers and synthetic data.
//!
//! SplitMix64 (Steele et al., OOPSLA'14): one generator per row or per sample, seeded from the job
//! seed and the row's or sample's index, so values never depend on which node computes them or in
//! which order. Not for cryptography.

use crate::proto::partition::mix64;

/// SplitMix64 state.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for item `index` of the stream `seed`.
    pub(crate) fn for_item(seed: u64, index: u64) -> Self {
        Self(mix64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)` with 24 bits.
    pub(crate) fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller); `1 - u` keeps the logarithm's argument in (0, 1].
    pub(crate) fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (1.0 - self.next_f64(), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
