//! What the SLA report reads from the outbox.

use super::Result;
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
    pub status: String,
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
                status: r.try_get("status")?,
                trigger_at: r.try_get("trigger_at")?,
                confirmed_at: r.try_get("confirmed_at")?,
            })
        })
        .collect()
}
