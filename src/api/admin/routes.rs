//! The `/api/v1` handlers: each checks its caller's role, then calls what the CLI commands call.

use super::{AdminState, Caller, Page, Paging, Problem};
use crate::cli::output::time;
use crate::clock::to_micros;
use crate::model::Action;
use crate::operators::Role;
use crate::store;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type Answer<T> = Result<Json<T>, Problem>;

/// Every route, in one place, so the OpenAPI document lists each one.
pub(super) fn all(router: OpenApiRouter<AdminState>) -> OpenApiRouter<AdminState> {
    router
        .routes(routes!(list_people))
        .routes(routes!(person))
        .routes(routes!(who_has))
        .routes(routes!(list_held))
        .routes(routes!(approve_held))
        .routes(routes!(reject_held))
        .routes(routes!(list_dead_letters))
        .routes(routes!(redrive))
        .routes(routes!(list_key_tasks))
        .routes(routes!(key_handed_over))
        .routes(routes!(key_returned))
        .routes(routes!(sources))
        .routes(routes!(latency_report))
        .routes(routes!(sla_report))
        .routes(routes!(audit))
}

// ---- people --------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeopleQuery {
    /// People per page (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only people whose key, e-mail or name contains this (not paged).
    pub q: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeoplePage {
    pub items: Vec<PersonSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// People, by key.
#[utoipa::path(get, path = "/api/v1/people", params(PeopleQuery), tag = "people",
    description = "Role: viewer.",
    responses((status = 200, body = PeoplePage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_people(
    caller: Caller,
    State(s): State<AdminState>,
    Query(q): Query<PeopleQuery>,
) -> Answer<PeoplePage> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100).clamp(1, super::MAX_LIMIT);
    if let Some(needle) = q.q.as_deref().filter(|n| !n.is_empty()) {
        let mut conn = s.api.engine.store.pool().acquire().await?;
        let found = store::find_identities(&mut conn, needle).await?;
        return Ok(Json(PeoplePage {
            items: found.into_iter().take(limit).map(Into::into).collect(),
            next_cursor: None,
        }));
    }
    let after = q.cursor.unwrap_or_default();
    let rows = store::identities_page(s.api.engine.store.pool(), &after, limit as i64).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.key.clone()))
        .flatten();
    Ok(Json(PeoplePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Grant {
    pub connector: String,
    pub target: String,
    /// What policy wants: `present` | `absent`.
    pub desired: String,
    /// What the vendor last confirmed: `present` | `absent` | `unknown`.
    pub observed: String,
    /// The template (or request) that caused it.
    pub template: String,
    pub approved_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PersonAccess {
    pub person: PersonSummary,
    pub grants: Vec<Grant>,
}

/// What a person (key, e-mail or name) holds, at which vendor, from which template.
#[utoipa::path(get, path = "/api/v1/people/{person}", tag = "people",
    params(("person" = String, Path, description = "Correlation key, e-mail or full name")),
    description = "Role: viewer.",
    responses((status = 200, body = PersonAccess), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn person(
    caller: Caller,
    State(s): State<AdminState>,
    Path(who): Path<String>,
) -> Answer<PersonAccess> {
    caller.require(Role::Viewer)?;
    let engine = &s.api.engine;
    let mut conn = engine.store.pool().acquire().await?;
    let ident = crate::cli::lookup::person(&mut conn, &who)
        .await
        .map_err(|e| Problem::not_found(e.to_string()))?;
    let policy = engine.policy();
    let grants = store::grants_of(&mut conn, &ident.key)
        .await?
        .into_iter()
        .map(|g| Grant {
            approved_by: policy.approver_of(&g.template).map(str::to_string),
            connector: g.connector,
            target: g.target,
            desired: g.desired,
            observed: g.observed,
            template: g.template,
        })
        .collect();
    Ok(Json(PersonAccess {
        person: ident.into(),
        grants,
    }))
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
#[utoipa::path(get, path = "/api/v1/targets/{target}/holders", tag = "people",
    params(("target" = String, Path, description = "Target name or the vendor's id for it")),
    description = "Role: viewer.",
    responses((status = 200, body = Vec<TargetHolders>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn who_has(
    caller: Caller,
    State(s): State<AdminState>,
    Path(target): Path<String>,
) -> Answer<Vec<TargetHolders>> {
    caller.require(Role::Viewer)?;
    let pool = s.api.engine.store.pool();
    let on_record = !store::grants_on_target(pool, &target).await?.is_empty()
        || !store::cabinet_holders(pool, &target).await?.is_empty();
    let names = crate::cli::lookup::targets(&s.api.engine.config, &target, on_record);
    if names.is_empty() {
        return Err(Problem::not_found(format!(
            "no target or vendor id `{target}` in any connector's target map, and no grant on record for it"
        )));
    }
    let mut out = Vec::new();
    for name in names {
        let holders = store::grants_on_target(pool, &name)
            .await?
            .into_iter()
            .filter(|g| g.observed == "present")
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
        out.push(TargetHolders {
            target: name,
            holders,
            cabinet_keys,
        });
    }
    Ok(Json(out))
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeldQuery {
    /// Only changes held from this source (`hr`, `reconcile`, ...).
    pub source: Option<String>,
}

/// Changes held for approval (mass disappearances, mass revocations of a policy change).
#[utoipa::path(get, path = "/api/v1/held-changes", params(Paging, HeldQuery), tag = "approvals",
    description = "Role: viewer.",
    responses((status = 200, body = Page<Held>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_held(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<HeldQuery>,
) -> Answer<Page<Held>> {
    caller.require(Role::Viewer)?;
    let held = store::held_changes(s.api.engine.store.pool())
        .await?
        .into_iter()
        .filter(|h| q.source.as_ref().is_none_or(|src| *src == h.source))
        .map(|h| Held {
            id: h.id,
            source: h.source,
            identity: h.key,
            kind: h.kind,
            reason: h.reason,
            created_at: time(h.created_at),
            requested_by: h.requested_by,
        })
        .collect();
    Ok(Json(paging.page(held)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Decision {
    pub id: i64,
    /// `approved` | `rejected`
    pub status: String,
    pub by: String,
    pub revokes_enqueued: u64,
}

async fn decide(s: &AdminState, caller: &Caller, id: i64, approve: bool) -> Answer<Decision> {
    let op = caller.require(Role::Approver)?;
    let engine = &s.api.engine;
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
    Ok(Json(Decision {
        id,
        status: if approve { "approved" } else { "rejected" }.into(),
        by,
        revokes_enqueued: revokes,
    }))
}

/// Approve a held change. Refused (403, `dual-control`) to whoever caused it.
#[utoipa::path(post, path = "/api/v1/held-changes/{id}/approve", tag = "approvals",
    params(("id" = i64, Path)), description = "Role: approver.",
    responses((status = 200, body = Decision), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn approve_held(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<Decision> {
    decide(&s, &caller, id, true).await
}

/// Reject a held change: nothing it would have revoked is revoked.
#[utoipa::path(post, path = "/api/v1/held-changes/{id}/reject", tag = "approvals",
    params(("id" = i64, Path)), description = "Role: approver.",
    responses((status = 200, body = Decision), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn reject_held(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<Decision> {
    decide(&s, &caller, id, false).await
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectorQuery {
    /// Only this connector's.
    pub connector: Option<String>,
}

/// Commands that ran out of attempts (revocations first to look at).
#[utoipa::path(get, path = "/api/v1/dead-letters", params(Paging, ConnectorQuery), tag = "recovery",
    description = "Role: viewer.",
    responses((status = 200, body = Page<DeadLetter>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_dead_letters(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<ConnectorQuery>,
) -> Answer<Page<DeadLetter>> {
    caller.require(Role::Viewer)?;
    let mut conn = s.api.engine.store.pool().acquire().await?;
    let dead = store::dead_letters(&mut conn, q.connector.as_deref(), None)
        .await?
        .into_iter()
        .map(DeadLetter::from)
        .collect();
    Ok(Json(paging.page(dead)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RedriveRequest {
    /// Dead letter ids; every one must be a dead letter, or nothing moves.
    #[serde(default)]
    pub ids: Vec<i64>,
    /// Every dead letter (of `connector`, when given) instead of `ids`.
    #[serde(default)]
    pub all: bool,
    pub connector: Option<String>,
}

/// Put dead letters back in the queue (audited with the operator).
#[utoipa::path(post, path = "/api/v1/dead-letters/redrive", tag = "recovery",
    request_body = RedriveRequest, description = "Role: admin.",
    responses((status = 200, body = Vec<DeadLetter>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn redrive(
    caller: Caller,
    State(s): State<AdminState>,
    Json(req): Json<RedriveRequest>,
) -> Answer<Vec<DeadLetter>> {
    let op = caller.require(Role::Admin)?;
    use crate::dispatch::recovery::{RedriveError, Selection};
    let connector = req.connector.as_deref();
    let selection = match (req.all, req.ids.is_empty()) {
        (true, true) => Selection::All {
            connector,
            action: None,
        },
        (false, false) => Selection::Ids {
            ids: &req.ids,
            connector,
        },
        _ => return Err(Problem::bad_request("give either `ids` or `all: true`")),
    };
    let engine = &s.api.engine;
    let now = to_micros(engine.clock.now());
    let moved =
        crate::dispatch::recovery::redrive(&engine.store, now, &op.actor(), "admin API", selection)
            .await
            .map_err(|e| match e {
                RedriveError::NotFound { .. } => Problem::not_found(e.to_string()),
                other => Problem::internal(other),
            })?;
    engine.notify_outbox();
    Ok(Json(moved.into_iter().map(DeadLetter::from).collect()))
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyTaskQuery {
    /// `hand_over` or `return`.
    pub kind: Option<String>,
    /// Only overdue ones.
    pub overdue: Option<bool>,
}

/// Open mechanical key hand-overs and returns, oldest first.
#[utoipa::path(get, path = "/api/v1/key-tasks", params(Paging, KeyTaskQuery), tag = "keys",
    description = "Role: viewer.",
    responses((status = 200, body = Page<KeyTask>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_key_tasks(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<KeyTaskQuery>,
) -> Answer<Page<KeyTask>> {
    caller.require(Role::Viewer)?;
    let now = to_micros(s.api.engine.clock.now());
    let tasks = store::open_key_tasks(s.api.engine.store.pool())
        .await?
        .into_iter()
        .map(|t| key_task(t, now))
        .filter(|t| q.kind.as_ref().is_none_or(|k| *k == t.kind))
        .filter(|t| q.overdue.is_none_or(|o| o == t.overdue))
        .collect();
    Ok(Json(paging.page(tasks)))
}

async fn record_key(
    s: &AdminState,
    caller: &Caller,
    id: i64,
    kind: &'static str,
) -> Answer<KeyTask> {
    use crate::connectors::manual::{self, KeyError};
    let op = caller.require(Role::Desk)?;
    let engine = &s.api.engine;
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
    Ok(Json(key_task(t, now)))
}

/// Record that a key was handed to its holder.
#[utoipa::path(post, path = "/api/v1/key-tasks/{id}/handed-over", tag = "keys",
    params(("id" = i64, Path)), description = "Role: desk.",
    responses((status = 200, body = KeyTask), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn key_handed_over(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<KeyTask> {
    record_key(&s, &caller, id, crate::connectors::manual::HAND_OVER).await
}

/// Record that a key was checked back in: this confirms the revocation.
#[utoipa::path(post, path = "/api/v1/key-tasks/{id}/returned", tag = "keys",
    params(("id" = i64, Path)), description = "Role: desk.",
    responses((status = 200, body = KeyTask), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn key_returned(
    caller: Caller,
    State(s): State<AdminState>,
    Path(id): Path<i64>,
) -> Answer<KeyTask> {
    record_key(&s, &caller, id, crate::connectors::manual::RETURN).await
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
#[utoipa::path(get, path = "/api/v1/sources", tag = "health", description = "Role: viewer.",
    responses((status = 200, body = Vec<SourceHealth>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn sources(caller: Caller, State(s): State<AdminState>) -> Answer<Vec<SourceHealth>> {
    caller.require(Role::Viewer)?;
    let engine = &s.api.engine;
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
    Ok(Json(out))
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
#[utoipa::path(get, path = "/api/v1/reports/latency", tag = "reports", description = "Role: viewer.",
    responses((status = 200, body = LatencyReport), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn latency_report(caller: Caller, State(s): State<AdminState>) -> Answer<LatencyReport> {
    caller.require(Role::Viewer)?;
    let store = &s.api.engine.store;
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
    Ok(Json(LatencyReport {
        revoke: rows(crate::telemetry::latency_report(store, Action::Revoke).await?),
        issue: rows(crate::telemetry::latency_report(store, Action::Issue).await?),
    }))
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
#[utoipa::path(get, path = "/api/v1/reports/sla", tag = "reports", description = "Role: viewer.",
    responses((status = 200, body = Vec<SlaConnector>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn sla_report(caller: Caller, State(s): State<AdminState>) -> Answer<Vec<SlaConnector>> {
    caller.require(Role::Viewer)?;
    let engine = &s.api.engine;
    let now = to_micros(engine.clock.now());
    let rows = crate::telemetry::sla::report(&engine.store, &engine.config, now).await?;
    Ok(Json(
        rows.iter()
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
            .collect(),
    ))
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

#[derive(Debug, Deserialize, IntoParams)]
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

/// The audit log, newest first (read only).
#[utoipa::path(get, path = "/api/v1/audit", params(Paging, AuditQuery), tag = "audit",
    description = "Role: viewer.",
    responses((status = 200, body = Page<AuditEntry>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn audit(
    caller: Caller,
    State(s): State<AdminState>,
    Query(paging): Query<Paging>,
    Query(q): Query<AuditQuery>,
) -> Answer<Page<AuditEntry>> {
    caller.require(Role::Viewer)?;
    let store = &s.api.engine.store;
    let instant = |name: &str, v: &Option<String>| -> Result<Option<i64>, Problem> {
        v.as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| crate::clock::to_micros(t.with_timezone(&chrono::Utc)))
                    .map_err(|e| {
                        Problem::bad_request(format!(
                            "`{name}`: `{t}` is not an RFC 3339 time: {e}"
                        ))
                    })
            })
            .transpose()
    };
    let filter = crate::store::audit::AuditFilter {
        subject: q.subject.clone(),
        target: q.target.clone(),
        actor: q.actor.clone(),
        action: q.action.clone(),
        since: instant("since", &q.since)?,
        until: instant("until", &q.until)?,
    };
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
    Ok(Json(Page {
        items,
        total,
        offset,
        next_offset,
    }))
}
