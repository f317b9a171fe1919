//! Electronic key cabinets through the `cabinet` profile and its simulator: key-group permission for
//! a joiner, removed on termination; key-out / key-return events read into the holdings that
//! `latchkey who-has` shows; a leaver still holding a key raises the alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::*;
use latchkey::clock::{from_micros, to_micros};
use latchkey::jobs::cabinet_events::{self, PollReport};
use latchkey::store;
use latchkey_sim::cabinet::{CabinetOptions, start_cabinet};
use std::path::Path;

const CABINET_TOKEN: &str = "cabinet-test-token";
const GROUP: &str = "berlin-facilities-keys";

const TEMPLATES: &str = r#"
version = 1
[[templates]]
name = "facilities-cabinet"
when = "department == 'facilities'"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "cabinet"
target = "{{ site }}-facilities-keys"
credential = "cabinet"
"#;

/// The shared harness with a key cabinet beside the Nuki account: its simulator tells the
/// harness's time, so the events it stamps are the times the test set.
struct Ctx {
    h: Harness,
    feeds: std::cell::Cell<usize>,
    http: reqwest::Client,
}

impl std::ops::Deref for Ctx {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

async fn setup(dir: &Path, url: &str) -> Ctx {
    let builder = Harness::builder(backend_of(url), url, dir);
    let cabinet = start_cabinet(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        CabinetOptions {
            token: CABINET_TOKEN.into(),
            keys: [
                ("K-101", GROUP),
                ("K-102", GROUP),
                ("K-900", "london-vault"),
            ]
            .into_iter()
            .map(|(k, g)| (k.to_string(), g.to_string()))
            .collect(),
            clock: builder.sim_clock(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = builder
        .templates(TEMPLATES)
        .config(&format!(
            "[connectors.cabinet]\nprofile = \"{}\"\nbase_url = \"{}\"\n\
             secrets = {{ api_token = {{ env = \"CABINET_TOKEN\" }} }}",
            repo().join("connectors/cabinet.toml").display(),
            cabinet.base_url()
        ))
        .secret("CABINET_TOKEN", CABINET_TOKEN)
        .sim("cabinet", cabinet)
        .build()
        .await;
    Ctx {
        h,
        feeds: std::cell::Cell::new(0),
        http: reqwest::Client::new(),
    }
}

impl Ctx {
    fn cabinet(&self) -> &latchkey_sim::SimServer {
        self.other("cabinet")
    }

    async fn feed(&self, rows: &[String]) {
        self.feeds.set(self.feeds.get() + 1);
        let path = self
            .dir
            .join("feeds")
            .join(format!("hr-{:04}.csv", self.feeds.get()));
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        self.app.engine.apply_hr_file("hr", &path).await.unwrap();
    }

    /// Deliver every cabinet command, moving the clock past backoffs.
    async fn drain(&self) {
        let d = self.app.dispatcher();
        let lane = self.app.connectors["cabinet"].clone();
        for _ in 0..10_000 {
            if d.step(&lane, "test-worker").await.unwrap() {
                continue;
            }
            match store::next_due(self.app.store().pool(), "cabinet")
                .await
                .unwrap()
            {
                None => return,
                Some(due) => {
                    if due > to_micros(self.clock.now_utc()) {
                        self.clock.set(from_micros(due));
                    }
                }
            }
        }
        panic!("cabinet outbox did not drain");
    }

    async fn poll(&self) -> PollReport {
        let mut reports = cabinet_events::poll_all(&self.app.engine, &self.http).await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        reports.remove(0)
    }

    fn advance_minutes(&self, m: i64) {
        self.clock.advance(chrono::Duration::minutes(m));
    }

    async fn holders(&self, target: &str) -> Vec<(String, String)> {
        store::cabinet_holders(self.app.store().pool(), target)
            .await
            .unwrap()
            .into_iter()
            .map(|h| (h.identity_key.into(), h.key_id))
            .collect()
    }

    fn leaver_gauge(&self) -> String {
        let text = self.app.engine.metrics.encode_prometheus();
        text.lines()
            .find(|l| l.starts_with("latchkey_leaver_keys_held{connector=\"cabinet\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no leaver gauge in\n{text}"))
    }

    async fn audits(&self, action: &str) -> i64 {
        use sqlx::Row;
        sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE action = $1")
            .bind(action)
            .fetch_one(self.app.store().pool())
            .await
            .unwrap()
            .try_get("n")
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

#[tokio::test]
async fn joiner_key_out_leaver_alert_and_return() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let c = setup(&tmp.path().join(&name), &url).await;
        let sim = c.cabinet().cabinet().unwrap();

        // Joiners: a cabinet user keyed by the HR id, with the key-group permission.
        c.feed(&[
            technician("F1", "Active", ""),
            technician("F2", "Active", ""),
        ])
        .await;
        c.drain().await;
        let users = sim.users();
        assert_eq!(users.len(), 2, "{users:?}");
        assert!(users.iter().all(|u| u.enabled));
        assert!(sim.has_access("F1", GROUP));
        assert!(!sim.has_access("F1", "london-vault"));
        assert_eq!(c.cabinet().stats().duplicates_created, 0);
        // Nothing happened at the cabinet yet.
        assert_eq!(c.poll().await.events, 0);

        // Key-out: who-has answers by key and by key group.
        c.advance_minutes(5);
        sim.take_key("F1", "K-101").unwrap();
        sim.take_key("F2", "K-102").unwrap();
        assert!(sim.take_key("F2", "K-101").is_err(), "the key is out");
        let r = c.poll().await;
        assert_eq!((r.events, r.leaver_keys_held), (2, 0));
        assert_eq!(c.holders("K-101").await, [("F1".into(), "K-101".into())]);
        assert_eq!(c.holders(GROUP).await.len(), 2);
        assert_eq!(c.audits("cabinet.key_out").await, 2);
        // The cursor is stored with what it covers; a second poll reads nothing again.
        let source = cabinet_events::source_name("cabinet");
        let cursor = store::checkpoint(c.app.store().pool(), &source)
            .await
            .unwrap();
        let last = sim.events().last().unwrap().id.to_string();
        assert_eq!(cursor.as_deref(), Some(last.as_str()));
        assert_eq!(c.poll().await.events, 0);
        assert_eq!(c.audits("cabinet.key_out").await, 2);
        assert_eq!(c.leaver_gauge(), "0");

        // F1 leaves still holding K-101: the permission is removed and the alert raised once.
        c.advance_minutes(60);
        c.feed(&[
            technician("F1", "Terminated", "2026-11-24"),
            technician("F2", "Active", ""),
        ])
        .await;
        c.drain().await;
        assert!(
            !sim.has_access("F1", GROUP),
            "access revoked on termination"
        );
        assert!(sim.has_access("F2", GROUP));
        assert!(sim.take_key("F1", "K-102").is_err());
        let r = c.poll().await;
        assert_eq!((r.events, r.leaver_keys_held), (0, 1));
        assert_eq!(c.leaver_gauge(), "1");
        assert_eq!(c.audits("cabinet.leaver_holds_key").await, 1);
        c.poll().await;
        assert_eq!(
            c.audits("cabinet.leaver_holds_key").await,
            1,
            "alerted once per holding"
        );

        // Overdue, then returned: the holding and the alert clear.
        sim.report_overdue("K-101").unwrap();
        c.poll().await;
        let held = store::cabinet_holders(c.app.store().pool(), "K-101")
            .await
            .unwrap();
        assert!(held[0].overdue_at.is_some());
        c.advance_minutes(30);
        sim.return_key("F1", "K-101").unwrap();
        let r = c.poll().await;
        assert_eq!((r.events, r.leaver_keys_held), (1, 0));
        assert_eq!(c.leaver_gauge(), "0");
        assert!(c.holders("K-101").await.is_empty());
        assert_eq!(c.holders(GROUP).await, [("F2".into(), "K-102".into())]);
        assert_eq!(c.audits("cabinet.key_return").await, 1);
        assert_eq!(c.audits("cabinet.overdue").await, 1);
        let verdict = latchkey::audit::verify(c.app.store()).await.unwrap();
        assert!(
            matches!(verdict, latchkey::audit::Verdict::Intact { .. }),
            "{verdict:?}"
        );
    }
}

#[tokio::test]
async fn a_cabinet_outage_is_skipped_and_caught_up() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("state.db").display());
    let c = setup(tmp.path(), &url).await;
    let sim = c.cabinet().cabinet().unwrap();
    c.feed(&[technician("F1", "Active", "")]).await;
    c.drain().await;
    sim.take_key("F1", "K-101").unwrap();
    c.cabinet().set_faults(latchkey_sim::Faults {
        outage: true,
        ..latchkey_sim::Faults::none()
    });
    assert!(
        cabinet_events::poll_all(&c.app.engine, &c.http)
            .await
            .is_empty(),
        "a failing cabinet gives no report"
    );
    assert!(c.holders("K-101").await.is_empty());
    c.cabinet().set_faults(latchkey_sim::Faults::none());
    assert_eq!(c.poll().await.events, 1);
    assert_eq!(c.holders("K-101").await, [("F1".into(), "K-101".into())]);
}
