//! Assembly: from a configuration to a running daemon (store, engine, connectors, dispatcher,
//! schedules), with a clean drain on shutdown.

use crate::clock::{SharedClock, to_micros};
use crate::config::Config;
use crate::connectors::{self, Connectors};
use crate::dispatch::Dispatcher;
use crate::engine::{Engine, FeedReport};
use crate::policy::Policy;
use crate::store::{self, Store};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug)]
pub struct App {
    pub engine: Arc<Engine>,
    pub connectors: Connectors,
    /// Circuit breakers, one per connector, kept across the dispatchers this process makes.
    pub breakers: crate::dispatch::Breakers,
    /// Live dispatcher workers per lane, for `/readyz`.
    pub lanes: Arc<crate::dispatch::lanes::Lanes>,
    /// For overdue key alerts.
    webhooks: reqwest::Client,
    /// Which sources, jobs and lanes this replica holds (kept while [`App::run`] runs).
    pub leases: Arc<crate::leases::Leases>,
}

/// Whether this process talks to vendors, and so needs their secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendors {
    /// Build every connector, resolving its secrets (the daemon, `apply`, `drift`, `drill`).
    Reach,
    /// Build none and resolve no connector secret: commands that only read the store, or only
    /// queue work for the daemon to deliver (`status`, `access`, `approve`, `redrive`, ...).
    Untouched,
}

impl App {
    /// Open the store (migrating it), load policy and mappings, build connectors.
    pub async fn open(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        Self::open_for(config, clock, Vendors::Reach).await
    }

    /// [`App::open`] without connectors: no vendor secret is needed, and none can be reached.
    pub async fn open_reader(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        Self::open_for(config, clock, Vendors::Untouched).await
    }

    pub async fn open_for(
        config: Config,
        clock: SharedClock,
        vendors: Vendors,
    ) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let names: Vec<String> = config.connectors.keys().cloned().collect();
        let policy = Arc::new(Policy::load(
            &config.resolve(&config.policy.templates),
            &names,
        )?);
        let connectors = match vendors {
            // Secrets first: a missing one is reported before anything else is opened.
            Vendors::Reach => connectors::build_all(&config)?,
            Vendors::Untouched => Connectors::new(),
        };
        let store = Store::connect(&config.store_url()?, config.store.max_connections).await?;
        let engine = Arc::new(Engine::new(store, clock, config, policy)?);
        for c in connectors.values() {
            c.attach_rate_wait_counters(engine.metrics.rate_limit_handles(c.name()));
            c.attach_store(engine.store.clone(), engine.clock.clone());
        }
        let breakers = crate::dispatch::breakers_for(&engine.config, &connectors);
        let host = crate::dispatch::recovery::hostname().unwrap_or_else(|| "unknown-host".into());
        // The same holder name as the dispatcher's lease owner prefix: one name per incarnation.
        let holder = crate::dispatch::recovery::incarnation(
            &engine.config.instance,
            std::process::id(),
            &host,
        );
        let leases = crate::leases::Leases::for_config(
            engine.store.clone(),
            engine.clock.clone(),
            engine.metrics.clone(),
            &engine.config,
            &holder,
        );
        let webhooks = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            engine,
            connectors,
            breakers,
            lanes: crate::dispatch::lanes::Lanes::new(),
            webhooks,
            leases,
        })
    }

    /// Compare every vendor's grants with the ledger once (see [`crate::drift`]).
    pub async fn drift_check(&self) -> anyhow::Result<crate::drift::DriftReport> {
        Ok(crate::drift::check(&self.engine, &self.connectors).await?)
    }

    /// Alert on mechanical key returns past their due time, and refresh the key-return gauges.
    pub async fn check_overdue_keys(
        &self,
    ) -> anyhow::Result<crate::connectors::manual::OverdueReport> {
        let now = to_micros(self.engine.clock.now());
        Ok(crate::connectors::manual::check_overdue(
            &self.engine.store,
            &self.engine.config,
            &self.engine.metrics,
            &self.webhooks,
            now,
        )
        .await?)
    }

    pub fn store(&self) -> &Store {
        &self.engine.store
    }

    /// Every HTTP route of the daemon.
    pub fn router(&self) -> axum::Router {
        crate::api::router(crate::api::ApiState {
            engine: self.engine.clone(),
            lanes: Some(self.lanes.clone()),
            leases: Some(self.leases.clone()),
        })
    }

    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(
            self.engine.store.clone(),
            self.engine.clock.clone(),
            self.engine.config.clone(),
            self.connectors.clone(),
            self.engine.outbox_notify.clone(),
            self.engine.metrics.clone(),
        )
        .with_breakers(self.breakers.clone())
        .with_lanes(self.lanes.clone())
    }

    /// Run sources' schedules, effective-dated changes and the dispatcher until `shutdown`.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        // A SIEM sink that cannot be built (a CA file that does not load, a header secret that is
        // not set) is a configuration error, reported before anything starts.
        crate::audit::forward::check(&self.engine.config)?;
        crate::api::console::check(&self.engine.config)?;
        // Leases first: every source, job and lane below waits for its own (DESIGN.md invariant
        // 14). The keeper stops last, releasing what it holds once the work has stopped.
        let (leases_stop, leases_stopped) = watch::channel(false);
        let keeper = tokio::spawn(self.leases.clone().run(leases_stopped));
        // LDAP sources follow their directories on their own tasks, reconnecting with backoff,
        // each while this replica holds its lease.
        let ldap_sources = self
            .engine
            .config
            .sources
            .ldap
            .keys()
            .map(|name| {
                tokio::spawn(follow_ldap(
                    self.engine.clone(),
                    self.leases.clone(),
                    name.clone(),
                    shutdown.clone(),
                ))
            })
            .collect::<Vec<_>>();
        // SIEM forwarding from each sink's cursor, while this replica holds its lease.
        let forwarder = tokio::spawn(crate::audit::forward::run(
            self.engine.clone(),
            self.leases.clone(),
            shutdown.clone(),
        ));
        let dispatcher = tokio::spawn(
            self.dispatcher()
                .with_leases(self.leases.clone())
                .run(shutdown.clone()),
        );
        let http = match &self.engine.config.http.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                tracing::info!(listen = %listener.local_addr()?, "HTTP server listening");
                let router = self.router();
                let mut stop = shutdown.clone();
                Some(tokio::spawn(crate::api::serve(
                    listener,
                    router,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        let result = self.schedule_loop(shutdown).await;
        for source in ldap_sources {
            source.await??;
        }
        forwarder.await??;
        // The dispatcher's workers finish the command in hand, then stop.
        dispatcher.await?;
        let _ = leases_stop.send(true);
        keeper.await?;
        if let Some(http) = http {
            http.await??;
        }
        result
    }

    async fn schedule_loop(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let engine = &self.engine;
        let tick = Duration::from_millis(engine.config.engine.tick_millis.max(10));
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let now = engine.clock.now();
            let leases = &self.leases;
            for (name, src) in &engine.config.sources.hr {
                // Only the replica holding the source's lease follows it.
                let lease = crate::leases::hr_source(name);
                if !leases.holds(&lease) {
                    continue;
                }
                // A drop directory is looked at every tick, so a new file is applied as it lands; the
                // schedule re-reads a single file (and catches up a run missed while stopped).
                let due =
                    src.drop_dir.is_some() || self.schedule_due(name, &src.schedule, now).await?;
                if !due {
                    continue;
                }
                // Dropped where it stands if the lease is lost: each chunk committed with its
                // checkpoint, so the next holder carries on from there.
                match leases.while_held(&lease, engine.run_hr_source(name)).await {
                    None => continue,
                    Some(Ok(reports)) => reports.iter().for_each(log_report),
                    Some(Err(e)) => {
                        tracing::error!(source = %name, error = %e, "HR feed not applied")
                    }
                }
                let mut tx = engine.store.begin_write().await?;
                store::set_last_run(&mut tx, &format!("hr:{name}"), to_micros(now)).await?;
                tx.commit().await?;
            }
            if let Some(Err(e)) = leases
                .while_held(crate::leases::EFFECTIVE_DATED, engine.tick())
                .await
            {
                tracing::error!(error = %e, "effective-dated changes not applied");
            }
            // Every replica follows the templates file; the one holding the reconciliation's lease
            // then carries the change out to everyone.
            if let Err(e) = self.reload_policy(now).await {
                tracing::error!(error = %e, "templates reload not recorded");
            }
            if let Some(Err(e)) = leases
                .while_held(crate::leases::RECONCILE, self.reconcile_if_due(now))
                .await
            {
                tracing::error!(error = %e, "reconciliation against policy failed");
            }
            if let Err(e) = self.scheduled_checks(now).await {
                tracing::error!(error = %e, "drift or overdue key check failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Re-read the templates file while running: an edit takes effect without a restart, through
    /// the reconciliation its new fingerprint makes due; a file that does not load is refused,
    /// logged, audited and shown by `latchkey_policy_reload_refused`, and the last good policy
    /// stays in force.
    async fn reload_policy(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let (action, details) = match self.engine.reload_policy() {
            crate::live_policy::PolicyReload::Unchanged => return Ok(()),
            crate::live_policy::PolicyReload::Reloaded { from, to } => {
                tracing::info!(%from, %to, "templates changed on disk: new policy in force");
                (
                    "policy.reloaded",
                    serde_json::json!({"from": from, "to": to}),
                )
            }
            crate::live_policy::PolicyReload::Refused { digest, error } => {
                tracing::error!(%error, "templates changed on disk but do not load; the last good policy stays in force");
                (
                    "policy.reload_refused",
                    serde_json::json!({"digest": digest, "error": error}),
                )
            }
        };
        let mut tx = self.engine.store.begin_write().await?;
        let templates = self.engine.config.policy.templates.display().to_string();
        crate::audit::append(
            &mut tx,
            to_micros(now),
            "policy",
            action,
            &templates,
            &details,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A full reconciliation of every identity when one is due: at start when what decides desired
    /// state changed, on `[reconcile] schedule`, and after held revocations were approved.
    async fn reconcile_if_due(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let Some(why) = crate::reconcile::due(&self.engine, now).await? else {
            return Ok(());
        };
        let (plan, r) = crate::reconcile::run(&self.engine, &why).await?;
        tracing::info!(
            why,
            identities = plan.identities,
            issues = r.issues,
            revokes = r.revokes,
            held = r.held,
            "reconciled every identity against policy"
        );
        if let Some(reason) = &plan.hold_reason {
            tracing::warn!(%reason, "revocations held for approval (latchkey status, latchkey approve)");
        }
        Ok(())
    }

    /// The drift check on its schedule, and overdue key returns on every tick (one small query).
    async fn scheduled_checks(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let leases = &self.leases;
        if let Some(r) = leases
            .while_held(crate::leases::OVERDUE_KEYS, self.check_overdue_keys())
            .await
        {
            r?;
        }
        leases
            .while_held(
                crate::leases::CABINET_EVENTS,
                crate::sources::cabinet_events::poll_all(&self.engine, &self.webhooks),
            )
            .await;
        let drills = leases
            .while_held(crate::leases::DRILLS, self.run_due_drills(now))
            .await
            .transpose()?
            .unwrap_or_default();
        if let Some(r) = leases
            .while_held(crate::leases::DRIFT, self.drift_if_due(now))
            .await
        {
            r?;
        }
        if let Some(Err(e)) = leases
            .while_held(
                crate::audit::retention::LEASE,
                crate::audit::retention::if_due(self),
            )
            .await
        {
            tracing::error!(error = %e, "audit retention pass failed");
        }
        for (connector, report) in drills {
            if report.ok() {
                tracing::info!(connector = %connector, "scheduled revocation drill passed");
            } else {
                tracing::error!(connector = %connector, report = %report.render(), "scheduled revocation drill FAILED");
            }
        }
        Ok(())
    }

    /// The drift check, when `[drift] schedule` says one is due.
    async fn drift_if_due(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let Some(schedule) = self
            .engine
            .config
            .drift
            .schedule
            .as_ref()
            .filter(|s| !s.trim().is_empty())
        else {
            return Ok(());
        };
        let due = match store::last_run(self.engine.store.pool(), "drift").await? {
            None => true,
            Some(last) => schedule
                .parse::<croner::Cron>()?
                .find_next_occurrence(&crate::clock::from_micros(last), false)
                .is_ok_and(|next| next <= now),
        };
        if due {
            let report = self.drift_check().await?;
            if !report.findings.is_empty() {
                tracing::warn!(
                    findings = report.findings.len(),
                    "drift check found differences"
                );
            }
            let mut tx = self.engine.store.begin_write().await?;
            store::set_last_run(&mut tx, "drift", to_micros(now)).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Revocation drills on `[telemetry.drill] schedule`: every connector with a `drill_target`,
    /// when the schedule says a run is due (a run missed while stopped is caught up once).
    pub async fn run_due_drills(
        &self,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(String, crate::telemetry::drill::DrillReport)>> {
        let config = &self.engine.config;
        let Some(schedule) = config
            .telemetry
            .drill
            .as_ref()
            .and_then(|d| d.schedule.as_ref())
        else {
            return Ok(Vec::new());
        };
        let due = match store::last_run(self.engine.store.pool(), "drill").await? {
            None => true,
            Some(last) => schedule
                .parse::<croner::Cron>()?
                .find_next_occurrence(&crate::clock::from_micros(last), false)
                .is_ok_and(|next| next <= now),
        };
        if !due {
            return Ok(Vec::new());
        }
        // Recorded first: a drill that hangs on a dead vendor must not be started again every tick.
        let mut tx = self.engine.store.begin_write().await?;
        store::set_last_run(&mut tx, "drill", to_micros(now)).await?;
        tx.commit().await?;
        let mut out = Vec::new();
        for (name, cc) in &config.connectors {
            if cc.drill_target.is_none() {
                continue;
            }
            let Some(connector) = self.connectors.get(name) else {
                continue;
            };
            let report = crate::telemetry::drill::run(&self.engine, connector, None).await?;
            out.push((name.clone(), report));
        }
        Ok(out)
    }

    async fn schedule_due(
        &self,
        name: &str,
        schedule: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let Some(last) = store::last_run(self.engine.store.pool(), &format!("hr:{name}")).await?
        else {
            return Ok(true);
        };
        let cron: croner::Cron = schedule.parse()?;
        let last = crate::clock::from_micros(last);
        Ok(cron
            .find_next_occurrence(&last, false)
            .is_ok_and(|next| next <= now))
    }
}

pub fn log_report(r: &FeedReport) {
    // A file set aside was logged as an error where it happened; it was not applied.
    if r.rejected.is_some() {
        return;
    }
    tracing::info!(
        source = %r.source, file = %r.file, rows = r.rows, unchanged = r.unchanged, joiners = r.joiners,
        movers = r.movers, leavers = r.leavers, rehires = r.rehires, quarantined = r.quarantined,
        held = r.held, issues = r.issues, revokes = r.revokes, skipped = r.skipped_same_file,
        absent = r.absent, released = r.released,
        "HR feed applied"
    );
}

/// Follow one LDAP source while this replica holds its lease: started when the lease is taken,
/// stopped when it is lost (or at shutdown), started again when it comes back.
async fn follow_ldap(
    engine: Arc<Engine>,
    leases: Arc<crate::leases::Leases>,
    name: String,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let lease = crate::leases::ldap_source(&name);
    // A source that cannot be built is a configuration error, reported at once.
    crate::sources::ldap::LdapSource::from_config(engine.clone(), &name)?;
    while leases.wait_held(&lease, &mut shutdown).await {
        let src = crate::sources::ldap::LdapSource::from_config(engine.clone(), &name)?;
        let (stop, stopped) = watch::channel(false);
        let mut task = tokio::spawn(crate::sources::ldap::supervise(src, stopped));
        let mut down = shutdown.clone();
        tokio::select! {
            _ = leases.lost(&lease) => {}
            _ = down.wait_for(|s| *s) => {}
            _ = &mut task => continue,
        }
        let _ = stop.send(true);
        // The source stops at its next await; if it does not within a second, it is cut off
        // (each change it applied committed with its cookie).
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    Ok(())
}
