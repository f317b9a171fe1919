//! What the SLA report reads from the outbox.

use super::Result;
use crate::model::CommandStatus;
use sqlx::{AnyPool, Row};

/// Which revocations an SLA covers: one connector's, or those of some doors at any connector (a
/// risk tier's).
#[derive(Debug, Clone, Copy)]
pub enum SlaScope<'a> {
    Connector(&'a str),
    Targets(&'a [String]),
}

/// One revocation an SLA counts: its status, trigger and confirmation (microseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaSample {
    pub status: CommandStatus,
    pub trigger_at: i64,
    pub confirmed_at: Option<i64>,
}

/// The revocations of `scope` finished since `since`, and those still open.
pub async fn sla_revocations(
    pool: &AnyPool,
    scope: SlaScope<'_>,
    since: i64,
) -> Result<Vec<SlaSample>> {
    // A finished command's `next_attempt_at` is when it finished (the dispatcher sets it so).
    const WINDOW: &str = "action = 'revoke'
           AND ((status IN ('done', 'dead') AND COALESCE(confirmed_at, next_attempt_at) >= $1)
                OR status IN ('pending', 'inflight', 'confirming'))";
    let rows = match scope {
        SlaScope::Connector(c) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT status, trigger_at, confirmed_at FROM commands WHERE connector = $2 AND {WINDOW}"
            )))
            .bind(since)
            .bind(c)
            .fetch_all(pool)
            .await?
        }
        SlaScope::Targets(targets) => {
            let mut all = Vec::new();
            for t in targets {
                all.extend(
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT status, trigger_at, confirmed_at FROM commands WHERE target = $2 AND {WINDOW}"
                    )))
                    .bind(since)
                    .bind(t)
                    .fetch_all(pool)
                    .await?,
                );
            }
            all
        }
    };
    rows.iter()
        .map(|r| {
            Ok(SlaSample {
                status: super::states::command_status(r, "commands")?,
                trigger_at: r.try_get("trigger_at")?,
                confirmed_at: r.try_get("confirmed_at")?,
            })
        })
        .collect()
}

/// Open and dead commands, grouped for the outbox gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxGroup {
    pub connector: String,
    pub action: String,
    pub status: CommandStatus,
    pub count: i64,
    /// When the oldest of them was enqueued (microseconds).
    pub oldest: Option<i64>,
}

pub async fn outbox_groups(pool: &AnyPool) -> Result<Vec<OutboxGroup>> {
    sqlx::query(
        "SELECT connector, action, status, COUNT(*) AS n, MIN(enqueued_at) AS oldest FROM commands
         WHERE status IN ('pending', 'inflight', 'confirming', 'dead')
         GROUP BY connector, action, status",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(OutboxGroup {
            connector: r.try_get("connector")?,
            action: r.try_get("action")?,
            status: super::states::command_status(r, "commands")?,
            count: r.try_get("n")?,
            oldest: r.try_get("oldest")?,
        })
    })
    .collect()
}

/// What a per-source gauge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerSource {
    /// Records set aside (quarantined), of any kind.
    Quarantined,
    /// Changes held for an approver.
    Held,
    /// HR files set aside whole.
    RejectedFiles,
}

/// How many of `what` each source has.
pub async fn per_source(pool: &AnyPool, what: PerSource) -> Result<Vec<(String, i64)>> {
    let sql = match what {
        PerSource::Quarantined => "SELECT source, COUNT(*) AS n FROM quarantine GROUP BY source",
        PerSource::Held => {
            "SELECT source, COUNT(*) AS n FROM held_changes WHERE status = 'held' GROUP BY source"
        }
        PerSource::RejectedFiles => {
            "SELECT source, COUNT(*) AS n FROM quarantine WHERE field = 'file' GROUP BY source"
        }
    };
    sqlx::query(sql)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("source")?, r.try_get("n")?)))
        .collect()
}

/// When each source's oldest held change was held (microseconds).
pub async fn oldest_held(pool: &AnyPool) -> Result<Vec<(String, i64)>> {
    sqlx::query(
        "SELECT source, MIN(created_at) AS oldest FROM held_changes WHERE status = 'held' GROUP BY source",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("source")?, r.try_get("oldest")?)))
    .collect()
}

/// When each source's checkpoint last moved (microseconds).
pub async fn checkpoint_moves(pool: &AnyPool) -> Result<Vec<(String, i64)>> {
    sqlx::query("SELECT source, updated_at FROM source_checkpoints")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("source")?, r.try_get("updated_at")?)))
        .collect()
}
