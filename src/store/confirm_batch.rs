//! Confirming many changes on one target with one vendor listing (migration 0028): whether more
//! writes to a target are queued (so its read-back waits to gather them), and claiming every change
//! on a target that waits for its read-back, so one listing confirms them all.

use super::{Backend, CommandRow, Result, Store, StoreError, postgres};
use sqlx::AnyPool;

/// Whether another command on `target` of `connector`, at `max_priority` or more urgent, is queued
/// and due (not yet written): the read-back of a change just written can wait to confirm it too.
pub async fn more_due_on_target(
    pool: &AnyPool,
    connector: &str,
    target: &str,
    max_priority: i64,
    now: i64,
) -> Result<bool> {
    Ok(sqlx::query(MORE_DUE_ON_TARGET_SQL)
        .bind(connector)
        .bind(target)
        .bind(max_priority)
        .bind(now)
        .fetch_optional(pool)
        .await?
        .is_some())
}

pub(super) const MORE_DUE_ON_TARGET_SQL: &str = "SELECT 1 AS x FROM commands
     WHERE connector = $1 AND target = $2 AND status = 'pending'
       AND priority <= $3 AND next_attempt_at <= $4 LIMIT 1";

pub(super) const CLAIM_SQLITE: &str =
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2
     WHERE id IN (
       SELECT c.id FROM commands c
       WHERE c.connector = $3 AND c.target = $4 AND c.status = 'confirming' AND c.id <> $5
         AND NOT EXISTS (SELECT 1 FROM commands o
             WHERE o.connector = c.connector AND o.identity_key = c.identity_key
               AND o.target = c.target AND o.status = 'inflight')
       ORDER BY c.id LIMIT $6)
     RETURNING *";

pub(super) const CLAIM_POSTGRES: &str =
    "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2
     WHERE id IN (
       SELECT c.id FROM commands c
       WHERE c.connector = $3 AND c.target = $4 AND c.status = 'confirming' AND c.id <> $5
         AND NOT EXISTS (SELECT 1 FROM commands o
             WHERE o.connector = c.connector AND o.identity_key = c.identity_key
               AND o.target = c.target AND o.status = 'inflight')
       ORDER BY c.id LIMIT $6
       FOR UPDATE SKIP LOCKED)
     RETURNING *";

impl Store {
    /// Claim, under `owner`'s lease, up to `limit` commands on `target` that wait for their
    /// read-back, whenever their next look was due: one listing is about to confirm them with
    /// `except` (the command already claimed). Changes already written are never sent again here;
    /// only their read-back moves earlier.
    pub async fn claim_confirming_on(
        &self,
        connector: &str,
        target: &str,
        owner: &str,
        lease_until: i64,
        except: i64,
        limit: i64,
    ) -> Result<Vec<CommandRow>> {
        let sql = match self.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let claimed = self
            .retry("read-back claim", || async {
                let mut tx = self.begin_write_for(crate::model::Action::Revoke).await?;
                let rows = sqlx::query(sql)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(connector)
                    .bind(target)
                    .bind(except)
                    .bind(limit)
                    .fetch_all(&mut **tx)
                    .await?;
                let cmds = rows
                    .iter()
                    .map(CommandRow::from_row)
                    .collect::<Result<Vec<_>>>()?;
                tx.commit().await?;
                Ok::<_, StoreError>(cmds)
            })
            .await;
        match claimed {
            // Another replica claimed a command of one of these grants at the same moment
            // (PostgreSQL's unique index on in-flight commands): those wait for their own look.
            Err(StoreError::Db(e)) if postgres::is_second_inflight(&e) => Ok(Vec::new()),
            other => other,
        }
    }
}
