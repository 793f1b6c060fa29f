//! Building the dashboard's HTML by hand, safely: every string that is not
//! a literal of this crate goes through [`esc`] (text and attribute values
//! alike), because most of what the pages show is what machines reported
//! (hostnames, labels, messages), and a machine may be hostile.

use std::fmt::Write;

/// `s` escaped for HTML text and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business on a page; show them.
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query string value or a path segment: all but
/// unreserved characters, so the result needs no further escaping in an
/// attribute either.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The first 12 hex digits of a snapshot id (what `slate fleet status`
/// shows), the whole id in a `title`; `-` for none.
pub fn short_id(id: Option<&str>) -> String {
    match id {
        None => "<span class=\"none\">-</span>".into(),
        Some(id) => format!("<code title=\"{}\">{}</code>", esc(id), esc(id.get(..12).unwrap_or(id))),
    }
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic
/// Gregorian calendar (the usual era-based conversion).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let secs = secs as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// How long ago `then` was, shortly (`42s ago`, `3m ago`, `5h ago`, `2d ago`).
pub fn ago(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A time as `<time>`: relative text, the UTC time as its title.
pub fn time(then: u64, now: u64) -> String {
    let u = utc(then);
    format!(
        "<time datetime=\"{}\" title=\"{}\">{}</time>",
        esc(&u),
        esc(&u),
        ago(then, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_inert() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"\u{7}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\u{7}"
        );
        assert_eq!(url("a b/&\"<é"), "a%20b%2F%26%22%3C%C3%A9");
        assert_eq!(url("mac:aa-b.c_~"), "mac%3Aaa-b.c_~");
    }

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_601_600), "2026-12-07 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(ago(100, 142), "42s ago");
        assert_eq!(ago(0, 7200), "2h ago");
        assert_eq!(ago(0, 3 * 86_400), "3d ago");
    }
}
