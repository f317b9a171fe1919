//! Every metric's family, registered once with its help text and unit: the list an operator reads
//! on `/metrics`, and the one `METRIC_NAMES` must match.

use super::*;

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
        root.register_collector(Box::new(crate::telemetry::process::ProcessCollector));
        Self {
            registry: root,
            ..m
        }
    }
}
