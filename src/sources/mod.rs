//! Sources of joiner / mover / leaver changes. Each turns its input into [`crate::model::PersonRecord`]s
//! and [`crate::model::Quarantined`] rows (a full read as one [`crate::model::Snapshot`]); the
//! engine does the rest. A key cabinet's event feed is read here too (`cabinet`), into typed pages
//! the cabinet job applies.

pub mod cabinet;
pub mod hr;
pub mod hr_drop;
pub mod ldap;
pub mod scim;
