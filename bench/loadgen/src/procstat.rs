//! CPU time and memory of the processes under test, from /proc: the
//! server (`--server-pid`) and optionally the database (`--db-pid`, the
//! PostgreSQL postmaster, counted with its children: each connection is a
//! backend process of its own).

use std::time::Duration;

/// Linux reports CPU times in /proc in USER_HZ ticks, which the kernel
/// fixes at 100 for user space on every architecture slate runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Fields of /proc/PID/stat after the command name: (ppid, utime + stime
/// in ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(0) ppid(1) ... utime(11) stime(12).
    Some((
        f.get(1)?.parse().ok()?,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

/// CPU time of `pid`, plus that of its live children with `children`.
pub fn cpu(pid: u32, children: bool) -> Option<Duration> {
    let mut ticks = stat(pid)?.1;
    if children {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t)) = stat(child) {
                if ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    Some(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND))
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let me = std::process::id();
        // Burn a little CPU so the count cannot be stuck at zero by chance.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(cpu(me, false).unwrap() > Duration::ZERO);
        let rss = status_kb(me, "VmRSS").unwrap();
        assert!(rss > 100 * 1024, "{rss}");
        assert!(status_kb(me, "VmHWM").unwrap() >= rss);
        assert_eq!(status_kb(me, "NoSuchField"), None);
    }
}
