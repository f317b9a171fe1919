//! The `latchkey` command line.

use crate::app::App;
use crate::clock;
use crate::config::{Config, ConfigInput, process_env};
use crate::store;
use clap::{Arg, ArgAction, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The whole command line: [`Cli`] plus the flags every command shares, which only change how
/// much the process logs (the binary reads them before the subscriber is installed). Completion
/// scripts are generated from this, so they know those flags too.
pub fn command() -> clap::Command {
    Cli::command()
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .short('q')
                .global(true)
                .action(ArgAction::SetTrue)
                .conflicts_with("verbose")
                .help("Log errors only (overrides LATCHKEY_LOG)"),
        )
        .arg(
            Arg::new("verbose")
                .long("verbose")
                .short('v')
                .global(true)
                .action(ArgAction::Count)
                .help("Log more: -v debug, -vv trace, for latchkey's own modules (overrides LATCHKEY_LOG)"),
        )
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
    #[cfg(feature = "sim")]
    Demo {
        /// Keep the demo's database here instead of a temporary directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Run the daemon until Ctrl-C / SIGTERM (in-flight work drains first).
    Run(ConfigArg),
    /// Validate configuration, mappings, templates and connector profiles.
    Check(commands::check::CheckArgs),
    /// Show what `apply` and `run` would issue, revoke and hold now under current policy, applying
    /// nothing; ends with `Plan: N to issue, M to revoke, K held`.
    Plan(commands::plan::PlanArgs),
    /// Apply each HR source's pending feed once, deliver the resulting commands, and exit.
    Apply(commands::apply::ApplyArgs),
    /// Stuck revocations, dead letters, outbox, quarantined records, breakers, drift, key tasks
    /// and held changes.
    Status(commands::status::StatusArgs),
    /// What a person (key, e-mail or name) holds, at which vendor, from which template.
    Access(commands::access::AccessArgs),
    /// Who holds a target (lock, group), by its name or the vendor's id.
    WhoHas(commands::who_has::WhoHasArgs),
    /// Suspend a person's access (every connector, or `--connectors`): revoked now at leaver
    /// priority, kept revoked whatever the feeds say, until `resume` or the person leaves.
    Suspend(commands::suspend::SuspendArgs),
    /// End a person's suspension and re-issue what policy grants them now.
    Resume(commands::suspend::ResumeArgs),
    /// Temporary access: ask for a door for a window, approve or reject it, list, end early.
    Request(commands::request::RequestArgs),
    /// Emergency access: open one (`[break_glass]` rules), list those awaiting review, review one.
    BreakGlass(commands::request::BreakGlassArgs),
    /// Access reviews: start a campaign over a door, a tier, a connector or a manager's reports;
    /// certify or revoke each holder; export the evidence.
    Review(commands::review::ReviewArgs),
    /// Visitors: people no feed knows, recorded until their last day.
    Visitor(commands::request::VisitorArgs),
    /// Move a door from one connector to another (mechanical key to smart lock): the plan, and
    /// with `--apply` the migration.
    Migrate(commands::migrate::MigrateArgs),
    /// Door migrations and their progress (new credentials confirmed, keys still out).
    Migrations(commands::migrate::MigrationsArgs),
    /// Approve held changes (a mass disappearance from a feed), as your OS user (`os:USER` in the
    /// audit log). Dual control: a change you caused needs someone else's approval.
    #[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "all"])))]
    Approve {
        /// Held change ids (see `latchkey status`).
        ids: Vec<i64>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reports.
    Report {
        #[command(subcommand)]
        report: commands::report::Report,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        audit: commands::audit::AuditCmd,
    },
    /// Compare every vendor's grants with the ledger once and print what differs (orphans are
    /// revoked and missing grants re-issued as `[drift]` says). Exit 1 when anything differs.
    Drift(commands::drift::DriftArgs),
    /// Mechanical keys: open tasks, hand-overs and returns.
    Keys {
        #[command(subcommand)]
        keys: commands::keys::KeysCmd,
    },
    /// Run a vendor simulator on its own.
    #[cfg(feature = "sim")]
    Sim(commands::sim::SimArgs),
    /// Benchmarks (figures against the physical floor).
    #[cfg(feature = "sim")]
    Bench(bench::BenchArgs),
    /// Take the configured canary through grant and revoke at a vendor, reading each back, and
    /// report every stage's latency. Exits 1 when the vendor path is broken.
    Drill(commands::drill::DrillArgs),
    /// Put dead letters back in the queue (audited with your OS user): `--all` or ids.
    Redrive(commands::redrive::RedriveArgs),
    /// Operators of the admin API: make a token, list who is configured.
    Operators {
        #[command(subcommand)]
        operators: commands::operators::OperatorsCmd,
    },
    /// Print a shell completion script (e.g. `latchkey completions bash > /etc/bash_completion.d/latchkey`).
    Completions(commands::completions::CompletionsArgs),
}

impl Command {
    /// The configuration file of a command that carries out changes (and so is worth tracing):
    /// the binary reads its `[telemetry]` before the subscriber is installed.
    pub fn traced_config(&self) -> Option<&Path> {
        match self {
            Command::Run(c) => Some(&c.config),
            Command::Apply(args) => Some(&args.config.config),
            Command::Drift(args) => Some(&args.config.config),
            Command::Approve { config, .. } => Some(&config.config),
            Command::Drill(args) => Some(&args.config.config),
            Command::Redrive(args) => Some(&args.config.config),
            _ => None,
        }
    }
}

pub(crate) fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&ConfigInput::from_file(
        &arg.config,
        process_env(),
    )?)?)
}

/// Local commands act as the OS user: what they cause is recorded as `os:USER`.
async fn open(arg: &ConfigArg) -> anyhow::Result<App> {
    let app = App::open(load(arg)?, clock::system()).await?;
    app.engine.act_as(crate::operators::os_actor());
    Ok(app)
}

/// [`open`], for the command modules that reach vendors.
pub(crate) async fn open_app(arg: &ConfigArg) -> anyhow::Result<App> {
    open(arg).await
}

/// The store, policy and configuration without connectors: for commands that only read, or only
/// queue work for the daemon, and so need no vendor secret.
pub(crate) async fn open_reader(arg: &ConfigArg) -> anyhow::Result<App> {
    let app = App::open_reader(load(arg)?, clock::system()).await?;
    app.engine.act_as(crate::operators::os_actor());
    Ok(app)
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        #[cfg(feature = "sim")]
        Command::Demo { keep } => commands::demo::run(keep).await,
        Command::Redrive(args) => commands::redrive::run(args).await,
        Command::Run(c) => commands::run::run(c).await,
        Command::Check(args) => commands::check::run(args).await,
        Command::Plan(args) => commands::plan::run(args).await,
        Command::Apply(args) => commands::apply::run(args).await,
        Command::Status(args) => commands::status::run(args).await,
        Command::Access(args) => commands::access::run(args).await,
        Command::WhoHas(args) => commands::who_has::run(args).await,
        Command::Suspend(args) => commands::suspend::suspend(args).await,
        Command::Request(args) => commands::request::run(args).await,
        Command::BreakGlass(args) => commands::request::break_glass(args).await,
        Command::Review(args) => commands::review::run(args).await,
        Command::Visitor(args) => commands::request::visitor(args).await,
        Command::Migrate(args) => commands::migrate::migrate(args).await,
        Command::Migrations(args) => commands::migrate::migrations(args).await,
        Command::Resume(args) => commands::suspend::resume(args).await,
        Command::Approve {
            ids,
            all,
            reject,
            config,
        } => commands::approve::run(ids, all, reject, config).await,
        Command::Report { report } => commands::report::run(report).await,
        Command::Drill(args) => commands::drill::run(args).await,
        Command::Audit { audit } => commands::audit::run(audit).await,
        #[cfg(feature = "sim")]
        Command::Sim(args) => commands::sim::run(args).await,
        #[cfg(feature = "sim")]
        Command::Bench(args) => bench::run(args).await,
        Command::Drift(args) => commands::drift::run(args).await,
        Command::Keys { keys } => commands::keys::run(keys).await,
        Command::Completions(args) => commands::completions::run(&args),
        Command::Operators { operators } => commands::operators::run(operators),
    }
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

pub(crate) async fn shutdown_signal() {
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

#[cfg(feature = "sim")]
pub mod bench;
pub mod commands;
pub mod lookup;
pub mod output;

pub use commands::access::access_text;
pub use commands::keys::keys_text;
pub use commands::status::status_text;
