//! Which directory entry (by entryUUID / objectGUID) is which person, per LDAP source: how a
//! changed correlation key, a deletion or a disabled entry that lost its key is traced back to the
//! person it was.

use super::Result;
use crate::model::PersonKey;
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::HashMap;

/// `None`: unknown entry; `Some(None)`: known, but never mapped to a person (quarantined).
pub async fn entry_key(
    conn: &mut AnyConnection,
    source: &str,
    uuid: &str,
) -> Result<Option<Option<PersonKey>>> {
    let row =
        sqlx::query("SELECT record_key FROM ldap_entries WHERE source = $1 AND entry_uuid = $2")
            .bind(source)
            .bind(uuid)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row
        .map(|r| r.try_get::<Option<PersonKey>, _>("record_key"))
        .transpose()?)
}

/// Remember (or update) an entry's DN and person.
pub async fn put_entry(
    conn: &mut AnyConnection,
    source: &str,
    uuid: &str,
    dn: &str,
    key: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO ldap_entries (source, entry_uuid, dn, record_key) VALUES ($1, $2, $3, $4)
         ON CONFLICT (source, entry_uuid) DO UPDATE SET dn = excluded.dn, record_key = excluded.record_key",
    )
    .bind(source)
    .bind(uuid)
    .bind(dn)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_entry(conn: &mut AnyConnection, source: &str, uuid: &str) -> Result<()> {
    sqlx::query("DELETE FROM ldap_entries WHERE source = $1 AND entry_uuid = $2")
        .bind(source)
        .bind(uuid)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every entry of the source: entry id -> person (None: quarantined).
pub async fn all_entries(
    pool: &AnyPool,
    source: &str,
) -> Result<HashMap<String, Option<PersonKey>>> {
    let rows = sqlx::query("SELECT entry_uuid, record_key FROM ldap_entries WHERE source = $1")
        .bind(source)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("entry_uuid")?, r.try_get("record_key")?)))
        .collect()
}
