//! `latchkey request ask|list|approve|reject|end`: temporary access from the shell, as the OS user
//! (see `crate::access_requests`). The running daemon issues and revokes what is enqueued here and
//! starts and ends windows on its schedule.

use crate::access_requests::{self, RequestError};
use crate::cli::{ConfigArg, lookup, open_reader};
use chrono::{DateTime, Utc};

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(subcommand)]
    pub command: RequestCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum RequestCommand {
    /// Ask for a door for a person, for a window, with a reason (an approver must approve it).
    Ask {
        /// Correlation key, e-mail or full name.
        person: String,
        #[arg(long)]
        connector: String,
        /// A target in the connector's target map.
        #[arg(long)]
        target: String,
        /// When the window opens (RFC 3339); now when left out.
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// When it closes (RFC 3339), at most 31 days after it opens.
        #[arg(long, value_parser = parse_time, required_unless_present = "hours")]
        until: Option<DateTime<Utc>>,
        /// Or: how many hours from its start.
        #[arg(long, conflicts_with = "until")]
        hours: Option<u32>,
        /// Why: recorded with the request and in the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Requests, newest first.
    List {
        /// Only this status (requested, approved, active, expired, ended, rejected).
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve a request (dual control: not one you asked for).
    Approve {
        id: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reject a request.
    Reject {
        id: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// End a request now: its door is revoked unless a template grants it.
    End {
        id: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub(super) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time (2026-12-06T14:00:00Z): {e}"))
}

fn refused(e: RequestError) -> anyhow::Result<i32> {
    match e {
        RequestError::Invalid(_)
        | RequestError::NotFound(_)
        | RequestError::WrongState { .. }
        | RequestError::DualControl { .. }
        | RequestError::NotAnApprover { .. }
        | RequestError::AlreadyApproved { .. } => {
            eprintln!("request: {e}");
            Ok(1)
        }
        other => Err(other.into()),
    }
}

pub async fn run(args: RequestArgs) -> anyhow::Result<i32> {
    let by = crate::operators::os_actor();
    match args.command {
        RequestCommand::Ask {
            person,
            connector,
            target,
            from,
            until,
            hours,
            reason,
            config,
        } => {
            let window = Window { from, until, hours };
            ask(person, connector, target, window, reason, &config, &by).await
        }
        RequestCommand::List { status, config } => list(status.as_deref(), &config).await,
        RequestCommand::Approve { id, config } => decide(id, true, &config, &by).await,
        RequestCommand::Reject { id, config } => decide(id, false, &config, &by).await,
        RequestCommand::End { id, config } => end(id, &config, &by).await,
    }
}

/// The window `request ask` asks for, as given: `--from` (or now) until `--until` or for `--hours`.
struct Window {
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    hours: Option<u32>,
}

/// `request ask`: a door for a person, for a window, waiting for an approver.
async fn ask(
    person: String,
    connector: String,
    target: String,
    window: Window,
    reason: String,
    config: &ConfigArg,
    by: &str,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let Some(key) = lookup::person_key(&app, &person, "request").await? else {
        return Ok(1);
    };
    let Window { from, until, hours } = window;
    let start = from.unwrap_or_else(|| app.engine.clock.now());
    let ends_at = match (until, hours) {
        (Some(u), _) => u,
        (None, Some(h)) => start + chrono::Duration::hours(i64::from(h)),
        (None, None) => unreachable!("clap requires --until or --hours"),
    };
    let ask = access_requests::Ask {
        person: key,
        connector,
        target,
        starts_at: from,
        ends_at,
        reason,
    };
    match access_requests::ask(&app.engine, &ask, by).await {
        Ok(r) => {
            println!(
                "request {} for {} at {} ({}) by {by}: waiting for an approver (`latchkey request approve {}`)",
                r.id, r.identity_key, r.target, r.connector, r.id
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

/// `request list`: requests (of one status, when given), newest first.
async fn list(status: Option<&str>, config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let rows = crate::store::access_requests::list(app.store().pool(), status, None, 1000).await?;
    if rows.is_empty() {
        println!("no requests");
    }
    for r in rows {
        let time = crate::cli::output::time;
        println!(
            "#{:<5} {:<9} {:<12} {}@{}  {} .. {}  asked by {}{}: {}",
            r.id,
            r.status,
            r.identity_key,
            r.target,
            r.connector,
            time(r.starts_at),
            time(r.ends_at),
            r.requested_by,
            r.decided_by
                .map(|d| format!(", decided by {d}"))
                .unwrap_or_default(),
            r.reason
        );
    }
    Ok(0)
}

/// `request end`: the request ends now; its door is revoked unless a template grants it.
async fn end(id: i64, config: &ConfigArg, by: &str) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    match access_requests::end(&app.engine, id, by).await {
        Ok((r, a)) => {
            println!(
                "request {id} ended by {by}: {} revocations enqueued for {} at {}",
                a.revokes, r.identity_key, r.target
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

async fn decide(id: i64, approve: bool, config: &ConfigArg, by: &str) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    match access_requests::decide(&app.engine, id, approve, by).await {
        Ok((r, _)) if approve && r.status == "requested" => {
            println!(
                "request {id}: approval by {by} recorded; the risk tier of {} needs another approver",
                r.target
            );
            Ok(0)
        }
        Ok((r, a)) => {
            println!(
                "request {id} {} by {by}: {} for {} at {}{}",
                r.status,
                r.target,
                r.identity_key,
                r.connector,
                if a.issues > 0 {
                    format!(" ({} issue enqueued: the window has begun)", a.issues)
                } else {
                    String::new()
                }
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

#[derive(Debug, clap::Args)]
pub struct BreakGlassArgs {
    #[command(subcommand)]
    pub command: BreakGlassCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BreakGlassCommand {
    /// Give a person a door now, in an emergency, for a short time (`[break_glass]`): in force at
    /// once and reviewed afterwards by another approver, or waiting for a second approver.
    Open {
        /// Correlation key, e-mail or full name.
        person: String,
        #[arg(long)]
        connector: String,
        #[arg(long)]
        target: String,
        /// How long (default `[break_glass] default_minutes`).
        #[arg(long)]
        minutes: Option<u32>,
        /// What the emergency is: recorded and shown to the reviewer.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Emergencies awaiting review, oldest deadline first.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Record the review of an emergency someone else opened.
    Review {
        id: i64,
        /// What happened and whether it was justified.
        #[arg(long)]
        note: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub async fn break_glass(args: BreakGlassArgs) -> anyhow::Result<i32> {
    let by = crate::operators::os_actor();
    match args.command {
        BreakGlassCommand::Open {
            person,
            connector,
            target,
            minutes,
            reason,
            config,
        } => open_emergency(person, connector, target, minutes, reason, &config, &by).await,
        BreakGlassCommand::List { config } => awaiting_review(&config).await,
        BreakGlassCommand::Review { id, note, config } => review(id, &note, &config, &by).await,
    }
}

/// `break-glass open`: a door now, in an emergency; in force at once (reviewed afterwards by
/// another approver) or waiting for a second approver.
async fn open_emergency(
    person: String,
    connector: String,
    target: String,
    minutes: Option<u32>,
    reason: String,
    config: &ConfigArg,
    by: &str,
) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    let Some(key) = lookup::person_key(&app, &person, "break-glass").await? else {
        return Ok(1);
    };
    let ask = access_requests::Ask {
        person: key,
        connector,
        target,
        starts_at: None,
        ends_at: app.engine.clock.now(),
        reason,
    };
    match access_requests::open_emergency(&app.engine, &ask, minutes, by).await {
        Ok((r, a)) => {
            let time = crate::cli::output::time;
            if r.status == "active" {
                println!(
                    "EMERGENCY {}: {} at {} for {} until {} by {by} ({} issue enqueued); \
                     another approver must review it by {} (`latchkey break-glass review {} --note ...`)",
                    r.id,
                    r.target,
                    r.connector,
                    r.identity_key,
                    time(r.ends_at),
                    a.issues,
                    r.review_due_at.map(time).unwrap_or_default(),
                    r.id
                );
            } else {
                println!(
                    "EMERGENCY {}: {} at {} for {} asked by {by}; a second approver must \
                     approve it (`latchkey request approve {}`)",
                    r.id, r.target, r.connector, r.identity_key, r.id
                );
            }
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

/// `break-glass list`: emergencies awaiting review, oldest deadline first.
async fn awaiting_review(config: &ConfigArg) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    // The whole queue, however old: an unreviewed emergency is never paged out of sight.
    let rows = crate::store::access_requests::awaiting_review(app.store().pool()).await?;
    if rows.is_empty() {
        println!("no emergency awaits review");
    }
    let now = crate::clock::to_micros(app.engine.clock.now());
    let time = crate::cli::output::time;
    for r in rows {
        let due = r.review_due_at.unwrap_or_default();
        println!(
            "#{:<5} {:<8} {}@{} for {} opened by {} at {}: {}; review due {}{}",
            r.id,
            r.status,
            r.target,
            r.connector,
            r.identity_key,
            r.requested_by,
            time(r.requested_at),
            r.reason,
            time(due),
            if due <= now { " (OVERDUE)" } else { "" }
        );
    }
    Ok(0)
}

/// `break-glass review`: the review of an emergency someone else opened.
async fn review(id: i64, note: &str, config: &ConfigArg, by: &str) -> anyhow::Result<i32> {
    let app = open_reader(config).await?;
    match access_requests::review(&app.engine, id, note, by).await {
        Ok(r) => {
            println!(
                "emergency {id} ({} for {}, opened by {}) reviewed by {by}",
                r.target, r.identity_key, r.requested_by
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}

#[derive(Debug, clap::Args)]
pub struct VisitorArgs {
    #[command(subcommand)]
    pub command: VisitorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum VisitorCommand {
    /// Record a visitor (no feed knows them) until their last day; give them doors with
    /// `latchkey request ask`.
    Add {
        /// A key of their own, e.g. `V-2026-0042`.
        key: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Their site (its time zone ends their last day).
        #[arg(long)]
        site: Option<String>,
        /// The person they visit (key).
        #[arg(long)]
        host: String,
        /// Their last day (YYYY-MM-DD), at most 31 days ahead.
        #[arg(long)]
        until: chrono::NaiveDate,
        /// What the visit is for.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub async fn visitor(args: VisitorArgs) -> anyhow::Result<i32> {
    let by = crate::operators::os_actor();
    let VisitorCommand::Add {
        key,
        name,
        email,
        site,
        host,
        until,
        reason,
        config,
    } = args.command;
    let app = open_reader(&config).await?;
    let v = crate::visitors::Visitor {
        key,
        name,
        email,
        site,
        host,
        until,
        reason,
    };
    match crate::visitors::add(&app.engine, &v, &by).await {
        Ok(()) => {
            println!(
                "visitor {} ({}) recorded by {by} until the end of {}; doors: `latchkey request ask {} ...`",
                v.key, v.name, v.until, v.key
            );
            Ok(0)
        }
        Err(e) => refused(e),
    }
}
