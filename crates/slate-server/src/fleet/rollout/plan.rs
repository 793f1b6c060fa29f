//! `[rollout."CHANNEL"]` in FLEET.toml: who goes first (canaries, then
//! waves given as shares of the channel's machines), how long each wave
//! soaks before the next, and when the rollout stops by itself
//! (docs/operations.md, "Rollouts").
//!
//! Which wave a machine belongs to is decided by a hash of the channel,
//! the new head and the machine id ([`bucket`]): stable (every request,
//! every replica, every restart gives the same answer without storing a
//! list), monotone (a machine in the first 10% is in the first 50%), and
//! different for every release, so that the same unlucky tenth of the
//! fleet is not always the first to meet a new snapshot.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;
use slate_core::SnapshotId;

use crate::fleet::machine::Machine;

/// Default `halt_at`: a fifth of a wave failing stops the rollout.
pub const DEFAULT_HALT_AT: f64 = 0.2;
/// Default `min_failures`: one machine failing, alone, is an accident of
/// that machine more often than a bad snapshot.
pub const DEFAULT_MIN_FAILURES: u32 = 2;
/// Most waves a rollout may list.
pub const MAX_WAVES: usize = 32;
/// Buckets a machine is hashed into: shares are compared in basis points.
pub const BUCKETS: u32 = 10_000;

/// One channel's rollout plan.
#[derive(Debug, Clone)]
pub struct RolloutPlan {
    /// The channel rolled out.
    pub channel: String,
    /// Wave 0: the machines that get a new head first.
    pub canary: Canary,
    /// Waves 1..: shares of the channel's machines, in order.
    pub waves: Vec<Wave>,
    /// Share of a released wave's machines whose failure halts the rollout.
    pub halt_at: f64,
    /// Fewest failed machines in a wave that can halt it.
    pub min_failures: u32,
}

/// The canary machines: a machine listed by id, or whose hostname matches
/// the glob, or that carries every label given, is a canary.
#[derive(Debug, Clone, Default)]
pub struct Canary {
    /// Machine ids.
    pub machines: Vec<String>,
    /// A hostname glob (case-insensitive) and its text.
    pub hostname: Option<(String, GlobMatcher)>,
    /// Labels that must all be present with these values.
    pub labels: BTreeMap<String, String>,
}

impl Canary {
    /// Whether `m` is a canary.
    pub fn matches(&self, m: &Machine) -> bool {
        self.machines.contains(&m.id)
            || self
                .hostname
                .as_ref()
                .is_some_and(|(_, g)| m.hostname.as_deref().is_some_and(|h| g.is_match(h)))
            || (!self.labels.is_empty() && self.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)))
    }

    /// Whether the plan names no canary at all.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty() && self.hostname.is_none() && self.labels.is_empty()
    }
}

/// A wave: the first `percent` of the channel's machines (by [`bucket`]),
/// released `after` seconds after the previous wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave {
    /// 1 to 100, increasing from wave to wave; the last is 100.
    pub percent: u32,
    /// Soak time of the previous wave, seconds.
    pub after: u64,
}

/// Where `machine` falls for the rollout of `head` on `channel`: 0 to
/// [`BUCKETS`] - 1, uniformly. BLAKE3 in key-derivation mode (a domain of
/// its own) over the three, so no other hash in slate can collide with it.
pub fn bucket(channel: &str, head: &SnapshotId, machine: &str) -> u32 {
    let mut h = blake3::Hasher::new_derive_key("slate 2026 rollout wave");
    h.update(&(channel.len() as u64).to_le_bytes());
    h.update(channel.as_bytes());
    h.update(head.as_bytes());
    h.update(machine.as_bytes());
    let mut x = [0u8; 8];
    x.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // The top bits of a 64-bit uniform value scaled to the range: no
    // modulo bias.
    ((u128::from(u64::from_le_bytes(x)) * u128::from(BUCKETS)) >> 64) as u32
}

impl RolloutPlan {
    /// The wave `m` is in for the rollout of `head`: 0 for a canary, else
    /// the first wave whose share covers its bucket.
    pub fn wave_of(&self, head: &SnapshotId, m: &Machine) -> u32 {
        if self.canary.matches(m) {
            return 0;
        }
        let b = bucket(&self.channel, head, &m.id);
        self.wave_of_bucket(b)
    }

    /// The first wave (from 1) whose share covers bucket `b`.
    pub fn wave_of_bucket(&self, b: u32) -> u32 {
        self.waves
            .iter()
            .position(|w| b < w.percent * (BUCKETS / 100))
            .map_or(self.waves.len() as u32, |i| i as u32 + 1)
    }

    /// Waves after the canaries.
    pub fn last_wave(&self) -> u32 {
        self.waves.len() as u32
    }

    /// A wave's name for people: `canary`, `wave 2 (50%)`.
    pub fn wave_name(&self, wave: u32) -> String {
        match wave {
            0 => "canary".into(),
            k => match self.waves.get(k as usize - 1) {
                Some(w) => format!("wave {k} ({}%)", w.percent),
                None => format!("wave {k}"),
            },
        }
    }
}

// ---- the file as written ----------------------------------------------

/// `[rollout."CHANNEL"]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    canary: Option<RawCanary>,
    waves: Vec<RawWave>,
    halt_at: Option<f64>,
    min_failures: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    #[serde(default)]
    machines: Vec<String>,
    hostname: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    percent: u32,
    after: String,
}

impl RawRollout {
    /// Check the section of `channel`; the error is one sentence.
    pub(crate) fn check(self, channel: &str) -> Result<RolloutPlan, String> {
        slate_repo::channel::check_name(channel).map_err(|e| e.to_string())?;
        let mut canary = Canary::default();
        if let Some(c) = self.canary {
            for id in &c.machines {
                crate::fleet::machine::check_token("canary.machines", id, crate::fleet::machine::MAX_ID)?;
            }
            canary.machines = c.machines;
            if let Some(h) = c.hostname {
                if h.is_empty() {
                    return Err("canary.hostname is empty".into());
                }
                let g = GlobBuilder::new(&h)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("canary.hostname {h:?} is not a valid glob: {}", e.kind()))?;
                canary.hostname = Some((h, g.compile_matcher()));
            }
            canary.labels = c.labels;
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(format!(
                "waves must list 1 to {MAX_WAVES} waves, the last with percent = 100"
            ));
        }
        let mut waves = Vec::new();
        let mut last = 0;
        for (i, w) in self.waves.iter().enumerate() {
            if w.percent <= last || w.percent > 100 {
                return Err(format!(
                    "waves[{i}].percent = {}: percentages must grow from wave to wave, from 1 to 100",
                    w.percent
                ));
            }
            last = w.percent;
            let after = slate_repo::pending::parse_grace(&w.after)
                .map_err(|e| format!("waves[{i}].after: {e}"))?
                .as_secs();
            waves.push(Wave {
                percent: w.percent,
                after,
            });
        }
        if last != 100 {
            return Err(format!(
                "the last wave has percent = {last}: it must be 100, so that the rollout reaches every machine"
            ));
        }
        let halt_at = self.halt_at.unwrap_or(DEFAULT_HALT_AT);
        if !(halt_at > 0.0 && halt_at <= 1.0) {
            return Err(format!(
                "halt_at = {halt_at}: it is a share of a wave's machines, more than 0 and at most 1"
            ));
        }
        let min_failures = self.min_failures.unwrap_or(DEFAULT_MIN_FAILURES);
        if min_failures == 0 {
            return Err("min_failures must be at least 1".into());
        }
        Ok(RolloutPlan {
            channel: channel.to_string(),
            canary,
            waves,
            halt_at,
            min_failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<RolloutPlan, String> {
        let raw: RawRollout = toml::from_str(text).map_err(|e| e.message().to_string())?;
        raw.check("lab")
    }

    fn three_waves() -> RolloutPlan {
        plan(
            "canary = { hostname = \"canary-*\", labels = { role = \"canary\" }, machines = [\"m-7\"] }\n\
             waves = [{ percent = 10, after = \"1h\" }, { percent = 50, after = \"4h\" }, \
             { percent = 100, after = \"12h\" }]\n",
        )
        .unwrap()
    }

    fn machine(id: &str) -> Machine {
        Machine {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn shares_match_the_percentages_over_10000_machines() {
        let p = three_waves();
        let head = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        let mut per_wave = [0u32; 4];
        for i in 0..10_000 {
            per_wave[p.wave_of(&head, &machine(&format!("host:node-{i}"))) as usize] += 1;
        }
        assert_eq!(per_wave[0], 0, "no canary among these");
        // 10%, 40% and 50% of 10,000, within about four standard deviations.
        for (got, want) in per_wave[1..].iter().zip([1000u32, 4000, 5000]) {
            assert!(got.abs_diff(want) < 200, "{per_wave:?}");
        }
    }

    #[test]
    fn a_machine_stays_in_for_later_waves_and_releases_sample_differently() {
        let p = three_waves();
        let h1 = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        let h2 = SnapshotId::from_hex(&"cd".repeat(32)).unwrap();
        let mut moved = 0;
        for i in 0..10_000 {
            let id = format!("m{i}");
            let b = bucket("lab", &h1, &id);
            assert!(b < BUCKETS);
            // Monotone: in wave k for 10% means in for 50% and 100%.
            let w = p.wave_of_bucket(b);
            for (k, wave) in p.waves.iter().enumerate() {
                let released_through = k as u32 + 1;
                let inside = b < wave.percent * 100;
                assert_eq!(inside, w <= released_through, "{id}: bucket {b}, wave {w}");
            }
            // Stable: the same answer every time.
            assert_eq!(b, bucket("lab", &h1, &id));
            if (b < 1000) != (bucket("lab", &h2, &id) < 1000) {
                moved += 1;
            }
        }
        // About 18% of machines change sides of the 10% line between
        // two releases (2 * 0.1 * 0.9), not 0.
        assert!((1400..2200).contains(&moved), "{moved}");
        // The channel counts too.
        let same: usize = (0..1000)
            .filter(|i| bucket("lab", &h1, &format!("m{i}")) == bucket("lab2", &h1, &format!("m{i}")))
            .count();
        assert!(same < 5, "{same}");
    }

    #[test]
    fn canaries_by_id_hostname_or_labels() {
        let p = three_waves();
        let head = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(p.wave_of(&head, &machine("m-7")), 0);
        let mut m = machine("x");
        m.hostname = Some("CANARY-3".into());
        assert_eq!(p.wave_of(&head, &m), 0);
        let mut m = machine("y");
        m.labels.insert("role".into(), "canary".into());
        assert_eq!(p.wave_of(&head, &m), 0);
        m.labels.insert("role".into(), "desk".into());
        assert_ne!(p.wave_of(&head, &m), 0);
        assert_eq!(p.wave_name(0), "canary");
        assert_eq!(p.wave_name(2), "wave 2 (50%)");
        assert_eq!((p.halt_at, p.min_failures), (DEFAULT_HALT_AT, DEFAULT_MIN_FAILURES));
        assert_eq!(p.waves[2].after, 12 * 3600);
    }

    #[test]
    fn bad_plans_are_refused_with_a_reason() {
        for (text, needle) in [
            ("waves = []", "1 to 32 waves"),
            ("waves = [{ percent = 50, after = \"1h\" }]", "must be 100"),
            (
                "waves = [{ percent = 50, after = \"1h\" }, { percent = 50, after = \"1h\" }, { percent = 100, after = \"1h\" }]",
                "must grow",
            ),
            ("waves = [{ percent = 101, after = \"1h\" }]", "must grow"),
            ("waves = [{ percent = 100, after = \"soon\" }]", "waves[0].after"),
            ("waves = [{ percent = 100, after = \"1h\" }]\nhalt_at = 0.0", "halt_at"),
            ("waves = [{ percent = 100, after = \"1h\" }]\nhalt_at = 1.5", "halt_at"),
            ("waves = [{ percent = 100, after = \"1h\" }]\nmin_failures = 0", "min_failures"),
            ("waves = [{ percent = 100, after = \"1h\" }]\ncanary = { hostname = \"[\" }", "not a valid glob"),
            ("waves = [{ percent = 100, after = \"1h\" }]\ncanary = { machines = [\"a b\"] }", "canary.machines"),
            ("waves = [{ percent = 100, after = \"1h\" }]\nspeed = 1", "unknown field"),
        ] {
            let e = plan(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
