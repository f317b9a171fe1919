//! `latchkey audit list|export|verify|prune`: query the audit log, take a range of it away with
//! its hash chain and a manifest, check the chain (in the store, or an export offline: exit 2
//! when it is broken, an integrity failure, not an ordinary one), and prune by retention.

use crate::audit::export::{self, Format};
use crate::audit::{self, Verdict};
use crate::cli::output::{Capped, ListArg, OutputArg, print_json, time};
use crate::cli::{ConfigArg, open_reader};
use crate::store::audit::AuditFilter;
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub const LIST_SCHEMA: &str = "latchkey.audit.list/v1";
pub const VERIFY_SCHEMA: &str = "latchkey.audit.verify/v1";

#[derive(Debug, Clone, clap::Args)]
pub struct TimeRange {
    /// Only records written at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only records written before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| crate::clock::to_micros(t.with_timezone(&chrono::Utc)))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e}); e.g. 2026-11-01T00:00:00Z"))
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// The newest records first: who did what to whom, when; filters combine.
    List {
        /// Only records about this subject (an identity key, a held change, a task).
        #[arg(long, visible_alias = "person")]
        subject: Option<String>,
        /// Only records about this target (a lock, a group: the `target` in the details).
        #[arg(long)]
        target: Option<String>,
        /// Only records by this actor (an operator, `dispatcher`, a source).
        #[arg(long)]
        actor: Option<String>,
        /// Only records of this action (`grant.revoked`, `held.approved`, ...).
        #[arg(long)]
        action: Option<String>,
        #[command(flatten)]
        range: TimeRange,
        #[command(flatten)]
        list: ListArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the records of a time range with their hash chain and a manifest, for offline
    /// verification with `audit verify --file`.
    Export {
        #[command(flatten)]
        range: TimeRange,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// A folder (gets `audit.FORMAT` and `manifest.json`) or a file (gets FILE and
        /// FILE.manifest.json).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the hash chain; names the first broken record (exit 2 when broken). With --file,
    /// checks an export offline: no database, no configuration.
    Verify {
        /// An export (its data file, its manifest, or its folder).
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prune records older than `[audit] retain_days` now (the daemon does it daily); the chain
    /// stays verifiable from the anchor.
    Prune {
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
    /// With --file: the export's file and the line of the first broken record.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<i32> {
    match cmd {
        AuditCmd::List {
            subject,
            target,
            actor,
            action,
            range,
            list: list_arg,
            config,
        } => {
            let filter = AuditFilter {
                subject,
                target,
                actor,
                action,
                since: range.since,
                until: range.until,
            };
            list(&filter, &list_arg, &config).await
        }
        AuditCmd::Export {
            range,
            format,
            out,
            output,
            config,
        } => export_range(&range, format, &out, &output, &config).await,
        AuditCmd::Verify {
            file: Some(file),
            output,
            config: _,
        } => verify_export(&file, &output),
        AuditCmd::Verify {
            file: None,
            output,
            config,
        } => verify_store(&output, &config).await,
        AuditCmd::Prune { config } => prune(&config).await,
    }
}

/// `audit list`: the newest records matching `filter`, as a table or JSON.
async fn list(filter: &AuditFilter, list: &ListArg, config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let total = audit::count(app.store(), filter).await?;
    let rows = audit::query(app.store(), filter, list.sql_limit())
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

/// `audit export`: a time range's records with their hash chain and a manifest.
async fn export_range(
    range: &TimeRange,
    format: Format,
    out: &Path,
    output: &OutputArg,
    config: &ConfigArg,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let written = export::export(
        app.store(),
        range.since,
        range.until,
        format,
        out,
        crate::clock::to_micros(app.engine.clock.now()),
    )
    .await
    .with_context(|| format!("audit export to {}", out.display()))?;
    if output.json() {
        // The manifest names its own schema (`latchkey.audit.manifest/v1`).
        println!("{}", serde_json::to_string_pretty(&written.manifest)?);
    } else {
        let m = &written.manifest;
        println!(
            "exported {} records (seq {}..{}) to {}\nmanifest {}",
            m.count,
            m.first_seq,
            m.last_seq,
            written.data.display(),
            written.manifest_path.display()
        );
    }
    Ok(0)
}

/// `audit verify --file`: an export checked offline, with no database and no configuration.
fn verify_export(file: &Path, output: &OutputArg) -> anyhow::Result<i32> {
    let report = export::verify_file(file)?;
    let doc = Verified {
        intact: report.broken.is_none(),
        records: report.broken.is_none().then_some(report.records),
        broken_at: report.broken.as_ref().and_then(|b| b.seq),
        reason: report.broken.as_ref().map(|b| b.reason.clone()),
        file: Some(report.data.display().to_string()),
        line: report.broken.as_ref().and_then(|b| b.line),
    };
    if output.json() {
        print_json(VERIFY_SCHEMA, &doc)?;
    } else {
        match &report.broken {
            None => println!(
                "export intact: {} records (seq {}..{}), manifest matches",
                report.records, report.first_seq, report.last_seq
            ),
            Some(b) => println!("export BROKEN: {b}"),
        }
    }
    Ok(if doc.intact { 0 } else { 2 })
}

/// `audit verify`: the hash chain in the store.
async fn verify_store(output: &OutputArg, config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let verdict = audit::verify(app.store()).await?;
    let doc = match &verdict {
        Verdict::Intact { records } => Verified {
            intact: true,
            records: Some(*records),
            broken_at: None,
            reason: None,
            file: None,
            line: None,
        },
        Verdict::Broken { seq, reason } => Verified {
            intact: false,
            records: None,
            broken_at: Some(*seq),
            reason: Some(reason.clone()),
            file: None,
            line: None,
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

/// `audit prune`: records older than `[audit] retain_days`, now.
async fn prune(config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let Some(days) = app.engine.config.audit.retain_days else {
        anyhow::bail!(
            "audit.retain_days is not set in {}",
            config.config.display()
        );
    };
    let pruned = crate::jobs::retention::run_once(&app.engine, days).await?;
    println!(
        "pruned {} records; the chain now verifies from record {}",
        pruned.records, pruned.anchor_seq
    );
    Ok(0)
}
