//! Moving a door from one connector to another, door by door: the plant room from mechanical keys
//! to a smart lock, a floor from one vendor to the next.
//!
//! `latchkey migrate TARGET --from OLD --to NEW` plans it (who holds the old credential, what will
//! be issued, how many keys must come back) and, with `--apply`, starts it. From then on every
//! grant the templates give for the old connector's target is wanted at the new connector's target
//! instead, so the new credential is issued to everyone entitled through the normal outbox, and the
//! old one revoked: a mechanical key gets a return task, and its revocation is confirmed when the
//! key is checked in. The migration closes by itself once no old credential is out. The move stays
//! in force after that, so a joiner gets the new credential, until the templates name the new
//! connector themselves. Every step is audited.

use crate::audit;
use crate::clock::to_micros;
use crate::engine::{Engine, EngineError, Evaluation};
use crate::model::ChangeKind;
use crate::model::GrantState;
use crate::model::{DesiredGrant, PersonKey};
use crate::plan::Applied;
use crate::store::{self, door_moves::DoorMoveRow};

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What is to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Door {
    pub from_connector: String,
    pub from_target: String,
    pub to_connector: String,
    pub to_target: String,
}

/// What starting a migration would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovePlan {
    pub door: Door,
    /// Everyone entitled to the door now: each gets the new credential.
    pub holders: Vec<PersonKey>,
    /// Of those, how many hold the old credential (a mechanical key out: a return task each).
    pub old_out: usize,
}

/// Grants the templates want at a moved door, wanted at its new connector instead.
pub fn rewrite(moves: &[DoorMoveRow], desired: &mut [DesiredGrant]) {
    for d in desired.iter_mut() {
        if let Some(m) = moves
            .iter()
            .find(|m| m.from_connector == d.connector && m.from_target == d.target)
        {
            d.connector.clone_from(&m.to_connector);
            d.target.clone_from(&m.to_target);
            if d.credential == "physical_key" {
                d.credential = "app".into();
            }
        }
    }
}

fn invalid(m: impl Into<String>) -> MoveError {
    MoveError::Invalid(m.into())
}

/// Check the move and list who it concerns; writes nothing.
pub async fn plan(engine: &Engine, door: &Door) -> Result<MovePlan, MoveError> {
    let connectors = &engine.config.connectors;
    let known = || connectors.keys().cloned().collect::<Vec<_>>().join(", ");
    if !connectors.contains_key(&door.from_connector) {
        return Err(invalid(format!(
            "unknown connector `{}` (--from); configured: {}",
            door.from_connector,
            known()
        )));
    }
    let Some(to) = connectors.get(&door.to_connector) else {
        return Err(invalid(format!(
            "unknown connector `{}` (--to); configured: {}",
            door.to_connector,
            known()
        )));
    };
    if door.from_connector == door.to_connector && door.from_target == door.to_target {
        return Err(invalid("the door would move onto itself"));
    }
    if !to.targets.is_empty() && !to.targets.contains_key(&door.to_target) {
        return Err(invalid(format!(
            "connector `{}` has no target `{}` in its target map: add the new lock's id there first",
            door.to_connector, door.to_target
        )));
    }
    let pool = engine.store.pool();
    if let Some(m) = store::door_moves::all(pool)
        .await?
        .into_iter()
        .find(|m| m.from_connector == door.from_connector && m.from_target == door.from_target)
    {
        return Err(invalid(format!(
            "`{}` at `{}` already moved to `{}` at `{}` (migration {}, {})",
            m.from_target, m.from_connector, m.to_target, m.to_connector, m.id, m.status
        )));
    }
    let grants: Vec<_> = store::grants_on_target(pool, &door.from_target)
        .await?
        .into_iter()
        .filter(|g| g.connector == door.from_connector)
        .collect();
    let holders = grants
        .iter()
        .filter(|g| g.desired == GrantState::Present)
        .map(|g| g.identity_key.clone())
        .collect();
    let old_out = grants
        .iter()
        .filter(|g| g.observed == GrantState::Present)
        .count();
    Ok(MovePlan {
        door: door.clone(),
        holders,
        old_out,
    })
}

/// Start the migration as `by`: every holder's grants are evaluated again with the door moved, so
/// the new credential is issued and the old one revoked (a key gets its return task).
pub async fn start(
    engine: &Engine,
    door: &Door,
    by: &str,
) -> Result<(i64, MovePlan, Applied), MoveError> {
    let plan = plan(engine, door).await?;
    let now = engine.clock.now();
    let now_us = to_micros(now);
    let mut tx = engine.store.begin_write().await?;
    let id = store::door_moves::insert(
        &mut tx,
        &DoorMoveRow {
            id: 0,
            from_connector: door.from_connector.clone(),
            from_target: door.from_target.clone(),
            to_connector: door.to_connector.clone(),
            to_target: door.to_target.clone(),
            status: "open".into(),
            started_by: by.to_string(),
            started_at: now_us,
            closed_at: None,
        },
    )
    .await?
    .ok_or_else(|| {
        invalid(format!(
            "`{}` at `{}` is already being moved: another migration of it started meanwhile (`latchkey migrations`)",
            door.from_target, door.from_connector
        ))
    })?;
    audit::append(
        &mut tx,
        now_us,
        by,
        "migration.started",
        &door.from_target,
        &serde_json::json!({
            "migration": id, "target": door.from_target, "from": door.from_connector,
            "to": door.to_connector, "to_target": door.to_target,
            "holders": plan.holders.len(), "keys_out": plan.old_out,
        }),
    )
    .await?;
    let why = Evaluation {
        kind: ChangeKind::Migration,
        actor: by,
        hold_revokes: false,
        trigger_at: now,
    };
    let mut applied = Applied::default();
    for key in &plan.holders {
        let a = engine.evaluate(&mut tx, key, &why, now).await?;
        applied.issues += a.issues;
        applied.revokes += a.revokes;
    }
    tx.commit().await?;
    Ok((id, plan, applied))
}

/// The schedule's part: an open migration with no old credential left out closes.
pub async fn tick(engine: &Engine) -> Result<usize, EngineError> {
    let pool = engine.store.pool();
    let mut closed = 0;
    for m in store::door_moves::all(pool).await? {
        if m.status != "open" {
            continue;
        }
        let p = store::door_moves::progress(pool, &m).await?;
        if p.old_outstanding > 0 || p.returns_open > 0 {
            continue;
        }
        let now_us = to_micros(engine.clock.now());
        let mut tx = engine.store.begin_write().await?;
        if store::door_moves::close(&mut tx, m.id, now_us).await? {
            audit::append(
                &mut tx,
                now_us,
                "schedule",
                "migration.closed",
                &m.from_target,
                &serde_json::json!({
                    "migration": m.id, "from": m.from_connector, "to": m.to_connector,
                    "to_target": m.to_target, "keys_returned": p.returns_done,
                    "new_confirmed": p.new_confirmed,
                }),
            )
            .await?;
            closed += 1;
        }
        tx.commit().await?;
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_door_is_wanted_at_its_new_connector_and_others_are_not_touched() {
        let m = DoorMoveRow {
            id: 1,
            from_connector: "keys".into(),
            from_target: "berlin-plant-room".into(),
            to_connector: "nuki".into(),
            to_target: "berlin-plant-room-lock".into(),
            status: "open".into(),
            started_by: "os:sam".into(),
            started_at: 0,
            closed_at: None,
        };
        let grant = |connector: &str, target: &str, credential: &str| DesiredGrant {
            connector: connector.into(),
            target: target.into(),
            credential: credential.into(),
            template: "plant-room".into(),
            window: None,
            valid_until: None,
        };
        let mut desired = vec![
            grant("keys", "berlin-plant-room", "physical_key"),
            grant("keys", "london-plant-room", "physical_key"),
            grant("nuki", "berlin-plant-room", "app"),
        ];
        rewrite(&[m], &mut desired);
        assert_eq!(
            (
                desired[0].connector.as_str(),
                desired[0].target.as_str(),
                desired[0].credential.as_str()
            ),
            ("nuki", "berlin-plant-room-lock", "app")
        );
        assert_eq!(desired[0].template, "plant-room");
        assert_eq!(desired[1].connector, "keys");
        assert_eq!(desired[2].target, "berlin-plant-room");
    }
}
