//! The spine, end to end, against every store backend: HR feed -> identity -> policy -> plan ->
//! outbox -> dispatcher -> Nuki simulator over HTTP -> ledger, latency and audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::audit::{self, Verdict};
use latchkey::model::CommandStatus;
use latchkey::model::Lifecycle;
use latchkey::store;
use latchkey_sim::NukiOptions;

/// Run `body` once per backend, each in its own directory and database.
macro_rules! each_backend {
    (|$h:ident| $body:block) => {{
        let tmp = tempfile::tempdir().unwrap();
        for (name, url) in backends(tmp.path()).await {
            let dir = tmp.path().join(&name);
            #[allow(unused_mut)]
            let mut $h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
            eprintln!("-- backend {name}");
            $body
        }
    }};
}

#[tokio::test]
async fn joiner_mover_leaver_rehire_reach_the_vendor() {
    each_backend!(|h| {
        let r = h
            .feed(&[
                employee("E1", "engineering", "berlin"),
                employee("E2", "sales", "london"),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Terminated",
                    "2015-01-01",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((r.joiners, r.issues), (2, 3), "{} {r:?}", h.backend);
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering"));
        assert!(h.holds("E1", "berlin-lab"));
        assert!(h.holds("E2", "london-sales"));
        assert!(
            h.user_id("E3").is_none(),
            "a terminated person gets nothing"
        );

        // Mover: E1 moves to finance in London: old doors revoked, new one issued.
        let r = h
            .feed(&[
                employee("E1", "finance", "london"),
                employee("E2", "sales", "london"),
                row(
                    "E3",
                    "finance",
                    "analyst",
                    "employee",
                    "berlin",
                    "Terminated",
                    "2015-01-01",
                    "2025-03-31",
                    "",
                ),
            ])
            .await;
        assert_eq!((r.movers, r.issues, r.revokes), (1, 1, 2), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E1", "berlin-engineering"));
        assert!(!h.holds("E1", "berlin-lab"));
        assert!(h.holds("E1", "london-finance"));

        // Leaver E2 (explicit termination) and rehire E3.
        let third = [
            employee("E1", "finance", "london"),
            row(
                "E2",
                "sales",
                "analyst",
                "employee",
                "london",
                "Terminated",
                "2020-01-01",
                "2026-11-20",
                "",
            ),
            row(
                "E3",
                "finance",
                "analyst",
                "employee",
                "berlin",
                "Active",
                "2026-11-23",
                "2025-03-31",
                "",
            ),
        ];
        let r = h.feed(&third).await;
        assert_eq!((r.leavers, r.rehires), (1, 1), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E2", "london-sales"));
        assert!(h.holds("E3", "berlin-finance"));

        // The same feed again issues nothing.
        let again = h.feed(&third).await;
        assert_eq!((again.issues, again.revokes), (0, 0), "{again:?}");
        let before = h.sim.stats().requests;
        h.drain().await;
        assert_eq!(
            h.sim.stats().requests,
            before,
            "no vendor call for an unchanged feed"
        );
        assert_eq!(h.sim.nuki().unwrap().duplicate_pairs(), 0);

        // Latency was measured for every revocation, and the ledger says what the vendor says.
        let done = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revokes: Vec<_> = done
            .iter()
            .filter(|c| c.action == latchkey::model::Action::Revoke)
            .collect();
        assert_eq!(revokes.len(), 3);
        assert!(
            revokes
                .iter()
                .all(|c| c.confirmed_at.is_some() && c.first_attempt_at.is_some())
        );
        assert!(matches!(
            audit::verify(h.app.store()).await.unwrap(),
            Verdict::Intact { .. }
        ));
    });
}

#[tokio::test]
async fn future_dated_termination_fires_at_its_instant_in_the_site_time_zone() {
    each_backend!(|h| {
        // Last day 2026-11-27 in New York: access ends 2026-11-28 00:00 EST = 05:00 UTC.
        h.feed(&[row(
            "E1",
            "sales",
            "analyst",
            "employee",
            "new-york",
            "Active",
            "2020-01-01",
            "2026-11-27",
            "",
        )])
        .await;
        h.drain().await;
        assert!(h.holds("E1", "new-york-sales"));
        h.clock.set(t("2026-11-28T04:59:59Z"));
        h.app.engine.tick().await.unwrap();
        h.drain().await;
        assert!(h.holds("E1", "new-york-sales"), "not before its instant");
        h.clock.set(t("2026-11-28T05:00:00Z"));
        let a = h.app.engine.tick().await.unwrap();
        assert_eq!(a.revokes, 1);
        h.drain().await;
        assert!(!h.holds("E1", "new-york-sales"));
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        let ident = store::get_identity(&mut conn, "E1").await.unwrap().unwrap();
        assert_eq!(ident.lifecycle, Lifecycle::Terminated);
        // Trigger is the effective instant, so detect latency is the timer's lag (zero here).
        let c = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revoke = c
            .iter()
            .find(|c| c.action == latchkey::model::Action::Revoke)
            .unwrap();
        assert_eq!(
            revoke.trigger_at,
            latchkey::clock::to_micros(t("2026-11-28T05:00:00Z"))
        );
    });
}

#[tokio::test]
async fn contractor_grants_end_at_the_contract_end_and_respect_working_hours() {
    each_backend!(|h| {
        // Contract's last day 2026-11-30 in Berlin: access ends 2026-12-01 00:00 CET = 2026-11-30 23:00 UTC.
        h.feed(&[row(
            "C1",
            "operations",
            "technician",
            "contractor",
            "berlin",
            "Active",
            "2026-01-01",
            "",
            "2026-11-30",
        )])
        .await;
        h.drain().await;
        assert!(h.holds("C1", "berlin-operations"));
        let nuki = h.sim.nuki().unwrap();
        let lock = h.lock("berlin-operations");
        let auth = nuki
            .auths()
            .into_iter()
            .find(|a| a.smartlock_id == lock)
            .unwrap();
        // Monday..Friday in Nuki's mask (Mon = 64 .. Sun = 1), 07:00-19:00 in minutes.
        assert_eq!(auth.allowed_week_days, Some(124));
        assert_eq!(
            (auth.allowed_from_time, auth.allowed_until_time),
            (Some(420), Some(1140))
        );
        assert!(
            auth.allowed_until_date
                .as_deref()
                .unwrap()
                .starts_with("2026-11-30T23:00:00")
        );
        h.clock.set(t("2026-11-30T23:00:00Z"));
        assert_eq!(
            h.app.engine.tick().await.unwrap().revokes,
            2,
            "door and plant room"
        );
        h.drain().await;
        assert!(!h.holds("C1", "berlin-operations"));
        assert!(!h.holds("C1", "berlin-plant-room"));
    });
}

#[tokio::test]
async fn bad_rows_are_quarantined_with_file_line_and_field_and_the_rest_lands() {
    each_backend!(|h| {
        let r = h
            .feed(&[
                employee("E1", "sales", "berlin"),
                row(
                    "E2",
                    "sales",
                    "analyst",
                    "employee",
                    "berlin",
                    "Active",
                    "2020-02-31",
                    "",
                    "",
                ),
                row(
                    "E3",
                    "sales",
                    "analyst",
                    "employee",
                    "berlin",
                    "Retired",
                    "2020-01-01",
                    "",
                    "",
                ),
                row(
                    "",
                    "sales",
                    "analyst",
                    "employee",
                    "berlin",
                    "Active",
                    "2020-01-01",
                    "",
                    "",
                ),
                employee("E5", "finance", "london"),
            ])
            .await;
        assert_eq!((r.quarantined, r.joiners), (3, 2), "{r:?}");
        h.drain().await;
        assert!(h.holds("E1", "berlin-sales") && h.holds("E5", "london-finance"));
        let q = store::list_quarantine(h.app.store().pool(), 10)
            .await
            .unwrap();
        let mut seen: Vec<(String, String)> = q
            .iter()
            .map(|q| (q.location.clone(), q.field.clone()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("hr-0001.csv:3".to_string(), "hire_date".to_string()),
                ("hr-0001.csv:4".to_string(), "status".to_string()),
                ("hr-0001.csv:5".to_string(), "employee_id".to_string()),
            ]
        );
        let status = latchkey::cli::status_text(&h.app).await.unwrap();
        assert!(
            status.contains("hr-0001.csv:4") && status.contains("Retired"),
            "{status}"
        );
        // A person whose row is bad stays as they were: not a disappearance.
        let r = h
            .feed(&[
                employee("E1", "sales", "berlin"),
                row(
                    "E5", "finance", "analyst", "employee", "london", "Active", "bad", "", "",
                ),
            ])
            .await;
        assert_eq!((r.revokes, r.quarantined), (0, 1), "{r:?}");
        h.drain().await;
        assert!(h.holds("E5", "london-finance"));
    });
}

#[tokio::test]
async fn a_feed_that_loses_30_percent_is_held_but_explicit_terminations_flow() {
    each_backend!(|h| {
        let people: Vec<String> = (1..=20)
            .map(|i| employee(&format!("E{i}"), "sales", "berlin"))
            .collect();
        h.feed(&people).await;
        h.drain().await;
        // Next feed: E1 explicitly terminated, E15..E20 (6 of 20 = 30 %) simply missing.
        let mut next: Vec<String> = (2..=14)
            .map(|i| employee(&format!("E{i}"), "sales", "berlin"))
            .collect();
        next.push(row(
            "E1",
            "sales",
            "analyst",
            "employee",
            "berlin",
            "Terminated",
            "2020-01-01",
            "2026-11-24",
            "",
        ));
        let r = h.feed(&next).await;
        assert_eq!((r.held, r.leavers, r.revokes), (6, 1, 1), "{r:?}");
        h.drain().await;
        assert!(
            !h.holds("E1", "berlin-sales"),
            "explicit termination revoked"
        );
        assert!(
            (15..=20).all(|i| h.holds(&format!("E{i}"), "berlin-sales")),
            "disappearances held"
        );
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        assert_eq!(held.len(), 6);
        // An approver releases them; the approval is audited with their name.
        for c in &held {
            h.app
                .engine
                .decide(c.id, true, "alice@example.com")
                .await
                .unwrap();
        }
        h.drain().await;
        assert!((15..=20).all(|i| !h.holds(&format!("E{i}"), "berlin-sales")));
        let records = audit::records_about(h.app.store(), "E15", 20)
            .await
            .unwrap();
        assert!(
            records
                .iter()
                .any(|r| r.action == "held.approved" && r.actor == "alice@example.com")
        );
    });
}

#[tokio::test]
async fn an_edited_audit_row_is_found_by_verify() {
    each_backend!(|h| {
        h.feed(&[
            employee("E1", "sales", "berlin"),
            employee("E2", "sales", "berlin"),
        ])
        .await;
        h.drain().await;
        let Verdict::Intact { records } = audit::verify(h.app.store()).await.unwrap() else {
            panic!("fresh log must verify")
        };
        assert!(records > 5);
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
            .execute(h.app.store().pool())
            .await
            .unwrap();
        match audit::verify(h.app.store()).await.unwrap() {
            Verdict::Broken { seq, .. } => assert_eq!(seq, 3),
            v => panic!("tampering not found: {v:?}"),
        }
    });
}

#[tokio::test]
async fn vendor_errors_are_retried_and_a_refused_command_is_dead_lettered() {
    each_backend!(|h| {
        h.sim.set_faults(latchkey_sim::Faults {
            error_rate: 0.2,
            ..Default::default()
        });
        let people: Vec<String> = (1..=10)
            .map(|i| employee(&format!("E{i}"), "finance", "london"))
            .collect();
        h.feed(&people).await;
        h.drain().await;
        let dead = store::commands_where_status(h.app.store().pool(), CommandStatus::Dead, 10)
            .await
            .unwrap();
        assert!(dead.is_empty(), "{dead:?}");
        let missing: Vec<_> = (1..=10)
            .filter(|i| !h.holds(&format!("E{i}"), "london-finance"))
            .collect();
        if !missing.is_empty() {
            let done = store::commands_where_status(h.app.store().pool(), CommandStatus::Done, 100)
                .await
                .unwrap();
            eprintln!(
                "{done:#?}\n{:#?}\n{:#?}",
                h.sim.nuki().unwrap().auths(),
                h.sim.nuki().unwrap().users()
            );
        }
        assert!(missing.is_empty(), "5xx retried to success: {missing:?}");
        assert_eq!(h.sim.nuki().unwrap().duplicate_pairs(), 0);
    });
}

#[tokio::test]
async fn a_refused_command_is_dead_lettered_and_shown_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        // The vendor knows only London's finance door: a grant on any other lock is refused (404).
        let opts = NukiOptions {
            auto_create_locks: false,
            locks: vec![2004],
            ..Default::default()
        };
        let h = Harness::new(&name, &url, &tmp.path().join(&name), opts).await;
        let mut h = h;
        h.feed(&[
            employee("E1", "finance", "london"),
            employee("E2", "sales", "berlin"),
        ])
        .await;
        h.drain().await;
        assert!(h.holds("E1", "london-finance"));
        let dead = store::commands_where_status(h.app.store().pool(), CommandStatus::Dead, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{name}");
        assert_eq!(dead[0].identity_key, "E2");
        assert!(
            dead[0].last_error.as_deref().unwrap().contains("404"),
            "{:?}",
            dead[0].last_error
        );
        let status = latchkey::cli::status_text(&h.app).await.unwrap();
        assert!(status.contains("dead letters: 1"), "{status}");
    }
}

#[test]
fn shipped_configurations_pass_check_and_errors_name_file_line_key() {
    use latchkey::config::{Config, ConfigInput};
    for f in ["config/demo.toml", "config/production.toml"] {
        let path = repo().join(f);
        Config::load(&ConfigInput::from_file(&path, Default::default()).unwrap()).unwrap();
    }
    let bad = std::fs::read_to_string(repo().join("config/demo.toml"))
        .unwrap()
        .patch("mass_change_threshold = 0.2", "mass_change_treshold = 0.2");
    let err = Config::load(&ConfigInput {
        text: bad,
        path: "config/demo.toml".into(),
        env: Default::default(),
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("config/demo.toml:14:"), "{err}");
    assert!(err.contains("mass_change_treshold"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The HR drop directory on a bad day: what the Nuki simulator finally holds.

/// Put a file into the drop directory, last modified `age` seconds before the test clock's now.
fn drop_file(h: &Harness, name: &str, bytes: &[u8], age: i64) -> std::path::PathBuf {
    let path = h.dir.join("feeds").join(name);
    std::fs::write(&path, bytes).unwrap();
    touch(&path, h.clock.now_utc() - chrono::Duration::seconds(age));
    path
}

fn touch(path: &std::path::Path, at: chrono::DateTime<chrono::Utc>) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::from(at)).unwrap();
}

fn csv(rows: &[String]) -> Vec<u8> {
    format!("{HEADER}\n{}\n", rows.join("\n")).into_bytes()
}

fn terminated(id: &str) -> String {
    row(
        id,
        "sales",
        "analyst",
        "employee",
        "berlin",
        "Terminated",
        "2020-01-01",
        "2026-11-24",
        "",
    )
}

fn sales(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|i| employee(i, "sales", "berlin")).collect()
}

async fn run_drop(h: &Harness) -> Vec<latchkey::engine::FeedReport> {
    h.app.engine.run_hr_source("hr").await.unwrap()
}

fn report_for<'a>(
    reports: &'a [latchkey::engine::FeedReport],
    name: &str,
) -> Option<&'a latchkey::engine::FeedReport> {
    reports.iter().find(|r| r.file.ends_with(name))
}

/// Everyone E1..E6 in Berlin sales, applied from the drop directory.
async fn six_in_sales(h: &Harness) {
    drop_file(
        h,
        "hr-0001.csv",
        &csv(&sales(&["E1", "E2", "E3", "E4", "E5", "E6"])),
        60,
    );
    let r = run_drop(h).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].joiners, 6, "{r:?}");
    h.drain().await;
    assert!((1..=6).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
}

#[tokio::test]
async fn unreadable_and_truncated_files_are_set_aside_and_the_next_files_termination_is_revoked() {
    each_backend!(|h| {
        six_in_sales(&h).await;
        // An empty file, random bytes, then a good file terminating E1: all in one tick.
        drop_file(&h, "hr-0002.csv", b"", 60);
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
            .collect();
        drop_file(&h, "hr-0003.csv", &noise, 60);
        let mut next = sales(&["E2", "E3", "E4", "E5", "E6"]);
        next.push(terminated("E1"));
        drop_file(&h, "hr-0004.csv", &csv(&next), 60);
        let r = run_drop(&h).await;
        assert!(
            report_for(&r, "hr-0002.csv").unwrap().rejected.is_some(),
            "{r:?}"
        );
        assert!(
            report_for(&r, "hr-0003.csv").unwrap().rejected.is_some(),
            "{r:?}"
        );
        assert_eq!(report_for(&r, "hr-0004.csv").unwrap().leavers, 1, "{r:?}");
        h.drain().await;
        assert!(!h.holds("E1", "berlin-sales"), "{}: E1 revoked", h.backend);
        assert!((2..=6).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
        // Set aside beside the drop directory, each with its reason.
        let rejected = h.dir.join("rejected");
        for name in ["hr-0002.csv", "hr-0003.csv"] {
            assert!(
                !h.dir.join("feeds").join(name).exists(),
                "{name} still in the drop directory"
            );
            assert!(rejected.join(name).is_file(), "{name} not in rejected/");
            let reason =
                std::fs::read_to_string(rejected.join(format!("{name}.reason.txt"))).unwrap();
            assert!(reason.contains(name), "{reason}");
        }
        let status = latchkey::cli::status_text(&h.app).await.unwrap();
        assert!(
            status.contains("hr-0002.csv") && status.contains("empty feed"),
            "{status}"
        );
        assert!(
            status.contains("hr-0003.csv") && status.contains("UTF-8"),
            "{status}"
        );
        let metrics = &h.app.engine.metrics;
        metrics
            .collect(h.app.store(), latchkey::clock::to_micros(h.clock.now_utc()))
            .await
            .unwrap();
        let scrape = metrics.encode_prometheus();
        assert!(
            scrape.contains("latchkey_rejected_files{source=\"hr\"} 2"),
            "{scrape}"
        );

        // A file whose last row was cut terminates E2 in its first lines: none of it is applied.
        let mut cut =
            String::from_utf8(csv(&[terminated("E2"), employee("E3", "sales", "berlin")])).unwrap();
        cut.push_str("E4,Person E4,e4@exa");
        drop_file(&h, "hr-0005.csv", cut.as_bytes(), 60);
        let r = run_drop(&h).await;
        let rejected_cut = report_for(&r, "hr-0005.csv").unwrap();
        assert!(
            rejected_cut
                .rejected
                .as_deref()
                .unwrap()
                .contains("truncated"),
            "{r:?}"
        );
        h.drain().await;
        assert!(
            (2..=6).all(|i| h.holds(&format!("E{i}"), "berlin-sales")),
            "nothing of a truncated file is applied"
        );
        // The complete file that follows is.
        let mut fixed = sales(&["E3", "E4", "E5", "E6"]);
        fixed.push(terminated("E1"));
        fixed.push(terminated("E2"));
        drop_file(&h, "hr-0006.csv", &csv(&fixed), 60);
        let r = run_drop(&h).await;
        assert_eq!(report_for(&r, "hr-0006.csv").unwrap().leavers, 1, "{r:?}");
        h.drain().await;
        assert!(!h.holds("E2", "berlin-sales"));
        assert!((3..=6).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
    });
}

#[tokio::test]
async fn a_partial_upload_waits_until_complete_and_checkpoints_follow_content() {
    each_backend!(|h| {
        six_in_sales(&h).await;
        // The first part of an upload: E5 and E6 are not written yet.
        let first = csv(&sales(&["E1", "E2", "E3", "E4"]));
        let path = drop_file(&h, "hr-0002.csv", &first, 0);
        let r = run_drop(&h).await;
        assert!(
            report_for(&r, "hr-0002.csv").is_none(),
            "read while written: {r:?}"
        );
        // The rest arrives two seconds later: still too fresh.
        h.clock.advance(chrono::Duration::seconds(2));
        let mut whole = first.clone();
        whole.extend_from_slice(
            format!(
                "{}\n{}\n",
                employee("E5", "sales", "berlin"),
                terminated("E6")
            )
            .as_bytes(),
        );
        std::fs::write(&path, &whole).unwrap();
        touch(&path, h.clock.now_utc());
        let r = run_drop(&h).await;
        assert!(report_for(&r, "hr-0002.csv").is_none(), "{r:?}");
        // Quiet for the settle time: the whole file is read, with E6's termination at its end.
        h.clock.advance(chrono::Duration::seconds(6));
        let r = run_drop(&h).await;
        let applied = report_for(&r, "hr-0002.csv").unwrap();
        assert_eq!((applied.leavers, applied.absent), (1, 0), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E6", "berlin-sales"));
        assert!((1..=5).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));

        // The same name rewritten with new content is applied again.
        let mut rewritten = sales(&["E1", "E2", "E3", "E5"]);
        rewritten.push(terminated("E4"));
        rewritten.push(terminated("E6"));
        drop_file(&h, "hr-0002.csv", &csv(&rewritten), 60);
        let r = run_drop(&h).await;
        assert_eq!(report_for(&r, "hr-0002.csv").unwrap().leavers, 1, "{r:?}");
        h.drain().await;
        assert!(!h.holds("E4", "berlin-sales"));
        // An identical file dropped again is skipped.
        let before = store::checkpoint(h.app.store().pool(), "hr").await.unwrap();
        let requests = h.sim.stats().requests;
        drop_file(&h, "hr-0002.csv", &csv(&rewritten), 60);
        let r = run_drop(&h).await;
        assert!(report_for(&r, "hr-0002.csv").is_none(), "{r:?}");
        h.drain().await;
        assert_eq!(h.sim.stats().requests, requests, "no vendor call");
        let after = store::checkpoint(h.app.store().pool(), "hr").await.unwrap();
        assert_eq!(before, after);
        assert!(after.unwrap().starts_with("hr-0002.csv@"));
    });
}

#[tokio::test]
async fn holds_from_a_header_only_file_are_released_by_the_full_feed_and_approving_one_revokes_no_one()
 {
    each_backend!(|h| {
        six_in_sales(&h).await;
        drop_file(&h, "hr-0002.csv", HEADER.as_bytes(), 60);
        let r = run_drop(&h).await;
        assert_eq!(report_for(&r, "hr-0002.csv").unwrap().held, 6, "{r:?}");
        let stale = store::held_changes(h.app.store().pool()).await.unwrap();
        assert_eq!(stale.len(), 6);
        drop_file(
            &h,
            "hr-0003.csv",
            &csv(&sales(&["E1", "E2", "E3", "E4", "E5", "E6"])),
            60,
        );
        let r = run_drop(&h).await;
        assert_eq!(report_for(&r, "hr-0003.csv").unwrap().released, 6, "{r:?}");
        assert!(
            store::held_changes(h.app.store().pool())
                .await
                .unwrap()
                .is_empty()
        );
        // An approver acting on the old list revokes no one.
        for c in &stale {
            assert!(
                h.app
                    .engine
                    .decide(c.id, true, "alice@example.com")
                    .await
                    .is_err()
            );
        }
        h.drain().await;
        assert!((1..=6).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
        let records = audit::records_about(h.app.store(), "E3", 50).await.unwrap();
        assert!(
            records.iter().any(|r| r.action == "held.released"),
            "{records:?}"
        );
    });
}

#[tokio::test]
async fn absence_becomes_a_leaver_only_after_the_grace() {
    each_backend!(|h| {
        let ids: Vec<String> = (1..=10).map(|i| format!("E{i}")).collect();
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        let without = |gone: &[&str]| -> Vec<String> {
            sales(
                &all.iter()
                    .copied()
                    .filter(|i| !gone.contains(i))
                    .collect::<Vec<_>>(),
            )
        };
        h.feed(&sales(&all)).await;
        h.drain().await;
        // E1 missing once: not a leaver yet.
        let r = h.feed(&without(&["E1"])).await;
        assert_eq!((r.absent, r.leavers, r.held), (1, 0, 0), "{r:?}");
        h.drain().await;
        assert!(
            h.holds("E1", "berlin-sales"),
            "one missing feed is not a leaver"
        );
        // E1 missing a second time: a leaver. E3 missing for the first time.
        let r = h.feed(&without(&["E1", "E3"])).await;
        assert_eq!((r.absent, r.leavers), (1, 1), "{r:?}");
        h.drain().await;
        assert!(!h.holds("E1", "berlin-sales"), "gone after the grace");
        assert!(h.holds("E3", "berlin-sales"));
        // E3 is back, then missing again: the count starts over.
        h.feed(&without(&["E1"])).await;
        let r = h.feed(&without(&["E1", "E3"])).await;
        assert_eq!((r.absent, r.leavers), (1, 0), "{r:?}");
        h.drain().await;
        assert!(h.holds("E3", "berlin-sales"));
        // An explicit termination never waits.
        let mut next = without(&["E1", "E3", "E4"]);
        next.push(terminated("E4"));
        let r = h.feed(&next).await;
        assert_eq!(r.leavers, 2, "E4 terminated, E3 past its grace: {r:?}");
        h.drain().await;
        assert!(!h.holds("E4", "berlin-sales") && !h.holds("E3", "berlin-sales"));
    });
}

/// Restart the harness's daemon on templates edited by `edit`, with the same store and simulator.
async fn reopen_with_templates(h: &mut Harness, edit: impl Fn(String) -> String) {
    let templates = edit(std::fs::read_to_string(templates_path()).unwrap());
    let path = h.dir.join(format!("templates-{}.toml", h.feed_no));
    h.feed_no += 1;
    std::fs::write(&path, templates).unwrap();
    let config_path = h.dir.join("latchkey.toml");
    let text = templates_line(&std::fs::read_to_string(&config_path).unwrap(), &path);
    std::fs::write(&config_path, text).unwrap();
    h.app = open_again(h).await;
}

/// Another daemon on the harness's configuration file, store, simulator and clock.
async fn open_again(h: &Harness) -> latchkey::app::App {
    h.open_with("", &[]).await
}

/// The `[policy] templates` line pointing at `path`, whichever file it named before.
fn templates_line(text: &str, path: &std::path::Path) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("templates = ") {
                format!("templates = \"{}\"", path.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_template_edit_reaches_everyone_and_a_typo_that_revokes_everyone_is_held() {
    use latchkey::reconcile;
    each_backend!(|h| {
        let mut people = vec![employee("E1", "engineering", "berlin")];
        people.extend((2..=10).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
        h.feed(&people).await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-lab"));
        let plan = h.app.engine.dry_run().await.unwrap();
        assert!(plan.is_empty(), "{}", plan.render());
        // The daemon's first start records what policy it reconciled against.
        let why = reconcile::due(&h.app.engine, h.clock.now_utc())
            .await
            .unwrap();
        assert_eq!(why.as_deref(), Some("first start"));
        let (_, r) = reconcile::run(&h.app.engine, "start").await.unwrap();
        assert_eq!((r.issues, r.revokes, r.held), (0, 0, 0));

        // A door dropped from a template: revoked at the vendor by the next reconciliation.
        let drop_lab = |t: String| t.patch("target = \"{{ site }}-lab\"", "target = \"\"");
        reopen_with_templates(&mut h, drop_lab).await;
        let now = h.clock.now_utc();
        let why = reconcile::due(&h.app.engine, now).await.unwrap();
        assert_eq!(why.as_deref(), Some("policy changed"));
        let plan = h.app.engine.dry_run().await.unwrap();
        assert_eq!(plan.summary(), "Plan: 0 to issue, 1 to revoke, 0 held");
        let (_, r) = reconcile::run(&h.app.engine, "test").await.unwrap();
        assert_eq!((r.issues, r.revokes, r.held), (0, 1, 0));
        h.drain().await;
        assert!(!h.holds("E1", "berlin-lab"), "dropped door revoked");
        assert!(h.holds("E1", "berlin-engineering"));
        assert_eq!(reconcile::due(&h.app.engine, now).await.unwrap(), None);

        // A door added to a template: issued to everyone it now covers.
        let add_plant = |t: String| {
            drop_lab(t).replace(
                "when = \"role == 'technician' or department == 'facilities'\"",
                "when = \"role == 'technician' or department in ['facilities', 'sales']\"",
            )
        };
        reopen_with_templates(&mut h, add_plant).await;
        let (plan, r) = reconcile::run(&h.app.engine, "test").await.unwrap();
        assert_eq!(plan.summary(), "Plan: 9 to issue, 0 to revoke, 0 held");
        assert_eq!(r.issues, 9);
        h.drain().await;
        assert!((2..=10).all(|i| h.holds(&format!("E{i}"), "berlin-plant-room")));

        // A typo'd condition that would revoke everyone's department door: held, nothing revoked.
        let typo = |t: String| {
            add_plant(t).replace(
                "when = \"employment_type == 'employee'\"",
                "when = \"employment_typ == 'employee'\"",
            )
        };
        reopen_with_templates(&mut h, typo).await;
        let (plan, r) = reconcile::run(&h.app.engine, "test").await.unwrap();
        assert_eq!(plan.summary(), "Plan: 0 to issue, 0 to revoke, 10 held");
        assert_eq!((r.revokes, r.held), (0, 10));
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering"));
        assert!((2..=10).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
        let status = latchkey::cli::status_text(&h.app).await.unwrap();
        assert!(status.contains("held for approval: 10"), "{status}");
        assert!(
            status.contains("would revoke nuki:berlin-sales (template department-door)"),
            "{status}"
        );
        // An approver lets one person's revocation through; the next reconciliation carries it out.
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        let e2 = held.iter().find(|c| c.key == "E2").unwrap();
        h.app
            .engine
            .decide(e2.id, true, "alice@example.com")
            .await
            .unwrap();
        let why = reconcile::due(&h.app.engine, h.clock.now_utc())
            .await
            .unwrap();
        assert_eq!(why.as_deref(), Some("approval"));
        let (_, r) = reconcile::run(&h.app.engine, "approval").await.unwrap();
        assert_eq!((r.revokes, r.held), (1, 9));
        h.drain().await;
        assert!(!h.holds("E2", "berlin-sales"));
        assert!(h.holds("E3", "berlin-sales"));

        // An approver rejects E3's: under the same policy the next (scheduled) reconciliation
        // keeps E3's door and does not ask again; the others stay held.
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        let e3 = held.iter().find(|c| c.key == "E3").unwrap();
        h.app
            .engine
            .decide(e3.id, false, "bob@example.com")
            .await
            .unwrap();
        let (plan, r) = reconcile::run(&h.app.engine, "schedule").await.unwrap();
        assert_eq!(
            plan.summary(),
            "Plan: 0 to issue, 0 to revoke, 8 held, 1 kept (rejected)"
        );
        assert_eq!((r.revokes, r.held), (0, 8));
        let held = store::held_changes(h.app.store().pool()).await.unwrap();
        assert!(!held.iter().any(|c| c.key == "E3"), "{held:?}");
        assert_eq!(held.len(), 8, "{held:?}");
        h.drain().await;
        assert!(h.holds("E3", "berlin-sales"));

        // The typo fixed: the holds are released and the person it hit gets the door back.
        reopen_with_templates(&mut h, add_plant).await;
        let (plan, _) = reconcile::run(&h.app.engine, "test").await.unwrap();
        assert_eq!(plan.summary(), "Plan: 1 to issue, 0 to revoke, 0 held");
        assert!(
            store::held_changes(h.app.store().pool())
                .await
                .unwrap()
                .is_empty()
        );
        h.drain().await;
        assert!(h.holds("E2", "berlin-sales"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_reconciles_a_dropped_door_at_start() {
    each_backend!(|h| {
        let mut people = vec![employee("E1", "engineering", "berlin")];
        people.extend((2..=10).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
        h.feed(&people).await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-lab"));
        reopen_with_templates(&mut h, |t| {
            t.replace("target = \"{{ site }}-lab\"", "target = \"\"")
        })
        .await;
        let daemon = open_again(&h).await;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { daemon.run(rx).await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while h.holds("E1", "berlin-lab") && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tx.send(true).unwrap();
        running.await.unwrap().unwrap();
        assert!(
            !h.holds("E1", "berlin-lab"),
            "the running daemon revoked the dropped door"
        );
        assert!(h.holds("E1", "berlin-engineering"));
        assert!((2..=10).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
    });
}

/// How many audit records of this action there are.
async fn audited(store: &latchkey::store::Store, action: &str) -> usize {
    latchkey::audit::recent_records(store, None, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.action == action)
        .count()
}

/// Wait (up to 30 s) for a first audit record of this action.
async fn until_audited(store: &latchkey::store::Store, action: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while audited(store, action).await == 0 {
        assert!(std::time::Instant::now() < deadline, "no {action} audited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Templates edited while the daemon runs take effect without a restart; an edit that does not
/// load is refused (audited, last good policy kept: nobody loses a door to a syntax error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_edited_while_running_takes_effect_and_a_broken_edit_is_refused() {
    each_backend!(|h| {
        let mut people = vec![employee("E1", "engineering", "berlin")];
        people.extend((2..=4).map(|i| employee(&format!("E{i}"), "sales", "berlin")));
        h.feed(&people).await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-lab"));
        // The daemon's templates file is one this test may edit in place.
        reopen_with_templates(&mut h, |t| t).await;
        let live = h.dir.join(format!("templates-{}.toml", h.feed_no - 1));
        let daemon = open_again(&h).await;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { daemon.run(rx).await });
        let store = h.app.store().clone();
        until_audited(&store, "reconcile.completed").await;
        // A broken edit: refused once, and everyone keeps their doors.
        let good = std::fs::read_to_string(&live).unwrap();
        std::fs::write(&live, good.replace("when = ", "when == ")).unwrap();
        until_audited(&store, "policy.reload_refused").await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-lab") && h.holds("E1", "berlin-engineering"));
        assert!((2..=4).all(|i| h.holds(&format!("E{i}"), "berlin-sales")));
        // The door dropped in the running daemon's file: revoked without a restart.
        let dropped = good.replace("target = \"{{ site }}-lab\"", "target = \"\"");
        assert_ne!(dropped, good);
        std::fs::write(&live, dropped).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while h.holds("E1", "berlin-lab") && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tx.send(true).unwrap();
        running.await.unwrap().unwrap();
        assert!(
            !h.holds("E1", "berlin-lab"),
            "the running daemon revoked the door dropped from its templates"
        );
        assert!(h.holds("E1", "berlin-engineering"));
        assert_eq!(
            audited(&store, "policy.reload_refused").await,
            1,
            "refused once"
        );
        assert_eq!(audited(&store, "policy.reloaded").await, 1);
    });
}

/// An operator's suspension (a lost phone) revokes the person's grants at leaver priority,
/// outlasts feeds and reconciliations that say they are active, and resume gives back what policy
/// grants at that moment; a leaver's suspension ends with them.
#[tokio::test]
async fn a_suspension_revokes_now_outlasts_feeds_and_resume_gives_back_what_policy_grants() {
    use latchkey::model::Action;
    use latchkey::{reconcile, suspension};
    each_backend!(|h| {
        let e2 = employee("E2", "sales", "london");
        h.feed(&[employee("E1", "engineering", "berlin"), e2.clone()])
            .await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-engineering") && h.holds("E1", "berlin-lab"));
        let a = suspension::suspend(&h.app.engine, "E1", None, "lost phone", "os:alice")
            .await
            .unwrap();
        assert_eq!(a.revokes, 2, "{}", h.backend);
        h.drain().await;
        assert!(!h.holds("E1", "berlin-engineering") && !h.holds("E1", "berlin-lab"));
        assert!(h.holds("E2", "london-sales"), "nobody else is touched");
        let done = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revokes: Vec<_> = done
            .iter()
            .filter(|c| c.identity_key == "E1" && c.action == Action::Revoke)
            .collect();
        assert_eq!(revokes.len(), 2);
        assert!(
            revokes.iter().all(|c| c.cause == "suspension"),
            "{revokes:?}"
        );

        // The feed says E1 is active and moved: the suspension still withholds everything.
        let r = h
            .feed(&[employee("E1", "finance", "london"), e2.clone()])
            .await;
        assert_eq!(r.issues, 0, "{r:?}");
        h.drain().await;
        assert!(!h.holds("E1", "london-finance"));
        let (plan, _) = reconcile::run(&h.app.engine, "schedule").await.unwrap();
        assert!(plan.is_empty(), "{}", plan.render());
        let access = latchkey::cli::access_text(&h.app, "E1").await.unwrap();
        assert!(
            access.contains("SUSPENDED") && access.contains("lost phone"),
            "{access}"
        );

        // Resume: what policy grants now (the new department's door), not what was taken.
        let a = suspension::resume(&h.app.engine, "E1", Some("phone found"), "os:bob")
            .await
            .unwrap();
        assert_eq!((a.issues, a.revokes), (1, 0));
        h.drain().await;
        assert!(h.holds("E1", "london-finance"));
        assert!(!h.holds("E1", "berlin-lab"));
        let e = suspension::resume(&h.app.engine, "E1", None, "os:bob")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not suspended"), "{e}");

        // Refusals name what is wrong; nothing is suspended by them.
        let e = suspension::suspend(&h.app.engine, "E2", Some(&["nope".into()]), "x", "os:alice")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("`nope`"), "{e}");
        let e = suspension::suspend(&h.app.engine, "E2", None, " ", "os:alice")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reason"), "{e}");
        assert!(h.holds("E2", "london-sales"));

        // Suspended at one connector, then a leaver: the suspension ends with the person, so a
        // rehire starts afresh.
        suspension::suspend(
            &h.app.engine,
            "E2",
            Some(&["nuki".into()]),
            "investigation",
            "os:alice",
        )
        .await
        .unwrap();
        h.drain().await;
        assert!(!h.holds("E2", "london-sales"));
        h.feed(&[employee("E1", "finance", "london"), terminated("E2")])
            .await;
        h.drain().await;
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        assert!(
            store::suspensions::active_of(&mut conn, "E2")
                .await
                .unwrap()
                .is_empty()
        );
        drop(conn);
        for action in [
            "identity.suspended",
            "identity.resumed",
            "identity.suspension_ended",
        ] {
            assert!(audited(h.app.store(), action).await > 0, "{action} audited");
        }
    });
}

#[tokio::test]
async fn a_temporary_door_is_issued_at_its_start_and_revoked_at_its_end_across_a_restart() {
    use latchkey::access_requests::{self, Ask, RequestError};
    use latchkey::model::Action;
    each_backend!(|h| {
        h.feed(&[
            employee("E1", "sales", "berlin"),
            employee("E2", "engineering", "berlin"),
        ])
        .await;
        h.drain().await;
        assert!(!h.holds("E1", "berlin-plant-room"));
        let now = h.clock.now_utc();
        let ask = |person: &str, from: Option<i64>, hours: i64| Ask {
            person: person.into(),
            connector: "nuki".into(),
            target: "berlin-plant-room".into(),
            starts_at: from.map(|m| now + chrono::Duration::minutes(m)),
            ends_at: now
                + chrono::Duration::minutes(from.unwrap_or(0))
                + chrono::Duration::hours(hours),
            reason: "boiler service".into(),
        };
        let engine = h.app.engine.clone();

        // Refusals name what is wrong, and record nothing.
        let bad = [
            (
                Ask {
                    target: "moon-base".into(),
                    ..ask("E1", None, 2)
                },
                "moon-base",
            ),
            (
                Ask {
                    connector: "acme".into(),
                    ..ask("E1", None, 2)
                },
                "acme",
            ),
            (
                Ask {
                    reason: " ".into(),
                    ..ask("E1", None, 2)
                },
                "reason",
            ),
            (ask("E1", None, 24 * 40), "31 days"),
            (ask("E9", None, 2), "E9"),
            (
                Ask {
                    starts_at: Some(now - chrono::Duration::hours(3)),
                    ends_at: now - chrono::Duration::hours(1),
                    ..ask("E1", None, 2)
                },
                "ended",
            ),
        ];
        for (a, named) in bad {
            let e = access_requests::ask(&engine, &a, "os:dana")
                .await
                .unwrap_err();
            assert!(
                matches!(e, RequestError::Invalid(_)) && e.to_string().contains(named),
                "{e}"
            );
        }

        // Asked by dana, starting in 30 minutes for 2 hours. Dana cannot approve it herself.
        let r = access_requests::ask(&engine, &ask("E1", Some(30), 2), "os:dana")
            .await
            .unwrap();
        assert_eq!(r.status, "requested");
        let e = access_requests::decide(&engine, r.id, true, "os:dana")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::DualControl { .. }), "{e}");
        let (approved, a) = access_requests::decide(&engine, r.id, true, "os:sam")
            .await
            .unwrap();
        assert_eq!(
            (approved.status.as_str(), a.issues),
            ("approved", 0),
            "{}: not yet its window",
            h.backend
        );
        let e = access_requests::decide(&engine, r.id, false, "os:bob")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::WrongState { .. }), "{e}");
        engine.tick().await.unwrap();
        h.drain().await;
        assert!(
            !h.holds("E1", "berlin-plant-room"),
            "{}: issued before its window",
            h.backend
        );

        // Its window opens: the schedule issues it.
        h.clock.advance(chrono::Duration::minutes(31));
        let a = engine.tick().await.unwrap();
        assert_eq!(a.issues, 1, "{}", h.backend);
        h.drain().await;
        assert!(h.holds("E1", "berlin-plant-room"));
        let access = latchkey::cli::access_text(&h.app, "E1").await.unwrap();
        assert!(access.contains(&format!("request:{}", r.id)), "{access}");
        // A reconciliation leaves a temporary grant alone; a feed changes nothing about it.
        let (plan, _) = latchkey::reconcile::run(&h.app.engine, "schedule")
            .await
            .unwrap();
        assert!(plan.is_empty(), "{}", plan.render());
        h.feed(&[
            employee("E1", "sales", "berlin"),
            employee("E2", "engineering", "berlin"),
        ])
        .await;
        h.drain().await;
        assert!(h.holds("E1", "berlin-plant-room"));

        // The daemon is down when the window closes; the next one revokes it at once, and the
        // latency counts from the end instant.
        h.clock.advance(chrono::Duration::hours(2));
        h.app = open_again(&h).await;
        let a = h.app.engine.tick().await.unwrap();
        assert_eq!(a.revokes, 1, "{}", h.backend);
        h.drain().await;
        assert!(
            !h.holds("E1", "berlin-plant-room"),
            "{}: still open after its end",
            h.backend
        );
        let ended =
            latchkey::store::access_requests::list(h.app.store().pool(), None, Some("E1"), 10)
                .await
                .unwrap();
        assert_eq!(ended[0].status, "expired");
        assert_eq!(ended[0].closed_by.as_deref(), Some("schedule"));
        let done = store::completed_commands(h.app.store().pool())
            .await
            .unwrap();
        let revoke = done
            .iter()
            .find(|c| {
                c.identity_key == "E1"
                    && c.action == Action::Revoke
                    && c.target == "berlin-plant-room"
            })
            .unwrap();
        assert_eq!(revoke.cause, "expiry");
        assert_eq!(
            revoke.trigger_at,
            latchkey::clock::to_micros(now + chrono::Duration::minutes(150))
        );

        // A door a template already grants is kept when a request for it ends early.
        let engine = h.app.engine.clone();
        let r = access_requests::ask(
            &engine,
            &Ask {
                person: "E2".into(),
                target: "berlin-lab".into(),
                ..ask("E2", None, 4)
            },
            "os:dana",
        )
        .await
        .unwrap();
        let (_, a) = access_requests::decide(&engine, r.id, true, "os:sam")
            .await
            .unwrap();
        assert_eq!(a.issues, 0, "already held through a template");
        let (ended, a) = access_requests::end(&engine, r.id, "os:sam").await.unwrap();
        assert_eq!((ended.status.as_str(), a.revokes), ("ended", 0));
        h.drain().await;
        assert!(h.holds("E2", "berlin-lab"));
        let audit: Vec<String> = latchkey::audit::query(h.app.store(), &Default::default(), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.action, r.actor))
            .collect();
        for line in [
            "request.created os:dana",
            "request.approved os:sam",
            "request.activated schedule",
            "request.expired schedule",
            "request.ended os:sam",
        ] {
            assert!(
                audit.iter().any(|a| a == line),
                "{}: no `{line}`",
                h.backend
            );
        }
    });
}

#[tokio::test]
async fn break_glass_opens_at_once_pages_ends_at_its_ttl_and_waits_for_another_approvers_review() {
    use latchkey::access_requests::{self, Ask, RequestError};
    each_backend!(|h| {
        h.feed(&[employee("E1", "sales", "berlin")]).await;
        h.drain().await;
        let engine = h.app.engine.clone();
        let ask = Ask {
            person: "E1".into(),
            connector: "nuki".into(),
            target: "berlin-plant-room".into(),
            starts_at: None,
            ends_at: h.clock.now_utc(),
            reason: "flooding in the plant room".into(),
        };
        let gauges = |engine: std::sync::Arc<latchkey::engine::Engine>,
                      clock: latchkey::clock::ManualClock| async move {
            let now = latchkey::clock::to_micros(clock.now_utc());
            engine.metrics.collect(&engine.store, now).await.unwrap();
            let text = engine.metrics.encode_prometheus();
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(&format!("{name} ")))
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap()
            };
            (
                value("latchkey_break_glass_open"),
                value("latchkey_break_glass_unreviewed"),
                value("latchkey_break_glass_review_overdue"),
            )
        };

        // Longer than `[break_glass] max_minutes` is refused.
        let e = access_requests::open_emergency(&engine, &ask, Some(241), "os:alice")
            .await
            .unwrap_err();
        assert!(
            matches!(e, RequestError::Invalid(_)) && e.to_string().contains("240 minutes"),
            "{e}"
        );

        // One approver opens it (the default rule): in force at once, issued, paging.
        let (r, a) = access_requests::open_emergency(&engine, &ask, None, "os:alice")
            .await
            .unwrap();
        assert_eq!(
            (r.kind.as_str(), r.status.as_str(), a.issues),
            ("emergency", "active", 1),
            "{}",
            h.backend
        );
        h.drain().await;
        assert!(h.holds("E1", "berlin-plant-room"));
        assert_eq!(
            gauges(engine.clone(), h.clock.clone()).await,
            (1, 1, 0),
            "{}",
            h.backend
        );

        // At its time-to-live (60 minutes by default) the schedule revokes it; the review is
        // still owed.
        h.clock.advance(chrono::Duration::minutes(61));
        let ended = engine.tick().await.unwrap();
        assert_eq!(ended.revokes, 1, "{}", h.backend);
        h.drain().await;
        assert!(
            !h.holds("E1", "berlin-plant-room"),
            "{}: still open past its TTL",
            h.backend
        );
        assert_eq!(gauges(engine.clone(), h.clock.clone()).await, (0, 1, 0));

        // Past the review deadline (24 hours) unreviewed: the overdue gauge the alert reads.
        h.clock.advance(chrono::Duration::hours(24));
        assert_eq!(
            gauges(engine.clone(), h.clock.clone()).await,
            (0, 1, 1),
            "{}",
            h.backend
        );
        let queue = store::access_requests::awaiting_review(h.app.store().pool())
            .await
            .unwrap();
        assert_eq!(
            queue.iter().map(|q| q.id).collect::<Vec<_>>(),
            vec![r.id],
            "{}",
            h.backend
        );
        let e = access_requests::review(&engine, r.id, "was me", "os:alice")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::DualControl { .. }), "{e}");
        let e = access_requests::review(&engine, r.id, " ", "os:bob")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("note"), "{e}");
        let reviewed =
            access_requests::review(&engine, r.id, "flood confirmed by facilities", "os:bob")
                .await
                .unwrap();
        assert_eq!(reviewed.reviewed_by.as_deref(), Some("os:bob"));
        assert_eq!(gauges(engine.clone(), h.clock.clone()).await, (0, 0, 0));
        assert!(
            store::access_requests::awaiting_review(h.app.store().pool())
                .await
                .unwrap()
                .is_empty()
        );
        let e = access_requests::review(&engine, r.id, "again", "os:carol")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::WrongState { .. }), "{e}");

        // Where two approvers are required, one alone opens nothing, and cannot approve it.
        let config_path = h.dir.join("latchkey.toml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(
            &config_path,
            format!("{text}\n[break_glass]\nrule = \"two_approvers\"\n"),
        )
        .unwrap();
        h.app = open_again(&h).await;
        let engine = h.app.engine.clone();
        let ask = Ask {
            ends_at: h.clock.now_utc(),
            ..ask
        };
        let (r, a) = access_requests::open_emergency(&engine, &ask, Some(30), "os:alice")
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_str(), a.issues),
            ("requested", 0),
            "{}",
            h.backend
        );
        h.drain().await;
        assert!(!h.holds("E1", "berlin-plant-room"));
        let e = access_requests::decide(&engine, r.id, true, "os:alice")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::DualControl { .. }), "{e}");
        let (r, a) = access_requests::decide(&engine, r.id, true, "os:bob")
            .await
            .unwrap();
        assert_eq!((r.status.as_str(), a.issues), ("active", 1));
        assert!(
            r.review_due_at.is_none(),
            "two approvers need no review afterwards"
        );
        h.drain().await;
        assert!(h.holds("E1", "berlin-plant-room"));
        assert_eq!(gauges(engine.clone(), h.clock.clone()).await, (1, 0, 0));
        let audit: Vec<String> = latchkey::audit::query(h.app.store(), &Default::default(), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.action, r.actor))
            .collect();
        for line in [
            "emergency.opened os:alice",
            "emergency.reviewed os:bob",
            "request.approved os:bob",
        ] {
            assert!(
                audit.iter().any(|a| a == line),
                "{}: no `{line}`",
                h.backend
            );
        }
    });
}

#[tokio::test]
async fn a_risk_tier_shortens_windows_and_requires_two_approvers_for_break_glass_at_its_doors() {
    use latchkey::access_requests::{self, Ask};
    each_backend!(|h| {
        let config_path = h.dir.join("latchkey.toml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(
            &config_path,
            format!(
                "{text}\n[tiers.high]\ntargets = [\"berlin-plant-room\"]\nmax_window_days = 2\n\
                 [tiers.high.break_glass]\nrule = \"two_approvers\"\nmax_minutes = 30\ndefault_minutes = 15\n"
            ),
        )
        .unwrap();
        h.app = open_again(&h).await;
        h.feed(&[employee("E1", "sales", "berlin")]).await;
        let engine = h.app.engine.clone();
        let now = h.clock.now_utc();
        let ask = |target: &str, days: i64| Ask {
            person: "E1".into(),
            connector: "nuki".into(),
            target: target.into(),
            starts_at: None,
            ends_at: now + chrono::Duration::days(days),
            reason: "audit of the boiler".into(),
        };
        let e = access_requests::ask(&engine, &ask("berlin-plant-room", 3), "os:dana")
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("risk tier `high`") && e.to_string().contains("2 days"),
            "{e}"
        );
        access_requests::ask(&engine, &ask("berlin-plant-room", 2), "os:dana")
            .await
            .unwrap();
        access_requests::ask(&engine, &ask("berlin-lab", 3), "os:dana")
            .await
            .unwrap();

        // Break-glass at a high-tier door waits for a second approver; elsewhere it is at once.
        let (high, a) = access_requests::open_emergency(
            &engine,
            &ask("berlin-plant-room", 0),
            None,
            "os:alice",
        )
        .await
        .unwrap();
        assert_eq!(
            (high.status.as_str(), a.issues),
            ("requested", 0),
            "{}",
            h.backend
        );
        assert_eq!(
            high.ends_at - high.requested_at,
            15 * 60_000_000,
            "the tier's default length"
        );
        let e = access_requests::open_emergency(
            &engine,
            &ask("berlin-plant-room", 0),
            Some(45),
            "os:alice",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("30 minutes"), "{e}");
        let (low, a) =
            access_requests::open_emergency(&engine, &ask("berlin-lab", 0), None, "os:alice")
                .await
                .unwrap();
        assert_eq!(
            (low.status.as_str(), a.issues),
            ("active", 1),
            "{}",
            h.backend
        );
    });
}

#[tokio::test]
async fn a_tier_needing_two_named_approvers_issues_only_after_both() {
    use latchkey::access_requests::{self, Ask, RequestError};
    each_backend!(|h| {
        let config_path = h.dir.join("latchkey.toml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        let operator = |name: &str| {
            let hash = latchkey::operators::token_sha256(&format!("lkop_{name}-token"));
            format!(
                "[operators.{name}]\nrole = \"approver\"\ntoken_sha256 = \"{hash}\"\nos_user = \"{name}\"\n"
            )
        };
        std::fs::write(
            &config_path,
            format!(
                "{text}\n{}{}{}[tiers.high]\ntargets = [\"berlin-plant-room\"]\napprovals = 2\n\
                 approvers = [\"sam\", \"cio\"]\n",
                operator("sam"),
                operator("cio"),
                operator("bob"),
            ),
        )
        .unwrap();
        h.app = open_again(&h).await;
        h.feed(&[employee("E1", "sales", "berlin")]).await;
        h.drain().await;
        let engine = h.app.engine.clone();
        let ask = Ask {
            person: "E1".into(),
            connector: "nuki".into(),
            target: "berlin-plant-room".into(),
            starts_at: None,
            ends_at: h.clock.now_utc() + chrono::Duration::hours(8),
            reason: "boiler service".into(),
        };
        let r = access_requests::ask(&engine, &ask, "os:dana")
            .await
            .unwrap();

        // bob is an approver, but not one of the tier's.
        let e = access_requests::decide(&engine, r.id, true, "os:bob")
            .await
            .unwrap_err();
        assert!(
            matches!(e, RequestError::NotAnApprover { .. }) && e.to_string().contains("sam, cio"),
            "{e}"
        );
        // sam's approval is recorded; the door waits for a second person.
        let (after_one, a) = access_requests::decide(&engine, r.id, true, "os:sam")
            .await
            .unwrap();
        assert_eq!((after_one.status.as_str(), a.issues), ("requested", 0));
        h.drain().await;
        assert!(
            !h.holds("E1", "berlin-plant-room"),
            "{}: issued on one approval",
            h.backend
        );
        // sam again, under his operator name: the same person.
        let e = access_requests::decide(&engine, r.id, true, "operator:sam")
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::AlreadyApproved { .. }), "{e}");
        // cio is the second: approved and in force.
        let (approved, a) = access_requests::decide(&engine, r.id, true, "os:cio")
            .await
            .unwrap();
        assert_eq!(
            (approved.status.as_str(), a.issues),
            ("active", 1),
            "{}",
            h.backend
        );
        h.drain().await;
        assert!(h.holds("E1", "berlin-plant-room"));
        let recorded = audited(h.app.store(), "request.approval_recorded").await;
        assert_eq!(recorded, 1, "{}", h.backend);
    });
}

#[tokio::test]
async fn a_visitor_gets_a_requested_door_and_loses_everything_after_their_last_day() {
    use latchkey::access_requests::{self, Ask};
    use latchkey::visitors::{self, Visitor};
    each_backend!(|h| {
        h.feed(&[employee("E1", "sales", "berlin")]).await;
        h.drain().await;
        let engine = h.app.engine.clone();
        let today = h.clock.now_utc().date_naive();
        let visitor = |key: &str, days: i64| Visitor {
            key: key.into(),
            name: "Vera Visitor".into(),
            // The simulator account is found by e-mail (`holds`).
            email: Some(format!("{}@example.com", key.to_lowercase())),
            site: Some("berlin".into()),
            host: "E1".into(),
            until: today + chrono::Duration::days(days),
            reason: "boiler service".into(),
        };
        for (v, named) in [
            (visitor("E1", 1), "already knows"),
            (visitor("V-1", 40), "31 days"),
            (visitor("V-1", -1), "passed"),
            (
                Visitor {
                    host: "E9".into(),
                    ..visitor("V-1", 1)
                },
                "E9",
            ),
        ] {
            let e = visitors::add(&engine, &v, "os:dana").await.unwrap_err();
            assert!(e.to_string().contains(named), "{e}");
        }
        visitors::add(&engine, &visitor("V-1", 1), "os:dana")
            .await
            .unwrap();
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        let v = store::get_identity(&mut conn, "V-1")
            .await
            .unwrap()
            .unwrap();
        drop(conn);
        assert!(v.lifecycle.entitled(), "{}: {:?}", h.backend, v.lifecycle);
        assert!(
            store::grants_of(&mut h.app.store().pool().acquire().await.unwrap(), "V-1")
                .await
                .unwrap()
                .is_empty(),
            "templates give a visitor nothing"
        );

        // A door for the visit, asked at the desk and approved by security.
        let r = access_requests::ask(
            &engine,
            &Ask {
                person: "V-1".into(),
                connector: "nuki".into(),
                target: "berlin-plant-room".into(),
                starts_at: None,
                ends_at: h.clock.now_utc() + chrono::Duration::days(5),
                reason: "boiler service".into(),
            },
            "os:dana",
        )
        .await
        .unwrap();
        access_requests::decide(&engine, r.id, true, "os:sam")
            .await
            .unwrap();
        h.drain().await;
        assert!(h.holds("V-1", "berlin-plant-room"));

        // After the last day the visitor is a leaver: the door goes, though the request ran longer.
        h.clock.advance(chrono::Duration::days(3));
        engine.tick().await.unwrap();
        h.drain().await;
        assert!(
            !h.holds("V-1", "berlin-plant-room"),
            "{}: a visitor kept a door past their last day",
            h.backend
        );
        let mut conn = h.app.store().pool().acquire().await.unwrap();
        let v = store::get_identity(&mut conn, "V-1")
            .await
            .unwrap()
            .unwrap();
        assert!(!v.lifecycle.entitled(), "{}", h.backend);
    });
}
