//! Plan: desired grants against the grant ledger give issue and revoke commands.
//!
//! [`diff`] is pure (it is what `latchkey plan` prints); [`stage`] stages the ledger rows, the
//! commands and their audit records in the caller's [`Batch`], so a change and everything it
//! causes become durable together (invariants 1 and 6).

use crate::batch::Batch;
use crate::clock::to_micros;
use crate::model::ChangeKind;
use crate::model::GrantState;
use crate::model::{Action, DesiredGrant};
use crate::store::{self, GrantRow, NewCommand, StoreError};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Issue(DesiredGrant),
    Revoke(GrantRow),
}

impl Change {
    pub fn action(&self) -> Action {
        match self {
            Change::Issue(_) => Action::Issue,
            Change::Revoke(_) => Action::Revoke,
        }
    }

    pub fn connector(&self) -> &str {
        match self {
            Change::Issue(d) => &d.connector,
            Change::Revoke(g) => &g.connector,
        }
    }

    pub fn target(&self) -> &str {
        match self {
            Change::Issue(d) => &d.target,
            Change::Revoke(g) => &g.target,
        }
    }
}

/// What must change for `ledger` (one identity's rows) to match `desired`.
pub fn diff(desired: &[DesiredGrant], ledger: &[GrantRow]) -> Vec<Change> {
    let wanted = |c: &str, t: &str| desired.iter().any(|d| d.connector == c && d.target == t);
    let mut out: Vec<Change> = ledger
        .iter()
        .filter(|g| g.desired == GrantState::Present && !wanted(&g.connector, &g.target))
        .cloned()
        .map(Change::Revoke)
        .collect();
    // The same door wanted twice (a template and a temporary request) is issued once, for the
    // first that wants it.
    let mut seen = std::collections::BTreeSet::new();
    for d in desired {
        if !seen.insert((d.connector.as_str(), d.target.as_str())) {
            continue;
        }
        let held = ledger.iter().any(|g| {
            g.connector == d.connector && g.target == d.target && g.desired == GrantState::Present
        });
        if !held {
            out.push(Change::Issue(d.clone()));
        }
    }
    out
}

/// Why a change happened, and the times latency is measured from.
#[derive(Debug, Clone)]
pub struct Cause {
    pub kind: ChangeKind,
    /// The original trigger: the effective time of the change, or when it was first observed if later.
    pub trigger_at: DateTime<Utc>,
    /// When latchkey saw it.
    pub detected_at: DateTime<Utc>,
    pub actor: String,
}

impl Cause {
    /// The source label of the commands this cause enqueues. Actors are `source:<name>` for source
    /// changes (source names come from the configuration, so the set is bounded), `schedule` for
    /// effective-dated work, and an approver's name for an approved held change: names are not a
    /// bounded set, so every other actor counts as `approval`.
    pub fn source_label(&self) -> String {
        match self.actor.strip_prefix("source:") {
            Some(source) => source.to_string(),
            None if self.actor == "schedule" => "schedule".to_string(),
            None if self.actor == "reconcile" => "reconcile".to_string(),
            // An operator's own act (a suspension or resumption, a review's decision, a withdrawn
            // door given back, a request ended early): operator names are not a bounded set.
            None if self.kind.by_operator() => "operator".to_string(),
            None => "approval".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub issues: u64,
    pub revokes: u64,
}

/// Stage the changes for one identity in `batch` (written when it is flushed): the ledger rows,
/// the commands and their audit records, so a change and everything it causes become durable
/// together (invariants 1 and 6). A revoke supersedes the grant's issues still in the outbox at
/// once, on the caller's transaction.
#[tracing::instrument(name = "plan.apply", skip_all, fields(identity = %identity_key, change = %cause.kind, changes = changes.len()))]
pub async fn stage(
    conn: &mut AnyConnection,
    batch: &mut Batch,
    identity_key: &str,
    changes: &[Change],
    cause: &Cause,
    approver: impl Fn(&str) -> Option<String>,
) -> Result<(), StoreError> {
    let now = batch.now();
    let ledger = batch.grants_of(identity_key).to_vec();
    for change in changes {
        let existing = ledger
            .iter()
            .find(|g| g.connector == change.connector() && g.target == change.target());
        let write = GrantWrite {
            identity_key,
            cause,
            generation: existing.map_or(0, |g| g.generation) + 1,
            now,
            now_us: to_micros(now),
        };
        let trigger_at = match change {
            Change::Issue(d) => {
                write.want_present(batch, d, existing, &approver);
                Some(cause.trigger_at)
            }
            Change::Revoke(g) => write.want_absent(conn, batch, g).await?,
        };
        if let Some(trigger_at) = trigger_at {
            write.enqueue(batch, change, trigger_at);
        }
    }
    Ok(())
}

/// One change's writes: whose grant, why, the generation it becomes and when.
struct GrantWrite<'a> {
    identity_key: &'a str,
    cause: &'a Cause,
    generation: i64,
    now: DateTime<Utc>,
    now_us: i64,
}

impl GrantWrite<'_> {
    /// The ledger row now wants the grant present, audited with the template and its approver.
    fn want_present(
        &self,
        batch: &mut Batch,
        d: &DesiredGrant,
        existing: Option<&GrantRow>,
        approver: &impl Fn(&str) -> Option<String>,
    ) {
        let (cause, generation) = (self.cause, self.generation);
        batch.put_grant(GrantRow {
            identity_key: self.identity_key.into(),
            connector: d.connector.clone(),
            target: d.target.clone(),
            desired: GrantState::Present,
            observed: existing.map_or(GrantState::Absent, |g| g.observed),
            generation,
            vendor_ref: existing.and_then(|g| g.vendor_ref.clone()),
            template: d.template.clone(),
            credential: d.credential.clone(),
            window: d
                .window
                .as_ref()
                .and_then(|w| serde_json::to_string(w).ok()),
            valid_until: d.valid_until.map(to_micros),
            updated_at: self.now_us,
        });
        batch.audit(
            self.now_us,
            &cause.actor,
            "grant.desired",
            self.identity_key,
            serde_json::json!({
                "connector": d.connector, "target": d.target, "credential": d.credential,
                "template": d.template, "template_approved_by": approver(&d.template),
                "valid_until": d.valid_until, "cause": cause.kind, "generation": generation,
            }),
        );
    }

    /// The ledger row now wants the grant absent, audited, and any issue still waiting for the
    /// vendor superseded. Returns the moment the revoke counts from, or `None` when nothing
    /// reached the vendor and there is nothing to take back.
    async fn want_absent(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        g: &GrantRow,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (cause, generation, now_us) = (self.cause, self.generation, self.now_us);
        let must_revoke = if g.observed != GrantState::Absent {
            // The vendor may hold the grant, so it is revoked whatever the outbox holds; the
            // issues still waiting are superseded with the batch's writes, one statement for
            // all of its revokes (a mass termination's feed batch had two per grant).
            batch.supersede_issues(&g.connector, self.identity_key, &g.target);
            true
        } else {
            // Only an issue that reached the vendor can have left something to take back, so
            // the outbox is asked now (superseded first, counted after: see the store).
            let (_, attempted) =
                store::supersede_issues(conn, &g.connector, self.identity_key, &g.target, now_us)
                    .await?;
            attempted > 0
        };
        let mut trigger_at = cause.trigger_at;
        if let Some(until) = g.valid_until
            && until <= now_us
            && cause.kind != ChangeKind::Leaver
        {
            trigger_at = crate::clock::from_micros(until).max(cause.trigger_at.min(self.now));
        }
        batch.put_grant(GrantRow {
            desired: GrantState::Absent,
            generation,
            updated_at: now_us,
            ..g.clone()
        });
        batch.audit(
            now_us,
            &cause.actor,
            "grant.undesired",
            self.identity_key,
            serde_json::json!({
                "connector": g.connector, "target": g.target, "template": g.template,
                "cause": cause.kind, "generation": generation, "vendor_contacted": must_revoke,
            }),
        );
        Ok(must_revoke.then_some(trigger_at))
    }

    /// Put the change's command in the outbox, audited (the record is dropped, and nothing
    /// counted, when the outbox already had it).
    fn enqueue(&self, batch: &mut Batch, change: &Change, trigger_at: DateTime<Utc>) {
        let cause = self.cause;
        let cmd = NewCommand {
            connector: change.connector().to_string(),
            action: change.action(),
            identity_key: self.identity_key.into(),
            target: change.target().to_string(),
            generation: self.generation,
            cause: cause.kind.to_string(),
            trigger_at: to_micros(trigger_at.min(cause.detected_at)),
            detected_at: to_micros(cause.detected_at),
            source: cause.source_label(),
            traceparent: crate::telemetry::tracing::current_traceparent(),
        };
        let details = serde_json::json!({
            "action": cmd.action, "connector": cmd.connector, "target": cmd.target,
            "idempotency_key": cmd.idem_key(), "cause": cmd.cause,
        });
        batch.enqueue(cmd, &cause.actor, self.now_us, details);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(t: &str) -> DesiredGrant {
        DesiredGrant {
            connector: "nuki".into(),
            target: t.into(),
            credential: "app".into(),
            template: "x".into(),
            window: None,
            valid_until: None,
        }
    }

    fn held(t: &str, desired: GrantState) -> GrantRow {
        GrantRow {
            identity_key: "E1".into(),
            connector: "nuki".into(),
            target: t.into(),
            desired,
            observed: GrantState::Present,
            generation: 1,
            vendor_ref: None,
            template: "x".into(),
            credential: "app".into(),
            window: None,
            valid_until: None,
            updated_at: 0,
        }
    }

    #[test]
    fn source_labels_are_bounded() {
        let cause = |actor: &str| Cause {
            kind: ChangeKind::Leaver,
            trigger_at: DateTime::<Utc>::UNIX_EPOCH,
            detected_at: DateTime::<Utc>::UNIX_EPOCH,
            actor: actor.into(),
        };
        assert_eq!(cause("source:hr").source_label(), "hr");
        assert_eq!(cause("source:scim:okta").source_label(), "scim:okta");
        assert_eq!(cause("source:ldap-corp").source_label(), "ldap-corp");
        assert_eq!(cause("schedule").source_label(), "schedule");
        assert_eq!(cause("reconcile").source_label(), "reconcile");
        assert_eq!(cause("Jane Approver").source_label(), "approval");
    }

    #[test]
    fn mover_revokes_old_and_issues_new_and_a_repeat_does_nothing() {
        let changes = diff(&[desired("b")], &[held("a", GrantState::Present)]);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], Change::Revoke(g) if g.target == "a"));
        assert!(matches!(&changes[1], Change::Issue(d) if d.target == "b"));
        assert!(
            diff(
                &[desired("b")],
                &[
                    held("a", GrantState::Absent),
                    held("b", GrantState::Present)
                ]
            )
            .is_empty()
        );
    }
}
