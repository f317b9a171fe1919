//! Propagation SLA per connector, from the outbox: "`objective` of revocations confirmed within
//! `revoke_within_seconds` of their trigger, over the last `window_days`".
//!
//! A revocation counts once it is finished (confirmed, or dead: a dead revocation never met the
//! target), and also while still open once it is older than the target, since it can no longer meet
//! it: an SLA report must not look healthy because the slow revocations have not finished yet.

use super::metrics::sla_of;
use crate::config::{Config, SlaConfig};
use crate::model::CommandStatus;
use crate::store::reports::{self, SlaScope};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct SlaRow {
    pub connector: String,
    pub target_seconds: f64,
    pub objective: f64,
    pub window_days: u32,
    /// Revocations counted (finished in the window, or open past the target).
    pub total: u64,
    /// Confirmed within the target.
    pub met: u64,
    /// Confirmed late, or dead.
    pub missed: u64,
    /// Still open and already past the target (included in `missed`).
    pub open_overdue: u64,
}

impl SlaRow {
    /// Share of revocations within the target; None when there were none.
    pub fn attainment(&self) -> Option<f64> {
        (self.total > 0).then(|| self.met as f64 / self.total as f64)
    }

    /// Share of the window's error budget used: 1.0 means the budget is gone. Over the whole
    /// window this equals the average burn rate.
    pub fn budget_used(&self) -> Option<f64> {
        let allowed = (1.0 - self.objective) * self.total as f64;
        (self.total > 0).then(|| self.missed as f64 / allowed)
    }

    pub fn breached(&self) -> bool {
        self.attainment().is_some_and(|a| a < self.objective)
    }
}

/// Attainment of every configured connector, then of every risk tier with an SLA of its own
/// (`[tiers.NAME.sla]`, rows named `tier:NAME`), at `now` (microseconds, from the engine's clock).
pub async fn report(store: &Store, config: &Config, now: i64) -> Result<Vec<SlaRow>, StoreError> {
    let mut out = Vec::new();
    for name in config.connectors.keys() {
        let sla = sla_of(config, name);
        out.push(attainment(store, name.clone(), sla, SlaScope::Connector(name), now).await?);
    }
    for (name, tier) in &config.tiers {
        let Some(o) = tier.sla else { continue };
        let sla = SlaConfig {
            revoke_within_seconds: o
                .revoke_within_seconds
                .unwrap_or(config.sla.revoke_within_seconds),
            objective: o.objective.unwrap_or(config.sla.objective),
            window_days: o.window_days.unwrap_or(config.sla.window_days),
        };
        let scope = SlaScope::Targets(&tier.targets);
        out.push(attainment(store, format!("tier:{name}"), sla, scope, now).await?);
    }
    Ok(out)
}

async fn attainment(
    store: &Store,
    name: String,
    sla: SlaConfig,
    scope: SlaScope<'_>,
    now: i64,
) -> Result<SlaRow, StoreError> {
    let since = now - i64::from(sla.window_days) * 86_400 * 1_000_000;
    let target = (sla.revoke_within_seconds * 1e6) as i64;
    let mut row = SlaRow {
        connector: name,
        target_seconds: sla.revoke_within_seconds,
        objective: sla.objective,
        window_days: sla.window_days,
        total: 0,
        met: 0,
        missed: 0,
        open_overdue: 0,
    };
    for r in reports::sla_revocations(store.pool(), scope, since).await? {
        match (r.status, r.confirmed_at) {
            (CommandStatus::Done, Some(c)) if c - r.trigger_at <= target => row.met += 1,
            (CommandStatus::Done | CommandStatus::Dead, _) => row.missed += 1,
            _ if now - r.trigger_at > target => {
                row.missed += 1;
                row.open_overdue += 1;
            }
            // Open and still inside the target: not decided yet.
            _ => continue,
        }
        row.total += 1;
    }
    Ok(row)
}

/// A plain table for terminals.
pub fn render(rows: &[SlaRow]) -> String {
    let mut out = String::from("Revocation SLA per connector (and per risk tier: tier:NAME)\n");
    out.push_str(&format!(
        "{:<12} {:>22} {:>8} {:>8} {:>8} {:>12} {:>12} {:>11}  {}\n",
        "connector",
        "target",
        "total",
        "met",
        "missed",
        "open late",
        "attainment",
        "budget used",
        "status"
    ));
    for r in rows {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.3} %", v * 100.0));
        out.push_str(&format!(
            "{:<12} {:>22} {:>8} {:>8} {:>8} {:>12} {:>12} {:>11}  {}\n",
            r.connector,
            format!(
                "{}% in {}s / {}d",
                r.objective * 100.0,
                r.target_seconds,
                r.window_days
            ),
            r.total,
            r.met,
            r.missed,
            r.open_overdue,
            pct(r.attainment()),
            pct(r.budget_used()),
            if r.total == 0 {
                "no revocations"
            } else if r.breached() {
                "BREACHED"
            } else {
                "ok"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanical_keys_are_measured_against_their_return_window_in_both_shipped_configs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["config/demo.toml", "config/production.toml"] {
            let input = crate::config::ConfigInput::from_file(&root.join(file), Default::default())
                .unwrap();
            let config = Config::load(&input).unwrap();
            let keys = sla_of(&config, "keys");
            let due = config.connectors["keys"].manual.return_due_hours;
            assert_eq!(keys.revoke_within_seconds, due * 3600.0, "{file}");
            assert_eq!(
                sla_of(&config, "nuki").revoke_within_seconds,
                60.0,
                "{file}"
            );
        }
    }

    #[test]
    fn budget_use_is_missed_over_allowed() {
        let r = SlaRow {
            connector: "nuki".into(),
            target_seconds: 60.0,
            objective: 0.99,
            window_days: 30,
            total: 1000,
            met: 995,
            missed: 5,
            open_overdue: 0,
        };
        assert!((r.attainment().unwrap() - 0.995).abs() < 1e-9);
        assert!((r.budget_used().unwrap() - 0.5).abs() < 1e-9);
        assert!(!r.breached());
        let bad = SlaRow {
            met: 980,
            missed: 20,
            ..r
        };
        assert!(bad.breached());
        assert!(render(&[bad]).contains("BREACHED"));
    }
}
