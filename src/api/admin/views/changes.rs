//! Held changes, dead letters and mechanical key tasks: what waits for a person.

use crate::api::ApiState;
use crate::api::admin::Problem;
use crate::clock::rfc3339 as time;
use crate::clock::to_micros;
use crate::model::CommandId;
use crate::operators::Operator;
use crate::store;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
            identity: h.key.into(),
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
    #[schema(value_type = i64)]
    pub id: CommandId,
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
            identity: c.identity_key.into(),
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
        identity: t.identity_key.into(),
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
    Ok(key_task(t, now))
}
