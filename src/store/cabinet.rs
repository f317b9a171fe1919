//! Electronic key cabinets: keys out right now (migration 0007).

use super::*;

/// A cabinet key out of its cabinet, and who took it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CabinetHoldingRow {
    pub id: i64,
    pub connector: String,
    pub key_id: String,
    pub key_group: Option<String>,
    pub identity_key: PersonKey,
    pub taken_at: i64,
    /// When the cabinet reported the key overdue, if it did.
    pub overdue_at: Option<i64>,
    /// When the holder was first reported as a leaver still holding the key.
    pub leaver_alerted_at: Option<i64>,
}

/// A key left the cabinet with this person; a holding of the same key is replaced (a missed return).
pub async fn cabinet_key_out(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
    key_group: Option<&str>,
    identity_key: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cabinet_holdings (connector, key_id, key_group, identity_key, taken_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (connector, key_id) DO UPDATE SET key_group = excluded.key_group,
           identity_key = excluded.identity_key, taken_at = excluded.taken_at,
           overdue_at = NULL, leaver_alerted_at = NULL",
    )
    .bind(connector)
    .bind(key_id)
    .bind(key_group)
    .bind(identity_key)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The key is back in the cabinet. Returns whether it was recorded as out.
pub async fn cabinet_key_return(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
) -> Result<bool> {
    let r = sqlx::query("DELETE FROM cabinet_holdings WHERE connector = $1 AND key_id = $2")
        .bind(connector)
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// The cabinet reports the key overdue. Returns whether it was recorded as out.
pub async fn cabinet_key_overdue(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
    at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE cabinet_holdings SET overdue_at = $1 WHERE connector = $2 AND key_id = $3",
    )
    .bind(at)
    .bind(connector)
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Who holds a cabinet key, or any key of a key group, named `target`.
pub async fn cabinet_holders(pool: &AnyPool, target: &str) -> Result<Vec<CabinetHoldingRow>> {
    sqlx::query(
        "SELECT * FROM cabinet_holdings WHERE key_id = $1 OR key_group = $1
         ORDER BY connector, key_id",
    )
    .bind(target)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<CabinetHoldingRow>)
    .collect()
}

/// Keys of this cabinet connector held by people whose identity is terminated.
pub async fn cabinet_leaver_holdings(
    pool: &AnyPool,
    connector: &str,
) -> Result<Vec<CabinetHoldingRow>> {
    sqlx::query(
        "SELECT h.* FROM cabinet_holdings h JOIN identities i ON i.key = h.identity_key
         WHERE h.connector = $1 AND i.lifecycle = 'terminated' ORDER BY h.id",
    )
    .bind(connector)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<CabinetHoldingRow>)
    .collect()
}

pub async fn mark_cabinet_leaver_alerted(conn: &mut AnyConnection, id: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE cabinet_holdings SET leaver_alerted_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A person's correlation key changed at its only source (a directory entry, same entryUUID or
/// objectGUID, new employeeID): move the identity, its grants, vendor accounts, open commands and
/// that source's record to the new key, so nothing is revoked and re-issued. Only for a new key
/// no identity uses yet; returns whether it moved.
pub async fn rekey_identity(
    conn: &mut AnyConnection,
    source: &str,
    old: &str,
    new: &str,
) -> Result<bool> {
    let taken = sqlx::query(
        "SELECT 1 AS x FROM identities WHERE key = $1
         UNION ALL SELECT 1 AS x FROM grants WHERE identity_key = $1
         UNION ALL SELECT 1 AS x FROM source_records WHERE key = $1
         UNION ALL SELECT 1 AS x FROM source_records WHERE key = $2 AND source <> $3",
    )
    .bind(new)
    .bind(old)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    if taken.is_some() {
        return Ok(false);
    }
    for sql in [
        "UPDATE identities SET key = $1 WHERE key = $2",
        "UPDATE grants SET identity_key = $1 WHERE identity_key = $2",
        "UPDATE vendor_people SET identity_key = $1 WHERE identity_key = $2",
        "UPDATE commands SET identity_key = $1 WHERE identity_key = $2
           AND status IN ('pending', 'confirming', 'inflight')",
        "UPDATE source_records SET key = $1 WHERE key = $2",
    ] {
        sqlx::query(sql)
            .bind(new)
            .bind(old)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}
