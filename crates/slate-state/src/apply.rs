//! `slate state apply`: make the root read-only and set up every declared
//! path under it, idempotently.
//!
//! Order matters and is fixed: the root is bind-mounted on itself and made
//! read-only; server state is fetched (so a server problem is known before
//! anything is mounted); directories that must receive a mount point the
//! image lacks get an overlay with RAM above the image; then every declared path, in
//! tree order so that a parent's mount never hides a child's. A path that
//! is already a mount point is left alone, which makes a second run change
//! nothing: the initramfs and an early systemd unit may both run it.
//!
//! Files are prepared in a private scratch tmpfs and bind-mounted into the
//! root; the scratch mount is detached at the end, the bind mounts keep
//! their files.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::copy::{self, Contents};
use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::mounts::{self, Found, Scratch, Target, TmpfsOptions};
use crate::policy::{Entry, EntryType, Generator, Mode, Policy, Principal, Seed};

/// How the server answered for one blob.
#[derive(Debug)]
pub enum ServerError {
    /// No server could be reached: boot on without the server's state.
    Offline(String),
    /// Any other failure (refused token, bad answer).
    Failed(String),
}

/// The per-machine state on the server (`slate serve`'s /v1/state).
pub trait StateServer {
    /// The blob `name`, or `None` when the server has none.
    fn fetch(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, ServerError>;
    /// Store a blob unless the server already has one by that name;
    /// `Ok(false)` when it had one.
    fn upload_new(&self, name: &str, data: &[u8]) -> std::result::Result<bool, ServerError>;
}

/// Where `local` and `backup` paths persist.
#[derive(Debug, Clone)]
pub enum Store {
    /// None given (an error if the policy declares local or backup paths).
    None,
    /// A directory (on a partition that survives reboots).
    Dir(PathBuf),
    /// A block device, mounted for the duration.
    Device(PathBuf),
}

/// Everything `apply` needs besides the policy.
pub struct Options<'a> {
    /// The root to set up (the new root before switch_root, or `/`).
    pub root: PathBuf,
    /// The local state store.
    pub store: Store,
    /// The machine's facts, for dynamic paths.
    pub facts: Facts,
    /// The server, for server paths (`None`: treat them as offline).
    pub server: Option<&'a dyn StateServer>,
}

/// One thing `apply` did or found done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    /// The path in the root.
    pub path: String,
    /// Its declared state (`root` for the root itself, `parent` for a RAM
    /// copy of a directory made to hold mount points).
    pub state: String,
    /// What happened, for people.
    pub did: String,
    /// Whether anything was mounted or written.
    pub changed: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Per path, in order.
    pub actions: Vec<Action>,
    /// Things that did not stop the boot but need attention.
    pub warnings: Vec<String>,
    /// Server blobs uploaded for the first time.
    pub uploaded: Vec<String>,
}

impl Report {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.actions.iter().any(|a| a.changed) || !self.uploaded.is_empty()
    }
    fn did(&mut self, path: &str, state: &str, did: impl Into<String>, changed: bool) {
        self.actions.push(Action {
            path: path.to_string(),
            state: state.to_string(),
            did: did.into(),
            changed,
        });
    }
}

/// The server's answer for one server path.
enum Fetched {
    Present(Contents),
    Absent,
    Offline,
}

/// A directory of the image that gets a RAM overlay so that mount points
/// the image lacks can be created in it.
struct ParentCopy {
    rel: String,
    /// Stays writable: a server path in it is to be created by the
    /// machine the first time.
    writable: bool,
    /// Mount points to create: (name, is_dir, entry index).
    create: Vec<(String, bool, usize)>,
}

enum Op {
    Parent(ParentCopy),
    Entry(usize),
}

fn parent_rel(rel: &str) -> &str {
    rel.rfind('/').map_or("", |i| &rel[..i])
}

fn base_name(rel: &str) -> &str {
    rel.rfind('/').map_or(rel, |i| &rel[i + 1..])
}

/// Read a small file inside the root without following links out of it.
pub(crate) fn read_in_root(root: &OwnedFd, rel: &str) -> Option<String> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let mut s = String::new();
    use std::io::Read;
    std::fs::File::from(fd).take(4 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

struct Ctx<'a> {
    policy: &'a Policy,
    opts: &'a Options<'a>,
    /// The machine's facts, with the kept seed filled in when needed.
    facts: Facts,
    root: OwnedFd,
    scratch: Option<Scratch>,
    store: Option<PathBuf>,
    fetched: HashMap<usize, Fetched>,
    report: Report,
    scratch_n: usize,
}

/// Apply `policy` to `opts.root`.
pub fn apply(policy: &Policy, opts: &Options<'_>) -> Result<Report> {
    let root_path = std::fs::canonicalize(&opts.root)
        .map_err(|e| Error(format!("cannot use {} as the root: {e}", opts.root.display())))?;
    let mut report = Report::default();
    // Before anything is mounted: a policy that does not fit this root is
    // refused whole, never half applied (the initramfs step then falls
    // back to the last policy that worked here).
    crate::check::check(policy, &root_path)?;

    // The root: a mount of its own, read-only.
    let mut root = mounts::open_root(&root_path)?;
    let mut changed_root = false;
    if !mounts::is_mount_root(&root)? {
        mounts::bind(&root_path, &root_path, &root_path.display().to_string())?;
        // The old descriptor sees the directory beneath the new mount.
        root = mounts::open_root(&root_path)?;
        changed_root = true;
    }
    if !mounts::is_readonly(&root)? {
        mounts::remount_readonly(&root_path, &root_path.display().to_string())?;
        changed_root = true;
    }
    report.did(
        "/",
        "root",
        if changed_root {
            "made read-only"
        } else {
            "already read-only"
        },
        changed_root,
    );

    let needs_store = policy
        .entries
        .iter()
        .any(|e| matches!(e.state, Mode::Local | Mode::Backup));
    let mut ctx = Ctx {
        policy,
        opts,
        facts: opts.facts.clone(),
        root,
        scratch: None,
        store: None,
        fetched: HashMap::new(),
        report,
        scratch_n: 0,
    };
    let needs_identity = ctx.facts.lacks_hardware_identity()
        && policy.entries.iter().any(|e| {
            matches!(
                e.generator,
                Some(Generator::MachineId | Generator::Hostname | Generator::Template(_))
            )
        });
    if needs_store || (needs_identity && !matches!(opts.store, Store::None)) {
        ctx.store = Some(open_store(&mut ctx)?);
    }
    if needs_identity {
        keep_identity(&mut ctx)?;
    }
    fetch_server_state(&mut ctx)?;
    for op in plan(&ctx)? {
        match op {
            Op::Parent(p) => parent_copy(&mut ctx, p)?,
            Op::Entry(i) => apply_entry(&mut ctx, i)?,
        }
    }
    upload_new(policy, &ctx.root, opts.server, &mut ctx.report)?;
    Ok(ctx.report)
}

fn scratch(ctx: &mut Ctx<'_>) -> Result<PathBuf> {
    if ctx.scratch.is_none() {
        ctx.scratch = Some(Scratch::new()?);
    }
    ctx.scratch_n += 1;
    ctx.scratch
        .as_ref()
        .expect("just set")
        .dir(&format!("p{}", ctx.scratch_n))
}

fn open_store(ctx: &mut Ctx<'_>) -> Result<PathBuf> {
    match &ctx.opts.store {
        Store::None => {
            let e = ctx
                .policy
                .entries
                .iter()
                .find(|e| matches!(e.state, Mode::Local | Mode::Backup))
                .expect("checked by the caller");
            Err(Error(format!(
                "{}: {} is {} state, but no state store was given (--state-dir DIR or --state-dev DEV)",
                e.origin,
                e.path,
                e.state.name()
            )))
        }
        Store::Dir(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| Error(format!("cannot use the state directory {}: {e}", d.display())))?;
            std::fs::canonicalize(d).map_err(|e| Error(format!("cannot use the state directory {}: {e}", d.display())))
        }
        Store::Device(dev) => {
            let dir = scratch(ctx)?;
            mounts::mount_device(dev, &dir)?;
            Ok(dir)
        }
    }
}

/// Where the state store keeps the identity seed of a machine whose
/// hardware gives none.
pub const SEED_FILE: &str = "identity/machine-seed";

/// A machine with no DMI UUID and no network interface still gets a
/// stable identity: a random seed made once and kept in the state store
/// (a new one only when the store is wiped). Without a store the seed is
/// made afresh at every boot: the machine boots, with a warning, rather
/// than failing the same way at every start.
fn keep_identity(ctx: &mut Ctx<'_>) -> Result<()> {
    let seed = match &ctx.store {
        Some(store) => {
            let at = store.join(SEED_FILE);
            let (seed, made) = match std::fs::read_to_string(&at) {
                Ok(s) if is_seed(s.trim()) => (s.trim().to_string(), false),
                Ok(_) | Err(_) => {
                    let seed = random_seed()?;
                    write_durably(&at, format!("{seed}\n").as_bytes())?;
                    (seed, true)
                }
            };
            ctx.report.warnings.push(format!(
                "this machine has no DMI UUID and no network interface: its machine id comes from the seed {} in \
                 the state store {} (stable across boots; a new one only if the state partition is wiped)",
                if made { "just made" } else { "kept" },
                at.display()
            ));
            seed
        }
        None => {
            ctx.report.warnings.push(
                "this machine has no DMI UUID, no network interface and no state store: its machine id is \
                 random and changes at every boot (give it a state partition)"
                    .into(),
            );
            random_seed()?
        }
    };
    ctx.facts.kept_seed = Some(seed);
    Ok(())
}

fn is_seed(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_seed() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| Error(format!("cannot make a random machine seed: {e}")))?;
    Ok(hex::encode(b))
}

/// Write a small file beside its place and rename it there, synced.
fn write_durably(at: &Path, data: &[u8]) -> Result<()> {
    let dir = at.parent().expect("a file in the store");
    std::fs::create_dir_all(dir).map_err(|e| Error(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(".slate-new-seed");
    let res = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, at)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    res.map_err(|e| Error(format!("cannot write {}: {e}", at.display())))
}

fn fetch_server_state(ctx: &mut Ctx<'_>) -> Result<()> {
    for (i, e) in ctx.policy.entries.iter().enumerate() {
        if e.state != Mode::Server {
            continue;
        }
        let name = e.blob_name();
        let fetched = match ctx.opts.server {
            None => Fetched::Offline,
            Some(s) => match s.fetch(&name) {
                Ok(Some(bytes)) => Fetched::Present(crate::bundle::decode(
                    &bytes,
                    &format!("the server's state {name} for {}", e.path),
                )?),
                Ok(None) => Fetched::Absent,
                Err(ServerError::Offline(why)) => {
                    ctx.report.warnings.push(format!(
                        "{}: the server could not be reached ({why}); kept the image's content in RAM",
                        e.path
                    ));
                    Fetched::Offline
                }
                Err(ServerError::Failed(why)) => {
                    return Err(Error(format!("cannot fetch the server state of {}: {why}", e.path)))
                }
            },
        };
        if ctx.opts.server.is_none() {
            ctx.report.warnings.push(format!(
                "{}: no server configured (--config); kept the image's content in RAM",
                e.path
            ));
        }
        ctx.fetched.insert(i, fetched);
    }
    Ok(())
}

/// Whether an entry's path, when the image lacks it, is to be left absent
/// for the machine to create (a server path the server does not have yet).
fn created_by_machine(ctx: &Ctx<'_>, i: usize) -> bool {
    ctx.policy.entries[i].state == Mode::Server && !matches!(ctx.fetched.get(&i), Some(Fetched::Present(_)))
}

fn entry_is_dir(ctx: &Ctx<'_>, i: usize) -> bool {
    let e = &ctx.policy.entries[i];
    match (e.state, ctx.fetched.get(&i)) {
        (Mode::Dynamic, _) => false,
        (Mode::Server, Some(Fetched::Present(c))) => !c.is_file(),
        _ => e.kind != Some(EntryType::File),
    }
}

fn plan(ctx: &Ctx<'_>) -> Result<Vec<Op>> {
    let entries = &ctx.policy.entries;
    let mut parents: Vec<ParentCopy> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        // Under another declared path, the parent is writable by then.
        if entries[..i].iter().any(|a| a.covers(e.rel())) {
            continue;
        }
        if mounts::open_in(&ctx.root, e.rel())?.is_some() {
            continue;
        }
        let prel = parent_rel(e.rel());
        let parent = mounts::open_in(&ctx.root, prel)?;
        match parent {
            Some(t) if t.found == Found::Dir => {}
            _ => {
                return Err(Error(format!(
                    "{}: neither {} nor its directory /{prel} exist in the image; add the directory to the image",
                    e.origin, e.path
                )))
            }
        }
        let pc = match parents.iter_mut().find(|p| p.rel == prel) {
            Some(p) => p,
            None => {
                parents.push(ParentCopy {
                    rel: prel.to_string(),
                    writable: false,
                    create: Vec::new(),
                });
                parents.last_mut().expect("just pushed")
            }
        };
        if created_by_machine(ctx, i) {
            pc.writable = true;
        } else {
            pc.create
                .push((base_name(e.rel()).to_string(), entry_is_dir(ctx, i), i));
        }
    }
    let mut ops: Vec<(String, Op)> = parents.into_iter().map(|p| (p.rel.clone(), Op::Parent(p))).collect();
    ops.extend(
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.rel().to_string(), Op::Entry(i))),
    );
    // Stable: a parent copy sorts before the entries inside it.
    ops.sort_by(|a, b| slate_core::manifest::path::cmp_tree_order(a.0.as_bytes(), b.0.as_bytes()));
    Ok(ops.into_iter().map(|(_, op)| op).collect())
}

fn lookup_id(root: &OwnedFd, file: &str, name: &str) -> Option<u32> {
    read_in_root(root, file)?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

fn resolve(ctx: &Ctx<'_>, p: &Option<Principal>, group: bool, e: &Entry) -> Result<Option<u32>> {
    match p {
        None => Ok(None),
        Some(Principal::Id(n)) => Ok(Some(*n)),
        Some(Principal::Name(n)) => {
            let file = if group { "etc/group" } else { "etc/passwd" };
            lookup_id(&ctx.root, file, n).map(Some).ok_or_else(|| {
                Error(format!(
                    "{}: {} {n:?} of {} is not in the image's /{file}",
                    e.origin,
                    if group { "group" } else { "owner" },
                    e.path
                ))
            })
        }
    }
}

/// Mode, uid and gid for what slate creates at an entry: the policy's,
/// else those of what the image has there, else defaults.
fn meta_for(ctx: &Ctx<'_>, e: &Entry, lower: Option<&Target>, dir: bool) -> Result<(u32, u32, u32)> {
    let st = match lower {
        Some(t) => {
            Some(rustix::fs::fstat(&t.fd).map_err(|err| Error(format!("{}: {}", e.path, io::Error::from(err))))?)
        }
        None => None,
    };
    let mode = e
        .file_mode
        .or(st.as_ref().map(|s| s.st_mode & 0o7777))
        .unwrap_or(if dir { 0o755 } else { 0o644 });
    let uid = resolve(ctx, &e.owner, false, e)?
        .or(st.as_ref().map(|s| s.st_uid))
        .unwrap_or(0);
    let gid = resolve(ctx, &e.group, true, e)?
        .or(st.as_ref().map(|s| s.st_gid))
        .unwrap_or(0);
    Ok((mode, uid, gid))
}

fn parent_copy(ctx: &mut Ctx<'_>, p: ParentCopy) -> Result<()> {
    let shown = format!("/{}", p.rel);
    let target = mounts::open_in(&ctx.root, &p.rel)?.ok_or_else(|| Error(format!("{shown} vanished")))?;
    if mounts::is_mount_root(&target.fd)? {
        ctx.report.did(&shown, "parent", "already overlaid", false);
        return Ok(());
    }
    // An overlay: the image's directory beneath, the new mount points (and,
    // when writable, whatever the machine creates) in RAM above it.
    let dir = scratch(ctx)?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| Error(format!("cannot create {}: {e}", d.display())))?;
    }
    let tpath = target.proc_path();
    mounts::mount_overlay(&tpath, &shown, &tpath, &upper, &work)?;
    let mounted = mounts::open_in(&ctx.root, &p.rel)?.ok_or_else(|| Error(format!("{shown} vanished")))?;
    for (name, dir, i) in &p.create {
        let e = &ctx.policy.entries[*i];
        let (mode, uid, gid) = meta_for(ctx, e, None, *dir)?;
        mounts::create_in(&mounted, name, *dir, mode, uid, gid).map_err(|err| Error(format!("{}: {err}", e.path)))?;
    }
    if !p.writable {
        mounts::remount_readonly(&mounted.proc_path(), &shown)?;
    }
    let what = if p.writable {
        "overlaid with RAM, writable, for a server path the machine creates"
    } else {
        "overlaid with RAM, read-only, to hold mount points the image lacks"
    };
    ctx.report.did(&shown, "parent", what, true);
    Ok(())
}

fn apply_entry(ctx: &mut Ctx<'_>, i: usize) -> Result<()> {
    let e = ctx.policy.entries[i].clone();
    let target = match mounts::open_in(&ctx.root, e.rel())? {
        Some(t) => t,
        None if created_by_machine(ctx, i) => {
            ctx.report.did(
                &e.path,
                e.state.name(),
                "absent: to be created by the machine, then uploaded",
                false,
            );
            return Ok(());
        }
        None => {
            // Under a writable declared path: create the mount point there.
            let dir = entry_is_dir(ctx, i);
            let parent = mounts::open_in(&ctx.root, parent_rel(e.rel()))?
                .ok_or_else(|| Error(format!("{}: the directory of {} does not exist", e.origin, e.path)))?;
            let (mode, uid, gid) = meta_for(ctx, &e, None, dir)?;
            mounts::create_in(&parent, base_name(e.rel()), dir, mode, uid, gid)
                .map_err(|err| Error(format!("{}: {err}", e.path)))?;
            mounts::open_in(&ctx.root, e.rel())?.ok_or_else(|| Error(format!("{} vanished", e.path)))?
        }
    };
    if target.found == Found::Other {
        return Err(Error(format!(
            "{}: {} is a symlink or special file in the image; declare the path it stands for instead",
            e.origin, e.path
        )));
    }
    if mounts::is_mount_root(&target.fd)? {
        ctx.report.did(&e.path, e.state.name(), "already set up", false);
        return Ok(());
    }
    let is_dir = target.found == Found::Dir;
    let did = match e.state {
        Mode::Ram => {
            let seed = if is_dir {
                match e.seed {
                    Seed::None => None,
                    Seed::Dirs => Some(copy::capture_dir(&target.proc_path(), true, &|_| true)?),
                    Seed::All => Some(copy::capture_dir(&target.proc_path(), false, &|_| true)?),
                }
            } else {
                (e.seed == Seed::All)
                    .then(|| copy::capture_file(&target.proc_path()))
                    .transpose()?
            };
            place(ctx, &e, &target, seed)?;
            match e.seed {
                Seed::None => "empty RAM",
                Seed::Dirs => "RAM with the image's directories",
                Seed::All => "RAM with the image's content",
            }
            .to_string()
        }
        Mode::Dynamic => {
            if is_dir {
                return Err(Error(format!(
                    "{}: {} is a directory in the image; dynamic paths are files",
                    e.origin, e.path
                )));
            }
            let content = crate::generate::generate(&e, &ctx.facts, &ctx.opts.root)?;
            let (mode, uid, gid) = meta_for(ctx, &e, Some(&target), false)?;
            let dir = scratch(ctx)?;
            let file = dir.join("content");
            write_file(&file, &content, mode, uid, gid)?;
            mounts::bind(&file, &target.proc_path(), &e.path)?;
            format!("generated ({} bytes)", content.len())
        }
        Mode::Server => match ctx.fetched.remove(&i) {
            Some(Fetched::Present(c)) => {
                if c.is_file() == is_dir {
                    return Err(Error(format!(
                        "{}: the server keeps {} as a {}, but the image has a {}; delete the blob {} on the server",
                        e.origin,
                        e.path,
                        if c.is_file() { "file" } else { "directory" },
                        if is_dir { "directory" } else { "file" },
                        e.blob_name()
                    )));
                }
                let contents = if is_dir && !e.include.is_empty() {
                    let globs = include_set(&e)?;
                    // The server is the source of the included files only:
                    // anything else its bundle holds (a configuration, a
                    // binary, a planted file) is never written.
                    let (c, dropped) = copy::retain(c, &|p| matches_include(&globs, p));
                    if !dropped.is_empty() {
                        ctx.report.warnings.push(format!(
                            "{}: the server's state {} holds {} entries outside `include` ({}{}): refused, not written",
                            e.path,
                            e.blob_name(),
                            dropped.len(),
                            dropped.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                            if dropped.len() > 5 { ", ..." } else { "" }
                        ));
                    }
                    let base = copy::capture_dir(&target.proc_path(), false, &|p| !matches_include(&globs, p))?;
                    copy::merge(base, c)
                } else {
                    c
                };
                place(ctx, &e, &target, Some(contents))?;
                "from the server".to_string()
            }
            _ => {
                let seed = if is_dir {
                    copy::capture_dir(&target.proc_path(), false, &|_| true)?
                } else {
                    copy::capture_file(&target.proc_path())?
                };
                place(ctx, &e, &target, Some(seed))?;
                "not on the server: RAM with the image's content".to_string()
            }
        },
        Mode::Local | Mode::Backup => {
            let store = ctx.store.clone().expect("opened when the policy has local paths");
            let at = store.join(e.state.name()).join(e.rel());
            if !at.exists() {
                init_store_path(ctx, &e, &target, &at)?;
            }
            let md = std::fs::symlink_metadata(&at).map_err(|err| Error(format!("{}: {err}", at.display())))?;
            if md.is_dir() != is_dir {
                return Err(Error(format!(
                    "{}: the state store has {} as a {}, the image as a {}; move one of them away",
                    e.origin,
                    at.display(),
                    if md.is_dir() { "directory" } else { "file" },
                    if is_dir { "directory" } else { "file" }
                )));
            }
            mounts::bind(&at, &target.proc_path(), &e.path)?;
            format!("bound from {}", at.display())
        }
    };
    ctx.report.did(&e.path, e.state.name(), did, true);
    Ok(())
}

/// Put contents (or nothing) in RAM at `target`: a tmpfs for a directory,
/// a bind-mounted scratch file for a file.
fn place(ctx: &mut Ctx<'_>, e: &Entry, target: &Target, contents: Option<Contents>) -> Result<()> {
    if target.found == Found::Dir {
        let (mode, uid, gid) = meta_for(ctx, e, Some(target), true)?;
        mounts::mount_tmpfs(
            &target.proc_path(),
            &e.path,
            &TmpfsOptions {
                mode,
                uid,
                gid,
                size: e.size.clone(),
            },
        )?;
        let mounted = mounts::open_in(&ctx.root, e.rel())?.ok_or_else(|| Error(format!("{} vanished", e.path)))?;
        if let Some(c) = contents {
            copy::restore(&c, &mounted.proc_path())?;
            // The policy's owner and mode win over the copied root's.
            if e.file_mode.is_some() || e.owner.is_some() || e.group.is_some() {
                set_meta(&mounted.proc_path(), mode, uid, gid)?;
            }
        }
    } else {
        let dir = scratch(ctx)?;
        let file = match contents {
            Some(c) => {
                copy::restore(&c, &dir.join("c"))?;
                dir.join("c").join(std::ffi::OsStr::new("content"))
            }
            None => {
                let (mode, uid, gid) = meta_for(ctx, e, Some(target), false)?;
                let f = dir.join("content");
                write_file(&f, b"", mode, uid, gid)?;
                f
            }
        };
        if e.file_mode.is_some() || e.owner.is_some() || e.group.is_some() {
            let (mode, uid, gid) = meta_for(ctx, e, Some(target), false)?;
            set_meta(&file, mode, uid, gid)?;
        }
        mounts::bind(&file, &target.proc_path(), &e.path)?;
    }
    Ok(())
}

fn set_meta(p: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    rustix::fs::chown(
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| Error(format!("cannot chown {}: {}", p.display(), io::Error::from(e))))?;
    rustix::fs::chmod(p, rustix::fs::Mode::from_raw_mode(mode))
        .map_err(|e| Error(format!("cannot chmod {}: {}", p.display(), io::Error::from(e))))
}

fn write_file(p: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    std::fs::write(p, data).map_err(|e| Error(format!("cannot write {}: {e}", p.display())))?;
    set_meta(p, mode, uid, gid)
}

/// First use of a local path: the store gets the image's content (or an
/// empty directory or file), written beside and renamed into place so an
/// interruption leaves no half copy.
fn init_store_path(ctx: &mut Ctx<'_>, e: &Entry, target: &Target, at: &Path) -> Result<()> {
    let parent = at.parent().expect("below the store");
    std::fs::create_dir_all(parent).map_err(|err| Error(format!("cannot create {}: {err}", parent.display())))?;
    let tmp = parent.join(format!(".slate-new-{}", base_name(e.rel())));
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp).or_else(|_| std::fs::remove_file(&tmp));
    }
    if target.found == Found::Dir {
        copy::copy_dir(&target.proc_path(), &tmp, false)?;
    } else {
        let c = copy::capture_file(&target.proc_path())?;
        let holder = parent.join(format!(".slate-new-{}.d", base_name(e.rel())));
        let _ = std::fs::remove_dir_all(&holder);
        copy::restore(&c, &holder)?;
        std::fs::rename(holder.join("content"), &tmp).map_err(|err| Error(format!("{}: {err}", tmp.display())))?;
        let _ = std::fs::remove_dir(&holder);
        if e.file_mode.is_some() || e.owner.is_some() || e.group.is_some() {
            let (mode, uid, gid) = meta_for(ctx, e, Some(target), false)?;
            set_meta(&tmp, mode, uid, gid)?;
        }
    }
    let f = std::fs::File::open(&tmp).map_err(|err| Error(format!("{}: {err}", tmp.display())))?;
    f.sync_all()
        .map_err(|err| Error(format!("cannot sync {}: {err}", tmp.display())))?;
    std::fs::rename(&tmp, at).map_err(|err| Error(format!("cannot create {}: {err}", at.display())))?;
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn include_set(e: &Entry) -> Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for g in &e.include {
        b.add(globset::Glob::new(g).map_err(|err| Error(format!("{}: include {g:?}: {err}", e.origin)))?);
    }
    b.build().map_err(|err| Error(format!("{}: include: {err}", e.origin)))
}

fn matches_include(globs: &globset::GlobSet, rel: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    globs.is_match(Path::new(std::ffi::OsStr::from_bytes(rel)))
}

/// Capture what the machine holds at a server path, for upload; `None`
/// when there is nothing (absent, or no file matching `include`).
pub fn capture_server_path(e: &Entry, root: &OwnedFd) -> Result<Option<Contents>> {
    let Some(t) = mounts::open_in(root, e.rel())? else {
        return Ok(None);
    };
    let c = match t.found {
        Found::File => copy::capture_file(&t.proc_path())?,
        Found::Dir if e.include.is_empty() => copy::capture_dir(&t.proc_path(), false, &|_| true)?,
        Found::Dir => {
            let globs = include_set(e)?;
            copy::capture_dir(&t.proc_path(), false, &|p| matches_include(&globs, p))?
        }
        Found::Other => return Ok(None),
    };
    Ok((!c.is_empty()).then_some(c))
}

/// Upload every server path the machine now holds and the server does not
/// have yet (create-only: a copy already there is never overwritten).
pub fn upload_new(
    policy: &Policy,
    root: &OwnedFd,
    server: Option<&dyn StateServer>,
    report: &mut Report,
) -> Result<()> {
    let Some(server) = server else { return Ok(()) };
    for e in policy.entries.iter().filter(|e| e.state == Mode::Server) {
        let name = e.blob_name();
        match server.fetch(&name) {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(ServerError::Offline(_)) => return Ok(()),
            Err(ServerError::Failed(why)) => {
                return Err(Error(format!("cannot check the server state of {}: {why}", e.path)))
            }
        }
        let Some(c) = capture_server_path(e, root)? else {
            continue;
        };
        let bytes = crate::bundle::encode(&c);
        if bytes.len() > crate::bundle::MAX_BUNDLE {
            return Err(Error(format!(
                "{}: {} holds {} bytes, more than a server path may ({})",
                e.origin,
                e.path,
                bytes.len(),
                crate::bundle::MAX_BUNDLE
            )));
        }
        match server.upload_new(&name, &bytes) {
            Ok(true) => report.uploaded.push(e.path.clone()),
            Ok(false) => {}
            Err(ServerError::Offline(_)) => return Ok(()),
            Err(ServerError::Failed(why)) => {
                return Err(Error(format!("cannot upload {} to the server: {why}", e.path)))
            }
        }
    }
    Ok(())
}

/// `slate state upload`: upload new server state of a running root.
pub fn upload(policy: &Policy, root: &Path, server: &dyn StateServer) -> Result<Report> {
    let root_fd = mounts::open_root(root)?;
    let mut report = Report::default();
    upload_new(policy, &root_fd, Some(server), &mut report)?;
    Ok(report)
}
