//! `latchkey apply`: apply each HR source's pending feed once, reconcile every identity against
//! current policy, deliver the resulting commands, and exit.

use crate::cli::output::{OutputArg, print_json};
use crate::cli::{ConfigArg, describe_feed, open_app, wait_for_outbox};
use crate::engine::FeedReport;
use serde::Serialize;
use tokio::sync::watch;

pub const SCHEMA: &str = "latchkey.apply/v1";

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Applied {
    feeds: Vec<Feed>,
    /// The reconciliation after the feeds, when it changed anything.
    reconcile: Option<Reconciled>,
}

#[derive(Debug, Serialize)]
struct Feed {
    source: String,
    file: String,
    /// `applied` | `unchanged` (the same file as last time) | `rejected` (set aside, see `reason`)
    outcome: &'static str,
    reason: Option<String>,
    rows: usize,
    unchanged: usize,
    joiners: usize,
    movers: usize,
    leavers: usize,
    rehires: usize,
    other_changes: usize,
    quarantined: usize,
    held: usize,
    issues: u64,
    revokes: u64,
    absent_within_grace: usize,
    released: usize,
}

#[derive(Debug, Serialize)]
struct Reconciled {
    identities: usize,
    issues: u64,
    revokes: u64,
    held: u64,
}

impl From<&FeedReport> for Feed {
    fn from(r: &FeedReport) -> Self {
        Feed {
            source: r.source.clone(),
            file: r.file.clone(),
            outcome: if r.skipped_same_file {
                "unchanged"
            } else if r.rejected.is_some() {
                "rejected"
            } else {
                "applied"
            },
            reason: r.rejected.clone(),
            rows: r.rows,
            unchanged: r.unchanged,
            joiners: r.joiners,
            movers: r.movers,
            leavers: r.leavers,
            rehires: r.rehires,
            other_changes: r.other_changes,
            quarantined: r.quarantined,
            held: r.held,
            issues: r.issues,
            revokes: r.revokes,
            absent_within_grace: r.absent,
            released: r.released,
        }
    }
}

pub async fn run(args: ApplyArgs) -> anyhow::Result<i32> {
    let json = args.output.json();
    let app = open_app(&args.config).await?;
    let (tx, rx) = watch::channel(false);
    let dispatcher = tokio::spawn(app.dispatcher().run(rx));
    let mut done = Applied {
        feeds: Vec::new(),
        reconcile: None,
    };
    for name in app.engine.config.sources.hr.keys() {
        for r in app.engine.run_hr_source(name).await? {
            if !json {
                println!("{}", describe_feed(&r));
            }
            done.feeds.push(Feed::from(&r));
        }
    }
    app.engine.tick().await?;
    let (plan, r) = crate::reconcile::run(&app.engine, "apply").await?;
    if !plan.is_empty() {
        if !json {
            println!(
                "reconcile: {} identities -> {} issues, {} revokes, {} held",
                plan.identities, r.issues, r.revokes, r.held
            );
        }
        done.reconcile = Some(Reconciled {
            identities: plan.identities,
            issues: r.issues,
            revokes: r.revokes,
            held: r.held,
        });
    }
    wait_for_outbox(&app, None).await?;
    let _ = tx.send(true);
    dispatcher.await?;
    // Printed once everything is delivered, so a tool reads a finished run.
    if json {
        print_json(SCHEMA, &done)?;
    }
    Ok(0)
}
