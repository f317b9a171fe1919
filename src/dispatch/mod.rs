//! The dispatcher: per-connector lanes that take commands from the outbox and carry them to the
//! vendor.
//!
//! Each lane runs `concurrency` workers plus one reserved for revokes. A worker claims one command
//! at a time, revokes first (invariant 3), under a lease, so a crashed worker's command is taken
//! again when the lease runs out. Connectors are idempotent, so a command delivered twice has one effect (invariant 2). Failures are
//! retried with jittered exponential backoff, obeying the vendor's Retry-After up to a cap; an issue
//! that keeps failing ends in the dead letter, shown by `latchkey status`. A revoke never does: past
//! its attempts it is marked stuck and keeps retrying at the capped interval, loudly (metric, alert,
//! the top of `latchkey status`), and a connector's recovery re-drives dead-lettered revokes left by
//! older versions. A worker that panics is restarted and its command released at once.

mod backlog;
pub mod breaker;
mod confirm;
mod finish;
pub mod lanes;
pub mod recovery;
mod request;
mod supervise;
pub mod timing;

use crate::audit;
use crate::clock::{SharedClock, to_micros};
use crate::config::Config;
use crate::connectors::{Connector, ConnectorError, Connectors, Outcome, RetryPolicy, call};
use crate::model::{Action, CommandStatus};
use crate::store::{self, CommandRow, CommandUpdate, Store, StoreError};
use crate::telemetry::metrics::{Metrics, Retry};
use breaker::{Admit, Breaker};
use lanes::Lanes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    clock: SharedClock,
    config: Arc<Config>,
    connectors: Connectors,
    owner: String,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    breakers: Breakers,
    lanes: Arc<Lanes>,
    /// Per connector: dead-lettered revokes may exist (an older version left them), to be re-driven
    /// when the connector shows it works. Cleared after the first re-drive of this dispatcher.
    dead_revokes_possible: Arc<BTreeMap<String, AtomicBool>>,
    /// With leases (the daemon), a lane's workers dispatch only while this replica holds the
    /// lane's lease, so a vendor's rate limit holds across replicas (DESIGN.md invariant 14).
    leases: Option<Arc<crate::leases::Leases>>,
}

/// One circuit breaker per connector, shared by its lane's workers (see [`breaker`]).
pub type Breakers = Arc<BTreeMap<String, Arc<Breaker>>>;

/// A breaker for every configured connector.
pub fn breakers_for(config: &Config, connectors: &Connectors) -> Breakers {
    Arc::new(
        connectors
            .keys()
            .map(|name| {
                let settings = config
                    .connectors
                    .get(name)
                    .map(|c| c.breaker)
                    .unwrap_or_default();
                (name.clone(), Arc::new(Breaker::new(settings)))
            })
            .collect(),
    )
}

/// Longest a worker sleeps between looks at the outbox when nothing wakes it (another process may
/// have enqueued work).
const IDLE_POLL: Duration = Duration::from_millis(250);

impl Dispatcher {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        connectors: Connectors,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let host = recovery::hostname().unwrap_or_else(|| "unknown-host".into());
        let owner = recovery::incarnation(&config.instance, std::process::id(), &host);
        let breakers = breakers_for(&config, &connectors);
        let dead_revokes_possible = Arc::new(
            connectors
                .keys()
                .map(|n| (n.clone(), AtomicBool::new(true)))
                .collect(),
        );
        Self {
            store,
            clock,
            config,
            connectors,
            owner,
            wake,
            metrics,
            breakers,
            lanes: Lanes::new(),
            dead_revokes_possible,
            leases: None,
        }
    }

    /// Dispatch a connector's commands only while holding its lane's lease.
    pub fn with_leases(mut self, leases: Arc<crate::leases::Leases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// Report lane liveness here (the HTTP server's `/readyz` reads it).
    pub fn with_lanes(mut self, lanes: Arc<Lanes>) -> Self {
        self.lanes = lanes;
        self
    }

    pub fn lanes(&self) -> &Arc<Lanes> {
        &self.lanes
    }

    /// The lease owner prefix of this process (`instance-pid@host`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Longest wait between two tries of a command.
    fn cap(&self) -> Duration {
        Duration::from_secs(self.config.engine.max_retry_delay_seconds)
    }

    /// Share breakers with other dispatchers of this process, so their state outlives one of them.
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Run every lane until `shutdown` turns true; in-flight commands finish first.
    /// Start-up first re-derives what a previous run left (see [`Dispatcher::start_up`]); a
    /// worker that panics is restarted (see `supervise`).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.start_up().await;
        self.run_lanes(shutdown).await;
    }

    async fn worker(
        &self,
        connector: Arc<dyn Connector>,
        worker: usize,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let owner = format!("{}/{}/{worker}", self.owner, connector.name());
        // The last worker of a lane is reserved for revokes (invariant 3): a leaver never waits
        // for a worker busy with an issue, however many issues are queued.
        let revokes_only = worker == self.lane_concurrency(connector.name());
        let lane = crate::leases::lane(connector.name());
        let max_claim = self.max_claim(connector.as_ref());
        let mut claim = 1;
        loop {
            if *shutdown.borrow() {
                return;
            }
            // A standby replica's workers wait for the lane, and stop claiming when it is lost.
            if let Some(leases) = &self.leases
                && !leases.holds(&lane)
            {
                leases.wait_held(&lane, &mut shutdown).await;
                continue;
            }
            // Register for a wake-up before looking at the outbox, so work enqueued between the
            // look and the wait is not missed until the next poll.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .step_up_to(&connector, &owner, revokes_only, claim)
                .await
            {
                Ok(0) => claim = 1,
                Ok(claimed) => {
                    claim = backlog::next_claim(claim, claimed, max_claim);
                    continue;
                }
                Err(e) => {
                    claim = 1;
                    tracing::error!(connector = connector.name(), error = %e, "outbox unavailable; retrying")
                }
            }
            // The lane's next due command may be an issue the revokes-only worker cannot take:
            // looking again at once would spin on the store's write gate and starve the very feed
            // that enqueues the next revoke. It waits for a wake-up (every enqueue wakes the lane)
            // or the idle poll; the other workers take revokes whose retry time comes.
            let next_due = if revokes_only {
                Ok(None)
            } else {
                store::next_due(self.store.pool(), connector.name()).await
            };
            let sleep = match next_due {
                Ok(Some(due)) => {
                    let wait = due - to_micros(self.clock.now());
                    Duration::from_micros(wait.clamp(0, IDLE_POLL.as_micros() as i64) as u64)
                }
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Workers of a lane that take any command; the lane runs one more, reserved for revokes.
    pub(crate) fn lane_concurrency(&self, connector: &str) -> usize {
        self.config
            .connectors
            .get(connector)
            .map_or(1, |c| c.concurrency.max(1))
    }

    /// Claim and carry out one command. Returns whether there was one.
    pub async fn step(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
    ) -> Result<bool, StoreError> {
        self.step_of(connector, owner, false).await
    }

    /// [`Dispatcher::step`]; with `revokes_only`, only a revoke is claimed.
    pub async fn step_of(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
        revokes_only: bool,
    ) -> Result<bool, StoreError> {
        Ok(self.step_up_to(connector, owner, revokes_only, 1).await? > 0)
    }

    /// Carry out one claimed command: unless the lane's lease was lost or the breaker holds it
    /// back (then it goes back untried), send it, as the half-open probe when the breaker asks.
    async fn carry(
        &self,
        connector: &Arc<dyn Connector>,
        owner: &str,
        cmd: CommandRow,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        // The lane's lease ran out while claiming (a late renewal): give the command back untried.
        if let Some(leases) = &self.leases
            && !leases.holds(&crate::leases::lane(connector.name()))
        {
            return self.defer(owner, &cmd, now).await;
        }
        let probe = match self.breakers.get(connector.name()).map(|b| b.admit(now)) {
            None | Some(Admit::Go) => false,
            Some(Admit::Probe { transition }) => {
                if transition {
                    self.breaker_changed(connector.name(), breaker::State::HalfOpen, None)
                        .await?;
                }
                true
            }
            Some(Admit::WaitUntil(until)) => return self.defer(owner, &cmd, until).await,
        };
        // The delivery joins the trace of the change that enqueued the command.
        let span = crate::telemetry::tracing::command_span(&cmd);
        tracing::Instrument::instrument(self.process(connector.as_ref(), owner, cmd, probe), span)
            .await
    }

    /// Put a claimed command back untried while the connector's breaker is open: the attempt the
    /// claim counted is given back, so an outage does not use up its retries.
    async fn defer(&self, owner: &str, cmd: &CommandRow, until: i64) -> Result<(), StoreError> {
        self.put_back(owner, cmd, until, cmd.last_error.clone(), true)
            .await
    }

    /// Return a claimed command to the outbox to be tried again at `at`: a command the vendor had
    /// already accepted goes back to waiting for confirmation, any other to pending. `refund` gives
    /// back the attempt the claim counted (the claim counts one only for a command not yet
    /// dispatched, so only such a command can get one back).
    async fn put_back(
        &self,
        owner: &str,
        cmd: &CommandRow,
        at: i64,
        last_error: Option<String>,
        refund: bool,
    ) -> Result<(), StoreError> {
        self.put_back_marked(owner, cmd, at, last_error, refund, false)
            .await
    }

    /// Record a breaker state change: audit, the `breaker_states` row `latchkey status` shows, and
    /// the gauge.
    async fn breaker_changed(
        &self,
        connector: &str,
        state: breaker::State,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let mut tx = self.store.begin_write().await?;
        store::set_breaker_state(&mut tx, connector, state.as_str(), now, error.as_deref()).await?;
        audit::append(
            &mut tx,
            now,
            "dispatcher",
            &format!("breaker.{}", state.as_str()),
            connector,
            &serde_json::json!({"connector": connector, "error": error}),
        )
        .await?;
        tx.commit().await?;
        self.metrics
            .set_breaker_open(connector, state != breaker::State::Closed);
        tracing::warn!(
            connector,
            state = state.as_str(),
            error = error.as_deref().unwrap_or("-"),
            "circuit breaker"
        );
        Ok(())
    }

    /// Tell the connector's breaker how the vendor call went.
    async fn breaker_verdict<T>(
        &self,
        connector: &str,
        result: &Result<T, ConnectorError>,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(b) = self.breakers.get(connector) else {
            return Ok(());
        };
        let changed = match result {
            // A 429 or a refused request still means the vendor is up and answering.
            Ok(_) | Err(ConnectorError::RateLimited { .. }) => b.success(),
            Err(ConnectorError::Transient { .. }) => b.failure(now),
            Err(_) => {
                b.release_probe();
                None
            }
        };
        if let Some(state) = changed {
            let error = result.as_ref().err().map(ToString::to_string);
            self.breaker_changed(connector, state, error).await?;
            if state == breaker::State::Closed {
                self.redrive_dead_revokes(connector, "the circuit breaker closed")
                    .await?;
            }
        } else if result.is_ok() {
            self.redrive_dead_revokes_once(connector).await?;
        }
        Ok(())
    }

    /// Re-drive dead-lettered revokes of a connector that works again, audited.
    async fn redrive_dead_revokes(&self, connector: &str, why: &str) -> Result<(), StoreError> {
        if let Some(flag) = self.dead_revokes_possible.get(connector) {
            flag.store(false, Ordering::Relaxed);
        }
        let now = to_micros(self.clock.now());
        let reason = format!("{connector} recovered: {why}");
        let selection = recovery::Selection::All {
            connector: Some(connector),
            action: Some(Action::Revoke.as_str()),
        };
        let moved =
            match recovery::redrive(&self.store, now, "dispatcher", &reason, selection).await {
                Ok(moved) => moved,
                Err(recovery::RedriveError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(connector, error = %e, "dead revokes not re-driven");
                    return Ok(());
                }
            };
        if !moved.is_empty() {
            tracing::warn!(
                connector,
                revokes = moved.len(),
                reason,
                "dead-lettered revokes re-driven"
            );
            self.wake.notify_waiters();
        }
        Ok(())
    }

    /// The first success on a connector since start-up proves it works: re-drive once.
    async fn redrive_dead_revokes_once(&self, connector: &str) -> Result<(), StoreError> {
        let possible = self
            .dead_revokes_possible
            .get(connector)
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if possible {
            self.redrive_dead_revokes(connector, "a command succeeded")
                .await?;
        }
        Ok(())
    }

    async fn process(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmd: CommandRow,
        probe: bool,
    ) -> Result<(), StoreError> {
        let Some(req) = self.request_for(connector, owner, &cmd, probe).await? else {
            return Ok(());
        };
        let confirming = cmd.dispatched_at.is_some();
        // A vendor that confirms by listing a target: the write and its read-back are apart, so
        // one listing can confirm every change written to the target (see `confirm`).
        let by_listing = connector.confirms_by_target_listing();
        if confirming && by_listing {
            return self
                .confirm_on_target(connector, owner, cmd, req, probe)
                .await;
        }
        let (result, sent_at) = self
            .stamped(cmd.action == Action::Revoke, async {
                match (confirming, cmd.action) {
                    (true, action) => connector.confirm(&req, action).await,
                    (false, action) if by_listing => connector.write(&req, action).await,
                    (false, Action::Issue) => connector.issue(&req).await,
                    (false, Action::Revoke) => connector.revoke(&req).await,
                }
            })
            .await;
        let mut cmd = cmd;
        cmd.first_attempt_at = cmd.first_attempt_at.or(Some(sent_at));
        let now = to_micros(self.clock.now());
        self.breaker_verdict(connector.name(), &result, now).await?;
        match result {
            Ok(written @ Outcome::Pending { .. }) if by_listing && !confirming => {
                self.written(connector, owner, cmd, req, written, probe)
                    .await
            }
            result => {
                self.settle(connector, owner, &cmd, result, probe, None)
                    .await
            }
        }
    }

    /// Make a vendor call (a revoke's goes first for rate-limit tokens) and say when its first
    /// request left, after any wait for the rate budget, on this dispatcher's clock; a connector
    /// without HTTP requests acts at the call.
    pub(super) async fn stamped<F: std::future::Future>(
        &self,
        revoke: bool,
        vendor_call: F,
    ) -> (F::Output, i64) {
        let started = (self.clock.now(), tokio::time::Instant::now());
        let (out, sent) = call::scope(revoke, vendor_call).await;
        let sent_at = to_micros(started.0).saturating_add(sent.map_or(0, |s| {
            s.saturating_duration_since(started.1).as_micros() as i64
        }));
        (out, sent_at)
    }

    /// Record what the vendor call came to: done, waiting for the vendor to show it (read back
    /// after `recheck`, or the profile's recheck interval, doubling), or failed (retried).
    async fn settle(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmd: &CommandRow,
        result: Result<Outcome, ConnectorError>,
        probe: bool,
        recheck: Option<Duration>,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let policy = connector.retry_policy();
        match result {
            Ok(outcome @ Outcome::Confirmed { .. }) => {
                self.finish(
                    owner,
                    cmd,
                    CommandStatus::Done,
                    Some(now),
                    None,
                    Some(&outcome),
                )
                .await
            }
            Ok(outcome @ Outcome::Pending { .. }) => {
                self.settle_pending(owner, cmd, &outcome, &policy, recheck, now)
                    .await
            }
            Err(e) => self.failed(owner, cmd, connector, e, now, probe).await,
        }
    }

    /// The vendor accepted the command but does not show it yet: it waits to be read back, or,
    /// past its confirmation deadline, it is issued again.
    async fn settle_pending(
        &self,
        owner: &str,
        cmd: &CommandRow,
        outcome: &Outcome,
        policy: &RetryPolicy,
        recheck: Option<Duration>,
        now: i64,
    ) -> Result<(), StoreError> {
        let confirming = cmd.dispatched_at.is_some();
        let deadline = cmd
            .confirm_deadline
            .unwrap_or(now + policy.confirm_deadline.as_micros() as i64);
        let mut tx = self.store.begin_grouped_for(cmd.action).await?;
        if confirming && now >= deadline {
            // The vendor never showed the change: do it again (idempotent, so safe).
            store::reissue(
                &mut tx,
                owner,
                cmd.id,
                now,
                "not confirmed by the vendor before the deadline",
            )
            .await?;
            audit::append(
                &mut tx,
                now,
                "dispatcher",
                "command.reissued",
                &cmd.identity_key,
                &serde_json::json!({"command": cmd.id}),
            )
            .await?;
        } else {
            let delay = self.recheck_delay(cmd, policy, recheck, now);
            self.record_refs(&mut tx, cmd, outcome).await?;
            store::update_claimed(
                &mut tx,
                owner,
                &CommandUpdate {
                    id: cmd.id,
                    status: CommandStatus::Confirming,
                    next_attempt_at: timing::after(now, delay, self.cap()),
                    dispatched_at: Some(now),
                    confirmed_at: None,
                    confirm_deadline: Some(deadline),
                    last_error: Some("accepted by the vendor, not visible yet".into()),
                    refund_attempt: false,
                    first_attempt_at: cmd.first_attempt_at,
                },
            )
            .await?;
        }
        tx.commit().await?;
        if confirming && now >= deadline {
            self.metrics.command_retried(cmd, Retry::Reissued);
        }
        Ok(())
    }

    /// How long until a pending command is read back: `recheck` when the connector names it, else
    /// as long again as the change has waited since it was written, at least the profile's
    /// recheck interval, within the caps. Read-backs at the interval double their spacing; a
    /// change whose first read-back came late (it waited for the writes behind it on its
    /// target, or in the queue) is not pushed back exponentially in that wait.
    fn recheck_delay(
        &self,
        cmd: &CommandRow,
        policy: &RetryPolicy,
        recheck: Option<Duration>,
        now: i64,
    ) -> Duration {
        let waited = cmd
            .dispatched_at
            .map_or(0, |dispatched_at| (now - dispatched_at).max(0));
        recheck
            .unwrap_or_else(|| {
                Duration::from_micros(waited as u64)
                    .max(policy.confirm_recheck)
                    .min(policy.max)
            })
            .min(self.cap())
    }

    async fn failed(
        &self,
        owner: &str,
        cmd: &CommandRow,
        connector: &dyn Connector,
        err: ConnectorError,
        now: i64,
        probe: bool,
    ) -> Result<(), StoreError> {
        let policy = connector.retry_policy();
        let cap = self.cap();
        let class = error_class(&err);
        let (retry_after, rate_limited) = match &err {
            ConnectorError::RateLimited { retry_after, .. } => (*retry_after, true),
            ConnectorError::Transient { retry_after, .. } => (*retry_after, false),
            _ => (None, false),
        };
        // Being told to slow down is not the command's fault: it does not use up an attempt.
        // Neither is a failed half-open probe: it tested the vendor for the breaker, and a vendor
        // that is down must not use up the retries of the command that happened to probe it.
        let refund = rate_limited || probe;
        let exhausted = !refund && cmd.attempts >= i64::from(policy.max_attempts);
        let revoke = cmd.action == Action::Revoke;
        if revoke {
            self.metrics.revoke_failed(&cmd.connector, class);
        }
        if !revoke && (class == "permanent" || exhausted) {
            tracing::warn!(connector = %cmd.connector, command = cmd.id.0, error = %err, "command dead-lettered");
            return self
                .finish(
                    owner,
                    cmd,
                    CommandStatus::Dead,
                    None,
                    Some(err.to_string()),
                    None,
                )
                .await;
        }
        // A revoke never dead-letters (a leaver must not keep access quietly): past its attempts,
        // or on an error retrying may still heal (a token fixed, a profile corrected), it goes on
        // at up to the cap, marked stuck so the metric, the alert and `latchkey status` show it.
        let stuck = revoke && (exhausted || class == "permanent" || class == "auth");
        let max = if stuck { cap } else { policy.max.min(cap) };
        let backoff = timing::backoff(policy.initial.min(max), max, cmd.attempts);
        // A vendor that says when to come back is obeyed, up to the cap.
        let delay = retry_after.unwrap_or(backoff).min(cap);
        self.put_back_marked(
            owner,
            cmd,
            timing::after(now, delay, cap),
            Some(err.to_string()),
            refund,
            stuck,
        )
        .await?;
        if stuck {
            tracing::error!(connector = %cmd.connector, command = cmd.id.0, attempts = cmd.attempts, error = %err, "revocation stuck; retrying");
        }
        self.metrics.command_retried(
            cmd,
            if rate_limited {
                Retry::RateLimited
            } else {
                Retry::Transient
            },
        );
        Ok(())
    }

    /// [`Dispatcher::put_back`]; `stuck` also marks the command stuck, in the same transaction.
    async fn put_back_marked(
        &self,
        owner: &str,
        cmd: &CommandRow,
        at: i64,
        last_error: Option<String>,
        refund: bool,
        stuck: bool,
    ) -> Result<(), StoreError> {
        let now = to_micros(self.clock.now());
        let mut tx = self.store.begin_grouped_for(cmd.action).await?;
        let moved = store::update_claimed(
            &mut tx,
            owner,
            &CommandUpdate {
                id: cmd.id,
                status: if cmd.dispatched_at.is_some() {
                    CommandStatus::Confirming
                } else {
                    CommandStatus::Pending
                },
                next_attempt_at: at,
                // Kept if stored; a change written just now (its read-back failed) records it.
                dispatched_at: cmd.dispatched_at,
                confirmed_at: None,
                confirm_deadline: None,
                last_error,
                refund_attempt: refund && cmd.dispatched_at.is_none(),
                first_attempt_at: cmd.first_attempt_at,
            },
        )
        .await?;
        if moved && stuck {
            store::mark_stuck(&mut tx, cmd.id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The class of a connector error, as the revoke failure metric labels it.
pub fn error_class(err: &ConnectorError) -> &'static str {
    match err {
        ConnectorError::RateLimited { .. } => "rate_limited",
        ConnectorError::Transient { .. } => "transient",
        ConnectorError::Permanent { message, .. } if is_auth_refusal(message) => "auth",
        ConnectorError::Permanent { .. } => "permanent",
        #[allow(unreachable_patterns)]
        _ => "auth",
    }
}

/// A permanent error that is the vendor refusing the credential (401/403): it heals when the
/// credential is fixed.
fn is_auth_refusal(message: &str) -> bool {
    message.contains("HTTP 401") || message.contains("HTTP 403")
}
