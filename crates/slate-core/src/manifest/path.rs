//! Path rules for manifest entries, enforced on every decoded manifest so
//! that no entry can name anything outside the tree it belongs to.

use std::cmp::Ordering;

/// Longest path the format accepts (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest single name (Linux's NAME_MAX).
pub const MAX_NAME: usize = 255;

/// Why a path is not acceptable in a manifest.
pub fn check(path: &[u8]) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.len() > MAX_PATH {
        return Err(format!("path is {} bytes long", path.len()));
    }
    for name in path.split(|&b| b == b'/') {
        if name.is_empty() {
            return Err("path has an empty component (leading, trailing or double '/')".into());
        }
        if name == b"." || name == b".." {
            return Err("path has a '.' or '..' component".into());
        }
        if name.len() > MAX_NAME {
            return Err(format!("a name is {} bytes long", name.len()));
        }
        if name.contains(&0) {
            return Err("path contains a NUL byte".into());
        }
    }
    Ok(())
}

/// The parent of a non-root path ("" for a top-level name).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// The last component of a non-root path.
pub fn name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Depth-first order with each directory's names sorted as bytes: compare
/// component by component, a parent before its children.
pub fn cmp_tree_order(a: &[u8], b: &[u8]) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len()).then(Ordering::Equal);
    }
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Render a raw path for people: lossy UTF-8, control bytes escaped.
pub fn display(path: &[u8]) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let s = String::from_utf8_lossy(path);
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in [&b"../x"[..], b"a/../b", b"/etc", b"a//b", b"a/", b".", b"a\0b"] {
            assert!(check(bad).is_err(), "{:?}", bad);
        }
        assert!(check(b"a/b\nc/\xff").is_ok());
        assert!(check(&[b'x'; 256]).is_err());
    }

    #[test]
    fn tree_order_is_depth_first() {
        let mut v: Vec<&[u8]> = vec![b"a.b", b"a/b", b"a", b"", b"b", b"a/b/c"];
        v.sort_by(|x, y| cmp_tree_order(x, y));
        assert_eq!(v, vec![&b""[..], b"a", b"a/b", b"a/b/c", b"a.b", b"b"]);
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(name(b"a/b/c"), b"c");
    }
}
