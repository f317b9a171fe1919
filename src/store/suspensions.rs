//! Operator suspensions of a person's access (see `crate::suspension`).

use super::Result;
use crate::model::PersonKey;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// One suspension, active while `ended_at` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspensionRow {
    pub id: i64,
    pub identity_key: PersonKey,
    /// The connectors it covers; `None`: every connector.
    pub connectors: Option<Vec<String>>,
    pub reason: String,
    pub suspended_by: String,
    pub suspended_at: i64,
    pub ended_at: Option<i64>,
    pub ended_by: Option<String>,
    pub end_cause: Option<String>,
}

pub(super) fn read(r: &AnyRow) -> Result<SuspensionRow> {
    let connectors: Option<String> = r.try_get("connectors")?;
    Ok(SuspensionRow {
        id: r.try_get("id")?,
        identity_key: r.try_get("identity_key")?,
        // Written by `suspend` below as a JSON array; anything else reads as "every connector",
        // the safe side for a suspension.
        connectors: connectors.and_then(|c| serde_json::from_str(&c).ok()),
        reason: r.try_get("reason")?,
        suspended_by: r.try_get("suspended_by")?,
        suspended_at: r.try_get("suspended_at")?,
        ended_at: r.try_get("ended_at")?,
        ended_by: r.try_get("ended_by")?,
        end_cause: r.try_get("end_cause")?,
    })
}

/// Record a new suspension; returns its id.
pub async fn suspend(
    conn: &mut AnyConnection,
    key: &str,
    connectors: Option<&[String]>,
    reason: &str,
    by: &str,
    now: i64,
) -> Result<i64> {
    let connectors = connectors.map(|c| serde_json::to_string(c).unwrap_or_default());
    let row = sqlx::query(
        "INSERT INTO suspensions (identity_key, connectors, reason, suspended_by, suspended_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(key)
    .bind(connectors)
    .bind(reason)
    .bind(by)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

/// The person's active suspensions, oldest first.
pub async fn active_of(conn: &mut AnyConnection, key: &str) -> Result<Vec<SuspensionRow>> {
    sqlx::query(
        "SELECT * FROM suspensions WHERE identity_key = $1 AND ended_at IS NULL ORDER BY id",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(read)
    .collect()
}

/// Every active suspension (a small set: people an operator suspended), for a reconciliation.
pub async fn all_active(pool: &AnyPool) -> Result<Vec<SuspensionRow>> {
    sqlx::query("SELECT * FROM suspensions WHERE ended_at IS NULL ORDER BY identity_key, id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read)
        .collect()
}

/// End the person's active suspensions (`resumed` by an operator, or the person `left`); returns
/// how many ended.
pub async fn end(
    conn: &mut AnyConnection,
    key: &str,
    by: &str,
    cause: &str,
    now: i64,
) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE suspensions SET ended_at = $1, ended_by = $2, end_cause = $3
         WHERE identity_key = $4 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(by)
    .bind(cause)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}
