//! Outbox recovery and re-drive (migration 0008): revokes that keep failing past their attempts
//! (stuck), dead letters put back in the queue, leases of a dead worker or process released, and
//! retry times pulled back under the cap.

use super::{CommandId, CommandRow, Result, command_queued};
use sqlx::{AnyConnection, AnyPool, Row};

/// Mark a revoke as stuck (it used up its attempts and goes on retrying at the capped interval).
/// The first time is kept, so `latchkey status` tells how long it has been stuck.
pub async fn mark_stuck(conn: &mut AnyConnection, id: CommandId, now: i64) -> Result<()> {
    sqlx::query("UPDATE commands SET stuck_since = COALESCE(stuck_since, $1) WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Unfinished revokes marked stuck, oldest first, with the time each got stuck.
pub async fn stuck_revokes(pool: &AnyPool, limit: i64) -> Result<Vec<(CommandRow, i64)>> {
    let rows = sqlx::query(
        "SELECT * FROM commands WHERE action = 'revoke' AND stuck_since IS NOT NULL
           AND status IN ('pending', 'inflight', 'confirming') ORDER BY stuck_since, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((CommandRow::from_row(r)?, r.try_get("stuck_since")?)))
        .collect()
}

/// (connector, stuck revokes) for every connector that has any.
pub async fn stuck_counts(pool: &AnyPool) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT connector, COUNT(*) AS n FROM commands
         WHERE action = 'revoke' AND stuck_since IS NOT NULL
           AND status IN ('pending', 'inflight', 'confirming')
         GROUP BY connector ORDER BY connector",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("connector")?, r.try_get("n")?)))
        .collect()
}

/// Dead letters, optionally of one connector and one action (`issue` | `revoke`), oldest first.
pub async fn dead_letters(
    conn: &mut AnyConnection,
    connector: Option<&str>,
    action: Option<&str>,
) -> Result<Vec<CommandRow>> {
    sqlx::query(
        "SELECT * FROM commands WHERE status = 'dead'
           AND ($1 IS NULL OR connector = $1) AND ($2 IS NULL OR action = $2) ORDER BY id",
    )
    .bind(connector)
    .bind(action)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(CommandRow::from_row)
    .collect()
}

/// Put a dead letter back in the queue as a fresh command: attempts from zero, sent again rather
/// than only read back (connectors are idempotent). Returns false when it was not dead.
pub async fn requeue_dead(conn: &mut AnyConnection, id: CommandId, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = 'pending', attempts = 0, next_attempt_at = $1, dispatched_at = NULL,
           confirmed_at = NULL, confirm_deadline = NULL, stuck_since = NULL, lease_owner = NULL,
           lease_expires_at = NULL
         WHERE id = $2 AND status = 'dead'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let due = r.rows_affected() == 1;
    if due {
        command_queued();
    }
    Ok(due)
}

/// (id, lease owner) of every command in flight.
pub async fn inflight_leases(pool: &AnyPool) -> Result<Vec<(CommandId, String)>> {
    let rows = sqlx::query(
        "SELECT id, lease_owner FROM commands WHERE status = 'inflight' AND lease_owner IS NOT NULL
         ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("lease_owner")?)))
        .collect()
}

/// Give a leased command back to the queue at once (its worker is gone): a command the vendor had
/// already accepted goes back to waiting for confirmation, any other to pending. Returns false when
/// `owner` no longer holds it.
pub async fn release_lease(
    conn: &mut AnyConnection,
    id: CommandId,
    owner: &str,
    at: i64,
    why: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = CASE WHEN dispatched_at IS NULL THEN 'pending' ELSE 'confirming' END,
           lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = $1, last_error = $2
         WHERE id = $3 AND lease_owner = $4 AND status = 'inflight'",
    )
    .bind(at)
    .bind(why)
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ids of the commands one lease owner holds in flight.
pub async fn leased_by(conn: &mut AnyConnection, owner: &str) -> Result<Vec<CommandId>> {
    let rows = sqlx::query(
        "SELECT id FROM commands WHERE status = 'inflight' AND lease_owner = $1 ORDER BY id",
    )
    .bind(owner)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

/// Bring every waiting command's next try forward to `latest` at most (a far-future time left by
/// an older version, or by a Retry-After it obeyed without a cap). Returns how many moved.
pub async fn clamp_next_attempts(conn: &mut AnyConnection, latest: i64) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE commands SET next_attempt_at = $1
         WHERE status IN ('pending', 'confirming') AND next_attempt_at > $1",
    )
    .bind(latest)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

/// Open commands (pending, in flight or awaiting confirmation) by action, and dead letters: the
/// console's overview. The open count reads the partial index `commands_open`.
pub async fn open_and_dead(pool: &AnyPool) -> Result<OutboxSummary> {
    let rows = sqlx::query(
        "SELECT action, COUNT(*) AS n FROM commands
          WHERE status IN ('pending', 'confirming', 'inflight') GROUP BY action",
    )
    .fetch_all(pool)
    .await?;
    let mut out = OutboxSummary::default();
    for r in &rows {
        let action: String = r.try_get("action")?;
        let n: i64 = r.try_get("n")?;
        match action.as_str() {
            "revoke" => out.open_revokes += n,
            _ => out.open_issues += n,
        }
    }
    let dead = sqlx::query("SELECT COUNT(*) AS n FROM commands WHERE status = 'dead'")
        .fetch_one(pool)
        .await?;
    out.dead = dead.try_get("n")?;
    Ok(out)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    pub open_revokes: i64,
    pub open_issues: i64,
    pub dead: i64,
}
