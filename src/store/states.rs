//! How the states of the flow are spelled in the database, and so in reports, metrics and JSON
//! documents: the one place that knows the words. Everything else uses the enums.

use super::{Result, corrupt};
use crate::model::{ChangeKind, CommandStatus, GrantState};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Each state's word, and what follows from it: `ALL`, `as_str`, `parse`, `Display`, a JSON string,
/// and `state == "word"` reading as the column does.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

spelled!(CommandStatus {
    Pending => "pending",
    Inflight => "inflight",
    Confirming => "confirming",
    Done => "done",
    Dead => "dead",
    Superseded => "superseded",
});

spelled!(GrantState {
    Present => "present",
    Absent => "absent",
    Unknown => "unknown",
});

spelled!(ChangeKind {
    Joiner => "joiner",
    Mover => "mover",
    Leaver => "leaver",
    Rehire => "rehire",
    AlreadyGone => "already_gone",
    Lifecycle => "lifecycle",
    Reconcile => "reconcile",
    Suspension => "suspension",
    Resume => "resume",
    Migration => "migration",
    Review => "review",
    Reinstated => "reinstated",
    RequestEnded => "request_ended",
    TemporaryAccess => "temporary_access",
    Expiry => "expiry",
    Unchanged => "unchanged",
    NoIdentity => "none",
});

/// A row's `status` column, read as a command status.
pub(super) fn command_status(r: &AnyRow, table: &'static str) -> Result<CommandStatus> {
    let s: String = r.try_get("status")?;
    CommandStatus::parse(&s).ok_or_else(|| corrupt(table, format!("status `{s}`")))
}

/// A `grants` row's `desired` / `observed` column.
impl TryFrom<String> for GrantState {
    type Error = super::StoreError;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s).ok_or_else(|| corrupt("grants", format!("grant state `{s}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_itself() {
        for &c in CommandStatus::ALL {
            assert_eq!(CommandStatus::parse(c.as_str()), Some(c));
        }
        assert_eq!(CommandStatus::parse("Pending"), None);
        for &k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
        }
        for &g in GrantState::ALL {
            assert_eq!(GrantState::parse(g.as_str()), Some(g));
        }
    }
}
