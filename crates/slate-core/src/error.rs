//! The error type of slate-core's decoders and checks.

use thiserror::Error;

/// What went wrong while decoding or checking a slate format.
#[derive(Debug, Error)]
pub enum Error {
    /// The input ended before a complete value was read.
    #[error("{what} is truncated")]
    Truncated {
        /// The kind of object being decoded.
        what: &'static str,
    },
    /// The input does not start with the expected magic bytes.
    #[error("{what} has a bad magic number (not a slate {what}, or corrupt)")]
    BadMagic {
        /// The kind of object being decoded.
        what: &'static str,
    },
    /// The object was written by a format version this build does not read.
    #[error("{what} has format version {version}, this slate reads version {supported}")]
    UnsupportedVersion {
        /// The kind of object being decoded.
        what: &'static str,
        /// The version found.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A value is out of its allowed range or inconsistent with the rest.
    #[error("{what} is corrupt: {detail}")]
    Corrupt {
        /// The kind of object being decoded.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// A hash did not match the content it names.
    #[error("{what} {id} does not match its hash (corrupt or tampered)")]
    HashMismatch {
        /// The kind of object.
        what: &'static str,
        /// The expected id, in hex.
        id: String,
    },
    /// A signature did not verify.
    #[error("signature check failed: {0}")]
    Signature(String),
    /// A key file could not be parsed.
    #[error("bad key: {0}")]
    BadKey(String),
}

impl Error {
    /// Shorthand for a [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}

/// Result with slate-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
