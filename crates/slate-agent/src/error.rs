//! The agent's error type.

use thiserror::Error;

/// An agent operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// AGENT.toml is unreadable or wrong.
    #[error("{0}")]
    Config(String),
    /// No server could be reached (the machine is offline).
    #[error("no server answered ({0})")]
    Offline(String),
    /// A server answered with something wrong.
    #[error("{0}")]
    Server(String),
    /// A snapshot failed the trust checks.
    #[error("{0}")]
    Untrusted(String),
    /// A local operation failed.
    #[error("{0}")]
    Local(String),
    /// From the repository layer.
    #[error(transparent)]
    Repo(#[from] slate_repo::Error),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
