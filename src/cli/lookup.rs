//! How operators name things on the command line: a person by correlation key, e-mail or name; a
//! target by its template name or by the vendor's own id (a lock id from the vendor's app). Not
//! found is an error (exit 1), never an empty answer that looks like "nobody".

use crate::config::Config;
use crate::store::{self, IdentityRow};
use sqlx::AnyConnection;

/// The one identity an operator means, or why there is none.
pub async fn person(conn: &mut AnyConnection, who: &str) -> anyhow::Result<IdentityRow> {
    if let Some(i) = store::get_identity(conn, who).await? {
        return Ok(i);
    }
    let mut found = store::find_identities(conn, who).await?;
    match found.len() {
        0 => anyhow::bail!("no person with key, e-mail or name `{who}`"),
        1 => Ok(found.remove(0)),
        _ => {
            let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
            anyhow::bail!(
                "`{who}` names {} people ({}): give the key",
                keys.len(),
                keys.join(", ")
            )
        }
    }
}

/// The key of the person `who` names, or `None` after telling the shell who could not be found
/// (or that several match), prefixed with the command's name: the command then exits 1.
pub async fn person_key(
    app: &crate::app::App,
    who: &str,
    command: &str,
) -> anyhow::Result<Option<String>> {
    let mut conn = app.store().pool().acquire().await?;
    match person(&mut conn, who).await {
        Ok(i) => Ok(Some(i.key)),
        Err(e) => {
            eprintln!("{command}: {e}");
            Ok(None)
        }
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
