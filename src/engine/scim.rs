//! A SCIM tenant's users applied to people: the engine's side of the SCIM source. The source
//! (`crate::sources::scim`) maps a user to a person record and says what a tenant may change; here
//! that record is applied on the request's transaction, within the tenant's authority, with the
//! refusals recorded and quarantined.

use crate::clock::to_micros;
use crate::engine::{Engine, EngineError};
use crate::model::{PersonKey, PersonRecord, Quarantined, RecordStatus};
use crate::sources::scim::{
    Mapping, Resource, Result, ScimError, extension_attrs, key_matches, person_record, source_name,
    stripped,
};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::AnyConnection;

// The store's and the engine's failures reach a SCIM client as a 500 or 503 (see
// `api::scim::response`), kept whole so a lost lock race is still recognised and retried.
impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> Self {
        ScimError::Internal(Box::new(e))
    }
}

impl From<EngineError> for ScimError {
    fn from(e: EngineError) -> Self {
        ScimError::Internal(Box::new(e))
    }
}

impl From<sqlx::Error> for ScimError {
    fn from(e: sqlx::Error) -> Self {
        ScimError::Internal(Box::new(e))
    }
}

/// Bring the person a SCIM user stands for in line with the user, on the caller's transaction:
/// a joiner, mover, leaver or rehire through the engine like any other source, within the
/// tenant's authority (see [`authority`](super::authority)). Returns the correlation key the user
/// now maps to.
pub async fn sync_user(
    engine: &Engine,
    conn: &mut AnyConnection,
    m: &Mapping,
    user: Option<&Resource>,
    old_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<PersonKey>> {
    let record = match user {
        Some(u) => {
            let groups: Vec<String> = crate::store::scim::groups_of(conn, &m.tenant, &u.id)
                .await?
                .into_iter()
                .map(|(_, name)| name)
                .collect();
            let in_scope = m.scope_groups.is_empty()
                || groups
                    .iter()
                    .any(|g| m.scope_groups.iter().any(|s| s.eq_ignore_ascii_case(g)));
            person_record(&m.tenant, &u.id, &u.raw, &groups, m.correlate_by)
                .filter(|_| in_scope)
                .map(|mut r| {
                    r.attrs.extend(extension_attrs(&m.profile, &u.raw));
                    r
                })
        }
        None => None,
    };
    let new_key = record.as_ref().map(|r| r.key.clone());
    if let Some(old) = old_key
        && new_key.as_deref() != Some(old)
    {
        remove_person(engine, conn, m, old, now).await?;
    }
    if let Some(r) = record {
        apply_person(engine, conn, m, r, now).await?;
    }
    Ok(new_key)
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
            record_key: Some(key.into()),
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
