//! Access review campaigns: list, start, read with items, decide an item, export the evidence.

use crate::api::ApiState;
use crate::api::admin::Problem;
use crate::clock::rfc3339 as time;
use crate::config::OnDeadline;
use crate::operators::Operator;
use crate::reviews::{self, Decision, ReviewError, Scope};
use crate::store;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewCampaign {
    pub id: i64,
    pub name: String,
    /// `target` | `tier` | `connector` | `manager`
    pub scope: String,
    /// The door, tier, connector or manager the campaign covers.
    pub value: String,
    /// What happens to undecided items at the deadline: `revoke` | `escalate`
    pub on_deadline: String,
    /// `open` | `escalated` | `closed`
    pub status: String,
    pub started_by: String,
    pub started_at: String,
    pub deadline: String,
    pub closed_at: Option<String>,
    /// Items nobody has certified or revoked yet.
    pub pending: i64,
    /// The holders, each with why they hold the door and the decision (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ReviewItem>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewItem {
    pub id: i64,
    pub person: String,
    pub connector: String,
    pub target: String,
    /// Why the person holds it: the template's name, or `request:ID`.
    pub template: String,
    /// `template` | `request` | `emergency`
    pub basis: String,
    /// `certified` | `revoked` | `escalated`; absent while undecided.
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub note: Option<String>,
}

impl From<store::reviews::ItemRow> for ReviewItem {
    fn from(i: store::reviews::ItemRow) -> Self {
        Self {
            id: i.id,
            person: i.identity_key.into(),
            connector: i.connector,
            target: i.target,
            template: i.template,
            basis: i.basis,
            decision: i.decision,
            decided_by: i.decided_by,
            decided_at: i.decided_at.map(time),
            note: i.note,
        }
    }
}

fn campaign_view(
    c: store::reviews::CampaignRow,
    pending: i64,
    items: Option<Vec<ReviewItem>>,
) -> ReviewCampaign {
    ReviewCampaign {
        id: c.id,
        name: c.name,
        scope: c.scope_kind,
        value: c.scope_value,
        on_deadline: c.on_deadline,
        status: c.status,
        started_by: c.started_by,
        started_at: time(c.started_at),
        deadline: time(c.deadline_at),
        closed_at: c.closed_at.map(time),
        pending,
        items,
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewReview {
    /// `target` | `tier` | `connector` | `manager`
    pub scope: String,
    /// The door, tier, connector or manager's key.
    pub value: String,
    /// The deadline (RFC 3339).
    pub deadline: String,
    /// `revoke` (default) or `escalate`.
    pub on_deadline: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReviewDecision {
    /// `certify` or `revoke`.
    pub decision: String,
    /// Why; required to revoke.
    pub note: Option<String>,
}

pub(crate) fn review_problem(e: ReviewError) -> Problem {
    match e {
        ReviewError::Invalid(_) => Problem::bad_request(e.to_string()),
        ReviewError::NoCampaign(_) | ReviewError::NoItem(_) => Problem::not_found(e.to_string()),
        ReviewError::Decided { .. } | ReviewError::Closed { .. } => {
            Problem::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        other => Problem::internal(other),
    }
}

/// Campaigns, newest first, with how many items each has still to decide.
pub async fn review_campaigns(s: &ApiState, limit: usize) -> Result<Vec<ReviewCampaign>, Problem> {
    let limit = limit.clamp(1, crate::api::admin::MAX_LIMIT) as i64;
    let pool = s.engine.store.pool();
    let mut conn = pool.acquire().await?;
    let mut out = Vec::new();
    for c in store::reviews::campaigns(pool, limit).await? {
        let pending = store::reviews::pending_count(&mut conn, c.id).await?;
        out.push(campaign_view(c, pending, None));
    }
    Ok(out)
}

/// One campaign with its items.
pub async fn review_campaign(s: &ApiState, id: i64) -> Result<ReviewCampaign, Problem> {
    let mut conn = s.engine.store.pool().acquire().await?;
    let c = store::reviews::get_campaign(&mut conn, id)
        .await?
        .ok_or_else(|| review_problem(ReviewError::NoCampaign(id)))?;
    let items: Vec<ReviewItem> = store::reviews::items(&mut conn, id)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    let pending = items
        .iter()
        .filter(|i| matches!(i.decision.as_deref(), None | Some("escalated")))
        .count() as i64;
    Ok(campaign_view(c, pending, Some(items)))
}

/// Start a campaign as `op`.
pub async fn start_review(
    s: &ApiState,
    op: &Operator,
    r: &NewReview,
) -> Result<ReviewCampaign, Problem> {
    let value = r.value.trim().to_string();
    if value.is_empty() {
        return Err(Problem::bad_request(
            "`value`: name the door, tier, connector or manager",
        ));
    }
    let scope = match r.scope.trim() {
        "target" => Scope::Target(value),
        "tier" => Scope::Tier(value),
        "connector" => Scope::Connector(value),
        "manager" => Scope::Manager(value),
        other => {
            return Err(Problem::bad_request(format!(
                "`scope`: `{other}` is not one of target, tier, connector, manager"
            )));
        }
    };
    let deadline = chrono::DateTime::parse_from_rfc3339(r.deadline.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            Problem::bad_request(format!(
                "`deadline`: `{}` is not an RFC 3339 time: {e}",
                r.deadline
            ))
        })?;
    let on_deadline = match r.on_deadline.as_deref().map(str::trim) {
        None | Some("") => OnDeadline::default(),
        Some(v) => OnDeadline::parse(v).ok_or_else(|| {
            Problem::bad_request(format!(
                "`on_deadline`: `{v}` is not one of revoke, escalate"
            ))
        })?,
    };
    let start = reviews::Start {
        name: r.name.clone(),
        scope,
        deadline,
        on_deadline,
    };
    let (c, _) = reviews::start(&s.engine, &start, &op.actor())
        .await
        .map_err(review_problem)?;
    review_campaign(s, c.id).await
}

/// Certify or revoke one item as `op`.
pub async fn decide_review_item(
    s: &ApiState,
    op: &Operator,
    item: i64,
    d: &ReviewDecision,
) -> Result<ReviewItem, Problem> {
    let decision = match d.decision.trim() {
        "certify" => Decision::Certify,
        "revoke" => Decision::Revoke,
        other => {
            return Err(Problem::bad_request(format!(
                "`decision`: `{other}` is not one of certify, revoke"
            )));
        }
    };
    reviews::decide(&s.engine, item, decision, d.note.as_deref(), &op.actor())
        .await
        .map(|(i, _)| i.into())
        .map_err(review_problem)
}

/// A campaign's evidence: items, decisions and the audit records with their chain hashes.
pub async fn review_evidence(s: &ApiState, id: i64) -> Result<reviews::Evidence, Problem> {
    reviews::evidence(&s.engine, id)
        .await
        .map_err(review_problem)
}
