//! Set-based reads and writes for many people at once: what a batch of people reads (their source
//! records, identities, grants, and what operators decided for them) in one statement per table,
//! and what it writes (source records, identities, ledger rows, commands, audit records) in
//! multi-row statements. A feed of 100,000 people costs a few statements per batch of people
//! instead of about twenty per person; each statement is a round trip (on SQLite, a hand-off to
//! its worker thread), and those round trips were what limited ingest.
//!
//! The SQL is the same in both dialects: key lists and rows are `$n` parameters.

use super::access_requests::{self, RequestRow};
use super::door_moves::{self, DoorMoveRow};
use super::reviews::{self, WithdrawalRow};
use super::suspensions::{self, SuspensionRow};
use super::*;
use std::collections::HashMap;

/// Bind parameters per statement: under SQLite's limit (32,766) and PostgreSQL's (65,535).
pub(super) const MAX_PARAMS: usize = 30_000;

/// How parameters are written: `$n` on PostgreSQL; plain `?` on SQLite, whose driver looks every
/// numbered parameter up by name, a walk of the statement's parameter list each time, so a
/// statement of a thousand `$n` spent most of its time binding. Either way they are bound in the
/// order they appear.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    numbered: bool,
}

impl Marks {
    pub(super) fn of(conn: &AnyConnection) -> Self {
        Self::for_backend(conn.backend_name() == "PostgreSQL")
    }

    pub(super) fn for_backend(postgres: bool) -> Self {
        Self { numbered: postgres }
    }

    /// `n` parameters, the first of them the statement's `from`th.
    pub(super) fn list(self, from: usize, n: usize) -> String {
        let mut out = String::with_capacity(n * 6);
        self.push_list(&mut out, from, n);
        out
    }

    /// `(..), (..)`: `rows` rows of `cols` parameters.
    pub(super) fn rows(self, rows: usize, cols: usize) -> String {
        self.rows_from(1, rows, cols)
    }

    /// [`Marks::rows`], the first parameter the statement's `from`th.
    pub(super) fn rows_from(self, from: usize, rows: usize, cols: usize) -> String {
        // Written into one string: a statement of 500 rows has thousands of marks, and a string
        // for each showed as a tenth of a feed's planning time.
        let mut out = String::with_capacity(rows * (cols * 6 + 4));
        for r in 0..rows {
            if r > 0 {
                out.push_str(", ");
            }
            out.push('(');
            self.push_list(&mut out, from + r * cols, cols);
            out.push(')');
        }
        out
    }

    fn push_list(self, out: &mut String, from: usize, n: usize) {
        use std::fmt::Write as _;
        for i in from..from + n {
            if i > from {
                out.push_str(", ");
            }
            if self.numbered {
                let _ = write!(out, "${i}");
            } else {
                out.push('?');
            }
        }
    }
}

/// Keys per batch read: the parameter lists stay short, and a few thousand leavers read in a few
/// statements.
pub(super) const KEYS_PER_READ: usize = 500;

/// The batch reads of `n` keys, by name, for the plan-shape check too.
pub(super) fn source_records_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM source_records WHERE key IN ({}) ORDER BY key, source",
        m.list(1, n)
    )
}

/// On PostgreSQL the rows are locked, in key order (see [`people_rows`]).
pub(super) fn identities_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM identities WHERE key IN ({}) ORDER BY key{}",
        m.list(1, n),
        if m.numbered { " FOR UPDATE" } else { "" }
    )
}

pub(super) fn grants_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM grants WHERE identity_key IN ({}) ORDER BY identity_key, connector, target",
        m.list(1, n)
    )
}

pub(super) fn withdrawn_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM review_withdrawals WHERE identity_key IN ({}) AND lifted_at IS NULL ORDER BY id",
        m.list(1, n)
    )
}

/// The moment is bound twice, after the keys.
pub(super) fn requests_in_force_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM access_requests WHERE identity_key IN ({}) AND status = 'active'
           AND starts_at <= {} AND ends_at > {} ORDER BY id",
        m.list(1, n),
        m.list(n + 1, 1),
        m.list(n + 2, 1)
    )
}

pub(super) fn suspensions_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "SELECT * FROM suspensions WHERE identity_key IN ({}) AND ended_at IS NULL ORDER BY id",
        m.list(1, n)
    )
}

/// The moment and the source come first, then the keys.
pub(super) fn release_held_of_keys_sql(m: Marks, n: usize) -> String {
    format!(
        "UPDATE held_changes SET status = 'obsolete', decided_by = 'feed', decided_at = {}
           WHERE status = 'held' AND source = {} AND key IN ({})",
        m.list(1, 1),
        m.list(2, 1),
        m.list(3, n)
    )
}

/// A revoke's supersession of its grant's issues still waiting in the outbox, for `n` grants of
/// one connector: the moment, the (person, target) pairs, then the connector, in the order they
/// appear. The pairs are joined to the outbox through its index on the grant, one probe each (a
/// row-value `IN` over the same pairs took SQLite 70-90 ms for 500 grants).
pub(super) fn supersede_of_grants_sql(m: Marks, n: usize) -> String {
    format!(
        "UPDATE commands SET status = 'superseded', last_error = 'superseded by a revoke', next_attempt_at = {}
           WHERE id IN (SELECT c.id FROM (VALUES {}) AS g
             JOIN commands c ON c.identity_key = g.column1 AND c.target = g.column2
             WHERE c.connector = {} AND c.action = 'issue' AND c.status IN ('pending', 'confirming'))",
        m.list(1, 1),
        m.rows_from(2, n, 2),
        m.list(2 + 2 * n, 1),
    )
}

/// Everything the planning of a set of people reads, by person.
#[derive(Debug, Clone, Default)]
pub struct PeopleRows {
    pub source_records: HashMap<PersonKey, Vec<SourceRecordRow>>,
    pub identities: HashMap<PersonKey, IdentityRow>,
    pub grants: HashMap<PersonKey, Vec<GrantRow>>,
    pub withdrawn: HashMap<PersonKey, Vec<WithdrawalRow>>,
    /// Temporary access in force at the moment the rows were read.
    pub requests: HashMap<PersonKey, Vec<RequestRow>>,
    /// Active suspensions.
    pub suspensions: HashMap<PersonKey, Vec<SuspensionRow>>,
    /// Every door migration (a small table, read whole).
    pub moves: Vec<DoorMoveRow>,
}

/// Read what planning needs for `keys` (temporary access in force at `now`), one statement per
/// table for each slice of keys that fits a statement.
///
/// On PostgreSQL the people's identity rows are locked first, in key order, and everything else
/// is read after: a change for one of them on another transaction (a SCIM request while a feed's
/// batch plans) waits for this one to commit and then reads what it wrote, instead of both
/// planning from the same rows and the later commit undoing the earlier. SQLite's writer holds
/// the whole database from `BEGIN IMMEDIATE`.
pub async fn people_rows(conn: &mut AnyConnection, keys: &[&str], now: i64) -> Result<PeopleRows> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let mut out = PeopleRows {
        moves: door_moves::all_on(conn).await?,
        ..PeopleRows::default()
    };
    let m = Marks::of(conn);
    for keys in keys.chunks(KEYS_PER_READ) {
        let n = keys.len();
        for r in fetch_keyed(conn, &identities_of_keys_sql(m, n), keys, None).await? {
            let r = IdentityRow::from_row(&r)?;
            out.identities.insert(r.key.clone(), r);
        }
        for r in fetch_keyed(conn, &source_records_of_keys_sql(m, n), keys, None).await? {
            let r = read::<SourceRecordRow>(&r)?;
            out.source_records.entry(r.key.clone()).or_default().push(r);
        }
        for r in fetch_keyed(conn, &grants_of_keys_sql(m, n), keys, None).await? {
            let r = read::<GrantRow>(&r)?;
            out.grants
                .entry(r.identity_key.clone())
                .or_default()
                .push(r);
        }
        for r in fetch_keyed(conn, &withdrawn_of_keys_sql(m, n), keys, None).await? {
            let r = reviews::withdrawal(&r)?;
            out.withdrawn
                .entry(r.identity_key.clone())
                .or_default()
                .push(r);
        }
        let sql = requests_in_force_of_keys_sql(m, n);
        for r in fetch_keyed(conn, &sql, keys, Some(now)).await? {
            let r = access_requests::read(&r)?;
            out.requests
                .entry(r.identity_key.clone())
                .or_default()
                .push(r);
        }
        for r in fetch_keyed(conn, &suspensions_of_keys_sql(m, n), keys, None).await? {
            let r = suspensions::read(&r)?;
            out.suspensions
                .entry(r.identity_key.clone())
                .or_default()
                .push(r);
        }
    }
    Ok(out)
}

async fn fetch_keyed(
    conn: &mut AnyConnection,
    sql: &str,
    keys: &[&str],
    then: Option<i64>,
) -> Result<Vec<AnyRow>> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for k in keys {
        q = q.bind(*k);
    }
    // The moment, where the query asks for one, is bound for both of its comparisons.
    if let Some(v) = then {
        q = q.bind(v).bind(v);
    }
    Ok(q.fetch_all(&mut *conn).await?)
}

/// Rows per multi-row statement for a table of `cols` columns.
fn rows_per_statement(cols: usize) -> usize {
    (MAX_PARAMS / cols).max(1)
}

/// Upsert source records, many per statement (as [`put_source_record`]).
pub async fn put_source_records(conn: &mut AnyConnection, rows: &[SourceRecordRow]) -> Result<()> {
    for chunk in rows.chunks(rows_per_statement(7)) {
        let sql = format!(
            "INSERT INTO source_records (source, key, hash, record, first_seen_at, seen_at, disappeared_at)
             VALUES {}
             ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, record = excluded.record,
               seen_at = excluded.seen_at, disappeared_at = excluded.disappeared_at",
            Marks::of(conn).rows(chunk.len(), 7)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q
                .bind(&s.source)
                .bind(&s.key)
                .bind(&s.hash)
                .bind(&s.record)
                .bind(s.first_seen_at)
                .bind(s.seen_at)
                .bind(s.disappeared_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Upsert identities, many per statement (as [`put_identity`]).
pub async fn put_identities(conn: &mut AnyConnection, rows: &[IdentityRow]) -> Result<()> {
    for chunk in rows.chunks(rows_per_statement(7)) {
        let sql = format!(
            "INSERT INTO identities (key, lifecycle, lifecycle_since, attrs, site, next_change_at, updated_at)
             VALUES {}
             ON CONFLICT (key) DO UPDATE SET lifecycle = excluded.lifecycle,
               lifecycle_since = excluded.lifecycle_since, attrs = excluded.attrs, site = excluded.site,
               next_change_at = excluded.next_change_at, updated_at = excluded.updated_at",
            Marks::of(conn).rows(chunk.len(), 7)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in chunk {
            q = q
                .bind(&i.key)
                .bind(i.lifecycle.as_str())
                .bind(i.lifecycle_since)
                .bind(serde_json::Value::Object(i.attrs.clone()).to_string())
                .bind(&i.site)
                .bind(i.next_change_at)
                .bind(i.updated_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Write what policy decided about ledger rows, many per statement. Only the decision's side of
/// a row is written over an existing one: what the vendor was seen to hold (`observed`,
/// `vendor_ref`) is the dispatcher's, and it may have confirmed a change since the row was read.
pub async fn put_decided_grants(conn: &mut AnyConnection, rows: &[GrantRow]) -> Result<()> {
    for chunk in rows.chunks(rows_per_statement(12)) {
        let sql = format!(
            "INSERT INTO grants (identity_key, connector, target, desired, observed, generation, vendor_ref,
               template, credential, time_window, valid_until, updated_at)
             VALUES {}
             ON CONFLICT (identity_key, connector, target) DO UPDATE SET desired = excluded.desired,
               generation = excluded.generation, template = excluded.template,
               credential = excluded.credential, time_window = excluded.time_window,
               valid_until = excluded.valid_until, updated_at = excluded.updated_at",
            Marks::of(conn).rows(chunk.len(), 12)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for g in chunk {
            q = super::ledger::bind_grant(q, g);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Put commands in the outbox, many per statement (as [`enqueue`]). Returns each command's new
/// id, in the order given, or `None` for a command the outbox already had (same idempotency key).
pub async fn enqueue_all(
    conn: &mut AnyConnection,
    commands: &[NewCommand],
    now: i64,
) -> Result<Vec<Option<CommandId>>> {
    let keys: Vec<String> = commands.iter().map(NewCommand::idem_key).collect();
    let mut ids: HashMap<String, CommandId> = HashMap::with_capacity(commands.len());
    let mut from = 0;
    for chunk in commands.chunks(rows_per_statement(16)) {
        let sql = format!(
            "INSERT INTO commands (idem_key, connector, action, identity_key, target, generation, priority,
               status, attempts, next_attempt_at, cause, trigger_at, detected_at, enqueued_at, source,
               traceparent)
             VALUES {}
             ON CONFLICT (idem_key) DO NOTHING RETURNING id, idem_key",
            Marks::of(conn).rows(chunk.len(), 16)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (c, key) in chunk.iter().zip(&keys[from..]) {
            q = q
                .bind(key)
                .bind(&c.connector)
                .bind(c.action.as_str())
                .bind(&c.identity_key)
                .bind(&c.target)
                .bind(c.generation)
                .bind(c.action.priority())
                .bind("pending")
                .bind(0_i64)
                .bind(now)
                .bind(&c.cause)
                .bind(c.trigger_at)
                .bind(c.detected_at)
                .bind(now)
                .bind(&c.source)
                .bind(&c.traceparent);
        }
        for r in q.fetch_all(&mut *conn).await? {
            ids.insert(r.try_get("idem_key")?, r.try_get("id")?);
            command_queued();
        }
        from += chunk.len();
    }
    Ok(keys.iter().map(|k| ids.get(k).copied()).collect())
}

/// [`release_held_for`] for many people of one source at once.
pub async fn release_held_of(
    conn: &mut AnyConnection,
    source: &str,
    keys: &[&str],
    now: i64,
) -> Result<u64> {
    let mut released = 0;
    for keys in keys.chunks(KEYS_PER_READ) {
        let sql = release_held_of_keys_sql(Marks::of(conn), keys.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(source);
        for k in keys {
            q = q.bind(*k);
        }
        released += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(released)
}

/// Supersede the issues still waiting in the outbox for each of `grants` ((connector, person,
/// target), a revoke's grants): one statement per connector and slice of grants. Returns how
/// many were superseded.
pub async fn supersede_issues_of(
    conn: &mut AnyConnection,
    grants: &[(String, PersonKey, String)],
    now: i64,
) -> Result<u64> {
    let mut connectors: Vec<&str> = grants.iter().map(|(c, _, _)| c.as_str()).collect();
    connectors.sort_unstable();
    connectors.dedup();
    let mut superseded = 0;
    for connector in connectors {
        let of: Vec<(&str, &str)> = grants
            .iter()
            .filter(|(c, _, _)| c == connector)
            .map(|(_, k, t)| (k.as_str(), t.as_str()))
            .collect();
        for chunk in of.chunks(KEYS_PER_READ) {
            let sql = supersede_of_grants_sql(Marks::of(conn), chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for (key, target) in chunk {
                q = q.bind(*key).bind(*target);
            }
            superseded += q.bind(connector).execute(&mut *conn).await?.rows_affected();
        }
    }
    Ok(superseded)
}

#[cfg(test)]
mod tests {
    use super::Marks;

    #[test]
    fn marks_are_numbered_on_postgres_and_plain_on_sqlite() {
        let (sqlite, pg) = (Marks::for_backend(false), Marks::for_backend(true));
        assert_eq!(sqlite.list(1, 3), "?, ?, ?");
        assert_eq!(pg.list(4, 2), "$4, $5");
        assert_eq!(sqlite.rows(2, 2), "(?, ?), (?, ?)");
        assert_eq!(pg.rows_from(3, 2, 2), "($3, $4), ($5, $6)");
        assert_eq!(pg.rows(1, 1), "($1)");
        assert_eq!(pg.list(1, 0), "");
    }
}
