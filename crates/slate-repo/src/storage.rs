//! Where a repository's objects live, behind a small synchronous trait so
//! that an object store (S3-compatible, HTTP) can stand in for the local
//! directory later, and tests can use memory.
//!
//! Keys are `/`-separated relative names such as `packs/ab/<id>.pack`.
//! Writes are atomic: a reader sees a whole object or none. Durability is
//! only promised after [`Storage::sync`], the commit point.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a conditional replacement expects to find under its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No object.
    Absent,
    /// The object with this version tag (an object store's ETag).
    Tag(String),
    /// Anything: the storage's writers exclude each other another way (a
    /// directory's `flock`), so the replacement needs no check.
    Unchecked,
}

/// The error a conditional replacement fails with when the object is no
/// longer as expected (another writer replaced it meanwhile).
#[derive(Debug)]
pub struct Conflict {
    /// The key.
    pub key: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} was replaced by another writer meanwhile", self.key)
    }
}

impl std::error::Error for Conflict {}

/// Whether `e` is a [`Conflict`].
pub fn is_conflict(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Conflict>())
}

/// A writer for one new object; nothing is visible until [`ObjectWriter::finish`].
pub trait ObjectWriter: Write + Send {
    /// Publish the bytes written under `key`.
    fn finish(self: Box<Self>, key: &str) -> io::Result<()>;
}

/// Object storage for a repository.
pub trait Storage: Send + Sync {
    /// The whole object.
    fn read(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// The object's length.
    fn len(&self, key: &str) -> io::Result<u64>;
    /// Whether the object exists.
    fn exists(&self, key: &str) -> bool {
        self.len(key).is_ok()
    }
    /// Atomically create or replace a small object.
    fn write(&self, key: &str, data: &[u8]) -> io::Result<()>;
    /// Start writing a large object whose name is known only at the end.
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>>;
    /// Keys under `prefix` (recursively), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Remove an object; removing a missing one is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Make every write so far durable.
    fn sync(&self) -> io::Result<()>;
    /// A mutable object (a channel) and what a later [`Storage::write_expecting`]
    /// must find to replace it; `None` when absent. The default, for
    /// storages whose writers hold a lock, expects nothing.
    fn read_expecting(&self, key: &str) -> io::Result<(Option<Vec<u8>>, Expected)> {
        match self.read(key) {
            Ok(b) => Ok((Some(b), Expected::Unchecked)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, Expected::Unchecked)),
            Err(e) => Err(e),
        }
    }
    /// Atomically replace `key` if it is still as `expected`, else fail
    /// with a [`Conflict`] (see [`is_conflict`]). The default writes
    /// unconditionally, which is right only under a writer lock.
    fn write_expecting(&self, key: &str, data: &[u8], expected: &Expected) -> io::Result<()> {
        let _ = expected;
        self.write(key, data)
    }
    /// Make a replaced mutable object (a channel) durable now.
    fn sync_key(&self, key: &str) -> io::Result<()>;
    /// A local filesystem path for `key`, when the storage has one.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A repository directory on a local filesystem.
pub struct LocalStorage {
    root: PathBuf,
    open_files: Mutex<HashMap<String, Arc<File>>>,
}

impl LocalStorage {
    /// Storage rooted at `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        LocalStorage {
            root: root.to_path_buf(),
            open_files: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn open_cached(&self, key: &str) -> io::Result<Arc<File>> {
        let mut files = self.open_files.lock().unwrap();
        if let Some(f) = files.get(key) {
            return Ok(f.clone());
        }
        let p = self.path(key);
        let f = Arc::new(File::open(&p).map_err(|e| with_path(e, &p))?);
        // Packs are immutable, so a handle stays valid; bound the cache so
        // a repository with thousands of packs does not run out of fds.
        if files.len() >= 256 {
            files.clear();
        }
        files.insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
        let mut rnd = [0u8; 12];
        unique_name_bytes(&mut rnd);
        let p = dir.join(format!("{}.tmp", hex::encode(rnd)));
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| with_path(e, &p))?;
        Ok((p, f))
    }

    fn publish(&self, tmp: &Path, key: &str) -> io::Result<()> {
        publish(&self.root, tmp, key)
    }
}

/// Rename a finished temp file to its key under `root`.
fn publish(root: &Path, tmp: &Path, key: &str) -> io::Result<()> {
    let dst = root.join(key);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
    }
    fs::rename(tmp, &dst).map_err(|e| with_path(e, &dst))
}

fn unique_name_bytes(buf: &mut [u8]) {
    // Temp names only need to be unique among concurrent writers; mix the
    // pid, time and a counter rather than depend on a random source.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{:?}-{}",
        std::process::id(),
        std::time::SystemTime::now(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let h = blake3::hash(seed.as_bytes());
    buf.copy_from_slice(&h.as_bytes()[..buf.len()]);
}

struct LocalWriter {
    root: PathBuf,
    tmp: PathBuf,
    file: io::BufWriter<File>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn finish(mut self: Box<Self>, key: &str) -> io::Result<()> {
        self.file.flush().map_err(|e| with_path(e, &self.tmp))?;
        // Durable before it is visible under its name: a crash must never
        // leave a named object with missing data.
        self.file.get_ref().sync_all().map_err(|e| with_path(e, &self.tmp))?;
        publish(&self.root, &self.tmp, key)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // An abandoned writer leaves no temp file behind (a finished one was
        // renamed away, so this removes nothing).
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Storage for LocalStorage {
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let p = self.path(key);
        fs::read(&p).map_err(|e| with_path(e, &p))
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self.open_cached(key)?;
        f.read_exact_at(buf, offset).map_err(|e| {
            let kind = e.kind();
            io::Error::new(
                kind,
                format!(
                    "{}: reading {} bytes at {offset}: {e}",
                    self.path(key).display(),
                    buf.len()
                ),
            )
        })
    }

    fn len(&self, key: &str) -> io::Result<u64> {
        let p = self.path(key);
        Ok(fs::metadata(&p).map_err(|e| with_path(e, &p))?.len())
    }

    fn write(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let (tmp, mut f) = self.temp_file()?;
        let res = f
            .write_all(data)
            .and_then(|_| f.sync_all())
            .and_then(|_| self.publish(&tmp, key));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.map_err(|e| with_path(e, &self.path(key)))
    }

    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        let (tmp, f) = self.temp_file()?;
        Ok(Box::new(LocalWriter {
            root: self.root.clone(),
            tmp,
            file: io::BufWriter::with_capacity(1 << 20, f),
        }))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.path(prefix);
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(with_path(e, dir)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| with_path(e, dir))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if ent.file_type().map_err(|e| with_path(e, &ent.path()))?.is_dir() {
                    walk(&ent.path(), &key, out)?;
                } else {
                    out.push(key);
                }
            }
            Ok(())
        }
        walk(&base, prefix.trim_end_matches('/'), &mut out)?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.open_files.lock().unwrap().remove(key);
        let p = self.path(key);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, &p)),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let f = File::open(&self.root).map_err(|e| with_path(e, &self.root))?;
        rustix::fs::syncfs(&f).map_err(|e| with_path(e.into(), &self.root))
    }

    fn sync_key(&self, key: &str) -> io::Result<()> {
        // The file's data was synced before its rename; make the rename and
        // any directories created for it durable, up to the root.
        let mut dir = self.path(key);
        while dir.pop() && dir.starts_with(&self.root) {
            File::open(&dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| with_path(e, &dir))?;
            if dir == self.root {
                break;
            }
        }
        Ok(())
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }
}

/// Storage in memory, for tests.
#[derive(Default, Clone)]
pub struct MemStorage {
    objects: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

struct MemWriter {
    objects: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
    buf: Vec<u8>,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemWriter {
    fn finish(self: Box<Self>, key: &str) -> io::Result<()> {
        self.objects.lock().unwrap().insert(key.to_string(), Arc::new(self.buf));
        Ok(())
    }
}

fn not_found(key: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{key}: no such object"))
}

impl Storage for MemStorage {
    fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|v| v.to_vec())
            .ok_or_else(|| not_found(key))
    }
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))?;
        let start = offset as usize;
        let src = o
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, format!("{key}: short read")))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self, key: &str) -> io::Result<u64> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|v| v.len() as u64)
            .ok_or_else(|| not_found(key))
    }
    fn write(&self, key: &str, data: &[u8]) -> io::Result<()> {
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), Arc::new(data.to_vec()));
        Ok(())
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemWriter {
            objects: self.objects.clone(),
            buf: Vec::new(),
        }))
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_key(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
}
