//! `latchkey access PERSON`: what a person holds, at which vendor, from which template, and who
//! approved that template. The person is named by key, e-mail or name (see `cli::lookup`).

use crate::app::App;
use crate::cli::output::{Capped, ListArg, print_json, time};
use crate::cli::{ConfigArg, lookup, open_reader};
use crate::store;
use serde::Serialize;
use std::fmt::Write;

pub const SCHEMA: &str = "latchkey.access/v1";

#[derive(Debug, clap::Args)]
pub struct AccessArgs {
    /// Correlation key, e-mail or full name.
    pub person: String,
    #[command(flatten)]
    pub list: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
pub struct Access {
    pub person: Person,
    pub grants: Capped<Grant>,
}

#[derive(Debug, Serialize)]
pub struct Person {
    pub key: String,
    pub name: Option<String>,
    pub lifecycle: String,
    pub since: String,
    /// An operator's active suspension, if any.
    pub suspension: Option<Suspension>,
}

#[derive(Debug, Serialize)]
pub struct Suspension {
    pub since: String,
    pub by: String,
    pub reason: String,
    /// `None`: every connector.
    pub connectors: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct Grant {
    pub connector: String,
    pub target: String,
    /// Where the credential is in its life (`issued`, `active`, `suspended`, `revoking`,
    /// `revoked`, `expired`), as the API and the console show it.
    pub state: String,
    pub desired: String,
    pub observed: String,
    pub template: String,
    pub approved_by: Option<String>,
}

pub async fn run(args: AccessArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let access = match gather(&app, &args.person, &args.list).await? {
        Ok(a) => a,
        Err(e) => {
            eprintln!("access: {e}");
            return Ok(1);
        }
    };
    if args.list.json() {
        print_json(SCHEMA, &access)?;
    } else {
        print!("{}", access.render());
    }
    Ok(0)
}

/// What `latchkey access WHO` prints, every grant listed.
pub async fn access_text(app: &App, who: &str) -> anyhow::Result<String> {
    let all = ListArg::all();
    match gather(app, who, &all).await? {
        Ok(a) => Ok(a.render()),
        Err(e) => anyhow::bail!(e),
    }
}

/// The person `who` names and what they hold; the inner error when nobody (or several) match.
async fn gather(app: &App, who: &str, list: &ListArg) -> anyhow::Result<Result<Access, String>> {
    let mut conn = app.store().pool().acquire().await?;
    let ident = match lookup::person(&mut conn, who).await {
        Ok(i) => i,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let suspension = store::suspensions::active_of(&mut conn, &ident.key)
        .await?
        .into_iter()
        .reduce(|first, later| store::suspensions::SuspensionRow {
            // Several active suspensions read as one: the earliest start, the widest scope.
            connectors: first.connectors.zip(later.connectors).map(|(mut a, b)| {
                a.extend(b);
                a.sort();
                a.dedup();
                a
            }),
            ..first
        })
        .map(|s| Suspension {
            since: time(s.suspended_at),
            by: s.suspended_by,
            reason: s.reason,
            connectors: s.connectors,
        });
    let withheld =
        crate::suspension::Scope::of(&store::suspensions::active_of(&mut conn, &ident.key).await?);
    let grants = store::grants_of(&mut conn, &ident.key)
        .await?
        .into_iter()
        .map(|g| Grant {
            state: crate::api::admin::views::grant_state(
                g.desired,
                g.observed,
                withheld.as_ref().is_some_and(|sc| sc.covers(&g.connector)),
                &g.template,
            )
            .to_string(),
            approved_by: app
                .engine
                .policy()
                .approver_of(&g.template)
                .map(str::to_string),
            connector: g.connector,
            target: g.target,
            desired: g.desired.to_string(),
            observed: g.observed.to_string(),
            template: g.template,
        })
        .collect();
    let access = Access {
        person: Person {
            name: ident.attr("name").map(str::to_string),
            key: ident.key.into(),
            lifecycle: ident.lifecycle.to_string(),
            since: time(ident.lifecycle_since),
            suspension,
        },
        grants: list.cap(grants),
    };
    Ok(Ok(access))
}

impl Access {
    pub fn render(&self) -> String {
        let p = &self.person;
        let mut out = format!(
            "{} ({}) {} since {}\n",
            p.key,
            p.name.as_deref().unwrap_or("-"),
            p.lifecycle,
            p.since
        );
        if let Some(s) = &p.suspension {
            let _ = writeln!(
                out,
                "  SUSPENDED since {} by {} at {}: {}",
                s.since,
                s.by,
                s.connectors
                    .as_ref()
                    .map_or("every connector".to_string(), |c| c.join(", ")),
                s.reason
            );
        }
        for g in &self.grants.items {
            let _ = writeln!(
                out,
                "  {:<8} {:<22} {:<9} desired {:<7} observed {:<7} template {:<28} approved by {}",
                g.connector,
                g.target,
                g.state,
                g.desired,
                g.observed,
                g.template,
                g.approved_by.as_deref().unwrap_or("-")
            );
        }
        self.grants.more_line(&mut out, "  ");
        out
    }
}
