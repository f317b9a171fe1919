//! Temporary access: a door for a person, for a window, with a reason, approved by someone other
//! than who asked (a contractor's week on the plant room, a service visit to the server room).
//!
//! A request is `requested`, then `approved` or `rejected` by an approver (dual control: never by
//! whoever asked). An approved request is `active` from the start of its window: its grant is then
//! wanted like a template's, so the door is issued through the normal outbox. At the window's end
//! the scheduler marks it `expired` and the grant is revoked unless a template grants the same door
//! anyway; latency counts from the end instant, so a replica that was down at that moment shows
//! the delay. An operator may end it early (`ended`). Requests that are never decided expire at
//! the end of their window too. State lives in the store, so starts and ends happen across
//! restarts, and every step is audited with its actor.
//!
//! Extending a grant is a new request for the same door with a later end.

use crate::audit;
use crate::clock::{from_micros, to_micros};
use crate::config::{Config, ConnectorKind};
use crate::engine::{Engine, EngineError, Evaluation};
use crate::model::ChangeKind;
use crate::model::{DesiredGrant, PersonKey};
use crate::plan::Applied;
use crate::store::{self, StoreError, access_requests::RequestRow};
use chrono::{DateTime, Duration, Utc};

/// The longest window one request may ask for: a longer need is a template, not an exception.
pub const MAX_WINDOW_DAYS: i64 = 31;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("request {0} does not exist")]
    NotFound(i64),
    #[error("request {id} is {status}: {action} needs it {needed}")]
    WrongState {
        id: i64,
        status: String,
        action: &'static str,
        needed: &'static str,
    },
    #[error(
        "request {id} was asked for by {requested_by}: dual control needs someone else to decide it"
    )]
    DualControl { id: i64, requested_by: String },
    #[error(
        "request {id} is for `{target}` in risk tier `{tier}`, which only {approvers} may approve"
    )]
    NotAnApprover {
        id: i64,
        target: String,
        tier: String,
        approvers: String,
    },
    #[error(
        "request {id}: {by} has already approved it; risk tier `{tier}` needs {needed} different approvers"
    )]
    AlreadyApproved {
        id: i64,
        by: String,
        tier: String,
        needed: u32,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What someone asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The person's key.
    pub person: PersonKey,
    pub connector: String,
    pub target: String,
    /// When the window opens (now when absent).
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: DateTime<Utc>,
    pub reason: String,
}

/// The grants the requests in force want: one per request, named `request:ID` as a template
/// would be, valid until the window's end.
pub fn desired(config: &Config, requests: &[RequestRow]) -> Vec<DesiredGrant> {
    requests
        .iter()
        .map(|r| DesiredGrant {
            connector: r.connector.clone(),
            target: r.target.clone(),
            credential: match config.connectors.get(&r.connector).map(|c| c.kind) {
                Some(ConnectorKind::Manual) => "physical_key".into(),
                _ => "app".into(),
            },
            template: format!("request:{}", r.id),
            window: None,
            valid_until: Some(from_micros(r.ends_at)),
        })
        .collect()
}

fn invalid(m: impl Into<String>) -> RequestError {
    RequestError::Invalid(m.into())
}

/// Record a request for temporary access, asked by `by`. Nothing is issued until an approver
/// approves it.
pub async fn ask(engine: &Engine, ask: &Ask, by: &str) -> Result<RequestRow, RequestError> {
    let now = engine.clock.now();
    // A door in a risk tier may allow a shorter window than the general one.
    let days = engine
        .config
        .tier_of(&ask.target)
        .and_then(|(_, t)| t.max_window_days)
        .map_or(MAX_WINDOW_DAYS, i64::from);
    let mut tx = engine.store.begin_write().await?;
    let row = insert_checked(
        engine,
        &mut tx,
        ask,
        by,
        Kind::Temporary,
        Duration::days(days),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Temporary,
    /// Break-glass; under the review rule, with the instant its review is due.
    Emergency {
        review_due_at: Option<i64>,
    },
}

/// Check what is asked (reason, connector, target, window, person) and record it as `requested`,
/// audited, on the caller's transaction.
async fn insert_checked(
    engine: &Engine,
    tx: &mut sqlx::AnyConnection,
    ask: &Ask,
    by: &str,
    kind: Kind,
    longest: Duration,
    now: DateTime<Utc>,
) -> Result<RequestRow, RequestError> {
    if ask.reason.trim().is_empty() {
        return Err(invalid("a request needs a reason"));
    }
    check_door(&engine.config, ask)?;
    let starts_at = check_window(&engine.config, ask, kind, longest, now)?;
    let now_us = to_micros(now);
    check_entitled(tx, ask).await?;
    let mut row = requested_row(ask, by, kind, starts_at, now_us);
    row.id = store::access_requests::insert(tx, &row).await?;
    let action = match kind {
        Kind::Temporary => "request.created",
        Kind::Emergency { .. } => "emergency.opened",
    };
    audit::append(
        tx,
        now_us,
        by,
        action,
        &row.identity_key,
        &serde_json::json!({
            "request": row.id, "kind": row.kind, "connector": row.connector, "target": row.target,
            "starts_at": starts_at, "ends_at": ask.ends_at, "reason": row.reason,
            "review_due_at": row.review_due_at.map(from_micros),
            "tier": engine.config.tier_of(&row.target).map(|(name, _)| name),
        }),
    )
    .await?;
    Ok(row)
}

/// The connector asked for is configured, and its target map (when it has one) names the door.
fn check_door(config: &Config, ask: &Ask) -> Result<(), RequestError> {
    let Some(connector) = config.connectors.get(&ask.connector) else {
        let known: Vec<&str> = config.connectors.keys().map(String::as_str).collect();
        return Err(invalid(format!(
            "unknown connector `{}`; configured: {}",
            ask.connector,
            known.join(", ")
        )));
    };
    if !connector.targets.is_empty() && !connector.targets.contains_key(&ask.target) {
        let some: Vec<&str> = connector
            .targets
            .keys()
            .take(10)
            .map(String::as_str)
            .collect();
        return Err(invalid(format!(
            "connector `{}` has no target `{}` in its target map (e.g. {})",
            ask.connector,
            ask.target,
            some.join(", ")
        )));
    }
    Ok(())
}

/// The window ends after it starts, has not ended, and lasts no longer than `longest`. Returns
/// when it starts.
fn check_window(
    config: &Config,
    ask: &Ask,
    kind: Kind,
    longest: Duration,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, RequestError> {
    let starts_at = ask.starts_at.unwrap_or(now);
    if ask.ends_at <= starts_at {
        return Err(invalid("the window must end after it starts"));
    }
    if ask.ends_at <= now {
        return Err(invalid("the window has already ended"));
    }
    if ask.ends_at - starts_at > longest {
        let tier = config
            .tier_of(&ask.target)
            .map(|(name, _)| format!(" (risk tier `{name}`)"))
            .unwrap_or_default();
        return Err(invalid(match kind {
            Kind::Temporary => format!(
                "a window for `{}`{tier} may last at most {} days; longer access belongs in a template",
                ask.target,
                longest.num_days()
            ),
            Kind::Emergency { .. } => format!(
                "an emergency at `{}`{tier} may last at most {} minutes (`max_minutes`)",
                ask.target,
                longest.num_minutes()
            ),
        }));
    }
    Ok(starts_at)
}

/// The person exists and is entitled to access at all.
async fn check_entitled(tx: &mut sqlx::AnyConnection, ask: &Ask) -> Result<(), RequestError> {
    let Some(person) = store::get_identity(tx, &ask.person).await? else {
        return Err(invalid(format!("no person with key `{}`", ask.person)));
    };
    if !person.lifecycle.entitled() {
        return Err(invalid(format!(
            "`{}` is {}: only people entitled to access can be given more",
            ask.person, person.lifecycle
        )));
    }
    Ok(())
}

/// The row of a new request, `requested` by `by`, not stored yet.
fn requested_row(
    ask: &Ask,
    by: &str,
    kind: Kind,
    starts_at: DateTime<Utc>,
    now_us: i64,
) -> RequestRow {
    let (kind_name, review_due_at) = match kind {
        Kind::Temporary => ("temporary", None),
        Kind::Emergency { review_due_at } => ("emergency", review_due_at),
    };
    RequestRow {
        id: 0,
        kind: kind_name.into(),
        identity_key: ask.person.clone(),
        connector: ask.connector.clone(),
        target: ask.target.clone(),
        reason: ask.reason.trim().to_string(),
        starts_at: to_micros(starts_at),
        ends_at: to_micros(ask.ends_at),
        status: "requested".into(),
        requested_by: by.to_string(),
        requested_at: now_us,
        decided_by: None,
        decided_at: None,
        closed_by: None,
        closed_at: None,
        review_due_at,
        reviewed_by: None,
        reviewed_at: None,
        review: None,
    }
}

/// Break-glass: give `person` a door now, for `minutes` (the configured default when absent), as
/// the approver `by`. Under `[break_glass] rule = "review"` it is in force at once and another
/// approver must review it before the deadline; under `"two_approvers"` it waits for a second
/// approver like a temporary request. Either way it ends by itself at its time-to-live.
pub async fn open_emergency(
    engine: &Engine,
    emergency: &Ask,
    minutes: Option<u32>,
    by: &str,
) -> Result<(RequestRow, Applied), RequestError> {
    use crate::config::BreakGlassRule;
    // A door in a risk tier follows its tier's rules.
    let rules = engine.config.break_glass_for(&emergency.target);
    let now = engine.clock.now();
    let minutes = minutes.unwrap_or(rules.default_minutes);
    let ask = Ask {
        starts_at: None,
        ends_at: now + Duration::minutes(i64::from(minutes)),
        ..emergency.clone()
    };
    let review_due_at = (rules.rule == BreakGlassRule::Review)
        .then(|| to_micros(now + Duration::hours(i64::from(rules.review_hours))));
    let longest = Duration::minutes(i64::from(rules.max_minutes));
    let mut tx = engine.store.begin_write().await?;
    let row = insert_checked(
        engine,
        &mut tx,
        &ask,
        by,
        Kind::Emergency { review_due_at },
        longest,
        now,
    )
    .await?;
    let mut applied = Applied::default();
    if rules.rule == BreakGlassRule::Review {
        store::access_requests::decide(&mut tx, row.id, "approved", by, to_micros(now)).await?;
        applied = start(engine, &mut tx, &row, by, now).await?;
    }
    tx.commit().await?;
    tracing::warn!(
        request = row.id,
        person = %row.identity_key,
        target = %row.target,
        by,
        "break-glass opened"
    );
    Ok((refetch(engine, row.id).await?, applied))
}

/// Record the post-event review of an emergency, by an approver other than who opened it.
pub async fn review(
    engine: &Engine,
    id: i64,
    note: &str,
    by: &str,
) -> Result<RequestRow, RequestError> {
    if note.trim().is_empty() {
        return Err(invalid(
            "a review needs a note: what happened and whether it was justified",
        ));
    }
    let now_us = to_micros(engine.clock.now());
    let mut tx = engine.store.begin_write().await?;
    let row = store::access_requests::get(&mut tx, id)
        .await?
        .ok_or(RequestError::NotFound(id))?;
    if row.kind != "emergency" || row.review_due_at.is_none() || row.reviewed_at.is_some() {
        return Err(RequestError::WrongState {
            id,
            status: if row.reviewed_at.is_some() {
                "reviewed".into()
            } else {
                format!("{} ({})", row.status, row.kind)
            },
            action: "reviewing",
            needed: "an emergency awaiting review",
        });
    }
    if crate::operators::same_person(&engine.config, by, &row.requested_by) {
        return Err(RequestError::DualControl {
            id,
            requested_by: row.requested_by,
        });
    }
    store::access_requests::mark_reviewed(&mut tx, id, by, note.trim(), now_us).await?;
    audit::append(
        &mut tx,
        now_us,
        by,
        "emergency.reviewed",
        &row.identity_key,
        &serde_json::json!({
            "request": id, "opened_by": row.requested_by, "note": note.trim(),
            "late": row.review_due_at.is_some_and(|d| d < now_us),
        }),
    )
    .await?;
    tx.commit().await?;
    refetch(engine, id).await
}

/// Approve or reject a request as `by`; refused to whoever asked for it. An approved request
/// whose window has begun is in force at once.
pub async fn decide(
    engine: &Engine,
    id: i64,
    approve: bool,
    by: &str,
) -> Result<(RequestRow, Applied), RequestError> {
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    let row = store::access_requests::get(&mut tx, id)
        .await?
        .ok_or(RequestError::NotFound(id))?;
    if row.status != "requested" {
        return Err(RequestError::WrongState {
            id,
            status: row.status,
            action: if approve { "approving" } else { "rejecting" },
            needed: "requested",
        });
    }
    if approve && crate::operators::same_person(&engine.config, by, &row.requested_by) {
        return Err(RequestError::DualControl {
            id,
            requested_by: row.requested_by,
        });
    }
    // A first approval where the risk tier needs more is durable on its own; the request stays
    // `requested` until another approver decides it.
    if tier_approval_recorded(engine, &mut tx, &row, approve, by, now_us).await? {
        tx.commit().await?;
        return Ok((refetch(engine, id).await?, Applied::default()));
    }
    let status = if approve { "approved" } else { "rejected" };
    store::access_requests::decide(&mut tx, id, status, by, now_us).await?;
    audit::append(
        &mut tx,
        now_us,
        by,
        &format!("request.{status}"),
        &row.identity_key,
        &serde_json::json!({"request": id, "connector": row.connector, "target": row.target}),
    )
    .await?;
    let mut applied = Applied::default();
    if approve && row.starts_at <= now_us && now_us < row.ends_at {
        applied = start(engine, &mut tx, &row, by, now).await?;
    }
    tx.commit().await?;
    let row = refetch(engine, id).await?;
    Ok((row, applied))
}

/// A risk tier's rules for deciding `row` as `by`, on the caller's transaction: only the tier's
/// named approvers may decide it, and a tier that needs more than one approver records a first
/// approval of a temporary request, audited. Returns whether the request waits for another
/// approver.
async fn tier_approval_recorded(
    engine: &Engine,
    tx: &mut sqlx::AnyConnection,
    row: &RequestRow,
    approve: bool,
    by: &str,
    now_us: i64,
) -> Result<bool, RequestError> {
    let id = row.id;
    let Some((tier_name, tier)) = engine.config.tier_of(&row.target) else {
        return Ok(false);
    };
    let person = crate::operators::person_of(&engine.config, by);
    let named = tier
        .approvers
        .iter()
        .any(|a| person == format!("operator:{a}"));
    if !tier.approvers.is_empty() && !named {
        return Err(RequestError::NotAnApprover {
            id,
            target: row.target.clone(),
            tier: tier_name.to_string(),
            approvers: tier.approvers.join(", "),
        });
    }
    // A tier that needs two approvers: the first approval is recorded and the request waits
    // for a second person. An emergency's second person is its approver already.
    if !(approve && tier.approvals > 1 && row.kind == "temporary") {
        return Ok(false);
    }
    if !store::access_requests::add_approval(tx, id, &person, by, now_us).await? {
        return Err(RequestError::AlreadyApproved {
            id,
            by: by.to_string(),
            tier: tier_name.to_string(),
            needed: tier.approvals,
        });
    }
    let so_far = store::access_requests::approvals(tx, id).await?;
    if (so_far.len() as u32) >= tier.approvals {
        return Ok(false);
    }
    audit::append(
        tx,
        now_us,
        by,
        "request.approval_recorded",
        &row.identity_key,
        &serde_json::json!({
            "request": id, "connector": row.connector, "target": row.target,
            "tier": tier_name, "approvals": so_far, "needed": tier.approvals,
        }),
    )
    .await?;
    Ok(true)
}

/// End a request early (before or during its window), as `by`: its grant is revoked unless a
/// template grants the same door.
pub async fn end(
    engine: &Engine,
    id: i64,
    by: &str,
) -> Result<(RequestRow, Applied), RequestError> {
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    let row = store::access_requests::get(&mut tx, id)
        .await?
        .ok_or(RequestError::NotFound(id))?;
    if !store::access_requests::close(&mut tx, id, "ended", by, now_us).await? {
        return Err(RequestError::WrongState {
            id,
            status: row.status,
            action: "ending",
            needed: "requested, approved or active",
        });
    }
    audit::append(
        &mut tx,
        now_us,
        by,
        "request.ended",
        &row.identity_key,
        &serde_json::json!({"request": id, "connector": row.connector, "target": row.target}),
    )
    .await?;
    let why = Evaluation {
        kind: ChangeKind::RequestEnded,
        actor: by,
        hold_revokes: false,
        trigger_at: now,
    };
    let applied = engine
        .evaluate(&mut tx, &row.identity_key, &why, now)
        .await?;
    tx.commit().await?;
    Ok((refetch(engine, id).await?, applied))
}

async fn refetch(engine: &Engine, id: i64) -> Result<RequestRow, RequestError> {
    let mut conn = engine
        .store
        .pool()
        .acquire()
        .await
        .map_err(StoreError::from)?;
    store::access_requests::get(&mut conn, id)
        .await?
        .ok_or(RequestError::NotFound(id))
}

/// Put an approved request in force on the caller's transaction and issue its grant.
async fn start(
    engine: &Engine,
    conn: &mut sqlx::AnyConnection,
    row: &RequestRow,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Applied, EngineError> {
    if !store::access_requests::activate(conn, row.id).await? {
        return Ok(Applied::default());
    }
    audit::append(
        conn,
        to_micros(now),
        actor,
        "request.activated",
        &row.identity_key,
        &serde_json::json!({"request": row.id, "connector": row.connector, "target": row.target, "ends_at": from_micros(row.ends_at)}),
    )
    .await?;
    let why = Evaluation {
        kind: ChangeKind::TemporaryAccess,
        actor,
        hold_revokes: false,
        trigger_at: from_micros(row.starts_at).max(from_micros(row.requested_at)),
    };
    engine.evaluate(conn, &row.identity_key, &why, now).await
}

/// The schedule's part: requests whose window opened are put in force, and those whose window
/// closed expire and their grants are revoked. Runs under the effective-dated lease, so one
/// replica does it; after a restart it picks up whatever came due meanwhile.
pub async fn tick(engine: &Engine) -> Result<Applied, EngineError> {
    let mut total = Applied::default();
    loop {
        let now = engine.clock.now();
        let now_us = to_micros(now);
        let due = store::access_requests::due(engine.store.pool(), now_us, 200).await?;
        if due.is_empty() {
            return Ok(total);
        }
        let mut tx = engine.store.begin_write().await?;
        for row in &due {
            let a = if row.ends_at <= now_us {
                if !store::access_requests::close(&mut tx, row.id, "expired", "schedule", now_us)
                    .await?
                {
                    continue;
                }
                audit::append(
                    &mut tx,
                    now_us,
                    "schedule",
                    "request.expired",
                    &row.identity_key,
                    &serde_json::json!({"request": row.id, "connector": row.connector, "target": row.target, "was": row.status, "ends_at": from_micros(row.ends_at)}),
                )
                .await?;
                let why = Evaluation {
                    kind: ChangeKind::Expiry,
                    actor: "schedule",
                    hold_revokes: false,
                    trigger_at: from_micros(row.ends_at),
                };
                engine
                    .evaluate(&mut tx, &row.identity_key, &why, now)
                    .await?
            } else {
                start(engine, &mut tx, row, "schedule", now).await?
            };
            total.issues += a.issues;
            total.revokes += a.revokes;
        }
        tx.commit().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_wants_its_door_until_its_end() {
        let config: Config = toml::from_str(
            "version = 1\n[store]\nurl = \"sqlite://x.db\"\n[policy]\ntemplates = \"t.toml\"\n",
        )
        .unwrap();
        let row = RequestRow {
            id: 7,
            kind: "temporary".into(),
            identity_key: "E1".into(),
            connector: "nuki".into(),
            target: "plant-room".into(),
            reason: "boiler service".into(),
            starts_at: 0,
            ends_at: 3_600_000_000,
            status: "active".into(),
            requested_by: "os:dana".into(),
            requested_at: 0,
            decided_by: Some("os:sam".into()),
            decided_at: Some(0),
            closed_by: None,
            closed_at: None,
            review_due_at: None,
            reviewed_by: None,
            reviewed_at: None,
            review: None,
        };
        let d = desired(&config, &[row]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].template.as_str(),
                d[0].target.as_str(),
                d[0].credential.as_str()
            ),
            ("request:7", "plant-room", "app")
        );
        assert_eq!(d[0].valid_until, Some(from_micros(3_600_000_000)));
    }
}
