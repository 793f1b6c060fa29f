//! A snapshot's kernel and initramfs, found in its tree, and the offline
//! boot area of a cache partition: once the cache holds a whole snapshot,
//! its kernel and initramfs are copied there with a GRUB menu that boots
//! them, so that the machine starts without any server (docs/diskless.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use slate_agent::{Error, Result};
use slate_core::manifest::Kind;
use slate_core::SnapshotId;

use crate::source::Chunks;
use crate::tree::Tree;

/// Entries of a tree that boot it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntries {
    /// The kernel's version (`6.1.0-57-amd64`).
    pub version: String,
    /// Manifest position of the kernel.
    pub kernel: usize,
    /// Manifest position of the initramfs: the lean network-boot one
    /// (`/boot/slate-netboot.img-VERSION`) when the tree has it.
    pub initrd: usize,
}

fn position(tree: &Tree, path: &str) -> Option<usize> {
    let want = path.trim_start_matches('/').as_bytes();
    tree.manifest.entries.iter().position(|e| e.path == want)
}

/// Follow symbolic links (relative or absolute, within the tree) to a
/// regular file; at most 8 steps.
fn regular(tree: &Tree, path: &str) -> Option<usize> {
    let mut p = path.trim_start_matches('/').to_string();
    for _ in 0..8 {
        let i = tree.resolve(position(tree, &p)?);
        match &tree.manifest.entries[i].kind {
            Kind::File(_) => return Some(i),
            Kind::Symlink(target) => {
                let t = String::from_utf8_lossy(target).into_owned();
                p = if let Some(abs) = t.strip_prefix('/') {
                    abs.to_string()
                } else {
                    let dir = p.rsplit_once('/').map_or("", |(d, _)| d);
                    normalise(&format!("{dir}/{t}"))
                };
            }
            _ => return None,
        }
    }
    None
}

fn normalise(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

/// Order kernel versions as `sort -V` would, near enough: numbers as
/// numbers, the rest as text.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+', '~'])
        .map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            (digits.parse().unwrap_or(0), p[digits.len()..].to_string())
        })
        .collect()
}

/// The kernel the tree boots: the target of `/vmlinuz`, else the newest
/// `/boot/vmlinuz-*`; and its initramfs.
pub fn find(tree: &Tree) -> Option<BootEntries> {
    let from_link = regular(tree, "vmlinuz").and_then(|i| {
        let p = String::from_utf8_lossy(&tree.manifest.entries[i].path).into_owned();
        p.strip_prefix("boot/vmlinuz-").map(|v| (v.to_string(), i))
    });
    let (version, kernel) = match from_link {
        Some(x) => x,
        None => {
            let mut all: Vec<(String, usize)> = tree
                .manifest
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let p = std::str::from_utf8(&e.path).ok()?;
                    let v = p.strip_prefix("boot/vmlinuz-")?;
                    (!v.contains('/')).then(|| (v.to_string(), i))
                })
                .collect();
            all.sort_by_key(|(v, _)| version_key(v));
            let (v, i) = all.pop()?;
            let k = regular(tree, &format!("boot/vmlinuz-{v}")).unwrap_or(i);
            (v, k)
        }
    };
    let initrd = regular(tree, &format!("boot/slate-netboot.img-{version}"))
        .or_else(|| regular(tree, &format!("boot/initrd.img-{version}")))?;
    Some(BootEntries {
        version,
        kernel,
        initrd,
    })
}

/// Copy entry `i`'s content to `to` (created new, synced).
fn copy_out(tree: &Tree, chunks: &Chunks, i: usize, to: &Path) -> Result<()> {
    let layout = tree
        .layout(i)
        .ok_or_else(|| Error::Local(format!("{} is not a regular file", to.display())))?;
    let mut f = std::fs::File::create(to).map_err(|e| Error::Local(format!("cannot create {}: {e}", to.display())))?;
    let mut out = Vec::with_capacity(1 << 20);
    let mut at = 0u64;
    while at < layout.size {
        let n = (layout.size - at).min(1 << 20);
        out.clear();
        out.resize(n as usize, 0);
        for (pos, data_start, len) in layout.pieces(at, n) {
            let mut p = pos;
            for (k, within, take) in layout.chunk_spans(data_start, len) {
                let dst = &mut out[p..p + take];
                chunks.with_chunk(&layout.chunks[k].id, |d| dst.copy_from_slice(&d[within..within + take]))?;
                p += take;
            }
        }
        f.write_all(&out)
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", to.display())))?;
        at += n;
    }
    f.sync_all()
        .map_err(|e| Error::Local(format!("cannot sync {}: {e}", to.display())))
}

fn write_synced(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| Error::Local(format!("cannot create {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::Local(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))
}

/// Kernel command-line words the offline entry sets itself.
fn own_word(w: &str) -> bool {
    [
        "initrd=",
        "BOOT_IMAGE=",
        "slate.snapshot=",
        "slate.cache=",
        "slate.from=",
        "slate.record",
    ]
    .iter()
    .any(|p| w.starts_with(p))
}

/// The kernel command line of the offline entry: this boot's, with the
/// snapshot, the cache partition and `slate.from=disk` set.
pub fn offline_cmdline(current: &str, id: &SnapshotId) -> String {
    let mut words: Vec<&str> = current.split_whitespace().filter(|w| !own_word(w)).collect();
    for need in ["boot=slate-net", "slate.mode=diskless"] {
        if !words.contains(&need) {
            words.push(need);
        }
    }
    let mut s = words.join(" ");
    s.push_str(&format!(
        " slate.snapshot={} slate.cache=PARTLABEL=slate-cache slate.from=disk",
        id.to_hex()
    ));
    s
}

/// Write snapshot `id`'s kernel and initramfs to `area/ID/` and point the
/// GRUB menu `area/slate.cfg` at them; then remove other snapshots' files.
/// Each file is synced before the menu names it, and the menu is replaced
/// whole, so a power cut leaves the old entry or the new one.
pub fn write_offline_boot(
    tree: &Tree,
    chunks: &Chunks,
    id: &SnapshotId,
    area: &Path,
    cmdline: &str,
) -> Result<PathBuf> {
    let entries = find(tree).ok_or_else(|| Error::Local(format!("snapshot {id} has no kernel in /boot")))?;
    // The cache's packs are renamed into place without a sync each (the
    // fill would crawl): the whole filesystem, which holds the cache and
    // this area, is synced before a menu says the cache is complete, or a
    // power cut could leave a menu that boots a cache missing a pack.
    std::fs::create_dir_all(area).map_err(|e| Error::Local(format!("cannot create {}: {e}", area.display())))?;
    let area_dir =
        std::fs::File::open(area).map_err(|e| Error::Local(format!("cannot open {}: {e}", area.display())))?;
    rustix::fs::syncfs(&area_dir).map_err(|e| Error::Local(format!("cannot sync {}: {e}", area.display())))?;
    let hex = id.to_hex();
    let dir = area.join(&hex);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    copy_out(tree, chunks, entries.kernel, &dir.join("vmlinuz"))?;
    copy_out(tree, chunks, entries.initrd, &dir.join("initrd.img"))?;
    let menu = format!(
        "# Written by slate's mount daemon: the last snapshot whose cache was complete.\n\
         set default=0\nset timeout=1\n\
         menuentry \"slate {short} (kernel {v}, from the cache)\" {{\n\
         \tlinux /boot/{hex}/vmlinuz {cmdline}\n\tinitrd /boot/{hex}/initrd.img\n}}\n",
        short = &hex[..12],
        v = entries.version,
        cmdline = offline_cmdline(cmdline, id),
    );
    write_synced(&area.join("slate.cfg"), &menu)?;
    if let Ok(rd) = std::fs::read_dir(area) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name != hex && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = ["6.1.0-9-amd64", "6.1.0-57-amd64", "6.10.0-1-amd64", "5.10.0-20-amd64"];
        v.sort_by_key(|x| version_key(x));
        assert_eq!(
            v,
            ["5.10.0-20-amd64", "6.1.0-9-amd64", "6.1.0-57-amd64", "6.10.0-1-amd64"]
        );
    }

    #[test]
    fn offline_cmdline_replaces_its_own_words() {
        let id = SnapshotId::from_hex(&"ab".repeat(32)).unwrap();
        let c = offline_cmdline(
            "BOOT_IMAGE=x initrd=initrd boot=slate-net slate.mode=diskless slate.snapshot=00 ip=dhcp console=ttyS0 slate.server=http://h",
            &id,
        );
        assert_eq!(
            c,
            format!(
                "boot=slate-net slate.mode=diskless ip=dhcp console=ttyS0 slate.server=http://h slate.snapshot={} \
                 slate.cache=PARTLABEL=slate-cache slate.from=disk",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(normalise("boot/../boot/./vmlinuz-1"), "boot/vmlinuz-1");
    }
}
