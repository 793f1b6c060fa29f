//! Progress reporting, as a trait so the library never draws anything:
//! the CLI implements it with a progress bar or JSON lines.

/// Receives progress of a long operation.
pub trait Progress: Sync {
    /// A phase starts; `total` is in bytes (0 when unknown).
    fn start(&self, phase: &str, total: u64);
    /// `n` more bytes of the current phase are done.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
