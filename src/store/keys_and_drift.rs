//! Mechanical key tasks, circuit-breaker states and drift findings (migration 0005).

use super::*;

/// A task for a person: hand a mechanical key over, or take it back.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KeyTaskRow {
    pub id: i64,
    pub connector: String,
    pub identity_key: PersonKey,
    pub target: String,
    /// `hand_over` | `return`
    pub kind: String,
    /// `open` | `done` | `cancelled`
    pub status: String,
    pub created_at: i64,
    pub due_at: Option<i64>,
    pub done_at: Option<i64>,
    pub done_by: Option<String>,
    pub overdue_alerted_at: Option<i64>,
}

/// The newest task of this kind for a grant, whatever its status.
pub async fn latest_key_task(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    kind: &str,
) -> Result<Option<KeyTaskRow>> {
    sqlx::query(
        "SELECT * FROM key_tasks WHERE connector = $1 AND identity_key = $2 AND target = $3 AND kind = $4
         ORDER BY id DESC LIMIT 1",
    )
    .bind(connector)
    .bind(identity_key)
    .bind(target)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| read::<KeyTaskRow>(&r))
    .transpose()
}

pub async fn create_key_task(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    kind: &str,
    now: i64,
    due_at: Option<i64>,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO key_tasks (connector, identity_key, target, kind, status, created_at, due_at)
         VALUES ($1, $2, $3, $4, 'open', $5, $6) RETURNING id",
    )
    .bind(connector)
    .bind(identity_key)
    .bind(target)
    .bind(kind)
    .bind(now)
    .bind(due_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

pub async fn key_task(conn: &mut AnyConnection, id: i64) -> Result<Option<KeyTaskRow>> {
    sqlx::query("SELECT * FROM key_tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<KeyTaskRow>(&r))
        .transpose()
}

/// Close an open task (`done` or `cancelled`). Returns false when it was not open.
pub async fn close_key_task(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    at: i64,
    by: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE key_tasks SET status = $1, done_at = $2, done_by = $3 WHERE id = $4 AND status = 'open'",
    )
    .bind(status)
    .bind(at)
    .bind(by)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn open_key_tasks(pool: &AnyPool) -> Result<Vec<KeyTaskRow>> {
    sqlx::query("SELECT * FROM key_tasks WHERE status = 'open' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<KeyTaskRow>)
        .collect()
}

pub async fn mark_key_task_alerted(conn: &mut AnyConnection, id: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE key_tasks SET overdue_alerted_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The unfinished command of this action for a grant (a manual connector's task completes it).
pub async fn open_command_for(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    action: Action,
) -> Result<Option<CommandRow>> {
    sqlx::query(OPEN_COMMAND_FOR_SQL)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .bind(action.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| CommandRow::from_row(&r))
        .transpose()
}

/// Finish an unfinished command from outside the dispatcher (a person recorded the result). A
/// worker that holds it in flight loses its lease: its own update then matches nothing.
pub async fn complete_command(
    conn: &mut AnyConnection,
    id: CommandId,
    confirmed_at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = 'done', confirmed_at = $1, dispatched_at = COALESCE(dispatched_at, $1),
           next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
         WHERE id = $2 AND status IN ('pending', 'inflight', 'confirming')",
    )
    .bind(confirmed_at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_breaker_state(
    conn: &mut AnyConnection,
    connector: &str,
    state: &str,
    since: i64,
    last_error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO breaker_states (connector, state, since, last_error) VALUES ($1, $2, $3, $4)
         ON CONFLICT (connector) DO UPDATE SET state = excluded.state, since = excluded.since,
           last_error = excluded.last_error",
    )
    .bind(connector)
    .bind(state)
    .bind(since)
    .bind(last_error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// (connector, state, since, last error) as last recorded.
pub async fn breaker_states(pool: &AnyPool) -> Result<Vec<(String, String, i64, Option<String>)>> {
    let rows = sqlx::query("SELECT * FROM breaker_states ORDER BY connector")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("connector")?,
                r.try_get("state")?,
                r.try_get("since")?,
                r.try_get("last_error")?,
            ))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DriftFindingRow {
    pub id: i64,
    pub connector: String,
    pub target: String,
    /// `orphan` (the vendor holds a grant latchkey did not issue) | `missing` (a grant latchkey
    /// expects is gone at the vendor)
    pub kind: String,
    /// Identity key (missing), or the vendor's person id or `-` (orphan).
    pub subject: String,
    pub vendor_ref: Option<String>,
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    /// `revoked` | `reissued` | `cleared` (gone by itself) | `reported`
    pub resolution: Option<String>,
    pub resolved_at: Option<i64>,
}

/// Record that a finding was seen now: the open row's `last_seen_at` moves, or a new row starts.
pub async fn see_drift(
    conn: &mut AnyConnection,
    connector: &str,
    target: &str,
    kind: &str,
    subject: &str,
    vendor_ref: Option<&str>,
    now: i64,
) -> Result<DriftFindingRow> {
    let existing = sqlx::query(
        "SELECT * FROM drift_findings WHERE connector = $1 AND target = $2 AND kind = $3 AND subject = $4
           AND resolved_at IS NULL AND COALESCE(vendor_ref, '') = COALESCE($5, '') ORDER BY id DESC LIMIT 1",
    )
    .bind(connector)
    .bind(target)
    .bind(kind)
    .bind(subject)
    .bind(vendor_ref)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| read::<DriftFindingRow>(&r))
    .transpose()?;
    if let Some(mut f) = existing {
        sqlx::query("UPDATE drift_findings SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(f.id)
            .execute(&mut *conn)
            .await?;
        f.last_seen_at = now;
        return Ok(f);
    }
    let row = sqlx::query(
        "INSERT INTO drift_findings (connector, target, kind, subject, vendor_ref, first_seen_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING *",
    )
    .bind(connector)
    .bind(target)
    .bind(kind)
    .bind(subject)
    .bind(vendor_ref)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    read::<DriftFindingRow>(&row)
}

pub async fn resolve_drift(
    conn: &mut AnyConnection,
    id: i64,
    resolution: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE drift_findings SET resolution = $1, resolved_at = $2 WHERE id = $3")
        .bind(resolution)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Findings not resolved yet (still seen at the last check, or reported only).
pub async fn open_drift(pool: &AnyPool) -> Result<Vec<DriftFindingRow>> {
    sqlx::query("SELECT * FROM drift_findings WHERE resolved_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<DriftFindingRow>)
        .collect()
}

/// (identity key, vendor person id) of every person a connector knows.
pub async fn vendor_people_of(pool: &AnyPool, connector: &str) -> Result<Vec<(PersonKey, String)>> {
    let rows = sqlx::query(
        "SELECT identity_key, vendor_ref FROM vendor_people WHERE connector = $1 ORDER BY identity_key",
    )
    .bind(connector)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("identity_key")?, r.try_get("vendor_ref")?)))
        .collect()
}
