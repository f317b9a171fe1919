//! Level-triggered reconciliation: every identity re-evaluated against current policy, and the
//! differences planned through the same mass-change safeguard as a feed.
//!
//! Sources trigger evaluation of the people they change; a template edit changes nobody's record,
//! so without this a dropped door would stay open and an added one never be issued. The store keeps
//! a fingerprint of everything that decides desired state (templates, every connector's target map,
//! mappings, time zones); a full reconciliation runs when it differs from the last one's, on the
//! `[reconcile] schedule`, and when an approver approved held revocations. Identities are streamed
//! in pages, and only the people with something to change are kept.
//!
//! Entitled people losing a grant beyond the threshold look like a policy mistake (a typo'd
//! condition revokes everyone), so their revocations are held for approval with the diff in
//! `latchkey status`; issues and non-entitled people's revocations (leavers) always go ahead.

use crate::audit;
use crate::batch::Batch;
use crate::clock::{from_micros, to_micros};
use crate::engine::{Engine, EngineError, Evaluation};
use crate::model::{ChangeKind, GrantState, PersonKey};
use crate::plan::Change;
use crate::store::{self, GrantRow};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Held changes of a reconciliation carry this source and kind.
pub const HOLD_SOURCE: &str = "reconcile";
pub const HOLD_KIND: &str = "reconcile";
/// The `policy_state` row of the daemon's policy.
const STATE: &str = "policy";
/// Identities read per page.
const PAGE: i64 = 1000;
/// People written per transaction.
const BATCH: usize = 50;

/// One identity with something to change.
#[derive(Debug, Clone)]
pub struct IdentityPlan {
    pub key: PersonKey,
    /// Entitled (active) people's revocations are subject to the safeguard; leavers' never are.
    pub entitled: bool,
    pub changes: Vec<Change>,
    /// Revocations held for approval (issues still go ahead).
    pub held: bool,
    /// Revocations an approver rejected under this policy: kept, and not asked again until the
    /// policy changes (issues still go ahead).
    pub rejected: bool,
}

impl IdentityPlan {
    fn revokes(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| matches!(c, Change::Revoke(_)))
    }
}

/// What a reconciliation would do now.
#[derive(Debug, Clone, Default)]
pub struct ReconcilePlan {
    pub fingerprint: String,
    /// Identities evaluated.
    pub identities: usize,
    /// Entitled people holding at least one grant: the safeguard's denominator.
    pub population: usize,
    pub people: Vec<IdentityPlan>,
    /// Why revocations are held, when they are.
    pub hold_reason: Option<String>,
    /// (identity, error) of people whose templates could not be evaluated: left unchanged.
    pub failed: Vec<(PersonKey, String)>,
}

impl ReconcilePlan {
    pub fn to_issue(&self) -> usize {
        let issues = |p: &IdentityPlan| p.changes.len() - p.revokes().count();
        self.people.iter().map(issues).sum()
    }

    pub fn to_revoke(&self) -> usize {
        let n = |p: &IdentityPlan| {
            if p.held || p.rejected {
                0
            } else {
                p.revokes().count()
            }
        };
        self.people.iter().map(n).sum()
    }

    /// Revocations an approver rejected under this policy, kept.
    pub fn kept(&self) -> usize {
        let n = |p: &IdentityPlan| if p.rejected { p.revokes().count() } else { 0 };
        self.people.iter().map(n).sum()
    }

    /// Revocations held for approval.
    pub fn held(&self) -> usize {
        let n = |p: &IdentityPlan| if p.held { p.revokes().count() } else { 0 };
        self.people.iter().map(n).sum()
    }

    /// Nothing to issue, revoke or hold: people whose revocations were rejected and who have
    /// nothing else to change do not count (`plan --detailed-exitcode` exits 0).
    pub fn is_empty(&self) -> bool {
        self.to_issue() + self.to_revoke() + self.held() == 0
    }

    /// `Plan: N to issue, M to revoke, K held` (and `, R kept (rejected)` when an approver
    /// rejected some under this policy), as `latchkey plan` ends.
    pub fn summary(&self) -> String {
        let kept = match self.kept() {
            0 => String::new(),
            n => format!(", {n} kept (rejected)"),
        };
        format!(
            "Plan: {} to issue, {} to revoke, {} held{kept}",
            self.to_issue(),
            self.to_revoke(),
            self.held()
        )
    }

    /// One line per change, then the reason for holding, failures and the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            out.push_str("nothing to issue or revoke\n");
        }
        for p in &self.people {
            for c in &p.changes {
                let (verb, template) = match c {
                    Change::Issue(d) => ("issue ", d.template.as_str()),
                    Change::Revoke(g) if p.held => ("held  ", g.template.as_str()),
                    Change::Revoke(g) if p.rejected => ("kept  ", g.template.as_str()),
                    Change::Revoke(g) => ("revoke", g.template.as_str()),
                };
                let _ = writeln!(
                    out,
                    "{verb}  {:<10} {}:{} (template {template})",
                    p.key,
                    c.connector(),
                    c.target()
                );
            }
        }
        if let Some(r) = &self.hold_reason {
            let _ = writeln!(out, "held for approval: {r}");
        }
        for (k, e) in &self.failed {
            let _ = writeln!(out, "not evaluated: {k}: {e}");
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }
}

/// What a reconciliation carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub issues: u64,
    pub revokes: u64,
    /// Revocations held for approval.
    pub held: u64,
}

/// A digest of everything that decides desired state: the loaded templates, every connector's
/// kind and target map, the mappings sources read people with, and the time zones.
pub fn fingerprint(engine: &Engine) -> String {
    let config = &engine.config;
    let mut h = Sha256::new();
    let mut part = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("templates", engine.policy().digest().as_bytes());
    for (name, c) in &config.connectors {
        part(
            &format!("connector:{name}"),
            format!("{:?}|{:?}", c.kind, c.targets).as_bytes(),
        );
    }
    let mappings = (config.sources.hr.iter().map(|(n, s)| (n, &s.mapping)))
        .chain(config.sources.ldap.iter().map(|(n, s)| (n, &s.mapping)));
    for (name, path) in mappings {
        // An unreadable mapping fails its source loudly elsewhere; here it just counts as changed.
        let bytes = std::fs::read(config.resolve(path)).unwrap_or_default();
        part(&format!("mapping:{name}"), &bytes);
    }
    part("timezone", config.engine.default_timezone.as_bytes());
    part(
        "authority",
        format!("{:?}", config.authority.attributes).as_bytes(),
    );
    for (name, site) in &config.sites {
        part(&format!("site:{name}"), site.timezone.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Attributes SCIM users carry (see `sources::scim`): fixed by the protocol, not by a mapping.
const SCIM_ATTRIBUTES: &[&str] = &[
    "name",
    "email",
    "user_name",
    "department",
    "role",
    "employment_type",
    "site",
    "employee_number",
    "organization",
    "division",
    "cost_center",
    "manager",
    "groups",
];

/// A source's mapping that does not load.
#[derive(Debug, thiserror::Error)]
pub enum MappingLoadError {
    #[error(transparent)]
    Hr(#[from] crate::sources::hr::HrError),
    #[error(transparent)]
    Ldap(#[from] crate::sources::ldap::MappingError),
}

/// Every identity attribute some configured source can set, for `latchkey check`.
pub fn produced_attributes(
    config: &crate::config::Config,
) -> Result<BTreeSet<String>, MappingLoadError> {
    let mut out: BTreeSet<String> = ["site", "contract_end"].map(String::from).into();
    for src in config.sources.hr.values() {
        let m = crate::sources::hr::load_mapping(&config.resolve(&src.mapping))?;
        out.extend(m.columns.keys().cloned());
    }
    for (name, src) in &config.sources.ldap {
        let m = crate::sources::ldap::load_mapping(name, &config.resolve(&src.mapping))?;
        out.extend(m.attributes.keys().cloned());
        out.extend(m.constants.keys().cloned());
        if let Some(g) = &m.groups {
            out.insert("groups".into());
            if !g.roles.is_empty() {
                out.insert("role".into());
            }
        }
    }
    if !config.scim.tenants.is_empty() {
        out.extend(SCIM_ATTRIBUTES.iter().map(|s| s.to_string()));
    }
    Ok(out)
}

fn threshold(engine: &Engine) -> f64 {
    let c = &engine.config;
    c.reconcile
        .mass_change_threshold
        .unwrap_or(c.engine.mass_change_threshold)
}

/// Plan a full reconciliation at `now`, writing nothing.
pub async fn plan(engine: &Engine, now: DateTime<Utc>) -> Result<ReconcilePlan, EngineError> {
    let pool = engine.store.pool();
    let mut out = ReconcilePlan {
        fingerprint: fingerprint(engine),
        ..Default::default()
    };
    // Suspended people keep what their suspension withholds withheld (a small set, read once).
    let mut suspended: BTreeMap<PersonKey, Vec<_>> = BTreeMap::new();
    for s in store::suspensions::all_active(pool).await? {
        suspended.entry(s.identity_key.clone()).or_default().push(s);
    }
    let suspended: BTreeMap<PersonKey, crate::suspension::Scope> = suspended
        .into_iter()
        .filter_map(|(k, rows)| Some((k, crate::suspension::Scope::of(&rows)?)))
        .collect();
    // Temporary access in force is wanted like a template's grant (a small set, read once).
    let mut requests: BTreeMap<PersonKey, Vec<_>> = BTreeMap::new();
    for r in store::access_requests::all_in_force(pool, crate::clock::to_micros(now)).await? {
        requests.entry(r.identity_key.clone()).or_default().push(r);
    }
    let moves = store::door_moves::all(pool).await?;
    // Doors reviews withdrew stay withheld (a small set, read once).
    let mut withdrawn: BTreeMap<PersonKey, Vec<_>> = BTreeMap::new();
    for w in store::reviews::all_withdrawn(pool).await? {
        withdrawn.entry(w.identity_key.clone()).or_default().push(w);
    }
    let mut after = String::new();
    loop {
        let page = store::identities_page(pool, &after, PAGE).await?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            break;
        };
        let grants = store::grants_in_key_range(pool, &first.key, &last.key).await?;
        let mut by_key: BTreeMap<PersonKey, Vec<GrantRow>> = BTreeMap::new();
        for g in grants {
            by_key.entry(g.identity_key.clone()).or_default().push(g);
        }
        for ident in &page {
            out.identities += 1;
            let ledger = by_key.get(&ident.key).map_or(&[][..], |v| v);
            let entitled = ident.lifecycle.entitled();
            if entitled && ledger.iter().any(|g| g.desired == GrantState::Present) {
                out.population += 1;
            }
            let granted = requests.get(&ident.key).map_or(&[][..], |v| v);
            let overrides = crate::engine::Overrides {
                moves: &moves,
                requests: granted,
                suspended: suspended.get(&ident.key),
                withdrawn: withdrawn.get(&ident.key).map_or(&[][..], |v| v),
            };
            match engine.changes_for(ident, ledger, &overrides, now) {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => out.people.push(IdentityPlan {
                    key: ident.key.clone(),
                    entitled,
                    changes,
                    held: false,
                    rejected: false,
                }),
                Err(e) => out.failed.push((ident.key.clone(), e.to_string())),
            }
        }
        after = last.key.to_string();
    }
    let approved: BTreeSet<PersonKey> = store::approved_holds(pool, HOLD_SOURCE, HOLD_KIND)
        .await?
        .into_iter()
        .map(|h| h.key)
        .collect();
    let rejected: BTreeSet<PersonKey> =
        store::rejected_hold_keys(pool, HOLD_SOURCE, HOLD_KIND, &out.fingerprint)
            .await?
            .into_iter()
            .collect();
    let minimum = engine.config.reconcile.mass_change_minimum;
    apply_safeguard(&mut out, threshold(engine), minimum, &approved, &rejected);
    Ok(out)
}

/// Hold entitled people's revocations when more than `threshold` of the population, and at least
/// `minimum` people, would lose a grant; people an approver already approved go ahead, and people
/// whose revocations an approver rejected under this policy keep their grants without being asked
/// about again.
fn apply_safeguard(
    plan: &mut ReconcilePlan,
    threshold: f64,
    minimum: usize,
    approved: &BTreeSet<PersonKey>,
    rejected: &BTreeSet<PersonKey>,
) {
    for p in plan.people.iter_mut() {
        p.rejected = p.entitled && p.revokes().next().is_some() && rejected.contains(&p.key);
    }
    let losing = |p: &IdentityPlan| p.entitled && !p.rejected && p.revokes().next().is_some();
    let count = plan
        .people
        .iter()
        .filter(|p| losing(p) && !approved.contains(&p.key))
        .count();
    if count == 0 || count < minimum || count as f64 <= threshold * plan.population as f64 {
        return;
    }
    let mut by_target: BTreeMap<String, usize> = BTreeMap::new();
    for p in plan.people.iter().filter(|p| losing(p)) {
        for c in p.revokes() {
            *by_target
                .entry(format!("{}:{}", c.connector(), c.target()))
                .or_default() += 1;
        }
    }
    let mut targets: Vec<(String, usize)> = by_target.into_iter().collect();
    targets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let shown: Vec<String> = targets
        .iter()
        .take(5)
        .map(|(t, n)| format!("{t} x{n}"))
        .collect();
    let more = targets.len().saturating_sub(5);
    plan.hold_reason = Some(format!(
        "policy change would revoke grants of {count} of {} entitled people ({:.1} %), above the {:.0} % threshold: {}{}",
        plan.population,
        100.0 * count as f64 / plan.population.max(1) as f64,
        100.0 * threshold,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more targets")
        } else {
            String::new()
        }
    ));
    for p in plan.people.iter_mut() {
        if losing(p) && !approved.contains(&p.key) {
            p.held = true;
        }
    }
}

/// The diff of one held person, for `latchkey status`.
fn held_reason(p: &IdentityPlan, overall: &str) -> String {
    let doors: Vec<String> = p
        .revokes()
        .map(|c| match c {
            Change::Revoke(g) => format!("{}:{} (template {})", g.connector, g.target, g.template),
            Change::Issue(d) => format!("{}:{}", d.connector, d.target),
        })
        .collect();
    format!("would revoke {}; {overall}", doors.join(", "))
}

/// Plan and carry out a full reconciliation, recording the fingerprint it ran against.
pub async fn run(
    engine: &Engine,
    why: &str,
) -> Result<(ReconcilePlan, ReconcileReport), EngineError> {
    let now = engine.clock.now();
    let plan = plan(engine, now).await?;
    let report = execute(engine, &plan, why, now).await?;
    Ok((plan, report))
}

async fn execute(
    engine: &Engine,
    plan: &ReconcilePlan,
    why: &str,
    now: DateTime<Utc>,
) -> Result<ReconcileReport, EngineError> {
    let now_us = to_micros(now);
    let overall = plan.hold_reason.clone().unwrap_or_default();
    let mut report = ReconcileReport::default();
    for chunk in plan.people.chunks(BATCH) {
        let mut tx = engine.store.begin_write().await?;
        // The chunk's people are read together, planned, and written together.
        let keys: Vec<&str> = chunk.iter().map(|p| p.key.as_str()).collect();
        let mut batch = Batch::load(&mut tx, &keys, now).await?;
        for p in chunk {
            if p.held {
                store::hold_under_policy(
                    &mut tx,
                    HOLD_SOURCE,
                    &p.key,
                    HOLD_KIND,
                    &held_reason(p, &overall),
                    Some(&plan.fingerprint),
                    &engine.requester("reconcile"),
                    now_us,
                )
                .await?;
                report.held += p.revokes().count() as u64;
            }
            let why = Evaluation {
                kind: ChangeKind::Reconcile,
                actor: "reconcile",
                hold_revokes: p.held || p.rejected,
                trigger_at: now,
            };
            engine
                .stage_evaluation(&mut tx, &mut batch, &p.key, &why)
                .await?;
            if !p.held && !p.rejected {
                store::mark_holds_executed(&mut tx, HOLD_SOURCE, &p.key, now_us).await?;
            }
        }
        batch.flush(&mut tx).await?;
        tx.commit().await?;
        for p in chunk {
            let a = batch.applied_of(&p.key);
            report.issues += a.issues;
            report.revokes += a.revokes;
        }
    }
    finish(engine, plan, why, report, now).await?;
    Ok(report)
}

/// Release holds policy no longer asks for (a typo fixed), record the fingerprint and audit.
async fn finish(
    engine: &Engine,
    plan: &ReconcilePlan,
    why: &str,
    report: ReconcileReport,
    now: DateTime<Utc>,
) -> Result<(), EngineError> {
    let now_us = to_micros(now);
    let still: BTreeSet<&str> = plan
        .people
        .iter()
        .filter(|p| p.held)
        .map(|p| p.key.as_str())
        .collect();
    let stale: Vec<PersonKey> = store::held_changes(engine.store.pool())
        .await?
        .into_iter()
        .filter(|h| h.source == HOLD_SOURCE && !still.contains(h.key.as_str()))
        .map(|h| h.key)
        .collect();
    let mut tx = engine.store.begin_write().await?;
    for key in &stale {
        store::release_held_for(&mut tx, HOLD_SOURCE, key, now_us).await?;
    }
    store::set_policy_state(&mut tx, STATE, &plan.fingerprint, now_us).await?;
    audit::append(
        &mut tx,
        now_us,
        "reconcile",
        "reconcile.completed",
        STATE,
        &serde_json::json!({
            "why": why, "fingerprint": plan.fingerprint, "identities": plan.identities,
            "issues": report.issues, "revokes": report.revokes, "held": report.held,
            "hold_reason": plan.hold_reason, "failed": plan.failed.len(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Why a reconciliation is due now, if it is: first start, a changed fingerprint, the schedule, or
/// held revocations an approver approved.
pub async fn due(engine: &Engine, now: DateTime<Utc>) -> Result<Option<String>, EngineError> {
    let pool = engine.store.pool();
    let Some((fp, at)) = store::policy_state(pool, STATE).await? else {
        return Ok(Some("first start".into()));
    };
    if fp != fingerprint(engine) {
        return Ok(Some("policy changed".into()));
    }
    let schedule = engine.config.reconcile.schedule.trim();
    if !schedule.is_empty() {
        let cron: croner::Cron = schedule
            .parse()
            .map_err(|e| EngineError::Reconcile(format!("reconcile.schedule `{schedule}`: {e}")))?;
        if cron
            .find_next_occurrence(&from_micros(at), false)
            .is_ok_and(|next| next <= now)
        {
            return Ok(Some("schedule".into()));
        }
    }
    if !store::approved_holds(pool, HOLD_SOURCE, HOLD_KIND)
        .await?
        .is_empty()
    {
        return Ok(Some("approval".into()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredGrant;

    fn person(key: &str, revoke: bool) -> IdentityPlan {
        let g = GrantRow {
            identity_key: key.into(),
            connector: "nuki".into(),
            target: "berlin-lab".into(),
            desired: GrantState::Present,
            observed: GrantState::Present,
            generation: 1,
            vendor_ref: None,
            template: "lab".into(),
            credential: "app".into(),
            window: None,
            valid_until: None,
            updated_at: 0,
        };
        let issue = DesiredGrant {
            connector: "nuki".into(),
            target: "berlin-new".into(),
            credential: "app".into(),
            template: "new".into(),
            window: None,
            valid_until: None,
        };
        IdentityPlan {
            key: key.into(),
            entitled: true,
            changes: if revoke {
                vec![Change::Revoke(g)]
            } else {
                vec![Change::Issue(issue)]
            },
            held: false,
            rejected: false,
        }
    }

    #[test]
    fn mass_revocation_is_held_with_its_diff_and_approved_people_go_ahead() {
        let mut plan = ReconcilePlan {
            population: 5,
            people: vec![
                person("E1", true),
                person("E2", true),
                person("E3", true),
                person("E4", false),
            ],
            ..Default::default()
        };
        apply_safeguard(
            &mut plan,
            0.2,
            1,
            &[PersonKey::from("E1")].into(),
            &BTreeSet::new(),
        );
        assert_eq!(plan.summary(), "Plan: 1 to issue, 1 to revoke, 2 held");
        let reason = plan.hold_reason.clone().unwrap();
        assert!(
            reason.contains("2 of 5") && reason.contains("nuki:berlin-lab x3"),
            "{reason}"
        );
        let mut small = ReconcilePlan {
            population: 10,
            people: vec![person("E1", true), person("E2", true)],
            ..Default::default()
        };
        apply_safeguard(&mut small, 0.2, 1, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(small.summary(), "Plan: 0 to issue, 2 to revoke, 0 held");
        // Two of a population of three is a large share but few people: below the minimum.
        let tiny = || ReconcilePlan {
            population: 3,
            people: vec![person("E1", true), person("E2", true)],
            ..Default::default()
        };
        let mut below = tiny();
        apply_safeguard(&mut below, 0.2, 3, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(below.summary(), "Plan: 0 to issue, 2 to revoke, 0 held");
        let mut at = tiny();
        apply_safeguard(&mut at, 0.2, 2, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(at.summary(), "Plan: 0 to issue, 0 to revoke, 2 held");
        // E1's revocation was rejected under this policy: kept, and no longer counted, so E2 alone
        // is below the minimum and goes ahead.
        let mut kept = tiny();
        apply_safeguard(&mut kept, 0.2, 2, &BTreeSet::new(), &["E1".into()].into());
        assert_eq!(
            kept.summary(),
            "Plan: 0 to issue, 1 to revoke, 0 held, 1 kept (rejected)"
        );
    }
}
