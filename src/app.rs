//! Assembly: from a configuration to a running daemon (store, engine, connectors, dispatcher,
//! schedules), with a clean drain on shutdown.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::connectors::{self, Connectors};
use crate::dispatch::Dispatcher;
use crate::engine::Engine;
use crate::policy::Policy;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why the daemon could not be assembled, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Connectors(#[from] crate::connectors::BuildError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Job(#[from] crate::jobs::JobError),
    #[error(transparent)]
    Ldap(#[from] crate::engine::ldap::LdapSourceError),
    #[error(transparent)]
    Forward(#[from] crate::audit::forward::ForwardError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("a task of the daemon ended unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

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
    pub async fn open(config: Config, clock: SharedClock) -> Result<Self> {
        Self::open_for(config, clock, Vendors::Reach).await
    }

    /// [`App::open`] without connectors: no vendor secret is needed, and none can be reached.
    pub async fn open_reader(config: Config, clock: SharedClock) -> Result<Self> {
        Self::open_for(config, clock, Vendors::Untouched).await
    }

    pub async fn open_for(config: Config, clock: SharedClock, vendors: Vendors) -> Result<Self> {
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
    pub async fn drift_check(&self) -> Result<crate::drift::DriftReport> {
        Ok(self.jobs().drift_check().await?)
    }

    /// Alert on mechanical key returns past their due time, and refresh the key-return gauges.
    pub async fn check_overdue_keys(&self) -> Result<crate::connectors::manual::OverdueReport> {
        Ok(self.jobs().check_overdue_keys().await?)
    }

    /// The scheduled jobs, with what they work on.
    pub fn jobs(&self) -> crate::jobs::Jobs {
        crate::jobs::Jobs {
            engine: self.engine.clone(),
            connectors: self.connectors.clone(),
            leases: self.leases.clone(),
            webhooks: self.webhooks.clone(),
        }
    }

    /// Revocation drills when `[telemetry.drill] schedule` says a run is due (see
    /// [`crate::jobs::Jobs::run_due_drills`]).
    pub async fn run_due_drills(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, crate::jobs::drill::DrillReport)>> {
        Ok(self.jobs().run_due_drills(now).await?)
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
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<()> {
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
        let result = self.jobs().run(shutdown).await.map_err(AppError::from);
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
}

/// Follow one LDAP source while this replica holds its lease: started when the lease is taken,
/// stopped when it is lost (or at shutdown), started again when it comes back.
async fn follow_ldap(
    engine: Arc<Engine>,
    leases: Arc<crate::leases::Leases>,
    name: String,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let lease = crate::leases::ldap_source(&name);
    // A source that cannot be built is a configuration error, reported at once.
    crate::engine::ldap::LdapSource::from_config(engine.clone(), &name)?;
    while leases.wait_held(&lease, &mut shutdown).await {
        let src = crate::engine::ldap::LdapSource::from_config(engine.clone(), &name)?;
        let (stop, stopped) = watch::channel(false);
        let mut task = tokio::spawn(crate::engine::ldap::supervise(src, stopped));
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
