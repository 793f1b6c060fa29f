//! The iPXE scripts of `GET /v1/boot/ipxe`, as pure functions: the query a
//! booting machine sends, checked into a fleet [`Machine`], and the text of
//! each script.
//!
//! Everything in the query comes from the network, and iPXE executes what
//! the server answers line by line, expanding `${...}` in every line. So
//! query values are bounded and must have their exact shape (a MAC, a
//! UUID, a DNS name) or the request is refused; the server's own strings
//! (rule names, error sentences) are passed through [`comment_safe`] or
//! [`echo_safe`] before they reach a script, so no byte of a request or of
//! FLEET.toml can start a new command or expand a setting.

use crate::fleet::api::Assignment;
use crate::fleet::config::Netboot;
use crate::fleet::Machine;

/// Longest query accepted (three short values and their names).
pub const MAX_QUERY: usize = 1024;
/// Longest `mac` or `uuid` value.
const MAX_ID_VALUE: usize = 64;
/// Longest `hostname` value (the DNS limit).
const MAX_HOSTNAME: usize = 253;
/// Longest `Host` header used to name this server.
const MAX_HOST: usize = 255;
/// Longest error sentence echoed on a machine's console.
const MAX_ECHO: usize = 512;
/// Seconds an error stays on the console before iPXE gives up and the
/// firmware tries its next boot device (the disk of a cached machine).
pub const ERROR_PAUSE_SECS: u32 = 30;

/// The script `GET /v1/boot/ipxe` answers without a query: ask again,
/// saying who this machine is, at `base` (`http://` and the Host the
/// machine reached this server by: the iPXE ROMs that ship in firmware and
/// with qemu do not resolve relative URLs in scripts). The host name goes
/// through `:uristring` because a DHCP server may hand out one with
/// characters that would end the URL or the query parameter.
pub fn chain_script(base: &str) -> String {
    format!(
        "#!ipxe\n\
         # slate: ask again with this machine's identity (docs/format/http.md)\n\
         chain {base}/v1/boot/ipxe?mac=${{net0/mac}}&uuid=${{uuid}}&hostname=${{hostname:uristring}}\n"
    )
}

/// `http://HOST` of the request: where this machine reached the server.
pub fn request_base(host: Option<&str>) -> Result<String, String> {
    server_urls(&Netboot::default(), host).map(|mut v| v.remove(0))
}

/// Whether a query value is absent: empty (iPXE expands an unset setting
/// to nothing) or a `${...}` that was never expanded (the chain URL
/// fetched by something that is not iPXE).
fn absent(v: &str) -> bool {
    v.is_empty() || (v.starts_with("${") && v.ends_with('}'))
}

/// A MAC address, lower case with `:`; `None` for the all-zero address.
fn parse_mac(v: &str) -> Result<Option<String>, String> {
    let n = crate::fleet::machine::normalize_mac(v);
    let octets: Vec<&str> = n.split(':').collect();
    if octets.len() != 6
        || !octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err("mac is not a MAC address (six hex octets separated by ':')".into());
    }
    Ok((n != "00:00:00:00:00:00").then_some(n))
}

/// An SMBIOS UUID, lower case; `None` for the all-zero and all-F
/// placeholders of firmware without one (the agent ignores them too, so
/// both name the machine the same way).
fn parse_uuid(v: &str) -> Result<Option<String>, String> {
    let lens: Vec<usize> = v.split('-').map(str::len).collect();
    if lens != [8, 4, 4, 4, 12] || !v.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()) {
        return Err("uuid is not a UUID (8-4-4-4-12 hex digits)".into());
    }
    let u = v.to_ascii_lowercase();
    Ok(u.bytes().any(|b| !matches!(b, b'0' | b'f' | b'-')).then_some(u))
}

/// A host name: DNS letters, digits, `-`, `.` (and `_`, which some DHCP
/// servers hand out).
fn parse_hostname(v: &str) -> Result<String, String> {
    if v.len() > MAX_HOSTNAME || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(format!(
            "hostname must be at most {MAX_HOSTNAME} letters, digits, '-', '.' or '_'"
        ));
    }
    Ok(v.to_string())
}

/// The machine a `GET /v1/boot/ipxe?mac=..&uuid=..&hostname=..` comes
/// from, or why the query is refused. `pairs` are the decoded query
/// parameters; others than these three are ignored (a newer chain script
/// may send more), a repeated one is refused (no guessing which counts).
///
/// The id is formed as the agent forms it without `machine_id`:
/// `dmi:<uuid>`, else `mac:<mac>`, else `host:<hostname>`, so that the
/// same machine has the same id in both.
pub fn machine_from_query(pairs: &[(String, String)]) -> Result<Machine, String> {
    let value = |name: &str, max: usize| -> Result<Option<&str>, String> {
        let mut found = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let v = found.next();
        if found.next().is_some() {
            return Err(format!("{name} is given more than once"));
        }
        match v {
            Some(v) if v.len() > max => Err(format!("{name} is longer than {max} bytes")),
            Some(v) if absent(v) => Ok(None),
            v => Ok(v),
        }
    };
    let mac = value("mac", MAX_ID_VALUE)?.map(parse_mac).transpose()?.flatten();
    let uuid = value("uuid", MAX_ID_VALUE)?.map(parse_uuid).transpose()?.flatten();
    let hostname = value("hostname", MAX_HOSTNAME)?.map(parse_hostname).transpose()?;
    let id = match (&uuid, &mac, &hostname) {
        (Some(u), _, _) => format!("dmi:{u}"),
        (None, Some(m), _) => format!("mac:{m}"),
        (None, None, Some(h)) => format!("host:{h}"),
        (None, None, None) => {
            return Err("the query names no machine: mac, uuid and hostname are all empty".into());
        }
    };
    Machine {
        id,
        dmi_uuid: uuid,
        macs: mac.into_iter().collect(),
        hostname,
        labels: Default::default(),
    }
    .validate()
}

/// The `slate.server=` URLs: those of `[netboot] server`, else this server
/// as the machine reached it (`http://` and the request's `Host`).
pub fn server_urls(netboot: &Netboot, host: Option<&str>) -> Result<Vec<String>, String> {
    if !netboot.servers.is_empty() {
        return Ok(netboot.servers.clone());
    }
    let why = "set [netboot] server in FLEET.toml to name this server";
    let host = host.ok_or_else(|| format!("the request has no Host header; {why}"))?;
    // A host, an IPv4 or bracketed IPv6 address, and a port: nothing that
    // could end the kernel parameter or the script line.
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
    {
        return Err(format!("the Host header is not a host name and port; {why}"));
    }
    Ok(vec![format!("http://{host}")])
}

/// `s` for an iPXE comment line: printable ASCII without `$` (iPXE expands
/// settings before it recognises a comment); anything else becomes `?`.
pub fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) && c != '$' { c } else { '?' })
        .collect()
}

/// `s` for the arguments of an iPXE `echo`: only characters that are
/// plain text to iPXE's command parser (no `$`, `|`, `&`, `#`, quotes or
/// backslashes, no control characters); anything else becomes `?`.
pub fn echo_safe(s: &str) -> String {
    s.chars()
        .take(MAX_ECHO)
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:;_/=+@()*[]{}<>~%!?-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The script that boots `machine`'s assigned snapshot:
///
/// ```text
/// #!ipxe
/// # slate: machine ID, rule RULE, snapshot SNAPSHOT
/// kernel BASE/v1/boot/SNAPSHOT/kernel initrd=initrd boot=slate-net slate.mode=diskless slate.snapshot=SNAPSHOT slate.server=URL[,URL] ip=dhcp SYSTEMD_IN_INITRD=0 CMDLINE
/// initrd --name initrd BASE/v1/boot/SNAPSHOT/initrd
/// boot
/// ```
///
/// The snapshot is 64 hex digits and the URLs and `CMDLINE` were checked
/// when FLEET.toml was read, so only the comment needs escaping.
///
/// `SYSTEMD_IN_INITRD=0` reaches the booted system's systemd as its
/// environment (the kernel hands `KEY=value` words to init; both
/// initramfs generators pass them on). Without it, systemd's last step
/// before power-off asks whether it runs in an initrd (a lookup and a
/// statfs on the root) while every process, the root's FUSE daemon too,
/// is stopped, and waits for that daemon forever.
pub fn boot_script(a: &Assignment, base: &str, servers: &[String], kernel_cmdline: &str) -> String {
    let id = &a.snapshot;
    let mut cmdline = format!(
        "initrd=initrd boot=slate-net slate.mode=diskless slate.snapshot={id} slate.server={} ip=dhcp SYSTEMD_IN_INITRD=0",
        servers.join(",")
    );
    if !kernel_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(kernel_cmdline);
    }
    format!(
        "#!ipxe\n\
         # slate: machine {}, rule {}, snapshot {id}\n\
         kernel {base}/v1/boot/{id}/kernel {cmdline}\n\
         initrd --name initrd {base}/v1/boot/{id}/initrd\n\
         boot\n",
        comment_safe(&a.machine),
        comment_safe(&a.rule),
    )
}

/// The script for a machine the fleet does not boot (no rule matches, or
/// its channel has no snapshot): say why on its console, wait so that
/// someone can read it, then fail, so that iPXE gives up and the firmware
/// tries its next boot device (a cached machine's disk boots offline).
pub fn refusal_script(machine: &str, why: &str) -> String {
    format!(
        "#!ipxe\n\
         # slate: machine {}: no network boot\n\
         echo slate: {}\n\
         echo slate: no network boot for this machine; trying the next boot device in {ERROR_PAUSE_SECS} seconds\n\
         sleep {ERROR_PAUSE_SECS}\n\
         exit 1\n",
        comment_safe(machine),
        echo_safe(why),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Machine, String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        machine_from_query(&pairs)
    }

    #[test]
    fn ids_as_the_agent_forms_them() {
        let m = q(&[("mac", "52:54:00:AB:CD:EF"), ("uuid", ""), ("hostname", "")]).unwrap();
        assert_eq!(m.id, "mac:52:54:00:ab:cd:ef");
        assert_eq!(m.macs, ["52:54:00:ab:cd:ef"]);
        assert_eq!((m.dmi_uuid, m.hostname), (None, None));

        let uuid = "4C4C4544-0042-3510-8052-B7C04F4E3132";
        let m = q(&[("mac", "52-54-00-ab-cd-ef"), ("uuid", uuid), ("hostname", "lab-07")]).unwrap();
        assert_eq!(m.id, "dmi:4c4c4544-0042-3510-8052-b7c04f4e3132");
        assert_eq!(m.hostname.as_deref(), Some("lab-07"));

        // Firmware placeholders and unexpanded settings are no identity.
        let m = q(&[
            ("mac", "${net0/mac}"),
            ("uuid", "00000000-0000-0000-0000-000000000000"),
            ("hostname", "lab-07"),
            ("other", "ignored"),
        ])
        .unwrap();
        assert_eq!(m.id, "host:lab-07");
        let m = q(&[
            ("mac", "00:00:00:00:00:00"),
            ("uuid", "ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ]);
        assert!(m.unwrap_err().contains("names no machine"));
    }

    #[test]
    fn hostile_values_are_refused() {
        for (pairs, needle) in [
            (vec![("mac", "52:54:00:ab:cd:ef\n")], "mac is not"),
            (vec![("mac", "52:54:00:ab:cd")], "mac is not"),
            (vec![("mac", &*"a".repeat(65))], "longer than"),
            (vec![("uuid", "${uuid}x")], "uuid is not"),
            (vec![("uuid", "4c4c4544-0042-3510-8052-b7c04f4e313g")], "uuid is not"),
            (vec![("hostname", "lab\nkernel http://evil/x")], "hostname must"),
            (vec![("hostname", "a${net0/ip}")], "hostname must"),
            (vec![("hostname", "a b")], "hostname must"),
            (vec![("hostname", &*"h".repeat(254))], "longer than"),
            (
                vec![("mac", "52:54:00:ab:cd:ef"), ("mac", "52:54:00:ab:cd:ee")],
                "more than once",
            ),
        ] {
            let e = q(&pairs).unwrap_err();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn servers_from_the_fleet_file_or_the_host_header() {
        let mut n = Netboot::default();
        assert_eq!(
            server_urls(&n, Some("10.0.0.1:8470")).unwrap(),
            ["http://10.0.0.1:8470"]
        );
        assert_eq!(server_urls(&n, Some("[fe80::1]:80")).unwrap(), ["http://[fe80::1]:80"]);
        for bad in [None, Some(""), Some("a b"), Some("x\ny"), Some("a,b"), Some("${x}")] {
            assert!(
                server_urls(&n, bad).unwrap_err().contains("[netboot] server"),
                "{bad:?}"
            );
        }
        n.servers = vec!["https://a".into(), "http://b:1".into()];
        assert_eq!(server_urls(&n, None).unwrap(), n.servers);
    }

    #[test]
    fn scripts_cannot_be_injected_into() {
        assert_eq!(comment_safe("hostname lab-* ${x}\nboot"), "hostname lab-* ?{x}?boot");
        assert_eq!(echo_safe("a|b&&c #d \"e\" $f\\"), "a?b??c ?d ?e? ?f?");
        let s = refusal_script("mac:52:54:00:ab:cd:ef", "no rule\nchain http://evil/ ${x}");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(!s.contains('$'));
        assert_eq!(s.lines().filter(|l| l.starts_with("chain")).count(), 0);
        assert!(s.ends_with("sleep 30\nexit 1\n"), "{s}");
    }
}
