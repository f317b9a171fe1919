//! Door migrations from one connector to another (see `crate::door_migration`).

use super::Result;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorMoveRow {
    pub id: i64,
    pub from_connector: String,
    pub from_target: String,
    pub to_connector: String,
    pub to_target: String,
    /// `open` (old credentials still out) | `closed`
    pub status: String,
    pub started_by: String,
    pub started_at: i64,
    pub closed_at: Option<i64>,
}

fn read(r: &AnyRow) -> Result<DoorMoveRow> {
    Ok(DoorMoveRow {
        id: r.try_get("id")?,
        from_connector: r.try_get("from_connector")?,
        from_target: r.try_get("from_target")?,
        to_connector: r.try_get("to_connector")?,
        to_target: r.try_get("to_target")?,
        status: r.try_get("status")?,
        started_by: r.try_get("started_by")?,
        started_at: r.try_get("started_at")?,
        closed_at: r.try_get("closed_at")?,
    })
}

/// A new migration; `None` when the door already has one (two starts racing: the unique index
/// on the door lets one in).
pub async fn insert(conn: &mut AnyConnection, m: &DoorMoveRow) -> Result<Option<i64>> {
    let row = sqlx::query(
        "INSERT INTO door_migrations
             (from_connector, from_target, to_connector, to_target, status, started_by, started_at)
         VALUES ($1, $2, $3, $4, 'open', $5, $6)
         ON CONFLICT (from_connector, from_target) DO NOTHING RETURNING id",
    )
    .bind(&m.from_connector)
    .bind(&m.from_target)
    .bind(&m.to_connector)
    .bind(&m.to_target)
    .bind(&m.started_by)
    .bind(m.started_at)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.try_get("id")).transpose()?)
}

/// Every migration, open or closed: all of them move their door for good.
pub async fn all(pool: &AnyPool) -> Result<Vec<DoorMoveRow>> {
    sqlx::query("SELECT * FROM door_migrations ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read)
        .collect()
}

/// [`all`] on a transaction.
pub async fn all_on(conn: &mut AnyConnection) -> Result<Vec<DoorMoveRow>> {
    sqlx::query("SELECT * FROM door_migrations ORDER BY id")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(read)
        .collect()
}

pub async fn close(conn: &mut AnyConnection, id: i64, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE door_migrations SET status = 'closed', closed_at = $1 WHERE id = $2 AND status = 'open'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// How far a migration is: old credentials still out, their return tasks, and the new ones.
pub async fn progress(pool: &AnyPool, m: &DoorMoveRow) -> Result<Progress> {
    let grants = |connector: &str, target: &str| {
        sqlx::query(
            "SELECT
               COALESCE(SUM(CASE WHEN desired = 'present' OR observed <> 'absent' THEN 1 ELSE 0 END), 0) AS out,
               COALESCE(SUM(CASE WHEN desired = 'present' THEN 1 ELSE 0 END), 0) AS wanted,
               COALESCE(SUM(CASE WHEN desired = 'present' AND observed = 'present' THEN 1 ELSE 0 END), 0) AS held
             FROM grants WHERE connector = $1 AND target = $2",
        )
        .bind(connector.to_string())
        .bind(target.to_string())
        .fetch_one(pool)
    };
    let old = grants(&m.from_connector, &m.from_target).await?;
    let new = grants(&m.to_connector, &m.to_target).await?;
    let returns = sqlx::query(
        "SELECT
           COALESCE(SUM(CASE WHEN status = 'open' THEN 1 ELSE 0 END), 0) AS open,
           COALESCE(SUM(CASE WHEN status = 'done' AND done_at >= $3 THEN 1 ELSE 0 END), 0) AS done
         FROM key_tasks WHERE connector = $1 AND target = $2 AND kind = 'return'",
    )
    .bind(&m.from_connector)
    .bind(&m.from_target)
    .bind(m.started_at)
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        old_outstanding: old.try_get("out")?,
        returns_open: returns.try_get("open")?,
        returns_done: returns.try_get("done")?,
        new_confirmed: new.try_get("held")?,
        new_wanted: new.try_get("wanted")?,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Grants at the old connector still wanted or not confirmed gone.
    pub old_outstanding: i64,
    /// Mechanical keys still to come back.
    pub returns_open: i64,
    /// Mechanical keys back since the migration started.
    pub returns_done: i64,
    /// New credentials the vendor confirmed.
    pub new_confirmed: i64,
    /// New credentials wanted.
    pub new_wanted: i64,
}
