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
use crate::clock::to_micros;
use crate::model::Quarantined;

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

/// Whether this tenant may speak for the person with this key.
pub async fn is_authoritative(conn: &mut AnyConnection, m: &Mapping, key: &str) -> Result<bool> {
    if m.authoritative_keys.iter().any(|p| key_matches(p, key)) {
        return Ok(true);
    }
    let mine = source_name(&m.tenant);
    let records = crate::store::source_records_of(conn, key).await?;
    let my_first = records
        .iter()
        .find(|r| r.source == mine)
        .map(|r| r.first_seen_at);
    // The creator is the source that knew the person first; a tie is not a creation.
    Ok(records
        .iter()
        .filter(|r| r.source != mine)
        .all(|o| my_first.is_some_and(|f| f < o.first_seen_at)))
}

/// What a tenant that is not authoritative may still say: nothing but, with `may_terminate`, that
/// the person is terminated.
fn stripped(m: &Mapping, r: &PersonRecord) -> PersonRecord {
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

/// Record and alert a change this tenant is not allowed to make.
async fn refuse(
    conn: &mut AnyConnection,
    m: &Mapping,
    key: &str,
    location: &str,
    what: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let source = source_name(&m.tenant);
    tracing::warn!(source = %source, identity = %key, change = what,
        "SCIM tenant is not authoritative for this person; change recorded, not executed");
    crate::audit::append(
        conn,
        to_micros(now),
        &source,
        "scim.not_authoritative",
        key,
        &json!({ "change": what, "location": location, "may_terminate": m.may_terminate }),
    )
    .await?;
    if what == "attributes" {
        // Audited only: the person keeps what the authoritative sources say.
        return Ok(());
    }
    crate::store::quarantine(
        conn,
        &Quarantined {
            source: source.clone(),
            location: location.to_string(),
            record_key: Some(key.to_string()),
            field: "authority".into(),
            reason: format!(
                "{source} is not authoritative for {key}: its {what} was not executed \
                 (authoritative_keys, may_terminate)"
            ),
            raw: String::new(),
        },
        &format!("{}:{what}", to_micros(now)),
        to_micros(now),
    )
    .await?;
    Ok(())
}

/// Store a tenant's view of a person, within its authority.
pub async fn apply_person(
    engine: &Engine,
    conn: &mut AnyConnection,
    m: &Mapping,
    r: PersonRecord,
    now: DateTime<Utc>,
) -> Result<()> {
    if is_authoritative(conn, m, &r.key).await? {
        engine.apply_record_tx(conn, &r, now).await?;
        return Ok(());
    }
    let terminated = r.status == Some(RecordStatus::Terminated);
    if !r.attrs.is_empty() || terminated {
        let what = if terminated && !m.may_terminate {
            "termination"
        } else {
            "attributes"
        };
        refuse(conn, m, &r.key, &r.location, what, now).await?;
    }
    engine.apply_record_tx(conn, &stripped(m, &r), now).await?;
    Ok(())
}

/// A tenant says the person is gone (user deleted, or out of the tenant's scope).
pub async fn remove_person(
    engine: &Engine,
    conn: &mut AnyConnection,
    m: &Mapping,
    key: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if m.may_terminate || is_authoritative(conn, m, key).await? {
        engine
            .remove_record_tx(conn, &source_name(&m.tenant), key, now)
            .await?;
        return Ok(());
    }
    let location = format!("scim:{}/person/{key}", m.tenant);
    refuse(conn, m, key, &location, "removal", now).await
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
