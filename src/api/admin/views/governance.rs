//! Temporary access, break-glass, visitors and door migrations.

use super::{PersonSummary, naming_problem};
use crate::api::ApiState;
use crate::api::admin::Problem;
use crate::clock::rfc3339 as time;
use crate::operators::Operator;
use crate::store;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
            person: r.identity_key.into(),
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
        E::DualControl { .. } | E::AlreadyApproved { .. } => {
            Problem::new(StatusCode::FORBIDDEN, "dual-control", e.to_string())
        }
        E::NotAnApprover { .. } => {
            Problem::new(StatusCode::FORBIDDEN, "not-an-approver", e.to_string())
        }
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
    let limit = limit.clamp(1, crate::api::admin::MAX_LIMIT) as i64;
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
        crate::naming::person(&mut conn, r.person.trim())
            .await
            .map_err(|e| naming_problem(e, Problem::bad_request))?
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
        crate::naming::person(&mut conn, e.person.trim())
            .await
            .map_err(|e| naming_problem(e, Problem::bad_request))?
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
            holders: plan.holders.into_iter().map(Into::into).collect(),
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
        holders: plan.holders.into_iter().map(Into::into).collect(),
        old_out: plan.old_out,
        issues_enqueued: applied.issues,
        revokes_enqueued: applied.revokes,
    })
}
