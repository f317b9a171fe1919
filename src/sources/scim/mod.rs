//! SCIM 2.0 as a source: resources identity providers push (Okta, Entra ID), how they are stored and
//! searched, how PATCH changes them, and how a User becomes a [`PersonRecord`].
//!
//! A resource is kept as its canonical JSON (parsed through `scim_v2`'s models, so provider spellings
//! such as `"active":"False"` come out as the RFC's form) plus one row per attribute value in
//! `scim_values`, so a filter runs as SQL against both SQLite and PostgreSQL.

mod authority;
mod canonical;
mod filter;
mod patch;
mod person;
mod profile;
mod resource;
#[cfg(test)]
mod tests;

pub use authority::*;
pub use canonical::*;
pub use filter::*;
pub use patch::*;
pub use person::*;
pub use profile::*;
pub use resource::*;

use crate::config::CorrelateBy;
use crate::model::{PersonKey, PersonRecord, RecordStatus};
use chrono::{DateTime, Utc};
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, Filter, PatchPath, ValFilter};
use scim_v2::models::others::{OperationTarget, PatchOp, PatchOperation};
use scim_v2::schema_urns;
use serde_json::{Map, Value, json};

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    /// A request the client must change: answered with this status and SCIM `scimType`.
    #[error("{detail}")]
    Client {
        status: u16,
        scim_type: Option<&'static str>,
        detail: String,
    },
    /// A failure below the protocol (the store, the engine, the database): answered 500, or 503
    /// when the store cannot be reached. Kept whole, so a lost lock race is still recognised (and
    /// the transaction run again) through its `source` chain.
    #[error("{0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error("stored SCIM resource {id} is not valid JSON: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

impl ScimError {
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: 400,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    pub fn status(status: u16, detail: impl Into<String>) -> Self {
        Self::Client {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }

    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::status(404, format!("{} {id} not found", kind.resource_type()))
    }
}

pub type Result<T, E = ScimError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn from_endpoint(s: &str) -> Option<Self> {
        match s {
            "Users" => Some(Kind::User),
            "Groups" => Some(Kind::Group),
            _ => None,
        }
    }

    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::User => "Users",
            Kind::Group => "Groups",
        }
    }

    pub fn schema(self) -> &'static str {
        match self {
            Kind::User => schema_urns::USER,
            Kind::Group => schema_urns::GROUP,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "User" => Some(Kind::User),
            "Group" => Some(Kind::Group),
            _ => None,
        }
    }

    /// Top-level attributes of the core schema, canonical spelling.
    fn attributes(self) -> &'static [&'static str] {
        match self {
            Kind::User => &[
                "schemas",
                "id",
                "externalId",
                "meta",
                "userName",
                "name",
                "displayName",
                "nickName",
                "profileUrl",
                "title",
                "userType",
                "preferredLanguage",
                "locale",
                "timezone",
                "active",
                "password",
                "emails",
                "phoneNumbers",
                "ims",
                "photos",
                "addresses",
                "groups",
                "entitlements",
                "roles",
                "x509Certificates",
            ],
            Kind::Group => &[
                "schemas",
                "id",
                "externalId",
                "meta",
                "displayName",
                "members",
            ],
        }
    }

    fn canonical(self, name: &str) -> Option<&'static str> {
        self.attributes()
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
            .copied()
    }
}

const ENTERPRISE_ATTRS: &[&str] = &[
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];

/// Multi-valued attributes: PATCH `add` appends to them, and a filter on the attribute itself
/// (`emails co "x"`) means its `value` sub-attribute (RFC 7644 section 3.4.2.2).
const MULTI: &[&str] = &[
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509Certificates",
    "members",
    "schemas",
];

fn is_multi(name: &str) -> bool {
    MULTI.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// SCIM times on the wire: seconds, UTC, so stored strings compare in time order.
pub fn scim_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
