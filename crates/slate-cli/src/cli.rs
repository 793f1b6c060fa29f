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
    /// Repository directory.
    #[arg(long, env = "SLATE_REPO", value_name = "DIR")]
    pub repo: PathBuf,
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
        #[command(flatten)]
        out: OutputArg,
    },
}
