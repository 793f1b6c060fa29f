//! Helpers around the project's bit-for-bit tree digest,
//! `<workspace>/../shared/bench/treedigest.py` (override with the
//! `SLATE_TREEDIGEST` environment variable).
//!
//! * [`digest`] runs `python3 treedigest.py TREE` and returns its output;
//! * [`assert_same_tree`] panics with treedigest's `--diff` summary and the
//!   differing lines when two trees differ;
//! * [`assert_sparse_preserved`] checks block allocation, which treedigest
//!   deliberately ignores.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Slack allowed by [`assert_sparse_preserved`]: 64 KiB of 512-byte blocks.
const SPARSE_SLACK_BLOCKS: u64 = 64 * 1024 / 512;

/// Path of `treedigest.py`: `$SLATE_TREEDIGEST` if set, otherwise
/// `<workspace root>/../shared/bench/treedigest.py`.
pub fn treedigest_script() -> PathBuf {
    if let Some(p) = std::env::var_os("SLATE_TREEDIGEST") {
        return PathBuf::from(p);
    }
    // CARGO_MANIFEST_DIR is <workspace>/crates/slate-cli.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/treedigest.py")
}

fn run_script(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let script = treedigest_script();
    assert!(
        script.is_file(),
        "treedigest script not found at {} (set SLATE_TREEDIGEST to its path)",
        script.display()
    );
    Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running python3 {}: {e}", script.display()))
}

/// The treedigest of `tree`: one line per entry plus a final `TOTAL` line.
/// Panics (with the script's stderr) if the script fails.
pub fn digest(tree: &Path) -> String {
    let out = run_script(&[tree.as_os_str()]);
    assert!(
        out.status.success(),
        "treedigest {} failed ({}):\n{}",
        tree.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("treedigest output is ASCII")
}

/// Assert that trees `a` (the reference) and `b` digest the same. On a
/// mismatch, both digests are kept in a temporary directory and the panic
/// shows `treedigest.py --diff` and the first lines only in one of them.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (da, db) = (digest(a), digest(b));
    if da == db {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("treedigest-")
        .tempdir()
        .expect("temp dir for digests")
        .keep();
    let (fa, fb) = (dir.join("a.digest"), dir.join("b.digest"));
    std::fs::write(&fa, &da).expect("write digest A");
    std::fs::write(&fb, &db).expect("write digest B");
    let out = run_script(&["--diff".as_ref(), fa.as_os_str(), fb.as_os_str()]);

    let mut msg = format!(
        "trees differ\n  A = {}\n  B = {}\ndigests kept in {}\n--- treedigest --diff A B:\n{}{}",
        a.display(),
        b.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let entries = |d: &str| -> Vec<String> {
        d.lines()
            .filter(|l| !l.starts_with("TOTAL "))
            .map(str::to_owned)
            .collect()
    };
    let (la, lb) = (entries(&da), entries(&db));
    let (sa, sb): (HashSet<&String>, HashSet<&String>) = (la.iter().collect(), lb.iter().collect());
    const SHOW: usize = 10;
    for (sign, lines, other) in [("-", &la, &sb), ("+", &lb, &sa)] {
        let differing: Vec<_> = lines.iter().filter(|l| !other.contains(l)).collect();
        let _ = writeln!(
            msg,
            "--- {} line(s) only in {} (first {SHOW}):",
            differing.len(),
            if sign == "-" { "A" } else { "B" }
        );
        for l in differing.into_iter().take(SHOW) {
            let _ = writeln!(msg, "{sign} {l}");
        }
    }
    panic!("{msg}");
}

/// Assert that `rel`'s allocation in tree `dst` is no more than in tree `src`
/// plus 64 KiB, i.e. that a copy/checkout kept the holes of a sparse file.
pub fn assert_sparse_preserved(src: &Path, dst: &Path, rel: &str) {
    let meta = |tree: &Path| {
        let p = tree.join(rel);
        std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
    };
    let (ms, md) = (meta(src), meta(dst));
    assert_eq!(ms.size(), md.size(), "{rel}: sizes differ");
    assert!(
        md.blocks() <= ms.blocks() + SPARSE_SLACK_BLOCKS,
        "{rel}: sparseness lost: {} allocates {} blocks of 512 bytes, source {} only {} \
         (size {} bytes)",
        dst.display(),
        md.blocks(),
        src.display(),
        ms.blocks(),
        ms.size()
    );
}
