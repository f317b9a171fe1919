//! Shared harness for the integration tests: a real store (SQLite file, or a fresh PostgreSQL
//! database), the Nuki simulator over real HTTP, the repository's own mappings and profile, and a
//! clock the test moves.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Utc};
use latchkey::app::App;
use latchkey::clock::{ManualClock, SharedClock};
use latchkey::config::{Config, ConfigInput};
use latchkey::dispatch::Dispatcher;
use latchkey_sim::{self as sim, NukiOptions, SimServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const TOKEN: &str = "test-token";
pub const HEADER: &str = "employee_id,full_name,email,department,job_title,employment_type,site,status,hire_date,termination_date,contract_end,manager_id";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The databases every store test runs against: SQLite always; PostgreSQL when reachable, and
/// required (a failure, not a skip) when LATCHKEY_TEST_REQUIRE_POSTGRES=1, as the test script sets.
pub async fn backends(dir: &Path) -> Vec<(String, String)> {
    let mut out = vec![(
        "sqlite".to_string(),
        format!("sqlite://{}", dir.join("state.db").display()),
    )];
    if let Some(url) = postgres_database().await {
        out.push(("postgres".to_string(), url));
    }
    out
}

/// A fresh PostgreSQL database for one test.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    let admin = std::env::var("LATCHKEY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let required = std::env::var("LATCHKEY_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    sqlx::any::install_default_drivers();
    let mut conn = match sqlx::AnyConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if required {
                panic!("PostgreSQL required but unreachable at {admin}: {e}");
            }
            eprintln!("PostgreSQL unreachable at {admin} ({e}); running SQLite only");
            return None;
        }
    };
    let name = format!("lk_{}", uuid_like());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    Some(format!("{base}/{name}"))
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..16)
        .map(|_| format!("{:x}", r.random_range(0..16u8)))
        .collect()
}

/// A module's own context on top of the harness: `harness_context!(Ctx);` declares a `Ctx(Harness)`
/// that reads and writes through to the harness, for the module's own helpers to extend.
#[macro_export]
macro_rules! harness_context {
    ($name:ident) => {
        struct $name(Harness);

        impl std::ops::Deref for $name {
            type Target = Harness;
            fn deref(&self) -> &Harness {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Harness {
                &mut self.0
            }
        }
    };
}

/// The backend a store URL names, as the harness reports it.
pub fn backend_of(store_url: &str) -> &'static str {
    if store_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// One row of the sample feed's shape.
#[allow(clippy::too_many_arguments)]
pub fn row(
    id: &str,
    dept: &str,
    role: &str,
    kind: &str,
    site: &str,
    status: &str,
    hire: &str,
    term: &str,
    end: &str,
) -> String {
    let name = format!("Person {id}");
    let email = format!("{}@example.com", id.to_lowercase());
    format!("{id},{name},{email},{dept},{role},{kind},{site},{status},{hire},{term},{end},")
}

pub fn employee(id: &str, dept: &str, site: &str) -> String {
    row(
        id,
        dept,
        "analyst",
        "employee",
        site,
        "Active",
        "2020-01-01",
        "",
        "",
    )
}

pub struct Harness {
    pub app: App,
    pub clock: ManualClock,
    pub sim: SimServer,
    pub dir: PathBuf,
    pub backend: String,
    pub feed_no: usize,
    /// The secrets the configuration names, by environment variable.
    pub secrets: BTreeMap<String, String>,
    /// Simulators besides Nuki, by name.
    pub others: BTreeMap<String, SimServer>,
    _tmp: Option<tempfile::TempDir>,
}

/// The Nuki-only configuration the tests build on (every site's doors on one Nuki account; the
/// multi-vendor config/demo.toml is `latchkey demo`'s).
pub fn fixture_config() -> PathBuf {
    repo().join("tests/fixtures/nuki-only.toml")
}

/// The entitlement templates `fixture_config` names, as they appear in `config_text`.
pub fn templates_path() -> PathBuf {
    repo().join("tests/fixtures/nuki-only-templates.toml")
}

/// A configuration text with `from` replaced by `to`. A `from` that is not there is a failure,
/// not a silent no-op: a fixture that changed under a test must not leave the test testing
/// something else.
pub trait Patch {
    fn patch(&self, from: &str, to: &str) -> String;
}

impl Patch for str {
    #[track_caller]
    fn patch(&self, from: &str, to: &str) -> String {
        let text = self;
        assert!(
            text.contains(from),
            "the configuration no longer contains `{from}`: the fixture changed, patch it anew"
        );
        text.replace(from, to)
    }
}

pub fn config_text(store_url: &str, sim_url: &str, rate: (u32, u32)) -> String {
    let demo = std::fs::read_to_string(fixture_config()).unwrap();
    // The fixture's targets and sites, with this test's store, simulator and rate limit.
    let root = repo();
    demo.patch(
        "url = \"sqlite://latchkey-demo.db\"",
        &format!("url = \"{store_url}\""),
    )
    .patch(
        "base_url = \"http://127.0.0.1:8701\"",
        &format!("base_url = \"{sim_url}\""),
    )
    .patch(
        "rate_limit = { per_second = 1000, burst = 50 }",
        &format!(
            "rate_limit = {{ per_second = {}, burst = {} }}",
            rate.0, rate.1
        ),
    )
    .patch(
        "\"nuki-only-templates.toml\"",
        &format!("\"{}\"", templates_path().display()),
    )
    .patch(
        "\"../../mappings/",
        &format!("\"{}/mappings/", root.display()),
    )
    .patch(
        "\"../../connectors/",
        &format!("\"{}/connectors/", root.display()),
    )
    .patch(
        "path = \"../../config/sample/hr-initial.csv\"",
        "drop_dir = \"feeds\"",
    )
}

pub fn env() -> BTreeMap<String, String> {
    [("LATCHKEY_DEMO_NUKI_TOKEN".to_string(), TOKEN.to_string())].into()
}

/// The environment of a test, put together in one place: the store, the Nuki simulator (and any
/// other the test started), the templates, extra configuration (connectors, sources, tenants),
/// the secrets it names, and the controlled clock. Every fixture change goes through here, and a
/// textual patch whose pattern is gone fails (see [`Patch`]).
pub struct HarnessBuilder {
    backend: String,
    store_url: String,
    dir: PathBuf,
    nuki: NukiOptions,
    rate: (u32, u32),
    templates: Option<String>,
    patches: Vec<(String, String)>,
    extra: Vec<String>,
    secrets: BTreeMap<String, String>,
    others: BTreeMap<String, SimServer>,
    clock: ManualClock,
}

impl HarnessBuilder {
    pub fn nuki(mut self, opts: NukiOptions) -> Self {
        self.nuki = opts;
        self
    }

    /// The Nuki connector's rate limit (per second, burst).
    pub fn rate(mut self, rate: (u32, u32)) -> Self {
        self.rate = rate;
        self
    }

    /// Entitlement templates of the test's own, instead of the fixture's.
    pub fn templates(mut self, text: &str) -> Self {
        self.templates = Some(text.to_string());
        self
    }

    /// The fixture's templates followed by these.
    pub fn more_templates(self, text: &str) -> Self {
        let base = std::fs::read_to_string(templates_path()).unwrap();
        self.templates(&format!("{base}\n{text}"))
    }

    /// Configuration appended after the fixture's (connectors, sources, tenants, sections).
    pub fn config(mut self, text: &str) -> Self {
        self.extra.push(text.to_string());
        self
    }

    /// Replace text of the fixture's configuration; the pattern must be there.
    pub fn patch(mut self, from: &str, to: &str) -> Self {
        self.patches.push((from.to_string(), to.to_string()));
        self
    }

    /// An environment variable the configuration reads a secret from.
    pub fn secret(mut self, var: &str, value: &str) -> Self {
        self.secrets.insert(var.to_string(), value.to_string());
        self
    }

    /// Another simulator the test started, kept running as long as the harness.
    pub fn sim(mut self, name: &str, sim: SimServer) -> Self {
        self.others.insert(name.to_string(), sim);
        self
    }

    /// The harness's clock, for a simulator that must tell the same time (start it before
    /// `build`).
    pub fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    /// The harness's clock as a simulator reads it.
    pub fn sim_clock(&self) -> latchkey_sim::clock::SharedClock {
        Arc::new(SimClock(Arc::new(self.clock.clone())))
    }

    pub async fn build(self) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = sim::start_nuki(
            listener,
            NukiOptions {
                token: TOKEN.into(),
                ..self.nuki
            },
        )
        .await
        .unwrap();
        let dir = self.dir;
        std::fs::create_dir_all(dir.join("feeds")).unwrap();
        let mut text = config_text(&self.store_url, &sim.base_url(), self.rate);
        if let Some(templates) = &self.templates {
            let path = dir.join("templates.toml");
            std::fs::write(&path, templates).unwrap();
            text = text.patch(
                &format!("\"{}\"", templates_path().display()),
                &format!("\"{}\"", path.display()),
            );
        }
        for (from, to) in &self.patches {
            text = text.patch(from, to);
        }
        for extra in &self.extra {
            text = format!("{text}\n{extra}\n");
        }
        let path = dir.join("latchkey.toml");
        std::fs::write(&path, text).unwrap();
        let mut vars = env();
        vars.extend(self.secrets.clone());
        let config = Config::load(&ConfigInput::from_file(&path, vars).unwrap()).unwrap();
        let shared: SharedClock = Arc::new(self.clock.clone());
        let app = App::open(config, shared).await.unwrap();
        Harness {
            app,
            clock: self.clock,
            sim,
            dir,
            backend: self.backend,
            feed_no: 0,
            secrets: self.secrets,
            others: self.others,
            _tmp: None,
        }
    }
}

impl Harness {
    /// The environment every test starts from: the fixture configuration on this store, a Nuki
    /// simulator, and the clock at 2026-11-25 09:00 UTC.
    pub fn builder(backend: &str, store_url: &str, dir: &Path) -> HarnessBuilder {
        HarnessBuilder {
            backend: backend.to_string(),
            store_url: store_url.to_string(),
            dir: dir.to_path_buf(),
            nuki: NukiOptions::default(),
            rate: (1000, 50),
            templates: None,
            patches: Vec::new(),
            extra: Vec::new(),
            secrets: BTreeMap::new(),
            others: BTreeMap::new(),
            clock: ManualClock::new(t("2026-11-25T09:00:00Z")),
        }
    }

    pub async fn new(backend: &str, store_url: &str, dir: &Path, opts: NukiOptions) -> Self {
        Self::builder(backend, store_url, dir)
            .nuki(opts)
            .build()
            .await
    }

    pub async fn with_rate(
        backend: &str,
        store_url: &str,
        dir: &Path,
        opts: NukiOptions,
        rate: (u32, u32),
    ) -> Self {
        Self::builder(backend, store_url, dir)
            .nuki(opts)
            .rate(rate)
            .build()
            .await
    }

    /// The configuration this harness runs on, patched (each pattern must be there) and with
    /// `extra` appended, written to `name` in its directory and loaded with its secrets (and
    /// `vars`): what a restarted or differently configured daemon on the same store and
    /// simulators reads.
    pub fn config_with(
        &self,
        name: &str,
        patches: &[(&str, &str)],
        extra: &str,
        vars: &[(&str, &str)],
    ) -> Config {
        let mut text = std::fs::read_to_string(self.dir.join("latchkey.toml")).unwrap();
        for (from, to) in patches {
            text = text.patch(from, to);
        }
        let path = self.dir.join(name);
        std::fs::write(&path, format!("{text}\n{extra}\n")).unwrap();
        let mut all = env();
        all.extend(self.secrets.clone());
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::load(&ConfigInput::from_file(&path, all).unwrap()).unwrap()
    }

    /// Another daemon on this harness's store, simulators and clock, with `extra` configuration.
    pub async fn open_with(&self, extra: &str, vars: &[(&str, &str)]) -> App {
        self.open_patched(&[], extra, vars).await
    }

    /// [`Harness::open_with`] on a patched configuration.
    pub async fn open_patched(
        &self,
        patches: &[(&str, &str)],
        extra: &str,
        vars: &[(&str, &str)],
    ) -> App {
        let config = self.config_with("reopened.toml", patches, extra, vars);
        App::open(config, Arc::new(self.clock.clone()))
            .await
            .unwrap()
    }

    /// A simulator the builder was given.
    pub fn other(&self, name: &str) -> &SimServer {
        self.others
            .get(name)
            .unwrap_or_else(|| panic!("no simulator {name} in this harness"))
    }

    /// Write a feed file with these rows and apply it.
    pub async fn feed(&mut self, rows: &[String]) -> latchkey::engine::FeedReport {
        self.feed_no += 1;
        let path = self
            .dir
            .join("feeds")
            .join(format!("hr-{:04}.csv", self.feed_no));
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
        self.app.engine.apply_hr_file("hr", &path).await.unwrap()
    }

    pub fn dispatcher(&self) -> Dispatcher {
        self.app.dispatcher()
    }

    /// Deliver every command, moving the clock past backoffs, until the outbox is empty.
    pub async fn drain(&self) {
        let d = self.dispatcher();
        let connector = self.app.connectors.get("nuki").unwrap().clone();
        for _ in 0..100_000 {
            if d.step(&connector, "test-worker").await.unwrap() {
                continue;
            }
            let pool = self.app.store().pool();
            match latchkey::store::next_due(pool, "nuki").await.unwrap() {
                None => return,
                Some(due) => {
                    let now = latchkey::clock::to_micros(self.clock.now_utc());
                    if due > now {
                        self.clock.set(latchkey::clock::from_micros(due));
                    }
                }
            }
        }
        panic!("outbox did not drain");
    }

    pub fn lock(&self, target: &str) -> i64 {
        let demo = std::fs::read_to_string(fixture_config()).unwrap();
        let line = demo
            .lines()
            .find(|l| l.starts_with(&format!("\"{target}\"")))
            .unwrap();
        line.split('"').nth(3).unwrap().parse().unwrap()
    }

    pub fn user_id(&self, key: &str) -> Option<i64> {
        let email = format!("{}@example.com", key.to_lowercase());
        self.sim
            .nuki()
            .unwrap()
            .users()
            .into_iter()
            .find(|u| u.email == email)
            .map(|u| u.account_user_id)
    }

    /// Does the simulator say this person holds this target now?
    pub fn holds(&self, key: &str, target: &str) -> bool {
        self.user_id(key)
            .is_some_and(|u| self.sim.nuki().unwrap().holds(self.lock(target), u))
    }
}

pub trait ClockExt {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl ClockExt for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        use latchkey::clock::Clock;
        self.now()
    }
}

/// A test's controlled clock, as the clock that stamps a simulator's events.
#[derive(Debug)]
pub struct SimClock(pub latchkey::clock::SharedClock);

impl latchkey_sim::cabinet::EventClock for SimClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now()
    }
}

/// What the profile simulator reads of a vendor profile.
pub fn sim_profile(p: &latchkey::connectors::profile::Profile) -> latchkey_sim::generic::Profile {
    use latchkey::connectors::profile::AuthSpec;
    use latchkey_sim::generic::AuthSpec as SimAuth;
    latchkey_sim::generic::Profile {
        origin: p.origin.clone(),
        simulator: p.simulator.clone(),
        auth: match &p.auth {
            AuthSpec::Bearer { .. } => SimAuth::Bearer,
            AuthSpec::Header { header, prefix, .. } => SimAuth::Header {
                header: header.clone(),
                prefix: prefix.clone(),
            },
            AuthSpec::None => SimAuth::None,
            AuthSpec::Oauth2ClientCredentials { .. } => SimAuth::Other("oauth2".into()),
            AuthSpec::Login { .. } => SimAuth::Other("login".into()),
        },
    }
}
