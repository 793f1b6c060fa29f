//! slate-home: user data that survives the machine.
//!
//! Home directories are backed up into a repository only their owner's
//! key opens: files are cut with the project's chunker, each chunk sealed
//! (zstd, then XChaCha20-Poly1305) under a keyed id, sealed chunks packed
//! into large pack objects with a sealed index each, every directory's
//! manifest stored the same way, and a sealed snapshot record written last.
//! The storage sees random names and ciphertext only. Restore goes through
//! the repository's bit-for-bit checkout. The format is specified in
//! `docs/format/home.md`.

pub mod backend;
pub mod backup;
pub mod cache;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod format;
pub mod lock;
pub mod repo;
pub mod restore;
pub mod user;

pub use error::{Error, Result};

#[cfg(test)]
mod tests;
