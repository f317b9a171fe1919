//! `latchkey demo`: the whole flow on the embedded default, with nothing to set up. Several vendors
//! run side by side (config/demo.toml): Berlin and New York doors on Nuki, London's on Kisi,
//! the New York lab on Verkada, plant rooms on mechanical keys. Each vendor's simulator runs in
//! process; the demo plays the site manager for the keys, recording hand-overs and returns the way
//! `latchkey keys handed-over|returned` does.

use super::{describe_feed, repo_path};
use crate::app::App;
use crate::clock;
use crate::config::{Config, ConfigInput, process_env};
use crate::connectors::manual;
use crate::model::{Action, Lifecycle};
use crate::sim::{self, NukiOptions, SimServer};
use crate::store;
use crate::telemetry;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
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
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let sims = start_sims().await?;
    println!("latchkey demo");
    let mut env = process_env();
    for (vendor, server) in &sims {
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
    let config_path = repo_path("config/demo.toml");
    let config = Config::load(&ConfigInput::from_file(&config_path, env)?)?;
    let app = App::open(config, clock::system()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(app.dispatcher().run(stop_rx));

    let sample = config_path
        .parent()
        .map(|p| p.join("sample"))
        .unwrap_or_default();
    let mut desk = KeyDesk::default();
    for (step, file) in [
        ("initial load", "hr-initial.csv"),
        ("next day's feed", "hr-update.csv"),
    ] {
        let report = app.engine.apply_hr_file("hr", &sample.join(file)).await?;
        println!("\n{step}: {}", describe_feed(&report));
        let total = report.issues + report.revokes;
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("  delivering {bar:40} {pos}/{len} commands {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        settle(&app, &bar, &mut desk).await?;
        bar.finish();
    }
    let _ = stop_tx.send(true);
    dispatcher.await?;

    let pool = app.store().pool();
    // connector -> [issues done, revocations done, dead letters]
    let mut per: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for (connector, status, action, n) in store::command_counts(pool).await? {
        let row = per.entry(connector).or_default();
        match (status.as_str(), action.as_str()) {
            ("done", "issue") => row[0] += n,
            ("done", "revoke") => row[1] += n,
            ("dead", _) => row[2] += n,
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
        "connector", "issues", "revocations", "dead"
    );
    for (connector, [issues, revokes, dead]) in &per {
        println!("  {connector:<10} {issues:>8} {revokes:>12} {dead:>6}");
    }
    println!(
        "  {:<10} {:>8} {:>12} {:>6}",
        "all", total[0], total[1], total[2]
    );
    for (vendor, server) in &sims {
        let stats = server.stats();
        println!(
            "  {vendor} simulator: {} grants held, {} users, {} requests, {} duplicate grants",
            stats.auths_live, stats.users, stats.requests, stats.duplicates_created
        );
    }
    println!(
        "  mechanical keys: {} handed over, {} returned by leavers and movers, recorded by the demo \
         as the site manager (`latchkey keys returned TASK --by NAME`); a revocation's latency runs \
         until its key is checked in",
        desk.handed_over, desk.returned
    );
    let scheduled = store::list_identities(pool)
        .await?
        .into_iter()
        .filter(|i| i.next_change_at.is_some() && i.lifecycle == Lifecycle::Active)
        .count();
    println!("  effective-dated changes scheduled   {scheduled}");
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
    for (_, server) in sims {
        server.shutdown().await;
    }
    Ok(if total[2] == 0 && total[1] > 0 { 0 } else { 1 })
}

/// Wait until the outbox is empty, showing progress. Mechanical-key commands wait on a person:
/// as each hand-over or return task appears (its command confirming), the demo records it done.
async fn settle(app: &App, bar: &ProgressBar, desk: &mut KeyDesk) -> anyhow::Result<()> {
    let pool = app.store().pool();
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
                .is_some_and(|c| c.status == "confirming")
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
        let total = bar.length().unwrap_or(0);
        bar.set_position(total.saturating_sub(open as u64));
        if open == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
