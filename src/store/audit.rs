//! The audit log's SQL: appending (the chain itself is computed in `crate::audit`), reading by
//! filter, streaming a range in order, the retention anchor, and the forwarding cursors.

use super::{Backend, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

fn row(r: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        subject: r.try_get("subject")?,
        details: r.try_get("details")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// What `audit list` asks for; every field is optional and they combine with AND. Times are
/// microseconds, `since` inclusive and `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// SQLite: the next sequence number and the head's hash, in the caller's write transaction (its
/// write lock keeps them until the record is written; the insert moves the head, migration 0029).
pub async fn take_next_seq(conn: &mut AnyConnection) -> Result<(i64, String)> {
    let head = sqlx::query("SELECT seq + 1 AS seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((head.try_get("seq")?, head.try_get("hash")?))
}

/// The filter's WHERE clause over only the fields given, so each filter can use its index
/// (`subject`, `at`); `(x IS NULL OR col = x)` would scan the whole log. Only reading the target out
/// of the details differs by dialect.
fn filtered(backend: Backend, f: &AuditFilter) -> (String, Vec<Value>) {
    let target = match backend {
        Backend::Sqlite => "json_extract(details, '$.target')",
        Backend::Postgres => "(CAST(details AS jsonb) ->> 'target')",
    };
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    let mut add = |clause: String, v: Value| {
        values.push(v);
        clauses.push(format!("{clause} ${}", values.len()));
    };
    let text = |v: &Option<String>| v.clone().map(Value::Text);
    for (col, v) in [
        ("subject =", text(&f.subject)),
        ("actor =", text(&f.actor)),
        ("action =", text(&f.action)),
    ] {
        if let Some(v) = v {
            add(col.to_string(), v);
        }
    }
    if let Some(t) = &f.target {
        add(format!("{target} ="), Value::Text(t.clone()));
    }
    if let Some(at) = f.since {
        add("at >=".into(), Value::Int(at));
    }
    if let Some(at) = f.until {
        add("at <".into(), Value::Int(at));
    }
    let sql = if clauses.is_empty() {
        " FROM audit_log".to_string()
    } else {
        format!(" FROM audit_log WHERE {}", clauses.join(" AND "))
    };
    (sql, values)
}

enum Value {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    values: Vec<Value>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for v in values {
        q = match v {
            Value::Text(t) => q.bind(t),
            Value::Int(i) => q.bind(i),
        };
    }
    q
}

/// The newest records matching the filter, newest first.
pub async fn find(store: &Store, f: &AuditFilter, limit: i64) -> Result<Vec<AuditRow>> {
    let (from, values) = filtered(store.backend(), f);
    let sql = format!(
        "SELECT *{from} ORDER BY seq DESC LIMIT ${}",
        values.len() + 1
    );
    // Only column names and numbered placeholders are formatted in; every value is bound.
    let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), values)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(row).collect()
}

/// How many records match the filter.
pub async fn count(store: &Store, f: &AuditFilter) -> Result<i64> {
    let (from, values) = filtered(store.backend(), f);
    let sql = format!("SELECT COUNT(*) AS n{from}");
    let r = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), values)
        .fetch_one(store.pool())
        .await?;
    Ok(r.try_get("n")?)
}

/// The sequence range of records written in `[since, until)`: the first at or after `since` to
/// the last before `until`. On PostgreSQL records are chained at commit, so times are not strictly
/// ordered by seq; the range is the contiguous run between those two records.
pub async fn seq_range(
    pool: &AnyPool,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Option<(i64, i64)>> {
    let r = sqlx::query(
        "SELECT MIN(seq) AS first, MAX(seq) AS last FROM audit_log
         WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR at < $2)",
    )
    .bind(since)
    .bind(until)
    .fetch_one(pool)
    .await?;
    let first: Option<i64> = r.try_get("first")?;
    let last: Option<i64> = r.try_get("last")?;
    Ok(first.zip(last))
}

/// Records with `after < seq <= through`, in seq order, at most `limit` of them.
pub async fn page(pool: &AnyPool, after: i64, through: i64, limit: i64) -> Result<Vec<AuditRow>> {
    let rows =
        sqlx::query("SELECT * FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3")
            .bind(after)
            .bind(through)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.iter().map(row).collect()
}

/// Every record from `after` on, in seq order, as a stream (a long log needs no memory).
pub fn stream_after(
    pool: &AnyPool,
    after: i64,
) -> impl futures::Stream<Item = Result<AuditRow>> + '_ {
    use futures::StreamExt;
    sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq")
        .bind(after)
        .fetch(pool)
        .map(|r| r.map_err(Into::into).and_then(|r| row(&r)))
}

/// The records whose action starts with `prefix` written at or after `since`, oldest first (a
/// review campaign's evidence).
pub async fn actions_since(pool: &AnyPool, prefix: &str, since: i64) -> Result<Vec<AuditRow>> {
    sqlx::query("SELECT * FROM audit_log WHERE at >= $1 AND action LIKE $2 ORDER BY seq")
        .bind(since)
        .bind(format!("{prefix}%"))
        .fetch_all(pool)
        .await?
        .iter()
        .map(row)
        .collect()
}

/// The chain's head: the last sequence number written and its hash.
pub async fn head(pool: &AnyPool) -> Result<(i64, String)> {
    let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok((r.try_get("seq")?, r.try_get("hash")?))
}

/// Where the stored chain starts: the seq and hash of the last pruned record (0 and zeros when
/// nothing was pruned).
pub async fn anchor(pool: &AnyPool) -> Result<(i64, String)> {
    let r = sqlx::query("SELECT seq, hash FROM audit_anchor WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok((r.try_get("seq")?, r.try_get("hash")?))
}

/// The newest record written before `before` (microseconds) that may be pruned.
pub async fn last_before(conn: &mut AnyConnection, before: i64) -> Result<Option<(i64, String)>> {
    // The prune boundary is the last record of the contiguous run of old records: a record written
    // later in time but chained earlier (PostgreSQL chains at commit) keeps everything after it.
    let r = sqlx::query(
        "SELECT seq, hash FROM audit_log WHERE seq < COALESCE(
            (SELECT MIN(seq) FROM audit_log WHERE at >= $1),
            (SELECT MAX(seq) + 1 FROM audit_log))
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(before)
    .fetch_optional(&mut *conn)
    .await?;
    r.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
        .transpose()
}

/// Delete records up to `seq` and make the last of them the anchor, in one transaction.
pub async fn prune_through(
    conn: &mut AnyConnection,
    seq: i64,
    hash: &str,
    now: i64,
) -> Result<u64> {
    let done = sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE audit_anchor SET seq = $1, hash = $2, pruned_at = $3 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// The last seq a forwarding sink has had accepted (0 before its first).
pub async fn forward_cursor(pool: &AnyPool, sink: &str) -> Result<i64> {
    let r = sqlx::query("SELECT seq FROM audit_forward_cursors WHERE sink = $1")
        .bind(sink)
        .fetch_optional(pool)
        .await?;
    Ok(match r {
        Some(r) => r.try_get("seq")?,
        None => 0,
    })
}

/// Move a sink's cursor forward (never back).
pub async fn set_forward_cursor(pool: &AnyPool, sink: &str, seq: i64, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_forward_cursors (sink, seq, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at
         WHERE audit_forward_cursors.seq < excluded.seq",
    )
    .bind(sink)
    .bind(seq)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// The last record before `seq` (its seq and hash).
pub async fn last_before_seq(conn: &mut AnyConnection, seq: i64) -> Result<Option<(i64, String)>> {
    let r = sqlx::query("SELECT seq, hash FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT 1")
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
    r.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
        .transpose()
}

/// SQLite: [`insert_chained`] for many records, many per statement, in the order given.
pub async fn insert_chained_all(conn: &mut AnyConnection, rows: &[AuditRow]) -> Result<()> {
    // Eight parameters a record: well under either database's limit per statement.
    for chunk in rows.chunks(2_000) {
        let values = super::batch::Marks::of(conn).rows(chunk.len(), 8);
        let sql = format!(
            "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) VALUES {values}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.seq)
                .bind(r.at)
                .bind(&r.actor)
                .bind(&r.action)
                .bind(&r.subject)
                .bind(&r.details)
                .bind(&r.prev_hash)
                .bind(&r.hash);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// PostgreSQL: [`append_pending`] for many records, many per statement; the deferred trigger
/// chains them at commit in the order given.
pub async fn append_pending_all(conn: &mut AnyConnection, rows: &[AuditRow]) -> Result<()> {
    for chunk in rows.chunks(4_000) {
        let values = super::batch::Marks::of(conn).rows(chunk.len(), 5);
        let sql = format!(
            "INSERT INTO audit_pending (at, actor, action, subject, details) VALUES {values}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.at)
                .bind(&r.actor)
                .bind(&r.action)
                .bind(&r.subject)
                .bind(&r.details);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
