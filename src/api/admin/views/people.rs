//! People and what they hold, and who holds a door.

use crate::api::ApiState;
use crate::api::admin::Problem;
use crate::clock::rfc3339 as time;
use crate::model::GrantState;
use crate::store;
use serde::Serialize;
use utoipa::ToSchema;

// ---- people --------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PersonSummary {
    pub key: String,
    pub name: Option<String>,
    /// Lifecycle state (`active`, `leaver`, ...).
    pub lifecycle: String,
    pub since: String,
}

impl From<store::IdentityRow> for PersonSummary {
    fn from(i: store::IdentityRow) -> Self {
        Self {
            name: i.attr("name").map(str::to_string),
            lifecycle: i.lifecycle.to_string(),
            since: time(i.lifecycle_since),
            key: i.key.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeoplePage {
    pub items: Vec<PersonSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// People whose key, e-mail or name contains `needle` (at most `limit`), or one page by key
/// after `cursor`.
pub async fn people(
    s: &ApiState,
    needle: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<PeoplePage, Problem> {
    let limit = limit.clamp(1, crate::api::admin::MAX_LIMIT);
    if let Some(needle) = needle.filter(|n| !n.is_empty()) {
        let mut conn = s.engine.store.pool().acquire().await?;
        let found = store::find_identities(&mut conn, needle).await?;
        return Ok(PeoplePage {
            items: found.into_iter().take(limit).map(Into::into).collect(),
            next_cursor: None,
        });
    }
    let after = cursor.unwrap_or_default();
    let rows = store::identities_page(s.engine.store.pool(), after, limit as i64).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.key.to_string()))
        .flatten();
    Ok(PeoplePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    })
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Grant {
    pub connector: String,
    pub target: String,
    /// What policy wants: `present` | `absent`.
    pub desired: String,
    /// What the vendor last confirmed: `present` | `absent` | `unknown`.
    pub observed: String,
    /// Where the credential is in its life: `issued` (sent, not yet confirmed), `active`,
    /// `suspended`, `revoking` (revoke sent, not yet confirmed) or `revoked`.
    pub state: String,
    /// The template (or request) that caused it.
    pub template: String,
    pub approved_by: Option<String>,
}

/// A grant's lifecycle state from what policy wants, what the vendor confirmed, whether a
/// suspension withholds it, and what caused it (a temporary request's grant that is gone has
/// `expired`).
pub fn grant_state(
    desired: GrantState,
    observed: GrantState,
    suspended: bool,
    template: &str,
) -> &'static str {
    match (
        desired == GrantState::Present,
        observed == GrantState::Present,
    ) {
        (true, true) => "active",
        (true, false) => "issued",
        (false, true) => "revoking",
        (false, false) if suspended => "suspended",
        (false, false) if template.starts_with("request:") => "expired",
        (false, false) => "revoked",
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PersonAccess {
    pub person: PersonSummary,
    pub grants: Vec<Grant>,
}

/// What a person (key, e-mail or name) holds, at which vendor, from which template.
pub async fn person_access(s: &ApiState, who: &str) -> Result<PersonAccess, Problem> {
    let engine = &s.engine;
    let mut conn = engine.store.pool().acquire().await?;
    let ident = crate::naming::person(&mut conn, who)
        .await
        .map_err(|e| naming_problem(e, Problem::not_found))?;
    let suspended =
        crate::suspension::Scope::of(&store::suspensions::active_of(&mut conn, &ident.key).await?);
    let policy = engine.policy();
    let grants = store::grants_of(&mut conn, &ident.key)
        .await?
        .into_iter()
        .map(|g| Grant {
            approved_by: policy.approver_of(&g.template).map(str::to_string),
            state: grant_state(
                g.desired,
                g.observed,
                suspended.as_ref().is_some_and(|sc| sc.covers(&g.connector)),
                &g.template,
            )
            .to_string(),
            connector: g.connector,
            target: g.target,
            desired: g.desired.to_string(),
            observed: g.observed.to_string(),
            template: g.template,
        })
        .collect();
    Ok(PersonAccess {
        person: ident.into(),
        grants,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Holder {
    pub identity: String,
    pub connector: String,
    pub template: String,
    pub desired: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetHolders {
    /// The target's name (a vendor id in the request is resolved to it).
    pub target: String,
    /// Grants confirmed at the vendor.
    pub holders: Vec<Holder>,
    /// Cabinet keys out now, by holder.
    pub cabinet_keys: Vec<String>,
}

/// Who holds a target (lock, group), by its name or the vendor's id.
pub async fn who_has(s: &ApiState, target: &str) -> Result<Vec<TargetHolders>, Problem> {
    Ok(who_has_page(s, target, 0, i64::MAX)
        .await?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// [`who_has`], `limit` holders of each target from `offset`, with each target's total.
pub async fn who_has_page(
    s: &ApiState,
    target: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<(i64, TargetHolders)>, Problem> {
    let pool = s.engine.store.pool();
    let on_record = store::target_on_record(pool, target).await?
        || !store::cabinet_holders(pool, target).await?.is_empty();
    let names = crate::naming::targets(&s.engine.config, target, on_record);
    if names.is_empty() {
        return Err(Problem::not_found(format!(
            "no target or vendor id `{target}` in any connector's target map, and no grant on record for it"
        )));
    }
    let mut out = Vec::new();
    for name in names {
        let (total, rows) = store::holders_page(pool, &name, offset, limit).await?;
        let holders = rows
            .into_iter()
            .map(|g| Holder {
                identity: g.identity_key.into(),
                connector: g.connector,
                template: g.template,
                desired: g.desired.to_string(),
            })
            .collect();
        let cabinet_keys = store::cabinet_holders(pool, &name)
            .await?
            .into_iter()
            .map(|k| String::from(k.identity_key))
            .collect();
        out.push((
            total,
            TargetHolders {
                target: name,
                holders,
                cabinet_keys,
            },
        ));
    }
    Ok(out)
}

/// A name that finds nobody (or several people) is the caller's mistake, answered as `unfound`
/// says; a store that fails is ours.
pub(crate) fn naming_problem(
    e: crate::naming::NamingError,
    unfound: fn(String) -> Problem,
) -> Problem {
    match e {
        crate::naming::NamingError::Store(e) => Problem::internal(e),
        other => unfound(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::{GrantState, grant_state};

    #[test]
    fn a_grant_state_follows_policy_the_vendor_and_suspension() {
        let door = "department-door";
        assert_eq!(
            grant_state(GrantState::Present, GrantState::Present, false, door),
            "active"
        );
        assert_eq!(
            grant_state(GrantState::Present, GrantState::Absent, false, door),
            "issued"
        );
        assert_eq!(
            grant_state(GrantState::Present, GrantState::Unknown, false, door),
            "issued"
        );
        assert_eq!(
            grant_state(GrantState::Absent, GrantState::Present, true, door),
            "revoking"
        );
        assert_eq!(
            grant_state(GrantState::Absent, GrantState::Absent, true, door),
            "suspended"
        );
        assert_eq!(
            grant_state(GrantState::Absent, GrantState::Absent, false, door),
            "revoked"
        );
        assert_eq!(
            grant_state(GrantState::Absent, GrantState::Absent, false, "request:7"),
            "expired"
        );
        assert_eq!(
            grant_state(GrantState::Present, GrantState::Present, false, "request:7"),
            "active"
        );
    }
}
