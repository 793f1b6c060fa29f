//! When each simulated machine makes its pass: the pure part of the load
//! generator, kept apart so it can be tested without a server.
//!
//! Two shapes. *Steady*: machines poll every `interval` with jitter, so
//! seen from the server, passes arrive as a Poisson process of rate
//! `machines / interval`; the gaps are exponential. Machines take their
//! turns in a shuffled order, each once before any goes again, as with a
//! real hourly timer. *Burst*: a lab powering on at 8:00: every machine
//! makes exactly one pass at a uniformly random moment within the window.

use std::time::Duration;

/// A small deterministic generator (SplitMix64), so a run is repeatable
/// from its seed; statistical quality is ample for arrival times.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n
    }
}

/// One planned pass: when (from the start of the phase) and which machine
/// (an index into the token list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Offset from the start of the phase.
    pub at: Duration,
    /// Index of the machine.
    pub machine: usize,
}

/// Fisher-Yates shuffle of 0..n.
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Steady polling: a Poisson process of rate `machines / interval` over
/// `duration`; machines in a shuffled round robin.
pub fn steady(machines: usize, interval: Duration, duration: Duration, rng: &mut Rng) -> Vec<Arrival> {
    if machines == 0 || interval.is_zero() {
        return Vec::new();
    }
    let rate = machines as f64 / interval.as_secs_f64();
    let order = shuffled(machines, rng);
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        // Exponential gap: -ln(U)/rate, with U in (0, 1].
        t += -(1.0 - rng.unit()).ln() / rate;
        if t >= duration.as_secs_f64() {
            return out;
        }
        out.push(Arrival {
            at: Duration::from_secs_f64(t),
            machine: order[out.len() % machines],
        });
    }
}

/// Burst: each machine once, at a uniformly random moment in `window`,
/// sorted by time.
pub fn burst(machines: usize, window: Duration, rng: &mut Rng) -> Vec<Arrival> {
    let mut out: Vec<Arrival> = (0..machines)
        .map(|machine| Arrival {
            at: window.mul_f64(rng.unit()),
            machine,
        })
        .collect();
    out.sort_by_key(|a| a.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_and_turns() {
        let mut rng = Rng::new(7);
        // 10,000 machines hourly for 20 minutes: about 3,333 passes.
        let a = steady(10_000, Duration::from_secs(3600), Duration::from_secs(1200), &mut rng);
        let n = a.len() as f64;
        // Poisson: the standard deviation is sqrt(3333) ~ 58; 5 sigma.
        assert!((n - 3333.3).abs() < 290.0, "{n} passes");
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.last().unwrap().at < Duration::from_secs(1200));
        // Fewer passes than machines: no machine goes twice.
        let mut seen = std::collections::HashSet::new();
        assert!(a.iter().all(|x| seen.insert(x.machine)));
        // Exponential gaps: the mean is 1/rate = 0.36 s; the share of gaps
        // under the mean is 1 - 1/e ~ 0.632.
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.36).abs() < 0.03, "mean gap {mean}");
        let under = gaps.iter().filter(|g| **g < 0.36).count() as f64 / gaps.len() as f64;
        assert!((under - 0.632).abs() < 0.04, "share under the mean {under}");
    }

    #[test]
    fn steady_wraps_round_robin() {
        let mut rng = Rng::new(1);
        let a = steady(10, Duration::from_secs(1), Duration::from_secs(10), &mut rng);
        assert!(a.len() > 20);
        // Each block of 10 consecutive passes visits every machine once.
        let mut first: Vec<usize> = a[..10].iter().map(|x| x.machine).collect();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(a[0].machine, a[10].machine);
    }

    #[test]
    fn burst_everyone_once_in_window() {
        let mut rng = Rng::new(3);
        let w = Duration::from_secs(60);
        let a = burst(10_000, w, &mut rng);
        assert_eq!(a.len(), 10_000);
        let mut m: Vec<usize> = a.iter().map(|x| x.machine).collect();
        m.sort();
        assert_eq!(m, (0..10_000).collect::<Vec<_>>());
        assert!(a.windows(2).all(|x| x[0].at <= x[1].at));
        assert!(a.iter().all(|x| x.at < w));
        // Uniform: each 10 s sixth holds about 1,667 (sd ~37).
        for k in 0..6 {
            let lo = Duration::from_secs(10 * k);
            let c = a
                .iter()
                .filter(|x| x.at >= lo && x.at < lo + Duration::from_secs(10))
                .count();
            assert!((c as i64 - 1667).abs() < 200, "sixth {k}: {c}");
        }
    }

    #[test]
    fn same_seed_same_plan() {
        let p = |s| steady(100, Duration::from_secs(10), Duration::from_secs(30), &mut Rng::new(s));
        assert_eq!(p(5), p(5));
        assert_ne!(p(5), p(6));
    }
}
