//! slate-agent: the client side of slate.
//!
//! One update pass ([`update::run`]) identifies the machine, asks the server
//! what to run, checks the snapshot's signature and age, plans from the
//! target's manifest and the manifests the slots are recorded to hold,
//! fetches only the chunks the machine has nowhere (coalesced Range
//! requests over parallel connections, cached on disk so a killed pass
//! redoes nothing), rewrites only the changed entries of the reserve slot,
//! syncs, flips the bootloader with boot counting, records its state
//! atomically and reports back. [`boot`] drives GRUB and BLS boot counting;
//! [`pull`] mirrors a channel into another repository; [`serverstate`]
//! keeps this machine's state blobs on the server; [`watch`] waits for the
//! fleet to assign another snapshot; [`objects`] asks the objects URLs a
//! signed assignment names for immutable objects before the fleet servers.
//! A machine booted from the network
//! (AGENT.toml `mode = "netboot"`) has no slots: its pass only reports
//! what its next boot runs, from what [`netboot`] reads.

pub mod apply;
pub mod boot;
pub mod config;
pub mod delta;
pub mod error;
pub mod http;
pub mod identity;
pub mod install;
pub mod live;
pub mod netboot;
pub mod objects;
pub mod prepare;
pub mod pull;
pub mod remote;
pub mod serverstate;
pub mod slot;
pub mod sources;
pub mod state;
pub mod trust;
pub mod update;
pub mod verity;
pub mod watch;

pub use error::{Error, Result};
