//! Latency histograms a worker fills once per event (a session's handshakes done, an
//! HTTP transaction ended) and the metrics endpoint reads: fixed buckets of relaxed
//! atomics, so recording costs a few stores and reading never waits on a worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 1 ms to 10 s, roughly ×2.5 apart, which
/// covers a handshake on the same host as well as one to a slow server far away.
pub const BUCKET_BOUNDS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Observations per bucket (not cumulative: each lands in the first bucket whose bound
/// it does not exceed, or in the overflow slot) and their sum; the count is the buckets'
/// total, so `+Inf` always equals `_count` even when read between a worker's stores.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One slot per bound, and a last one for values above every bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_SECONDS.len() + 1],
    /// Microseconds: an integer sum keeps the atomics plain.
    sum_micros: AtomicU64,
}

/// What a histogram held when read: cumulative counts per bound (as Prometheus wants
/// them; `+Inf` is `count`), the count and the sum in seconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSample {
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Records one observation. One writer per histogram (its worker): a load and a
    /// store per field, no read-modify-write needed.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = BUCKET_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKET_BOUNDS_SECONDS.len());
        bump(&self.buckets[slot], 1);
        bump(&self.sum_micros, elapsed.as_micros().min(u64::MAX as u128) as u64);
    }

    /// Sums the histograms of several workers.
    pub fn sample_all<'a>(histograms: impl IntoIterator<Item = &'a LatencyHistogram>) -> HistogramSample {
        let mut per_slot = [0u64; BUCKET_BOUNDS_SECONDS.len() + 1];
        let mut sum_micros = 0u64;
        for histogram in histograms {
            for (total, slot) in per_slot.iter_mut().zip(&histogram.buckets) {
                *total += slot.load(Ordering::Relaxed);
            }
            sum_micros += histogram.sum_micros.load(Ordering::Relaxed);
        }
        let mut running = 0;
        let cumulative = BUCKET_BOUNDS_SECONDS
            .iter()
            .zip(per_slot)
            .map(|(bound, n)| {
                running += n;
                (*bound, running)
            })
            .collect();
        HistogramSample {
            cumulative,
            count: per_slot.iter().sum(),
            sum_seconds: sum_micros as f64 / 1e6,
        }
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let a = LatencyHistogram::default();
        let b = LatencyHistogram::default();
        a.observe(Duration::from_micros(800));
        a.observe(Duration::from_millis(20));
        b.observe(Duration::from_secs(60));
        let sample = LatencyHistogram::sample_all([&a, &b]);
        assert_eq!(sample.count, 3);
        assert!((sample.sum_seconds - 60.0208).abs() < 1e-9);
        let at = |bound: f64| sample.cumulative.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.01), 1);
        assert_eq!(at(0.025), 2);
        assert_eq!(at(30.0), 2, "60 s is above every bound: only in +Inf (the count)");
    }
}
