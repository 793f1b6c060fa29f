//! `slate netboot root`: the initramfs step of a network boot
//! (`boot=slate-net`, dist/initramfs-tools/scripts/slate-net; docs/diskless.md).
//! The plan comes from `slate_mount::netboot`; this module carries it out:
//! it mounts the cache, starts the mount daemon and writes what the booted
//! system reads.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use rustix::mount::{mount, MountFlags};
use slate_mount::netboot::{self, BuiltinKeys, Cmdline, Decision, DiskConfig, Info, Mode};

use super::mount::{MALLOC_ENV, NOTIFY_ENV};

/// Exit status that asks the initramfs script to restart the machine
/// (the fleet assigns another snapshot than this kernel's).
pub const RESTART_STATUS: u8 = 75;

/// Where things are; the defaults are the initramfs' (tests use others).
pub struct RootArgs {
    /// The new root's mount point (`${rootmnt}`).
    pub root: PathBuf,
    /// The kernel command line's file.
    pub cmdline: PathBuf,
    /// The built-in keys.
    pub keys: PathBuf,
    /// Where the booted system finds this boot's files.
    pub run_dir: PathBuf,
}

fn copy_keys(keys: &BuiltinKeys, to: &Path) -> Result<BuiltinKeys> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let copy = |v: &[(PathBuf, slate_core::keys::PublicKey)]| -> Result<Vec<(PathBuf, slate_core::keys::PublicKey)>> {
        v.iter()
            .map(|(p, k)| {
                let dst = to.join(p.file_name().expect("a key file has a name"));
                std::fs::copy(p, &dst).with_context(|| format!("cannot copy {}", p.display()))?;
                Ok((dst, *k))
            })
            .collect()
    };
    Ok(BuiltinKeys {
        release: copy(&keys.release)?,
        fleet: copy(&keys.fleet)?,
    })
}

/// Mount the cache: the partition (ext4), or a RAM filesystem of the
/// bound's size. Returns the mode, the directory the cache lives in (the
/// partition's root or the RAM filesystem), the device and the bound.
fn mount_cache(cmd: &Cmdline, run_dir: &Path) -> Result<(Mode, PathBuf, Option<PathBuf>, u64)> {
    if let Some(dev) = netboot::find_partition(&cmd.cache, Path::new("/sys/class/block")) {
        let dir = run_dir.join("disk");
        std::fs::create_dir_all(&dir)?;
        match mount(&dev, &dir, "ext4", MountFlags::NOATIME, None) {
            Ok(()) => {
                let st = rustix::fs::statvfs(&dir).context("statvfs of the cache partition")?;
                let bytes = st.f_blocks * st.f_frsize;
                return Ok((
                    Mode::Cached,
                    dir,
                    Some(dev),
                    netboot::cache_bound(Mode::Cached, 0, bytes),
                ));
            }
            Err(e) => eprintln!(
                "slate: warning: cannot mount the cache partition {} ({e}); the cache is in RAM this boot",
                dev.display()
            ),
        }
    }
    let bound = netboot::cache_bound(Mode::Diskless, netboot::mem_total(), 0);
    let dir = run_dir.join("ram");
    std::fs::create_dir_all(&dir)?;
    // Room for the cache's indexes and status beside the packs.
    let size = bound + (16 << 20);
    let data = std::ffi::CString::new(format!("size={size},mode=0700")).expect("no NUL");
    mount(
        "slate-cache",
        &dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .with_context(|| format!("cannot mount a RAM filesystem on {}", dir.display()))?;
    Ok((Mode::Diskless, dir, None, bound))
}

/// Start the mount daemon for `id` at `root`, from `cache_dir`, and wait
/// until it mounted.
#[allow(clippy::too_many_arguments)]
fn start_daemon(
    cmd: &Cmdline,
    keys: &BuiltinKeys,
    id: &slate_core::SnapshotId,
    root: &Path,
    cache_dir: &Path,
    bound: u64,
    mode: Mode,
) -> Result<u32> {
    let exe = std::env::current_exe().context("cannot find the slate binary")?;
    let mut c = std::process::Command::new(exe);
    // `@`: systemd leaves it running at shutdown (the root needs it to the
    // end); the cache directory is its working directory, reached by
    // relative paths, because /run moves into the new root.
    c.arg0("@slate-mount").current_dir(cache_dir);
    c.args(["mount", &id.to_hex()]).arg(root);
    c.args(["--cache", ".", "--cache-size", &bound.to_string()]);
    c.args(["--timeout", &cmd.timeout_secs.to_string(), "--as-root"]);
    c.arg("--boot-cmdline").arg(&cmd.raw);
    for s in &cmd.servers {
        c.args(["--server", s]);
    }
    for (p, _) in &keys.release {
        c.arg("--trust").arg(p);
    }
    for (p, _) in &keys.fleet {
        c.arg("--fleet-trust").arg(p);
    }
    if cmd.fill.unwrap_or(mode == Mode::Cached) {
        c.args(["--fill", "--poll", "0"]);
        if let Some(r) = &cmd.fill_rate {
            c.args(["--fill-rate", r]);
        }
    }
    if mode == Mode::Cached {
        c.args(["--offline-boot", "../boot"]);
    }
    if cmd.record {
        c.args(["--record", "boot.profile"]);
    }
    // Warnings (a refused chunk, a server gone) on the console, where the
    // administrator looks; the daemon outlives this step's output.
    let console = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::inherit());
    let mut child = c
        .env(NOTIFY_ENV, "1")
        .envs(MALLOC_ENV)
        // The FUSE library's own notes (an operation the kernel tried that
        // a read-only tree does not offer) are not for the console.
        .env("SLATE_LOG", "warn,fuser=error")
        // The console is a terminal, but what it shows ends up in logs.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(console)
        // Its own process group: a Ctrl-C on the console is not for it.
        .process_group(0)
        .spawn()
        .context("cannot start the mount daemon")?;
    if super::mount::mounted(&mut child) {
        return Ok(child.id());
    }
    let status = child.wait()?;
    bail!("the mount daemon did not mount the root ({status}; its error is above)")
}

/// `slate netboot root`.
pub fn root(a: RootArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&a.cmdline).with_context(|| format!("cannot read {}", a.cmdline.display()))?;
    let cmd = Cmdline::parse(&text)?;
    if cmd.servers.is_empty() {
        bail!("the kernel command line names no server (slate.server=URL)");
    }
    let built_in = netboot::read_keys(&a.keys)?;
    std::fs::create_dir_all(&a.run_dir).with_context(|| format!("cannot create {}", a.run_dir.display()))?;
    let keys = copy_keys(&built_in, &a.run_dir.join("keys"))?;

    let (mode, base, device, bound) = mount_cache(&cmd, &a.run_dir)?;
    let disk = match mode {
        Mode::Cached => DiskConfig::read(&base)?,
        Mode::Diskless => DiskConfig::default(),
    };
    let who = netboot::identity(&disk);
    let http = slate_agent::http::Http::new(&cmd.servers, cmd.timeout_secs)?;
    let assigned = match netboot::ask_assignment(&http, &who, &keys) {
        Ok(a) => Some(a),
        Err(slate_agent::Error::Offline(why)) => {
            eprintln!("slate: no server answered ({why}); the root comes from the cache alone");
            None
        }
        Err(slate_agent::Error::Server(why)) if keys.fleet.is_empty() => {
            eprintln!("slate: warning: the fleet has no assignment for {}: {why}", who.id);
            None
        }
        Err(e) => return Err(e.into()),
    };
    let id = match netboot::decide(&cmd, assigned.as_ref())? {
        Decision::Mount(id) => id,
        Decision::Restart(why) => {
            println!("{why}");
            return Ok(ExitCode::from(RESTART_STATUS));
        }
    };
    let cache_dir = base.join("cache");
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    if mode == Mode::Cached {
        std::fs::create_dir_all(base.join("boot"))?;
        std::fs::create_dir_all(base.join("store"))?;
    }
    let pid = start_daemon(&cmd, &keys, &id, &a.root, &cache_dir, bound, mode)?;

    let status_file = cache_dir.join("mount/status.json");
    let offline =
        slate_mount::status::Status::load(&status_file).is_ok_and(|s| s.state == "offline") || assigned.is_none();
    let info = Info {
        mode,
        snapshot: id.to_hex(),
        assigned: assigned.as_ref().map(|x| x.snapshot.to_hex()),
        assignment_signed: assigned.as_ref().is_some_and(|x| x.signed),
        servers: cmd.servers.clone(),
        machine_id: who.id.clone(),
        device: device.as_ref().map(|d| d.display().to_string()),
        cache_dir: cache_dir.display().to_string(),
        status_file: status_file.display().to_string(),
        cache_limit: bound,
        offline,
        booted_from: if cmd.from_disk { "disk" } else { "network" }.into(),
    };
    let write = |name: &str, data: &[u8]| -> Result<()> {
        let p = a.run_dir.join(name);
        std::fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))
    };
    write("info.json", &serde_json::to_vec_pretty(&info)?)?;
    write(
        "agent.toml",
        netboot::agent_config(&disk, &cmd.servers, &keys, &who.id).as_bytes(),
    )?;
    // For the state step (init-bottom/slate): where local state is kept,
    // and the fleet's signed policy.
    let state_dev = device.as_ref().map_or("ram".to_string(), |d| d.display().to_string());
    write("state-dev", format!("{state_dev}\n").as_bytes())?;
    if let Some(p) = assigned.as_ref().and_then(|x| x.state_policy.as_ref()) {
        write("state-policy.toml", p.as_bytes())?;
    }
    let cache_text = match &device {
        Some(d) => format!("cache partition {}", d.display()),
        None => format!("cache in RAM, at most {} MiB", bound >> 20),
    };
    println!(
        "slate: snapshot {id} is the root (machine {}, {}; daemon {pid}; {cache_text}{})",
        who.id,
        match &assigned {
            Some(x) if x.signed => "signed assignment",
            Some(_) => "unsigned assignment",
            None => "offline",
        },
        if offline {
            "; offline: reads come from the cache"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
