//! Which lanes have a live worker, for `/readyz`: a lane whose workers all died (a panic, while it
//! is being restarted) delivers nothing, so the process must not report ready.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    /// Workers the lane runs.
    pub workers: usize,
    /// Workers running right now.
    pub live: usize,
    /// Workers restarted after a panic since start-up.
    pub restarts: u64,
}

/// Live workers per connector lane, shared by the dispatcher and the HTTP server.
#[derive(Debug, Default)]
pub struct Lanes {
    inner: Mutex<BTreeMap<String, Lane>>,
}

impl Lanes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lane>> {
        // Plain counters, consistent after a panic elsewhere: keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dispatcher starts `workers` workers on this lane.
    pub fn expect(&self, connector: &str, workers: usize) {
        self.lock()
            .entry(connector.to_string())
            .or_default()
            .workers = workers;
    }

    /// A worker of this lane runs until the guard drops (also when its task unwinds).
    pub fn up(self: &Arc<Self>, connector: &str) -> LiveGuard {
        self.lock().entry(connector.to_string()).or_default().live += 1;
        LiveGuard {
            lanes: self.clone(),
            connector: connector.to_string(),
        }
    }

    pub fn restarted(&self, connector: &str) -> u64 {
        let mut lanes = self.lock();
        let lane = lanes.entry(connector.to_string()).or_default();
        lane.restarts = lane.restarts.saturating_add(1);
        lane.restarts
    }

    pub fn get(&self, connector: &str) -> Option<Lane> {
        self.lock().get(connector).copied()
    }

    /// Why the process is not ready, or None: every lane that should run has a live worker.
    pub fn not_ready(&self) -> Option<String> {
        let dead: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, l)| l.workers > 0 && l.live == 0)
            .map(|(name, l)| format!("{name} (0 of {} workers live)", l.workers))
            .collect();
        (!dead.is_empty()).then(|| format!("no live dispatcher worker on lane {}", dead.join(", ")))
    }
}

#[derive(Debug)]
pub struct LiveGuard {
    lanes: Arc<Lanes>,
    connector: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(l) = self.lanes.lock().get_mut(&self.connector) {
            l.live = l.live.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_without_a_live_worker_is_not_ready_until_one_is_back() {
        let lanes = Lanes::new();
        assert_eq!(lanes.not_ready(), None);
        lanes.expect("nuki", 2);
        lanes.expect("kisi", 1);
        let kisi = lanes.up("kisi");
        assert!(lanes.not_ready().is_some_and(|r| r.contains("nuki")));
        let a = lanes.up("nuki");
        let b = lanes.up("nuki");
        assert_eq!(lanes.not_ready(), None);
        drop(a);
        assert_eq!(lanes.not_ready(), None);
        // A panicking worker unwinds through its guard.
        let unwound = std::panic::catch_unwind(move || {
            let _kisi = kisi;
            std::panic::panic_any("boom")
        });
        assert!(unwound.is_err());
        assert!(
            lanes
                .not_ready()
                .is_some_and(|r| r.contains("kisi") && !r.contains("nuki"))
        );
        let _kisi = lanes.up("kisi");
        drop(b);
        assert!(lanes.not_ready().is_some_and(|r| r.contains("nuki")));
    }
}
