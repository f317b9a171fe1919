//! `latchkey approve IDS|--all [--reject]`: decide held changes (a mass disappearance from a
//! feed) as the OS user (`os:USER` in the audit log). Dual control: a change you caused needs
//! someone else's approval; a refusal is printed and the exit code is 1.

use crate::app::App;
use crate::cli::{ConfigArg, open_reader};
use crate::store;
use std::collections::BTreeSet;

pub async fn run(ids: Vec<i64>, all: bool, reject: bool, config: ConfigArg) -> anyhow::Result<i32> {
    let by = crate::operators::os_actor();
    let app = open_reader(&config).await?;
    let ids = if all { held_ids(&app).await? } else { ids };
    if ids.is_empty() {
        println!("nothing to approve");
    }
    let from_reconcile = held_by_reconcile(&app).await?;
    let mut reconcile_approved = false;
    let mut refused = 0;
    for id in ids {
        let a = match app.engine.decide(id, !reject, &by).await {
            Ok(a) => a,
            Err(e @ crate::engine::EngineError::DualControl { .. }) => {
                eprintln!("refused: {e}");
                refused += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        reconcile_approved |= !reject && from_reconcile.contains(&id);
        println!(
            "{} held change {id}: {} revokes enqueued",
            if reject { "rejected" } else { "approved" },
            a.revokes
        );
    }
    // Held revocations of a reconciliation are carried out by one, now.
    if reconcile_approved {
        let (_, r) = crate::reconcile::run(&app.engine, "approval").await?;
        println!(
            "reconcile: {} revokes enqueued, {} still held",
            r.revokes, r.held
        );
    }
    Ok(if refused > 0 { 1 } else { 0 })
}

/// Every held change (`--all`).
async fn held_ids(app: &App) -> anyhow::Result<Vec<i64>> {
    Ok(store::held_changes(app.store().pool())
        .await?
        .iter()
        .map(|h| h.id)
        .collect())
}

/// The held changes a reconciliation made: approving one runs a reconciliation to carry it out.
async fn held_by_reconcile(app: &App) -> anyhow::Result<BTreeSet<i64>> {
    Ok(store::held_changes(app.store().pool())
        .await?
        .iter()
        .filter(|h| h.source == crate::reconcile::HOLD_SOURCE)
        .map(|h| h.id)
        .collect())
}
