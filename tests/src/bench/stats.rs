//! Order statistics of samples: the median and the 99th percentile.
//!
//! Percentiles use the nearest-rank method on the sorted samples, so with
//! fewer than 100 samples the p99 is the largest sample.

use std::time::Duration;

/// Samples of one measurement, in any unit (seconds, bytes per second, ...).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples from values.
    pub fn from_values(values: Vec<f64>) -> Self {
        Self { values }
    }

    /// Adds one sample.
    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    /// Adds a duration, in seconds.
    pub fn push_duration(&mut self, value: Duration) {
        self.values.push(value.as_secs_f64());
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `p`-th percentile (0 < p <= 100), nearest rank; `None` if empty.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        // Nearest rank: the smallest value with at least p% of the samples at
        // or below it.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a rank between 1 and n, n a count of samples"
        )]
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        sorted.get(rank.min(n) - 1).copied()
    }

    /// The median (the 50th percentile, nearest rank).
    pub fn median(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = Samples::from_values((1..=100).map(f64::from).collect());
        assert_eq!(s.median(), Some(50.0));
        assert_eq!(s.p99(), Some(99.0));
        let small = Samples::from_values(vec![3.0, 1.0, 2.0]);
        assert_eq!(small.median(), Some(2.0));
        assert_eq!(small.p99(), Some(3.0));
        assert_eq!(Samples::new().median(), None);
    }
}
