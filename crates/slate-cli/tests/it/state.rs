//! `slate state`: policies, the read-only root with its declared mounts on
//! a checked-out Debian tree (as root, each "boot" in a private mount
//! namespace of its own, so nothing leaks and everything is unmounted when
//! it ends), and drift audits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{corpus, is_root, s, scratch, slate, slate_bin, slate_err, slate_ok, Server};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lab_policy() -> PathBuf {
    repo_root().join("dist/state/lab.toml")
}

/// Run `script` with `sh -eu` in a new private mount namespace: one boot
/// of the machine. `$SLATE` is the binary; `vars` are exported.
fn boot(script: &str, vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-euc", script])
        .env("SLATE", slate_bin())
        .env_remove("SLATE_REPO")
        .env_remove("SLATE_AGENT_CONFIG");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run unshare")
}

fn boot_ok(script: &str, vars: &[(&str, &str)]) -> String {
    let out = boot(script, vars);
    assert!(
        out.status.success(),
        "boot script failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_malformed_policy_is_one_error_naming_file_and_line() {
    let t = scratch();
    let p = t.path().join("state.toml");
    std::fs::write(
        &p,
        "version = 1\n\n[[path]]\npath = \"/var/log\"\nstate = \"ram\"\nseed = \"some\"\n",
    )
    .unwrap();
    let err = slate_err(&["state", "show", "--root", s(t.path()), "--policy", s(&p)]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{} line 6", p.display())), "{err}");
    assert!(err.contains("unknown variant `some`"), "{err}");

    std::fs::write(
        &p,
        "[[path]]\npath = \"/etc\"\nstate = \"server\"\n\n[[path]]\npath = \"/etc/ssh\"\nstate = \"local\"\n",
    )
    .unwrap();
    let err = slate_err(&["state", "show", "--root", s(t.path()), "--policy", s(&p)]);
    assert!(err.contains("line 6") && err.contains("kept as one unit"), "{err}");

    // No policy at all.
    let err = slate_err(&["state", "show", "--root", s(t.path())]);
    assert!(err.contains("etc/slate/state.toml does not exist"), "{err}");
}

#[test]
fn shipped_policies_parse_and_expose_backup_paths() {
    let t = scratch();
    for name in ["lab", "laptop"] {
        let p = repo_root().join(format!("dist/state/{name}.toml"));
        let out = slate_ok(&["state", "show", "--root", s(t.path()), "--policy", s(&p)]);
        assert!(out.contains("/etc/machine-id") && out.contains("dynamic"), "{out}");
    }
    let p = repo_root().join("dist/state/laptop.toml");
    let backup = slate_ok(&["state", "show", "--backup", "--root", s(t.path()), "--policy", s(&p)]);
    assert_eq!(backup, "/home\n/root\n");
}

#[test]
fn rwtab_and_statetab_are_read_from_the_image() {
    let t = scratch();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc/rwtab.d")).unwrap();
    std::fs::write(root.join("etc/rwtab"), "dirs /var/cache/man\nempty /tmp\n").unwrap();
    std::fs::write(root.join("etc/rwtab.d/dhcp"), "files /var/lib/dhcp\n").unwrap();
    std::fs::write(root.join("etc/statetab"), "# persistent\n/var/lib/dbus\n").unwrap();
    let p = t.path().join("state.toml");
    std::fs::write(
        &p,
        "rwtab = [\"/etc/rwtab\", \"/etc/rwtab.d\"]\nstatetab = [\"/etc/statetab\"]\n[[path]]\npath = \"/tmp\"\nstate = \"ram\"\nsize = \"1G\"\n",
    )
    .unwrap();
    let out = slate_ok(&["state", "show", "--json", "--root", s(&root), "--policy", s(&p)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: Vec<(String, String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
                e["seed"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("/tmp", "ram", "all"), // the policy's own declaration wins over rwtab's
        ("/var/cache/man", "ram", "dirs"),
        ("/var/lib/dbus", "local", "all"),
        ("/var/lib/dhcp", "ram", "all"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
    // A bare rwtab file works as the policy too.
    let out = slate_ok(&[
        "state",
        "show",
        "--root",
        s(&root),
        "--policy",
        s(&root.join("etc/rwtab")),
    ]);
    assert!(out.contains("/var/cache/man"), "{out}");
}

/// A repository with the v3 Debian tree committed, and a checkout of it.
struct Machine {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    root: PathBuf,
    snapshot: String,
}

impl Machine {
    /// `slate state audit` of the checkout against its snapshot.
    fn audit(&self, policy: &Path, json: bool) -> Output {
        let mut args = vec!["state", "audit"];
        if json {
            args.push("--json");
        }
        args.extend([
            "--root",
            s(&self.root),
            "--repo",
            s(&self.repo),
            "--policy",
            s(policy),
            &self.snapshot,
        ]);
        slate(&args)
    }
}

fn debian_machine() -> Option<Machine> {
    if !is_root() {
        crate::support::skip("needs root (mounts)");
        return None;
    }
    let Some(corpus) = corpus() else {
        crate::support::skip("no Debian corpus (make corpus)");
        return None;
    };
    let t = scratch();
    let dir = t.path().to_path_buf();
    let repo = dir.join("repo");
    let root = dir.join("root");
    slate_ok(&["init", "--repo", s(&repo)]);
    let snapshot = slate_ok(&["commit", "--repo", s(&repo), "--channel", "lab", s(&corpus.join("v3"))])
        .trim()
        .to_string();
    slate_ok(&["checkout", "--repo", s(&repo), &snapshot, s(&root)]);
    Some(Machine {
        _dir: t,
        dir,
        repo,
        root,
        snapshot,
    })
}

/// The lab policy plus a command generator whose output the test knows.
fn test_policy(m: &Machine) -> PathBuf {
    let p = m.dir.join("state.toml");
    let mut text = std::fs::read_to_string(lab_policy()).unwrap();
    text.push_str(
        "\n[[path]]\npath = \"/etc/motd\"\nstate = \"dynamic\"\ncommand = [\"sh\", \"-c\", \"echo made for $SLATE_PATH\"]\nmode = \"0640\"\nowner = \"root\"\ngroup = \"adm\"\n\
         \n[[path]]\npath = \"/opt\"\nstate = \"backup\"\n",
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn apply_makes_a_debian_root_read_only_with_its_declared_state() {
    let Some(m) = debian_machine() else { return };
    let policy = test_policy(&m);
    let state = m.dir.join("state");
    let vars = [("ROOT", s(&m.root)), ("POLICY", s(&policy)), ("STATE", s(&state))];

    // Audit a clean checkout first: nothing to report.
    let out = m.audit(&policy, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    // First boot.
    let first = boot_ok(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --state-dir "$STATE" >/dev/null
        for p in etc/x usr/bin/x var/lib/x x; do
            if touch "$ROOT/$p" 2>"$STATE/../err"; then echo "WRITABLE $p"; else grep -q "Read-only file system" "$STATE/../err" && echo "EROFS $p"; fi
        done
        echo ram > "$ROOT/var/log/ram-marker"
        echo home > "$ROOT/home/home-marker"
        echo kept > "$ROOT/var/lib/systemd/local-marker"
        echo saved > "$ROOT/opt/backup-marker"
        echo "machine-id $(cat "$ROOT/etc/machine-id")"
        echo "hostname $(cat "$ROOT/etc/hostname")"
        echo "motd $(cat "$ROOT/etc/motd") $(stat -c '%a %U %G' "$ROOT/etc/motd")"
        echo "dhcp $(ls -A "$ROOT/var/lib/dhcp" | wc -l) $(stat -c %a "$ROOT/var/lib/dhcp")"
        echo "logdirs $(find "$ROOT/var/log" -type d | wc -l) files $(find "$ROOT/var/log" -type f | wc -l)"
        grep " $ROOT" /proc/self/mountinfo | cut -d' ' -f5,9 | sort > "$STATE/../mounts-1"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --state-dir "$STATE" > "$STATE/../second"
        echo "second-changed $(grep -vc 'already' "$STATE/../second" || true)"
        grep " $ROOT" /proc/self/mountinfo | cut -d' ' -f5,9 | sort > "$STATE/../mounts-2"
        "#,
        &vars,
    );
    for p in ["etc/x", "usr/bin/x", "var/lib/x", "x"] {
        assert!(first.contains(&format!("EROFS {p}\n")), "{p}: {first}");
    }
    let field = |out: &str, key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    let machine_id = field(&first, "machine-id");
    assert_eq!(machine_id.len(), 32, "{machine_id}");
    assert!(machine_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let image_id = std::fs::read_to_string(m.root.join("etc/machine-id")).unwrap();
    assert_ne!(machine_id, image_id.trim(), "the image's machine id is hidden");
    assert!(field(&first, "hostname").starts_with("slate-"), "{first}");
    assert_eq!(field(&first, "motd"), "made for /etc/motd 640 root adm");
    assert_eq!(field(&first, "dhcp"), "0 755");
    // /var/log: the image's directories, none of its old files.
    let logs = field(&first, "logdirs");
    assert!(logs.ends_with("files 1"), "only the marker: {logs}");
    assert_eq!(field(&first, "second-changed"), "0", "applying again changes nothing");
    assert_eq!(
        std::fs::read_to_string(m.dir.join("mounts-1")).unwrap(),
        std::fs::read_to_string(m.dir.join("mounts-2")).unwrap()
    );
    // The image on disk is untouched.
    assert!(!m.root.join("var/log/ram-marker").exists());
    assert!(
        !m.root.join("etc/motd").exists()
            || std::fs::read_to_string(m.root.join("etc/motd")).unwrap() != "made for /etc/motd\n"
    );

    // Second boot: RAM is gone, local state is back, dynamic values are the same.
    let second = boot_ok(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --state-dir "$STATE" >/dev/null
        for f in var/log/ram-marker home/home-marker var/lib/systemd/local-marker opt/backup-marker; do
            if [ -e "$ROOT/$f" ]; then echo "present $f $(cat "$ROOT/$f")"; else echo "absent $f"; fi
        done
        echo "machine-id $(cat "$ROOT/etc/machine-id")"
        "#,
        &vars,
    );
    assert!(second.contains("absent var/log/ram-marker"), "{second}");
    assert!(second.contains("absent home/home-marker"), "{second}");
    assert!(second.contains("present var/lib/systemd/local-marker kept"), "{second}");
    assert!(second.contains("present opt/backup-marker saved"), "{second}");
    assert!(
        state.join("backup/opt/backup-marker").is_file(),
        "kept in the store's backup tree"
    );
    assert_eq!(field(&second, "machine-id"), machine_id);

    // After all that, the tree still matches its snapshot; then plant drift.
    let clean = m.audit(&policy, false);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));
    std::fs::write(m.root.join("etc/planted.conf"), "x\n").unwrap();
    let passwd = std::fs::read(m.root.join("etc/passwd")).unwrap();
    let mut changed = passwd.clone();
    changed[0] ^= 0x20; // same size, other content
    std::fs::write(m.root.join("etc/passwd"), &changed).unwrap();
    std::fs::remove_file(m.root.join("usr/bin/yes")).unwrap();
    std::fs::create_dir(m.root.join("usr/local/planted")).unwrap();
    std::fs::write(m.root.join("usr/local/planted/tool"), "#!/bin/sh\n").unwrap();
    std::fs::write(m.root.join("var/log/declared-so-ignored"), "x\n").unwrap();
    let out = m.audit(&policy, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let drift: Vec<(String, String)> = v["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("/etc/passwd", "changed"),
        ("/etc/planted.conf", "added"),
        ("/usr/bin/yes", "removed"),
        ("/usr/local/planted", "added"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(drift, want);
    let human = m.audit(&policy, false);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("/etc (2)") && text.contains("/usr/bin (1)"), "{text}");
    assert!(String::from_utf8_lossy(&human.stderr).contains("4 undeclared changes"));
}

#[test]
fn apply_refuses_symlink_escapes_and_missing_stores() {
    if !is_root() {
        crate::support::skip("needs root (mounts)");
        return;
    }
    let t = scratch();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host file\n").unwrap();
    // A hostile image: /var/log points outside the root.
    std::os::unix::fs::symlink(s(&outside), root.join("var/log")).unwrap();
    let p = t.path().join("state.toml");
    std::fs::write(&p, "[[path]]\npath = \"/var/log\"\nstate = \"ram\"\n").unwrap();
    let out = boot(
        r#"$SLATE state apply --root "$ROOT" --policy "$POLICY""#,
        &[("ROOT", s(&root)), ("POLICY", s(&p))],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symlink or special file"), "{err}");
    assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "host file\n");

    // A symlinked directory on the way resolves inside the root.
    std::fs::remove_file(root.join("var/log")).unwrap();
    std::fs::create_dir_all(root.join("data/cache")).unwrap();
    std::os::unix::fs::symlink("/../../../data", root.join("var/lib")).unwrap();
    std::fs::write(
        &p,
        "[[path]]\npath = \"/var/lib/cache\"\nstate = \"ram\"\nseed = \"none\"\n",
    )
    .unwrap();
    let out = boot_ok(
        r#"$SLATE state apply --root "$ROOT" --policy "$POLICY" >/dev/null
        touch "$ROOT/data/cache/inside"
        findmnt -n -o FSTYPE "$ROOT/data/cache""#,
        &[("ROOT", s(&root)), ("POLICY", s(&p))],
    );
    assert_eq!(out, "tmpfs\n");
    assert!(
        !root.join("data/cache/inside").exists(),
        "written to RAM, not the image"
    );

    // Local state without a store is an error before anything is mounted.
    std::fs::write(&p, "[[path]]\npath = \"/etc\"\nstate = \"local\"\n").unwrap();
    let out = boot(
        r#"$SLATE state apply --root "$ROOT" --policy "$POLICY" || { grep -c " $ROOT" /proc/self/mountinfo || true; exit 3; }"#,
        &[("ROOT", s(&root)), ("POLICY", s(&p))],
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no state store was given"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn server_state_is_uploaded_once_and_comes_back_on_the_next_boot() {
    if !is_root() {
        crate::support::skip("needs root (mounts)");
        return;
    }
    let t = scratch();
    let dir = t.path();
    let repo = dir.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let mut server = Server::start(&["--repo", s(&repo)]);
    let token = slate_ok(&["fleet", "enroll", "--repo", s(&repo), "lab-07"])
        .trim()
        .to_string();
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let config = dir.join("agent.toml");
    let write_config = |url: &str| {
        std::fs::write(
            &config,
            format!(
                "server = [{}]\ntrust = [\"/nonexistent.pub\"]\nstate_dir = {:?}\nmachine_id = \"lab-07\"\n\
                 token_file = {:?}\ntimeout_secs = 5\n[slots]\na = \"/nonexistent/a\"\nb = \"/nonexistent/b\"\n",
                crate::support::token_server(url),
                s(&dir.join("agent")),
                s(&dir.join("token"))
            ),
        )
        .unwrap();
    };
    write_config(&server.url);

    // The image: an sshd configuration, no host keys, no keytab.
    let root = dir.join("root");
    for d in ["etc/ssh", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    let policy = dir.join("state.toml");
    std::fs::write(
        &policy,
        "[[path]]\npath = \"/etc/ssh\"\nstate = \"server\"\ninclude = [\"ssh_host_*\"]\nname = \"ssh-host-keys\"\n\n\
         [[path]]\npath = \"/etc/krb5.keytab\"\nstate = \"server\"\n",
    )
    .unwrap();
    let vars = [("ROOT", s(&root)), ("POLICY", s(&policy)), ("CONFIG", s(&config))];

    // First boot: nothing on the server; the machine makes its keys and
    // uploads them.
    let first = boot_ok(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null
        printf 'PRIVATE KEY\n' > "$ROOT/etc/ssh/ssh_host_ed25519_key"
        chmod 600 "$ROOT/etc/ssh/ssh_host_ed25519_key"
        printf 'ssh-ed25519 AAAA\n' > "$ROOT/etc/ssh/ssh_host_ed25519_key.pub"
        chown 0:4 "$ROOT/etc/ssh/ssh_host_ed25519_key.pub"
        printf 'KEYTAB' > "$ROOT/etc/krb5.keytab"
        chmod 400 "$ROOT/etc/krb5.keytab"
        if touch "$ROOT/usr/bin/x" 2>/dev/null; then echo "usr writable"; fi
        $SLATE state upload --root "$ROOT" --policy "$POLICY" --config "$CONFIG"
        $SLATE state upload --root "$ROOT" --policy "$POLICY" --config "$CONFIG" 2>&1
        "#,
        &vars,
    );
    assert!(!first.contains("usr writable"), "{first}");
    assert!(first.contains("uploaded /etc/krb5.keytab"), "{first}");
    assert!(first.contains("uploaded /etc/ssh"), "{first}");
    assert!(first.contains("nothing new to upload"), "uploaded once: {first}");

    // Second boot: the keys come back from the server, with owner and mode;
    // sshd_config still comes from the image; /etc is read-only again.
    let second = boot_ok(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null
        for f in etc/ssh/ssh_host_ed25519_key etc/ssh/ssh_host_ed25519_key.pub etc/krb5.keytab etc/ssh/sshd_config; do
            echo "$f $(stat -c '%a %u:%g' "$ROOT/$f") $(cat "$ROOT/$f")"
        done
        if touch "$ROOT/etc/x" 2>/dev/null; then echo "etc writable"; fi
        "#,
        &vars,
    );
    for want in [
        "etc/ssh/ssh_host_ed25519_key 600 0:0 PRIVATE KEY",
        "etc/ssh/ssh_host_ed25519_key.pub 644 0:4 ssh-ed25519 AAAA",
        "etc/krb5.keytab 400 0:0 KEYTAB",
        "etc/ssh/sshd_config 644 0:0 PermitRootLogin no",
    ] {
        assert!(second.contains(want), "{want}: {second}");
    }
    assert!(!second.contains("etc writable"), "{second}");
    // Nothing of it was written to the image.
    assert!(!root.join("etc/krb5.keytab").exists() && !root.join("etc/ssh/ssh_host_ed25519_key").exists());

    // A token that is not accepted is an error, not a silent boot without keys.
    std::fs::write(dir.join("token"), "slate1-0000\n").unwrap();
    let out = boot(
        r#"$SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG""#,
        &vars,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("token"), "{err}");
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();

    // The server gone: the machine boots on with the image's content and a warning.
    let url = server.url.clone();
    let _ = server.child.kill();
    let _ = server.child.wait();
    write_config(&url);
    let out = boot(
        r#"$SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null; ls "$ROOT/etc/ssh""#,
        &vars,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sshd_config\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be reached"));
}

/// A server (or whoever answers for it) that puts files outside a server
/// path's `include` into its bundle: an sshd configuration that lets root
/// in, a file in a new directory. Only the included files are written;
/// the rest is refused with a warning naming it, and the image's files
/// stay.
#[test]
fn a_server_bundle_with_files_outside_include_is_refused() {
    if !is_root() {
        crate::support::skip("needs root (mounts)");
        return;
    }
    let t = scratch();
    let dir = t.path();
    let repo = dir.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let _server = Server::start(&["--repo", s(&repo)]);
    let token = slate_ok(&["fleet", "enroll", "--repo", s(&repo), "lab-08"]);
    std::fs::write(dir.join("token"), token).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = [{}]\ntrust = [\"/nonexistent.pub\"]\nstate_dir = {:?}\nmachine_id = \"lab-08\"\n\
             token_file = {:?}\ntimeout_secs = 5\n[slots]\na = \"/nonexistent/a\"\nb = \"/nonexistent/b\"\n",
            crate::support::token_server(&_server.url),
            s(&dir.join("agent")),
            s(&dir.join("token"))
        ),
    )
    .unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
    std::fs::write(root.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    let policy = dir.join("state.toml");
    std::fs::write(
        &policy,
        "[[path]]\npath = \"/etc/ssh\"\nstate = \"server\"\ninclude = [\"ssh_host_*\"]\nname = \"ssh-host-keys\"\n",
    )
    .unwrap();
    let vars = [("ROOT", s(&root)), ("POLICY", s(&policy)), ("CONFIG", s(&config))];

    // The machine's own keys go up once.
    boot_ok(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null
        printf 'REAL KEY\n' > "$ROOT/etc/ssh/ssh_host_ed25519_key"
        $SLATE state upload --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null
        "#,
        &vars,
    );
    // The stored blob is swapped for one holding more than the keys.
    let mut blobs = Vec::new();
    let mut stack = vec![repo.join("state")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "ssh-host-keys" {
                blobs.push(e.path());
            }
        }
    }
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let evil = dir.join("evil");
    std::fs::create_dir_all(evil.join("sshd_config.d")).unwrap();
    std::fs::write(evil.join("ssh_host_ed25519_key"), "SERVER KEY\n").unwrap();
    std::fs::write(evil.join("sshd_config"), "PermitRootLogin yes\n").unwrap();
    std::fs::write(evil.join("sshd_config.d/evil.conf"), "PasswordAuthentication yes\n").unwrap();
    let bundle = slate_state::bundle::encode(&slate_state::copy::capture(&evil).unwrap());
    std::fs::write(&blobs[0], bundle).unwrap();

    let out = boot(
        r#"
        $SLATE state apply --root "$ROOT" --policy "$POLICY" --config "$CONFIG" >/dev/null
        cat "$ROOT/etc/ssh/ssh_host_ed25519_key" "$ROOT/etc/ssh/sshd_config"
        ls "$ROOT/etc/ssh"
        "#,
        &vars,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout, "SERVER KEY\nPermitRootLogin no\nssh_host_ed25519_key\nsshd_config\n",
        "only the included file came from the server: {stderr}"
    );
    let warning: Vec<&str> = stderr.lines().filter(|l| l.contains("outside `include`")).collect();
    assert_eq!(warning.len(), 1, "one warning line: {stderr}");
    assert!(
        warning[0].contains("/etc/ssh") && warning[0].contains("sshd_config") && warning[0].contains("refused"),
        "{stderr}"
    );
}

#[test]
fn install_refuses_a_disk_too_small_before_touching_it() {
    let t = scratch();
    let img = t.path().join("small.img");
    let cfg = t.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "server = \"http://127.0.0.1:9\"\ntrust = [\"/nonexistent.pub\"]\nstate_dir = \"/x\"\n[slots]\na = \"/a\"\nb = \"/b\"\n",
    )
    .unwrap();
    let err = slate_err(&[
        "install",
        "--disk",
        s(&img),
        "--size",
        "2G",
        "--slot-size",
        "1G",
        "--config",
        s(&cfg),
    ]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs at least") && err.contains("--slot-size"), "{err}");
    // Refused before the image was created.
    assert!(!img.exists(), "a refused install created the image");
    // An image that exists is left untouched: no partition table was written.
    std::fs::File::create(&img).unwrap().set_len(2 << 30).unwrap();
    let err = slate_err(&["install", "--disk", s(&img), "--slot-size", "1G", "--config", s(&cfg)]);
    assert!(err.contains("needs at least"), "{err}");
    let mut head = vec![0u8; 1 << 20];
    use std::io::Read;
    std::fs::File::open(&img).unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));
    // A missing disk without --size is an error too.
    let err = slate_err(&["install", "--disk", s(&t.path().join("none.img")), "--config", s(&cfg)]);
    assert!(err.contains("does not exist"), "{err}");
}
