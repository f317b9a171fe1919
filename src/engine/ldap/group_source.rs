//! Following group entries (`member` / `uniqueMember` under `groups.base`), so a membership change
//! reaches the person even when nothing on the person's entry changes: without a memberOf
//! overlay, or with OpenLDAP's, which rewrites `memberOf` without a new entryCSN, so syncprov
//! never sends the person.

use super::{LdapSource, Result};
use crate::sources::ldap::{Entry, GroupIndex, GroupMapping, dn, uuid_string};
use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::controls::{
    EntryState, MakeCritical, RefreshMode, SyncInfo, SyncRequest, parse_syncinfo,
};
use ldap3::{Ldap, Scope, SearchEntry};
use std::collections::BTreeSet;
use std::time::Duration;

impl LdapSource {
    fn group_base(&self) -> Option<(&str, &GroupMapping)> {
        let g = self.mapping.groups.as_ref()?;
        Some((g.base.as_deref()?, g))
    }

    /// Read every group entry and replace the index; returns the member DNs whose membership
    /// changed (all members on the first load).
    pub(super) async fn load_groups(&self, ldap: &mut Ldap) -> Result<BTreeSet<String>> {
        let Some((base, g)) = self.group_base() else {
            return Ok(BTreeSet::new());
        };
        let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.cfg.page_size)),
        ];
        let mut stream = ldap
            .with_timeout(Duration::from_secs(self.cfg.timeout_seconds))
            .streaming_search_with(
                adapters,
                base,
                Scope::Subtree,
                &g.filter,
                &g.member_attributes,
            )
            .await
            .map_err(self.ldap_err("group search"))?;
        let mut fresh = GroupIndex::default();
        let mut changed = BTreeSet::new();
        while let Some(re) = stream.next().await.map_err(self.ldap_err("group search"))? {
            let e = Entry::from_search(SearchEntry::construct(re));
            fresh.put(g, &e);
        }
        let res = stream.finish().await;
        if res.rc != 0 {
            return Err(self.server_err(&format!("group search under {base}"), res.rc, &res.text));
        }
        let mut index = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        changed.extend(index.diff(&fresh));
        *index = fresh;
        Ok(changed)
    }

    /// Re-read the people whose group membership changed and apply them as changes.
    pub(super) async fn refresh_members(
        &self,
        ldap: &mut Ldap,
        members: BTreeSet<String>,
    ) -> Result<()> {
        let base = dn::normalise(&self.cfg.base);
        for m in members {
            // Groups of groups and anything outside the people base are not people.
            if !dn::within(&m, &base) {
                continue;
            }
            let r = ldap
                .with_timeout(Duration::from_secs(self.cfg.timeout_seconds))
                .search(&m, Scope::Base, &self.cfg.filter, &self.attrs)
                .await
                .map_err(self.ldap_err("member read"))?;
            // noSuchObject and the like: not a person this source follows.
            let rs = if r.1.rc == 0 { r.0 } else { Vec::new() };
            let Some(re) = rs.into_iter().next() else {
                tracing::debug!(source = %self.name, member = %m, "group member is not a person in scope");
                continue;
            };
            let e = Entry::from_search(SearchEntry::construct(re));
            let Some(uuid) = e.first("entryUUID").map(str::to_string) else {
                continue;
            };
            let now = self.engine.clock.now();
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            self.change_tx(&mut tx, &uuid, &e, now).await?;
            self.commit_with_cookie(tx, None, now).await?;
        }
        Ok(())
    }

    /// Reload groups and apply the members whose membership changed (polling dialects, and the
    /// start of every session).
    pub(super) async fn sync_groups(&self, ldap: &mut Ldap) -> Result<()> {
        if self.group_base().is_none() {
            return Ok(());
        }
        let changed = self.load_groups(ldap).await?;
        self.refresh_members(ldap, changed).await
    }

    /// RFC 4533: a persistent sync search on the group base alongside the people's; every group
    /// entry sent is compared with the index, and a deleted group reloads them all.
    pub(super) async fn watch_groups(&self, mut ldap: Ldap) -> Result<()> {
        let Some((base, g)) = self.group_base() else {
            return std::future::pending().await;
        };
        let mut attrs = g.member_attributes.clone();
        attrs.push("entryUUID".into());
        let mut stream = ldap
            .clone()
            .with_controls(
                SyncRequest {
                    mode: RefreshMode::RefreshAndPersist,
                    cookie: None,
                    reload_hint: false,
                }
                .critical(),
            )
            .streaming_search(base, Scope::Subtree, &g.filter, &attrs)
            .await
            .map_err(self.ldap_err("group sync search"))?;
        while let Some(re) = stream
            .next()
            .await
            .map_err(self.ldap_err("group sync search"))?
        {
            if re.is_intermediate() {
                // Deletions may come as a set of UUIDs: reload, the index says what changed.
                if let SyncInfo::SyncIdSet {
                    refresh_deletes: true,
                    ..
                } = parse_syncinfo(re)
                {
                    let changed = self.load_groups(&mut ldap).await?;
                    self.refresh_members(&mut ldap, changed).await?;
                }
                continue;
            }
            if re.is_ref() {
                continue;
            }
            let (state, e) = self.sync_entry(re)?;
            let changed = match state.state {
                EntryState::Present => continue,
                EntryState::Add | EntryState::Modify => {
                    let mut index = self.groups.lock().unwrap_or_else(|p| p.into_inner());
                    index.put(g, &e)
                }
                EntryState::Delete => {
                    tracing::info!(source = %self.name, entry_uuid = %uuid_string(&state.entry_uuid), "group deleted; reloading groups");
                    self.load_groups(&mut ldap).await?
                }
            };
            self.refresh_members(&mut ldap, changed).await?;
        }
        let res = stream.finish().await;
        Err(self.server_err("group sync search", res.rc, "ended by the server"))
    }
}
