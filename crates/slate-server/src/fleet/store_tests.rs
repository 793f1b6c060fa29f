//! The fleet store's promises, kept by every backend: each test below runs
//! on SQLite (`store_tests::sqlite::NAME`) and on PostgreSQL
//! (`store_tests::postgres::NAME`), so the two cannot drift apart.

use super::store::{Enrollment, FleetStore, ReportRecord, TokenRow, TokenStore};
use super::testdb::{on_both_stores, TestDb};

on_both_stores!(
    assignment_then_report_then_list,
    tokens_enroll_replace_revoke,
    upgrades_a_version_1_database,
    upgrades_a_version_2_database_with_mode_and_cache,
    refuses_a_newer_schema,
    machines_and_tokens_are_listed_in_byte_order,
    servers_starting_together_upgrade_once,
);

fn assignment_then_report_then_list(db: &TestDb) {
    let s = db.open();
    s.record_assignment("m1", Some("lab-1"), Some("lab"), 100).unwrap();
    s.record_assignment("m0", None, None, 101).unwrap();
    let r = ReportRecord {
        machine: "m1".into(),
        hostname: None,
        current: Some("aa".into()),
        slots: serde_json::json!({"a": "aa", "b": null}),
        last_update: serde_json::json!({"result": "ok", "bytes_fetched": 18_446_744_073_709_551_615u64}),
        raw: "{\"machine\": {\"id\": \"m1\"}, \"unknown\": \"\\u0000\"}".into(),
        ..Default::default()
    };
    s.record_report(&r, 150).unwrap();
    drop(s);

    // Reopen: the data persists.
    let s = db.open();
    let rows = s.machines().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].machine, "m0");
    assert_eq!(rows[0].channel, None);
    assert_eq!((rows[0].first_seen, rows[0].last_seen), (101, 101));
    let m1 = &rows[1];
    assert_eq!(m1.hostname.as_deref(), Some("lab-1"), "kept from the assignment");
    assert_eq!(m1.channel.as_deref(), Some("lab"));
    assert_eq!(m1.current.as_deref(), Some("aa"));
    assert_eq!(m1.slots, serde_json::json!({"a": "aa", "b": null}));
    assert_eq!(m1.last_update["bytes_fetched"], u64::MAX, "no precision lost");
    assert_eq!(m1.boot, serde_json::Value::Null);
    assert_eq!((m1.first_seen, m1.last_seen), (100, 150));
    // The report is kept as received, byte for byte.
    assert_eq!(s.last_report("m1").unwrap().as_deref(), Some(r.raw.as_str()));
    assert_eq!(s.last_report("m0").unwrap(), None);
    assert_eq!(s.last_report("nobody").unwrap(), None);

    // A later assignment without a channel or hostname keeps the old ones.
    s.record_assignment("m1", None, None, 160).unwrap();
    let m1 = &s.machines().unwrap()[1];
    assert_eq!(
        (m1.hostname.as_deref(), m1.channel.as_deref()),
        (Some("lab-1"), Some("lab"))
    );
    assert_eq!((m1.first_seen, m1.last_seen), (100, 160));
}

fn tokens_enroll_replace_revoke(db: &TestDb) {
    let s = db.open();
    assert_eq!(s.machine_for("h1").unwrap(), None);
    assert_eq!(s.enroll("lab-07", "h1", 100, false).unwrap(), Enrollment::Enrolled);
    assert_eq!(s.enroll("dmi:42", "h2", 101, false).unwrap(), Enrollment::Enrolled);
    assert_eq!(s.machine_for("h1").unwrap().as_deref(), Some("lab-07"));
    // Without replace, an enrolled machine keeps its token.
    assert_eq!(
        s.enroll("lab-07", "h3", 102, false).unwrap(),
        Enrollment::AlreadyEnrolled
    );
    assert_eq!(s.machine_for("h1").unwrap().as_deref(), Some("lab-07"));
    assert_eq!(s.machine_for("h3").unwrap(), None);
    // A token hash belongs to one machine only, new or replaced.
    let e = s.enroll("other", "h2", 103, false).unwrap_err();
    assert_eq!(e.what, "enrolling a machine");
    assert!(s.enroll("dmi:42", "h1", 103, true).is_err());
    assert_eq!(s.tokens().unwrap().len(), 2);
    drop(s);

    // Another connection (the CLI) replaces the token; the first (the
    // server's) sees it on its next query.
    let server = db.open();
    let cli = db.open();
    assert_eq!(cli.enroll("lab-07", "h3", 104, true).unwrap(), Enrollment::Replaced);
    assert_eq!(server.machine_for("h1").unwrap(), None);
    assert_eq!(server.machine_for("h3").unwrap().as_deref(), Some("lab-07"));
    assert_eq!(
        server.tokens().unwrap(),
        [
            TokenRow {
                machine: "dmi:42".into(),
                enrolled: 101
            },
            TokenRow {
                machine: "lab-07".into(),
                enrolled: 104
            },
        ]
    );
    // Replace on a machine without a token enrolls it.
    assert_eq!(cli.enroll("new", "h5", 105, true).unwrap(), Enrollment::Enrolled);
    assert!(cli.revoke("new").unwrap());
    assert!(cli.revoke("dmi:42").unwrap());
    assert!(!cli.revoke("dmi:42").unwrap());
    assert_eq!(server.machine_for("h2").unwrap(), None);
    assert_eq!(server.tokens().unwrap().len(), 1);
}

fn upgrades_a_version_1_database(db: &TestDb) {
    // A database as the first release wrote it, with one machine.
    db.make_old(
        1,
        "INSERT INTO machines (id, first_seen, last_seen, hostname) VALUES ('m1', 5, 6, 'old');",
    );
    let s = db.open();
    assert_eq!(db.version(), 5);
    let rows = s.machines().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].hostname.as_deref(), Some("old"));
    assert_eq!((rows[0].first_seen, rows[0].last_seen), (5, 6));
    assert_eq!(s.enroll("m1", "h", 7, false).unwrap(), Enrollment::Enrolled);
    assert_eq!(s.machine_for("h").unwrap().as_deref(), Some("m1"));
    drop(s);
    // Opening again changes nothing.
    let s = db.open();
    assert_eq!(db.version(), 5);
    assert_eq!(s.tokens().unwrap().len(), 1);
}

fn upgrades_a_version_2_database_with_mode_and_cache(db: &TestDb) {
    // A database as version 2 wrote it: a machine with a report (no mode
    // then) and a token.
    db.make_old(
        2,
        "INSERT INTO machines (id, first_seen, last_seen, hostname, current, last_update, report)
             VALUES ('m1', 5, 6, 'old', 'aa', '{\"result\":\"ok\"}', '{}');
         INSERT INTO machine_tokens (machine, token_hash, enrolled) VALUES ('m1', 'h', 7);",
    );
    let s = db.open();
    assert_eq!(db.version(), 5);
    let rows = s.machines().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].hostname.as_deref(), rows[0].current.as_deref()),
        (Some("old"), Some("aa"))
    );
    assert_eq!(rows[0].last_update["result"], "ok");
    assert_eq!(
        (rows[0].mode.as_deref(), &rows[0].cache),
        (None, &serde_json::Value::Null)
    );
    assert_eq!(s.machine_for("h").unwrap().as_deref(), Some("m1"));

    // New reports carry them; a later report without them clears them
    // (the latest report is the machine as it is now).
    let cached = ReportRecord {
        machine: "m1".into(),
        mode: Some("cached".into()),
        cache: serde_json::json!({"cached_bytes": 42, "total_bytes": 100, "complete": false}),
        raw: "{}".into(),
        ..Default::default()
    };
    s.record_report(&cached, 8).unwrap();
    drop(s);
    let s = db.open();
    let rows = s.machines().unwrap();
    assert_eq!(rows[0].mode.as_deref(), Some("cached"));
    assert_eq!(rows[0].cache["cached_bytes"], 42);
    assert_eq!(rows[0].cache["complete"], false);
    s.record_report(
        &ReportRecord {
            machine: "m1".into(),
            raw: "{}".into(),
            ..Default::default()
        },
        9,
    )
    .unwrap();
    let rows = s.machines().unwrap();
    assert_eq!(
        (rows[0].mode.as_deref(), &rows[0].cache),
        (None, &serde_json::Value::Null)
    );
    assert_eq!(
        rows[0].hostname.as_deref(),
        Some("old"),
        "a report without one keeps it"
    );
}

fn refuses_a_newer_schema(db: &TestDb) {
    db.set_version(99);
    let e = db.try_open().err().unwrap();
    assert_eq!(e.what, "checking the schema version");
    let e = e.to_string();
    assert!(e.contains("newer") && e.contains("--db"), "{e}");
    assert_eq!(db.version(), 99, "left alone");
}

fn machines_and_tokens_are_listed_in_byte_order(db: &TestDb) {
    // What SQLite's BINARY collation gives; a PostgreSQL database created
    // with a natural-language locale would sort "lab-07" before "lab07"
    // and "Zed" after "b" unless the columns say otherwise.
    let ids = ["lab07", "b", "Zed", "lab-07", "dmi:42", "_x", "lab_07"];
    let s = db.open();
    for (i, id) in ids.iter().enumerate() {
        s.record_assignment(id, None, None, 100).unwrap();
        s.enroll(id, &format!("h{i}"), 100, false).unwrap();
    }
    let mut want: Vec<&str> = ids.to_vec();
    want.sort_unstable();
    let got: Vec<String> = s.machines().unwrap().into_iter().map(|m| m.machine).collect();
    assert_eq!(got, want);
    let got: Vec<String> = s.tokens().unwrap().into_iter().map(|t| t.machine).collect();
    assert_eq!(got, want);
}

fn servers_starting_together_upgrade_once(db: &TestDb) {
    // Several servers of a pool (or a server and `slate fleet enroll`)
    // opening a new database at the same moment.
    std::thread::scope(|scope| {
        let opened: Vec<_> = (0..4).map(|_| scope.spawn(|| db.open())).collect();
        for (i, s) in opened.into_iter().enumerate() {
            let s = s.join().unwrap();
            s.enroll(&format!("m{i}"), &format!("h{i}"), 1, false).unwrap();
        }
    });
    assert_eq!(db.version(), 5);
    assert_eq!(db.open().tokens().unwrap().len(), 4);
}
