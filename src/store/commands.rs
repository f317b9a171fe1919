//! The outbox's commands: enqueue, supersede, claim updates, and what the dispatcher and reports read of them.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub id: CommandId,
    pub idem_key: String,
    pub connector: String,
    pub action: Action,
    pub identity_key: PersonKey,
    pub target: String,
    pub generation: i64,
    pub priority: i64,
    pub status: CommandStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub cause: String,
    pub trigger_at: i64,
    pub detected_at: i64,
    pub enqueued_at: i64,
    pub first_attempt_at: Option<i64>,
    pub dispatched_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub confirm_deadline: Option<i64>,
    pub last_error: Option<String>,
    /// Bounded label of the source that caused the command (see [`NewCommand::source`]).
    pub source: String,
    /// W3C traceparent of the change that enqueued the command, when tracing was on.
    pub traceparent: Option<String>,
}

impl CommandRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        let action: String = r.try_get("action")?;
        Ok(Self {
            id: r.try_get("id")?,
            idem_key: r.try_get("idem_key")?,
            connector: r.try_get("connector")?,
            action: Action::parse(&action)
                .ok_or_else(|| corrupt("commands", format!("action `{action}`")))?,
            identity_key: r.try_get("identity_key")?,
            target: r.try_get("target")?,
            generation: r.try_get("generation")?,
            priority: r.try_get("priority")?,
            status: super::states::command_status(r, "commands")?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            lease_owner: r.try_get("lease_owner")?,
            cause: r.try_get("cause")?,
            trigger_at: r.try_get("trigger_at")?,
            detected_at: r.try_get("detected_at")?,
            enqueued_at: r.try_get("enqueued_at")?,
            first_attempt_at: r.try_get("first_attempt_at")?,
            dispatched_at: r.try_get("dispatched_at")?,
            confirmed_at: r.try_get("confirmed_at")?,
            confirm_deadline: r.try_get("confirm_deadline")?,
            last_error: r.try_get("last_error")?,
            source: r.try_get("source")?,
            traceparent: r.try_get("traceparent")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewCommand {
    pub connector: String,
    pub action: Action,
    pub identity_key: PersonKey,
    pub target: String,
    pub generation: i64,
    pub cause: String,
    pub trigger_at: i64,
    pub detected_at: i64,
    /// `hr`, `scim:okta`, `ldap-corp`, `schedule`, `approval`: a metric label, so a bounded set
    /// (see `plan::Cause::source_label`).
    pub source: String,
    /// W3C traceparent of the change's span: the dispatcher, which delivers the command later in
    /// another task, starts its span under it so the change stays one trace.
    pub traceparent: Option<String>,
}

impl NewCommand {
    /// Deterministic: the same decision always yields the same key, so a replayed change cannot
    /// enqueue the same command twice.
    pub fn idem_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.connector.as_str(),
            self.identity_key.as_str(),
            self.target.as_str(),
            self.action.as_str(),
            &self.generation.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Returns the new command's id, or None when the same command was already enqueued.
pub async fn enqueue(
    conn: &mut AnyConnection,
    c: &NewCommand,
    now: i64,
) -> Result<Option<CommandId>> {
    let ids = super::batch::enqueue_all(conn, std::slice::from_ref(c), now).await?;
    Ok(ids.into_iter().next().flatten())
}

/// Cancel issues for a grant that policy no longer wants. Returns how many had already reached the
/// vendor (attempted at least once), since only those can have left something to revoke.
pub async fn supersede_issues(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    now: i64,
) -> Result<(u64, i64)> {
    // Supersede first, count after. Counted first, an issue the dispatcher claimed in between
    // (on PostgreSQL, whose statements each see what was committed before they began) was
    // neither superseded (no longer pending) nor counted (still pending when counted): it went
    // to the vendor and no revoke followed it. Superseding first locks every issue still
    // pending, so the dispatcher cannot claim it any more, and the count that follows sees any
    // claim that got there first.
    let r = sqlx::query(SUPERSEDE_SQL)
        .bind(now)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .execute(&mut *conn)
        .await?;
    let attempted: i64 = sqlx::query(SUPERSEDE_COUNT_SQL)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    Ok((r.rows_affected(), attempted))
}

pub async fn command(conn: &mut AnyConnection, id: CommandId) -> Result<Option<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| CommandRow::from_row(&r))
        .transpose()
}

/// Move a claimed command on, only if this worker still holds its lease.
pub async fn update_claimed(
    conn: &mut AnyConnection,
    owner: &str,
    u: &CommandUpdate,
) -> Result<bool> {
    let r = sqlx::query(UPDATE_CLAIMED_SQL)
        .bind(u.status.as_str())
        .bind(u.next_attempt_at)
        .bind(u.dispatched_at)
        .bind(u.confirmed_at)
        .bind(u.confirm_deadline)
        .bind(&u.last_error)
        .bind(u.id)
        .bind(owner)
        .bind(i64::from(u.refund_attempt))
        .bind(u.first_attempt_at)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, Default)]
pub struct CommandUpdate {
    /// A rate-limited try gives its attempt back.
    pub refund_attempt: bool,
    pub id: CommandId,
    pub status: CommandStatus,
    pub next_attempt_at: i64,
    pub dispatched_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub confirm_deadline: Option<i64>,
    pub last_error: Option<String>,
    /// When the first request of the command left (kept if already set): stamped where the
    /// request is sent, not at claim (invariant 13).
    pub first_attempt_at: Option<i64>,
}

/// Put a deadline-missed confirmation back to pending so the grant is issued again.
pub async fn reissue(
    conn: &mut AnyConnection,
    owner: &str,
    id: CommandId,
    now: i64,
    why: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = 'pending', next_attempt_at = $1, confirm_deadline = NULL,
           dispatched_at = NULL, last_error = $2, lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $3 AND lease_owner = $4 AND status = 'inflight'",
    )
    .bind(now)
    .bind(why)
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    let due = r.rows_affected() == 1;
    if due {
        command_queued();
    }
    Ok(due)
}

/// The earliest time a command of this connector becomes due, for the lane to sleep until.
pub async fn next_due(pool: &AnyPool, connector: &str) -> Result<Option<i64>> {
    let row = sqlx::query(NEXT_DUE_SQL)
        .bind(connector)
        .fetch_one(pool)
        .await?;
    Ok(row.try_get("due")?)
}

pub async fn commands_where_status(
    pool: &AnyPool,
    status: CommandStatus,
    limit: i64,
) -> Result<Vec<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE status = $1 ORDER BY id LIMIT $2")
        .bind(status.as_str())
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(CommandRow::from_row)
        .collect()
}

pub async fn completed_commands(pool: &AnyPool) -> Result<Vec<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE status = 'done' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(CommandRow::from_row)
        .collect()
}

/// (connector, status, action, count) over the whole outbox.
pub async fn command_counts(pool: &AnyPool) -> Result<Vec<(String, CommandStatus, String, i64)>> {
    let rows = sqlx::query(
        "SELECT connector, status, action, COUNT(*) AS n FROM commands GROUP BY connector, status, action
         ORDER BY connector, status, action",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("connector")?,
                super::states::command_status(r, "commands")?,
                r.try_get("action")?,
                r.try_get("n")?,
            ))
        })
        .collect()
}

/// Commands not yet finished (pending, in flight or awaiting confirmation).
pub async fn open_commands(pool: &AnyPool) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM commands WHERE status IN ('pending', 'inflight', 'confirming')",
    )
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("n")?)
}

/// Whether any command is still open: stops at the first one (through the index on open
/// commands), where [`open_commands`] counts them all.
pub async fn any_open_command(pool: &AnyPool) -> Result<bool> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM (SELECT 1 FROM commands
           WHERE status IN ('pending', 'inflight', 'confirming') LIMIT 1) o",
    )
    .fetch_one(pool)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

impl Store {
    /// Move the lease on `ids` to `until` where `owner` still holds them in flight: a worker whose
    /// claim takes longer than a lease (a rate-limited vendor, a run of 429s) keeps its commands,
    /// so no other worker takes one over and writes it a second time. Returns how many it kept.
    pub async fn renew_command_leases(
        &self,
        owner: &str,
        ids: &[CommandId],
        until: i64,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        // Every parameter by the backend's marks: SQLite numbers a bare `?` after `$2` as the
        // driver's first argument, not the third.
        let m = batch::Marks::for_backend(self.backend == Backend::Postgres);
        let sql = format!(
            "UPDATE commands SET lease_expires_at = {}
             WHERE lease_owner = {} AND status = 'inflight' AND id IN ({})",
            m.list(1, 1),
            m.list(2, 1),
            m.list(3, ids.len())
        );
        self.retry("command lease renewal", || async {
            let mut tx = self.begin_grouped().await?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(until)
                .bind(owner);
            for id in ids {
                q = q.bind(id.0);
            }
            let kept = q.execute(&mut **tx).await?.rows_affected();
            tx.commit().await?;
            Ok(kept)
        })
        .await
    }
}
