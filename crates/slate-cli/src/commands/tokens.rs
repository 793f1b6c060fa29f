//! `slate fleet enroll / revoke / tokens`: machine tokens in the fleet
//! database that `slate serve` uses (`REPO/fleet.db`, or `--db`: a file or
//! a PostgreSQL URL). The
//! server reads the database on every request, so what these commands do
//! takes effect at once, while it runs. Only a token's hash is stored: the
//! token itself is printed once, by `enroll`, and never again.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::json;
use slate_server::fleet::{Database, Enrollment, FleetDb, TokenStore};

use crate::cli::DbArg;
use crate::output;

/// Open the fleet database named by `--repo`/`--db`.
fn open(db: &DbArg) -> Result<FleetDb> {
    // One command, one connection.
    let store = match (&db.repo, &db.db) {
        (_, Some(file)) => Database::from_arg(Path::new(""), Some(file)).open(1)?,
        (Some(repo), None) => {
            // A typo in --repo must not create a fleet database somewhere
            // that slate serve never reads.
            super::open(repo)?;
            if super::object_url(repo).is_some() {
                bail!(
                    "{} is an object store: name slate serve's database with --db",
                    repo.display()
                );
            }
            Database::from_arg(repo, None).open(1)?
        }
        (None, None) => bail!(
            "no fleet database named: pass --repo REPO (the repository slate serve serves; \
             or set SLATE_REPO) or --db FILE|URL (its --db)"
        ),
    };
    Ok(store)
}

fn check(machine: &str) -> Result<()> {
    slate_server::auth::check_machine(machine).map_err(|e| anyhow::anyhow!("{e}"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `slate fleet enroll MACHINE`: print a new token for MACHINE.
pub fn enroll(machine: &str, db: &DbArg, force: bool, as_json: bool) -> Result<ExitCode> {
    check(machine)?;
    let store = open(db)?;
    let token = slate_server::auth::generate()?;
    let done = store.enroll(machine, &slate_server::auth::hash(&token), now(), force)?;
    if done == Enrollment::AlreadyEnrolled {
        bail!(
            "machine {machine} is already enrolled; run `slate fleet enroll --force {machine}` to give it a new token \
             (its old token stops working at once)"
        );
    }
    let replaced = done == Enrollment::Replaced;
    if as_json {
        output::json(&json!({ "machine": machine, "token": token, "replaced": replaced }))?;
    } else {
        println!("{token}");
    }
    eprintln!(
        "{} token of machine {machine}: write it to the file that token_file in its AGENT.toml names \
         (e.g. /etc/slate/token, mode 0600){}",
        if replaced { "new" } else { "the" },
        if replaced {
            "; its old token no longer works"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `slate fleet admin-token FILE`: a new administrator token in FILE.
pub fn admin_token(file: &std::path::Path, force: bool) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = slate_server::auth::generate()?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists; pass --force to replace it (its token stops working at once)",
                file.display()
            )
        } else {
            anyhow::anyhow!("cannot write {}: {e}", file.display())
        }
    })?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
    eprintln!(
        "wrote an administrator token to {}: start slate serve with --admin-token-file {0} \
         and run slate fleet status --token-file {0}",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `slate fleet revoke MACHINE`.
pub fn revoke(machine: &str, db: &DbArg) -> Result<ExitCode> {
    check(machine)?;
    let store = open(db)?;
    if !store.revoke(machine)? {
        bail!(
            "machine {machine} has no token in {} (see slate fleet tokens)",
            store.name()
        );
    }
    eprintln!("revoked the token of machine {machine}: its requests are refused from now on");
    Ok(ExitCode::SUCCESS)
}

/// `slate fleet tokens`: enrolled machines and when.
pub fn list(db: &DbArg, as_json: bool) -> Result<ExitCode> {
    let store = open(db)?;
    let rows = store.tokens()?;
    if as_json {
        output::json(&json!({ "machines": rows }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!(
            "no machine is enrolled in {} (slate fleet enroll MACHINE)",
            store.name()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows
        .iter()
        .map(|r| r.machine.len())
        .max()
        .unwrap_or(0)
        .max("MACHINE".len());
    println!("{:<width$}  ENROLLED (UTC)", "MACHINE");
    for r in rows {
        let when = output::time((r.enrolled as i64).saturating_mul(1_000_000_000));
        println!("{:<width$}  {when}", r.machine);
    }
    Ok(ExitCode::SUCCESS)
}
