//! Applying a full snapshot of a source's people: quarantine and returned holds first, then the
//! changed people in batches (leavers first), then the people who vanished from it, and only then
//! the source's checkpoint.

use super::{Engine, EngineError, FeedReport, leaving, record_hash, tally};
use crate::audit;
use crate::batch::Batch;
use crate::clock::to_micros;
use crate::model::{ChangeKind, PersonKey, PersonRecord, Quarantined, Snapshot};
use crate::plan::Applied;
use crate::store;
use chrono::{DateTime, Utc};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, TryStreamExt};
use sqlx::AnyConnection;
use std::collections::{BTreeMap, BTreeSet};

/// People per transaction of a full feed. Their reads and writes are a few statements per batch
/// (see [`crate::batch`]), so a larger batch mostly saves commits, each of which rewrites the
/// pages it touched; small enough that the batch holds SQLite's writer for tens of milliseconds,
/// and the first revokes of a big feed reach the dispatcher as soon.
const FEED_BATCH: usize = 500;

/// What a source held before a snapshot, by person key: the record's hash, and whether the person
/// had already disappeared.
type Known = BTreeMap<PersonKey, (String, bool)>;

impl Engine {
    /// Apply a source's full snapshot: the source-independent part of every full read.
    pub async fn apply_snapshot(
        &self,
        snapshot: Snapshot,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let Snapshot {
            source,
            batch_id,
            checkpoint,
            records,
            quarantined,
            hold_above,
            landed_at,
        } = snapshot;
        let source = source.as_str();
        let known: Known = store::source_hashes(&self.store, source)
            .await?
            .into_iter()
            .map(|(k, h, gone)| (k, (h, gone)))
            .collect();
        let in_feed: BTreeSet<PersonKey> = records
            .iter()
            .map(|r| r.key.clone())
            .chain(quarantined.iter().filter_map(|q| q.record_key.clone()))
            .collect();
        self.quarantine_and_release(source, &batch_id, &quarantined, &in_feed, report)
            .await?;
        let total = records.len();
        let changed = changed_records(&known, records);
        report.unchanged = total - changed.len();
        self.apply_changed(changed, landed_at, report).await?;
        self.settle_disappearances(source, &known, &in_feed, hold_above, &checkpoint, report)
            .await
    }

    /// Quarantine first, in its own transaction: nothing is lost even if the rest fails.
    async fn quarantine_and_release(
        &self,
        source: &str,
        batch_id: &str,
        quarantined: &[Quarantined],
        in_feed: &BTreeSet<PersonKey>,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let now = to_micros(self.clock.now());
        let mut tx = self.store.begin_write().await?;
        for q in quarantined {
            if store::quarantine(&mut tx, q, batch_id, now).await? {
                audit::append(
                    &mut tx,
                    now,
                    &format!("source:{source}"),
                    "record.quarantined",
                    q.record_key.as_deref().unwrap_or("-"),
                    &serde_json::json!({"location": q.location, "field": q.field, "reason": q.reason}),
                )
                .await?;
            }
        }
        // Holds are re-evaluated against every feed: a held disappearance whose person is
        // back is released here, before anything else can act on it.
        self.release_returned(&mut tx, source, in_feed, now, report)
            .await?;
        tx.commit().await?;
        report.quarantined = quarantined.len();
        Ok(())
    }

    /// The changed people, one transaction per batch. Leavers' batches all commit before the
    /// first batch of anyone else begins, so no issue of this feed reaches the outbox ahead of
    /// its revokes (invariant 3).
    async fn apply_changed(
        &self,
        changed: Vec<PersonRecord>,
        landed_at: Option<DateTime<Utc>>,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let (leavers, others): (Vec<_>, Vec<_>) = changed.into_iter().partition(leaving);
        self.apply_batches(&leavers, landed_at, report).await?;
        self.apply_batches(&others, landed_at, report).await
    }

    /// `records` in batches of [`FEED_BATCH`]. On PostgreSQL the next batch is read and planned
    /// while the server writes and commits the one before, on a connection of its own. The
    /// batches hold distinct people (a feed has one record per key) and share no row until
    /// commit, where the audit chain's head is the last lock each takes (migration 0013), so they
    /// cannot deadlock. SQLite has one writer; a second batch would only wait at its gate.
    async fn apply_batches(
        &self,
        records: &[PersonRecord],
        landed_at: Option<DateTime<Utc>>,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let in_flight = match self.store.backend() {
            store::Backend::Postgres => 2,
            store::Backend::Sqlite => 1,
        };
        let mut batches = records.chunks(FEED_BATCH);
        let mut applying = FuturesOrdered::new();
        loop {
            while applying.len() < in_flight {
                let Some(chunk) = batches.next() else { break };
                applying.push_back(self.apply_batch(chunk, landed_at).boxed());
            }
            let Some(changes) = applying.try_next().await? else {
                break;
            };
            for (kind, a) in changes {
                tally(report, kind, a);
            }
        }
        Ok(())
    }

    /// One batch of people in one transaction: read together, planned, written together.
    async fn apply_batch(
        &self,
        chunk: &[PersonRecord],
        landed_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<(ChangeKind, Applied)>, EngineError> {
        let now = self.clock.now();
        // A leavers' batch goes ahead of the dispatcher's issue writes.
        let mut tx = if chunk.iter().any(leaving) {
            self.store.begin_write_urgent().await?
        } else {
            self.store.begin_write().await?
        };
        let keys: Vec<&str> = chunk.iter().map(|r| r.key.as_str()).collect();
        let mut batch = Batch::load(&mut tx, &keys, now).await?;
        let mut kinds = Vec::with_capacity(chunk.len());
        for r in chunk {
            kinds.push(
                self.stage_record(&mut tx, &mut batch, r, landed_at.unwrap_or(now))
                    .await?,
            );
        }
        batch.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(chunk
            .iter()
            .zip(kinds)
            .map(|(r, kind)| (kind, batch.applied_of(&r.key)))
            .collect())
    }

    /// People who vanished from a full feed: leavers, unless so many vanish at once that the file
    /// is more likely truncated than the company halved (invariant 4). The checkpoint moves in the
    /// same transaction.
    async fn settle_disappearances(
        &self,
        source: &str,
        known: &Known,
        in_feed: &BTreeSet<PersonKey>,
        mass_threshold: f64,
        checkpoint_value: &str,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let vanished: Vec<&PersonKey> = known
            .iter()
            .filter(|(k, (_, gone))| !gone && !in_feed.contains(*k))
            .map(|(k, _)| k)
            .collect();
        let present = known.values().filter(|(_, gone)| !gone).count();
        let now = self.clock.now();
        let mut tx = self.store.begin_write().await?;
        match super::mass_change::snapshot_hold(vanished.len(), present, mass_threshold) {
            Some(reason) => {
                self.hold_vanished(&mut tx, source, &vanished, &reason, now, report)
                    .await?
            }
            // Absence is weaker than a termination: a leaver only once past the source's grace.
            None => {
                self.settle_vanished(&mut tx, source, &vanished, now, report)
                    .await?
            }
        }
        store::set_checkpoint(&mut tx, source, checkpoint_value, to_micros(now)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A mass disappearance: every vanished person's disappearance is held for an approver, on
    /// the caller's transaction, audited once for the feed.
    async fn hold_vanished(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        vanished: &[&PersonKey],
        reason: &str,
        now: DateTime<Utc>,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        for k in vanished {
            if self
                .hold_disappearance_tx(conn, source, k, reason, now)
                .await?
            {
                report.held += 1;
            }
        }
        self.audit_mass_hold_tx(conn, source, vanished.len(), reason, now)
            .await?;
        Ok(())
    }
}

/// The records that are new, changed, or of people who had disappeared, in feed order.
fn changed_records(known: &Known, records: Vec<PersonRecord>) -> Vec<PersonRecord> {
    records
        .into_iter()
        .filter(|r| match known.get(&r.key) {
            Some((h, gone)) => *gone || *h != record_hash(r),
            None => true,
        })
        .collect()
}
