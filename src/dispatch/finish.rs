//! A command's end: its row, what the vendor now holds, its vendor ids, the audit record, and
//! after the commit its metrics.

use super::Dispatcher;
use crate::audit;
use crate::clock::to_micros;
use crate::connectors::Outcome;
use crate::model::{Action, CommandStatus, GrantState};
use crate::store::{self, CommandRow, CommandUpdate, StoreError};
use crate::telemetry::metrics::Finished;

impl Dispatcher {
    pub(super) async fn record_refs(
        &self,
        conn: &mut sqlx::AnyConnection,
        cmd: &CommandRow,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let (person_ref, _) = outcome.refs();
        if let Some(p) = person_ref {
            store::put_vendor_person(conn, &cmd.connector, &cmd.identity_key, p).await?;
        }
        Ok(())
    }

    /// Record a command's end; a transaction that lost a lock race runs again.
    pub(super) async fn finish(
        &self,
        owner: &str,
        cmd: &CommandRow,
        status: CommandStatus,
        confirmed_at: Option<i64>,
        error: Option<String>,
        outcome: Option<&Outcome>,
    ) -> Result<(), StoreError> {
        self.store
            .retry("command finish", || {
                self.finish_once(owner, cmd, status, confirmed_at, error.clone(), outcome)
            })
            .await
    }

    async fn finish_once(
        &self,
        owner: &str,
        cmd: &CommandRow,
        status: CommandStatus,
        confirmed_at: Option<i64>,
        error: Option<String>,
        outcome: Option<&Outcome>,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let mut tx = self.store.begin_grouped_for(cmd.action).await?;
        let end = Finish {
            status,
            confirmed_at,
            error,
            outcome,
        };
        if !self.record_finish(&mut tx, owner, cmd, &end, now).await? {
            // The lease ran out and another worker took the command: it will finish it.
            tx.rollback().await?;
            return Ok(());
        }
        tx.commit().await?;
        self.finished(cmd, status, confirmed_at);
        Ok(())
    }

    /// Write a command's end in `tx`: its row, what the vendor now holds, the audit record.
    /// `false` (nothing written): the lease ran out and another worker has the command.
    pub(super) async fn record_finish(
        &self,
        tx: &mut sqlx::AnyConnection,
        owner: &str,
        cmd: &CommandRow,
        end: &Finish<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let moved = store::update_claimed(
            tx,
            owner,
            &CommandUpdate {
                id: cmd.id,
                status: end.status,
                next_attempt_at: now,
                dispatched_at: end.confirmed_at,
                confirmed_at: end.confirmed_at,
                confirm_deadline: None,
                last_error: end.error.clone(),
                refund_attempt: false,
                first_attempt_at: cmd.first_attempt_at,
            },
        )
        .await?;
        if !moved {
            return Ok(false);
        }
        if let Some(o) = end.outcome {
            self.record_refs(tx, cmd, o).await?;
            let observed = match cmd.action {
                Action::Issue => GrantState::Present,
                Action::Revoke => GrantState::Absent,
            };
            let grant_ref = match cmd.action {
                Action::Issue => o.refs().1,
                Action::Revoke => None,
            };
            store::observe_grant(tx, cmd, observed, grant_ref, now).await?;
        }
        audit::append_all(tx, vec![end_entry(cmd, end, now)]).await?;
        Ok(true)
    }

    /// After a command's end committed: its metrics and log line.
    pub(super) fn finished(
        &self,
        cmd: &CommandRow,
        status: CommandStatus,
        confirmed_at: Option<i64>,
    ) {
        if let Some(outcome) = Finished::of(status) {
            // The row as stored now: the same times the latency report reads back later.
            let finished = CommandRow {
                dispatched_at: cmd.dispatched_at.or(confirmed_at),
                confirmed_at,
                status,
                ..cmd.clone()
            };
            self.metrics.command_finished(&finished, outcome);
        }
        if status == CommandStatus::Done && cmd.action == Action::Revoke {
            let end_to_end_ms = confirmed_at.map(|c| (c - cmd.trigger_at) as f64 / 1000.0);
            tracing::debug!(
                connector = %cmd.connector, identity = %cmd.identity_key, target = %cmd.target,
                end_to_end_ms = end_to_end_ms.unwrap_or_default(), "revocation confirmed"
            );
        }
    }
}

/// The audit record of a command's end.
fn end_entry(cmd: &CommandRow, end: &Finish<'_>, now: i64) -> audit::Entry {
    let end_to_end_ms = end
        .confirmed_at
        .map(|c| (c - cmd.trigger_at) as f64 / 1000.0);
    audit::Entry {
        at: now,
        actor: "dispatcher".into(),
        action: format!("command.{}", end.status),
        subject: cmd.identity_key.to_string(),
        details: serde_json::json!({
            "command": cmd.id, "action": cmd.action, "connector": cmd.connector, "target": cmd.target,
            "attempts": cmd.attempts, "error": end.error, "end_to_end_ms": end_to_end_ms,
        })
        .to_string(),
    }
}

/// The audit record of a command the vendor confirmed at `now`.
pub(super) fn done_entry(cmd: &CommandRow, now: i64) -> audit::Entry {
    let end = Finish {
        status: CommandStatus::Done,
        confirmed_at: Some(now),
        error: None,
        outcome: None,
    };
    end_entry(cmd, &end, now)
}

/// How a command ended, as [`Dispatcher::record_finish`] writes it.
pub(super) struct Finish<'a> {
    pub(super) status: CommandStatus,
    pub(super) confirmed_at: Option<i64>,
    pub(super) error: Option<String>,
    pub(super) outcome: Option<&'a Outcome>,
}
