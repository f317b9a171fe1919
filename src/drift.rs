//! Drift check: each vendor's grants against the ledger.
//!
//! Someone may change a vendor behind latchkey's back: add an authorisation in the vendor's app, or
//! delete one. For every connector that can list its grants, on every target latchkey knows (the
//! ledger's and the connector's target map), the check finds
//! - orphans: grants the vendor holds that latchkey did not issue (the person has no ledger grant
//!   there, or one latchkey revoked). Reported (audit, `latchkey status`, metric), and revoked when
//!   `[drift] revoke_orphans = true`;
//! - missing grants: the ledger says the vendor confirmed the grant, the vendor no longer lists it.
//!   Issued again once it has been missing for `tolerance_seconds`, since a vendor that syncs to
//!   locks late (vendor-apis.md, quirk 5) can briefly not list what it holds.

use crate::audit;
use crate::clock::to_micros;
use crate::connectors::{Connector, Connectors, VendorGrant};
use crate::engine::Engine;
use crate::model::GrantState;
use crate::model::{Action, PersonKey};
use crate::store::{self, DriftFindingRow, GrantRow, NewCommand, StoreError};
use sqlx::AnyConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub connector: String,
    pub target: String,
    /// `orphan` | `missing`
    pub kind: String,
    /// Identity key when latchkey knows the person, else the vendor's person id, else `-`.
    pub subject: String,
    pub vendor_ref: Option<String>,
    /// `revoked` | `reissued` | `reported` | `waiting` (missing, within the tolerance) | `failed`
    pub action: String,
}

#[derive(Debug, Default)]
pub struct DriftReport {
    pub findings: Vec<Finding>,
    /// Connectors whose vendor cannot list grants (not checked).
    pub unsupported: Vec<String>,
    /// (connector, target, error) of lists that failed.
    pub errors: Vec<(String, String, String)>,
}

impl DriftReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "drift findings: {}", self.findings.len());
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:<22} {:<12} grant {:<10} -> {}",
                f.kind,
                f.connector,
                f.target,
                f.subject,
                f.vendor_ref.as_deref().unwrap_or("-"),
                f.action
            );
        }
        for c in &self.unsupported {
            let _ = writeln!(out, "  {c}: cannot list grants, not checked");
        }
        for (c, t, e) in &self.errors {
            let _ = writeln!(out, "  {c} {t}: list failed: {e}");
        }
        out
    }
}

/// Run the check once over every connector.
pub async fn check(engine: &Engine, connectors: &Connectors) -> Result<DriftReport, StoreError> {
    let mut report = DriftReport::default();
    for (name, c) in connectors {
        check_connector(engine, name, c, &mut report).await?;
    }
    Ok(report)
}

/// Check one connector on every target it knows, then set its drift gauges. A connector that
/// cannot list its grants is reported as not checked.
async fn check_connector(
    engine: &Engine,
    name: &str,
    c: &Arc<dyn Connector>,
    report: &mut DriftReport,
) -> Result<(), StoreError> {
    let pool = engine.store.pool();
    let now = to_micros(engine.clock.now());
    let ledger: Vec<GrantRow> = store::all_grants(pool)
        .await?
        .into_iter()
        .filter(|g| g.connector == name)
        .collect();
    let mut targets: BTreeSet<String> = ledger.iter().map(|g| g.target.clone()).collect();
    if let Some(cc) = engine.config.connectors.get(name) {
        targets.extend(cc.targets.keys().cloned());
    }
    let people = store::vendor_people_of(pool, name).await?;
    let check = ConnectorCheck::new(engine, name, c, now, &people);
    let refs: Vec<String> = people.iter().map(|(_, r)| r.clone()).collect();
    let (mut orphans, mut missing) = (0i64, 0i64);
    for target in &targets {
        let listed = match c.list_grants(target, &refs).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                report.unsupported.push(name.to_string());
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(connector = name, target, error = %e, "drift check: list failed");
                report
                    .errors
                    .push((name.to_string(), target.clone(), e.to_string()));
                continue;
            }
        };
        let (o, m) = check.target(target, &listed, &ledger, report).await?;
        orphans += o;
        missing += m;
    }
    engine.metrics.set_drift_findings(name, orphans, missing);
    Ok(())
}

/// One connector's check: what each of its targets is compared with.
struct ConnectorCheck<'a> {
    engine: &'a Engine,
    name: &'a str,
    connector: &'a Arc<dyn Connector>,
    now: i64,
    /// Vendor person id -> identity key.
    by_ref: BTreeMap<&'a str, &'a str>,
    /// Identity key -> vendor person id.
    ref_of: BTreeMap<&'a str, &'a str>,
}

impl<'a> ConnectorCheck<'a> {
    fn new(
        engine: &'a Engine,
        name: &'a str,
        connector: &'a Arc<dyn Connector>,
        now: i64,
        people: &'a [(PersonKey, String)],
    ) -> Self {
        Self {
            engine,
            name,
            connector,
            now,
            by_ref: people
                .iter()
                .map(|(k, r)| (r.as_str(), k.as_str()))
                .collect(),
            ref_of: people
                .iter()
                .map(|(k, r)| (k.as_str(), r.as_str()))
                .collect(),
        }
    }

    /// Compare one target's listed grants with the ledger: (orphans, missing grants) found.
    async fn target(
        &self,
        target: &str,
        listed: &[VendorGrant],
        ledger: &[GrantRow],
        report: &mut DriftReport,
    ) -> Result<(i64, i64), StoreError> {
        let on_target: BTreeMap<&str, &GrantRow> = ledger
            .iter()
            .filter(|g| g.target == target)
            .map(|g| (g.identity_key.as_str(), g))
            .collect();
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        let (orphans, holders) = self
            .orphans(target, listed, &on_target, &mut seen, report)
            .await?;
        let missing = self
            .missing(target, &on_target, &holders, &mut seen, report)
            .await?;
        self.clear_stale(target, &seen).await?;
        Ok((orphans, missing))
    }

    /// Listed grants latchkey did not issue: each recorded, and revoked when the policy says so.
    /// Returns their count and the people the vendor lists on the target.
    async fn orphans(
        &self,
        target: &str,
        listed: &[VendorGrant],
        on_target: &BTreeMap<&str, &GrantRow>,
        seen: &mut BTreeSet<i64>,
        report: &mut DriftReport,
    ) -> Result<(i64, BTreeSet<&'a str>), StoreError> {
        let mut orphans = 0i64;
        let mut holders: BTreeSet<&str> = BTreeSet::new();
        for v in listed {
            let owner = v
                .person_ref
                .as_deref()
                .and_then(|r| self.by_ref.get(r).copied());
            if let Some(o) = owner {
                holders.insert(o);
            }
            // Latchkey's if the ledger wants it there, or a revoke of it is not confirmed yet.
            let ours = owner.and_then(|o| on_target.get(o)).is_some_and(|g| {
                g.desired == GrantState::Present || g.observed != GrantState::Absent
            });
            if ours {
                continue;
            }
            orphans += 1;
            let finding = self.orphan(target, v, owner, seen).await?;
            report.findings.push(finding);
        }
        Ok((orphans, holders))
    }

    /// Record an orphan (audited when first seen), and revoke it when `[drift] revoke_orphans`.
    async fn orphan(
        &self,
        target: &str,
        v: &VendorGrant,
        owner: Option<&str>,
        seen: &mut BTreeSet<i64>,
    ) -> Result<Finding, StoreError> {
        let (name, now) = (self.name, self.now);
        let subject = owner
            .map(str::to_string)
            .or_else(|| v.person_ref.clone())
            .unwrap_or_else(|| "-".into());
        let mut tx = self.engine.store.begin_write().await?;
        let f = store::see_drift(
            &mut tx,
            name,
            target,
            "orphan",
            &subject,
            v.grant_ref.as_deref(),
            now,
        )
        .await?;
        seen.insert(f.id);
        if f.first_seen_at == now {
            audit::append(
                &mut tx,
                now,
                "drift",
                "drift.orphan",
                &subject,
                &serde_json::json!({"connector": name, "target": target, "grant": v.grant_ref}),
            )
            .await?;
        }
        tx.commit().await?;
        let mut action = "reported".to_string();
        if self.engine.config.drift.revoke_orphans
            && let Some(g) = &v.grant_ref
        {
            action = self.revoke_orphan(target, g, f.id, &subject).await?;
        }
        Ok(Finding {
            connector: name.to_string(),
            target: target.to_string(),
            kind: "orphan".into(),
            subject,
            vendor_ref: v.grant_ref.clone(),
            action,
        })
    }

    /// Delete an orphan at the vendor; once deleted, its finding is resolved and audited.
    async fn revoke_orphan(
        &self,
        target: &str,
        g: &str,
        finding: i64,
        subject: &str,
    ) -> Result<String, StoreError> {
        let (name, now) = (self.name, self.now);
        let action: String = match self.connector.delete_listed(target, g).await {
            Ok(true) => "revoked".into(),
            Ok(false) => "reported".into(),
            Err(e) => {
                tracing::warn!(connector = name, target, error = %e, "drift check: orphan not revoked");
                "failed".into()
            }
        };
        if action == "revoked" {
            let mut tx = self.engine.store.begin_write().await?;
            store::resolve_drift(&mut tx, finding, "revoked", now).await?;
            audit::append(
                &mut tx,
                now,
                "drift",
                "drift.orphan_revoked",
                subject,
                &serde_json::json!({"connector": name, "target": target, "grant": g}),
            )
            .await?;
            tx.commit().await?;
        }
        Ok(action)
    }

    /// Grants the vendor confirmed that it no longer lists: each recorded, and issued again once
    /// missing for the tolerance. Returns their count.
    async fn missing(
        &self,
        target: &str,
        on_target: &BTreeMap<&str, &GrantRow>,
        holders: &BTreeSet<&str>,
        seen: &mut BTreeSet<i64>,
        report: &mut DriftReport,
    ) -> Result<i64, StoreError> {
        let mut missing = 0i64;
        for (key, g) in on_target {
            // Only what the vendor confirmed and latchkey still wants; a person whose vendor id is
            // unknown cannot be told apart in the list.
            if g.desired != GrantState::Present
                || g.observed != GrantState::Present
                || holders.contains(key)
            {
                continue;
            }
            if !self.ref_of.contains_key(key) || busy(self.engine, self.name, key, target).await? {
                continue;
            }
            missing += 1;
            let finding = self.missing_grant(target, key, g, seen).await?;
            report.findings.push(finding);
        }
        Ok(missing)
    }

    /// Record a missing grant: issued again when it has been missing for `tolerance_seconds`,
    /// else waiting (audited when first seen).
    async fn missing_grant(
        &self,
        target: &str,
        key: &str,
        g: &GrantRow,
        seen: &mut BTreeSet<i64>,
    ) -> Result<Finding, StoreError> {
        let (name, now) = (self.name, self.now);
        let mut tx = self.engine.store.begin_write().await?;
        let f = store::see_drift(&mut tx, name, target, "missing", key, None, now).await?;
        seen.insert(f.id);
        let due = f.first_seen_at + (self.engine.config.drift.tolerance_seconds as i64) * 1_000_000;
        let action = if now >= due {
            self.reissue(&mut tx, target, key, g, &f).await?;
            "reissued"
        } else {
            if f.first_seen_at == now {
                audit::append(
                    &mut tx,
                    now,
                    "drift",
                    "drift.missing",
                    key,
                    &serde_json::json!({"connector": name, "target": target}),
                )
                .await?;
            }
            "waiting"
        };
        tx.commit().await?;
        Ok(Finding {
            connector: name.to_string(),
            target: target.to_string(),
            kind: "missing".into(),
            subject: key.to_string(),
            vendor_ref: g.vendor_ref.clone(),
            action: action.into(),
        })
    }

    /// Mark the grant absent at a new generation and enqueue its issue; the finding is resolved
    /// as reissued.
    async fn reissue(
        &self,
        tx: &mut AnyConnection,
        target: &str,
        key: &str,
        g: &GrantRow,
        f: &DriftFindingRow,
    ) -> Result<(), StoreError> {
        let (name, now) = (self.name, self.now);
        let generation = g.generation + 1;
        store::put_grant(
            tx,
            &GrantRow {
                observed: GrantState::Absent,
                vendor_ref: None,
                generation,
                updated_at: now,
                ..g.clone()
            },
        )
        .await?;
        let cmd = NewCommand {
            connector: name.to_string(),
            action: Action::Issue,
            identity_key: key.into(),
            target: target.to_string(),
            generation,
            cause: "drift".into(),
            trigger_at: f.first_seen_at,
            detected_at: f.first_seen_at,
            source: "drift".into(),
            traceparent: None,
        };
        let id = store::enqueue(tx, &cmd, now).await?;
        store::resolve_drift(tx, f.id, "reissued", now).await?;
        audit::append(
            tx,
            now,
            "drift",
            "drift.missing_reissued",
            key,
            &serde_json::json!({"connector": name, "target": target, "command": id,
                "missing_since": crate::clock::from_micros(f.first_seen_at)}),
        )
        .await?;
        Ok(())
    }

    /// Resolve the target's open findings not seen in this check.
    async fn clear_stale(&self, target: &str, seen: &BTreeSet<i64>) -> Result<(), StoreError> {
        // Findings no longer seen went away by themselves (a late sync, a manual fix).
        let stale: Vec<i64> = store::open_drift(self.engine.store.pool())
            .await?
            .into_iter()
            .filter(|f| f.connector == self.name && f.target == target && !seen.contains(&f.id))
            .map(|f| f.id)
            .collect();
        if !stale.is_empty() {
            let mut tx = self.engine.store.begin_write().await?;
            for id in stale {
                store::resolve_drift(&mut tx, id, "cleared", self.now).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// A command for this grant is still on its way: the vendor may be about to change.
async fn busy(
    engine: &Engine,
    connector: &str,
    key: &str,
    target: &str,
) -> Result<bool, StoreError> {
    let mut conn = engine.store.pool().acquire().await?;
    for action in [Action::Issue, Action::Revoke] {
        if store::open_command_for(&mut conn, connector, key, target, action)
            .await?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
