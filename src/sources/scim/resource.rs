//! Resources as the SCIM source sees them: the canonical JSON of a stored resource, and the store's
//! SCIM functions (`crate::store::scim`) with their errors as SCIM errors.

use super::*;
use crate::store::scim as db;

pub use db::{
    delete, display_name_taken, exists, groups_of, member, members, put_member, set_person_key,
    user_name_taken,
};

#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    pub person_key: Option<String>,
    /// Canonical representation with `id` and `meta` (without `meta.location`). A group's carries
    /// no `members`: they are rows of their own ([`members`]).
    pub raw: Value,
    pub version: i64,
}

impl Resource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    pub fn from_stored(r: db::ScimRow) -> Result<Self> {
        Ok(Self {
            kind: Kind::parse(&r.resource_type).ok_or_else(|| {
                ScimError::Store(StoreError::Corrupt {
                    table: "scim_resources",
                    message: format!("resource type `{}`", r.resource_type),
                })
            })?,
            person_key: r.person_key,
            raw: serde_json::from_str(&r.raw).map_err(|source| ScimError::Corrupt {
                id: r.id.clone(),
                source,
            })?,
            version: r.version,
            id: r.id,
        })
    }
}

pub fn new_id() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub async fn get(
    conn: &mut AnyConnection,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<Resource>> {
    db::get(conn, tenant, kind.resource_type(), id)
        .await?
        .map(Resource::from_stored)
        .transpose()
}

/// Insert or replace a resource and its searchable values (a group's members are written apart,
/// with [`put_member`] and [`delete`]). With the representation it replaces (`before`), only what
/// changed is rewritten.
pub async fn put(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &Resource,
    before: Option<&Value>,
    created_at: i64,
    modified_at: i64,
) -> Result<()> {
    let row = db::ScimPut {
        id: &r.id,
        resource_type: r.kind.resource_type(),
        person_key: r.person_key.as_deref(),
        raw: &r.raw,
        version: r.version,
    };
    if db::put(conn, tenant, &row, before, created_at, modified_at).await? {
        return Ok(());
    }
    Err(ScimError::Client {
        status: 409,
        scim_type: None,
        detail: format!(
            "{} {} was changed concurrently; retry",
            r.kind.resource_type(),
            r.id
        ),
    })
}

/// Take a member out of a group.
pub async fn delete_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<()> {
    Ok(db::delete_member(conn, tenant, group, id).await?)
}
