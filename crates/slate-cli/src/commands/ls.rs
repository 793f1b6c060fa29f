//! `slate ls`: a snapshot's entries, like `ls -l`.

use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde::Serialize;
use slate_core::manifest::{path as mpath, Entry, Kind, Manifest};
use slate_repo::Repo;

use crate::output::json;

#[derive(Serialize)]
pub struct EntryJson {
    pub path: String,
    /// The raw path in hex when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(rename = "type")]
    pub kind: char,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardlink_to: Option<String>,
    pub xattrs: Vec<String>,
}

pub fn describe(m: &Manifest, e: &Entry) -> EntryJson {
    let size = match &e.kind {
        Kind::File(f) => f.size,
        Kind::HardLink(l) => m.file_data(*l as usize).map_or(0, |f| f.size),
        Kind::Symlink(t) => t.len() as u64,
        _ => 0,
    };
    let letter = match &e.kind {
        Kind::HardLink(l) => m.entries[*l as usize].kind.letter(),
        k => k.letter(),
    };
    EntryJson {
        path: format!("/{}", String::from_utf8_lossy(&e.path)),
        path_hex: std::str::from_utf8(&e.path).is_err().then(|| hex::encode(&e.path)),
        kind: letter,
        mode: format!("{:04o}", e.meta.mode),
        uid: e.meta.uid,
        gid: e.meta.gid,
        size,
        mtime: format!("{}.{:09}", e.meta.mtime.sec, e.meta.mtime.nsec),
        target: match &e.kind {
            Kind::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        },
        rdev: match e.kind {
            Kind::CharDev(r) | Kind::BlockDev(r) => Some(format!("{}:{}", rustix_major(r), rustix_minor(r))),
            _ => None,
        },
        hardlink_to: match e.kind {
            Kind::HardLink(l) => Some(format!("/{}", String::from_utf8_lossy(&m.entries[l as usize].path))),
            _ => None,
        },
        xattrs: e
            .meta
            .xattrs
            .iter()
            .map(|x| String::from_utf8_lossy(&x.name).into_owned())
            .collect(),
    }
}

fn rustix_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}
fn rustix_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

pub fn run(repo: &Repo, spec: &str, path: &str, recursive: bool, as_json: bool) -> Result<ExitCode> {
    let l = repo.load(spec)?;
    let m = &l.manifest;
    let want = std::ffi::OsStr::new(path.trim_matches('/')).as_bytes();
    let Some(at) = m.find(want) else {
        bail!("{path} is not in snapshot {}", l.id);
    };
    let selected: Vec<&Entry> = if !matches!(m.entries[at].kind, Kind::Dir) {
        vec![&m.entries[at]]
    } else {
        m.entries[at + 1..]
            .iter()
            .take_while(|e| want.is_empty() || e.path.starts_with(want) && e.path.get(want.len()) == Some(&b'/'))
            .filter(|e| recursive || mpath::parent(&e.path) == want)
            .collect()
    };
    for e in selected {
        let d = describe(m, e);
        if as_json {
            json(&d)?;
        } else {
            let tail = match (&d.target, &d.hardlink_to, &d.rdev) {
                (Some(t), _, _) => format!(" -> {t}"),
                (_, Some(h), _) => format!(" => {h}"),
                (_, _, Some(r)) => format!(" [{r}]"),
                _ => String::new(),
            };
            println!(
                "{}{} {:>6} {:>6} {:>12} {} /{}{}",
                d.kind,
                d.mode,
                d.uid,
                d.gid,
                d.size,
                crate::output::time(e.meta.mtime.sec.saturating_mul(1_000_000_000)),
                mpath::display(&e.path),
                tail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
