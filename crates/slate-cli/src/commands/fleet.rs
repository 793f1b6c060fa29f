//! `slate fleet status`: the machines table as the server sees it, from
//! `GET /v1/fleet/machines` (`docs/format/http.md`). A table for people,
//! or the server's JSON with `--json`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use slate_server::fleet::api::MachinesResponse;
use slate_server::fleet::MachineRow;

use slate_net::root_cause;

use crate::output::json;

/// An administrator's connection to a server: its base URL, the token
/// (sent only over https or to 127.0.0.1) and a client with the agent's
/// TLS checks (slate-net). `slate fleet status` and `slate fleet rollout`
/// share it.
pub(crate) struct Admin {
    base: String,
    token: Option<String>,
    endpoint: slate_net::Endpoint,
}

impl Admin {
    /// Connect to `server` with the token in `token_file`, `ca_file` and `pins`.
    pub(crate) fn new(
        server: &str,
        token_file: Option<&std::path::Path>,
        (ca_file, pins): (Option<&std::path::Path>, &[String]),
    ) -> Result<Admin> {
        // `host:port` alone means plain HTTP, as `--listen` takes it.
        let server = if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        let base = server.trim_end_matches('/').to_string();
        let token = match token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| anyhow!("cannot read {}: {e}", f.display()))?;
                let t = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .unwrap_or("")
                    .to_string();
                if !slate_server::auth::is_token(&t) {
                    bail!(
                        "{} holds no administrator token (`slate fleet admin-token FILE` writes one)",
                        f.display()
                    );
                }
                Some(t)
            }
        };
        if token.is_some() && base.starts_with("http://") && !is_loopback(&base) {
            bail!(
                "{base} is plain http: the administrator token would cross the network in clear; \
                 use https (or run fleet status on the server, against 127.0.0.1)"
            );
        }
        let pins = pins
            .iter()
            .map(|p| slate_net::parse_pin(p).ok_or_else(|| anyhow!("--pin {p:?} is not `sha256:` and 64 hex digits")))
            .collect::<Result<Vec<_>>>()?;
        if !base.starts_with("https://") && (ca_file.is_some() || !pins.is_empty()) {
            bail!("{base} is plain http: --ca-file and --pin apply only to https:// servers");
        }
        let settings = slate_net::ServerSettings {
            ca_file: ca_file.map(std::path::Path::to_path_buf),
            pins,
            ..slate_net::ServerSettings::plain(&base)
        };
        let timeouts = slate_net::Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        };
        let endpoint = slate_net::Endpoint::new(&settings, timeouts, "").map_err(|e| anyhow!("{e}"))?;
        Ok(Admin { base, token, endpoint })
    }

    /// The server's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (or `POST path` with `body`), as JSON; a non-2xx answer
    /// is an error with the server's sentence.
    pub(crate) fn call(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let base = &self.base;
        let url = format!("{base}{path}");
        let mut req = match body {
            None => self.endpoint.client.get(&url),
            Some(b) => self.endpoint.client.post(&url).json(b),
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| {
            if slate_net::is_tls_error(&e) {
                anyhow!(
                    "{base}: TLS failed: {}; the administrator token was not sent (check the server's certificate, \
                     or --ca-file and --pin)",
                    root_cause(&e)
                )
            } else {
                anyhow!("cannot reach the slate server at {base}: {}", root_cause(&e))
            }
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .map_err(|e| anyhow!("{url}: reading the answer: {}", root_cause(&e)))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| "no error message".into());
            bail!("{url}: {status}: {msg}");
        }
        serde_json::from_str(&text).map_err(|e| anyhow!("{url}: the answer is not JSON ({e})"))
    }
}

/// Run `slate fleet status --server URL [--token-file F] [--ca-file F]
/// [--pin sha256:HEX]`: the same TLS checks as the agent's (slate-net).
pub fn status(
    server: &str,
    token_file: Option<&std::path::Path>,
    tls: (Option<&std::path::Path>, &[String]),
    as_json: bool,
) -> Result<ExitCode> {
    let admin = Admin::new(server, token_file, tls)?;
    let base = admin.base().to_string();
    let url = format!("{base}/v1/fleet/machines");
    let value = admin.call("/v1/fleet/machines", None)?;
    if as_json {
        // Pass the server's document through: fields this client does not
        // know stay visible to scripts.
        json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let list: MachinesResponse =
        serde_json::from_value(value).map_err(|e| anyhow!("{url}: the answer is not the machines list ({e})"))?;
    print!("{}", table(&list.machines, now()));
    if list.machines.is_empty() {
        eprintln!("no machine has contacted {base} yet");
    }
    for r in &list.rollouts {
        print!("{}", super::rollout::summary(r));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `base` (a URL) names this machine: 127.0.0.0/8, ::1, localhost.
fn is_loopback(base: &str) -> bool {
    let host = base.split("://").nth(1).unwrap_or(base).split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long ago `then` was, for people: `42s`, `5m`, `3h`, `12d`.
fn age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn short_id(id: &Option<String>) -> String {
    id.as_deref().map_or("-".into(), |s| s.chars().take(12).collect())
}

fn field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("-").to_string()
}

/// The MODE cell: how the machine runs, by its last report. A cached
/// machine shows how full its cache is until it can boot without a server
/// (`offline-ready`); a mode this client does not know is shown as sent.
fn mode(m: &MachineRow) -> String {
    match m.mode.as_deref() {
        None => "-".into(),
        Some("ab") => "a/b".into(),
        Some("cached") => {
            let bytes = |k: &str| m.cache.get(k).and_then(Value::as_u64);
            match (
                m.cache.get("complete").and_then(Value::as_bool),
                bytes("cached_bytes"),
                bytes("total_bytes"),
            ) {
                (Some(true), ..) => "offline-ready".into(),
                // Rounded down: 99.7% is not yet offline-ready.
                (_, Some(c), Some(t)) if t > 0 => format!("cached {}%", (c.min(t) as u128 * 100 / t as u128)),
                _ => "cached".into(),
            }
        }
        Some(other) => other.into(),
    }
}

/// The ROLLOUT cell: the machine's wave in its channel's rollout and how
/// it fares (`canary:fell-back`, `w1:updated`), once it reported on it.
fn rollout_cell(r: &Value) -> String {
    let Some(wave) = r.get("wave").and_then(Value::as_u64) else {
        return "-".into();
    };
    let wave = if wave == 0 {
        "canary".to_string()
    } else {
        format!("w{wave}")
    };
    let outcome = r.get("outcome").and_then(Value::as_str).unwrap_or("?");
    let excused = if r.get("excused").and_then(Value::as_bool) == Some(true) {
        " (excused)"
    } else {
        ""
    };
    format!("{wave}:{outcome}{excused}")
}

/// The table: one row per machine, columns padded to their widest cell.
fn table(machines: &[MachineRow], now: u64) -> String {
    let header = [
        "MACHINE",
        "HOSTNAME",
        "CHANNEL",
        "MODE",
        "CURRENT",
        "TARGET",
        "ACTIVE",
        "LAST-UPDATE",
        "BOOT",
        "WARNINGS",
        "ROLLOUT",
        "LAST-SEEN",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for m in machines {
        rows.push(vec![
            m.machine.clone(),
            m.hostname.clone().unwrap_or_else(|| "-".into()),
            m.channel.clone().unwrap_or_else(|| "-".into()),
            mode(m),
            short_id(&m.current),
            short_id(&m.target),
            m.active_slot.clone().unwrap_or_else(|| "-".into()),
            field(&m.last_update, "result"),
            field(&m.boot, "result"),
            match m.boot.get("warnings").and_then(Value::as_array).map_or(0, Vec::len) {
                0 => "-".into(),
                n => n.to_string(),
            },
            rollout_cell(&m.rollout),
            age(now, m.last_seen),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_column() {
        let row = |mode: Option<&str>, cache: Value| MachineRow {
            mode: mode.map(str::to_string),
            cache,
            ..Default::default()
        };
        let cache = |c: u64, t: u64, complete: bool| serde_json::json!({"cached_bytes": c, "total_bytes": t, "complete": complete});
        for (r, want) in [
            (row(None, Value::Null), "-"),
            (row(Some("ab"), Value::Null), "a/b"),
            (row(Some("diskless"), cache(5, 10, false)), "diskless"),
            (row(Some("live"), Value::Null), "live"),
            (row(Some("cached"), cache(42, 100, false)), "cached 42%"),
            (row(Some("cached"), cache(997, 1000, false)), "cached 99%"),
            (row(Some("cached"), cache(100, 100, true)), "offline-ready"),
            (row(Some("cached"), Value::Null), "cached"),
            (row(Some("cached"), cache(0, 0, false)), "cached"),
            (row(Some("zfs-boot"), Value::Null), "zfs-boot"),
        ] {
            assert_eq!(mode(&r), want, "{r:?}");
        }
    }

    #[test]
    fn ages_and_table() {
        assert_eq!(age(100, 58), "42s ago");
        assert_eq!(age(1000, 700), "5m ago");
        assert_eq!(age(20_000, 9_200), "3h ago");
        assert_eq!(age(10 * 86400, 0), "10d ago");
        assert_eq!(age(0, 50), "0s ago");
        let m = MachineRow {
            machine: "dmi:1".into(),
            hostname: Some("lab-07".into()),
            channel: Some("debian/bookworm/lab".into()),
            current: Some("a".repeat(64)),
            target: None,
            active_slot: Some("a".into()),
            last_update: serde_json::json!({"result": "ok"}),
            boot: serde_json::json!({"result": "good", "warnings": ["no DMI UUID", "no network interface"]}),
            last_seen: 90,
            ..Default::default()
        };
        let t = table(&[m], 100);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("MACHINE  HOSTNAME  CHANNEL"), "{t}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "dmi:1",
                "lab-07",
                "debian/bookworm/lab",
                "-",
                "aaaaaaaaaaaa",
                "-",
                "a",
                "ok",
                "good",
                "2",
                "-",
                "10s",
                "ago"
            ]
        );
    }
}
