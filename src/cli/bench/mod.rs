//! `latchkey bench`: figures against the physical floor.
//!
//! Two measurements, each on its own SQLite store in a temporary directory and its own in-process Nuki
//! simulator (real HTTP on loopback, no vendor-side limit, no sync delay), with the real wall clock:
//!
//! 1. Mass termination: N people hold one grant each; one feed terminates all of them. The wall time
//!    from the feed apply to an empty outbox is set against the floor the connector's own rate limit
//!    allows (N / R in commands, and requests / R in HTTP requests).
//! 2. Single leaver, unloaded: one person at a time is terminated with nothing else queued; the time
//!    from trigger to the vendor confirming the revoke is what a security team would be promised.

use super::repo_path;
use crate::app::App;
use crate::clock;
use crate::config::{Config, ConfigInput};
use crate::engine::FeedReport;
use crate::model::Action;
use crate::model::CommandStatus;
use crate::store;
use anyhow::{Context, bail};
use drain::max_in_any_second;
use indicatif::{ProgressBar, ProgressStyle};
use latchkey_sim::{self as sim, NukiOptions, SimServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Revocations to drain (people terminated by one feed).
    #[arg(long, default_value_t = 10_000)]
    pub revocations: usize,
    /// Connector rate limit during the drain (requests per second).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Connector burst during the drain; defaults to a tenth of the rate.
    #[arg(long)]
    pub burst: Option<u32>,
    /// Commands in flight at once on the connector's lane (the demo configuration's value).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Single leavers to time, one after another.
    #[arg(long, default_value_t = 200)]
    pub leavers: usize,
    /// People in the store of the scale sections (`ingest`, and `reconcile` unless `--identities`
    /// is given): 100,000 by default. The `leaver` section's store has 300 unless this is given.
    #[arg(long)]
    pub population: Option<usize>,
    /// Issues queued behind the leavers of the `backlog` section.
    #[arg(long, default_value_t = 20_000)]
    pub backlog: usize,
    /// Run on this PostgreSQL server (`postgres://user@host/db`): each section gets a fresh
    /// database there. SQLite files in the temporary directory otherwise.
    #[arg(long)]
    pub store_url: Option<String>,
    /// SCIM deactivations to time (each user is created over SCIM first).
    #[arg(long, default_value_t = 1000)]
    pub scim_deactivations: usize,
    /// Concurrent SCIM clients while creating the users (durable writes per second).
    #[arg(long, default_value_t = 8)]
    pub scim_clients: usize,
    /// Identities in the store the `reconcile` section plans (default: `--population`, else 100,000).
    #[arg(long)]
    pub identities: Option<usize>,
    /// Members of the group the `scim-groups` section builds.
    #[arg(long, default_value_t = 20_000)]
    pub group_members: usize,
    /// Which measurements to run (`drain`, `leaver`, `scim`, `reconcile`, `ingest`, `backlog`,
    /// `termination`, `memory`, `replicas` (PostgreSQL), `scim-groups`, `console`).
    #[arg(long, value_delimiter = ',', default_values_t = ["drain".to_string(), "leaver".to_string(), "scim".to_string()])]
    pub sections: Vec<String>,
    /// Keep the stores here instead of in a temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// The column layout of `mappings/hr.toml`, as the sample feeds have it.
const HEADER: &str = "employee_id,full_name,email,department,job_title,employment_type,site,status,hire_date,termination_date,contract_end,manager_id";
const SIM_TOKEN: &str = "nuki-bench-token";
/// `LATCHKEY_BENCH_` variables are never read as configuration overrides, so this holds the secret.
const TOKEN_VAR: &str = "LATCHKEY_BENCH_NUKI_TOKEN";
pub(super) const SCIM_TOKEN: &str = "scim-bench-token";
pub(super) const SCIM_TOKEN_VAR: &str = "LATCHKEY_BENCH_SCIM_TOKEN";
/// Nuki allows 200 app authorisations per lock; a hundred people per lock keeps well inside that
/// while each read-back still lists a realistically full lock.
const PEOPLE_PER_LOCK: usize = 100;
/// Issuing the grants is set-up, not the figure: a limit high enough not to be what it measures.
pub(super) const SETUP_RATE: (u32, u32) = (5_000, 500);
/// An outbox whose open count does not move for this long is stuck, not slow.
const STALL: Duration = Duration::from_secs(120);

/// How often a drain counts the open commands (it asks only whether any is left in between).
const COUNT_EVERY: Duration = Duration::from_millis(500);

/// One store with its app and running dispatcher (none while the vendor is held back).
pub(super) struct Bed {
    pub(super) app: App,
    stop: watch::Sender<bool>,
    dispatcher: Option<JoinHandle<()>>,
}

/// The PostgreSQL server given with `--store-url`, if any: each store opened gets a fresh database.
static STORE_SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The databases this run created on that server: dropped when it ends, unless `--keep` is given.
static CREATED_DATABASES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drop the databases this run created, so repeated runs do not fill the server. One that cannot
/// be dropped is named, for the operator to drop by hand.
async fn drop_created_databases() {
    let names = match CREATED_DATABASES.lock() {
        Ok(mut names) => std::mem::take(&mut *names),
        Err(_) => return,
    };
    let Some(server) = STORE_SERVER.get() else {
        return;
    };
    if names.is_empty() {
        return;
    }
    use sqlx::Connection;
    let mut conn = match sqlx::AnyConnection::connect(server).await {
        Ok(c) => c,
        Err(e) => {
            println!("could not drop the benchmark's databases {names:?}: {e}");
            return;
        }
    };
    for name in names {
        // Every section has closed its store; a connection a killed replica left is ended.
        if let Err(e) = store::postgres::drop_database(&mut conn, &name).await {
            println!("could not drop the benchmark's database {name}: {e}");
        }
    }
}

/// The store URL for a bench directory: a SQLite file in it, or a fresh PostgreSQL database.
async fn store_url_for(dir: &Path) -> anyhow::Result<String> {
    let Some(server) = STORE_SERVER.get() else {
        return Ok(format!("sqlite://{}", dir.join("latchkey.db").display()));
    };
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(server)
        .await
        .with_context(|| format!("--store-url {}", store::redact_url(server)))?;
    let tag: String = dir
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .rev()
        .take(24)
        .collect();
    let name = format!(
        "latchkey_bench_{}_{}",
        std::process::id(),
        tag.to_lowercase()
    );
    // Created once per directory: the drain section reopens its store under another limit.
    store::postgres::ensure_database(&mut conn, &name).await?;
    if let Ok(mut created) = CREATED_DATABASES.lock()
        && !created.contains(&name)
    {
        created.push(name.clone());
    }
    let base = server
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(b, _)| b.to_string())
        .context("--store-url needs a database path (postgres://user@host/db)")?;
    Ok(format!("{base}/{name}"))
}

impl Bed {
    async fn open(
        dir: &Path,
        sim_url: &str,
        rate: (u32, u32),
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        Self::open_with(dir, sim_url, rate, concurrency, "").await
    }

    /// `extra` is appended to the configuration (the SCIM section).
    pub(super) async fn open_with(
        dir: &Path,
        sim_url: &str,
        rate: (u32, u32),
        concurrency: usize,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::open_full(dir, sim_url, rate, concurrency, extra, true).await
    }

    /// With `dispatch` false the vendor is held back: commands stay in the outbox.
    async fn open_full(
        dir: &Path,
        sim_url: &str,
        rate: (u32, u32),
        concurrency: usize,
        extra: &str,
        dispatch: bool,
    ) -> anyhow::Result<Self> {
        let path = dir.join("latchkey.toml");
        let db = store_url_for(dir).await?;
        std::fs::write(&path, config_text(&db, sim_url, rate, concurrency, extra)?)?;
        // Only the tokens: the process environment's overrides would make runs incomparable.
        let env = BTreeMap::from([
            (TOKEN_VAR.to_string(), SIM_TOKEN.to_string()),
            (SCIM_TOKEN_VAR.to_string(), SCIM_TOKEN.to_string()),
        ]);
        let config = Config::load(&ConfigInput::from_file(&path, env)?)?;
        let app = App::open(config, clock::system()).await?;
        let (stop, rx) = watch::channel(false);
        let dispatcher = dispatch.then(|| tokio::spawn(app.dispatcher().run(rx)));
        Ok(Self {
            app,
            stop,
            dispatcher,
        })
    }

    pub(super) async fn close(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(d) = self.dispatcher {
            d.await?;
        }
        self.app.store().pool().close().await;
        Ok(())
    }

    /// Write a feed file and apply it.
    async fn feed(&self, dir: &Path, name: &str, rows: &[String]) -> anyhow::Result<FeedReport> {
        let path = dir.join("feeds").join(name);
        let mut text = String::with_capacity(rows.len() * 96 + HEADER.len() + 1);
        text.push_str(HEADER);
        text.push('\n');
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        let report = self.app.engine.apply_hr_file("hr", &path).await?;
        if report.quarantined > 0 || report.held > 0 {
            bail!(
                "{name}: {} rows quarantined, {} changes held; the benchmark feed is wrong",
                report.quarantined,
                report.held
            );
        }
        Ok(report)
    }

    /// Wait until the outbox is empty, polling every `poll`.
    pub(super) async fn drain(
        &self,
        poll: Duration,
        bar: Option<&ProgressBar>,
    ) -> anyhow::Result<()> {
        let pool = self.app.store().pool();
        let mut last = (i64::MAX, Instant::now());
        let mut counted_at: Option<Instant> = None;
        loop {
            // Counting every open command each poll cost a tenth of a core during a 10,000
            // revocation drain on 2 cores, taken from the system under measurement: the poll
            // only asks whether any is left, and counts (for the bar and the stall check) twice
            // a second.
            if !store::any_open_command(pool).await? {
                if let Some(b) = bar {
                    b.set_position(b.length().unwrap_or(0));
                }
                return Ok(());
            }
            if counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                counted_at = Some(Instant::now());
                let open = store::open_commands(pool).await?;
                if let Some(b) = bar {
                    let total = b.length().unwrap_or(0);
                    b.set_position(total.saturating_sub(open as u64));
                }
                if open != last.0 {
                    last = (open, Instant::now());
                } else if last.1.elapsed() > STALL {
                    bail!(
                        "outbox stuck at {open} open commands for {} s",
                        STALL.as_secs()
                    );
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// (done, dead) commands of one action.
    async fn outcome(&self, action: Action) -> anyhow::Result<(i64, i64)> {
        let mut out = (0, 0);
        for (_, status, a, n) in store::command_counts(self.app.store().pool()).await? {
            if a != action.to_string() {
                continue;
            }
            match status {
                CommandStatus::Done => out.0 += n,
                CommandStatus::Dead => out.1 += n,
                _ => {}
            }
        }
        Ok(out)
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn config_text(
    db: &str,
    sim_url: &str,
    rate: (u32, u32),
    concurrency: usize,
    extra: &str,
) -> anyhow::Result<String> {
    // Absolute: paths in the file are resolved against its own (temporary) folder.
    let mapping = std::path::absolute(repo_path("mappings/hr.toml"))?;
    let profile = std::path::absolute(repo_path("connectors/nuki.toml"))?;
    Ok(format!(
        r#"version = 1
instance = "latchkey-bench"

[store]
url = {db}

[engine]
default_timezone = "UTC"

[sources.hr.hr]
mapping = {mapping}
drop_dir = "feeds"

[policy]
templates = "templates.toml"

[connectors.nuki]
profile = {profile}
base_url = {sim_url}
concurrency = {concurrency}
rate_limit = {{ per_second = {per_second}, burst = {burst} }}
secrets = {{ token = {{ env = "{TOKEN_VAR}" }} }}
{extra}"#,
        db = toml_str(db),
        mapping = toml_str(&mapping.display().to_string()),
        profile = toml_str(&profile.display().to_string()),
        sim_url = toml_str(sim_url),
        per_second = rate.0,
        burst = rate.1,
    ))
}

/// One grant per person, spread over `locks` numeric lock ids (sent as is; the simulator creates them).
fn templates_text(locks: usize) -> String {
    format!(
        r#"version = 1

[[templates]]
name = "bench-door"
when = "true"
approved_by = "facilities-security@example.com"
[[templates.grants]]
connector = "nuki"
target = "{{{{ 5000 + (key[1:] | int) % {locks} }}}}"
"#
    )
}

fn person_row(key: &str, status: &str) -> String {
    let email = key.to_lowercase();
    format!(
        "{key},Person {key},{email}@example.com,operations,analyst,employee,,{status},2020-01-01,,,"
    )
}

pub(super) fn prepare(dir: &Path, people: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("feeds"))?;
    let locks = people.div_ceil(PEOPLE_PER_LOCK).max(1);
    std::fs::write(dir.join("templates.toml"), templates_text(locks))?;
    Ok(())
}

pub(super) async fn start_sim() -> anyhow::Result<SimServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(sim::start_nuki(
        listener,
        NukiOptions {
            token: SIM_TOKEN.into(),
            ..Default::default()
        },
    )
    .await?)
}

pub(super) fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template(&format!("  {what} {{bar:40}} {{pos}}/{{len}} {{elapsed}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

pub(super) fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

/// A user as Okta pushes one; the key fits the benchmark template's lock spread.
pub(super) fn scim_user(key: &str) -> serde_json::Value {
    let email = format!("{}@example.com", key.to_lowercase());
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email,
        "externalId": key,
        "name": { "givenName": "Person", "familyName": key },
        "emails": [{ "primary": true, "type": "work", "value": email }],
        "displayName": format!("Person {key}"),
        "active": true
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let tmp = tempfile::tempdir()?;
    let root = args
        .keep
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let backend = choose_backend(&args, &root);
    println!(
        "latchkey bench ({backend}, in-process Nuki simulator over loopback HTTP, wall clock)"
    );
    if let Some(load) = machine_load() {
        println!("machine load (1, 5, 15 min): {load}, {} CPUs", num_cpus());
    }
    if let Some(us) = wake_round_trip_us() {
        println!(
            "machine: waking another thread and being woken back takes {us:.1} us (median); \
             every SQLite statement pays it once (the driver's own thread), so latency-bound \
             figures scale with it across machines"
        );
    }
    println!();
    let ran = run_sections(&args, &root).await;
    if args.keep.is_none() {
        drop_created_databases().await;
    }
    let ok = ran?;
    print_rows();
    Ok(if ok { 0 } else { 1 })
}

/// Every section asked for, in order. Returns whether each ran to the end.
async fn run_sections(args: &BenchArgs, root: &Path) -> anyhow::Result<bool> {
    let wants = |s: &str| args.sections.iter().any(|x| x == s);
    let mut ok = true;
    if wants("drain") {
        ok &= drain_section(args, &root.join("drain")).await?;
    }
    if wants("leaver") {
        ok &= leaver_section(args, &root.join("leaver")).await?;
    }
    if wants("scim") {
        ok &= scim_section(args, &root.join("scim")).await?;
    }
    if wants("reconcile") {
        ok &= reconcile_section(args, &root.join("reconcile")).await?;
    }
    if wants("scim-groups") {
        let g = scim_groups::scim_groups(args, &root.join("scim-groups")).await?;
        println!("{}", scim_groups::summary(&g));
        ok &= g.ok;
    }
    if wants("ingest") {
        ok &= ingest::initial_load(args, &root.join("ingest")).await?;
    }
    if wants("backlog") {
        ok &= ingest::leaver_behind_backlog(args, &root.join("backlog")).await?;
    }
    if wants("termination") {
        ok &= scale::termination(args, &root.join("termination")).await?;
    }
    if wants("memory") {
        ok &= scale::memory(args, &root.join("memory")).await?;
    }
    if wants("replicas") {
        ok &= scale::replicas(args, &root.join("replicas")).await?;
    }
    if wants("console") {
        let n = args.population.unwrap_or(100_000);
        ok &= console::console_pages(n, &root.join("console")).await?;
    }
    Ok(ok)
}

/// The store every section opens: the PostgreSQL server of `--store-url` (remembered for
/// [`store_url_for`]), else SQLite files under `root`. Returns its description for the heading.
fn choose_backend(args: &BenchArgs, root: &Path) -> String {
    match &args.store_url {
        Some(url) => {
            let _ = STORE_SERVER.set(url.clone());
            format!("PostgreSQL at {}", store::redact_url(url))
        }
        None => format!("SQLite in {}", root.display()),
    }
}

/// Section `drain` with its summary and figures. Returns whether it met its checks.
async fn drain_section(args: &BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let drain = drain::mass_termination(args, dir).await?;
    println!(
        "summary: {} revocations at {} req/s drained in {:.2} s = {:.3} x N/R ({:.3} x requests/R)",
        args.revocations, args.rate, drain.wall, drain.command_ratio, drain.request_ratio
    );
    row(
        &format!(
            "{} revocations at R = {}/s: wall / (N/R)",
            args.revocations, args.rate
        ),
        format!("{:.3}", drain.command_ratio),
        "<= 1.02",
        1.02 / drain.command_ratio.max(f64::EPSILON),
    );
    row(
        &format!(
            "revocations/s through the outbox (R = {}/s, concurrency {})",
            args.rate, args.concurrency
        ),
        format!(
            "{:.0}/s",
            args.revocations as f64 / drain.wall.max(f64::EPSILON)
        ),
        ">= 5,000/s",
        args.revocations as f64 / drain.wall.max(f64::EPSILON) / 5000.0,
    );
    Ok(drain.ok)
}

/// Section `leaver` with its summary. Returns whether it met its checks.
async fn leaver_section(args: &BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let leaver = drain::single_leaver(args, dir).await?;
    println!(
        "summary: single leaver trigger -> vendor confirmed p50 {} p99 {}",
        ms(leaver.p50),
        ms(leaver.p99)
    );
    Ok(leaver.ok)
}

/// Section `scim` with its summary, and its write rate against the reference SCIM server when one
/// is installed. Returns whether it met its checks.
async fn scim_section(args: &BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let scim = scim::scim_deactivations(args, dir).await?;
    println!(
        "summary: SCIM PATCH active=false received -> first vendor revoke request p50 {} p99 {}; {:.0} durable SCIM writes/s",
        ms(scim.p50),
        ms(scim.p99),
        scim.writes_per_second
    );
    let reference =
        scale::reference_scim_writes(args.scim_deactivations.max(1), args.scim_clients).await?;
    let store = if args.store_url.is_some() {
        ("PostgreSQL", 5.0)
    } else {
        ("SQLite", 10.0)
    };
    match reference {
        Some(r) => row(
            &format!(
                "durable SCIM creates, {} clients, {} / reference server",
                args.scim_clients, store.0
            ),
            format!("{:.2} x", scim.writes_per_second / r),
            &format!(">= {} x", store.1),
            scim.writes_per_second / r / store.1,
        ),
        None => row(
            &format!(
                "durable SCIM creates/s, {} clients, {} (no reference)",
                args.scim_clients, store.0
            ),
            format!("{:.0}/s", scim.writes_per_second),
            &format!(">= {} x ref.", store.1),
            f64::NAN,
        ),
    }
    Ok(scim.ok)
}

/// Section `reconcile` with its summary and figures. Returns whether it met its checks.
async fn reconcile_section(args: &BenchArgs, dir: &Path) -> anyhow::Result<bool> {
    let n = args.identities.or(args.population).unwrap_or(100_000);
    let r = reconcile::reconcile_plan(n, dir).await?;
    println!(
        "summary: reconcile plan of {} identities in {:.2} s = {:.0} identities/s ({:.2} x target)",
        r.identities,
        r.seconds,
        r.per_second,
        r.per_second / reconcile::TARGET_PER_SECOND
    );
    row(
        &format!("plan over {} identities", r.identities),
        format!("{:.0} ids/s", r.per_second),
        ">= 20,000/s",
        r.per_second / reconcile::TARGET_PER_SECOND,
    );
    if let Some(peak) = r.peak_mib {
        row(
            "plan: peak resident memory of the process",
            format!("{peak:.0} MiB"),
            "<= 200 MiB",
            200.0 / peak.max(1.0),
        );
    }
    Ok(r.ok)
}

/// The 1, 5 and 15 minute load averages: the machine may be shared, and figures mean little
/// without it.
fn machine_load() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The median time for a message to reach a blocked thread and its answer to come back: the
/// floor under each database statement's round trip (SQLite runs on a thread of its own), and on
/// virtual machines several times what it is on bare metal.
fn wake_round_trip_us() -> Option<f64> {
    use std::sync::mpsc;
    let (to_echo, echo_in) = mpsc::channel::<Instant>();
    let (echo_out, back) = mpsc::channel::<Instant>();
    let echo = std::thread::spawn(move || {
        while let Ok(t) = echo_in.recv() {
            if echo_out.send(t).is_err() {
                break;
            }
        }
    });
    let mut trips: Vec<f64> = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        to_echo.send(Instant::now()).ok()?;
        let sent = back.recv().ok()?;
        trips.push(sent.elapsed().as_secs_f64() * 1e6);
        // Let the echo thread block again, as a statement's driver thread does between statements.
        std::thread::sleep(Duration::from_micros(50));
    }
    drop(to_echo);
    echo.join().ok()?;
    trips.sort_by(f64::total_cmp);
    trips.get(trips.len() / 2).copied()
}

/// A memory figure of this process's `/proc/self/status` (`VmRSS`, `VmHWM`) in MiB (Linux).
pub(super) fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Every figure printed against its target in this run, for the table at the end.
static ROWS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A figure against its target: `ratio` >= 1 meets it (target / figure for a figure that should be
/// low, figure / target for one that should be high).
pub(super) fn row(what: &str, value: String, target: &str, ratio: f64) {
    // A figure with nothing to compare against (no reference server installed) has no ratio.
    let ratio = if ratio.is_finite() {
        format!("{ratio:.2}")
    } else {
        "n/a".to_string()
    };
    let line = format!("  {what:<64} {value:>16}   target {target:<14} ratio {ratio}");
    println!("{line}");
    ROWS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// The table of every figure against its target, once all sections ran.
fn print_rows() {
    let rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
    if rows.is_empty() {
        return;
    }
    println!("== figures against their targets (ratio >= 1 meets the target) ==");
    for r in rows.iter() {
        println!("{r}");
    }
}

mod console;
mod drain;
mod ingest;
mod reconcile;
mod scale;
mod scim;
mod scim_groups;
