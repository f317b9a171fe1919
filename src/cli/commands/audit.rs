//! `latchkey audit list|verify`: the newest audit records, and the hash chain checked from the
//! start (exit 2 when it is broken: an integrity failure, not an ordinary one).

use crate::audit::{self, Verdict};
use crate::cli::output::{Capped, ListArg, OutputArg, print_json, time};
use crate::cli::{ConfigArg, open_reader};
use serde::Serialize;
use std::fmt::Write;

pub const LIST_SCHEMA: &str = "latchkey.audit.list/v1";
pub const VERIFY_SCHEMA: &str = "latchkey.audit.verify/v1";

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// The newest records first: who did what to whom, when.
    List {
        /// Only records about this subject (an identity key, a held change, a task).
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        list: ListArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the hash chain; names the first broken record (exit 2 when broken).
    Verify {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Serialize)]
struct Listed {
    records: Capped<Record>,
}

#[derive(Debug, Serialize)]
struct Record {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    subject: String,
    /// The record's details as written (a JSON value).
    details: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct Verified {
    intact: bool,
    /// Records checked (when intact).
    records: Option<i64>,
    /// The first broken record and why (when broken).
    broken_at: Option<i64>,
    reason: Option<String>,
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<i32> {
    match cmd {
        AuditCmd::List {
            subject,
            list,
            config,
        } => {
            let app = open_reader(&config).await?;
            let total = audit::count_records(app.store(), subject.as_deref()).await?;
            let rows = audit::recent_records(app.store(), subject.as_deref(), list.sql_limit())
                .await?
                .into_iter()
                .map(|r| Record {
                    seq: r.seq,
                    at: time(r.at),
                    details: serde_json::from_str(&r.details)
                        .unwrap_or(serde_json::Value::String(r.details)),
                    actor: r.actor,
                    action: r.action,
                    subject: r.subject,
                })
                .collect();
            let records = Capped::of_total(rows, usize::try_from(total).unwrap_or(0));
            if list.json() {
                print_json(LIST_SCHEMA, &Listed { records })?;
            } else {
                let mut out = format!("audit records: {}\n", records.total);
                for r in &records.items {
                    let _ = writeln!(
                        out,
                        "  #{:<6} {} {:<24} {:<28} {:<14} {}",
                        r.seq, r.at, r.actor, r.action, r.subject, r.details
                    );
                }
                records.more_line(&mut out, "  ");
                print!("{out}");
            }
            Ok(0)
        }
        AuditCmd::Verify { output, config } => {
            let app = open_reader(&config).await?;
            let verdict = audit::verify(app.store()).await?;
            let doc = match &verdict {
                Verdict::Intact { records } => Verified {
                    intact: true,
                    records: Some(*records),
                    broken_at: None,
                    reason: None,
                },
                Verdict::Broken { seq, reason } => Verified {
                    intact: false,
                    records: None,
                    broken_at: Some(*seq),
                    reason: Some(reason.clone()),
                },
            };
            if output.json() {
                print_json(VERIFY_SCHEMA, &doc)?;
            } else {
                match verdict {
                    Verdict::Intact { records } => println!("audit log intact: {records} records"),
                    Verdict::Broken { seq, reason } => {
                        println!("audit log BROKEN at record {seq}: {reason}")
                    }
                }
            }
            Ok(if doc.intact { 0 } else { 2 })
        }
    }
}
