//! The store's contract, one suite run against SQLite and PostgreSQL: the outbox's claim order,
//! leases, idempotency keys and supersession, and effective-dated timers across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::model::Action;
use latchkey::model::{CommandId, CommandStatus};
use latchkey::store::{self, NewCommand, Store};
use latchkey_sim::NukiOptions;

fn cmd(action: Action, key: &str, target: &str, generation: i64) -> NewCommand {
    NewCommand {
        connector: "nuki".into(),
        action,
        identity_key: key.into(),
        target: target.into(),
        generation,
        cause: "test".into(),
        trigger_at: 1,
        detected_at: 1,
        source: "hr".into(),
        traceparent: None,
    }
}

async fn enqueue(s: &Store, c: &NewCommand, now: i64) -> Option<CommandId> {
    let mut tx = s.begin_write().await.unwrap();
    let id = store::enqueue(&mut tx, c, now).await.unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn outbox_claims_revokes_first_honours_leases_and_dedupes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 4).await.unwrap();
        // Three issues, then a revoke: the revoke is claimed first, then the issues oldest first.
        for i in 1..=3 {
            enqueue(&s, &cmd(Action::Issue, &format!("E{i}"), "door", 1), 10)
                .await
                .unwrap();
        }
        let revoke = enqueue(&s, &cmd(Action::Revoke, "E9", "door", 2), 20)
            .await
            .unwrap();
        // The same decision enqueued again is the same command.
        assert!(
            enqueue(&s, &cmd(Action::Revoke, "E9", "door", 2), 30)
                .await
                .is_none(),
            "{name}"
        );
        let first = s
            .claim_next("nuki", "w1", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.id, first.action), (revoke, Action::Revoke), "{name}");
        assert_eq!(first.attempts, 1);
        let second = s
            .claim_next("nuki", "w2", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.identity_key, "E1", "{name}");
        // Not due yet / other connector: nothing.
        assert!(
            s.claim_next("kisi", "w3", 100, 1_000)
                .await
                .unwrap()
                .is_none()
        );
        // A crashed worker's lease runs out: its command is taken over, with the attempt counted.
        let third = s
            .claim_next("nuki", "w3", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        let fourth = s
            .claim_next("nuki", "w4", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (third.identity_key.as_str(), fourth.identity_key.as_str()),
            ("E2", "E3")
        );
        assert!(
            s.claim_next("nuki", "w5", 500, 1_500)
                .await
                .unwrap()
                .is_none(),
            "all leased"
        );
        let retaken = s
            .claim_next("nuki", "w5", 1_001, 2_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((retaken.id, retaken.attempts), (revoke, 2), "{name}");
        // The old owner can no longer move it on.
        let mut tx = s.begin_write().await.unwrap();
        let moved = store::update_claimed(
            &mut tx,
            "w1",
            &store::CommandUpdate {
                id: revoke,
                status: CommandStatus::Done,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(
            !moved,
            "{name}: a worker that lost its lease must not complete the command"
        );
        tx.commit().await.unwrap();
    }
}

/// Committing a transaction that queued a command wakes the dispatcher by itself: no caller has
/// to remember to. Not before the commit (the dispatcher would find nothing), and not for a
/// command rolled back.
#[tokio::test]
async fn committing_a_queued_command_wakes_the_dispatcher() {
    use futures::FutureExt;
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 4).await.unwrap();
        let wakeup = s.outbox_wakeup();
        // The same queued command, once committed and once rolled back.
        for (key, commit) in [("E1", true), ("E2", false)] {
            let woken = wakeup.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut tx = s.begin_write().await.unwrap();
            store::enqueue(&mut tx, &cmd(Action::Revoke, key, "berlin-lab", 1), 10)
                .await
                .unwrap()
                .unwrap();
            assert!(
                woken.as_mut().now_or_never().is_none(),
                "{name}: woken before the transaction ended"
            );
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            assert_eq!(
                woken.now_or_never().is_some(),
                commit,
                "{name}: woken after a {}",
                if commit { "commit" } else { "rollback" }
            );
        }
    }
}

#[tokio::test]
async fn two_commands_for_one_grant_never_run_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 4).await.unwrap();
        enqueue(&s, &cmd(Action::Issue, "E1", "door", 1), 10)
            .await
            .unwrap();
        enqueue(&s, &cmd(Action::Revoke, "E1", "door", 2), 11)
            .await
            .unwrap();
        let a = s
            .claim_next("nuki", "w1", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.action, Action::Revoke);
        assert!(
            s.claim_next("nuki", "w2", 100, 1_000)
                .await
                .unwrap()
                .is_none(),
            "{name}: the issue for the same grant waits while the revoke is in flight"
        );
    }
}

#[tokio::test]
async fn an_effective_dated_termination_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let dir = tmp.path().join(&name);
        let mut h = Harness::new(&name, &url, &dir, NukiOptions::default()).await;
        h.feed(&[row(
            "E1",
            "sales",
            "analyst",
            "employee",
            "london",
            "Active",
            "2020-01-01",
            "2026-11-30",
            "",
        )])
        .await;
        h.drain().await;
        assert!(h.holds("E1", "london-sales"));
        // The daemon stops; a new one opens the same store after the instant has passed.
        let sim_url = h.sim.base_url();
        drop(h.app);
        let config_path = dir.join("latchkey.toml");
        let config = latchkey::config::Config::load(
            &latchkey::config::ConfigInput::from_file(&config_path, env()).unwrap(),
        )
        .unwrap();
        assert!(config_text(&url, &sim_url, (1000, 50)).contains(&sim_url));
        let clock = latchkey::clock::ManualClock::new(t("2026-12-01T00:00:00Z"));
        let shared: latchkey::clock::SharedClock = std::sync::Arc::new(clock.clone());
        h.app = latchkey::app::App::open(config, shared).await.unwrap();
        h.clock = clock;
        assert_eq!(h.app.engine.tick().await.unwrap().revokes, 1, "{name}");
        h.drain().await;
        assert!(!h.holds("E1", "london-sales"), "{name}");
    }
}

/// Concurrent short writers share transactions (group commit): each writer's `commit` returns
/// only once its rows are durable and visible to a new connection, a writer that fails or gives
/// up keeps none of its rows and costs the others nothing, and fewer transactions are committed
/// than writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_transactions_and_each_commit_is_durable() {
    use sqlx::Connection;
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 8).await.unwrap();
        sqlx::query("CREATE TABLE group_rows (writer BIGINT NOT NULL, part BIGINT NOT NULL)")
            .execute(s.pool())
            .await
            .unwrap();
        let before = s.group_commits();
        let writers: Vec<_> = (0..96i64)
            .map(|w| {
                let (s, url) = (s.clone(), url.clone());
                tokio::spawn(async move {
                    let mut tx = s.begin_grouped().await.unwrap();
                    for part in 0..3i64 {
                        sqlx::query("INSERT INTO group_rows (writer, part) VALUES ($1, $2)")
                            .bind(w)
                            .bind(part)
                            .execute(&mut **tx)
                            .await
                            .unwrap();
                    }
                    match w % 8 {
                        // Fails half-way: its rows go back, the others' stay.
                        3 => {
                            let bad = sqlx::query("INSERT INTO no_such_table VALUES (1)")
                                .execute(&mut **tx)
                                .await;
                            assert!(bad.is_err());
                            drop(tx);
                            false
                        }
                        5 => {
                            tx.rollback().await.unwrap();
                            false
                        }
                        _ => {
                            tx.commit().await.unwrap();
                            // Committed means durable: a fresh connection sees every row.
                            let mut other = sqlx::AnyConnection::connect(&url).await.unwrap();
                            let seen: i64 = sqlx::query_scalar(
                                "SELECT COUNT(*) FROM group_rows WHERE writer = $1",
                            )
                            .bind(w)
                            .fetch_one(&mut other)
                            .await
                            .unwrap();
                            assert_eq!(seen, 3, "writer {w}'s rows after its commit");
                            true
                        }
                    }
                })
            })
            .collect();
        let mut kept = Vec::new();
        for (w, t) in writers.into_iter().enumerate() {
            let committed = tokio::time::timeout(std::time::Duration::from_secs(60), t)
                .await
                .unwrap_or_else(|_| panic!("{name}: writer {w} never finished"))
                .unwrap();
            if committed {
                kept.push(w as i64);
            }
        }
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT writer, COUNT(*) FROM group_rows GROUP BY writer ORDER BY writer",
        )
        .fetch_all(s.pool())
        .await
        .unwrap();
        assert_eq!(
            rows,
            kept.iter().map(|w| (*w, 3)).collect::<Vec<_>>(),
            "{name}: exactly the committed writers' rows, whole"
        );
        let after = s.group_commits();
        let (commits, members) = (
            after.commits - before.commits,
            after.members - before.members,
        );
        assert_eq!(members, kept.len() as u64, "{name}: every commit counted");
        assert!(
            commits < members,
            "{name}: {commits} transactions for {members} writers: nothing was shared"
        );
    }
}

/// On SQLite a revocation's writer that arrives while issues' completions share a transaction
/// waits for the member in progress only: the shared transaction commits early and the writers
/// still queued for it begin the next one after the revocation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocations_writer_does_not_wait_for_a_whole_group_of_ordinary_writers() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/yield.db", tmp.path().display());
    let s = Store::connect(&url, 8).await.unwrap();
    sqlx::query("CREATE TABLE group_rows (writer TEXT NOT NULL)")
        .execute(s.pool())
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut first = s.begin_grouped().await.unwrap();
    sqlx::query("INSERT INTO group_rows (writer) VALUES ('issue-1')")
        .execute(&mut **first)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for name in ["issue-2", "issue-3", "issue-4", "revoke"] {
        let (s, order) = (s.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = if name == "revoke" {
                s.begin_write_urgent().await.unwrap()
            } else {
                s.begin_grouped().await.unwrap()
            };
            order.lock().unwrap().push(name);
            sqlx::query("INSERT INTO group_rows (writer) VALUES ($1)")
                .bind(name)
                .execute(&mut **tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }));
        // Each is queued before the next arrives: the issues in the group's queue, the revoke
        // at the write gate the group holds.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.commit().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a writer was stranded")
            .unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order.first(),
        Some(&"revoke"),
        "the revocation's writer went after the queued issues: {order:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM group_rows")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(rows, 5, "every writer's row is kept");
}

/// SQLite's WAL is copied back into the database file by the store's own checkpoints, not by
/// whichever commit finds it long (a revoke's commit would pay for it): the file takes in what
/// was committed while the store is open, and no commit ran a checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_beside_the_writers() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wal.db");
    let s = Store::connect(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(auto, 0, "commits must not checkpoint");
    sqlx::query("CREATE TABLE filler (v TEXT NOT NULL)")
        .execute(s.pool())
        .await
        .unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // About 2 MB: half what SQLite's own bound would checkpoint at.
    let mut tx = s.begin_write().await.unwrap();
    for i in 0..2000 {
        sqlx::query("INSERT INTO filler (v) VALUES ($1)")
            .bind(format!("{i:01000}"))
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() < before + 2_000_000 {
        assert!(
            Instant::now() < deadline,
            "the database file never took in the WAL: {} bytes",
            std::fs::metadata(&path).unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer that gives up while it waits for its turn, or half-way through its statements (a
/// client that hangs up), never leaves the writers before it waiting for a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_gives_up_never_strands_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 8).await.unwrap();
        sqlx::query("CREATE TABLE group_rows (writer BIGINT NOT NULL)")
            .execute(s.pool())
            .await
            .unwrap();
        let insert = |w: i64| sqlx::query("INSERT INTO group_rows (writer) VALUES ($1)").bind(w);
        // The first writer holds the shared transaction while a second queues behind it.
        let mut first = s.begin_grouped().await.unwrap();
        insert(1).execute(&mut **first).await.unwrap();
        // A writer that inserts its number and commits.
        let writer = |w: i64| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut tx = s.begin_grouped().await.unwrap();
                insert(w).execute(&mut **tx).await.unwrap();
                tx.commit().await.unwrap();
            })
        };
        let queued = writer(2);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The second gives up while it waits for its turn (on SQLite's one queue, behind the
        // first), so the first finds no writer waiting and must still commit.
        queued.abort();
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), first.commit()).await;
        done.unwrap_or_else(|_| panic!("{name}: the first writer was stranded"))
            .unwrap();
        // A third writer gives up half-way through its statements; a fourth still commits.
        let third = tokio::spawn({
            let s = s.clone();
            async move {
                let mut tx = s.begin_grouped().await.unwrap();
                insert(3).execute(&mut **tx).await.unwrap();
                std::future::pending::<()>().await;
                drop(tx);
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let fourth = writer(4);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        third.abort();
        tokio::time::timeout(std::time::Duration::from_secs(20), fourth)
            .await
            .unwrap_or_else(|_| panic!("{name}: the fourth writer was stranded"))
            .unwrap();
        let rows: Vec<i64> = sqlx::query_scalar("SELECT writer FROM group_rows ORDER BY writer")
            .fetch_all(s.pool())
            .await
            .unwrap();
        // On PostgreSQL the second writer may find another queue free and commit before it is
        // cancelled; on SQLite (one queue) it can only have waited behind the first.
        let expected: &[&[i64]] = if name == "sqlite" {
            &[&[1, 4]]
        } else {
            &[&[1, 4], &[1, 2, 4]]
        };
        assert!(
            expected.contains(&rows.as_slice()),
            "{name}: the first and fourth writers' rows, never the third's: {rows:?}"
        );
    }
}

/// Two transactions that lock the same two rows in opposite order deadlock on PostgreSQL; the
/// database aborts one, and `Store::retry` runs it again, so both bodies succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlocked_transaction_is_run_again() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let store = Store::connect(&url, 4).await.unwrap();
    sqlx::query("CREATE TABLE race_rows (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO race_rows VALUES (1, 0), (2, 0)")
        .execute(store.pool())
        .await
        .unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let run = |first: i64, second: i64| {
        let (store, barrier, attempts) = (store.clone(), barrier.clone(), attempts.clone());
        async move {
            let mut mine = 0;
            store
                .retry("test", || {
                    mine += 1;
                    let (store, barrier, attempts) = (&store, &barrier, &attempts);
                    let again = mine > 1;
                    async move {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mut tx = store.begin_write().await?;
                        for (n, id) in [first, second].into_iter().enumerate() {
                            sqlx::query("UPDATE race_rows SET v = v + 1 WHERE id = $1")
                                .bind(id)
                                .execute(&mut **tx)
                                .await?;
                            if n == 0 && !again {
                                // Both hold their first row before either asks for its second.
                                barrier.wait().await;
                            }
                        }
                        tx.commit().await?;
                        Ok::<_, store::StoreError>(())
                    }
                })
                .await
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(run(1, 2)), tokio::spawn(run(2, 1)));
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    let total: i64 = sqlx::query_scalar("SELECT CAST(SUM(v) AS BIGINT) FROM race_rows")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(total, 4, "each body applied exactly once in the end");
}

/// Rows in each large table for the plan-shape check: enough that a planner with statistics
/// prefers an index wherever one serves the query.
const PLAN_ROWS: i64 = 20_000;

/// Fill the large tables with `PLAN_ROWS` people, their records from two sources, grants, the
/// vendor's ids for them, finished
/// commands (most of an outbox, over time) and a few open ones, then gather statistics.
async fn populate_for_plans(s: &Store) {
    let rows = |sql: &str| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {PLAN_ROWS}) {sql}"
        )
    };
    let fill = [
        rows(
            "INSERT INTO identities (key, lifecycle, lifecycle_since, attrs, site, next_change_at, updated_at)
             SELECT 'E' || i, 'active', 1, '{}', 'berlin', CASE WHEN i % 100 = 0 THEN i ELSE NULL END, 1 FROM n",
        ),
        rows(
            "INSERT INTO source_records (source, key, hash, record, first_seen_at, seen_at)
             SELECT 'hr', 'E' || i, 'h', '{}', 1, 1 FROM n",
        ),
        rows(
            "INSERT INTO source_records (source, key, hash, record, first_seen_at, seen_at)
             SELECT 'ldap', 'E' || i, 'h', '{}', 1, 1 FROM n",
        ),
        rows(
            "INSERT INTO grants (identity_key, connector, target, desired, observed, generation, template,
               credential, updated_at)
             SELECT 'E' || i, 'nuki', 'door-' || (i % 50), 'present', 'present', 1, 't', 'app', 1 FROM n",
        ),
        rows(
            "INSERT INTO commands (idem_key, connector, action, identity_key, target, generation, priority,
               status, attempts, next_attempt_at, cause, trigger_at, detected_at, enqueued_at)
             SELECT 'k' || i, 'nuki', 'issue', 'E' || i, 'door-' || (i % 50), 1, 10,
               CASE WHEN i % 200 = 0 THEN 'pending' ELSE 'done' END, 1, i, 'joiner', 1, 1, 1 FROM n",
        ),
        rows(
            "INSERT INTO vendor_people (connector, identity_key, vendor_ref)
             SELECT 'nuki', 'E' || i, 'u' || i FROM n",
        ),
        rows(
            "INSERT INTO held_changes (source, key, kind, reason, status, created_at)
             SELECT 'hr', 'E' || i, 'disappearance', 'r', CASE WHEN i % 100 = 0 THEN 'held' ELSE 'obsolete' END, 1
             FROM n",
        ),
        rows(
            "INSERT INTO suspensions (identity_key, reason, suspended_by, suspended_at, ended_at)
             SELECT 'E' || i, 'r', 'op', 1, CASE WHEN i % 100 = 0 THEN NULL ELSE 2 END FROM n",
        ),
        rows(
            "INSERT INTO access_requests (identity_key, connector, target, reason, starts_at, ends_at,
               status, requested_by, requested_at)
             SELECT 'E' || i, 'nuki', 'door-1', 'r', 1, 2,
               CASE WHEN i % 100 = 0 THEN 'active' ELSE 'expired' END, 'op', 1 FROM n",
        ),
        rows(
            "INSERT INTO review_withdrawals (identity_key, connector, target, item_id, withdrawn_by,
               withdrawn_at, lifted_at)
             SELECT 'E' || i, 'nuki', 'door-1', i, 'op', 1, CASE WHEN i % 100 = 0 THEN NULL ELSE 2 END
             FROM n",
        ),
        "ANALYZE".to_string(),
    ];
    for sql in fill {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(s.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A value for each `$n` of a hot query, typed as the store binds it.
fn plan_args(name: &str) -> Vec<Result<i64, &'static str>> {
    use Result::{Err as T, Ok as N};
    match name {
        "source_record" => vec![T("hr"), T("E77")],
        "source_records_of" | "get_identity" | "grants_of" => vec![T("E77")],
        "source_records_of_keys"
        | "identities_of_keys"
        | "grants_of_keys"
        | "withdrawn_of_keys"
        | "suspensions_of_keys" => vec![T("E77"), T("E78")],
        "requests_of_keys" => vec![T("E77"), T("E78"), N(1_000), N(1_000)],
        "release_held_of_keys" => vec![N(1), T("hr"), T("E77"), T("E78")],
        "identities_page" => vec![T("E77"), N(500)],
        "identities_due" => vec![N(1_000), N(50)],
        "grants_in_key_range" => vec![T("E77"), T("E78")],
        "release_held" => vec![N(1), T("hr"), T("E77")],
        "supersede_count" | "open_command_for" => {
            vec![T("nuki"), T("E77"), T("door-27"), T("issue")]
        }
        "supersede" => vec![N(1), T("nuki"), T("E77"), T("door-27")],
        "next_due" => vec![T("nuki")],
        "update_claimed" => vec![
            T("done"),
            N(1),
            N(1),
            N(1),
            N(1),
            T("-"),
            N(77),
            T("w"),
            N(0),
            N(1),
        ],
        "claim_next" => vec![T("w"), N(2), N(1), T("nuki"), N(10)],
        "claim_many" => vec![T("w"), N(2), N(1), T("nuki"), N(10), N(32)],
        "connector_grants_of_keys" => vec![T("nuki"), T("E77"), T("E78")],
        "await_read_back" => vec![
            N(77),
            N(2),
            N(78),
            N(2),
            N(1),
            N(1),
            T("accepted"),
            N(77),
            N(1),
            N(78),
            N(1),
            N(77),
            N(78),
            T("w"),
        ],
        "people_of_keys" => vec![T("E77"), T("E78")],
        "person_refs_of_keys" => vec![T("nuki"), T("E77"), T("E78")],
        "finish_done" => vec![N(1), N(1), N(1), N(77), N(1), N(78), N(1), T("w")],
        "observe_shown" => vec![
            N(1),
            T("E77"),
            T("absent"),
            T("r1"),
            T("E78"),
            T("absent"),
            T("r2"),
            T("nuki"),
            T("door-27"),
        ],
        "on_target" => vec![T("nuki"), T("door-27"), N(0), N(1), N(77)],
        "targets_with_more_due" => vec![T("door-27"), T("door-28"), T("nuki"), N(0), N(1)],
        "claim_confirming_on" => vec![T("w"), N(2), T("nuki"), T("door-27"), N(77), N(500)],
        "supersede_of_grants" => vec![
            N(1),
            T("E77"),
            T("door-27"),
            T("E78"),
            T("door-27"),
            T("nuki"),
        ],
        other => panic!("no arguments for hot query {other}"),
    }
}

/// A worker before a backlog claims several commands in one statement: in the order it would
/// take them one by one (revokes first, then oldest first), at most the number asked for, never
/// two commands of one grant, and never a grant another worker has a command of in hand.
#[tokio::test]
async fn claiming_many_keeps_the_order_and_one_command_per_grant() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 4).await.unwrap();
        // E5: another worker has its issue in hand; a revoke for it waits.
        enqueue(&s, &cmd(Action::Issue, "E5", "door", 1), 14).await;
        let held = s
            .claim_next("nuki", "w9", 15, 10_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.identity_key, "E5", "{name}");
        enqueue(&s, &cmd(Action::Revoke, "E5", "door", 2), 16).await;
        // E1: a leave written and waiting for its read-back, then a rehire: two open commands.
        enqueue(&s, &cmd(Action::Revoke, "E1", "door", 1), 10).await;
        let revoke = s
            .claim_next("nuki", "w0", 11, 1_000)
            .await
            .unwrap()
            .unwrap();
        let mut tx = s.begin_write().await.unwrap();
        let moved = store::update_claimed(
            &mut tx,
            "w0",
            &store::CommandUpdate {
                id: revoke.id,
                status: CommandStatus::Confirming,
                next_attempt_at: 12,
                dispatched_at: Some(11),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert!(moved, "{name}");
        enqueue(&s, &cmd(Action::Issue, "E1", "door", 2), 13).await;
        // Plain joiners and one more leaver.
        for key in ["E2", "E3", "E6"] {
            enqueue(&s, &cmd(Action::Issue, key, "door", 1), 17).await;
        }
        enqueue(&s, &cmd(Action::Revoke, "E4", "door", 1), 18).await;

        let claim = |owner: &'static str| store::Claim {
            connector: "nuki",
            owner,
            now: 100,
            lease_until: 1_000,
            revokes_only: false,
        };
        let first = s.claim_up_to(&claim("w1"), 3).await.unwrap();
        let rest = s.claim_up_to(&claim("w2"), 10).await.unwrap();
        let seen = |cmds: &[store::CommandRow]| -> Vec<(String, Action)> {
            cmds.iter()
                .map(|c| (c.identity_key.to_string(), c.action))
                .collect()
        };
        assert_eq!(
            seen(&first),
            vec![
                ("E1".to_string(), Action::Revoke),
                ("E4".to_string(), Action::Revoke),
                ("E2".to_string(), Action::Issue),
            ],
            "{name}: revokes first, then the oldest, three as asked"
        );
        // E1's rehire waits for its leave's read-back (one command per grant in hand); E5 is w9's.
        assert_eq!(
            seen(&rest),
            vec![
                ("E3".to_string(), Action::Issue),
                ("E6".to_string(), Action::Issue),
            ],
            "{name}"
        );
        for c in first.iter().chain(&rest) {
            assert_eq!(c.status, CommandStatus::Inflight, "{name}: {c:?}");
            assert_eq!(c.attempts, 1, "{name}: {c:?}");
        }
        assert!(
            s.claim_up_to(&claim("w3"), 10).await.unwrap().is_empty(),
            "{name}: nothing left that another worker does not hold"
        );
    }
}

/// Issue 12's plan-shape check: every hot-path query, explained by the database itself on tables
/// of realistic size, is served by an index. SQLite's `SCAN <table>` without an index and
/// PostgreSQL's `Seq Scan on <table>` are full scans; either fails the test, naming the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_queries_are_served_by_indexes_on_both_databases() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        let s = Store::connect(&url, 2).await.unwrap();
        populate_for_plans(&s).await;
        let mut full_scans = Vec::new();
        for (query, sql) in store::hot_queries(s.backend()) {
            let explain = match s.backend() {
                store::Backend::Sqlite => format!("EXPLAIN QUERY PLAN {sql}"),
                store::Backend::Postgres => format!("EXPLAIN {sql}"),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(explain));
            for a in plan_args(query) {
                q = match a {
                    Ok(n) => q.bind(n),
                    Err(t) => q.bind(t),
                };
            }
            let rows = q
                .fetch_all(s.pool())
                .await
                .unwrap_or_else(|e| panic!("{name}: explain {query}: {e}"));
            let plan: Vec<String> = rows
                .iter()
                .map(|r| {
                    use sqlx::Row;
                    match s.backend() {
                        store::Backend::Sqlite => r.try_get::<String, _>("detail").unwrap(),
                        store::Backend::Postgres => r.try_get::<String, _>(0).unwrap(),
                    }
                })
                .collect();
            // A scan of a subquery's own rows (SQLite's co-routines) reads no table.
            let derived: Vec<String> = plan
                .iter()
                .filter_map(|l| l.trim().strip_prefix("CO-ROUTINE "))
                .map(|n| n.trim().to_string())
                .collect();
            let scanned = plan.iter().any(|line| {
                let line = line.trim_start_matches([' ', '-', '>']).trim();
                let scan_of = line.strip_prefix("SCAN ").map(str::trim);
                scan_of.is_some_and(|t| {
                    !t.contains(" USING ")
                        && t != "CONSTANT ROW"
                        // A multi-row statement's own rows (its parameters), not a table.
                        && !t.ends_with("VALUES CLAUSE")
                        && !t.starts_with("(subquery")
                        && !derived.iter().any(|d| d == t)
                }) || line.contains("Seq Scan on ")
            });
            eprintln!("{name} {query}:\n  {}", plan.join("\n  "));
            if scanned {
                full_scans.push(format!("{query}:\n  {}", plan.join("\n  ")));
            }
        }
        assert!(
            full_scans.is_empty(),
            "{name}: hot queries scan a large table in full:\n{}",
            full_scans.join("\n")
        );
    }
}
