//! Read-backs by target. A vendor that shows a change only in the listing of its target (Nuki's
//! lock authorisations) is asked once per target, not once per change: a change written while more
//! writes to the same target are queued waits (at most the profile's `confirm.gather_ms`) for them,
//! and the read-back that finally runs confirms every change on the target waiting for one. A
//! mass drain then costs about one request per revocation instead of two; a single leaver, with
//! nothing queued behind, is read back at once as before.

use super::Dispatcher;
use crate::audit;
use crate::clock::to_micros;
use crate::connectors::{Connector, GrantRequest, Outcome, call};
use crate::model::{Action, CommandId, CommandStatus, GrantState};
use crate::store::confirm_batch::{Shown, finish_shown};
use crate::store::{self, CommandRow, StoreError};
use std::time::Duration;

/// Most changes one listing confirms: bounds the claim and the work of one worker.
const MAX_PER_LISTING: i64 = 500;

/// How long a change just written waits before it is read back, given what else is on its target:
/// up to the gather bound while more writes to it are queued, else not at all.
///
/// The bound is staggered by target, between half of it and all of it. A mass drain writes its
/// first change to every target within a moment; with one bound for all, every target's listing
/// came due in the same second, and the lane's workers spent that second (thousands of changes
/// finished) on read-backs instead of writes.
pub(super) fn read_back_wait(
    on_target: &store::confirm_batch::OnTarget,
    gather: Duration,
    target: &str,
) -> Option<Duration> {
    on_target.more_due.then(|| staggered(gather, target))
}

/// `gather` scaled by a fraction in [1/2, 1) that depends only on `target`: the same target always
/// waits as long, so its changes are still read back together.
fn staggered(gather: Duration, target: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    target.hash(&mut h);
    let step = (h.finish() % 1024) as u32;
    gather / 2 + (gather / 2) * step / 1024
}

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
        if let Some(wait) = read_back_wait(&on_target, connector.confirm_gather(), &cmd.target) {
            self.settle(connector, owner, &cmd, Ok(written), probe, Some(wait))
                .await?;
            return self
                .read_back_if_none_due(connector, owner, std::slice::from_ref(&cmd))
                .await;
        }
        cmd.dispatched_at = Some(now);
        let req = super::backlog::with_refs(req, &written);
        self.confirm_with_waiting(connector, owner, vec![(cmd, req)], probe, on_target.waiting)
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
        self.confirm_with_waiting(connector, owner, vec![(cmd, req)], probe, waiting)
            .await
    }

    /// [`Dispatcher::confirm_on_target`] for changes claimed on one target (`batch`, not empty),
    /// knowing whether other changes wait on the target: a single leaver's read-back adds no
    /// write when nothing else waits.
    pub(super) async fn confirm_with_waiting(
        &self,
        connector: &dyn Connector,
        owner: &str,
        mut batch: Vec<(CommandRow, GrantRequest)>,
        probe: bool,
        waiting: bool,
    ) -> Result<(), StoreError> {
        let Some((cmd, _)) = batch.first() else {
            return Ok(());
        };
        let (on, target, except) = (cmd.connector.clone(), cmd.target.clone(), cmd.id);
        let now = to_micros(self.clock.now());
        let lease = super::timing::secs_micros(self.config.engine.lease_seconds);
        let others = if waiting {
            self.store
                .claim_confirming_on(
                    &on,
                    &target,
                    owner,
                    now.saturating_add(lease),
                    except,
                    MAX_PER_LISTING,
                )
                .await?
        } else {
            Vec::new()
        };
        batch.extend(self.requests_for(connector, owner, others, false).await?);
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

    /// Changes recorded as waiting on their targets (`waited_on`: one command of each, all of
    /// one connector) for the writes queued behind them: each target whose writes were all taken
    /// meanwhile is read back now. The worker that wrote the last of them may have listed the
    /// target between this worker's look and its waits' commit, and found nothing waiting; no one
    /// else would list the target for them, and they waited out the whole gather bound. Looked at
    /// after the commit, one of the two always finds the other's changes.
    pub(super) async fn read_back_if_none_due(
        &self,
        connector: &dyn Connector,
        owner: &str,
        waited_on: &[CommandRow],
    ) -> Result<(), StoreError> {
        let Some(first) = waited_on.first() else {
            return Ok(());
        };
        let now = to_micros(self.clock.now());
        let targets: Vec<&str> = waited_on.iter().map(|c| c.target.as_str()).collect();
        let due = store::confirm_batch::targets_with_more_due(
            self.store.pool(),
            &first.connector,
            &targets,
            first.action.priority(),
            now,
        )
        .await?;
        let lease = super::timing::secs_micros(self.config.engine.lease_seconds);
        for cmd in waited_on.iter().filter(|c| !due.contains(&c.target)) {
            // Every waiting change on the target, this worker's own included (no id is 0).
            let waiting = self
                .store
                .claim_confirming_on(
                    &cmd.connector,
                    &cmd.target,
                    owner,
                    now.saturating_add(lease),
                    CommandId(0),
                    MAX_PER_LISTING,
                )
                .await?;
            if waiting.is_empty() {
                continue;
            }
            let batch = self.requests_for(connector, owner, waiting, false).await?;
            self.confirm_with_waiting(connector, owner, batch, false, false)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn on_target(
        &self,
        cmd: &CommandRow,
        now: i64,
    ) -> Result<store::confirm_batch::OnTarget, StoreError> {
        store::confirm_batch::on_target(self.store.pool(), cmd, now).await
    }

    /// Every change one listing confirmed, finished in one transaction of a few statements: a
    /// mass drain writes one commit per listing, not one per revocation.
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
        let shown: Vec<Shown> = confirmed
            .iter()
            .map(|(cmd, outcome)| Shown {
                cmd,
                observed: match cmd.action {
                    Action::Issue => GrantState::Present,
                    Action::Revoke => GrantState::Absent,
                },
                grant_ref: match cmd.action {
                    Action::Issue => outcome.refs().1,
                    Action::Revoke => None,
                },
            })
            .collect();
        let finished = self
            .store
            .retry("command finish", || async {
                let action = super::backlog::group_of(urgent);
                let mut tx = self.store.begin_grouped_for(action).await?;
                let finished = finish_shown(&mut tx, owner, &shown, now).await?;
                let mut entries = Vec::with_capacity(finished.len());
                let mut person_refs = Vec::new();
                for (cmd, outcome) in confirmed.iter().filter(|(c, _)| finished.contains(&c.id)) {
                    if let Some(person_ref) = outcome.refs().0 {
                        person_refs.push((cmd.identity_key.as_str(), person_ref));
                    }
                    entries.push(super::finish::done_entry(cmd, now));
                }
                if let Some((cmd, _)) = confirmed.first() {
                    store::confirm_batch::put_person_refs(&mut tx, &cmd.connector, &person_refs)
                        .await?;
                }
                audit::append_all(&mut tx, entries).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(finished)
            })
            .await?;
        for (cmd, _) in confirmed.iter().filter(|(c, _)| finished.contains(&c.id)) {
            self.finished(cmd, CommandStatus::Done, Some(now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::read_back_wait;
    use crate::store::confirm_batch::OnTarget;
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn the_gather_bound_is_staggered_by_target_and_the_same_for_one_target() {
        let gather = Duration::from_secs(10);
        let queued = OnTarget {
            more_due: true,
            waiting: false,
        };
        let waits: Vec<Duration> = (0..100)
            .map(|i| read_back_wait(&queued, gather, &format!("lock-{i}")).unwrap())
            .collect();
        assert!(waits.iter().all(|w| *w >= gather / 2 && *w <= gather));
        // Spread over the half of the bound, not bunched into the same second.
        let seconds: BTreeSet<u64> = waits.iter().map(Duration::as_secs).collect();
        assert!(seconds.len() >= 4, "{seconds:?}");
        assert_eq!(
            read_back_wait(&queued, gather, "lock-7"),
            read_back_wait(&queued, gather, "lock-7")
        );
        // Nothing queued behind: read back at once.
        let alone = OnTarget {
            more_due: false,
            waiting: true,
        };
        assert_eq!(read_back_wait(&alone, gather, "lock-7"), None);
    }
}
