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

/// PostgreSQL: a record goes to `audit_pending`; the deferred trigger of migration 0013 chains it
/// at commit.
pub async fn append_pending(
    conn: &mut AnyConnection,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_pending (at, actor, action, subject, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(details)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// SQLite: take the next sequence number and the head's hash, in the caller's write transaction.
pub async fn take_next_seq(conn: &mut AnyConnection) -> Result<(i64, String)> {
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *conn)
        .await?;
    Ok((head.try_get("seq")?, head.try_get("hash")?))
}

/// SQLite: write a chained record and move the head's hash to it.
pub async fn insert_chained(conn: &mut AnyConnection, r: &AuditRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.seq)
    .bind(r.at)
    .bind(&r.actor)
    .bind(&r.action)
    .bind(&r.subject)
    .bind(&r.details)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&r.hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The filter's WHERE clause; only reading the target out of the details differs by dialect.
macro_rules! filtered {
    ($head:literal, $target:literal, $tail:literal) => {
        concat!(
            $head,
            " FROM audit_log WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR ",
            $target,
            " = $2) AND ($3 IS NULL OR actor = $3) AND ($4 IS NULL OR action = $4)
              AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6)",
            $tail
        )
    };
}

fn bind_filter<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    f: &'q AuditFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(f.subject.as_deref())
        .bind(f.target.as_deref())
        .bind(f.actor.as_deref())
        .bind(f.action.as_deref())
        .bind(f.since)
        .bind(f.until)
}

/// The newest records matching the filter, newest first.
pub async fn find(store: &Store, f: &AuditFilter, limit: i64) -> Result<Vec<AuditRow>> {
    let sql = match store.backend() {
        Backend::Sqlite => filtered!(
            "SELECT *",
            "json_extract(details, '$.target')",
            " ORDER BY seq DESC LIMIT $7"
        ),
        Backend::Postgres => filtered!(
            "SELECT *",
            "(CAST(details AS jsonb) ->> 'target')",
            " ORDER BY seq DESC LIMIT $7"
        ),
    };
    let rows = bind_filter(sqlx::query(sql), f)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(row).collect()
}

/// How many records match the filter.
pub async fn count(store: &Store, f: &AuditFilter) -> Result<i64> {
    let sql = match store.backend() {
        Backend::Sqlite => filtered!(
            "SELECT COUNT(*) AS n",
            "json_extract(details, '$.target')",
            ""
        ),
        Backend::Postgres => filtered!(
            "SELECT COUNT(*) AS n",
            "(CAST(details AS jsonb) ->> 'target')",
            ""
        ),
    };
    let r = bind_filter(sqlx::query(sql), f)
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
