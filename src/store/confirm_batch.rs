//! Confirming many changes on one target with one vendor listing (migration 0028): what else is
//! queued or waiting on a target, and claiming every change on a target that waits for its
//! read-back, so one listing confirms them all.

use super::{Backend, CommandId, CommandRow, Result, Store, StoreError, postgres};
use sqlx::AnyPool;

/// What else is on a target beside one command: whether more writes at `max_priority` or more
/// urgent are queued and due (so a change just written can wait to be read back with them), and
/// whether other changes wait for a read-back (so one listing confirms them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnTarget {
    pub more_due: bool,
    pub waiting: bool,
}

pub async fn on_target(
    pool: &AnyPool,
    connector: &str,
    target: &str,
    max_priority: i64,
    now: i64,
    except: CommandId,
) -> Result<OnTarget> {
    use sqlx::Row;
    let row = sqlx::query(ON_TARGET_SQL)
        .bind(connector)
        .bind(target)
        .bind(max_priority)
        .bind(now)
        .bind(except)
        .fetch_one(pool)
        .await?;
    Ok(OnTarget {
        more_due: row.try_get::<i64, _>("more_due")? != 0,
        waiting: row.try_get::<i64, _>("waiting")? != 0,
    })
}

pub(super) const ON_TARGET_SQL: &str = "SELECT
     (SELECT COUNT(*) FROM (SELECT 1 FROM commands
        WHERE connector = $1 AND target = $2 AND status = 'pending'
          AND priority <= $3 AND next_attempt_at <= $4 LIMIT 1) m) AS more_due,
     (SELECT COUNT(*) FROM (SELECT 1 FROM commands
        WHERE connector = $1 AND target = $2 AND status = 'confirming' AND id <> $5 LIMIT 1) w) AS waiting";

/// The claim of changes waiting for a read-back on one target; PostgreSQL adds its row locking.
macro_rules! claim_confirming_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2
     WHERE id IN (
       SELECT c.id FROM commands c
       WHERE c.connector = $3 AND c.target = $4 AND c.status = 'confirming' AND c.id <> $5
         AND NOT EXISTS (SELECT 1 FROM commands o
             WHERE o.connector = c.connector AND o.identity_key = c.identity_key
               AND o.target = c.target AND o.status = 'inflight')
       ORDER BY c.id LIMIT $6",
            $lock,
            ")
     RETURNING *"
        )
    };
}

pub(super) const CLAIM_SQLITE: &str = claim_confirming_sql!("");
pub(super) const CLAIM_POSTGRES: &str = claim_confirming_sql!("\n       FOR UPDATE SKIP LOCKED");

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
        except: CommandId,
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
