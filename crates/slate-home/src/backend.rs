//! Where a repository's objects live: a trait with a local-directory
//! backend (tests, USB disks, offline backups) and an HTTP backend speaking
//! `slate serve`'s `/v1/home/{repo}/{kind}/{name}` API with the machine's
//! token. Objects are immutable: a put creates, never overwrites.
//!
//! The HTTP backend follows the agent's transport rules (`slate-net`,
//! `docs/agent.md`, "Servers"): each server is checked against its own CA
//! file or pins from AGENT.toml, a TLS failure is an error and never a
//! reason to try the next server, redirects are not followed, and the
//! machine token goes only to servers whose settings allow it.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use slate_net::{Endpoint, ServerSettings};

use crate::error::{local, Error, Result};

/// One stored object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Object storage for one repository, by (kind, name).
pub trait Backend: Send + Sync {
    /// Where the objects are, for messages (a directory or a URL).
    fn location(&self) -> String;
    /// Store a new object; `Ok(false)` when one with that name exists already
    /// (it is left as it was).
    fn put(&self, kind: &str, name: &str, data: &[u8]) -> Result<bool>;
    /// Read a whole object; [`Error::Missing`] when absent.
    fn get(&self, kind: &str, name: &str) -> Result<Vec<u8>>;
    /// Read `len` bytes at `offset`.
    fn get_range(&self, kind: &str, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Every object of a kind.
    fn list(&self, kind: &str) -> Result<Vec<ObjectInfo>>;
    /// Remove an object (absent is fine).
    fn delete(&self, kind: &str, name: &str) -> Result<()>;
    /// Whether an object exists.
    fn exists(&self, kind: &str, name: &str) -> Result<bool>;
}

fn check_name(kind: &str, name: &str) {
    // Names are made by this crate; a bad one is a bug, not input.
    debug_assert!(!kind.is_empty() && kind.len() <= 16 && kind.bytes().all(|b| b.is_ascii_lowercase()));
    debug_assert!(
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    );
}

/// A repository in a local directory: `DIR/{repo}/{kind}/{name}`.
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The repository `repo_id` under `dir`.
    pub fn new(dir: &std::path::Path, repo_id: &str) -> LocalDir {
        LocalDir {
            root: dir.join(repo_id),
        }
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        check_name(kind, name);
        self.root.join(kind).join(name)
    }

    fn io(&self, what: &str, p: &std::path::Path, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(code)
                if code == rustix::io::Errno::NOSPC.raw_os_error()
                    || code == rustix::io::Errno::DQUOT.raw_os_error() =>
            {
                Error::Full(format!(
                    "the backup disk is full: cannot {what} {}; free space there or forget and prune old snapshots",
                    p.display()
                ))
            }
            _ if e.kind() == std::io::ErrorKind::NotFound => Error::Missing(format!("{} is missing", p.display())),
            _ => local(format!("cannot {what} {}", p.display()), e),
        }
    }
}

impl Backend for LocalDir {
    fn location(&self) -> String {
        self.root.parent().unwrap_or(&self.root).display().to_string()
    }

    fn put(&self, kind: &str, name: &str, data: &[u8]) -> Result<bool> {
        let p = self.path(kind, name);
        if p.exists() {
            return Ok(false);
        }
        let dir = self.root.join(kind);
        std::fs::create_dir_all(&dir).map_err(|e| self.io("create", &dir, e))?;
        // Temp file, fsync, then a link that fails if the name exists: the
        // object appears whole or not at all, and never replaces another.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| self.io("create a temporary file in", &dir, e))?;
        tmp.write_all(data)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| self.io("write", &p, e))?;
        match tmp.persist_noclobber(&p) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(self.io("store", &p, e.error)),
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }

    fn get(&self, kind: &str, name: &str) -> Result<Vec<u8>> {
        let p = self.path(kind, name);
        std::fs::read(&p).map_err(|e| self.io("read", &p, e))
    }

    fn get_range(&self, kind: &str, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let p = self.path(kind, name);
        let mut f = std::fs::File::open(&p).map_err(|e| self.io("open", &p, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| self.io("read", &p, e))?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut buf).map_err(|e| self.io("read", &p, e))?;
        if buf.len() as u64 != len {
            return Err(Error::Tampered(format!(
                "{} is shorter than its index says: the object was truncated (run `slate home check`)",
                p.display()
            )));
        }
        Ok(buf)
    }

    fn list(&self, kind: &str) -> Result<Vec<ObjectInfo>> {
        let dir = self.root.join(kind);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("list", &dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| self.io("list", &dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let size = ent.metadata().map_err(|e| self.io("stat", &ent.path(), e))?.len();
            out.push(ObjectInfo { name, size });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, kind: &str, name: &str) -> Result<()> {
        let p = self.path(kind, name);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", &p, e)),
        }
    }

    fn exists(&self, kind: &str, name: &str) -> Result<bool> {
        Ok(self.path(kind, name).exists())
    }
}

/// A repository on `slate serve`: `{server}/v1/home/{repo}/{kind}/{name}`,
/// trying the servers in order when one cannot be reached.
pub struct Http {
    endpoints: Vec<Endpoint>,
    repo_id: String,
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct Listing {
    objects: Vec<ListedObject>,
}

#[derive(serde::Deserialize)]
struct ListedObject {
    name: String,
    size: u64,
}

impl Http {
    /// A client for repository `repo_id` on `servers` (tried in order,
    /// each with its own TLS settings), sending `token` to those whose
    /// settings allow it.
    pub fn new(servers: &[ServerSettings], token: Option<String>, timeout_secs: u64, repo_id: &str) -> Result<Http> {
        let timeouts = slate_net::Timeouts {
            connect: Duration::from_secs(timeout_secs.min(10)),
            // A whole request may move a 24 MiB pack over a slow link.
            request: Duration::from_secs(timeout_secs.max(600)),
        };
        let endpoints = servers
            .iter()
            .map(|s| {
                Endpoint::new(s, timeouts, concat!("slate-home/", env!("CARGO_PKG_VERSION"))).map_err(|e| match e {
                    slate_net::Error::Config(m) => Error::Invalid(m),
                    slate_net::Error::Local(m) => Error::Local(m),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Http {
            endpoints,
            repo_id: repo_id.to_string(),
            token,
        })
    }

    fn url(&self, server: &str, kind: &str, name: &str) -> String {
        check_name(kind, name);
        format!("{server}/v1/home/{}/{kind}/{name}", self.repo_id)
    }

    /// Send a request to each server in turn until one answers.
    fn send(
        &self,
        what: &str,
        build: &dyn Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> Result<(String, reqwest::blocking::Response)> {
        let mut last = String::new();
        for endpoint in &self.endpoints {
            let server = endpoint.url();
            let req = endpoint.authorize(build(&endpoint.client, server), self.token.as_deref());
            match req.send() {
                Ok(resp) => {
                    let status = resp.status();
                    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                        return Err(Error::Unauthorized(format!(
                            "{server} refused this machine's token ({status}) while trying to {what}; enroll the machine again (`slate fleet enroll`) and update its token_file"
                        )));
                    }
                    if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
                        return Err(Error::Full(format!(
                            "the server {server} is out of disk space ({status}) while trying to {what}; nothing was lost, the backup resumes once the server has room"
                        )));
                    }
                    if status.is_server_error() {
                        last = format!("{server} answered {status}");
                        continue;
                    }
                    return Ok((server.to_string(), resp));
                }
                // A failed handshake is an attack or a misconfiguration,
                // never "offline": it must not pass to another server nor
                // let a quiet timer run report success. The request (and
                // the token in it) is sent only after the handshake.
                Err(e) if slate_net::is_tls_error(&e) => {
                    return Err(Error::Storage(format!(
                        "{}; nothing was sent to it (trying to {what}) and no other server was tried",
                        slate_net::tls_failure(&endpoint.settings, &e)
                    )))
                }
                Err(e) => last = format!("{server}: {}", error_chain(&e)),
            }
        }
        Err(Error::Offline(format!(
            "no backup server answered while trying to {what} ({last}); the backup resumes when the server can be reached"
        )))
    }

    fn unexpected(server: &str, what: &str, resp: reqwest::blocking::Response) -> Error {
        Error::Storage(format!("{server} answered {} to {what}", resp.status()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn body(server: &str, what: &str, resp: reqwest::blocking::Response) -> Result<Vec<u8>> {
    resp.bytes().map(|b| b.to_vec()).map_err(|e| {
        Error::Offline(format!(
            "{server} stopped answering while sending {what} ({}); try again when it is back",
            error_chain(&e)
        ))
    })
}

impl Backend for Http {
    fn location(&self) -> String {
        self.endpoints.iter().map(Endpoint::url).collect::<Vec<_>>().join(", ")
    }

    fn put(&self, kind: &str, name: &str, data: &[u8]) -> Result<bool> {
        let what = format!("store {kind} {name}");
        let (server, resp) = self.send(&what, &|c, s| {
            c.put(self.url(s, kind, name))
                .header("If-None-Match", "*")
                .body(data.to_vec())
        })?;
        match resp.status().as_u16() {
            200 | 201 | 204 => Ok(true),
            412 => Ok(false),
            413 => Err(Error::Storage(format!("{server} refused {kind} {name} as too large"))),
            _ => Err(Self::unexpected(&server, &what, resp)),
        }
    }

    fn get(&self, kind: &str, name: &str) -> Result<Vec<u8>> {
        let what = format!("read {kind} {name}");
        let (server, resp) = self.send(&what, &|c, s| c.get(self.url(s, kind, name)))?;
        match resp.status().as_u16() {
            200 => body(&server, &what, resp),
            404 => Err(Error::Missing(format!("{kind} {name} is missing on {server}"))),
            _ => Err(Self::unexpected(&server, &what, resp)),
        }
    }

    fn get_range(&self, kind: &str, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let what = format!("read {kind} {name}");
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let (server, resp) = self.send(&what, &|c, s| {
            c.get(self.url(s, kind, name)).header("Range", range.as_str())
        })?;
        let status = resp.status().as_u16();
        let data = match status {
            206 => body(&server, &what, resp)?,
            200 => {
                let all = body(&server, &what, resp)?;
                all.get(offset as usize..(offset + len) as usize)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            }
            404 => return Err(Error::Missing(format!("{kind} {name} is missing on {server}"))),
            416 => Vec::new(),
            _ => return Err(Self::unexpected(&server, &what, resp)),
        };
        if data.len() as u64 != len {
            return Err(Error::Tampered(format!(
                "{kind} {name} on {server} is shorter than its index says (run `slate home check`)"
            )));
        }
        Ok(data)
    }

    fn list(&self, kind: &str) -> Result<Vec<ObjectInfo>> {
        let what = format!("list {kind} objects");
        let (server, resp) = self.send(&what, &|c, s| c.get(format!("{s}/v1/home/{}/{kind}/", self.repo_id)))?;
        match resp.status().as_u16() {
            200 => {
                let b = body(&server, &what, resp)?;
                let l: Listing = serde_json::from_slice(&b)
                    .map_err(|e| Error::Storage(format!("{server} sent a bad listing of {kind} objects: {e}")))?;
                let mut out: Vec<ObjectInfo> = l
                    .objects
                    .into_iter()
                    .map(|o| ObjectInfo {
                        name: o.name,
                        size: o.size,
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
            404 => Ok(Vec::new()),
            _ => Err(Self::unexpected(&server, &what, resp)),
        }
    }

    fn delete(&self, kind: &str, name: &str) -> Result<()> {
        let what = format!("delete {kind} {name}");
        let (server, resp) = self.send(&what, &|c, s| c.delete(self.url(s, kind, name)))?;
        match resp.status().as_u16() {
            200 | 202 | 204 | 404 => Ok(()),
            _ => Err(Self::unexpected(&server, &what, resp)),
        }
    }

    fn exists(&self, kind: &str, name: &str) -> Result<bool> {
        let what = format!("look for {kind} {name}");
        let (server, resp) = self.send(&what, &|c, s| c.head(self.url(s, kind, name)))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::unexpected(&server, &what, resp)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_is_create_only() {
        let d = tempfile::tempdir().unwrap();
        let b = LocalDir::new(d.path(), &"ab".repeat(32));
        assert!(b.list("pack").unwrap().is_empty());
        assert!(b.put("pack", "p1", b"hello").unwrap());
        assert!(!b.put("pack", "p1", b"other").unwrap());
        assert_eq!(b.get("pack", "p1").unwrap(), b"hello");
        assert_eq!(b.get_range("pack", "p1", 1, 3).unwrap(), b"ell");
        assert!(matches!(b.get_range("pack", "p1", 3, 5), Err(Error::Tampered(_))));
        assert!(matches!(b.get("pack", "p2"), Err(Error::Missing(_))));
        assert_eq!(
            b.list("pack").unwrap(),
            vec![ObjectInfo {
                name: "p1".into(),
                size: 5
            }]
        );
        assert!(b.exists("pack", "p1").unwrap());
        b.delete("pack", "p1").unwrap();
        b.delete("pack", "p1").unwrap();
        assert!(!b.exists("pack", "p1").unwrap());
    }
}
