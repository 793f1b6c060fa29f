//! Finding a snapshot's kernel and initramfs in its manifest, as a
//! bootloader would in the tree: pure functions of a [`Manifest`].
//!
//! Paths are looked up component by component, following symlinks the way
//! the kernel would inside a chroot at the tree's root: an absolute target
//! starts again at the root, `..` never climbs above it, and a chain of
//! more than [`MAX_HOPS`] links is a loop. Nothing outside the manifest is
//! ever named, so a hostile tree can at worst point at another of its own
//! files.

use std::cmp::Ordering;

use slate_core::manifest::{Kind, Manifest};

/// Most symlinks followed in one lookup (Linux's limit).
const MAX_HOPS: usize = 40;

/// A regular file of the tree: its entry and the path it was reached by
/// (symlinks resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index of the entry in the manifest (a file or a hard link to one).
    pub index: usize,
    /// Its path, relative to the root, without symlinks.
    pub path: Vec<u8>,
}

/// What network boot serves of a snapshot; `None` when the tree lacks it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootEntries {
    /// The kernel.
    pub kernel: Option<Found>,
    /// The initramfs for that kernel.
    pub initrd: Option<Found>,
}

/// The kind of entry `i`, through a hard link to its leader.
fn kind(m: &Manifest, i: usize) -> &Kind {
    match &m.entries[i].kind {
        Kind::HardLink(l) => m.entries.get(*l as usize).map_or(&m.entries[i].kind, |e| &e.kind),
        k => k,
    }
}

/// The regular file `path` names in the tree (relative to the root, with
/// or without a leading `/`), following symlinks inside the tree.
pub fn lookup(m: &Manifest, path: &[u8]) -> Option<Found> {
    // Components still to walk, the next one last.
    let mut todo: Vec<&[u8]> = path.split(|&b| b == b'/').rev().collect();
    let mut at: Vec<&[u8]> = Vec::new();
    let mut hops = 0;
    let mut last = None;
    while let Some(c) = todo.pop() {
        match c {
            b"" | b"." => continue,
            b".." => {
                at.pop();
                last = None;
                continue;
            }
            _ => {}
        }
        if last.is_some_and(|i| !matches!(kind(m, i), Kind::Dir)) {
            // A name below something that is not a directory.
            return None;
        }
        at.push(c);
        let i = m.find(&at.join(&b'/'))?;
        match kind(m, i) {
            Kind::Symlink(target) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                at.pop();
                if target.starts_with(b"/") {
                    at.clear();
                }
                todo.extend(target.split(|&b| b == b'/').rev());
                last = None;
            }
            _ => last = Some(i),
        }
    }
    let index = last?;
    m.file_data(index).is_some().then(|| Found {
        index,
        path: at.join(&b'/'),
    })
}

/// Compare two version strings as people read them: runs of digits by
/// value, everything else byte by byte (`6.1.0-13` after `6.1.0-9`).
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_run(a, true);
                let (nb, rb) = split_run(b, true);
                let (na, nb) = (trim_zeros(na), trim_zeros(nb));
                // Without leading zeros, a longer run is a larger number.
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) if x.is_ascii_digit() != y.is_ascii_digit() => {
                // A number sorts after text at the same place: `1.10` > `1.x`.
                return if x.is_ascii_digit() {
                    Ordering::Greater
                } else {
                    Ordering::Less
                };
            }
            _ => {
                let (ta, ra) = split_run(a, false);
                let (tb, rb) = split_run(b, false);
                let o = ta.cmp(tb);
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (ra, rb);
            }
        }
    }
}

/// The leading run of digits (or of non-digits) of `s`, and the rest.
fn split_run(s: &[u8], digits: bool) -> (&[u8], &[u8]) {
    let n = s.iter().position(|b| b.is_ascii_digit() != digits).unwrap_or(s.len());
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().position(|&b| b != b'0').unwrap_or(s.len());
    &s[n..]
}

/// The `VERSION` of a path whose last name is `vmlinuz-VERSION`.
fn kernel_version(path: &[u8]) -> Option<String> {
    let name = slate_core::manifest::path::name(path);
    let v = name.strip_prefix(b"vmlinuz-")?;
    (!v.is_empty()).then(|| String::from_utf8(v.to_vec()).ok()).flatten()
}

/// The initramfs of kernel `version`: the lean network-boot one `slate
/// prepare` builds if the tree has it, else the distribution's.
fn initrd_of(m: &Manifest, version: Option<&str>) -> Option<Found> {
    match version {
        Some(v) => lookup(m, format!("boot/slate-netboot.img-{v}").as_bytes())
            .or_else(|| lookup(m, format!("boot/initrd.img-{v}").as_bytes())),
        // A kernel link to a name without a version: the tree's own
        // initramfs link is the only hint left.
        None => lookup(m, b"initrd.img").or_else(|| lookup(m, b"boot/initrd.img")),
    }
}

/// The kernel and initramfs of the tree: the target of `/vmlinuz` (or
/// `/boot/vmlinuz`), else the newest `/boot/vmlinuz-VERSION` by version
/// order that has an initramfs (the newest of all when none has one); the
/// initramfs is `/boot/slate-netboot.img-VERSION`, else
/// `/boot/initrd.img-VERSION`.
pub fn boot_entries(m: &Manifest) -> BootEntries {
    for link in [&b"vmlinuz"[..], b"boot/vmlinuz"] {
        if let Some(k) = lookup(m, link) {
            let initrd = initrd_of(m, kernel_version(&k.path).as_deref());
            return BootEntries {
                kernel: Some(k),
                initrd,
            };
        }
    }
    let mut kernels: Vec<(String, Found)> = m
        .entries
        .iter()
        .filter(|e| slate_core::manifest::path::parent(&e.path) == b"boot")
        .filter_map(|e| {
            let v = kernel_version(&e.path)?;
            Some((v, lookup(m, &e.path)?))
        })
        .collect();
    // Newest first.
    kernels.sort_by(|a, b| cmp_versions(&b.0, &a.0));
    let with_initrd = kernels
        .iter()
        .find_map(|(v, k)| initrd_of(m, Some(v)).map(|i| (k.clone(), Some(i))));
    match with_initrd {
        Some((k, i)) => BootEntries {
            kernel: Some(k),
            initrd: i,
        },
        None => BootEntries {
            kernel: kernels.into_iter().next().map(|(_, k)| k),
            initrd: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate_core::manifest::{Entry, FileData, Meta};

    /// A manifest of `(path, kind)` in any order (sorted here).
    fn tree(entries: &[(&str, Kind)]) -> Manifest {
        let mut e: Vec<Entry> = std::iter::once(("", Kind::Dir))
            .chain(entries.iter().map(|(p, k)| (*p, k.clone())))
            .map(|(p, k)| Entry {
                path: p.as_bytes().to_vec(),
                meta: Meta::default(),
                kind: k,
            })
            .collect();
        e.sort_by(|a, b| slate_core::manifest::path::cmp_tree_order(&a.path, &b.path));
        Manifest { entries: e }
    }

    fn file() -> Kind {
        Kind::File(FileData::default())
    }

    fn link(t: &str) -> Kind {
        Kind::Symlink(t.as_bytes().to_vec())
    }

    fn path_of(f: Option<Found>) -> Option<String> {
        f.map(|f| String::from_utf8(f.path).unwrap())
    }

    #[test]
    fn versions_compare_as_people_read_them() {
        let sorted = [
            "5.10.0-9-amd64",
            "5.10.0-10-amd64",
            "6.1.0-9-amd64",
            "6.1.0-13-amd64",
            "6.1.0-13-amd64x",
            "6.10.1",
        ];
        for w in sorted.windows(2) {
            assert_eq!(cmp_versions(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(cmp_versions(w[1], w[0]), Ordering::Greater);
        }
        assert_eq!(cmp_versions("1.02", "1.2"), Ordering::Equal);
    }

    #[test]
    fn lookup_follows_links_inside_the_tree() {
        let m = tree(&[
            ("boot", Kind::Dir),
            ("boot/vmlinuz-1", file()),
            ("rel", link("boot/vmlinuz-1")),
            ("abs", link("/boot/vmlinuz-1")),
            ("up", link("../../../boot/./vmlinuz-1")),
            ("b", link("boot")),
            ("via", link("b/vmlinuz-1")),
            ("loop1", link("loop2")),
            ("loop2", link("loop1")),
            ("dangling", link("boot/nothing")),
            ("dir", link("boot")),
            ("under-file", link("boot/vmlinuz-1/x")),
        ]);
        for p in ["rel", "abs", "up", "via", "/rel", "b/vmlinuz-1", "boot/vmlinuz-1"] {
            assert_eq!(
                path_of(lookup(&m, p.as_bytes())).as_deref(),
                Some("boot/vmlinuz-1"),
                "{p}"
            );
        }
        for p in ["loop1", "dangling", "dir", "under-file", "boot", "", "nothing"] {
            assert_eq!(lookup(&m, p.as_bytes()), None, "{p}");
        }
    }

    #[test]
    fn the_vmlinuz_link_decides() {
        let m = tree(&[
            ("boot", Kind::Dir),
            ("boot/vmlinuz-1.2.3", file()),
            ("boot/vmlinuz-1.10.0", file()),
            ("boot/initrd.img-1.2.3", file()),
            ("boot/initrd.img-1.10.0", file()),
            ("boot/slate-netboot.img-1.2.3", file()),
            ("vmlinuz", link("boot/vmlinuz-1.2.3")),
        ]);
        let b = boot_entries(&m);
        assert_eq!(path_of(b.kernel).as_deref(), Some("boot/vmlinuz-1.2.3"));
        assert_eq!(path_of(b.initrd).as_deref(), Some("boot/slate-netboot.img-1.2.3"));
    }

    #[test]
    fn else_the_newest_kernel_with_an_initramfs() {
        let m = tree(&[
            ("boot", Kind::Dir),
            ("boot/vmlinuz-6.1.0-9-amd64", file()),
            ("boot/vmlinuz-6.1.0-13-amd64", file()),
            ("boot/vmlinuz-6.1.0-13-amd64.efi.signed", file()),
            ("boot/initrd.img-6.1.0-9-amd64", file()),
            ("boot/initrd.img-6.1.0-13-amd64", link("initrd.img-6.1.0-9-amd64")),
            ("vmlinuz", link("boot/vmlinuz-gone")),
        ]);
        let b = boot_entries(&m);
        assert_eq!(path_of(b.kernel).as_deref(), Some("boot/vmlinuz-6.1.0-13-amd64"));
        // Through the link, to the file it names.
        assert_eq!(path_of(b.initrd).as_deref(), Some("boot/initrd.img-6.1.0-9-amd64"));

        let no_initrd = tree(&[
            ("boot", Kind::Dir),
            ("boot/vmlinuz-2", file()),
            ("boot/vmlinuz-10", file()),
        ]);
        let b = boot_entries(&no_initrd);
        assert_eq!(path_of(b.kernel).as_deref(), Some("boot/vmlinuz-10"));
        assert_eq!(b.initrd, None);
        assert_eq!(boot_entries(&tree(&[("etc", Kind::Dir)])), BootEntries::default());
    }
}
