//! The normalized vocabulary every stage of the flow speaks: people as sources see them, identities,
//! desired grants and the commands that move a vendor towards them.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

/// Where a person is in their working life, as latchkey has concluded from all sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    PreHire,
    Active,
    Suspended,
    Terminated,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::PreHire => "pre_hire",
            Lifecycle::Active => "active",
            Lifecycle::Suspended => "suspended",
            Lifecycle::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pre_hire" => Lifecycle::PreHire,
            "active" => Lifecycle::Active,
            "suspended" => Lifecycle::Suspended,
            "terminated" => Lifecycle::Terminated,
            _ => return None,
        })
    }

    /// Only an active person is entitled to physical access.
    pub fn entitled(self) -> bool {
        self == Lifecycle::Active
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a source row says explicitly about employment, after the mapping's value table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    Active,
    Suspended,
    Terminated,
}

/// One source's view of one person at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonRecord {
    /// The configured source name (`hr`, `ldap-corp`, ...).
    pub source: String,
    /// The correlation key (employee id).
    pub key: PersonKey,
    /// Where this record came from, for messages: `hr-2026-11-25.csv:17`.
    pub location: String,
    pub status: Option<RecordStatus>,
    pub hire_date: Option<NaiveDate>,
    pub termination_date: Option<NaiveDate>,
    pub contract_end: Option<NaiveDate>,
    /// Site name, which selects the time zone dates are read in.
    pub site: Option<String>,
    /// Every mapped attribute (name, email, department, role, employment_type, ...), for templates.
    pub attrs: BTreeMap<String, String>,
}

/// A record that could not be used, kept with enough context for a person to fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    pub source: String,
    /// `file:line` (HR), DN (LDAP), resource id (SCIM).
    pub location: String,
    pub record_key: Option<PersonKey>,
    pub field: String,
    pub reason: String,
    pub raw: String,
}

/// One full read of a source's people, as the source hands it over (an HR file, an LDAP full
/// refresh): everyone the source holds, the rows it could not use, and where it resumes. The
/// engine applies it whole (see `engine::snapshot`): quarantine first, leavers first, the
/// mass-disappearance hold, and the checkpoint last.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub source: String,
    /// Names this read in quarantine rows (a file's digest, a refresh's time).
    pub batch_id: String,
    /// Where the source resumes once this is applied, stored with the last write.
    pub checkpoint: String,
    pub records: Vec<PersonRecord>,
    pub quarantined: Vec<Quarantined>,
    /// Above this share of the present people vanishing at once, the disappearances are held for
    /// an approver instead of applied (invariant 4).
    pub hold_above: f64,
    /// When the read landed (an HR file's modification time), if the source knows: its changes
    /// count as observed then, not when they were picked up.
    pub landed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A weekly time window a grant is valid in, in the site's local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// ISO weekdays 1 = Monday .. 7 = Sunday.
    pub weekdays: Vec<u8>,
    /// Minutes after local midnight.
    pub from_minute: u16,
    pub until_minute: u16,
}

/// A grant the policy says a person should hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredGrant {
    pub connector: String,
    pub target: String,
    /// app | fob | keypad | card | mobile | wallet | physical_key
    pub credential: String,
    /// The template that caused it.
    pub template: String,
    pub window: Option<Window>,
    pub valid_until: Option<DateTime<Utc>>,
}

/// A command's id in the outbox: what `latchkey redrive`, the audit trail and the logs name.
// `Default` only because a `store::CommandUpdate` is built with `..Default::default()`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct CommandId(pub i64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<i64> for CommandId {
    fn from(id: i64) -> Self {
        Self(id)
    }
}

impl From<CommandId> for i64 {
    fn from(id: CommandId) -> Self {
        id.0
    }
}

impl PartialEq<i64> for CommandId {
    fn eq(&self, other: &i64) -> bool {
        self.0 == *other
    }
}

/// A person's correlation key (an HR employee id, a directory's key attribute, what a SCIM user
/// correlates by): what every source's record, every grant and every command is about.
// `Default` only because a connector request about a target alone carries no person
// (`connectors::GrantRequest::for_target`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct PersonKey(String);

impl PersonKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for PersonKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PersonKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Maps and sets keyed by person are looked up with a plain `&str` (a CLI argument, a URL path).
impl Borrow<str> for PersonKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for PersonKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

impl From<&str> for PersonKey {
    fn from(key: &str) -> Self {
        Self(key.to_owned())
    }
}

impl From<&String> for PersonKey {
    fn from(key: &String) -> Self {
        Self(key.clone())
    }
}

impl From<PersonKey> for String {
    fn from(key: PersonKey) -> Self {
        key.0
    }
}

impl PartialEq<str> for PersonKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PersonKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for PersonKey {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// Where a command stands in the outbox. Its spelling in the database and in reports is the
/// store's (`store::states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum CommandStatus {
    /// Queued, due at `next_attempt_at`.
    #[default]
    Pending,
    /// Claimed by a worker under a lease; its request may be out.
    Inflight,
    /// Sent and answered; waiting for the vendor to show it (read-back).
    Confirming,
    /// Confirmed at the vendor.
    Done,
    /// Given up on: a dead letter for an operator.
    Dead,
    /// Made moot by a later command for the same grant (an issue overtaken by a revoke).
    Superseded,
}

impl CommandStatus {
    /// Still to be carried out or confirmed.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Inflight | Self::Confirming)
    }
}

/// Why a person's access changes: the cause every command and audit record carries. Its spelling
/// is the store's (`store::states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Joiner,
    Mover,
    Leaver,
    Rehire,
    /// First seen already terminated: never given anything here.
    AlreadyGone,
    /// Another lifecycle step (suspended, back from a suspension, a pre-hire date moved).
    Lifecycle,
    /// Nothing of the person changed: policy or the ledger did (a full reconciliation).
    Reconcile,
    /// An operator suspended the person's access.
    Suspension,
    /// An operator lifted a suspension.
    Resume,
    /// A door moved from one connector to another.
    Migration,
    /// An access review withdrew a door.
    Review,
    /// A door a review withdrew was given back.
    Reinstated,
    /// Temporary access ended early.
    RequestEnded,
    /// Temporary access or break-glass came into force.
    TemporaryAccess,
    /// Temporary access ran out.
    Expiry,
    /// The record is the one already stored: nothing to do.
    Unchanged,
    /// No source has a view of the person any more: nothing to plan.
    NoIdentity,
}

impl ChangeKind {
    /// An operator's own act, not a source's change or the schedule's.
    pub fn by_operator(self) -> bool {
        matches!(
            self,
            Self::Suspension | Self::Resume | Self::Review | Self::Reinstated | Self::RequestEnded
        )
    }

    /// A change with no effective date of its own: it triggers when seen.
    pub fn triggers_when_seen(self) -> bool {
        matches!(self, Self::Mover | Self::Reconcile)
    }
}

/// A grant in the ledger, as policy wants it (`desired`) or as the vendor last confirmed it
/// (`observed`). Its spelling is the store's (`store::states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantState {
    Present,
    Absent,
    /// Not known yet: never confirmed either way.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Issue,
    Revoke,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::Revoke => "revoke",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issue" => Some(Action::Issue),
            "revoke" => Some(Action::Revoke),
            _ => None,
        }
    }

    /// Lower runs first: a revoke never waits behind issues (invariant 3).
    pub fn priority(self) -> i64 {
        match self {
            Action::Revoke => 0,
            Action::Issue => 10,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The person as a connector needs to see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonRef {
    pub key: PersonKey,
    pub name: String,
    pub email: String,
    pub attrs: BTreeMap<String, String>,
}
