//! Everything that runs on a schedule rather than on an input: HR files on their crontab,
//! effective-dated changes, template reloads and the reconciliation they make due, drift checks,
//! revocation drills, key-cabinet events, overdue mechanical keys and audit retention.
//!
//! One loop runs them all, each only on the replica holding its lease, and one rule ([`due`])
//! says when a crontab job is due: never run, or its next occurrence after the last run has come.

pub mod cabinet_events;
pub mod drill;
pub mod retention;

use crate::clock::{from_micros, to_micros};
use crate::connectors::Connectors;
use crate::engine::{Engine, EngineError};
use crate::leases::Leases;
use crate::store::{self, Store, StoreError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why a scheduled job did not run to its end. The loop logs it and tries again on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("job `{job}`: schedule `{schedule}`: {error}")]
    Schedule {
        job: String,
        schedule: String,
        #[source]
        error: croner::errors::CronError,
    },
    #[error(transparent)]
    Keys(#[from] crate::connectors::manual::KeyError),
    #[error(transparent)]
    Drill(#[from] drill::DrillError),
    #[error("audit log broken at record {seq} ({reason}): not pruned; see `latchkey audit verify`")]
    AuditBroken { seq: i64, reason: String },
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;

/// `job_runs` names of the crontab jobs.
const DRIFT: &str = "drift";
const DRILL: &str = "drill";

/// `job_runs` name of an HR source's scheduled read.
pub fn hr_job(source: &str) -> String {
    format!("hr:{source}")
}

/// Whether a job on `schedule` (a crontab line) is due at `now`: it never ran, or the schedule's
/// next occurrence after its last run has come (so a run missed while stopped is caught up once).
pub async fn due(store: &Store, job: &str, schedule: &str, now: DateTime<Utc>) -> Result<bool> {
    let Some(last) = store::last_run(store.pool(), job).await? else {
        return Ok(true);
    };
    let cron: croner::Cron = schedule.parse().map_err(|error| JobError::Schedule {
        job: job.to_string(),
        schedule: schedule.to_string(),
        error,
    })?;
    Ok(cron
        .find_next_occurrence(&from_micros(last), false)
        .is_ok_and(|next| next <= now))
}

/// Record that `job` ran at `now`.
pub async fn ran(store: &Store, job: &str, now: DateTime<Utc>) -> Result<()> {
    let mut tx = store.begin_write().await?;
    store::set_last_run(&mut tx, job, to_micros(now)).await?;
    tx.commit().await?;
    Ok(())
}

/// What the jobs work on; the assembly (`crate::app`) hands it over.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub engine: Arc<Engine>,
    pub connectors: Connectors,
    pub leases: Arc<Leases>,
    /// For overdue key alerts.
    pub webhooks: reqwest::Client,
}

impl Jobs {
    /// Compare every vendor's grants with the ledger once (see [`crate::drift`]).
    pub async fn drift_check(&self) -> Result<crate::drift::DriftReport> {
        Ok(crate::drift::check(&self.engine, &self.connectors).await?)
    }

    /// Alert on mechanical key returns past their due time, and refresh the key-return gauges.
    pub async fn check_overdue_keys(&self) -> Result<crate::connectors::manual::OverdueReport> {
        let now = to_micros(self.engine.clock.now());
        Ok(crate::connectors::manual::check_overdue(
            &self.engine.store,
            &self.engine.config,
            &self.engine.metrics,
            &self.webhooks,
            now,
        )
        .await?)
    }

    /// Run every job on its schedule until `shutdown`, each on the replica holding its lease.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let engine = &self.engine;
        let tick = Duration::from_millis(engine.config.engine.tick_millis.max(10));
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let now = engine.clock.now();
            let leases = &self.leases;
            for (name, src) in &engine.config.sources.hr {
                // Only the replica holding the source's lease follows it.
                let lease = crate::leases::hr_source(name);
                if !leases.holds(&lease) {
                    continue;
                }
                // A drop directory is looked at every tick, so a new file is applied as it lands; the
                // schedule re-reads a single file (and catches up a run missed while stopped).
                let job = hr_job(name);
                let due =
                    src.drop_dir.is_some() || due(&engine.store, &job, &src.schedule, now).await?;
                if !due {
                    continue;
                }
                // Dropped where it stands if the lease is lost: each chunk committed with its
                // checkpoint, so the next holder carries on from there.
                match leases.while_held(&lease, engine.run_hr_source(name)).await {
                    None => continue,
                    Some(Ok(reports)) => reports.iter().for_each(log_report),
                    Some(Err(e)) => {
                        tracing::error!(source = %name, error = %e, "HR feed not applied")
                    }
                }
                ran(&engine.store, &job, now).await?;
            }
            if let Some(Err(e)) = leases
                .while_held(crate::leases::EFFECTIVE_DATED, engine.tick())
                .await
            {
                tracing::error!(error = %e, "effective-dated changes not applied");
            }
            // Every replica follows the templates file; the one holding the reconciliation's lease
            // then carries the change out to everyone.
            if let Err(e) = self.reload_policy(now).await {
                tracing::error!(error = %e, "templates reload not recorded");
            }
            if let Some(Err(e)) = leases
                .while_held(crate::leases::RECONCILE, self.reconcile_if_due(now))
                .await
            {
                tracing::error!(error = %e, "reconciliation against policy failed");
            }
            if let Err(e) = self.scheduled_checks(now).await {
                tracing::error!(error = %e, "drift or overdue key check failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Re-read the templates file while running: an edit takes effect without a restart, through
    /// the reconciliation its new fingerprint makes due; a file that does not load is refused,
    /// logged, audited and shown by `latchkey_policy_reload_refused`, and the last good policy
    /// stays in force.
    async fn reload_policy(&self, now: DateTime<Utc>) -> Result<()> {
        let (action, details) = match self.engine.reload_policy() {
            crate::live_policy::PolicyReload::Unchanged => return Ok(()),
            crate::live_policy::PolicyReload::Reloaded { from, to } => {
                tracing::info!(%from, %to, "templates changed on disk: new policy in force");
                (
                    "policy.reloaded",
                    serde_json::json!({"from": from, "to": to}),
                )
            }
            crate::live_policy::PolicyReload::Refused { digest, error } => {
                tracing::error!(%error, "templates changed on disk but do not load; the last good policy stays in force");
                (
                    "policy.reload_refused",
                    serde_json::json!({"digest": digest, "error": error}),
                )
            }
        };
        let mut tx = self.engine.store.begin_write().await?;
        let templates = self.engine.config.policy.templates.display().to_string();
        crate::audit::append(
            &mut tx,
            to_micros(now),
            "policy",
            action,
            &templates,
            &details,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A full reconciliation of every identity when one is due: at start when what decides desired
    /// state changed, on `[reconcile] schedule`, and after held revocations were approved.
    async fn reconcile_if_due(&self, now: DateTime<Utc>) -> Result<()> {
        let Some(why) = crate::reconcile::due(&self.engine, now).await? else {
            return Ok(());
        };
        let (plan, r) = crate::reconcile::run(&self.engine, &why).await?;
        tracing::info!(
            why,
            identities = plan.identities,
            issues = r.issues,
            revokes = r.revokes,
            held = r.held,
            "reconciled every identity against policy"
        );
        if let Some(reason) = &plan.hold_reason {
            tracing::warn!(%reason, "revocations held for approval (latchkey status, latchkey approve)");
        }
        Ok(())
    }

    /// The drift check on its schedule, and overdue key returns on every tick (one small query).
    async fn scheduled_checks(&self, now: DateTime<Utc>) -> Result<()> {
        let leases = &self.leases;
        if let Some(r) = leases
            .while_held(crate::leases::OVERDUE_KEYS, self.check_overdue_keys())
            .await
        {
            r?;
        }
        leases
            .while_held(
                crate::leases::CABINET_EVENTS,
                cabinet_events::poll_all(&self.engine, &self.webhooks),
            )
            .await;
        let drills = leases
            .while_held(crate::leases::DRILLS, self.run_due_drills(now))
            .await
            .transpose()?
            .unwrap_or_default();
        if let Some(r) = leases
            .while_held(crate::leases::DRIFT, self.drift_if_due(now))
            .await
        {
            r?;
        }
        if let Some(Err(e)) = leases
            .while_held(retention::LEASE, retention::if_due(&self.engine))
            .await
        {
            tracing::error!(error = %e, "audit retention pass failed");
        }
        for (connector, report) in drills {
            if report.ok() {
                tracing::info!(connector = %connector, "scheduled revocation drill passed");
            } else {
                tracing::error!(connector = %connector, report = %report.render(), "scheduled revocation drill FAILED");
            }
        }
        Ok(())
    }

    /// The drift check, when `[drift] schedule` says one is due.
    async fn drift_if_due(&self, now: DateTime<Utc>) -> Result<()> {
        let Some(schedule) = self
            .engine
            .config
            .drift
            .schedule
            .as_ref()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(());
        };
        if due(&self.engine.store, DRIFT, schedule, now).await? {
            let report = self.drift_check().await?;
            if !report.findings.is_empty() {
                tracing::warn!(
                    findings = report.findings.len(),
                    "drift check found differences"
                );
            }
            ran(&self.engine.store, DRIFT, now).await?;
        }
        Ok(())
    }

    /// Revocation drills on `[telemetry.drill] schedule`: every connector with a `drill_target`,
    /// when the schedule says a run is due (a run missed while stopped is caught up once).
    pub async fn run_due_drills(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, drill::DrillReport)>> {
        let config = &self.engine.config;
        let Some(schedule) = config
            .telemetry
            .drill
            .as_ref()
            .and_then(|d| d.schedule.as_ref())
        else {
            return Ok(Vec::new());
        };
        if !due(&self.engine.store, DRILL, schedule, now).await? {
            return Ok(Vec::new());
        }
        // Recorded first: a drill that hangs on a dead vendor must not be started again every tick.
        ran(&self.engine.store, DRILL, now).await?;
        let mut out = Vec::new();
        for (name, cc) in &config.connectors {
            if cc.drill_target.is_none() {
                continue;
            }
            let Some(connector) = self.connectors.get(name) else {
                continue;
            };
            let report = drill::run(&self.engine, connector, None).await?;
            out.push((name.clone(), report));
        }
        Ok(out)
    }
}

/// An HR feed applied, in the log.
pub fn log_report(r: &crate::engine::FeedReport) {
    // A file set aside was logged as an error where it happened; it was not applied.
    if r.rejected.is_some() {
        return;
    }
    tracing::info!(
        source = %r.source, file = %r.file, rows = r.rows, unchanged = r.unchanged, joiners = r.joiners,
        movers = r.movers, leavers = r.leavers, rehires = r.rehires, quarantined = r.quarantined,
        held = r.held, issues = r.issues, revokes = r.revokes, skipped = r.skipped_same_file,
        absent = r.absent, released = r.released,
        "HR feed applied"
    );
}
