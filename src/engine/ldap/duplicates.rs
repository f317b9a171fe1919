//! Duplicate accounts (see `crate::sources::ldap::duplicates` for the rule that picks the person):
//! finding every entry that shares a key, and quarantining the others.

use super::{LdapSource, Result};
use crate::sources::ldap::Entry;
use ldap3::Ldap;
use sqlx::AnyConnection;

impl LdapSource {
    /// A connection for reading other entries while a sync search is running.
    pub(super) fn lookup(&self) -> Option<Ldap> {
        self.lookup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every entry in scope whose key attribute equals `key`.
    pub(super) async fn entries_with_key(&self, ldap: &mut Ldap, key: &str) -> Result<Vec<Entry>> {
        let f = format!(
            "(&{}({}={}))",
            self.cfg.filter,
            self.mapping.key,
            ldap3::ldap_escape(key)
        );
        self.paged_search(ldap, &f).await
    }

    /// Settle who `key` is from every entry that carries it now. Returns `false` when no entry
    /// does (the caller decides what a disappearance means), `true` when it was settled here.
    pub(super) async fn settle_key(
        &self,
        conn: &mut AnyConnection,
        key: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let Some(mut ldap) = self.lookup() else {
            return Ok(false);
        };
        let entries = self.entries_with_key(&mut ldap, key).await?;
        if entries.is_empty() {
            return Ok(false);
        }
        let refs: Vec<&Entry> = entries.iter().collect();
        let p = self.mapping.choose_primary(&refs);
        for (i, e) in entries.iter().enumerate() {
            if i != p {
                let q = self
                    .mapping
                    .duplicate_record(&self.name, key, e, &entries[p]);
                self.quarantine_tx(conn, &q, now).await?;
            }
        }
        let primary = &entries[p];
        match self.map(primary) {
            Ok(r) if self.hold_disable(conn, &r, now).await? => {}
            Ok(r) => {
                let changed_at = primary.changed_at().unwrap_or(now);
                let (kind, applied) = self
                    .engine
                    .apply_record_changed_at_tx(conn, &r, now, changed_at)
                    .await
                    .map_err(self.engine_err())?;
                tracing::info!(source = %self.name, dn = %primary.dn, key = %r.key, change = %kind,
                    duplicates = entries.len(), issues = applied.issues, revokes = applied.revokes,
                    "LDAP change applied (primary of duplicate entries)");
            }
            Err(q) => {
                self.quarantine_tx(conn, &q, now).await?;
                if self.is_leaver_entry(primary) {
                    self.engine
                        .remove_record_tx(conn, &self.name, key, now)
                        .await
                        .map_err(self.engine_err())?;
                }
            }
        }
        Ok(true)
    }
}

impl LdapSource {
    /// An explicit disable counts with deletions against the mass-change threshold: beyond it,
    /// the leaver is held for approval instead of applied. Returns whether it was held.
    async fn hold_disable(
        &self,
        conn: &mut AnyConnection,
        r: &crate::model::PersonRecord,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        use crate::model::RecordStatus;
        if r.status != Some(RecordStatus::Terminated) {
            return Ok(false);
        }
        let was_active = crate::store::source_records_of(conn, &r.key)
            .await
            .map_err(self.store_err())?
            .into_iter()
            .find(|s| s.source == self.name && s.disappeared_at.is_none())
            .and_then(|s| serde_json::from_str::<crate::model::PersonRecord>(&s.record).ok())
            .is_some_and(|old| old.status != Some(RecordStatus::Terminated));
        if !was_active {
            return Ok(false);
        }
        let Some(reason) = self.mass_delete_reason(1, false, now).await? else {
            return Ok(false);
        };
        tracing::warn!(source = %self.name, key = %r.key, %reason, "LDAP disable held for approval");
        self.engine
            .hold_disappearance_tx(conn, &self.name, &r.key, &reason, now)
            .await
            .map_err(self.engine_err())?;
        Ok(true)
    }
}
