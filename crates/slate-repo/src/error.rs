//! The repository's error type: each variant names the object or path that
//! failed, so the CLI can print one line a person can act on.

use thiserror::Error;

/// A repository operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// An I/O error; the message carries the path.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A stored object is corrupt or fails its hash.
    #[error("{object}: {source}")]
    Corrupt {
        /// Which object (kind and id).
        object: String,
        /// What is wrong with it.
        source: slate_core::Error,
    },
    /// A name did not resolve to a snapshot.
    #[error("no snapshot or channel named {0:?} in this repository (see `slate log` and `slate ls`)")]
    UnknownSnapshot(String),
    /// A chunk a snapshot needs is not in any pack.
    #[error("chunk {0} is missing from the repository (run `slate verify`)")]
    MissingChunk(String),
    /// The path is not a slate repository.
    #[error("{0} is not a slate repository (create one with `slate init --repo {0}`)")]
    NotARepository(String),
    /// Bad user input (a channel name, a destination, a path).
    #[error("{0}")]
    Invalid(String),
    /// Another writer moved the channel while this one worked (an object
    /// store, where writers take no lock); nothing was changed.
    #[error("channel {0} moved on while this ran (another writer updated it); nothing was changed, run it again")]
    ChannelMoved(String),
    /// A write on a repository without a lock ran so long that objects it
    /// may rely on, found dead by a gc meanwhile, could be deleted soon;
    /// its channel was not moved (docs/scale.md, "Crash safety").
    #[error(
        "this write ran for {ran_secs:.0} s, more than half the grace period ({grace_secs} s) of a gc that ran \
         meanwhile, so objects it relies on may be deleted; the channel was not moved, run it again \
         (or give gc a longer --grace)"
    )]
    GcRace {
        /// How long the write ran.
        ran_secs: f64,
        /// The shortest grace period of the entries gc recorded meanwhile.
        grace_secs: u64,
    },
    /// Another writer replaced an object (named here) between this one's
    /// read and its conditional replacement; nothing was changed.
    #[error("{0} changed while this ran (another writer replaced it); nothing was changed, run it again")]
    Raced(String),
    /// A signature check failed.
    #[error("{0}")]
    Untrusted(String),
}

impl Error {
    /// A corrupt-object error.
    pub fn corrupt(object: impl Into<String>, source: slate_core::Error) -> Self {
        Error::Corrupt {
            object: object.into(),
            source,
        }
    }
}

/// Result with the repository's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
