//! What a machine knows about itself at boot, for `dynamic` generators:
//! its DMI identity, MAC addresses, kernel command line, the host name
//! DHCP gave it, and its fleet machine id.

use std::path::Path;

/// The inputs of the built-in generators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// DMI product UUID, lower case; `None` for firmware placeholders.
    pub dmi_uuid: Option<String>,
    /// DMI product serial number.
    pub dmi_serial: Option<String>,
    /// MAC addresses of the network interfaces, sorted.
    pub macs: Vec<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// The host name a DHCP server gave (initramfs-tools' /run/net-*.conf
    /// or systemd-networkd's leases).
    pub dhcp_hostname: Option<String>,
    /// The fleet's id for this machine (AGENT.toml `machine_id` or derived).
    pub machine: Option<String>,
    /// A random seed kept in the state store, for machines with neither a
    /// DMI UUID nor a network interface the initramfs can see
    /// ([`crate::apply`] fills it in when it is needed).
    pub kept_seed: Option<String>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A `KEY=value` or `KEY='value'` line's value in a shell-style file.
fn shell_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim().trim_matches(|c| c == '\'' || c == '"').trim();
        (!v.is_empty()).then(|| v.to_string())
    })
}

fn dhcp_hostname() -> Option<String> {
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["/run", "/run/systemd/netif/leases"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if dir != "/run" || (n.starts_with("net-") && n.ends_with(".conf")) {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|t| shell_value(&t, "HOSTNAME"))
}

impl Facts {
    /// Read the running machine's facts.
    pub fn detect(machine: Option<String>) -> Facts {
        let dmi = Path::new("/sys/class/dmi/id");
        // All zeros or all Fs is a firmware placeholder, not an identity.
        let dmi_uuid = read_trim(&dmi.join("product_uuid"))
            .map(|u| u.to_ascii_lowercase())
            .filter(|u| u.chars().any(|c| c != '0' && c != '-' && c != 'f'));
        let dmi_serial = read_trim(&dmi.join("product_serial")).filter(|s| {
            let l = s.to_ascii_lowercase();
            !(l.contains("to be filled") || l == "default string" || l == "none" || l.chars().all(|c| c == '0'))
        });
        let mut macs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                if e.file_name() == "lo" {
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
        Facts {
            dmi_uuid,
            dmi_serial,
            macs,
            cmdline: read_trim(Path::new("/proc/cmdline")).unwrap_or_default(),
            dhcp_hostname: dhcp_hostname(),
            machine,
            kept_seed: None,
        }
    }

    /// Whether the hardware gives no identity: no DMI UUID and no network
    /// interface (many VMs and cheap boards; a laptop whose only network is
    /// Wi-Fi, before its driver is loaded).
    pub fn lacks_hardware_identity(&self) -> bool {
        self.dmi_uuid.is_none() && self.macs.is_empty()
    }

    /// The value of `key=` on the kernel command line.
    pub fn cmdline_arg(&self, key: &str) -> Option<&str> {
        self.cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_shell_values_and_cmdline() {
        assert_eq!(
            shell_value("DEVICE='eth0'\nHOSTNAME='lab-07'\n", "HOSTNAME").as_deref(),
            Some("lab-07")
        );
        assert_eq!(shell_value("HOSTNAME=\n", "HOSTNAME"), None);
        let f = Facts {
            cmdline: "ro quiet slate.hostname=kiosk-3 slate.slot=a".into(),
            ..Facts::default()
        };
        assert_eq!(f.cmdline_arg("slate.hostname"), Some("kiosk-3"));
        assert_eq!(f.cmdline_arg("slate.host"), None);
    }
}
