//! Circuit breaker and drift detection, against every store backend and the Nuki simulator over
//! HTTP, with the clock moved by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use latchkey::app::App;
use latchkey::clock::{ManualClock, SharedClock, from_micros, to_micros};
use latchkey::config::{Config, ConfigInput};
use latchkey::dispatch::breaker::State;
use latchkey::sim::{self, Faults, NukiOptions, SimServer};
use latchkey::store;
use std::path::Path;
use std::sync::Arc;

/// Templates of this test: each employee gets their department's door at `nuki` and the annex door
/// at `nuki2`, a second Nuki account behind its own simulator.
const TEMPLATES: &str = r#"
version = 1
[[templates]]
name = "department-door"
when = "employment_type == 'employee'"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-{{ department }}"
credential = "app"

[[templates]]
name = "annex-door"
when = "employment_type == 'employee'"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "nuki2"
target = "{{ site }}-annex"
credential = "app"
"#;

struct Ctx {
    app: App,
    clock: ManualClock,
    sim: SimServer,
    sim2: SimServer,
    dir: std::path::PathBuf,
    feeds: usize,
}

async fn start_sim() -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::start_nuki(
        listener,
        NukiOptions {
            token: TOKEN.into(),
            ..NukiOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn setup(dir: &Path, url: &str, extra: &str) -> Ctx {
    let sim = start_sim().await;
    let sim2 = start_sim().await;
    std::fs::create_dir_all(dir.join("feeds")).unwrap();
    let templates = dir.join("templates.toml");
    std::fs::write(&templates, TEMPLATES).unwrap();
    let text = config_text(url, &sim.base_url(), (1000, 50)).replace(
        &format!("\"{}\"", templates_path().display()),
        &format!("\"{}\"", templates.display()),
    );
    let text = format!(
        "{text}\n{extra}\n[connectors.nuki2]\nprofile = \"{}/connectors/nuki.toml\"\nbase_url = \"{}\"\n\
         concurrency = 1\nsecrets = {{ token = {{ env = \"LATCHKEY_DEMO_NUKI_TOKEN\" }} }}\n\
         targets = {{ \"berlin-annex\" = \"9001\" }}\n",
        repo().display(),
        sim2.base_url()
    );
    let path = dir.join("latchkey.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&ConfigInput::from_file(&path, env()).unwrap()).unwrap();
    let clock = ManualClock::new(t("2026-11-25T09:00:00Z"));
    let shared: SharedClock = Arc::new(clock.clone());
    let app = App::open(config, shared).await.unwrap();
    Ctx {
        app,
        clock,
        sim,
        sim2,
        dir: dir.to_path_buf(),
        feeds: 0,
    }
}

impl Ctx {
    async fn feed(&mut self, rows: &[String]) {
        self.feeds += 1;
        let path = self
            .dir
            .join("feeds")
            .join(format!("hr-{:04}.csv", self.feeds));
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        self.app.engine.apply_hr_file("hr", &path).await.unwrap();
    }

    fn now(&self) -> i64 {
        to_micros(self.clock.now_utc())
    }

    /// Step every lane, moving the clock to the next due command when none is due, until the outbox
    /// is empty or the clock reaches `until`.
    async fn run_until(&self, until: Option<i64>) {
        let d = self.app.dispatcher();
        for _ in 0..200_000 {
            let mut worked = false;
            for c in self.app.connectors.values() {
                worked |= d.step(c, "test-worker").await.unwrap();
            }
            if worked {
                continue;
            }
            let mut next: Option<i64> = None;
            for name in self.app.connectors.keys() {
                if let Some(due) = store::next_due(self.app.store().pool(), name)
                    .await
                    .unwrap()
                {
                    next = Some(next.map_or(due, |n: i64| n.min(due)));
                }
            }
            let Some(next) = next else { return };
            if until.is_some_and(|u| next >= u) {
                self.clock.set(from_micros(until.unwrap()));
                return;
            }
            if next > self.now() {
                self.clock.set(from_micros(next));
            }
        }
        panic!("outbox did not drain");
    }

    async fn commands(&self, connector: &str) -> Vec<store::CommandRow> {
        let mut out = Vec::new();
        for status in [
            "pending",
            "inflight",
            "confirming",
            "done",
            "dead",
            "superseded",
        ] {
            out.extend(
                store::commands_where_status(self.app.store().pool(), status, 10_000)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|c| c.connector == connector),
            );
        }
        out
    }

    fn user_id(&self, sim: &SimServer, key: &str) -> Option<i64> {
        let email = format!("{}@example.com", key.to_lowercase());
        sim.nuki()
            .unwrap()
            .users()
            .into_iter()
            .find(|u| u.email == email)
            .map(|u| u.account_user_id)
    }

    fn holds(&self, sim: &SimServer, key: &str, lock: i64) -> bool {
        self.user_id(sim, key)
            .is_some_and(|u| sim.nuki().unwrap().holds(lock, u))
    }

    async fn audit_actions(&self) -> Vec<String> {
        use sqlx::Row;
        sqlx::query("SELECT action FROM audit_log ORDER BY seq")
            .fetch_all(self.app.store().pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("action").unwrap())
            .collect()
    }
}

fn gauge(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

#[tokio::test]
async fn ten_minute_outage_opens_the_breaker_without_burning_attempts_and_spares_other_vendors() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let c = setup(
            &tmp.path().join(&name),
            &url,
            "[connectors.nuki.breaker]\nfailure_threshold = 3\ncooldown_seconds = 30\n",
        )
        .await;
        let mut c = c;
        c.sim.set_faults(Faults {
            outage: true,
            ..Faults::none()
        });
        let start = c.now();
        c.feed(&[
            employee("E1", "engineering", "berlin"),
            employee("E2", "sales", "berlin"),
            employee("E3", "finance", "berlin"),
        ])
        .await;
        // Ten minutes of outage at `nuki`, driven by the clock.
        c.run_until(Some(start + 600_000_000)).await;

        // The other vendor finished at once, as if nothing happened.
        let other = c.commands("nuki2").await;
        assert_eq!(other.len(), 3);
        for cmd in &other {
            assert_eq!(cmd.status, "done", "{cmd:?}");
            assert!(
                cmd.confirmed_at.unwrap() - cmd.trigger_at < 5_000_000,
                "{cmd:?}"
            );
            assert_eq!(cmd.attempts, 1);
        }
        assert_eq!(c.app.breakers["nuki2"].state(), State::Closed);
        // The failing vendor's breaker is open, its commands wait with attempts to spare.
        assert_ne!(c.app.breakers["nuki"].state(), State::Closed);
        let metrics = c.app.engine.metrics.encode_openmetrics();
        assert_eq!(
            gauge(
                &metrics,
                r#"latchkey_circuit_breaker_open{connector="nuki"}"#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            gauge(
                &metrics,
                r#"latchkey_circuit_breaker_open{connector="nuki2"}"#
            )
            .as_deref(),
            Some("0")
        );
        let waiting = c.commands("nuki").await;
        assert_eq!(waiting.len(), 3);
        for cmd in &waiting {
            assert!(
                ["pending", "confirming"].contains(&cmd.status.as_str()),
                "{cmd:?}"
            );
            assert!(cmd.attempts <= 3, "outage burnt attempts: {cmd:?}");
        }
        let status = latchkey::cli::status_text(&c.app).await.unwrap();
        assert!(status.contains("circuit breakers open: 1"), "{status}");
        // Twenty cool-downs passed: the vendor was probed, not hammered.
        let calls = c.sim.stats().requests;
        assert!(calls < 60, "{calls} calls during the outage");

        // The vendor returns: the next probe closes the breaker and everything completes.
        c.sim.set_faults(Faults::none());
        c.run_until(None).await;
        for cmd in c.commands("nuki").await {
            assert_eq!(cmd.status, "done", "{cmd:?}");
        }
        for (key, lock) in [("E1", 1001), ("E2", 1002), ("E3", 1004)] {
            assert!(c.holds(&c.sim, key, lock), "{key}");
            assert!(c.holds(&c.sim2, key, 9001), "{key}");
        }
        assert_eq!(c.app.breakers["nuki"].state(), State::Closed);
        let metrics = c.app.engine.metrics.encode_openmetrics();
        assert_eq!(
            gauge(
                &metrics,
                r#"latchkey_circuit_breaker_open{connector="nuki"}"#
            )
            .as_deref(),
            Some("0")
        );
        let actions = c.audit_actions().await;
        for a in ["breaker.open", "breaker.half_open", "breaker.closed"] {
            assert!(actions.iter().any(|x| x == a), "{a} not audited");
        }
        let status = latchkey::cli::status_text(&c.app).await.unwrap();
        assert!(status.contains("circuit breakers open: 0"), "{status}");
        assert_eq!(
            latchkey::audit::verify(c.app.store()).await.unwrap(),
            latchkey::audit::Verdict::Intact {
                records: actions.len() as i64
            }
        );
    }
}

async fn nuki_call(
    sim: &SimServer,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut rb = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.base_url()))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp
}

async fn grant_behind_its_back(sim: &SimServer, lock: i64, user: i64) {
    nuki_call(
        sim,
        reqwest::Method::PUT,
        &format!("/smartlock/{lock}/auth"),
        Some(serde_json::json!({
            "name": "added by hand", "type": 0, "accountUserId": user, "remoteAllowed": true,
            "allowedWeekDays": 127, "allowedFromTime": 0, "allowedUntilTime": 0,
        })),
    )
    .await;
}

#[tokio::test]
async fn drift_revokes_orphans_and_reissues_grants_deleted_at_the_vendor_after_the_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url) in backends(tmp.path()).await {
        eprintln!("-- backend {name}");
        let mut c = setup(
            &tmp.path().join(&name),
            &url,
            "[drift]\nschedule = \"*/10 * * * *\"\ntolerance_seconds = 600\nrevoke_orphans = true\n",
        )
        .await;
        c.feed(&[
            employee("E1", "engineering", "berlin"),
            employee("E2", "sales", "berlin"),
        ])
        .await;
        c.run_until(None).await;
        assert!(c.holds(&c.sim, "E2", 1002));
        let report = c.app.drift_check().await.unwrap();
        assert!(report.findings.is_empty(), "{}", report.render());

        // Behind latchkey's back: a stranger and E1 get the sales door, E2's grant is deleted. The
        // stranger is no one latchkey knows, so the finding names no person.
        let stranger: serde_json::Value = nuki_call(
            &c.sim,
            reqwest::Method::PUT,
            "/account/user",
            Some(serde_json::json!({"email": "stranger@example.org", "name": "Stranger", "language": "en"})),
        )
        .await
        .json()
        .await
        .unwrap();
        let stranger = stranger["accountUserId"].as_i64().unwrap();
        grant_behind_its_back(&c.sim, 1002, stranger).await;
        grant_behind_its_back(&c.sim, 1002, c.user_id(&c.sim, "E1").unwrap()).await;
        let e2 = c.user_id(&c.sim, "E2").unwrap();
        let auth = c
            .sim
            .nuki()
            .unwrap()
            .auths()
            .into_iter()
            .find(|a| a.smartlock_id == 1002 && a.account_user_id == Some(e2))
            .unwrap();
        nuki_call(
            &c.sim,
            reqwest::Method::DELETE,
            &format!("/smartlock/1002/auth/{}", auth.id),
            None,
        )
        .await;
        assert!(c.sim.nuki().unwrap().holds(1002, stranger));
        assert!(!c.holds(&c.sim, "E2", 1002));

        let report = c.app.drift_check().await.unwrap();
        let text = report.render();
        let orphans: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.kind == "orphan")
            .collect();
        assert_eq!(orphans.len(), 2, "{text}");
        assert!(orphans.iter().all(|f| f.action == "revoked"), "{text}");
        assert!(
            orphans.iter().any(|f| f.subject == "E1") && orphans.iter().any(|f| f.subject == "-"),
            "{text}"
        );
        // Missing, but within the tolerance for vendors that show changes late: not yet re-issued.
        let missing: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.kind == "missing")
            .collect();
        assert_eq!(missing.len(), 1, "{text}");
        assert_eq!(
            (missing[0].subject.as_str(), missing[0].action.as_str()),
            ("E2", "waiting")
        );
        assert!(!c.sim.nuki().unwrap().holds(1002, stranger));
        assert!(!c.holds(&c.sim, "E1", 1002));
        assert!(c.holds(&c.sim, "E1", 1001), "latchkey's own grant stays");
        let metrics = c.app.engine.metrics.encode_openmetrics();
        assert_eq!(
            gauge(
                &metrics,
                r#"latchkey_drift_findings{connector="nuki",kind="orphan"}"#
            )
            .as_deref(),
            Some("2"),
            "{metrics}"
        );
        let status = latchkey::cli::status_text(&c.app).await.unwrap();
        assert!(status.contains("drift findings open: 1"), "{status}");
        assert!(status.contains("missing nuki:berlin-sales E2"), "{status}");

        // Past the tolerance, the next check re-issues it.
        c.clock.set(from_micros(c.now() + 601_000_000));
        let report = c.app.drift_check().await.unwrap();
        assert_eq!(report.findings.len(), 1, "{}", report.render());
        assert_eq!(report.findings[0].action, "reissued");
        c.run_until(None).await;
        assert!(c.holds(&c.sim, "E2", 1002));
        let report = c.app.drift_check().await.unwrap();
        assert!(report.findings.is_empty(), "{}", report.render());
        let status = latchkey::cli::status_text(&c.app).await.unwrap();
        assert!(status.contains("drift findings open: 0"), "{status}");
        let actions = c.audit_actions().await;
        for a in [
            "drift.orphan",
            "drift.orphan_revoked",
            "drift.missing",
            "drift.missing_reissued",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} not audited");
        }
    }
}

#[tokio::test]
async fn drift_only_reports_orphans_unless_policy_says_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, url) = backends(tmp.path()).await.remove(0);
    let mut c = setup(tmp.path(), &url, "").await;
    c.feed(&[employee("E1", "engineering", "berlin")]).await;
    c.run_until(None).await;
    grant_behind_its_back(&c.sim, 1002, c.user_id(&c.sim, "E1").unwrap()).await;
    let report = c.app.drift_check().await.unwrap();
    assert_eq!(report.findings.len(), 1, "{}", report.render());
    assert_eq!(report.findings[0].action, "reported");
    assert!(c.holds(&c.sim, "E1", 1002), "reported, not revoked");
    // Seen again: still one open finding, not a second one.
    c.app.drift_check().await.unwrap();
    assert_eq!(
        store::open_drift(c.app.store().pool()).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_daemon_checks_drift_without_any_drift_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, url) = backends(tmp.path()).await.remove(0);
    let c = setup(tmp.path(), &url, "").await;
    assert_eq!(
        c.app.engine.config.drift.schedule.as_deref(),
        Some("0 * * * *")
    );
    let mut c = c;
    c.feed(&[employee("E1", "engineering", "berlin")]).await;
    c.run_until(None).await;
    grant_behind_its_back(&c.sim, 1002, c.user_id(&c.sim, "E1").unwrap()).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let pool = c.app.store().pool().clone();
    let watch = async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store::open_drift(&pool).await.unwrap().is_empty()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tx.send(true).unwrap();
    };
    let (ran, ()) = tokio::join!(c.app.run(rx), watch);
    ran.unwrap();
    let open = store::open_drift(c.app.store().pool()).await.unwrap();
    assert_eq!(open.len(), 1, "the orphan was found by the scheduled check");
    assert_eq!(open[0].kind, "orphan");
    assert!(
        c.holds(&c.sim, "E1", 1002),
        "reported, not revoked by default"
    );
}
