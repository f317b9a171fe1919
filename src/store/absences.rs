//! Absences from snapshot feeds (people missing but within their grace) and HR files set aside.

use super::Result;
use crate::model::PersonKey;
use sqlx::{AnyConnection, AnyPool, Row};

/// One person missing from a source's feeds: since when, and from how many feeds in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsenceRow {
    pub key: PersonKey,
    pub since: i64,
    pub feeds: i64,
}

/// Every person a source's feeds currently miss.
pub async fn absences(conn: &mut AnyConnection, source: &str) -> Result<Vec<AbsenceRow>> {
    let rows = sqlx::query("SELECT key, since, feeds FROM source_absences WHERE source = $1")
        .bind(source)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AbsenceRow {
                key: r.try_get("key")?,
                since: r.try_get("since")?,
                feeds: r.try_get("feeds")?,
            })
        })
        .collect()
}

/// Count one more feed that misses this person; returns the updated absence.
pub async fn bump_absence(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    now: i64,
) -> Result<AbsenceRow> {
    sqlx::query(
        "INSERT INTO source_absences (source, key, since, feeds) VALUES ($1, $2, $3, 1)
         ON CONFLICT (source, key) DO UPDATE SET feeds = source_absences.feeds + 1",
    )
    .bind(source)
    .bind(key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let r = sqlx::query("SELECT since, feeds FROM source_absences WHERE source = $1 AND key = $2")
        .bind(source)
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(AbsenceRow {
        key: key.into(),
        since: r.try_get("since")?,
        feeds: r.try_get("feeds")?,
    })
}

/// The person is back in a feed (or became a leaver): their absence ends.
pub async fn clear_absence(conn: &mut AnyConnection, source: &str, key: &str) -> Result<()> {
    sqlx::query("DELETE FROM source_absences WHERE source = $1 AND key = $2")
        .bind(source)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Held disappearances of a source still waiting for a decision: (id, key).
pub async fn open_holds(conn: &mut AnyConnection, source: &str) -> Result<Vec<(i64, PersonKey)>> {
    let rows = sqlx::query(
        "SELECT id, key FROM held_changes WHERE status = 'held' AND source = $1 AND kind = 'disappearance'",
    )
    .bind(source)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("key")?)))
        .collect()
}

/// Was this exact file (name and content) already set aside? A file that could not be moved out of
/// the drop directory is recognised here, so it is not read again on every tick.
pub async fn file_rejected(pool: &AnyPool, source: &str, name: &str, digest: &str) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM quarantine WHERE source = $1 AND batch = $2 AND location = $3 AND field = 'file'",
    )
    .bind(source)
    .bind(digest)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}
