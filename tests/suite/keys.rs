//! Mechanical keys through the built-in `manual` connector: hand-over and return tasks recorded by
//! people, an overdue alert to a webhook, and revocation latency that runs until check-in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::clock::{from_micros, to_micros};
use latchkey::connectors::manual::{self, HAND_OVER, RETURN};
use latchkey::model::Action;
use latchkey::model::CommandStatus;
use latchkey::model::GrantState;
use latchkey::store;
use std::path::Path;
use std::sync::{Arc, Mutex};

const TEMPLATES: &str = r#"
version = 1
[[templates]]
name = "facilities-master-key"
when = "department == 'facilities'"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "keys"
target = "{{ site }}-master-key"
credential = "physical_key"
"#;

type Alerts = Arc<Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on a free loopback port that keeps what it is sent.
async fn receiver() -> (String, Alerts) {
    let alerts: Alerts = Arc::default();
    let kept = alerts.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/alerts"), alerts)
}

// The shared harness with a `keys` connector (manual, alerting `webhook` when a key is overdue)
// and templates that hand facilities staff a master key.
crate::harness_context!(Ctx);

async fn setup(dir: &Path, url: &str, webhook: &str) -> Ctx {
    let h = Harness::builder(backend_of(url), url, dir)
        .templates(TEMPLATES)
        .config(&format!(
            "[connectors.keys]\nkind = \"manual\"\n\
             manual = {{ return_due_hours = 24, overdue_webhook = \"{webhook}\" }}"
        ))
        .build()
        .await;
    Ctx(h)
}

impl Ctx {
    fn now(&self) -> i64 {
        to_micros(self.clock.now_utc())
    }

    fn advance_hours(&self, h: f64) {
        self.clock
            .set(from_micros(self.now() + (h * 3_600_000_000.0) as i64));
    }

    /// Let the keys lane take every due command (creating tasks, re-checking them).
    async fn dispatch(&self) {
        let d = self.app.dispatcher();
        let keys = self.app.connectors["keys"].clone();
        while d.step(&keys, "test-worker").await.unwrap() {}
    }

    async fn open_command(&self, key: &str, action: Action) -> Option<store::CommandRow> {
        let mut conn = self.app.store().pool().acquire().await.unwrap();
        store::open_command_for(&mut conn, "keys", key, "berlin-master-key", action)
            .await
            .unwrap()
    }

    async fn grant(&self, key: &str) -> store::GrantRow {
        let mut conn = self.app.store().pool().acquire().await.unwrap();
        store::grant(&mut conn, key, "keys", "berlin-master-key")
            .await
            .unwrap()
            .unwrap()
    }

    async fn task(&self, kind: &str) -> store::KeyTaskRow {
        store::open_key_tasks(self.app.store().pool())
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.kind == kind)
            .unwrap()
    }
}

fn technician(id: &str, status: &str, term: &str) -> String {
    row(
        id,
        "facilities",
        "technician",
        "employee",
        "berlin",
        status,
        "2020-01-01",
        term,
        "",
    )
}

fn gauge(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

#[tokio::test]
async fn termination_return_task_overdue_alert_check_in_and_latency() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let (webhook, alerts) = receiver().await;
        let mut c = setup(&tmp.path().join(&name), &url, &webhook).await;

        // Joiner: a hand-over task; the issue waits for a person to record it.
        c.feed(&[technician("F1", "Active", "")]).await;
        c.dispatch().await;
        let hand = c.task(HAND_OVER).await;
        assert_eq!(
            (hand.identity_key.as_str(), hand.target.as_str()),
            ("F1", "berlin-master-key")
        );
        let issue = c.open_command("F1", Action::Issue).await.unwrap();
        assert_eq!(issue.status, CommandStatus::Confirming);
        let listed = latchkey::cli::keys_text(&c.app).await.unwrap();
        assert!(listed.contains("hand_over F1"), "{listed}");
        c.advance_hours(1.0);
        manual::record(
            c.app.store(),
            Some(&c.app.engine.metrics),
            hand.id,
            HAND_OVER,
            "alice",
            c.now(),
        )
        .await
        .unwrap();
        assert!(c.open_command("F1", Action::Issue).await.is_none());
        assert_eq!(c.grant("F1").await.observed, GrantState::Present);
        // A second recording of the same task is refused, as is recording it as the wrong kind.
        assert!(
            manual::record(c.app.store(), None, hand.id, HAND_OVER, "alice", c.now())
                .await
                .is_err()
        );

        // Termination: a return task due in 24 h.
        c.advance_hours(1.0);
        let terminated_at = c.now();
        c.feed(&[technician("F1", "Terminated", "2026-11-24")])
            .await;
        c.dispatch().await;
        let ret = c.task(RETURN).await;
        assert_eq!(ret.due_at, Some(terminated_at + 24 * 3_600_000_000));
        let revoke = c.open_command("F1", Action::Revoke).await.unwrap();
        assert_eq!(revoke.status, CommandStatus::Confirming);
        assert!(
            manual::record(c.app.store(), None, ret.id, HAND_OVER, "bob", c.now())
                .await
                .is_err()
        );
        let r = c.app.check_overdue_keys().await.unwrap();
        assert_eq!((r.open, r.overdue, r.alerted.len()), (1, 0, 0));

        // A day passes, the key is not back: one alert, to the webhook and the gauge.
        c.advance_hours(25.0);
        c.dispatch().await;
        let r = c.app.check_overdue_keys().await.unwrap();
        assert_eq!((r.open, r.overdue, r.alerted.clone()), (1, 1, vec![ret.id]));
        {
            let got = alerts.lock().unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0]["event"], "key_return_overdue");
            assert_eq!(got[0]["person"], "F1");
            assert_eq!(got[0]["target"], "berlin-master-key");
        }
        let metrics = c.app.engine.metrics.encode_openmetrics();
        assert_eq!(
            gauge(&metrics, r#"latchkey_key_return_tasks{state="overdue"}"#).as_deref(),
            Some("1")
        );
        let r = c.app.check_overdue_keys().await.unwrap();
        assert!(r.alerted.is_empty(), "alerted once only");
        assert_eq!(alerts.lock().unwrap().len(), 1);
        let listed = latchkey::cli::keys_text(&c.app).await.unwrap();
        assert!(listed.contains("OVERDUE"), "{listed}");
        assert!(
            latchkey::cli::status_text(&c.app)
                .await
                .unwrap()
                .contains("open key tasks: 1")
        );

        // Checked in: the revocation is confirmed at the return time, and its latency runs to it.
        c.advance_hours(2.0);
        let returned_at = c.now();
        let done = manual::record(
            c.app.store(),
            Some(&c.app.engine.metrics),
            ret.id,
            RETURN,
            "bob",
            returned_at,
        )
        .await
        .unwrap();
        assert_eq!(done.done_by.as_deref(), Some("bob"));
        assert!(c.open_command("F1", Action::Revoke).await.is_none());
        let finished = store::command(
            &mut c.app.store().pool().acquire().await.unwrap(),
            revoke.id,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(finished.status, CommandStatus::Done);
        assert_eq!(finished.confirmed_at, Some(returned_at));
        assert!(returned_at - finished.trigger_at >= 27 * 3_600_000_000);
        assert_eq!(c.grant("F1").await.observed, GrantState::Absent);
        let report = latchkey::telemetry::latency_report(c.app.store(), Action::Revoke)
            .await
            .unwrap();
        assert!(format!("{report:?}").contains("keys"), "{report:?}");
        let r = c.app.check_overdue_keys().await.unwrap();
        assert_eq!((r.open, r.overdue), (0, 0));
        // The lane's later look at the command changes nothing.
        c.advance_hours(1.0);
        c.dispatch().await;
        use sqlx::Row;
        let actions: Vec<String> = sqlx::query("SELECT action FROM audit_log ORDER BY seq")
            .fetch_all(c.app.store().pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("action").unwrap())
            .collect();
        for a in [
            "key.hand_over_task",
            "key.handed_over",
            "key.return_task",
            "key.return_overdue",
            "key.returned",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} not audited");
        }
        assert!(matches!(
            latchkey::audit::verify(c.app.store()).await.unwrap(),
            latchkey::audit::Verdict::Intact { .. }
        ));
    }
}

#[tokio::test]
async fn a_key_never_handed_over_needs_no_return() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, url) = backends(tmp.path()).await.remove(0);
    let (webhook, alerts) = receiver().await;
    let mut c = setup(tmp.path(), &url, &webhook).await;
    c.feed(&[technician("F2", "Active", "")]).await;
    c.dispatch().await;
    let hand = c.task(HAND_OVER).await;
    c.advance_hours(1.0);
    c.feed(&[technician("F2", "Terminated", "2026-11-24")])
        .await;
    c.dispatch().await;
    assert!(
        store::open_key_tasks(c.app.store().pool())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.open_command("F2", Action::Revoke).await.is_none());
    assert!(
        manual::record(c.app.store(), None, hand.id, HAND_OVER, "alice", c.now())
            .await
            .is_err(),
        "the hand-over was cancelled"
    );
    c.advance_hours(48.0);
    assert_eq!(c.app.check_overdue_keys().await.unwrap().overdue, 0);
    assert!(alerts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_door_moves_from_mechanical_keys_to_a_smart_lock_and_closes_when_the_last_key_is_back() {
    use latchkey::door_migration::{self, Door, MoveError};
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let (webhook, _alerts) = receiver().await;
        let mut c = setup(&tmp.path().join(&name), &url, &webhook).await;
        let people: Vec<String> = (1..=20).map(|i| format!("F{i:02}")).collect();
        let rows: Vec<String> = people.iter().map(|p| technician(p, "Active", "")).collect();
        c.feed(&rows).await;
        c.dispatch().await;
        // Every technician has the master key in hand.
        for t in store::open_key_tasks(c.app.store().pool()).await.unwrap() {
            manual::record(c.app.store(), None, t.id, HAND_OVER, "os:desk", c.now())
                .await
                .unwrap();
        }
        let door = Door {
            from_connector: "keys".into(),
            from_target: "berlin-master-key".into(),
            to_connector: "nuki".into(),
            to_target: "berlin-plant-room".into(),
        };
        let engine = c.app.engine.clone();

        // The plan first; mistakes are named and change nothing.
        let plan = door_migration::plan(&engine, &door).await.unwrap();
        assert_eq!((plan.holders.len(), plan.old_out), (20, 20), "{name}");
        for (bad, named) in [
            (
                Door {
                    to_connector: "acme".into(),
                    ..door.clone()
                },
                "acme",
            ),
            (
                Door {
                    to_target: "berlin-moon".into(),
                    ..door.clone()
                },
                "berlin-moon",
            ),
        ] {
            let e = door_migration::plan(&engine, &bad).await.unwrap_err();
            assert!(
                matches!(e, MoveError::Invalid(_)) && e.to_string().contains(named),
                "{e}"
            );
        }

        // Started twice at once (two operators, or a double click): one migration starts, the
        // other is refused by name; twenty new credentials and twenty keys to take back.
        let (first, second) = tokio::join!(
            door_migration::start(&engine, &door, "os:sam"),
            door_migration::start(&engine, &door, "os:ada"),
        );
        let (started, refused) = match (first, second) {
            (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
            (a, b) => panic!(
                "{name}: exactly one start: {:?} / {:?}",
                a.map(|r| r.0),
                b.map(|r| r.0)
            ),
        };
        assert!(
            matches!(refused, MoveError::Invalid(_)) && refused.to_string().contains("already"),
            "{name}: {refused}"
        );
        let (id, _, applied) = started;
        assert_eq!((applied.issues, applied.revokes), (20, 20), "{name}");
        assert_eq!(
            store::door_moves::all(c.app.store().pool())
                .await
                .unwrap()
                .len(),
            1,
            "{name}"
        );
        let e = door_migration::start(&engine, &door, "os:sam")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already moved"), "{e}");
        let d = c.app.dispatcher();
        let nuki = c.app.connectors["nuki"].clone();
        while d.step(&nuki, "test-worker").await.unwrap() {}
        c.dispatch().await;
        let lock = 1007;
        let sim = c.sim.nuki().unwrap();
        for p in &people {
            let email = format!("{}@example.com", p.to_lowercase());
            let user = sim
                .users()
                .into_iter()
                .find(|u| u.email == email)
                .unwrap_or_else(|| panic!("{name}: {p} has no Nuki account"));
            assert!(
                sim.holds(lock, user.account_user_id),
                "{name}: {p} cannot open the new lock"
            );
        }
        let returns: Vec<_> = store::open_key_tasks(c.app.store().pool())
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.kind == RETURN && t.target == "berlin-master-key")
            .collect();
        assert_eq!(returns.len(), 20, "{name}: a return task per key");
        let moves = store::door_moves::all(c.app.store().pool()).await.unwrap();
        let progress = store::door_moves::progress(c.app.store().pool(), &moves[0])
            .await
            .unwrap();
        assert_eq!(
            (
                progress.new_confirmed,
                progress.returns_open,
                progress.old_outstanding
            ),
            (20, 20, 20)
        );

        // Keys come back one by one; the migration closes with the last.
        for t in &returns[..19] {
            manual::record(
                c.app.store(),
                Some(&engine.metrics),
                t.id,
                RETURN,
                "os:desk",
                c.now(),
            )
            .await
            .unwrap();
        }
        engine.tick().await.unwrap();
        let moves = store::door_moves::all(c.app.store().pool()).await.unwrap();
        assert_eq!(moves[0].status, "open", "{name}: one key is still out");
        manual::record(
            c.app.store(),
            Some(&engine.metrics),
            returns[19].id,
            RETURN,
            "os:desk",
            c.now(),
        )
        .await
        .unwrap();
        engine.tick().await.unwrap();
        let moves = store::door_moves::all(c.app.store().pool()).await.unwrap();
        assert_eq!(
            (moves[0].id, moves[0].status.as_str()),
            (id, "closed"),
            "{name}"
        );
        let audit: Vec<String> = latchkey::audit::query(c.app.store(), &Default::default(), 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{} {}", r.action, r.actor))
            .collect();
        assert_eq!(
            audit
                .iter()
                .filter(|a| a.starts_with("migration.started os:"))
                .count(),
            1,
            "{name}: one start audited"
        );
        assert!(audit.iter().any(|a| a == "migration.closed schedule"));

        // The door stays moved: a joiner gets the smart lock, not a key; a reconciliation agrees.
        let mut rows = rows.clone();
        rows.push(technician("F21", "Active", ""));
        c.feed(&rows).await;
        c.dispatch().await;
        assert!(
            store::open_key_tasks(c.app.store().pool())
                .await
                .unwrap()
                .is_empty(),
            "{name}: no key handed over after the move"
        );
        let mut conn = c.app.store().pool().acquire().await.unwrap();
        let f21 = store::grants_of(&mut conn, "F21").await.unwrap();
        drop(conn);
        assert_eq!(f21.len(), 1, "{f21:?}");
        assert_eq!(
            (f21[0].connector.as_str(), f21[0].target.as_str()),
            ("nuki", "berlin-plant-room")
        );
        let (plan, _) = latchkey::reconcile::run(&engine, "schedule").await.unwrap();
        assert!(plan.is_empty(), "{name}: {}", plan.render());
    }
}
