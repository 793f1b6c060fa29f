//! `slate keygen`: write a new signing key pair.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use slate_core::keys::SecretKey;

pub fn run(out: &Path) -> Result<ExitCode> {
    let key = SecretKey::generate()?;
    let public = out.with_file_name(format!(
        "{}.pub",
        out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    // create_new: never overwrite a key someone may depend on.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    f.write_all(key.to_text().as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(&public, key.public().to_text()).with_context(|| format!("writing {}", public.display()))?;
    eprintln!("wrote secret key {} and public key {}", out.display(), public.display());
    println!("{}", key.public().fingerprint());
    Ok(ExitCode::SUCCESS)
}
