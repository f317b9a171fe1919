//! Leases between replicas (migration 0015): acquire, renew and release, one atomic statement
//! each. Expiry is judged by the database's clock, never a replica's, so two replicas whose clocks
//! disagree still cannot both hold a lease; on SQLite (one node) the same statements hold trivially.

use super::{Backend, Result, read};
use sqlx::{AnyConnection, AnyPool};

/// One lease as stored. Times are microseconds since the Unix epoch, by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub expires_at: i64,
    pub acquired_at: i64,
    pub renewed_at: i64,
}

/// The database's clock in microseconds since the Unix epoch, as an SQL expression per dialect.
macro_rules! pg_now {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT"
    };
}
macro_rules! lite_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
    };
}

/// The database's clock, in microseconds since the Unix epoch.
pub async fn db_now(conn: &mut AnyConnection, backend: Backend) -> Result<i64> {
    let sql: &'static str = match backend {
        Backend::Postgres => concat!("SELECT ", pg_now!(), " AS now"),
        Backend::Sqlite => concat!("SELECT ", lite_now!(), " AS now"),
    };
    let row = sqlx::query(sql).fetch_one(&mut *conn).await?;
    Ok(sqlx::Row::try_get(&row, "now")?)
}

/// Take a lease that is free, expired, or already `holder`'s, for `lease_micros` from the
/// database's now. Returns the lease as taken, or None while another replica holds it.
pub async fn acquire(
    conn: &mut AnyConnection,
    backend: Backend,
    name: &str,
    holder: &str,
    lease_micros: i64,
) -> Result<Option<LeaseRow>> {
    // Insert, or take over a row whose lease ran out (or is already ours); a row another replica
    // holds is left alone and nothing is returned.
    macro_rules! acquire_sql {
        ($now:expr) => {
            concat!(
                "INSERT INTO leases (name, holder, expires_at, acquired_at, renewed_at)
                 SELECT $1, $2, t + $3, t, t FROM (SELECT ",
                $now,
                " AS t) AS now WHERE true
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                   expires_at = excluded.expires_at, acquired_at = excluded.acquired_at,
                   renewed_at = excluded.renewed_at
                 WHERE leases.expires_at <= excluded.acquired_at OR leases.holder = excluded.holder
                 RETURNING name, holder, expires_at, acquired_at, renewed_at"
            )
        };
    }
    let sql: &'static str = match backend {
        Backend::Postgres => acquire_sql!(pg_now!()),
        Backend::Sqlite => acquire_sql!(lite_now!()),
    };
    let row = sqlx::query(sql)
        .bind(name)
        .bind(holder)
        .bind(lease_micros)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(read).transpose()
}

/// Extend `holder`'s lease by `lease_micros` from the database's now, if it still holds it and it
/// has not run out. Returns whether it did.
pub async fn renew(
    conn: &mut AnyConnection,
    backend: Backend,
    name: &str,
    holder: &str,
    lease_micros: i64,
) -> Result<bool> {
    macro_rules! renew_sql {
        ($now:expr) => {
            concat!(
                "UPDATE leases SET expires_at = ",
                $now,
                " + $3, renewed_at = ",
                $now,
                " WHERE name = $1 AND holder = $2 AND expires_at > ",
                $now
            )
        };
    }
    let sql: &'static str = match backend {
        Backend::Postgres => renew_sql!(pg_now!()),
        Backend::Sqlite => renew_sql!(lite_now!()),
    };
    let r = sqlx::query(sql)
        .bind(name)
        .bind(holder)
        .bind(lease_micros)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Give up `holder`'s lease now, so another replica takes it at once. Returns whether it held it.
pub async fn release(
    conn: &mut AnyConnection,
    backend: Backend,
    name: &str,
    holder: &str,
) -> Result<bool> {
    macro_rules! release_sql {
        ($now:expr) => {
            concat!(
                "UPDATE leases SET expires_at = ",
                $now,
                " WHERE name = $1 AND holder = $2 AND expires_at > ",
                $now
            )
        };
    }
    let sql: &'static str = match backend {
        Backend::Postgres => release_sql!(pg_now!()),
        Backend::Sqlite => release_sql!(lite_now!()),
    };
    let r = sqlx::query(sql)
        .bind(name)
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// One lease by name.
pub async fn lease(conn: &mut AnyConnection, name: &str) -> Result<Option<LeaseRow>> {
    let row = sqlx::query(
        "SELECT name, holder, expires_at, acquired_at, renewed_at FROM leases WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(read).transpose()
}

/// Every lease, by name, with the database's now to judge which are live.
pub async fn all(pool: &AnyPool, backend: Backend) -> Result<(i64, Vec<LeaseRow>)> {
    let mut conn = pool.acquire().await?;
    let now = db_now(&mut conn, backend).await?;
    let rows = sqlx::query(
        "SELECT name, holder, expires_at, acquired_at, renewed_at FROM leases ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows.iter().map(read).collect::<Result<Vec<LeaseRow>>>()?;
    Ok((now, rows))
}

/// Give up every lease `holder` holds (a previous run of this replica that is gone). Returns the
/// names released.
pub async fn release_holder(
    conn: &mut AnyConnection,
    backend: Backend,
    holder: &str,
) -> Result<Vec<String>> {
    macro_rules! release_all_sql {
        ($now:expr) => {
            concat!(
                "UPDATE leases SET expires_at = ",
                $now,
                " WHERE holder = $1 AND expires_at > ",
                $now,
                " RETURNING name"
            )
        };
    }
    let sql: &'static str = match backend {
        Backend::Postgres => release_all_sql!(pg_now!()),
        Backend::Sqlite => release_all_sql!(lite_now!()),
    };
    let rows = sqlx::query(sql).bind(holder).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| Ok(sqlx::Row::try_get(r, "name")?))
        .collect()
}
