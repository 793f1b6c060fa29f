//! `slate fleet rollout status|pause|resume|abort` against a real `slate
//! serve` with a `[rollout]` in its fleet file, on SQLite and PostgreSQL:
//! a commit goes to the canary only, the commands change what machines
//! are given, and `slate fleet status` shows the rollout. Soak times are
//! an hour, so nothing here depends on time passing (the waves' timing is
//! tested in slate-server with a clock moved by hand).

use serde_json::{json, Value};

use crate::support::{admin_token, on_both_stores, s, scratch, slate_err, slate_ok, FleetDb, Server};

on_both_stores!(rollout_commands_hold_back_and_send_back);

fn assign(url: &str, token: &std::path::Path, id: &str, hostname: &str) -> Value {
    let token = std::fs::read_to_string(token).unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/fleet/assignment"))
        .bearer_auth(token.trim())
        .json(&json!({"machine": {"id": id, "hostname": hostname}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

fn rollout_commands_hold_back_and_send_back(db: FleetDb) {
    let dir = scratch();
    let repo = dir.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("version"), "1\n").unwrap();
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "lab", s(&tree)]);
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        "[default]\nchannel = \"lab\"\n\n[rollout.\"lab\"]\ncanary = { hostname = \"canary-*\" }\n\
         waves = [{ percent = 50, after = \"1h\" }, { percent = 100, after = \"1h\" }]\n",
    )
    .unwrap();
    let db_args = db.args();
    let mut enroll_args = vec!["fleet", "enroll", "--force", "--repo", s(&repo)];
    enroll_args.extend(&db_args);
    let tokens: Vec<_> = ["c1", "d1"]
        .iter()
        .map(|m| {
            let mut a = enroll_args.clone();
            a.push(m);
            let t = slate_ok(&a);
            let f = dir.path().join(format!("{m}.token"));
            std::fs::write(&f, t).unwrap();
            f
        })
        .collect();
    let admin = admin_token(dir.path());
    let mut args = vec![
        "--repo",
        s(&repo),
        "--fleet",
        s(&fleet),
        "--admin-token-file",
        s(&admin),
    ];
    args.extend(&db_args);
    let server = Server::start(&args);
    let url = server.url.clone();
    let rollout = |action: &str| {
        slate_ok(&[
            "fleet",
            "rollout",
            action,
            "--channel",
            "lab",
            "--server",
            &url,
            "--token-file",
            s(&admin),
        ])
    };
    let v1 = assign(&url, &tokens[0], "c1", "canary-1")["snapshot"].clone();
    assert!(
        rollout("status").contains("rollout lab: none since"),
        "{}",
        rollout("status")
    );

    std::fs::write(tree.join("version"), "2\n").unwrap();
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "lab", s(&tree)]);
    let canary = assign(&url, &tokens[0], "c1", "canary-1");
    let other = assign(&url, &tokens[1], "d1", "desk-1");
    let v2 = canary["snapshot"].clone();
    assert_ne!(v1, v2);
    assert_eq!(canary["rollout"]["wave"], 0);
    // Wave 1 is an hour away: the desk keeps v1, unless the hash puts it
    // in the canaries' wave (it cannot: it is no canary).
    assert_eq!(other["snapshot"], v1);
    assert_eq!(other["rollout"]["released"], false);

    let out = rollout("status");
    assert!(out.contains("rollout lab #2: running from "), "{out}");
    assert!(out.contains("released through canary"), "{out}");
    assert!(
        out.contains("next wave in 59m") || out.contains("next wave in 1h"),
        "{out}"
    );
    let out = rollout("pause");
    assert!(out.contains("#2: paused"), "{out}");
    let out = rollout("resume");
    assert!(out.contains("#2: running"), "{out}");
    let out = slate_ok(&["fleet", "status", "--server", &url, "--token-file", s(&admin)]);
    assert!(
        out.contains("ROLLOUT") && out.contains("rollout lab #2: running"),
        "{out}"
    );

    let out = rollout("abort");
    assert!(
        out.contains("#2: aborted") && out.contains("aborted by an administrator"),
        "{out}"
    );
    let canary = assign(&url, &tokens[0], "c1", "canary-1");
    assert_eq!(canary["snapshot"], v1, "sent back to the previous head");
    assert_eq!(canary["pinned"], true);
    let e = slate_err(&[
        "fleet",
        "rollout",
        "resume",
        "--server",
        &url,
        "--token-file",
        s(&admin),
    ]);
    assert!(e.contains("409") && e.contains("stays aborted"), "{e}");
    let v: Value = serde_json::from_str(&slate_ok(&[
        "fleet",
        "rollout",
        "status",
        "--json",
        "--server",
        &url,
        "--token-file",
        s(&admin),
    ]))
    .unwrap();
    assert_eq!(v["rollouts"][0]["rollout"]["state"], "aborted");
    // Without the administrator token: refused.
    let e = slate_err(&["fleet", "rollout", "status", "--server", &url]);
    assert!(e.contains("401"), "{e}");
}
