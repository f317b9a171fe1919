//! `latchkey redrive`: put dead letters back in the queue, audited with the operator's OS user;
//! `--list` shows them first and moves nothing.

use crate::app::App;
use crate::cli::ConfigArg;
use crate::cli::commands::status::DeadLetter;
use crate::cli::output::{Capped, ListArg, print_json};
use crate::clock::to_micros;
use crate::dispatch::recovery::{self, RedriveError, Selection};
use crate::model::CommandId;
use clap::builder::TypedValueParser as _;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "all", "list"])))]
pub struct RedriveArgs {
    /// Dead letter ids (see `latchkey status`).
    #[arg(conflicts_with = "all", value_parser = clap::value_parser!(i64).map(CommandId))]
    pub ids: Vec<CommandId>,
    /// Every dead letter (of `--connector`, when given).
    #[arg(long)]
    pub all: bool,
    /// List the dead letters (of `--connector`, when given), oldest first, and move nothing.
    #[arg(long, conflicts_with_all = ["ids", "all"])]
    pub list: bool,
    /// Only dead letters of this connector.
    #[arg(long)]
    pub connector: Option<String>,
    /// `--output`, and `--limit` for `--list`.
    #[command(flatten)]
    pub list_arg: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub const SCHEMA: &str = "latchkey.redrive/v1";
pub const LIST_SCHEMA: &str = "latchkey.dead-letters/v1";

#[derive(Debug, serde::Serialize)]
struct Listed {
    dead_letters: Capped<DeadLetter>,
}

#[derive(Debug, serde::Serialize)]
struct Redriven {
    /// Who re-queued them (recorded in the audit log).
    by: String,
    requeued: Vec<Requeued>,
}

#[derive(Debug, serde::Serialize)]
struct Requeued {
    id: CommandId,
    action: String,
    identity: String,
    connector: String,
    target: String,
    /// The error that made it a dead letter.
    last_error: Option<String>,
}

pub async fn run(args: RedriveArgs) -> anyhow::Result<i32> {
    let app = crate::cli::open_reader(&args.config).await?;
    if let Some(c) = &args.connector
        && !app.engine.config.connectors.contains_key(c)
    {
        eprintln!("connector `{c}` is not configured");
        return Ok(1);
    }
    let connector = args.connector.as_deref();
    if args.list {
        return list(&app, connector, &args.list_arg).await;
    }
    let selection = if args.all {
        Selection::All {
            connector,
            action: None,
        }
    } else {
        Selection::Ids {
            ids: &args.ids,
            connector,
        }
    };
    let actor = crate::operators::os_actor();
    let now = to_micros(app.engine.clock.now());
    match recovery::redrive(app.store(), now, &actor, "latchkey redrive", selection).await {
        Ok(moved) => {
            let done = Redriven {
                by: actor,
                requeued: moved.into_iter().map(Requeued::from).collect(),
            };
            report(&done, &args.list_arg)
        }
        Err(e @ RedriveError::NotFound { .. }) => {
            eprintln!("nothing re-queued: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--list`: the dead letters (of `connector`, when given), oldest first; nothing moves.
async fn list(app: &App, connector: Option<&str>, list_arg: &ListArg) -> anyhow::Result<i32> {
    let mut conn = app.store().pool().acquire().await?;
    let dead = crate::store::dead_letters(&mut conn, connector, None)
        .await?
        .into_iter()
        .map(DeadLetter::from)
        .collect();
    let listed = Listed {
        dead_letters: list_arg.cap(dead),
    };
    if list_arg.json() {
        print_json(LIST_SCHEMA, &listed)?;
    } else {
        let d = &listed.dead_letters;
        println!("dead letters: {}", d.total);
        for c in &d.items {
            println!("  {}", c.line());
        }
        let mut more = String::new();
        d.more_line(&mut more, "  ");
        print!("{more}");
    }
    Ok(0)
}

impl From<crate::store::CommandRow> for Requeued {
    fn from(c: crate::store::CommandRow) -> Self {
        Requeued {
            id: c.id,
            action: c.action.to_string(),
            identity: c.identity_key.into(),
            connector: c.connector,
            target: c.target,
            last_error: c.last_error,
        }
    }
}

/// What was re-queued and by whom, one line per command and a total (or the JSON document).
fn report(done: &Redriven, list_arg: &ListArg) -> anyhow::Result<i32> {
    if list_arg.json() {
        print_json(SCHEMA, done)?;
        return Ok(0);
    }
    for c in &done.requeued {
        println!(
            "re-queued #{} {} {} {}:{} (was: {})",
            c.id,
            c.action,
            c.identity,
            c.connector,
            c.target,
            c.last_error.as_deref().unwrap_or("-")
        );
    }
    println!(
        "{} dead letters re-queued by {}",
        done.requeued.len(),
        done.by
    );
    Ok(0)
}
