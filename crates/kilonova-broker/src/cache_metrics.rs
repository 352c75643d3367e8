//! The entry cache's series with Pulsar's names (its `ManagedLedgerCacheMetrics`:
//! `pulsar_ml_cache_*`, `pulsar_ml_count`), all gauges labelled `cluster`.
//!
//! Pulsar's rates (`…_hits_rate`, `…_throughput`) and `pulsar_ml_cache_evictions`
//! are measured over its stats period; here the period is the time between
//! two scrapes, at least [`MIN_WINDOW`]: a scrape sooner than that reports the
//! last window again. Kilonova's cache holds each entry as one buffer, not in
//! Netty's pooled arena, so the `pool_*` series report that: each cached entry
//! is one active allocation, classed small/normal/huge by Netty's default size
//! classes, and the pool's allocated and used bytes are the bytes held.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kilonova_storage::CacheStats;

use crate::rate_meter::RateMeter;

/// The shortest window rates are measured over.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(1);

/// The cache's rates over the last window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CacheRates {
    pub hits: f64,
    pub hit_bytes: f64,
    pub misses: f64,
    pub miss_bytes: f64,
    /// Evictions during the window (a count, as Pulsar's gauge).
    pub evictions: u64,
}

/// Measures [`CacheRates`] from the cache's counters, a window at a time.
#[derive(Debug, Default)]
pub(crate) struct CacheMeter {
    since: Option<Instant>,
    hits: RateMeter,
    hit_bytes: RateMeter,
    misses: RateMeter,
    miss_bytes: RateMeter,
    evictions_before: u64,
    evictions: u64,
}

impl CacheMeter {
    /// The rates as of `now`: a new window's if the last one lasted at least
    /// [`MIN_WINDOW`], else the last window's.
    pub(crate) fn rates(&mut self, s: &CacheStats, now: Instant) -> CacheRates {
        let secs = match self.since {
            // The first reading starts the first window.
            None => Some(0.0),
            Some(t) if now.duration_since(t) >= MIN_WINDOW => {
                Some(now.duration_since(t).as_secs_f64())
            }
            Some(_) => None,
        };
        if let Some(secs) = secs {
            self.hits.tick(s.hits, secs);
            self.hit_bytes.tick(s.hit_bytes, secs);
            self.misses.tick(s.misses, secs);
            self.miss_bytes.tick(s.miss_bytes, secs);
            if secs > 0.0 {
                self.evictions = s.evictions.saturating_sub(self.evictions_before);
            }
            self.evictions_before = s.evictions;
            self.since = Some(now);
        }
        CacheRates {
            hits: self.hits.rate(),
            hit_bytes: self.hit_bytes.rate(),
            misses: self.misses.rate(),
            miss_bytes: self.miss_bytes.rate(),
            evictions: self.evictions,
        }
    }
}

/// The `pulsar_ml_*` series; `managed_logs` is the number of open managed logs.
pub(crate) fn render(
    out: &mut String,
    cluster: &str,
    s: &CacheStats,
    r: &CacheRates,
    managed_logs: u64,
) {
    let series: [(&str, &str, f64); 16] = [
        (
            "pulsar_ml_count",
            "Managed logs open (loaded persistent topics)",
            managed_logs as f64,
        ),
        (
            "pulsar_ml_cache_used_size",
            "Bytes of entries held by the entry cache",
            s.bytes as f64,
        ),
        (
            "pulsar_ml_cache_entries",
            "Entries held by the entry cache",
            s.entries as f64,
        ),
        (
            "pulsar_ml_cache_inserted_entries_total",
            "Entries put in the entry cache",
            s.inserted as f64,
        ),
        (
            "pulsar_ml_cache_evicted_entries_total",
            "Entries evicted from the entry cache",
            s.evicted_entries as f64,
        ),
        (
            "pulsar_ml_cache_evictions",
            "Cache evictions during the last window",
            r.evictions as f64,
        ),
        (
            "pulsar_ml_cache_hits_rate",
            "Reads served by the entry cache per second",
            r.hits,
        ),
        (
            "pulsar_ml_cache_hits_throughput",
            "Bytes per second served by the entry cache",
            r.hit_bytes,
        ),
        (
            "pulsar_ml_cache_misses_rate",
            "Reads the entry cache could not serve per second",
            r.misses,
        ),
        (
            "pulsar_ml_cache_misses_throughput",
            "Bytes per second read from storage after a cache miss",
            r.miss_bytes,
        ),
        (
            "pulsar_ml_cache_pool_allocated",
            "Bytes the entry cache holds (no pooled arena: as used)",
            s.bytes as f64,
        ),
        (
            "pulsar_ml_cache_pool_used",
            "Bytes the entry cache holds",
            s.bytes as f64,
        ),
        (
            "pulsar_ml_cache_pool_active_allocations",
            "Entries the cache holds, one buffer each",
            s.entries as f64,
        ),
        (
            "pulsar_ml_cache_pool_active_allocations_small",
            "Cached entries up to 28 KiB",
            s.entries_small as f64,
        ),
        (
            "pulsar_ml_cache_pool_active_allocations_normal",
            "Cached entries over 28 KiB, up to 16 MiB",
            s.entries_normal as f64,
        ),
        (
            "pulsar_ml_cache_pool_active_allocations_huge",
            "Cached entries over 16 MiB",
            s.entries_huge as f64,
        ),
    ];
    let cluster = crate::metrics::escape(cluster);
    for (name, help, v) in series {
        crate::metrics::header(out, name, "gauge", help);
        let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hits: u64, hit_bytes: u64, evictions: u64) -> CacheStats {
        CacheStats {
            hits,
            hit_bytes,
            evictions,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_measured_over_windows_of_at_least_a_second() {
        let mut m = CacheMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.rates(&stats(10, 1000, 1), t0), CacheRates::default());
        let r = m.rates(&stats(30, 3000, 4), t0 + Duration::from_secs(2));
        assert_eq!((r.hits, r.hit_bytes, r.evictions), (10.0, 1000.0, 3));
        let again = m.rates(&stats(90, 9000, 9), t0 + Duration::from_millis(2500));
        assert_eq!(
            again, r,
            "a window shorter than a second reports the last one"
        );
        let r = m.rates(&stats(90, 9000, 9), t0 + Duration::from_secs(4));
        assert_eq!(
            (r.hits, r.evictions),
            (30.0, 5),
            "from the last window's end"
        );
        let r = m.rates(&stats(90, 9000, 9), t0 + Duration::from_secs(5));
        assert_eq!((r.hits, r.hit_bytes, r.evictions), (0.0, 0.0, 0));
    }

    #[test]
    fn every_series_is_a_gauge_labelled_with_the_cluster() {
        let mut out = String::new();
        let s = CacheStats {
            bytes: 500,
            entries: 3,
            entries_small: 3,
            ..Default::default()
        };
        render(&mut out, "standalone", &s, &CacheRates::default(), 2);
        assert!(
            out.contains("pulsar_ml_count{cluster=\"standalone\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("pulsar_ml_cache_used_size{cluster=\"standalone\"} 500\n"));
        assert!(out
            .contains("pulsar_ml_cache_pool_active_allocations_small{cluster=\"standalone\"} 3\n"));
        assert_eq!(out.matches("# TYPE pulsar_ml_").count(), 16);
        assert_eq!(out.matches(" gauge\n").count(), 16);
    }
}
