//! Sources of joiner / mover / leaver changes. Each turns its input into [`crate::model::PersonRecord`]s
//! and [`crate::model::Quarantined`] rows; the engine does the rest.

pub mod hr;
pub mod hr_drop;
pub mod ldap;
pub mod scim;
