//! Every metric's family, registered once with its help text and unit: the list an operator reads
//! on `/metrics`, and the one `METRIC_NAMES` must match.

use super::*;

impl Metrics {
    pub fn new(config: &Config) -> Self {
        // The root holds the standard unprefixed `process_*` metrics; latchkey's own are below it.
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("latchkey");
        let m = Self::unregistered(config);
        // Registered in the order `/metrics` lists them.
        m.register_latency(registry);
        m.register_dispatch(registry);
        m.register_outbox(registry);
        m.register_source_intake(registry);
        m.register_keys_and_drift(registry);
        m.register_sla(registry);
        m.register_source_health(registry);
        m.register_leases(registry);
        m.register_governance(registry);
        m.register_drills(registry);
        register_build_info(registry);
        m.register_revocation_failures(registry);
        m.register_audit_forward(registry, config);
        m.register_worker_restarts(registry);
        m.seed_connector_series();
        m.seed_key_returns_and_intervals(config);
        root.register_collector(Box::new(crate::telemetry::process::ProcessCollector));
        Self {
            registry: root,
            ..m
        }
    }

    /// Every family empty and not yet registered; the SLAs and connectors fixed from `config`.
    fn unregistered(config: &Config) -> Self {
        Self {
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
        }
    }

    /// Time to each stage of a revocation or an issue.
    fn register_latency(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "revocation_latency",
            "Time from the trigger (termination, end of entitlement) to each stage of a revocation, per connector, source, cause and stage",
            Unit::Seconds,
            self.revocation_latency.clone(),
        );
        registry.register_with_unit(
            "issue_latency",
            "Time from the trigger (hire, move) to each stage of an issue, per connector, source, cause and stage",
            Unit::Seconds,
            self.issue_latency.clone(),
        );
    }

    /// What the dispatcher does with commands: outcomes, retries, rate-limit waits, the breaker.
    fn register_dispatch(&self, registry: &mut Registry) {
        registry.register(
            "commands",
            "Commands finished, by connector, action and outcome (done, dead, superseded)",
            self.commands.clone(),
        );
        registry.register(
            "command_retries",
            "Commands put back for another try, by reason",
            self.retries.clone(),
        );
        registry.register(
            "rate_limit_waits",
            "Vendor calls that waited for the connector's rate budget or a vendor cooldown",
            self.rate_limit_waits.clone(),
        );
        registry.register_with_unit(
            "rate_limit_wait",
            "Time vendor calls spent waiting for the rate budget or a vendor cooldown",
            Unit::Seconds,
            self.rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "circuit_breaker_open",
            "1 while the connector's circuit breaker is open (calls to the vendor suspended)",
            self.breaker_open.clone(),
        );
    }

    /// Each connector lane's backlog: depth, oldest age, dead letters.
    fn register_outbox(&self, registry: &mut Registry) {
        registry.register(
            "outbox_depth",
            "Commands not finished (pending, in flight, awaiting confirmation), per connector lane",
            self.outbox_depth.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unfinished command since it was enqueued, per connector lane",
            Unit::Seconds,
            self.outbox_oldest_age.clone(),
        );
        registry.register(
            "dead_letters",
            "Commands in the dead letter (gave up; need an operator), per connector lane",
            self.dead_letters.clone(),
        );
    }

    /// What sources set aside: quarantined records, held changes, rejected files.
    fn register_source_intake(&self, registry: &mut Registry) {
        registry.register(
            "quarantined_records",
            "Source records set aside as invalid, per source",
            self.quarantined.clone(),
        );
        registry.register(
            "held_changes",
            "Changes held for approval (mass disappearance from a feed), per source",
            self.held.clone(),
        );
        registry.register(
            "rejected_files",
            "Source files set aside because they could not be read at all, per source",
            self.rejected_files.clone(),
        );
    }

    /// Mechanical keys (returns, keys held by leavers) and drift between vendors and the ledger.
    fn register_keys_and_drift(&self, registry: &mut Registry) {
        registry.register(
            "key_return_tasks",
            "Mechanical key return tasks, open and overdue",
            self.key_returns.clone(),
        );
        registry.register(
            "leaver_keys_held",
            "Cabinet keys held right now by people whose identity is terminated, per cabinet connector",
            self.leaver_keys_held.clone(),
        );
        registry.register(
            "drift_findings",
            "Differences between a vendor and the ledger at the last drift check: orphan grants latchkey did not issue, expected grants missing",
            self.drift_findings.clone(),
        );
    }

    /// Revocations counted against each connector's SLA, and the SLA itself.
    fn register_sla(&self, registry: &mut Registry) {
        registry.register(
            "sla_revocations",
            "Revocations that finished (confirmed or dead), counted against the connector's SLA",
            self.sla_revocations.clone(),
        );
        registry.register(
            "sla_breaches",
            "Revocations confirmed later than the connector's SLA target, or never (dead)",
            self.sla_breaches.clone(),
        );
        registry.register_with_unit(
            "sla_target",
            "The connector's SLA: a revocation must be confirmed within this time",
            Unit::Seconds,
            self.sla_target.clone(),
        );
        registry.register(
            "sla_objective_ratio",
            "The connector's SLA objective: share of revocations that must meet the target",
            self.sla_objective.clone(),
        );
    }

    /// Whether sources run when they should: last success, expected interval, connection, and the
    /// oldest held change.
    fn register_source_health(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "source_last_success_timestamp",
            "When a source last ran without error (Unix time)",
            Unit::Seconds,
            self.source_success.clone(),
        );
        registry.register_with_unit(
            "source_expected_interval",
            "How often a polled or scheduled source runs, from its own schedule: staleness is judged against it",
            Unit::Seconds,
            self.source_expected.clone(),
        );
        registry.register(
            "source_connected",
            "1 while a source that follows its directory over a persistent search is connected and answering",
            self.source_connected.clone(),
        );
        registry.register_with_unit(
            "held_changes_oldest_age",
            "Age of the oldest change held for approval, per source (held changes block revocations)",
            Unit::Seconds,
            self.held_oldest_age.clone(),
        );
    }

    /// Leases held by this replica against those the configuration defines.
    fn register_leases(&self, registry: &mut Registry) {
        registry.register(
            "leases_held",
            "Leases this replica holds, by kind (source, job, lane): with several replicas, each source, scheduled job and connector lane is held by exactly one",
            self.leases_held.clone(),
        );
        registry.register(
            "leases_configured",
            "Leases the configuration defines, by kind (source, job, lane): summed over replicas, latchkey_leases_held should equal it; less means a source, job or lane nobody runs",
            self.leases_configured.clone(),
        );
    }

    /// The policy file, break-glass emergencies and access reviews.
    fn register_governance(&self, registry: &mut Registry) {
        registry.register(
            "policy_reload_refused",
            "1 while the templates file on disk does not load (the last good policy stays in force; see the log and audit for why)",
            self.policy_refused.clone(),
        );
        registry.register(
            "break_glass_open",
            "Emergency (break-glass) grants in force now: someone holds a door outside policy",
            self.break_glass_open.clone(),
        );
        registry.register(
            "break_glass_unreviewed",
            "Emergencies opened by one operator that no other approver has reviewed yet",
            self.break_glass_unreviewed.clone(),
        );
        registry.register(
            "break_glass_review_overdue",
            "Emergencies whose review deadline (`[break_glass] review_hours`) has passed unreviewed",
            self.break_glass_overdue.clone(),
        );
        registry.register(
            "access_reviews_open",
            "Access review campaigns not yet closed (open, or escalated past their deadline)",
            self.reviews_open.clone(),
        );
        registry.register(
            "access_review_items_pending",
            "Holders in unclosed access reviews that no reviewer has certified or revoked yet",
            self.review_pending.clone(),
        );
        registry.register(
            "access_review_items_overdue",
            "Holders still undecided past their review's deadline (escalated campaigns)",
            self.review_overdue.clone(),
        );
    }

    /// Revocation drills: runs, stages, last success.
    fn register_drills(&self, registry: &mut Registry) {
        registry.register(
            "drill_runs",
            "Revocation drills, by connector and result (ok, failed)",
            self.drill_runs.clone(),
        );
        registry.register_with_unit(
            "drill_stage",
            "Each stage of the connector's last revocation drill",
            Unit::Seconds,
            self.drill_stage.clone(),
        );
        registry.register_with_unit(
            "drill_last_success_timestamp",
            "When the connector's last successful revocation drill ended (Unix time)",
            Unit::Seconds,
            self.drill_success.clone(),
        );
    }

    /// Revocations that keep failing: stuck ones, and each failed attempt by class of error.
    fn register_revocation_failures(&self, registry: &mut Registry) {
        registry.register(
            "revocations_stuck",
            "Revocations that used up their attempts and keep retrying at the capped interval (someone may still hold access), per connector",
            self.revocations_stuck.clone(),
        );
        registry.register(
            "revoke_failures",
            "Failed revocation attempts, by connector and class of error (rate_limited, transient, auth, permanent)",
            self.revoke_failures.clone(),
        );
    }

    /// SIEM forwarding: lag and failures, with a series for every configured sink from the start.
    fn register_audit_forward(&self, registry: &mut Registry, config: &Config) {
        registry.register(
            "audit_forward_lag_records",
            "Audit records written but not yet accepted by a SIEM forwarding sink",
            self.audit_forward_lag.clone(),
        );
        registry.register(
            "audit_forward_failures",
            "Failed sends to a SIEM forwarding sink (each is retried from the sink's cursor)",
            self.audit_forward_failures.clone(),
        );
        for sink in config.audit.forward.keys() {
            let l = SinkLabel { sink: sink.clone() };
            self.audit_forward_lag.get_or_create(&l).set(0);
            let _ = self.audit_forward_failures.get_or_create(&l);
        }
    }

    /// Dispatcher workers restarted after a panic.
    fn register_worker_restarts(&self, registry: &mut Registry) {
        registry.register(
            "dispatcher_worker_restarts",
            "Dispatcher workers restarted after a panic, per connector lane",
            self.worker_restarts.clone(),
        );
    }

    /// Each connector's series before any event: its SLA target and objective, and every counter
    /// and gauge it has at zero.
    fn seed_connector_series(&self) {
        for (name, sla) in &self.slas {
            let l = ConnectorLabel {
                connector: name.clone(),
            };
            self.sla_target
                .get_or_create(&l)
                .set(sla.revoke_within_seconds);
            self.sla_objective.get_or_create(&l).set(sla.objective);
            // Present from the start, so rates and alerts have a series before the first event.
            let _ = self.sla_revocations.get_or_create(&l);
            let _ = self.sla_breaches.get_or_create(&l);
            self.breaker_open.get_or_create(&l).set(0);
            self.revocations_stuck.get_or_create(&l).set(0);
            let _ = self.worker_restarts.get_or_create(&l);
            let _ = self.rate_limit_waits.get_or_create(&l);
            let _ = self.rate_limit_wait_seconds.get_or_create(&l);
            let name = name.clone();
            for action in LANES {
                for outcome in
                    [Finished::Done, Finished::Dead, Finished::Superseded].map(Finished::as_str)
                {
                    let _ = self.commands.get_or_create(&CommandLabels {
                        connector: name.clone(),
                        action,
                        outcome,
                    });
                }
            }
        }
    }

    /// Both key-return states, and every scheduled source's expected interval.
    fn seed_key_returns_and_intervals(&self, config: &Config) {
        for state in ["open", "overdue"] {
            let _ = self.key_returns.get_or_create(&StateLabel { state });
        }
        for (source, seconds) in expected_intervals(config) {
            self.source_expected
                .get_or_create(&SourceLabel { source })
                .set(seconds);
        }
    }
}

/// The running version, as a gauge set to 1 with the version as its label.
fn register_build_info(registry: &mut Registry) {
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register("build_info", "The running latchkey version", build);
}
