//! Latency summaries: every sample is kept (a run holds at most a few
//! hundred thousand), sorted once, and read by nearest rank, so a
//! percentile is a latency some request really had.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Nearest-rank percentile `p` (0 < p <= 100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // The small tolerance keeps 99.9% of 1000 at rank 999 despite rounding
    // (0.999 * 1000 is a hair over 999 in binary).
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What one kind of request gave in one phase.
#[derive(Debug, Default, Clone)]
pub struct Kind {
    /// Latencies of the requests that succeeded.
    pub ok: Vec<Duration>,
    /// Failures by cause (`status 500`, `timeout`, `connect`, ...).
    pub errors: BTreeMap<String, u64>,
}

/// The summary of a [`Kind`], in milliseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Failures by cause.
    pub error_kinds: BTreeMap<String, u64>,
    /// Percentiles and maximum of the successful requests, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

impl Kind {
    /// Sort the samples and summarise them.
    pub fn summary(&mut self) -> Summary {
        self.ok.sort_unstable();
        let s = &self.ok;
        let mean = (!s.is_empty()).then(|| s.iter().sum::<Duration>() / s.len() as u32);
        Summary {
            ok: s.len() as u64,
            errors: self.errors.values().sum(),
            error_kinds: self.errors.clone(),
            p50_ms: ms(percentile(s, 50.0)),
            p95_ms: ms(percentile(s, 95.0)),
            p99_ms: ms(percentile(s, 99.0)),
            p999_ms: ms(percentile(s, 99.9)),
            max_ms: ms(s.last().copied()),
            mean_ms: ms(mean),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(percentile(&s, 50.0), Some(d(50)));
        assert_eq!(percentile(&s, 99.0), Some(d(99)));
        assert_eq!(percentile(&s, 100.0), Some(d(100)));
        assert_eq!(percentile(&s, 0.1), Some(d(1)));
        assert_eq!(percentile(&[d(7)], 99.0), Some(d(7)));
        assert_eq!(percentile(&[], 50.0), None);
        // 1,000 samples: p99 is the 990th, p99.9 the 999th.
        let s: Vec<Duration> = (1..=1000).map(d).collect();
        assert_eq!(percentile(&s, 99.0), Some(d(990)));
        assert_eq!(percentile(&s, 99.9), Some(d(999)));
    }

    #[test]
    fn summary_sorts_and_counts() {
        let mut k = Kind {
            ok: vec![d(30), d(10), d(20), d(40)],
            ..Default::default()
        };
        k.errors.insert("status 500".into(), 2);
        k.errors.insert("timeout".into(), 1);
        let s = k.summary();
        assert_eq!((s.ok, s.errors), (4, 3));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms, s.mean_ms), (20.0, 40.0, 40.0, 25.0));
    }
}
