//! Prometheus metrics: what the dispatcher and the connectors observe as it happens (latency,
//! outcomes, retries, rate-limit waits, SLA breaches), plus what only the store knows, read at scrape
//! time (outbox depth and age per lane, dead letters, quarantine, held changes, source runs).
//!
//! Every label value is bounded: connector and source names come from the configuration, stages,
//! actions, causes and outcomes are fixed sets. Person keys and targets never become labels; a
//! person only shows up inside an exemplar's trace id, which is the change's random trace id: a
//! change that was not traced has no exemplar.

use crate::config::{Config, SlaConfig};
use crate::model::Action;
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
    pub fn parse(status: &str) -> Option<Self> {
        match status {
            "done" => Some(Self::Done),
            "dead" => Some(Self::Dead),
            "superseded" => Some(Self::Superseded),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
        }
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
    pub fn new(config: &Config) -> Self {
        // The root holds the standard unprefixed `process_*` metrics; latchkey's own are below it.
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("latchkey");
        let m = Self {
            registry: Registry::default(),
            slas: config
                .connectors
                .keys()
                .map(|n| (n.clone(), sla_of(config, n)))
                .collect(),
            connectors: config.connectors.keys().cloned().collect(),
            revocation_latency: latency_family(),
            issue_latency: latency_family(),
            commands: Family::default(),
            retries: Family::default(),
            rate_limit_waits: Family::default(),
            rate_limit_wait_seconds: Family::default(),
            breaker_open: Family::default(),
            outbox_depth: Family::default(),
            outbox_oldest_age: Family::default(),
            dead_letters: Family::default(),
            quarantined: Family::default(),
            held: Family::default(),
            rejected_files: Family::default(),
            key_returns: Family::default(),
            leaver_keys_held: Family::default(),
            drift_findings: Family::default(),
            sla_revocations: Family::default(),
            sla_breaches: Family::default(),
            sla_target: Family::default(),
            sla_objective: Family::default(),
            source_success: Family::default(),
            source_expected: Family::default(),
            source_connected: Family::default(),
            held_oldest_age: Family::default(),
            drill_runs: Family::default(),
            drill_stage: Family::default(),
            drill_success: Family::default(),
            revocations_stuck: Family::default(),
            revoke_failures: Family::default(),
            worker_restarts: Family::default(),
            leases_held: Family::default(),
            leases_configured: Family::default(),
            policy_refused: Gauge::default(),
            break_glass_open: Gauge::default(),
            break_glass_unreviewed: Gauge::default(),
            break_glass_overdue: Gauge::default(),
            reviews_open: Gauge::default(),
            review_pending: Gauge::default(),
            review_overdue: Gauge::default(),
            audit_forward_lag: Family::default(),
            audit_forward_failures: Family::default(),
        };
        registry.register_with_unit(
            "revocation_latency",
            "Time from the trigger (termination, end of entitlement) to each stage of a revocation, per connector, source, cause and stage",
            Unit::Seconds,
            m.revocation_latency.clone(),
        );
        registry.register_with_unit(
            "issue_latency",
            "Time from the trigger (hire, move) to each stage of an issue, per connector, source, cause and stage",
            Unit::Seconds,
            m.issue_latency.clone(),
        );
        registry.register(
            "commands",
            "Commands finished, by connector, action and outcome (done, dead, superseded)",
            m.commands.clone(),
        );
        registry.register(
            "command_retries",
            "Commands put back for another try, by reason",
            m.retries.clone(),
        );
        registry.register(
            "rate_limit_waits",
            "Vendor calls that waited for the connector's rate budget or a vendor cooldown",
            m.rate_limit_waits.clone(),
        );
        registry.register_with_unit(
            "rate_limit_wait",
            "Time vendor calls spent waiting for the rate budget or a vendor cooldown",
            Unit::Seconds,
            m.rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while the connector's circuit breaker is open (calls to the vendor suspended)",
            m.breaker_open.clone(),
        );
        registry.register(
            "outbox_depth",
            "Commands not finished (pending, in flight, awaiting confirmation), per connector lane",
            m.outbox_depth.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unfinished command since it was enqueued, per connector lane",
            Unit::Seconds,
            m.outbox_oldest_age.clone(),
        );
        registry.register(
            "dead_letters",
            "Commands in the dead letter (gave up; need an operator), per connector lane",
            m.dead_letters.clone(),
        );
        registry.register(
            "quarantined_records",
            "Source records set aside as invalid, per source",
            m.quarantined.clone(),
        );
        registry.register(
            "held_changes",
            "Changes held for approval (mass disappearance from a feed), per source",
            m.held.clone(),
        );
        registry.register(
            "rejected_files",
            "Source files set aside because they could not be read at all, per source",
            m.rejected_files.clone(),
        );
        registry.register(
            "key_return_tasks",
            "Mechanical key return tasks, open and overdue",
            m.key_returns.clone(),
        );
        registry.register(
            "leaver_keys_held",
            "Cabinet keys held right now by people whose identity is terminated, per cabinet connector",
            m.leaver_keys_held.clone(),
        );
        registry.register(
            "drift_findings",
            "Differences between a vendor and the ledger at the last drift check: orphan grants latchkey did not issue, expected grants missing",
            m.drift_findings.clone(),
        );
        registry.register(
            "sla_revocations",
            "Revocations that finished (confirmed or dead), counted against the connector's SLA",
            m.sla_revocations.clone(),
        );
        registry.register(
            "sla_breaches",
            "Revocations confirmed later than the connector's SLA target, or never (dead)",
            m.sla_breaches.clone(),
        );
        registry.register_with_unit(
            "sla_target",
            "The connector's SLA: a revocation must be confirmed within this time",
            Unit::Seconds,
            m.sla_target.clone(),
        );
        registry.register(
            "sla_objective_ratio",
            "The connector's SLA objective: share of revocations that must meet the target",
            m.sla_objective.clone(),
        );
        registry.register_with_unit(
            "source_last_success_timestamp",
            "When a source last ran without error (Unix time)",
            Unit::Seconds,
            m.source_success.clone(),
        );
        registry.register_with_unit(
            "source_expected_interval",
            "How often a polled or scheduled source runs, from its own schedule: staleness is judged against it",
            Unit::Seconds,
            m.source_expected.clone(),
        );
        registry.register(
            "source_connected",
            "1 while a source that follows its directory over a persistent search is connected and answering",
            m.source_connected.clone(),
        );
        registry.register_with_unit(
            "held_changes_oldest_age",
            "Age of the oldest change held for approval, per source (held changes block revocations)",
            Unit::Seconds,
            m.held_oldest_age.clone(),
        );
        registry.register(
            "leases_held",
            "Leases this replica holds, by kind (source, job, lane): with several replicas, each source, scheduled job and connector lane is held by exactly one",
            m.leases_held.clone(),
        );
        registry.register(
            "leases_configured",
            "Leases the configuration defines, by kind (source, job, lane): summed over replicas, latchkey_leases_held should equal it; less means a source, job or lane nobody runs",
            m.leases_configured.clone(),
        );
        registry.register(
            "policy_reload_refused",
            "1 while the templates file on disk does not load (the last good policy stays in force; see the log and audit for why)",
            m.policy_refused.clone(),
        );
        registry.register(
            "break_glass_open",
            "Emergency (break-glass) grants in force now: someone holds a door outside policy",
            m.break_glass_open.clone(),
        );
        registry.register(
            "break_glass_unreviewed",
            "Emergencies opened by one operator that no other approver has reviewed yet",
            m.break_glass_unreviewed.clone(),
        );
        registry.register(
            "break_glass_review_overdue",
            "Emergencies whose review deadline (`[break_glass] review_hours`) has passed unreviewed",
            m.break_glass_overdue.clone(),
        );
        registry.register(
            "access_reviews_open",
            "Access review campaigns not yet closed (open, or escalated past their deadline)",
            m.reviews_open.clone(),
        );
        registry.register(
            "access_review_items_pending",
            "Holders in unclosed access reviews that no reviewer has certified or revoked yet",
            m.review_pending.clone(),
        );
        registry.register(
            "access_review_items_overdue",
            "Holders still undecided past their review's deadline (escalated campaigns)",
            m.review_overdue.clone(),
        );
        registry.register(
            "drill_runs",
            "Revocation drills, by connector and result (ok, failed)",
            m.drill_runs.clone(),
        );
        registry.register_with_unit(
            "drill_stage",
            "Each stage of the connector's last revocation drill",
            Unit::Seconds,
            m.drill_stage.clone(),
        );
        registry.register_with_unit(
            "drill_last_success_timestamp",
            "When the connector's last successful revocation drill ended (Unix time)",
            Unit::Seconds,
            m.drill_success.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running latchkey version", build);
        registry.register(
            "revocations_stuck",
            "Revocations that used up their attempts and keep retrying at the capped interval (someone may still hold access), per connector",
            m.revocations_stuck.clone(),
        );
        registry.register(
            "revoke_failures",
            "Failed revocation attempts, by connector and class of error (rate_limited, transient, auth, permanent)",
            m.revoke_failures.clone(),
        );
        registry.register(
            "audit_forward_lag_records",
            "Audit records written but not yet accepted by a SIEM forwarding sink",
            m.audit_forward_lag.clone(),
        );
        registry.register(
            "audit_forward_failures",
            "Failed sends to a SIEM forwarding sink (each is retried from the sink's cursor)",
            m.audit_forward_failures.clone(),
        );
        for sink in config.audit.forward.keys() {
            let l = SinkLabel { sink: sink.clone() };
            m.audit_forward_lag.get_or_create(&l).set(0);
            let _ = m.audit_forward_failures.get_or_create(&l);
        }
        registry.register(
            "dispatcher_worker_restarts",
            "Dispatcher workers restarted after a panic, per connector lane",
            m.worker_restarts.clone(),
        );
        for (name, sla) in &m.slas {
            let l = ConnectorLabel {
                connector: name.clone(),
            };
            m.sla_target
                .get_or_create(&l)
                .set(sla.revoke_within_seconds);
            m.sla_objective.get_or_create(&l).set(sla.objective);
            // Present from the start, so rates and alerts have a series before the first event.
            let _ = m.sla_revocations.get_or_create(&l);
            let _ = m.sla_breaches.get_or_create(&l);
            m.breaker_open.get_or_create(&l).set(0);
            m.revocations_stuck.get_or_create(&l).set(0);
            let _ = m.worker_restarts.get_or_create(&l);
            let _ = m.rate_limit_waits.get_or_create(&l);
            let _ = m.rate_limit_wait_seconds.get_or_create(&l);
            let name = name.clone();
            for action in LANES {
                for outcome in ["done", "dead", "superseded"] {
                    let _ = m.commands.get_or_create(&CommandLabels {
                        connector: name.clone(),
                        action,
                        outcome,
                    });
                }
            }
        }
        for state in ["open", "overdue"] {
            let _ = m.key_returns.get_or_create(&StateLabel { state });
        }
        for (source, seconds) in expected_intervals(config) {
            m.source_expected
                .get_or_create(&SourceLabel { source })
                .set(seconds);
        }
        root.register_collector(Box::new(super::process::ProcessCollector));
        Self {
            registry: root,
            ..m
        }
    }

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

    /// Read what only the store knows into the gauges. `now`: microseconds, from the engine's clock.
    pub async fn collect(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let pool = store.pool();
        // Every configured lane is reported, so a lane that emptied shows 0 rather than its last value.
        let mut depth: BTreeMap<(String, &'static str), (i64, Option<i64>, i64)> = BTreeMap::new();
        for c in &self.connectors {
            for lane in LANES {
                depth.insert((c.clone(), lane), (0, None, 0));
            }
        }
        for g in reports::outbox_groups(pool).await? {
            let Some(lane) = Action::parse(&g.action).map(|a| a.as_str()) else {
                continue;
            };
            // Only configured connectors: a connector removed from the configuration would otherwise
            // keep a series forever.
            let Some(e) = depth.get_mut(&(g.connector, lane)) else {
                continue;
            };
            if g.status == "dead" {
                e.2 += g.count;
            } else {
                e.0 += g.count;
                e.1 = match (e.1, g.oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        for ((connector, lane), (n, oldest, dead)) in depth {
            let l = LaneLabels { connector, lane };
            self.outbox_depth.get_or_create(&l).set(n);
            self.outbox_oldest_age
                .get_or_create(&l)
                .set(oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6));
            self.dead_letters.get_or_create(&l).set(dead);
        }
        for (what, family) in [
            (PerSource::Quarantined, &self.quarantined),
            (PerSource::Held, &self.held),
            (PerSource::RejectedFiles, &self.rejected_files),
        ] {
            family.clear();
            for (source, n) in reports::per_source(pool, what).await? {
                family.get_or_create(&SourceLabel { source }).set(n);
            }
        }
        self.held_oldest_age.clear();
        for (source, oldest) in reports::oldest_held(pool).await? {
            self.held_oldest_age
                .get_or_create(&SourceLabel { source })
                .set((now - oldest).max(0) as f64 / 1e6);
        }
        let stuck: BTreeMap<String, i64> = crate::store::stuck_counts(pool)
            .await?
            .into_iter()
            .collect();
        for c in &self.connectors {
            self.revocations_stuck
                .get_or_create(&ConnectorLabel {
                    connector: c.clone(),
                })
                .set(stuck.get(c).copied().unwrap_or(0));
        }
        let (open, unreviewed, overdue) =
            crate::store::access_requests::emergency_counts(pool, now).await?;
        self.break_glass_open.set(open);
        self.break_glass_unreviewed.set(unreviewed);
        self.break_glass_overdue.set(overdue);
        let (pending, overdue, open) = crate::store::reviews::counts(pool, now).await?;
        self.review_pending.set(pending);
        self.review_overdue.set(overdue);
        self.reviews_open.set(open);
        // After a restart no source has run in this process yet: its checkpoint's last move is the
        // best known success, so a stalled source is not hidden by a restart.
        for (source, at) in reports::checkpoint_moves(pool).await? {
            let g = self.source_success.get_or_create(&SourceLabel { source });
            if g.get() < at as f64 / 1e6 {
                g.set(at as f64 / 1e6);
            }
        }
        Ok(())
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

/// Convert OpenMetrics text to the Prometheus 0.0.4 text format. OpenMetrics names a counter family
/// without `_total` and its samples with it; the older format wants the TYPE line to name the
/// sample. Exemplars, `# UNIT` and `# EOF` have no place there.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let fixed = if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = if kind == "unknown" { "untyped" } else { kind };
            if counters.contains(name) {
                format!("# TYPE {name}_total {kind}")
            } else {
                format!("# TYPE {name} {kind}")
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                format!("# HELP {name}_total {help}")
            } else {
                line.to_string()
            }
        } else if line.starts_with('#') {
            line.to_string()
        } else {
            // An exemplar follows ` # ` after the sample's value; a label value may hold anything,
            // so look for it only after the label set closes.
            let value_start = end_of_labels(line);
            match line[value_start..].find(" # ") {
                Some(i) => line[..value_start + i].to_string(),
                None => line.to_string(),
            }
        };
        out.push_str(&fixed);
        out.push('\n');
    }
    out
}

/// Byte offset just past a sample's label set (`name{a="b"}`), or past its name when it has none.
fn end_of_labels(line: &str) -> usize {
    let name_end = line.find([' ', '{']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return name_end;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, ch) in line.char_indices().skip_while(|(i, _)| *i <= name_end) {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return i + 1,
            _ => {}
        }
    }
    line.len()
}

/// Each scheduled or polled source's longest gap between runs, in seconds: an HR source's crontab
/// line (a daily feed: a day), an LDAP source's poll interval. A persistent LDAP search has none: it
/// is healthy while connected (`latchkey_source_connected`).
pub fn expected_intervals(config: &Config) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (name, hr) in &config.sources.hr {
        if let Some(gap) = longest_gap(&hr.schedule) {
            out.push((name.clone(), gap));
        }
    }
    for (name, ldap) in &config.sources.ldap {
        let persistent = ldap.persist && ldap.dialect == crate::config::LdapDialect::Rfc4533;
        if !persistent {
            out.push((name.clone(), ldap.poll_seconds as f64));
        }
    }
    out
}

/// The longest gap between two runs of a crontab line over a fortnight from a fixed Monday (so
/// weekly and weekday-only schedules are measured whole, and no clock is read).
pub fn longest_gap(schedule: &str) -> Option<f64> {
    use chrono::TimeZone;
    let cron: croner::Cron = schedule.parse().ok()?;
    let start = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single()?;
    let end = start + chrono::Duration::days(14);
    let mut prev: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut longest = 0i64;
    for t in cron.iter_after(start) {
        if let Some(p) = prev {
            longest = longest.max((t - p).num_seconds());
        }
        if t > end {
            break;
        }
        prev = Some(t);
    }
    (longest > 0).then_some(longest as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_measured_from_each_schedule() {
        assert_eq!(longest_gap("0 6 * * *"), Some(86_400.0));
        assert_eq!(longest_gap("*/15 * * * *"), Some(900.0));
        // Weekdays at 06:00: Friday to Monday is the longest wait.
        assert_eq!(longest_gap("0 6 * * 1-5"), Some(3.0 * 86_400.0));
        assert_eq!(longest_gap("not cron"), None);
    }

    #[test]
    fn prometheus_text_drops_exemplars_and_names_counters_by_sample() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                  a_seconds_bucket{le=\"1.0\",x=\"} # {\"} 1 # {trace_id=\"ab\"} 0.5\n\
                  # HELP c C.\n# TYPE c counter\nc_total{x=\"y\"} 2\n# EOF\n";
        let p = to_prometheus_text(om);
        assert_eq!(
            p,
            "# HELP a_seconds A.\n# TYPE a_seconds histogram\n\
             a_seconds_bucket{le=\"1.0\",x=\"} # {\"} 1\n\
             # HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"y\"} 2\n"
        );
    }
}
