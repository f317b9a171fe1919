//! Operators: who acts on latchkey, with which role, and how they are recognised.
//!
//! Roles are ordered, each including the ones before it (docs/operations.md has the table):
//! `viewer` reads; `desk` also records key hand-overs and returns; `approver` also decides held
//! changes; `admin` also re-drives dead letters. Automation authenticates to the admin API with a
//! bearer token, of which the configuration keeps only the SHA-256. Local commands act as the
//! operating-system user, recorded as `os:USER`; an API caller is recorded as `operator:NAME`.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// An operator's role; a higher role can do everything a lower one can.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything: people, who-has, held changes, dead letters, key tasks, reports, audit.
    Viewer,
    /// Viewer, and records mechanical key hand-overs and returns.
    Desk,
    /// Desk, and approves or rejects held changes (never one they caused: dual control).
    Approver,
    /// Approver, and re-drives dead letters.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Desk, Role::Approver, Role::Admin];

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Desk => "desk",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role (viewer, desk, approver, admin)"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operator proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A bearer token from `[operators]` (the admin API, or the console's token sign-in).
    Token,
    /// The console's OpenID Connect sign-in; the name is the provider's (`name_claim`).
    Oidc,
}

/// An authenticated operator of the admin API or the web console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Operator {
    /// How the audit log and held changes name this operator: `operator:NAME` for a configured
    /// operator, `oidc:NAME` for one the identity provider vouched for.
    pub fn actor(&self) -> String {
        match self.via {
            Via::Token => format!("operator:{}", self.name),
            Via::Oidc => format!("oidc:{}", self.name),
        }
    }
}

/// Prefix of every token `latchkey operators token` makes, so a leaked one is recognisable (and
/// findable by secret scanners).
pub const TOKEN_PREFIX: &str = "lkop_";

/// A new bearer token: 256 random bits, hex, with [`TOKEN_PREFIX`].
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of a token, hex: what the configuration stores. A fast hash is enough because the
/// tokens are 256 random bits (nothing to guess or brute-force, unlike a password), and it keeps
/// every API request cheap; the comparison is in constant time.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The configured operators, ready to authenticate bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct Operators {
    entries: Vec<([u8; 32], Operator)>,
}

impl Operators {
    /// From `[operators]` (hashes were checked when the configuration loaded).
    pub fn from_config(config: &Config) -> Self {
        let entries = config
            .operators
            .iter()
            .filter_map(|(name, o)| {
                let hash = <[u8; 32]>::try_from(hex::decode(&o.token_sha256).ok()?).ok()?;
                Some((
                    hash,
                    Operator {
                        name: name.clone(),
                        role: o.role,
                        via: Via::Token,
                    },
                ))
            })
            .collect();
        Self { entries }
    }

    /// The operator a bearer token belongs to. Every entry is compared, in constant time, so the
    /// answer's timing says nothing about which (or whether one) matched.
    pub fn authenticate(&self, token: &str) -> Option<&Operator> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, op) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(op);
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The operating-system user running a local command.
pub fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .or_else(|| {
            // No login variables (a service, a container): the numeric uid.
            std::fs::read_to_string("/proc/self/status")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(|u| format!("uid:{u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// How a local command is recorded: `os:USER`.
pub fn os_actor() -> String {
    format!("os:{}", os_user())
}

/// The person behind an actor, for dual control: an API operator, the OS account and the
/// single sign-on name the configuration gives them (`[operators.NAME] os_user`, `oidc_name`)
/// are one person.
fn person(config: &Config, actor: &str) -> String {
    let found = if let Some(user) = actor.strip_prefix("os:") {
        config
            .operators
            .iter()
            .find(|(_, o)| o.os_user.as_deref() == Some(user))
    } else if let Some(user) = actor.strip_prefix("oidc:") {
        config
            .operators
            .iter()
            .find(|(_, o)| o.oidc_name.as_deref() == Some(user))
    } else {
        None
    };
    match found {
        Some((name, _)) => format!("operator:{name}"),
        None => actor.to_string(),
    }
}

/// The person behind an actor as dual control counts them: `operator:NAME` for a configured
/// operator under any of their names, else the actor itself.
pub fn person_of(config: &Config, actor: &str) -> String {
    person(config, actor)
}

/// Dual control: whether `approver` is the same person as `requester`.
pub fn same_person(config: &Config, approver: &str, requester: &str) -> bool {
    person(config, approver) == person(config, requester)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_includes_the_ones_before_it() {
        assert!(Role::Admin.allows(Role::Approver));
        assert!(Role::Approver.allows(Role::Desk));
        assert!(Role::Desk.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Desk));
        assert!(!Role::Desk.allows(Role::Approver));
        assert!(!Role::Approver.allows(Role::Admin));
    }

    #[test]
    fn tokens_are_fresh_and_hash_to_64_hex_digits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let h = token_sha256(&a);
        assert_eq!(h.len(), 64);
        assert_ne!(h, token_sha256(&b));
    }
}
