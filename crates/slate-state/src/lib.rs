//! slate-state: where a stateless machine's state lives.
//!
//! A machine boots a root that is read-only and the same on every machine;
//! the state policy (`/etc/slate/state.toml`, schema in docs/state.md)
//! declares, per path, where whatever it writes goes: RAM (`ram`),
//! computed at boot (`dynamic`), the server (`server`), a local state
//! partition (`local`), or a local partition that is also backed up
//! (`backup`). [`policy`] reads policies (and Fedora's rwtab/statetab
//! files), [`check`] checks one against the tree it will run on,
//! [`apply`] sets the root and its mounts up idempotently, and
//! [`audit`] finds state nobody declared and persistent state that hides a
//! file an update changes.

pub mod apply;
pub mod audit;
pub mod bundle;
pub mod check;
pub mod copy;
pub mod error;
pub mod facts;
pub mod generate;
pub mod mounts;
pub mod policy;
pub mod tabs;

pub use error::{Error, Result};
pub use policy::{Entry, Mode, Policy};
