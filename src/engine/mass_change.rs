//! The mass-change hold, one rule for every source (invariant 4): when more people leave at once
//! than a source can plausibly lose (a truncated file, an OU deleted by mistake, a scope filter
//! edited), their disappearances are held for an approver instead of applied. A full read is
//! judged whole; removals that arrive one by one (a directory's deletes, disables and moves out
//! of scope) are judged together with those of a recent window, so a mistake that arrives as
//! thousands of ordinary deletes is caught too.

use super::{Engine, EngineError};
use crate::audit;
use crate::clock::to_micros;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::VecDeque;

/// Why a full read's disappearances are held, if they are: `vanished` of the `present` people
/// gone at once, above `threshold` (a share of the present).
pub fn snapshot_hold(vanished: usize, present: usize, threshold: f64) -> Option<String> {
    if vanished == 0 || vanished as f64 <= threshold * present as f64 {
        return None;
    }
    Some(format!(
        "{vanished} of {present} people ({:.1} %) vanished from one feed, above the {:.0} % threshold",
        100.0 * vanished as f64 / present.max(1) as f64,
        100.0 * threshold
    ))
}

/// The rule for removals that arrive one by one.
#[derive(Debug, Clone, Copy)]
pub struct WindowRule {
    /// A share of the source's population.
    pub threshold: f64,
    pub window_seconds: u64,
    /// Fewer removals than this in a window are never held (a small directory's ordinary day).
    pub min: usize,
}

/// The removals of the recent window: when, how many, and whether they were applied (and so have
/// already left the population the next judgement counts).
#[derive(Debug, Default)]
pub struct RemovalWindow {
    recent: VecDeque<(DateTime<Utc>, usize, bool)>,
}

impl RemovalWindow {
    /// Judge `n` removals arriving now from a source of `population` people; `leaves`: applied,
    /// they leave the population (deletions do, disables do not). Returns why they are held, if
    /// they are, and remembers them either way.
    pub fn judge(
        &mut self,
        n: usize,
        leaves: bool,
        population: usize,
        rule: WindowRule,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let window =
            chrono::Duration::seconds(i64::try_from(rule.window_seconds).unwrap_or(i64::MAX));
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| *t + window < now)
        {
            self.recent.pop_front();
        }
        // Applied removals already left the population: count them back in.
        let applied: usize = self.recent.iter().filter(|r| r.2).map(|r| r.1).sum();
        let population = population + applied;
        let total = n + self.recent.iter().map(|r| r.1).sum::<usize>();
        let hold = population > 0
            && total > rule.min
            && (total as f64) > rule.threshold * population as f64;
        self.recent.push_back((now, n, leaves && !hold));
        hold.then(|| {
            format!(
                "{total} of {population} entries ({:.1} %) deleted, disabled or moved out of scope within {} s, above the {:.0} % threshold",
                100.0 * total as f64 / population as f64,
                rule.window_seconds,
                100.0 * rule.threshold
            )
        })
    }
}

impl Engine {
    /// Hold one person's disappearance from `source` for an approver, on the caller's
    /// transaction. Returns whether a new hold was recorded.
    pub async fn hold_disappearance_tx(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        key: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, EngineError> {
        let by = self.requester(&format!("source:{source}"));
        Ok(crate::store::hold(
            conn,
            source,
            key,
            "disappearance",
            reason,
            &by,
            to_micros(now),
        )
        .await?)
    }

    /// Audit a held mass change once for the whole set, on the caller's transaction.
    pub async fn audit_mass_hold_tx(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        held: usize,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        tracing::warn!(source, held, %reason, "mass change held for approval");
        audit::append(
            conn,
            to_micros(now),
            &format!("source:{source}"),
            "feed.mass_change_held",
            source,
            &serde_json::json!({"held": held, "reason": reason}),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    const RULE: WindowRule = WindowRule {
        threshold: 0.1,
        window_seconds: 60,
        min: 5,
    };

    #[test]
    fn a_full_read_is_held_only_above_the_threshold() {
        assert_eq!(snapshot_hold(0, 100, 0.1), None);
        assert_eq!(snapshot_hold(10, 100, 0.1), None);
        let reason = snapshot_hold(11, 100, 0.1).unwrap_or_default();
        assert!(reason.starts_with("11 of 100 people (11.0 %)"), "{reason}");
    }

    #[test]
    fn removals_one_by_one_add_up_within_the_window_and_not_beyond() {
        let mut w = RemovalWindow::default();
        // 100 people; one delete every second: applied until the window holds more than 10 %.
        let held: Vec<bool> = (0..12)
            .map(|i| w.judge(1, true, 100 - i, RULE, at(i as i64)).is_some())
            .collect();
        assert_eq!(held.iter().position(|h| *h), Some(10), "{held:?}");
        // Long after, the window has emptied: an ordinary delete is applied again.
        assert_eq!(w.judge(1, true, 89, RULE, at(1_000)), None);
    }

    #[test]
    fn a_small_burst_below_the_minimum_is_never_held() {
        let mut w = RemovalWindow::default();
        assert_eq!(w.judge(5, true, 10, RULE, at(0)), None);
    }
}
