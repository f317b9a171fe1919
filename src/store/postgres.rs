//! PostgreSQL: for production and for several replicas sharing one outbox. Workers claim commands
//! with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's rows. One command per grant
//! in flight is the unique index `commands_one_inflight_per_grant` (migration 0015): two claims of
//! two commands of one grant can both pass the NOT EXISTS check on their snapshots, and the index
//! makes the second fail, to be run again (see `Store::claim_next`).

use super::Result;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

pub(super) async fn connect(options: AnyPoolOptions, url: &str) -> Result<AnyPool> {
    Ok(options.connect(url).await?)
}

pub(super) async fn migrate(pool: &AnyPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The open commands of lane `$4` at priority `$5` or more urgent that are due at `$3` (or whose
/// lease ran out), of grants no other worker has in hand, in claim order, locked; concurrent
/// claims skip each other's rows (`FOR UPDATE SKIP LOCKED`).
macro_rules! claim_candidates_pg {
    ($columns:literal, $limit:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM commands c
           WHERE c.connector = $4 AND c.priority <= $5
             AND c.status IN ('pending', 'confirming', 'inflight')
             AND ((c.status <> 'inflight' AND c.next_attempt_at <= $3)
                  OR (c.status = 'inflight' AND c.lease_expires_at < $3))
             AND NOT EXISTS (SELECT 1 FROM commands o
                 WHERE o.connector = c.connector AND o.identity_key = c.identity_key AND o.target = c.target
                   AND o.status = 'inflight' AND o.id <> c.id)
           ORDER BY c.priority, c.id LIMIT ",
            $limit,
            "
           FOR UPDATE SKIP LOCKED"
        )
    };
}

/// One walk of the open commands in claim order.
pub(super) const CLAIM_SQL: &str = concat!(
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2,
           attempts = attempts + CASE WHEN dispatched_at IS NULL THEN 1 ELSE 0 END
         WHERE id = (",
    claim_candidates_pg!("c.id", "1"),
    ")
         RETURNING *"
);

/// [`CLAIM_SQL`] for up to `$6` commands, the best one of each grant among the candidates (twice
/// as many, locked; the window over them outside the locking select).
pub(super) const CLAIM_MANY_SQL: &str = concat!(
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2,
           attempts = attempts + CASE WHEN dispatched_at IS NULL THEN 1 ELSE 0 END
         WHERE id IN (SELECT r.id FROM (
           SELECT l.id, l.priority, ROW_NUMBER() OVER (
               PARTITION BY l.identity_key, l.target ORDER BY l.priority, l.id) AS nth
           FROM (",
    claim_candidates_pg!("c.id, c.priority, c.identity_key, c.target", "2 * $6"),
    ") l) r
           WHERE r.nth = 1 ORDER BY r.priority, r.id LIMIT $6)
         RETURNING *"
);

/// The claim lost to a concurrent claim of another command of the same grant: the unique index on
/// in-flight commands refused the second (SQLSTATE 23505 on `commands_one_inflight_per_grant`).
pub(super) fn is_second_inflight(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code().is_some_and(|c| c == "23505")
        && db
            .constraint()
            .is_none_or(|c| c == "commands_one_inflight_per_grant")
}

/// Create the database `name` on the server `conn` is connected to, unless it exists (the bench
/// gives each run a fresh one). `name` is made of ASCII letters, digits and `_` only.
pub async fn ensure_database(conn: &mut sqlx::AnyConnection, name: &str) -> Result<()> {
    plain_name(name)?;
    let exists = sqlx::query("SELECT 1 AS x FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Drop the database `name` (made of ASCII letters, digits and `_` only), ending any connection
/// still open to it: the bench's own databases at the end of a run.
pub async fn drop_database(conn: &mut sqlx::AnyConnection, name: &str) -> Result<()> {
    plain_name(name)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A database name is spliced into DDL: only ASCII letters, digits and `_` are accepted.
fn plain_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(sqlx::Error::Configuration(
            format!("`{name}` is not a plain database name").into(),
        )
        .into());
    }
    Ok(())
}
