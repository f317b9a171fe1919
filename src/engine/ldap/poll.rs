//! USN (Active Directory) and modifyTimestamp polling, and the periodic full comparison.

use super::*;
use crate::model::{ChangeKind, Snapshot};
use ldap3::adapters::{EntriesOnly, PagedResults};

/// Orders watermark values: USNs as numbers, generalized times as text (same width, so text order
/// is time order).
fn watermark_key(d: LdapDialect, v: &str) -> (u64, String) {
    match d {
        LdapDialect::ActiveDirectory => (v.trim().parse().unwrap_or(0), String::new()),
        _ => (0, v.trim().to_string()),
    }
}

impl LdapSource {
    // --- USN and timestamp polling -----------------------------------------------------------

    pub(super) async fn watermark(&self) -> Result<Option<String>> {
        let c = store::checkpoint(self.engine.store.pool(), &self.name)
            .await
            .map_err(self.store_err())?;
        Ok(
            c.and_then(|c| c.split_once(':').map(|(_, v)| v.to_string()))
                .filter(|v| !v.is_empty()),
        )
    }

    pub(super) fn watermark_value(&self, v: &str) -> String {
        let prefix = match self.cfg.dialect {
            LdapDialect::ActiveDirectory => "usn",
            _ => "ts",
        };
        format!("{prefix}:{v}")
    }

    pub(super) async fn poll_session(&self, ldap: &mut Ldap) -> Result<()> {
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
            self.polled();
            tokio::time::sleep(Duration::from_secs(self.cfg.poll_seconds)).await;
        }
    }

    pub(super) async fn paged_search(&self, ldap: &mut Ldap, filter: &str) -> Result<Vec<Entry>> {
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

    pub(super) fn max_watermark<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> Option<String> {
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
        let mut bad = Vec::new();
        for e in entries_to_map {
            match self.map(e) {
                Ok(r) => records.push(r),
                Err(q) => {
                    if let Some(id) = e.entry_id().filter(|_| self.is_leaver_entry(e)) {
                        bad.push((id, e, q.field.clone()));
                    }
                    quarantined.push(*q);
                }
            }
        }
        let threshold = self.mass_change_threshold();
        let mut report = self.snapshot_report(entries.len());
        self.track_entries(&records, &entries).await?;
        // A disabled entry that lost its key is still the person it was: a leaver now, not an
        // absence waiting out the grace period.
        if !bad.is_empty() {
            let now = self.engine.clock.now();
            let mut tx = self
                .engine
                .store
                .begin_write()
                .await
                .map_err(self.store_err())?;
            for (id, e, field) in &bad {
                self.leaver_by_entry_tx(&mut tx, id, e, field, now).await?;
            }
            tx.commit().await.map_err(self.db_err())?;
        }
        let batch = format!("full-{}", to_micros(self.engine.clock.now()));
        self.engine
            .apply_snapshot(
                Snapshot {
                    source: self.name.clone(),
                    batch_id: batch,
                    checkpoint: self.watermark_value(&wm),
                    records,
                    quarantined,
                    hold_above: threshold,
                    landed_at: None,
                },
                &mut report,
            )
            .await
            .map_err(self.engine_err())?;
        log_report(&report);
        Ok(report)
    }

    /// Polling dialects: remember which entry is which person, so a later change of the key is
    /// recognised as the same person.
    pub(super) async fn track_entries(
        &self,
        records: &[PersonRecord],
        entries: &[Entry],
    ) -> Result<()> {
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
    pub(super) async fn poll_changes(&self, ldap: &mut Ldap, wm: &str) -> Result<()> {
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
                    Ok(r) => {
                        self.track_entry(&mut tx, e, &r.key, now).await?;
                        if self.settle_key(&mut tx, &r.key, now).await? {
                            continue;
                        }
                        let (kind, applied) = self
                            .engine
                            .apply_record_tx(&mut tx, &r, now)
                            .await
                            .map_err(self.engine_err())?;
                        if kind != ChangeKind::Unchanged {
                            tracing::info!(source = %self.name, dn = %e.dn, key = %r.key, change = %kind,
                                issues = applied.issues, revokes = applied.revokes, "LDAP change applied");
                        }
                    }
                    Err(q) => self.bad_entry_tx(&mut tx, e.entry_id(), e, &q, now).await?,
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
        }
        Ok(())
    }
}
