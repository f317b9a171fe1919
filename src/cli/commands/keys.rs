//! `latchkey keys list|handed-over|returned`: mechanical key tasks (the built-in `manual`
//! connector).

use crate::app::App;
use crate::cli::output::{Capped, ListArg, OutputArg, print_json, time};
use crate::cli::{ConfigArg, open_reader};
use crate::connectors::manual;
use crate::store;
use serde::Serialize;
use std::fmt::Write;

pub const SCHEMA: &str = "latchkey.keys/v1";
pub const RECORDED_SCHEMA: &str = "latchkey.keys.recorded/v1";

/// Mechanical key tasks (the built-in `manual` connector).
#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Open hand-over and return tasks, overdue ones marked.
    List {
        #[command(flatten)]
        list: ListArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Record that a key was handed to its holder.
    HandedOver(RecordArgs),
    /// Record that a key was checked back in: this confirms the revocation.
    Returned(RecordArgs),
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    pub task: i64,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// One open hand-over or return.
#[derive(Debug, Serialize)]
pub struct KeyTask {
    pub id: i64,
    /// `hand_over` | `return`
    pub kind: String,
    pub identity: String,
    pub connector: String,
    pub target: String,
    pub created_at: String,
    pub due_at: Option<String>,
    pub overdue: bool,
}

#[derive(Debug, Serialize)]
struct Tasks<'a> {
    tasks: &'a Capped<KeyTask>,
}

#[derive(Debug, Serialize)]
struct Recorded {
    task: i64,
    kind: String,
    identity: String,
    target: String,
    by: String,
    at: String,
}

pub async fn run(cmd: KeysCmd) -> anyhow::Result<i32> {
    let (args, kind) = match cmd {
        KeysCmd::List { list, config } => {
            let app = open_reader(&config).await?;
            let tasks = open_tasks(&app, list.limit).await?;
            if list.json() {
                print_json(SCHEMA, &Tasks { tasks: &tasks })?;
            } else {
                let mut out = String::new();
                render_tasks(&tasks, &mut out);
                print!("{out}");
            }
            return Ok(0);
        }
        KeysCmd::HandedOver(args) => (args, manual::HAND_OVER),
        KeysCmd::Returned(args) => (args, manual::RETURN),
    };
    let app = open_reader(&args.config).await?;
    let now = crate::clock::to_micros(app.engine.clock.now());
    // Recorded as the OS user at the desk (`os:USER`), like every local command.
    let by = crate::operators::os_actor();
    let t = manual::record(
        app.store(),
        Some(&app.engine.metrics),
        args.task,
        kind,
        &by,
        now,
    )
    .await?;
    let done = Recorded {
        task: t.id,
        kind: t.kind,
        identity: t.identity_key.into(),
        target: t.target,
        by,
        at: time(now),
    };
    if args.output.json() {
        print_json(RECORDED_SCHEMA, &done)?;
    } else {
        println!(
            "task {} ({} of {} for {}) recorded done by {} at {}",
            done.task, done.kind, done.target, done.identity, done.by, done.at
        );
    }
    Ok(0)
}

/// Open key tasks, oldest first, capped at `limit` (0 = all).
pub async fn open_tasks(app: &App, limit: usize) -> anyhow::Result<Capped<KeyTask>> {
    let now = crate::clock::to_micros(app.engine.clock.now());
    let tasks = store::open_key_tasks(app.store().pool())
        .await?
        .into_iter()
        .map(|t| KeyTask {
            id: t.id,
            overdue: t.due_at.is_some_and(|d| d <= now),
            due_at: t.due_at.map(time),
            kind: t.kind,
            identity: t.identity_key.into(),
            connector: t.connector,
            target: t.target,
            created_at: time(t.created_at),
        })
        .collect();
    Ok(Capped::new(tasks, limit))
}

/// `open key tasks: N` and one line per task, for `keys list` and `status`.
pub fn render_tasks(tasks: &Capped<KeyTask>, out: &mut String) {
    let _ = writeln!(out, "open key tasks: {}", tasks.total);
    for t in &tasks.items {
        let due = match (&t.due_at, t.overdue) {
            (Some(d), true) => format!("OVERDUE since {d}"),
            (Some(d), false) => format!("due {d}"),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "  #{:<5} {:<9} {:<10} {:<8} {:<22} created {} {due}",
            t.id, t.kind, t.identity, t.connector, t.target, t.created_at
        );
    }
    tasks.more_line(out, "  ");
}

/// Every open key task as `keys list` prints it (for tests and callers inside the crate).
pub async fn keys_text(app: &App) -> anyhow::Result<String> {
    let mut out = String::new();
    render_tasks(&open_tasks(app, 0).await?, &mut out);
    Ok(out)
}
