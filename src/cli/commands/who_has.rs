//! `latchkey who-has TARGET`: who holds a target (lock, group) by grant confirmed at the vendor,
//! and whose cabinet keys are out. The target is named by its name in a target map or by the
//! vendor's own id.

use crate::app::App;
use crate::cli::output::{Capped, ListArg, print_json, time};
use crate::cli::{ConfigArg, lookup, open_reader};
use crate::model::GrantState;
use crate::store;
use serde::Serialize;
use std::fmt::Write;

pub const SCHEMA: &str = "latchkey.who-has/v1";

#[derive(Debug, clap::Args)]
pub struct WhoHasArgs {
    /// Target name (from a connector's target map) or the vendor's own id for it.
    pub target: String,
    #[command(flatten)]
    pub list: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct WhoHas {
    query: String,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Target {
    target: String,
    /// `name` when the query is the target's name, `vendor_id` when it is the vendor's id for it.
    matched_by: &'static str,
    holders: Capped<Holder>,
    cabinet_keys: Capped<CabinetKey>,
}

#[derive(Debug, Serialize)]
struct Holder {
    identity: String,
    connector: String,
    template: String,
    desired: String,
}

#[derive(Debug, Serialize)]
struct CabinetKey {
    identity: String,
    key_id: String,
    key_group: Option<String>,
    connector: String,
    taken_at: String,
    overdue: bool,
}

pub async fn run(args: WhoHasArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let target = &args.target;
    let pool = app.store().pool();
    let on_record = !store::grants_on_target(pool, target).await?.is_empty()
        || !store::cabinet_holders(pool, target).await?.is_empty();
    let names = lookup::targets(&app.engine.config, target, on_record);
    if names.is_empty() {
        eprintln!(
            "who-has: no target or vendor id `{target}` in any connector's target map, \
             and no grant on record for it"
        );
        return Ok(1);
    }
    let mut answer = WhoHas {
        query: target.clone(),
        targets: Vec::new(),
    };
    for name in names {
        answer
            .targets
            .push(holders(&app, &name, target, &args.list).await?);
    }
    if args.list.json() {
        print_json(SCHEMA, &answer)?;
    } else {
        print!("{}", answer.render());
    }
    Ok(0)
}

async fn holders(app: &App, name: &str, query: &str, list: &ListArg) -> anyhow::Result<Target> {
    let pool = app.store().pool();
    let held = store::grants_on_target(pool, name)
        .await?
        .into_iter()
        .filter(|g| g.observed == GrantState::Present)
        .map(|g| Holder {
            identity: g.identity_key.into(),
            connector: g.connector,
            template: g.template,
            desired: g.desired.to_string(),
        })
        .collect();
    let keys = store::cabinet_holders(pool, name)
        .await?
        .into_iter()
        .map(|k| CabinetKey {
            identity: k.identity_key.into(),
            key_id: k.key_id,
            key_group: k.key_group,
            connector: k.connector,
            taken_at: time(k.taken_at),
            overdue: k.overdue_at.is_some(),
        })
        .collect();
    Ok(Target {
        target: name.to_string(),
        matched_by: if name == query { "name" } else { "vendor_id" },
        holders: list.cap(held),
        cabinet_keys: list.cap(keys),
    })
}

impl WhoHas {
    fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.targets {
            let name = &t.target;
            if t.matched_by == "vendor_id" {
                let _ = writeln!(out, "{} is the vendor id of {name}", self.query);
            }
            let _ = writeln!(out, "{name}: {} people hold it", t.holders.total);
            for g in &t.holders.items {
                let _ = writeln!(
                    out,
                    "  {:<10} via {:<8} template {} (desired {})",
                    g.identity, g.connector, g.template, g.desired
                );
            }
            t.holders.more_line(&mut out, "  ");
            if t.cabinet_keys.total > 0 {
                let _ = writeln!(out, "{name}: {} cabinet keys out", t.cabinet_keys.total);
            }
            for k in &t.cabinet_keys.items {
                let _ = writeln!(
                    out,
                    "  {:<10} holds key {} (group {}) from {} since {}{}",
                    k.identity,
                    k.key_id,
                    k.key_group.as_deref().unwrap_or("-"),
                    k.connector,
                    k.taken_at,
                    if k.overdue { ", OVERDUE" } else { "" }
                );
            }
            t.cabinet_keys.more_line(&mut out, "  ");
        }
        out
    }
}
