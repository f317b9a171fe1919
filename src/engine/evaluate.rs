//! Evaluating one person: what templates want, changed by what operators decided (door moves,
//! temporary access, suspensions, review withdrawals), against the ledger, and the plan applied.
//! Feeds evaluate a person from what the source just said; reconciliation, the schedule and
//! operators' actions evaluate the stored identity.

use super::{Engine, EngineError};
use crate::batch::Batch;
use crate::clock::to_micros;
use crate::identity::Derived;
use crate::model::ChangeKind;
use crate::model::{DesiredGrant, Lifecycle, Quarantined};
use crate::plan::{self, Applied, Cause};
use crate::policy::PolicyError;
use crate::store::{self, IdentityRow};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::BTreeMap;

impl Engine {
    /// Plan one freshly derived person in `batch`: what templates want, changed by what
    /// operators decided, against the ledger, and the plan staged.
    pub(super) async fn plan_identity(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        key: &str,
        derived: &Derived,
        kind: ChangeKind,
        actor: &str,
    ) -> Result<(), EngineError> {
        let now = batch.now();
        let Some(desired) = self.desired_or_quarantine(conn, key, derived, now).await? else {
            return Ok(());
        };
        let desired = self
            .with_operator_decisions(conn, batch, key, derived, desired, actor)
            .await?;
        let changes = plan::diff(&desired, batch.grants_of(key));
        if changes.is_empty() {
            return Ok(());
        }
        let cause = Cause {
            kind,
            trigger_at: trigger_of(derived, kind, now),
            detected_at: now,
            actor: actor.to_string(),
        };
        let policy = self.policy();
        plan::stage(conn, batch, key, &changes, &cause, |t| {
            policy.approver_of(t).map(str::to_string)
        })
        .await?;
        Ok(())
    }

    /// What templates want for a derived person, or `None` (and the person quarantined) when a
    /// template cannot be evaluated.
    async fn desired_or_quarantine(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        derived: &Derived,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<DesiredGrant>>, EngineError> {
        let tz = self.config.timezone_of(derived.site.as_deref());
        match tracing::info_span!("policy.evaluate", identity = %key).in_scope(|| {
            self.policy()
                .desired(key, derived.lifecycle, &derived.attrs, tz, now)
        }) {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                // A template that cannot be evaluated must not revoke anything: keep the ledger as it
                // is and report the person.
                tracing::error!(identity = key, error = %e, "policy evaluation failed; grants left unchanged");
                store::quarantine(
                    conn,
                    &Quarantined {
                        source: "policy".into(),
                        location: key.to_string(),
                        record_key: Some(key.into()),
                        field: "template".into(),
                        reason: e.to_string(),
                        raw: String::new(),
                    },
                    &to_micros(now).to_string(),
                    to_micros(now),
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// What templates want, changed by what operators decided for the person: door moves, review
    /// withdrawals, temporary access in force, and a suspension.
    async fn with_operator_decisions(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        key: &str,
        derived: &Derived,
        mut desired: Vec<DesiredGrant>,
        actor: &str,
    ) -> Result<Vec<DesiredGrant>, EngineError> {
        // A door moved to another connector is wanted there instead.
        crate::door_migration::rewrite(batch.moves(), &mut desired);
        // A door a review took away stays away while a template still gives it.
        crate::reviews::withhold(batch.withdrawn_of(key), &mut desired);
        // Approved temporary access in its window is wanted like a template's grant, while the
        // person is entitled to anything at all (a leaver's requests give nothing).
        if derived.lifecycle.entitled() {
            desired.extend(crate::access_requests::desired(
                &self.config,
                batch.requests_of(key),
            ));
        }
        // An operator's suspension outlasts whatever the sources say, until resumed or the person
        // leaves (which ends it).
        crate::suspension::apply(conn, batch, key, derived.lifecycle, desired, actor).await
    }

    /// What one stored identity should change now under current policy and what operators decided
    /// for it (`overrides`): pure, for planning.
    pub fn changes_for(
        &self,
        ident: &IdentityRow,
        ledger: &[store::GrantRow],
        overrides: &Overrides<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<plan::Change>, PolicyError> {
        let Overrides {
            moves,
            requests,
            suspended,
            withdrawn,
        } = *overrides;
        let attrs: BTreeMap<String, String> = ident
            .attrs
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect();
        let tz = self.config.timezone_of(ident.site.as_deref());
        let mut desired = self
            .policy()
            .desired(&ident.key, ident.lifecycle, &attrs, tz, now)?;
        crate::door_migration::rewrite(moves, &mut desired);
        crate::reviews::withhold(withdrawn, &mut desired);
        if ident.lifecycle.entitled() {
            desired.extend(crate::access_requests::desired(&self.config, requests));
        }
        if let Some(scope) = suspended {
            scope.withhold(&mut desired);
        }
        Ok(plan::diff(&desired, ledger))
    }

    /// Reconcile one identity on the caller's transaction: its stored attributes against current
    /// policy and the ledger as it is now. With `hold_revokes`, only the issues are carried out (the
    /// revocations wait for an approver). A template that cannot be evaluated changes nothing.
    pub async fn reconcile_identity(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        hold_revokes: bool,
        now: DateTime<Utc>,
    ) -> Result<Applied, EngineError> {
        self.evaluate_stored(
            conn,
            key,
            ChangeKind::Reconcile,
            "reconcile",
            hold_revokes,
            now,
        )
        .await
    }

    /// [`Engine::reconcile_identity`] for any cause (`reconcile`, `suspension`, `resume`), acted
    /// by `actor`: the stored identity against current policy, its temporary access, its
    /// suspension and the ledger.
    pub async fn evaluate_stored(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        kind: ChangeKind,
        actor: &str,
        hold_revokes: bool,
        now: DateTime<Utc>,
    ) -> Result<Applied, EngineError> {
        let why = Evaluation {
            kind,
            actor,
            hold_revokes,
            trigger_at: now,
        };
        self.evaluate(conn, key, &why, now).await
    }

    /// [`Engine::evaluate_stored`] for a change whose moment was earlier than now (a temporary
    /// grant's end passed while no replica ran the schedule): latency counts from that moment.
    pub async fn evaluate(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        why: &Evaluation<'_>,
        now: DateTime<Utc>,
    ) -> Result<Applied, EngineError> {
        let mut batch = Batch::new(now);
        self.stage_evaluation(conn, &mut batch, key, why).await?;
        batch.flush(conn).await?;
        Ok(batch.applied_of(key))
    }

    /// [`Engine::evaluate`] staged in `batch` (written when it is flushed), for evaluating many
    /// people on one transaction.
    pub async fn stage_evaluation(
        &self,
        conn: &mut AnyConnection,
        batch: &mut Batch,
        key: &str,
        why: &Evaluation<'_>,
    ) -> Result<(), EngineError> {
        let Evaluation {
            kind,
            actor,
            hold_revokes,
            trigger_at,
        } = *why;
        batch.person(conn, key).await?;
        let now = batch.now();
        let Some(ident) = batch.identity(key) else {
            return Ok(());
        };
        let suspended = crate::suspension::Scope::of(batch.suspensions_of(key));
        let overrides = Overrides {
            moves: batch.moves(),
            requests: batch.requests_of(key),
            suspended: suspended.as_ref(),
            withdrawn: batch.withdrawn_of(key),
        };
        let changes = match self.changes_for(ident, batch.grants_of(key), &overrides, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(identity = key, error = %e, "policy evaluation failed; grants left unchanged");
                return Ok(());
            }
        };
        let changes: Vec<plan::Change> = changes
            .into_iter()
            .filter(|c| !hold_revokes || matches!(c, plan::Change::Issue(_)))
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let cause = Cause {
            kind,
            trigger_at: trigger_at.min(now),
            detected_at: now,
            actor: actor.into(),
        };
        let policy = self.policy();
        plan::stage(conn, batch, key, &changes, &cause, |t| {
            policy.approver_of(t).map(str::to_string)
        })
        .await?;
        Ok(())
    }
}

/// The moment a derived person's change counts from: its effective time, never later than now;
/// now for a pre-hire, and for attribute changes, which have no effective date.
fn trigger_of(derived: &Derived, kind: ChangeKind, now: DateTime<Utc>) -> DateTime<Utc> {
    let trigger_at = match derived.lifecycle {
        Lifecycle::Terminated | Lifecycle::Suspended | Lifecycle::Active => {
            derived.trigger_at().min(now)
        }
        Lifecycle::PreHire => now,
    };
    // Attribute changes (movers) have no effective date: they trigger when seen.
    if kind.triggers_when_seen() {
        now
    } else {
        trigger_at
    }
}

/// What operators decided that changes what templates want for one person: doors moved to
/// another connector, temporary access in force, an active suspension, doors a review withdrew.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    pub moves: &'a [store::door_moves::DoorMoveRow],
    pub requests: &'a [store::access_requests::RequestRow],
    pub suspended: Option<&'a crate::suspension::Scope>,
    pub withdrawn: &'a [store::reviews::WithdrawalRow],
}

/// Why a stored identity is evaluated: the change's kind (its cause in the audit log and the
/// latency labels), who acts, whether revocations wait for an approver, and the moment the change
/// was due (latency counts from it).
#[derive(Debug, Clone, Copy)]
pub struct Evaluation<'a> {
    pub kind: ChangeKind,
    pub actor: &'a str,
    pub hold_revokes: bool,
    pub trigger_at: DateTime<Utc>,
}
