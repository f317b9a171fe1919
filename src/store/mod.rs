//! Durable state: identities, source records and checkpoints, the grant ledger, the outbox of commands,
//! the hash-chained audit log, quarantine and held changes.
//!
//! One interface, [`Store`], over two databases. The SQL below is written once in the dialect both
//! SQLite and PostgreSQL accept (`$n` parameters, `ON CONFLICT`, `RETURNING`, BIGINT microsecond
//! times); what differs between them (connection set-up, migrations, how a write transaction starts,
//! how a worker claims a command without blocking others) lives in [`sqlite`] and [`postgres`].

/// The candidates of a SQLite claim, one branch per state, each walking its own index in claim order
/// (priority, then age): the best pending command due, the best confirmation due, the best command
/// whose worker's lease ran out. One walk over every open command would step past each change
/// waiting for a read-back (thousands in a mass drain) on every claim. `$limit` candidates per
/// branch; a grant with a command in flight is skipped (one command per grant at a time). The
/// confirmations are found by due time (`+priority` keeps SQLite on that index), so the changes
/// waiting for a later read-back are not stepped over either.
macro_rules! claim_candidates {
    ($limit:literal) => {
        concat!(
            "SELECT * FROM (SELECT c.id, c.priority FROM commands c
                WHERE c.connector = $4 AND c.status = 'pending' AND c.priority <= $5
                  AND c.next_attempt_at <= $3",
            claim_candidates!(@free),
            " ORDER BY c.priority, c.id LIMIT ",
            $limit,
            ") p UNION ALL SELECT * FROM (SELECT c.id, c.priority FROM commands c
                WHERE c.connector = $4 AND c.status = 'confirming' AND +c.priority <= $5
                  AND c.next_attempt_at <= $3",
            claim_candidates!(@free),
            " ORDER BY c.priority, c.id LIMIT ",
            $limit,
            ") w UNION ALL SELECT * FROM (SELECT c.id, c.priority FROM commands c
                WHERE c.connector = $4 AND c.status = 'inflight' AND c.priority <= $5
                  AND c.lease_expires_at < $3",
            claim_candidates!(@free),
            " ORDER BY c.priority, c.id LIMIT ",
            $limit,
            ") x"
        )
    };
    (@free) => {
        " AND NOT EXISTS (SELECT 1 FROM commands o
                 WHERE o.connector = c.connector AND o.identity_key = c.identity_key
                   AND o.target = c.target AND o.status = 'inflight' AND o.id <> c.id)"
    };
}

mod absences;
pub mod access_requests;
pub mod audit;
pub mod confirm_batch;
pub mod console;
pub mod door_moves;
pub mod ldap;
pub mod leases;
pub mod outbox;
pub mod postgres;
pub mod reports;
mod retry;
pub mod reviews;
pub mod scim;
pub mod sqlite;
pub mod suspensions;

pub use outbox::*;
pub use retry::{MAX_ATTEMPTS, is_lost_race};

use crate::model::{Action, Lifecycle};
pub use absences::*;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url `{0}`: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A write transaction. On SQLite it also holds the process's write gate (see [`Store::begin_write`]).
/// It dereferences to the sqlx transaction, and through it to the connection.
#[derive(Debug)]
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<GateTurn>,
}

/// A writer's turn at SQLite's write gate. The gate is released before the lobby (fields drop in
/// order), so an urgent writer already waiting at the gate goes before the next ordinary one.
#[derive(Debug)]
struct GateTurn {
    _gate: tokio::sync::OwnedMutexGuard<()>,
    _lobby: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// SQLite has one writer at a time and its busy handler polls rather than queues, so the writers of
/// this process (feed batches, SCIM requests, dispatcher workers) take turns here, in arrival order.
/// Without it a worker could wait out the busy timeout behind a long feed and strand its command
/// until the lease expires. Writers in other processes still meet SQLite's busy timeout.
///
/// Revocation first (invariant 3) holds here too: ordinary writers queue in the lobby and only the
/// one holding it waits at the gate, while an urgent writer (a revoke's claim and completion, a
/// feed batch with leavers) goes straight to the gate. An urgent writer thus waits for at most the
/// transaction in progress and one ordinary writer, however many issues' workers are queued.
#[derive(Debug, Clone, Default)]
struct WriteGate {
    lobby: std::sync::Arc<tokio::sync::Mutex<()>>,
    gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl WriteGate {
    async fn turn(&self, urgent: bool) -> GateTurn {
        let lobby = if urgent {
            None
        } else {
            Some(self.lobby.clone().lock_owned().await)
        };
        GateTurn {
            _gate: self.gate.clone().lock_owned().await,
            _lobby: lobby,
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::Transaction<'static, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's writers of this process take turns here (see [`WriteGate`]).
    write_gate: WriteGate,
}

impl Store {
    /// Connect by URL (`sqlite://path?mode=rwc`, `postgres://...`) and apply migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyPoolOptions::new().max_connections(max_connections.max(1));
        let pool = match backend {
            Backend::Sqlite => sqlite::connect(options, url).await?,
            Backend::Postgres => postgres::connect(options, url).await?,
        };
        let store = Self {
            pool,
            backend,
            write_gate: WriteGate::default(),
        };
        match backend {
            Backend::Sqlite => sqlite::migrate(&store.pool).await?,
            Backend::Postgres => postgres::migrate(&store.pool).await?,
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so a
    /// read-then-write transaction cannot fail half-way with SQLITE_BUSY.
    pub async fn begin_write(&self) -> Result<Tx> {
        self.begin_write_as(false).await
    }

    /// [`Store::begin_write`] for a revocation's own writes (its claim and completion, a feed
    /// batch with leavers): on SQLite it goes ahead of ordinary writers still waiting.
    pub async fn begin_write_urgent(&self) -> Result<Tx> {
        self.begin_write_as(true).await
    }

    /// A write transaction about a command: a revoke's goes ahead of issues' (see
    /// [`Store::begin_write_urgent`]).
    pub async fn begin_write_for(&self, action: Action) -> Result<Tx> {
        self.begin_write_as(action == Action::Revoke).await
    }

    async fn begin_write_as(&self, urgent: bool) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let gate = self.write_gate.turn(urgent).await;
                Tx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _gate: Some(gate),
                }
            }
            Backend::Postgres => Tx {
                tx: self.pool.begin().await?,
                _gate: None,
            },
        })
    }

    /// Claim the next due command of a connector's lane: revokes first, then oldest first; never two
    /// commands for the same grant at once; an expired lease is taken over.
    pub async fn claim_next(
        &self,
        connector: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CommandRow>> {
        self.claim_next_of(connector, owner, now, lease_until, false)
            .await
    }

    /// [`Store::claim_next`]; with `revokes_only`, only a revoke is claimed (the lane's worker
    /// reserved for revokes never takes an issue).
    pub async fn claim_next_of(
        &self,
        connector: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
        revokes_only: bool,
    ) -> Result<Option<CommandRow>> {
        let max_priority = if revokes_only {
            Action::Revoke.priority()
        } else {
            i64::MAX
        };
        let mut attempt = 1;
        loop {
            let claimed = self
                .retry("command claim", || {
                    self.claim_next_once(connector, owner, now, lease_until, max_priority)
                })
                .await;
            match claimed {
                // Another claim took a command of the same grant first (PostgreSQL's unique index
                // on in-flight commands): look again, that grant is now skipped.
                Err(StoreError::Db(e))
                    if self.backend == Backend::Postgres
                        && postgres::is_second_inflight(&e)
                        && attempt < MAX_ATTEMPTS =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn claim_next_once(
        &self,
        connector: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
        max_priority: i64,
    ) -> Result<Option<CommandRow>> {
        // The worker reserved for revokes claims ahead of the issue workers queued for the gate.
        let mut tx = self
            .begin_write_as(max_priority <= Action::Revoke.priority())
            .await?;
        // The write lock of `BEGIN IMMEDIATE` makes SQLite's claim exclusive; PostgreSQL's skips
        // rows other claims hold (`FOR UPDATE SKIP LOCKED`).
        let sql = match self.backend {
            Backend::Sqlite => sqlite::CLAIM_SQL,
            Backend::Postgres => postgres::CLAIM_SQL,
        };
        let row = sqlx::query(sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(connector)
            .bind(max_priority)
            .fetch_optional(&mut **tx)
            .await?;
        let cmd = row.map(|r| CommandRow::from_row(&r)).transpose()?;
        tx.commit().await?;
        Ok(cmd)
    }
}

/// Hide the password of a database URL in messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A row into a plain row type whose fields are named after its columns (`sqlx::FromRow`).
fn read<T: for<'r> sqlx::FromRow<'r, AnyRow>>(r: &AnyRow) -> Result<T> {
    Ok(T::from_row(r)?)
}

pub(crate) fn corrupt(table: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Identities and source records

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub key: String,
    pub lifecycle: Lifecycle,
    pub lifecycle_since: i64,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    pub site: Option<String>,
    pub next_change_at: Option<i64>,
    pub updated_at: i64,
}

impl IdentityRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let lifecycle: String = r.try_get("lifecycle")?;
        let attrs: String = r.try_get("attrs")?;
        Ok(Self {
            key: r.try_get("key")?,
            lifecycle: Lifecycle::parse(&lifecycle)
                .ok_or_else(|| corrupt("identities", format!("lifecycle `{lifecycle}`")))?,
            lifecycle_since: r.try_get("lifecycle_since")?,
            attrs: serde_json::from_str(&attrs)
                .map_err(|e| corrupt("identities", e.to_string()))?,
            site: r.try_get("site")?,
            next_change_at: r.try_get("next_change_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(|v| v.as_str())
    }
}

pub async fn get_identity(conn: &mut AnyConnection, key: &str) -> Result<Option<IdentityRow>> {
    sqlx::query(GET_IDENTITY_SQL)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| IdentityRow::from_row(&r))
        .transpose()
}

/// The keys of the people whose `manager` attribute is `manager`, for a review of a manager's
/// reports. The LIKE narrows the rows (the value as stored JSON); the match is exact.
pub async fn reports_of(pool: &AnyPool, manager: &str) -> Result<Vec<String>> {
    let needle = serde_json::json!({ "manager": manager }).to_string();
    let needle = needle.trim_start_matches('{').trim_end_matches('}');
    let rows = sqlx::query("SELECT * FROM identities WHERE attrs LIKE $1 ORDER BY key")
        .bind(format!("%{needle}%"))
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let i = IdentityRow::from_row(&r)?;
        if i.attr("manager") == Some(manager) {
            out.push(i.key);
        }
    }
    Ok(out)
}

/// Identities whose e-mail or name is `needle` (case-insensitive), for operators who know a person
/// by those rather than by the correlation key. The LIKE narrows the rows; the match is exact.
pub async fn find_identities(conn: &mut AnyConnection, needle: &str) -> Result<Vec<IdentityRow>> {
    let rows = sqlx::query("SELECT * FROM identities WHERE LOWER(attrs) LIKE $1 ORDER BY key")
        .bind(format!("%{}%", needle.to_lowercase()))
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let i = IdentityRow::from_row(&r)?;
        let is = |attr: &str| i.attr(attr).is_some_and(|v| v.eq_ignore_ascii_case(needle));
        if is("email") || is("name") {
            out.push(i);
        }
    }
    Ok(out)
}

pub async fn put_identity(conn: &mut AnyConnection, i: &IdentityRow) -> Result<()> {
    let attrs = serde_json::Value::Object(i.attrs.clone()).to_string();
    sqlx::query(
        "INSERT INTO identities (key, lifecycle, lifecycle_since, attrs, site, next_change_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (key) DO UPDATE SET lifecycle = excluded.lifecycle,
           lifecycle_since = excluded.lifecycle_since, attrs = excluded.attrs, site = excluded.site,
           next_change_at = excluded.next_change_at, updated_at = excluded.updated_at",
    )
    .bind(&i.key)
    .bind(i.lifecycle.as_str())
    .bind(i.lifecycle_since)
    .bind(attrs)
    .bind(&i.site)
    .bind(i.next_change_at)
    .bind(i.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Identities whose effective-dated change (hire, termination, grant expiry) has come.
pub async fn identities_due(pool: &AnyPool, now: i64, limit: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(IDENTITIES_DUE_SQL)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("key")?)).collect()
}

pub async fn list_identities(pool: &AnyPool) -> Result<Vec<IdentityRow>> {
    sqlx::query("SELECT * FROM identities ORDER BY key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(IdentityRow::from_row)
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SourceRecordRow {
    pub source: String,
    pub key: String,
    pub hash: String,
    pub record: String,
    pub first_seen_at: i64,
    pub seen_at: i64,
    pub disappeared_at: Option<i64>,
}

/// One source's record of a person, by the primary key.
pub async fn source_record(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
) -> Result<Option<SourceRecordRow>> {
    sqlx::query(SOURCE_RECORD_SQL)
        .bind(source)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<SourceRecordRow>(&r))
        .transpose()
}

/// A person's records from every source (index `source_records_key`, migration 0016).
pub async fn source_records_of(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Vec<SourceRecordRow>> {
    sqlx::query(SOURCE_RECORDS_OF_SQL)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(read::<SourceRecordRow>)
        .collect()
}

/// (key, hash, disappeared) of every record a source has given.
pub async fn source_hashes(pool: &AnyPool, source: &str) -> Result<Vec<(String, String, bool)>> {
    let rows =
        sqlx::query("SELECT key, hash, disappeared_at FROM source_records WHERE source = $1")
            .bind(source)
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            let gone: Option<i64> = r.try_get("disappeared_at")?;
            Ok((r.try_get("key")?, r.try_get("hash")?, gone.is_some()))
        })
        .collect()
}

pub async fn put_source_record(conn: &mut AnyConnection, s: &SourceRecordRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_records (source, key, hash, record, first_seen_at, seen_at, disappeared_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (source, key) DO UPDATE SET hash = excluded.hash, record = excluded.record,
           seen_at = excluded.seen_at, disappeared_at = excluded.disappeared_at",
    )
    .bind(&s.source)
    .bind(&s.key)
    .bind(&s.hash)
    .bind(&s.record)
    .bind(s.first_seen_at)
    .bind(s.seen_at)
    .bind(s.disappeared_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn checkpoint(pool: &AnyPool, source: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT checkpoint FROM source_checkpoints WHERE source = $1")
        .bind(source)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok(r.try_get("checkpoint")?)).transpose()
}

pub async fn set_checkpoint(
    conn: &mut AnyConnection,
    source: &str,
    value: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO source_checkpoints (source, checkpoint, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (source) DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
    )
    .bind(source)
    .bind(value)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Quarantine and held changes

#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub id: i64,
    pub source: String,
    pub location: String,
    pub record_key: Option<String>,
    pub field: String,
    pub reason: String,
    pub created_at: i64,
}

/// Returns whether the row was new (a re-read of the same file does not report it twice).
pub async fn quarantine(
    conn: &mut AnyConnection,
    q: &crate::model::Quarantined,
    batch: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO quarantine (source, batch, location, record_key, field, reason, raw, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&q.source)
    .bind(batch)
    .bind(&q.location)
    .bind(&q.record_key)
    .bind(&q.field)
    .bind(&q.reason)
    .bind(&q.raw)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn list_quarantine(pool: &AnyPool, limit: i64) -> Result<Vec<QuarantineRow>> {
    let rows = sqlx::query(
        "SELECT id, source, location, record_key, field, reason, created_at FROM quarantine
         ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(QuarantineRow {
                id: r.try_get("id")?,
                source: r.try_get("source")?,
                location: r.try_get("location")?,
                record_key: r.try_get("record_key")?,
                field: r.try_get("field")?,
                reason: r.try_get("reason")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HeldRow {
    pub id: i64,
    pub source: String,
    pub key: String,
    pub kind: String,
    pub reason: String,
    pub status: String,
    pub created_at: i64,
    /// Who caused it (`os:USER`, `source:NAME`, `reconcile`); None for holds made before it was
    /// recorded.
    pub requested_by: Option<String>,
}

/// Hold a change for approval unless the same one is already held.
pub async fn hold(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    kind: &str,
    reason: &str,
    requested_by: &str,
    now: i64,
) -> Result<bool> {
    hold_under_policy(conn, source, key, kind, reason, None, requested_by, now).await
}

/// [`hold`], recording the policy fingerprint the change was planned under (a reconciliation's).
#[allow(clippy::too_many_arguments)] // one column each; a struct would only rename them
pub async fn hold_under_policy(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    kind: &str,
    reason: &str,
    fingerprint: Option<&str>,
    requested_by: &str,
    now: i64,
) -> Result<bool> {
    let exists = sqlx::query(
        "SELECT id FROM held_changes WHERE status = 'held' AND source = $1 AND key = $2 AND kind = $3",
    )
    .bind(source)
    .bind(key)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    if exists.is_some() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO held_changes (source, key, kind, reason, status, created_at, fingerprint, requested_by)
         VALUES ($1, $2, $3, $4, 'held', $5, $6, $7)",
    )
    .bind(source)
    .bind(key)
    .bind(kind)
    .bind(reason)
    .bind(now)
    .bind(fingerprint)
    .bind(requested_by)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

pub async fn held_changes(pool: &AnyPool) -> Result<Vec<HeldRow>> {
    sqlx::query("SELECT * FROM held_changes WHERE status = 'held' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<HeldRow>)
        .collect()
}

pub async fn held_change(conn: &mut AnyConnection, id: i64) -> Result<Option<HeldRow>> {
    sqlx::query("SELECT * FROM held_changes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<HeldRow>(&r))
        .transpose()
}

pub async fn decide_held(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    by: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE held_changes SET status = $1, decided_by = $2, decided_at = $3 WHERE id = $4",
    )
    .bind(status)
    .bind(by)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A person who reappears in a feed releases any disappearance held for them.
pub async fn release_held_for(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    now: i64,
) -> Result<u64> {
    let r = sqlx::query(RELEASE_HELD_SQL)
        .bind(now)
        .bind(source)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// Grant ledger

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GrantRow {
    pub identity_key: String,
    pub connector: String,
    pub target: String,
    /// `present` or `absent`: what policy wants.
    pub desired: String,
    /// `present`, `absent` or `unknown`: what the vendor last confirmed.
    pub observed: String,
    pub generation: i64,
    pub vendor_ref: Option<String>,
    pub template: String,
    pub credential: String,
    #[sqlx(rename = "time_window")]
    pub window: Option<String>,
    pub valid_until: Option<i64>,
    pub updated_at: i64,
}

pub async fn grants_of(conn: &mut AnyConnection, identity_key: &str) -> Result<Vec<GrantRow>> {
    sqlx::query(GRANTS_OF_SQL)
        .bind(identity_key)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

pub async fn grant(
    conn: &mut AnyConnection,
    identity_key: &str,
    connector: &str,
    target: &str,
) -> Result<Option<GrantRow>> {
    sqlx::query("SELECT * FROM grants WHERE identity_key = $1 AND connector = $2 AND target = $3")
        .bind(identity_key)
        .bind(connector)
        .bind(target)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<GrantRow>(&r))
        .transpose()
}

pub async fn grants_on_target(pool: &AnyPool, target: &str) -> Result<Vec<GrantRow>> {
    sqlx::query("SELECT * FROM grants WHERE target = $1 ORDER BY connector, identity_key")
        .bind(target)
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

/// Whether any grant, present or past, is on record for `target`.
pub async fn target_on_record(pool: &AnyPool, target: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM grants WHERE target = $1 LIMIT 1")
            .bind(target)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// One page of the people a vendor confirmed holding `target`, by person, and how many there are
/// in all (index `grants_by_target`).
pub async fn holders_page(
    pool: &AnyPool,
    target: &str,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<GrantRow>)> {
    let total: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM grants WHERE target = $1 AND observed = 'present'")
            .bind(target)
            .fetch_one(pool)
            .await?
            .try_get("n")?;
    let rows = sqlx::query(
        "SELECT * FROM grants WHERE target = $1 AND observed = 'present'
          ORDER BY target, connector, identity_key LIMIT $2 OFFSET $3",
    )
    .bind(target)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<GrantRow>)
    .collect::<Result<Vec<_>>>()?;
    Ok((total, rows))
}

pub async fn all_grants(pool: &AnyPool) -> Result<Vec<GrantRow>> {
    sqlx::query("SELECT * FROM grants ORDER BY connector, target, identity_key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

pub async fn put_grant(conn: &mut AnyConnection, g: &GrantRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO grants (identity_key, connector, target, desired, observed, generation, vendor_ref,
           template, credential, time_window, valid_until, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (identity_key, connector, target) DO UPDATE SET desired = excluded.desired,
           observed = excluded.observed, generation = excluded.generation, vendor_ref = excluded.vendor_ref,
           template = excluded.template, credential = excluded.credential, time_window = excluded.time_window,
           valid_until = excluded.valid_until, updated_at = excluded.updated_at",
    )
    .bind(&g.identity_key)
    .bind(&g.connector)
    .bind(&g.target)
    .bind(&g.desired)
    .bind(&g.observed)
    .bind(g.generation)
    .bind(&g.vendor_ref)
    .bind(&g.template)
    .bind(&g.credential)
    .bind(&g.window)
    .bind(g.valid_until)
    .bind(g.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Record what the vendor confirmed. This is a fact about the vendor, kept even if policy has moved
/// on meanwhile: the newer decision's own command reads it.
pub async fn observe_grant(
    conn: &mut AnyConnection,
    cmd: &CommandRow,
    observed: &str,
    vendor_ref: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE grants SET observed = $1, vendor_ref = COALESCE($2, vendor_ref), updated_at = $3
         WHERE identity_key = $4 AND connector = $5 AND target = $6",
    )
    .bind(observed)
    .bind(vendor_ref)
    .bind(now)
    .bind(&cmd.identity_key)
    .bind(&cmd.connector)
    .bind(&cmd.target)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn vendor_person(
    conn: &mut AnyConnection,
    connector: &str,
    key: &str,
) -> Result<Option<String>> {
    let row = sqlx::query(
        "SELECT vendor_ref FROM vendor_people WHERE connector = $1 AND identity_key = $2",
    )
    .bind(connector)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok(r.try_get("vendor_ref")?)).transpose()
}

pub async fn put_vendor_person(
    conn: &mut AnyConnection,
    connector: &str,
    key: &str,
    vref: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vendor_people (connector, identity_key, vendor_ref) VALUES ($1, $2, $3)
         ON CONFLICT (connector, identity_key) DO UPDATE SET vendor_ref = excluded.vendor_ref",
    )
    .bind(connector)
    .bind(key)
    .bind(vref)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Outbox

#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub id: i64,
    pub idem_key: String,
    pub connector: String,
    pub action: Action,
    pub identity_key: String,
    pub target: String,
    pub generation: i64,
    pub priority: i64,
    /// pending | inflight | confirming | done | dead | superseded
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_owner: Option<String>,
    pub cause: String,
    pub trigger_at: i64,
    pub detected_at: i64,
    pub enqueued_at: i64,
    pub first_attempt_at: Option<i64>,
    pub dispatched_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub confirm_deadline: Option<i64>,
    pub last_error: Option<String>,
    /// Bounded label of the source that caused the command (see [`NewCommand::source`]).
    pub source: String,
    /// W3C traceparent of the change that enqueued the command, when tracing was on.
    pub traceparent: Option<String>,
}

impl CommandRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        let action: String = r.try_get("action")?;
        Ok(Self {
            id: r.try_get("id")?,
            idem_key: r.try_get("idem_key")?,
            connector: r.try_get("connector")?,
            action: Action::parse(&action)
                .ok_or_else(|| corrupt("commands", format!("action `{action}`")))?,
            identity_key: r.try_get("identity_key")?,
            target: r.try_get("target")?,
            generation: r.try_get("generation")?,
            priority: r.try_get("priority")?,
            status: r.try_get("status")?,
            attempts: r.try_get("attempts")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            lease_owner: r.try_get("lease_owner")?,
            cause: r.try_get("cause")?,
            trigger_at: r.try_get("trigger_at")?,
            detected_at: r.try_get("detected_at")?,
            enqueued_at: r.try_get("enqueued_at")?,
            first_attempt_at: r.try_get("first_attempt_at")?,
            dispatched_at: r.try_get("dispatched_at")?,
            confirmed_at: r.try_get("confirmed_at")?,
            confirm_deadline: r.try_get("confirm_deadline")?,
            last_error: r.try_get("last_error")?,
            source: r.try_get("source")?,
            traceparent: r.try_get("traceparent")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewCommand {
    pub connector: String,
    pub action: Action,
    pub identity_key: String,
    pub target: String,
    pub generation: i64,
    pub cause: String,
    pub trigger_at: i64,
    pub detected_at: i64,
    /// `hr`, `scim:okta`, `ldap-corp`, `schedule`, `approval`: a metric label, so a bounded set
    /// (see `plan::Cause::source_label`).
    pub source: String,
    /// W3C traceparent of the change's span: the dispatcher, which delivers the command later in
    /// another task, starts its span under it so the change stays one trace.
    pub traceparent: Option<String>,
}

impl NewCommand {
    /// Deterministic: the same decision always yields the same key, so a replayed change cannot
    /// enqueue the same command twice.
    pub fn idem_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.connector.as_str(),
            self.identity_key.as_str(),
            self.target.as_str(),
            self.action.as_str(),
            &self.generation.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Returns the new command's id, or None when the same command was already enqueued.
pub async fn enqueue(conn: &mut AnyConnection, c: &NewCommand, now: i64) -> Result<Option<i64>> {
    let row = sqlx::query(
        "INSERT INTO commands (idem_key, connector, action, identity_key, target, generation, priority, status,
           attempts, next_attempt_at, cause, trigger_at, detected_at, enqueued_at, source, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (idem_key) DO NOTHING RETURNING id",
    )
    .bind(c.idem_key())
    .bind(&c.connector)
    .bind(c.action.as_str())
    .bind(&c.identity_key)
    .bind(&c.target)
    .bind(c.generation)
    .bind(c.action.priority())
    .bind(now)
    .bind(&c.cause)
    .bind(c.trigger_at)
    .bind(c.detected_at)
    .bind(now)
    .bind(&c.source)
    .bind(&c.traceparent)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok(r.try_get("id")?)).transpose()
}

/// Cancel issues for a grant that policy no longer wants. Returns how many had already reached the
/// vendor (attempted at least once), since only those can have left something to revoke.
pub async fn supersede_issues(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    now: i64,
) -> Result<(u64, i64)> {
    let attempted: i64 = sqlx::query(SUPERSEDE_COUNT_SQL)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    let r = sqlx::query(SUPERSEDE_SQL)
        .bind(now)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .execute(&mut *conn)
        .await?;
    Ok((r.rows_affected(), attempted))
}

pub async fn command(conn: &mut AnyConnection, id: i64) -> Result<Option<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| CommandRow::from_row(&r))
        .transpose()
}

/// Move a claimed command on, only if this worker still holds its lease.
pub async fn update_claimed(
    conn: &mut AnyConnection,
    owner: &str,
    u: &CommandUpdate,
) -> Result<bool> {
    let r = sqlx::query(UPDATE_CLAIMED_SQL)
        .bind(&u.status)
        .bind(u.next_attempt_at)
        .bind(u.dispatched_at)
        .bind(u.confirmed_at)
        .bind(u.confirm_deadline)
        .bind(&u.last_error)
        .bind(u.id)
        .bind(owner)
        .bind(i64::from(u.refund_attempt))
        .bind(u.first_attempt_at)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, Default)]
pub struct CommandUpdate {
    /// A rate-limited try gives its attempt back.
    pub refund_attempt: bool,
    pub id: i64,
    pub status: String,
    pub next_attempt_at: i64,
    pub dispatched_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub confirm_deadline: Option<i64>,
    pub last_error: Option<String>,
    /// When the first request of the command left (kept if already set): stamped where the
    /// request is sent, not at claim (invariant 13).
    pub first_attempt_at: Option<i64>,
}

/// Put a deadline-missed confirmation back to pending so the grant is issued again.
pub async fn reissue(
    conn: &mut AnyConnection,
    owner: &str,
    id: i64,
    now: i64,
    why: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = 'pending', next_attempt_at = $1, confirm_deadline = NULL,
           dispatched_at = NULL, last_error = $2, lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $3 AND lease_owner = $4 AND status = 'inflight'",
    )
    .bind(now)
    .bind(why)
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The earliest time a command of this connector becomes due, for the lane to sleep until.
pub async fn next_due(pool: &AnyPool, connector: &str) -> Result<Option<i64>> {
    let row = sqlx::query(NEXT_DUE_SQL)
        .bind(connector)
        .fetch_one(pool)
        .await?;
    Ok(row.try_get("due")?)
}

pub async fn commands_where_status(
    pool: &AnyPool,
    status: &str,
    limit: i64,
) -> Result<Vec<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE status = $1 ORDER BY id LIMIT $2")
        .bind(status)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(CommandRow::from_row)
        .collect()
}

pub async fn completed_commands(pool: &AnyPool) -> Result<Vec<CommandRow>> {
    sqlx::query("SELECT * FROM commands WHERE status = 'done' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(CommandRow::from_row)
        .collect()
}

/// (connector, status, action, count) over the whole outbox.
pub async fn command_counts(pool: &AnyPool) -> Result<Vec<(String, String, String, i64)>> {
    let rows = sqlx::query(
        "SELECT connector, status, action, COUNT(*) AS n FROM commands GROUP BY connector, status, action
         ORDER BY connector, status, action",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("connector")?,
                r.try_get("status")?,
                r.try_get("action")?,
                r.try_get("n")?,
            ))
        })
        .collect()
}

/// Commands not yet finished (pending, in flight or awaiting confirmation).
pub async fn open_commands(pool: &AnyPool) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM commands WHERE status IN ('pending', 'inflight', 'confirming')",
    )
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("n")?)
}

// ---------------------------------------------------------------------------------------------
// Scheduled jobs

pub async fn last_run(pool: &AnyPool, job: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT last_run_at FROM job_runs WHERE job = $1")
        .bind(job)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok(r.try_get("last_run_at")?)).transpose()
}

pub async fn set_last_run(conn: &mut AnyConnection, job: &str, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_runs (job, last_run_at) VALUES ($1, $2)
         ON CONFLICT (job) DO UPDATE SET last_run_at = excluded.last_run_at",
    )
    .bind(job)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mechanical key tasks, breaker states and drift findings (migration 0005)

/// A task for a person: hand a mechanical key over, or take it back.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct KeyTaskRow {
    pub id: i64,
    pub connector: String,
    pub identity_key: String,
    pub target: String,
    /// `hand_over` | `return`
    pub kind: String,
    /// `open` | `done` | `cancelled`
    pub status: String,
    pub created_at: i64,
    pub due_at: Option<i64>,
    pub done_at: Option<i64>,
    pub done_by: Option<String>,
    pub overdue_alerted_at: Option<i64>,
}

/// The newest task of this kind for a grant, whatever its status.
pub async fn latest_key_task(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    kind: &str,
) -> Result<Option<KeyTaskRow>> {
    sqlx::query(
        "SELECT * FROM key_tasks WHERE connector = $1 AND identity_key = $2 AND target = $3 AND kind = $4
         ORDER BY id DESC LIMIT 1",
    )
    .bind(connector)
    .bind(identity_key)
    .bind(target)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| read::<KeyTaskRow>(&r))
    .transpose()
}

pub async fn create_key_task(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    kind: &str,
    now: i64,
    due_at: Option<i64>,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO key_tasks (connector, identity_key, target, kind, status, created_at, due_at)
         VALUES ($1, $2, $3, $4, 'open', $5, $6) RETURNING id",
    )
    .bind(connector)
    .bind(identity_key)
    .bind(target)
    .bind(kind)
    .bind(now)
    .bind(due_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

pub async fn key_task(conn: &mut AnyConnection, id: i64) -> Result<Option<KeyTaskRow>> {
    sqlx::query("SELECT * FROM key_tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| read::<KeyTaskRow>(&r))
        .transpose()
}

/// Close an open task (`done` or `cancelled`). Returns false when it was not open.
pub async fn close_key_task(
    conn: &mut AnyConnection,
    id: i64,
    status: &str,
    at: i64,
    by: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE key_tasks SET status = $1, done_at = $2, done_by = $3 WHERE id = $4 AND status = 'open'",
    )
    .bind(status)
    .bind(at)
    .bind(by)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn open_key_tasks(pool: &AnyPool) -> Result<Vec<KeyTaskRow>> {
    sqlx::query("SELECT * FROM key_tasks WHERE status = 'open' ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<KeyTaskRow>)
        .collect()
}

pub async fn mark_key_task_alerted(conn: &mut AnyConnection, id: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE key_tasks SET overdue_alerted_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The unfinished command of this action for a grant (a manual connector's task completes it).
pub async fn open_command_for(
    conn: &mut AnyConnection,
    connector: &str,
    identity_key: &str,
    target: &str,
    action: Action,
) -> Result<Option<CommandRow>> {
    sqlx::query(OPEN_COMMAND_FOR_SQL)
        .bind(connector)
        .bind(identity_key)
        .bind(target)
        .bind(action.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| CommandRow::from_row(&r))
        .transpose()
}

/// Finish an unfinished command from outside the dispatcher (a person recorded the result). A
/// worker that holds it in flight loses its lease: its own update then matches nothing.
pub async fn complete_command(
    conn: &mut AnyConnection,
    id: i64,
    confirmed_at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE commands SET status = 'done', confirmed_at = $1, dispatched_at = COALESCE(dispatched_at, $1),
           next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
         WHERE id = $2 AND status IN ('pending', 'inflight', 'confirming')",
    )
    .bind(confirmed_at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_breaker_state(
    conn: &mut AnyConnection,
    connector: &str,
    state: &str,
    since: i64,
    last_error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO breaker_states (connector, state, since, last_error) VALUES ($1, $2, $3, $4)
         ON CONFLICT (connector) DO UPDATE SET state = excluded.state, since = excluded.since,
           last_error = excluded.last_error",
    )
    .bind(connector)
    .bind(state)
    .bind(since)
    .bind(last_error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// (connector, state, since, last error) as last recorded.
pub async fn breaker_states(pool: &AnyPool) -> Result<Vec<(String, String, i64, Option<String>)>> {
    let rows = sqlx::query("SELECT * FROM breaker_states ORDER BY connector")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("connector")?,
                r.try_get("state")?,
                r.try_get("since")?,
                r.try_get("last_error")?,
            ))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DriftFindingRow {
    pub id: i64,
    pub connector: String,
    pub target: String,
    /// `orphan` (the vendor holds a grant latchkey did not issue) | `missing` (a grant latchkey
    /// expects is gone at the vendor)
    pub kind: String,
    /// Identity key (missing), or the vendor's person id or `-` (orphan).
    pub subject: String,
    pub vendor_ref: Option<String>,
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    /// `revoked` | `reissued` | `cleared` (gone by itself) | `reported`
    pub resolution: Option<String>,
    pub resolved_at: Option<i64>,
}

/// Record that a finding was seen now: the open row's `last_seen_at` moves, or a new row starts.
pub async fn see_drift(
    conn: &mut AnyConnection,
    connector: &str,
    target: &str,
    kind: &str,
    subject: &str,
    vendor_ref: Option<&str>,
    now: i64,
) -> Result<DriftFindingRow> {
    let existing = sqlx::query(
        "SELECT * FROM drift_findings WHERE connector = $1 AND target = $2 AND kind = $3 AND subject = $4
           AND resolved_at IS NULL AND COALESCE(vendor_ref, '') = COALESCE($5, '') ORDER BY id DESC LIMIT 1",
    )
    .bind(connector)
    .bind(target)
    .bind(kind)
    .bind(subject)
    .bind(vendor_ref)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| read::<DriftFindingRow>(&r))
    .transpose()?;
    if let Some(mut f) = existing {
        sqlx::query("UPDATE drift_findings SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(f.id)
            .execute(&mut *conn)
            .await?;
        f.last_seen_at = now;
        return Ok(f);
    }
    let row = sqlx::query(
        "INSERT INTO drift_findings (connector, target, kind, subject, vendor_ref, first_seen_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING *",
    )
    .bind(connector)
    .bind(target)
    .bind(kind)
    .bind(subject)
    .bind(vendor_ref)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    read::<DriftFindingRow>(&row)
}

pub async fn resolve_drift(
    conn: &mut AnyConnection,
    id: i64,
    resolution: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE drift_findings SET resolution = $1, resolved_at = $2 WHERE id = $3")
        .bind(resolution)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Findings not resolved yet (still seen at the last check, or reported only).
pub async fn open_drift(pool: &AnyPool) -> Result<Vec<DriftFindingRow>> {
    sqlx::query("SELECT * FROM drift_findings WHERE resolved_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<DriftFindingRow>)
        .collect()
}

/// (identity key, vendor person id) of every person a connector knows.
pub async fn vendor_people_of(pool: &AnyPool, connector: &str) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT identity_key, vendor_ref FROM vendor_people WHERE connector = $1 ORDER BY identity_key",
    )
    .bind(connector)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("identity_key")?, r.try_get("vendor_ref")?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Electronic key cabinets: keys out right now (migration 0007)

/// A cabinet key out of its cabinet, and who took it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CabinetHoldingRow {
    pub id: i64,
    pub connector: String,
    pub key_id: String,
    pub key_group: Option<String>,
    pub identity_key: String,
    pub taken_at: i64,
    /// When the cabinet reported the key overdue, if it did.
    pub overdue_at: Option<i64>,
    /// When the holder was first reported as a leaver still holding the key.
    pub leaver_alerted_at: Option<i64>,
}

/// A key left the cabinet with this person; a holding of the same key is replaced (a missed return).
pub async fn cabinet_key_out(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
    key_group: Option<&str>,
    identity_key: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cabinet_holdings (connector, key_id, key_group, identity_key, taken_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (connector, key_id) DO UPDATE SET key_group = excluded.key_group,
           identity_key = excluded.identity_key, taken_at = excluded.taken_at,
           overdue_at = NULL, leaver_alerted_at = NULL",
    )
    .bind(connector)
    .bind(key_id)
    .bind(key_group)
    .bind(identity_key)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The key is back in the cabinet. Returns whether it was recorded as out.
pub async fn cabinet_key_return(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
) -> Result<bool> {
    let r = sqlx::query("DELETE FROM cabinet_holdings WHERE connector = $1 AND key_id = $2")
        .bind(connector)
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// The cabinet reports the key overdue. Returns whether it was recorded as out.
pub async fn cabinet_key_overdue(
    conn: &mut AnyConnection,
    connector: &str,
    key_id: &str,
    at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE cabinet_holdings SET overdue_at = $1 WHERE connector = $2 AND key_id = $3",
    )
    .bind(at)
    .bind(connector)
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Who holds a cabinet key, or any key of a key group, named `target`.
pub async fn cabinet_holders(pool: &AnyPool, target: &str) -> Result<Vec<CabinetHoldingRow>> {
    sqlx::query(
        "SELECT * FROM cabinet_holdings WHERE key_id = $1 OR key_group = $1
         ORDER BY connector, key_id",
    )
    .bind(target)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<CabinetHoldingRow>)
    .collect()
}

/// Keys of this cabinet connector held by people whose identity is terminated.
pub async fn cabinet_leaver_holdings(
    pool: &AnyPool,
    connector: &str,
) -> Result<Vec<CabinetHoldingRow>> {
    sqlx::query(
        "SELECT h.* FROM cabinet_holdings h JOIN identities i ON i.key = h.identity_key
         WHERE h.connector = $1 AND i.lifecycle = 'terminated' ORDER BY h.id",
    )
    .bind(connector)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<CabinetHoldingRow>)
    .collect()
}

pub async fn mark_cabinet_leaver_alerted(conn: &mut AnyConnection, id: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE cabinet_holdings SET leaver_alerted_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A person's correlation key changed at its only source (a directory entry, same entryUUID or
/// objectGUID, new employeeID): move the identity, its grants, vendor accounts, open commands and
/// that source's record to the new key, so nothing is revoked and re-issued. Only for a new key
/// no identity uses yet; returns whether it moved.
pub async fn rekey_identity(
    conn: &mut AnyConnection,
    source: &str,
    old: &str,
    new: &str,
) -> Result<bool> {
    let taken = sqlx::query(
        "SELECT 1 AS x FROM identities WHERE key = $1
         UNION ALL SELECT 1 AS x FROM grants WHERE identity_key = $1
         UNION ALL SELECT 1 AS x FROM source_records WHERE key = $1
         UNION ALL SELECT 1 AS x FROM source_records WHERE key = $2 AND source <> $3",
    )
    .bind(new)
    .bind(old)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    if taken.is_some() {
        return Ok(false);
    }
    for sql in [
        "UPDATE identities SET key = $1 WHERE key = $2",
        "UPDATE grants SET identity_key = $1 WHERE identity_key = $2",
        "UPDATE vendor_people SET identity_key = $1 WHERE identity_key = $2",
        "UPDATE commands SET identity_key = $1 WHERE identity_key = $2
           AND status IN ('pending', 'confirming', 'inflight')",
        "UPDATE source_records SET key = $1 WHERE key = $2",
    ] {
        sqlx::query(sql)
            .bind(new)
            .bind(old)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Reconciliation (migration 0011)

/// The fingerprint the last full reconciliation ran against, and when.
pub async fn policy_state(pool: &AnyPool, name: &str) -> Result<Option<(String, i64)>> {
    let row = sqlx::query("SELECT fingerprint, reconciled_at FROM policy_state WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.try_get("fingerprint")?, r.try_get("reconciled_at")?)))
        .transpose()
}

pub async fn set_policy_state(
    conn: &mut AnyConnection,
    name: &str,
    fingerprint: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO policy_state (name, fingerprint, reconciled_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,
           reconciled_at = excluded.reconciled_at",
    )
    .bind(name)
    .bind(fingerprint)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One page of identities in key order, after `after` (exclusive): reconciliation streams them.
pub async fn identities_page(pool: &AnyPool, after: &str, limit: i64) -> Result<Vec<IdentityRow>> {
    sqlx::query(IDENTITIES_PAGE_SQL)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(IdentityRow::from_row)
        .collect()
}

/// Every ledger row of the identities whose keys lie in `first..=last`.
pub async fn grants_in_key_range(pool: &AnyPool, first: &str, last: &str) -> Result<Vec<GrantRow>> {
    sqlx::query(GRANTS_IN_KEY_RANGE_SQL)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await?
        .iter()
        .map(read::<GrantRow>)
        .collect()
}

/// Held changes of this source and kind that an approver approved and that were not carried out yet.
pub async fn approved_holds(pool: &AnyPool, source: &str, kind: &str) -> Result<Vec<HeldRow>> {
    sqlx::query(
        "SELECT * FROM held_changes WHERE status = 'approved' AND source = $1 AND kind = $2 ORDER BY id",
    )
    .bind(source)
    .bind(kind)
    .fetch_all(pool)
    .await?
    .iter()
    .map(read::<HeldRow>)
    .collect()
}

/// People whose held change of this source and kind an approver rejected under this policy
/// fingerprint: the decision stands until the policy changes.
pub async fn rejected_hold_keys(
    pool: &AnyPool,
    source: &str,
    kind: &str,
    fingerprint: &str,
) -> Result<Vec<String>> {
    sqlx::query(
        "SELECT DISTINCT key FROM held_changes
         WHERE status = 'rejected' AND source = $1 AND kind = $2 AND fingerprint = $3",
    )
    .bind(source)
    .bind(kind)
    .bind(fingerprint)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok(r.try_get("key")?))
    .collect()
}

/// An approval is used once: the change it allowed was carried out.
pub async fn mark_holds_executed(
    conn: &mut AnyConnection,
    source: &str,
    key: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE held_changes SET status = 'executed', decided_at = COALESCE(decided_at, $1)
         WHERE status = 'approved' AND source = $2 AND key = $3",
    )
    .bind(now)
    .bind(source)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hot-path queries, named so the plan-shape test (tests/suite/store.rs) explains exactly what runs.

const SOURCE_RECORD_SQL: &str = "SELECT * FROM source_records WHERE source = $1 AND key = $2";
const SOURCE_RECORDS_OF_SQL: &str = "SELECT * FROM source_records WHERE key = $1 ORDER BY source";
const GET_IDENTITY_SQL: &str = "SELECT * FROM identities WHERE key = $1";
const GRANTS_OF_SQL: &str =
    "SELECT * FROM grants WHERE identity_key = $1 ORDER BY connector, target";
const IDENTITIES_PAGE_SQL: &str = "SELECT * FROM identities WHERE key > $1 ORDER BY key LIMIT $2";
const IDENTITIES_DUE_SQL: &str =
    "SELECT key FROM identities WHERE next_change_at IS NOT NULL AND next_change_at <= $1
         ORDER BY next_change_at LIMIT $2";
const GRANTS_IN_KEY_RANGE_SQL: &str =
    "SELECT * FROM grants WHERE identity_key >= $1 AND identity_key <= $2
         ORDER BY identity_key, connector, target";
const RELEASE_HELD_SQL: &str =
    "UPDATE held_changes SET status = 'obsolete', decided_by = 'feed', decided_at = $1
         WHERE status = 'held' AND source = $2 AND key = $3";
const SUPERSEDE_COUNT_SQL: &str =
    "SELECT COUNT(*) AS n FROM commands WHERE connector = $1 AND identity_key = $2 AND target = $3
           AND action = 'issue' AND (attempts > 0 OR status NOT IN ('pending', 'superseded'))";
const SUPERSEDE_SQL: &str = "UPDATE commands SET status = 'superseded', last_error = 'superseded by a revoke', next_attempt_at = $1
         WHERE connector = $2 AND identity_key = $3 AND target = $4 AND action = 'issue'
           AND status IN ('pending', 'confirming')";
const NEXT_DUE_SQL: &str = "SELECT MIN(CASE WHEN status = 'inflight' THEN lease_expires_at ELSE next_attempt_at END) AS due
         FROM commands WHERE connector = $1 AND status IN ('pending', 'confirming', 'inflight')";
const UPDATE_CLAIMED_SQL: &str = "UPDATE commands SET status = $1, next_attempt_at = $2, dispatched_at = COALESCE(dispatched_at, $3),
           confirmed_at = $4, confirm_deadline = COALESCE($5, confirm_deadline), last_error = $6,
           lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - $9,
           first_attempt_at = COALESCE(first_attempt_at, $10)
         WHERE id = $7 AND lease_owner = $8 AND status = 'inflight'";
const OPEN_COMMAND_FOR_SQL: &str = "SELECT * FROM commands WHERE connector = $1 AND identity_key = $2 AND target = $3 AND action = $4
           AND status IN ('pending', 'inflight', 'confirming') ORDER BY id DESC LIMIT 1";

/// (name, SQL) of every query on the hot path (a feed's changes, planning, reconciliation, the
/// dispatcher's claim and completion), in this backend's dialect where it differs: each must be
/// served by an index, never by a full scan of a large table.
pub fn hot_queries(backend: Backend) -> Vec<(&'static str, &'static str)> {
    vec![
        ("source_record", SOURCE_RECORD_SQL),
        ("source_records_of", SOURCE_RECORDS_OF_SQL),
        ("get_identity", GET_IDENTITY_SQL),
        ("grants_of", GRANTS_OF_SQL),
        ("identities_page", IDENTITIES_PAGE_SQL),
        ("identities_due", IDENTITIES_DUE_SQL),
        ("grants_in_key_range", GRANTS_IN_KEY_RANGE_SQL),
        ("release_held", RELEASE_HELD_SQL),
        ("supersede_count", SUPERSEDE_COUNT_SQL),
        ("supersede", SUPERSEDE_SQL),
        ("next_due", NEXT_DUE_SQL),
        ("update_claimed", UPDATE_CLAIMED_SQL),
        ("open_command_for", OPEN_COMMAND_FOR_SQL),
        (
            "claim_next",
            match backend {
                Backend::Sqlite => sqlite::CLAIM_SQL,
                Backend::Postgres => postgres::CLAIM_SQL,
            },
        ),
        ("on_target", confirm_batch::ON_TARGET_SQL),
        (
            "claim_confirming_on",
            match backend {
                Backend::Sqlite => confirm_batch::CLAIM_SQLITE,
                Backend::Postgres => confirm_batch::CLAIM_POSTGRES,
            },
        ),
    ]
}

#[cfg(test)]
mod write_gate_tests {
    use super::WriteGate;
    use std::sync::{Arc, Mutex};

    /// A revoke's writer arriving behind three issue writers still gets the gate before them: it
    /// waits for the transaction in progress and at most one ordinary writer.
    #[tokio::test]
    async fn an_urgent_writer_goes_ahead_of_the_ordinary_ones_waiting() {
        let gate = WriteGate::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let holder = gate.turn(false).await;
        let mut tasks = Vec::new();
        for name in ["issue-1", "issue-2", "issue-3", "revoke"] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = gate.turn(name == "revoke").await;
                order.lock().unwrap().push(name);
                tokio::task::yield_now().await;
            }));
            // Each arrives after the one before has queued: on this single-threaded runtime a
            // spawned task runs, when this one yields, until it waits for the gate.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        drop(holder);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let revoke = order.iter().position(|n| *n == "revoke").unwrap();
        assert!(
            revoke <= 1,
            "the revoke waited for {revoke} issue writers: {order:?}"
        );
        assert_eq!(order.len(), 4);
    }
}
