//! Identities (a person's merged view), the source records they are merged from, and each source's checkpoint.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub key: PersonKey,
    pub lifecycle: Lifecycle,
    pub lifecycle_since: i64,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    pub site: Option<String>,
    pub next_change_at: Option<i64>,
    pub updated_at: i64,
}

impl IdentityRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        let lifecycle: String = r.try_get("lifecycle")?;
        let attrs: String = r.try_get("attrs")?;
        Ok(Self {
            key: r.try_get("key")?,
            lifecycle: Lifecycle::parse(&lifecycle)
                .ok_or_else(|| corrupt("identities", format!("lifecycle `{lifecycle}`")))?,
            lifecycle_since: r.try_get("lifecycle_since")?,
            attrs: serde_json::from_str(&attrs)
                .map_err(|e| corrupt("identities", e.to_string()))?,
            site: r.try_get("site")?,
            next_change_at: r.try_get("next_change_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(|v| v.as_str())
    }
}

pub async fn get_identity(conn: &mut AnyConnection, key: &str) -> Result<Option<IdentityRow>> {
    sqlx::query(GET_IDENTITY_SQL)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| IdentityRow::from_row(&r))
        .transpose()
}

/// The keys of the people whose `manager` attribute is `manager`, for a review of a manager's
/// reports. The LIKE narrows the rows (the value as stored JSON); the match is exact.
pub async fn reports_of(pool: &AnyPool, manager: &str) -> Result<Vec<PersonKey>> {
    let needle = serde_json::json!({ "manager": manager }).to_string();
    let needle = needle.trim_start_matches('{').trim_end_matches('}');
    let rows = sqlx::query("SELECT * FROM identities WHERE attrs LIKE $1 ORDER BY key")
        .bind(format!("%{needle}%"))
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let i = IdentityRow::from_row(&r)?;
        if i.attr("manager") == Some(manager) {
            out.push(i.key);
        }
    }
    Ok(out)
}

/// Identities whose e-mail or name is `needle` (case-insensitive), for operators who know a person
/// by those rather than by the correlation key. The LIKE narrows the rows; the match is exact.
pub async fn find_identities(conn: &mut AnyConnection, needle: &str) -> Result<Vec<IdentityRow>> {
    let rows = sqlx::query("SELECT * FROM identities WHERE LOWER(attrs) LIKE $1 ORDER BY key")
        .bind(format!("%{}%", needle.to_lowercase()))
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let i = IdentityRow::from_row(&r)?;
        let is = |attr: &str| i.attr(attr).is_some_and(|v| v.eq_ignore_ascii_case(needle));
        if is("email") || is("name") {
            out.push(i);
        }
    }
    Ok(out)
}

pub async fn put_identity(conn: &mut AnyConnection, i: &IdentityRow) -> Result<()> {
    super::batch::put_identities(conn, std::slice::from_ref(i)).await
}

/// Identities whose effective-dated change (hire, termination, grant expiry) has come.
pub async fn identities_due(pool: &AnyPool, now: i64, limit: i64) -> Result<Vec<PersonKey>> {
    let rows = sqlx::query(IDENTITIES_DUE_SQL)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("key")?)).collect()
}

pub async fn list_identities(pool: &AnyPool) -> Result<Vec<IdentityRow>> {
    sqlx::query("SELECT * FROM identities ORDER BY key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(IdentityRow::from_row)
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SourceRecordRow {
    pub source: String,
    pub key: PersonKey,
    pub hash: String,
    pub record: String,
    pub first_seen_at: i64,
    pub seen_at: i64,
    pub disappeared_at: Option<i64>,
}

/// One source's record of a person, by the primary key.
pub async fn source_record(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
) -> Result<Option<SourceRecordRow>> {
    sqlx::query(SOURCE_RECORD_SQL)
        .bind(source)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<SourceRecordRow>(&r))
        .transpose()
}

/// A person's records from every source (index `source_records_key`, migration 0016).
pub async fn source_records_of(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Vec<SourceRecordRow>> {
    sqlx::query(SOURCE_RECORDS_OF_SQL)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(read::<SourceRecordRow>)
        .collect()
}

/// Every person a source holds: key, record hash, and whether they had disappeared. Read as one
/// aggregated row rather than a row per person: SQLite's driver hands every row from its worker
/// thread to the caller on its own, and a 100,000-person source paid a hand-off per person on
/// every feed.
pub async fn source_hashes(store: &Store, source: &str) -> Result<Vec<(PersonKey, String, bool)>> {
    let sql = match store.backend() {
        Backend::Sqlite => {
            "SELECT json_group_array(json_array(key, hash, disappeared_at IS NOT NULL))
             FROM source_records WHERE source = $1"
        }
        Backend::Postgres => {
            "SELECT COALESCE(json_agg(json_build_array(key, hash, disappeared_at IS NOT NULL))::text, '[]')
             FROM source_records WHERE source = $1"
        }
    };
    let text: String = sqlx::query_scalar(sql)
        .bind(source)
        .fetch_one(store.pool())
        .await?;
    let rows: Vec<(PersonKey, String, serde_json::Value)> =
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            table: "source_records",
            message: format!("source {source}: {e}"),
        })?;
    Ok(rows
        .into_iter()
        // SQLite writes the flag as 0 / 1, PostgreSQL as false / true.
        .map(|(key, hash, gone)| {
            let gone = gone
                .as_bool()
                .unwrap_or_else(|| gone.as_i64().is_some_and(|n| n != 0));
            (key, hash, gone)
        })
        .collect())
}

pub async fn put_source_record(conn: &mut AnyConnection, s: &SourceRecordRow) -> Result<()> {
    super::batch::put_source_records(conn, std::slice::from_ref(s)).await
}

pub async fn checkpoint(pool: &AnyPool, source: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT checkpoint FROM source_checkpoints WHERE source = $1")
        .bind(source)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok(r.try_get("checkpoint")?)).transpose()
}

pub async fn set_checkpoint(
    conn: &mut AnyConnection,
    source: &str,
    value: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_checkpoints (source, checkpoint, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (source) DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(value)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
