//! The parts of applying a snapshot feed that keep a bad day at the source from costing anyone
//! their access, or leaving a leaver with theirs: unreadable files set aside, absence graces, and
//! holds re-evaluated against every feed.

use super::{Engine, EngineError, FeedReport, tally};
use crate::audit;
use crate::batch::Batch;
use crate::clock::to_micros;
use crate::config::AbsentGrace;
use crate::model::Quarantined;
use crate::model::{ChangeKind, PersonKey};
use crate::sources::hr::{self, HrError};
use crate::sources::hr_drop;
use crate::store;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use std::collections::BTreeSet;
use std::path::Path;

/// The quarantine field that marks a whole file set aside (rather than one row).
const FILE_FIELD: &str = "file";

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

impl Engine {
    /// Is this file, by name and content (its SHA-256, `digest`), the one the source's checkpoint
    /// names?
    pub(super) async fn is_checkpoint(
        &self,
        source: &str,
        path: &Path,
        digest: &str,
    ) -> Result<bool, EngineError> {
        let value = hr::checkpoint(&file_name(path), digest);
        Ok(store::checkpoint(self.store.pool(), source)
            .await?
            .as_deref()
            == Some(value.as_str()))
    }

    /// A file already set aside that is still in place (it could not be moved, or it is a
    /// source's single `path`): skipped until its content changes.
    pub(super) async fn skip_rejected(
        &self,
        source: &str,
        path: &Path,
        digest: &str,
    ) -> Result<Option<FeedReport>, EngineError> {
        if !store::file_rejected(self.store.pool(), source, &file_name(path), digest).await? {
            return Ok(None);
        }
        Ok(Some(FeedReport {
            source: source.to_string(),
            file: path.display().to_string(),
            rejected: Some("set aside earlier, unchanged since".to_string()),
            ..Default::default()
        }))
    }

    /// Set an unreadable file aside: moved to the source's `rejected/` folder with a reason file
    /// (a single `path` is left where it is), quarantined so `latchkey status` and the metrics show
    /// it, and audited. The checkpoint does not move, so the next file flows as if this one had
    /// never come.
    pub(super) async fn reject_hr_file(
        &self,
        source: &str,
        path: &Path,
        bytes: &[u8],
        error: &HrError,
    ) -> Result<FeedReport, EngineError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let name = file_name(path);
        let reason = error.to_string();
        let cfg = self.config.sources.hr.get(source);
        let moved_to = match cfg.and_then(|c| c.drop_dir.as_ref()) {
            Some(dir) => {
                let dir = self.config.resolve(dir);
                let into = hr_drop::rejected_dir(
                    &dir,
                    cfg.and_then(|c| c.rejected_dir.as_ref())
                        .map(|p| self.config.resolve(p)),
                );
                match hr_drop::set_aside(path, &into, &digest, &reason) {
                    Ok(p) => Some(p.display().to_string()),
                    Err(e) => {
                        // Still quarantined below, so it is skipped from now on.
                        tracing::error!(source, file = %path.display(), error = %e,
                            "cannot move an unreadable HR file out of the drop directory");
                        None
                    }
                }
            }
            None => None,
        };
        tracing::error!(source, file = %path.display(), reason = %reason,
            moved_to = moved_to.as_deref().unwrap_or("-"), "HR file set aside");
        let now = to_micros(self.clock.now());
        let mut tx = self.store.begin_write().await?;
        let q = Quarantined {
            source: source.to_string(),
            location: name.clone(),
            record_key: None,
            field: FILE_FIELD.to_string(),
            reason: reason.clone(),
            raw: moved_to.clone().unwrap_or_default(),
        };
        store::quarantine(&mut tx, &q, &digest, now).await?;
        audit::append(
            &mut tx,
            now,
            &format!("source:{source}"),
            "file.rejected",
            &name,
            &serde_json::json!({"reason": reason, "sha256": digest, "moved_to": moved_to}),
        )
        .await?;
        tx.commit().await?;
        Ok(FeedReport {
            source: source.to_string(),
            file: path.display().to_string(),
            rejected: Some(reason),
            ..Default::default()
        })
    }

    /// People in this feed end their absence, and their held disappearances are released (audited).
    pub(super) async fn release_returned(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        in_feed: &BTreeSet<PersonKey>,
        now: i64,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        for (id, key) in store::open_holds(conn, source).await? {
            if !in_feed.contains(&key) {
                continue;
            }
            if store::release_held_for(conn, source, &key, now).await? > 0 {
                report.released += 1;
                audit::append(
                    conn,
                    now,
                    &format!("source:{source}"),
                    "held.released",
                    &key,
                    &serde_json::json!({"held": id, "reason": "back in the current feed"}),
                )
                .await?;
            }
        }
        for a in store::absences(conn, source).await? {
            if in_feed.contains(&a.key) {
                store::clear_absence(conn, source, &a.key).await?;
            }
        }
        Ok(())
    }

    /// People missing from a feed that is not a mass disappearance: each counts one more feed
    /// missed, and becomes a leaver once past the source's grace. A person whose disappearance is
    /// held waits for the decision.
    pub(super) async fn settle_vanished(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        vanished: &[&PersonKey],
        now: DateTime<Utc>,
        report: &mut FeedReport,
    ) -> Result<(), EngineError> {
        let actor = format!("source:{source}");
        // Only HR feeds have a grace; other snapshot sources keep their immediate leavers.
        let grace = self.config.sources.hr.get(source).map_or(
            AbsentGrace {
                feeds: 1,
                hours: 0.0,
            },
            |s| s.absent_grace,
        );
        let held: BTreeSet<PersonKey> = store::open_holds(conn, source)
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        let now_us = to_micros(now);
        let mut leavers: Vec<&str> = Vec::new();
        for k in vanished {
            if held.contains(*k) {
                continue;
            }
            if !hr_drop::grace_is_none(grace) {
                let a = store::bump_absence(conn, source, k, now_us).await?;
                if !hr_drop::grace_over(a.feeds, a.since, grace, now_us) {
                    report.absent += 1;
                    if a.feeds == 1 {
                        audit::append(conn, now_us, &actor, "identity.absent", k,
                            &serde_json::json!({"grace_feeds": grace.feeds, "grace_hours": grace.hours}),
                        )
                        .await?;
                    }
                    continue;
                }
                store::clear_absence(conn, source, k).await?;
            }
            leavers.push(k.as_str());
        }
        // The leavers are read together, planned, and written together.
        let mut batch = Batch::load(conn, &leavers, now).await?;
        for k in &leavers {
            self.stage_disappearance(conn, &mut batch, source, k, &actor)
                .await?;
        }
        batch.flush(conn).await?;
        for k in leavers {
            tally(report, ChangeKind::Leaver, batch.applied_of(k));
        }
        Ok(())
    }
}
