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
pub mod batch;
pub mod confirm_batch;
pub mod console;
pub mod door_moves;
mod group;
pub mod ldap;
pub mod leases;
pub mod outbox;
pub mod postgres;
pub mod reports;
mod retry;
pub mod reviews;
pub mod scim;
pub mod scim_search;
pub mod sqlite;
mod states;
pub mod suspensions;

mod cabinet;
mod commands;
mod holds;
mod hot;
mod identities;
mod jobs;
mod keys_and_drift;
mod ledger;
mod reconcile;

pub use cabinet::*;
pub use commands::*;
pub use holds::*;
pub use hot::hot_queries;
use hot::*;
pub use identities::*;
pub use jobs::*;
pub use keys_and_drift::*;
pub use ledger::*;
pub use reconcile::*;

pub use group::GroupCommits;
pub use outbox::*;
pub use retry::{MAX_ATTEMPTS, db_error, is_lost_race};

use crate::model::{Action, CommandId, CommandStatus, GrantState, Lifecycle, PersonKey};
pub use absences::*;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;

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
///
/// It knows whether it queued work for the dispatcher: committing one that enqueued, reissued or
/// redrove a command wakes the dispatcher by itself, so no caller has to remember to.
///
/// It is either a transaction of its own or a member's share of a group's transaction
/// ([`Store::begin_grouped`]); both commit and roll back the same way for the caller.
#[derive(Debug)]
pub struct Tx(TxKind);

#[derive(Debug)]
enum TxKind {
    Own(OwnTx),
    Member(group::Member),
}

/// A transaction of its own (see [`Tx`]).
#[derive(Debug)]
pub(crate) struct OwnTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<GateTurn>,
    outbox: Arc<Notify>,
    queued_at_begin: u64,
}

/// Moved by every write that makes a command due ([`enqueue`], [`reissue`], [`redrive`]). A
/// transaction that sees it move between its begin and its commit wakes the dispatcher when it
/// commits. Another transaction's write can move it too: that costs a spurious wake-up (the
/// dispatcher finds nothing new and waits again), never a missed one.
static COMMANDS_QUEUED: AtomicU64 = AtomicU64::new(0);

/// Note that the current transaction made a command due (see [`Tx`]).
pub(crate) fn command_queued() {
    COMMANDS_QUEUED.fetch_add(1, Ordering::Relaxed);
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
    /// Urgent writers waiting at the gate: an ordinary shared transaction that holds it stops
    /// taking members and commits (see [`group`]), so a revoke waits for the member in progress,
    /// not for a whole group of issues' completions.
    urgent_waiting: Arc<AtomicUsize>,
}

/// An urgent writer counted in [`WriteGate::urgent_waiting`] until it has the gate, or is
/// cancelled while it waits.
struct UrgentWait(Arc<AtomicUsize>);

impl Drop for UrgentWait {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteGate {
    async fn turn(&self, urgent: bool) -> GateTurn {
        let (lobby, counted) = if urgent {
            self.urgent_waiting.fetch_add(1, Ordering::AcqRel);
            (None, Some(UrgentWait(self.urgent_waiting.clone())))
        } else {
            (Some(self.lobby.clone().lock_owned().await), None)
        };
        let gate = self.gate.clone().lock_owned().await;
        drop(counted);
        GateTurn {
            _gate: gate,
            _lobby: lobby,
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::Transaction<'static, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        match &self.0 {
            TxKind::Own(own) => &own.tx,
            TxKind::Member(member) => &member.tx().tx,
        }
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.0 {
            TxKind::Own(own) => &mut own.tx,
            TxKind::Member(member) => &mut member.tx_mut().tx,
        }
    }
}

impl Tx {
    /// Commit (a group's member: once the group's transaction has committed); then, if this
    /// transaction queued a command, wake the dispatcher.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.0 {
            TxKind::Own(own) => own.commit().await,
            TxKind::Member(member) => member.commit().await,
        }
    }

    /// Undo this transaction's writes (a group's member: its own, the group goes on).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.0 {
            TxKind::Own(own) => own.rollback().await,
            TxKind::Member(member) => member.rollback().await,
        }
    }
}

impl OwnTx {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        if COMMANDS_QUEUED.load(Ordering::Relaxed) != self.queued_at_begin {
            self.outbox.notify_waiters();
        }
        Ok(())
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's writers of this process take turns here (see [`WriteGate`]).
    write_gate: WriteGate,
    /// Wakes the dispatcher when a committed transaction queued a command (see [`Tx`]).
    outbox: Arc<Notify>,
    /// Short writers sharing transactions (see [`Store::begin_grouped`]): revocations' own
    /// writers in one queue, everyone else in the other.
    groups: Groups,
}

#[derive(Debug, Clone)]
struct Groups {
    /// One on SQLite (one writer at a time anyway); several on PostgreSQL, where transactions on
    /// different connections run side by side: one queue would make them wait on each other.
    ordinary: Vec<group::Group>,
    urgent: group::Group,
}

impl Groups {
    fn for_backend(backend: Backend, gate: &WriteGate) -> Self {
        let ordinary = match backend {
            // The one ordinary queue makes way for urgent writers at the gate.
            Backend::Sqlite => vec![group::Group::yielding_to(gate.urgent_waiting.clone())],
            Backend::Postgres => (0..POSTGRES_GROUPS)
                .map(|_| group::Group::default())
                .collect(),
        };
        Self {
            ordinary,
            urgent: group::Group::default(),
        }
    }

    /// The queue an ordinary writer joins: one whose slot is free now, else the shortest.
    fn ordinary(&self) -> &group::Group {
        self.ordinary
            .iter()
            .find(|g| g.is_free())
            .or_else(|| self.ordinary.iter().min_by_key(|g| g.waiting()))
            // Never empty (see `for_backend`); the revocations' queue would do.
            .unwrap_or(&self.urgent)
    }
}

/// Shared transactions open at once on PostgreSQL for ordinary writers: enough to keep several
/// connections busy, few enough that each carries several writers under load.
const POSTGRES_GROUPS: usize = 4;

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
        let write_gate = WriteGate::default();
        let store = Self {
            pool,
            backend,
            outbox: Arc::new(Notify::new()),
            groups: Groups::for_backend(backend, &write_gate),
            write_gate,
        };
        match backend {
            Backend::Sqlite => {
                sqlite::migrate(&store.pool).await?;
                sqlite::spawn_checkpointer(&store.pool);
            }
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

    /// What the dispatcher waits on: woken when a committed transaction queued a command.
    pub fn outbox_wakeup(&self) -> Arc<Notify> {
        self.outbox.clone()
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

    /// A write transaction shared with the other short writers that arrive together (group
    /// commit, see [`group`]): a SCIM request, a directory change, a command's completion. Its
    /// `commit` returns once the shared transaction has committed; its `rollback` (or an error
    /// that drops it) undoes only its own writes. Not for long transactions (a feed batch): the
    /// members queued behind one wait for it.
    pub async fn begin_grouped(&self) -> Result<Tx> {
        self.begin_grouped_as(false).await
    }

    /// [`Store::begin_grouped`] for a command's writes: a revoke's join the revocations' group,
    /// which goes ahead of ordinary writers at SQLite's write gate.
    pub async fn begin_grouped_for(&self, action: Action) -> Result<Tx> {
        self.begin_grouped_as(action == Action::Revoke).await
    }

    /// How much group commit shared (both queues together): for the benchmark and tests.
    pub fn group_commits(&self) -> GroupCommits {
        self.groups
            .ordinary
            .iter()
            .chain([&self.groups.urgent])
            .map(|g| g.figures())
            .fold(GroupCommits::default(), |sum, f| GroupCommits {
                commits: sum.commits + f.commits,
                members: sum.members + f.members,
            })
    }

    async fn begin_grouped_as(&self, urgent: bool) -> Result<Tx> {
        let group = if urgent {
            &self.groups.urgent
        } else {
            self.groups.ordinary()
        };
        let member = group.join(|| self.begin_own(urgent)).await?;
        Ok(Tx(TxKind::Member(member)))
    }

    async fn begin_write_as(&self, urgent: bool) -> Result<Tx> {
        Ok(Tx(TxKind::Own(self.begin_own(urgent).await?)))
    }

    async fn begin_own(&self, urgent: bool) -> Result<OwnTx> {
        let (tx, gate) = match self.backend {
            Backend::Sqlite => {
                let gate = self.write_gate.turn(urgent).await;
                (self.pool.begin_with("BEGIN IMMEDIATE").await?, Some(gate))
            }
            Backend::Postgres => (self.pool.begin().await?, None),
        };
        Ok(OwnTx {
            tx,
            _gate: gate,
            outbox: self.outbox.clone(),
            queued_at_begin: COMMANDS_QUEUED.load(Ordering::Relaxed),
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
        let claim = Claim {
            connector,
            owner,
            now,
            lease_until,
            revokes_only,
        };
        Ok(self.claim_up_to(&claim, 1).await?.into_iter().next())
    }

    /// Claim up to `limit` due commands of a lane at once, in the order [`Store::claim_next`]
    /// would take them one by one, never two of one grant: a worker with a backlog before it
    /// claims in one statement what it would otherwise claim in `limit`.
    pub async fn claim_up_to(&self, claim: &Claim<'_>, limit: i64) -> Result<Vec<CommandRow>> {
        let mut attempt = 1;
        loop {
            let claimed = self
                .retry("command claim", || self.claim_once(claim, limit))
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

    async fn claim_once(&self, claim: &Claim<'_>, limit: i64) -> Result<Vec<CommandRow>> {
        let max_priority = if claim.revokes_only {
            Action::Revoke.priority()
        } else {
            i64::MAX
        };
        // The worker reserved for revokes claims ahead of the issue workers queued for the gate.
        let mut tx = self.begin_grouped_as(claim.revokes_only).await?;
        // The write lock of `BEGIN IMMEDIATE` makes SQLite's claim exclusive; PostgreSQL's skips
        // rows other claims hold (`FOR UPDATE SKIP LOCKED`).
        let sql = match (self.backend, limit > 1) {
            (Backend::Sqlite, false) => sqlite::CLAIM_SQL,
            (Backend::Sqlite, true) => sqlite::CLAIM_MANY_SQL,
            (Backend::Postgres, false) => postgres::CLAIM_SQL,
            (Backend::Postgres, true) => postgres::CLAIM_MANY_SQL,
        };
        let mut q = sqlx::query(sql)
            .bind(claim.owner)
            .bind(claim.lease_until)
            .bind(claim.now)
            .bind(claim.connector)
            .bind(max_priority);
        if limit > 1 {
            q = q.bind(limit);
        }
        let rows = q.fetch_all(&mut **tx).await?;
        let mut cmds = rows
            .iter()
            .map(CommandRow::from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        // `RETURNING` keeps no order: revokes first, then oldest first, as claimed.
        cmds.sort_by_key(|c| (c.priority, c.id));
        Ok(cmds)
    }
}

/// Who claims which lane's commands, when, and for how long (see [`Store::claim_up_to`]).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub connector: &'a str,
    pub owner: &'a str,
    pub now: i64,
    pub lease_until: i64,
    /// Only revokes (the lane's worker reserved for them).
    pub revokes_only: bool,
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
