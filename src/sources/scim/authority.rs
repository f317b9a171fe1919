//! Source authority for SCIM tenants (DESIGN.md invariant 12): a tenant affects only the people it
//! is authoritative for, so an identity provider that can name anyone cannot terminate or promote
//! them. A tenant is authoritative for the people it created (no other source knew them before
//! it) and for the correlation keys its `authoritative_keys` patterns match.
//!
//! Towards anyone else, a tenant's user contributes nothing: no attributes (a `title` of
//! `manager` grants nothing), and a deactivation or deletion is recorded in the audit log and
//! set aside for an operator (quarantine) instead of revoking, unless the tenant has
//! `may_terminate = true`, in which case it revokes and still contributes no attributes.

use super::*;

/// `*` matches any run of characters; everything else matches itself.
pub fn key_matches(pattern: &str, key: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == key;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || key.len() < first.len() + last.len() || !key.ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// What a tenant that is not authoritative may still say: nothing but, with `may_terminate`, that
/// the person is terminated.
pub fn stripped(m: &Mapping, r: &PersonRecord) -> PersonRecord {
    let terminated = r.status == Some(RecordStatus::Terminated) && m.may_terminate;
    PersonRecord {
        status: Some(if terminated {
            RecordStatus::Terminated
        } else {
            RecordStatus::Active
        }),
        hire_date: None,
        termination_date: None,
        contract_end: None,
        site: None,
        attrs: BTreeMap::new(),
        ..r.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::key_matches;

    #[test]
    fn key_patterns() {
        assert!(key_matches("*", "E1"));
        assert!(key_matches("C*", "C100"));
        assert!(!key_matches("C*", "E100"));
        assert!(key_matches("*-ext", "ab-ext"));
        assert!(key_matches("a*b*c", "axxbyyc"));
        assert!(!key_matches("a*b*c", "axxc"));
        assert!(key_matches("E1", "E1") && !key_matches("E1", "E10"));
    }
}
