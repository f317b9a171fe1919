//! How the states of the flow are spelled in the database, and so in reports, metrics and JSON
//! documents: the one place that knows the words. Everything else uses the enums.

use super::{Result, corrupt};
use crate::model::{ChangeKind, CommandStatus, GrantState};
use sqlx::Row;
use sqlx::any::AnyRow;

impl CommandStatus {
    pub const ALL: [CommandStatus; 6] = [
        Self::Pending,
        Self::Inflight,
        Self::Confirming,
        Self::Done,
        Self::Dead,
        Self::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Inflight => "inflight",
            Self::Confirming => "confirming",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A row's `status` column, read as a command status.
pub(super) fn command_status(r: &AnyRow, table: &'static str) -> Result<CommandStatus> {
    let s: String = r.try_get("status")?;
    CommandStatus::parse(&s).ok_or_else(|| corrupt(table, format!("status `{s}`")))
}

impl std::fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status == "done"` reads as the column does.
impl PartialEq<&str> for CommandStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for CommandStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl GrantState {
    pub const ALL: [GrantState; 3] = [Self::Present, Self::Absent, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Absent => "absent",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// A `grants` row's `desired` / `observed` column.
impl TryFrom<String> for GrantState {
    type Error = super::StoreError;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s).ok_or_else(|| corrupt("grants", format!("grant state `{s}`")))
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for GrantState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for GrantState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 17] = [
        Self::Joiner,
        Self::Mover,
        Self::Leaver,
        Self::Rehire,
        Self::AlreadyGone,
        Self::Lifecycle,
        Self::Reconcile,
        Self::Suspension,
        Self::Resume,
        Self::Migration,
        Self::Review,
        Self::Reinstated,
        Self::RequestEnded,
        Self::TemporaryAccess,
        Self::Expiry,
        Self::Unchanged,
        Self::NoIdentity,
    ];

    /// As a command's `cause` and an audit record's `change` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joiner => "joiner",
            Self::Mover => "mover",
            Self::Leaver => "leaver",
            Self::Rehire => "rehire",
            Self::AlreadyGone => "already_gone",
            Self::Lifecycle => "lifecycle",
            Self::Reconcile => "reconcile",
            Self::Suspension => "suspension",
            Self::Resume => "resume",
            Self::Migration => "migration",
            Self::Review => "review",
            Self::Reinstated => "reinstated",
            Self::RequestEnded => "request_ended",
            Self::TemporaryAccess => "temporary_access",
            Self::Expiry => "expiry",
            Self::Unchanged => "unchanged",
            Self::NoIdentity => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ChangeKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for ChangeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself() {
        for c in CommandStatus::ALL {
            assert_eq!(CommandStatus::parse(c.as_str()), Some(c));
        }
        assert_eq!(CommandStatus::parse("Pending"), None);
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
        }
        for g in GrantState::ALL {
            assert_eq!(GrantState::parse(g.as_str()), Some(g));
        }
    }
}
