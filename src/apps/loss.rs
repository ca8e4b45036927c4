//! Losses and their reduction across workers.

/// `log(1 + exp(-margin))`, the logistic loss of a sample whose label times score is `margin`,
/// computed without overflow for any margin.
pub fn logistic(margin: f64) -> f64 {
    if margin > 0.0 { (-margin).exp().ln_1p() } else { -margin + margin.exp().ln_1p() }
}

/// A sum of per-sample losses and its count, reduced across workers by summing both.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSum {
    sum: f64,
    count: f64,
}

impl LossSum {
    /// Adds one sample's loss.
    pub fn add(&mut self, loss: f64) {
        self.sum += loss;
        self.count += 1.0;
    }

    /// Adds `count` samples whose losses sum to `sum`.
    pub fn add_many(&mut self, sum: f64, count: f64) {
        self.sum += sum;
        self.count += count;
    }

    /// The pair as barrier values.
    pub fn to_vec(self) -> [f64; 2] {
        [self.sum, self.count]
    }

    /// The pair from summed barrier values.
    pub fn from_slice(v: &[f64]) -> Self {
        Self { sum: v.first().copied().unwrap_or(0.0), count: v.get(1).copied().unwrap_or(0.0) }
    }

    /// The mean loss (NaN for no samples).
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_stable_and_right() {
        assert!((logistic(0.0) - std::f64::consts::LN_2).abs() < 1e-15);
        for m in [-30.0f64, -2.0, 0.5, 3.0, 30.0] {
            let naive = (1.0 + (-m).exp()).ln();
            assert!((logistic(m) - naive).abs() < 1e-12, "{m}");
        }
        assert!(logistic(-1e6).is_finite() && (logistic(1e6)).abs() < 1e-300 + f64::EPSILON);
    }
}
