//! `slate init`: create an empty repository.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use slate_repo::{Config, Repo};

pub fn run(path: &Path, compression_level: i32) -> Result<ExitCode> {
    if !(1..=22).contains(&compression_level) {
        bail!("--compression-level must be between 1 and 22");
    }
    let config = Config {
        compression_level,
        ..Config::default()
    };
    match super::object_url(path) {
        Some(url) => {
            Repo::init_storage(Box::new(slate_s3::S3Storage::from_env(url)?), url, config)?;
        }
        None => {
            Repo::init(path, config)?;
        }
    }
    eprintln!("initialised an empty slate repository in {}", path.display());
    Ok(ExitCode::SUCCESS)
}
