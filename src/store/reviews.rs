//! Access review campaigns, their items and the doors reviews withdrew (see `crate::reviews`).

use super::Result;
use crate::model::PersonKey;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

/// One campaign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CampaignRow {
    pub id: i64,
    pub name: String,
    /// target | tier | connector | manager
    pub scope_kind: String,
    pub scope_value: String,
    /// revoke | escalate
    pub on_deadline: String,
    /// open | escalated | closed
    pub status: String,
    pub started_by: String,
    pub started_at: i64,
    pub deadline_at: i64,
    pub closed_at: Option<i64>,
}

/// One holder of one door in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemRow {
    pub id: i64,
    pub campaign_id: i64,
    pub identity_key: PersonKey,
    pub connector: String,
    pub target: String,
    /// The template's name, or `request:ID`.
    pub template: String,
    /// template | request | emergency
    pub basis: String,
    /// None (undecided) | certified | revoked | escalated
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub note: Option<String>,
}

/// A door a review withdrew from a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawalRow {
    pub identity_key: PersonKey,
    pub connector: String,
    pub target: String,
    pub item_id: i64,
}

fn campaign(r: &AnyRow) -> Result<CampaignRow> {
    Ok(CampaignRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        scope_kind: r.try_get("scope_kind")?,
        scope_value: r.try_get("scope_value")?,
        on_deadline: r.try_get("on_deadline")?,
        status: r.try_get("status")?,
        started_by: r.try_get("started_by")?,
        started_at: r.try_get("started_at")?,
        deadline_at: r.try_get("deadline_at")?,
        closed_at: r.try_get("closed_at")?,
    })
}

fn item(r: &AnyRow) -> Result<ItemRow> {
    Ok(ItemRow {
        id: r.try_get("id")?,
        campaign_id: r.try_get("campaign_id")?,
        identity_key: r.try_get("identity_key")?,
        connector: r.try_get("connector")?,
        target: r.try_get("target")?,
        template: r.try_get("template")?,
        basis: r.try_get("basis")?,
        decision: r.try_get("decision")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        note: r.try_get("note")?,
    })
}

/// A new campaign (status `open`); returns its id.
pub async fn insert_campaign(conn: &mut AnyConnection, c: &CampaignRow) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO review_campaigns
             (name, scope_kind, scope_value, on_deadline, status, started_by, started_at, deadline_at)
         VALUES ($1, $2, $3, $4, 'open', $5, $6, $7) RETURNING id",
    )
    .bind(&c.name)
    .bind(&c.scope_kind)
    .bind(&c.scope_value)
    .bind(&c.on_deadline)
    .bind(&c.started_by)
    .bind(c.started_at)
    .bind(c.deadline_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

pub async fn insert_item(conn: &mut AnyConnection, i: &ItemRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO review_items (campaign_id, identity_key, connector, target, template, basis)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(i.campaign_id)
    .bind(&i.identity_key)
    .bind(&i.connector)
    .bind(&i.target)
    .bind(&i.template)
    .bind(&i.basis)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get_campaign(conn: &mut AnyConnection, id: i64) -> Result<Option<CampaignRow>> {
    sqlx::query("SELECT * FROM review_campaigns WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(campaign)
        .transpose()
}

pub async fn get_item(conn: &mut AnyConnection, id: i64) -> Result<Option<ItemRow>> {
    sqlx::query("SELECT * FROM review_items WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(item)
        .transpose()
}

/// The newest campaigns first.
pub async fn campaigns(pool: &AnyPool, limit: i64) -> Result<Vec<CampaignRow>> {
    sqlx::query("SELECT * FROM review_campaigns ORDER BY id DESC LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(campaign)
        .collect()
}

/// The latest campaign over a scope, if any (the schedule starts the next one from it).
pub async fn latest_of_scope(
    conn: &mut AnyConnection,
    scope_kind: &str,
    scope_value: &str,
) -> Result<Option<CampaignRow>> {
    sqlx::query(
        "SELECT * FROM review_campaigns WHERE scope_kind = $1 AND scope_value = $2
          ORDER BY started_at DESC, id DESC LIMIT 1",
    )
    .bind(scope_kind)
    .bind(scope_value)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(campaign)
    .transpose()
}

/// A campaign's items, by person and door.
pub async fn items(conn: &mut AnyConnection, campaign_id: i64) -> Result<Vec<ItemRow>> {
    sqlx::query(
        "SELECT * FROM review_items WHERE campaign_id = $1
          ORDER BY identity_key, connector, target",
    )
    .bind(campaign_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(item)
    .collect()
}

/// Open campaigns whose deadline has passed.
pub async fn past_deadline(pool: &AnyPool, now: i64) -> Result<Vec<CampaignRow>> {
    sqlx::query(
        "SELECT * FROM review_campaigns WHERE status = 'open' AND deadline_at <= $1
          ORDER BY deadline_at, id",
    )
    .bind(now)
    .fetch_all(pool)
    .await?
    .iter()
    .map(campaign)
    .collect()
}

/// Record a decision on an item still undecided (or escalated); false when someone decided it
/// first.
pub async fn decide_item(
    conn: &mut AnyConnection,
    id: i64,
    decision: &str,
    by: &str,
    note: Option<&str>,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE review_items SET decision = $2, decided_by = $3, decided_at = $4, note = $5
          WHERE id = $1 AND (decision IS NULL OR decision = 'escalated')",
    )
    .bind(id)
    .bind(decision)
    .bind(by)
    .bind(now)
    .bind(note)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Mark every undecided item of a campaign escalated; returns how many.
pub async fn escalate_undecided(
    conn: &mut AnyConnection,
    campaign_id: i64,
    now: i64,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE review_items SET decision = 'escalated', decided_by = 'schedule', decided_at = $2
          WHERE campaign_id = $1 AND decision IS NULL",
    )
    .bind(campaign_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Move a campaign from `from` to `to` (a conditional update: a second replica changes nothing).
pub async fn set_status(
    conn: &mut AnyConnection,
    id: i64,
    from: &str,
    to: &str,
    now: i64,
) -> Result<bool> {
    let closed_at = (to == "closed").then_some(now);
    let done = sqlx::query(
        "UPDATE review_campaigns SET status = $3, closed_at = $4 WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(closed_at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many items of a campaign are still to decide (undecided or escalated).
pub async fn pending_count(conn: &mut AnyConnection, campaign_id: i64) -> Result<i64> {
    Ok(sqlx::query(
        "SELECT COUNT(*) AS n FROM review_items
          WHERE campaign_id = $1 AND (decision IS NULL OR decision = 'escalated')",
    )
    .bind(campaign_id)
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?)
}

/// Withhold a door from a person (a review revoked it).
pub async fn withdraw(
    conn: &mut AnyConnection,
    w: &WithdrawalRow,
    by: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO review_withdrawals
             (identity_key, connector, target, item_id, withdrawn_by, withdrawn_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&w.identity_key)
    .bind(&w.connector)
    .bind(&w.target)
    .bind(w.item_id)
    .bind(by)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Give a person back a withdrawn door: policy wants it again if a template still gives it.
/// Returns how many withdrawals were lifted.
pub async fn lift(
    conn: &mut AnyConnection,
    key: &str,
    connector: &str,
    target: &str,
    by: &str,
    now: i64,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE review_withdrawals SET lifted_by = $4, lifted_at = $5
          WHERE identity_key = $1 AND connector = $2 AND target = $3 AND lifted_at IS NULL",
    )
    .bind(key)
    .bind(connector)
    .bind(target)
    .bind(by)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

pub(super) fn withdrawal(r: &AnyRow) -> Result<WithdrawalRow> {
    Ok(WithdrawalRow {
        identity_key: r.try_get("identity_key")?,
        connector: r.try_get("connector")?,
        target: r.try_get("target")?,
        item_id: r.try_get("item_id")?,
    })
}

/// The doors withheld from one person.
pub async fn withdrawn_of(conn: &mut AnyConnection, key: &str) -> Result<Vec<WithdrawalRow>> {
    sqlx::query(
        "SELECT * FROM review_withdrawals WHERE identity_key = $1 AND lifted_at IS NULL
          ORDER BY id",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(withdrawal)
    .collect()
}

/// Every door withheld from anyone (a small set: read once by a full reconciliation).
pub async fn all_withdrawn(pool: &AnyPool) -> Result<Vec<WithdrawalRow>> {
    sqlx::query("SELECT * FROM review_withdrawals WHERE lifted_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(withdrawal)
        .collect()
}

/// For the gauges: items still to decide in open or escalated campaigns, those of them past
/// their campaign's deadline, and the campaigns open or escalated.
pub async fn counts(pool: &AnyPool, now: i64) -> Result<(i64, i64, i64)> {
    let row = sqlx::query(
        "SELECT
           (SELECT COUNT(*) FROM review_items i JOIN review_campaigns c ON c.id = i.campaign_id
             WHERE c.status <> 'closed' AND (i.decision IS NULL OR i.decision = 'escalated')) AS pending,
           (SELECT COUNT(*) FROM review_items i JOIN review_campaigns c ON c.id = i.campaign_id
             WHERE c.status <> 'closed' AND c.deadline_at <= $1
               AND (i.decision IS NULL OR i.decision = 'escalated')) AS overdue,
           (SELECT COUNT(*) FROM review_campaigns WHERE status <> 'closed') AS campaigns",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok((
        row.try_get("pending")?,
        row.try_get("overdue")?,
        row.try_get("campaigns")?,
    ))
}

/// The holders of the doors a campaign covers, as the grants ledger has them: wanted or confirmed
/// present. `targets` empty means every door at `connector`.
pub async fn holders(
    pool: &AnyPool,
    connector: Option<&str>,
    targets: &[String],
) -> Result<Vec<super::GrantRow>> {
    let rows = match connector {
        Some(c) => {
            sqlx::query(
                "SELECT * FROM grants WHERE connector = $1
                   AND (desired = 'present' OR observed = 'present')
                 ORDER BY identity_key, connector, target",
            )
            .bind(c)
            .fetch_all(pool)
            .await?
        }
        None => {
            let mut all = Vec::new();
            for t in targets {
                all.extend(
                    sqlx::query(
                        "SELECT * FROM grants WHERE target = $1
                           AND (desired = 'present' OR observed = 'present')
                         ORDER BY target, connector, identity_key",
                    )
                    .bind(t)
                    .fetch_all(pool)
                    .await?,
                );
            }
            all
        }
    };
    rows.iter().map(super::read::<super::GrantRow>).collect()
}
