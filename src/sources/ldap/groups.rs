//! Group membership, from the person's `memberOf` and from group entries' `member` /
//! `uniqueMember`, with DNs compared after parsing and names after Unicode case folding.

use super::dn;
use super::mapping::{Entry, GroupMapping};
use std::collections::{BTreeMap, BTreeSet};

/// The group entries a source knows: normalised group DN -> normalised member DNs.
#[derive(Debug, Clone, Default)]
pub struct GroupIndex {
    members: BTreeMap<String, BTreeSet<String>>,
}

impl GroupIndex {
    /// Record a group entry's members (replacing what was known); returns the member DNs whose
    /// membership changed, normalised.
    pub fn put(&mut self, g: &GroupMapping, e: &Entry) -> BTreeSet<String> {
        let new: BTreeSet<String> = g
            .member_attributes
            .iter()
            .flat_map(|a| e.all(a).iter())
            .map(|m| dn::normalise(m))
            .collect();
        let old = self
            .members
            .insert(dn::normalise(&e.dn), new.clone())
            .unwrap_or_default();
        old.symmetric_difference(&new).cloned().collect()
    }

    /// The member DNs whose membership differs between two indexes.
    pub fn diff(&self, other: &GroupIndex) -> BTreeSet<String> {
        let empty = BTreeSet::new();
        let groups: BTreeSet<&String> = self.members.keys().chain(other.members.keys()).collect();
        groups
            .into_iter()
            .flat_map(|g| {
                let a = self.members.get(g).unwrap_or(&empty);
                let b = other.members.get(g).unwrap_or(&empty);
                a.symmetric_difference(b).cloned().collect::<Vec<_>>()
            })
            .collect()
    }

    /// Forget a group entry; returns its former members.
    pub fn remove(&mut self, group_dn: &str) -> BTreeSet<String> {
        self.members
            .remove(&dn::normalise(group_dn))
            .unwrap_or_default()
    }

    /// Whether this DN is a known group.
    pub fn contains(&self, group_dn: &str) -> bool {
        self.members.contains_key(&dn::normalise(group_dn))
    }

    /// Every member DN of a group, with members of member groups when `nested`.
    pub fn expand(&self, group_norm: &str, nested: bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![group_norm.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(g) = todo.pop() {
            if !seen.insert(g.clone()) {
                continue;
            }
            for m in self.members.get(&g).into_iter().flatten() {
                out.insert(m.clone());
                if nested && self.members.contains_key(m) {
                    todo.push(m.clone());
                }
            }
        }
        out
    }

    /// The groups (normalised DNs) a member belongs to, directly or, when `nested`, through groups
    /// that are members of other groups. Cycles are harmless.
    pub fn groups_of(&self, member_norm: &str, nested: bool) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![member_norm.to_string()];
        while let Some(m) = todo.pop() {
            for (g, members) in &self.members {
                if members.contains(&m) && out.insert(g.clone()) && nested {
                    todo.push(g.clone());
                }
            }
        }
        out
    }
}

impl GroupMapping {
    /// Set `groups` (folded common names, comma separated) and a group's `role` on a person.
    pub fn apply(
        &self,
        e: &Entry,
        index: Option<&GroupIndex>,
        attrs: &mut BTreeMap<String, String>,
    ) {
        // Where group entries are followed they are the truth: a memberOf written by an overlay
        // after the group changed may lag behind, and is never sent again.
        let followed = index.and(self.base.as_deref()).map(dn::normalise);
        let mut dns: BTreeSet<String> = self
            .attribute
            .as_deref()
            .map(|a| e.all(a).iter().map(|d| dn::normalise(d)).collect())
            .unwrap_or_default();
        if let Some(base) = &followed {
            dns.retain(|d| !dn::within(d, base));
        }
        if let Some(ix) = index {
            let direct = dns.clone();
            dns.extend(ix.groups_of(&dn::normalise(&e.dn), self.nested));
            if self.nested {
                for g in direct {
                    dns.extend(ix.groups_of(&g, true));
                }
            }
        }
        let names: BTreeSet<String> = dns.iter().map(|d| dn::first_value(d)).collect();
        if !names.is_empty() {
            attrs.insert(
                "groups".into(),
                names.iter().cloned().collect::<Vec<_>>().join(","),
            );
        }
        if let Some(r) = self.roles.iter().find(|r| {
            if r.group.contains('=') {
                dns.contains(&dn::normalise(&r.group))
            } else {
                names.contains(&dn::fold(&r.group))
            }
        }) {
            attrs.insert("role".into(), r.role.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn group(dn: &str, members: &[&str]) -> Entry {
        let mut e = Entry {
            dn: dn.into(),
            ..Default::default()
        };
        e.attrs.insert(
            "member".into(),
            members.iter().map(|m| m.to_string()).collect(),
        );
        e
    }

    fn mapping(nested: bool) -> GroupMapping {
        toml::from_str(&format!(
            "base = \"ou=groups,dc=x\"\nnested = {nested}\nroles = [\
             {{ group = \"ØDEGÅRD LAB\", role = \"researcher\" }},\
             {{ group = \"cn=Site Leads\\\\2C Oslo,ou=groups,dc=x\", role = \"lead\" }}]"
        ))
        .unwrap()
    }

    #[test]
    fn membership_from_group_entries_escapes_case_and_nesting() {
        let mut ix = GroupIndex::default();
        let g = mapping(true);
        let alice = "uid=alice,ou=people,dc=x";
        let changed = ix.put(
            &g,
            &group(
                "cn=Ødegård Lab,ou=groups,dc=x",
                &["UID=Alice,OU=People,DC=x"],
            ),
        );
        assert_eq!(changed.len(), 1);
        ix.put(
            &g,
            &group(
                "cn=Site Leads\\, Oslo,ou=groups,dc=x",
                &["cn=ødegård lab,ou=groups,dc=x"],
            ),
        );
        let person = Entry {
            dn: alice.into(),
            ..Default::default()
        };
        let mut attrs = BTreeMap::new();
        g.apply(&person, Some(&ix), &mut attrs);
        assert_eq!(attrs["groups"], "site leads, oslo,ødegård lab");
        assert_eq!(attrs["role"], "researcher");
        // Without nesting only the direct group counts.
        let mut attrs = BTreeMap::new();
        mapping(false).apply(&person, Some(&ix), &mut attrs);
        assert_eq!(attrs["groups"], "ødegård lab");
        // Removal from the group: the member is reported changed and loses the role.
        let changed = ix.put(&g, &group("cn=Ødegård Lab,ou=groups,dc=x", &[]));
        assert!(changed.contains(&dn::normalise(alice)));
        let mut attrs = BTreeMap::new();
        g.apply(&person, Some(&ix), &mut attrs);
        assert!(!attrs.contains_key("role"), "{attrs:?}");
    }
}
