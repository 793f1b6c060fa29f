//! The agent and `slate pull` against a hostile machine state, download
//! cache, tree or mirror, on 127.0.0.1: a state file that disagrees with
//! the booted slot, a delta whose header claims 2^60 items, cached ranges
//! and deltas damaged on disk between two passes, a kernel symlink that
//! leads out of its slot, a mirror whose channel goes back in time, an
//! index that lies about its pack, and a pull without trusted keys. Each
//! ends in one clear error (or a silent repair, for the cache) and nothing
//! kept or changed that should not be.

use std::path::{Path, PathBuf};

use serde_json::Value;
use slate_core::pack::PackIndex;

use super::{
    assert_nothing_switched, lab_with_machine, one_error_line, small_tree, Agent, Fault, Lab, Proxy, Reference, Slots,
};
use crate::support::{s, slate, slate_ok};

/// Write a kernel command line naming `slot` for `m`'s commands.
fn cmdline(m: &Agent, slot: &str) -> PathBuf {
    let p = m.dir.join(format!("cmdline-{slot}"));
    std::fs::write(
        &p,
        format!("BOOT_IMAGE=/slate/{slot}/vmlinuz root=LABEL=slate-{slot} ro slate.slot={slot} quiet\n"),
    )
    .unwrap();
    p
}

/// The machine's row in `slate fleet status --json`.
fn fleet_row(lab: &Lab, m: &Agent) -> Value {
    let out = lab.fleet_status();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["machine"] == m.name.as_str())
        .unwrap_or_else(|| panic!("no report from {}: {out}", m.name))
        .clone()
}

#[test]
fn an_agent_whose_state_disagrees_with_the_booted_slot_refuses_to_write_it() {
    let (mut lab, mut m, ra, rb) = lab_with_machine(64 << 10);
    // b is written and marked good: the state says b runs.
    m.target("b");
    assert_eq!(m.update()["result"], "ok");
    m.boot_ok("b");
    assert_eq!(m.status()["active"], "b");
    // But the kernel command line says the machine booted slot a (the
    // bootloader fell back behind the agent's back, or the state file was
    // restored from elsewhere). The next update's reserve slot is a.
    let tc = small_tree(&lab.path().join("tree-c"), 3, 64 << 10);
    lab.commit("c", &tc);
    m.via(&[&lab.restart()]);
    m.target("c");
    let booted_a = cmdline(&m, "a");
    let state = m.state_file();
    let mut c = m.command("update");
    c.env("SLATE_CMDLINE", &booted_a);
    let out = m.output(c);
    assert!(!out.status.success(), "the update wrote the booted slot");
    let err = one_error_line(&out);
    assert!(
        err.contains("refusing to write slot a") && err.contains("booted from it"),
        "{err}"
    );
    ra.check(&m.slot_path("a"));
    rb.check(&m.slot_path("b"));
    let st = m.status();
    assert_eq!(st["active"], "b", "{st}");
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["last_pass"]["result"], "error", "{st}");
    let before: Value = serde_json::from_slice(&state).unwrap();
    for slot in ["a", "b"] {
        assert_eq!(st["slots"][slot]["snapshot"], before[slot]["snapshot"], "{st}");
        assert_eq!(st["slots"][slot]["dirty"], false, "{st}");
    }
    // Reported to the fleet.
    let row = fleet_row(&lab, &m);
    assert!(row.to_string().contains("refusing to write slot a"), "{row}");

    // rollback refuses to act on the contradiction; boot-ok records the
    // booted slot and says the state file disagreed.
    let mut c = m.command("rollback");
    c.env("SLATE_CMDLINE", &booted_a);
    let out = m.output(c);
    assert!(!out.status.success());
    let err = one_error_line(&out);
    assert!(
        err.contains("booted slot a") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(m.status()["active"], "b");
    let mut c = m.command("boot-ok");
    c.env("SLATE_CMDLINE", &booted_a);
    let out = m.output(c);
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{msg}");
    assert!(
        msg.contains("slot a is good") && msg.contains("state file said slot b"),
        "{msg}"
    );
    assert_eq!(m.status()["active"], "a");

    // Now consistent: the update writes b, never a.
    let mut c = m.command("update");
    c.env("SLATE_CMDLINE", &booted_a).arg("--json");
    let out = m.output(c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ra.check(&m.slot_path("a"));
    Reference::of(&tc).check(&m.slot_path("b"));
    assert_eq!(m.status()["pending"], "b");
}

/// The delta from `from` to `to` in `lab`'s repository.
fn delta_path(lab: &Lab, from: &str, to: &str) -> PathBuf {
    lab.repo.join("deltas").join(from).join(format!("{to}.delta"))
}

#[test]
fn a_delta_whose_header_claims_2_pow_60_items_is_refused_and_the_slot_is_unchanged() {
    let (lab, mut m, ra, _) = lab_with_machine(64 << 10);
    let (a, b) = (lab.id("a").to_string(), lab.id("b").to_string());
    // A delta with a correct magic, version and snapshot ids, then 2^60.
    let mut forged = b"SLATEDL\0\x01".to_vec();
    forged.extend_from_slice(&hex_bytes(&a));
    forged.extend_from_slice(&hex_bytes(&b));
    let mut n: u64 = 1 << 60;
    while n >= 0x80 {
        forged.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    forged.push(n as u8);
    forged.extend_from_slice(&[0u8; 4096]);
    let p = delta_path(&lab, &a, &b);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &forged).unwrap();

    m.target("b");
    let err = m.update_fails();
    assert!(err.contains("item count") && err.contains("exceeds the limit"), "{err}");
    assert_nothing_switched(&m, &ra);
    assert!(!m.slot_path("b").exists(), "nothing reached the reserve slot");
    assert!(
        !m.state_dir.join("cache/deltas").exists()
            || std::fs::read_dir(m.state_dir.join("cache/deltas"))
                .unwrap()
                .next()
                .is_none(),
        "the forged delta is not kept"
    );
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Flip one byte in the middle of every file under `dir`; returns how many.
fn damage_files(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += damage_files(&p);
        } else {
            let mut b = std::fs::read(&p).unwrap();
            if !b.is_empty() {
                let at = b.len() / 2;
                b[at] ^= 0x5a;
                std::fs::write(&p, &b).unwrap();
                n += 1;
            }
        }
    }
    n
}

#[test]
fn cached_ranges_and_deltas_damaged_between_passes_are_fetched_again() {
    // Ranges: a pass stopped by a vanishing server leaves verified ranges;
    // they are damaged on disk; the next pass discards and refetches them.
    let (lab, mut m, ra, rb) = lab_with_machine(24 << 20);
    m.target("b");
    m.connections = 1;
    let proxy = Proxy::start(&lab.url(), Fault::VanishAtPack(3), None);
    m.via(&[&proxy.url]);
    m.update_fails();
    drop(proxy);
    let ranges = m.state_dir.join("cache/ranges");
    let damaged = damage_files(&ranges);
    assert!(damaged >= 1, "the stopped pass left no cached range");
    m.via(&[&lab.url()]);
    let before = lab.server().requests(".pack").len();
    // A damaged range that was used would fail the pass (every chunk is
    // checked as it is read): success means they were fetched again.
    let r = m.update();
    assert_eq!(r["result"], "ok", "{r}");
    rb.check(&m.slot_path("b"));
    ra.check(&m.slot_path("a"));
    let refetched = lab.server().requests(".pack").len() - before;
    assert!(refetched >= 2, "only {refetched} pack requests after the damage");

    // Deltas: a prepared delta, its cached copy truncated, or replaced by
    // another file, before the pass that uses it.
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 1 << 20);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    slate_ok(&["delta", "--repo", s(&lab.repo), "t/a", "t/b"]);
    lab.serve();
    let (a, b) = (lab.id("a").to_string(), lab.id("b").to_string());
    let served = std::fs::read(delta_path(&lab, &a, &b)).unwrap();
    let rb = Reference::of(&tb);
    for (i, bad) in [
        served[..served.len() / 2].to_vec(),
        {
            let mut v = served.clone();
            let at = v.len() - 100;
            v[at] ^= 1;
            v
        },
        b"not a delta at all".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = lab.agent(&format!("delta-{i}"), Slots::Dirs);
        m.target("a");
        assert_eq!(m.update()["result"], "ok");
        let cached = m.state_dir.join("cache/deltas").join(format!("{a}-{b}.delta"));
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, &bad).unwrap();
        let before = lab.server().requests(".delta").len();
        m.target("b");
        let r = m.update();
        assert_eq!(r["result"], "ok", "{i}: {r}");
        rb.check(&m.slot_path("b"));
        assert_eq!(
            lab.server().requests(".delta").len() - before,
            1,
            "{i}: the damaged delta was fetched again"
        );
    }
}

#[test]
fn a_kernel_symlink_that_leaves_the_slot_is_refused() {
    let (mut lab, mut m, ra, _) = lab_with_machine(64 << 10);
    m.bootloader = "grub";
    m.write_config();
    let grubenv_before = std::fs::read(m.grubenv_path()).ok();
    for (name, target) in [("shadow", "/etc/shadow"), ("up", "../../../../../../../../etc/shadow")] {
        let t = small_tree(&lab.path().join(format!("tree-{name}")), 7, 64 << 10);
        std::fs::remove_file(t.join("boot/vmlinuz-6.1.0-7")).unwrap();
        std::os::unix::fs::symlink(target, t.join("boot/vmlinuz-6.1.0-7")).unwrap();
        lab.commit(name, &t);
    }
    m.via(&[&lab.restart()]);
    for name in ["shadow", "up"] {
        m.target(name);
        let err = m.update_fails();
        assert!(
            err.contains("refusing /boot/vmlinuz-6.1.0-7") && err.contains("leads out of the slot"),
            "{name}: {err}"
        );
        assert_nothing_switched(&m, &ra);
        assert_eq!(std::fs::read(m.grubenv_path()).ok(), grubenv_before, "{name}");
        assert!(
            !m.boot_dir.join("slate/b/vmlinuz").exists(),
            "{name}: a kernel was copied for slot b"
        );
    }
}

/// Pull `channel` from `url` into `mirror`, trusting `key`.
fn pull(url: &str, channel: &str, mirror: &Path, key: &Path) -> std::process::Output {
    slate(&["pull", "--from", url, channel, "--repo", s(mirror), "--trust", s(key)])
}

fn channel_file(repo: &Path, name: &str) -> PathBuf {
    repo.join("channels").join(name)
}

#[test]
fn a_mirror_whose_channel_goes_back_in_time_is_refused_and_pull_needs_trust() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    let tc = small_tree(&lab.path().join("tree-c"), 3, 64 << 10);
    for t in [&ta, &tb] {
        slate_ok(&[
            "commit",
            "--repo",
            s(&lab.repo),
            "--channel",
            "site/lab",
            "--sign",
            s(&lab.key),
            s(t),
        ]);
    }
    lab.commit("a", &ta);
    let url = lab.serve();
    let mirror = lab.path().join("mirror");
    let out = pull(&url, "site/lab", &mirror, &lab.trust());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let held = std::fs::read(channel_file(&mirror, "site/lab")).unwrap();
    let served = std::fs::read(channel_file(&lab.repo, "site/lab")).unwrap();
    assert_eq!(held, served);

    // The server's channel goes back to its first snapshot.
    let text = String::from_utf8(served.clone()).unwrap();
    let older: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(channel_file(&lab.repo, "site/lab"), &older).unwrap();
    let out = pull(&url, "site/lab", &mirror, &lab.trust());
    assert!(!out.status.success(), "a rolled-back channel was pulled");
    let err = one_error_line(&out);
    assert!(err.contains("does not extend") && err.contains("site/lab"), "{err}");
    assert_eq!(std::fs::read(channel_file(&mirror, "site/lab")).unwrap(), held);

    // Or is rewritten: another, validly signed snapshot in place of the head.
    std::fs::write(channel_file(&lab.repo, "site/lab"), &older).unwrap();
    slate_ok(&[
        "commit",
        "--repo",
        s(&lab.repo),
        "--channel",
        "site/lab",
        "--sign",
        s(&lab.key),
        s(&tc),
    ]);
    let out = pull(&url, "site/lab", &mirror, &lab.trust());
    assert!(!out.status.success(), "a rewritten channel was pulled");
    assert!(one_error_line(&out).contains("does not extend"));
    assert_eq!(std::fs::read(channel_file(&mirror, "site/lab")).unwrap(), held);
    slate_ok(&["verify", "--repo", s(&mirror), "--trust", s(&lab.trust())]);

    // Moving on from what the mirror holds is fine.
    std::fs::write(channel_file(&lab.repo, "site/lab"), &served).unwrap();
    slate_ok(&[
        "commit",
        "--repo",
        s(&lab.repo),
        "--channel",
        "site/lab",
        "--sign",
        s(&lab.key),
        s(&tc),
    ]);
    let out = pull(&url, "site/lab", &mirror, &lab.trust());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dst = lab.path().join("co");
    slate_ok(&["checkout", "--repo", s(&mirror), "site/lab", s(&dst)]);
    assert_same_tree(&tc, &dst);

    // No pull without a trusted key: a usage error, nothing created.
    let bare = lab.path().join("unverified");
    let out = slate(&["pull", "--from", &url, "site/lab", "--repo", s(&bare)]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust"));
    assert!(!bare.exists());
}

use crate::treedigest::assert_same_tree;

#[test]
fn an_index_that_lies_about_its_pack_is_refused_by_pull_and_update() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 2 << 20);
    slate_ok(&[
        "commit",
        "--repo",
        s(&lab.repo),
        "--channel",
        "site/lab",
        "--sign",
        s(&lab.key),
        s(&ta),
    ]);
    lab.commit("a", &ta);
    lab.serve();
    // Every index swaps the places of two of its chunks: still a well
    // formed index (checksum, bounds, order), but it lies about its pack.
    for id in lab.packs() {
        let p = lab.pack_path(&id).with_extension("idx");
        let mut idx = PackIndex::decode(&std::fs::read(&p).unwrap()).unwrap();
        if idx.entries.len() >= 2 {
            let (x, y) = (idx.entries[0].id, idx.entries[1].id);
            idx.entries[0].id = y;
            idx.entries[1].id = x;
            std::fs::write(&p, idx.encode()).unwrap();
        }
    }
    let mirror = lab.path().join("mirror");
    let out = pull(&lab.url(), "site/lab", &mirror, &lab.trust());
    assert!(!out.status.success(), "a lying index was pulled");
    let err = one_error_line(&out);
    assert!(
        err.contains("pack") && (err.contains("does not match") || err.contains("does not describe")),
        "{err}"
    );
    assert!(!channel_file(&mirror, "site/lab").exists(), "the channel was kept");
    let kept_idx = walk(&mirror.join("packs"))
        .into_iter()
        .filter(|p| p.ends_with(".idx"))
        .count();
    assert_eq!(kept_idx, 0, "an index was kept");

    let mut m = lab.agent("liar", Slots::Dirs);
    m.target("a");
    let err = m.update_fails();
    assert!(err.contains("does not match"), "{err}");
    assert!(!m.slot_path("a").exists() || std::fs::read_dir(m.slot_path("a")).unwrap().next().is_none());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}
