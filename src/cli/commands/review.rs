//! `latchkey review start|list|show|certify|revoke|reinstate|export`: access reviews from the
//! shell, as the OS user (see `crate::reviews`). The running daemon revokes what is enqueued here
//! and applies each campaign's deadline on its schedule.

use crate::cli::output::time;
use crate::cli::{ConfigArg, lookup, open_reader};
use crate::config::OnDeadline;
use crate::reviews::{self, Decision, ReviewError, Scope};
use chrono::{DateTime, Utc};

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    #[command(subcommand)]
    pub command: ReviewCommand,
}

/// What a campaign covers: exactly one.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// One door (target), at whichever connector.
    #[arg(long)]
    target: Option<String>,
    /// Every door of a risk tier (`[tiers.NAME]`).
    #[arg(long)]
    tier: Option<String>,
    /// Every door at a connector.
    #[arg(long)]
    connector: Option<String>,
    /// Every door held by the people who report to this manager (their `manager` attribute).
    #[arg(long)]
    manager: Option<String>,
}

impl ScopeArgs {
    fn scope(self) -> Scope {
        match (self.target, self.tier, self.connector, self.manager) {
            (Some(t), ..) => Scope::Target(t),
            (_, Some(t), ..) => Scope::Tier(t),
            (_, _, Some(c), _) => Scope::Connector(c),
            (.., Some(m)) => Scope::Manager(m),
            _ => unreachable!("clap requires one scope"),
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ReviewCommand {
    /// Start a campaign: the current holders of the doors it covers become items to certify or
    /// revoke by the deadline.
    Start {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The deadline (RFC 3339).
        #[arg(long, value_parser = super::request::parse_time, required_unless_present = "days")]
        deadline: Option<DateTime<Utc>>,
        /// Or: how many days from now.
        #[arg(long, conflicts_with = "deadline")]
        days: Option<u32>,
        /// What happens to undecided items at the deadline.
        #[arg(long, value_parser = ["revoke", "escalate"], default_value = "revoke")]
        on_deadline: String,
        /// A name for the campaign (default: its scope).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Campaigns, newest first, with how many items are still to decide.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A campaign's items: who holds which door, why, and the decision.
    Show {
        id: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Certify an item: the person keeps the door.
    Certify {
        item: i64,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke an item: the door is revoked at the vendor and withheld from the templates.
    Revoke {
        item: i64,
        /// Why the person should not hold the door (required).
        #[arg(long)]
        note: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Give back a door a review withdrew: policy grants it again if a template still does.
    Reinstate {
        /// Correlation key, e-mail or full name.
        person: String,
        #[arg(long)]
        connector: String,
        #[arg(long)]
        target: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A campaign's evidence as JSON: its items, decisions and the audit records of each step
    /// with their chain hashes.
    Export {
        id: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn refused(e: ReviewError) -> anyhow::Result<i32> {
    match e {
        ReviewError::Invalid(_)
        | ReviewError::NoCampaign(_)
        | ReviewError::NoItem(_)
        | ReviewError::Decided { .. }
        | ReviewError::Closed { .. } => {
            eprintln!("review: {e}");
            Ok(1)
        }
        other => Err(other.into()),
    }
}

pub async fn run(args: ReviewArgs) -> anyhow::Result<i32> {
    let by = crate::operators::os_actor();
    match args.command {
        ReviewCommand::Start {
            scope,
            deadline,
            days,
            on_deadline,
            name,
            config,
        } => start(scope, deadline, days, &on_deadline, name, &config, &by).await,
        ReviewCommand::List { config } => list(&config).await,
        ReviewCommand::Show { id, config } => show(id, &config).await,
        ReviewCommand::Certify { item, note, config } => {
            decide(item, Decision::Certify, note.as_deref(), &config, &by).await
        }
        ReviewCommand::Revoke { item, note, config } => {
            decide(item, Decision::Revoke, Some(&note), &config, &by).await
        }
        ReviewCommand::Reinstate {
            person,
            connector,
            target,
            reason,
            config,
        } => reinstate(&person, &connector, &target, &reason, &config, &by).await,
        ReviewCommand::Export { id, config } => export(id, &config).await,
    }
}

/// `review start`: the current holders of the doors in scope become items to decide by the
/// deadline (`--deadline`, or `--days` from now).
async fn start(
    scope: ScopeArgs,
    deadline: Option<DateTime<Utc>>,
    days: Option<u32>,
    on_deadline: &str,
    name: Option<String>,
    config: &ConfigArg,
    by: &str,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let deadline = match (deadline, days) {
        (Some(d), _) => d,
        (None, Some(days)) => app.engine.clock.now() + chrono::Duration::days(i64::from(days)),
        (None, None) => unreachable!("clap requires --deadline or --days"),
    };
    let start = reviews::Start {
        name,
        scope: scope.scope(),
        deadline,
        on_deadline: OnDeadline::parse(on_deadline).unwrap_or_default(),
    };
    match reviews::start(&app.engine, &start, by).await {
        Ok((c, items)) => {
            println!(
                "review {} ({}) started by {by}: {} items to decide by {} (then {}); `latchkey review show {}`",
                c.id,
                c.name,
                items.len(),
                time(c.deadline_at),
                c.on_deadline,
                c.id
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

/// `review list`: campaigns, newest first, with how many items are still to decide.
async fn list(config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let rows = crate::store::reviews::campaigns(app.store().pool(), 1000).await?;
    if rows.is_empty() {
        println!("no review campaigns");
    }
    let mut conn = app.store().pool().acquire().await?;
    for c in rows {
        let pending = crate::store::reviews::pending_count(&mut conn, c.id).await?;
        println!(
            "#{:<4} {:<9} {:<28} deadline {}  {} to decide  (then {}; started by {})",
            c.id,
            c.status,
            c.name,
            time(c.deadline_at),
            pending,
            c.on_deadline,
            c.started_by
        );
    }
    Ok(0)
}

/// `review show`: a campaign and its items, each with its decision.
async fn show(id: i64, config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let mut conn = app.store().pool().acquire().await?;
    let Some(c) = crate::store::reviews::get_campaign(&mut conn, id).await? else {
        return refused(ReviewError::NoCampaign(id));
    };
    println!(
        "review {} ({}): {} {}, {}, deadline {} (then {})",
        c.id,
        c.name,
        c.scope_kind,
        c.scope_value,
        c.status,
        time(c.deadline_at),
        c.on_deadline
    );
    for i in crate::store::reviews::items(&mut conn, id).await? {
        println!(
            "  item {:<5} {:<12} {}@{}  by {} ({})  {}",
            i.id,
            i.identity_key,
            i.target,
            i.connector,
            i.template,
            i.basis,
            match (&i.decision, &i.decided_by) {
                (Some(d), Some(by)) => format!("{d} by {by}"),
                _ => "to decide".into(),
            }
        );
    }
    Ok(0)
}

/// `review reinstate`: a door a review withdrew is given back; policy grants it again if a
/// template still does.
async fn reinstate(
    person: &str,
    connector: &str,
    target: &str,
    reason: &str,
    config: &ConfigArg,
    by: &str,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let Some(key) = lookup::person_key(&app, person, "review").await? else {
        return Ok(1);
    };
    match reviews::reinstate(&app.engine, &key, connector, target, reason, by).await {
        Ok(a) => {
            println!(
                "{target} at {connector} reinstated for {key} by {by}: {} issues enqueued",
                a.issues
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

/// `review export`: a campaign's evidence as JSON.
async fn export(id: i64, config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    match reviews::evidence(&app.engine, id).await {
        Ok(e) => {
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

async fn decide(
    item: i64,
    decision: Decision,
    note: Option<&str>,
    config: &ConfigArg,
    by: &str,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    match reviews::decide(&app.engine, item, decision, note, by).await {
        Ok((i, a)) => {
            println!(
                "item {item} {} by {by}: {} at {} ({}){}",
                i.decision.as_deref().unwrap_or("decided"),
                i.identity_key,
                i.target,
                i.connector,
                if a.revokes > 0 {
                    format!(", {} revocation enqueued", a.revokes)
                } else {
                    String::new()
                }
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}
