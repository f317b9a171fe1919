//! Lanes that keep running: start-up re-derives what a previous run left, and a worker that panics
//! has its command released at once and is restarted (after a short, growing pause, so a command
//! that panics every time cannot spin), while `/readyz` reports the lane not ready.

use super::{Dispatcher, breaker, recovery, timing};
use crate::audit;
use crate::clock::to_micros;
use crate::connectors::Connector;
use crate::store::{self, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

type Workers = (
    JoinSet<()>,
    HashMap<tokio::task::Id, (Arc<dyn Connector>, usize)>,
);

impl Dispatcher {
    /// Re-derive what a previous run of this replica left: its leases (released at once when its
    /// process is gone), retry times past the cap (brought forward), breaker states (restored while
    /// the cool-down lasts, recorded closed once it is over). Failures are logged: the leases then
    /// run out by themselves.
    pub async fn start_up(&self) {
        let now = to_micros(self.clock.now());
        if let Err(e) = self.re_derive(now).await {
            tracing::error!(error = %e, "outbox state not re-derived at start-up");
        }
    }

    async fn re_derive(&self, now: i64) -> Result<(), StoreError> {
        let released =
            recovery::release_dead_incarnations(&self.store, &self.config.instance, now).await?;
        if released > 0 {
            tracing::warn!(
                commands = released,
                "released commands leased by a previous run"
            );
            self.wake.notify_waiters();
        }
        let latest = timing::after(now, self.cap(), self.cap());
        let mut tx = self.store.begin_write().await?;
        let clamped = store::clamp_next_attempts(&mut tx, latest).await?;
        if clamped > 0 {
            audit::append(
                &mut tx,
                now,
                "dispatcher",
                "outbox.clamped",
                "outbox",
                &serde_json::json!({"commands": clamped, "next_attempt_at": latest}),
            )
            .await?;
            tracing::warn!(
                commands = clamped,
                "retry times past the cap brought forward"
            );
        }
        tx.commit().await?;
        self.restore_breakers(now).await
    }

    async fn restore_breakers(&self, now: i64) -> Result<(), StoreError> {
        for (connector, state, since, _) in store::breaker_states(self.store.pool()).await? {
            let Some(b) = self.breakers.get(&connector) else {
                continue;
            };
            if state == breaker::State::Closed.as_str() {
                continue;
            }
            let cooldown = b.cooldown_micros();
            let until = since
                .saturating_add(cooldown)
                .min(now.saturating_add(cooldown));
            if until > now {
                if b.restore_open(until) {
                    self.metrics.set_breaker_open(&connector, true);
                }
            } else if b.state() == breaker::State::Closed {
                // The cool-down is over and this process holds it closed: say so.
                self.breaker_changed(&connector, breaker::State::Closed, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Run every lane until `shutdown`, restarting a worker that panics.
    pub(super) async fn run_lanes(self, shutdown: watch::Receiver<bool>) {
        let mut workers: Workers = (JoinSet::new(), HashMap::new());
        for (name, connector) in &self.connectors {
            // `concurrency` workers take any command; one more takes only revokes.
            let lane = self.lane_concurrency(name) + 1;
            self.lanes.expect(name, lane);
            for worker in 0..lane {
                self.spawn_worker(&mut workers, connector, worker, Duration::ZERO, &shutdown);
            }
        }
        while let Some(joined) = workers.0.join_next_with_id().await {
            let (id, panic) = match joined {
                Ok((id, ())) => (id, None),
                Err(e) => (e.id(), e.is_panic().then(|| panic_message(e.into_panic()))),
            };
            let Some((connector, worker)) = workers.1.remove(&id) else {
                continue;
            };
            let Some(message) = panic else {
                continue;
            };
            let restarts = self.worker_panicked(&connector, worker, &message).await;
            if *shutdown.borrow() {
                continue;
            }
            let pause = Duration::from_millis(100u64 << restarts.saturating_sub(1).min(8));
            self.spawn_worker(&mut workers, &connector, worker, pause, &shutdown);
        }
    }

    fn spawn_worker(
        &self,
        workers: &mut Workers,
        connector: &Arc<dyn Connector>,
        worker: usize,
        pause: Duration,
        shutdown: &watch::Receiver<bool>,
    ) {
        let this = self.clone();
        let c = connector.clone();
        let mut stop = shutdown.clone();
        let handle = workers.0.spawn(async move {
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
            }
            // Live until this task ends, also by unwinding.
            let _live = this.lanes.up(c.name());
            this.worker(c, worker, stop).await;
        });
        workers.1.insert(handle.id(), (connector.clone(), worker));
    }

    /// Release the dead worker's command at once, loudly. Returns the lane's restarts so far.
    async fn worker_panicked(
        &self,
        connector: &Arc<dyn Connector>,
        worker: usize,
        message: &str,
    ) -> u64 {
        let name = connector.name();
        let restarts = self.lanes.restarted(name);
        self.metrics.worker_restarted(name);
        let owner = format!("{}/{name}/{worker}", self.owner);
        tracing::error!(
            connector = name,
            worker,
            panic = message,
            "dispatcher worker panicked; restarting it"
        );
        let now = to_micros(self.clock.now());
        let why = format!("dispatcher worker panicked: {message}");
        match recovery::release_owner(&self.store, &owner, now, &why).await {
            Ok(ids) if !ids.is_empty() => self.wake.notify_waiters(),
            Ok(_) => {}
            // The lease runs out by itself.
            Err(e) => {
                tracing::error!(connector = name, error = %e, "command of a panicked worker not released")
            }
        }
        restarts
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
