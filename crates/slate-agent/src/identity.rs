//! Who this machine is: DMI product UUID, MAC addresses, hostname.

use std::collections::BTreeMap;

use serde::Serialize;

/// The identity sent to the server.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// The stable key: `machine_id` from the config, else `dmi:<uuid>`,
    /// else `mac:<first MAC>`, else `host:<hostname>`.
    pub id: String,
    /// DMI product UUID, lower case.
    pub dmi_uuid: Option<String>,
    /// MAC addresses of physical-looking interfaces, sorted.
    pub macs: Vec<String>,
    /// Host name.
    pub hostname: String,
    /// Labels from the config.
    pub labels: BTreeMap<String, String>,
}

/// Detect the identity, honouring an override.
pub fn detect(override_id: Option<&str>, labels: &BTreeMap<String, String>) -> Identity {
    let facts = slate_state::facts::Facts::detect(None);
    let (dmi_uuid, macs) = (facts.dmi_uuid, facts.macs);
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let id = match (override_id, &dmi_uuid, macs.first()) {
        (Some(o), _, _) => o.to_string(),
        (None, Some(u), _) => format!("dmi:{u}"),
        (None, None, Some(m)) => format!("mac:{m}"),
        _ => format!("host:{hostname}"),
    };
    Identity {
        id,
        dmi_uuid,
        macs,
        hostname,
        labels: labels.clone(),
    }
}
