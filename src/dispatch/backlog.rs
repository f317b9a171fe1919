//! A worker before a backlog claims several commands at once, on a vendor that confirms by
//! listing a target (Nuki): one claim statement takes what it would otherwise take in many, the
//! claim's requests are read in three statements, its writes are sent one after the other (the
//! lane's concurrency and rate limit are unchanged), and the writes to one target are read back
//! together by one listing, finished in one transaction. A worker's claim grows while every claim
//! comes back full and falls back to one command when the lane runs dry, so a lone leaver is
//! still claimed, sent and read back at once, by whichever worker is free.

use super::Dispatcher;
use crate::clock::to_micros;
use crate::connectors::{Connector, GrantRequest, Outcome};
use crate::model::{Action, CommandId};
use crate::store::{self, CommandRow, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Most commands one claim takes.
const MAX_CLAIM: usize = 32;

/// The next claim's size after a claim of `limit` brought `claimed`: four times as many while
/// claims come back full, else what the last one found (one when the lane ran dry). Doubling took
/// five claims to reach 32; while a mass termination's feed held SQLite's writer, each claim
/// waited for a feed batch, and the drain's first seconds sent a fraction of the rate limit.
pub(super) fn next_claim(limit: usize, claimed: usize, max: usize) -> usize {
    if claimed >= limit {
        (limit * 4).min(max).max(1)
    } else {
        claimed.clamp(1, max.max(1))
    }
}

impl Dispatcher {
    /// Most commands a worker of `connector`'s lane claims at once: a claim must be carried out
    /// well inside its lease at the lane's rate limit, shared by the lane's workers.
    pub(super) fn max_claim(&self, connector: &dyn Connector) -> usize {
        // Elsewhere a command is its own write and read-back: claiming several saves little.
        if !connector.confirms_by_target_listing() {
            return 1;
        }
        let (per_second, _) = connector.rate_limit();
        let workers = self.lane_concurrency(connector.name()) + 1;
        let lease = self.config.engine.lease_seconds.max(1);
        let within_lease =
            u64::from(per_second.max(1)).saturating_mul(lease) / (4 * workers as u64);
        (within_lease as usize).clamp(1, MAX_CLAIM)
    }

    /// Claim up to `limit` commands of the lane and carry them out. Returns how many were claimed.
    pub async fn step_up_to(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
        revokes_only: bool,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let now = to_micros(self.clock.now());
        let lease = super::timing::secs_micros(self.config.engine.lease_seconds);
        let claim = store::Claim {
            connector: connector.name(),
            owner,
            now,
            lease_until: now.saturating_add(lease),
            revokes_only,
        };
        let cmds = self.store.claim_up_to(&claim, limit as i64).await?;
        let claimed = cmds.len();
        if claimed == 0 {
            return Ok(0);
        }
        let ids: Vec<CommandId> = cmds.iter().map(|c| c.id).collect();
        // The claim's leases are renewed while it is carried out: however long the vendor keeps
        // it (rate limits, 429s), no other worker takes a command over and writes it again.
        tokio::select! {
            carried = self.carry_claim(connector, owner, cmds) => carried?,
            () = self.keep_leases(owner, &ids) => {}
        }
        Ok(claimed)
    }

    /// Carry out a claim. Revocation first within a claim too: its revokes are written, read back
    /// and finished before the first issue's write, so a leaver claimed with a run of joiners
    /// does not wait for their writes (hundreds of milliseconds at the rate limit).
    async fn carry_claim(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
        cmds: Vec<CommandRow>,
    ) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let (revokes, issues): (Vec<_>, Vec<_>) =
            cmds.into_iter().partition(|c| c.action == Action::Revoke);
        for part in [revokes, issues] {
            if part.len() > 1 && connector.confirms_by_target_listing() {
                self.carry_listed(connector, owner, part, started).await?;
            } else {
                for cmd in part {
                    self.carry(connector, owner, cmd).await?;
                }
            }
        }
        Ok(())
    }

    /// Renew the lease on `ids` every third of a lease, for as long as the claim is carried out
    /// (the caller drops this when it is done). A renewal that fails is logged and tried again at
    /// the next turn, with two thirds of the lease still left.
    async fn keep_leases(&self, owner: &str, ids: &[CommandId]) {
        let lease_seconds = self.config.engine.lease_seconds.max(1);
        loop {
            tokio::time::sleep(Duration::from_secs(lease_seconds) / 3).await;
            let until = to_micros(self.clock.now())
                .saturating_add(super::timing::secs_micros(lease_seconds));
            if let Err(e) = self.store.renew_command_leases(owner, ids, until).await {
                tracing::warn!(owner, error = %e, "renewing the leases of claimed commands failed");
            }
        }
    }

    /// Whether commands may go to the vendor without the one-at-a-time checks: the breaker is
    /// closed and, with leases, this replica holds the lane.
    fn lane_open(&self, connector: &dyn Connector) -> bool {
        let held = self
            .leases
            .as_ref()
            .is_none_or(|l| l.holds(&crate::leases::lane(connector.name())));
        let closed = self
            .breakers
            .get(connector.name())
            .is_none_or(|b| b.state() == super::breaker::State::Closed);
        held && closed
    }

    /// Carry out claimed commands of a vendor that confirms by listing: their requests read
    /// together, the writes sent in order, then one read-back per target for the changes written
    /// (unless more writes to the target are due: then they wait for those, as one change does).
    /// Once the breaker opens or the lane's lease is lost, the rest goes the one-at-a-time way,
    /// which defers or probes. Once a write fails, or half the lease has gone (a slow vendor),
    /// the rest goes back to the outbox untried, for any worker to take, well before another
    /// could take it over from this one (`started`: when the claim was made).
    async fn carry_listed(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
        cmds: Vec<CommandRow>,
        started: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        let budget = Duration::from_secs(self.config.engine.lease_seconds) / 2;
        let mut held_back = Vec::new();
        let mut untried = Vec::new();
        let mut failed = false;
        let requests = if self.lane_open(connector.as_ref()) {
            self.requests_for(connector.as_ref(), owner, cmds, false)
                .await?
        } else {
            held_back = cmds;
            Vec::new()
        };
        let mut written = Vec::new();
        for (cmd, req) in requests {
            if failed || started.elapsed() >= budget {
                untried.push(cmd);
            } else if !held_back.is_empty() || !self.lane_open(connector.as_ref()) {
                held_back.push(cmd);
            } else if cmd.dispatched_at.is_some() {
                // Written before, claimed for its read-back.
                written.push((cmd, req, None));
            } else {
                let span = crate::telemetry::tracing::command_span(&cmd);
                let write = self.write_one(connector.as_ref(), owner, cmd, req);
                match tracing::Instrument::instrument(write, span).await? {
                    Sent::Written(w) => written.push(*w),
                    Sent::Settled => {}
                    // Settled for a retry; the rest is not held up behind a failing vendor.
                    Sent::Failed => failed = true,
                }
            }
        }
        self.read_back_written(connector.as_ref(), owner, written)
            .await?;
        let now = to_micros(self.clock.now());
        for cmd in &untried {
            self.defer(owner, cmd, now).await?;
        }
        for cmd in held_back {
            self.carry(connector, owner, cmd).await?;
        }
        Ok(())
    }

    /// Send one claimed change's write. A change the vendor accepted comes back to be read back
    /// with the others on its target; any other outcome is settled here.
    async fn write_one(
        &self,
        connector: &dyn Connector,
        owner: &str,
        mut cmd: CommandRow,
        req: GrantRequest,
    ) -> Result<Sent, StoreError> {
        let (result, sent_at) = self
            .stamped(
                cmd.action == Action::Revoke,
                connector.write(&req, cmd.action),
            )
            .await;
        cmd.first_attempt_at = cmd.first_attempt_at.or(Some(sent_at));
        let now = to_micros(self.clock.now());
        self.breaker_verdict(connector.name(), &result, now).await?;
        match result {
            Ok(written @ Outcome::Pending { .. }) => {
                let written = super::request::new_refs_only(written, &req);
                let req = with_refs(req, &written);
                Ok(Sent::Written(Box::new((cmd, req, Some(written)))))
            }
            result => {
                let failed = result.is_err();
                self.settle(connector, owner, &cmd, result, false, None)
                    .await?;
                Ok(if failed { Sent::Failed } else { Sent::Settled })
            }
        }
    }

    /// Read back the changes written to each target together, with every other change waiting
    /// on it; or, when all were just written and more writes to the target are due, let them
    /// wait for those (at most the connector's gather bound), as one change written alone does.
    async fn read_back_written(
        &self,
        connector: &dyn Connector,
        owner: &str,
        written: Vec<Written>,
    ) -> Result<(), StoreError> {
        let mut by_target: BTreeMap<String, Vec<Written>> = BTreeMap::new();
        for w in written {
            by_target.entry(w.0.target.clone()).or_default().push(w);
        }
        // Every target is looked at first and the waits recorded at once, before any read-back
        // (a vendor request): a worker that writes to one of these targets meanwhile finds the
        // waiting changes and reads them back with its own.
        let mut waiting: Vec<(Written, Duration)> = Vec::new();
        let mut waited_on: Vec<CommandRow> = Vec::new();
        let mut read_now = Vec::new();
        for (_, written) in by_target {
            let Some((first, _, _)) = written.first() else {
                continue;
            };
            let now = to_micros(self.clock.now());
            let on_target = self.on_target(first, now).await?;
            // A change claimed for its read-back already waited for the writes behind it: it is
            // read back now, and the fresh writes with it.
            let all_fresh = written.iter().all(|(_, _, outcome)| outcome.is_some());
            let wait = super::confirm::read_back_wait(
                &on_target,
                connector.confirm_gather(),
                &first.target,
            );
            match wait.filter(|_| all_fresh) {
                Some(wait) => {
                    waited_on.push(first.clone());
                    waiting.extend(written.into_iter().map(|w| (w, wait)));
                }
                None => read_now.push((written, on_target.waiting)),
            }
        }
        self.await_read_back(connector, owner, &waiting).await?;
        for (written, others_waiting) in read_now {
            let now = to_micros(self.clock.now());
            let batch = written
                .into_iter()
                .map(|(mut cmd, req, _)| {
                    cmd.dispatched_at = cmd.dispatched_at.or(Some(now));
                    (cmd, req)
                })
                .collect();
            self.confirm_with_waiting(connector, owner, batch, false, others_waiting)
                .await?;
        }
        self.read_back_if_none_due(connector, owner, &waited_on)
            .await
    }

    /// Changes just written that wait for the writes behind them on their targets (each with how
    /// long), to be read back with those: one transaction for all, their vendor ids stored.
    async fn await_read_back(
        &self,
        connector: &dyn Connector,
        owner: &str,
        waiting: &[(Written, Duration)],
    ) -> Result<(), StoreError> {
        if waiting.is_empty() {
            return Ok(());
        }
        let now = to_micros(self.clock.now());
        let policy = connector.retry_policy();
        let wait = store::confirm_batch::AwaitReadBack {
            now,
            deadline: now.saturating_add(policy.confirm_deadline.as_micros() as i64),
            note: "accepted by the vendor, not visible yet",
        };
        let urgent = waiting
            .iter()
            .any(|((c, _, _), _)| c.action == Action::Revoke);
        let cmds: Vec<(&CommandRow, i64)> = waiting
            .iter()
            .map(|((c, _, _), wait)| (c, super::timing::after(now, *wait, self.cap())))
            .collect();
        self.store
            .retry("read-back wait", || async {
                let mut tx = self.store.begin_grouped_for(group_of(urgent)).await?;
                for ((cmd, _, outcome), _) in waiting {
                    if let Some(outcome) = outcome {
                        self.record_refs(&mut tx, cmd, outcome).await?;
                    }
                }
                store::confirm_batch::await_read_back(&mut tx, owner, &cmds, &wait).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            })
            .await
    }
}

/// What sending one change's write came to.
enum Sent {
    /// Accepted by the vendor: to be read back.
    Written(Box<Written>),
    /// Finished (the vendor confirmed at once).
    Settled,
    /// Failed, put back for a retry.
    Failed,
}

/// A change written (or claimed for its read-back), with the request to read it back with and,
/// when just written, what the write returned.
type Written = (CommandRow, GrantRequest, Option<Outcome>);

/// Whose group commit writes about several commands join: the revocations' when any is a revoke.
pub(super) fn group_of(urgent: bool) -> Action {
    if urgent {
        Action::Revoke
    } else {
        Action::Issue
    }
}

/// The request to read a written change back with: the vendor ids the write returned.
pub(super) fn with_refs(req: GrantRequest, written: &Outcome) -> GrantRequest {
    let (person_ref, grant_ref) = written.refs();
    GrantRequest {
        person_ref: person_ref.map(str::to_string).or(req.person_ref),
        grant_ref: grant_ref.map(str::to_string).or(req.grant_ref),
        ..req
    }
}

#[cfg(test)]
mod tests {
    use super::next_claim;

    #[test]
    fn a_claim_grows_while_full_and_shrinks_to_what_was_there() {
        assert_eq!(next_claim(1, 1, 32), 4);
        assert_eq!(next_claim(4, 4, 32), 16);
        assert_eq!(next_claim(16, 16, 32), 32);
        assert_eq!(next_claim(32, 32, 32), 32);
        assert_eq!(next_claim(32, 5, 32), 5);
        assert_eq!(next_claim(8, 0, 32), 1);
        // A lane whose rate allows one at a time stays at one.
        assert_eq!(next_claim(1, 1, 1), 1);
    }
}
