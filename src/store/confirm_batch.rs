//! Confirming many changes on one target with one vendor listing (migration 0028): what else is
//! queued or waiting on a target, and claiming every change on a target that waits for its
//! read-back, so one listing confirms them all.

use super::batch::{KEYS_PER_READ, Marks};
use super::{
    Backend, CommandId, CommandRow, GrantRow, IdentityRow, PersonKey, Result, Store, StoreError,
    postgres, read,
};
use crate::model::GrantState;
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::{HashMap, HashSet};

/// What else is on a target beside one command: whether more writes at `max_priority` or more
/// urgent are queued and due (so a change just written can wait to be read back with them), and
/// whether other changes wait for a read-back (so one listing confirms them too). Writes other
/// workers have in hand do not count: two workers could each wait for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnTarget {
    pub more_due: bool,
    pub waiting: bool,
}

/// [`OnTarget`] for `cmd` at `now`.
pub async fn on_target(pool: &AnyPool, cmd: &CommandRow, now: i64) -> Result<OnTarget> {
    let row = sqlx::query(ON_TARGET_SQL)
        .bind(&cmd.connector)
        .bind(&cmd.target)
        .bind(cmd.action.priority())
        .bind(now)
        .bind(cmd.id)
        .fetch_one(pool)
        .await?;
    Ok(OnTarget {
        more_due: row.try_get::<i64, _>("more_due")? != 0,
        waiting: row.try_get::<i64, _>("waiting")? != 0,
    })
}

pub(super) const ON_TARGET_SQL: &str = "SELECT
     (SELECT COUNT(*) FROM (SELECT 1 FROM commands
        WHERE connector = $1 AND target = $2 AND status = 'pending'
          AND priority <= $3 AND next_attempt_at <= $4 LIMIT 1) m) AS more_due,
     (SELECT COUNT(*) FROM (SELECT 1 FROM commands
        WHERE connector = $1 AND target = $2 AND status = 'confirming' AND id <> $5 LIMIT 1) w) AS waiting";

/// Which of `targets` (of one connector) still have writes at `max_priority` or more urgent
/// queued and due at `now`: [`on_target`]'s `more_due` for many targets in one statement.
pub async fn targets_with_more_due(
    pool: &AnyPool,
    connector: &str,
    targets: &[&str],
    max_priority: i64,
    now: i64,
) -> Result<HashSet<String>> {
    let mut conn = pool.acquire().await?;
    let m = Marks::of(&conn);
    let mut due = HashSet::new();
    for chunk in targets.chunks(KEYS_PER_READ) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(more_due_sql(m, chunk.len())));
        for t in chunk {
            q = q.bind(*t);
        }
        q = q.bind(connector).bind(max_priority).bind(now);
        for r in q.fetch_all(&mut *conn).await? {
            due.insert(r.try_get::<String, _>("target")?);
        }
    }
    Ok(due)
}

/// [`targets_with_more_due`] for `n` targets, its parameters in the order they appear: the
/// targets, the connector, the priority, now. Each target is one lookup in `commands_on_target`.
pub(super) fn more_due_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT v.column1 AS target FROM (VALUES {}) AS v
         WHERE EXISTS (SELECT 1 FROM commands
           WHERE connector = {} AND target = v.column1 AND status = 'pending'
             AND priority <= {} AND next_attempt_at <= {})",
        m.rows_from(1, n, 1),
        m.list(n + 1, 1),
        m.list(n + 2, 1),
        m.list(n + 3, 1),
    )
}

/// The claim of changes waiting for a read-back on one target; PostgreSQL adds its row locking.
macro_rules! claim_confirming_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE commands SET status = 'inflight', lease_owner = $1, lease_expires_at = $2
     WHERE id IN (
       SELECT c.id FROM commands c
       WHERE c.connector = $3 AND c.target = $4 AND c.status = 'confirming' AND c.id <> $5
         AND NOT EXISTS (SELECT 1 FROM commands o
             WHERE o.connector = c.connector AND o.identity_key = c.identity_key
               AND o.target = c.target AND o.status = 'inflight')
       ORDER BY c.id LIMIT $6",
            $lock,
            ")
     RETURNING *"
        )
    };
}

pub(super) const CLAIM_SQLITE: &str = claim_confirming_sql!("");
pub(super) const CLAIM_POSTGRES: &str = claim_confirming_sql!("\n       FOR UPDATE SKIP LOCKED");

impl Store {
    /// Claim, under `owner`'s lease, up to `limit` commands on `target` that wait for their
    /// read-back, whenever their next look was due: one listing is about to confirm them with
    /// `except` (the command already claimed). Changes already written are never sent again here;
    /// only their read-back moves earlier.
    pub async fn claim_confirming_on(
        &self,
        connector: &str,
        target: &str,
        owner: &str,
        lease_until: i64,
        except: CommandId,
        limit: i64,
    ) -> Result<Vec<CommandRow>> {
        let sql = match self.backend() {
            Backend::Sqlite => CLAIM_SQLITE,
            Backend::Postgres => CLAIM_POSTGRES,
        };
        let claimed = self
            .retry("read-back claim", || async {
                let mut tx = self.begin_write_for(crate::model::Action::Revoke).await?;
                let rows = sqlx::query(sql)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(connector)
                    .bind(target)
                    .bind(except)
                    .bind(limit)
                    .fetch_all(&mut **tx)
                    .await?;
                let cmds = rows
                    .iter()
                    .map(CommandRow::from_row)
                    .collect::<Result<Vec<_>>>()?;
                tx.commit().await?;
                Ok::<_, StoreError>(cmds)
            })
            .await;
        match claimed {
            // Another replica claimed a command of one of these grants at the same moment
            // (PostgreSQL's unique index on in-flight commands): those wait for their own look.
            Err(StoreError::Db(e)) if postgres::is_second_inflight(&e) => Ok(Vec::new()),
            other => other,
        }
    }
}

/// What the requests for claimed changes of one connector are made from: the grants by person and
/// target, the people, and the vendor's ids for the people.
#[derive(Debug, Clone, Default)]
pub struct RequestRows {
    pub grants: HashMap<(PersonKey, String), GrantRow>,
    pub identities: HashMap<PersonKey, IdentityRow>,
    pub person_refs: HashMap<PersonKey, String>,
}

/// Read [`RequestRows`] for `keys` on one connector: three statements for a claim's or a
/// listing's worth of changes, not three per change.
pub async fn request_rows(
    conn: &mut AnyConnection,
    connector: &str,
    keys: &[&str],
) -> Result<RequestRows> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let m = Marks::of(conn);
    let mut out = RequestRows::default();
    for keys in keys.chunks(KEYS_PER_READ) {
        let n = keys.len();
        let mut q =
            sqlx::query(sqlx::AssertSqlSafe(connector_grants_of_keys_sql(m, n))).bind(connector);
        for k in keys {
            q = q.bind(*k);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let g = read::<GrantRow>(&r)?;
            out.grants
                .insert((g.identity_key.clone(), g.target.clone()), g);
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(people_of_keys_sql(m, n)));
        for k in keys {
            q = q.bind(*k);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let i = IdentityRow::from_row(&r)?;
            out.identities.insert(i.key.clone(), i);
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(person_refs_of_keys_sql(m, n))).bind(connector);
        for k in keys {
            q = q.bind(*k);
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.person_refs
                .insert(r.try_get("identity_key")?, r.try_get("vendor_ref")?);
        }
    }
    Ok(out)
}

/// The batch reads of [`request_rows`], by name, for the plan-shape check too. A person holds a
/// handful of grants on a connector: they are read whole, by the ledger's key.
pub(super) fn connector_grants_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM grants WHERE connector = {} AND identity_key IN ({})",
        m.list(1, 1),
        m.list(2, n)
    )
}

/// Unlike a feed batch's read of the same rows, no lock: a delivery only reads the person.
pub(super) fn people_of_keys_sql(m: Marks, n: usize) -> String {
    format!("SELECT * FROM identities WHERE key IN ({})", m.list(1, n))
}

pub(super) fn person_refs_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT identity_key, vendor_ref FROM vendor_people WHERE connector = {} AND identity_key IN ({})",
        m.list(1, 1),
        m.list(2, n)
    )
}

/// A change a listing showed, to be finished as done: the command (claimed by the finishing
/// owner), and what the vendor now holds for its grant with the grant's vendor id, if it named one.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    pub cmd: &'a CommandRow,
    pub observed: GrantState,
    pub grant_ref: Option<&'a str>,
}

/// Finish every change one listing showed, in two statements: the commands done (those `owner`
/// still holds; a command whose lease ran out belongs to whoever took it), then their grants
/// observed as the vendor showed them. Returns the commands finished here.
pub async fn finish_shown(
    conn: &mut AnyConnection,
    owner: &str,
    shown: &[Shown<'_>],
    now: i64,
) -> Result<HashSet<CommandId>> {
    let m = Marks::of(conn);
    let mut finished = HashSet::new();
    // Parameters are bound in the order they appear (SQLite's are plain `?`).
    for chunk in shown.chunks(KEYS_PER_READ) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(finish_done_sql(m, chunk.len())))
            .bind(now)
            .bind(now)
            .bind(now);
        for s in chunk {
            q = q.bind(s.cmd.id).bind(s.cmd.first_attempt_at);
        }
        for r in q.bind(owner).fetch_all(&mut *conn).await? {
            finished.insert(CommandId(r.try_get::<i64, _>("id")?));
        }
        let moved: Vec<&Shown> = chunk
            .iter()
            .filter(|s| finished.contains(&s.cmd.id))
            .collect();
        let Some(first) = moved.first() else {
            continue;
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(observe_shown_sql(m, moved.len()))).bind(now);
        for s in &moved {
            q = q
                .bind(s.cmd.identity_key.as_str())
                .bind(s.observed.as_str())
                .bind(s.grant_ref);
        }
        q.bind(first.cmd.connector.as_str())
            .bind(first.cmd.target.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(finished)
}

/// As `update_claimed` to done, for `n` commands, its parameters in the order they appear: the
/// moment (three times), (id, first request sent at) per command, the owner.
pub(super) fn finish_done_sql(m: Marks, n: usize) -> String {
    format!(
        "UPDATE commands SET status = 'done', next_attempt_at = {}, dispatched_at = COALESCE(dispatched_at, {}),
           confirmed_at = {}, last_error = NULL, lease_owner = NULL, lease_expires_at = NULL,
           first_attempt_at = COALESCE(commands.first_attempt_at, v.column2)
         FROM (VALUES {}) AS v
         WHERE commands.id = v.column1 AND commands.lease_owner = {} AND commands.status = 'inflight'
         RETURNING commands.id",
        m.list(1, 1),
        m.list(2, 1),
        m.list(3, 1),
        m.rows_from(4, n, 2),
        m.list(4 + 2 * n, 1),
    )
}

/// The grants of changes on one target observed as shown, its parameters in the order they
/// appear: the moment, (person, observed, grant's vendor id) per grant, the connector, the target.
pub(super) fn observe_shown_sql(m: Marks, n: usize) -> String {
    format!(
        "UPDATE grants SET observed = v.column2, vendor_ref = COALESCE(v.column3, grants.vendor_ref),
           updated_at = {}
         FROM (VALUES {}) AS v
         WHERE grants.identity_key = v.column1 AND grants.connector = {} AND grants.target = {}",
        m.list(1, 1),
        m.rows_from(2, n, 3),
        m.list(2 + 3 * n, 1),
        m.list(3 + 3 * n, 1),
    )
}

/// Changes the vendor accepted that wait for their read-back, in one statement: the commands
/// `owner` still holds go back to waiting (`confirming`), each until its own next look (`cmds`:
/// the command and when to look), each with its first request's time. Returns the commands moved.
pub async fn await_read_back(
    conn: &mut AnyConnection,
    owner: &str,
    cmds: &[(&CommandRow, i64)],
    wait: &AwaitReadBack<'_>,
) -> Result<HashSet<CommandId>> {
    let m = Marks::of(conn);
    let mut moved = HashSet::new();
    for chunk in cmds.chunks(KEYS_PER_READ) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(await_read_back_sql(m, chunk.len())));
        for (c, next_at) in chunk {
            q = q.bind(c.id).bind(*next_at);
        }
        q = q.bind(wait.now).bind(wait.deadline).bind(wait.note);
        for (c, _) in chunk {
            q = q.bind(c.id).bind(c.first_attempt_at);
        }
        for (c, _) in chunk {
            q = q.bind(c.id);
        }
        for r in q.bind(owner).fetch_all(&mut *conn).await? {
            moved.insert(CommandId(r.try_get::<i64, _>("id")?));
        }
    }
    Ok(moved)
}

/// What changes written together share when they wait for their read-back (see
/// [`await_read_back`]).
#[derive(Debug, Clone, Copy)]
pub struct AwaitReadBack<'a> {
    pub now: i64,
    /// Written again if not shown by then (kept where a command has one).
    pub deadline: i64,
    pub note: &'a str,
}

/// As `update_claimed` to confirming, for `n` commands, its parameters in the order they appear:
/// (id, next look) per command, written at, deadline, note, (id, first request sent at) per
/// command, the ids again, the owner. The commands are found by their ids (`IN`), so the plan
/// starts from the primary key.
pub(super) fn await_read_back_sql(m: Marks, n: usize) -> String {
    let cases = |from: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    " WHEN {} THEN {}",
                    m.list(from + 2 * i, 1),
                    m.list(from + 1 + 2 * i, 1)
                )
            })
            .collect()
    };
    let after_next = 1 + 2 * n;
    format!(
        "UPDATE commands SET status = 'confirming', next_attempt_at = CASE id{} END,
           dispatched_at = COALESCE(dispatched_at, {}),
           confirmed_at = NULL, confirm_deadline = COALESCE(confirm_deadline, {}), last_error = {},
           lease_owner = NULL, lease_expires_at = NULL,
           first_attempt_at = COALESCE(first_attempt_at, CASE id{} END)
         WHERE id IN ({}) AND lease_owner = {} AND status = 'inflight'
         RETURNING id",
        cases(1),
        m.list(after_next, 1),
        m.list(after_next + 1, 1),
        m.list(after_next + 2, 1),
        cases(after_next + 3),
        m.list(after_next + 3 + 2 * n, n),
        m.list(after_next + 3 + 3 * n, 1),
    )
}

/// Store the vendor's ids for people of one connector, many per statement (as
/// `put_vendor_person`); an id already stored as it is is left alone.
pub async fn put_person_refs(
    conn: &mut AnyConnection,
    connector: &str,
    refs: &[(&str, &str)],
) -> Result<()> {
    let m = Marks::of(conn);
    for chunk in refs.chunks(KEYS_PER_READ) {
        let sql = format!(
            "INSERT INTO vendor_people (connector, identity_key, vendor_ref) VALUES {}
             ON CONFLICT (connector, identity_key) DO UPDATE SET vendor_ref = excluded.vendor_ref
             WHERE vendor_people.vendor_ref <> excluded.vendor_ref",
            m.rows(chunk.len(), 3)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (key, vref) in chunk {
            q = q.bind(connector).bind(*key).bind(*vref);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
