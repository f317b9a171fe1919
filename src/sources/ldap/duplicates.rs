//! Several entries with one correlation key (an admin account sharing a person's employeeID, a
//! stale disabled copy): one is the person, chosen by the mapping's `[duplicates]` rule from the
//! entries alone, and the others are quarantined. Because the choice never depends on which entry
//! changed last, a change to any of them yields the same person: no alternation.

use super::dn;
use super::filter;
use super::mapping::{Entry, LdapMapping};
use crate::model::Quarantined;
use std::collections::BTreeMap;

impl LdapMapping {
    /// The index of the primary entry among entries sharing a key.
    pub fn choose_primary(&self, entries: &[&Entry]) -> usize {
        let f = self
            .duplicates
            .primary_filter
            .as_deref()
            .and_then(|t| filter::parse(t).ok());
        let rank = |e: &Entry| {
            let preferred = f.as_ref().is_none_or(|f| f.matches(e));
            // A malformed flag counts as disabled: the safe side.
            let disabled = self.disabled_reason(e).unwrap_or(true);
            let enabled_first = disabled == self.duplicates.prefer_enabled;
            (!preferred, enabled_first, dn::normalise(&e.dn))
        };
        (0..entries.len())
            .min_by_key(|i| rank(entries[*i]))
            .unwrap_or(0)
    }

    /// Split entries into the ones to map (one per key) and quarantine records for the rest.
    pub fn dedupe<'a>(
        &self,
        source: &str,
        entries: impl Iterator<Item = &'a Entry>,
    ) -> (Vec<&'a Entry>, Vec<Quarantined>) {
        let mut by_key: BTreeMap<String, Vec<&'a Entry>> = BTreeMap::new();
        let mut out = Vec::new();
        for e in entries {
            match e.first(&self.key) {
                Some(k) => by_key.entry(k.to_string()).or_default().push(e),
                None => out.push(e),
            }
        }
        let mut quarantined = Vec::new();
        for (key, group) in by_key {
            let p = self.choose_primary(&group);
            for (i, e) in group.iter().enumerate() {
                if i == p {
                    out.push(e);
                } else {
                    quarantined.push(self.duplicate_record(source, &key, e, group[p]));
                }
            }
        }
        (out, quarantined)
    }

    pub(crate) fn duplicate_record(
        &self,
        source: &str,
        key: &str,
        e: &Entry,
        primary: &Entry,
    ) -> Quarantined {
        Quarantined {
            source: source.to_string(),
            location: e.dn.clone(),
            record_key: Some(key.into()),
            field: self.key.clone(),
            reason: format!(
                "duplicate correlation key `{key}`: {} is used for this person, this entry is ignored",
                primary.dn
            ),
            raw: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(dn: &str, pairs: &[(&str, &str)]) -> Entry {
        let mut e = Entry {
            dn: dn.into(),
            ..Default::default()
        };
        for (k, v) in pairs {
            e.attrs
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        e
    }

    #[test]
    fn primary_is_chosen_from_the_entries_alone() {
        let mut m: LdapMapping = toml::from_str(
            "version = 1\nkey = \"employeeID\"\n[disabled]\nuser_account_control = true\n\
             [duplicates]\nprimary_filter = \"(!(sAMAccountName=adm-*))\"\nprefer_enabled = true\n",
        )
        .unwrap();
        let person = entry(
            "cn=a1,ou=p",
            &[
                ("employeeID", "A1"),
                ("sAMAccountName", "a1"),
                ("userAccountControl", "514"),
            ],
        );
        let admin = entry(
            "cn=adm,ou=p",
            &[
                ("employeeID", "A1"),
                ("sAMAccountName", "adm-a1"),
                ("userAccountControl", "512"),
            ],
        );
        // The disabled person, not the enabled admin account, in either order.
        assert_eq!(m.choose_primary(&[&person, &admin]), 0);
        assert_eq!(m.choose_primary(&[&admin, &person]), 1);
        let active = entry(
            "cn=b,ou=p",
            &[
                ("employeeID", "B"),
                ("sAMAccountName", "b"),
                ("userAccountControl", "512"),
            ],
        );
        let stale = entry(
            "cn=a-old,ou=p",
            &[
                ("employeeID", "B"),
                ("sAMAccountName", "bold"),
                ("userAccountControl", "514"),
            ],
        );
        assert_eq!(m.choose_primary(&[&stale, &active]), 1);
        // Without a preference for enabled entries a disabled duplicate wins (leaver wins).
        m.duplicates.prefer_enabled = false;
        assert_eq!(m.choose_primary(&[&stale, &active]), 0);
        let (keep, q) = m.dedupe("ad", [&person, &admin, &active].into_iter());
        assert_eq!(keep.len(), 2);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].location, "cn=adm,ou=p");
        assert!(q[0].reason.contains("cn=a1,ou=p"), "{}", q[0].reason);
    }
}
