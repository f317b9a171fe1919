//! The `latchkey` command line.

use crate::app::App;
use crate::audit::{self, Verdict};
use crate::clock::{self, from_micros};
use crate::config::{Config, ConfigInput, process_env};
use crate::model::Action;
use crate::sim;
use crate::store;
use crate::telemetry;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Keeps physical access in step with who works here, and measures every revocation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Daemon configuration file.
    #[arg(
        long,
        short,
        env = "LATCHKEY_CONFIG",
        default_value = "config/demo.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole flow on the embedded default: simulator, SQLite, sample HR feeds.
    Demo {
        /// Keep the demo's database here instead of a temporary directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Run the daemon until Ctrl-C / SIGTERM (in-flight work drains first).
    Run(ConfigArg),
    /// Validate configuration, mappings, templates and connector profiles.
    Check(ConfigArg),
    /// Show what `apply` and `run` would issue, revoke and hold now under current policy, applying
    /// nothing; ends with `Plan: N to issue, M to revoke, K held`.
    Plan {
        /// Exit 0 when there is nothing to do, 2 when there are changes (1 stays an error).
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Apply each HR source's pending feed once, deliver the resulting commands, and exit.
    Apply(ConfigArg),
    /// Outbox, dead letters, quarantined records and held changes.
    Status(ConfigArg),
    /// What a person holds, at which vendor, from which template.
    Access {
        person: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Who holds a target (lock, group).
    WhoHas {
        target: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve held changes (a mass disappearance from a feed).
    #[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "all"])))]
    Approve {
        /// Held change ids (see `latchkey status`).
        ids: Vec<i64>,
        #[arg(long)]
        all: bool,
        /// Who approves: recorded in the audit log.
        #[arg(long)]
        by: String,
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reports.
    Report {
        #[command(subcommand)]
        report: Report,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        audit: AuditCmd,
    },
    /// Compare every vendor's grants with the ledger once and print what differs (orphans are
    /// revoked and missing grants re-issued as `[drift]` says).
    Drift(ConfigArg),
    /// Mechanical keys: open tasks, hand-overs and returns.
    Keys {
        #[command(subcommand)]
        keys: KeysCmd,
    },
    /// Run a vendor simulator on its own.
    Sim {
        vendor: String,
        #[arg(long, default_value_t = 8701)]
        port: u16,
        #[arg(long, default_value = "nuki-sim-token")]
        token: String,
        /// Also serve a fault proxy in front of the simulator on this port, to rehearse a vendor's
        /// bad day: point the connector's `base_url` at it and set its rules with
        /// `POST /_proxy/rules` (docs/operations.md).
        #[arg(long)]
        fault_proxy_port: Option<u16>,
        /// Rules the fault proxy starts with: a JSON file holding a list of rules.
        #[arg(long, requires = "fault_proxy_port")]
        fault_rules: Option<PathBuf>,
    },
    /// Benchmarks (figures against the physical floor).
    Bench(crate::cli::bench::BenchArgs),
    /// Take the configured canary through grant and revoke at a vendor, reading each back, and
    /// report every stage's latency. Exits 1 when the vendor path is broken.
    Drill {
        #[arg(long)]
        connector: String,
        /// Target to grant and revoke (default: the connector's `drill_target`).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Put dead letters back in the queue (audited with your OS user): `--all` or ids.
    Redrive(crate::cli::redrive::RedriveArgs),
}

/// Mechanical key tasks (the built-in `manual` connector).
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Open hand-over and return tasks, overdue ones marked.
    List(ConfigArg),
    /// Record that a key was handed to its holder.
    HandedOver {
        task: i64,
        /// Who handed it over: recorded in the audit log.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Record that a key was checked back in: this confirms the revocation.
    Returned {
        task: i64,
        /// Who took it back: recorded in the audit log.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum Report {
    /// Revocation (and issue) latency per connector and stage.
    Latency(ConfigArg),
    /// SLA attainment and error-budget use per connector.
    Sla(ConfigArg),
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; names the first broken record.
    Verify(ConfigArg),
}

impl Command {
    /// The configuration file of a command that carries out changes (and so is worth tracing):
    /// the binary reads its `[telemetry]` before the subscriber is installed.
    pub fn traced_config(&self) -> Option<&Path> {
        match self {
            Command::Run(c) | Command::Apply(c) | Command::Drift(c) => Some(&c.config),
            Command::Approve { config, .. } | Command::Drill { config, .. } => Some(&config.config),
            Command::Redrive(args) => Some(&args.config.config),
            _ => None,
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&ConfigInput::from_file(
        &arg.config,
        process_env(),
    )?)?)
}

async fn open(arg: &ConfigArg) -> anyhow::Result<App> {
    App::open(load(arg)?, clock::system()).await
}

/// [`open`], for the command modules.
pub(crate) async fn open_app(arg: &ConfigArg) -> anyhow::Result<App> {
    open(arg).await
}

fn ts(us: i64) -> String {
    from_micros(us)
        .format("%Y-%m-%d %H:%M:%S%.3f UTC")
        .to_string()
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Demo { keep } => demo::run(keep).await,
        Command::Redrive(args) => redrive::run(args).await,
        Command::Run(c) => {
            let app = open(&c).await?;
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down: finishing in-flight commands");
                let _ = tx.send(true);
            });
            tracing::info!(config = %c.config.display(), "latchkey running");
            app.run(rx).await?;
            Ok(0)
        }
        Command::Check(c) => {
            let config = load(&c)?;
            let names: Vec<String> = config.connectors.keys().cloned().collect();
            let policy =
                crate::policy::Policy::load(&config.resolve(&config.policy.templates), &names)?;
            for (name, src) in &config.sources.hr {
                crate::sources::hr::load_mapping(&config.resolve(&src.mapping))
                    .with_context(|| format!("source hr.{name}"))?;
            }
            for (name, src) in &config.sources.ldap {
                crate::sources::ldap::load_mapping(name, &config.resolve(&src.mapping))
                    .with_context(|| format!("source ldap.{name}"))?;
            }
            let connectors = crate::connectors::check_profiles(&config)?;
            let lints = policy.lint(
                &crate::reconcile::produced_attributes(&config)?,
                &config
                    .connectors
                    .iter()
                    .map(|(n, c)| (n.clone(), c.targets.keys().cloned().collect()))
                    .collect(),
            );
            if !lints.is_empty() {
                for l in &lints {
                    eprintln!("error: {l}");
                }
                eprintln!("{}: {} policy mistakes", c.config.display(), lints.len());
                return Ok(1);
            }
            let sources: Vec<String> = (config.sources.hr.keys().map(|k| format!("hr.{k}")))
                .chain(config.sources.ldap.keys().map(|k| format!("ldap.{k}")))
                .chain(config.scim.tenants.keys().map(|k| format!("scim.{k}")))
                .collect();
            println!("{}: ok", c.config.display());
            println!("  sources:    {}", sources.join(", "));
            println!("  templates:  {}", policy.template_names().join(", "));
            println!("  connectors: {}", connectors.join(", "));
            Ok(0)
        }
        Command::Plan {
            detailed_exitcode,
            config,
        } => {
            let app = open(&config).await?;
            let plan = app.engine.dry_run().await?;
            print!("{}", plan.render());
            Ok(if detailed_exitcode && !plan.is_empty() {
                2
            } else {
                0
            })
        }
        Command::Apply(c) => {
            let app = open(&c).await?;
            let (tx, rx) = watch::channel(false);
            let dispatcher = tokio::spawn(app.dispatcher().run(rx));
            for name in app.engine.config.sources.hr.keys() {
                for r in app.engine.run_hr_source(name).await? {
                    println!("{}", describe_feed(&r));
                }
            }
            app.engine.tick().await?;
            let (plan, r) = crate::reconcile::run(&app.engine, "apply").await?;
            if !plan.is_empty() {
                println!(
                    "reconcile: {} identities -> {} issues, {} revokes, {} held",
                    plan.identities, r.issues, r.revokes, r.held
                );
            }
            wait_for_outbox(&app, None).await?;
            let _ = tx.send(true);
            dispatcher.await?;
            Ok(0)
        }
        Command::Status(c) => {
            let app = open(&c).await?;
            print!("{}", status_text(&app).await?);
            Ok(0)
        }
        Command::Access { person, config } => {
            let app = open(&config).await?;
            let mut conn = app.store().pool().acquire().await?;
            let ident = match lookup::person(&mut conn, &person).await {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("access: {e}");
                    return Ok(1);
                }
            };
            println!(
                "{} ({}) {} since {}",
                ident.key,
                ident.attr("name").unwrap_or("-"),
                ident.lifecycle,
                ts(ident.lifecycle_since)
            );
            for g in store::grants_of(&mut conn, &ident.key).await? {
                println!(
                    "  {:<8} {:<22} desired {:<7} observed {:<7} template {:<28} approved by {}",
                    g.connector,
                    g.target,
                    g.desired,
                    g.observed,
                    g.template,
                    app.engine.policy.approver_of(&g.template).unwrap_or("-")
                );
            }
            Ok(0)
        }
        Command::WhoHas { target, config } => {
            let app = open(&config).await?;
            let on_record = !store::grants_on_target(app.store().pool(), &target)
                .await?
                .is_empty()
                || !store::cabinet_holders(app.store().pool(), &target)
                    .await?
                    .is_empty();
            let names = lookup::targets(&app.engine.config, &target, on_record);
            if names.is_empty() {
                eprintln!(
                    "who-has: no target or vendor id `{target}` in any connector's target map, \
                     and no grant on record for it"
                );
                return Ok(1);
            }
            for name in names {
                if name != target {
                    println!("{target} is the vendor id of {name}");
                }
                who_has(&app, &name).await?;
            }
            Ok(0)
        }
        Command::Approve {
            ids,
            all,
            by,
            reject,
            config,
        } => {
            let app = open(&config).await?;
            let ids: Vec<i64> = if all {
                store::held_changes(app.store().pool())
                    .await?
                    .iter()
                    .map(|h| h.id)
                    .collect()
            } else {
                ids
            };
            if ids.is_empty() {
                println!("nothing to approve");
            }
            let from_reconcile: std::collections::BTreeSet<i64> =
                store::held_changes(app.store().pool())
                    .await?
                    .iter()
                    .filter(|h| h.source == crate::reconcile::HOLD_SOURCE)
                    .map(|h| h.id)
                    .collect();
            let mut reconcile_approved = false;
            for id in ids {
                let a = app.engine.decide(id, !reject, &by).await?;
                reconcile_approved |= !reject && from_reconcile.contains(&id);
                println!(
                    "{} held change {id}: {} revokes enqueued",
                    if reject { "rejected" } else { "approved" },
                    a.revokes
                );
            }
            // Held revocations of a reconciliation are carried out by one, now.
            if reconcile_approved {
                let (_, r) = crate::reconcile::run(&app.engine, "approval").await?;
                println!(
                    "reconcile: {} revokes enqueued, {} still held",
                    r.revokes, r.held
                );
            }
            Ok(0)
        }
        Command::Report {
            report: Report::Latency(c),
        } => {
            let app = open(&c).await?;
            for action in [Action::Revoke, Action::Issue] {
                let r = telemetry::latency_report(app.store(), action).await?;
                println!(
                    "{}",
                    telemetry::render_table(
                        &format!("{action} latency (trigger -> vendor confirmed)"),
                        &r
                    )
                );
            }
            Ok(0)
        }
        Command::Report {
            report: Report::Sla(c),
        } => {
            let app = open(&c).await?;
            let now = crate::clock::to_micros(app.engine.clock.now());
            let rows = telemetry::sla::report(app.store(), &app.engine.config, now).await?;
            print!("{}", telemetry::sla::render(&rows));
            Ok(i32::from(rows.iter().any(|r| r.breached())))
        }
        Command::Drill {
            connector,
            target,
            config,
        } => {
            let app = open(&config).await?;
            let c = app
                .connectors
                .get(&connector)
                .with_context(|| format!("connector `{connector}` is not configured"))?;
            let report = telemetry::drill::run(&app.engine, c, target.as_deref()).await?;
            print!("{}", report.render());
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Audit {
            audit: AuditCmd::Verify(c),
        } => {
            let app = open(&c).await?;
            match audit::verify(app.store()).await? {
                Verdict::Intact { records } => {
                    println!("audit log intact: {records} records");
                    Ok(0)
                }
                Verdict::Broken { seq, reason } => {
                    println!("audit log BROKEN at record {seq}: {reason}");
                    Ok(2)
                }
            }
        }
        Command::Sim {
            vendor,
            port,
            token,
            fault_proxy_port,
            fault_rules,
        } => {
            // Read the rules first: a bad file is refused before anything listens.
            let rules = match &fault_rules {
                Some(file) => Some(read_fault_rules(file)?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let server = sim::start(&vendor, listener, token).await?;
            println!(
                "{vendor} simulator on {} (state: {}/_sim/stats); Ctrl-C stops it",
                server.base_url(),
                server.base_url()
            );
            let proxy = match fault_proxy_port {
                Some(p) => {
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", p))
                        .await
                        .with_context(|| format!("fault proxy port {p}"))?;
                    let proxy = sim::proxy::FaultProxy::start(listener, &server.base_url()).await?;
                    if let Some(rules) = rules {
                        proxy.set_rules(rules);
                    }
                    println!(
                        "fault proxy on {} in front of it ({} rules; set them with POST {}/_proxy/rules)",
                        proxy.base_url(),
                        proxy.rules().len(),
                        proxy.base_url()
                    );
                    Some(proxy)
                }
                None => None,
            };
            shutdown_signal().await;
            drop(proxy);
            server.shutdown().await;
            Ok(0)
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Drift(c) => {
            let app = open(&c).await?;
            let report = app.drift_check().await?;
            print!("{}", report.render());
            // Re-issues were enqueued: deliver them before exiting, as `apply` does.
            if report.findings.iter().any(|f| f.action == "reissued") {
                let (tx, rx) = watch::channel(false);
                let dispatcher = tokio::spawn(app.dispatcher().run(rx));
                wait_for_outbox(&app, None).await?;
                let _ = tx.send(true);
                dispatcher.await?;
            }
            Ok(i32::from(!report.findings.is_empty()))
        }
        Command::Keys { keys } => keys_command(keys).await,
    }
}

/// The fault proxy's starting rules from a JSON file, with an error naming the file.
fn read_fault_rules(file: &Path) -> anyhow::Result<Vec<sim::proxy::FaultRule>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("fault rules {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("fault rules {}: not a JSON list of rules", file.display()))
}

/// Who holds one target: grants confirmed at the vendor, and cabinet keys out.
async fn who_has(app: &App, target: &str) -> anyhow::Result<()> {
    let grants = store::grants_on_target(app.store().pool(), target).await?;
    let held: Vec<_> = grants.iter().filter(|g| g.observed == "present").collect();
    println!("{target}: {} people hold it", held.len());
    for g in held {
        println!(
            "  {:<10} via {:<8} template {} (desired {})",
            g.identity_key, g.connector, g.template, g.desired
        );
    }
    let keys = store::cabinet_holders(app.store().pool(), target).await?;
    if !keys.is_empty() {
        println!("{target}: {} cabinet keys out", keys.len());
    }
    for k in keys {
        println!(
            "  {:<10} holds key {} (group {}) from {} since {}{}",
            k.identity_key,
            k.key_id,
            k.key_group.as_deref().unwrap_or("-"),
            k.connector,
            crate::clock::from_micros(k.taken_at).to_rfc3339(),
            if k.overdue_at.is_some() {
                ", OVERDUE"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn keys_command(cmd: KeysCmd) -> anyhow::Result<i32> {
    use crate::connectors::manual;
    let (config, task, by, kind) = match cmd {
        KeysCmd::List(c) => {
            let app = open(&c).await?;
            print!("{}", keys_text(&app).await?);
            return Ok(0);
        }
        KeysCmd::HandedOver { task, by, config } => (config, task, by, manual::HAND_OVER),
        KeysCmd::Returned { task, by, config } => (config, task, by, manual::RETURN),
    };
    let app = open(&config).await?;
    let now = crate::clock::to_micros(app.engine.clock.now());
    let t = manual::record(app.store(), Some(&app.engine.metrics), task, kind, &by, now).await?;
    println!(
        "task {} ({} of {} for {}) recorded done by {by} at {}",
        t.id,
        t.kind,
        t.target,
        t.identity_key,
        ts(now)
    );
    Ok(0)
}

/// Open key tasks, for `latchkey keys list` and `latchkey status`.
pub async fn keys_text(app: &App) -> anyhow::Result<String> {
    use std::fmt::Write;
    let now = crate::clock::to_micros(app.engine.clock.now());
    let tasks = store::open_key_tasks(app.store().pool()).await?;
    let mut out = String::new();
    writeln!(out, "open key tasks: {}", tasks.len())?;
    for t in &tasks {
        let due = match t.due_at {
            Some(d) if d <= now => format!("OVERDUE since {}", ts(d)),
            Some(d) => format!("due {}", ts(d)),
            None => "-".into(),
        };
        writeln!(
            out,
            "  #{:<5} {:<9} {:<10} {:<8} {:<22} created {} {due}",
            t.id,
            t.kind,
            t.identity_key,
            t.connector,
            t.target,
            ts(t.created_at)
        )?;
    }
    Ok(out)
}

pub fn describe_feed(r: &crate::engine::FeedReport) -> String {
    if r.skipped_same_file {
        return format!("{}: unchanged since last applied ({} rows)", r.file, r.rows);
    }
    if let Some(reason) = &r.rejected {
        return format!("{}: set aside, not applied: {reason}", r.file);
    }
    let mut out = format!(
        "{}: {} rows, {} unchanged, {} joiners, {} movers, {} leavers, {} rehires, {} other, {} quarantined, {} held -> {} issues, {} revokes",
        r.file,
        r.rows,
        r.unchanged,
        r.joiners,
        r.movers,
        r.leavers,
        r.rehires,
        r.other_changes,
        r.quarantined,
        r.held,
        r.issues,
        r.revokes
    );
    if r.absent > 0 {
        out.push_str(&format!(
            "; {} missing, within their absence grace",
            r.absent
        ));
    }
    if r.released > 0 {
        out.push_str(&format!(
            "; {} held changes released (back in the feed)",
            r.released
        ));
    }
    out
}

/// Wait until the outbox is empty (or only holds commands waiting far in the future), showing progress.
pub async fn wait_for_outbox(
    app: &App,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<()> {
    loop {
        // A revocation stuck past its attempts retries for as long as it takes; `latchkey status`
        // shows it, and the daemon carries it on, so a one-shot run does not wait for it.
        let stuck: i64 = store::stuck_counts(app.store().pool())
            .await?
            .iter()
            .map(|c| c.1)
            .sum();
        let open = store::open_commands(app.store().pool()).await? - stuck;
        if let Some(b) = bar {
            let total = b.length().unwrap_or(0);
            b.set_position(total.saturating_sub(open as u64));
        }
        if open == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Revocations stuck retrying and dead letters, for the top of `latchkey status`.
pub async fn stuck_and_dead_text(app: &App) -> anyhow::Result<String> {
    use std::fmt::Write;
    let pool = app.store().pool();
    let mut out = String::new();
    let stuck = store::stuck_revokes(pool, 50).await?;
    let stuck_total: i64 = store::stuck_counts(pool).await?.iter().map(|c| c.1).sum();
    writeln!(
        out,
        "revocations stuck (retrying past their attempts): {stuck_total}"
    )?;
    for (c, since) in &stuck {
        writeln!(
            out,
            "  #{} {} {}:{} stuck since {}, {} attempts, next try {}: {}",
            c.id,
            c.identity_key,
            c.connector,
            c.target,
            ts(*since),
            c.attempts,
            ts(c.next_attempt_at),
            c.last_error.as_deref().unwrap_or("-")
        )?;
    }
    let dead = store::commands_where_status(pool, "dead", 50).await?;
    let dead_total: i64 = store::command_counts(pool)
        .await?
        .iter()
        .filter(|c| c.1 == "dead")
        .map(|c| c.3)
        .sum();
    writeln!(out, "dead letters: {dead_total}")?;
    for c in &dead {
        writeln!(
            out,
            "  #{} {} {} {}:{} after {} attempts: {}",
            c.id,
            c.action,
            c.identity_key,
            c.connector,
            c.target,
            c.attempts,
            c.last_error.as_deref().unwrap_or("-")
        )?;
    }
    if dead_total > 0 {
        writeln!(out, "  ... re-queue with `latchkey redrive --all` or by id")?;
    }
    Ok(out)
}

pub async fn status_text(app: &App) -> anyhow::Result<String> {
    use std::fmt::Write;
    let pool = app.store().pool();
    // What may leave a leaver with access comes first.
    let mut out = stuck_and_dead_text(app).await?;
    writeln!(out, "outbox (connector / status / action: count)")?;
    for (connector, status, action, n) in store::command_counts(pool).await? {
        writeln!(out, "  {connector:<8} {status:<11} {action:<7} {n}")?;
    }
    let q = store::list_quarantine(pool, 50).await?;
    writeln!(out, "quarantined records: {}", q.len())?;
    for r in &q {
        writeln!(
            out,
            "  {} {} record {} field {}: {}",
            r.source,
            r.location,
            r.record_key.as_deref().unwrap_or("-"),
            r.field,
            r.reason
        )?;
    }
    let breakers = store::breaker_states(pool).await?;
    let open: Vec<_> = breakers.iter().filter(|b| b.1 != "closed").collect();
    writeln!(out, "circuit breakers open: {}", open.len())?;
    for (connector, state, since, error) in &breakers {
        writeln!(
            out,
            "  {connector:<8} {state:<9} since {} {}",
            ts(*since),
            error.as_deref().unwrap_or("")
        )?;
    }
    let drift = store::open_drift(pool).await?;
    writeln!(out, "drift findings open: {}", drift.len())?;
    for f in &drift {
        writeln!(
            out,
            "  #{} {} {}:{} {} grant {} seen {} .. {}",
            f.id,
            f.kind,
            f.connector,
            f.target,
            f.subject,
            f.vendor_ref.as_deref().unwrap_or("-"),
            ts(f.first_seen_at),
            ts(f.last_seen_at)
        )?;
    }
    out.push_str(&keys_text(app).await?);
    out.push_str(&leases_text(app).await?);
    let held = store::held_changes(pool).await?;
    writeln!(out, "held for approval: {}", held.len())?;
    for h in held.iter().take(20) {
        writeln!(
            out,
            "  #{} {} {} {}: {}",
            h.id, h.source, h.key, h.kind, h.reason
        )?;
    }
    if held.len() > 20 {
        writeln!(
            out,
            "  ... approve with `latchkey approve --all --by NAME` or by id"
        )?;
    }
    Ok(out)
}

/// Which replica holds which source, scheduled job and connector lane (DESIGN.md invariant 14).
async fn leases_text(app: &App) -> anyhow::Result<String> {
    use std::fmt::Write;
    let lines = crate::leases::describe(app.store(), None).await?;
    let mut out = String::new();
    writeln!(out, "leases (source, job, lane: holder): {}", lines.len())?;
    for l in &lines {
        writeln!(out, "  {l}")?;
    }
    Ok(out)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The repository's folder (where `config/` is), for commands run from elsewhere.
pub fn repo_path(rel: &str) -> PathBuf {
    let here = Path::new(rel);
    if here.exists() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub mod bench;
pub mod bench_reconcile;
pub mod bench_scim_groups;
pub mod demo;
pub mod lookup;
pub mod redrive;
