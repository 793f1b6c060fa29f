//! The crate's error: one sentence for people, naming what failed.

/// A failure of policy parsing, applying or auditing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error from a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl From<slate_repo::Error> for Error {
    fn from(e: slate_repo::Error) -> Self {
        Error(e.to_string())
    }
}
