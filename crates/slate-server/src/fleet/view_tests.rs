//! The dashboard's store calls ([`super::view`]) on both backends: state
//! derivation, filters, sorting, paging, counts and the report history.

use super::store::{FleetStore, ReportRecord};
use super::testdb::{on_both_stores, TestDb};
use super::view::{AssignedRecord, CountBy, MachineQuery, MachineState, Seen, SortKey, REPORT_HISTORY};

on_both_stores!(dashboard_queries);

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const NOW: u64 = 10_000_000;

fn assign(s: &dyn FleetStore, id: &str, rule: &str, channel: &str, snapshot: &str, at: u64) {
    let a = AssignedRecord {
        hostname: Some(format!("host-{id}")),
        channel: channel.into(),
        rule: rule.into(),
        snapshot: snapshot.into(),
        labels: serde_json::json!({"room": "b12"}),
    };
    s.record_assigned(id, &a, at).unwrap();
}

fn report(s: &dyn FleetStore, id: &str, current: &str, update: &str, boot: &str, at: u64) {
    let r = ReportRecord {
        machine: id.into(),
        current: Some(current.into()),
        last_update: serde_json::json!({"result": update, "message": format!("pass at {at}")}),
        boot: serde_json::json!({"result": boot}),
        raw: format!("{{\"machine\": {{\"id\": \"{id}\"}}, \"at\": {at}}}"),
        ..Default::default()
    };
    s.record_report(&r, at).unwrap();
}

fn dashboard_queries(db: &TestDb) {
    let s = db.open();
    let s: &dyn FleetStore = &s;
    assign(s, "m-ok", "lab", "lab", A, NOW - 10);
    report(s, "m-ok", A, "up-to-date", "good", NOW - 5);
    assign(s, "m-fell", "lab", "lab", B, NOW - 10);
    report(s, "m-fell", A, "ok", "fell-back", NOW - 4);
    assign(s, "m-failed", "kiosks", "kiosk", A, NOW - 10);
    report(s, "m-failed", B, "error", "good", NOW - 3);
    assign(s, "m-pending", "kiosks", "kiosk", B, NOW - 10);
    report(s, "m-pending", A, "next-boot", "good", NOW - 2);
    assign(s, "m-silent", "lab", "lab", A, NOW - 3 * 86_400);
    report(s, "m-silent", A, "up-to-date", "good", NOW - 2 * 86_400);
    assign(s, "m-new", "default", "lab", A, NOW - 1);
    // Before any assignment with a rule (an older server's row).
    s.record_assignment("m-old", Some("old"), None, NOW - 100).unwrap();

    let all = |q: MachineQuery| s.machine_page(&MachineQuery { limit: 100, ..q }, NOW).unwrap();
    let ids = |q: MachineQuery| -> Vec<String> { all(q).machines.into_iter().map(|m| m.row.machine).collect() };
    let page = all(MachineQuery::default());
    assert_eq!(page.total, 7);
    let state = |id: &str| page.machines.iter().find(|m| m.row.machine == id).unwrap().state;
    assert_eq!(state("m-ok"), MachineState::UpToDate);
    assert_eq!(state("m-fell"), MachineState::FellBack);
    assert_eq!(state("m-failed"), MachineState::Failed);
    assert_eq!(state("m-pending"), MachineState::Pending);
    assert_eq!(state("m-silent"), MachineState::Silent);
    assert_eq!(state("m-new"), MachineState::New);
    let ok = page.machines.iter().find(|m| m.row.machine == "m-ok").unwrap();
    assert_eq!(ok.rule.as_deref(), Some("lab"));
    assert_eq!(ok.assigned.as_deref(), Some(A));
    assert_eq!(ok.labels, serde_json::json!({"room": "b12"}));
    assert_eq!(ok.row.hostname.as_deref(), Some("host-m-ok"));

    // Filters, alone and together.
    let q = |f: fn(&mut MachineQuery)| {
        let mut q = MachineQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(ids(q(|q| q.state = Some(MachineState::FellBack))), ["m-fell"]);
    assert_eq!(ids(q(|q| q.group = Some("kiosks".into()))), ["m-failed", "m-pending"]);
    assert_eq!(
        ids(q(|q| {
            q.group = Some("kiosks".into());
            q.state = Some(MachineState::Failed)
        })),
        ["m-failed"]
    );
    assert_eq!(ids(q(|q| q.channel = Some("kiosk".into()))), ["m-failed", "m-pending"]);
    assert_eq!(ids(q(|q| q.seen = Some(Seen::NotFor(86_400)))), ["m-silent"]);
    assert_eq!(ids(q(|q| q.seen = Some(Seen::Within(60)))).len(), 5);
    // Sorts: last seen, newest first; state; NULLs (m-old's rule) last.
    assert_eq!(
        ids(q(|q| {
            q.sort = SortKey::LastSeen;
            q.descending = true
        }))[..3],
        ["m-new", "m-pending", "m-failed"]
    );
    let by_group = ids(q(|q| q.sort = SortKey::Group));
    assert_eq!(
        by_group.first().map(String::as_str),
        Some("m-new"),
        "default < kiosks < lab"
    );
    assert_eq!(by_group.last().map(String::as_str), Some("m-old"));
    assert_eq!(ids(q(|q| q.sort = SortKey::State))[0], "m-failed");
    // Pages do not overlap and add up.
    let p1 = s
        .machine_page(
            &MachineQuery {
                limit: 3,
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
    let p3 = s
        .machine_page(
            &MachineQuery {
                limit: 3,
                offset: 6,
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
    assert_eq!((p1.total, p1.machines.len(), p3.machines.len()), (7, 3, 1));
    assert_eq!(p3.machines[0].row.machine, "m-silent");

    // Counts by channel and group.
    assert_eq!(
        s.machine_counts(CountBy::Channel).unwrap(),
        [("kiosk".to_string(), 2), ("lab".to_string(), 4)]
    );
    assert_eq!(s.machine_counts(CountBy::Group).unwrap().len(), 3);

    // One machine; the history keeps the latest REPORT_HISTORY, newest first.
    assert_eq!(
        s.machine_view("m-fell", NOW).unwrap().unwrap().state,
        MachineState::FellBack
    );
    assert!(s.machine_view("nobody", NOW).unwrap().is_none());
    for i in 0..REPORT_HISTORY as u64 + 5 {
        report(s, "m-ok", A, "up-to-date", "good", NOW + i);
    }
    let h = s.machine_reports("m-ok", 100).unwrap();
    assert_eq!(h.len(), REPORT_HISTORY);
    assert_eq!(h[0].received, NOW + REPORT_HISTORY as u64 + 4);
    assert!(h[0].raw.contains(&format!("{}", NOW + REPORT_HISTORY as u64 + 4)));
    assert_eq!(s.machine_reports("m-fell", 100).unwrap().len(), 1);
    assert_eq!(s.machine_reports("m-ok", 2).unwrap().len(), 2);
}
