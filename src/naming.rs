//! How operators name things, on every surface (CLI, API, console): a person by correlation key,
//! e-mail or name; a target by its template name or by the vendor's own id (a lock id from the
//! vendor's app). Not found is an error, never an empty answer that looks like "nobody".

use crate::config::Config;
use crate::model::PersonKey;
use crate::store::{self, IdentityRow, StoreError};
use sqlx::AnyConnection;

#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error("no person with key, e-mail or name `{0}`")]
    NoPerson(String),
    #[error("`{who}` names {} people ({}): give the key", keys.len(), keys.join(", "))]
    Ambiguous { who: String, keys: Vec<PersonKey> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The one identity an operator means, or why there is none.
pub async fn person(conn: &mut AnyConnection, who: &str) -> Result<IdentityRow, NamingError> {
    if let Some(i) = store::get_identity(conn, who).await? {
        return Ok(i);
    }
    let mut found = store::find_identities(conn, who).await?;
    match found.len() {
        0 => Err(NamingError::NoPerson(who.to_string())),
        1 => Ok(found.remove(0)),
        _ => Err(NamingError::Ambiguous {
            who: who.to_string(),
            keys: found.into_iter().map(|i| i.key).collect(),
        }),
    }
}

/// The target names `what` stands for: itself when a connector maps it or a grant is on record
/// for it, else every target whose vendor id it is. Empty: nothing by that name.
pub fn targets(config: &Config, what: &str, on_record: bool) -> Vec<String> {
    let named = config
        .connectors
        .values()
        .any(|c| c.targets.contains_key(what));
    if named || on_record {
        return vec![what.to_string()];
    }
    let mut by_vendor_id: Vec<String> = config
        .connectors
        .values()
        .flat_map(|c| c.targets.iter())
        .filter(|(_, id)| id.as_str() == what)
        .map(|(name, _)| name.clone())
        .collect();
    by_vendor_id.sort();
    by_vendor_id.dedup();
    by_vendor_id
}
