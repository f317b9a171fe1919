//! Latency measurement: every command carries its trigger, detection, enqueue, first attempt,
//! dispatch and confirmation times; this module turns them into per-stage percentiles.

pub mod metrics;
pub mod process;
pub mod sla;
pub mod tracing;

use crate::model::Action;
use crate::store::{self, CommandRow, Store, StoreError};
use std::collections::BTreeMap;

pub const STAGES: [&str; 5] = ["detect", "queue", "dispatch", "confirm", "end_to_end"];

/// Stage durations of one finished command, in seconds.
pub fn stages(c: &CommandRow) -> Option<[f64; 5]> {
    let confirmed = c.confirmed_at?;
    let first = c.first_attempt_at.unwrap_or(c.enqueued_at);
    let dispatched = c.dispatched_at.unwrap_or(confirmed);
    let s = |a: i64, b: i64| (b - a).max(0) as f64 / 1e6;
    Some([
        s(c.trigger_at, c.detected_at),
        s(c.enqueued_at, first),
        s(first, dispatched),
        s(dispatched, confirmed),
        s(c.trigger_at, confirmed),
    ])
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn summarize(mut v: Vec<f64>) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Summary {
        count: v.len(),
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        max: v[v.len() - 1],
    })
}

/// (connector, stage) -> summary, for one action.
pub async fn latency_report(
    store: &Store,
    action: Action,
) -> Result<BTreeMap<(String, String), Summary>, StoreError> {
    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for c in store::completed_commands(store.pool()).await? {
        if c.action != action {
            continue;
        }
        if let Some(st) = stages(&c) {
            for (name, v) in STAGES.iter().zip(st) {
                samples
                    .entry((c.connector.clone(), name.to_string()))
                    .or_default()
                    .push(v);
            }
        }
    }
    Ok(samples
        .into_iter()
        .filter_map(|(k, v)| summarize(v).map(|s| (k, s)))
        .collect())
}

fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// A plain table for terminals.
pub fn render_table(title: &str, report: &BTreeMap<(String, String), Summary>) -> String {
    let mut out = format!("{title}\n");
    out.push_str(&format!(
        "{:<12} {:<11} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
        "connector", "stage", "count", "p50", "p90", "p99", "max"
    ));
    if report.is_empty() {
        out.push_str("(no completed commands)\n");
    }
    let mut rows: Vec<_> = report.iter().collect();
    rows.sort_by_key(|((c, s), _)| (c.clone(), STAGES.iter().position(|x| x == s)));
    for ((connector, stage), s) in rows {
        out.push_str(&format!(
            "{:<12} {:<11} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
            connector,
            stage,
            s.count,
            fmt_secs(s.p50),
            fmt_secs(s.p90),
            fmt_secs(s.p99),
            fmt_secs(s.max)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = summarize((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert!(summarize(vec![]).is_none());
    }
}
