//! The `dynamic` generators: content computed at boot from [`Facts`].

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::facts::Facts;
use crate::policy::{Entry, Generator};

/// Largest output a generator command may produce.
pub const MAX_OUTPUT: u64 = 1 << 20;

/// The machine id: 32 hex digits derived from the DMI UUID (else the first
/// MAC address, else the seed kept in the state store), so that the same
/// hardware gets the same id after any reinstall, and the raw UUID is not
/// exposed to every program.
pub fn machine_id(f: &Facts) -> Result<String> {
    let basis = match (&f.dmi_uuid, f.macs.first(), &f.kept_seed) {
        (Some(u), _, _) => format!("dmi:{u}"),
        (None, Some(m), _) => format!("mac:{m}"),
        (None, None, Some(k)) => format!("kept:{k}"),
        (None, None, None) => {
            return Err(Error::new(
                "cannot derive a machine id: the firmware gives no DMI UUID, there is no network interface \
                 and no state store to keep an id in",
            ))
        }
    };
    let h = blake3::derive_key("slate 2026 machine-id v1", basis.as_bytes());
    Ok(hex::encode(&h[..16]))
}

fn valid_hostname(h: &str) -> bool {
    (1..=63).contains(&h.len())
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

/// The host name, from the first source that has a valid one: the kernel
/// command line (`slate.hostname=`), DHCP, the fleet machine id, the DMI
/// UUID (`slate-` and 8 hex digits), the first MAC address.
pub fn hostname(f: &Facts) -> Result<String> {
    let short = |s: &str| s.split('.').next().unwrap_or("").to_ascii_lowercase();
    let candidates = [
        f.cmdline_arg("slate.hostname").map(short),
        f.dhcp_hostname.as_deref().map(short),
        f.machine.as_deref().map(short),
    ];
    if let Some(h) = candidates.into_iter().flatten().find(|h| valid_hostname(h)) {
        return Ok(h);
    }
    if let Some(u) = &f.dmi_uuid {
        let h = blake3::derive_key("slate 2026 hostname v1", u.as_bytes());
        return Ok(format!("slate-{}", hex::encode(&h[..4])));
    }
    if let Some(m) = f.macs.first() {
        return Ok(format!("slate-{}", m.replace(':', "")));
    }
    if let Some(k) = &f.kept_seed {
        let h = blake3::derive_key("slate 2026 hostname v1", format!("kept:{k}").as_bytes());
        return Ok(format!("slate-{}", hex::encode(&h[..4])));
    }
    Err(Error::new(
        "cannot choose a host name: no slate.hostname=, DHCP name, machine id, DMI UUID, MAC address or kept seed",
    ))
}

/// The content of a dynamic entry.
pub fn generate(e: &Entry, facts: &Facts, root: &Path) -> Result<Vec<u8>> {
    let Some(g) = &e.generator else {
        return Err(Error(format!("{}: {} has no generator", e.origin, e.path)));
    };
    Ok(match g {
        Generator::MachineId => format!("{}\n", machine_id(facts)?).into_bytes(),
        Generator::Hostname => format!("{}\n", hostname(facts)?).into_bytes(),
        Generator::Template(t) => template(t, facts)?.into_bytes(),
        Generator::Command(argv) => run(argv, e, root)?,
    })
}

fn template(t: &str, f: &Facts) -> Result<String> {
    let mut out = t.to_string();
    if out.contains("{hostname}") {
        out = out.replace("{hostname}", &hostname(f)?);
    }
    if out.contains("{machine-id}") {
        out = out.replace("{machine-id}", &machine_id(f)?);
    }
    out = out.replace("{dmi-uuid}", f.dmi_uuid.as_deref().unwrap_or(""));
    out = out.replace("{mac}", f.macs.first().map(String::as_str).unwrap_or(""));
    out = out.replace("{machine}", f.machine.as_deref().unwrap_or(""));
    Ok(out)
}

fn run(argv: &[String], e: &Entry, root: &Path) -> Result<Vec<u8>> {
    let what = format!("{}: generator command {:?} for {}", e.origin, argv[0], e.path);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("SLATE_ROOT", root)
        .env("SLATE_PATH", &e.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| Error(format!("{what}: cannot run it: {err}")))?;
    let mut out = Vec::new();
    let stdout = child.stdout.take().expect("piped");
    stdout
        .take(MAX_OUTPUT + 1)
        .read_to_end(&mut out)
        .map_err(|err| Error(format!("{what}: reading its output: {err}")))?;
    if out.len() as u64 > MAX_OUTPUT {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error(format!("{what}: wrote more than {MAX_OUTPUT} bytes")));
    }
    let status = child.wait().map_err(|err| Error(format!("{what}: {err}")))?;
    if !status.success() {
        return Err(Error(format!("{what}: failed ({status})")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            dmi_uuid: Some("4c4c4544-0042-3510-8051-b4c04f563232".into()),
            macs: vec!["52:54:00:12:34:56".into()],
            ..Facts::default()
        }
    }

    #[test]
    fn machine_id_is_stable_and_from_dmi() {
        let a = machine_id(&facts()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, machine_id(&facts()).unwrap());
        let mut other = facts();
        other.dmi_uuid = Some("4c4c4544-0042-3510-8051-b4c04f563233".into());
        assert_ne!(a, machine_id(&other).unwrap());
        other.dmi_uuid = None;
        assert_ne!(a, machine_id(&other).unwrap());
        other.macs.clear();
        assert!(machine_id(&other).is_err());
        assert!(hostname(&other).is_err());
        // No hardware identity: the seed kept in the state store decides.
        other.kept_seed = Some("00112233445566778899aabbccddeeff".into());
        let kept = machine_id(&other).unwrap();
        assert_eq!(kept, machine_id(&other).unwrap());
        assert_ne!(kept, a);
        assert!(hostname(&other).unwrap().starts_with("slate-"));
        other.kept_seed = Some("ffeeddccbbaa99887766554433221100".into());
        assert_ne!(kept, machine_id(&other).unwrap());
    }

    #[test]
    fn hostname_prefers_cmdline_then_dhcp_then_fleet() {
        let mut f = facts();
        assert!(hostname(&f).unwrap().starts_with("slate-"));
        f.machine = Some("dmi:4c4c4544".into()); // not a valid host name
        assert!(hostname(&f).unwrap().starts_with("slate-"));
        f.machine = Some("lab-07".into());
        assert_eq!(hostname(&f).unwrap(), "lab-07");
        f.dhcp_hostname = Some("pc12.school.example".into());
        assert_eq!(hostname(&f).unwrap(), "pc12");
        f.cmdline = "quiet slate.hostname=Kiosk-1".into();
        assert_eq!(hostname(&f).unwrap(), "kiosk-1");
    }

    #[test]
    fn commands_and_templates() {
        let mut e = crate::tabs::parse(crate::tabs::TabKind::Statetab, "/etc/x\n", Path::new("t")).unwrap()[0].clone();
        e.generator = Some(Generator::Command(vec![
            "sh".into(),
            "-c".into(),
            "printf '%s' \"$SLATE_PATH\"".into(),
        ]));
        assert_eq!(generate(&e, &facts(), Path::new("/")).unwrap(), b"/etc/x");
        e.generator = Some(Generator::Command(vec!["false".into()]));
        assert!(generate(&e, &facts(), Path::new("/"))
            .unwrap_err()
            .to_string()
            .contains("failed"));
        e.generator = Some(Generator::Template("id={machine-id} mac={mac}\n".into()));
        let t = String::from_utf8(generate(&e, &facts(), Path::new("/")).unwrap()).unwrap();
        assert!(t.starts_with("id=") && t.ends_with("mac=52:54:00:12:34:56\n"), "{t}");
    }
}
