//! Source health, latency and SLA reports, and the audit log.

use crate::api::ApiState;
use crate::api::admin::{Page, Paging, Problem};
use crate::clock::rfc3339 as time;
use crate::clock::to_micros;
use crate::model::Action;
use crate::store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---- health, reports, audit ------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceHealth {
    pub name: String,
    /// `hr` | `ldap` | `scim`
    pub kind: String,
    /// The source's last acknowledged checkpoint (cookie, watermark), when it has one.
    pub checkpoint: Option<String>,
    /// When an HR source's schedule last ran.
    pub last_run_at: Option<String>,
    /// Records set aside from this source (most recent 1000 looked at).
    pub quarantined: usize,
}

/// Every configured source: checkpoint, last run, records set aside.
pub async fn sources(s: &ApiState) -> Result<Vec<SourceHealth>, Problem> {
    let engine = &s.engine;
    let pool = engine.store.pool();
    let quarantine = store::list_quarantine(pool, 1000).await?;
    let config = &engine.config;
    let named = config
        .sources
        .hr
        .keys()
        .map(|n| (n.clone(), "hr"))
        .chain(config.sources.ldap.keys().map(|n| (n.clone(), "ldap")))
        .chain(
            config
                .scim
                .tenants
                .keys()
                .map(|n| (format!("scim:{n}"), "scim")),
        );
    let mut out = Vec::new();
    for (name, kind) in named {
        let last_run_at = if kind == "hr" {
            store::last_run(pool, &format!("hr:{name}"))
                .await?
                .map(time)
        } else {
            None
        };
        out.push(SourceHealth {
            checkpoint: store::checkpoint(pool, &name).await?,
            quarantined: quarantine.iter().filter(|q| q.source == name).count(),
            last_run_at,
            kind: kind.into(),
            name,
        });
    }
    Ok(out)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyRow {
    pub connector: String,
    /// `detect` | `queue` | `dispatch` | `confirm` | `end_to_end`
    pub stage: String,
    pub count: usize,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyReport {
    pub revoke: Vec<LatencyRow>,
    pub issue: Vec<LatencyRow>,
}

/// Latency per connector and stage, from each change's trigger to the vendor's confirmation.
pub async fn latency(s: &ApiState) -> Result<LatencyReport, Problem> {
    let store = &s.engine.store;
    let rows = |r: std::collections::BTreeMap<(String, String), crate::telemetry::Summary>| {
        r.into_iter()
            .map(|((connector, stage), m)| LatencyRow {
                connector,
                stage,
                count: m.count,
                p50_seconds: m.p50,
                p90_seconds: m.p90,
                p99_seconds: m.p99,
                max_seconds: m.max,
            })
            .collect()
    };
    Ok(LatencyReport {
        revoke: rows(crate::telemetry::latency_report(store, Action::Revoke).await?),
        issue: rows(crate::telemetry::latency_report(store, Action::Issue).await?),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SlaConnector {
    pub connector: String,
    pub target_seconds: f64,
    pub objective: f64,
    pub window_days: u32,
    pub total: u64,
    pub met: u64,
    pub missed: u64,
    pub open_overdue: u64,
    /// Share within the target (0..1); absent without revocations.
    pub attainment: Option<f64>,
    pub breached: bool,
}

/// Propagation SLA attainment per connector over its window.
pub async fn sla(s: &ApiState) -> Result<Vec<SlaConnector>, Problem> {
    let engine = &s.engine;
    let now = to_micros(engine.clock.now());
    let rows = crate::telemetry::sla::report(&engine.store, &engine.config, now).await?;
    Ok(rows
        .iter()
        .map(|r| SlaConnector {
            attainment: r.attainment(),
            breached: r.breached(),
            connector: r.connector.clone(),
            target_seconds: r.target_seconds,
            objective: r.objective,
            window_days: r.window_days,
            total: r.total,
            met: r.met,
            missed: r.missed,
            open_overdue: r.open_overdue,
        })
        .collect())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: serde_json::Value,
}

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records about this subject (a person's key, a source, a connector).
    pub subject: Option<String>,
    /// Only records about this target (a door, lock or group).
    pub target: Option<String>,
    /// Only records by this actor (`os:alice`, `operator:bob`, `source:hr`).
    pub actor: Option<String>,
    /// Only this action (`identity.suspended`, `held.approved`, ...).
    pub action: Option<String>,
    /// From this instant (RFC 3339), inclusive.
    pub since: Option<String>,
    /// Until this instant (RFC 3339), exclusive.
    pub until: Option<String>,
}

impl AuditQuery {
    /// The store's filter; an empty field filters nothing (a form sends empty fields).
    pub(crate) fn filter(&self) -> Result<store::audit::AuditFilter, Problem> {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        let instant = |name: &str, v: &Option<String>| -> Result<Option<i64>, Problem> {
            given(v)
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t.trim())
                        .map(|t| to_micros(t.with_timezone(&chrono::Utc)))
                        .map_err(|e| {
                            Problem::bad_request(format!(
                                "`{name}`: `{t}` is not an RFC 3339 time: {e}"
                            ))
                        })
                })
                .transpose()
        };
        Ok(store::audit::AuditFilter {
            subject: given(&self.subject),
            target: given(&self.target),
            actor: given(&self.actor),
            action: given(&self.action),
            since: instant("since", &self.since)?,
            until: instant("until", &self.until)?,
        })
    }
}

/// One page of the audit log, newest first.
pub async fn audit(
    s: &ApiState,
    q: &AuditQuery,
    paging: Paging,
) -> Result<Page<AuditEntry>, Problem> {
    let store = &s.engine.store;
    let filter = q.filter()?;
    let total = crate::audit::count(store, &filter).await?;
    let (limit, offset) = (paging.limit(), paging.offset.unwrap_or(0));
    let items: Vec<AuditEntry> = crate::audit::query(store, &filter, (offset + limit) as i64)
        .await?
        .into_iter()
        .skip(offset)
        .map(|r| AuditEntry {
            seq: r.seq,
            at: time(r.at),
            details: serde_json::from_str(&r.details)
                .unwrap_or(serde_json::Value::String(r.details)),
            actor: r.actor,
            action: r.action,
            subject: r.subject,
        })
        .collect();
    let total = usize::try_from(total).unwrap_or(0);
    let next_offset = (offset + items.len() < total).then_some(offset + items.len());
    Ok(Page {
        items,
        total,
        offset,
        next_offset,
    })
}
