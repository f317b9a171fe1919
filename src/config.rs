//! Daemon configuration: strict, versioned TOML with a `LATCHKEY_` environment overlay.
//!
//! Unknown keys are errors, and every error names the file, the line and the key. Secrets never sit in
//! the file in clear: a secret is a reference to an environment variable (or `NAME_FILE`, a file that
//! holds it). Loading goes through [`ConfigInput`], a seam that tests feed directly instead of the
//! process environment.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_timezone: default_tz(),
            mass_change_threshold: default_mass_share(),
            lease_seconds: default_lease(),
            tick_millis: default_tick(),
        }
    }
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
}

fn default_schedule() -> String {
    "*/15 * * * *".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Entitlement templates (see `mappings/templates.toml`).
    pub templates: PathBuf,
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
    /// Commands in flight at once on this connector's lane.
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
    /// Standard 5-field crontab line; no scheduled check when absent (`latchkey drift` still runs one).
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
            schedule: None,
            tolerance_seconds: default_drift_tolerance(),
            revoke_orphans: false,
        }
    }
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
}

impl Default for ScimConfig {
    fn default() -> Self {
        Self {
            correlate_by: CorrelateBy::default(),
            max_body_bytes: default_scim_body(),
            request_timeout_seconds: default_scim_timeout(),
            base_url: None,
            tenants: BTreeMap::new(),
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
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Parse TOML text into `T`, turning toml's error into one that names file, line and column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(text, origin, &e))
}

pub fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    ConfigError::Parse {
        file: origin.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
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
            // Spans are lost once the environment is merged in: re-serialise so the error still has a line.
            let merged = toml::to_string(&table).map_err(|e| ConfigError::Invalid {
                file: origin.clone(),
                key: String::new(),
                message: e.to_string(),
            })?;
            parse_toml(
                &merged,
                &format!("{origin} (with LATCHKEY_ environment overrides)"),
            )?
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
        if let Some(s) = &self.drift.schedule
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
