//! A lock-free histogram with fixed bucket bounds, for metrics the journal
//! thread records (fsync durations, entries per group commit) and the broker
//! exports in Prometheus' format.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of observations at or below each bound, plus their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, plus one for larger values.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

/// What a histogram held at one moment; `buckets` are cumulative, as Prometheus wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it).
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Adds another snapshot of a histogram with the same bounds (the same
    /// series kept per directory, added up): mismatched bounds add nothing
    /// to the buckets.
    pub fn add(&mut self, o: &HistogramSnapshot) {
        if self.buckets.is_empty() {
            self.buckets = o.buckets.clone();
        } else if self.buckets.len() == o.buckets.len() {
            for (b, ob) in self.buckets.iter_mut().zip(&o.buckets) {
                if b.0 == ob.0 {
                    b.1 += ob.1;
                }
            }
        }
        self.count += o.count;
        self.sum += o.sum;
    }
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of `v`.
    pub fn observe_n(&self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        self.sum.fetch_add(v.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            running += c.load(Ordering::Relaxed);
            buckets.push((*b, running));
        }
        let over = self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count: running + over,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// Bounds for durations in microseconds: 50 µs to 10 s.
pub const MICROS_BOUNDS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    10_000_000,
];

/// Finer bounds for the stages of a publish, in microseconds: 10 µs to 1 s.
pub const STAGE_MICROS_BOUNDS: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// Bounds for counts per batch: 1 to 16,384.
pub const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16_384];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[10, 100]);
        for v in [1, 10, 11, 100, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10, 2), (100, 4)]);
        assert_eq!((s.count, s.sum), (5, 1122));
    }

    #[test]
    fn snapshots_of_the_same_bounds_add_bucket_by_bucket() {
        let (a, b) = (Histogram::new(&[10, 100]), Histogram::new(&[10, 100]));
        a.observe(5);
        b.observe(50);
        b.observe(500);
        let mut total = HistogramSnapshot::default();
        total.add(&a.snapshot());
        total.add(&b.snapshot());
        assert_eq!(total.buckets, vec![(10, 1), (100, 2)]);
        assert_eq!((total.count, total.sum), (3, 555));
    }
}
