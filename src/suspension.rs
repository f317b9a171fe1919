//! Suspending a person's access: a lost phone, an investigation, a leave that HR has not recorded.
//!
//! An operator suspends a person at every connector (or some): their grants there are revoked at
//! leaver priority (the revoke lane, latency measured from the suspension like a leaver's from
//! their termination; mechanical keys raise a return task), and stay withheld whatever the feeds
//! say, until an operator resumes them, which re-issues what policy still grants, or the person
//! leaves, which ends the suspension. Every step is audited with its actor.

use crate::audit;
use crate::batch::Batch;
use crate::clock::to_micros;
use crate::engine::{Engine, EngineError};
use crate::model::ChangeKind;
use crate::model::{DesiredGrant, Lifecycle};
use crate::plan::Applied;
use crate::store::{self, suspensions::SuspensionRow};
use sqlx::AnyConnection;
use std::collections::BTreeSet;

/// Which connectors a person's active suspensions withhold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Connectors(BTreeSet<String>),
}

impl Scope {
    /// The union of the active suspensions' scopes; `None` when there is none.
    pub fn of(rows: &[SuspensionRow]) -> Option<Scope> {
        let mut named = BTreeSet::new();
        for r in rows {
            match &r.connectors {
                None => return Some(Scope::All),
                Some(c) => named.extend(c.iter().cloned()),
            }
        }
        (!rows.is_empty()).then_some(Scope::Connectors(named))
    }

    pub fn covers(&self, connector: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Connectors(c) => c.contains(connector),
        }
    }

    /// Drop the desired grants the suspension withholds.
    pub fn withhold(&self, desired: &mut Vec<DesiredGrant>) {
        desired.retain(|d| !self.covers(&d.connector));
    }
}

/// What policy wants for a person, less what an active suspension withholds; a leaver's
/// suspension ends (there is nothing left to withhold, and a rehire starts afresh).
pub(crate) async fn apply(
    conn: &mut AnyConnection,
    batch: &mut Batch,
    key: &str,
    lifecycle: Lifecycle,
    mut desired: Vec<DesiredGrant>,
    actor: &str,
) -> Result<Vec<DesiredGrant>, EngineError> {
    let rows = batch.suspensions_of(key);
    let Some(scope) = Scope::of(rows) else {
        return Ok(desired);
    };
    if lifecycle == Lifecycle::Terminated {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let now_us = to_micros(batch.now());
        store::suspensions::end(conn, key, actor, "left", now_us).await?;
        batch.suspensions_ended(key);
        batch.audit(
            now_us,
            actor,
            "identity.suspension_ended",
            key,
            serde_json::json!({"cause": "left", "suspensions": ids}),
        );
        return Ok(desired);
    }
    scope.withhold(&mut desired);
    Ok(desired)
}

/// Suspend a person's access at `connectors` (every connector when `None`), for `reason`, acted
/// by `by`: their grants there are revoked now and stay revoked until [`resume`].
pub async fn suspend(
    engine: &Engine,
    key: &str,
    connectors: Option<&[String]>,
    reason: &str,
    by: &str,
) -> Result<Applied, EngineError> {
    if reason.trim().is_empty() {
        return Err(EngineError::Suspension(
            "a suspension needs a reason (--reason)".into(),
        ));
    }
    if let Some(names) = connectors {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !engine.config.connectors.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if names.is_empty() || !unknown.is_empty() {
            let known: Vec<&str> = engine
                .config
                .connectors
                .keys()
                .map(String::as_str)
                .collect();
            return Err(EngineError::Suspension(format!(
                "unknown connector(s) `{}`; configured: {}",
                unknown.join("`, `"),
                known.join(", ")
            )));
        }
    }
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    if store::get_identity(&mut tx, key).await?.is_none() {
        return Err(EngineError::Suspension(format!(
            "no person with key `{key}`"
        )));
    }
    let id = store::suspensions::suspend(&mut tx, key, connectors, reason, by, now_us).await?;
    audit::append(
        &mut tx,
        now_us,
        by,
        "identity.suspended",
        key,
        &serde_json::json!({"suspension": id, "connectors": connectors, "reason": reason}),
    )
    .await?;
    let applied = engine
        .evaluate_stored(&mut tx, key, ChangeKind::Suspension, by, false, now)
        .await?;
    tx.commit().await?;
    Ok(applied)
}

/// End a person's suspensions and re-issue what policy still grants them.
pub async fn resume(
    engine: &Engine,
    key: &str,
    reason: Option<&str>,
    by: &str,
) -> Result<Applied, EngineError> {
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    let rows = store::suspensions::active_of(&mut tx, key).await?;
    if rows.is_empty() {
        return Err(EngineError::Suspension(format!("`{key}` is not suspended")));
    }
    store::suspensions::end(&mut tx, key, by, "resumed", now_us).await?;
    audit::append(
        &mut tx,
        now_us,
        by,
        "identity.resumed",
        key,
        &serde_json::json!({"suspensions": rows.iter().map(|r| r.id).collect::<Vec<_>>(), "reason": reason}),
    )
    .await?;
    let applied = engine
        .evaluate_stored(&mut tx, key, ChangeKind::Resume, by, false, now)
        .await?;
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(connectors: Option<&[&str]>) -> SuspensionRow {
        SuspensionRow {
            id: 1,
            identity_key: "E1".into(),
            connectors: connectors.map(|c| c.iter().map(|s| s.to_string()).collect()),
            reason: "lost phone".into(),
            suspended_by: "os:alice".into(),
            suspended_at: 0,
            ended_at: None,
            ended_by: None,
            end_cause: None,
        }
    }

    #[test]
    fn scopes_add_up_and_every_connector_wins() {
        assert_eq!(Scope::of(&[]), None);
        let some = Scope::of(&[row(Some(&["nuki"])), row(Some(&["kisi"]))]).unwrap();
        assert!(some.covers("nuki") && some.covers("kisi") && !some.covers("keys"));
        let all = Scope::of(&[row(Some(&["nuki"])), row(None)]).unwrap();
        assert_eq!(all, Scope::All);
        assert!(all.covers("keys"));
    }
}
