//! `latchkey bench --sections reconcile`: plan a full reconciliation of a large store (identities
//! streamed in pages, every template evaluated, every ledger compared), writing nothing, against the
//! target of 20,000 identities per second.

use crate::clock::{self, to_micros};
use crate::config::{Config, ConfigInput};
use crate::engine::Engine;
use crate::model::GrantState;
use crate::model::Lifecycle;
use crate::policy::Policy;
use crate::store::{self, GrantRow, IdentityRow, Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Identities planned per second that the design asks for.
pub const TARGET_PER_SECOND: f64 = 20_000.0;

/// Five templates: four the ledger already holds, and one new door every engineer gets, so the plan
/// has issues to find as after a template edit.
pub(super) const TEMPLATES: &str = r#"version = 1
[[templates]]
name = "department-door"
when = "employment_type == 'employee'"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-{{ department }}"

[[templates]]
name = "engineering-lab"
when = "department == 'engineering' and employment_type == 'employee'"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-lab"

[[templates]]
name = "plant-room"
when = "role == 'technician' or department == 'facilities'"
[[templates.grants]]
connector = "keys"
target = "{{ site }}-plant-room"
credential = "physical_key"

[[templates]]
name = "management-floor"
when = "role == 'manager'"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-management"

[[templates]]
name = "engineering-workshop"
when = "department == 'engineering'"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-workshop"
"#;

const DEPARTMENTS: &[&str] = &[
    "engineering",
    "sales",
    "facilities",
    "finance",
    "operations",
];
const SITES: &[&str] = &["berlin", "london", "new-york"];
const ROLES: &[&str] = &["analyst", "technician", "manager", "engineer"];

pub struct ReconcileFigures {
    pub identities: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// The process's peak resident memory during the plan (Linux), in MiB.
    pub peak_mib: Option<f64>,
    pub ok: bool,
}

/// Reset the process's peak resident memory (Linux `clear_refs` 5), so the next read of the peak
/// covers only what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    super::proc_status_mib("VmHWM")
}

fn attrs_of(i: usize) -> BTreeMap<String, String> {
    [
        ("department", DEPARTMENTS[i % DEPARTMENTS.len()]),
        ("site", SITES[i % SITES.len()]),
        ("role", ROLES[(i / 7) % ROLES.len()]),
        ("employment_type", "employee"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Fill the store: every identity with the grants the first four templates give.
pub(super) async fn populate(engine: &Engine, n: usize) -> anyhow::Result<()> {
    let now = engine.clock.now();
    let now_us = to_micros(now);
    for start in (0..n).step_by(5_000) {
        let mut tx = engine.store.begin_write().await?;
        for i in start..(start + 5_000).min(n) {
            let attrs = attrs_of(i);
            let row = IdentityRow {
                key: format!("E{i:07}").into(),
                lifecycle: Lifecycle::Active,
                lifecycle_since: 0,
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
                site: attrs.get("site").cloned(),
                next_change_at: None,
                updated_at: now_us,
            };
            store::put_identity(&mut tx, &row).await?;
            let desired =
                engine
                    .policy()
                    .desired(&row.key, row.lifecycle, &attrs, chrono_tz::UTC, now)?;
            for d in desired
                .iter()
                .filter(|d| d.template != "engineering-workshop")
            {
                let g = GrantRow {
                    identity_key: row.key.clone(),
                    connector: d.connector.clone(),
                    target: d.target.clone(),
                    desired: GrantState::Present,
                    observed: GrantState::Present,
                    generation: 1,
                    vendor_ref: None,
                    template: d.template.clone(),
                    credential: d.credential.clone(),
                    window: None,
                    valid_until: None,
                    updated_at: now_us,
                };
                store::put_grant(&mut tx, &g).await?;
            }
        }
        tx.commit().await?;
    }
    Ok(())
}

pub async fn reconcile_plan(n: usize, dir: &Path) -> anyhow::Result<ReconcileFigures> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("templates.toml"), TEMPLATES)?;
    let url = format!("sqlite://{}", dir.join("reconcile.db").display());
    let path = dir.join("latchkey.toml");
    std::fs::write(
        &path,
        format!(
            "version = 1\n[store]\nurl = \"{url}\"\n[policy]\ntemplates = \"templates.toml\"\n"
        ),
    )?;
    let config = Config::load(&ConfigInput::from_file(&path, BTreeMap::new())?)?;
    let policy = Arc::new(Policy::load(
        &config.resolve(&config.policy.templates),
        &[],
    )?);
    let store = Store::connect(&config.store_url()?, 4).await?;
    let engine = Engine::new(store, clock::system(), Arc::new(config), policy)?;
    println!("reconcile: {n} identities, 5 templates (plan only, nothing written)");
    let started = Instant::now();
    populate(&engine, n).await?;
    println!("  store filled in {:.1} s", started.elapsed().as_secs_f64());
    reset_peak_rss();
    let started = Instant::now();
    let plan = engine.dry_run().await?;
    let peak_mib = peak_rss_mib();
    let seconds = started.elapsed().as_secs_f64();
    let per_second = plan.identities as f64 / seconds.max(1e-9);
    println!("  {}", plan.summary());
    println!(
        "  planned {} identities in {seconds:.2} s = {per_second:.0} identities/s = {:.2} x the target of {TARGET_PER_SECOND:.0}/s",
        plan.identities,
        per_second / TARGET_PER_SECOND
    );
    let engineers = n.div_ceil(DEPARTMENTS.len());
    Ok(ReconcileFigures {
        identities: plan.identities,
        seconds,
        per_second,
        peak_mib,
        ok: plan.identities == n && plan.to_issue() == engineers,
    })
}
