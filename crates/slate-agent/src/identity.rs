//! Who this machine is: DMI product UUID, MAC addresses, hostname.

use std::collections::BTreeMap;
use std::path::Path;

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

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Detect the identity, honouring an override.
pub fn detect(override_id: Option<&str>, labels: &BTreeMap<String, String>) -> Identity {
    // A DMI UUID of all zeros or all Fs is a firmware placeholder, not an identity.
    let dmi_uuid = read_trim(Path::new("/sys/class/dmi/id/product_uuid"))
        .map(|u| u.to_ascii_lowercase())
        .filter(|u| u.chars().any(|c| c != '0' && c != '-' && c != 'f'));
    let mut macs = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "lo" {
                continue;
            }
            if let Some(mac) = read_trim(&e.path().join("address")) {
                if mac != "00:00:00:00:00:00" {
                    macs.push(mac.to_ascii_lowercase());
                }
            }
        }
    }
    macs.sort();
    macs.dedup();
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
