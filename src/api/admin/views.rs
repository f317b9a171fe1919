//! What operators see and do, computed once for both surfaces: the JSON handlers of `/api/v1`
//! (`routes.rs`) and the web console's pages (`crate::api::console`). Each function checks
//! nothing about the caller (the surfaces require roles before calling) and answers a problem
//! document on failure.

use super::{Page, Paging, Problem};
use crate::api::ApiState;
use crate::cli::output::time;
use crate::clock::to_micros;
use crate::model::Action;
use crate::operators::Operator;
use crate::store;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

// ---- people --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PersonSummary {
    pub key: String,
    pub name: Option<String>,
    /// Lifecycle state (`active`, `leaver`, ...).
    pub lifecycle: String,
    pub since: String,
}

impl From<store::IdentityRow> for PersonSummary {
    fn from(i: store::IdentityRow) -> Self {
        Self {
            name: i.attr("name").map(str::to_string),
            lifecycle: i.lifecycle.to_string(),
            since: time(i.lifecycle_since),
            key: i.key,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeoplePage {
    pub items: Vec<PersonSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// People whose key, e-mail or name contains `needle` (at most `limit`), or one page by key
/// after `cursor`.
pub async fn people(
    s: &ApiState,
    needle: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<PeoplePage, Problem> {
    let limit = limit.clamp(1, super::MAX_LIMIT);
    if let Some(needle) = needle.filter(|n| !n.is_empty()) {
        let mut conn = s.engine.store.pool().acquire().await?;
        let found = store::find_identities(&mut conn, needle).await?;
        return Ok(PeoplePage {
            items: found.into_iter().take(limit).map(Into::into).collect(),
            next_cursor: None,
        });
    }
    let after = cursor.unwrap_or_default();
    let rows = store::identities_page(s.engine.store.pool(), after, limit as i64).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.key.clone()))
        .flatten();
    Ok(PeoplePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    })
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Grant {
    pub connector: String,
    pub target: String,
    /// What policy wants: `present` | `absent`.
    pub desired: String,
    /// What the vendor last confirmed: `present` | `absent` | `unknown`.
    pub observed: String,
    /// Where the credential is in its life: `issued` (sent, not yet confirmed), `active`,
    /// `suspended`, `revoking` (revoke sent, not yet confirmed) or `revoked`.
    pub state: String,
    /// The template (or request) that caused it.
    pub template: String,
    pub approved_by: Option<String>,
}

/// A grant's lifecycle state from what policy wants, what the vendor confirmed, whether a
/// suspension withholds it, and what caused it (a temporary request's grant that is gone has
/// `expired`).
pub fn grant_state(desired: &str, observed: &str, suspended: bool, template: &str) -> &'static str {
    match (desired == "present", observed == "present") {
        (true, true) => "active",
        (true, false) => "issued",
        (false, true) => "revoking",
        (false, false) if suspended => "suspended",
        (false, false) if template.starts_with("request:") => "expired",
        (false, false) => "revoked",
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PersonAccess {
    pub person: PersonSummary,
    pub grants: Vec<Grant>,
}

/// What a person (key, e-mail or name) holds, at which vendor, from which template.
pub async fn person_access(s: &ApiState, who: &str) -> Result<PersonAccess, Problem> {
    let engine = &s.engine;
    let mut conn = engine.store.pool().acquire().await?;
    let ident = crate::cli::lookup::person(&mut conn, who)
        .await
        .map_err(|e| Problem::not_found(e.to_string()))?;
    let suspended =
        crate::suspension::Scope::of(&store::suspensions::active_of(&mut conn, &ident.key).await?);
    let policy = engine.policy();
    let grants = store::grants_of(&mut conn, &ident.key)
        .await?
        .into_iter()
        .map(|g| Grant {
            approved_by: policy.approver_of(&g.template).map(str::to_string),
            state: grant_state(
                &g.desired,
                &g.observed,
                suspended.as_ref().is_some_and(|sc| sc.covers(&g.connector)),
                &g.template,
            )
            .to_string(),
            connector: g.connector,
            target: g.target,
            desired: g.desired,
            observed: g.observed,
            template: g.template,
        })
        .collect();
    Ok(PersonAccess {
        person: ident.into(),
        grants,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Holder {
    pub identity: String,
    pub connector: String,
    pub template: String,
    pub desired: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetHolders {
    /// The target's name (a vendor id in the request is resolved to it).
    pub target: String,
    /// Grants confirmed at the vendor.
    pub holders: Vec<Holder>,
    /// Cabinet keys out now, by holder.
    pub cabinet_keys: Vec<String>,
}

/// Who holds a target (lock, group), by its name or the vendor's id.
pub async fn who_has(s: &ApiState, target: &str) -> Result<Vec<TargetHolders>, Problem> {
    Ok(who_has_page(s, target, 0, i64::MAX)
        .await?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// [`who_has`], `limit` holders of each target from `offset`, with each target's total.
pub async fn who_has_page(
    s: &ApiState,
    target: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<(i64, TargetHolders)>, Problem> {
    let pool = s.engine.store.pool();
    let on_record = store::target_on_record(pool, target).await?
        || !store::cabinet_holders(pool, target).await?.is_empty();
    let names = crate::cli::lookup::targets(&s.engine.config, target, on_record);
    if names.is_empty() {
        return Err(Problem::not_found(format!(
            "no target or vendor id `{target}` in any connector's target map, and no grant on record for it"
        )));
    }
    let mut out = Vec::new();
    for name in names {
        let (total, rows) = store::holders_page(pool, &name, offset, limit).await?;
        let holders = rows
            .into_iter()
            .map(|g| Holder {
                identity: g.identity_key,
                connector: g.connector,
                template: g.template,
                desired: g.desired,
            })
            .collect();
        let cabinet_keys = store::cabinet_holders(pool, &name)
            .await?
            .into_iter()
            .map(|k| k.identity_key)
            .collect();
        out.push((
            total,
            TargetHolders {
                target: name,
                holders,
                cabinet_keys,
            },
        ));
    }
    Ok(out)
}

// ---- held changes ----------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct Held {
    pub id: i64,
    pub source: String,
    pub identity: String,
    pub kind: String,
    pub reason: String,
    pub created_at: String,
    /// Who caused it; they cannot approve it (dual control).
    pub requested_by: Option<String>,
}

/// Changes held for approval, optionally from one source only.
pub async fn held(s: &ApiState, source: Option<&str>) -> Result<Vec<Held>, Problem> {
    Ok(store::held_changes(s.engine.store.pool())
        .await?
        .into_iter()
        .filter(|h| source.is_none_or(|src| src == h.source))
        .map(|h| Held {
            id: h.id,
            source: h.source,
            identity: h.key,
            kind: h.kind,
            reason: h.reason,
            created_at: time(h.created_at),
            requested_by: h.requested_by,
        })
        .collect())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    pub id: i64,
    /// `approved` | `rejected`
    pub status: String,
    pub by: String,
    pub revokes_enqueued: u64,
}

/// Approve or reject a held change as `op`; refused (403 `dual-control`) to whoever caused it.
pub async fn decide(
    s: &ApiState,
    op: &Operator,
    id: i64,
    approve: bool,
) -> Result<Decision, Problem> {
    let engine = &s.engine;
    let from_reconcile = store::held_changes(engine.store.pool())
        .await?
        .iter()
        .any(|h| h.id == id && h.source == crate::reconcile::HOLD_SOURCE);
    let by = op.actor();
    let applied = engine.decide(id, approve, &by).await.map_err(|e| match e {
        crate::engine::EngineError::NoSuchHeld(_) => Problem::not_found(e.to_string()),
        crate::engine::EngineError::DualControl { .. } => {
            Problem::new(StatusCode::FORBIDDEN, "dual-control", e.to_string())
        }
        other => Problem::internal(other),
    })?;
    let mut revokes = applied.revokes;
    // Held revocations of a reconciliation are carried out by one, now (as `latchkey approve`).
    if approve && from_reconcile {
        let (_, r) = crate::reconcile::run(engine, "approval")
            .await
            .map_err(Problem::internal)?;
        revokes += r.revokes;
    }
    Ok(Decision {
        id,
        status: if approve { "approved" } else { "rejected" }.into(),
        by,
        revokes_enqueued: revokes,
    })
}

// ---- dead letters ----------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    /// `issue` | `revoke`
    pub action: String,
    pub identity: String,
    pub connector: String,
    pub target: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl From<store::CommandRow> for DeadLetter {
    fn from(c: store::CommandRow) -> Self {
        Self {
            id: c.id,
            action: c.action.to_string(),
            identity: c.identity_key,
            connector: c.connector,
            target: c.target,
            attempts: c.attempts,
            last_error: c.last_error,
        }
    }
}

/// Commands that ran out of attempts, optionally of one connector.
pub async fn dead_letters(
    s: &ApiState,
    connector: Option<&str>,
) -> Result<Vec<DeadLetter>, Problem> {
    let mut conn = s.engine.store.pool().acquire().await?;
    Ok(store::dead_letters(&mut conn, connector, None)
        .await?
        .into_iter()
        .map(DeadLetter::from)
        .collect())
}

// ---- key tasks -------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyTask {
    pub id: i64,
    /// `hand_over` | `return`
    pub kind: String,
    pub identity: String,
    pub connector: String,
    pub target: String,
    pub created_at: String,
    pub due_at: Option<String>,
    pub overdue: bool,
    /// Who recorded it done (on a recorded task).
    pub done_by: Option<String>,
}

fn key_task(t: store::KeyTaskRow, now: i64) -> KeyTask {
    KeyTask {
        id: t.id,
        overdue: t.status == "open" && t.due_at.is_some_and(|d| d <= now),
        due_at: t.due_at.map(time),
        kind: t.kind,
        identity: t.identity_key,
        connector: t.connector,
        target: t.target,
        created_at: time(t.created_at),
        done_by: t.done_by,
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyTaskQuery {
    /// `hand_over` or `return`.
    pub kind: Option<String>,
    /// Only overdue ones.
    pub overdue: Option<bool>,
}

/// Open mechanical key hand-overs and returns, oldest first.
pub async fn key_tasks(s: &ApiState, q: &KeyTaskQuery) -> Result<Vec<KeyTask>, Problem> {
    let now = to_micros(s.engine.clock.now());
    Ok(store::open_key_tasks(s.engine.store.pool())
        .await?
        .into_iter()
        .map(|t| key_task(t, now))
        .filter(|t| q.kind.as_ref().is_none_or(|k| *k == t.kind))
        .filter(|t| q.overdue.is_none_or(|o| o == t.overdue))
        .collect())
}

/// Record a key task (`hand_over` or `return`) done by `op`; a return confirms the revocation.
pub async fn record_key(
    s: &ApiState,
    op: &Operator,
    id: i64,
    kind: &'static str,
) -> Result<KeyTask, Problem> {
    use crate::connectors::manual::{self, KeyError};
    let engine = &s.engine;
    let now = to_micros(engine.clock.now());
    let t = manual::record(
        &engine.store,
        Some(&engine.metrics),
        id,
        kind,
        &op.actor(),
        now,
    )
    .await
    .map_err(|e| match e {
        KeyError::NoSuchTask(_) => Problem::not_found(e.to_string()),
        KeyError::WrongKind { .. } | KeyError::NotOpen { .. } => {
            Problem::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        other => Problem::internal(other),
    })?;
    engine.notify_outbox();
    Ok(key_task(t, now))
}

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

// ---- temporary access requests --------------------------------------------------------------

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccessRequest {
    pub id: i64,
    /// `temporary` or `emergency` (break-glass).
    pub kind: String,
    pub person: String,
    pub connector: String,
    pub target: String,
    pub reason: String,
    pub starts_at: String,
    pub ends_at: String,
    /// `requested` | `approved` | `active` | `expired` | `ended` | `rejected`
    pub status: String,
    pub requested_by: String,
    pub requested_at: String,
    pub decided_by: Option<String>,
    /// Who ended it early, or `schedule` at its end.
    pub closed_by: Option<String>,
    /// An emergency opened by one approver: when another must have reviewed it by.
    pub review_due_at: Option<String>,
    pub reviewed_by: Option<String>,
    pub review: Option<String>,
}

impl From<store::access_requests::RequestRow> for AccessRequest {
    fn from(r: store::access_requests::RequestRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            person: r.identity_key,
            connector: r.connector,
            target: r.target,
            reason: r.reason,
            starts_at: time(r.starts_at),
            ends_at: time(r.ends_at),
            status: r.status,
            requested_by: r.requested_by,
            requested_at: time(r.requested_at),
            decided_by: r.decided_by,
            closed_by: r.closed_by,
            review_due_at: r.review_due_at.map(time),
            reviewed_by: r.reviewed_by,
            review: r.review,
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewRequest {
    /// The person's key, e-mail or name.
    pub person: String,
    pub connector: String,
    /// A target in the connector's target map.
    pub target: String,
    /// When the window opens (RFC 3339; now when absent).
    pub starts_at: Option<String>,
    /// When it closes (RFC 3339), at most 31 days after it opens.
    pub ends_at: String,
    pub reason: String,
}

fn request_problem(e: crate::access_requests::RequestError) -> Problem {
    use crate::access_requests::RequestError as E;
    match e {
        E::Invalid(_) => Problem::bad_request(e.to_string()),
        E::NotFound(_) => Problem::not_found(e.to_string()),
        E::WrongState { .. } => Problem::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        E::DualControl { .. } => Problem::new(StatusCode::FORBIDDEN, "dual-control", e.to_string()),
        other => Problem::internal(other),
    }
}

/// Requests for temporary access, newest first, optionally of one status or person.
pub async fn requests(
    s: &ApiState,
    status: Option<&str>,
    person: Option<&str>,
    limit: usize,
) -> Result<Vec<AccessRequest>, Problem> {
    let limit = limit.clamp(1, super::MAX_LIMIT) as i64;
    let status = status.filter(|v| !v.trim().is_empty());
    let person = person.filter(|v| !v.trim().is_empty());
    Ok(
        store::access_requests::list(s.engine.store.pool(), status, person, limit)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    )
}

/// Ask for temporary access as `op` (nothing is issued before an approver approves).
pub async fn ask(s: &ApiState, op: &Operator, r: &NewRequest) -> Result<AccessRequest, Problem> {
    let instant = |name: &str, v: &str| {
        chrono::DateTime::parse_from_rfc3339(v.trim())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| {
                Problem::bad_request(format!("`{name}`: `{v}` is not an RFC 3339 time: {e}"))
            })
    };
    let starts_at = r
        .starts_at
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|v| instant("starts_at", v))
        .transpose()?;
    let ends_at = instant("ends_at", &r.ends_at)?;
    let key = {
        let mut conn = s.engine.store.pool().acquire().await?;
        crate::cli::lookup::person(&mut conn, r.person.trim())
            .await
            .map_err(|e| Problem::bad_request(e.to_string()))?
            .key
    };
    let ask = crate::access_requests::Ask {
        person: key,
        connector: r.connector.trim().to_string(),
        target: r.target.trim().to_string(),
        starts_at,
        ends_at,
        reason: r.reason.clone(),
    };
    crate::access_requests::ask(&s.engine, &ask, &op.actor())
        .await
        .map(Into::into)
        .map_err(request_problem)
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewEmergency {
    /// The person's key, e-mail or name.
    pub person: String,
    pub connector: String,
    pub target: String,
    /// How long (default `[break_glass] default_minutes`, at most `max_minutes`).
    pub minutes: Option<u32>,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Review {
    /// What happened and whether it was justified.
    pub note: String,
}

/// Open an emergency as `op` (see `crate::access_requests::open_emergency`).
pub async fn open_emergency(
    s: &ApiState,
    op: &Operator,
    e: &NewEmergency,
) -> Result<AccessRequest, Problem> {
    let key = {
        let mut conn = s.engine.store.pool().acquire().await?;
        crate::cli::lookup::person(&mut conn, e.person.trim())
            .await
            .map_err(|e| Problem::bad_request(e.to_string()))?
            .key
    };
    let ask = crate::access_requests::Ask {
        person: key,
        connector: e.connector.trim().to_string(),
        target: e.target.trim().to_string(),
        starts_at: None,
        ends_at: s.engine.clock.now(),
        reason: e.reason.clone(),
    };
    crate::access_requests::open_emergency(&s.engine, &ask, e.minutes, &op.actor())
        .await
        .map(|(r, _)| r.into())
        .map_err(request_problem)
}

/// Record the review of an emergency as `op` (refused to whoever opened it: 403 `dual-control`).
pub async fn review_emergency(
    s: &ApiState,
    op: &Operator,
    id: i64,
    note: &str,
) -> Result<AccessRequest, Problem> {
    crate::access_requests::review(&s.engine, id, note, &op.actor())
        .await
        .map(Into::into)
        .map_err(request_problem)
}

/// Approve or reject a request as `op` (refused to whoever asked: 403 `dual-control`).
pub async fn decide_request(
    s: &ApiState,
    op: &Operator,
    id: i64,
    approve: bool,
) -> Result<AccessRequest, Problem> {
    crate::access_requests::decide(&s.engine, id, approve, &op.actor())
        .await
        .map(|(r, _)| r.into())
        .map_err(request_problem)
}

/// End a request early as `op`.
pub async fn end_request(s: &ApiState, op: &Operator, id: i64) -> Result<AccessRequest, Problem> {
    crate::access_requests::end(&s.engine, id, &op.actor())
        .await
        .map(|(r, _)| r.into())
        .map_err(request_problem)
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewVisitor {
    /// A key of their own (`V-2026-0042`).
    pub key: String,
    pub name: String,
    pub email: Option<String>,
    pub site: Option<String>,
    /// The person they visit (key).
    pub host: String,
    /// Their last day (YYYY-MM-DD), at most 31 days ahead.
    #[schema(value_type = String, format = Date)]
    pub until: chrono::NaiveDate,
    pub reason: String,
}

/// Record a visitor as `op` (the desk); doors come from requests.
pub async fn add_visitor(
    s: &ApiState,
    op: &Operator,
    v: &NewVisitor,
) -> Result<PersonSummary, Problem> {
    let visitor = crate::visitors::Visitor {
        key: v.key.trim().to_string(),
        name: v.name.clone(),
        email: v.email.clone(),
        site: v.site.clone(),
        host: v.host.trim().to_string(),
        until: v.until,
        reason: v.reason.clone(),
    };
    crate::visitors::add(&s.engine, &visitor, &op.actor())
        .await
        .map_err(request_problem)?;
    let mut conn = s.engine.store.pool().acquire().await?;
    store::get_identity(&mut conn, &visitor.key)
        .await?
        .map(Into::into)
        .ok_or_else(|| Problem::internal("the visitor was not recorded"))
}

// ---- door migrations --------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DoorMigration {
    pub id: i64,
    pub target: String,
    pub from: String,
    pub to: String,
    pub to_target: String,
    /// `open` (old credentials still out) | `closed`
    pub status: String,
    pub started_by: String,
    pub started_at: String,
    pub closed_at: Option<String>,
    pub new_confirmed: i64,
    pub new_wanted: i64,
    pub old_outstanding: i64,
    pub keys_returned: i64,
    pub keys_outstanding: i64,
}

/// Every door migration with its progress.
pub async fn migrations(s: &ApiState) -> Result<Vec<DoorMigration>, Problem> {
    let pool = s.engine.store.pool();
    let mut out = Vec::new();
    for m in store::door_moves::all(pool).await? {
        let p = store::door_moves::progress(pool, &m).await?;
        out.push(DoorMigration {
            id: m.id,
            target: m.from_target,
            from: m.from_connector,
            to: m.to_connector,
            to_target: m.to_target,
            status: m.status,
            started_by: m.started_by,
            started_at: time(m.started_at),
            closed_at: m.closed_at.map(time),
            new_confirmed: p.new_confirmed,
            new_wanted: p.new_wanted,
            old_outstanding: p.old_outstanding,
            keys_returned: p.returns_done,
            keys_outstanding: p.returns_open,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewMigration {
    /// The door's target name at the old connector.
    pub target: String,
    pub from: String,
    pub to: String,
    /// Its name at the new connector (default: the same).
    pub to_target: Option<String>,
    /// Start it; false (default) only plans.
    #[serde(default)]
    pub apply: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MigrationPlan {
    /// Set when it was started.
    pub id: Option<i64>,
    /// Everyone entitled: each gets the new credential.
    pub holders: Vec<String>,
    /// Old credentials out (a mechanical key each gets a return task).
    pub old_out: usize,
    pub issues_enqueued: u64,
    pub revokes_enqueued: u64,
}

/// Plan a door migration, or start it as `op` with `apply`.
pub async fn migrate(
    s: &ApiState,
    op: &Operator,
    m: &NewMigration,
) -> Result<MigrationPlan, Problem> {
    use crate::door_migration::{self, Door, MoveError};
    let door = Door {
        from_connector: m.from.trim().to_string(),
        from_target: m.target.trim().to_string(),
        to_connector: m.to.trim().to_string(),
        to_target: m
            .to_target
            .clone()
            .unwrap_or_else(|| m.target.clone())
            .trim()
            .to_string(),
    };
    let refused = |e: MoveError| match e {
        MoveError::Invalid(_) => Problem::bad_request(e.to_string()),
        other => Problem::internal(other),
    };
    if !m.apply {
        let plan = door_migration::plan(&s.engine, &door)
            .await
            .map_err(refused)?;
        return Ok(MigrationPlan {
            id: None,
            holders: plan.holders,
            old_out: plan.old_out,
            issues_enqueued: 0,
            revokes_enqueued: 0,
        });
    }
    let (id, plan, applied) = door_migration::start(&s.engine, &door, &op.actor())
        .await
        .map_err(refused)?;
    Ok(MigrationPlan {
        id: Some(id),
        holders: plan.holders,
        old_out: plan.old_out,
        issues_enqueued: applied.issues,
        revokes_enqueued: applied.revokes,
    })
}

#[cfg(test)]
mod tests {
    use super::grant_state;

    #[test]
    fn a_grant_state_follows_policy_the_vendor_and_suspension() {
        let door = "department-door";
        assert_eq!(grant_state("present", "present", false, door), "active");
        assert_eq!(grant_state("present", "absent", false, door), "issued");
        assert_eq!(grant_state("present", "unknown", false, door), "issued");
        assert_eq!(grant_state("absent", "present", true, door), "revoking");
        assert_eq!(grant_state("absent", "absent", true, door), "suspended");
        assert_eq!(grant_state("absent", "absent", false, door), "revoked");
        assert_eq!(
            grant_state("absent", "absent", false, "request:7"),
            "expired"
        );
        assert_eq!(
            grant_state("present", "present", false, "request:7"),
            "active"
        );
    }
}
