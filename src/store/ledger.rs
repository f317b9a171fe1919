//! The grant ledger (who holds what at which vendor, as last confirmed) and the people each vendor knows.

use super::*;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GrantRow {
    pub identity_key: PersonKey,
    pub connector: String,
    pub target: String,
    /// What policy wants: present or absent.
    #[sqlx(try_from = "String")]
    pub desired: GrantState,
    /// What the vendor last confirmed.
    #[sqlx(try_from = "String")]
    pub observed: GrantState,
    pub generation: i64,
    pub vendor_ref: Option<String>,
    pub template: String,
    pub credential: String,
    #[sqlx(rename = "time_window")]
    pub window: Option<String>,
    pub valid_until: Option<i64>,
    pub updated_at: i64,
}

pub async fn grants_of(conn: &mut AnyConnection, identity_key: &str) -> Result<Vec<GrantRow>> {
    sqlx::query(GRANTS_OF_SQL)
        .bind(identity_key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

pub async fn grant(
    conn: &mut AnyConnection,
    identity_key: &str,
    connector: &str,
    target: &str,
) -> Result<Option<GrantRow>> {
    sqlx::query("SELECT * FROM grants WHERE identity_key = $1 AND connector = $2 AND target = $3")
        .bind(identity_key)
        .bind(connector)
        .bind(target)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<GrantRow>(&r))
        .transpose()
}

pub async fn grants_on_target(pool: &AnyPool, target: &str) -> Result<Vec<GrantRow>> {
    sqlx::query("SELECT * FROM grants WHERE target = $1 ORDER BY connector, identity_key")
        .bind(target)
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

/// Whether any grant, present or past, is on record for `target`.
pub async fn target_on_record(pool: &AnyPool, target: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM grants WHERE target = $1 LIMIT 1")
            .bind(target)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// One page of the people a vendor confirmed holding `target`, by person, and how many there are
/// in all (index `grants_by_target`).
pub async fn holders_page(
    pool: &AnyPool,
    target: &str,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<GrantRow>)> {
    let total: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM grants WHERE target = $1 AND observed = 'present'")
            .bind(target)
            .fetch_one(pool)
            .await?
            .try_get("n")?;
    let rows = sqlx::query(
        "SELECT * FROM grants WHERE target = $1 AND observed = 'present'
          ORDER BY target, connector, identity_key LIMIT $2 OFFSET $3",
    )
    .bind(target)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<GrantRow>)
    .collect::<Result<Vec<_>>>()?;
    Ok((total, rows))
}

pub async fn all_grants(pool: &AnyPool) -> Result<Vec<GrantRow>> {
    sqlx::query("SELECT * FROM grants ORDER BY connector, target, identity_key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

pub async fn put_grant(conn: &mut AnyConnection, g: &GrantRow) -> Result<()> {
    let q = sqlx::query(
        "INSERT INTO grants (identity_key, connector, target, desired, observed, generation, vendor_ref,
           template, credential, time_window, valid_until, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (identity_key, connector, target) DO UPDATE SET desired = excluded.desired,
           observed = excluded.observed, generation = excluded.generation, vendor_ref = excluded.vendor_ref,
           template = excluded.template, credential = excluded.credential, time_window = excluded.time_window,
           valid_until = excluded.valid_until, updated_at = excluded.updated_at",
    );
    bind_grant(q, g).execute(&mut *conn).await?;
    Ok(())
}

/// A ledger row's twelve columns, bound in the order of the `grants` INSERTs here and in
/// [`super::batch::put_decided_grants`].
pub(super) fn bind_grant<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    g: &'q GrantRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(&g.identity_key)
        .bind(&g.connector)
        .bind(&g.target)
        .bind(g.desired.as_str())
        .bind(g.observed.as_str())
        .bind(g.generation)
        .bind(&g.vendor_ref)
        .bind(&g.template)
        .bind(&g.credential)
        .bind(&g.window)
        .bind(g.valid_until)
        .bind(g.updated_at)
}

/// Record what the vendor confirmed. This is a fact about the vendor, kept even if policy has moved
/// on meanwhile: the newer decision's own command reads it.
pub async fn observe_grant(
    conn: &mut AnyConnection,
    cmd: &CommandRow,
    observed: GrantState,
    vendor_ref: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE grants SET observed = $1, vendor_ref = COALESCE($2, vendor_ref), updated_at = $3
         WHERE identity_key = $4 AND connector = $5 AND target = $6",
    )
    .bind(observed.as_str())
    .bind(vendor_ref)
    .bind(now)
    .bind(&cmd.identity_key)
    .bind(&cmd.connector)
    .bind(&cmd.target)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn vendor_person(
    conn: &mut AnyConnection,
    connector: &str,
    key: &str,
) -> Result<Option<String>> {
    let row = sqlx::query(
        "SELECT vendor_ref FROM vendor_people WHERE connector = $1 AND identity_key = $2",
    )
    .bind(connector)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok(r.try_get("vendor_ref")?)).transpose()
}

pub async fn put_vendor_person(
    conn: &mut AnyConnection,
    connector: &str,
    key: &str,
    vref: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vendor_people (connector, identity_key, vendor_ref) VALUES ($1, $2, $3)
         ON CONFLICT (connector, identity_key) DO UPDATE SET vendor_ref = excluded.vendor_ref",
    )
    .bind(connector)
    .bind(key)
    .bind(vref)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
