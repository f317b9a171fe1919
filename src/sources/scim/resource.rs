//! Resources as the SCIM source sees them: the canonical JSON of a resource, its version and the
//! person it stands for. Storing them is the SCIM server's (`api::scim::stored`).

use super::*;

#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    pub person_key: Option<PersonKey>,
    /// Canonical representation with `id` and `meta` (without `meta.location`). A group's carries
    /// no `members`: they are rows of their own ([`members`]).
    pub raw: Value,
    pub version: i64,
}

impl Resource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
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
