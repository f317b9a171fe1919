//! A batch of people planned on one transaction. What they read (source records, identities,
//! grants, what operators decided for them) is read for all of them at once; what they write
//! (source records, identities, ledger rows, commands, audit records) is staged and written
//! together by [`Batch::flush`]. A single change (a SCIM request, a directory change, an
//! operator's act) is a batch of one, so every change takes the same path.
//!
//! Reads see the batch's own staged writes: each staged row replaces the one read. A person is
//! staged once per flush; starting a second change for them flushes the first, so anything read
//! from the database itself (the outbox, when a revoke supersedes issues) sees it.

use crate::audit;
use crate::clock::to_micros;
use crate::model::{Action, PersonKey};
use crate::plan::Applied;
use crate::store::access_requests::RequestRow;
use crate::store::batch::{self as sql, PeopleRows};
use crate::store::door_moves::DoorMoveRow;
use crate::store::reviews::WithdrawalRow;
use crate::store::suspensions::SuspensionRow;
use crate::store::{GrantRow, IdentityRow, NewCommand, SourceRecordRow, StoreError};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

/// An audit record staged with the batch. One that records a command carries the command's
/// place in the batch: its id is written into the details once the outbox has given it, and the
/// record is dropped when the outbox already had the command.
#[derive(Debug, Clone)]
struct StagedAudit {
    entry: audit::Entry,
    details: serde_json::Value,
    command: Option<usize>,
}

/// Rows of one kind staged for writing, the last write of a row winning (a multi-row upsert may
/// not touch one row twice).
#[derive(Debug)]
struct Staged<K, R> {
    rows: Vec<R>,
    at: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq, R> Default for Staged<K, R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            at: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, R> Staged<K, R> {
    fn put(&mut self, key: K, row: R) {
        match self.at.get(&key) {
            Some(&i) => self.rows[i] = row,
            None => {
                self.at.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    fn take(&mut self) -> Vec<R> {
        self.at.clear();
        std::mem::take(&mut self.rows)
    }
}

#[derive(Debug)]
pub struct Batch {
    /// The moment the batch plans at: temporary access is read as in force then.
    now: DateTime<Utc>,
    rows: PeopleRows,
    loaded: HashSet<PersonKey>,
    moves_loaded: bool,
    /// People with writes staged since the last flush.
    staged_people: HashSet<PersonKey>,
    source_records: Staged<(String, PersonKey), SourceRecordRow>,
    identities: Staged<PersonKey, IdentityRow>,
    grants: Staged<(PersonKey, String, String), GrantRow>,
    commands: Vec<NewCommand>,
    audit: Vec<StagedAudit>,
    released: Vec<(String, PersonKey)>,
    /// Grants (connector, person, target) whose waiting issues a revoke supersedes.
    superseded: Vec<(String, PersonKey, String)>,
    applied: HashMap<PersonKey, Applied>,
}

impl Batch {
    /// An empty batch planning at `now`; people's rows are read as they are first needed.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            rows: PeopleRows::default(),
            loaded: HashSet::new(),
            moves_loaded: false,
            staged_people: HashSet::new(),
            source_records: Staged::default(),
            identities: Staged::default(),
            grants: Staged::default(),
            commands: Vec::new(),
            audit: Vec::new(),
            released: Vec::new(),
            superseded: Vec::new(),
            applied: HashMap::new(),
        }
    }

    /// A batch planning at `now` with the rows of `keys` read at once.
    pub async fn load(
        conn: &mut AnyConnection,
        keys: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        let mut b = Self::new(now);
        b.read(conn, keys).await?;
        Ok(b)
    }

    async fn read(&mut self, conn: &mut AnyConnection, keys: &[&str]) -> Result<(), StoreError> {
        let keys: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.loaded.contains(*k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let read = sql::people_rows(conn, &keys, to_micros(self.now)).await?;
        self.rows.source_records.extend(read.source_records);
        self.rows.identities.extend(read.identities);
        self.rows.grants.extend(read.grants);
        self.rows.withdrawn.extend(read.withdrawn);
        self.rows.requests.extend(read.requests);
        self.rows.suspensions.extend(read.suspensions);
        if !self.moves_loaded {
            self.rows.moves = read.moves;
            self.moves_loaded = true;
        }
        self.loaded.extend(keys.into_iter().map(PersonKey::from));
        Ok(())
    }

    /// Start a change for `key`: its rows are read if they were not, and a change already staged
    /// for it is written first.
    pub async fn person(&mut self, conn: &mut AnyConnection, key: &str) -> Result<(), StoreError> {
        if self.staged_people.contains(key) {
            self.flush(conn).await?;
        }
        self.read(conn, &[key]).await
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    pub fn source_record(&self, source: &str, key: &str) -> Option<&SourceRecordRow> {
        self.source_records_of(key)
            .iter()
            .find(|r| r.source == source)
    }

    /// A person's records from every source, by source.
    pub fn source_records_of(&self, key: &str) -> &[SourceRecordRow] {
        self.rows.source_records.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn identity(&self, key: &str) -> Option<&IdentityRow> {
        self.rows.identities.get(key)
    }

    /// A person's ledger rows, by connector and target.
    pub fn grants_of(&self, key: &str) -> &[GrantRow] {
        self.rows.grants.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn withdrawn_of(&self, key: &str) -> &[WithdrawalRow] {
        self.rows.withdrawn.get(key).map_or(&[], Vec::as_slice)
    }

    /// A person's temporary access in force at the batch's moment.
    pub fn requests_of(&self, key: &str) -> &[RequestRow] {
        self.rows.requests.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn suspensions_of(&self, key: &str) -> &[SuspensionRow] {
        self.rows.suspensions.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn moves(&self) -> &[DoorMoveRow] {
        &self.rows.moves
    }

    fn staging(&mut self, key: &str) {
        if !self.staged_people.contains(key) {
            self.staged_people.insert(key.into());
        }
    }
    pub fn put_source_record(&mut self, row: SourceRecordRow) {
        self.staging(&row.key);
        let records = self.rows.source_records.entry(row.key.clone()).or_default();
        match records.iter_mut().find(|r| r.source == row.source) {
            Some(r) => *r = row.clone(),
            None => {
                records.push(row.clone());
                records.sort_by(|a, b| a.source.cmp(&b.source));
            }
        }
        self.source_records
            .put((row.source.clone(), row.key.clone()), row);
    }

    pub fn put_identity(&mut self, row: IdentityRow) {
        self.staging(&row.key);
        self.rows.identities.insert(row.key.clone(), row.clone());
        self.identities.put(row.key.clone(), row);
    }

    /// What policy decided about a ledger row (see [`sql::put_decided_grants`]).
    pub fn put_grant(&mut self, row: GrantRow) {
        self.staging(&row.identity_key);
        let ledger = self
            .rows
            .grants
            .entry(row.identity_key.clone())
            .or_default();
        match ledger
            .iter_mut()
            .find(|g| g.connector == row.connector && g.target == row.target)
        {
            Some(g) => *g = row.clone(),
            None => {
                ledger.push(row.clone());
                ledger.sort_by(|a, b| (&a.connector, &a.target).cmp(&(&b.connector, &b.target)));
            }
        }
        let key = (
            row.identity_key.clone(),
            row.connector.clone(),
            row.target.clone(),
        );
        self.grants.put(key, row);
    }

    /// Put a command in the outbox, with the audit record of its enqueueing (`details` gets the
    /// command's id as `command`).
    pub fn enqueue(&mut self, cmd: NewCommand, actor: &str, at: i64, details: serde_json::Value) {
        self.staging(&cmd.identity_key);
        self.audit.push(StagedAudit {
            entry: audit::Entry {
                at,
                actor: actor.to_string(),
                action: "command.enqueued".to_string(),
                subject: cmd.identity_key.to_string(),
                details: String::new(),
            },
            details,
            command: Some(self.commands.len()),
        });
        self.commands.push(cmd);
    }

    /// An audit record, written in order with the batch's others.
    pub fn audit(
        &mut self,
        at: i64,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) {
        self.audit.push(StagedAudit {
            entry: audit::Entry {
                at,
                actor: actor.to_string(),
                action: action.to_string(),
                subject: subject.to_string(),
                details: String::new(),
            },
            details,
            command: None,
        });
    }

    /// A disappearance of `key` held for approval in `source` is no longer needed.
    pub fn release_held(&mut self, source: &str, key: &str) {
        self.released.push((source.to_string(), key.into()));
    }

    /// A revoke of the grant (`connector`, `key`, `target`) supersedes the grant's issues still
    /// waiting in the outbox: written with the batch's other writes, before its commands.
    pub fn supersede_issues(&mut self, connector: &str, key: &str, target: &str) {
        self.staging(key);
        self.superseded
            .push((connector.to_string(), key.into(), target.to_string()));
    }

    /// The person's suspensions ended (written by the caller).
    pub fn suspensions_ended(&mut self, key: &str) {
        self.rows.suspensions.remove(key);
    }

    /// What was enqueued for `key` by the flushes so far.
    pub fn applied_of(&self, key: &str) -> Applied {
        self.applied.get(key).copied().unwrap_or_default()
    }

    /// Write everything staged, on the caller's transaction: the supersession of waiting issues,
    /// rows, then commands, then the audit records in the order they were staged.
    pub async fn flush(&mut self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        // The outbox before the ledger, as every writer takes them (a listing's finish: its
        // commands, then their grants), so that on PostgreSQL a batch and a finish never hold
        // one each and wait for the other.
        let superseded = std::mem::take(&mut self.superseded);
        if !superseded.is_empty() {
            sql::supersede_issues_of(conn, &superseded, to_micros(self.now)).await?;
        }
        sql::put_source_records(conn, &self.source_records.take()).await?;
        sql::put_identities(conn, &self.identities.take()).await?;
        sql::put_decided_grants(conn, &self.grants.take()).await?;
        let released = std::mem::take(&mut self.released);
        let mut sources: Vec<&str> = released.iter().map(|(s, _)| s.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        for source in sources {
            let keys: Vec<&str> = released
                .iter()
                .filter(|(s, _)| s == source)
                .map(|(_, k)| k.as_str())
                .collect();
            sql::release_held_of(conn, source, &keys, to_micros(self.now)).await?;
        }
        let commands = std::mem::take(&mut self.commands);
        let ids = if commands.is_empty() {
            Vec::new()
        } else {
            sql::enqueue_all(conn, &commands, to_micros(self.now)).await?
        };
        for (cmd, id) in commands.iter().zip(&ids) {
            if id.is_some() {
                let a = self.applied.entry(cmd.identity_key.clone()).or_default();
                match cmd.action {
                    Action::Issue => a.issues += 1,
                    Action::Revoke => a.revokes += 1,
                }
            }
        }
        let entries = std::mem::take(&mut self.audit)
            .into_iter()
            .filter_map(|mut s| {
                if let Some(i) = s.command {
                    let id = (*ids.get(i)?)?;
                    if let Some(details) = s.details.as_object_mut() {
                        details.insert("command".into(), serde_json::json!(id));
                    }
                }
                s.entry.details = s.details.to_string();
                Some(s.entry)
            })
            .collect();
        audit::append_all(conn, entries).await?;
        self.staged_people.clear();
        Ok(())
    }
}
