//! `latchkey redrive`: put dead letters back in the queue, audited with the operator's OS user.

use crate::cli::ConfigArg;
use crate::clock::to_micros;
use crate::dispatch::recovery::{self, RedriveError, Selection};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["ids", "all"])))]
pub struct RedriveArgs {
    /// Dead letter ids (see `latchkey status`).
    #[arg(conflicts_with = "all")]
    pub ids: Vec<i64>,
    /// Every dead letter (of `--connector`, when given).
    #[arg(long)]
    pub all: bool,
    /// Only dead letters of this connector.
    #[arg(long)]
    pub connector: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// The operating-system user running the command, for the audit log.
pub fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .or_else(|| {
            // No login variables (a service, a container): the numeric uid.
            std::fs::read_to_string("/proc/self/status")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(|u| format!("uid:{u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(args: RedriveArgs) -> anyhow::Result<i32> {
    let app = crate::cli::open_app(&args.config).await?;
    if let Some(c) = &args.connector
        && !app.connectors.contains_key(c)
    {
        eprintln!("connector `{c}` is not configured");
        return Ok(1);
    }
    let connector = args.connector.as_deref();
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
    let actor = os_user();
    let now = to_micros(app.engine.clock.now());
    match recovery::redrive(app.store(), now, &actor, "latchkey redrive", selection).await {
        Ok(moved) => {
            for c in &moved {
                println!(
                    "re-queued #{} {} {} {}:{} (was: {})",
                    c.id,
                    c.action,
                    c.identity_key,
                    c.connector,
                    c.target,
                    c.last_error.as_deref().unwrap_or("-")
                );
            }
            println!("{} dead letters re-queued by {actor}", moved.len());
            Ok(0)
        }
        Err(e @ RedriveError::NotFound { .. }) => {
            eprintln!("nothing re-queued: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
