//! `slate serve`: open the repository, check the fleet file and the
//! database, then serve the protocol of `docs/format/http.md` until
//! SIGINT/SIGTERM. Everything that can be wrong with the setup (not a
//! repository, a bad FLEET.toml, an unusable database or certificate, the
//! address in use) fails here with one line before anything is served;
//! the line "serving REPO on URL" on stderr says the socket is listening.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use slate_server::fleet::sqlite;
use slate_server::{AppState, FleetConfig};

/// Run `slate serve`.
pub fn run(
    repo_path: &Path,
    listen: &str,
    fleet: Option<&Path>,
    db: Option<&Path>,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<ExitCode> {
    let repo = super::open(repo_path)?;
    let fleet = match fleet {
        Some(p) => FleetConfig::load(p)?,
        None => FleetConfig::only_channel(),
    };
    // Not errors: the admin may be about to commit the channel a rule names.
    for w in fleet.warnings(&repo) {
        eprintln!("slate: warning: {w}");
    }
    let store = sqlite::open_default(repo_path, db)?;
    let state = AppState::new(repo, fleet, store);
    let tls = tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    slate_server::server::run_blocking(state, listen, tls, |url| {
        eprintln!("serving {} on {url}", repo_path.display());
    })?;
    Ok(ExitCode::SUCCESS)
}
