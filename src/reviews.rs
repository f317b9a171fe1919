//! Access reviews: certifying, on a schedule, who holds the sensitive doors.
//!
//! A campaign covers a door (target), a risk tier's doors, a connector's doors or a manager's
//! reports. When it starts it lists the current holders as items, each with why they hold it: a
//! template, a temporary request or an emergency. Reviewers (approvers) certify or revoke each
//! item. A revoked item ends any request that gave the door and withdraws the door from the
//! person, so a template that still gives it does not issue it again; the revocation goes through
//! the outbox like a leaver's and its latency counts from the decision. At the deadline the items
//! nobody decided follow the campaign's policy: revoked (access nobody vouched for ends), or
//! escalated (the campaign stays open and an alert fires until someone decides them). A campaign
//! closes when every item is decided. Tiers with `review_every_days` get campaigns started by the
//! schedule. Every step is audited; a campaign's evidence (its items, decisions and the audit
//! records with their chain hashes) exports as one document.

use crate::audit;
use crate::clock::{from_micros, to_micros};
use crate::config::OnDeadline;
use crate::engine::{Engine, EngineError, Evaluation};
use crate::model::ChangeKind;
use crate::model::DesiredGrant;
use crate::model::GrantState;
use crate::plan::Applied;
use crate::store::{self, StoreError, reviews::CampaignRow, reviews::ItemRow};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// The actor of the schedule's own steps.
const SCHEDULE: &str = "schedule";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{0}")]
    Invalid(String),
    #[error("review campaign {0} does not exist")]
    NoCampaign(i64),
    #[error("review item {0} does not exist")]
    NoItem(i64),
    #[error("review item {id} is already {decision}")]
    Decided { id: i64, decision: String },
    #[error("review campaign {id} is closed")]
    Closed { id: i64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn invalid(m: impl Into<String>) -> ReviewError {
    ReviewError::Invalid(m.into())
}

/// What a campaign covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One door, at whichever connector.
    Target(String),
    /// Every door of a risk tier.
    Tier(String),
    /// Every door at one connector.
    Connector(String),
    /// Every door held by the people whose `manager` attribute is this.
    Manager(String),
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Target(_) => "target",
            Scope::Tier(_) => "tier",
            Scope::Connector(_) => "connector",
            Scope::Manager(_) => "manager",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Scope::Target(v) | Scope::Tier(v) | Scope::Connector(v) | Scope::Manager(v) => v,
        }
    }
}

/// A campaign to start.
#[derive(Debug, Clone)]
pub struct Start {
    /// A name for people (default: the scope, e.g. `tier high`).
    pub name: Option<String>,
    pub scope: Scope,
    pub deadline: DateTime<Utc>,
    pub on_deadline: OnDeadline,
}

/// A reviewer's decision on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Certify,
    Revoke,
}

impl Decision {
    fn word(self) -> &'static str {
        match self {
            Decision::Certify => "certified",
            Decision::Revoke => "revoked",
        }
    }
}

/// Drop from what policy wants the doors a review withdrew; a request's grant (`request:ID`)
/// stays, since it was approved on its own.
pub fn withhold(withdrawn: &[store::reviews::WithdrawalRow], desired: &mut Vec<DesiredGrant>) {
    if withdrawn.is_empty() {
        return;
    }
    desired.retain(|d| {
        d.template.starts_with("request:")
            || !withdrawn
                .iter()
                .any(|w| w.connector == d.connector && w.target == d.target)
    });
}

/// Start a campaign as `by`: its items are the current holders of the doors it covers.
pub async fn start(
    engine: &Engine,
    start: &Start,
    by: &str,
) -> Result<(CampaignRow, Vec<ItemRow>), ReviewError> {
    let now = engine.clock.now();
    if start.deadline <= now {
        return Err(invalid("the deadline must be in the future"));
    }
    let holders = holders(engine, &start.scope).await?;
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    let mut campaign = new_campaign(start, by, now_us);
    campaign.id = store::reviews::insert_campaign(&mut tx, &campaign).await?;
    for g in &holders {
        let basis = basis_of(&mut tx, g).await?;
        store::reviews::insert_item(&mut tx, &new_item(campaign.id, g, basis)).await?;
    }
    audit::append(
        &mut tx,
        now_us,
        by,
        "review.started",
        &subject(campaign.id),
        &serde_json::json!({
            "campaign": campaign.id, "name": campaign.name, "scope": campaign.scope_kind,
            "value": campaign.scope_value, "deadline": start.deadline,
            "on_deadline": campaign.on_deadline, "items": holders.len(),
        }),
    )
    .await?;
    // Nobody holds these doors: that is the finding, and there is nothing to decide.
    if holders.is_empty() {
        close(&mut tx, &campaign, "open", by, now_us).await?;
    }
    tx.commit().await?;
    let mut conn = reader(engine).await?;
    let campaign = store::reviews::get_campaign(&mut conn, campaign.id)
        .await?
        .ok_or(ReviewError::NoCampaign(campaign.id))?;
    let items = store::reviews::items(&mut conn, campaign.id).await?;
    Ok((campaign, items))
}

/// The row of a campaign `by` starts, open, not stored yet; named after its scope unless given a
/// name.
fn new_campaign(start: &Start, by: &str, now_us: i64) -> CampaignRow {
    CampaignRow {
        id: 0,
        name: start
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{} {}", start.scope.kind(), start.scope.value())),
        scope_kind: start.scope.kind().into(),
        scope_value: start.scope.value().into(),
        on_deadline: start.on_deadline.as_str().into(),
        status: "open".into(),
        started_by: by.into(),
        started_at: now_us,
        deadline_at: to_micros(start.deadline),
        closed_at: None,
    }
}

/// Why a holder holds the door: a template, a temporary request or an emergency.
async fn basis_of(
    tx: &mut sqlx::AnyConnection,
    g: &store::GrantRow,
) -> Result<String, ReviewError> {
    Ok(match g.template.strip_prefix("request:") {
        None => "template".to_string(),
        Some(id) => match id.parse() {
            Ok(id) => {
                store::access_requests::get(tx, id)
                    .await?
                    .map_or("request".to_string(), |r| {
                        if r.kind == "emergency" {
                            "emergency".into()
                        } else {
                            "request".into()
                        }
                    })
            }
            Err(_) => "request".into(),
        },
    })
}

/// The undecided item of one holder in campaign `campaign_id`, not stored yet.
fn new_item(campaign_id: i64, g: &store::GrantRow, basis: String) -> ItemRow {
    ItemRow {
        id: 0,
        campaign_id,
        identity_key: g.identity_key.clone(),
        connector: g.connector.clone(),
        target: g.target.clone(),
        template: g.template.clone(),
        basis,
        decision: None,
        decided_by: None,
        decided_at: None,
        note: None,
    }
}

/// A connection for reading outside a write transaction.
async fn reader(engine: &Engine) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, ReviewError> {
    Ok(engine
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?)
}

/// The audit subject of a campaign's own records.
fn subject(id: i64) -> String {
    format!("review:{id}")
}

/// The grants a scope covers, wanted or confirmed present, with a check that the scope names
/// something configured.
async fn holders(engine: &Engine, scope: &Scope) -> Result<Vec<store::GrantRow>, ReviewError> {
    let pool = engine.store.pool();
    let config = &engine.config;
    Ok(match scope {
        Scope::Target(t) => {
            let known = config
                .connectors
                .values()
                .any(|c| c.targets.contains_key(t))
                || store::target_on_record(pool, t).await?;
            if !known {
                return Err(invalid(format!(
                    "no connector's target map names `{t}` and nobody holds it"
                )));
            }
            store::reviews::holders(pool, None, std::slice::from_ref(t)).await?
        }
        Scope::Tier(name) => {
            let Some(tier) = config.tiers.get(name) else {
                let known: Vec<&str> = config.tiers.keys().map(String::as_str).collect();
                return Err(invalid(format!(
                    "unknown tier `{name}`; configured: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            store::reviews::holders(pool, None, &tier.targets).await?
        }
        Scope::Connector(c) => {
            if !config.connectors.contains_key(c) {
                return Err(invalid(format!("unknown connector `{c}`")));
            }
            store::reviews::holders(pool, Some(c), &[]).await?
        }
        Scope::Manager(m) => {
            let mut out = Vec::new();
            let mut conn = reader(engine).await?;
            for key in store::reports_of(pool, m).await? {
                out.extend(
                    store::grants_of(&mut conn, &key)
                        .await?
                        .into_iter()
                        .filter(|g| {
                            g.desired == GrantState::Present || g.observed == GrantState::Present
                        }),
                );
            }
            if out.is_empty() && store::get_identity(&mut conn, m).await?.is_none() {
                return Err(invalid(format!(
                    "nobody reports to `{m}` and no person has that key"
                )));
            }
            out
        }
    })
}

/// Record a reviewer's decision on one item. Revoking withdraws the door from the person (and
/// ends any request that gave it), so it is revoked at the vendor through the outbox.
pub async fn decide(
    engine: &Engine,
    item_id: i64,
    decision: Decision,
    note: Option<&str>,
    by: &str,
) -> Result<(ItemRow, Applied), ReviewError> {
    let now = engine.clock.now();
    let mut tx = engine.store.begin_write().await?;
    let item = store::reviews::get_item(&mut tx, item_id)
        .await?
        .ok_or(ReviewError::NoItem(item_id))?;
    let campaign = store::reviews::get_campaign(&mut tx, item.campaign_id)
        .await?
        .ok_or(ReviewError::NoCampaign(item.campaign_id))?;
    if campaign.status == "closed" {
        return Err(ReviewError::Closed { id: campaign.id });
    }
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    if decision == Decision::Revoke && note.is_none() {
        return Err(invalid(
            "revoking needs a note: why this person should not hold the door",
        ));
    }
    let applied = record(engine, &mut tx, &item, decision, note, by, now).await?;
    close_if_done(&mut tx, &campaign, by, to_micros(now)).await?;
    tx.commit().await?;
    let mut conn = reader(engine).await?;
    let item = store::reviews::get_item(&mut conn, item_id)
        .await?
        .ok_or(ReviewError::NoItem(item_id))?;
    Ok((item, applied))
}

/// Decide one item on the caller's transaction and audit it; a revocation takes the door away.
async fn record(
    engine: &Engine,
    tx: &mut sqlx::AnyConnection,
    item: &ItemRow,
    decision: Decision,
    note: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Applied, ReviewError> {
    let now_us = to_micros(now);
    if !store::reviews::decide_item(tx, item.id, decision.word(), by, note, now_us).await? {
        let fresh = store::reviews::get_item(tx, item.id).await?;
        return Err(ReviewError::Decided {
            id: item.id,
            decision: fresh
                .and_then(|i| i.decision)
                .unwrap_or_else(|| "decided".into()),
        });
    }
    audit::append(
        tx,
        now_us,
        by,
        &format!("review.{}", decision.word()),
        &item.identity_key,
        &serde_json::json!({
            "campaign": item.campaign_id, "item": item.id, "connector": item.connector,
            "target": item.target, "basis": item.basis, "template": item.template, "note": note,
        }),
    )
    .await?;
    if decision == Decision::Certify {
        return Ok(Applied::default());
    }
    // Any request in force for this door ends; the door is withheld from the templates too.
    for r in store::access_requests::in_force_of(tx, &item.identity_key, now_us).await? {
        if r.connector == item.connector
            && r.target == item.target
            && store::access_requests::close(tx, r.id, "ended", by, now_us).await?
        {
            audit::append(
                tx,
                now_us,
                by,
                "request.ended",
                &r.identity_key,
                &serde_json::json!({"request": r.id, "connector": r.connector, "target": r.target, "review_item": item.id}),
            )
            .await?;
        }
    }
    store::reviews::withdraw(
        tx,
        &store::reviews::WithdrawalRow {
            identity_key: item.identity_key.clone(),
            connector: item.connector.clone(),
            target: item.target.clone(),
            item_id: item.id,
        },
        by,
        now_us,
    )
    .await?;
    let why = Evaluation {
        kind: ChangeKind::Review,
        actor: by,
        hold_revokes: false,
        trigger_at: now,
    };
    Ok(engine.evaluate(tx, &item.identity_key, &why, now).await?)
}

async fn close(
    tx: &mut sqlx::AnyConnection,
    campaign: &CampaignRow,
    from: &str,
    by: &str,
    now_us: i64,
) -> Result<(), ReviewError> {
    if store::reviews::set_status(tx, campaign.id, from, "closed", now_us).await? {
        audit::append(
            tx,
            now_us,
            by,
            "review.closed",
            &subject(campaign.id),
            &serde_json::json!({"campaign": campaign.id, "name": campaign.name}),
        )
        .await?;
    }
    Ok(())
}

async fn close_if_done(
    tx: &mut sqlx::AnyConnection,
    campaign: &CampaignRow,
    by: &str,
    now_us: i64,
) -> Result<(), ReviewError> {
    if store::reviews::pending_count(tx, campaign.id).await? == 0 {
        close(tx, campaign, &campaign.status, by, now_us).await?;
    }
    Ok(())
}

/// Give a person back a door a review withdrew (a mistake, or a new role): policy grants it again
/// if a template still does.
pub async fn reinstate(
    engine: &Engine,
    person: &str,
    connector: &str,
    target: &str,
    reason: &str,
    by: &str,
) -> Result<Applied, ReviewError> {
    if reason.trim().is_empty() {
        return Err(invalid("reinstating needs a reason"));
    }
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    if store::reviews::lift(&mut tx, person, connector, target, by, now_us).await? == 0 {
        return Err(invalid(format!(
            "no review withdrew `{target}` at `{connector}` from `{person}`"
        )));
    }
    audit::append(
        &mut tx,
        now_us,
        by,
        "review.reinstated",
        person,
        &serde_json::json!({"connector": connector, "target": target, "reason": reason.trim()}),
    )
    .await?;
    let why = Evaluation {
        kind: ChangeKind::Reinstated,
        actor: by,
        hold_revokes: false,
        trigger_at: now,
    };
    let applied = engine.evaluate(&mut tx, person, &why, now).await?;
    tx.commit().await?;
    Ok(applied)
}

/// What the schedule did to reviews in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticked {
    pub started: usize,
    pub revoked: usize,
    pub escalated: usize,
}

/// The schedule's part: start the tiers' periodic campaigns that are due, and apply each
/// campaign's deadline policy to the items nobody decided. Runs under the effective-dated lease,
/// and every step is a conditional update, so a second replica changes nothing.
pub async fn tick(engine: &Engine) -> Result<Ticked, ReviewError> {
    let mut done = Ticked::default();
    let now = engine.clock.now();
    for (name, tier) in &engine.config.tiers {
        let Some(every) = tier.review_every_days else {
            continue;
        };
        let mut conn = reader(engine).await?;
        let latest = store::reviews::latest_of_scope(&mut conn, "tier", name).await?;
        drop(conn);
        let due = latest
            .is_none_or(|c| from_micros(c.started_at) + Duration::days(i64::from(every)) <= now);
        if due {
            let (c, items) = start(
                engine,
                &Start {
                    name: Some(format!("tier {name}: scheduled review")),
                    scope: Scope::Tier(name.clone()),
                    deadline: now + Duration::days(i64::from(tier.review_days)),
                    on_deadline: tier.review_on_deadline,
                },
                SCHEDULE,
            )
            .await?;
            tracing::info!(campaign = c.id, tier = %name, items = items.len(), "access review started");
            done.started += 1;
        }
    }
    for campaign in store::reviews::past_deadline(engine.store.pool(), to_micros(now)).await? {
        let now_us = to_micros(now);
        let mut tx = engine.store.begin_write().await?;
        match OnDeadline::parse(&campaign.on_deadline).unwrap_or_default() {
            OnDeadline::Revoke => {
                let items = store::reviews::items(&mut tx, campaign.id).await?;
                for item in items.iter().filter(|i| i.decision.is_none()) {
                    match record(
                        engine,
                        &mut tx,
                        item,
                        Decision::Revoke,
                        Some("undecided at the deadline"),
                        SCHEDULE,
                        now,
                    )
                    .await
                    {
                        Ok(_) => done.revoked += 1,
                        // Decided meanwhile by a reviewer: their decision stands.
                        Err(ReviewError::Decided { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                close_if_done(&mut tx, &campaign, SCHEDULE, now_us).await?;
            }
            OnDeadline::Escalate => {
                let n = store::reviews::escalate_undecided(&mut tx, campaign.id, now_us).await?;
                if store::reviews::set_status(&mut tx, campaign.id, "open", "escalated", now_us)
                    .await?
                {
                    audit::append(
                        &mut tx,
                        now_us,
                        SCHEDULE,
                        "review.escalated",
                        &subject(campaign.id),
                        &serde_json::json!({"campaign": campaign.id, "name": campaign.name, "items": n}),
                    )
                    .await?;
                    done.escalated += n as usize;
                }
                close_if_done(&mut tx, &campaign, SCHEDULE, now_us).await?;
            }
        }
        tx.commit().await?;
    }
    Ok(done)
}

/// A campaign's evidence for an auditor: the campaign, every item with its decision, and the
/// audit records of its steps with their positions and hashes in the chain (`latchkey audit
/// verify` proves the chain; each record's hash ties it to its place).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub campaign: CampaignRow,
    pub items: Vec<ItemRow>,
    pub audit: Vec<EvidenceRecord>,
    /// The chain's head when the evidence was taken.
    pub chain_head: ChainHead,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

pub async fn evidence(engine: &Engine, id: i64) -> Result<Evidence, ReviewError> {
    let pool = engine.store.pool();
    let mut conn = reader(engine).await?;
    let campaign = store::reviews::get_campaign(&mut conn, id)
        .await?
        .ok_or(ReviewError::NoCampaign(id))?;
    let items = store::reviews::items(&mut conn, id).await?;
    drop(conn);
    let audit = store::audit::actions_since(pool, "review.", campaign.started_at)
        .await?
        .into_iter()
        .filter_map(|r| {
            let details: serde_json::Value = serde_json::from_str(&r.details).ok()?;
            (details.get("campaign").and_then(serde_json::Value::as_i64) == Some(id)).then(|| {
                EvidenceRecord {
                    seq: r.seq,
                    at: from_micros(r.at),
                    actor: r.actor,
                    action: r.action,
                    subject: r.subject,
                    details,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                }
            })
        })
        .collect();
    let (seq, hash) = store::audit::head(pool).await?;
    Ok(Evidence {
        campaign,
        items,
        audit,
        chain_head: ChainHead { seq, hash },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(template: &str, target: &str) -> DesiredGrant {
        DesiredGrant {
            connector: "nuki".into(),
            target: target.into(),
            credential: "app".into(),
            template: template.into(),
            window: None,
            valid_until: None,
        }
    }

    #[test]
    fn a_withdrawn_door_is_withheld_from_templates_but_not_from_an_approved_request() {
        let withdrawn = vec![store::reviews::WithdrawalRow {
            identity_key: "E1".into(),
            connector: "nuki".into(),
            target: "server-room".into(),
            item_id: 1,
        }];
        let mut desired = vec![
            grant("engineers", "server-room"),
            grant("engineers", "lobby"),
            grant("request:4", "server-room"),
        ];
        withhold(&withdrawn, &mut desired);
        let left: Vec<(&str, &str)> = desired
            .iter()
            .map(|d| (d.template.as_str(), d.target.as_str()))
            .collect();
        assert_eq!(
            left,
            vec![("engineers", "lobby"), ("request:4", "server-room")]
        );
    }
}
