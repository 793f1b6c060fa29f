//! This machine's state blobs on the server (`docs/format/http.md`,
//! "Machine state"): small files a machine keeps centrally, such as its
//! SSH host keys, readable and writable only with its own token.
//!
//! ```no_run
//! # fn demo(config: &slate_agent::config::Config, machine: &str) -> slate_agent::Result<()> {
//! use slate_agent::serverstate::{PutOutcome, StateClient};
//! let http = config.http()?; // sends the token from AGENT.toml's token_file
//! let state = StateClient::new(&http, machine)?;
//! // Upload once, when the machine first creates the file.
//! if state.put("ssh-host-keys.tar", b"...", true)? == PutOutcome::AlreadyExists {
//!     let keys = state.get("ssh-host-keys.tar")?;
//! }
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::http::Http;
pub use crate::http::PutOutcome;

/// Longest blob name (and machine name).
pub const MAX_NAME_LEN: usize = 128;

/// One blob of [`StateClient::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBlob {
    /// Its name.
    pub name: String,
    /// Its length, bytes.
    pub size: u64,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
    /// Last write, Unix seconds.
    pub modified: u64,
}

#[derive(Deserialize)]
struct StateList {
    machine: String,
    blobs: Vec<StateBlob>,
}

/// The state blobs of one machine on its servers.
pub struct StateClient<'a> {
    http: &'a Http,
    machine: String,
}

/// Check a blob name as the server does: 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.starts_with('.')
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::Local(format!(
            "{name:?} is not a state blob name (1 to {MAX_NAME_LEN} of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.')"
        )));
    }
    Ok(())
}

impl<'a> StateClient<'a> {
    /// The state of `machine` (its id, as [`crate::identity`] gives it)
    /// through `http`, which must carry that machine's token.
    pub fn new(http: &'a Http, machine: &str) -> Result<Self> {
        if machine.is_empty()
            || machine.len() > MAX_NAME_LEN
            || !machine
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
        {
            return Err(Error::Config(format!(
                "machine id {machine:?} cannot have state on the server \
                 (1 to {MAX_NAME_LEN} of A-Z, a-z, 0-9, '.', '_', ':', '@', '-'); set machine_id in AGENT.toml"
            )));
        }
        Ok(StateClient {
            http,
            machine: machine.to_string(),
        })
    }

    fn path(&self, name: &str) -> Result<String> {
        check_name(name)?;
        Ok(format!("/v1/state/{}/{name}", self.machine))
    }

    /// Every blob the server keeps for this machine, ordered by name.
    pub fn list(&self) -> Result<Vec<StateBlob>> {
        let path = format!("/v1/state/{}/", self.machine);
        let body = self.http.get(&path)?;
        let list: StateList = serde_json::from_slice(&body).map_err(|e| {
            Error::Server(format!(
                "server {} sent a bad state list for {}: {e}",
                self.http.server(),
                self.machine
            ))
        })?;
        if list.machine != self.machine {
            return Err(Error::Server(format!(
                "server {} sent the state list of {} when asked for {}",
                self.http.server(),
                list.machine,
                self.machine
            )));
        }
        Ok(list.blobs)
    }

    /// The content of blob `name`; `None` when there is no such blob.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.http.get_optional(&self.path(name)?)
    }

    /// Store `data` as blob `name`, atomically. With `create_only`, only
    /// when the server has no blob of that name yet; an existing one is
    /// left alone and [`PutOutcome::AlreadyExists`] returned.
    pub fn put(&self, name: &str, data: &[u8], create_only: bool) -> Result<PutOutcome> {
        self.http.put(&self.path(name)?, data, create_only)
    }

    /// Remove blob `name`; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool> {
        self.http.delete(&self.path(name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_request() {
        // No server listens here: a request would fail with Offline.
        let http = Http::new(&["http://127.0.0.1:9".to_string()], 1).unwrap();
        for bad in ["", "a/b", "..", ".x", "a?b", "a#b", "é"] {
            assert!(
                matches!(StateClient::new(&http, "m").unwrap().get(bad), Err(Error::Local(_))),
                "{bad}"
            );
        }
        for bad in ["", "a/b", "a b", "m?x"] {
            assert!(matches!(StateClient::new(&http, bad), Err(Error::Config(_))), "{bad}");
        }
        let c = StateClient::new(&http, "mac:aa:bb:cc:dd:ee:ff").unwrap();
        assert_eq!(
            c.path("ssh-keys.tar").unwrap(),
            "/v1/state/mac:aa:bb:cc:dd:ee:ff/ssh-keys.tar"
        );
        assert!(matches!(c.get("x"), Err(Error::Offline(_))));
    }
}
