//! Group commit: short writers that arrive together share one transaction.
//!
//! A SCIM request, a directory change or a command's completion is a handful of statements; on
//! its own each pays for a `BEGIN`, a `COMMIT` (a WAL write on SQLite, a WAL flush on PostgreSQL)
//! and a turn at the write gate. Writers that queue behind one another instead join the
//! transaction that is open: each runs its statements inside a savepoint of its own, and the last
//! writer of the queue commits for all of them. A writer's `commit` returns only once the shared
//! transaction has committed (a SCIM 2xx still means durable); a writer that fails is rolled back
//! to its savepoint and the others go on; a failed shared commit is every member's error, with
//! the database's SQLSTATE, so each member's own retry runs its body again.
//!
//! The baton is passed without a coordinator task: the group is a slot behind a fair mutex. The
//! first writer finds it empty and begins the transaction (it needs no savepoint: a writer alone
//! pays nothing for the group); a writer that finishes while others
//! are waiting for the slot leaves the transaction open for them and waits for the outcome; the
//! writer that finds no one waiting (or the group full) commits. Every way out (a writer
//! cancelled while waiting, a writer dropped half-way through its statements) ends with someone
//! committing or rolling back, so no member waits forever.

use super::OwnTx;
use sqlx::Executor;
use sqlx::error::{DatabaseError, ErrorKind};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// Members per shared transaction at most. A group holds SQLite's write gate while it is open,
/// so this bounds what a revoke's writer can wait behind (the group in progress).
pub const MAX_MEMBERS: usize = 16;

/// What a group's members learn when it ends: committed, or the commit's error.
type Outcome = Option<Result<(), Failed>>;

/// A queue of writers that share transactions (one for revocations' writers, one for the rest).
#[derive(Debug, Clone, Default)]
pub(super) struct Group {
    slot: Arc<Mutex<Option<Open>>>,
    /// Writers waiting for the slot: while there are any, a finishing member leaves the
    /// transaction open for them.
    waiting: Arc<AtomicUsize>,
    /// Urgent writers waiting for SQLite's write gate that this (ordinary) queue holds: while
    /// there are any, a finishing member commits instead of passing the transaction on.
    yields_to: Option<Arc<AtomicUsize>>,
    stats: Arc<Counters>,
}

/// How much sharing happened: shared transactions committed, and the members they carried.
#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    members: AtomicU64,
}

/// Group commit's figures since the store was opened (see [`super::Store::group_commits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCommits {
    /// Shared transactions committed.
    pub commits: u64,
    /// Writers' transactions they carried.
    pub members: u64,
}

impl Group {
    /// A queue that ends its transaction early for the urgent writers counted in `urgent`.
    pub(super) fn yielding_to(urgent: Arc<AtomicUsize>) -> Self {
        Self {
            yields_to: Some(urgent),
            ..Self::default()
        }
    }

    /// Urgent writers are waiting for the write gate this queue's transaction holds.
    fn must_yield(&self) -> bool {
        self.yields_to
            .as_ref()
            .is_some_and(|u| u.load(Ordering::Acquire) > 0)
    }

    /// No writer holds the slot or waits for it (a hint: it may change at once).
    pub(super) fn is_free(&self) -> bool {
        self.waiting() == 0 && self.slot.try_lock().is_ok()
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(super) fn figures(&self) -> GroupCommits {
        GroupCommits {
            commits: self.stats.commits.load(Ordering::Relaxed),
            members: self.stats.members.load(Ordering::Relaxed),
        }
    }
}

/// The transaction a group has open.
#[derive(Debug)]
pub(super) struct Open {
    tx: OwnTx,
    /// Members whose statements are in the transaction, waiting for its commit.
    members: usize,
    outcome: watch::Sender<Outcome>,
}

/// A member's place in a group: it holds the slot (and so the transaction) while its statements
/// run, inside its savepoint.
#[derive(Debug)]
pub struct Member {
    slot: Option<OwnedMutexGuard<Option<Open>>>,
    group: Group,
    /// Its savepoint is set (every member but the group's first): leaving undoes what it wrote.
    in_savepoint: bool,
}

/// A writer waiting for the slot; if it is cancelled while it waits and was the last one, the
/// group it was expected to join is finished by a task of its own.
struct Ticket<'a> {
    group: &'a Group,
    seated: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.seated {
            return;
        }
        if self.group.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            let group = self.group.clone();
            tokio::spawn(async move {
                let slot = group.slot.clone().lock_owned().await;
                let _ = settle(slot, &group).await;
            });
        }
    }
}

const SAVEPOINT: &str = "SAVEPOINT group_member";
const RELEASE: &str = "RELEASE SAVEPOINT group_member";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT group_member";

impl Group {
    /// Join the open transaction, or begin one with `begin` when none is open; the member's
    /// statements run inside a savepoint.
    pub(super) async fn join<F, Fut>(&self, begin: F) -> Result<Member, sqlx::Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<OwnTx, super::StoreError>>,
    {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let mut ticket = Ticket {
            group: self,
            seated: false,
        };
        let mut slot = self.slot.clone().lock_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        ticket.seated = true;
        if slot.is_none() {
            let tx = begin().await.map_err(|e| match e {
                super::StoreError::Db(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
            let (outcome, _) = watch::channel(None);
            *slot = Some(Open {
                tx,
                members: 0,
                outcome,
            });
        }
        // The group's first member needs no savepoint: if it fails, the whole transaction is
        // rolled back (nothing else is in it). A writer alone pays nothing for the group.
        let first = slot.as_ref().is_some_and(|open| open.members == 0);
        // From here a cancelled join is a member leaving: the group still gets settled.
        let mut member = Member {
            slot: Some(slot),
            group: self.clone(),
            in_savepoint: false,
        };
        if first {
            return Ok(member);
        }
        let conn: &mut sqlx::AnyConnection = &mut member.tx_mut().tx;
        if let Err(e) = (&mut *conn).execute(SAVEPOINT).await {
            if let Some(slot) = member.slot.take() {
                fail(slot, &e);
            }
            return Err(e);
        }
        member.in_savepoint = true;
        Ok(member)
    }
}

impl Member {
    pub(super) fn tx(&self) -> &OwnTx {
        &self.open().tx
    }

    pub(super) fn tx_mut(&mut self) -> &mut OwnTx {
        &mut self.open_mut().tx
    }

    // A member holds the slot, with its group open, from `join` until `commit`, `rollback` or
    // drop consume it; nothing else empties it.
    #[allow(clippy::expect_used)]
    fn open(&self) -> &Open {
        self.slot
            .as_ref()
            .and_then(|s| s.as_ref())
            .expect("a member holds an open group")
    }

    #[allow(clippy::expect_used)]
    fn open_mut(&mut self) -> &mut Open {
        self.slot
            .as_mut()
            .and_then(|s| s.as_mut())
            .expect("a member holds an open group")
    }

    /// Keep this member's writes and return once the shared transaction has committed.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let Some(slot) = self.slot.take() else {
            return Err(gone());
        };
        let Some(mut outcome) = slot.as_ref().map(|open| open.outcome.subscribe()) else {
            return Err(gone());
        };
        // Releasing the savepoint and settling the group run on a task of their own, so a
        // member cancelled here cannot leave the group unsettled.
        let group = self.group.clone();
        let release = self.in_savepoint;
        let kept = tokio::spawn(async move { keep_and_leave(slot, &group, release).await });
        kept.await
            .map_err(|e| sqlx::Error::Protocol(format!("group member task: {e}")))??;
        // Whoever commits (this member or a later one) sends the outcome to every member.
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .unwrap_or(None);
        match ended {
            Some(Ok(())) => Ok(()),
            Some(Err(failed)) => Err(sqlx::Error::Database(Box::new(failed))),
            None => Err(sqlx::Error::Protocol(
                "the shared transaction ended without an outcome".into(),
            )),
        }
    }

    /// Undo this member's writes; the group's other members go on.
    pub(super) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let Some(slot) = self.slot.take() else {
            return Err(gone());
        };
        let (group, undo) = (self.group.clone(), self.in_savepoint);
        tokio::spawn(async move { undo_and_leave(slot, &group, undo).await })
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("group member task: {e}")))?
    }
}

impl Drop for Member {
    /// A member dropped half-way (an error returned with `?`, a cancelled request) is rolled
    /// back to its savepoint by a task, which then lets the group go on.
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let (group, undo) = (self.group.clone(), self.in_savepoint);
            tokio::spawn(async move {
                let _ = undo_and_leave(slot, &group, undo).await;
            });
        }
    }
}

/// Undo a member's savepoint (when it set one), then end the group for the members before it (a
/// first member, without a savepoint, leaves none: the whole transaction is rolled back). A
/// member fails mostly on a lost lock race: its retry must not meet the locks its own group's
/// earlier members still hold, so the group commits before the retry begins.
async fn undo_and_leave(
    mut slot: OwnedMutexGuard<Option<Open>>,
    group: &Group,
    undo: bool,
) -> Result<(), sqlx::Error> {
    if undo && let Some(open) = slot.as_mut() {
        let conn: &mut sqlx::AnyConnection = &mut open.tx.tx;
        let undone = match (&mut *conn).execute(ROLLBACK_TO).await {
            Ok(_) => (&mut *conn).execute(RELEASE).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = undone {
            fail(slot, &e);
            return Err(e);
        }
    }
    end(slot, group).await;
    Ok(())
}

/// Keep a member's writes (release its savepoint; it now waits for the commit), then let the
/// group go on.
async fn keep_and_leave(
    mut slot: OwnedMutexGuard<Option<Open>>,
    group: &Group,
    release: bool,
) -> Result<(), sqlx::Error> {
    let Some(open) = slot.as_mut() else {
        return Err(gone());
    };
    let conn: &mut sqlx::AnyConnection = &mut open.tx.tx;
    if release && let Err(e) = (&mut *conn).execute(RELEASE).await {
        fail(slot, &e);
        return Err(e);
    }
    open.members += 1;
    settle(slot, group).await;
    Ok(())
}

/// After a member: leave the transaction open for the writers waiting, or end it when no one
/// waits or the group is full.
async fn settle(slot: OwnedMutexGuard<Option<Open>>, group: &Group) {
    let Some(open) = slot.as_ref() else {
        return;
    };
    if group.waiting.load(Ordering::Acquire) > 0
        && open.members < MAX_MEMBERS
        && !group.must_yield()
    {
        return;
    }
    end(slot, group).await
}

/// End the group: commit it for its members (roll it back when it has none) and tell them.
async fn end(mut slot: OwnedMutexGuard<Option<Open>>, group: &Group) {
    let Some(open) = slot.take() else {
        return;
    };
    // The next group may begin while this one commits.
    drop(slot);
    if open.members == 0 {
        let _ = open.tx.rollback().await;
        return;
    }
    // The commit runs on its own task: a committing member that is cancelled must not leave the
    // other members without an outcome.
    let stats = group.stats.clone();
    let commit = tokio::spawn(async move {
        let result = open.tx.commit().await;
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .members
                .fetch_add(open.members as u64, Ordering::Relaxed);
        }
        let outcome = result.as_ref().map(|_| ()).map_err(Failed::from);
        open.outcome.send_replace(Some(outcome));
        result
    });
    let _ = commit.await;
}

/// A member found its group already ended (its connection failed under an earlier member).
fn gone() -> sqlx::Error {
    sqlx::Error::Protocol("the shared transaction has already ended".into())
}

/// The shared transaction cannot go on (its connection failed): every member waiting learns it.
fn fail(mut slot: OwnedMutexGuard<Option<Open>>, e: &sqlx::Error) {
    if let Some(open) = slot.take() {
        open.outcome.send_replace(Some(Err(Failed::from(e))));
        // Dropping the transaction rolls it back.
    }
}

/// A shared transaction's failure as each member sees it: the database's code and message, so a
/// lost lock race is recognised as one and the member's retry runs its body again.
#[derive(Debug, Clone)]
pub struct Failed {
    code: Option<String>,
    message: String,
}

impl From<&sqlx::Error> for Failed {
    fn from(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => Failed {
                code: db.code().map(|c| c.into_owned()),
                message: db.message().to_string(),
            },
            other => Failed {
                code: None,
                message: other.to_string(),
            },
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shared transaction failed: {}", self.message)
    }
}

impl std::error::Error for Failed {}

impl DatabaseError for Failed {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.as_deref().map(Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}
