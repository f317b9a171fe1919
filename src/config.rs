//! Daemon configuration: strict, versioned TOML with a `LATCHKEY_` environment overlay.
//!
//! Unknown keys are errors, and every error names the file, the line and the key. Secrets never sit in
//! the file in clear: a secret is a reference to an environment variable (or `NAME_FILE`, a file that
//! holds it). Loading goes through [`ConfigInput`], a seam that tests feed directly instead of the
//! process environment.

mod audit;
mod break_glass;
mod connectors;
mod console;
mod load;
mod scim;
mod sources;

pub use audit::{AuditConfig, ForwardSink, SinkKind};
pub use break_glass::{BreakGlassConfig, BreakGlassRule, OnDeadline, TierConfig};
pub use connectors::*;
pub use console::{ConsoleConfig, OidcConfig};
pub use load::*;
pub use scim::*;
use serde::Deserialize;
pub use sources::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {}", io_reason(source))]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("secret `{name}`: {message}")]
    Secret { name: String, message: String },
}

/// A reference to a secret: `{ env = "NAME" }` reads `$NAME`, or the file named by `$NAME_FILE`;
/// `{ file = "/run/secrets/x" }` reads a file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// What a configuration is read from: its text, where it came from, and the environment to overlay
/// and resolve secrets from.
#[derive(Debug, Clone)]
pub struct ConfigInput {
    pub text: String,
    pub path: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl ConfigInput {
    pub fn from_file(path: &Path, env: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            text,
            path: path.to_path_buf(),
            env,
        })
    }
}

/// The process environment, read once at start-up by the binary.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    /// Name of this replica: lease owner in the outbox.
    #[serde(default = "default_instance")]
    pub instance: String,
    pub store: StoreConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteConfig>,
    #[serde(default)]
    pub sources: SourcesConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// The SCIM 2.0 server identity providers push to (see `src/api/scim.rs`).
    #[serde(default)]
    pub scim: ScimConfig,
    /// Default propagation SLA; a connector's `sla` overrides parts of it.
    #[serde(default)]
    pub sla: SlaConfig,
    /// Revocation drills.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Drift check against each vendor's grant list.
    #[serde(default)]
    pub drift: DriftConfig,
    /// Full reconciliation of every identity against current policy.
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// Which sources may set which identity attributes.
    #[serde(default)]
    pub authority: AuthorityConfig,
    /// Audit log retention and SIEM forwarding.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Operators of the admin API, by name: role and token hash (see `crate::operators`).
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorConfig>,
    /// The web console and how operators sign in to it (absent: no console).
    pub console: Option<ConsoleConfig>,
    /// Emergency (break-glass) access: its length and who must agree.
    #[serde(default)]
    pub break_glass: BreakGlassConfig,
    /// Risk tiers: stricter temporary-access and break-glass rules for sensitive doors.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Where the file was read from: relative paths inside it are relative to its folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub origin: String,
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
}

fn default_instance() -> String {
    "latchkey-0".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///var/lib/latchkey/state.db` or `postgres://...`; a URL with a password belongs in
    /// `url_secret` instead.
    pub url: Option<String>,
    pub url_secret: Option<SecretRef>,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// How many replicas share this store (the Helm chart writes its `replicaCount`). More than one
    /// needs PostgreSQL: SQLite is one process's store, and leases between replicas need a shared
    /// database.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    1
}

fn default_pool() -> u32 {
    8
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Admin API, health and metrics; off when absent.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Time zone for people whose site has none configured.
    #[serde(default = "default_tz")]
    pub default_timezone: String,
    /// Share of active people whose disappearance from one feed is held for approval.
    #[serde(default = "default_mass_share")]
    pub mass_change_threshold: f64,
    /// How long a worker holds a claimed command before another may take it.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// How often scheduled work (effective-dated changes, expiries) is looked at.
    #[serde(default = "default_tick")]
    pub tick_millis: u64,
    /// Longest wait between two tries of a command: caps the backoff, a vendor's Retry-After and
    /// a revoke's retries once it used up its attempts (a revoke never dead-letters).
    #[serde(default = "default_max_retry_delay")]
    pub max_retry_delay_seconds: u64,
    /// How long a replica's lease on a source, a scheduled job or a connector's lane lasts without
    /// renewal: a replica that dies is replaced within this time. Renewed every third of it.
    #[serde(default = "default_replica_lease")]
    pub replica_lease_seconds: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_timezone: default_tz(),
            mass_change_threshold: default_mass_share(),
            lease_seconds: default_lease(),
            tick_millis: default_tick(),
            max_retry_delay_seconds: default_max_retry_delay(),
            replica_lease_seconds: default_replica_lease(),
        }
    }
}

fn default_replica_lease() -> u64 {
    15
}

fn default_max_retry_delay() -> u64 {
    300
}

fn default_tz() -> String {
    "UTC".to_string()
}
fn default_mass_share() -> f64 {
    0.2
}
fn default_lease() -> u64 {
    30
}
fn default_tick() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub timezone: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Entitlement templates (see `mappings/templates.toml`).
    pub templates: PathBuf,
}

/// One operator: `[operators.NAME]`. Only the token's SHA-256 is kept (`latchkey operators token`
/// makes a token and prints this section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    pub role: crate::operators::Role,
    /// SHA-256 of the bearer token, 64 hex digits.
    pub token_sha256: String,
    /// The operating-system account this operator runs local commands as, so dual control knows
    /// `os:USER` and `operator:NAME` as one person.
    pub os_user: Option<String>,
    /// The name the console's single sign-on gives this operator (`oidc:NAME`), so dual control
    /// knows that sign-in and `operator:NAME` as one person.
    pub oidc_name: Option<String>,
}

#[cfg(test)]
mod tests;
