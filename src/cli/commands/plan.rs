//! `latchkey plan`: what `apply` and `run` would issue, revoke and hold now under current policy,
//! applying nothing; ends with `Plan: N to issue, M to revoke, K held`.

use crate::cli::output::{Capped, ListArg, print_json};
use crate::cli::{ConfigArg, open_reader};
use crate::plan::Change;
use crate::reconcile::ReconcilePlan;
use serde::Serialize;
use std::fmt::Write;

pub const SCHEMA: &str = "latchkey.plan/v1";

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Exit 0 when there is nothing to do, 2 when there are changes (1 stays an error).
    #[arg(long)]
    pub detailed_exitcode: bool,
    #[command(flatten)]
    pub list: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Plan {
    /// Identities evaluated.
    identities: usize,
    changes: Capped<PlannedChange>,
    /// Why revocations are held for approval, when they are.
    hold_reason: Option<String>,
    /// People whose templates could not be evaluated (left unchanged).
    failed: Vec<Failed>,
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct PlannedChange {
    /// `issue` | `revoke` | `held` (a revocation held for approval) | `kept` (a revocation an
    /// approver rejected under this policy)
    action: &'static str,
    identity: String,
    connector: String,
    target: String,
    template: String,
}

#[derive(Debug, Serialize)]
struct Failed {
    identity: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    issue: usize,
    revoke: usize,
    held: usize,
    kept: usize,
}

pub async fn run(args: PlanArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let plan = app.engine.dry_run().await?;
    let shown = build(&plan, &args.list);
    if args.list.json() {
        print_json(SCHEMA, &shown)?;
    } else {
        print!("{}", shown.render());
    }
    Ok(if args.detailed_exitcode && !plan.is_empty() {
        2
    } else {
        0
    })
}

fn build(plan: &ReconcilePlan, list: &ListArg) -> Plan {
    let mut changes = Vec::new();
    for p in &plan.people {
        for c in &p.changes {
            let (action, template) = match c {
                Change::Issue(d) => ("issue", d.template.clone()),
                Change::Revoke(g) if p.held => ("held", g.template.clone()),
                Change::Revoke(g) if p.rejected => ("kept", g.template.clone()),
                Change::Revoke(g) => ("revoke", g.template.clone()),
            };
            changes.push(PlannedChange {
                action,
                identity: p.key.to_string(),
                connector: c.connector().to_string(),
                target: c.target().to_string(),
                template,
            });
        }
    }
    Plan {
        identities: plan.identities,
        changes: list.cap(changes),
        hold_reason: plan.hold_reason.clone(),
        failed: plan
            .failed
            .iter()
            .map(|(identity, error)| Failed {
                identity: identity.to_string(),
                error: error.clone(),
            })
            .collect(),
        summary: Summary {
            issue: plan.to_issue(),
            revoke: plan.to_revoke(),
            held: plan.held(),
            kept: plan.kept(),
        },
    }
}

impl Plan {
    /// One line per change, then the reason for holding, failures and the summary line.
    fn render(&self) -> String {
        let mut out = String::new();
        if self.changes.total == 0 {
            out.push_str("nothing to issue or revoke\n");
        }
        for c in &self.changes.items {
            let _ = writeln!(
                out,
                "{:<6}  {:<10} {}:{} (template {})",
                c.action, c.identity, c.connector, c.target, c.template
            );
        }
        self.changes.more_line(&mut out, "");
        if let Some(r) = &self.hold_reason {
            let _ = writeln!(out, "held for approval: {r}");
        }
        for f in &self.failed {
            let _ = writeln!(out, "not evaluated: {}: {}", f.identity, f.error);
        }
        let s = &self.summary;
        let kept = match s.kept {
            0 => String::new(),
            n => format!(", {n} kept (rejected)"),
        };
        let _ = writeln!(
            out,
            "Plan: {} to issue, {} to revoke, {} held{kept}",
            s.issue, s.revoke, s.held
        );
        out
    }
}
