//! `slate serve`: open the repository, check the fleet file and the
//! database, then serve the protocol of `docs/format/http.md` until
//! SIGINT/SIGTERM. Everything that can be wrong with the setup (not a
//! repository, a bad FLEET.toml, an unusable database or certificate, the
//! address in use) fails here with one line before anything is served;
//! the line "serving REPO on URL" on stderr says the socket is listening.
//! Machine state and home repositories are kept in REPO/state and
//! REPO/home unless `--state-dir`/`--home-dir` say otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use slate_server::fleet::Database;
use slate_server::{AppState, FleetConfig, PrivateStorage};

/// Where the fleet store is.
pub struct Store {
    /// `--db`: an SQLite file or a PostgreSQL URL; `None`: REPO/fleet.db.
    pub db: Option<PathBuf>,
    /// `--db-connections`: the PostgreSQL pool's size.
    pub db_connections: u32,
}

/// Where and how much private data the server keeps.
pub struct Private {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--home-dir`.
    pub home_dir: Option<PathBuf>,
    /// `--state-limit`, bytes.
    pub state_limit: u64,
    /// `--state-quota`, bytes.
    pub state_quota: u64,
    /// `--home-quota`, bytes.
    pub home_quota: u64,
    /// `--home-append-only`.
    pub home_append_only: bool,
}

/// Who may do what, and how many connections.
pub struct Access {
    /// `--admin-token-file`.
    pub admin_tokens: Option<PathBuf>,
    /// `--metrics-allow`: addresses that read `/metrics` without a token.
    pub metrics_allow: Vec<std::net::IpAddr>,
    /// `--header-timeout`, `--max-connections`, `--max-connections-per-client`.
    pub limits: slate_server::server::Limits,
    /// `--fleet-key`, `--assignment-ttl` and `--head-ttl` (seconds): the
    /// key that signs assignments and channel heads, and how long each
    /// stays fresh.
    pub fleet_key: Option<(PathBuf, u64, u64)>,
    /// `--objects-url`, checked: where agents fetch immutable objects.
    pub objects_urls: Vec<String>,
}

/// Run `slate serve`; `access.fleet_key` is the key that signs assignments and
/// their lifetime in seconds.
pub fn run(
    repo_path: &Path,
    listen: &str,
    fleet: Option<&Path>,
    db: &Store,
    private: &Private,
    access: &Access,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<ExitCode> {
    // Checked before anything else, with a trailing `/` dropped, so that a
    // mistyped URL is one line here rather than a clap usage screen.
    let mut objects_urls = Vec::new();
    for u in &access.objects_urls {
        let url = u.trim().trim_end_matches('/').to_string();
        slate_core::trust::check_objects_url(&url).map_err(|e| anyhow::anyhow!("--objects-url: {e}"))?;
        objects_urls.push(url);
    }
    if !objects_urls.is_empty() && access.fleet_key.is_none() {
        // Agents take objects URLs only from a signed assignment: without
        // a key they would never be used, which is a setup mistake.
        anyhow::bail!("--objects-url needs --fleet-key: machines take objects URLs only from signed assignments");
    }
    let repo = super::open(repo_path)?;
    if let Some(url) = super::object_url(repo_path) {
        // The fleet's database and machines' private data are mutable and
        // private: they stay on this server, never beside the objects.
        if db.db.is_none() || private.state_dir.is_none() || private.home_dir.is_none() {
            anyhow::bail!(
                "{url} is an object store: name where the fleet database and private data live on this \
                 server with --db, --state-dir and --home-dir"
            );
        }
    }
    let fleet = match fleet {
        Some(p) => FleetConfig::load(p)?,
        None => FleetConfig::only_channel(),
    };
    // Not errors: the admin may be about to commit the channel a rule names.
    for w in fleet.warnings(&repo) {
        eprintln!("slate: warning: {w}");
    }
    let store = Database::from_arg(repo_path, db.db.as_deref()).open(db.db_connections)?;
    // Next to the default database, REPO/fleet.db.
    let state_dir = private.state_dir.clone().unwrap_or_else(|| repo_path.join("state"));
    let home_dir = private.home_dir.clone().unwrap_or_else(|| repo_path.join("home"));
    for dir in [&state_dir, &home_dir] {
        // Fail now, not on the first machine's upload.
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!(
                "{} is not a directory; name another with --state-dir/--home-dir",
                dir.display()
            );
        }
    }
    let mut storage = PrivateStorage::local(&state_dir, &home_dir);
    storage.state_limit = private.state_limit;
    storage.state_quota = private.state_quota;
    storage.home_quota = private.home_quota;
    storage.home_append_only = private.home_append_only;
    let mut state = AppState::new(repo, fleet, store)
        .with_private(storage)
        // Machines waiting for a change hold connections: leave at least
        // half of them to downloads and everything else.
        .with_max_waiters((access.limits.max_connections / 2).max(1))
        .with_metrics_allow(access.metrics_allow.clone());
    if let Some(file) = &access.admin_tokens {
        // A file that cannot be read or holds something else fails now,
        // not on the admin's first `fleet status`.
        let admin = slate_server::auth::AdminTokens {
            file: file.to_path_buf(),
        };
        if admin.hashes()?.is_empty() {
            anyhow::bail!(
                "{} holds no administrator token (write one with `slate fleet admin-token FILE`)",
                file.display()
            );
        }
        state = state.with_admin_tokens(file);
    }
    // Said once the server listens: a setup that fails is one error line.
    let signing = match &access.fleet_key {
        Some((k, assignment_ttl, head_ttl)) => {
            let key = super::read_secret_key(k)?;
            let note = format!(
                "signing assignments and channel heads with fleet key {}",
                key.public().fingerprint()
            );
            let signer = slate_server::fleet::sign::Signer::new(key, *assignment_ttl)
                .with_head_ttl(*head_ttl)
                .with_objects_urls(objects_urls.clone())
                .map_err(|e| anyhow::anyhow!("--objects-url: {e}"))?;
            state = state.with_signer(signer);
            if objects_urls.is_empty() {
                note
            } else {
                format!("{note}; machines fetch objects from {} first", objects_urls.join(", "))
            }
        }
        None => "slate: warning: no --fleet-key: assignments are unsigned and agents will refuse them; channel heads are served as `slate pull` kept them".to_string(),
    };
    let tls = tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    slate_server::server::run_blocking(state, listen, tls, access.limits, |url| {
        eprintln!("{signing}");
        eprintln!("serving {} on {url}", repo_path.display());
    })?;
    Ok(ExitCode::SUCCESS)
}
