//! `latchkey demo`: the whole flow on the embedded default, with nothing to set up.

use super::{describe_feed, repo_path, wait_for_outbox};
use crate::app::App;
use crate::clock;
use crate::config::{Config, ConfigInput, process_env};
use crate::model::Action;
use crate::sim::{self, NukiOptions};
use crate::store;
use crate::telemetry;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tokio::sync::watch;

pub const SIM_TOKEN: &str = "nuki-sim-token";

pub async fn run(keep: Option<PathBuf>) -> anyhow::Result<i32> {
    let tmp = tempfile::tempdir()?;
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = sim::start_nuki(
        listener,
        NukiOptions {
            token: SIM_TOKEN.into(),
            ..Default::default()
        },
    )
    .await?;
    println!("latchkey demo");
    println!("  Nuki simulator     {}", server.base_url());
    println!(
        "  store              sqlite {}",
        dir.join("latchkey.db").display()
    );
    let mut env = process_env();
    env.insert(
        "LATCHKEY_STORE__URL".into(),
        format!("sqlite://{}", dir.join("latchkey.db").display()),
    );
    env.insert(
        "LATCHKEY_CONNECTORS__NUKI__BASE_URL".into(),
        server.base_url(),
    );
    env.insert("LATCHKEY_DEMO_NUKI_TOKEN".into(), SIM_TOKEN.into());
    let config_path = repo_path("config/demo.toml");
    let config = Config::load(&ConfigInput::from_file(&config_path, env)?)?;
    let app = App::open(config, clock::system()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(app.dispatcher().run(stop_rx));

    let sample = config_path
        .parent()
        .map(|p| p.join("sample"))
        .unwrap_or_default();
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
        wait_for_outbox(&app, Some(&bar)).await?;
        bar.finish();
    }
    let _ = stop_tx.send(true);
    dispatcher.await?;

    let pool = app.store().pool();
    let mut done = [0i64; 2];
    let mut dead = 0;
    for (_, status, action, n) in store::command_counts(pool).await? {
        match (status.as_str(), action.as_str()) {
            ("done", "issue") => done[0] += n,
            ("done", "revoke") => done[1] += n,
            ("dead", _) => dead += n,
            _ => {}
        }
    }
    let stats = server.stats();
    let nuki = server.nuki();
    println!("\nwhat happened");
    println!("  issues confirmed by the vendor      {}", done[0]);
    println!("  revocations confirmed by the vendor {}", done[1]);
    println!("  dead letters                        {dead}");
    println!(
        "  simulator: {} live authorisations, {} account users, {} requests, {} duplicate grants",
        stats.auths_live,
        stats.users,
        stats.requests,
        nuki.map_or(0, |n| n.duplicate_pairs())
    );
    let scheduled: Vec<_> = store::list_identities(pool)
        .await?
        .into_iter()
        .filter(|i| i.next_change_at.is_some() && i.lifecycle == crate::model::Lifecycle::Active)
        .collect();
    println!("  effective-dated changes scheduled   {}", scheduled.len());
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
        telemetry::render_table("revocation latency (trigger -> vendor confirmed)", &report)
    );
    server.shutdown().await;
    Ok(if dead == 0 && done[1] > 0 { 0 } else { 1 })
}
