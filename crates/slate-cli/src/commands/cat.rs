//! `slate cat`: a file's content from a snapshot, to stdout.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::Result;
use slate_repo::Repo;

pub fn run(repo: &Repo, spec: &str, path: &str) -> Result<ExitCode> {
    let l = repo.load(spec)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    repo.cat(&l, std::ffi::OsStr::new(path).as_bytes(), &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
