//! Prometheus metrics: what the dispatcher and the connectors observe as it happens (latency,
//! outcomes, retries, rate-limit waits, SLA breaches), plus what only the store knows, read at scrape
//! time (outbox depth and age per lane, dead letters, quarantine, held changes, source runs).
//!
//! Every label value is bounded: connector and source names come from the configuration, stages,
//! actions, causes and outcomes are fixed sets. Person keys and targets never become labels; a
//! person only shows up inside an exemplar's trace id, which is the change's random trace id: a
//! change that was not traced has no exemplar.

use crate::config::{Config, SlaConfig};
use crate::model::{Action, CommandStatus};
use crate::store::reports::{self, PerSource};
use crate::store::{CommandRow, Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

mod collect;
mod register;
mod text;

pub use text::{expected_intervals, longest_gap, to_prometheus_text};

/// Content type of the OpenMetrics exposition (with exemplars).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text exposition (no exemplars), for clients that do not
/// ask for OpenMetrics (`curl`, `promtool check metrics`).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// 50 ms to 1 h. 60 s (the default SLA) is a boundary, so the histogram alone can tell how many
/// revocations met it.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Lanes of a connector's outbox: revocations go first (invariant 3), so each has its own depth.
pub const LANES: [&str; 2] = ["revoke", "issue"];

/// Every metric name latchkey exports (without the `_total`, `_bucket`, `_sum`, `_count` suffixes),
/// so dashboards and rules can be checked against it.
pub const METRIC_NAMES: &[&str] = &[
    "latchkey_revocation_latency_seconds",
    "latchkey_issue_latency_seconds",
    "latchkey_commands",
    "latchkey_command_retries",
    "latchkey_rate_limit_waits",
    "latchkey_rate_limit_wait_seconds",
    "latchkey_circuit_breaker_open",
    "latchkey_outbox_depth",
    "latchkey_outbox_oldest_age_seconds",
    "latchkey_dead_letters",
    "latchkey_quarantined_records",
    "latchkey_held_changes",
    "latchkey_key_return_tasks",
    "latchkey_leaver_keys_held",
    "latchkey_drift_findings",
    "latchkey_sla_revocations",
    "latchkey_sla_breaches",
    "latchkey_sla_target_seconds",
    "latchkey_sla_objective_ratio",
    "latchkey_source_last_success_timestamp_seconds",
    "latchkey_source_expected_interval_seconds",
    "latchkey_source_connected",
    "latchkey_held_changes_oldest_age_seconds",
    "latchkey_drill_runs",
    "latchkey_drill_stage_seconds",
    "latchkey_drill_last_success_timestamp_seconds",
    "latchkey_build_info",
    "latchkey_revocations_stuck",
    "latchkey_revoke_failures",
    "latchkey_dispatcher_worker_restarts",
    "latchkey_rejected_files",
    "latchkey_leases_held",
    "latchkey_leases_configured",
    "latchkey_policy_reload_refused",
    "latchkey_break_glass_open",
    "latchkey_break_glass_unreviewed",
    "latchkey_break_glass_review_overdue",
    "latchkey_access_reviews_open",
    "latchkey_access_review_items_pending",
    "latchkey_access_review_items_overdue",
    "latchkey_audit_forward_lag_records",
    "latchkey_audit_forward_failures",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    connector: String,
    /// joiner | mover | leaver | rehire | expiry | approval | reconcile | schedule ...: the kind of
    /// change, a fixed set.
    cause: String,
    /// The configured source that reported the change (`hr`, `scim:okta`, `ldap-corp`), or
    /// `schedule` / `approval`: bounded by the configuration.
    source: String,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    connector: String,
    action: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    connector: String,
    action: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    connector: String,
    /// rate_limited | transient | auth | permanent: a fixed set.
    class: &'static str,
}

/// A SIEM forwarding sink, named in `[audit.forward.NAME]`: bounded by the configuration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    connector: String,
    lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseKindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    connector: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillLabels {
    connector: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillStageLabels {
    connector: String,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Latency = Family<LatencyLabels, HistogramWithExemplars<TraceLabel>>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// How a finished command ended, as the dispatcher recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Done,
    Dead,
    Superseded,
}

impl Finished {
    /// How a command in this status ended; none while it is still open.
    pub fn of(status: CommandStatus) -> Option<Self> {
        match status {
            CommandStatus::Done => Some(Self::Done),
            CommandStatus::Dead => Some(Self::Dead),
            CommandStatus::Superseded => Some(Self::Superseded),
            _ => None,
        }
    }

    fn status(self) -> CommandStatus {
        match self {
            Self::Done => CommandStatus::Done,
            Self::Dead => CommandStatus::Dead,
            Self::Superseded => CommandStatus::Superseded,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.status().as_str()
    }
}

/// Why a command goes round again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// 5xx, timeouts, connection errors.
    Transient,
    /// The vendor said slow down (429, or its own cooldown).
    RateLimited,
    /// An asynchronous vendor did not show the change before the deadline: issued again.
    Reissued,
}

impl Retry {
    fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Reissued => "confirm_deadline",
        }
    }
}

/// The SLA that applies to a connector: the default `[sla]` with the connector's overrides.
pub fn sla_of(config: &Config, connector: &str) -> SlaConfig {
    let mut sla = config.sla;
    // Mechanical keys are revoked when the key is checked back in: their target is the return
    // window, not a vendor API's seconds.
    if let Some(c) = config.connectors.get(connector)
        && c.kind == crate::config::ConnectorKind::Manual
    {
        sla.revoke_within_seconds = c.manual.return_due_hours * 3600.0;
    }
    if let Some(o) = config.connectors.get(connector).map(|c| c.sla) {
        sla.revoke_within_seconds = o.revoke_within_seconds.unwrap_or(sla.revoke_within_seconds);
        sla.objective = o.objective.unwrap_or(sla.objective);
        sla.window_days = o.window_days.unwrap_or(sla.window_days);
    }
    sla
}

/// One trace per identity change: every command a change caused shares the person, the moment it
/// was detected and the kind of change, so they share this id. A hash, so the exemplar does not
/// carry the person's key.
pub fn trace_id(c: &CommandRow) -> String {
    let mut h = Sha256::new();
    for part in [
        "latchkey-trace",
        c.identity_key.as_str(),
        &c.detected_at.to_string(),
        c.cause.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connector -> SLA, fixed at start-up.
    slas: BTreeMap<String, SlaConfig>,
    connectors: Vec<String>,
    revocation_latency: Latency,
    issue_latency: Latency,
    commands: Family<CommandLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    rate_limit_waits: Family<ConnectorLabel, Counter>,
    rate_limit_wait_seconds: Family<ConnectorLabel, FloatCounter>,
    breaker_open: Family<ConnectorLabel, Gauge>,
    outbox_depth: Family<LaneLabels, Gauge>,
    outbox_oldest_age: Family<LaneLabels, FloatGauge>,
    dead_letters: Family<LaneLabels, Gauge>,
    quarantined: Family<SourceLabel, Gauge>,
    held: Family<SourceLabel, Gauge>,
    rejected_files: Family<SourceLabel, Gauge>,
    key_returns: Family<StateLabel, Gauge>,
    leaver_keys_held: Family<ConnectorLabel, Gauge>,
    drift_findings: Family<DriftLabels, Gauge>,
    sla_revocations: Family<ConnectorLabel, Counter>,
    sla_breaches: Family<ConnectorLabel, Counter>,
    sla_target: Family<ConnectorLabel, FloatGauge>,
    sla_objective: Family<ConnectorLabel, FloatGauge>,
    source_success: Family<SourceLabel, FloatGauge>,
    source_expected: Family<SourceLabel, FloatGauge>,
    source_connected: Family<SourceLabel, Gauge>,
    held_oldest_age: Family<SourceLabel, FloatGauge>,
    drill_runs: Family<DrillLabels, Counter>,
    drill_stage: Family<DrillStageLabels, FloatGauge>,
    drill_success: Family<ConnectorLabel, FloatGauge>,
    revocations_stuck: Family<ConnectorLabel, Gauge>,
    revoke_failures: Family<FailureLabels, Counter>,
    worker_restarts: Family<ConnectorLabel, Counter>,
    leases_held: Family<LeaseKindLabel, Gauge>,
    leases_configured: Family<LeaseKindLabel, Gauge>,
    policy_refused: Gauge,
    break_glass_open: Gauge,
    break_glass_unreviewed: Gauge,
    break_glass_overdue: Gauge,
    reviews_open: Gauge,
    review_pending: Gauge,
    review_overdue: Gauge,
    audit_forward_lag: Family<SinkLabel, Gauge>,
    audit_forward_failures: Family<SinkLabel, Counter>,
}

fn latency_family() -> Latency {
    Family::new_with_constructor(|| HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter()))
}

impl Metrics {
    /// A command reached a final state. `cmd` is the row as it was finished (confirmation time set).
    pub fn command_finished(&self, cmd: &CommandRow, outcome: Finished) {
        let action = cmd.action.as_str();
        self.commands
            .get_or_create(&CommandLabels {
                connector: cmd.connector.clone(),
                action,
                outcome: outcome.as_str(),
            })
            .inc();
        let latency = match cmd.action {
            Action::Revoke => &self.revocation_latency,
            Action::Issue => &self.issue_latency,
        };
        let stages = if outcome == Finished::Done {
            super::stages(cmd)
        } else {
            None
        };
        if let Some(stages) = stages {
            // Only a change that was really traced gets an exemplar: an id no trace backend holds
            // would link to nothing.
            let trace = cmd
                .traceparent
                .as_deref()
                .and_then(super::tracing::trace_id_of);
            for (stage, v) in super::STAGES.iter().zip(stages) {
                latency
                    .get_or_create(&LatencyLabels {
                        connector: cmd.connector.clone(),
                        cause: cmd.cause.clone(),
                        source: cmd.source.clone(),
                        stage,
                    })
                    .observe(
                        v,
                        trace.clone().map(|trace_id| TraceLabel { trace_id }),
                        None,
                    );
            }
        }
        if cmd.action == Action::Revoke && outcome != Finished::Superseded {
            let l = ConnectorLabel {
                connector: cmd.connector.clone(),
            };
            self.sla_revocations.get_or_create(&l).inc();
            let target = self
                .slas
                .get(&cmd.connector)
                .map_or(f64::INFINITY, |s| s.revoke_within_seconds);
            let breached = stages.is_none_or(|s| s[4] > target);
            if breached {
                self.sla_breaches.get_or_create(&l).inc();
            }
        }
    }

    /// A command goes round again.
    pub fn command_retried(&self, cmd: &CommandRow, reason: Retry) {
        self.retries
            .get_or_create(&RetryLabels {
                connector: cmd.connector.clone(),
                action: cmd.action.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The connector's circuit breaker opened (or half-opened: calls still held back) or closed.
    /// Leases of one kind (source, job, lane) this replica holds now.
    pub fn set_leases_held(&self, kind: &str, n: usize) {
        self.leases_held
            .get_or_create(&LeaseKindLabel {
                kind: kind.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Audit records a forwarding sink is behind the head.
    pub fn set_audit_forward_lag(&self, sink: &str, records: i64) {
        self.audit_forward_lag
            .get_or_create(&SinkLabel {
                sink: sink.to_string(),
            })
            .set(records.max(0));
    }

    /// A send to a forwarding sink failed.
    pub fn audit_forward_failed(&self, sink: &str) {
        self.audit_forward_failures
            .get_or_create(&SinkLabel {
                sink: sink.to_string(),
            })
            .inc();
    }

    /// Whether the templates file on disk was refused (the policy in force is the last good one).
    pub fn set_policy_refused(&self, refused: bool) {
        self.policy_refused.set(i64::from(refused));
    }

    /// Leases of one kind the configuration defines (every replica exports the same figure).
    pub fn set_leases_configured(&self, kind: &str, n: usize) {
        self.leases_configured
            .get_or_create(&LeaseKindLabel {
                kind: kind.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_breaker_open(&self, connector: &str, open: bool) {
        self.breaker_open
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .set(i64::from(open));
    }

    /// A revocation attempt failed with this class of error.
    pub fn revoke_failed(&self, connector: &str, class: &'static str) {
        self.revoke_failures
            .get_or_create(&FailureLabels {
                connector: connector.to_string(),
                class,
            })
            .inc();
    }

    /// A dispatcher worker of this lane panicked and was restarted.
    pub fn worker_restarted(&self, connector: &str) {
        self.worker_restarts
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .inc();
    }

    /// Mechanical key return tasks still open, and how many of them are past their due time.
    pub fn set_key_returns(&self, open: i64, overdue: i64) {
        self.key_returns
            .get_or_create(&StateLabel { state: "open" })
            .set(open);
        self.key_returns
            .get_or_create(&StateLabel { state: "overdue" })
            .set(overdue);
    }

    /// Cabinet keys a leaver still holds, at the cabinet's last event poll.
    pub fn set_leaver_keys_held(&self, connector: &str, n: i64) {
        self.leaver_keys_held
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .set(n);
    }

    /// Findings of the connector's last drift check.
    pub fn set_drift_findings(&self, connector: &str, orphans: i64, missing: i64) {
        for (kind, n) in [("orphan", orphans), ("missing", missing)] {
            self.drift_findings
                .get_or_create(&DriftLabels {
                    connector: connector.to_string(),
                    kind,
                })
                .set(n);
        }
    }

    /// Counters a connector increments itself whenever a call waits for its rate budget.
    pub fn rate_limit_handles(&self, connector: &str) -> (Counter, FloatCounter) {
        let l = ConnectorLabel {
            connector: connector.to_string(),
        };
        (
            self.rate_limit_waits.get_or_create_owned(&l),
            self.rate_limit_wait_seconds.get_or_create_owned(&l),
        )
    }

    /// A source ran to the end without error (`at`: Unix seconds, from the engine's clock).
    pub fn source_succeeded(&self, source: &str, at: f64) {
        self.source_success
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(at);
    }

    /// A source following its directory over a persistent search connected (or lost it).
    pub fn source_connection(&self, source: &str, connected: bool) {
        self.source_connected
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(i64::from(connected));
    }

    /// A revocation drill ended. `stages`: (stage, seconds) for every stage that completed.
    pub fn drill_finished(
        &self,
        connector: &str,
        ok: bool,
        stages: &[(&'static str, f64)],
        at: f64,
    ) {
        self.drill_runs
            .get_or_create(&DrillLabels {
                connector: connector.to_string(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
        for (stage, v) in stages {
            self.drill_stage
                .get_or_create(&DrillStageLabels {
                    connector: connector.to_string(),
                    stage,
                })
                .set(*v);
        }
        if ok {
            self.drill_success
                .get_or_create(&ConnectorLabel {
                    connector: connector.to_string(),
                })
                .set(at);
        }
    }

    /// The OpenMetrics exposition, with exemplars.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; an empty scrape is the safe answer if it ever did.
            out.clear();
        }
        out
    }

    /// The classic Prometheus text exposition: the same samples without exemplars, units or EOF.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }
}
