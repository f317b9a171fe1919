//! `latchkey status`: what may leave a leaver with access first (stuck revocations, dead letters),
//! then the outbox, quarantined records, breakers, drift, key tasks and held changes.
//!
//! Each section is one field of [`Status`], gathered by its own function and printed by its own
//! writer, called in order by [`Status::render`]: a new section is a field, a gatherer, a writer of
//! a few table lines and its entry in docs/schemas/status.v1.json.

use super::keys::{self, KeyTask};
use crate::app::App;
use crate::cli::output::{Capped, ListArg, print_json, sql_limit, time};
use crate::cli::{ConfigArg, open_reader};
use crate::model::{CommandId, CommandStatus};
use crate::store;
use serde::Serialize;
use std::fmt::Write;

pub const SCHEMA: &str = "latchkey.status/v1";

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub list: ListArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub stuck_revocations: Capped<StuckRevocation>,
    pub dead_letters: Capped<DeadLetter>,
    pub outbox: Vec<OutboxCount>,
    pub quarantined: Capped<Quarantined>,
    pub breakers_open: usize,
    pub breakers: Vec<Breaker>,
    pub drift_findings: Capped<DriftFinding>,
    pub key_tasks: Capped<KeyTask>,
    pub held: Capped<Held>,
    /// Which replica holds which source, scheduled job and connector lane.
    pub leases: Vec<Lease>,
}

#[derive(Debug, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// False once the lease's time ran out without a renewal (the holder stopped or died).
    pub held: bool,
    pub expires_at: String,
    pub acquired_at: String,
}

#[derive(Debug, Serialize)]
pub struct StuckRevocation {
    pub id: CommandId,
    pub identity: String,
    pub connector: String,
    pub target: String,
    pub stuck_since: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub id: CommandId,
    pub action: String,
    pub identity: String,
    pub connector: String,
    pub target: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl From<crate::store::CommandRow> for DeadLetter {
    fn from(c: crate::store::CommandRow) -> Self {
        DeadLetter {
            id: c.id,
            action: c.action.to_string(),
            identity: c.identity_key.into(),
            connector: c.connector,
            target: c.target,
            attempts: c.attempts,
            last_error: c.last_error,
        }
    }
}

impl DeadLetter {
    /// `#7 revoke E1 nuki:berlin-lab after 8 attempts: 503 ...`, as `status` and `redrive --list`
    /// print it.
    pub fn line(&self) -> String {
        format!(
            "#{} {} {} {}:{} after {} attempts: {}",
            self.id,
            self.action,
            self.identity,
            self.connector,
            self.target,
            self.attempts,
            self.last_error.as_deref().unwrap_or("-")
        )
    }
}

#[derive(Debug, Serialize)]
pub struct OutboxCount {
    pub connector: String,
    pub status: String,
    pub action: String,
    pub count: i64,
}

#[derive(Debug, Serialize)]
pub struct Quarantined {
    pub id: i64,
    pub source: String,
    pub location: String,
    pub record: Option<String>,
    pub field: String,
    pub reason: String,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct Breaker {
    pub connector: String,
    pub state: String,
    pub since: String,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DriftFinding {
    pub id: i64,
    pub kind: String,
    pub connector: String,
    pub target: String,
    pub subject: String,
    pub vendor_ref: Option<String>,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

#[derive(Debug, Serialize)]
pub struct Held {
    pub id: i64,
    pub source: String,
    pub identity: String,
    pub kind: String,
    pub reason: String,
    pub created_at: String,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let status = gather(&app, args.list.limit).await?;
    if args.list.json() {
        print_json(SCHEMA, &status)?;
    } else {
        print!("{}", status.render());
    }
    Ok(0)
}

/// Every section, each list capped at `limit` (0 = all).
pub async fn gather(app: &App, limit: usize) -> anyhow::Result<Status> {
    let (stuck_revocations, dead_letters) = stuck_and_dead(app, limit).await?;
    let pool = app.store().pool();
    let outbox = store::command_counts(pool)
        .await?
        .into_iter()
        .map(|(connector, status, action, count)| OutboxCount {
            connector,
            status: status.to_string(),
            action,
            count,
        })
        .collect();
    let breakers: Vec<Breaker> = store::breaker_states(pool)
        .await?
        .into_iter()
        .map(|(connector, state, since, last_error)| Breaker {
            connector,
            state,
            since: time(since),
            last_error,
        })
        .collect();
    Ok(Status {
        stuck_revocations,
        dead_letters,
        outbox,
        quarantined: quarantined(app, limit).await?,
        breakers_open: breakers.iter().filter(|b| b.state != "closed").count(),
        breakers,
        drift_findings: drift(app, limit).await?,
        key_tasks: keys::open_tasks(app, limit).await?,
        held: held(app, limit).await?,
        leases: leases(app).await?,
    })
}

async fn leases(app: &App) -> anyhow::Result<Vec<Lease>> {
    let store = app.store();
    let (now, rows) = store::leases::all(store.pool(), store.backend()).await?;
    Ok(rows
        .into_iter()
        .map(|r| Lease {
            held: r.expires_at > now,
            expires_at: time(r.expires_at),
            acquired_at: time(r.acquired_at),
            name: r.name,
            holder: r.holder,
        })
        .collect())
}

async fn stuck_and_dead(
    app: &App,
    limit: usize,
) -> anyhow::Result<(Capped<StuckRevocation>, Capped<DeadLetter>)> {
    let pool = app.store().pool();
    let stuck_total: i64 = store::stuck_counts(pool).await?.iter().map(|c| c.1).sum();
    let stuck = store::stuck_revokes(pool, sql_limit(limit))
        .await?
        .into_iter()
        .map(|(c, since)| StuckRevocation {
            id: c.id,
            identity: c.identity_key.into(),
            connector: c.connector,
            target: c.target,
            stuck_since: time(since),
            attempts: c.attempts,
            next_attempt_at: time(c.next_attempt_at),
            last_error: c.last_error,
        })
        .collect();
    let dead_total: i64 = store::command_counts(pool)
        .await?
        .iter()
        .filter(|c| c.1 == CommandStatus::Dead)
        .map(|c| c.3)
        .sum();
    let dead = store::commands_where_status(pool, CommandStatus::Dead, sql_limit(limit))
        .await?
        .into_iter()
        .map(DeadLetter::from)
        .collect();
    Ok((
        Capped::of_total(stuck, usize::try_from(stuck_total).unwrap_or(0)),
        Capped::of_total(dead, usize::try_from(dead_total).unwrap_or(0)),
    ))
}

async fn quarantined(app: &App, limit: usize) -> anyhow::Result<Capped<Quarantined>> {
    let rows = store::list_quarantine(app.store().pool(), i64::MAX).await?;
    let rows = rows
        .into_iter()
        .map(|r| Quarantined {
            id: r.id,
            source: r.source,
            location: r.location,
            record: r.record_key.map(Into::into),
            field: r.field,
            reason: r.reason,
            created_at: time(r.created_at),
        })
        .collect();
    Ok(Capped::new(rows, limit))
}

async fn drift(app: &App, limit: usize) -> anyhow::Result<Capped<DriftFinding>> {
    let rows = store::open_drift(app.store().pool())
        .await?
        .into_iter()
        .map(|f| DriftFinding {
            id: f.id,
            kind: f.kind,
            connector: f.connector,
            target: f.target,
            subject: f.subject,
            vendor_ref: f.vendor_ref,
            first_seen_at: time(f.first_seen_at),
            last_seen_at: time(f.last_seen_at),
        })
        .collect();
    Ok(Capped::new(rows, limit))
}

async fn held(app: &App, limit: usize) -> anyhow::Result<Capped<Held>> {
    let rows = store::held_changes(app.store().pool())
        .await?
        .into_iter()
        .map(|h| Held {
            id: h.id,
            source: h.source,
            identity: h.key.into(),
            kind: h.kind,
            reason: h.reason,
            created_at: time(h.created_at),
        })
        .collect();
    Ok(Capped::new(rows, limit))
}

impl Status {
    /// The table: one header line with the count per section, its rows, and the cap's line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_stuck_revocations(&mut out);
        self.render_dead_letters(&mut out);
        self.render_outbox(&mut out);
        self.render_quarantined(&mut out);
        self.render_breakers(&mut out);
        self.render_drift(&mut out);
        keys::render_tasks(&self.key_tasks, &mut out);
        self.render_held(&mut out);
        self.render_leases(&mut out);
        out
    }

    /// Stuck revocations: what may leave a leaver with access, first.
    fn render_stuck_revocations(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "revocations stuck (retrying past their attempts): {}",
            self.stuck_revocations.total
        );
        for c in &self.stuck_revocations.items {
            let _ = writeln!(
                out,
                "  #{} {} {}:{} stuck since {}, {} attempts, next try {}: {}",
                c.id,
                c.identity,
                c.connector,
                c.target,
                c.stuck_since,
                c.attempts,
                c.next_attempt_at,
                c.last_error.as_deref().unwrap_or("-")
            );
        }
        self.stuck_revocations.more_line(out, "  ");
    }

    /// Dead letters, and how to re-queue them.
    fn render_dead_letters(&self, out: &mut String) {
        let _ = writeln!(out, "dead letters: {}", self.dead_letters.total);
        for c in &self.dead_letters.items {
            let _ = writeln!(out, "  {}", c.line());
        }
        self.dead_letters.more_line(out, "  ");
        if self.dead_letters.total > 0 {
            let _ = writeln!(out, "  re-queue with `latchkey redrive --all` or by id");
        }
    }

    /// The outbox: commands per connector, status and action.
    fn render_outbox(&self, out: &mut String) {
        let _ = writeln!(out, "outbox (connector / status / action: count)");
        for c in &self.outbox {
            let _ = writeln!(
                out,
                "  {:<8} {:<11} {:<7} {}",
                c.connector, c.status, c.action, c.count
            );
        }
    }

    /// Quarantined records: what a source set aside, and why.
    fn render_quarantined(&self, out: &mut String) {
        let _ = writeln!(out, "quarantined records: {}", self.quarantined.total);
        for r in &self.quarantined.items {
            let _ = writeln!(
                out,
                "  {} {} record {} field {}: {}",
                r.source,
                r.location,
                r.record.as_deref().unwrap_or("-"),
                r.field,
                r.reason
            );
        }
        self.quarantined.more_line(out, "  ");
    }

    /// Circuit breakers: how many are open, and every connector's state.
    fn render_breakers(&self, out: &mut String) {
        let _ = writeln!(out, "circuit breakers open: {}", self.breakers_open);
        for b in &self.breakers {
            let _ = writeln!(
                out,
                "  {:<8} {:<9} since {} {}",
                b.connector,
                b.state,
                b.since,
                b.last_error.as_deref().unwrap_or("")
            );
        }
    }

    /// Open drift findings: where a vendor differs from the ledger.
    fn render_drift(&self, out: &mut String) {
        let _ = writeln!(out, "drift findings open: {}", self.drift_findings.total);
        for f in &self.drift_findings.items {
            let _ = writeln!(
                out,
                "  #{} {} {}:{} {} grant {} seen {} .. {}",
                f.id,
                f.kind,
                f.connector,
                f.target,
                f.subject,
                f.vendor_ref.as_deref().unwrap_or("-"),
                f.first_seen_at,
                f.last_seen_at
            );
        }
        self.drift_findings.more_line(out, "  ");
    }

    /// Held changes, and how to approve them.
    fn render_held(&self, out: &mut String) {
        let _ = writeln!(out, "held for approval: {}", self.held.total);
        for h in &self.held.items {
            let _ = writeln!(
                out,
                "  #{} {} {} {}: {}",
                h.id, h.source, h.identity, h.kind, h.reason
            );
        }
        self.held.more_line(out, "  ");
        if self.held.total > 0 {
            let _ = writeln!(
                out,
                "  approve with `latchkey approve --all` or by id (someone other than who caused them)"
            );
        }
    }

    /// Leases: which replica holds which source, job and lane.
    fn render_leases(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "leases (source, job, lane: holder): {}",
            self.leases.len()
        );
        for l in &self.leases {
            if l.held {
                let _ = writeln!(
                    out,
                    "  {} held by {} until {}",
                    l.name, l.holder, l.expires_at
                );
            } else {
                let _ = writeln!(out, "  {} free (last held by {})", l.name, l.holder);
            }
        }
    }
}

/// The whole status as a table, every row shown (for tests and callers inside the crate).
pub async fn status_text(app: &App) -> anyhow::Result<String> {
    Ok(gather(app, 0).await?.render())
}
