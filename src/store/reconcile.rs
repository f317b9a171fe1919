//! Reconciliation's state (migration 0011): the policy fingerprint, pages of identities and grants, decided holds.

use super::*;

/// The fingerprint the last full reconciliation ran against, and when.
pub async fn policy_state(pool: &AnyPool, name: &str) -> Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT fingerprint, reconciled_at FROM policy_state WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.try_get("fingerprint")?, r.try_get("reconciled_at")?)))
        .transpose()
}

pub async fn set_policy_state(
    conn: &mut AnyConnection,
    name: &str,
    fingerprint: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO policy_state (name, fingerprint, reconciled_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,
           reconciled_at = excluded.reconciled_at",
    )
    .bind(name)
    .bind(fingerprint)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One page of identities in key order, after `after` (exclusive): reconciliation streams them.
pub async fn identities_page(pool: &AnyPool, after: &str, limit: i64) -> Result<Vec<IdentityRow>> {
    sqlx::query(IDENTITIES_PAGE_SQL)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(IdentityRow::from_row)
        .collect()
}

/// Every ledger row of the identities whose keys lie in `first..=last`.
pub async fn grants_in_key_range(pool: &AnyPool, first: &str, last: &str) -> Result<Vec<GrantRow>> {
    sqlx::query(GRANTS_IN_KEY_RANGE_SQL)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

/// Held changes of this source and kind that an approver approved and that were not carried out yet.
pub async fn approved_holds(pool: &AnyPool, source: &str, kind: &str) -> Result<Vec<HeldRow>> {
    sqlx::query(
        "SELECT * FROM held_changes WHERE status = 'approved' AND source = $1 AND kind = $2 ORDER BY id",
    )
    .bind(source)
    .bind(kind)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<HeldRow>)
    .collect()
}

/// People whose held change of this source and kind an approver rejected under this policy
/// fingerprint: the decision stands until the policy changes.
pub async fn rejected_hold_keys(
    pool: &AnyPool,
    source: &str,
    kind: &str,
    fingerprint: &str,
) -> Result<Vec<PersonKey>> {
    sqlx::query(
        "SELECT DISTINCT key FROM held_changes
         WHERE status = 'rejected' AND source = $1 AND kind = $2 AND fingerprint = $3",
    )
    .bind(source)
    .bind(kind)
    .bind(fingerprint)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok(r.try_get("key")?))
    .collect()
}

/// An approval is used once: the change it allowed was carried out.
pub async fn mark_holds_executed(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE held_changes SET status = 'executed', decided_at = COALESCE(decided_at, $1)
         WHERE status = 'approved' AND source = $2 AND key = $3",
    )
    .bind(now)
    .bind(source)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
