//! Private blobs the server keeps for machines: per-machine state
//! (`/v1/state/`) and encrypted home repositories (`/v1/home/`).
//!
//! Unlike the repository's objects these are mutable, private and named by
//! clients, so they live in a storage of their own behind [`BlobStore`], a
//! small synchronous trait like the repository's `Storage`: [`LocalBlobs`]
//! keeps them in a directory, and an S3-like store implements the same
//! calls. A blob is addressed by a *space* (a `/`-separated list of
//! segments the handlers build from checked names, e.g. the hex of a
//! machine name) and a *name*. Every segment and name is checked again
//! here ([`check_segment`]), so no request text can name a path outside the
//! root, whatever a handler does.
//!
//! Writes are atomic: the body goes to a temporary file in the blob's
//! directory, is synced, and is renamed over the old blob (or next to it,
//! refusing to replace, for create-only writes); then the directory is
//! synced. A failure at any point (full disk, a client that disconnects, a
//! body over the limit) removes the temporary file and leaves the previous
//! blob as it was.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

/// Longest blob name.
pub const MAX_NAME_LEN: usize = 128;
/// Default largest state blob (`slate serve --state-limit`).
pub const DEFAULT_STATE_LIMIT: u64 = 1 << 20;
/// Default most state bytes per machine (`slate serve --state-quota`).
pub const DEFAULT_STATE_QUOTA: u64 = 64 << 20;
/// Largest home object.
pub const HOME_LIMIT: u64 = 128 << 20;
/// Default most bytes of home repositories one machine owns
/// (`slate serve --home-quota`).
pub const DEFAULT_HOME_QUOTA: u64 = 100 << 30;

/// A blob storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file system is full (ENOSPC) or over its quota (EDQUOT).
    #[error("no space left to store {what}: {source}")]
    NoSpace {
        /// The blob being written.
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// The body is longer than the limit of the write.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// A create-only write found the blob already there.
    #[error("{what} already exists")]
    Exists {
        /// The blob.
        what: String,
    },
    /// Reading the request body failed (the client went away or stalled).
    #[error("reading the request body failed: {0}")]
    Body(io::Error),
    /// A space or name that is not allowed (a handler bug: they check first).
    #[error("{0}")]
    Invalid(String),
    /// Any other storage failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

/// What a successful write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// There was no blob of that name.
    Created,
    /// An existing blob was replaced.
    Replaced,
}

/// What is known of a stored blob without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Length, bytes.
    pub size: u64,
    /// Last write, Unix seconds.
    pub modified: u64,
    /// A tag that changes whenever the blob is rewritten (a strong
    /// validator for `ETag` and `If-Range`; not a content hash).
    pub version: String,
}

/// A blob opened for reading: seekable so that ranges are cheap.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// A blob opened by [`BlobStore::open`], with what is known of it.
pub type OpenedBlob = (Box<dyn BlobRead>, BlobMeta);

/// Where private blobs are stored.
pub trait BlobStore: Send + Sync {
    /// Write `name` in `space` from `body`, atomically. More than `limit`
    /// bytes is [`BlobError::TooLarge`]; with `create_only`, an existing
    /// blob is [`BlobError::Exists`] and stays as it was.
    fn put(
        &self,
        space: &str,
        name: &str,
        body: &mut dyn Read,
        limit: u64,
        create_only: bool,
    ) -> Result<Written, BlobError>;

    /// Open `name` for reading; `None` when it does not exist. The
    /// metadata is of the blob opened, even if it is replaced meanwhile.
    fn open(&self, space: &str, name: &str) -> Result<Option<OpenedBlob>, BlobError>;

    /// Whether `name` exists.
    fn exists(&self, space: &str, name: &str) -> Result<bool, BlobError>;

    /// Remove `name`; false when there was none.
    fn delete(&self, space: &str, name: &str) -> Result<bool, BlobError>;

    /// Every blob of `space`, ordered by name (empty when the space has none).
    fn list(&self, space: &str) -> Result<Vec<(String, BlobMeta)>, BlobError>;

    /// Bytes of every blob in `space` and in the spaces below it (0 when
    /// there are none): what a home repository takes, for quotas.
    fn usage(&self, space: &str) -> Result<u64, BlobError>;
}

/// Check one path segment or blob name: 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` (so never `.`, `..` or a hidden temporary file).
pub fn check_segment(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > MAX_NAME_LEN
        || s.starts_with('.')
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{s:?} is not a valid name (1 to {MAX_NAME_LEN} of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.')"
        ));
    }
    Ok(())
}

/// Parse a size: bytes, or a number with a binary suffix `K`, `M`, `G`
/// (also `KiB`, `MiB`, `GiB`, any case), e.g. `1M`, `64MiB`, `512k`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        _ => return Err(format!("{text:?} is not a size (bytes, or a number with K, M or G)")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is not a size (bytes, or a number with K, M or G)"))
}

/// The private storages of a server and their limits.
pub struct PrivateStorage {
    /// Per-machine state blobs.
    pub state: Arc<dyn BlobStore>,
    /// Home repository objects.
    pub home: Arc<dyn BlobStore>,
    /// Largest state blob, bytes.
    pub state_limit: u64,
    /// Most state bytes per machine.
    pub state_quota: u64,
    /// Largest home object, bytes.
    pub home_limit: u64,
    /// Most bytes of home repositories one machine owns.
    pub home_quota: u64,
    /// Home repositories only grow: no object is deleted or replaced,
    /// except locks (`slate serve --home-append-only`).
    pub home_append_only: bool,
    /// Ownership and quota bookkeeping of home repositories: claims, and
    /// the bytes each machine has reserved for uploads in flight.
    pub(crate) home_owners: Mutex<std::collections::HashMap<String, u64>>,
    /// Held while a state write checks the quota and writes, so that two
    /// concurrent writes of one machine cannot both fit "under" the quota.
    pub(crate) state_writes: Mutex<()>,
}

impl PrivateStorage {
    /// Storages with the default limits.
    pub fn new(state: Arc<dyn BlobStore>, home: Arc<dyn BlobStore>) -> Self {
        PrivateStorage {
            state,
            home,
            state_limit: DEFAULT_STATE_LIMIT,
            state_quota: DEFAULT_STATE_QUOTA,
            home_limit: HOME_LIMIT,
            home_quota: DEFAULT_HOME_QUOTA,
            home_append_only: false,
            home_owners: Mutex::default(),
            state_writes: Mutex::new(()),
        }
    }

    /// Local directories for both, with the default limits.
    pub fn local(state_dir: &Path, home_dir: &Path) -> Self {
        Self::new(
            Arc::new(LocalBlobs::new(state_dir)),
            Arc::new(LocalBlobs::new(home_dir)),
        )
    }
}

/// Blobs as files below a directory: `ROOT/SPACE.../NAME`, directories
/// mode 0700 and files mode 0600 (the data is private).
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT)
    )
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
    let what = what.into();
    move |source| {
        if is_no_space(&source) {
            BlobError::NoSpace { what, source }
        } else {
            BlobError::Io { what, source }
        }
    }
}

/// Temporary files start with this (a '.', which no blob name does).
const TEMP_PREFIX: &str = ".tmp-";
/// A temporary file untouched for this long is a leftover of a server
/// killed mid-write (an upload in progress writes to it continuously).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Remove a leftover temporary file; listings sweep them, so a crash costs
/// disk space only until the directory is next listed.
fn remove_if_stale(path: &Path) {
    let stale = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_TEMP);
    if stale {
        match fs::remove_file(path) {
            Ok(()) => tracing::info!("removed {}, left over by an interrupted write", path.display()),
            Err(e) => tracing::warn!("cannot remove the leftover {}: {e}", path.display()),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

impl LocalBlobs {
    /// Blobs below `root` (created when first written to).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBlobs { root: root.into() }
    }

    /// The directory of `space`, after checking every segment.
    fn dir(&self, space: &str) -> Result<PathBuf, BlobError> {
        let mut p = self.root.clone();
        for seg in space.split('/') {
            check_segment(seg).map_err(BlobError::Invalid)?;
            p.push(seg);
        }
        Ok(p)
    }

    fn path(&self, space: &str, name: &str) -> Result<PathBuf, BlobError> {
        check_segment(name).map_err(BlobError::Invalid)?;
        Ok(self.dir(space)?.join(name))
    }

    /// Create `dir` and its missing parents (mode 0700), syncing each
    /// parent that gained an entry so the new directories survive a crash.
    fn make_dir(&self, dir: &Path) -> Result<(), BlobError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.make_dir(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io_err(format!("creating directory {}", dir.display()))(e)),
        }
        match dir.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }

    fn meta(m: &fs::Metadata) -> BlobMeta {
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        BlobMeta {
            size: m.len(),
            modified,
            // Every write renames a new file into place, so the inode
            // changes with every version, even within one mtime tick.
            version: format!(
                "{:x}-{:x}-{:x}",
                m.ino(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                m.len()
            ),
        }
    }
}

impl BlobStore for LocalBlobs {
    fn put(
        &self,
        space: &str,
        name: &str,
        body: &mut dyn Read,
        limit: u64,
        create_only: bool,
    ) -> Result<Written, BlobError> {
        let target = self.path(space, name)?;
        let dir = self.dir(space)?;
        let what = || target.display().to_string();
        if create_only && target.exists() {
            return Err(BlobError::Exists { what: name.into() });
        }
        self.make_dir(&dir)?;
        // The temporary name starts with '.', which no blob name does, and
        // is removed when `tmp` drops on any error below.
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(io_err(format!("creating a temporary file in {}", dir.display())))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BlobError::Body(e)),
            };
            total += n as u64;
            if total > limit {
                return Err(BlobError::TooLarge { limit });
            }
            tmp.as_file_mut().write_all(&buf[..n]).map_err(io_err(what()))?;
        }
        tmp.as_file().sync_all().map_err(io_err(what()))?;
        let existed = target.exists();
        if create_only {
            tmp.persist_noclobber(&target).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    BlobError::Exists { what: name.into() }
                } else {
                    io_err(what())(e.error)
                }
            })?;
        } else {
            tmp.persist(&target).map_err(|e| io_err(what())(e.error))?;
        }
        sync_dir(&dir)?;
        Ok(if existed && !create_only {
            Written::Replaced
        } else {
            Written::Created
        })
    }

    fn open(&self, space: &str, name: &str) -> Result<Option<OpenedBlob>, BlobError> {
        let path = self.path(space, name)?;
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path.display().to_string())(e)),
        };
        let m = f.metadata().map_err(io_err(path.display().to_string()))?;
        if !m.is_file() {
            return Ok(None);
        }
        Ok(Some((Box::new(f), Self::meta(&m))))
    }

    fn exists(&self, space: &str, name: &str) -> Result<bool, BlobError> {
        Ok(self.path(space, name)?.is_file())
    }

    fn delete(&self, space: &str, name: &str) -> Result<bool, BlobError> {
        let path = self.path(space, name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
        }
        sync_dir(path.parent().unwrap_or(&self.root))?;
        Ok(true)
    }

    fn list(&self, space: &str) -> Result<Vec<(String, BlobMeta)>, BlobError> {
        let dir = self.dir(space)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io_err(format!("listing {}", dir.display())))?;
            // Temporary files (".tmp-...") and anything else that is not a
            // valid blob name are not blobs.
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                remove_if_stale(&ent.path());
                continue;
            }
            if check_segment(&name).is_err() {
                continue;
            }
            let m = match ent.metadata() {
                Ok(m) => m,
                // Deleted while listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
            };
            if m.is_file() {
                out.push((name, Self::meta(&m)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn usage(&self, space: &str) -> Result<u64, BlobError> {
        fn walk(dir: &Path) -> Result<u64, BlobError> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
            };
            let mut total = 0;
            for ent in rd {
                let ent = ent.map_err(io_err(format!("listing {}", dir.display())))?;
                // Uploads in progress count too: they are on the disk.
                let m = match ent.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
                };
                if m.is_dir() {
                    total += walk(&ent.path())?;
                } else if m.is_file() {
                    total += m.len();
                }
            }
            Ok(total)
        }
        walk(&self.dir(space)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("slate-blobs-")
            .tempdir_in("/var/tmp")
            .unwrap()
    }

    fn read(s: &LocalBlobs, space: &str, name: &str) -> Option<Vec<u8>> {
        s.open(space, name).unwrap().map(|(mut r, m)| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            assert_eq!(v.len() as u64, m.size);
            v
        })
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn put_get_list_delete() {
        let d = scratch();
        let s = LocalBlobs::new(d.path().join("state"));
        assert_eq!(s.list("abcd").unwrap(), []);
        assert_eq!(read(&s, "abcd", "x"), None);
        assert_eq!(
            s.put("abcd", "x", &mut &b"one"[..], 10, false).unwrap(),
            Written::Created
        );
        let v1 = s.list("abcd").unwrap()[0].1.version.clone();
        assert_eq!(
            s.put("abcd", "x", &mut &b"two!"[..], 10, false).unwrap(),
            Written::Replaced
        );
        assert_eq!(read(&s, "abcd", "x").unwrap(), b"two!");
        let listed = s.list("abcd").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].1.size), ("x", 4));
        assert_ne!(listed[0].1.version, v1, "a rewrite changes the version");
        // Create-only refuses to replace, and keeps the blob.
        assert!(matches!(
            s.put("abcd", "x", &mut &b"three"[..], 10, true),
            Err(BlobError::Exists { .. })
        ));
        assert_eq!(s.put("abcd", "y", &mut &b""[..], 10, true).unwrap(), Written::Created);
        // Over the limit: an error, the old blob intact, no temporary file.
        assert!(matches!(
            s.put("abcd", "x", &mut &[0u8; 11][..], 10, false),
            Err(BlobError::TooLarge { limit: 10 })
        ));
        assert_eq!(read(&s, "abcd", "x").unwrap(), b"two!");
        assert_eq!(leftovers(&d.path().join("state/abcd")), Vec::<String>::new());
        // Private modes.
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&d.path().join("state/abcd")), 0o700);
        assert_eq!(mode(&d.path().join("state/abcd/x")), 0o600);
        assert!(s.delete("abcd", "x").unwrap());
        assert!(!s.delete("abcd", "x").unwrap());
        assert_eq!(s.list("abcd").unwrap().len(), 1);
        // Nested spaces (home: repo/kind).
        s.put("r1/data", "n", &mut &b"z"[..], 10, false).unwrap();
        assert_eq!(read(&s, "r1/data", "n").unwrap(), b"z");
    }

    #[test]
    fn listing_sweeps_stale_temporary_files() {
        let d = scratch();
        let s = LocalBlobs::new(d.path());
        s.put("sp", "b", &mut &b"x"[..], 10, false).unwrap();
        let (old, fresh) = (d.path().join("sp/.tmp-old"), d.path().join("sp/.tmp-fresh"));
        fs::write(&old, b"partial").unwrap();
        fs::write(&fresh, b"in progress").unwrap();
        let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let listed = s.list("sp").unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!old.exists());
        assert!(fresh.exists(), "an upload in progress is left alone");
    }

    #[test]
    fn a_failing_body_leaves_nothing() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
                }
                self.0 -= 1;
                buf[0] = 1;
                Ok(1)
            }
        }
        let d = scratch();
        let s = LocalBlobs::new(d.path());
        s.put("sp", "b", &mut &b"keep"[..], 100, false).unwrap();
        assert!(matches!(
            s.put("sp", "b", &mut Broken(3), 100, false),
            Err(BlobError::Body(_))
        ));
        assert_eq!(read(&s, "sp", "b").unwrap(), b"keep");
        assert_eq!(leftovers(&d.path().join("sp")), Vec::<String>::new());
    }

    #[test]
    fn no_path_escapes() {
        let d = scratch();
        let s = LocalBlobs::new(d.path().join("root"));
        for (space, name) in [
            ("..", "x"),
            ("a/..", "x"),
            ("a", ".."),
            ("a", ".hidden"),
            ("", "x"),
            ("a//b", "x"),
            ("/etc", "passwd"),
            ("a", "b/c"),
            ("a", "b\\c"),
        ] {
            assert!(
                matches!(
                    s.put(space, name, &mut &b"x"[..], 10, false),
                    Err(BlobError::Invalid(_))
                ),
                "{space:?} {name:?}"
            );
            assert!(s.open(space, name).is_err());
        }
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for bad in ["", "M", "1T", "-1", "1.5M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
