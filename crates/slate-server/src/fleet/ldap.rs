//! The fleet's machines and groups from an LDAP directory: FLEET.toml's
//! `[ldap]` (docs/operations.md, "The directory in LDAP").
//!
//! Sites that keep an inventory of their machines in LDAP should not have
//! to copy it into FLEET.toml. A reader task ([`watch`]) searches the
//! directory at startup and every `refresh`, turns its entries into machine
//! rules (a machine's own `slateChannel`, else that of the `groupOfNames`
//! it is a member of) and puts them into the fleet rules in use, after the
//! file's `[[machine]]` rules and before `[default]`
//! ([`super::config::FleetConfig::choose`]).
//!
//! The directory is input from elsewhere, checked like the file: MACs,
//! UUIDs, host names and channel names must have their syntax, or the
//! entry is skipped with a warning naming its DN; nothing in it stops the
//! server. A directory that cannot be read keeps the last good set in use
//! and costs one log line per attempt. Until the first good read, machines
//! the file does not name get 503 rather than `[default]`, so that a
//! server restarted while the directory is down never moves a machine to
//! the default channel.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;

#[cfg(test)]
use super::config::FleetConfig;
use super::config::Rule;
use crate::changes::Changes;
use crate::metrics::Metrics;

/// Default `refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest `refresh`.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest one read (connect, bind, both searches) may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries per page of a search (the Paged Results control): directory
/// servers limit the entries of one answer (slapd: 500 by default).
pub const PAGE_SIZE: i32 = 400;
/// Longest rule label (`ldap DN`).
const MAX_LABEL: usize = 200;

/// `[ldap]` as written in FLEET.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdap {
    url: Url,
    base: String,
    filter: Option<String>,
    groups_base: Option<String>,
    groups_filter: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<String>,
    starttls: Option<bool>,
    refresh: Option<Refresh>,
    attributes: Option<RawAttributes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttributes {
    mac: Option<AttrName>,
    dmi_uuid: Option<AttrName>,
    hostname: Option<AttrName>,
    channel: Option<AttrName>,
    member: Option<AttrName>,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Url(String);

impl TryFrom<String> for Url {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s.strip_prefix("ldap://").or_else(|| s.strip_prefix("ldaps://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) || s.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "url {s:?} is not an ldap:// or ldaps:// URL (e.g. ldap://ldap.example.org)"
            ));
        }
        Ok(Url(s))
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Refresh(Duration);

impl TryFrom<String> for Refresh {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("refresh {s:?} is not a duration of at least 1s (e.g. 30s, 5m, 1h)");
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "" | "s" => n,
            "m" => n.saturating_mul(60),
            "h" => n.saturating_mul(3600),
            _ => return Err(bad()),
        };
        let d = Duration::from_secs(secs);
        if d < MIN_REFRESH {
            return Err(bad());
        }
        Ok(Refresh(d))
    }
}

/// An attribute name (`macAddress`), or `""` for "do not match on this".
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct AttrName(String);

impl TryFrom<String> for AttrName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.is_empty()
            || (s.len() <= 64
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !ok {
            return Err(format!("{s:?} is not an LDAP attribute name (e.g. macAddress)"));
        }
        Ok(AttrName(s))
    }
}

/// Which attributes say what (docs/operations.md has the defaults' reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// MAC addresses (multi-valued); `None`: not matched on.
    pub mac: Option<String>,
    /// The SMBIOS UUID; `None`: not matched on.
    pub dmi_uuid: Option<String>,
    /// The host name; `None`: not matched on.
    pub hostname: Option<String>,
    /// The channel, on machines and on groups.
    pub channel: String,
    /// A group's members (DNs).
    pub member: String,
}

/// `[ldap]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSettings {
    /// `ldap://HOST[:PORT]` or `ldaps://...`.
    pub url: String,
    /// Where machine entries are searched (subtree).
    pub base: String,
    /// Which entries below `base` are machines.
    pub filter: String,
    /// Where groups are searched; `None`: no groups.
    pub groups_base: Option<String>,
    /// Which entries below `groups_base` are groups.
    pub groups_filter: String,
    /// Simple bind as this DN; `None`: anonymous.
    pub bind_dn: Option<String>,
    /// The bind password's file (relative paths are made relative to
    /// FLEET.toml when it is loaded); read at each refresh.
    pub password_file: Option<PathBuf>,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// How often the directory is read again.
    pub refresh: Duration,
    /// The attribute mapping.
    pub attributes: Attributes,
}

impl RawLdap {
    /// Check what one field's syntax cannot say alone.
    pub fn check(self) -> Result<LdapSettings, String> {
        let nonempty = |what: &str, v: &str| {
            if v.trim().is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(format!(
                    "[ldap] {what} must be 1 to 1024 characters without control characters"
                ));
            }
            Ok(())
        };
        nonempty("base", &self.base)?;
        let filter = self.filter.unwrap_or_else(|| "(objectClass=device)".into());
        let groups_filter = self
            .groups_filter
            .unwrap_or_else(|| "(objectClass=groupOfNames)".into());
        for (what, f) in [("filter", &filter), ("groups_filter", &groups_filter)] {
            nonempty(what, f)?;
            if !(f.starts_with('(') && f.ends_with(')')) {
                return Err(format!(
                    "[ldap] {what} {f:?} is not an LDAP filter (e.g. \"(objectClass=device)\")"
                ));
            }
        }
        if let Some(g) = &self.groups_base {
            nonempty("groups_base", g)?;
        }
        if self.bind_dn.is_some() != self.password_file.is_some() {
            return Err("[ldap] bind_dn and password_file go together (leave both out for an anonymous bind)".into());
        }
        if let Some(d) = &self.bind_dn {
            nonempty("bind_dn", d)?;
        }
        let starttls = self.starttls.unwrap_or(false);
        if starttls && self.url.0.starts_with("ldaps://") {
            return Err("[ldap] starttls is for ldap:// URLs; ldaps:// is TLS already".into());
        }
        let a = self.attributes.unwrap_or(RawAttributes {
            mac: None,
            dmi_uuid: None,
            hostname: None,
            channel: None,
            member: None,
        });
        let opt = |v: Option<AttrName>, default: &str| match v {
            None => Some(default.to_string()),
            Some(AttrName(s)) if s.is_empty() => None,
            Some(AttrName(s)) => Some(s),
        };
        let attributes = Attributes {
            mac: opt(a.mac, "macAddress"),
            dmi_uuid: opt(a.dmi_uuid, "slateDmiUuid"),
            hostname: opt(a.hostname, "cn"),
            channel: opt(a.channel, "slateChannel")
                .ok_or("[ldap] attributes.channel cannot be empty: it says which channel a machine runs")?,
            member: opt(a.member, "member").ok_or("[ldap] attributes.member cannot be empty")?,
        };
        if attributes.mac.is_none() && attributes.dmi_uuid.is_none() && attributes.hostname.is_none() {
            return Err("[ldap] attributes: at least one of mac, dmi_uuid, hostname must name an attribute".into());
        }
        Ok(LdapSettings {
            url: self.url.0,
            base: self.base,
            filter,
            groups_base: self.groups_base,
            groups_filter,
            bind_dn: self.bind_dn,
            password_file: self.password_file.map(PathBuf::from),
            starttls,
            refresh: self.refresh.map_or(DEFAULT_REFRESH, |r| r.0),
            attributes,
        })
    }
}

/// What one good read of the directory gave.
#[derive(Debug, Default)]
pub struct Directory {
    /// Machine rules, in DN order (an entry gives one rule per identifier).
    pub rules: Vec<Rule>,
    /// Machine entries that gave rules.
    pub machines: usize,
    /// Why entries were skipped, each naming the DN.
    pub skipped: Vec<String>,
    /// Compares two reads: rules (label, matcher, channel) and skips.
    fingerprint: u64,
}

/// A DN as compared with a group's `member` values: lower case, without
/// spaces around `,` and `=` (the common differences in writing one DN).
fn norm_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for part in dn.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push_str(&k.trim().to_ascii_lowercase());
        out.push('=');
        out.push_str(&v.trim().to_ascii_lowercase());
    }
    out
}

/// The values of attribute `name` of `e` (attribute names are case-insensitive).
fn values<'e>(e: &'e SearchEntry, name: &str) -> &'e [String] {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}

/// At most one value of `name`; an error when several.
fn single<'e>(e: &'e SearchEntry, name: &str) -> Result<Option<&'e str>, String> {
    match values(e, name) {
        [] => Ok(None),
        [one] => Ok(Some(one.trim())),
        many => Err(format!("has {} values of {name}, not one", many.len())),
    }
}

/// One search, all pages, entries only.
async fn search(
    ldap: &mut ldap3::Ldap,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
) -> Result<Vec<SearchEntry>, String> {
    let adapters: Vec<Box<dyn Adapter<_, _>>> =
        vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(PAGE_SIZE))];
    let mut s = ldap
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attrs)
        .await
        .map_err(|e| format!("search of {base} failed: {e}"))?;
    let mut out = Vec::new();
    while let Some(e) = s.next().await.map_err(|e| format!("search of {base} failed: {e}"))? {
        out.push(SearchEntry::construct(e));
    }
    s.finish()
        .await
        .success()
        .map_err(|e| format!("search of {base} failed: {e}"))?;
    Ok(out)
}

/// Read the directory once: connect, bind, search groups and machines.
pub async fn read(s: &LdapSettings) -> Result<Directory, String> {
    match tokio::time::timeout(READ_TIMEOUT, read_inner(s)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
    }
}

async fn read_inner(s: &LdapSettings) -> Result<Directory, String> {
    let settings = LdapConnSettings::new()
        .set_conn_timeout(READ_TIMEOUT)
        .set_starttls(s.starttls);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &s.url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    ldap3::drive!(conn);
    if let (Some(dn), Some(file)) = (&s.bind_dn, &s.password_file) {
        let pw = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        let pw = pw.trim_end_matches(['\n', '\r']);
        ldap.simple_bind(dn, pw)
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("cannot bind as {dn}: {e}"))?;
    }
    let a = &s.attributes;
    let mut skipped = Vec::new();
    // Member DN -> (group DN, channel), from every group with a channel.
    let mut groups: HashMap<String, Vec<(String, String)>> = HashMap::new();
    if let Some(gb) = &s.groups_base {
        let mut entries = search(
            &mut ldap,
            gb,
            &s.groups_filter,
            vec![a.channel.clone(), a.member.clone()],
        )
        .await?;
        entries.sort_by(|x, y| x.dn.cmp(&y.dn));
        for g in entries {
            let channel = match single(&g, &a.channel) {
                Ok(Some(c)) => c.to_string(),
                // A group without a channel assigns nothing: not an error.
                Ok(None) => continue,
                Err(e) => {
                    skipped.push(format!("group {}: {e}", g.dn));
                    continue;
                }
            };
            if let Err(e) = slate_repo::channel::check_name(&channel) {
                skipped.push(format!("group {}: {}: {e}", g.dn, a.channel));
                continue;
            }
            for m in values(&g, &a.member) {
                groups
                    .entry(norm_dn(m))
                    .or_default()
                    .push((g.dn.clone(), channel.clone()));
            }
        }
    }
    let wanted: Vec<String> = [&a.mac, &a.dmi_uuid, &a.hostname]
        .into_iter()
        .flatten()
        .cloned()
        .chain([a.channel.clone()])
        .collect();
    let mut entries = search(&mut ldap, &s.base, &s.filter, wanted).await?;
    // Best effort: the answer is in hand.
    let _ = ldap.unbind().await;
    entries.sort_by(|x, y| x.dn.cmp(&y.dn));
    let mut dir = Directory::default();
    for e in &entries {
        match entry_rules(e, a, groups.get(&norm_dn(&e.dn)).map(Vec::as_slice).unwrap_or(&[])) {
            Ok(rules) if rules.is_empty() => {}
            Ok(rules) => {
                dir.machines += 1;
                dir.rules.extend(rules);
            }
            Err(why) => skipped.push(format!("machine {}: {why}", e.dn)),
        }
    }
    dir.skipped = skipped;
    let mut h = DefaultHasher::new();
    for r in &dir.rules {
        (&r.label, format!("{:?}", r.target), r.matchers()).hash(&mut h);
    }
    dir.skipped.hash(&mut h);
    dir.fingerprint = h.finish();
    Ok(dir)
}

/// The rules of one machine entry: none when it has no channel (its own
/// or a group's), one per identifier otherwise; an error skips the entry.
fn entry_rules(e: &SearchEntry, a: &Attributes, groups: &[(String, String)]) -> Result<Vec<Rule>, String> {
    let own = single(e, &a.channel)?;
    let channel = match own {
        Some(c) => c.to_string(),
        None => {
            let distinct: BTreeMap<&str, &str> = groups.iter().map(|(g, c)| (c.as_str(), g.as_str())).collect();
            match distinct.len() {
                0 => return Ok(Vec::new()),
                1 => groups[0].1.clone(),
                _ => {
                    let list: Vec<String> = distinct.iter().map(|(c, g)| format!("{g} ({c})")).collect();
                    return Err(format!(
                        "is a member of groups with different channels: {}; give the machine its own {}",
                        list.join(", "),
                        a.channel
                    ));
                }
            }
        }
    };
    let mut label = format!("ldap {}", e.dn);
    if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
        label = label.chars().filter(|c| !c.is_control()).take(MAX_LABEL).collect();
    }
    let bad = |what: &str, err: String| format!("{what}: {err}");
    let mut rules = Vec::new();
    if let Some(attr) = &a.mac {
        for m in values(e, attr) {
            rules.push(Rule::from_directory(&label, Some(m.trim()), None, None, &channel).map_err(|x| bad(attr, x))?);
        }
    }
    if let Some(attr) = &a.dmi_uuid {
        if let Some(u) = single(e, attr)? {
            rules.push(Rule::from_directory(&label, None, Some(u), None, &channel).map_err(|x| bad(attr, x))?);
        }
    }
    if let Some(attr) = &a.hostname {
        // `cn` may hold several names; the first is the entry's own.
        if let Some(h) = values(e, attr).first() {
            rules.push(Rule::from_directory(&label, None, None, Some(h.trim()), &channel).map_err(|x| bad(attr, x))?);
        }
    }
    if rules.is_empty() {
        let names: Vec<&str> = [&a.mac, &a.dmi_uuid, &a.hostname]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        return Err(format!("has none of {} to match a machine by", names.join(", ")));
    }
    Ok(rules)
}

fn unix_now() -> i64 {
    crate::fleet::api::now() as i64
}

/// Read the directory of the `[ldap]` in use at once and every `refresh`
/// (and at once when the fleet file's `[ldap]` changes), until `changes`
/// closes. Must be called within a tokio runtime.
pub fn watch(changes: &Arc<Changes>, metrics: Arc<Metrics>) {
    tokio::spawn(reader(Arc::downgrade(changes), metrics));
}

async fn reader(changes: Weak<Changes>, metrics: Arc<Metrics>) {
    // The settings of the last read and when it was tried.
    let mut last: Option<(LdapSettings, Instant)> = None;
    let mut fingerprint = None;
    loop {
        let settings = {
            let Some(ch) = changes.upgrade() else { return };
            if ch.is_closing() {
                return;
            }
            ch.fleet().ldap.clone()
        };
        let due = match (&settings, &last) {
            (None, _) => false,
            (Some(s), Some((ls, at))) => s != ls || at.elapsed() >= s.refresh,
            (Some(_), None) => true,
        };
        let Some(s) = settings.filter(|_| due) else {
            // Looked at every second, so a changed [ldap] is read at once.
            tokio::time::sleep(MIN_REFRESH).await;
            continue;
        };
        if last.as_ref().is_none_or(|(ls, _)| *ls != s) {
            fingerprint = None;
        }
        last = Some((s.clone(), Instant::now()));
        match read(&s).await {
            Ok(dir) => {
                metrics.directory.machines.set(dir.machines as i64);
                metrics.directory.skipped.set(dir.skipped.len() as i64);
                metrics.directory.last_success.set(unix_now());
                let Some(ch) = changes.upgrade() else { return };
                if fingerprint == Some(dir.fingerprint) && ch.fleet().directory.is_some() {
                    continue;
                }
                // Said once per change of the directory, not at every read.
                for w in &dir.skipped {
                    tracing::warn!("fleet directory {}: skipped {w}", s.url);
                }
                tracing::warn!(
                    "fleet directory {}: using {} machine rules from {} entries ({} skipped)",
                    s.url,
                    dir.rules.len(),
                    dir.machines,
                    dir.skipped.len()
                );
                fingerprint = Some(dir.fingerprint);
                let dir = Arc::new(dir);
                ch.update_fleet(|f| {
                    let mut f = f.clone();
                    // Settings changed during the read: the next read is due at once.
                    if f.ldap.as_ref() == Some(&s) {
                        f.directory = Some(dir);
                    }
                    f
                });
            }
            Err(e) => {
                metrics.directory.failures.inc();
                tracing::warn!(
                    "cannot read the fleet directory {}: {e}; keeping the machine rules of the last good read",
                    s.url
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ldap: &str) -> Result<FleetConfig, String> {
        FleetConfig::parse(&format!("[default]\nchannel = \"x\"\n\n[ldap]\n{ldap}"), "F.toml")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_and_their_defaults() {
        let c = parse("url = \"ldap://127.0.0.1:3890\"\nbase = \"ou=machines,dc=example,dc=org\"\n").unwrap();
        let l = c.ldap.unwrap();
        assert_eq!(l.filter, "(objectClass=device)");
        assert_eq!(l.groups_base, None);
        assert_eq!(l.refresh, DEFAULT_REFRESH);
        assert_eq!(l.attributes.mac.as_deref(), Some("macAddress"));
        assert_eq!(l.attributes.dmi_uuid.as_deref(), Some("slateDmiUuid"));
        assert_eq!(l.attributes.hostname.as_deref(), Some("cn"));
        assert_eq!(l.attributes.channel, "slateChannel");
        let c = parse(
            "url = \"ldaps://ldap\"\nbase = \"o=x\"\nrefresh = \"90s\"\nbind_dn = \"cn=r,o=x\"\npassword_file = \"pw\"\n\
             [ldap.attributes]\nhostname = \"\"\ndmi_uuid = \"serialNumber\"\n",
        )
        .unwrap();
        let l = c.ldap.unwrap();
        assert_eq!(l.refresh, Duration::from_secs(90));
        assert_eq!(l.attributes.hostname, None);
        assert_eq!(l.attributes.dmi_uuid.as_deref(), Some("serialNumber"));
    }

    #[test]
    fn bad_settings_name_the_line() {
        for (ldap, line, needle) in [
            (
                "url = \"http://x\"\nbase = \"o=x\"\n",
                5,
                "not an ldap:// or ldaps:// URL",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nrefresh = \"0s\"\n",
                7,
                "at least 1s",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nrefresh = \"5 minutes\"\n",
                7,
                "not a duration",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nbind_dn = \"cn=a\"\n",
                4,
                "go together",
            ),
            ("url = \"ldap://x\"\nbase = \"\"\n", 4, "base must be"),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nfilter = \"objectClass=device\"\n",
                4,
                "not an LDAP filter",
            ),
            (
                "url = \"ldaps://x\"\nbase = \"o=x\"\nstarttls = true\n",
                4,
                "ldaps:// is TLS already",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nuri = \"y\"\n",
                7,
                "unknown field `uri`",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\n[ldap.attributes]\nmac = \"mac address\"\n",
                8,
                "not an LDAP attribute name",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\n[ldap.attributes]\nmac = \"\"\ndmi_uuid = \"\"\nhostname = \"\"\n",
                4,
                "at least one of",
            ),
        ] {
            let e = parse(ldap).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with(&format!("F.toml: line {line}, ")), "{ldap:?}: {e}");
            assert!(e.contains(needle), "{ldap:?}: {e}");
        }
    }

    #[test]
    fn dns_compare_loosely() {
        assert_eq!(
            norm_dn("CN=Lab-01, ou=Machines,dc=example, dc=org"),
            "cn=lab-01,ou=machines,dc=example,dc=org"
        );
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn entries_become_rules_or_are_skipped() {
        let a = parse("url = \"ldap://x\"\nbase = \"o=x\"\n")
            .unwrap()
            .ldap
            .unwrap()
            .attributes;
        let g = [("cn=lab,o=x".to_string(), "lab".to_string())];
        let e = entry(
            "cn=lab-01,o=x",
            &[
                ("cn", &["lab-01"]),
                ("macAddress", &["52:54:00:00:00:01", "52-54-00-00-00-02"]),
            ],
        );
        let rules = entry_rules(&e, &a, &g).unwrap();
        assert_eq!(rules.len(), 3);
        assert!(rules
            .iter()
            .all(|r| r.target.channel == "lab" && r.label == "ldap cn=lab-01,o=x"));
        // Its own channel wins over the group's.
        let own = entry(
            "cn=a,o=x",
            &[
                ("slateDmiUuid", &["4C4C4544-0042-3510-8052-B7C04F4E3132"]),
                ("SLATECHANNEL", &["other"]),
            ],
        );
        let rules = entry_rules(&own, &a, &g).unwrap();
        assert_eq!((rules.len(), rules[0].target.channel.as_str()), (1, "other"));
        // No channel: no rule, no complaint.
        assert!(entry_rules(&e, &a, &[]).unwrap().is_empty());
        for (e, g, needle) in [
            (
                entry("cn=b,o=x", &[("macAddress", &["zz:zz"])]),
                &g[..],
                "not a MAC address",
            ),
            (entry("cn=b,o=x", &[("cn", &["lab 01"])]), &g[..], "not a host name"),
            (
                entry("cn=b,o=x", &[("cn", &["b"]), ("slateChannel", &["../x"])]),
                &[][..],
                "not a valid channel",
            ),
            (
                entry("cn=b,o=x", &[("cn", &["b"]), ("slateChannel", &["a", "b"])]),
                &[][..],
                "2 values",
            ),
            (
                entry("cn=b,o=x", &[("description", &["b"])]),
                &g[..],
                "has none of macAddress, slateDmiUuid, cn",
            ),
        ] {
            let err = entry_rules(&e, &a, g).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let two = [g[0].clone(), ("cn=kiosk,o=x".into(), "kiosk".into())];
        let err = entry_rules(&e, &a, &two).unwrap_err();
        assert!(
            err.contains("different channels") && err.contains("cn=kiosk,o=x (kiosk)"),
            "{err}"
        );
    }
}
