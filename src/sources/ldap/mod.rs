//! LDAP and Active Directory sources.
//!
//! Three dialects follow a directory's changes:
//! - `rfc4533`: content synchronisation (OpenLDAP syncprov, 389-ds). refreshAndPersist keeps one search
//!   open and applies every change as the server sends it; refreshOnly polls with the same cookie.
//!   Present and delete phases are both handled, and `e-syncRefreshRequired` drops the cookie and
//!   reloads in full.
//! - `active_directory`: `uSNChanged` polling against one domain controller; deletions and moves out
//!   of scope are found by a periodic full comparison (slapd has no Show Deleted control to test
//!   against, and tombstones lose the mapped attributes anyway).
//! - `poll`: `modifyTimestamp` polling plus the same periodic full comparison.
//!
//! Checkpoint discipline (DESIGN.md invariant 1): the sync cookie or watermark is written in the
//! same transaction as the records and commands it covers, or (for a full load) after them. A
//! crash replays from the older checkpoint; the engine's record hashes make the replay a no-op.

mod dn;
mod duplicates;
mod filter;
mod group_source;
mod groups;
mod mapping;

pub use groups::GroupIndex;
pub use mapping::*;

use crate::audit;
use crate::clock::to_micros;
use crate::config::{ConfigError, LdapDialect, LdapScope, LdapSourceConfig};
use crate::engine::{Engine, EngineError, FeedReport};
use crate::model::{PersonRecord, Quarantined};
use crate::store::{self, StoreError};
use backon::BackoffBuilder;
use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::controls::{
    EntryState, MakeCritical, RefreshMode, SyncDone, SyncInfo, SyncRequest, SyncState,
    parse_syncinfo,
};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, ResultEntry, Scope, SearchEntry};
use sqlx::{AnyConnection, Row};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// RFC 4533 `e-syncRefreshRequired`: the cookie is too old, start again from nothing.
const SYNC_REFRESH_REQUIRED: u32 = 4096;
/// Changes per transaction when a refresh or a poll brings many at once.
const BATCH: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum LdapSourceError {
    #[error("LDAP source `{name}`: mapping {path}: {message}")]
    Mapping {
        name: String,
        path: String,
        message: String,
    },
    #[error("LDAP source `{name}`: {url}: {action}: {error}")]
    Ldap {
        name: String,
        url: String,
        action: String,
        #[source]
        error: Box<LdapError>,
    },
    #[error("LDAP source `{name}`: {url}: {action}: server answered {rc} {text}")]
    Server {
        name: String,
        url: String,
        action: String,
        rc: u32,
        text: String,
    },
    #[error("LDAP source `{name}`: {dn}: {message}")]
    Protocol {
        name: String,
        dn: String,
        message: String,
    },
    #[error("LDAP source `{name}`: {error}")]
    Config {
        name: String,
        #[source]
        error: ConfigError,
    },
    #[error("LDAP source `{name}`: {error}")]
    Engine {
        name: String,
        #[source]
        error: EngineError,
    },
    #[error("LDAP source `{name}` is not configured")]
    Unknown { name: String },
}

type Result<T, E = LdapSourceError> = std::result::Result<T, E>;

pub(crate) fn watermark_attribute(d: LdapDialect) -> Option<&'static str> {
    match d {
        LdapDialect::Rfc4533 => None,
        LdapDialect::ActiveDirectory => Some("uSNChanged"),
        LdapDialect::Poll => Some("modifyTimestamp"),
    }
}

/// Orders watermark values: USNs as numbers, generalized times as text (same width, so text order
/// is time order).
fn watermark_key(d: LdapDialect, v: &str) -> (u64, String) {
    match d {
        LdapDialect::ActiveDirectory => (v.trim().parse().unwrap_or(0), String::new()),
        _ => (0, v.trim().to_string()),
    }
}

pub(crate) fn uuid_string(b: &[u8]) -> String {
    if b.len() != 16 {
        return hex::encode(b);
    }
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

// ---------------------------------------------------------------------------------------------
// The source

/// When explicit deletions and disables happened, how many, and whether they left the
/// population (deletions applied, not held).
type RecentDeletes = VecDeque<(chrono::DateTime<chrono::Utc>, usize, bool)>;

/// One configured directory, followed until shutdown.
#[derive(Debug, Clone)]
pub struct LdapSource {
    engine: Arc<Engine>,
    name: String,
    cfg: LdapSourceConfig,
    mapping: LdapMapping,
    password: Option<String>,
    attrs: Vec<String>,
    /// Group entries followed under `groups.base`, shared by the source's tasks.
    groups: Arc<std::sync::Mutex<GroupIndex>>,
    /// Explicit deletions of the recent window, for the mass-deletion safeguard.
    recent_deletes: Arc<std::sync::Mutex<RecentDeletes>>,
    /// The session's connection, for reading entries that share a key while a search runs.
    lookup: Arc<std::sync::Mutex<Option<Ldap>>>,
}

/// Start every configured LDAP source; each task ends when `shutdown` turns true.
pub fn spawn_all(
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut out = Vec::new();
    for name in engine.config.sources.ldap.keys() {
        let src = LdapSource::from_config(engine.clone(), name)?;
        out.push(tokio::spawn(supervise(src, shutdown.clone())));
    }
    Ok(out)
}

/// ldap3's BER parsers for entries and sync controls panic on malformed server data; a panic must
/// not end the source for good, so the task is restarted (from its stored checkpoint).
async fn supervise(src: LdapSource, shutdown: watch::Receiver<bool>) {
    loop {
        let task = tokio::spawn(src.clone().run(shutdown.clone()));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(source = %src.name, error = %e, "LDAP source task failed; restarting");
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What a refresh (initial load, reconnect, refreshOnly poll) gathered before it is applied.
#[derive(Debug, Default)]
struct Refresh {
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

enum SyncEnd {
    /// refreshOnly finished: poll again later.
    Polled,
    /// The server wants a full reload.
    RefreshRequired,
}

impl LdapSource {
    pub fn from_config(engine: Arc<Engine>, name: &str) -> Result<Self> {
        let cfg = engine
            .config
            .sources
            .ldap
            .get(name)
            .cloned()
            .ok_or_else(|| LdapSourceError::Unknown {
                name: name.to_string(),
            })?;
        let password = match &cfg.bind_password {
            Some(s) => Some(
                engine
                    .config
                    .secret(&format!("sources.ldap.{name}.bind_password"), s)
                    .map_err(|error| LdapSourceError::Config {
                        name: name.to_string(),
                        error,
                    })?,
            ),
            None => None,
        };
        let mapping = load_mapping(name, &engine.config.resolve(&cfg.mapping))?;
        Ok(Self::new(engine, name, cfg, mapping, password))
    }

    pub fn new(
        engine: Arc<Engine>,
        name: &str,
        cfg: LdapSourceConfig,
        mapping: LdapMapping,
        password: Option<String>,
    ) -> Self {
        let mut attrs = mapping.requested_attributes(cfg.dialect);
        attrs.push("entryUUID".into());
        if cfg.dialect == LdapDialect::ActiveDirectory {
            attrs.push("objectGUID".into());
        }
        Self {
            engine,
            name: name.to_string(),
            cfg,
            mapping,
            password,
            attrs,
            groups: Arc::default(),
            recent_deletes: Arc::default(),
            lookup: Arc::default(),
        }
    }

    fn is_leaver_entry(&self, e: &Entry) -> bool {
        let config = self.engine.config.clone();
        let tz_of = move |site: Option<&str>| config.timezone_of(site);
        let ctx = MapContext {
            now: self.engine.clock.now(),
            dialect: self.cfg.dialect,
            tz_of: &tz_of,
            groups: None,
        };
        self.mapping.is_leaver_entry(e, &ctx)
    }

    /// Map one entry with the source's clock, time zones and known group entries.
    fn map(&self, e: &Entry) -> std::result::Result<PersonRecord, Box<Quarantined>> {
        let config = self.engine.config.clone();
        let tz_of = move |site: Option<&str>| config.timezone_of(site);
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = MapContext {
            now: self.engine.clock.now(),
            dialect: self.cfg.dialect,
            tz_of: &tz_of,
            groups: Some(&groups),
        };
        self.mapping.map_entry(&self.name, e, &ctx)
    }

    fn ldap_err(&self, action: &str) -> impl FnOnce(LdapError) -> LdapSourceError + '_ {
        let action = action.to_string();
        move |error| LdapSourceError::Ldap {
            name: self.name.clone(),
            url: self.cfg.url.clone(),
            action,
            error: Box::new(error),
        }
    }

    fn engine_err(&self) -> impl Fn(EngineError) -> LdapSourceError + '_ {
        |error| LdapSourceError::Engine {
            name: self.name.clone(),
            error,
        }
    }

    fn store_err(&self) -> impl Fn(StoreError) -> LdapSourceError + '_ {
        |e| LdapSourceError::Engine {
            name: self.name.clone(),
            error: EngineError::Store(e),
        }
    }

    fn db_err(&self) -> impl Fn(sqlx::Error) -> LdapSourceError + '_ {
        |e| LdapSourceError::Engine {
            name: self.name.clone(),
            error: EngineError::Db(e),
        }
    }

    fn scope(&self) -> Scope {
        match self.cfg.scope {
            LdapScope::Base => Scope::Base,
            LdapScope::One => Scope::OneLevel,
            LdapScope::Subtree => Scope::Subtree,
        }
    }

    /// Follow the directory until shutdown, reconnecting with exponential backoff (reset after
    /// every session that got as far as binding).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times();
        let mut backoff = builder.build();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut bound = false;
            let result = tokio::select! {
                r = self.session(&mut bound) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if let Err(e) = result {
                tracing::warn!(source = %self.name, error = %e, "LDAP session ended; reconnecting");
            }
            if bound {
                backoff = builder.build();
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn connect(&self) -> Result<Ldap> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(self.cfg.timeout_seconds))
            .set_starttls(self.cfg.starttls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(self.ldap_err("connect"))?;
        ldap3::drive!(conn);
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.password) {
            let res = ldap
                .with_timeout(Duration::from_secs(self.cfg.timeout_seconds))
                .simple_bind(dn, pw)
                .await
                .map_err(self.ldap_err("bind"))?;
            if res.rc != 0 {
                return Err(self.server_err(&format!("bind as {dn}"), res.rc, &res.text));
            }
        }
        Ok(ldap)
    }

    fn server_err(&self, action: &str, rc: u32, text: &str) -> LdapSourceError {
        LdapSourceError::Server {
            name: self.name.clone(),
            url: self.cfg.url.clone(),
            action: action.to_string(),
            rc,
            text: text.to_string(),
        }
    }

    /// One connection's life.
    async fn session(&self, bound: &mut bool) -> Result<()> {
        let mut ldap = self.connect().await?;
        *bound = true;
        tracing::info!(source = %self.name, url = %self.cfg.url, dialect = ?self.cfg.dialect, "LDAP source connected");
        *self.lookup.lock().unwrap_or_else(|p| p.into_inner()) = Some(ldap.clone());
        // Groups first, so the people's first refresh already sees their memberships.
        self.sync_groups(&mut ldap).await?;
        let r = match self.cfg.dialect {
            LdapDialect::Rfc4533 => {
                let watcher = ldap.clone();
                tokio::select! {
                    r = self.sync_session(&mut ldap) => r,
                    r = self.watch_groups(watcher) => r,
                }
            }
            LdapDialect::ActiveDirectory | LdapDialect::Poll => self.poll_session(&mut ldap).await,
        };
        *self.lookup.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = ldap.unbind().await;
        r
    }

    // --- RFC 4533 --------------------------------------------------------------------------

    async fn cookie(&self) -> Result<Option<Vec<u8>>> {
        let c = store::checkpoint(self.engine.store.pool(), &self.name)
            .await
            .map_err(self.store_err())?;
        Ok(
            c.and_then(|c| c.strip_prefix("rfc4533:").and_then(|h| hex::decode(h).ok()))
                .filter(|c| !c.is_empty()),
        )
    }

    /// Forget the cookie: the next sync search is a full refresh.
    async fn clear_cookie(&self) -> Result<()> {
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

    fn cookie_value(cookie: &[u8]) -> String {
        format!("rfc4533:{}", hex::encode(cookie))
    }

    async fn sync_session(&self, ldap: &mut Ldap) -> Result<()> {
        loop {
            match self.sync_once(ldap).await? {
                SyncEnd::RefreshRequired => {
                    tracing::warn!(source = %self.name, "server asked for a full refresh (e-syncRefreshRequired)");
                    self.clear_cookie().await?;
                }
                SyncEnd::Polled => {
                    tokio::time::sleep(Duration::from_secs(self.cfg.poll_seconds)).await;
                }
            }
        }
    }

    /// One sync search: a refresh, then (refreshAndPersist) changes as they happen until the
    /// connection ends.
    async fn sync_once(&self, ldap: &mut Ldap) -> Result<SyncEnd> {
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
                if done && refreshing {
                    refreshing = false;
                    self.finish_refresh(std::mem::take(&mut refresh)).await?;
                }
                continue;
            }
            if re.is_ref() {
                continue;
            }
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
        }
        let res = stream.finish().await;
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

    fn sync_entry(&self, re: ResultEntry) -> Result<(SyncState, Entry)> {
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

    async fn persist_cookie(&self, cookie: &[u8]) -> Result<()> {
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
    async fn apply_change(&self, uuid: &str, entry: &Entry, cookie: Option<&[u8]>) -> Result<()> {
        let now = self.engine.clock.now();
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        self.change_tx(&mut tx, uuid, entry, now).await?;
        self.commit_with_cookie(tx, cookie, now).await
    }

    /// Commit a change together with the sync cookie that covers it (invariant 1), then wake the
    /// dispatcher.
    async fn commit_with_cookie(
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
        self.engine.notify_outbox();
        Ok(())
    }

    async fn change_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        entry: &Entry,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let previous = self.entry_key(conn, uuid).await?;
        match self.map(entry) {
            Ok(r) => {
                self.put_entry(conn, uuid, &entry.dn, Some(&r.key)).await?;
                // The correlation key itself changed: the same person under a new key when no one
                // else uses either; else the old person left this source, unless another entry
                // still carries the old key.
                if let Some(Some(old)) = &previous
                    && old != &r.key
                    && !self.rekey(conn, old, &r.key, now).await?
                    && !self.settle_key(conn, old, now).await?
                {
                    self.engine
                        .remove_record_tx(conn, &self.name, old, now)
                        .await
                        .map_err(self.engine_err())?;
                }
                // Who the key is comes from every entry carrying it now, not from the entry that
                // happened to change (duplicates; a change overtaken by a later one).
                if self.lookup().is_some() {
                    if !self.settle_key(conn, &r.key, now).await? {
                        tracing::info!(source = %self.name, dn = %entry.dn, key = %r.key,
                            "entry no longer carries this key; its next change or delete decides");
                    }
                    return Ok(());
                }
                let (kind, applied) = self
                    .engine
                    .apply_record_tx(conn, &r, now)
                    .await
                    .map_err(self.engine_err())?;
                tracing::info!(source = %self.name, dn = %entry.dn, key = %r.key, change = %kind,
                    issues = applied.issues, revokes = applied.revokes, "LDAP change applied");
            }
            Err(q) => {
                // A bad entry is reported; what was known of the person stays, unless the entry
                // says the account is disabled or expired: then the person it was is a leaver.
                self.quarantine_tx(conn, &q, now).await?;
                let key = previous.flatten();
                if let Some(k) = &key
                    && self.is_leaver_entry(entry)
                    && !self.settle_key(conn, k, now).await?
                {
                    self.engine
                        .remove_record_tx(conn, &self.name, k, now)
                        .await
                        .map_err(self.engine_err())?;
                }
                self.put_entry(conn, uuid, &entry.dn, key.as_deref())
                    .await?;
            }
        }
        Ok(())
    }

    async fn quarantine_tx(
        &self,
        conn: &mut AnyConnection,
        q: &Quarantined,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let now = to_micros(now);
        tracing::warn!(source = %self.name, dn = %q.location, attribute = %q.field, reason = %q.reason, "LDAP entry quarantined");
        if store::quarantine(conn, q, &now.to_string(), now)
            .await
            .map_err(self.store_err())?
        {
            audit::append(
                conn,
                now,
                &format!("source:{}", self.name),
                "record.quarantined",
                q.record_key.as_deref().unwrap_or("-"),
                &serde_json::json!({"location": q.location, "field": q.field, "reason": q.reason}),
            )
            .await
            .map_err(self.store_err())?;
        }
        Ok(())
    }

    /// Entries gone from the directory or from the configured scope: leavers, with the cookie.
    async fn apply_deletes(&self, uuids: &[String], cookie: Option<&[u8]>) -> Result<()> {
        let now = self.engine.clock.now();
        let mut tx = self
            .engine
            .store
            .begin_write()
            .await
            .map_err(self.store_err())?;
        let held = self.mass_delete_reason(uuids.len(), true, now).await?;
        for uuid in uuids {
            match &held {
                None => self.delete_tx(&mut tx, uuid, now).await?,
                Some(reason) => self.hold_delete_tx(&mut tx, uuid, reason, now).await?,
            }
        }
        if let Some(reason) = &held {
            tracing::warn!(source = %self.name, deleted = uuids.len(), %reason, "LDAP deletions held for approval");
            audit::append(
                &mut tx,
                to_micros(now),
                &format!("source:{}", self.name),
                "feed.mass_change_held",
                &self.name,
                &serde_json::json!({"held": uuids.len(), "reason": reason}),
            )
            .await
            .map_err(self.store_err())?;
        }
        self.commit_with_cookie(tx, cookie, now).await
    }

    /// Explicit deletions are held like a snapshot's mass disappearance when, with those of the
    /// recent window, they exceed the threshold fraction of the people this source knows: an OU
    /// deleted by mistake arrives as thousands of ordinary deletes (DESIGN.md invariant 4).
    /// `leaves`: applied, these entries leave the population (deletions do, disables do not).
    async fn mass_delete_reason(
        &self,
        n: usize,
        leaves: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        let population = self
            .all_entries()
            .await?
            .values()
            .filter(|k| k.is_some())
            .count();
        let threshold = self
            .cfg
            .mass_change_threshold
            .unwrap_or(self.engine.config.engine.mass_change_threshold);
        let window = chrono::Duration::seconds(self.cfg.mass_delete_window_seconds as i64);
        let mut recent = self
            .recent_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while recent.front().is_some_and(|(t, _, _)| *t + window < now) {
            recent.pop_front();
        }
        // Applied deletions already left the population: count them back in.
        let applied: usize = recent.iter().filter(|r| r.2).map(|r| r.1).sum();
        let population = population + applied;
        let total = n + recent.iter().map(|r| r.1).sum::<usize>();
        let hold = population > 0
            && total > self.cfg.mass_delete_min
            && (total as f64) > threshold * population as f64;
        recent.push_back((now, n, leaves && !hold));
        if !hold {
            return Ok(None);
        }
        Ok(Some(format!(
            "{total} of {population} entries ({:.1} %) deleted, disabled or moved out of scope within {} s, above the {:.0} % threshold",
            100.0 * total as f64 / population as f64,
            self.cfg.mass_delete_window_seconds,
            100.0 * threshold
        )))
    }

    async fn hold_delete_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        reason: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        if let Some(Some(key)) = self.entry_key(conn, uuid).await? {
            store::hold(
                conn,
                &self.name,
                &key,
                "disappearance",
                reason,
                to_micros(now),
            )
            .await
            .map_err(self.store_err())?;
        }
        Ok(())
    }

    async fn delete_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        if let Some(Some(key)) = self.entry_key(conn, uuid).await?
            && !self.settle_key(conn, &key, now).await?
        {
            let applied = self
                .engine
                .remove_record_tx(conn, &self.name, &key, now)
                .await
                .map_err(self.engine_err())?;
            tracing::info!(source = %self.name, entry_uuid = %uuid, key = %key,
                revokes = applied.revokes, "LDAP entry deleted or out of scope: leaver");
        }
        sqlx::query("DELETE FROM ldap_entries WHERE source = $1 AND entry_uuid = $2")
            .bind(&self.name)
            .bind(uuid)
            .execute(&mut *conn)
            .await
            .map_err(self.db_err())?;
        Ok(())
    }

    /// Move a person to a new correlation key when the entry's key changed and the old key was
    /// only this entry's (see `store::rekey_identity`).
    async fn rekey(
        &self,
        conn: &mut AnyConnection,
        old: &str,
        new: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        if let Some(mut ldap) = self.lookup()
            && !self.entries_with_key(&mut ldap, old).await?.is_empty()
        {
            return Ok(false);
        }
        let moved = store::rekey_identity(conn, &self.name, old, new)
            .await
            .map_err(self.store_err())?;
        if moved {
            tracing::info!(source = %self.name, from = %old, to = %new, "correlation key changed: same person, new key");
            audit::append(
                conn,
                to_micros(now),
                &format!("source:{}", self.name),
                "identity.rekeyed",
                new,
                &serde_json::json!({"from": old, "to": new}),
            )
            .await
            .map_err(self.store_err())?;
        }
        Ok(moved)
    }

    /// Remember which person an entry (by entryUUID / objectGUID) is, and treat a changed key
    /// as a key change of the same person. For the polling dialects, which read entries whole.
    async fn track_entry(
        &self,
        conn: &mut AnyConnection,
        e: &Entry,
        key: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let Some(id) = e.entry_id() else {
            return Ok(());
        };
        if let Some(Some(old)) = self.entry_key(conn, id).await?
            && old != key
        {
            self.rekey(conn, &old, key, now).await?;
        }
        self.put_entry(conn, id, &e.dn, Some(key)).await
    }

    /// `None`: unknown entry; `Some(None)`: known, but never mapped to a person (quarantined).
    async fn entry_key(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
    ) -> Result<Option<Option<String>>> {
        let row = sqlx::query(
            "SELECT record_key FROM ldap_entries WHERE source = $1 AND entry_uuid = $2",
        )
        .bind(&self.name)
        .bind(uuid)
        .fetch_optional(&mut *conn)
        .await
        .map_err(self.db_err())?;
        row.map(|r| r.try_get::<Option<String>, _>("record_key"))
            .transpose()
            .map_err(self.db_err())
    }

    async fn put_entry(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        dn: &str,
        key: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO ldap_entries (source, entry_uuid, dn, record_key) VALUES ($1, $2, $3, $4)
             ON CONFLICT (source, entry_uuid) DO UPDATE SET dn = excluded.dn, record_key = excluded.record_key",
        )
        .bind(&self.name)
        .bind(uuid)
        .bind(dn)
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(self.db_err())?;
        Ok(())
    }

    async fn all_entries(&self) -> Result<HashMap<String, Option<String>>> {
        let rows = sqlx::query("SELECT entry_uuid, record_key FROM ldap_entries WHERE source = $1")
            .bind(&self.name)
            .fetch_all(self.engine.store.pool())
            .await
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| Ok((r.try_get("entry_uuid")?, r.try_get("record_key")?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(self.db_err())
    }

    /// Apply what a refresh gathered. A full refresh (no cookie, or the present phase) is a
    /// snapshot: it goes through the engine's snapshot path, so an empty or truncated answer is
    /// held for approval (invariant 4). Otherwise the changes and deletions are applied in
    /// batches, the cookie with the last one.
    async fn finish_refresh(&self, refresh: Refresh) -> Result<()> {
        let cookie = refresh.cookie.clone().unwrap_or_default();
        if refresh.full || refresh.present_phase {
            return self.apply_full_refresh(refresh, &cookie).await;
        }
        let deleted: Vec<String> = refresh.deleted.iter().cloned().collect();
        // One call: the mass-deletion safeguard judges the whole set.
        if !deleted.is_empty() {
            self.apply_deletes(&deleted, None).await?;
        }
        for chunk in refresh.changed.chunks(BATCH) {
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
            self.engine.notify_outbox();
        }
        self.persist_cookie(&cookie).await?;
        tracing::info!(source = %self.name, changed = refresh.changed.len(), deleted = deleted.len(), "LDAP refresh applied");
        Ok(())
    }

    async fn apply_full_refresh(&self, refresh: Refresh, cookie: &[u8]) -> Result<()> {
        let known = self.all_entries().await?;
        let now = self.engine.clock.now();
        let mut records = Vec::new();
        let mut quarantined = Vec::new();
        let mut seen: HashMap<String, (String, Option<String>)> = HashMap::new();
        let (primaries, duplicates) = self
            .mapping
            .dedupe(&self.name, refresh.changed.iter().map(|(_, e)| e));
        // By address: which of the changed entries are the ones to map.
        let primaries: HashSet<usize> = primaries
            .into_iter()
            .map(|e| e as *const Entry as usize)
            .collect();
        quarantined.extend(duplicates);
        for (uuid, e) in &refresh.changed {
            if !primaries.contains(&(e as *const Entry as usize)) {
                let key = e.first(&self.mapping.key).map(str::to_string);
                seen.insert(uuid.clone(), (e.dn.clone(), key));
                continue;
            }
            match self.map(e) {
                Ok(r) => {
                    seen.insert(uuid.clone(), (e.dn.clone(), Some(r.key.clone())));
                    records.push(r);
                }
                Err(q) => {
                    let key = known.get(uuid).cloned().flatten();
                    seen.insert(uuid.clone(), (e.dn.clone(), key));
                    quarantined.push(*q);
                }
            }
        }
        // Entries the server says are unchanged: their last stored view stands.
        let mut conn = self
            .engine
            .store
            .pool()
            .acquire()
            .await
            .map_err(self.db_err())?;
        for uuid in &refresh.present {
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
        drop(conn);
        // Map rows first: a crash after this leaves a map that is a superset, which is harmless.
        {
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            for (uuid, (dn, key)) in &seen {
                self.put_entry(&mut tx, uuid, dn, key.as_deref()).await?;
            }
            tx.commit().await.map_err(self.db_err())?;
        }
        let threshold = self
            .cfg
            .mass_change_threshold
            .unwrap_or(self.engine.config.engine.mass_change_threshold);
        let mut report = FeedReport {
            source: self.name.clone(),
            file: self.cfg.url.clone(),
            rows: records.len() + quarantined.len(),
            ..Default::default()
        };
        let batch = format!("refresh-{}", to_micros(now));
        self.engine
            .apply_snapshot(
                &self.name,
                &batch,
                records,
                quarantined,
                threshold,
                &Self::cookie_value(cookie),
                &mut report,
            )
            .await
            .map_err(self.engine_err())?;
        // Forget entries that are gone.
        let keep: HashSet<&String> = seen.keys().chain(refresh.present.iter()).collect();
        let stale: Vec<&String> = known.keys().filter(|u| !keep.contains(u)).collect();
        if !stale.is_empty() {
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            let conn: &mut AnyConnection = &mut tx;
            for uuid in stale {
                sqlx::query("DELETE FROM ldap_entries WHERE source = $1 AND entry_uuid = $2")
                    .bind(&self.name)
                    .bind(uuid)
                    .execute(&mut *conn)
                    .await
                    .map_err(self.db_err())?;
            }
            tx.commit().await.map_err(self.db_err())?;
        }
        log_report(&report);
        Ok(())
    }

    // --- USN and timestamp polling -----------------------------------------------------------

    async fn watermark(&self) -> Result<Option<String>> {
        let c = store::checkpoint(self.engine.store.pool(), &self.name)
            .await
            .map_err(self.store_err())?;
        Ok(
            c.and_then(|c| c.split_once(':').map(|(_, v)| v.to_string()))
                .filter(|v| !v.is_empty()),
        )
    }

    fn watermark_value(&self, v: &str) -> String {
        let prefix = match self.cfg.dialect {
            LdapDialect::ActiveDirectory => "usn",
            _ => "ts",
        };
        format!("{prefix}:{v}")
    }

    async fn poll_session(&self, ldap: &mut Ldap) -> Result<()> {
        let mut last_full: Option<Instant> = None;
        loop {
            self.sync_groups(ldap).await?;
            let wm = self.watermark().await?;
            let full_due = last_full
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.full_compare_seconds));
            if wm.is_none() || full_due {
                self.full_compare(ldap, wm.as_deref()).await?;
                last_full = Some(Instant::now());
            } else if let Some(wm) = wm {
                self.poll_changes(ldap, &wm).await?;
            }
            tokio::time::sleep(Duration::from_secs(self.cfg.poll_seconds)).await;
        }
    }

    async fn paged_search(&self, ldap: &mut Ldap, filter: &str) -> Result<Vec<Entry>> {
        let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.cfg.page_size)),
        ];
        let mut stream = ldap
            .with_timeout(Duration::from_secs(self.cfg.timeout_seconds))
            .streaming_search_with(adapters, &self.cfg.base, self.scope(), filter, &self.attrs)
            .await
            .map_err(self.ldap_err("paged search"))?;
        let mut out = Vec::new();
        while let Some(re) = stream.next().await.map_err(self.ldap_err("paged search"))? {
            out.push(Entry::from_search(SearchEntry::construct(re)));
        }
        let res = stream.finish().await;
        if res.rc != 0 {
            return Err(self.server_err(&format!("paged search {filter}"), res.rc, &res.text));
        }
        Ok(out)
    }

    fn max_watermark<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> Option<String> {
        let attr = watermark_attribute(self.cfg.dialect)?;
        entries
            .filter_map(|e| e.first(attr).map(str::to_string))
            .max_by_key(|v| watermark_key(self.cfg.dialect, v))
    }

    /// The whole directory compared with what latchkey knows: the initial load, and how polling
    /// dialects find deletions and moves out of scope.
    pub async fn full_compare(
        &self,
        ldap: &mut Ldap,
        previous: Option<&str>,
    ) -> Result<FeedReport> {
        let entries = self.paged_search(ldap, &self.cfg.filter).await?;
        let wm = self
            .max_watermark(entries.iter())
            .or_else(|| previous.map(str::to_string))
            .unwrap_or_default();
        let mut records = Vec::new();
        let (entries_to_map, mut quarantined) = self.mapping.dedupe(&self.name, entries.iter());
        for e in entries_to_map {
            match self.map(e) {
                Ok(r) => records.push(r),
                Err(q) => quarantined.push(*q),
            }
        }
        let threshold = self
            .cfg
            .mass_change_threshold
            .unwrap_or(self.engine.config.engine.mass_change_threshold);
        let mut report = FeedReport {
            source: self.name.clone(),
            file: self.cfg.url.clone(),
            rows: entries.len(),
            ..Default::default()
        };
        self.track_entries(&records, &entries).await?;
        let batch = format!("full-{}", to_micros(self.engine.clock.now()));
        self.engine
            .apply_snapshot(
                &self.name,
                &batch,
                records,
                quarantined,
                threshold,
                &self.watermark_value(&wm),
                &mut report,
            )
            .await
            .map_err(self.engine_err())?;
        log_report(&report);
        Ok(report)
    }

    /// Polling dialects: remember which entry is which person, so a later change of the key is
    /// recognised as the same person.
    async fn track_entries(&self, records: &[PersonRecord], entries: &[Entry]) -> Result<()> {
        let by_dn: HashMap<&str, &str> = records
            .iter()
            .map(|r| (r.location.as_str(), r.key.as_str()))
            .collect();
        for chunk in entries.chunks(BATCH * 10) {
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            for e in chunk {
                if let (Some(id), Some(key)) = (e.entry_id(), by_dn.get(e.dn.as_str())) {
                    self.put_entry(&mut tx, id, &e.dn, Some(key)).await?;
                }
            }
            tx.commit().await.map_err(self.db_err())?;
        }
        Ok(())
    }

    /// Entries changed since the watermark, applied in watermark order, the watermark advancing in
    /// the same transaction as each batch. `>=` re-reads the last entry (a timestamp has
    /// one-second resolution); the engine's record hash makes that a no-op.
    async fn poll_changes(&self, ldap: &mut Ldap, wm: &str) -> Result<()> {
        let Some(attr) = watermark_attribute(self.cfg.dialect) else {
            return Ok(());
        };
        let filter = format!("(&{}({attr}>={}))", self.cfg.filter, ldap3::ldap_escape(wm));
        let mut entries = self.paged_search(ldap, &filter).await?;
        let dialect = self.cfg.dialect;
        entries.sort_by_key(|e| watermark_key(dialect, e.first(attr).unwrap_or_default()));
        for chunk in entries.chunks(BATCH) {
            let now = self.engine.clock.now();
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            for e in chunk {
                match self.map(e) {
                    Ok(r) if self.lookup().is_some() => {
                        self.track_entry(&mut tx, e, &r.key, now).await?;
                        self.settle_key(&mut tx, &r.key, now).await?;
                    }
                    Ok(r) => {
                        let (kind, applied) = self
                            .engine
                            .apply_record_tx(&mut tx, &r, now)
                            .await
                            .map_err(self.engine_err())?;
                        if kind != "unchanged" {
                            tracing::info!(source = %self.name, dn = %e.dn, key = %r.key, change = %kind,
                                issues = applied.issues, revokes = applied.revokes, "LDAP change applied");
                        }
                    }
                    Err(q) => self.quarantine_tx(&mut tx, &q, now).await?,
                }
            }
            if let Some(top) = self.max_watermark(chunk.iter()) {
                store::set_checkpoint(
                    &mut tx,
                    &self.name,
                    &self.watermark_value(&top),
                    to_micros(now),
                )
                .await
                .map_err(self.store_err())?;
            }
            tx.commit().await.map_err(self.db_err())?;
            self.engine.notify_outbox();
        }
        Ok(())
    }
}

fn log_report(r: &FeedReport) {
    tracing::info!(
        source = %r.source, server = %r.file, entries = r.rows, unchanged = r.unchanged, joiners = r.joiners,
        movers = r.movers, leavers = r.leavers, rehires = r.rehires, quarantined = r.quarantined,
        held = r.held, issues = r.issues, revokes = r.revokes, "LDAP full load applied"
    );
}
