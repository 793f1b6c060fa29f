//! The FUSE filesystem: a read-only view of one snapshot.
//!
//! Metadata comes from the manifest alone; file content is read chunk by
//! chunk through [`Chunks`], which verifies every byte. The tree never
//! changes while mounted, so the kernel is told to keep entries,
//! attributes, directory listings and file pages as long as it likes, and
//! to send large reads.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};
use slate_core::manifest::Kind;

use crate::record::Recorder;
use crate::source::Chunks;
use crate::tree::{Layout, Tree};

/// How long the kernel may keep entries, attributes and the absence of a
/// name: the tree is immutable for the life of the mount, so as long as
/// the kernel can count (it caps the time at years). Under a root that is
/// this filesystem, systemd's last steps before power-off look up paths
/// while the daemon is stopped with every other process; what the kernel
/// holds is all they can get then.
const TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The largest read the kernel is asked to send (and readahead window).
const MAX_READ: u32 = 1 << 20;

/// The filesystem.
pub struct SnapshotFs {
    tree: Arc<Tree>,
    chunks: Arc<Chunks>,
    handles: Mutex<HashMap<u64, Arc<Layout>>>,
    next_handle: AtomicU64,
    recorder: Option<Arc<Recorder>>,
    /// Layouts of files read without an open (the kernel's no-open mode).
    layouts: Mutex<HashMap<u64, Arc<Layout>>>,
    /// Whether the kernel skips open, flush and release for files.
    no_open: bool,
    /// Where the last read of each inode ended, to see sequential reads.
    read_ends: Mutex<HashMap<u64, u64>>,
}

/// How far ahead of a sequential read a remote mount fetches (raw bytes
/// of the file): frames come in one request instead of one per kernel read.
const READ_AHEAD: u64 = 8 << 20;

/// Layouts kept for files read without an open.
const KEPT_LAYOUTS: usize = 4096;

fn errno_of(e: &slate_agent::Error) -> Errno {
    match e {
        slate_agent::Error::Offline(_) => Errno::EIO,
        _ => Errno::EIO,
    }
}

impl SnapshotFs {
    /// A filesystem of `tree` reading content from `chunks`.
    pub fn new(tree: Arc<Tree>, chunks: Arc<Chunks>, recorder: Option<Arc<Recorder>>) -> SnapshotFs {
        SnapshotFs {
            tree,
            chunks,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            recorder,
            layouts: Mutex::new(HashMap::new()),
            no_open: false,
            read_ends: Mutex::new(HashMap::new()),
        }
    }

    fn layout(&self, fh: FileHandle, ino: INodeNo) -> Option<Arc<Layout>> {
        if let Some(l) = self.handles.lock().unwrap().get(&u64::from(fh)) {
            return Some(l.clone());
        }
        if let Some(l) = self.layouts.lock().unwrap().get(&u64::from(ino)) {
            return Some(l.clone());
        }
        let i = self.tree.entry_of(ino)?;
        let layout = Arc::new(self.tree.layout(i)?);
        let mut kept = self.layouts.lock().unwrap();
        if kept.len() >= KEPT_LAYOUTS {
            kept.clear();
        }
        kept.insert(u64::from(ino), layout.clone());
        Some(layout)
    }

    /// Fill `out` with file bytes from `offset`.
    fn read_into(&self, layout: &Layout, offset: u64, out: &mut [u8]) -> slate_agent::Result<()> {
        for (at, data_start, len) in layout.pieces(offset, out.len() as u64) {
            let mut pos = at;
            for (k, within, take) in layout.chunk_spans(data_start, len) {
                let dst = &mut out[pos..pos + take];
                self.chunks
                    .with_chunk(&layout.chunks[k].id, |d| dst.copy_from_slice(&d[within..within + take]))?;
                pos += take;
            }
        }
        Ok(())
    }
}

impl fuser::Filesystem for SnapshotFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is an optimisation or a feature the kernel may lack: ask,
        // and go on without what it refuses.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_SPLICE_WRITE,
            InitFlags::FUSE_SPLICE_MOVE,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Files need no open: the kernel then sends no open, flush or
        // release (three round trips per file), and keeps pages across
        // opens as with FOPEN_KEEP_CACHE. Warm reads of many small files
        // then cost what they cost on a local filesystem.
        self.no_open = config.add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT).is_ok();
        let _ = config.set_max_readahead(MAX_READ);
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(dir) = self.tree.entry_of(parent) else {
            return reply.error(Errno::ENOENT);
        };
        if !matches!(self.tree.manifest.entries[dir].kind, Kind::Dir) {
            return reply.error(Errno::ENOTDIR);
        }
        match self.tree.lookup(dir, name.as_bytes()) {
            Some(i) => reply.entry(&TTL, &self.tree.attr(i), Generation(0)),
            // Node 0 with a lifetime: the kernel keeps the name's absence
            // (a negative entry) instead of asking again for every probe
            // of a path that does not exist.
            None => {
                let mut absent = self.tree.attr(dir);
                absent.ino = INodeNo(0);
                reply.entry(&TTL, &absent, Generation(0))
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.entry_of(ino) {
            Some(i) => reply.attr(&TTL, &self.tree.attr(i)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree.entry_of(ino).map(|i| &self.tree.manifest.entries[i].kind) {
            Some(Kind::Symlink(t)) => reply.data(t),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(i) = self.tree.entry_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if self.no_open {
            // ENOSYS here switches the kernel to no-open mode for good.
            return reply.error(Errno::ENOSYS);
        }
        let Some(layout) = self.tree.layout(i) else {
            return reply.error(Errno::EISDIR);
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, Arc::new(layout));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(layout) = self.layout(fh, ino) else {
            return reply.error(Errno::EINVAL);
        };
        if offset >= layout.size {
            return reply.data(&[]);
        }
        let len = (size as u64).min(layout.size - offset) as usize;
        if let (Some(r), Some(i)) = (&self.recorder, self.tree.entry_of(ino)) {
            r.note(i, offset, len as u64);
        }
        // A read that starts where the last one of this file ended is
        // sequential: fetch what follows in large requests. Random reads
        // (a program mapping parts of a library) fetch only their frames.
        let sequential = {
            let mut ends = self.read_ends.lock().unwrap();
            if ends.len() >= KEPT_LAYOUTS {
                ends.clear();
            }
            let seq = offset > 0 && ends.get(&u64::from(ino)) == Some(&offset);
            ends.insert(u64::from(ino), offset + len as u64);
            seq
        };
        if sequential && self.chunks.is_remote() {
            let mut ids = Vec::new();
            for (_, data_start, n) in layout.pieces(offset, READ_AHEAD) {
                for (k, _, _) in layout.chunk_spans(data_start, n) {
                    ids.push(layout.chunks[k].id);
                }
            }
            self.chunks.read_ahead(&ids);
        }
        let mut out = vec![0u8; len];
        match self.read_into(&layout, offset, &mut out) {
            Ok(()) => reply.data(&out),
            Err(e) => {
                let path = self
                    .tree
                    .entry_of(ino)
                    .map(|i| String::from_utf8_lossy(&self.tree.manifest.entries[i].path).into_owned())
                    .unwrap_or_else(|| format!("inode {ino}"));
                tracing::warn!("read of /{path} at {offset} failed: {e}");
                reply.error(errno_of(&e))
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&u64::from(fh));
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever written; ENOSYS tells the kernel not to send
        // flushes again (one round trip less per close).
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree.entry_of(ino).map(|i| &self.tree.manifest.entries[i].kind) {
            Some(Kind::Dir) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(dir) = self.tree.entry_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let kids = self.tree.children(dir);
        // Offsets: 1 is ".", 2 "..", 3 + k the k-th child.
        for pos in offset..(kids.len() as u64 + 2) {
            let full = match pos {
                0 => reply.add(ino, 1, fuser::FileType::Directory, "."),
                1 => reply.add(
                    self.tree.ino_of(self.tree.parent(dir)),
                    2,
                    fuser::FileType::Directory,
                    "..",
                ),
                _ => {
                    let c = kids[(pos - 2) as usize] as usize;
                    reply.add(
                        self.tree.ino_of(c),
                        pos + 1,
                        self.tree.file_type(c),
                        OsStr::from_bytes(self.tree.name(c)),
                    )
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(dir) = self.tree.entry_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let kids = self.tree.children(dir);
        for pos in offset..(kids.len() as u64 + 2) {
            let (i, name): (usize, &OsStr) = match pos {
                0 => (dir, OsStr::new(".")),
                1 => (self.tree.parent(dir), OsStr::new("..")),
                _ => {
                    let c = kids[(pos - 2) as usize] as usize;
                    (c, OsStr::from_bytes(self.tree.name(c)))
                }
            };
            let attr = self.tree.attr(i);
            if reply.add(attr.ino, pos + 1, name, &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    /// Files here are no devices: programs ask (`isatty` on every file a
    /// shell opens is a TCGETS) and get the answer a plain file gives.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes = self.tree.manifest.total_file_bytes();
        reply.statfs(bytes.div_ceil(4096), 0, 0, self.tree.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(i) = self.tree.entry_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(x) = self.tree.meta(i).xattrs.iter().find(|x| x.name == name.as_bytes()) else {
            return reply.error(Errno::ENODATA);
        };
        if size == 0 {
            reply.size(x.value.len() as u32)
        } else if (size as usize) < x.value.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&x.value)
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(i) = self.tree.entry_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut list = Vec::new();
        for x in &self.tree.meta(i).xattrs {
            list.extend_from_slice(&x.name);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if (size as usize) < list.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }
}

/// Mount options for a root-capable, read-only tree.
pub fn mount_config(threads: usize) -> fuser::Config {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("slate".into()),
        fuser::MountOption::Subtype("slate".into()),
        fuser::MountOption::RO,
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
        fuser::MountOption::Exec,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(threads.max(1));
    cfg.clone_fd = true;
    cfg
}
