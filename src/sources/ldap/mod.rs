//! LDAP and Active Directory as a source: the mapping from directory entries to person records
//! (attributes, disabled accounts, group roles, duplicate accounts), distinguished names and
//! filters as directories write them. Following a directory and applying its changes is the
//! engine's (`crate::engine::ldap`).

pub mod dn;
mod duplicates;
pub mod filter;
mod groups;
mod mapping;

pub use groups::GroupIndex;
pub use mapping::*;

use crate::config::LdapDialect;

/// A mapping file that does not load, named by source and path.
#[derive(Debug, thiserror::Error)]
#[error("LDAP source `{name}`: mapping {path}: {message}")]
pub struct MappingError {
    pub name: String,
    pub path: String,
    pub message: String,
}

pub fn watermark_attribute(d: LdapDialect) -> Option<&'static str> {
    match d {
        LdapDialect::Rfc4533 => None,
        LdapDialect::ActiveDirectory => Some("uSNChanged"),
        LdapDialect::Poll => Some("modifyTimestamp"),
    }
}

pub fn uuid_string(b: &[u8]) -> String {
    if b.len() != 16 {
        return hex::encode(b);
    }
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
