//! `latchkey report latency|sla`: revocation (and issue) latency per connector and stage, and SLA
//! attainment with error-budget use. `report sla` exits 1 when a connector breaches its objective.

use crate::cli::output::{OutputArg, print_json};
use crate::cli::{ConfigArg, open_reader};
use crate::model::Action;
use crate::telemetry::{self, STAGES, Summary, sla::SlaRow};
use serde::Serialize;
use std::collections::BTreeMap;

pub const LATENCY_SCHEMA: &str = "latchkey.report.latency/v1";
pub const SLA_SCHEMA: &str = "latchkey.report.sla/v1";

#[derive(Debug, clap::Subcommand)]
pub enum Report {
    /// Revocation (and issue) latency per connector and stage.
    Latency(ReportArgs),
    /// SLA attainment and error-budget use per connector (exit 1 on a breach).
    Sla(ReportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Latency {
    revoke: Vec<StageLatency>,
    issue: Vec<StageLatency>,
}

/// Seconds, nearest-rank percentiles.
#[derive(Debug, Serialize)]
struct StageLatency {
    connector: String,
    stage: String,
    count: usize,
    p50_seconds: f64,
    p90_seconds: f64,
    p99_seconds: f64,
    max_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Sla {
    breached: bool,
    connectors: Vec<SlaConnector>,
}

#[derive(Debug, Serialize)]
struct SlaConnector {
    connector: String,
    target_seconds: f64,
    objective: f64,
    window_days: u32,
    total: u64,
    met: u64,
    missed: u64,
    open_overdue: u64,
    /// Share within the target (0..1); null without revocations.
    attainment: Option<f64>,
    /// Share of the window's error budget used (1 = gone); null without revocations.
    budget_used: Option<f64>,
    /// `ok` | `breached` | `no_revocations`
    status: &'static str,
}

pub async fn run(report: Report) -> anyhow::Result<i32> {
    match report {
        Report::Latency(args) => {
            let app = open_reader(&args.config).await?;
            let revoke = telemetry::latency_report(app.store(), Action::Revoke).await?;
            let issue = telemetry::latency_report(app.store(), Action::Issue).await?;
            if args.output.json() {
                let doc = Latency {
                    revoke: stages(&revoke),
                    issue: stages(&issue),
                };
                print_json(LATENCY_SCHEMA, &doc)?;
            } else {
                for (action, r) in [(Action::Revoke, &revoke), (Action::Issue, &issue)] {
                    println!(
                        "{}",
                        telemetry::render_table(
                            &format!("{action} latency (trigger -> vendor confirmed)"),
                            r
                        )
                    );
                }
            }
            Ok(0)
        }
        Report::Sla(args) => {
            let app = open_reader(&args.config).await?;
            let now = crate::clock::to_micros(app.engine.clock.now());
            let rows = telemetry::sla::report(app.store(), &app.engine.config, now).await?;
            let breached = rows.iter().any(SlaRow::breached);
            if args.output.json() {
                let doc = Sla {
                    breached,
                    connectors: rows.iter().map(sla_connector).collect(),
                };
                print_json(SLA_SCHEMA, &doc)?;
            } else {
                print!("{}", telemetry::sla::render(&rows));
            }
            Ok(i32::from(breached))
        }
    }
}

/// Rows in the table's order: by connector, then stage in flow order.
fn stages(report: &BTreeMap<(String, String), Summary>) -> Vec<StageLatency> {
    let mut rows: Vec<_> = report.iter().collect();
    rows.sort_by_key(|((c, s), _)| (c.clone(), STAGES.iter().position(|x| x == s)));
    rows.into_iter()
        .map(|((connector, stage), s)| StageLatency {
            connector: connector.clone(),
            stage: stage.clone(),
            count: s.count,
            p50_seconds: s.p50,
            p90_seconds: s.p90,
            p99_seconds: s.p99,
            max_seconds: s.max,
        })
        .collect()
}

fn sla_connector(r: &SlaRow) -> SlaConnector {
    SlaConnector {
        connector: r.connector.clone(),
        target_seconds: r.target_seconds,
        objective: r.objective,
        window_days: r.window_days,
        total: r.total,
        met: r.met,
        missed: r.missed,
        open_overdue: r.open_overdue,
        attainment: r.attainment(),
        budget_used: r.budget_used(),
        status: if r.total == 0 {
            "no_revocations"
        } else if r.breached() {
            "breached"
        } else {
            "ok"
        },
    }
}
