//! Fedora readonly-root's rwtab and statetab files, read as policy entries.
//!
//! rwtab lines are `empty PATH` (an empty RAM directory), `dirs PATH` (the
//! image's directories without their files) and `files PATH` (a RAM copy of
//! the image's content); statetab lines are a bare `PATH` kept on the local
//! state store. `#` starts a comment. They become `ram` entries seeded
//! `none`, `dirs` and `all`, and `local` entries.

use std::path::Path;

use crate::error::{Error, Result};
use crate::policy::{check_path, Entry, Mode, Seed};

/// Which of the two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TabKind {
    /// rwtab: RAM paths.
    Rwtab,
    /// statetab: persistent local paths.
    Statetab,
}

/// The format a file's name says it has: `rwtab`, `statetab`, or a file in
/// an `rwtab.d` or `statetab.d` directory.
pub fn kind_of(path: &Path) -> Option<TabKind> {
    let name = path.file_name()?.to_str()?;
    let dir = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if name == "rwtab" || dir == "rwtab.d" {
        Some(TabKind::Rwtab)
    } else if name == "statetab" || dir == "statetab.d" {
        Some(TabKind::Statetab)
    } else {
        None
    }
}

fn entry(path: &str, state: Mode, seed: Seed, origin: String) -> Entry {
    Entry {
        path: path.to_string(),
        state,
        seed,
        size: None,
        kind: None,
        file_mode: None,
        owner: None,
        group: None,
        generator: None,
        include: Vec::new(),
        name: None,
        origin,
    }
}

/// Parse a file of `kind`; `source` names it in errors and origins.
pub fn parse(kind: TabKind, text: &str, source: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let at = format!("{} line {line_no}", source.display());
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        let (path, state, seed) = match (kind, words.as_slice()) {
            (TabKind::Rwtab, [how, path]) => {
                let seed = match *how {
                    "empty" => Seed::None,
                    "dirs" => Seed::Dirs,
                    "files" => Seed::All,
                    other => {
                        return Err(Error(format!(
                            "{at}: unknown rwtab keyword {other:?} (empty, dirs or files)"
                        )))
                    }
                };
                (*path, Mode::Ram, seed)
            }
            (TabKind::Statetab, [path]) => (*path, Mode::Local, Seed::All),
            (TabKind::Rwtab, _) => return Err(Error(format!("{at}: expected `empty|dirs|files PATH`"))),
            (TabKind::Statetab, _) => return Err(Error(format!("{at}: expected one path per line"))),
        };
        let path = path.trim_end_matches('/');
        check_path(path).map_err(|e| Error(format!("{at}: {e}")))?;
        out.push(entry(path, state, seed, at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fedora_files() {
        let rw = parse(
            TabKind::Rwtab,
            "# comment\ndirs\t/var/cache/man\nempty /tmp\nfiles /etc/resolv.conf  # dns\n\n",
            Path::new("/etc/rwtab"),
        )
        .unwrap();
        assert_eq!(rw.len(), 3);
        assert_eq!((rw[0].state, rw[0].seed), (Mode::Ram, Seed::Dirs));
        assert_eq!(rw[1].seed, Seed::None);
        assert_eq!(rw[2].path, "/etc/resolv.conf");
        assert_eq!(rw[2].origin, "/etc/rwtab line 4");
        let st = parse(TabKind::Statetab, "/var/lib/dbus/\n", Path::new("statetab")).unwrap();
        assert_eq!((st[0].path.as_str(), st[0].state), ("/var/lib/dbus", Mode::Local));
    }

    #[test]
    fn rejects_bad_lines() {
        let e = parse(TabKind::Rwtab, "empty /tmp\ncopy /etc\n", Path::new("rwtab")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rwtab line 2: unknown rwtab keyword \"copy\" (empty, dirs or files)"
        );
        let e = parse(TabKind::Statetab, "var/lib\n", Path::new("statetab")).unwrap_err();
        assert!(e.to_string().starts_with("statetab line 1: "), "{e}");
        assert_eq!(kind_of(Path::new("/etc/rwtab.d/dhcp")), Some(TabKind::Rwtab));
        assert_eq!(kind_of(Path::new("/etc/slate/state.toml")), None);
    }
}
