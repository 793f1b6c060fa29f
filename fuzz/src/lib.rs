//! The fuzz targets: one thin function per decoder that reads bytes an
//! attacker can choose (a server, a mirror, a cache, a client of the server,
//! a file on a medium). Each calls the project's own public decoder on the
//! input and, where the decoder accepts it, checks a property that must hold
//! for every accepted input (the result re-encodes to something that
//! decodes to the same value, a range lies inside its object, ...). A panic,
//! an overflow (the fuzz profile keeps overflow checks on), an abort or a
//! hang is what AFL++ reports.
//!
//! `main.rs` picks a target by name; [`TARGETS`] lists them for the scripts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use slate_core::id::{ChunkId, Id32, PackId, SnapshotId};

pub mod seeds;
pub mod targets;

/// A fuzz target: takes the raw input, returns nothing, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name the scripts and the corpus directory use.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", targets::manifest),
    ("pack_index", targets::pack_index),
    ("pack_frame", targets::pack_frame),
    ("snapshot", targets::snapshot),
    ("signatures", targets::signatures),
    ("delta", targets::delta),
    ("channel", targets::channel),
    ("home_index", targets::home_index),
    ("home_objects", targets::home_objects),
    ("request_path", targets::request_path),
    ("range", targets::range),
    ("fleet_json", targets::fleet_json),
    ("state_policy", targets::state_policy),
    ("state_bundle", targets::state_bundle),
    ("key_file", targets::key_file),
    ("trust", targets::trust),
    ("profile", targets::profile),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The reference chunks the delta target's fake machine holds: a delta
/// whose items name these (as the seed corpus's do) rebuilds real chunks,
/// so the fuzzer starts from inputs that reach every step of `apply`.
pub fn reference_chunks() -> HashMap<ChunkId, Vec<u8>> {
    let mut m = HashMap::new();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..3000u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i as u32 * 7) % 251) as u8)
            .collect();
        m.insert(ChunkId::of(&data), data);
    }
    m
}

/// A scratch directory for targets that need files: one per process (AFL++
/// runs many inputs in each), under `$SLATE_FUZZ_SCRATCH`, which
/// `scripts/fuzz.sh` sets inside the run's output and removes afterwards
/// (a forked target is killed, never exits cleanly, so it cannot clean up).
pub fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("SLATE_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("slate-fuzz-scratch"));
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("a scratch directory for the fuzz target");
        dir
    })
}

/// A path inside [`scratch`].
pub fn scratch_path(name: &str) -> PathBuf {
    scratch().join(name)
}

/// A fixed id for targets that need one that the input did not name.
pub fn fixed_id(tag: u8) -> Id32 {
    Id32::hash(&[tag; 7])
}

/// A fixed snapshot id.
pub fn fixed_snapshot() -> SnapshotId {
    SnapshotId(fixed_id(1))
}

/// A fixed pack id (names the pack in error messages only).
pub fn fixed_pack() -> PackId {
    PackId(fixed_id(2))
}
