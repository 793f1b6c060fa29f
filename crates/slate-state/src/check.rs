//! A policy checked against the tree it will run on, before anything is
//! mounted, kept or switched to.
//!
//! Parsing a policy ([`crate::policy`]) proves it is well formed; it does
//! not prove it fits a given image: an owner that the image's /etc/passwd
//! lacks, a path whose directory the image does not have, a declared path
//! that is a symlink in the image, a dynamic path that is a directory
//! there. Any of those makes `slate state apply` fail at boot. The agent
//! runs this check before it keeps a fleet policy and before it switches
//! to a new slot, and `apply` runs it before it mounts anything, so a
//! policy that does not fit is refused whole instead of half applied.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::apply::read_in_root;
use crate::error::{Error, Result};
use crate::mounts::{self, Found};
use crate::policy::{Entry, Mode, Policy, Principal};

/// Most problems named in the error (the count says how many there were).
const MAX_NAMED: usize = 5;

/// Check `policy` against the tree at `tree` (a slot, a checkout, the new
/// root in the initramfs). `Ok` when `slate state apply` can set every
/// declared path up on it; otherwise one error line naming the policy and
/// the first problems, each with the file and line of its declaration.
pub fn check(policy: &Policy, tree: &Path) -> Result<()> {
    let root = mounts::open_root(tree)?;
    let mut imported = policy.clone();
    if let Err(e) = imported.import_tabs(tree) {
        return Err(refused(policy, tree, vec![e.to_string()]));
    }
    let problems = problems(&imported, &root)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(refused(policy, tree, problems))
    }
}

fn refused(policy: &Policy, tree: &Path, problems: Vec<String>) -> Error {
    let n = problems.len();
    let mut named: Vec<String> = problems.into_iter().take(MAX_NAMED).collect();
    if n > MAX_NAMED {
        named.push(format!("and {} more", n - MAX_NAMED));
    }
    Error(format!(
        "the state policy {} does not fit the tree {} ({n} problem{}): {}",
        policy.source.display(),
        tree.display(),
        if n == 1 { "" } else { "s" },
        named.join("; ")
    ))
}

/// Every problem of `policy` on the tree opened at `root`.
pub fn problems(policy: &Policy, root: &OwnedFd) -> Result<Vec<String>> {
    let passwd = read_in_root(root, "etc/passwd");
    let group = read_in_root(root, "etc/group");
    let mut out = Vec::new();
    for (i, e) in policy.entries.iter().enumerate() {
        for (p, file, text, what) in [
            (&e.owner, "/etc/passwd", &passwd, "owner"),
            (&e.group, "/etc/group", &group, "group"),
        ] {
            if let Some(Principal::Name(n)) = p {
                if !text.as_deref().is_some_and(|t| has_name(t, n)) {
                    out.push(format!(
                        "{}: {what} {n:?} of {} is not in the tree's {file}",
                        e.origin, e.path
                    ));
                }
            }
        }
        // Under another declared path, what is there is decided at boot.
        if policy.entries[..i].iter().any(|a| a.covers(e.rel())) {
            continue;
        }
        if let Some(p) = entry_problem(e, root)? {
            out.push(p);
        }
    }
    Ok(out)
}

fn entry_problem(e: &Entry, root: &OwnedFd) -> Result<Option<String>> {
    let found = mounts::open_in(root, e.rel())?.map(|t| t.found);
    Ok(match found {
        Some(Found::Other) => Some(format!(
            "{}: {} is a symlink or special file in the tree; declare the path it stands for",
            e.origin, e.path
        )),
        Some(Found::Dir) if e.state == Mode::Dynamic => Some(format!(
            "{}: {} is a directory in the tree; a dynamic path is a file",
            e.origin, e.path
        )),
        Some(_) => None,
        None => {
            let parent = e.rel().rfind('/').map_or("", |i| &e.rel()[..i]);
            match mounts::open_in(root, parent)?.map(|t| t.found) {
                Some(Found::Dir) => None,
                _ => Some(format!(
                    "{}: neither {} nor its directory /{parent} exist in the tree",
                    e.origin, e.path
                )),
            }
        }
    })
}

fn has_name(text: &str, name: &str) -> bool {
    text.lines().any(|l| l.split(':').next() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in ["etc/default", "var/log", "home"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nsyslog:x:104:110::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(t.path().join("etc/group"), "root:x:0:\nadm:x:4:syslog\n").unwrap();
        std::fs::write(t.path().join("etc/hostname"), "x\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", t.path().join("etc/mailname")).unwrap();
        t
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("fleet.toml")).unwrap()
    }

    #[test]
    fn a_fitting_policy_passes() {
        let t = tree();
        let p = policy(
            "[[path]]\npath = \"/var/log\"\nstate = \"ram\"\nowner = \"syslog\"\ngroup = \"adm\"\n\
             [[path]]\npath = \"/var/log/new/deeper\"\nstate = \"ram\"\n\
             [[path]]\npath = \"/etc/machine-id\"\nstate = \"dynamic\"\ngenerator = \"machine-id\"\n\
             [[path]]\npath = \"/home\"\nstate = \"backup\"\nowner = 0\n",
        );
        check(&p, t.path()).unwrap();
    }

    #[test]
    fn every_misfit_is_named_with_its_line() {
        let t = tree();
        let p = policy(
            "[[path]]\npath = \"/var/log\"\nstate = \"ram\"\nowner = \"nobody-here\"\n\
             [[path]]\npath = \"/home\"\nstate = \"local\"\ngroup = \"wheel\"\n\
             [[path]]\npath = \"/etc/mailname\"\nstate = \"ram\"\n\
             [[path]]\npath = \"/etc/default\"\nstate = \"dynamic\"\ngenerator = \"hostname\"\n",
        );
        let e = check(&p, t.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("the state policy fleet.toml does not fit the tree"),
            "{e}"
        );
        assert!(e.contains("(4 problems)"), "{e}");
        assert!(
            e.contains("fleet.toml line 2: owner \"nobody-here\" of /var/log is not in the tree's /etc/passwd"),
            "{e}"
        );
        assert!(
            e.contains("group \"wheel\" of /home is not in the tree's /etc/group"),
            "{e}"
        );
        assert!(e.contains("/etc/mailname is a symlink"), "{e}");
        assert!(e.contains("/etc/default is a directory in the tree"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let p = policy("[[path]]\npath = \"/srv/data/x\"\nstate = \"local\"\n");
        let e = check(&p, t.path()).unwrap_err().to_string();
        assert!(
            e.contains("neither /srv/data/x nor its directory /srv/data exist"),
            "{e}"
        );
    }
}
