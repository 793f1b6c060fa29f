//! Command-line arguments (clap derive; doc comments are the `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// slate: stateless Linux machines from signed, content-addressed OS snapshots.
#[derive(Parser, Debug)]
#[command(name = "slate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The repository a command works on.
#[derive(Args, Debug, Clone)]
pub struct RepoArg {
    /// Repository: a directory, or s3://BUCKET/PREFIX on an S3-compatible
    /// object store (credentials and endpoint from AWS_* variables).
    #[arg(long, env = "SLATE_REPO", value_name = "DIR|URL")]
    pub repo: PathBuf,
}

/// The fleet database a command works on, as `slate serve` finds it.
#[derive(Args, Debug, Clone)]
pub struct DbArg {
    /// Repository directory (its fleet database is REPO/fleet.db).
    #[arg(long, env = "SLATE_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// The database slate serve runs with (its --db): an SQLite file or a postgres:// URL.
    #[arg(long, env = "SLATE_DB", value_name = "FILE|URL")]
    pub db: Option<PathBuf>,
}

/// Output options shared by inspecting commands.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArg {
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty repository.
    Init {
        #[command(flatten)]
        repo: RepoArg,
        /// zstd compression level for stored chunks (1-22).
        #[arg(long, default_value_t = slate_repo::Config::default().compression_level)]
        compression_level: i32,
    },
    /// Generate an ed25519 signing key: writes KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Snapshot a tree into the repository and move a channel to it; prints the snapshot id.
    Commit {
        #[command(flatten)]
        repo: RepoArg,
        /// Channel to commit to, e.g. debian/bookworm/lab.
        #[arg(long)]
        channel: String,
        /// Secret key to sign the snapshot with.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Commit message.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Extra metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
        /// The tree to snapshot.
        tree: PathBuf,
    },
    /// Sign an existing snapshot with (another) key.
    Sign {
        #[command(flatten)]
        repo: RepoArg,
        /// Secret key.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Snapshot (channel, CHANNEL~N, id or id prefix).
        snapshot: String,
    },
    /// Sign a fleet state policy with a release key (writes POLICY.sig beside it).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The trust document: which keys machines trust, per role (key rotation and revocation).
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Materialise a snapshot bit for bit into DEST (absent or empty).
    Checkout {
        #[command(flatten)]
        repo: RepoArg,
        /// Do not sync DEST's filesystem at the end.
        #[arg(long)]
        no_sync: bool,
        #[command(flatten)]
        out: OutputArg,
        /// Snapshot: a channel (its head), CHANNEL~N, an id or an id prefix.
        snapshot: String,
        /// Destination directory.
        dest: PathBuf,
    },
    /// Show a channel's history, newest first.
    Log {
        #[command(flatten)]
        repo: RepoArg,
        #[command(flatten)]
        out: OutputArg,
        /// Channel (all channels when omitted).
        channel: Option<String>,
    },
    /// List a snapshot's entries under PATH.
    Ls {
        #[command(flatten)]
        repo: RepoArg,
        /// List everything below PATH, not just its direct entries.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        out: OutputArg,
        /// Snapshot.
        snapshot: String,
        /// Directory (or file) inside the snapshot.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Compare two snapshots: paths added, removed, changed, and the bytes a client holding A needs for B.
    Diff {
        #[command(flatten)]
        repo: RepoArg,
        #[command(flatten)]
        out: OutputArg,
        /// Only print the summary.
        #[arg(long)]
        stat: bool,
        /// Older snapshot.
        a: String,
        /// Newer snapshot.
        b: String,
    },
    /// Write a file's content from a snapshot to stdout.
    Cat {
        #[command(flatten)]
        repo: RepoArg,
        /// Snapshot.
        snapshot: String,
        /// Path of a regular file inside it.
        path: String,
    },
    /// Check every object's hash and every signature; exit non-zero on any fault.
    Verify {
        #[command(flatten)]
        repo: RepoArg,
        /// Require snapshots referenced by channels to be signed by one of these public keys.
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Drop snapshots no channel history references, and the data only they used.
    Gc {
        #[command(flatten)]
        repo: RepoArg,
        /// Keep only the newest N snapshots of each channel's history.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// On an object store (s3://), what gc finds dead is only recorded
        /// (gc/pending) and deleted by a later gc once this long has passed
        /// and it is still dead, so a commit running meanwhile loses nothing
        /// (a number with s, m, h or d; a directory repository deletes at once
        /// under its lock).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = slate_repo::pending::parse_grace)]
        grace: std::time::Duration,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Prepare a delta: what a client holding FROM needs to rebuild TO, as binary patches (served to agents).
    Delta {
        #[command(flatten)]
        repo: RepoArg,
        /// zstd level of the patches (1-22): higher is smaller and slower.
        #[arg(long, default_value_t = 19)]
        level: i32,
        #[command(flatten)]
        out: OutputArg,
        /// The snapshot clients hold.
        from: String,
        /// The snapshot they update to.
        to: String,
    },
    /// Serve the repository, its channels and the fleet API over HTTP.
    Serve {
        #[command(flatten)]
        repo: RepoArg,
        /// Address to listen on, e.g. 0.0.0.0:8470 or 127.0.0.1:8470.
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// Fleet file: which machine runs which channel (see docs/fleet.md).
        #[arg(long, value_name = "FLEET.toml")]
        fleet: Option<PathBuf>,
        /// Database of machine reports and tokens: an SQLite file (default: REPO/fleet.db) or postgres://USER@HOST/DB.
        #[arg(long, env = "SLATE_DB", value_name = "FILE|URL")]
        db: Option<PathBuf>,
        /// Most connections to a PostgreSQL --db (SQLite always uses one).
        #[arg(long, value_name = "N", default_value_t = slate_server::fleet::postgres::DEFAULT_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
        db_connections: u32,
        /// Directory of per-machine state blobs (default: REPO/state).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Directory of home repositories (default: REPO/home).
        #[arg(long, value_name = "DIR")]
        home_dir: Option<PathBuf>,
        /// Largest state blob, e.g. 1M (K, M, G are powers of 1024).
        #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = slate_server::blobs::parse_size)]
        state_limit: u64,
        /// Most state bytes one machine may keep, e.g. 64M.
        #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = slate_server::blobs::parse_size)]
        state_quota: u64,
        /// Most bytes of home repositories one machine may own, e.g. 100G.
        #[arg(long, value_name = "SIZE", default_value = "100G", value_parser = slate_server::blobs::parse_size)]
        home_quota: u64,
        /// Home repositories are append-only: no object is deleted or replaced, except locks.
        #[arg(long)]
        home_append_only: bool,
        /// File of administrator tokens (`slate fleet admin-token FILE`), needed to list machines.
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// An address (e.g. a Prometheus server's) that may read GET /metrics without the
        /// administrator token; repeat for several.
        #[arg(long, value_name = "ADDR", value_parser = slate_server::metrics::parse_allow)]
        metrics_allow: Vec<std::net::IpAddr>,
        /// Seconds a client may take to send a request's head (also the TLS handshake and idle keep-alive).
        #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout: u64,
        /// Most connections open at once.
        #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections: u64,
        /// Most connections open at once from one client address.
        #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections_per_client: u64,
        /// Seconds the server waits for a whole request body (an upload), from its first read.
        #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
        body_timeout: u64,
        /// Bytes per second a request body must keep up after the first --header-timeout seconds; 0: no minimum.
        #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = 4096)]
        min_upload_rate: u64,
        /// TLS certificate chain (PEM); with --tls-key, serve HTTPS.
        #[arg(long, value_name = "F", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, value_name = "F", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The fleet key (a `slate keygen` secret key) that signs assignments;
        /// machines trust its public half in AGENT.toml's fleet_trust.
        #[arg(long, value_name = "KEY")]
        fleet_key: Option<PathBuf>,
        /// How long an assignment stays fresh, e.g. 1d, 12h, 90m or seconds.
        #[arg(long, value_name = "TIME", default_value = "1d", value_parser = parse_duration)]
        assignment_ttl: u64,
        /// How long a signed channel head (GET /v1/heads/NAME) stays fresh:
        /// longer than mirrors take between pulls, short enough that a
        /// frozen mirror is noticed soon.
        #[arg(long, value_name = "TIME", default_value = "1d", value_parser = parse_duration)]
        head_ttl: u64,
        /// Base URL (http:// or https://) where machines fetch immutable objects (packs, snapshot
        /// records, deltas) by their repository paths: a bucket's web endpoint, a CDN, or a web
        /// server over the repository directory; named in every signed assignment, in the order
        /// given (repeat it for several). Needs --fleet-key. Machines fall back to this server.
        #[arg(long, value_name = "URL")]
        objects_url: Vec<String>,
    },
    /// The fleet as the server sees it; machine tokens.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// One pass of the agent: ask the server, fetch what is missing, write the reserve slot, switch
    /// (booted from the network: report what the next boot runs).
    Update {
        /// Agent configuration (see docs/agent.md); /run/slate/netboot/agent.toml when the default does not
        /// exist and the network boot wrote that one.
        #[arg(
            long,
            value_name = "AGENT.toml",
            env = "SLATE_AGENT_CONFIG",
            default_value_os_t = slate_agent::config::default_path()
        )]
        config: PathBuf,
        /// Print JSON lines (progress and result) on stdout.
        #[arg(long)]
        json: bool,
        /// Plan and print what would be fetched and written; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the assigned snapshot even if it failed to boot here before.
        #[arg(long)]
        retry: bool,
        /// If another pass is running, wait for it to end instead of failing.
        #[arg(long)]
        wait_for_lock: bool,
        /// Run a pass, then keep running: wait for the server to assign
        /// another snapshot and run a pass at once when it does.
        #[arg(long, conflicts_with = "dry_run")]
        watch: bool,
    },
    /// The agent's slots, which is active, pending and known good, and the last pass (booted from the
    /// network: what booted, what is assigned and how full the cache is).
    Status {
        /// Agent configuration.
        #[arg(
            long,
            value_name = "AGENT.toml",
            env = "SLATE_AGENT_CONFIG",
            default_value_os_t = slate_agent::config::default_path()
        )]
        config: PathBuf,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Mark the booted slot good: stop boot counting (booted from the network: report the boot).
    BootOk {
        /// Agent configuration.
        #[arg(
            long,
            value_name = "AGENT.toml",
            env = "SLATE_AGENT_CONFIG",
            default_value_os_t = slate_agent::config::default_path()
        )]
        config: PathBuf,
    },
    /// Boot the other slot next.
    Rollback {
        /// Agent configuration.
        #[arg(
            long,
            value_name = "AGENT.toml",
            env = "SLATE_AGENT_CONFIG",
            default_value_os_t = slate_agent::config::default_path()
        )]
        config: PathBuf,
    },
    /// The read-only root and its declared state (see docs/state.md).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Lay out a new machine's disk (boot, slot A, slot B, state) and write its assigned snapshot into slot A;
    /// or, with --mode cached, the cache disk of a machine that boots from the network (docs/boot.md).
    Install {
        /// What the disk is for: `ab`, a machine that boots its own slots; `cached`, a network-booted
        /// machine's cache, which boots offline once it holds a complete snapshot.
        #[arg(long, value_enum, default_value = "ab")]
        mode: InstallModeArg,
        /// Block device or raw disk image file (destroyed).
        #[arg(long, value_name = "DEV|IMAGE")]
        disk: PathBuf,
        /// AGENT.toml to start from: server, trusted keys, token, machine id, labels, kernel command line
        /// (required for `ab`; for `cached`, copied with its keys and token to the cache partition's config/).
        #[arg(long, value_name = "AGENT.toml")]
        config: Option<PathBuf>,
        /// How the machine starts: from a BIOS (GRUB) or from UEFI (systemd-boot, or GRUB for `cached`).
        #[arg(long, value_enum, default_value = "bios")]
        firmware: FirmwareArg,
        /// Size of each slot (K, M, G suffixes; `ab` only, default 8G).
        #[arg(long, value_name = "SIZE")]
        slot_size: Option<String>,
        /// Create IMAGE with this size when it does not exist.
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Install the snapshot of the live medium this system booted from,
        /// with no server (DIR: where the live system keeps it).
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "/run/slate/live")]
        from_live: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Mount a snapshot read-only (FUSE), fetching what is read into a verified cache (docs/mount.md).
    Mount {
        #[command(flatten)]
        source: MountSourceArgs,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Fetch the whole snapshot into the cache in the background, so that it runs without a server.
        #[arg(long)]
        fill: bool,
        /// Bandwidth cap of the fill (K, M, G suffixes: bytes per second).
        #[arg(long, value_name = "RATE")]
        fill_rate: Option<String>,
        /// Write the files and ranges read, in order of first read, to FILE (a boot profile).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Status file, JSON, replaced atomically (default CACHE/mount/status.json).
        #[arg(long, value_name = "FILE")]
        status: Option<PathBuf>,
        /// Return once mounted; the daemon goes on in the background (its log: CACHE/mount/daemon.log).
        #[arg(long)]
        background: bool,
        /// Do not prefetch the snapshot's signed boot profile.
        #[arg(long)]
        no_prefetch: bool,
        /// Threads serving the kernel.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// With --fill and a channel from a server: seconds between asks for a new head, which is then
        /// filled (only its new frames) while the mount keeps the snapshot it started with; 0: never.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        poll: u64,
        /// Network boot: once the snapshot is completely cached, write its kernel, initramfs and a GRUB
        /// menu to DIR (a cache partition's boot area; `slate netboot root` passes it).
        #[arg(long, value_name = "DIR", hide = true)]
        offline_boot: Option<PathBuf>,
        /// Network boot: the kernel command line the offline boot entry starts from.
        #[arg(long, value_name = "TEXT", hide = true, allow_hyphen_values = true)]
        boot_cmdline: Option<String>,
        /// Network boot: the mount is the machine's root; stop signals are ignored.
        #[arg(long, hide = true)]
        as_root: bool,
    },
    /// Network boot of diskless machines (docs/diskless.md).
    Netboot {
        #[command(subcommand)]
        command: NetbootCommand,
    },
    /// The cache of `slate mount`: status, fill (docs/mount.md).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Boot profiles of snapshots: sign a recorded profile so that mounts prefetch it (docs/mount.md).
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Live images of a snapshot: make, verify, and the initramfs step that boots one (docs/live.md).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Make an OS tree slate-ready before committing it: slate, its units, its initramfs step.
    Prepare {
        /// The tree (built by debootstrap, mkosi, dnf --installroot...).
        tree: PathBuf,
        /// A release key (public) to build into the initramfs for network boots (docs/diskless.md);
        /// with it, a lean network-boot initramfs is built beside each kernel's own.
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        /// A fleet key (public): network boots then accept only assignments it signed.
        #[arg(long, value_name = "KEY.pub")]
        fleet_trust: Vec<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Mirror a channel from a server into a local repository, or store the snapshot of a live image.
    Pull {
        /// Server URL, e.g. http://slate.example:8470.
        #[arg(
            long,
            value_name = "URL",
            required_unless_present = "from_image",
            conflicts_with = "from_image"
        )]
        from: Option<String>,
        /// A live image or stick (`slate image iso`) to store the snapshot of (docs/live.md).
        #[arg(long, value_name = "FILE.iso|DEV")]
        from_image: Option<PathBuf>,
        /// Channel to mirror (with --from-image: the channel whose head it becomes, if newer).
        #[arg(required_unless_present = "from_image")]
        channel: Option<String>,
        #[command(flatten)]
        repo: RepoArg,
        /// Only accept snapshots signed by one of these keys (required: a
        /// mirror is never pulled unverified).
        #[arg(long, value_name = "KEY.pub", required = true)]
        trust: Vec<PathBuf>,
        /// A fleet public key (repeat): the source's channel head must be
        /// signed by one, and is kept so that this mirror serves it on.
        #[arg(long = "fleet-trust", value_name = "KEY.pub")]
        fleet_trust: Vec<PathBuf>,
    },
    /// User data that survives the machine: encrypted, deduplicated backups of home directories.
    Home {
        #[command(subcommand)]
        command: HomeCommand,
    },
}

/// `slate image` subcommands.
/// Where `slate mount` and `slate cache fill` find a snapshot.
#[derive(Args, Debug, Clone)]
pub struct MountSourceArgs {
    /// Channel (its head) or snapshot id (with --repo also CHANNEL~N or an id prefix).
    pub spec: String,
    /// A local repository.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["server", "config"], required_unless_present_any = ["server", "config"])]
    pub repo: Option<PathBuf>,
    /// A `slate serve` URL (repeat: tried in order).
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    pub server: Vec<String>,
    /// An agent's AGENT.toml: its servers, token and trusted keys.
    #[arg(long, value_name = "AGENT.toml")]
    pub config: Option<PathBuf>,
    /// Trust snapshots signed by this release key (repeat).
    #[arg(long, value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// A fleet key (repeat): a channel's head must be signed by one.
    #[arg(long = "fleet-trust", value_name = "KEY.pub")]
    pub fleet_trust: Vec<PathBuf>,
    /// The cache directory (required with --server; default with --config: STATE_DIR/mount-cache).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Bound of the cache on disk (K, M, G suffixes); least recently used data goes first.
    #[arg(long, value_name = "SIZE", default_value = "8G")]
    pub cache_size: String,
    /// Use only the cache: never ask a server (reads of missing data fail with EIO).
    #[arg(long)]
    pub offline: bool,
    /// Seconds a request may take: bounds how long a read of missing data waits for a silent server.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Show a cache's status (from the mount's status file, else from the cache itself).
    Status {
        /// The cache directory.
        #[arg(long, value_name = "DIR")]
        cache: PathBuf,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Fetch a whole snapshot into a cache, in the foreground, and exit when it is complete.
    Fill {
        #[command(flatten)]
        source: Box<MountSourceArgs>,
        /// Bandwidth cap (K, M, G suffixes: bytes per second).
        #[arg(long, value_name = "RATE")]
        rate: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Attach a recorded profile (`slate mount --record`) to its snapshot, signed by a release key.
    Sign {
        /// The profile file.
        profile: PathBuf,
        #[command(flatten)]
        repo: RepoArg,
        /// Release key to sign with (repeat).
        #[arg(long, value_name = "KEY", required = true)]
        sign: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Make a hybrid ISO (CD or USB stick, BIOS and UEFI) that boots the snapshot live.
    Iso {
        /// Channel, CHANNEL~N or snapshot id.
        spec: String,
        #[command(flatten)]
        repo: RepoArg,
        /// The ISO file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE.iso")]
        output: PathBuf,
        /// Release key that signs the image's record (repeat); each must have signed the snapshot.
        #[arg(long, value_name = "KEY", required = true)]
        sign: Vec<PathBuf>,
        /// More public keys the image's initramfs accepts the record from (repeat).
        #[arg(long = "sign-check", value_name = "KEY.pub")]
        sign_check: Vec<PathBuf>,
        /// Boot with this state policy instead of the tree's /etc/slate/state.toml.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Add a persistence partition of this size (for a USB stick): it keeps `local` and `backup` paths.
        #[arg(long, value_name = "SIZE")]
        persistence: Option<String>,
        /// Kernel command line (besides what slate adds).
        #[arg(long, value_name = "ARGS", default_value = "console=tty0 console=ttyS0,115200")]
        kernel_cmdline: String,
        /// How the root image is compressed.
        #[arg(long, value_enum, default_value = "zstd")]
        compression: CompressionArg,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Check a live image on a trusted machine: its record, every block of its root, its kernel and initramfs.
    Verify {
        /// The ISO file or stick.
        image: PathBuf,
        /// Public key the record must be signed by (repeat).
        #[arg(long = "sign-check", value_name = "KEY.pub", required = true)]
        sign_check: Vec<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// The initramfs step of a live boot: find the medium, check it, mount its verified root.
    MountLive {
        /// Where to mount the root.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// The directory of keys the record must be signed by.
        #[arg(long, value_name = "DIR", default_value = "/etc/slate/live-keys")]
        keys: PathBuf,
        /// The kernel command line to read slate.live= from.
        #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Seconds to wait for the medium to appear.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
    },
}

/// How a live image's root is compressed.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CompressionArg {
    /// zstd, 1 MiB blocks: fast to make and to read.
    Zstd,
    /// xz, 1 MiB blocks, x86 filter: the smallest, the slowest to make.
    Xz,
    /// lz4: the fastest, the largest.
    Lz4,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Sign POLICY's exact bytes with a release key; adds a line to POLICY.sig.
    Sign {
        /// The release key (secret).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The state policy file, as the fleet file names it.
        policy: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Write a trust document signed by release keys to REPO/trust (served at /v1/trust).
    Sign {
        #[command(flatten)]
        repo: RepoArg,
        /// Its version: higher than the one machines hold.
        #[arg(long)]
        version: u64,
        /// Days until machines stop accepting it as a new document.
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
        /// How many release keys must sign the next trust document.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// How many distinct release keys must sign every snapshot machines accept.
        #[arg(long = "snapshot-threshold", default_value_t = 1)]
        snapshot_threshold: u32,
        /// A release public key (repeat): signs snapshots, command policies, trust documents.
        #[arg(long = "release", value_name = "KEY.pub", required = true)]
        release: Vec<PathBuf>,
        /// A fleet public key (repeat): signs assignments.
        #[arg(long = "fleet", value_name = "KEY.pub")]
        fleet: Vec<PathBuf>,
        /// A secret release key that signs this document (repeat): enough of
        /// the keys machines trust now, and of the new release keys.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
    },
}

/// Parse `1d`, `12h`, `90m`, `30s` or plain seconds (more than zero), with
/// the units of `slate gc --grace`.
fn parse_duration(s: &str) -> Result<u64, String> {
    slate_repo::pending::parse_grace(s)
        .ok()
        .map(|d| d.as_secs())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{:?} is not a duration such as 1d, 12h, 90m or 3600", s.trim()))
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// The machines table: identity, channel, current and target snapshot, slots, last results, last seen.
    Status {
        /// Server URL.
        #[arg(long, value_name = "URL")]
        server: String,
        /// File holding an administrator token (one of slate serve's --admin-token-file).
        #[arg(long, value_name = "FILE", env = "SLATE_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// PEM file of the authority that signed the server's certificate (else the built-in roots).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// SHA-256 of the server's certificate (`sha256:` and 64 hex digits, repeat for several):
        /// only a listed certificate is accepted, as AGENT.toml's `pin`.
        #[arg(long = "pin", value_name = "sha256:HEX")]
        pins: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// A channel's phased rollout (FLEET.toml [rollout."CHANNEL"]): status, pause, resume, abort.
    Rollout {
        /// status: waves and failures; pause: release no further wave; resume: release waves again
        /// (failures so far excused); abort: send every machine the previous head.
        #[arg(value_enum)]
        action: RolloutActionArg,
        /// The channel (may be left out when the fleet file has one rollout).
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<String>,
        /// Server URL.
        #[arg(long, value_name = "URL")]
        server: String,
        /// File holding an administrator token (one of slate serve's --admin-token-file).
        #[arg(long, value_name = "FILE", env = "SLATE_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// PEM file of the authority that signed the server's certificate (else the built-in roots).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// SHA-256 of the server's certificate (`sha256:` and 64 hex digits, repeat for several).
        #[arg(long = "pin", value_name = "sha256:HEX")]
        pins: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Write a new administrator token to FILE (mode 0600), for slate serve --admin-token-file and fleet status --token-file.
    AdminToken {
        /// Where to write it.
        file: PathBuf,
        /// Replace the file if it exists (its old token stops working once the server reads the new file).
        #[arg(long)]
        force: bool,
    },
    /// Issue MACHINE's token (printed alone on stdout) for AGENT.toml's token_file.
    Enroll {
        /// Machine id, as the agent identifies itself (e.g. lab-07, dmi:UUID, mac:aa:bb:cc:dd:ee:ff).
        machine: String,
        #[command(flatten)]
        db: DbArg,
        /// Replace the token of an enrolled machine (the old one stops working at once).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove MACHINE's token: its requests are refused from now on.
    Revoke {
        /// Machine id.
        machine: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// List enrolled machines and when their tokens were issued (never the tokens).
    Tokens {
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// What `slate fleet rollout` does.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutActionArg {
    /// Show each rollout: state, waves, failures, the next wave.
    Status,
    /// Release no further wave.
    Pause,
    /// Release waves again; the failures counted so far are excused.
    Resume,
    /// Send every machine the previous head.
    Abort,
}

/// What `slate install` lays a disk out for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallModeArg {
    /// Boot, slots A and B, state: a machine that boots its own snapshot.
    Ab,
    /// GRUB and a cache partition: a machine that boots from the network.
    Cached,
}

/// Firmware of a machine `slate install` prepares.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum FirmwareArg {
    /// Legacy BIOS (GRUB).
    Bios,
    /// UEFI (systemd-boot; GRUB for a cache disk).
    Uefi,
}

/// Where a state command finds its policy.
#[derive(Args, Debug, Clone)]
pub struct PolicyArg {
    /// State policy (TOML, or an rwtab/statetab file); default: the fleet's
    /// copy in the agent's state directory, else ROOT/etc/slate/state.toml.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Mount the root read-only and set up every declared path under it (idempotent).
    Apply {
        /// The root: the new root before switch_root, or / on a running system.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        /// Directory that keeps `local` and `backup` paths across reboots.
        #[arg(long, value_name = "DIR", conflicts_with = "state_dev")]
        state_dir: Option<PathBuf>,
        /// Block device that keeps `local` and `backup` paths (mounted for the run).
        #[arg(long, value_name = "DEV")]
        state_dev: Option<PathBuf>,
        /// Agent configuration: server, machine token and identity for `server` and `dynamic` paths.
        #[arg(long, value_name = "AGENT.toml", env = "SLATE_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Machine token file, instead of AGENT.toml's token_file (in the initramfs: on the state partition).
        #[arg(long, value_name = "FILE", requires = "config")]
        token_file: Option<PathBuf>,
        /// Also append each warning as a line to FILE (the initramfs step
        /// passes /run/slate/warnings, which `slate boot-ok` reports to the fleet).
        #[arg(long, value_name = "FILE")]
        warnings_file: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// List what a root holds that the snapshot it came from does not, and that the policy does not declare.
    Audit {
        /// The root to audit.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        /// Repository holding the snapshot (else the agent's copies of its slots' manifests).
        #[arg(long, env = "SLATE_REPO", value_name = "DIR")]
        repo: Option<PathBuf>,
        /// Agent configuration, to find the snapshot's manifest the agent keeps.
        #[arg(long, value_name = "AGENT.toml", env = "SLATE_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Compare sizes and times only, without reading file contents.
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        out: OutputArg,
        /// The snapshot the root came from (id, prefix, CHANNEL or CHANNEL~N).
        snapshot: String,
    },
    /// Upload `server` paths the machine has created and the server does not have yet.
    Upload {
        /// The running root.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        /// Agent configuration: server and machine token.
        #[arg(
            long,
            value_name = "AGENT.toml",
            env = "SLATE_AGENT_CONFIG",
            default_value_os_t = slate_agent::config::default_path()
        )]
        config: PathBuf,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the effective policy: every declared path and its state (the `backup` list included).
    Show {
        /// The root whose /etc/slate/state.toml (and rwtab/statetab) to read.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        #[command(flatten)]
        policy: PolicyArg,
        /// Agent configuration, for the fleet's copy of the policy.
        #[arg(long, value_name = "AGENT.toml", env = "SLATE_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Only the `backup` paths, one per line.
        #[arg(long, conflicts_with = "server")]
        backup: bool,
        /// Only the `server` paths, one per line; exit status 1 when there are none (the initramfs asks
        /// whether to bring the network up).
        #[arg(long)]
        server: bool,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// Where a home backup repository is and how to open it.
#[derive(Args, Debug, Clone)]
pub struct HomeArgs {
    /// Agent configuration: its servers and machine token hold the repository, its state_dir the cache.
    #[arg(long, value_name = "AGENT.toml", env = "SLATE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Keep the repository in this directory instead of on the server (a USB disk, an offline backup).
    #[arg(long, value_name = "DIR")]
    pub repo_dir: Option<PathBuf>,
    /// Read the key from this file (`slate home keygen`) instead of asking for a passphrase.
    #[arg(long, value_name = "FILE", env = "SLATE_HOME_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The user whose repository this is (part of the passphrase's key derivation; default $SUDO_USER or $USER).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Where home.json (the last backup, for `slate status`) and the cache go (default: the agent's state_dir, else /var/lib/slate).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The local cache of indexes and file stamps (default: STATE_DIR/home/REPO-ID-PREFIX).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Subcommand, Debug)]
pub enum HomeCommand {
    /// Write a new random key file (mode 0600): slate-home-key-v1: and 64 hex digits.
    Keygen {
        /// Where to write it (must not exist).
        file: PathBuf,
    },
    /// Create the backup repository for this key (asks for the passphrase twice).
    Init {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Back up directories (default: the state policy's backup paths); prints the snapshot id.
    Backup {
        #[command(flatten)]
        home: HomeArgs,
        /// When the server cannot be reached, print one line and exit 0 (for the timer).
        #[arg(long)]
        quiet_offline: bool,
        /// zstd level for new chunks (1-22).
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
        /// Close packs at this many bytes (testing knob).
        #[arg(long, hide = true, default_value_t = slate_home::backup::PACK_TARGET)]
        pack_size: usize,
        /// Directories to back up.
        paths: Vec<PathBuf>,
    },
    /// List the snapshots, oldest first.
    Snapshots {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Restore a snapshot (an id prefix or `latest`) bit for bit, in place or beneath --target.
    Restore {
        #[command(flatten)]
        home: HomeArgs,
        /// Restore each backed-up directory P to DIR/P instead of P itself.
        #[arg(long, value_name = "DIR")]
        target: Option<PathBuf>,
        /// Snapshot id (a unique prefix) or `latest`.
        snapshot: String,
        /// Also recreate what grants privileges: setuid and setgid bits,
        /// file capabilities (security.capability) and device nodes. Without
        /// it they are left out and listed on stderr.
        #[arg(long)]
        allow_privileged: bool,
        /// Only these paths (absolute, as backed up), with their parents.
        paths: Vec<PathBuf>,
    },
    /// Forget snapshots a keep policy does not keep (restic's semantics); --prune frees their data.
    Forget {
        #[command(flatten)]
        home: HomeArgs,
        /// Keep the newest N snapshots.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: u32,
        /// ... of each of the last N days.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// ... of each of the last N weeks.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        /// ... of each of the last N months.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        /// ... of each of the last N years.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: u32,
        /// Then delete the packs no snapshot needs (and rewrite mostly unused ones).
        #[arg(long)]
        prune: bool,
    },
    /// Verify every object decrypts, every pack matches its name and every needed chunk exists.
    Check {
        #[command(flatten)]
        home: HomeArgs,
    },
}

/// `slate netboot` subcommands.
#[derive(Subcommand, Debug)]
pub enum NetbootCommand {
    /// In the initramfs (`boot=slate-net`): ask the fleet, check its answer with the keys built into the
    /// initramfs, and mount the snapshot as the new root from the machine's cache (a `slate-cache`
    /// partition, or RAM), fetching what it reads from the servers on the kernel command line.
    Root {
        /// The new root's mount point.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// The kernel command line.
        #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// The keys built into the initramfs (release-*.pub, fleet-*.pub).
        #[arg(long, value_name = "DIR", default_value = slate_mount::netboot::KEYS_DIR)]
        keys: PathBuf,
        /// Where the booted system finds this boot's files.
        #[arg(long, value_name = "DIR", default_value = slate_mount::netboot::RUN_DIR)]
        run_dir: PathBuf,
    },
}
