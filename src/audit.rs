//! The audit log: every state change writes one record in the same transaction as the change
//! (invariant 6). Records are hash-chained: each hash covers the previous hash and the record, so an
//! edited, inserted or deleted row breaks the chain at that point, and `latchkey audit verify` names it.
//!
//! A range of the chain can be exported with its manifest and verified offline ([`export`]),
//! forwarded to a SIEM from a durable cursor ([`forward`]), and old rows pruned while the chain
//! stays verifiable from an anchor ([`prune`]).

pub mod export;
pub mod forward;

use crate::store::audit::{self as sql, AuditFilter, AuditRow};
use crate::store::{self, StoreError};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Append one record, in the caller's transaction.
///
/// On PostgreSQL the record goes to `audit_pending`, and a deferred trigger chains the
/// transaction's records at commit (migration 0013): the `audit_head` row is then the last lock a
/// writer takes, held only while it commits, so writers that lock grants or commands in different
/// orders cannot deadlock through it. On SQLite, which has one writer at a time, the head is
/// updated in place: it serialises nothing that is not serialised already.
pub async fn append(
    conn: &mut AnyConnection,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &serde_json::Value,
) -> Result<(), StoreError> {
    append_all(
        conn,
        vec![Entry {
            at,
            actor: actor.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            details: details.to_string(),
        }],
    )
    .await
}

/// One record to append: what happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
}

/// Append records in the order given, in the caller's transaction, many per statement (see
/// [`append`]): on SQLite the chain is computed here from the head read once.
pub async fn append_all(conn: &mut AnyConnection, entries: Vec<Entry>) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let postgres = conn.backend_name() == "PostgreSQL";
    let (mut seq, mut prev_hash) = if postgres {
        (0, String::new())
    } else {
        sql::take_next_seq(conn).await?
    };
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        let hash = if postgres {
            String::new()
        } else {
            record_hash(
                &prev_hash, seq, e.at, &e.actor, &e.action, &e.subject, &e.details,
            )
        };
        let row = AuditRow {
            seq,
            at: e.at,
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            details: e.details,
            prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        };
        seq += 1;
        rows.push(row);
    }
    if postgres {
        sql::append_pending_all(conn, &rows).await
    } else {
        sql::insert_chained_all(conn, &rows).await
    }
}

/// SHA-256 of the previous hash and the record's fields, each field preceded by a zero byte, as
/// lowercase hex. Migration 0013 computes the same in PostgreSQL.
pub fn record_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for part in [
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        subject,
        details,
    ] {
        h.update([0u8]);
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The hash a row should carry, from its own previous hash.
pub fn row_hash(r: &AuditRow) -> String {
    record_hash(
        &r.prev_hash,
        r.seq,
        r.at,
        &r.actor,
        &r.action,
        &r.subject,
        &r.details,
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: i64 },
    Broken { seq: i64, reason: String },
}

/// Walk the stored chain from its anchor (the start, or the last pruned record). Streams rows, so
/// a long log needs no memory.
pub async fn verify(store: &store::Store) -> Result<Verdict, StoreError> {
    use futures::TryStreamExt;
    let (anchor_seq, anchor_hash) = sql::anchor(store.pool()).await?;
    let mut rows = std::pin::pin!(sql::stream_after(store.pool(), anchor_seq));
    let anchor_hash_seen = anchor_hash.clone();
    let mut prev = anchor_hash;
    let mut expected_seq = anchor_seq + 1;
    // The anchor is written with an `audit.pruned` record in the same transaction, and that
    // record is chained: a forged anchor (moved to hide deleted records) disagrees with it.
    let mut last_pruned: Option<(i64, serde_json::Value)> = None;
    while let Some(r) = rows.try_next().await? {
        if r.action == "audit.pruned" {
            last_pruned = Some((r.seq, serde_json::from_str(&r.details).unwrap_or_default()));
        }
        if r.seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!("record {expected_seq} is missing (next is {})", r.seq),
            });
        }
        if r.prev_hash != prev {
            return Ok(Verdict::Broken {
                seq: r.seq,
                reason: if r.seq == anchor_seq + 1 && anchor_seq > 0 {
                    format!(
                        "previous-hash link does not match the retention anchor (record {anchor_seq})"
                    )
                } else {
                    "previous-hash link does not match the record before it".into()
                },
            });
        }
        if row_hash(&r) != r.hash {
            return Ok(Verdict::Broken {
                seq: r.seq,
                reason: "content does not match its hash (edited after it was written)".into(),
            });
        }
        prev = r.hash;
        expected_seq += 1;
    }
    if anchor_seq > 0 {
        let named = last_pruned
            .as_ref()
            .map(|(_, d)| (d["anchor_seq"].as_i64(), d["anchor_hash"].as_str()));
        if named != Some((Some(anchor_seq), Some(anchor_hash_seen.as_str()))) {
            return Ok(Verdict::Broken {
                seq: anchor_seq,
                reason: format!(
                    "the retention anchor (record {anchor_seq}) is not the one the last `audit.pruned` record names{}",
                    last_pruned
                        .map(|(s, _)| format!(" (record {s})"))
                        .unwrap_or_default()
                ),
            });
        }
    }
    let (head_seq, _) = sql::head(store.pool()).await?;
    if head_seq != expected_seq - 1 {
        return Ok(Verdict::Broken {
            seq: expected_seq,
            reason: format!(
                "log ends at {} but {head_seq} records were written (tail deleted)",
                expected_seq - 1
            ),
        });
    }
    Ok(Verdict::Intact {
        records: expected_seq - 1 - anchor_seq,
    })
}

#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        Self {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            details: r.details,
        }
    }
}

/// The newest records about one subject, newest first.
pub async fn records_about(
    store: &store::Store,
    subject: &str,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let filter = AuditFilter {
        subject: Some(subject.to_string()),
        ..Default::default()
    };
    query(store, &filter, limit).await
}

/// The newest records matching `filter`, newest first.
pub async fn query(
    store: &store::Store,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    Ok(sql::find(store, filter, limit)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

/// How many records match `filter`.
pub async fn count(store: &store::Store, filter: &AuditFilter) -> Result<i64, StoreError> {
    sql::count(store, filter).await
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub records: u64,
    /// The new anchor's seq (unchanged when nothing was pruned).
    pub anchor_seq: i64,
}

/// Delete records written before `before` (microseconds), never past `keep_from` (the first seq
/// a forwarding sink has not had yet), and keep the last deleted record's seq and hash as the
/// anchor the rest of the chain verifies from. The anchor and the deletion commit together.
pub async fn prune(
    store: &store::Store,
    before: i64,
    keep_from: Option<i64>,
    now: i64,
) -> Result<Pruned, StoreError> {
    let mut tx = store.begin_write().await?;
    let Some((mut seq, mut hash)) = sql::last_before(&mut tx, before).await? else {
        tx.rollback().await?;
        return Ok(Pruned::default());
    };
    if let Some(keep) = keep_from
        && seq >= keep
    {
        // Keep what a sink has not had yet: prune only up to the record before it.
        match sql::last_before_seq(&mut tx, keep).await? {
            Some((s, h)) => (seq, hash) = (s, h),
            None => {
                tx.rollback().await?;
                return Ok(Pruned::default());
            }
        }
    }
    let records = sql::prune_through(&mut tx, seq, &hash, now).await?;
    append(
        &mut tx,
        now,
        "retention",
        "audit.pruned",
        "audit",
        &serde_json::json!({"records": records, "anchor_seq": seq, "anchor_hash": hash}),
    )
    .await?;
    tx.commit().await?;
    Ok(Pruned {
        records,
        anchor_seq: seq,
    })
}

/// The newest records (of one subject, when given), newest first.
pub async fn recent_records(
    store: &store::Store,
    subject: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let filter = AuditFilter {
        subject: subject.map(str::to_string),
        ..Default::default()
    };
    query(store, &filter, limit).await
}
