//! People planned together: a feed's batches read and write many people at once. What a batch
//! writes must be exactly what the same changes applied one at a time write, whatever falls on a
//! batch's edge, and a person changed twice in one batch must see their first change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::audit::{self, Verdict};
use latchkey::batch::Batch;
use latchkey::model::{Action, CommandStatus, GrantState, PersonRecord};
use latchkey::store::{self, Store};
use latchkey_sim::NukiOptions;
use std::collections::BTreeMap;

/// What a store holds, in a form two stores can be compared by: identities, ledger, outbox and
/// the audit records of each person, without ids or times.
#[derive(Debug, PartialEq)]
struct Holding {
    identities: Vec<(String, String, String)>,
    grants: Vec<(String, String, String, String, i64)>,
    commands: Vec<(String, String, String, String, i64, String, String)>,
    audit: BTreeMap<(String, String), usize>,
}

async fn holding(s: &Store) -> Holding {
    let identities = store::list_identities(s.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|i| {
            let attrs = serde_json::Value::Object(i.attrs).to_string();
            (i.key.to_string(), i.lifecycle.as_str().to_string(), attrs)
        })
        .collect();
    let grants = store::all_grants(s.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|g| {
            (
                g.identity_key.to_string(),
                g.connector,
                g.target,
                g.desired.as_str().to_string(),
                g.generation,
            )
        })
        .collect();
    let mut commands: Vec<_> = all_commands(s)
        .await
        .into_iter()
        .map(|c| {
            (
                c.identity_key.to_string(),
                c.connector,
                c.target,
                c.action.as_str().to_string(),
                c.generation,
                c.cause,
                c.status.as_str().to_string(),
            )
        })
        .collect();
    commands.sort();
    let mut audit = BTreeMap::new();
    for r in store::audit::find(s, &Default::default(), 100_000)
        .await
        .unwrap()
    {
        *audit.entry((r.subject, r.action)).or_insert(0) += 1;
    }
    Holding {
        identities,
        grants,
        commands,
        audit,
    }
}

async fn all_commands(s: &Store) -> Vec<store::CommandRow> {
    use CommandStatus::*;
    let mut out = Vec::new();
    for status in [Pending, Inflight, Confirming, Done, Dead, Superseded] {
        out.extend(
            store::commands_where_status(s.pool(), status, 100_000)
                .await
                .unwrap(),
        );
    }
    out
}

/// Every HR record `s` stores, by key.
async fn hr_records(s: &Store) -> Vec<PersonRecord> {
    let mut out = Vec::new();
    for i in store::list_identities(s.pool()).await.unwrap() {
        let mut conn = s.pool().acquire().await.unwrap();
        if let Some(r) = store::source_record(&mut conn, "hr", &i.key).await.unwrap() {
            out.push(serde_json::from_str(&r.record).unwrap());
        }
    }
    out
}

/// Apply records one change at a time, each on its own transaction, as a source that pushes
/// single changes does.
async fn one_at_a_time(h: &Harness, records: &[PersonRecord]) {
    let now = h.app.engine.clock.now();
    for r in records {
        let mut tx = h.app.store().begin_write().await.unwrap();
        h.app.engine.apply_record_tx(&mut tx, r, now).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn people(n: usize, dept: impl Fn(usize) -> &'static str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let site = if i % 3 == 0 { "london" } else { "berlin" };
            employee(&format!("E{i:03}"), dept(i), site)
        })
        .collect()
}

/// 130 people (three batches, the last one short), then a feed that moves some, terminates
/// others and leaves the rest: the store the batches wrote is the store single changes write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_in_batches_writes_what_the_same_changes_one_at_a_time_write() {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["batched", "single"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let first = backends(&tmp.path().join("batched")).await;
    let second = backends(&tmp.path().join("single")).await;
    for ((name, url), (_, url_single)) in first.into_iter().zip(second) {
        let dir = tmp.path().join(&name);
        let mut batched = Harness::new(&name, &url, &dir.join("a"), NukiOptions::default()).await;
        let single = Harness::new(&name, &url_single, &dir.join("b"), NukiOptions::default()).await;

        let joiners = people(130, |i| if i % 2 == 0 { "engineering" } else { "sales" });
        let r = batched.feed(&joiners).await;
        assert_eq!(r.joiners, 130, "{name}: {r:?}");
        let records = hr_records(batched.app.store()).await;
        assert_eq!(records.len(), 130);
        one_at_a_time(&single, &records).await;
        assert_eq!(
            holding(batched.app.store()).await,
            holding(single.app.store()).await,
            "{name}: joiners"
        );
        // At the vendor, so what leaves must be revoked there.
        batched.drain().await;
        single.drain().await;

        // Movers (every fifth person to finance), leavers (every seventh terminated) and the
        // rest unchanged, in one feed whose leavers are applied first.
        let mut next = people(130, |i| {
            if i % 5 == 0 {
                "finance"
            } else if i % 2 == 0 {
                "engineering"
            } else {
                "sales"
            }
        });
        for (i, line) in next.iter_mut().enumerate() {
            if i % 7 == 0 {
                *line = row(
                    &format!("E{i:03}"),
                    "sales",
                    "analyst",
                    "employee",
                    if i % 3 == 0 { "london" } else { "berlin" },
                    "Terminated",
                    "2020-01-01",
                    "2026-11-20",
                    "",
                );
            }
        }
        let r = batched.feed(&next).await;
        assert_eq!(r.leavers, 19, "{name}: {r:?}");
        assert!(r.movers > 0 && r.revokes > 0, "{name}: {r:?}");
        let changed: Vec<PersonRecord> = hr_records(batched.app.store())
            .await
            .into_iter()
            .filter(|r| {
                let n: usize = r.key[1..].parse().unwrap();
                n.is_multiple_of(5) || n.is_multiple_of(7)
            })
            .collect();
        one_at_a_time(&single, &changed).await;
        assert_eq!(
            holding(batched.app.store()).await,
            holding(single.app.store()).await,
            "{name}: movers and leavers"
        );
        for h in [&batched, &single] {
            assert!(matches!(
                audit::verify(h.app.store()).await.unwrap(),
                Verdict::Intact { .. }
            ));
        }
    }
}

/// A person who joins and leaves within one batch: the leave sees the join's issues in the
/// outbox and supersedes them, and nothing reached the vendor, so nothing is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_changed_twice_in_one_batch_sees_their_first_change() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let mut h =
            Harness::new(&name, &url, &tmp.path().join(&name), NukiOptions::default()).await;
        // E2's record is the model of E1's; E3 holds a door at the vendor.
        h.feed(&[
            employee("E2", "sales", "london"),
            employee("E3", "sales", "london"),
        ])
        .await;
        h.drain().await;
        let mut joins = stored_record(&h, "E2").await;
        joins.key = "E1".into();
        let mut leaves = joins.clone();
        leaves.status = Some(latchkey::model::RecordStatus::Terminated);
        leaves.termination_date = Some(chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap());
        let mut moves = stored_record(&h, "E3").await;
        moves.attrs.insert("department".into(), "finance".into());

        let now = h.app.engine.clock.now();
        let mut tx = h.app.store().begin_write().await.unwrap();
        let keys = ["E1", "E3"];
        let mut batch = Batch::load(&mut tx, &keys, now).await.unwrap();
        for r in [&joins, &moves, &leaves] {
            h.app
                .engine
                .stage_record(&mut tx, &mut batch, r, now)
                .await
                .unwrap();
        }
        batch.flush(&mut tx).await.unwrap();
        tx.commit().await.unwrap();

        let commands = all_commands(h.app.store()).await;
        let of = |key: &str| -> Vec<_> {
            commands
                .iter()
                .filter(|c| c.identity_key.as_str() == key)
                .collect()
        };
        let e1 = of("E1");
        assert!(!e1.is_empty(), "{name}: E1's join enqueued issues");
        assert!(
            e1.iter()
                .all(|c| c.action == Action::Issue && c.status == CommandStatus::Superseded),
            "{name}: E1's issues are superseded and no revoke follows: {e1:?}"
        );
        let ledger = store::all_grants(h.app.store().pool()).await.unwrap();
        assert!(
            ledger
                .iter()
                .filter(|g| g.identity_key.as_str() == "E1")
                .all(|g| g.desired == GrantState::Absent),
            "{name}: E1 is wanted nowhere"
        );
        // E3 moved in the same batch: its finance door is issued, its sales door revoked.
        let e3 = of("E3");
        assert!(
            e3.iter()
                .any(|c| c.action == Action::Issue && c.target == "london-finance"),
            "{name}: {e3:?}"
        );
        assert!(
            e3.iter()
                .any(|c| c.action == Action::Revoke && c.target == "london-sales"),
            "{name}: {e3:?}"
        );
        assert_eq!(batch.applied_of("E3").revokes, 1, "{name}");
        assert!(matches!(
            audit::verify(h.app.store()).await.unwrap(),
            Verdict::Intact { .. }
        ));
    }
}

async fn stored_record(h: &Harness, key: &str) -> PersonRecord {
    let mut conn = h.app.store().pool().acquire().await.unwrap();
    let stored = store::source_record(&mut conn, "hr", key)
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&stored.record).unwrap()
}

/// Policy's write of a ledger row leaves what the vendor was seen to hold as the dispatcher last
/// wrote it, even when the row policy read said otherwise (the vendor confirmed in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_write_keeps_what_the_vendor_was_seen_to_hold() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 2).await.unwrap();
        let row = store::GrantRow {
            identity_key: "E1".into(),
            connector: "nuki".into(),
            target: "door".into(),
            desired: GrantState::Present,
            observed: GrantState::Absent,
            generation: 1,
            vendor_ref: None,
            template: "t".into(),
            credential: "app".into(),
            window: None,
            valid_until: None,
            updated_at: 1,
        };
        let mut tx = s.begin_write().await.unwrap();
        store::batch::put_decided_grants(&mut tx, std::slice::from_ref(&row))
            .await
            .unwrap();
        // The dispatcher confirms the issue.
        sqlx::query("UPDATE grants SET observed = 'present', vendor_ref = 'auth-7' WHERE identity_key = 'E1'")
            .execute(&mut **tx)
            .await
            .unwrap();
        // Policy, from the row as it read it before the confirmation, now wants it absent.
        let stale = store::GrantRow {
            desired: GrantState::Absent,
            generation: 2,
            ..row
        };
        store::batch::put_decided_grants(&mut tx, &[stale])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let g = &store::all_grants(s.pool()).await.unwrap()[0];
        assert_eq!(
            (g.desired, g.generation, g.observed, g.vendor_ref.as_deref()),
            (GrantState::Absent, 2, GrantState::Present, Some("auth-7")),
            "{name}"
        );
    }
}

/// A change for a person on another transaction while a batch holding them plans (a SCIM
/// deactivation while a feed's batch is open) waits for the batch to commit, then plans from what
/// the batch wrote: the later commit never undoes the earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_beside_an_open_batch_waits_for_it_and_builds_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let mut h =
            Harness::new(&name, &url, &tmp.path().join(&name), NukiOptions::default()).await;
        h.feed(&[employee("E1", "sales", "london")]).await;
        h.drain().await;
        let now = h.app.engine.clock.now();
        let mut moves = stored_record(&h, "E1").await;
        moves.attrs.insert("department".into(), "finance".into());
        let mut leaves = stored_record(&h, "E1").await;
        leaves.status = Some(latchkey::model::RecordStatus::Terminated);
        leaves.termination_date = Some(chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap());

        // The batch holds E1 from its reads on.
        let mut tx = h.app.store().begin_write().await.unwrap();
        let mut batch = Batch::load(&mut tx, &["E1"], now).await.unwrap();
        let beside = {
            let engine = h.app.engine.clone();
            tokio::spawn(async move {
                let mut tx = engine.store.begin_write().await.unwrap();
                let applied = engine.apply_record_tx(&mut tx, &leaves, now).await.unwrap();
                tx.commit().await.unwrap();
                applied
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            !beside.is_finished(),
            "{name}: the change beside the batch waits for it"
        );
        h.app
            .engine
            .stage_record(&mut tx, &mut batch, &moves, now)
            .await
            .unwrap();
        batch.flush(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        // The batch moved E1 (its sales door revoked, a finance door queued); the leave then found
        // the finance door never sent, so it supersedes the issue and revokes nothing more.
        let (kind, applied) = beside.await.unwrap();
        assert_eq!(kind, latchkey::model::ChangeKind::Leaver, "{name}");
        assert_eq!(applied.revokes, 0, "{name}");

        let ledger = store::all_grants(h.app.store().pool()).await.unwrap();
        assert!(
            ledger.iter().all(|g| g.desired == GrantState::Absent),
            "{name}: the leaver is wanted nowhere, the mover's door included: {ledger:?}"
        );
        let commands = all_commands(h.app.store()).await;
        assert!(
            commands.iter().any(|c| c.target == "london-finance"
                && c.action == Action::Issue
                && c.status == CommandStatus::Superseded),
            "{name}: the mover's issue is superseded by the leave: {commands:?}"
        );
        let revokes: Vec<_> = commands
            .iter()
            .filter(|c| c.action == Action::Revoke)
            .collect();
        assert_eq!(revokes.len(), 1, "{name}: {revokes:?}");
        assert_eq!(revokes[0].target, "london-sales", "{name}");
    }
}

/// A feed with more leavers than one batch holds, and joiners: on PostgreSQL two batches are
/// written at once, yet every leaver's batch commits before any joiner's batch begins, so the
/// audit chain (extended at each commit) shows every revoke enqueued before the feed's first
/// issue, and no issue of the feed can reach the dispatcher ahead of a revoke (invariant 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feeds_leavers_all_commit_before_its_joiners_on_every_store() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let dir = tmp.path().join(&name);
        let mut h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        // 520 people at the vendor; the next feed ends all of them (two leavers' batches) and
        // brings 300 new people.
        let staff = people(520, |_| "engineering");
        assert_eq!(h.feed(&staff).await.joiners, 520, "{name}");
        h.drain().await;
        let seen = store::audit::head(h.app.store().pool()).await.unwrap().0;
        let mut next: Vec<String> = (0..520)
            .map(|i| {
                let site = if i % 3 == 0 { "london" } else { "berlin" };
                let id = format!("E{i:03}");
                row(
                    &id,
                    "engineering",
                    "analyst",
                    "employee",
                    site,
                    "Terminated",
                    "2020-01-01",
                    "2026-11-20",
                    "",
                )
            })
            .collect();
        next.extend((0..300).map(|i| employee(&format!("N{i:03}"), "sales", "berlin")));
        let r = h.feed(&next).await;
        assert_eq!((r.leavers, r.joiners), (520, 300), "{name}: {r:?}");

        let filter = store::audit::AuditFilter {
            action: Some("command.enqueued".into()),
            ..Default::default()
        };
        let enqueued = store::audit::find(h.app.store(), &filter, 100_000)
            .await
            .unwrap();
        let of_feed = |action: &str| -> Vec<i64> {
            enqueued
                .iter()
                .filter(|a| a.seq > seen && a.details.contains(&format!("\"action\":\"{action}\"")))
                .map(|a| a.seq)
                .collect()
        };
        let (revokes, issues) = (of_feed("revoke"), of_feed("issue"));
        assert!(
            revokes.len() >= 520,
            "{name}: {} revokes enqueued",
            revokes.len()
        );
        assert!(
            issues.len() >= 300,
            "{name}: {} issues enqueued",
            issues.len()
        );
        let last_revoke = revokes.iter().max().unwrap();
        let first_issue = issues.iter().min().unwrap();
        assert!(
            last_revoke < first_issue,
            "{name}: an issue (audit {first_issue}) was committed before a revoke (audit {last_revoke})"
        );
    }
}

/// Leavers whose doors the vendor holds, each with a re-issue of the door still waiting in the
/// outbox: their feed supersedes every waiting issue (one statement for the batch) and revokes
/// every door, and no other person's waiting issue is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_supersede_their_waiting_issues_and_revoke_doors_the_vendor_holds() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let mut h =
            Harness::new(&name, &url, &tmp.path().join(&name), NukiOptions::default()).await;
        let people = ["E1", "E2", "E3", "E4"];
        let rows: Vec<String> = people
            .iter()
            .map(|k| employee(k, "sales", "london"))
            .collect();
        h.feed(&rows).await;
        h.drain().await;
        let ledger = store::all_grants(h.app.store().pool()).await.unwrap();
        assert!(
            !ledger.is_empty() && ledger.iter().all(|g| g.observed == GrantState::Present),
            "{name}: everyone holds their doors: {ledger:?}"
        );
        // A re-issue of every door waits in the outbox (the vendor is not called meanwhile).
        let mut tx = h.app.store().begin_write().await.unwrap();
        for g in &ledger {
            let reissue = store::NewCommand {
                connector: g.connector.clone(),
                action: Action::Issue,
                identity_key: g.identity_key.clone(),
                target: g.target.clone(),
                generation: g.generation + 100,
                cause: "drift".into(),
                trigger_at: 1,
                detected_at: 1,
                source: "test".into(),
                traceparent: None,
            };
            store::enqueue(&mut tx, &reissue, 1).await.unwrap();
        }
        tx.commit().await.unwrap();

        // E1 and E3 leave; E2 and E4 stay.
        let rows: Vec<String> = people
            .iter()
            .map(|k| {
                let status = if *k == "E1" || *k == "E3" {
                    "Terminated"
                } else {
                    "Active"
                };
                let term = if status == "Terminated" {
                    "2026-11-20"
                } else {
                    ""
                };
                row(
                    k,
                    "sales",
                    "analyst",
                    "employee",
                    "london",
                    status,
                    "2020-01-01",
                    term,
                    "",
                )
            })
            .collect();
        h.feed(&rows).await;

        let commands = all_commands(h.app.store()).await;
        for g in &ledger {
            let of_grant: Vec<_> = commands
                .iter()
                .filter(|c| c.identity_key == g.identity_key && c.target == g.target)
                .collect();
            let reissue = of_grant
                .iter()
                .find(|c| c.action == Action::Issue && c.generation == g.generation + 100)
                .unwrap();
            let revokes = of_grant
                .iter()
                .filter(|c| c.action == Action::Revoke && c.status == CommandStatus::Pending)
                .count();
            if g.identity_key.as_str() == "E1" || g.identity_key.as_str() == "E3" {
                assert_eq!(
                    reissue.status,
                    CommandStatus::Superseded,
                    "{name}: {}'s waiting re-issue of {} is superseded by the leave",
                    g.identity_key,
                    g.target
                );
                assert_eq!(
                    revokes, 1,
                    "{name}: {} at {} is revoked",
                    g.identity_key, g.target
                );
            } else {
                assert_eq!(
                    reissue.status,
                    CommandStatus::Pending,
                    "{name}: {}'s re-issue is not touched by others' leaves",
                    g.identity_key
                );
                assert_eq!(revokes, 0, "{name}: {} keeps {}", g.identity_key, g.target);
            }
        }
        // Drained: the leavers hold nothing at the vendor, the others everything.
        h.drain().await;
        for g in &ledger {
            let leaver = g.identity_key.as_str() == "E1" || g.identity_key.as_str() == "E3";
            assert_eq!(
                h.holds(g.identity_key.as_str(), &g.target),
                !leaver,
                "{name}: {} at {} after the drain",
                g.identity_key,
                g.target
            );
        }
    }
}
