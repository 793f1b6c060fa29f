//! The commands as the README documents them.
