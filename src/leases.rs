//! Several replicas, one truth (DESIGN.md invariant 14): leases in the database decide which
//! replica follows each source, runs each scheduled job and owns each connector's lane.
//!
//! A keeper task per process acquires the leases it can and renews the ones it holds every third of
//! the lease time. Expiry is the database's clock; the holder's own deadline is its monotonic clock
//! from *before* it sent the renewal, less a margin, so a holder always considers a lease lost
//! before the database would let another replica take it (clocks may differ in offset, not in
//! rate). Work gated by a lease is dropped the moment the lease is lost ([`Leases::while_held`]);
//! every step it took committed with its checkpoint, so the next holder carries on from there.
//! Every acquisition, loss and release is audited with its times, which is the lease history.
//!
//! On SQLite (one node) the same code runs: the one process takes every lease at start.

use crate::audit;
use crate::clock::{SharedClock, to_micros};
use crate::config::Config;
use crate::store::{self, Store, StoreError};
use crate::telemetry::metrics::Metrics;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease of an HR source (its drop directory or scheduled file).
pub fn hr_source(name: &str) -> String {
    format!("source:hr:{name}")
}

/// The lease of an LDAP or Active Directory source.
pub fn ldap_source(name: &str) -> String {
    format!("source:ldap:{name}")
}

/// The lease of cabinet event polling (every cabinet connector's event feed).
pub const CABINET_EVENTS: &str = "source:cabinet-events";
/// Effective-dated changes whose time has come, and expiries.
pub const EFFECTIVE_DATED: &str = "job:effective-dated";
/// Reconciliation of everyone against current policy.
pub const RECONCILE: &str = "job:reconcile";
/// The drift check against each vendor's list.
pub const DRIFT: &str = "job:drift";
/// Scheduled revocation drills.
pub const DRILLS: &str = "job:drills";
/// Overdue key returns and their alerts.
pub const OVERDUE_KEYS: &str = "job:overdue-keys";

/// The lease of a connector's lane: only its holder dispatches that connector's commands, so the
/// vendor's rate limit holds across replicas.
pub fn lane(connector: &str) -> String {
    format!("lane:{connector}")
}

/// Every lease a replica with this configuration takes part in.
pub fn names(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config.sources.hr.keys().map(|n| hr_source(n)).collect();
    out.extend(config.sources.ldap.keys().map(|n| ldap_source(n)));
    out.extend(
        [
            CABINET_EVENTS,
            EFFECTIVE_DATED,
            RECONCILE,
            DRIFT,
            DRILLS,
            OVERDUE_KEYS,
        ]
        .map(str::to_string),
    );
    out.extend(config.connectors.keys().map(|c| lane(c)));
    if !config.audit.forward.is_empty() {
        out.push(crate::audit::forward::LEASE.to_string());
    }
    if config.audit.retain_days.is_some() {
        out.push(crate::jobs::retention::LEASE.to_string());
    }
    out
}

/// The kind of a lease (`source`, `job`, `lane`), from its name.
pub fn kind(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

#[derive(Debug)]
struct Held {
    tx: watch::Sender<bool>,
    /// Past this instant the lease counts as lost unless renewed.
    deadline: Option<Instant>,
}

/// This replica's leases.
#[derive(Debug)]
pub struct Leases {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    holder: String,
    instance: String,
    lease: Duration,
    state: Mutex<BTreeMap<String, Held>>,
}

impl Leases {
    /// Leases `names` for `holder` (this process's incarnation, `instance-pid@host`).
    pub fn new(
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        instance: &str,
        holder: &str,
        lease: Duration,
        names: Vec<String>,
    ) -> Arc<Self> {
        // Every kind is exported from the start, held or not, so that "nobody holds it" is a
        // figure an alert can compare (LatchkeyLeaseUnheld), not a missing series.
        for k in ["source", "job", "lane"] {
            let configured = names.iter().filter(|n| kind(n) == k).count();
            metrics.set_leases_configured(k, configured);
            metrics.set_leases_held(k, 0);
        }
        let state = names
            .into_iter()
            .map(|n| {
                (
                    n,
                    Held {
                        tx: watch::channel(false).0,
                        deadline: None,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            store,
            clock,
            metrics,
            holder: holder.to_string(),
            instance: instance.to_string(),
            lease,
            state: Mutex::new(state),
        })
    }

    /// For the daemon: every lease of its configuration, held as its dispatcher's owner prefix.
    pub fn for_config(
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        config: &Config,
        holder: &str,
    ) -> Arc<Self> {
        Self::new(
            store,
            clock,
            metrics,
            &config.instance,
            holder,
            Duration::from_secs(config.engine.replica_lease_seconds),
            names(config),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        // Plain flags and instants, consistent after a panic elsewhere: keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Does this replica hold `name` now? Judged here against the deadline too, so a keeper task
    /// that is late (a starved process) cannot leave work running past it.
    pub fn holds(&self, name: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .get(name)
            .is_some_and(|h| *h.tx.borrow() && h.deadline.is_some_and(|d| now < d))
    }

    fn deadline(&self, name: &str) -> Option<Instant> {
        self.lock().get(name).and_then(|h| h.deadline)
    }

    /// The leases this replica holds now, by name.
    pub fn held(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, h)| *h.tx.borrow())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn watch(&self, name: &str) -> Option<watch::Receiver<bool>> {
        self.lock().get(name).map(|h| h.tx.subscribe())
    }

    /// Wait until this replica holds `name` (true), or `shutdown` turns true first (false).
    pub async fn wait_held(&self, name: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        let Some(mut held) = self.watch(name) else {
            // Not a lease of this configuration: nothing will ever grant it.
            let _ = shutdown.wait_for(|s| *s).await;
            return false;
        };
        let got = tokio::select! {
            r = held.wait_for(|h| *h) => r.is_ok(),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        got && !*shutdown.borrow()
    }

    /// Resolves when `name` is not (or no longer) held by this replica.
    pub async fn lost(&self, name: &str) {
        let Some(mut held) = self.watch(name) else {
            return;
        };
        // The flag, or the deadline passing without a renewal, whichever comes first.
        while self.holds(name) {
            let Some(deadline) = self.deadline(name) else {
                return;
            };
            tokio::select! {
                r = held.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Run `work` while this replica holds `name`: None, without starting it, when it does not
    /// hold it; None, with the work dropped where it stands, when the lease is lost meanwhile.
    pub async fn while_held<T>(&self, name: &str, work: impl Future<Output = T>) -> Option<T> {
        if !self.holds(name) {
            return None;
        }
        tokio::select! {
            out = work => Some(out),
            _ = self.lost(name) => {
                tracing::warn!(lease = name, "lease lost; work stopped");
                None
            }
        }
    }

    fn set(&self, name: &str, held: bool, deadline: Option<Instant>) {
        let counts = {
            let mut state = self.lock();
            if let Some(h) = state.get_mut(name) {
                h.deadline = deadline;
                h.tx.send_if_modified(|v| std::mem::replace(v, held) != held);
            }
            let mut counts: BTreeMap<&str, usize> = [("source", 0), ("job", 0), ("lane", 0)].into();
            for (n, h) in state.iter() {
                if *h.tx.borrow() {
                    *counts.entry(kind(n)).or_default() += 1;
                }
            }
            counts
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect::<Vec<_>>()
        };
        for (k, n) in counts {
            self.metrics.set_leases_held(&k, n);
        }
    }

    fn lease_micros(&self) -> i64 {
        i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX)
    }

    /// How long before the database's expiry a holder gives a lease up: room for the work in hand
    /// to stop (see [`Leases::while_held`]).
    fn margin(&self) -> Duration {
        self.lease / 4
    }

    /// Keep this replica's leases until `shutdown`, then release them so another replica takes
    /// over at once.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.release_dead_incarnations().await {
            tracing::warn!(error = %e, "leases of a previous run of this replica not released");
        }
        let every = self.lease / 3;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let names: Vec<String> = self.lock().keys().cloned().collect();
            for name in &names {
                if *shutdown.borrow() {
                    break;
                }
                self.keep(name, every).await;
            }
            let next = Instant::now() + every;
            let nearest = self
                .lock()
                .values()
                .filter_map(|h| h.deadline)
                .min()
                .map_or(next, |d| d.min(next));
            tokio::select! {
                _ = tokio::time::sleep_until(nearest) => {}
                _ = shutdown.changed() => {}
            }
            self.expire_late().await;
        }
        self.release_all().await;
    }

    /// One look at one lease: renew it when held, try to take it when not.
    async fn keep(&self, name: &str, every: Duration) {
        self.expire_late().await;
        let sent = Instant::now();
        let deadline = sent + self.lease.saturating_sub(self.margin());
        if self.holds(name) {
            match tokio::time::timeout(every, self.renew(name)).await {
                Ok(Ok(true)) => self.set(name, true, Some(deadline)),
                Ok(Ok(false)) => self.lose(name, "renewal refused: the lease ran out").await,
                Ok(Err(e)) => {
                    tracing::warn!(lease = name, error = %e, "lease not renewed; retrying")
                }
                Err(_) => tracing::warn!(lease = name, "lease renewal timed out; retrying"),
            }
            self.expire_late().await;
        } else {
            match tokio::time::timeout(every, self.acquire(name)).await {
                Ok(Ok(true)) => self.set(name, true, Some(deadline)),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(lease = name, error = %e, "lease not acquired"),
                Err(_) => tracing::warn!(lease = name, "lease acquisition timed out"),
            }
        }
    }

    /// Leases whose renewal is late count as lost, before anyone else could take them.
    async fn expire_late(&self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, h)| *h.tx.borrow() && h.deadline.is_none_or(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in late {
            // Best effort: when the database is what failed, the history still shows the next
            // holder taking the lease after it ran out.
            self.lose(&name, "not renewed in time").await;
        }
    }

    async fn acquire(&self, name: &str) -> Result<bool, StoreError> {
        let backend = self.store.backend();
        let mut tx = self.store.begin_write().await?;
        let before = store::leases::lease(&mut tx, name).await?;
        let Some(got) =
            store::leases::acquire(&mut tx, backend, name, &self.holder, self.lease_micros())
                .await?
        else {
            tx.rollback().await?;
            return Ok(false);
        };
        audit::append(
            &mut tx,
            to_micros(self.clock.now()),
            &self.holder,
            "lease.acquired",
            name,
            &serde_json::json!({
                "lease": name, "holder": got.holder, "acquired_at": got.acquired_at,
                "expires_at": got.expires_at,
                "previous_holder": before.as_ref().map(|b| &b.holder),
                "previous_expires_at": before.as_ref().map(|b| b.expires_at),
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(lease = name, holder = %self.holder, "lease acquired");
        Ok(true)
    }

    async fn renew(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.store.begin_write().await?;
        let ok = store::leases::renew(
            &mut tx,
            self.store.backend(),
            name,
            &self.holder,
            self.lease_micros(),
        )
        .await?;
        tx.commit().await?;
        Ok(ok)
    }

    /// The lease is gone: stop its work at once, then say so in the audit log.
    async fn lose(&self, name: &str, why: &str) {
        self.set(name, false, None);
        tracing::warn!(lease = name, reason = why, "lease lost");
        if let Err(e) = self.record(name, "lease.lost", why).await {
            tracing::warn!(lease = name, error = %e, "lease loss not audited");
        }
    }

    async fn record(&self, name: &str, action: &str, why: &str) -> Result<(), StoreError> {
        let mut tx = self.store.begin_write().await?;
        let now = store::leases::db_now(&mut tx, self.store.backend()).await?;
        audit::append(
            &mut tx,
            to_micros(self.clock.now()),
            &self.holder,
            action,
            name,
            &serde_json::json!({"lease": name, "holder": self.holder, "at": now, "reason": why}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Give every held lease back (a clean shutdown): work has stopped, another replica may start.
    async fn release_all(&self) {
        for name in self.held() {
            self.set(&name, false, None);
            if let Err(e) = self.release(&name).await {
                tracing::warn!(lease = %name, error = %e, "lease not released; it runs out instead");
            }
        }
    }

    async fn release(&self, name: &str) -> Result<(), StoreError> {
        let backend = self.store.backend();
        let mut tx = self.store.begin_write().await?;
        let now = store::leases::db_now(&mut tx, backend).await?;
        if store::leases::release(&mut tx, backend, name, &self.holder).await? {
            audit::append(
                &mut tx,
                to_micros(self.clock.now()),
                &self.holder,
                "lease.released",
                name,
                &serde_json::json!({"lease": name, "holder": self.holder, "at": now, "reason": "shutdown"}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A previous run of this replica (same instance and host, its process gone) cannot work any
    /// more: its leases are free at once rather than after they run out.
    async fn release_dead_incarnations(&self) -> Result<(), StoreError> {
        let Some(host) = crate::dispatch::recovery::hostname() else {
            return Ok(());
        };
        let own = std::process::id();
        let backend = self.store.backend();
        let (_, rows) = store::leases::all(self.store.pool(), backend).await?;
        let mut holders: Vec<String> = rows
            .into_iter()
            .map(|r| r.holder)
            .filter(|h| {
                h != &self.holder
                    && crate::dispatch::recovery::owned_by_dead_incarnation(
                        h,
                        &self.instance,
                        &host,
                        own,
                    )
            })
            .collect();
        holders.sort();
        holders.dedup();
        for holder in holders {
            let mut tx = self.store.begin_write().await?;
            let now = store::leases::db_now(&mut tx, backend).await?;
            for name in store::leases::release_holder(&mut tx, backend, &holder).await? {
                audit::append(
                    &mut tx,
                    to_micros(self.clock.now()),
                    &self.holder,
                    "lease.released",
                    &name,
                    &serde_json::json!({
                        "lease": name, "holder": holder, "at": now,
                        "reason": "held by a previous run of this replica that is gone",
                    }),
                )
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Every lease in the store with its holder, as `/readyz` and `latchkey status` show it: one line
/// each, `name holder (this replica) expires in Ns` or `... free`.
pub async fn describe(store: &Store, me: Option<&str>) -> Result<Vec<String>, StoreError> {
    let (now, rows) = store::leases::all(store.pool(), store.backend()).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let left = (r.expires_at - now) as f64 / 1e6;
            let mine = if me == Some(r.holder.as_str()) {
                " (this replica)"
            } else {
                ""
            };
            if left > 0.0 {
                format!(
                    "{} held by {}{mine}, expires in {left:.1} s",
                    r.name, r.holder
                )
            } else {
                format!("{} free (last held by {}{mine})", r.name, r.holder)
            }
        })
        .collect())
}
