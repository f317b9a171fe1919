//! RFC 4533 content synchronisation: the sync search, its cookie, and how a refresh is applied.

use super::*;
use crate::model::Snapshot;
use ldap3::controls::{
    EntryState, MakeCritical, RefreshMode, SyncDone, SyncInfo, SyncRequest, SyncState,
    parse_syncinfo,
};
use ldap3::{LdapResult, ResultEntry};

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// RFC 4533 `e-syncRefreshRequired`: the cookie is too old, start again from nothing.
const SYNC_REFRESH_REQUIRED: u32 = 4096;

/// What a refresh (initial load, reconnect, refreshOnly poll) gathered before it is applied.
#[derive(Debug, Default)]
pub(super) struct Refresh {
    /// No cookie was sent: the refresh is the whole directory.
    full: bool,
    /// The server used the present phase: entries not mentioned are gone.
    present_phase: bool,
    cookie: Option<Vec<u8>>,
    /// Entries sent in full (added or changed), with their UUID.
    changed: Vec<(String, Entry)>,
    present: HashSet<String>,
    deleted: HashSet<String>,
}

pub(super) enum SyncEnd {
    /// refreshOnly finished: poll again later.
    Polled,
    /// The server wants a full reload.
    RefreshRequired,
}

impl LdapSource {
    // --- RFC 4533 --------------------------------------------------------------------------

    pub(super) async fn cookie(&self) -> Result<Option<Vec<u8>>> {
        let c = store::checkpoint(self.engine.store.pool(), &self.name)
            .await
            .map_err(self.store_err())?;
        Ok(
            c.and_then(|c| c.strip_prefix("rfc4533:").and_then(|h| hex::decode(h).ok()))
                .filter(|c| !c.is_empty()),
        )
    }

    /// Forget the cookie: the next sync search is a full refresh.
    pub(super) async fn clear_cookie(&self) -> Result<()> {
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        let now = to_micros(self.engine.clock.now());
        store::set_checkpoint(&mut tx, &self.name, "rfc4533:", now)
            .await
            .map_err(self.store_err())?;
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }

    pub(super) fn cookie_value(cookie: &[u8]) -> String {
        format!("rfc4533:{}", hex::encode(cookie))
    }

    pub(super) async fn sync_session(&self, ldap: &mut Ldap) -> Result<()> {
        loop {
            match self.sync_once(ldap).await? {
                SyncEnd::RefreshRequired => {
                    tracing::warn!(source = %self.name, "server asked for a full refresh (e-syncRefreshRequired)");
                    self.clear_cookie().await?;
                }
                SyncEnd::Polled => {
                    self.polled();
                    tokio::time::sleep(Duration::from_secs(self.cfg.poll_seconds)).await;
                }
            }
        }
    }

    /// One sync search: a refresh, then (refreshAndPersist) changes as they happen until the
    /// connection ends.
    pub(super) async fn sync_once(&self, ldap: &mut Ldap) -> Result<SyncEnd> {
        let cookie = self.cookie().await?;
        let mode = if self.cfg.persist {
            RefreshMode::RefreshAndPersist
        } else {
            RefreshMode::RefreshOnly
        };
        let mut refresh = Refresh {
            full: cookie.is_none(),
            cookie: cookie.clone(),
            ..Default::default()
        };
        let mut refreshing = true;
        let mut stream = ldap
            .with_controls(
                SyncRequest {
                    mode,
                    cookie,
                    reload_hint: false,
                }
                .critical(),
            )
            .streaming_search(&self.cfg.base, self.scope(), &self.cfg.filter, &self.attrs)
            .await
            .map_err(self.ldap_err("sync search"))?;
        while let Some(re) = stream.next().await.map_err(self.ldap_err("sync search"))? {
            if re.is_intermediate() {
                let info = parse_syncinfo(re);
                let done = self
                    .receive_sync_info(info, &mut refresh, refreshing)
                    .await?;
                if done && refreshing {
                    refreshing = false;
                    self.finish_refresh(std::mem::take(&mut refresh)).await?;
                }
                continue;
            }
            if re.is_ref() {
                continue;
            }
            self.receive_sync_entry(re, &mut refresh, refreshing)
                .await?;
        }
        let res = stream.finish().await;
        self.end_sync_search(res, refresh, refreshing).await
    }

    /// A Sync Info message: gathered into the refresh while it lasts, applied at once after.
    /// Whether it ends the refresh.
    async fn receive_sync_info(
        &self,
        info: SyncInfo,
        refresh: &mut Refresh,
        refreshing: bool,
    ) -> Result<bool> {
        let done = match info {
            SyncInfo::NewCookie(c) => {
                if refreshing {
                    refresh.cookie = Some(c);
                } else {
                    self.persist_cookie(&c).await?;
                }
                false
            }
            SyncInfo::RefreshPresent {
                cookie,
                refresh_done,
            } => {
                refresh.present_phase = true;
                refresh.cookie = cookie.or(refresh.cookie.take());
                refresh_done
            }
            SyncInfo::RefreshDelete {
                cookie,
                refresh_done,
            } => {
                refresh.cookie = cookie.or(refresh.cookie.take());
                refresh_done
            }
            SyncInfo::SyncIdSet {
                cookie,
                refresh_deletes,
                sync_uuids,
            } => {
                let uuids = sync_uuids.iter().map(|u| uuid_string(u));
                if refreshing {
                    refresh.cookie = cookie.or(refresh.cookie.take());
                    if refresh_deletes {
                        refresh.deleted.extend(uuids);
                    } else {
                        refresh.present.extend(uuids);
                    }
                } else if refresh_deletes {
                    let uuids: Vec<String> = uuids.collect();
                    self.apply_deletes(&uuids, cookie.as_deref()).await?;
                }
                false
            }
        };
        Ok(done)
    }

    /// An entry with its Sync State: gathered into the refresh while it lasts, applied at once
    /// after.
    async fn receive_sync_entry(
        &self,
        re: ResultEntry,
        refresh: &mut Refresh,
        refreshing: bool,
    ) -> Result<()> {
        let (state, entry) = self.sync_entry(re)?;
        let uuid = uuid_string(&state.entry_uuid);
        if refreshing {
            match state.state {
                EntryState::Present => {
                    refresh.present.insert(uuid);
                }
                EntryState::Add | EntryState::Modify => refresh.changed.push((uuid, entry)),
                EntryState::Delete => {
                    refresh.deleted.insert(uuid);
                }
            }
            if state.cookie.is_some() {
                refresh.cookie = state.cookie;
            }
        } else {
            match state.state {
                EntryState::Present => {}
                EntryState::Add | EntryState::Modify => {
                    self.apply_change(&uuid, &entry, state.cookie.as_deref())
                        .await?;
                }
                EntryState::Delete => {
                    self.apply_deletes(&[uuid], state.cookie.as_deref()).await?;
                }
            }
        }
        Ok(())
    }

    /// The search's end: a refresh still open is finished with the Sync Done cookie, and the
    /// result code says whether to poll again or reload in full.
    async fn end_sync_search(
        &self,
        res: LdapResult,
        mut refresh: Refresh,
        refreshing: bool,
    ) -> Result<SyncEnd> {
        match res.rc {
            0 => {
                if let Some(done) = res
                    .ctrls
                    .iter()
                    .find(|c| c.1.ctype == SYNC_DONE_OID)
                    .map(|c| c.1.parse::<SyncDone>())
                {
                    refresh.cookie = done.cookie.or(refresh.cookie.take());
                    // refreshDeletes FALSE: the present phase was used (RFC 4533 3.3.2).
                    if !done.refresh_deletes {
                        refresh.present_phase = true;
                    }
                }
                if refreshing {
                    self.finish_refresh(refresh).await?;
                }
                if self.cfg.persist {
                    // A persistent search should not end; treat it as a lost connection.
                    return Err(self.server_err(
                        "persistent sync search",
                        0,
                        "ended by the server",
                    ));
                }
                Ok(SyncEnd::Polled)
            }
            SYNC_REFRESH_REQUIRED => Ok(SyncEnd::RefreshRequired),
            rc => Err(self.server_err("sync search", rc, &res.text)),
        }
    }

    pub(super) fn sync_entry(&self, re: ResultEntry) -> Result<(SyncState, Entry)> {
        let state =
            re.1.iter()
                .find(|c| c.1.ctype == SYNC_STATE_OID && c.1.val.is_some())
                .map(|c| c.1.parse::<SyncState>());
        let entry = Entry::from_search(SearchEntry::construct(re));
        match state {
            Some(s) => Ok((s, entry)),
            None => Err(LdapSourceError::Protocol {
                name: self.name.clone(),
                dn: entry.dn,
                message: "entry without a Sync State control".into(),
            }),
        }
    }

    pub(super) async fn persist_cookie(&self, cookie: &[u8]) -> Result<()> {
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        let now = to_micros(self.engine.clock.now());
        store::set_checkpoint(&mut tx, &self.name, &Self::cookie_value(cookie), now)
            .await
            .map_err(self.store_err())?;
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }

    /// One added or changed entry, its mapping row and the cookie, in one transaction.
    pub(super) async fn apply_change(
        &self,
        uuid: &str,
        entry: &Entry,
        cookie: Option<&[u8]>,
    ) -> Result<()> {
        let now = self.engine.clock.now();
        // Shared with the other short writers of the moment (group commit).
        let mut tx = self
            .engine
            .store
            .begin_grouped()
            .await
            .map_err(self.store_err())?;
        self.change_tx(&mut tx, uuid, entry, now).await?;
        self.commit_with_cookie(tx, cookie, now).await
    }

    /// Commit a change together with the sync cookie that covers it (invariant 1), then wake the
    /// dispatcher.
    pub(super) async fn commit_with_cookie(
        &self,
        mut tx: store::Tx,
        cookie: Option<&[u8]>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        if let Some(c) = cookie {
            store::set_checkpoint(&mut tx, &self.name, &Self::cookie_value(c), to_micros(now))
                .await
                .map_err(self.store_err())?;
        }
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }

    /// Apply what a refresh gathered. A full refresh (no cookie, or the present phase) is a
    /// snapshot: it goes through the engine's snapshot path, so an empty or truncated answer is
    /// held for approval (invariant 4). Otherwise the changes and deletions are applied in
    /// batches, the cookie with the last one.
    pub(super) async fn finish_refresh(&self, refresh: Refresh) -> Result<()> {
        let cookie = refresh.cookie.clone().unwrap_or_default();
        if refresh.full || refresh.present_phase {
            return self.apply_full_refresh(refresh, &cookie).await;
        }
        let deleted: Vec<String> = refresh.deleted.iter().cloned().collect();
        // One call: the mass-deletion safeguard judges the whole set.
        if !deleted.is_empty() {
            self.apply_deletes(&deleted, None).await?;
        }
        // Leavers first (invariant 3): disabled accounts are applied in the first transactions, so
        // their revokes reach the outbox before the joiners' issues. The cookie moves only after
        // the last chunk, so the order inside the refresh is free.
        let mut changed = refresh.changed;
        changed.sort_by_key(|(_, e)| !self.is_leaver_entry(e));
        for chunk in changed.chunks(BATCH) {
            let now = self.engine.clock.now();
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            for (uuid, e) in chunk {
                self.change_tx(&mut tx, uuid, e, now).await?;
            }
            tx.commit().await.map_err(self.db_err())?;
        }
        self.persist_cookie(&cookie).await?;
        tracing::info!(source = %self.name, changed = changed.len(), deleted = deleted.len(), "LDAP refresh applied");
        Ok(())
    }

    pub(super) async fn apply_full_refresh(&self, refresh: Refresh, cookie: &[u8]) -> Result<()> {
        let known = self.all_entries().await?;
        let now = self.engine.clock.now();
        let MappedRefresh {
            mut records,
            quarantined,
            seen,
        } = self.map_changed(&refresh.changed, &known);
        self.add_unchanged(&refresh.present, &known, &seen, &mut records)
            .await?;
        // Map rows first: a crash after this leaves a map that is a superset, which is harmless.
        self.put_entries(&seen).await?;
        let threshold = self.mass_change_threshold();
        let mut report = self.snapshot_report(records.len() + quarantined.len());
        let batch = format!("refresh-{}", to_micros(now));
        self.engine
            .apply_snapshot(
                Snapshot {
                    source: self.name.clone(),
                    batch_id: batch,
                    checkpoint: Self::cookie_value(cookie),
                    records,
                    quarantined,
                    hold_above: threshold,
                    landed_at: None,
                },
                &mut report,
            )
            .await
            .map_err(self.engine_err())?;
        self.forget_gone(&known, &seen, &refresh.present).await?;
        log_report(&report);
        Ok(())
    }

    /// A full refresh's added and changed entries mapped to records, duplicates and unmappable
    /// entries quarantined, and every one of them seen.
    fn map_changed(
        &self,
        changed: &[(String, Entry)],
        known: &HashMap<String, Option<PersonKey>>,
    ) -> MappedRefresh {
        let mut mapped = MappedRefresh::default();
        let (primaries, duplicates) = self
            .mapping
            .dedupe(&self.name, changed.iter().map(|(_, e)| e));
        // By address: which of the changed entries are the ones to map.
        let primaries: HashSet<usize> = primaries
            .into_iter()
            .map(|e| e as *const Entry as usize)
            .collect();
        mapped.quarantined.extend(duplicates);
        for (uuid, e) in changed {
            if !primaries.contains(&(e as *const Entry as usize)) {
                let key = e.first(&self.mapping.key).map(PersonKey::from);
                mapped.seen.insert(uuid.clone(), (e.dn.clone(), key));
                continue;
            }
            match self.map(e) {
                Ok(r) => {
                    mapped
                        .seen
                        .insert(uuid.clone(), (e.dn.clone(), Some(r.key.clone())));
                    mapped.records.push(r);
                }
                Err(q) => {
                    let key = known.get(uuid).cloned().flatten();
                    mapped.seen.insert(uuid.clone(), (e.dn.clone(), key));
                    mapped.quarantined.push(*q);
                }
            }
        }
        mapped
    }

    /// Entries the server says are unchanged: their last stored view stands.
    async fn add_unchanged(
        &self,
        present: &HashSet<String>,
        known: &HashMap<String, Option<PersonKey>>,
        seen: &HashMap<String, SeenEntry>,
        records: &mut Vec<PersonRecord>,
    ) -> Result<()> {
        let mut conn = self
            .engine
            .store
            .pool()
            .acquire()
            .await
            .map_err(self.db_err())?;
        for uuid in present {
            if seen.contains_key(uuid) {
                continue;
            }
            match known.get(uuid) {
                Some(Some(key)) => {
                    let stored = store::source_records_of(&mut conn, key)
                        .await
                        .map_err(self.store_err())?
                        .into_iter()
                        .find(|s| s.source == self.name && s.disappeared_at.is_none());
                    // A key already given by a changed entry (a duplicate's primary) is not repeated.
                    if let Some(r) = stored
                        .and_then(|s| serde_json::from_str::<PersonRecord>(&s.record).ok())
                        .filter(|r| !records.iter().any(|x: &PersonRecord| x.key == r.key))
                    {
                        records.push(r);
                    }
                }
                Some(None) => {}
                None => {
                    // The server reports as present an entry never seen here: the map and the
                    // cookie disagree. Drop the cookie so the next refresh is complete.
                    drop(conn);
                    self.clear_cookie().await?;
                    return Err(LdapSourceError::Protocol {
                        name: self.name.clone(),
                        dn: format!("entryUUID={uuid}"),
                        message: "unknown entry reported present; reloading in full".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The entry map rows of every entry a full refresh saw, in one transaction.
    async fn put_entries(&self, seen: &HashMap<String, SeenEntry>) -> Result<()> {
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        for (uuid, (dn, key)) in seen {
            self.put_entry(&mut tx, uuid, dn, key.as_deref()).await?;
        }
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }

    /// Forget entries that are gone: those a full refresh neither sent nor reported present.
    async fn forget_gone(
        &self,
        known: &HashMap<String, Option<PersonKey>>,
        seen: &HashMap<String, SeenEntry>,
        present: &HashSet<String>,
    ) -> Result<()> {
        let keep: HashSet<&String> = seen.keys().chain(present.iter()).collect();
        let stale: Vec<&String> = known.keys().filter(|u| !keep.contains(u)).collect();
        if stale.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        let conn: &mut AnyConnection = &mut tx;
        for uuid in stale {
            store::ldap::delete_entry(conn, &self.name, uuid)
                .await
                .map_err(self.store_err())?;
        }
        tx.commit().await.map_err(self.db_err())?;
        Ok(())
    }
}

/// An entry a full refresh saw: its DN and, when known, its key.
type SeenEntry = (String, Option<PersonKey>);

/// A full refresh's changed entries mapped.
#[derive(Default)]
struct MappedRefresh {
    records: Vec<PersonRecord>,
    quarantined: Vec<Quarantined>,
    /// Every changed entry by UUID, mapped or not.
    seen: HashMap<String, SeenEntry>,
}
