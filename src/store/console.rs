//! Web console sign-ins (see `crate::api::console`): one row per signed-in browser, keyed by the
//! SHA-256 of the cookie's token.

use super::Result;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_sha256: String,
    pub actor: String,
    pub display_name: String,
    pub role: String,
    pub via: String,
    pub created_at: i64,
    pub expires_at: i64,
}

fn read(r: &AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        token_sha256: r.try_get("token_sha256")?,
        actor: r.try_get("actor")?,
        display_name: r.try_get("display_name")?,
        role: r.try_get("role")?,
        via: r.try_get("via")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Record a sign-in, and forget every expired one.
pub async fn open(conn: &mut AnyConnection, s: &SessionRow) -> Result<()> {
    sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
        .bind(s.created_at)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO console_sessions
             (token_sha256, actor, display_name, role, via, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&s.token_sha256)
    .bind(&s.actor)
    .bind(&s.display_name)
    .bind(&s.role)
    .bind(&s.via)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The sign-in a cookie's token hash belongs to, if it has not expired at `now`.
pub async fn live(pool: &AnyPool, token_sha256: &str, now: i64) -> Result<Option<SessionRow>> {
    sqlx::query("SELECT * FROM console_sessions WHERE token_sha256 = $1 AND expires_at > $2")
        .bind(token_sha256)
        .bind(now)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(read)
        .transpose()
}

/// End a sign-in; returns it if there was one.
pub async fn close(conn: &mut AnyConnection, token_sha256: &str) -> Result<Option<SessionRow>> {
    let found = sqlx::query("SELECT * FROM console_sessions WHERE token_sha256 = $1")
        .bind(token_sha256)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(read)
        .transpose()?;
    sqlx::query("DELETE FROM console_sessions WHERE token_sha256 = $1")
        .bind(token_sha256)
        .execute(&mut *conn)
        .await?;
    Ok(found)
}
