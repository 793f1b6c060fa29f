//! slate-core: the formats and pure logic every other slate crate stands on.
//!
//! Nothing here does I/O beyond what a caller hands in as bytes: ids and
//! hashing, the content-defined chunker's parameters, the binary codecs of
//! manifests, snapshots, pack frames and pack indexes (each starting with a
//! magic and a version, specified in `docs/format/`), snapshot signing, path
//! safety rules and manifest diffs. Decoders treat their input as untrusted:
//! every length is bounded before anything is allocated.

pub mod chunker;
pub mod codec;
pub mod delta;
pub mod error;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod pack;
pub mod snapshot;
pub mod trust;

pub use error::{Error, Result};
pub use id::{ChunkId, Id32, PackId, SnapshotId};
