//! The audit log: every state change writes one record in the same transaction as the change
//! (invariant 6). Records are hash-chained: each hash covers the previous hash and the record, so an
//! edited, inserted or deleted row breaks the chain at that point, and `latchkey audit verify` names it.

use crate::store::{self, StoreError};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::Row;

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
    let details = details.to_string();
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query(
            "INSERT INTO audit_pending (at, actor, action, subject, details)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(&details)
        .execute(&mut *conn)
        .await?;
        return Ok(());
    }
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *conn)
        .await?;
    let seq: i64 = head.try_get("seq")?;
    let prev: String = head.try_get("hash")?;
    let hash = record_hash(&prev, seq, at, actor, action, subject, &details);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn record_hash(
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: i64 },
    Broken { seq: i64, reason: String },
}

/// Walk the chain from the start. Streams rows, so a long log needs no memory.
pub async fn verify(store: &store::Store) -> Result<Verdict, StoreError> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch(store.pool());
    let mut prev = "0".repeat(64);
    let mut expected_seq = 1i64;
    while let Some(r) = rows.try_next().await? {
        let seq: i64 = r.try_get("seq")?;
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!("record {expected_seq} is missing (next is {seq})"),
            });
        }
        let stored_prev: String = r.try_get("prev_hash")?;
        if stored_prev != prev {
            return Ok(Verdict::Broken {
                seq,
                reason: "previous-hash link does not match the record before it".into(),
            });
        }
        let at: i64 = r.try_get("at")?;
        let actor: String = r.try_get("actor")?;
        let action: String = r.try_get("action")?;
        let subject: String = r.try_get("subject")?;
        let details: String = r.try_get("details")?;
        let hash: String = r.try_get("hash")?;
        if record_hash(&prev, seq, at, &actor, &action, &subject, &details) != hash {
            return Ok(Verdict::Broken {
                seq,
                reason: "content does not match its hash (edited after it was written)".into(),
            });
        }
        prev = hash;
        expected_seq += 1;
    }
    drop(rows);
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(store.pool())
        .await?;
    let head_seq: i64 = head.try_get("seq")?;
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
        records: expected_seq - 1,
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

pub async fn records_about(
    store: &store::Store,
    subject: &str,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM audit_log WHERE subject = $1 ORDER BY seq DESC LIMIT $2")
        .bind(subject)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRecord {
                seq: r.try_get("seq")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                subject: r.try_get("subject")?,
                details: r.try_get("details")?,
            })
        })
        .collect()
}

/// The newest records (of one subject, when given), newest first.
pub async fn recent_records(
    store: &store::Store,
    subject: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM audit_log WHERE ($1 IS NULL OR subject = $1) ORDER BY seq DESC LIMIT $2",
    )
    .bind(subject)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRecord {
                seq: r.try_get("seq")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                subject: r.try_get("subject")?,
                details: r.try_get("details")?,
            })
        })
        .collect()
}

/// How many records there are (of one subject, when given).
pub async fn count_records(store: &store::Store, subject: Option<&str>) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE ($1 IS NULL OR subject = $1)")
        .bind(subject)
        .fetch_one(store.pool())
        .await?;
    Ok(row.try_get("n")?)
}
