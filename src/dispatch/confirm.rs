//! Read-backs by target. A vendor that shows a change only in the listing of its target (Nuki's
//! lock authorisations) is asked once per target, not once per change: a change written while more
//! writes to the same target are queued waits (at most the profile's `confirm.gather_ms`) for them,
//! and the read-back that finally runs confirms every change on the target waiting for one. A
//! mass drain then costs about one request per revocation instead of two; a single leaver, with
//! nothing queued behind, is read back at once as before.

use super::Dispatcher;
use crate::clock::to_micros;
use crate::connectors::{Connector, GrantRequest, Outcome, call};
use crate::model::{Action, CommandStatus};
use crate::store::{self, CommandRow, StoreError};

/// Most changes one listing confirms: bounds the claim and the work of one worker.
const MAX_PER_LISTING: i64 = 500;

impl Dispatcher {
    /// A change the vendor accepted (`written`, not yet shown): read it back now, with every
    /// change on its target waiting for a read-back, unless more writes to the target are queued;
    /// then it waits for them, up to the connector's gather bound.
    pub(super) async fn written(
        &self,
        connector: &dyn Connector,
        owner: &str,
        mut cmd: CommandRow,
        req: GrantRequest,
        written: Outcome,
        probe: bool,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let on_target = self.on_target(&cmd, now).await?;
        if on_target.more_due {
            let gather = connector.confirm_gather();
            return self
                .settle(connector, owner, &cmd, Ok(written), probe, Some(gather))
                .await;
        }
        cmd.dispatched_at = Some(now);
        let (person_ref, grant_ref) = written.refs();
        let req = GrantRequest {
            person_ref: person_ref.map(str::to_string).or(req.person_ref),
            grant_ref: grant_ref.map(str::to_string).or(req.grant_ref),
            ..req
        };
        self.confirm_with_waiting(connector, owner, cmd, req, probe, on_target.waiting)
            .await
    }

    /// Read back `cmd` (claimed, written) together with every other change on its target that
    /// waits for a read-back, claimed here under this worker's lease: one listing for all.
    pub(super) async fn confirm_on_target(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmd: CommandRow,
        req: GrantRequest,
        probe: bool,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let waiting = self.on_target(&cmd, now).await?.waiting;
        self.confirm_with_waiting(connector, owner, cmd, req, probe, waiting)
            .await
    }

    /// [`Dispatcher::confirm_on_target`], knowing whether other changes wait on the target: a
    /// single leaver's read-back adds no write when nothing else waits.
    async fn confirm_with_waiting(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmd: CommandRow,
        req: GrantRequest,
        probe: bool,
        waiting: bool,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let lease = super::timing::secs_micros(self.config.engine.lease_seconds);
        let others = if waiting {
            self.store
                .claim_confirming_on(
                    &cmd.connector,
                    &cmd.target,
                    owner,
                    now.saturating_add(lease),
                    cmd.id,
                    MAX_PER_LISTING,
                )
                .await?
        } else {
            Vec::new()
        };
        let mut batch = vec![(cmd, req)];
        for other in others {
            if let Some(req) = self.request_for(connector, owner, &other, false).await? {
                batch.push((other, req));
            }
        }
        let changes: Vec<(GrantRequest, Action)> =
            batch.iter().map(|(c, r)| (r.clone(), c.action)).collect();
        let urgent = batch.iter().any(|(c, _)| c.action == Action::Revoke);
        let (result, _) = call::scope(urgent, connector.confirm_on_target(&changes)).await;
        let now = to_micros(self.clock.now());
        self.breaker_verdict(connector.name(), &result, now).await?;
        match result {
            Ok(outcomes) => {
                let mut confirmed = Vec::new();
                for ((cmd, _), outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Confirmed { .. } => confirmed.push((cmd, outcome)),
                        pending => {
                            self.settle(connector, owner, &cmd, Ok(pending), probe, None)
                                .await?
                        }
                    }
                }
                self.finish_confirmed(owner, &confirmed).await?;
            }
            Err(e) => {
                for (cmd, _) in &batch {
                    self.settle(connector, owner, cmd, Err(e.clone()), probe, None)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn on_target(
        &self,
        cmd: &CommandRow,
        now: i64,
    ) -> Result<store::confirm_batch::OnTarget, StoreError> {
        store::confirm_batch::on_target(
            self.store.pool(),
            &cmd.connector,
            &cmd.target,
            cmd.action.priority(),
            now,
            cmd.id,
        )
        .await
    }

    /// Every change one listing confirmed, finished in one transaction: a mass drain writes one
    /// commit per listing, not one per revocation.
    async fn finish_confirmed(
        &self,
        owner: &str,
        confirmed: &[(CommandRow, Outcome)],
    ) -> Result<(), StoreError> {
        if confirmed.is_empty() {
            return Ok(());
        }
        let now = to_micros(self.clock.now());
        let urgent = confirmed.iter().any(|(c, _)| c.action == Action::Revoke);
        let finished = self
            .store
            .retry("command finish", || async {
                let mut tx = self
                    .store
                    .begin_grouped_for(if urgent {
                        Action::Revoke
                    } else {
                        Action::Issue
                    })
                    .await?;
                let mut finished = Vec::with_capacity(confirmed.len());
                for (cmd, outcome) in confirmed {
                    let end = super::finish::Finish {
                        status: CommandStatus::Done,
                        confirmed_at: Some(now),
                        error: None,
                        outcome: Some(outcome),
                    };
                    if self.record_finish(&mut tx, owner, cmd, &end, now).await? {
                        finished.push(cmd);
                    }
                }
                tx.commit().await?;
                Ok::<_, StoreError>(finished)
            })
            .await?;
        for cmd in finished {
            self.finished(cmd, CommandStatus::Done, Some(now));
        }
        Ok(())
    }
}
