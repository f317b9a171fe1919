//! The engine drives source changes through identity, policy and plan, one transaction per batch of
//! people, and advances a source's checkpoint only once everything the change caused is durable.

use crate::audit;
use crate::batch::Batch;
use crate::clock::{SharedClock, from_micros, to_micros};
use crate::config::Config;
use crate::identity::{self, Derived, SourceView};
use crate::live_policy::{LivePolicy, PolicyReload};
use crate::model::ChangeKind;
use crate::model::{Lifecycle, PersonRecord, RecordStatus};
use crate::plan::Applied;
use crate::policy::{Policy, PolicyError};
use crate::sources::hr::{self, HrError, HrMapping};
use crate::sources::hr_drop;
use crate::store::{self, IdentityRow, SourceRecordRow, Store, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;

mod evaluate;
mod hr_feed;
pub mod ldap;
mod mass_change;
pub mod scim;
mod snapshot;

pub use evaluate::{Evaluation, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Hr(#[from] HrError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("source `{0}` is not configured")]
    UnknownSource(String),
    #[error("held change {0} does not exist or was already decided")]
    NoSuchHeld(i64),
    #[error(
        "held change {id} was caused by {requested_by}: dual control needs someone else to approve it"
    )]
    DualControl { id: i64, requested_by: String },
    #[error("reconcile: {0}")]
    Reconcile(String),
    #[error("{0}")]
    Suspension(String),
}

/// What one feed did, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedReport {
    pub source: String,
    pub file: String,
    pub rows: usize,
    pub unchanged: usize,
    pub joiners: usize,
    pub movers: usize,
    pub leavers: usize,
    pub rehires: usize,
    pub other_changes: usize,
    pub quarantined: usize,
    pub held: usize,
    pub issues: u64,
    pub revokes: u64,
    pub skipped_same_file: bool,
    /// People missing from this feed who are still within their absence grace (not leavers yet).
    pub absent: usize,
    /// Held disappearances released because the person is back in this feed.
    pub released: usize,
    /// The file could not be read at all and was set aside, for this reason.
    pub rejected: Option<String>,
}

#[derive(Debug)]
pub struct Engine {
    pub store: Store,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    /// The policy in force, following the templates file (see [`crate::live_policy`]).
    policy: LivePolicy,
    /// The store's wake-up for the dispatcher (see `store::Tx`): a committed transaction that
    /// queued a command wakes it, so it starts at once.
    pub outbox_notify: Arc<Notify>,
    /// Prometheus metrics of this process, shared with the dispatcher and the HTTP server.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    mappings: BTreeMap<String, HrMapping>,
    /// The operator running this process's commands (`os:USER` for the CLI), recorded as who
    /// caused what they hold for approval; unset in the daemon, whose holds name their source.
    operator: std::sync::OnceLock<String>,
}

/// People per transaction: large enough to amortise commits, small enough that the first revokes
/// of a big feed reach the dispatcher quickly.
const BATCH: usize = 50;

fn record_hash(r: &PersonRecord) -> String {
    /// The record as it is hashed: every field in `PersonRecord`'s order, the location (file and
    /// line, which changes from feed to feed without the person changing) empty. Borrowed and
    /// written straight into the hasher: a 100,000-row feed hashes every row.
    #[derive(serde::Serialize)]
    struct Hashed<'a> {
        source: &'a str,
        key: &'a str,
        location: &'static str,
        status: &'a Option<crate::model::RecordStatus>,
        hire_date: &'a Option<chrono::NaiveDate>,
        termination_date: &'a Option<chrono::NaiveDate>,
        contract_end: &'a Option<chrono::NaiveDate>,
        site: &'a Option<String>,
        attrs: &'a BTreeMap<String, String>,
    }
    let mut hasher = Sha256::new();
    let hashed = Hashed {
        source: &r.source,
        key: &r.key,
        location: "",
        status: &r.status,
        hire_date: &r.hire_date,
        termination_date: &r.termination_date,
        contract_end: &r.contract_end,
        site: &r.site,
        attrs: &r.attrs,
    };
    // Writing into a hasher cannot fail, nor can serialising these fields.
    let _ = serde_json::to_writer(&mut hasher, &hashed);
    hex::encode(hasher.finalize())
}

impl Engine {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        policy: Arc<Policy>,
    ) -> Result<Self, EngineError> {
        let mut mappings = BTreeMap::new();
        for (name, src) in &config.sources.hr {
            mappings.insert(
                name.clone(),
                hr::load_mapping(&config.resolve(&src.mapping))?,
            );
        }
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new(&config));
        let policy = LivePolicy::new(
            policy,
            &config.resolve(&config.policy.templates),
            config.connectors.keys().cloned().collect(),
        );
        Ok(Self {
            outbox_notify: store.outbox_wakeup(),
            store,
            clock,
            config,
            policy,
            metrics,
            mappings,
            operator: std::sync::OnceLock::new(),
        })
    }

    /// Record `actor` as the operator behind this process's changes (set once).
    pub fn act_as(&self, actor: String) {
        let _ = self.operator.set(actor);
    }

    /// Who caused a change this process makes: its operator, or else `daemon_actor`.
    pub fn requester(&self, daemon_actor: &str) -> String {
        self.operator
            .get()
            .cloned()
            .unwrap_or_else(|| daemon_actor.to_string())
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// Look at the templates file while running (see [`crate::live_policy`]).
    pub fn reload_policy(&self) -> PolicyReload {
        let r = self.policy.reload();
        self.metrics.set_policy_refused(self.policy.refused());
        r
    }

    fn tz_of(&self) -> impl Fn(Option<&str>) -> chrono_tz::Tz + '_ {
        |site| self.config.timezone_of(site)
    }

    /// Every file an HR source has that was not applied yet: the one file when it changed, or the
    /// drop directory's files after the last one applied.
    pub async fn pending_hr_files(&self, source: &str) -> Result<Vec<PathBuf>, EngineError> {
        let cfg = self
            .config
            .sources
            .hr
            .get(source)
            .ok_or_else(|| EngineError::UnknownSource(source.to_string()))?;
        if let Some(p) = &cfg.path {
            return Ok(vec![self.config.resolve(p)]);
        }
        let Some(dir) = &cfg.drop_dir else {
            return Ok(vec![]);
        };
        let dir = self.config.resolve(dir);
        let last = store::checkpoint(self.store.pool(), source).await?;
        let last_name = last
            .as_deref()
            .and_then(|c| c.rsplit_once('@').map(|(n, _)| n.to_string()));
        let files = hr::feed_files(&dir).map_err(|source| HrError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(files
            .into_iter()
            .filter(|f| {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                // The last file applied is looked at again: the checkpoint holds its content
                // hash, so the same name rewritten with new content is applied, and an unchanged
                // file is skipped (see `apply_hr_file`).
                last_name.as_ref().is_none_or(|l| &name >= l)
            })
            .collect())
    }

    /// Apply every pending file of an HR source that is completely written. A file that cannot
    /// be read at all is set aside and the files after it still flow; a file still being written
    /// is left for a later tick and does not hold back a complete file after it.
    pub async fn run_hr_source(&self, source: &str) -> Result<Vec<FeedReport>, EngineError> {
        let cfg = self
            .config
            .sources
            .hr
            .get(source)
            .ok_or_else(|| EngineError::UnknownSource(source.to_string()))?;
        let mut out = Vec::new();
        for f in self.pending_hr_files(source).await? {
            let io = |e| HrError::Io {
                path: f.clone(),
                source: e,
            };
            if !hr_drop::is_complete(&f, cfg, self.clock.now()).map_err(io)? {
                continue;
            }
            let bytes = std::fs::read(&f).map_err(io)?;
            // Hashed once here: a large file's digest is most of what looking at it again costs.
            let digest = hex::encode(Sha256::digest(&bytes));
            // The last file applied is listed again on every tick; unchanged, it is passed over quietly.
            if cfg.drop_dir.is_some() && self.is_checkpoint(source, &f, &digest).await? {
                continue;
            }
            if let Some(report) = self.skip_rejected(source, &f, &digest).await? {
                out.push(report);
                continue;
            }
            match self.apply_hr_bytes(source, &f, &bytes).await {
                Ok(report) => out.push(report),
                Err(EngineError::Hr(e)) if hr_drop::is_unreadable(&e) => {
                    out.push(self.reject_hr_file(source, &f, &bytes, &e).await?);
                }
                Err(e) => return Err(e),
            }
        }
        let now = to_micros(self.clock.now()) as f64 / 1e6;
        // A source whose newest file was set aside has not delivered: let it look stalled.
        if out.last().is_none_or(|r| r.rejected.is_none()) {
            self.metrics.source_succeeded(source, now);
        }
        Ok(out)
    }

    /// Apply one full HR snapshot.
    pub async fn apply_hr_file(
        &self,
        source: &str,
        path: &Path,
    ) -> Result<FeedReport, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| HrError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        self.apply_hr_bytes(source, path, &bytes).await
    }

    /// Apply one full HR snapshot read from `path`, then give the memory its parse and compare
    /// took (the daemon's peak) back to the system.
    async fn apply_hr_bytes(
        &self,
        source: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<FeedReport, EngineError> {
        let applied = self.apply_hr_snapshot(source, path, bytes).await;
        crate::memory::release_free_memory();
        applied
    }

    /// Apply one full HR snapshot read from `path`. A file cut short is refused whole.
    async fn apply_hr_snapshot(
        &self,
        source: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<FeedReport, EngineError> {
        let mapping = self
            .mappings
            .get(source)
            .ok_or_else(|| EngineError::UnknownSource(source.to_string()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let feed = hr::parse_feed(source, &file_name, bytes, mapping)?;
        hr_drop::truncation(&file_name, bytes, mapping.delimiter)?;
        let checkpoint = hr::checkpoint(&file_name, &feed.digest);
        let mut report = FeedReport {
            source: source.to_string(),
            file: path.display().to_string(),
            rows: feed.rows,
            ..Default::default()
        };
        if store::checkpoint(self.store.pool(), source)
            .await?
            .as_deref()
            == Some(checkpoint.as_str())
        {
            report.skipped_same_file = true;
            report.unchanged = feed.records.len();
            return Ok(report);
        }
        let hold_above = self
            .config
            .sources
            .hr
            .get(source)
            .and_then(|s| s.mass_change_threshold)
            .unwrap_or(self.config.engine.mass_change_threshold);
        // A change in the file happened, at the latest, when the file landed (its modification
        // time): that is its trigger (or its effective date, when later), so the `detect` stage
        // shows the pickup and parse time (invariant 13).
        let landed_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .map(DateTime::<Utc>::from);
        let snapshot = feed.into_snapshot(source, &file_name, hold_above, landed_at);
        self.apply_snapshot(snapshot, &mut report).await?;
        Ok(report)
    }

    /// Store one source's new view of one person and plan what follows, on the caller's
    /// transaction: for sources that push single changes (SCIM, LDAP) and must answer only once the
    /// change and the commands it causes are durable. Returns the kind of change and what was enqueued.
    pub async fn apply_record_tx(
        &self,
        conn: &mut AnyConnection,
        r: &PersonRecord,
        now: DateTime<Utc>,
    ) -> Result<(ChangeKind, Applied), EngineError> {
        self.apply_record_changed_at_tx(conn, r, now, now).await
    }

    /// `apply_record_tx` for a change the source itself timestamps (a directory entry's
    /// `modifyTimestamp` / `whenChanged`): the record counts as observed then (never later than
    /// `now`), so a leaver's trigger is the change and the `detect` stage shows the source's delay.
    pub async fn apply_record_changed_at_tx(
        &self,
        conn: &mut AnyConnection,
        r: &PersonRecord,
        now: DateTime<Utc>,
        changed_at: DateTime<Utc>,
    ) -> Result<(ChangeKind, Applied), EngineError> {
        let mut batch = Batch::new(now);
        let kind = self.stage_record(conn, &mut batch, r, changed_at).await?;
        batch.flush(conn).await?;
        Ok((kind, batch.applied_of(&r.key)))
    }

    /// [`Engine::apply_record_changed_at_tx`] staged in `batch` (written when it is flushed): a
    /// feed applies many people on one transaction this way.
    // A root span: one trace per identity change, not per feed or request (see telemetry::tracing).
    #[tracing::instrument(name = "source.change", parent = None, skip_all, fields(source = %r.source, identity = %r.key))]
    pub async fn stage_record(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        r: &PersonRecord,
        changed_at: DateTime<Utc>,
    ) -> Result<ChangeKind, EngineError> {
        batch.person(conn, &r.key).await?;
        let now = batch.now();
        let hash = record_hash(r);
        let existing = batch.source_record(&r.source, &r.key);
        if existing.is_some_and(|e| e.hash == hash && e.disappeared_at.is_none()) {
            return Ok(ChangeKind::Unchanged);
        }
        let seen_at = to_micros(changed_at.min(now));
        let first_seen_at = existing.map_or(seen_at, |e| e.first_seen_at);
        batch.put_source_record(SourceRecordRow {
            source: r.source.clone(),
            key: r.key.clone(),
            hash,
            record: serde_json::to_string(r).unwrap_or_default(),
            first_seen_at,
            seen_at,
            disappeared_at: None,
        });
        batch.release_held(&r.source, &r.key);
        self.derive_and_plan(conn, batch, &r.key, &format!("source:{}", r.source))
            .await
    }

    /// A source says this person is gone (deleted, moved out of scope): a leaver, on the caller's
    /// transaction. Unlike a disappearance from a full feed, this is explicit and never held.
    pub async fn remove_record_tx(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Applied, EngineError> {
        self.apply_disappearance(conn, source, key, now, &format!("source:{source}"))
            .await
    }

    async fn apply_disappearance(
        &self,
        conn: &mut AnyConnection,
        source: &str,
        key: &str,
        now: DateTime<Utc>,
        actor: &str,
    ) -> Result<Applied, EngineError> {
        let mut batch = Batch::new(now);
        self.stage_disappearance(conn, &mut batch, source, key, actor)
            .await?;
        batch.flush(conn).await?;
        Ok(batch.applied_of(key))
    }

    /// The person is gone from `source`, staged in `batch`.
    #[tracing::instrument(name = "source.change", parent = None, skip_all, fields(source = %source, identity = %key, disappeared = true))]
    async fn stage_disappearance(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        source: &str,
        key: &str,
        actor: &str,
    ) -> Result<ChangeKind, EngineError> {
        batch.person(conn, key).await?;
        let Some(mut rec) = batch.source_record(source, key).cloned() else {
            return Ok(ChangeKind::NoIdentity);
        };
        rec.disappeared_at = Some(to_micros(batch.now()));
        batch.put_source_record(rec);
        self.derive_and_plan(conn, batch, key, actor).await
    }

    /// Approve (apply) or reject a held change.
    pub async fn decide(&self, id: i64, approve: bool, by: &str) -> Result<Applied, EngineError> {
        let now = self.clock.now();
        let mut tx = self.store.begin_write().await?;
        let held = store::held_change(&mut tx, id)
            .await?
            .filter(|h| h.status == "held")
            .ok_or(EngineError::NoSuchHeld(id))?;
        // Dual control: whoever caused a held change cannot also release it (rejecting is fine).
        if approve
            && let Some(requested_by) = &held.requested_by
            && crate::operators::same_person(&self.config, by, requested_by)
        {
            return Err(EngineError::DualControl {
                id,
                requested_by: requested_by.clone(),
            });
        }
        let status = if approve { "approved" } else { "rejected" };
        store::decide_held(&mut tx, id, status, by, to_micros(now)).await?;
        audit::append(
            &mut tx,
            to_micros(now),
            by,
            &format!("held.{status}"),
            &held.key,
            &serde_json::json!({"held": id, "source": held.source, "kind": held.kind}),
        )
        .await?;
        let applied = if approve {
            store::clear_absence(&mut tx, &held.source, &held.key).await?;
            self.apply_disappearance(&mut tx, &held.source, &held.key, now, by)
                .await?
        } else {
            Applied::default()
        };
        tx.commit().await?;
        Ok(applied)
    }

    /// Re-derive one identity from its source records and plan what follows. Returns the kind of
    /// change (joiner, mover, leaver, rehire, ...) and the commands enqueued.
    pub async fn reevaluate(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(ChangeKind, Applied), EngineError> {
        let mut batch = Batch::new(now);
        batch.person(conn, key).await?;
        let kind = self.derive_and_plan(conn, &mut batch, key, actor).await?;
        batch.flush(conn).await?;
        Ok((kind, batch.applied_of(key)))
    }

    /// [`Engine::reevaluate`] staged in `batch`, whose rows for `key` are read.
    #[tracing::instrument(name = "identity.reevaluate", skip_all, fields(identity = %key, change = tracing::field::Empty))]
    async fn derive_and_plan(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        key: &str,
        actor: &str,
    ) -> Result<ChangeKind, EngineError> {
        let now = batch.now();
        let views: Vec<SourceView> = batch
            .source_records_of(key)
            .iter()
            .filter_map(|s| {
                let record: PersonRecord = serde_json::from_str(&s.record).ok()?;
                Some(SourceView {
                    record,
                    observed_at: from_micros(s.seen_at),
                    disappeared_at: s.disappeared_at.map(from_micros),
                })
            })
            .collect();
        let Some(mut derived) =
            identity::derive(&views, now, self.tz_of(), &self.config.authority.attributes)
        else {
            return Ok(ChangeKind::NoIdentity);
        };
        for v in &views {
            if let Some(d) = v.record.contract_end {
                derived
                    .attrs
                    .entry("contract_end".into())
                    .or_insert_with(|| d.to_string());
            }
        }
        let before = batch.identity(key);
        let kind = change_kind(before, &derived);
        tracing::Span::current().record("change", kind.as_str());
        let now_us = to_micros(now);
        let row = IdentityRow {
            key: key.into(),
            lifecycle: derived.lifecycle,
            lifecycle_since: match before {
                Some(b) if b.lifecycle == derived.lifecycle => b.lifecycle_since,
                _ => to_micros(derived.effective_at),
            },
            attrs: derived
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            site: derived.site.clone(),
            next_change_at: derived.next_change_at.map(to_micros),
            updated_at: now_us,
        };
        let unchanged = before.is_some_and(|b| {
            b == &IdentityRow {
                updated_at: b.updated_at,
                ..row.clone()
            }
        });
        if !unchanged {
            let lifecycle_from = before.map(|b| b.lifecycle);
            batch.put_identity(row);
            batch.audit(
                now_us,
                actor,
                "identity.changed",
                key,
                serde_json::json!({
                    "change": kind,
                    "lifecycle_from": lifecycle_from,
                    "lifecycle_to": derived.lifecycle,
                    "effective_at": derived.effective_at,
                    "next_change_at": derived.next_change_at,
                }),
            );
        }
        self.plan_identity(conn, batch, key, &derived, kind, actor)
            .await?;
        Ok(kind)
    }

    /// Effective-dated work whose time has come: hires, terminations, contract ends, and the
    /// start and end of temporary access.
    pub async fn tick(&self) -> Result<Applied, EngineError> {
        let mut total = crate::access_requests::tick(self).await?;
        crate::door_migration::tick(self).await?;
        // A review's deadline must not hold up hires and terminations: a failure is reported and
        // the next pass tries again.
        if let Err(e) = crate::reviews::tick(self).await {
            tracing::error!(error = %e, "access review schedule failed; retried on the next pass");
        }
        loop {
            let now = self.clock.now();
            let due =
                store::identities_due(self.store.pool(), to_micros(now), BATCH as i64).await?;
            if due.is_empty() {
                break;
            }
            let mut tx = self.store.begin_write().await?;
            for key in &due {
                // Effective-dated work has no source span: each identity is its own trace.
                let (_, a) = tracing::Instrument::instrument(
                    self.reevaluate(&mut tx, key, "schedule", now),
                    tracing::info_span!(parent: None, "schedule.change", identity = %key),
                )
                .await?;
                total.issues += a.issues;
                total.revokes += a.revokes;
            }
            tx.commit().await?;
        }
        Ok(total)
    }

    /// What every identity would get issued and revoked now, without writing anything: the plan a
    /// full reconciliation would carry out, held revocations included (see [`crate::reconcile`]).
    pub async fn dry_run(&self) -> Result<crate::reconcile::ReconcilePlan, EngineError> {
        let now = self.clock.now();
        crate::reconcile::plan(self, now).await
    }
}

/// Whether a record says its person is leaving (terminated, or with an end date): such records
/// are applied first and their writes go ahead of the dispatcher's issues (invariant 3).
fn leaving(r: &PersonRecord) -> bool {
    r.status == Some(RecordStatus::Terminated)
        || r.termination_date.is_some()
        || r.attrs.contains_key(identity::EXPIRES_AT)
}

fn change_kind(before: Option<&IdentityRow>, after: &Derived) -> ChangeKind {
    let Some(b) = before else {
        // Someone first seen already gone was never given anything here.
        return match after.lifecycle {
            Lifecycle::Terminated => ChangeKind::AlreadyGone,
            _ => ChangeKind::Joiner,
        };
    };
    match (b.lifecycle, after.lifecycle) {
        (Lifecycle::Terminated, Lifecycle::Active | Lifecycle::PreHire) => ChangeKind::Rehire,
        (x, y) if x != y && y == Lifecycle::Terminated => ChangeKind::Leaver,
        (Lifecycle::PreHire, Lifecycle::Active) => ChangeKind::Joiner,
        (x, y) if x != y => ChangeKind::Lifecycle,
        _ => {
            let same = b.attrs.len() == after.attrs.len()
                && after
                    .attrs
                    .iter()
                    .all(|(k, v)| b.attr(k) == Some(v.as_str()));
            if same {
                ChangeKind::Reconcile
            } else {
                ChangeKind::Mover
            }
        }
    }
}

fn tally(report: &mut FeedReport, kind: ChangeKind, a: Applied) {
    match kind {
        ChangeKind::Joiner => report.joiners += 1,
        ChangeKind::Mover => report.movers += 1,
        ChangeKind::Leaver => report.leavers += 1,
        ChangeKind::Rehire => report.rehires += 1,
        _ => report.other_changes += 1,
    }
    report.issues += a.issues;
    report.revokes += a.revokes;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored hashes of every source record were made from the whole record as JSON with
    /// the location emptied: the borrowed form must give the same, or every person would look
    /// changed after an upgrade.
    #[test]
    fn record_hash_is_the_hash_of_the_record_without_its_location() {
        let r = PersonRecord {
            source: "hr".into(),
            key: "E1".into(),
            location: "hr-0001.csv:2".into(),
            status: Some(RecordStatus::Terminated),
            hire_date: chrono::NaiveDate::from_ymd_opt(2020, 1, 1),
            termination_date: None,
            contract_end: chrono::NaiveDate::from_ymd_opt(2027, 6, 30),
            site: Some("berlin".into()),
            attrs: [("department", "lab \"Ö\""), ("email", "e1@example.com")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut whole = r.clone();
        whole.location.clear();
        let expected = hex::encode(Sha256::digest(
            serde_json::to_string(&whole).unwrap_or_default().as_bytes(),
        ));
        assert_eq!(record_hash(&r), expected);
        let moved = PersonRecord {
            location: "hr-0002.csv:9".into(),
            ..r.clone()
        };
        assert_eq!(
            record_hash(&moved),
            expected,
            "the location is not the person"
        );
    }
}
