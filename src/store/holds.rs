//! Records set aside: quarantined rows with the source, record and field that failed, and changes held for an operator (mass-change hold).

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub id: i64,
    pub source: String,
    pub location: String,
    pub record_key: Option<PersonKey>,
    pub field: String,
    pub reason: String,
    pub created_at: i64,
}

/// Returns whether the row was new (a re-read of the same file does not report it twice).
pub async fn quarantine(
    conn: &mut AnyConnection,
    q: &crate::model::Quarantined,
    batch: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO quarantine (source, batch, location, record_key, field, reason, raw, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&q.source)
    .bind(batch)
    .bind(&q.location)
    .bind(&q.record_key)
    .bind(&q.field)
    .bind(&q.reason)
    .bind(&q.raw)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn list_quarantine(pool: &AnyPool, limit: i64) -> Result<Vec<QuarantineRow>> {
    let rows = sqlx::query(
        "SELECT id, source, location, record_key, field, reason, created_at FROM quarantine
         ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(QuarantineRow {
                id: r.try_get("id")?,
                source: r.try_get("source")?,
                location: r.try_get("location")?,
                record_key: r.try_get("record_key")?,
                field: r.try_get("field")?,
                reason: r.try_get("reason")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HeldRow {
    pub id: i64,
    pub source: String,
    pub key: PersonKey,
    pub kind: String,
    pub reason: String,
    pub status: String,
    pub created_at: i64,
    /// Who caused it (`os:USER`, `source:NAME`, `reconcile`); None for holds made before it was
    /// recorded.
    pub requested_by: Option<String>,
}

/// Hold a change for approval unless the same one is already held.
pub async fn hold(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    kind: &str,
    reason: &str,
    requested_by: &str,
    now: i64,
) -> Result<bool> {
    hold_under_policy(conn, source, key, kind, reason, None, requested_by, now).await
}

/// [`hold`], recording the policy fingerprint the change was planned under (a reconciliation's).
#[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them
pub async fn hold_under_policy(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    kind: &str,
    reason: &str,
    fingerprint: Option<&str>,
    requested_by: &str,
    now: i64,
) -> Result<bool> {
    let exists = sqlx::query(
        "SELECT id FROM held_changes WHERE status = 'held' AND source = $1 AND key = $2 AND kind = $3",
    )
    .bind(source)
    .bind(key)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    if exists.is_some() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO held_changes (source, key, kind, reason, status, created_at, fingerprint, requested_by)
         VALUES ($1, $2, $3, $4, 'held', $5, $6, $7)",
    )
    .bind(source)
    .bind(key)
    .bind(kind)
    .bind(reason)
    .bind(now)
    .bind(fingerprint)
    .bind(requested_by)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

pub async fn held_changes(pool: &AnyPool) -> Result<Vec<HeldRow>> {
    sqlx::query("SELECT * FROM held_changes WHERE status = 'held' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<HeldRow>)
        .collect()
}

pub async fn held_change(conn: &mut AnyConnection, id: i64) -> Result<Option<HeldRow>> {
    sqlx::query("SELECT * FROM held_changes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<HeldRow>(&r))
        .transpose()
}

pub async fn decide_held(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    by: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE held_changes SET status = $1, decided_by = $2, decided_at = $3 WHERE id = $4",
    )
    .bind(status)
    .bind(by)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A person who reappears in a feed releases any disappearance held for them.
pub async fn release_held_for(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    now: i64,
) -> Result<u64> {
    let r = sqlx::query(RELEASE_HELD_SQL)
        .bind(now)
        .bind(source)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}
