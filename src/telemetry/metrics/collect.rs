//! The gauges only the store knows: outbox depth and age per lane, dead letters, quarantined
//! records and held changes per source, stuck revocations, break-glass and access reviews, and each
//! source's last checkpoint move. Read on every scrape.

use super::*;
use crate::model::CommandStatus;
use sqlx::AnyPool;

/// Per connector lane: unfinished commands, when the oldest was enqueued, dead letters.
type LaneCounts = BTreeMap<(String, &'static str), (i64, Option<i64>, i64)>;

impl Metrics {
    /// Read what only the store knows into the gauges. `now`: microseconds, from the engine's clock.
    pub async fn collect(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let pool = store.pool();
        self.collect_outbox(pool, now).await?;
        self.collect_per_source(pool, now).await?;
        self.collect_stuck(pool).await?;
        self.collect_break_glass_and_reviews(pool, now).await?;
        self.collect_checkpoint_moves(pool).await
    }

    /// Depth, oldest age and dead letters of every configured lane.
    async fn collect_outbox(&self, pool: &AnyPool, now: i64) -> Result<(), StoreError> {
        let depth = self.lane_counts(pool).await?;
        for ((connector, lane), (n, oldest, dead)) in depth {
            let l = LaneLabels { connector, lane };
            self.outbox_depth.get_or_create(&l).set(n);
            self.outbox_oldest_age
                .get_or_create(&l)
                .set(oldest.map_or(0.0, |o| (now - o).max(0) as f64 / 1e6));
            self.dead_letters.get_or_create(&l).set(dead);
        }
        Ok(())
    }

    /// The outbox summed per configured lane.
    async fn lane_counts(&self, pool: &AnyPool) -> Result<LaneCounts, StoreError> {
        // Every configured lane is reported, so a lane that emptied shows 0 rather than its last value.
        let mut depth: LaneCounts = BTreeMap::new();
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
            if g.status == CommandStatus::Dead {
                e.2 += g.count;
            } else {
                e.0 += g.count;
                e.1 = match (e.1, g.oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(depth)
    }

    /// Quarantined records, held changes, rejected files and the oldest held change, per source.
    async fn collect_per_source(&self, pool: &AnyPool, now: i64) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// Stuck revocations of every configured connector.
    async fn collect_stuck(&self, pool: &AnyPool) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// Emergencies open, unreviewed and overdue; access reviews open, pending and overdue.
    async fn collect_break_glass_and_reviews(
        &self,
        pool: &AnyPool,
        now: i64,
    ) -> Result<(), StoreError> {
        let (open, unreviewed, overdue) =
            crate::store::access_requests::emergency_counts(pool, now).await?;
        self.break_glass_open.set(open);
        self.break_glass_unreviewed.set(unreviewed);
        self.break_glass_overdue.set(overdue);
        let (pending, overdue, open) = crate::store::reviews::counts(pool, now).await?;
        self.review_pending.set(pending);
        self.review_overdue.set(overdue);
        self.reviews_open.set(open);
        Ok(())
    }

    /// Each source's last success, raised to its checkpoint's last move.
    async fn collect_checkpoint_moves(&self, pool: &AnyPool) -> Result<(), StoreError> {
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
}
