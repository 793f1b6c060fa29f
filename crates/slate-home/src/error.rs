//! The home backup's error type. Each variant is one sentence a person can
//! act on; the CLI prints it as `slate: ...`.

use thiserror::Error;

/// A home backup operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The key opens no repository at this place.
    #[error("no backup repository for this key on {0}: wrong passphrase or key, or run `slate home init`")]
    NoRepository(String),
    /// `init` found a repository already there.
    #[error("a backup repository for this key already exists on {0}")]
    AlreadyExists(String),
    /// An object failed authentication or its hash: tampered with, or not ours.
    #[error("{0}")]
    Tampered(String),
    /// An object is missing.
    #[error("{0}")]
    Missing(String),
    /// No server answered.
    #[error("{0}")]
    Offline(String),
    /// The server (or backup disk) is full.
    #[error("{0}")]
    Full(String),
    /// The server refused the machine's token.
    #[error("{0}")]
    Unauthorized(String),
    /// Another storage failure.
    #[error("{0}")]
    Storage(String),
    /// Bad input: a path, a snapshot name, a key file, an option.
    #[error("{0}")]
    Invalid(String),
    /// A local I/O failure; the message names the path.
    #[error("{0}")]
    Local(String),
    /// From the repository layer (scan, materialize).
    #[error(transparent)]
    Repo(#[from] slate_repo::Error),
}

impl Error {
    /// True when the failure means the storage could not be reached at all.
    pub fn is_offline(&self) -> bool {
        matches!(self, Error::Offline(_))
    }
}

/// Result with the home backup's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A local I/O error naming `what`.
pub fn local(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Local(format!("{what}: {e}"))
}
