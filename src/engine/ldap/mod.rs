//! Following LDAP and Active Directory directories: the connection, the sync protocol of each
//! dialect, and each change applied through the engine with its checkpoint. Turning an entry into
//! a person record is the source's (`crate::sources::ldap`).
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

mod duplicates;
mod group_source;
mod poll;
mod sync;

use crate::sources::ldap::{
    Entry, GroupIndex, LdapMapping, MapContext, MappingError, load_mapping, uuid_string,
    watermark_attribute,
};

use crate::audit;
use crate::clock::to_micros;
use crate::config::{ConfigError, LdapDialect, LdapScope, LdapSourceConfig};
use crate::engine::mass_change::{RemovalWindow, WindowRule};
use crate::engine::{Engine, EngineError, FeedReport};
use crate::model::{PersonKey, PersonRecord, Quarantined};
use crate::store::{self, StoreError};
use backon::BackoffBuilder;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Changes per transaction when a refresh or a poll brings many at once.
const BATCH: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum LdapSourceError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
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

// ---------------------------------------------------------------------------------------------
// The source

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
    recent_deletes: Arc<std::sync::Mutex<RemovalWindow>>,
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
pub(crate) async fn supervise(src: LdapSource, shutdown: watch::Receiver<bool>) {
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
        // A persistent search reports nothing while the directory is quiet: the source is healthy
        // while this session lives, which the staleness alert reads instead of its last change.
        let persistent = self.cfg.persist && self.cfg.dialect == LdapDialect::Rfc4533;
        if persistent {
            self.engine.metrics.source_connection(&self.name, true);
        }
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
        if persistent {
            self.engine.metrics.source_connection(&self.name, false);
        }
        *self.lookup.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = ldap.unbind().await;
        r
    }

    /// The share of the population whose disappearance is held for approval: the source's own
    /// setting, else the engine's.
    fn mass_change_threshold(&self) -> f64 {
        self.cfg
            .mass_change_threshold
            .unwrap_or(self.engine.config.engine.mass_change_threshold)
    }

    /// The report of one full load (a refresh or a full comparison) of `rows` entries.
    fn snapshot_report(&self, rows: usize) -> FeedReport {
        FeedReport {
            source: self.name.clone(),
            file: self.cfg.url.clone(),
            rows,
            ..Default::default()
        }
    }

    /// A poll ran to the end: the source is on its schedule even when nothing changed (its
    /// checkpoint only moves with changes), which the staleness alert reads.
    fn polled(&self) {
        let now = to_micros(self.engine.clock.now()) as f64 / 1e6;
        self.engine.metrics.source_succeeded(&self.name, now);
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
                // When the server finds no entry with the key (overtaken by a later change, or a
                // key attribute without an equality rule) the entry as sent is applied.
                if self.settle_key(conn, &r.key, now).await? {
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
            Err(q) => self.bad_entry_tx(conn, Some(uuid), entry, &q, now).await?,
        }
        Ok(())
    }

    /// A bad entry is reported; what was known of the person stays, unless the entry says the
    /// account is disabled or expired: then the person it was (by its entryUUID / objectGUID,
    /// even when the key itself was stripped) is a leaver. Leaver signals first, validation
    /// second (DESIGN.md): offboarding often clears attributes together with disabling.
    pub(super) async fn bad_entry_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: Option<&str>,
        entry: &Entry,
        q: &Quarantined,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        self.quarantine_tx(conn, q, now).await?;
        match uuid {
            Some(uuid) => {
                self.leaver_by_entry_tx(conn, uuid, entry, &q.field, now)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The person a disabled or expired entry was, found by the entry's id: a leaver.
    pub(super) async fn leaver_by_entry_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        entry: &Entry,
        field: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let key = self.entry_key(conn, uuid).await?.flatten();
        if let Some(k) = &key
            && self.is_leaver_entry(entry)
            && !self.settle_key(conn, k, now).await?
        {
            let applied = self
                .engine
                .remove_record_tx(conn, &self.name, k, now)
                .await
                .map_err(self.engine_err())?;
            tracing::info!(source = %self.name, dn = %entry.dn, key = %k,
                revokes = applied.revokes, field = %field,
                "LDAP entry disabled or expired and incomplete: leaver");
        }
        self.put_entry(conn, uuid, &entry.dn, key.as_deref()).await
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
            self.engine
                .audit_mass_hold_tx(&mut tx, &self.name, uuids.len(), reason, now)
                .await
                .map_err(self.engine_err())?;
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
        let rule = WindowRule {
            threshold: self.mass_change_threshold(),
            window_seconds: self.cfg.mass_delete_window_seconds,
            min: self.cfg.mass_delete_min,
        };
        Ok(self
            .recent_deletes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .judge(n, leaves, population, rule, now))
    }

    async fn hold_delete_tx(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        reason: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        if let Some(Some(key)) = self.entry_key(conn, uuid).await? {
            self.engine
                .hold_disappearance_tx(conn, &self.name, &key, reason, now)
                .await
                .map_err(self.engine_err())?;
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
        store::ldap::delete_entry(conn, &self.name, uuid)
            .await
            .map_err(self.store_err())
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
    ) -> Result<Option<Option<PersonKey>>> {
        store::ldap::entry_key(conn, &self.name, uuid)
            .await
            .map_err(self.store_err())
    }

    async fn put_entry(
        &self,
        conn: &mut AnyConnection,
        uuid: &str,
        dn: &str,
        key: Option<&str>,
    ) -> Result<()> {
        store::ldap::put_entry(conn, &self.name, uuid, dn, key)
            .await
            .map_err(self.store_err())
    }

    async fn all_entries(&self) -> Result<HashMap<String, Option<PersonKey>>> {
        store::ldap::all_entries(self.engine.store.pool(), &self.name)
            .await
            .map_err(self.store_err())
    }
}

fn log_report(r: &FeedReport) {
    tracing::info!(
        source = %r.source, server = %r.file, entries = r.rows, unchanged = r.unchanged, joiners = r.joiners,
        movers = r.movers, leavers = r.leavers, rehires = r.rehires, quarantined = r.quarantined,
        held = r.held, issues = r.issues, revokes = r.revokes, "LDAP full load applied"
    );
}
