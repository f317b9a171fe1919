//! `latchkey drill`: take the configured canary through grant and revoke at a vendor, reading
//! each back, and report every stage's latency. Exit 1 when the vendor path is broken.

use crate::cli::output::{OutputArg, print_json};
use crate::cli::{ConfigArg, open_app};
use anyhow::Context;
use serde::Serialize;

pub const SCHEMA: &str = "latchkey.drill/v1";

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[arg(long)]
    pub connector: String,
    /// Target to grant and revoke (default: the connector's `drill_target`).
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Drill {
    connector: String,
    target: String,
    ok: bool,
    stages: Vec<Stage>,
    failure: Option<Failure>,
}

#[derive(Debug, Serialize)]
struct Stage {
    stage: &'static str,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct Failure {
    stage: &'static str,
    reason: String,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<i32> {
    let app = open_app(&args.config).await?;
    let c = app
        .connectors
        .get(&args.connector)
        .with_context(|| format!("connector `{}` is not configured", args.connector))?;
    let report = crate::jobs::drill::run(&app.engine, c, args.target.as_deref()).await?;
    if args.output.json() {
        let doc = Drill {
            connector: report.connector.clone(),
            target: report.target.clone(),
            ok: report.ok(),
            stages: report
                .stages
                .iter()
                .map(|(stage, seconds)| Stage {
                    stage,
                    seconds: *seconds,
                })
                .collect(),
            failure: report.failure.as_ref().map(|(stage, reason)| Failure {
                stage,
                reason: reason.clone(),
            }),
        };
        print_json(SCHEMA, &doc)?;
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok() { 0 } else { 1 })
}
