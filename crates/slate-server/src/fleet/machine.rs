//! A machine's identity as it describes itself in fleet requests, checked
//! and normalised before anything matches on it or stores it.
//!
//! Every field comes from the network, so every string is bounded: a
//! request cannot make the server keep or print megabytes per machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest machine id, in bytes.
pub const MAX_ID: usize = 128;
/// Longest hostname (the DNS limit).
pub const MAX_HOSTNAME: usize = 253;
/// Most MAC addresses per machine.
pub const MAX_MACS: usize = 64;
/// Most labels per machine.
pub const MAX_LABELS: usize = 64;
/// Longest label name.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest label value, and longest other short string.
pub const MAX_SHORT: usize = 256;

/// Who is asking: `{"id", "dmi_uuid", "macs", "hostname", "labels"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Stable id chosen by the agent (e.g. `dmi:<uuid>`); the database key.
    pub id: String,
    /// SMBIOS system UUID, lower-cased once checked.
    #[serde(default)]
    pub dmi_uuid: Option<String>,
    /// Hardware addresses, lower-cased with `:` separators once checked.
    #[serde(default)]
    pub macs: Vec<String>,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Free-form labels set in the agent's configuration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Visible ASCII only: ids and names end up in tables, logs and SQL keys.
fn visible(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// `s` is 1..=max bytes of visible ASCII, else an error naming `field`.
pub fn check_token(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max || !visible(s) {
        return Err(format!(
            "{field} must be 1 to {max} visible ASCII characters (no spaces), got {:?}",
            truncate(s)
        ));
    }
    Ok(())
}

/// `s` is at most `max` bytes without control characters.
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be at most {max} bytes without control characters"
        ));
    }
    Ok(())
}

/// The start of a string for an error message (never echo a huge value).
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A MAC address as compared: lower case, `:` between octets.
pub fn normalize_mac(s: &str) -> String {
    s.to_ascii_lowercase().replace('-', ":")
}

impl Machine {
    /// Check bounds and normalise the fields matching is done on.
    pub fn validate(mut self) -> Result<Machine, String> {
        check_token("machine.id", &self.id, MAX_ID)?;
        if let Some(u) = &mut self.dmi_uuid {
            check_token("machine.dmi_uuid", u, 64)?;
            u.make_ascii_lowercase();
        }
        if self.macs.len() > MAX_MACS {
            return Err(format!("machine.macs has more than {MAX_MACS} entries"));
        }
        for m in &mut self.macs {
            check_token("machine.macs[]", m, 64)?;
            *m = normalize_mac(m);
        }
        // An agent whose uname gives no name sends "": that is no hostname.
        if self.hostname.as_deref() == Some("") {
            self.hostname = None;
        }
        if let Some(h) = &self.hostname {
            check_token("machine.hostname", h, MAX_HOSTNAME)?;
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!("machine.labels has more than {MAX_LABELS} entries"));
        }
        for (k, v) in &self.labels {
            check_token("a machine.labels name", k, MAX_LABEL_KEY)?;
            check_text(&format!("machine.labels.{k}"), v, MAX_SHORT)?;
        }
        Ok(self)
    }

    /// A short description for error messages: hostname, DMI UUID, MACs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(h) = &self.hostname {
            parts.push(format!("hostname {h}"));
        }
        if let Some(u) = &self.dmi_uuid {
            parts.push(format!("dmi_uuid {u}"));
        }
        if !self.macs.is_empty() {
            parts.push(format!("macs {}", self.macs.join(",")));
        }
        if !self.labels.is_empty() {
            let l: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("labels {}", l.join(",")));
        }
        if parts.is_empty() {
            "no hostname, DMI UUID, MACs or labels".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_normalises() {
        let m = Machine {
            id: "dmi:ABC".into(),
            dmi_uuid: Some("4C4C4544-0000".into()),
            macs: vec!["52-54-00-AA-BB-CC".into()],
            hostname: Some("lab-07".into()),
            labels: [("room".to_string(), "b12".to_string())].into(),
        }
        .validate()
        .unwrap();
        assert_eq!(m.dmi_uuid.as_deref(), Some("4c4c4544-0000"));
        assert_eq!(m.macs, ["52:54:00:aa:bb:cc"]);
        assert_eq!(m.id, "dmi:ABC");

        let bad = |f: fn(&mut Machine)| {
            let mut m = Machine {
                id: "x".into(),
                ..Default::default()
            };
            f(&mut m);
            m.validate().unwrap_err()
        };
        assert!(bad(|m| m.id.clear()).contains("machine.id"));
        assert!(bad(|m| m.id = "a b".into()).contains("machine.id"));
        assert!(bad(|m| m.id = "x".repeat(MAX_ID + 1)).contains("machine.id"));
        assert!(bad(|m| m.hostname = Some("h\n".into())).contains("hostname"));
        let no_name = Machine {
            id: "x".into(),
            hostname: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(no_name.validate().unwrap().hostname, None);
        assert!(bad(|m| m.macs = vec!["m".into(); MAX_MACS + 1]).contains("macs"));
        assert!(bad(|m| {
            m.labels.insert("k".into(), "v".repeat(MAX_SHORT + 1));
        })
        .contains("labels.k"));
    }
}
