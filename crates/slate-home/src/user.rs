//! Whose home a command is about when nothing says so: the process's user
//! id, named by the password database. Read from the passwd file directly
//! (no NSS), which is what a slate machine has: its users come with the
//! image or from `slate state`.

use std::path::Path;

/// The real user id of this process.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The name of `uid` in the passwd file at `passwd` (`name:x:uid:...`),
/// the first line that has it.
pub fn name_of_uid(uid: u32, passwd: &Path) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.trim().parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_passwd_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        std::fs::write(
            &p,
            "# comment\nroot:x:0:0:root:/root:/bin/bash\nbroken\n:x:5:5::/:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\nalias:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(name_of_uid(0, &p).as_deref(), Some("root"));
        assert_eq!(name_of_uid(1000, &p).as_deref(), Some("alice"));
        assert_eq!(name_of_uid(5, &p), None);
        assert_eq!(name_of_uid(42, &p), None);
        assert_eq!(name_of_uid(0, &d.path().join("absent")), None);
    }
}
