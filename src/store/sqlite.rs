//! SQLite: the embedded default. One file, WAL journal so readers never block the writer, and write
//! transactions that take the lock up front (see `Store::begin_write`).

use super::{Result, Tx};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

pub(super) async fn connect(options: AnyPoolOptions, url: &str) -> Result<AnyPool> {
    // Create the file when it is missing: the demo and a first start need no set-up.
    let url = if url.contains("mode=") || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    let pool = options
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL: readers (status, reports) never block the dispatcher's writes. NORMAL
                // synchronous is durable across process crashes in WAL mode (a power cut may lose the
                // last commits, never corrupt the file). The busy timeout covers a second process
                // (a CLI command) writing while the daemon runs.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok(pool)
}

pub(super) async fn migrate(pool: &AnyPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The write lock taken by `BEGIN IMMEDIATE` already makes this claim exclusive.
pub(super) async fn claim_next(
    tx: &mut Tx,
    connector: &str,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<AnyRow>> {
    Ok(sqlx::query(
        "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2,
           attempts = attempts + CASE WHEN dispatched_at IS NULL THEN 1 ELSE 0 END,
           first_attempt_at = COALESCE(first_attempt_at, $3)
         WHERE id = (
           SELECT c.id FROM commands c
           WHERE c.connector = $4
             AND c.status IN ('pending', 'confirming', 'inflight')
             AND ((c.status <> 'inflight' AND c.next_attempt_at <= $3)
                  OR (c.status = 'inflight' AND c.lease_expires_at < $3))
             AND NOT EXISTS (SELECT 1 FROM commands o
                 WHERE o.connector = c.connector AND o.identity_key = c.identity_key AND o.target = c.target
                   AND o.status = 'inflight' AND o.lease_expires_at >= $3 AND o.id <> c.id)
           ORDER BY c.priority, c.id LIMIT 1)
         RETURNING *",
    )
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(connector)
    .fetch_optional(&mut ***tx)
    .await?)
}
