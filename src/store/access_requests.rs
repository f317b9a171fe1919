//! Temporary access requests (see `crate::access_requests`).

use super::Result;
use crate::model::PersonKey;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// One request for temporary access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: i64,
    /// `temporary` (asked, then approved) or `emergency` (break-glass).
    pub kind: String,
    pub identity_key: PersonKey,
    pub connector: String,
    pub target: String,
    pub reason: String,
    pub starts_at: i64,
    pub ends_at: i64,
    /// requested | approved | active | expired | ended | rejected
    pub status: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub closed_by: Option<String>,
    pub closed_at: Option<i64>,
    /// An emergency opened by one operator: when another must have reviewed it by.
    pub review_due_at: Option<i64>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
    pub review: Option<String>,
}

pub(super) fn read(r: &AnyRow) -> Result<RequestRow> {
    Ok(RequestRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        identity_key: r.try_get("identity_key")?,
        connector: r.try_get("connector")?,
        target: r.try_get("target")?,
        reason: r.try_get("reason")?,
        starts_at: r.try_get("starts_at")?,
        ends_at: r.try_get("ends_at")?,
        status: r.try_get("status")?,
        requested_by: r.try_get("requested_by")?,
        requested_at: r.try_get("requested_at")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        closed_by: r.try_get("closed_by")?,
        closed_at: r.try_get("closed_at")?,
        review_due_at: r.try_get("review_due_at")?,
        reviewed_by: r.try_get("reviewed_by")?,
        reviewed_at: r.try_get("reviewed_at")?,
        review: r.try_get("review")?,
    })
}

/// A new request (status `requested`); returns its id.
pub async fn insert(conn: &mut AnyConnection, r: &RequestRow) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO access_requests
             (identity_key, connector, target, reason, starts_at, ends_at, status, requested_by,
              requested_at, kind, review_due_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'requested', $7, $8, $9, $10) RETURNING id",
    )
    .bind(&r.identity_key)
    .bind(&r.connector)
    .bind(&r.target)
    .bind(&r.reason)
    .bind(r.starts_at)
    .bind(r.ends_at)
    .bind(&r.requested_by)
    .bind(r.requested_at)
    .bind(&r.kind)
    .bind(r.review_due_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Option<RequestRow>> {
    sqlx::query("SELECT * FROM access_requests WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// Record an approver's decision on a request still `requested`; false if it was not.
pub async fn decide(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    by: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE access_requests SET status = $1, decided_by = $2, decided_at = $3
          WHERE id = $4 AND status = 'requested'",
    )
    .bind(status)
    .bind(by)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// An approved request whose window has begun is in force; false if it was no longer approved.
pub async fn activate(conn: &mut AnyConnection, id: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE access_requests SET status = 'active' WHERE id = $1 AND status = 'approved'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Close an open request (`requested`, `approved` or `active`) as `expired` (its window ended) or
/// `ended` (someone ended it early); false if it was already closed.
pub async fn close(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    by: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE access_requests SET status = $1, closed_by = $2, closed_at = $3
          WHERE id = $4 AND status IN ('requested', 'approved', 'active')",
    )
    .bind(status)
    .bind(by)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Approved requests whose window has begun, and open ones whose window has ended, at `now`.
pub async fn due(pool: &AnyPool, now: i64, limit: i64) -> Result<Vec<RequestRow>> {
    sqlx::query(
        "SELECT * FROM access_requests
          WHERE (status = 'approved' AND starts_at <= $1)
             OR (status IN ('requested', 'approved', 'active') AND ends_at <= $1)
          ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// A person's requests whose grant is in force at `now` (active and inside the window).
pub async fn in_force_of(conn: &mut AnyConnection, key: &str, now: i64) -> Result<Vec<RequestRow>> {
    sqlx::query(
        "SELECT * FROM access_requests
          WHERE identity_key = $1 AND status = 'active' AND starts_at <= $2 AND ends_at > $2
          ORDER BY id",
    )
    .bind(key)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// Every request in force at `now`: a small set, read once by a full reconciliation.
pub async fn all_in_force(pool: &AnyPool, now: i64) -> Result<Vec<RequestRow>> {
    sqlx::query(
        "SELECT * FROM access_requests
          WHERE status = 'active' AND starts_at <= $1 AND ends_at > $1 ORDER BY id",
    )
    .bind(now)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// Requests, newest first, optionally of one status or one person.
pub async fn list(
    pool: &AnyPool,
    status: Option<&str>,
    person: Option<&str>,
    limit: i64,
) -> Result<Vec<RequestRow>> {
    sqlx::query(
        "SELECT * FROM access_requests
          WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR identity_key = $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(status)
    .bind(person)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// Record an emergency's review; false if it is not an emergency awaiting one.
pub async fn mark_reviewed(
    conn: &mut AnyConnection,
    id: i64,
    by: &str,
    note: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE access_requests SET reviewed_by = $1, reviewed_at = $2, review = $3
          WHERE id = $4 AND kind = 'emergency' AND review_due_at IS NOT NULL
            AND reviewed_at IS NULL",
    )
    .bind(by)
    .bind(now)
    .bind(note)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Emergencies opened by one operator that nobody else has reviewed yet, the earliest deadline
/// first (the review queue; the same set `emergency_counts` counts as unreviewed).
pub async fn awaiting_review(pool: &AnyPool) -> Result<Vec<RequestRow>> {
    sqlx::query(
        "SELECT * FROM access_requests
          WHERE kind = 'emergency' AND reviewed_at IS NULL AND review_due_at IS NOT NULL
            AND status <> 'rejected'
          ORDER BY review_due_at, id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// Break-glass at `now`: emergencies in force, awaiting review, and past their review deadline.
pub async fn emergency_counts(pool: &AnyPool, now: i64) -> Result<(i64, i64, i64)> {
    let r = sqlx::query(
        "SELECT
           COALESCE(SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END), 0) AS open,
           COALESCE(SUM(CASE WHEN review_due_at IS NOT NULL AND reviewed_at IS NULL
                             AND status <> 'rejected' THEN 1 ELSE 0 END), 0) AS unreviewed,
           COALESCE(SUM(CASE WHEN review_due_at IS NOT NULL AND reviewed_at IS NULL
                             AND status <> 'rejected' AND review_due_at <= $1 THEN 1 ELSE 0 END), 0)
             AS overdue
         FROM access_requests WHERE kind = 'emergency'",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok((
        r.try_get("open")?,
        r.try_get("unreviewed")?,
        r.try_get("overdue")?,
    ))
}

/// Record one person's approval of a request; false when that person already approved it.
pub async fn add_approval(
    conn: &mut AnyConnection,
    id: i64,
    approver: &str,
    actor: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO request_approvals (request_id, approver, actor, approved_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, approver) DO NOTHING",
    )
    .bind(id)
    .bind(approver)
    .bind(actor)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Who has approved a request so far, by actor, in order.
pub async fn approvals(conn: &mut AnyConnection, id: i64) -> Result<Vec<String>> {
    sqlx::query(
        "SELECT actor FROM request_approvals WHERE request_id = $1 ORDER BY approved_at, actor",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok(r.try_get("actor")?))
    .collect()
}
