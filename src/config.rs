//! Daemon configuration: strict, versioned TOML with a `LATCHKEY_` environment overlay.
//!
//! Unknown keys are errors, and every error names the file, the line and the key. Secrets never sit in
//! the file in clear: a secret is a reference to an environment variable (or `NAME_FILE`, a file that
//! holds it). Loading goes through [`ConfigInput`], a seam that tests feed directly instead of the
//! process environment.

mod audit;
mod break_glass;
mod console;

pub use audit::{AuditConfig, ForwardSink, SinkKind};
pub use break_glass::{BreakGlassConfig, BreakGlassRule, OnDeadline, TierConfig};
pub use console::{ConsoleConfig, OidcConfig};
use serde::Deserialize;
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    #[serde(default)]
    pub hr: BTreeMap<String, HrSourceConfig>,
    /// LDAP and Active Directory sources (see `crate::sources::ldap`).
    #[serde(default)]
    pub ldap: BTreeMap<String, LdapSourceConfig>,
}

/// How an LDAP source follows changes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LdapDialect {
    /// RFC 4533 content synchronisation (OpenLDAP syncprov, 389-ds).
    #[default]
    Rfc4533,
    /// `uSNChanged` polling against one domain controller, deletions by full comparison.
    ActiveDirectory,
    /// `modifyTimestamp` polling plus periodic full comparison, for servers with neither.
    Poll,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LdapScope {
    Base,
    One,
    #[default]
    Subtree,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceConfig {
    /// `ldap://host:389` or `ldaps://host:636`. For Active Directory, one pinned domain controller:
    /// USNs are per DC.
    pub url: String,
    /// Simple bind; anonymous when absent.
    pub bind_dn: Option<String>,
    pub bind_password: Option<SecretRef>,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    pub base: String,
    #[serde(default)]
    pub scope: LdapScope,
    #[serde(default = "default_ldap_filter")]
    pub filter: String,
    #[serde(default)]
    pub dialect: LdapDialect,
    /// Attribute mapping (see `mappings/ldap.toml`).
    pub mapping: PathBuf,
    /// RFC 4533: keep the search open (refreshAndPersist). `false` polls with refreshOnly.
    #[serde(default = "default_true")]
    pub persist: bool,
    /// Seconds between polls (refreshOnly, USN and timestamp polling).
    #[serde(default = "default_ldap_poll")]
    pub poll_seconds: u64,
    /// Seconds between full comparisons (polling dialects): how deletions are found.
    #[serde(default = "default_ldap_full")]
    pub full_compare_seconds: u64,
    #[serde(default = "default_page_size")]
    pub page_size: i32,
    /// Seconds to wait for the server on connect and on each request.
    #[serde(default = "default_ldap_timeout")]
    pub timeout_seconds: u64,
    /// Overrides `engine.mass_change_threshold` for full comparisons of this directory.
    pub mass_change_threshold: Option<f64>,
    /// Explicit deletions within this many seconds count together against the mass-change
    /// threshold; beyond it they are held for approval.
    #[serde(default = "default_ldap_delete_window")]
    pub mass_delete_window_seconds: u64,
    /// Explicit deletions and disables are never held while there are at most this many in the
    /// window: one leaver in a small directory is not a mass change.
    #[serde(default = "default_ldap_delete_min")]
    pub mass_delete_min: usize,
}

fn default_ldap_delete_min() -> usize {
    5
}

fn default_ldap_delete_window() -> u64 {
    300
}

fn default_ldap_filter() -> String {
    "(objectClass=person)".to_string()
}
fn default_true() -> bool {
    true
}
fn default_ldap_poll() -> u64 {
    30
}
fn default_ldap_full() -> u64 {
    3600
}
fn default_page_size() -> i32 {
    500
}
fn default_ldap_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HrSourceConfig {
    /// Column mapping (see `mappings/hr.toml`).
    pub mapping: PathBuf,
    /// One file re-read whole on each run...
    pub path: Option<PathBuf>,
    /// ...or a drop directory whose new files are applied in name order.
    pub drop_dir: Option<PathBuf>,
    /// Standard 5-field crontab line; a new file in the drop directory is also picked up at once.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Overrides `engine.mass_change_threshold` for this feed.
    pub mass_change_threshold: Option<f64>,
    /// How a file is known to be completely written: `settle` (default) or `done-marker`.
    #[serde(default)]
    pub complete: FileCompletion,
    /// For `complete = "settle"`: seconds a file must have gone unmodified before it is read.
    #[serde(default = "default_settle_seconds")]
    pub settle_seconds: u64,
    /// Where files that cannot be read at all are moved; default `rejected/` beside the drop directory.
    pub rejected_dir: Option<PathBuf>,
    /// How long a person missing from the feed (without a termination) waits before being a leaver.
    #[serde(default)]
    pub absent_grace: AbsentGrace,
}

fn default_schedule() -> String {
    "*/15 * * * *".to_string()
}

fn default_settle_seconds() -> u64 {
    5
}

/// How latchkey knows an HR file has been written completely.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileCompletion {
    /// The file has not been modified for `settle_seconds`.
    #[default]
    Settle,
    /// A marker `<name>.done` exists beside the file (written by the uploader after the file).
    DoneMarker,
}

/// A person missing from a full feed becomes a leaver once missing from `feeds` consecutive feeds
/// and for at least `hours` since the first feed that missed them. Explicit terminations never wait.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AbsentGrace {
    #[serde(default = "default_absent_feeds")]
    pub feeds: u32,
    #[serde(default)]
    pub hours: f64,
}

impl Default for AbsentGrace {
    fn default() -> Self {
        Self {
            feeds: default_absent_feeds(),
            hours: 0.0,
        }
    }
}

fn default_absent_feeds() -> u32 {
    2
}

/// Attribute authority (DESIGN.md invariant 12): for each attribute named here, only the listed
/// sources may set it, the first that has a value winning; other sources' values for it are
/// ignored, so an identity provider with a stale `department` cannot move a person between door
/// groups the HR feed decides. Attributes not named keep the default rule: the first source by
/// name wins and the others fill gaps. `site` may be named too. Sources are the configured names
/// (`hr`, an LDAP source's name) and `scim:<tenant>` for a SCIM tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// `http` (a declarative profile) or a built-in connector such as `manual` (mechanical keys).
    #[serde(default)]
    pub kind: ConnectorKind,
    /// Declarative vendor profile (see `connectors/`); required for `kind = "http"`.
    #[serde(default)]
    pub profile: PathBuf,
    /// Overrides the profile's base URL (a simulator, a regional endpoint).
    pub base_url: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub max_attempts: Option<u32>,
    /// Commands in flight at once on this connector's lane; the lane runs one more worker,
    /// reserved for revokes, so a leaver never waits for a worker busy with an issue.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Secrets the profile's auth needs, by the names the profile gives them.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Template target name -> vendor id (lock id, group id); a name absent here is sent as is.
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// Overrides parts of the default `[sla]` for this vendor.
    #[serde(default)]
    pub sla: SlaOverride,
    /// Target the revocation drill grants and revokes for the canary (see `[telemetry.drill]`).
    pub drill_target: Option<String>,
    /// When to stop calling a vendor that keeps failing (see `dispatch::breaker`).
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Settings of the built-in `manual` connector (mechanical keys).
    #[serde(default)]
    pub manual: ManualConfig,
    /// Overrides the profile's `http.max_response_bytes` (default 4 MiB).
    pub max_response_bytes: Option<u64>,
    /// Overrides the profile's `http.retry_after_cap_secs` (default 300).
    pub retry_after_cap_secs: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Breaker, drift and mechanical keys

/// Which code drives a connector.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// A declarative HTTP profile run by the profile engine.
    #[default]
    Http,
    /// Mechanical keys: hand-over and return tasks for people, no vendor API.
    Manual,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker; 0 turns it off.
    #[serde(default = "default_breaker_failures")]
    pub failure_threshold: u32,
    /// How long an open breaker waits before letting one probe command through.
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown_seconds: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_breaker_failures(),
            cooldown_seconds: default_breaker_cooldown(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManualConfig {
    /// A key must be checked in within this many hours of the return task being created.
    #[serde(default = "default_return_due_hours")]
    pub return_due_hours: f64,
    /// Receives a JSON POST for each overdue key return.
    pub overdue_webhook: Option<String>,
}

impl Default for ManualConfig {
    fn default() -> Self {
        Self {
            return_due_hours: default_return_due_hours(),
            overdue_webhook: None,
        }
    }
}

fn default_return_due_hours() -> f64 {
    24.0
}

/// The drift check: each vendor's grants against the ledger.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Standard 5-field crontab line (default hourly, `0 * * * *`); an empty string turns the
    /// scheduled check off (`latchkey drift` still runs one).
    #[serde(default = "default_drift_schedule")]
    pub schedule: Option<String>,
    /// How long an expected grant may be missing at the vendor before it is issued again: vendors
    /// that sync to locks late must not cause a re-issue storm.
    #[serde(default = "default_drift_tolerance")]
    pub tolerance_seconds: u64,
    /// Revoke grants the vendor holds that latchkey did not issue (otherwise only report them).
    #[serde(default)]
    pub revoke_orphans: bool,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            schedule: default_drift_schedule(),
            tolerance_seconds: default_drift_tolerance(),
            revoke_orphans: false,
        }
    }
}

fn default_drift_schedule() -> Option<String> {
    Some("0 * * * *".to_string())
}

/// Full reconciliation: every identity re-evaluated against current policy and the differences
/// planned through the mass-change safeguard. Runs at start when what decides desired state changed,
/// and on this schedule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Standard 5-field crontab line (default daily at 03:00, `0 3 * * *`); empty turns it off.
    #[serde(default = "default_reconcile_schedule")]
    pub schedule: String,
    /// Share of entitled people losing a grant in one reconciliation above which their revocations
    /// are held for approval (default: `engine.mass_change_threshold`).
    pub mass_change_threshold: Option<f64>,
    /// Fewer people than this losing grants is never held, whatever their share: in a small
    /// population one person is already a large share (default 3).
    #[serde(default = "default_reconcile_minimum")]
    pub mass_change_minimum: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            schedule: default_reconcile_schedule(),
            mass_change_threshold: None,
            mass_change_minimum: default_reconcile_minimum(),
        }
    }
}

fn default_reconcile_minimum() -> usize {
    3
}

fn default_reconcile_schedule() -> String {
    "0 3 * * *".to_string()
}

fn default_drift_tolerance() -> u64 {
    900
}

/// "`objective` of revocations confirmed within `revoke_within_seconds`, over `window_days`".
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    #[serde(default = "default_sla_within")]
    pub revoke_within_seconds: f64,
    #[serde(default = "default_sla_objective")]
    pub objective: f64,
    #[serde(default = "default_sla_window")]
    pub window_days: u32,
}

impl Default for SlaConfig {
    fn default() -> Self {
        Self {
            revoke_within_seconds: default_sla_within(),
            objective: default_sla_objective(),
            window_days: default_sla_window(),
        }
    }
}

fn default_sla_within() -> f64 {
    60.0
}
fn default_sla_objective() -> f64 {
    0.99
}
fn default_sla_window() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlaOverride {
    pub revoke_within_seconds: Option<f64>,
    pub objective: Option<f64>,
    pub window_days: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The canary identity revocation drills grant and revoke.
    pub drill: Option<DrillConfig>,
    /// OpenTelemetry trace export; off when absent.
    pub otlp: Option<OtlpConfig>,
}

/// Where traces go: an OTLP/HTTP collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL, as in `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://collector:4318`);
    /// `/v1/traces` is appended unless the URL already ends with it.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Request headers (an API key for a hosted collector); values are secret references, so they
    /// come from the environment, never from the file.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Identity key of the canary; it must not be a real person.
    pub person: String,
    pub name: String,
    pub email: String,
    /// Standard 5-field crontab line: the daemon drills every connector that has a `drill_target`
    /// on this schedule, so a broken vendor path alerts before a real leaver meets it.
    pub schedule: Option<String>,
}

fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// Which SCIM attribute carries the correlation key shared with HR and LDAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum CorrelateBy {
    #[default]
    #[serde(rename = "externalId")]
    ExternalId,
    /// The Enterprise User extension's `employeeNumber`.
    #[serde(rename = "employeeNumber")]
    EmployeeNumber,
    #[serde(rename = "userName")]
    UserName,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    /// Default for every tenant that does not set its own.
    #[serde(default)]
    pub correlate_by: CorrelateBy,
    /// Largest request body accepted; larger ones get 413 before they are read.
    #[serde(default = "default_scim_body")]
    pub max_body_bytes: usize,
    /// A request still running after this long is answered 503 and its transaction rolled back.
    #[serde(default = "default_scim_timeout")]
    pub request_timeout_seconds: u64,
    /// The externally visible base of the endpoint (`https://latchkey.example.com/scim/v2`) for
    /// `meta.location`; when absent it is built from the request's Host header.
    pub base_url: Option<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, ScimTenantConfig>,
    /// Extension schemas every tenant accepts, by URN (RFC 7643 section 3.3).
    #[serde(default)]
    pub extensions: BTreeMap<String, ScimExtensionConfig>,
    /// What happens to an attribute no schema declares: `refuse` (default), `keep` or `drop`.
    #[serde(default)]
    pub unknown_attributes: UnknownAttributes,
}

/// Which identity provider a SCIM tenant is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScimProvider {
    #[default]
    Generic,
    Okta,
    Entra,
}

/// What happens to an attribute that neither the core schemas nor a declared extension has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownAttributes {
    /// 400 with a message that says how to declare it: a mistyped attribute never passes silently.
    #[default]
    Refuse,
    /// Stored and returned as sent, not filterable.
    Keep,
    /// Removed before storing.
    Drop,
}

/// A declared SCIM schema extension (custom attributes an identity provider sends).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScimExtensionConfig {
    /// `User` (default) or `Group`.
    #[serde(default = "default_ext_resource")]
    pub resource: String,
    pub description: Option<String>,
    pub attributes: Vec<ScimAttributeConfig>,
}

fn default_ext_resource() -> String {
    "User".to_string()
}

/// One attribute of a declared extension.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScimAttributeConfig {
    pub name: String,
    /// `string` (default), `boolean`, `integer`, `decimal`, `dateTime`, `reference`, `complex`.
    #[serde(default = "default_attr_type", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub multi_valued: bool,
    #[serde(default)]
    pub sub_attributes: Vec<ScimAttributeConfig>,
    /// The identity attribute this value feeds, for templates (multiple values joined by `,`).
    pub maps_to: Option<String>,
}

fn default_attr_type() -> String {
    "string".to_string()
}

const SCIM_ATTR_TYPES: &[&str] = &[
    "string",
    "boolean",
    "integer",
    "decimal",
    "dateTime",
    "reference",
    "complex",
];

impl ScimConfig {
    /// A declared extension that cannot work: the key and the reason.
    fn check_extensions(
        exts: &BTreeMap<String, ScimExtensionConfig>,
        prefix: &str,
    ) -> Result<(), (String, String)> {
        for (urn, e) in exts {
            let key = format!("{prefix}.\"{urn}\"");
            let core = urn
                .to_ascii_lowercase()
                .starts_with("urn:ietf:params:scim:schemas:core:")
                || urn.eq_ignore_ascii_case(
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                );
            if !urn.starts_with("urn:") || urn.split(':').count() < 3 || core {
                return Err((
                    key,
                    "must be a URN other than the core and enterprise schemas".into(),
                ));
            }
            if e.resource != "User" && e.resource != "Group" {
                return Err((
                    format!("{key}.resource"),
                    "must be `User` or `Group`".into(),
                ));
            }
            let mut attrs: Vec<&ScimAttributeConfig> = e.attributes.iter().collect();
            while let Some(a) = attrs.pop() {
                let ok_name = !a.name.is_empty()
                    && a.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok_name || !SCIM_ATTR_TYPES.contains(&a.kind.as_str()) {
                    return Err((
                        format!("{key}.attributes"),
                        format!(
                            "attribute `{}`: a plain name and one of {SCIM_ATTR_TYPES:?}",
                            a.name
                        ),
                    ));
                }
                if (a.kind == "complex") == a.sub_attributes.is_empty() {
                    return Err((
                        format!("{key}.attributes"),
                        format!(
                            "attribute `{}`: sub_attributes exactly when type is complex",
                            a.name
                        ),
                    ));
                }
                attrs.extend(a.sub_attributes.iter());
            }
        }
        Ok(())
    }
}

impl Default for ScimConfig {
    fn default() -> Self {
        Self {
            correlate_by: CorrelateBy::default(),
            max_body_bytes: default_scim_body(),
            request_timeout_seconds: default_scim_timeout(),
            base_url: None,
            tenants: BTreeMap::new(),
            extensions: BTreeMap::new(),
            unknown_attributes: UnknownAttributes::default(),
        }
    }
}

fn default_scim_body() -> usize {
    1024 * 1024
}
fn default_scim_timeout() -> u64 {
    30
}

/// One identity provider pushing to latchkey. Its bearer token is given either as its SHA-256
/// (hex), or as a secret reference resolved and hashed at start; never in clear in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimTenantConfig {
    pub token_sha256: Option<String>,
    pub token: Option<SecretRef>,
    pub correlate_by: Option<CorrelateBy>,
    /// Requests per second this tenant may make (over the burst); excess gets 429.
    pub rate_limit: Option<RateLimitConfig>,
    /// When set, a user is in scope only while a member of one of these groups (by displayName):
    /// removal from the last of them is a leaver.
    #[serde(default)]
    pub scope_groups: Vec<String>,
    /// Which identity provider this is: selects compatibility behaviour (`entra` turns on
    /// `unquoted_filter_values`). Default `generic`.
    #[serde(default)]
    pub provider: ScimProvider,
    /// Accept filter values without quotes (`externalId eq jyoung`), as Entra ID sends them.
    /// Default: on for `provider = "entra"`, off otherwise.
    pub unquoted_filter_values: Option<bool>,
    /// Extension schemas this tenant accepts besides those under `[scim.extensions]`.
    #[serde(default)]
    pub extensions: BTreeMap<String, ScimExtensionConfig>,
    /// Overrides `scim.unknown_attributes` for this tenant.
    pub unknown_attributes: Option<UnknownAttributes>,
    /// Correlation keys this tenant is authoritative for (`*` matches any run of characters),
    /// besides the people it created (first to know them). Default none.
    #[serde(default)]
    pub authoritative_keys: Vec<String>,
    /// Whether a deactivation or deletion of a person this tenant is not authoritative for
    /// revokes (default false: it is recorded and alerted, not executed).
    #[serde(default)]
    pub may_terminate: bool,
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Parse TOML text into `T`, turning toml's error into one that names file, line and column, and
/// the key with what it expects in words (`engine.lease_seconds`: expected a whole number).
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    deserialize_keyed(text).map_err(|e| e.into_config_error(text, origin))
}

/// An I/O error's text without the `(os error N)` that repeats it.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A deserialisation error with the dotted key it concerns.
#[derive(Debug)]
pub struct KeyedError {
    /// `engine.lease_seconds`; None at the top level.
    pub path: Option<String>,
    /// The key that is not allowed, for an unknown-field error (`path` is then its table).
    pub unknown: Option<String>,
    pub message: String,
    /// Byte range in the text the error points at.
    span: Option<std::ops::Range<usize>>,
}

impl KeyedError {
    /// The full key the error is about: the unknown key itself, or the key whose value is wrong.
    pub fn key(&self) -> Option<String> {
        match (&self.path, &self.unknown) {
            (Some(p), Some(u)) => Some(format!("{p}.{u}")),
            (None, Some(u)) => Some(u.clone()),
            (p, None) => p.clone(),
        }
    }

    /// `` `key`: message ``, or the message alone at the top level.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) if self.unknown.is_none() => format!("`{p}`: {}", self.message),
            Some(p) => format!("in `{p}`: {}", self.message),
            None => self.message.clone(),
        }
    }

    fn into_config_error(self, text: &str, origin: &str) -> ConfigError {
        let (line, column) = self
            .span
            .as_ref()
            .map(|s| line_col(text, s.start))
            .unwrap_or((0, 0));
        ConfigError::Parse {
            file: origin.to_string(),
            line,
            column,
            message: self.describe(),
        }
    }
}

/// Deserialise TOML text, keeping the path of the key an error is about.
pub fn deserialize_keyed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, KeyedError> {
    let keyed = |error: toml::de::Error, path: Option<String>| {
        let unknown = error
            .message()
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        // The path runs to the unknown key itself: keep its table.
        let path = match (&unknown, path) {
            (Some(u), Some(p)) if p == *u => None,
            (Some(u), Some(p)) => Some(p.strip_suffix(&format!(".{u}")).unwrap_or(&p).to_string()),
            (_, p) => p,
        };
        KeyedError {
            path,
            unknown,
            // A value of the wrong type may be a secret given in the wrong place: hide it first.
            message: in_words(&redact_secret_values(error.message().trim())),
            span: error.span(),
        }
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| keyed(e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        keyed(e.into_inner(), path)
    })
}

/// serde's "invalid type: string \"abc\", expected f64" as "expected a number, found string
/// \"abc\"": the expected value in words instead of a Rust type name.
fn in_words(message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    let Some((found, expected)) = rest.and_then(|r| r.rsplit_once(", expected ")) else {
        return message.to_string();
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string (in quotes)",
        "a sequence" => "a list ([...])",
        "a character" => "a single character",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    format!("expected {expected}, found {found}")
}

pub fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    ConfigError::Parse {
        file: origin.to_string(),
        line,
        column,
        message: redact_secret_values(e.message().trim()),
    }
}

/// serde names the value it could not use (`invalid type: string "nuki_live_...", expected struct
/// SecretRef`): where a secret reference was expected, that value is the secret itself, so the
/// message keeps only its type (the line and column still point at it).
fn redact_secret_values(message: &str) -> String {
    // Any value of the wrong type may be a secret given in the wrong place (`secrets = "..."`).
    let echoes_value = message.starts_with("invalid type") || message.starts_with("invalid value");
    if !(echoes_value || message.contains("SecretRef")) {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        out.push_str("(value hidden)");
        rest = match rest[start + 1..].rfind('"') {
            // The value may itself hold quotes: hide up to the last one.
            Some(end) => &rest[start + 1 + end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out.replace(
        "expected struct SecretRef",
        "expected a secret reference such as { env = \"NAME\" } or { file = \"/path\" }, never the secret itself",
    )
}

/// A database URL with a password in it (`postgres://user:pw@host/db`, or `?password=`).
pub fn url_has_password(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            u.password().is_some_and(|p| !p.is_empty())
                || u.query_pairs()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
        }
        // Not a URL the parser understands: look for the `user:pw@` shape by hand.
        Err(_) => url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(creds, _)| creds.contains(':')),
    }
}

/// Environment variables that belong to the process, not to the configuration overlay.
/// Only `LATCHKEY_<TABLE>__<KEY>` (and the top-level `LATCHKEY_INSTANCE`) are overrides, so a
/// secret variable such as `LATCHKEY_DEMO_NUKI_TOKEN` is never mistaken for one.
fn overlay_ignores(var: &str) -> bool {
    let rest = var.strip_prefix("LATCHKEY_").unwrap_or(var);
    !(rest.contains("__") || rest == "INSTANCE")
        || [
            "LATCHKEY_LOG",
            "LATCHKEY_TEST_",
            "LATCHKEY_CONFIG",
            "LATCHKEY_BENCH_",
        ]
        .iter()
        .any(|p| var.starts_with(p))
}

/// `LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD=0.3` sets `engine.mass_change_threshold`.
fn apply_env_overlay(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("LATCHKEY_") else {
            continue;
        };
        if overlay_ignores(var) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty key segment (use `__` between keys)".into(),
            });
        }
        // A value that reads as a TOML scalar (number, boolean) keeps its type; anything else is a string.
        let parsed: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut node = &mut *table;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                node.insert(key.clone(), parsed.clone());
                break;
            }
            let entry = node
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!("`{key}` is not a table"),
                    });
                }
            };
        }
    }
    Ok(())
}

/// An error in the configuration with the environment merged in: named by the variable that set the
/// key when one did; else the file's own error, at its own line.
fn overlay_error(input: &ConfigInput, origin: &str, merged: &str, e: KeyedError) -> ConfigError {
    let key = e.key();
    let var = input.env.keys().find(|var| {
        !overlay_ignores(var)
            && var.strip_prefix("LATCHKEY_").is_some_and(|rest| {
                key.as_deref()
                    == Some(
                        rest.split("__")
                            .collect::<Vec<_>>()
                            .join(".")
                            .to_ascii_lowercase(),
                    )
                    .as_deref()
            })
    });
    if let Some(var) = var {
        return ConfigError::Env {
            var: var.clone(),
            message: e.describe(),
        };
    }
    match parse_toml::<Config>(&input.text, origin) {
        Err(own) => own,
        Ok(_) => e.into_config_error(
            merged,
            &format!("{origin} (with LATCHKEY_ environment overrides)"),
        ),
    }
}

impl Config {
    pub fn load(input: &ConfigInput) -> Result<Self, ConfigError> {
        let origin = input.path.display().to_string();
        let mut table: toml::Table = input
            .text
            .parse()
            .map_err(|e: toml::de::Error| toml_error(&input.text, &origin, &e))?;
        let had_overlay = input
            .env
            .keys()
            .any(|k| k.starts_with("LATCHKEY_") && !overlay_ignores(k));
        apply_env_overlay(&mut table, &input.env)?;
        let mut config: Config = if had_overlay {
            let merged = toml::to_string(&table).map_err(|e| ConfigError::Invalid {
                file: origin.clone(),
                key: String::new(),
                message: e.to_string(),
            })?;
            match deserialize_keyed(&merged) {
                Ok(config) => config,
                Err(e) => return Err(overlay_error(input, &origin, &merged, e)),
            }
        } else {
            parse_toml(&input.text, &origin)?
        };
        config.origin = origin;
        config.base_dir = input
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        config.env = input.env.clone();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_audit()?;
        self.validate_console()?;
        self.validate_break_glass()?;
        if let Some(schedule) = self
            .telemetry
            .drill
            .as_ref()
            .and_then(|d| d.schedule.as_ref())
            && let Err(e) = schedule.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "telemetry.drill.schedule",
                format!("`{schedule}` is not a crontab line: {e}"),
            ));
        }
        if self.version != CONFIG_VERSION {
            return Err(self.invalid(
                "version",
                format!(
                    "version {} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        if self.store.url.is_none() == self.store.url_secret.is_none() {
            return Err(self.invalid("store", "set exactly one of `url` and `url_secret`"));
        }
        if self.store.replicas > 1
            && self
                .store
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("sqlite:"))
        {
            return Err(self.invalid(
                "store.replicas",
                format!(
                    "{} replicas on SQLite: several replicas need PostgreSQL (SQLite is one \
                     process's store, and replicas coordinate through leases in a shared database)",
                    self.store.replicas
                ),
            ));
        }
        if self.store.replicas == 0 {
            return Err(self.invalid("store.replicas", "must be at least 1"));
        }
        if self.engine.replica_lease_seconds < 2 {
            return Err(self.invalid(
                "engine.replica_lease_seconds",
                "must be at least 2 (a lease is renewed every third of it)",
            ));
        }
        if self.store.url.as_deref().is_some_and(url_has_password) {
            return Err(self.invalid(
                "store.url",
                "the URL contains a password; move the URL to `url_secret = { env = \"...\" }` \
                 (or `{ file = \"...\" }`) so it is not kept in clear",
            ));
        }
        if self
            .engine
            .default_timezone
            .parse::<chrono_tz::Tz>()
            .is_err()
        {
            return Err(self.invalid(
                "engine.default_timezone",
                format!("unknown time zone `{}`", self.engine.default_timezone),
            ));
        }
        if !(0.0..=1.0).contains(&self.engine.mass_change_threshold) {
            return Err(self.invalid("engine.mass_change_threshold", "must be between 0 and 1"));
        }
        // An objective of 1 leaves no error budget, so burn rates would divide by zero.
        let slas = std::iter::once((
            "sla".to_string(),
            self.sla.revoke_within_seconds,
            self.sla.objective,
        ))
        .chain(self.connectors.iter().map(|(n, c)| {
            (
                format!("connectors.{n}.sla"),
                c.sla.revoke_within_seconds.unwrap_or(1.0),
                c.sla.objective.unwrap_or(0.5),
            )
        }));
        for (key, within, objective) in slas {
            if !(within > 0.0 && objective > 0.0 && objective < 1.0) {
                return Err(self.invalid(
                    &key,
                    "revoke_within_seconds must be positive and objective between 0 and 1 (exclusive)",
                ));
            }
        }
        for (name, c) in &self.connectors {
            if c.kind == ConnectorKind::Http && c.profile.as_os_str().is_empty() {
                return Err(self.invalid(
                    &format!("connectors.{name}.profile"),
                    "an HTTP connector needs a profile (or set `kind = \"manual\"`)",
                ));
            }
            let due = c.manual.return_due_hours;
            if !due.is_finite() || due <= 0.0 {
                return Err(self.invalid(
                    &format!("connectors.{name}.manual.return_due_hours"),
                    "must be positive",
                ));
            }
        }
        if !self.reconcile.schedule.trim().is_empty()
            && let Err(e) = self.reconcile.schedule.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "reconcile.schedule",
                format!("`{}` is not a crontab line: {e}", self.reconcile.schedule),
            ));
        }
        if let Some(s) = &self.drift.schedule
            && !s.trim().is_empty()
            && let Err(e) = s.parse::<croner::Cron>()
        {
            return Err(self.invalid(
                "drift.schedule",
                format!("`{s}` is not a crontab line: {e}"),
            ));
        }
        for (name, site) in &self.sites {
            if site.timezone.parse::<chrono_tz::Tz>().is_err() {
                return Err(self.invalid(
                    &format!("sites.{name}.timezone"),
                    format!("unknown time zone `{}`", site.timezone),
                ));
            }
        }
        for (name, hr) in &self.sources.hr {
            if hr.path.is_none() == hr.drop_dir.is_none() {
                return Err(self.invalid(
                    &format!("sources.hr.{name}"),
                    "set exactly one of `path` and `drop_dir`",
                ));
            }
            if let Err(e) = hr.schedule.parse::<croner::Cron>() {
                return Err(self.invalid(
                    &format!("sources.hr.{name}.schedule"),
                    format!("`{}` is not a crontab line: {e}", hr.schedule),
                ));
            }
            let grace = hr.absent_grace;
            if grace.feeds == 0 || !grace.hours.is_finite() || grace.hours < 0.0 {
                return Err(self.invalid(
                    &format!("sources.hr.{name}.absent_grace"),
                    "feeds must be at least 1 and hours zero or more",
                ));
            }
        }
        let known_sources: Vec<String> = (self.sources.hr.keys().cloned())
            .chain(self.sources.ldap.keys().cloned())
            .chain(self.scim.tenants.keys().map(|t| format!("scim:{t}")))
            .collect();
        for (attr, sources) in &self.authority.attributes {
            let key = format!("authority.attributes.{attr}");
            if sources.is_empty() {
                return Err(self.invalid(&key, "list at least one source that may set it"));
            }
            if let Some(unknown) = sources.iter().find(|s| !known_sources.contains(s)) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "`{unknown}` is not a configured source (known: {})",
                        known_sources.join(", ")
                    ),
                ));
            }
        }
        let mut hashes = BTreeMap::new();
        for (name, o) in &self.operators {
            let key = format!("operators.{name}.token_sha256");
            let h = o.token_sha256.to_ascii_lowercase();
            if h.len() != 64 || hex::decode(&h).is_err() {
                return Err(self.invalid(
                    &key,
                    "must be 64 hex digits (the SHA-256 of the token; `latchkey operators token` prints it)",
                ));
            }
            if let Some(other) = hashes.insert(h, name) {
                return Err(self.invalid(
                    &key,
                    format!("the same token as operators.{other}: give each operator its own"),
                ));
            }
        }
        for (name, t) in &self.scim.tenants {
            let key = format!("scim.tenants.{name}");
            match (&t.token_sha256, &t.token) {
                (Some(h), None) => {
                    if h.len() != 64 || hex::decode(h).is_err() {
                        return Err(self.invalid(
                            &format!("{key}.token_sha256"),
                            "must be 64 hex digits (the SHA-256 of the token)",
                        ));
                    }
                }
                // Resolved when the server starts (like every other secret), so a configuration
                // can be checked where the secret is not present.
                (None, Some(_)) => {}
                _ => {
                    return Err(self.invalid(&key, "set exactly one of `token_sha256` and `token`"));
                }
            }
            if let Some(rl) = t.rate_limit
                && (rl.per_second == 0 || rl.burst == 0)
            {
                return Err(self.invalid(
                    &format!("{key}.rate_limit"),
                    "per_second and burst must be at least 1",
                ));
            }
        }
        ScimConfig::check_extensions(&self.scim.extensions, "scim.extensions")
            .map_err(|(k, m)| self.invalid(&k, m))?;
        for (name, t) in &self.scim.tenants {
            ScimConfig::check_extensions(&t.extensions, &format!("scim.tenants.{name}.extensions"))
                .map_err(|(k, m)| self.invalid(&k, m))?;
        }
        if self.scim.max_body_bytes == 0 || self.scim.request_timeout_seconds == 0 {
            return Err(self.invalid(
                "scim",
                "max_body_bytes and request_timeout_seconds must be at least 1",
            ));
        }
        for (name, l) in &self.sources.ldap {
            let key = format!("sources.ldap.{name}");
            if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                return Err(self.invalid(&key, "url must start with ldap:// or ldaps://"));
            }
            if l.starttls && l.url.starts_with("ldaps://") {
                return Err(self.invalid(&key, "starttls needs an ldap:// url, not ldaps://"));
            }
            if l.bind_dn.is_some() != l.bind_password.is_some() {
                return Err(self.invalid(
                    &key,
                    "set both `bind_dn` and `bind_password`, or neither (anonymous)",
                ));
            }
            if l.page_size < 1 || l.poll_seconds == 0 || l.timeout_seconds == 0 {
                return Err(self.invalid(
                    &key,
                    "page_size, poll_seconds and timeout_seconds must be at least 1",
                ));
            }
            if l.mass_change_threshold
                .is_some_and(|t| !(0.0..=1.0).contains(&t))
            {
                return Err(self.invalid(&key, "mass_change_threshold must be between 0 and 1"));
            }
        }
        for (name, c) in &self.connectors {
            if let Some(rl) = c.rate_limit
                && (rl.per_second == 0 || rl.burst == 0)
            {
                return Err(self.invalid(
                    &format!("connectors.{name}.rate_limit"),
                    "per_second and burst must be at least 1",
                ));
            }
            if c.concurrency == 0 {
                return Err(self.invalid(
                    &format!("connectors.{name}.concurrency"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// A path from the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn store_url(&self) -> Result<String, ConfigError> {
        match (&self.store.url, &self.store.url_secret) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(secret)) => self.secret("store.url_secret", secret),
            (None, None) => Err(self.invalid("store", "no database url")),
        }
    }

    pub fn timezone_of(&self, site: Option<&str>) -> chrono_tz::Tz {
        site.and_then(|s| self.sites.get(s))
            .and_then(|s| s.timezone.parse().ok())
            .or_else(|| self.engine.default_timezone.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }

    /// Each SCIM tenant's token as a SHA-256: the configured hash, or the referenced secret hashed.
    /// The token itself is not kept.
    pub fn scim_token_sha256(&self, tenant: &str) -> Result<[u8; 32], ConfigError> {
        use sha2::Digest;
        let key = format!("scim.tenants.{tenant}");
        let t = self
            .scim
            .tenants
            .get(tenant)
            .ok_or_else(|| self.invalid(&key, "no such SCIM tenant"))?;
        let hash: Vec<u8> = match (&t.token_sha256, &t.token) {
            (Some(h), None) => hex::decode(h).unwrap_or_default(),
            (None, Some(secret)) => {
                sha2::Sha256::digest(self.secret(&format!("{key}.token"), secret)?.as_bytes())
                    .to_vec()
            }
            _ => vec![],
        };
        <[u8; 32]>::try_from(hash)
            .map_err(|_| self.invalid(&key, "set exactly one of `token_sha256` and `token`"))
    }

    pub fn secret(&self, name: &str, secret: &SecretRef) -> Result<String, ConfigError> {
        resolve_secret(name, secret, &self.env)
    }
}

/// Read a secret's value. `{ env = "X" }` takes `$X`, or else the file named by `$X_FILE`.
pub fn resolve_secret(
    name: &str,
    secret: &SecretRef,
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Secret {
        name: name.to_string(),
        message,
    };
    let read_file = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))
    };
    match (&secret.env, &secret.file) {
        (Some(var), None) => {
            if let Some(v) = env.get(var) {
                return Ok(v.clone());
            }
            if let Some(path) = env.get(&format!("{var}_FILE")) {
                return read_file(Path::new(path));
            }
            Err(err(format!("set ${var} or ${var}_FILE")))
        }
        (None, Some(path)) => read_file(path),
        _ => Err(err("give exactly one of `env` and `file`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str, env: &[(&str, &str)]) -> ConfigInput {
        ConfigInput {
            text: text.to_string(),
            path: PathBuf::from("conf/test.toml"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const MINIMAL: &str = r#"
version = 1
[store]
url = "sqlite://x.db"
[policy]
templates = "t.toml"
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = Config::load(&input(MINIMAL, &[])).unwrap();
        assert_eq!(c.engine.mass_change_threshold, 0.2);
        assert_eq!(c.resolve(Path::new("t.toml")), PathBuf::from("conf/t.toml"));
    }

    #[test]
    fn attribute_authority_names_configured_sources_only() {
        let text = format!(
            "{MINIMAL}\n[scim.tenants.okta]\ntoken_sha256 = \"{}\"\n\
             [authority.attributes]\ndepartment = [\"scim:okta\"]\n",
            "0".repeat(64)
        );
        let c = Config::load(&input(&text, &[])).unwrap();
        assert_eq!(c.authority.attributes["department"], ["scim:okta"]);
        let err = Config::load(&input(&text.replace("scim:okta\"]", "scim:otka\"]"), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("authority.attributes.department"), "{err}");
        assert!(
            err.contains("`scim:otka` is not a configured source"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MINIMAL}\n[engine]\nmass_change_treshold = 0.5\n");
        let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
        assert!(err.starts_with("conf/test.toml:9:"), "{err}");
        assert!(err.contains("mass_change_treshold"), "{err}");
    }

    #[test]
    fn environment_overlays_typed_values() {
        let c = Config::load(&input(
            MINIMAL,
            &[
                ("LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD", "0.35"),
                ("LATCHKEY_LOG", "debug"),
            ],
        ))
        .unwrap();
        assert_eq!(c.engine.mass_change_threshold, 0.35);
    }

    #[test]
    fn environment_cannot_add_unknown_keys() {
        let err = Config::load(&input(MINIMAL, &[("LATCHKEY_ENGINE__NOPE", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(
            err.to_string()
                .starts_with("environment variable LATCHKEY_ENGINE__NOPE: "),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_the_value_expected_in_words() {
        let text = format!("{MINIMAL}\n[engine]\nlease_seconds = 1.5\n");
        let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
        assert!(
            err.contains("`engine.lease_seconds`: expected a whole number (0 or more), found floating point `1.5`"),
            "{err}"
        );
        assert!(!err.contains("u64"), "{err}");
        // Set from the environment: the variable is named, not a line of a merged file.
        let err = Config::load(&input(
            MINIMAL,
            &[("LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD", "high")],
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "environment variable LATCHKEY_ENGINE__MASS_CHANGE_THRESHOLD: \
             `engine.mass_change_threshold`: expected a number, found string (value hidden)"
        );
        // The file's own mistake, with an unrelated override set, is reported at the file's line.
        let err = Config::load(&input(&text, &[("LATCHKEY_ENGINE__TICK_MILLIS", "50")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("environment"), "{err}");
        assert!(err.contains("lease_seconds"), "{err}");
    }

    #[test]
    fn a_missing_file_says_so_once() {
        let err = ConfigInput::from_file(Path::new("/nonexistent/latchkey.toml"), BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/nonexistent/latchkey.toml: cannot read: No such file or directory"
        );
    }

    #[test]
    fn scim_extensions_are_checked_when_loaded() {
        let ok = format!(
            "{MINIMAL}\n[scim.extensions.\"urn:acme:2.0:User\"]\n\
             attributes = [{{ name = \"badge\", type = \"integer\", maps_to = \"badge\" }},\
             {{ name = \"office\", type = \"complex\", sub_attributes = [{{ name = \"room\" }}] }}]\n\
             [scim.tenants.e]\ntoken_sha256 = \"{}\"\nprovider = \"entra\"\nmay_terminate = true\n\
             unknown_attributes = \"keep\"\nauthoritative_keys = [\"C*\"]\n",
            "ab".repeat(32)
        );
        let c = Config::load(&input(&ok, &[])).unwrap();
        assert_eq!(c.scim.extensions["urn:acme:2.0:User"].attributes.len(), 2);
        assert_eq!(c.scim.tenants["e"].provider, ScimProvider::Entra);
        for bad in [
            "[scim.extensions.\"not-a-urn\"]\nattributes = []\n",
            "[scim.extensions.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\"]\nattributes = []\n",
            "[scim.extensions.\"urn:a:b\"]\nattributes = [{ name = \"x\", type = \"complex\" }]\n",
            "[scim.extensions.\"urn:a:b\"]\nattributes = [{ name = \"x\", type = \"float\" }]\n",
            "[scim.extensions.\"urn:a:b\"]\nresource = \"Device\"\nattributes = []\n",
        ] {
            let err = Config::load(&input(&format!("{MINIMAL}\n{bad}"), &[])).unwrap_err();
            assert!(err.to_string().contains("scim.extensions"), "{bad}: {err}");
        }
    }

    #[test]
    fn operators_need_a_sha256_of_their_own_and_a_known_role() {
        let h = "ab".repeat(32);
        let ok = format!("{MINIMAL}\n[operators.ci]\nrole = \"viewer\"\ntoken_sha256 = \"{h}\"\n");
        let c = Config::load(&input(&ok, &[])).unwrap();
        assert_eq!(c.operators["ci"].role, crate::operators::Role::Viewer);
        let short = ok.replace(&h, "abc");
        let err = Config::load(&input(&short, &[])).unwrap_err().to_string();
        assert!(
            err.contains("operators.ci.token_sha256") && err.contains("64 hex"),
            "{err}"
        );
        let twice = format!("{ok}\n[operators.other]\nrole = \"admin\"\ntoken_sha256 = \"{h}\"\n");
        let err = Config::load(&input(&twice, &[])).unwrap_err().to_string();
        assert!(err.contains("same token as operators.ci"), "{err}");
        let bad_role = ok.replace("\"viewer\"", "\"root\"");
        let err = Config::load(&input(&bad_role, &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("operators.ci.role"), "{err}");
    }

    #[test]
    fn scim_tenants_need_exactly_one_hashed_or_referenced_token() {
        let hash = "ab".repeat(32);
        let ok = format!("{MINIMAL}\n[scim.tenants.okta]\ntoken_sha256 = \"{hash}\"\n");
        let c = Config::load(&input(&ok, &[])).unwrap();
        assert_eq!(c.scim_token_sha256("okta").unwrap(), [0xab; 32]);
        let env = format!("{MINIMAL}\n[scim.tenants.e]\ntoken = {{ env = \"SCIM_T\" }}\n");
        let c = Config::load(&input(&env, &[("SCIM_T", "abc")])).unwrap();
        use sha2::Digest;
        assert_eq!(
            c.scim_token_sha256("e").unwrap().to_vec(),
            sha2::Sha256::digest(b"abc").to_vec()
        );
        let c = Config::load(&input(&env, &[])).unwrap();
        assert!(
            c.scim_token_sha256("e")
                .unwrap_err()
                .to_string()
                .contains("SCIM_T")
        );
        for bad in [
            format!("{MINIMAL}\n[scim.tenants.x]\ntoken_sha256 = \"abc\"\n"),
            format!("{MINIMAL}\n[scim.tenants.x]\n"),
            format!("{MINIMAL}\n[scim.tenants.x]\ntoken = \"in-clear\"\n"),
        ] {
            assert!(Config::load(&input(&bad, &[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_urls_with_a_password_are_refused_without_repeating_it() {
        for ok in [
            "sqlite://x.db",
            "sqlite:///var/lib/latchkey/state.db?mode=rwc",
            "postgres://latchkey@db:5432/latchkey?sslmode=require",
        ] {
            assert!(!url_has_password(ok), "{ok}");
        }
        for bad in [
            "postgres://latchkey:s3cr3t@db/latchkey",
            "postgres://db/latchkey?user=l&password=s3cr3t",
            "weird://u:s3cr3t@[bad",
        ] {
            assert!(url_has_password(bad), "{bad}");
            let text = MINIMAL.replace("sqlite://x.db", bad);
            let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
            assert!(
                err.contains("url_secret") && !err.contains("s3cr3t"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_secret_given_in_clear_is_never_repeated_in_the_error() {
        let text = format!("{MINIMAL}\n[scim.tenants.okta]\ntoken = \"tok_live_XYZ\"\n");
        let err = Config::load(&input(&text, &[])).unwrap_err().to_string();
        assert!(!err.contains("tok_live_XYZ"), "{err}");
        assert!(err.contains("secret reference"), "{err}");
        let err = Config::load(&input(
            MINIMAL,
            &[("LATCHKEY_SCIM__TENANTS__OKTA__TOKEN", "tok_live_XYZ")],
        ))
        .unwrap_err()
        .to_string();
        assert!(!err.contains("tok_live_XYZ"), "{err}");
    }

    #[test]
    fn secrets_come_from_env_or_file_never_the_file_text() {
        let text = MINIMAL.replace(
            "[policy]",
            "[connectors.nuki]\nprofile = \"n.toml\"\ntoken = \"abc\"\n[policy]",
        );
        assert!(
            Config::load(&input(&text, &[])).is_err(),
            "a clear-text secret key must be refused"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "s3cret\n").unwrap();
        let env: BTreeMap<String, String> =
            [("NUKI_TOKEN_FILE".to_string(), f.display().to_string())].into();
        let r = SecretRef {
            env: Some("NUKI_TOKEN".into()),
            file: None,
        };
        assert_eq!(resolve_secret("t", &r, &env).unwrap(), "s3cret");
        let missing = resolve_secret("t", &r, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(missing.contains("NUKI_TOKEN_FILE"), "{missing}");
    }
}
