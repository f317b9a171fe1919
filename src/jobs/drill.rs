//! Revocation drills: a canary identity (configured, never a real person) is granted a target at
//! the vendor and revoked again through the connector, each step read back from the vendor, and every
//! stage timed. A broken vendor path (credentials, profile, vendor outage) shows up here, in its own
//! metric series, before a real leaver depends on it.
//!
//! The drill drives the connector directly rather than the outbox: the canary must not enter the
//! grant ledger or the SLA figures of real people.

use crate::audit;
use crate::clock::to_micros;
use crate::config::DrillConfig;
use crate::connectors::{Connector, ConnectorError, GrantRequest, Outcome};
use crate::engine::Engine;
use crate::model::{Action, PersonRef};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stages in the order a drill runs them.
pub const DRILL_STAGES: [&str; 5] = [
    "issue_dispatch",
    "issue_confirm",
    "revoke_dispatch",
    "revoke_confirm",
    "revoke_end_to_end",
];

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no [telemetry.drill] canary configured")]
    NoCanary,
    #[error("connector `{0}` is not configured")]
    UnknownConnector(String),
    #[error(
        "connector `{0}` has no drill target: set connectors.{0}.drill_target or pass --target"
    )]
    NoTarget(String),
}

#[derive(Debug, Clone)]
pub struct DrillReport {
    pub connector: String,
    pub target: String,
    /// Stages that completed, in order.
    pub stages: Vec<(&'static str, f64)>,
    /// The stage that failed and why.
    pub failure: Option<(&'static str, String)>,
}

impl DrillReport {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "Revocation drill: connector {}, target {}\n",
            self.connector, self.target
        );
        for (stage, secs) in &self.stages {
            out.push_str(&format!("  {stage:<18} {:>10.1} ms\n", secs * 1000.0));
        }
        match &self.failure {
            None => out.push_str("  result: ok\n"),
            Some((stage, why)) => out.push_str(&format!("  FAILED at {stage}: {why}\n")),
        }
        out
    }
}

/// Run one drill on `connector` for `target` (default: the connector's `drill_target`).
pub async fn run(
    engine: &Engine,
    connector: &Arc<dyn Connector>,
    target: Option<&str>,
) -> Result<DrillReport, DrillError> {
    let config = &engine.config;
    let canary: &DrillConfig = config
        .telemetry
        .drill
        .as_ref()
        .ok_or(DrillError::NoCanary)?;
    let name = connector.name().to_string();
    let cc = config
        .connectors
        .get(&name)
        .ok_or_else(|| DrillError::UnknownConnector(name.clone()))?;
    let target = target
        .map(str::to_string)
        .or_else(|| cc.drill_target.clone())
        .ok_or_else(|| DrillError::NoTarget(name.clone()))?;
    let mut req = GrantRequest {
        person: PersonRef {
            key: canary.person.clone(),
            name: canary.name.clone(),
            email: canary.email.clone(),
            attrs: Default::default(),
        },
        person_ref: None,
        target: target.clone(),
        grant_ref: None,
        credential: "app".to_string(),
        window: None,
        valid_until: None,
        timezone: config.timezone_of(None),
    };
    let mut report = DrillReport {
        connector: name.clone(),
        target,
        stages: Vec::new(),
        failure: None,
    };
    if let Err((stage, e)) = steps(connector.as_ref(), &mut req, &mut report).await {
        report.failure = Some((stage, e.to_string()));
    }
    let now = engine.clock.now();
    engine.metrics.drill_finished(
        &name,
        report.ok(),
        &report.stages,
        to_micros(now) as f64 / 1e6,
    );
    // Auditors see drills next to real grants; a failure to record one must not hide its result.
    if let Err(e) = record(engine, &report, to_micros(now)).await {
        tracing::warn!(connector = %name, error = %e, "drill not recorded in the audit log");
    }
    Ok(report)
}

async fn record(
    engine: &Engine,
    report: &DrillReport,
    now: i64,
) -> Result<(), crate::store::StoreError> {
    let mut tx = engine.store.begin_write().await?;
    audit::append(
        &mut tx,
        now,
        "drill",
        if report.ok() { "drill.ok" } else { "drill.failed" },
        &report.connector,
        &serde_json::json!({
            "target": report.target,
            "stages_ms": report.stages.iter().map(|(s, v)| (s.to_string(), v * 1000.0)).collect::<std::collections::BTreeMap<_, _>>(),
            "failure": report.failure.as_ref().map(|(s, e)| format!("{s}: {e}")),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

type StepResult = Result<(), (&'static str, ConnectorError)>;

async fn steps(c: &dyn Connector, req: &mut GrantRequest, report: &mut DrillReport) -> StepResult {
    let started = Instant::now();
    let t = Instant::now();
    let o = c.issue(req).await.map_err(|e| ("issue_dispatch", e))?;
    learn(req, &o);
    report
        .stages
        .push(("issue_dispatch", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    read_back(c, req, Action::Issue)
        .await
        .map_err(|e| ("issue_confirm", e))?;
    report
        .stages
        .push(("issue_confirm", t.elapsed().as_secs_f64()));
    let revoke_started = Instant::now();
    let o = c.revoke(req).await.map_err(|e| ("revoke_dispatch", e))?;
    learn(req, &o);
    report
        .stages
        .push(("revoke_dispatch", revoke_started.elapsed().as_secs_f64()));
    let t = Instant::now();
    read_back(c, req, Action::Revoke)
        .await
        .map_err(|e| ("revoke_confirm", e))?;
    report
        .stages
        .push(("revoke_confirm", t.elapsed().as_secs_f64()));
    report
        .stages
        .push(("revoke_end_to_end", revoke_started.elapsed().as_secs_f64()));
    tracing::debug!(total_s = started.elapsed().as_secs_f64(), "drill finished");
    Ok(())
}

fn learn(req: &mut GrantRequest, o: &Outcome) {
    let (person, grant) = o.refs();
    if let Some(p) = person {
        req.person_ref = Some(p.to_string());
    }
    if let Some(g) = grant {
        req.grant_ref = Some(g.to_string());
    }
}

/// Ask the vendor until it shows the result of `action`, within the connector's confirmation
/// deadline. Always at least one read: the drill proves what the vendor holds, not what it said.
async fn read_back(
    c: &dyn Connector,
    req: &mut GrantRequest,
    action: Action,
) -> Result<(), ConnectorError> {
    let policy = c.retry_policy();
    let started = Instant::now();
    let mut wait = policy.confirm_recheck.max(Duration::from_millis(10));
    loop {
        match c.confirm(req, action).await? {
            o @ Outcome::Confirmed { .. } => {
                learn(req, &o);
                return Ok(());
            }
            Outcome::Pending { .. } if started.elapsed() < policy.confirm_deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(policy.max);
            }
            Outcome::Pending { .. } => {
                return Err(ConnectorError::Transient {
                    vendor: c.name().to_string(),
                    message: format!(
                        "the vendor did not show the {} within {} s",
                        action.as_str(),
                        policy.confirm_deadline.as_secs()
                    ),
                    retry_after: None,
                });
            }
        }
    }
}
