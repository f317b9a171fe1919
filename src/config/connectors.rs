//! Connectors' settings (profile, rate limit, breaker, the manual connector) and the scheduled checks on them: drift, reconciliation, SLA, telemetry, drills.

use super::*;
use crate::model::PersonKey;

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
    pub person: PersonKey,
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
