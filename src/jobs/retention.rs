//! Retention: `[audit] retain_days` prunes older records once a day (one replica, under the
//! `job:audit-retention` lease). The last pruned record's seq and hash become the anchor, so the
//! records kept still verify; records a forwarding sink has not had yet are kept.

use crate::audit::{self, Pruned, Verdict};
use crate::clock::to_micros;
use crate::engine::Engine;

/// The lease of the retention job.
pub const LEASE: &str = "job:audit-retention";
/// `job_runs` name of the last pass.
const JOB: &str = "audit-retention";
const DAY_MICROS: i64 = 86_400_000_000;

/// Prune now: records older than `days`, never past what a forwarding sink has not had. A chain
/// that does not verify is not pruned (that would move the evidence of tampering out of sight).
pub async fn run_once(engine: &Engine, days: u32) -> super::Result<Pruned> {
    if let Verdict::Broken { seq, reason } = audit::verify(&engine.store).await? {
        return Err(super::JobError::AuditBroken { seq, reason });
    }
    let now = to_micros(engine.clock.now());
    let before = now - i64::from(days) * DAY_MICROS;
    let keep_from = audit::forward::slowest_cursor(engine).await?.map(|c| c + 1);
    let pruned = audit::prune(&engine.store, before, keep_from, now).await?;
    let mut tx = engine.store.begin_write().await?;
    crate::store::set_last_run(&mut tx, JOB, now).await?;
    tx.commit().await?;
    Ok(pruned)
}

/// The daily pass, when `retain_days` is set and a day has gone by since the last one.
pub async fn if_due(engine: &Engine) -> super::Result<()> {
    let Some(days) = engine.config.audit.retain_days else {
        return Ok(());
    };
    let now = to_micros(engine.clock.now());
    let last = crate::store::last_run(engine.store.pool(), JOB).await?;
    if last.is_some_and(|l| now - l < DAY_MICROS) {
        return Ok(());
    }
    let p = run_once(engine, days).await?;
    tracing::info!(
        records = p.records,
        anchor = p.anchor_seq,
        "audit retention pass"
    );
    Ok(())
}
