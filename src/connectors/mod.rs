//! Connectors: the last step before the vendor. Each one makes issue and revoke idempotent at its
//! vendor (find before create; "already exists" and "already gone" are success) and can read back
//! what the vendor holds, which is how a grant is confirmed.
//!
//! Most vendors are a declarative profile in `connectors/` driven by [`http::HttpConnector`]; a
//! built-in connector exists only where a profile cannot express the job.

pub mod call;
pub mod http;
pub mod manual;
pub mod profile;

use crate::config::{Config, ConfigError};
use crate::model::{Action, PersonKey, PersonRef, Window};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything a connector needs to act on one grant.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub person: PersonRef,
    /// The vendor's id for the person, when latchkey already knows it.
    pub person_ref: Option<String>,
    /// The vendor's id for the target (lock, group), after the connector's target map.
    pub target: String,
    /// The vendor's id for the grant, when latchkey already knows it.
    pub grant_ref: Option<String>,
    pub credential: String,
    pub window: Option<Window>,
    pub valid_until: Option<DateTime<Utc>>,
    pub timezone: chrono_tz::Tz,
}

impl GrantRequest {
    /// A request about a target only, no person (listing and deleting for the drift check).
    pub fn for_target(target: &str, grant_ref: Option<&str>) -> Self {
        Self {
            person: PersonRef {
                key: PersonKey::default(),
                name: String::new(),
                email: String::new(),
                attrs: BTreeMap::new(),
            },
            person_ref: None,
            target: target.to_string(),
            grant_ref: grant_ref.map(str::to_string),
            credential: String::new(),
            window: None,
            valid_until: None,
            timezone: chrono_tz::UTC,
        }
    }
}

/// What the vendor said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The vendor shows the desired state.
    Confirmed {
        person_ref: Option<String>,
        grant_ref: Option<String>,
    },
    /// The vendor accepted the change but does not show it yet (asynchronous vendors): read back later.
    Pending {
        person_ref: Option<String>,
        grant_ref: Option<String>,
    },
}

impl Outcome {
    pub fn refs(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Outcome::Confirmed {
                person_ref,
                grant_ref,
            }
            | Outcome::Pending {
                person_ref,
                grant_ref,
            } => (person_ref.as_deref(), grant_ref.as_deref()),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    /// Over the vendor's limit: wait (at least `retry_after` when the vendor said so) and try again.
    #[error("{vendor}: rate limited (HTTP {status}){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        vendor: String,
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Worth retrying: 5xx, 423 busy, timeouts, connection errors.
    #[error("{vendor}: {message}")]
    Transient {
        vendor: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (bad request, bad credentials, a broken profile): dead-letter it.
    #[error("{vendor}: {message}")]
    Permanent { vendor: String, message: String },
}

/// How the dispatcher retries a connector's commands.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// How long an asynchronous vendor may take to show a change before it is issued again.
    pub confirm_deadline: Duration,
    /// First read-back interval for a pending confirmation (doubles up to `max`).
    pub confirm_recheck: Duration,
}

#[async_trait::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    fn retry_policy(&self) -> RetryPolicy;
    /// Requests per second the connector will not exceed (for reports and benchmarks).
    fn rate_limit(&self) -> (u32, u32);
    async fn issue(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError>;
    async fn revoke(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError>;
    /// Read back whether the vendor now shows the result of `action`.
    async fn confirm(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError>;
    /// Whether the vendor confirms a change only by a listing of its target that shows every
    /// person's grants there, so one listing can confirm many pending changes (a mass drain then
    /// costs about one request per change, not two).
    fn confirms_by_target_listing(&self) -> bool {
        false
    }
    /// Longest a written change waits for its read-back while more writes to its target are
    /// queued (see [`Connector::confirms_by_target_listing`]).
    fn confirm_gather(&self) -> Duration {
        Duration::ZERO
    }
    /// The vendor write of `action` alone, without reading it back: `Pending` means written, to be
    /// confirmed later by [`Connector::confirm_on_target`]. Only called when
    /// [`Connector::confirms_by_target_listing`] holds; by default the whole issue or revoke.
    async fn write(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError> {
        match action {
            Action::Issue => self.issue(req).await,
            Action::Revoke => self.revoke(req).await,
        }
    }
    /// Confirm changes that are all on one target; one outcome per change, in order. A connector
    /// that confirms by listing its target lists it once; by default each is read back alone.
    async fn confirm_on_target(
        &self,
        changes: &[(GrantRequest, Action)],
    ) -> Result<Vec<Outcome>, ConnectorError> {
        let mut out = Vec::with_capacity(changes.len());
        for (req, action) in changes {
            out.push(self.confirm(req, *action).await?);
        }
        Ok(out)
    }
    /// Counters the connector increments when a call waits for its rate budget (metrics).
    fn attach_rate_wait_counters(&self, _counters: RateWaitCounters) {}
    /// Every grant the vendor holds on a target (latchkey's target name), for the drift check.
    /// `people` are the vendor person ids latchkey knows; each grant is attributed to the one it
    /// belongs to, if any. `None`: the connector cannot list.
    async fn list_grants(
        &self,
        _target: &str,
        _people: &[String],
    ) -> Result<Option<Vec<VendorGrant>>, ConnectorError> {
        Ok(None)
    }
    /// Delete one listed grant by its vendor id (an orphan the drift check found). `Ok(false)`: the
    /// connector cannot.
    async fn delete_listed(&self, _target: &str, _grant_ref: &str) -> Result<bool, ConnectorError> {
        Ok(false)
    }
    /// The store and clock, for built-in connectors that keep their state in latchkey's database.
    fn attach_store(&self, _store: crate::store::Store, _clock: crate::clock::SharedClock) {}
}

/// A grant as the vendor lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorGrant {
    pub grant_ref: Option<String>,
    /// The vendor's id of the person it belongs to, when it is one of the people asked about.
    pub person_ref: Option<String>,
}

/// (waits, seconds waited): Prometheus counters shared with the daemon's registry.
pub type RateWaitCounters = (
    prometheus_client::metrics::counter::Counter,
    prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
);

pub type Connectors = BTreeMap<String, Arc<dyn Connector>>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("connector `{connector}`: {message}")]
    Connector { connector: String, message: String },
    /// Connector secrets that are not set, every one of them (commands that only read need none).
    #[error(
        "{} connector secret(s) missing; this command reaches vendors and needs them (commands that only read do not):\n  {}",
        .0.len(),
        .0.join("\n  ")
    )]
    MissingSecrets(Vec<String>),
}

/// Build every configured connector. Secrets are resolved here, so a missing one fails at start-up;
/// every missing secret of every connector is named in one error, so one round of fixing suffices.
pub fn build_all(config: &Config) -> Result<Connectors, BuildError> {
    let mut out: Connectors = BTreeMap::new();
    let mut missing = Vec::new();
    let mut built = Vec::new();
    for (name, cc) in &config.connectors {
        if cc.kind == crate::config::ConnectorKind::Manual {
            out.insert(
                name.clone(),
                Arc::new(manual::ManualConnector::new(name, &cc.manual)),
            );
            continue;
        }
        let profile = profile::Profile::load(&config.resolve(&cc.profile))?;
        let mut secrets = BTreeMap::new();
        for needed in profile.secret_names() {
            let key = format!("connectors.{name}.secrets.{needed}");
            let Some(r) = cc.secrets.get(&needed) else {
                missing.push(format!(
                    "{key}: profile {} needs it; add {key} = {{ env = \"...\" }}",
                    cc.profile.display()
                ));
                continue;
            };
            match config.secret(&key, r) {
                Ok(value) => {
                    secrets.insert(needed.clone(), value);
                }
                Err(ConfigError::Secret { message, .. }) => {
                    missing.push(format!("{key}: {message}"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        built.push((name, cc, profile, secrets));
    }
    if !missing.is_empty() {
        return Err(BuildError::MissingSecrets(missing));
    }
    for (name, cc, profile, secrets) in built {
        let connector =
            http::HttpConnector::new(name, profile, cc, secrets).map_err(|message| {
                BuildError::Connector {
                    connector: name.clone(),
                    message,
                }
            })?;
        out.insert(name.clone(), Arc::new(connector));
    }
    Ok(out)
}

/// Check every profile without resolving secrets (for `latchkey check`).
pub fn check_profiles(config: &Config) -> Result<Vec<String>, BuildError> {
    let mut names = Vec::new();
    for (name, cc) in &config.connectors {
        if cc.kind == crate::config::ConnectorKind::Manual {
            names.push(format!("{name} (manual keys)"));
            continue;
        }
        let profile = profile::Profile::load(&config.resolve(&cc.profile))?;
        for needed in profile.secret_names() {
            if !cc.secrets.contains_key(&needed) {
                return Err(BuildError::Connector {
                    connector: name.clone(),
                    message: format!(
                        "profile needs secret `{needed}`: add connectors.{name}.secrets.{needed}"
                    ),
                });
            }
        }
        http::HttpConnector::compile(&profile).map_err(|message| BuildError::Connector {
            connector: name.clone(),
            message,
        })?;
        names.push(format!("{name} ({})", profile.vendor));
    }
    Ok(names)
}
