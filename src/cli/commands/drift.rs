//! `latchkey drift`: compare every vendor's grants with the ledger once and print what differs.
//! Orphans are revoked and missing grants re-issued as each finding's action says; re-issues are
//! delivered before the command exits. Exit 1 when anything differs.

use crate::cli::output::{Capped, ListArg, print_json};
use crate::cli::{ConfigArg, open_app, wait_for_outbox};
use serde::Serialize;
use std::fmt::Write;
use tokio::sync::watch;

pub const SCHEMA: &str = "latchkey.drift/v1";

#[derive(Debug, clap::Args)]
pub struct DriftArgs {
    #[command(flatten)]
    pub list: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Drift {
    findings: Capped<Finding>,
    /// Connectors whose vendor cannot list grants (not checked).
    unsupported: Vec<String>,
    /// Lists that failed.
    errors: Vec<ListError>,
}

#[derive(Debug, Serialize)]
struct Finding {
    /// `orphan` | `missing`
    kind: String,
    connector: String,
    target: String,
    subject: String,
    vendor_ref: Option<String>,
    /// `revoked` | `reissued` | `reported` | `waiting` | `failed`
    action: String,
}

#[derive(Debug, Serialize)]
struct ListError {
    connector: String,
    target: String,
    error: String,
}

pub async fn run(args: DriftArgs) -> anyhow::Result<i32> {
    let app = open_app(&args.config).await?;
    let report = app.drift_check().await?;
    let reissued = report.findings.iter().any(|f| f.action == "reissued");
    let differs = !report.findings.is_empty();
    let findings = report
        .findings
        .into_iter()
        .map(|f| Finding {
            kind: f.kind,
            connector: f.connector,
            target: f.target,
            subject: f.subject,
            vendor_ref: f.vendor_ref,
            action: f.action,
        })
        .collect();
    let drift = Drift {
        findings: args.list.cap(findings),
        unsupported: report.unsupported,
        errors: report
            .errors
            .into_iter()
            .map(|(connector, target, error)| ListError {
                connector,
                target,
                error,
            })
            .collect(),
    };
    if args.list.json() {
        print_json(SCHEMA, &drift)?;
    } else {
        print!("{}", drift.render());
    }
    // Re-issues were enqueued: deliver them before exiting, as `apply` does.
    if reissued {
        let (tx, rx) = watch::channel(false);
        let dispatcher = tokio::spawn(app.dispatcher().run(rx));
        wait_for_outbox(&app, None).await?;
        let _ = tx.send(true);
        dispatcher.await?;
    }
    Ok(i32::from(differs))
}

impl Drift {
    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "drift findings: {}", self.findings.total);
        for f in &self.findings.items {
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:<22} {:<12} grant {:<10} -> {}",
                f.kind,
                f.connector,
                f.target,
                f.subject,
                f.vendor_ref.as_deref().unwrap_or("-"),
                f.action
            );
        }
        self.findings.more_line(&mut out, "  ");
        for c in &self.unsupported {
            let _ = writeln!(out, "  {c}: cannot list grants, not checked");
        }
        for e in &self.errors {
            let _ = writeln!(
                out,
                "  {} {}: list failed: {}",
                e.connector, e.target, e.error
            );
        }
        out
    }
}
