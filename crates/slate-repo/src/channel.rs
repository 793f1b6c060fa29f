//! Channels: named, moving pointers to snapshots, with their history.
//!
//! A channel file is text: the line `slate-channel-v1`, then one snapshot
//! id per line, oldest first; the last line is the head.

use slate_core::SnapshotId;

use crate::error::{Error, Result};

const HEADER: &str = "slate-channel-v1";
/// Longest history a channel file may hold when read.
const MAX_HISTORY: usize = 1_000_000;

/// The storage key of the signed head of channel `name` that a mirror
/// keeps (`slate pull --fleet-trust`) and serves at `/v1/heads/NAME`.
pub fn head_key(name: &str) -> String {
    format!("heads/{name}")
}

/// Check a channel name: `/`-separated components of `[A-Za-z0-9._+-]`,
/// none empty or starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty() && !c.starts_with('.') && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a valid channel name (use components of letters, digits, '.', '_', '+', '-' separated by '/', e.g. debian/bookworm/lab)"
        )))
    }
}

/// Encode a history.
pub fn encode(history: &[SnapshotId]) -> String {
    let mut s = String::with_capacity(HEADER.len() + 1 + history.len() * 65);
    s.push_str(HEADER);
    s.push('\n');
    for id in history {
        s.push_str(&id.to_hex());
        s.push('\n');
    }
    s
}

/// Decode an untrusted channel file.
pub fn decode(name: &str, data: &[u8]) -> Result<Vec<SnapshotId>> {
    let bad = |d: &str| Error::Invalid(format!("channel {name} is corrupt: {d}"));
    let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad("missing slate-channel-v1 header"));
    }
    let mut out = Vec::new();
    for l in lines {
        if out.len() >= MAX_HISTORY {
            return Err(bad("history too long"));
        }
        out.push(SnapshotId::from_hex(l.trim()).ok_or_else(|| bad("a line is not a snapshot id"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_round_trip() {
        for good in ["a", "debian/bookworm/lab", "x-1.2_3+4"] {
            check_name(good).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "../x", ".hidden", "a b", "a/./b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let h = vec![SnapshotId::of(b"1"), SnapshotId::of(b"2")];
        assert_eq!(decode("c", encode(&h).as_bytes()).unwrap(), h);
        assert!(decode("c", b"nope\n").is_err());
    }
}
