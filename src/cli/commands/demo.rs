//! `latchkey demo`: the whole flow on the embedded default, with nothing to set up. Several vendors
//! run side by side (config/demo.toml): Berlin and New York doors on Nuki, London's on Kisi,
//! the New York lab on Verkada, plant rooms on mechanical keys. Each vendor's simulator runs in
//! process; the demo plays the site manager for the keys, recording hand-overs and returns the way
//! `latchkey keys handed-over|returned` does.
//!
//! While it waits on deliveries (about a minute, mostly a vendor's rate limit) it shows progress on
//! stderr: a bar on a terminal, a plain line every few seconds otherwise; stdout keeps the figures.

use crate::app::App;
use crate::cli::{describe_feed, repo_path};
use crate::clock;
use crate::config::{Config, ConfigInput, process_env};
use crate::connectors::manual;
use crate::model::GrantState;
use crate::model::{Action, CommandStatus, Lifecycle, PersonKey};
use crate::store;
use crate::telemetry;
use indicatif::{ProgressBar, ProgressStyle};
use latchkey_sim::{self as sim, NukiOptions, SimServer};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const SIM_TOKEN: &str = "nuki-sim-token";
pub const KISI_KEY: &str = "kisi-sim-key";
pub const VERKADA_KEY: &str = "verkada-sim-key";
/// Recorded as whoever handed a key over or checked it in.
const KEY_CLERK: &str = "site-manager (demo)";

/// Keys the demo recorded on the site manager's behalf.
#[derive(Debug, Default)]
struct KeyDesk {
    handed_over: u64,
    returned: u64,
}

async fn start_sims() -> anyhow::Result<Vec<(&'static str, SimServer)>> {
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let nuki = sim::start_nuki(
        bind().await?,
        NukiOptions {
            token: SIM_TOKEN.into(),
            ..Default::default()
        },
    )
    .await?;
    let kisi = sim::kisi::start_kisi(
        bind().await?,
        sim::kisi::KisiOptions {
            api_key: KISI_KEY.into(),
            ..Default::default()
        },
    )
    .await?;
    let verkada = sim::verkada::start_verkada(
        bind().await?,
        sim::verkada::VerkadaOptions {
            api_key: VERKADA_KEY.into(),
            ..Default::default()
        },
    )
    .await?;
    Ok(vec![("nuki", nuki), ("kisi", kisi), ("verkada", verkada)])
}

pub async fn run(keep: Option<PathBuf>) -> anyhow::Result<i32> {
    let tmp = tempfile::tempdir()?;
    let keep_dir = keep.clone();
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let sims = start_sims().await?;
    let env = announce_setup(&dir, &sims);
    let config_path = repo_path("config/demo.toml");
    let config = Config::load(&ConfigInput::from_file(&config_path, env)?)?;
    let app = App::open(config, clock::system()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(app.dispatcher().run(stop_rx));

    let mut desk = KeyDesk::default();
    apply_sample_feeds(&app, &config_path, &dir, &mut desk).await?;
    // What the feeds did, before the lost phone below adds its own.
    let counts = store::command_counts(app.store().pool()).await?;
    let mut scenarios: Vec<String> = lost_phone(&app, &mut desk).await?.into_iter().collect();
    scenarios.extend(temporary_access(&app, &mut desk).await?);
    scenarios.extend(migrate_plant_room(&app, &mut desk).await?);
    scenarios.extend(access_review(&app, &mut desk).await?);
    let _ = stop_tx.send(true);
    dispatcher.await?;

    let total = print_what_happened(counts);
    print_simulators_and_keys(&sims, &desk);
    print_scenarios_and_latency(&app, &scenarios).await?;
    for (_, server) in sims {
        server.shutdown().await;
    }
    print!("{}", next_steps(keep_dir.as_deref()));
    Ok(if total[2] == 0 && total[1] > 0 { 0 } else { 1 })
}

/// Names each simulator and the store, and returns the environment that points the demo's
/// configuration at them.
fn announce_setup(dir: &Path, sims: &[(&'static str, SimServer)]) -> BTreeMap<String, String> {
    println!("latchkey demo");
    let mut env = process_env();
    for (vendor, server) in sims {
        println!(
            "  {:<18} {}",
            format!("{vendor} simulator"),
            server.base_url()
        );
        env.insert(
            format!("LATCHKEY_CONNECTORS__{}__BASE_URL", vendor.to_uppercase()),
            server.base_url(),
        );
    }
    println!(
        "  {:<18} mechanical keys (the demo records hand-overs and returns)",
        "keys"
    );
    println!(
        "  store              sqlite {}",
        dir.join("latchkey.db").display()
    );
    env.insert(
        "LATCHKEY_STORE__URL".into(),
        format!("sqlite://{}", dir.join("latchkey.db").display()),
    );
    env.insert("LATCHKEY_DEMO_NUKI_TOKEN".into(), SIM_TOKEN.into());
    env.insert("LATCHKEY_DEMO_KISI_KEY".into(), KISI_KEY.into());
    env.insert("LATCHKEY_DEMO_VERKADA_KEY".into(), VERKADA_KEY.into());
    env
}

/// The sample HR feeds, the initial load then the next day's, each applied and delivered.
async fn apply_sample_feeds(
    app: &App,
    config_path: &Path,
    dir: &Path,
    desk: &mut KeyDesk,
) -> anyhow::Result<()> {
    let sample = config_path
        .parent()
        .map(|p| p.join("sample"))
        .unwrap_or_default();
    for (step, file) in [
        ("initial load", "hr-initial.csv"),
        ("next day's feed", "hr-update.csv"),
    ] {
        // Dropped now: an HR file's changes are triggered when it landed (its modification time),
        // and the sample's is whenever the repository was checked out.
        let dropped = dir.join(file);
        std::fs::copy(sample.join(file), &dropped)?;
        let report = app.engine.apply_hr_file("hr", &dropped).await?;
        println!("\n{step}: {}", describe_feed(&report));
        let mut progress = Progress::new(report.issues + report.revokes);
        settle(app, &mut progress, desk).await?;
        progress.finish();
    }
    Ok(())
}

/// The table of what the feeds did per connector, with a total row; returns that total
/// (issues done, revocations done, dead letters).
fn print_what_happened(counts: Vec<(String, CommandStatus, String, i64)>) -> [i64; 3] {
    // connector -> [issues done, revocations done, dead letters]
    let mut per: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for (connector, status, action, n) in counts {
        let row = per.entry(connector).or_default();
        match (status, action.as_str()) {
            (CommandStatus::Done, "issue") => row[0] += n,
            (CommandStatus::Done, "revoke") => row[1] += n,
            (CommandStatus::Dead, _) => row[2] += n,
            _ => {}
        }
    }
    let total = per.values().fold([0i64; 3], |mut acc, r| {
        for (a, v) in acc.iter_mut().zip(r) {
            *a += v;
        }
        acc
    });
    println!("\nwhat happened");
    println!(
        "  {:<10} {:>8} {:>12} {:>6}",
        "connector",
        "issues",
        "revocations",
        CommandStatus::Dead.as_str()
    );
    for (connector, [issues, revokes, dead]) in &per {
        println!("  {connector:<10} {issues:>8} {revokes:>12} {dead:>6}");
    }
    println!(
        "  {:<10} {:>8} {:>12} {:>6}",
        "all", total[0], total[1], total[2]
    );
    total
}

/// What each simulator holds and was asked, and the keys the demo recorded.
fn print_simulators_and_keys(sims: &[(&'static str, SimServer)], desk: &KeyDesk) {
    for (vendor, server) in sims {
        let stats = server.stats();
        println!(
            "  {vendor} simulator: {} grants held, {} users, {} requests, {} duplicate grants",
            stats.auths_live, stats.users, stats.requests, stats.duplicates_created
        );
    }
    println!(
        "  mechanical keys: {} handed over, {} returned by leavers and movers, recorded by the demo \
         as the site manager (`latchkey keys returned TASK`); a revocation's latency runs \
         until its key is checked in",
        desk.handed_over, desk.returned
    );
}

/// Scheduled changes, each scenario's line, quarantined rows and the revocation latency table.
async fn print_scenarios_and_latency(app: &App, scenarios: &[String]) -> anyhow::Result<()> {
    let pool = app.store().pool();
    let scheduled = store::list_identities(pool)
        .await?
        .into_iter()
        .filter(|i| i.next_change_at.is_some() && i.lifecycle == Lifecycle::Active)
        .count();
    println!("  effective-dated changes scheduled   {scheduled}");
    for line in scenarios {
        println!("  {line}");
    }
    let quarantined = store::list_quarantine(pool, 10).await?;
    println!(
        "  quarantined rows                    {}",
        quarantined.len()
    );
    for q in &quarantined {
        println!("    {} field {}: {}", q.location, q.field, q.reason);
    }
    println!();
    let report = telemetry::latency_report(app.store(), Action::Revoke).await?;
    print!(
        "{}",
        telemetry::render_table(
            "revocation latency per vendor (trigger -> vendor confirmed; keys: -> checked in)",
            &report
        )
    );
    Ok(())
}

/// A lost phone: the first active person holding doors at two vendors or more is suspended at
/// every connector (`latchkey suspend`), then resumed once every revocation is confirmed.
async fn lost_phone(app: &App, desk: &mut KeyDesk) -> anyhow::Result<Option<String>> {
    let pool = app.store().pool();
    let mut chosen = None;
    {
        let mut conn = pool.acquire().await?;
        for ident in store::list_identities(pool).await? {
            if !ident.lifecycle.entitled() {
                continue;
            }
            let grants = store::grants_of(&mut conn, &ident.key).await?;
            let mut vendors: Vec<&str> = grants
                .iter()
                .filter(|g| g.desired == GrantState::Present)
                .map(|g| g.connector.as_str())
                .collect();
            vendors.dedup();
            if vendors.len() >= 2 {
                chosen = Some(ident.key.clone());
                break;
            }
        }
    }
    let Some(key) = chosen else {
        return Ok(None);
    };
    println!(
        "
lost phone: suspending {key} at every connector"
    );
    let by = "os:demo";
    let taken =
        crate::suspension::suspend(&app.engine, &key, None, "lost phone (demo)", by).await?;
    let mut progress = Progress::new(taken.revokes);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    let given =
        crate::suspension::resume(&app.engine, &key, Some("phone found (demo)"), by).await?;
    let mut progress = Progress::new(given.issues);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    Ok(Some(format!(
        "lost phone: {key} suspended ({} revocations confirmed, `cause=suspension` in the latency \
         figures), then resumed ({} grants re-issued)",
        taken.revokes, given.issues
    )))
}

/// Temporary access: a contractor's short visit. The facilities desk asks for a door the first
/// active person does not hold, for a few seconds; security approves (dual control: two people);
/// the grant is issued and confirmed, and at the window's end the schedule revokes it.
async fn temporary_access(app: &App, desk: &mut KeyDesk) -> anyhow::Result<Vec<String>> {
    const WINDOW_SECONDS: i64 = 3;
    let Some((key, connector, target)) = door_not_held(app).await? else {
        return Ok(Vec::new());
    };
    println!(
        "\ntemporary access: {target} at {connector} for {key}, {WINDOW_SECONDS} s, asked by the desk and approved by security"
    );
    let ask = crate::access_requests::Ask {
        person: key.clone(),
        connector: connector.clone(),
        target: target.clone(),
        starts_at: None,
        ends_at: app.engine.clock.now() + chrono::Duration::seconds(WINDOW_SECONDS),
        reason: "contractor visit (demo)".into(),
    };
    let request = crate::access_requests::ask(&app.engine, &ask, "os:facilities-desk").await?;
    let ask = crate::access_requests::Ask {
        ends_at: app.engine.clock.now(),
        ..ask
    };
    let (_, issued) =
        crate::access_requests::decide(&app.engine, request.id, true, "os:security").await?;
    let mut progress = Progress::new(issued.issues);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    tokio::time::sleep(std::time::Duration::from_secs(WINDOW_SECONDS as u64)).await;
    let ended = app.engine.tick().await?;
    let mut progress = Progress::new(ended.revokes);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    let temporary = format!(
        "temporary access: {target} for {key} (request {}) issued on approval ({} grant), revoked \
         at its end by the schedule ({} revocation, `cause=expiry`)",
        request.id, issued.issues, ended.revokes
    );
    let emergency = break_glass(app, desk, ask).await?;
    Ok(vec![temporary, emergency])
}

/// The first active person and a door at an HTTP connector they do not hold:
/// `(person, connector, target)`.
async fn door_not_held(app: &App) -> anyhow::Result<Option<(PersonKey, String, String)>> {
    let pool = app.store().pool();
    let mut conn = pool.acquire().await?;
    for ident in store::list_identities(pool).await? {
        if !ident.lifecycle.entitled() {
            continue;
        }
        let held = store::grants_of(&mut conn, &ident.key).await?;
        for (name, c) in &app.engine.config.connectors {
            if c.kind != crate::config::ConnectorKind::Http {
                continue;
            }
            if let Some(target) = c
                .targets
                .keys()
                .find(|t| !held.iter().any(|g| &g.connector == name && &g.target == *t))
            {
                return Ok(Some((ident.key.clone(), name.clone(), target.clone())));
            }
        }
    }
    Ok(None)
}

/// Break-glass: the same door as `ask`, now, in an emergency: in force at once on one approver's
/// word, ended when the emergency is over, and reviewed by another approver.
async fn break_glass(
    app: &App,
    desk: &mut KeyDesk,
    ask: crate::access_requests::Ask,
) -> anyhow::Result<String> {
    let (key, connector, target) = (
        ask.person.clone(),
        ask.connector.clone(),
        ask.target.clone(),
    );
    println!(
        "\nbreak-glass: {target} at {connector} for {key}, opened by security, reviewed by its lead"
    );
    let emergency = crate::access_requests::Ask {
        reason: "fire door jammed (demo)".into(),
        ..ask
    };
    let (opened, issued) =
        crate::access_requests::open_emergency(&app.engine, &emergency, Some(15), "os:security")
            .await?;
    let mut progress = Progress::new(issued.issues);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    let (_, ended) =
        crate::access_requests::end(&app.engine, opened.id, "os:security-lead").await?;
    let mut progress = Progress::new(ended.revokes);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    crate::access_requests::review(
        &app.engine,
        opened.id,
        "door repaired; access justified (demo)",
        "os:security-lead",
    )
    .await?;
    Ok(format!(
        "break-glass: {target} for {key} (emergency {}) in force at once ({} grant, \
         LatchkeyBreakGlassOpen pages), ended ({} revocation) and reviewed by another approver",
        opened.id, issued.issues, ended.revokes
    ))
}

/// A door migrated: the Berlin plant room moves from mechanical keys to its new Nuki lock. Everyone
/// entitled gets the smart lock, every key out gets a return task (the demo's desk records them as
/// they come back), and the migration closes when the last key is in.
async fn migrate_plant_room(app: &App, desk: &mut KeyDesk) -> anyhow::Result<Option<String>> {
    use crate::door_migration::{self, Door};
    let door = Door {
        from_connector: "keys".into(),
        from_target: "berlin-plant-room".into(),
        to_connector: "nuki".into(),
        to_target: "berlin-plant-room".into(),
    };
    if !app.engine.config.connectors.contains_key("keys") {
        return Ok(None);
    }
    println!("\ndoor migration: berlin-plant-room from mechanical keys to its Nuki lock");
    let (id, plan, applied) = door_migration::start(&app.engine, &door, "os:facilities").await?;
    let mut progress = Progress::new(applied.issues + applied.revokes);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    app.engine.tick().await?;
    let pool = app.store().pool();
    let moved = store::door_moves::all(pool)
        .await?
        .into_iter()
        .find(|m| m.id == id);
    let status = moved.as_ref().map_or("?".into(), |m| m.status.clone());
    let p = match &moved {
        Some(m) => store::door_moves::progress(pool, m).await?,
        None => Default::default(),
    };
    Ok(Some(format!(
        "door migration: berlin-plant-room moved from keys to nuki for {} people ({} smart-lock \
         grants confirmed, {} keys returned); migration {id} {status}",
        plan.holders.len(),
        p.new_confirmed,
        p.returns_done
    )))
}

/// An access review: security certifies who holds the busiest lab door; one holder moved on and
/// is revoked, the others are certified, and the campaign closes.
async fn access_review(app: &App, desk: &mut KeyDesk) -> anyhow::Result<Option<String>> {
    use crate::reviews::{self, Decision, Scope, Start};
    let pool = app.store().pool();
    let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
    for g in store::all_grants(pool).await? {
        if g.desired == GrantState::Present && g.target.ends_with("-lab") {
            *by_target.entry(g.target).or_default() += 1;
        }
    }
    let Some((target, _)) = by_target.into_iter().max_by_key(|(_, n)| *n) else {
        return Ok(None);
    };
    println!(
        "
access review: who holds {target}, certified by security"
    );
    let start = Start {
        name: Some(format!("{target}: quarterly review")),
        scope: Scope::Target(target.clone()),
        deadline: app.engine.clock.now() + chrono::Duration::days(14),
        on_deadline: crate::config::OnDeadline::Revoke,
    };
    let (campaign, items) = reviews::start(&app.engine, &start, "os:security").await?;
    let mut revoked = 0;
    for (i, item) in items.iter().enumerate() {
        let (decision, note) = if i == 0 {
            (Decision::Revoke, Some("moved to another team"))
        } else {
            (Decision::Certify, None)
        };
        let (_, applied) =
            reviews::decide(&app.engine, item.id, decision, note, "os:security-lead").await?;
        revoked += applied.revokes;
    }
    let mut progress = Progress::new(revoked);
    settle(app, &mut progress, desk).await?;
    progress.finish();
    let mut conn = pool.acquire().await?;
    let closed = store::reviews::get_campaign(&mut conn, campaign.id).await?;
    Ok(Some(format!(
        "access review: {target}: {} holders, {} certified, 1 revoked ({revoked} revocation confirmed at the vendor); review {} {}",
        items.len(),
        items.len().saturating_sub(1),
        campaign.id,
        closed.map_or("?".into(), |c| c.status)
    )))
}

/// What to run next, with the commands spelled out for the kept database (or how to keep it).
fn next_steps(kept: Option<&Path>) -> String {
    let mut out = String::from("\nnext steps\n");
    match kept {
        Some(dir) => {
            let env = format!(
                "LATCHKEY_STORE__URL=sqlite://{} LATCHKEY_DEMO_NUKI_TOKEN={SIM_TOKEN} \\\n    \
                 LATCHKEY_DEMO_KISI_KEY={KISI_KEY} LATCHKEY_DEMO_VERKADA_KEY={VERKADA_KEY}",
                dir.join("latchkey.db").display()
            );
            out.push_str(&format!(
                "  the demo's database is kept; with\n    export {env}\n  ask it:\n"
            ));
        }
        None => out.push_str(
            "  keep the database to ask it questions: latchkey demo --keep DIR (it prints how), then:\n",
        ),
    }
    for (cmd, what) in [
        (
            "latchkey status",
            "stuck revocations, dead letters, outbox, held changes",
        ),
        (
            "latchkey access E10001",
            "what one person holds (key, e-mail or name)",
        ),
        ("latchkey who-has berlin-engineering", "who holds a door"),
        (
            "latchkey report sla",
            "revocation SLA attainment per vendor",
        ),
        (
            "latchkey status --output json",
            "the same for tools (schemas in docs/schemas/)",
        ),
    ] {
        out.push_str(&format!("    {cmd:<38} {what}\n"));
    }
    out.push_str(
        "  then: README.md \"What to do next\", docs/configuration.md for your own sources and \
         vendors,\n        docs/cli.md for every command, output format and exit code\n",
    );
    out
}

/// Delivery progress on stderr: a bar on a terminal; elsewhere (a file, a pipe, CI) a plain line
/// every [`Progress::EVERY`], so a log shows the demo is alive while a vendor's rate limit paces it.
enum Progress {
    Bar(ProgressBar),
    Lines {
        total: u64,
        started: Instant,
        printed: Instant,
    },
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);

    fn new(total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "  delivering {bar:40} {pos}/{len} commands {elapsed} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Lines {
                total,
                started: now,
                printed: now,
            }
        }
    }

    fn total(&self) -> u64 {
        match self {
            Progress::Bar(b) => b.length().unwrap_or(0),
            Progress::Lines { total, .. } => *total,
        }
    }

    /// `open` commands are still to go; `waiting` names the connectors they wait on.
    fn update(&mut self, open: u64, waiting: &str) {
        let total = self.total();
        let done = total.saturating_sub(open);
        match self {
            Progress::Bar(b) => {
                b.set_position(done);
                b.set_message(waiting.to_string());
            }
            Progress::Lines {
                started, printed, ..
            } => {
                if printed.elapsed() >= Self::EVERY {
                    *printed = Instant::now();
                    eprintln!(
                        "  delivering: {done}/{total} commands after {} s; {waiting}",
                        started.elapsed().as_secs()
                    );
                }
            }
        }
    }

    fn finish(self) {
        match self {
            Progress::Bar(b) => b.finish(),
            Progress::Lines { total, started, .. } => eprintln!(
                "  delivered {total} commands in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        }
    }
}

/// `waiting on kisi 300, nuki 4`: open commands per connector.
async fn waiting_on(app: &App) -> anyhow::Result<String> {
    let mut open: BTreeMap<String, i64> = BTreeMap::new();
    for (connector, status, _, n) in store::command_counts(app.store().pool()).await? {
        if status.is_open() {
            *open.entry(connector).or_default() += n;
        }
    }
    let parts: Vec<String> = open.iter().map(|(c, n)| format!("{c} {n}")).collect();
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("waiting on {}", parts.join(", "))
    })
}

/// Wait until the outbox is empty, showing progress. Mechanical-key commands wait on a person:
/// as each hand-over or return task appears (its command confirming), the demo records it done.
async fn settle(app: &App, progress: &mut Progress, desk: &mut KeyDesk) -> anyhow::Result<()> {
    let pool = app.store().pool();
    let mut asked = Instant::now();
    let mut waiting = String::new();
    loop {
        for task in store::open_key_tasks(pool).await? {
            let action = if task.kind == manual::RETURN {
                Action::Revoke
            } else {
                Action::Issue
            };
            // Only once the dispatcher has parked the command as confirming: recording the task
            // completes that command.
            let waiting = {
                let mut conn = pool.acquire().await?;
                store::open_command_for(
                    &mut conn,
                    &task.connector,
                    &task.identity_key,
                    &task.target,
                    action,
                )
                .await?
                .is_some_and(|c| c.status == CommandStatus::Confirming)
            };
            if !waiting {
                continue;
            }
            let kind = if task.kind == manual::RETURN {
                desk.returned += 1;
                manual::RETURN
            } else {
                desk.handed_over += 1;
                manual::HAND_OVER
            };
            let now = clock::to_micros(app.engine.clock.now());
            manual::record(
                app.store(),
                Some(&app.engine.metrics),
                task.id,
                kind,
                KEY_CLERK,
                now,
            )
            .await?;
        }
        let open = store::open_commands(pool).await?;
        // Which vendors the rest waits on, once a second (a grouped count over the outbox).
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            waiting = waiting_on(app).await?;
        }
        progress.update(u64::try_from(open).unwrap_or(0), &waiting);
        if open == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
