//! Getting the outbox moving again: what a start-up re-derives (leases of this replica's dead
//! previous incarnation, breaker states, retry times past the cap), the command of a worker that
//! panicked, and dead letters re-driven by an operator or by a connector's recovery. Every step
//! that moves a command is audited.

use crate::audit;
use crate::model::{CommandId, CommandStatus};
use crate::store::{self, CommandRow, Store, StoreError};

/// Which dead letters to put back in the queue.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Every dead letter, optionally of one connector and one action (`issue` | `revoke`).
    All {
        connector: Option<&'a str>,
        action: Option<&'a str>,
    },
    /// These ids, which must all be dead letters (of `connector`, when given).
    Ids {
        ids: &'a [CommandId],
        connector: Option<&'a str>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("not dead letters{}: {}", connector.as_ref().map(|c| format!(" of connector `{c}`")).unwrap_or_default(), ids.iter().map(|i| format!("#{i}")).collect::<Vec<_>>().join(", "))]
    NotFound {
        ids: Vec<CommandId>,
        connector: Option<String>,
    },
}

/// Put dead letters back in the queue, each audited with `actor` and `reason`. With ids, nothing
/// moves unless every id is a dead letter. Returns the commands re-queued, as they were.
pub async fn redrive(
    store: &Store,
    now: i64,
    actor: &str,
    reason: &str,
    selection: Selection<'_>,
) -> Result<Vec<CommandRow>, RedriveError> {
    let mut tx = store.begin_write().await?;
    let chosen = match selection {
        Selection::All { connector, action } => {
            store::dead_letters(&mut tx, connector, action).await?
        }
        Selection::Ids { ids, connector } => {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for &id in ids {
                match store::command(&mut tx, id).await? {
                    Some(c)
                        if c.status == CommandStatus::Dead
                            && connector.is_none_or(|n| n == c.connector) =>
                    {
                        found.push(c)
                    }
                    _ => missing.push(id),
                }
            }
            if !missing.is_empty() {
                tx.rollback().await.map_err(StoreError::from)?;
                return Err(RedriveError::NotFound {
                    ids: missing,
                    connector: connector.map(str::to_string),
                });
            }
            found
        }
    };
    let mut moved = Vec::new();
    for c in chosen {
        if !store::requeue_dead(&mut tx, c.id, now).await? {
            continue;
        }
        audit::append(
            &mut tx,
            now,
            actor,
            "command.redriven",
            &c.identity_key,
            &serde_json::json!({
                "command": c.id, "action": c.action, "connector": c.connector, "target": c.target,
                "attempts": c.attempts, "last_error": c.last_error, "reason": reason,
            }),
        )
        .await?;
        moved.push(c);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(moved)
}

/// Release every command `owner` holds in flight, at once and audited (its worker is gone).
/// Returns the ids released.
pub async fn release_owner(
    store: &Store,
    owner: &str,
    now: i64,
    why: &str,
) -> Result<Vec<CommandId>, StoreError> {
    let mut tx = store.begin_write().await?;
    let mut released = Vec::new();
    for id in store::leased_by(&mut tx, owner).await? {
        if store::release_lease(&mut tx, id, owner, now, why).await? {
            audit::append(
                &mut tx,
                now,
                "dispatcher",
                "command.released",
                &id.to_string(),
                &serde_json::json!({"command": id, "lease_owner": owner, "reason": why}),
            )
            .await?;
            released.push(id);
        }
    }
    tx.commit().await?;
    Ok(released)
}

/// The lease owner prefix of this process: instance, PID and host, so a restart can tell its own
/// previous incarnation (same instance and host, PID gone) from a live replica.
pub fn incarnation(instance: &str, pid: u32, host: &str) -> String {
    format!("{instance}-{pid}@{host}")
}

/// The host's name, when the system tells it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Whether a process of this host is gone (or a zombie). Unknowable without `/proc`: then no.
fn pid_dead(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// The lease owner of a worker of a previous incarnation of this replica (same instance, same
/// host, another PID that is no longer running)?
pub fn owned_by_dead_incarnation(owner: &str, instance: &str, host: &str, own_pid: u32) -> bool {
    let head = owner.split('/').next().unwrap_or_default();
    let Some((inst_pid, owner_host)) = head.rsplit_once('@') else {
        return false;
    };
    let Some(pid) = inst_pid
        .strip_prefix(instance)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    owner_host == host && pid != own_pid && pid_dead(pid)
}

/// Release the leases of this replica's dead previous incarnations. Returns how many.
pub async fn release_dead_incarnations(
    store: &Store,
    instance: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let Some(host) = hostname() else {
        return Ok(0);
    };
    let own = std::process::id();
    let mut owners: Vec<String> = store::inflight_leases(store.pool())
        .await?
        .into_iter()
        .map(|(_, owner)| owner)
        .filter(|o| owned_by_dead_incarnation(o, instance, &host, own))
        .collect();
    owners.sort();
    owners.dedup();
    let mut n = 0;
    for owner in owners {
        let why = format!("leased by {owner}, a previous run of this replica that is gone");
        n += release_owner(store, &owner, now, &why).await?.len();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_pid_of_the_same_instance_and_host_counts() {
        let own = std::process::id();
        let host = "h1";
        // PID 0 is never a user process: /proc/0 does not exist.
        assert!(owned_by_dead_incarnation(
            "latchkey-0-0@h1/nuki/3",
            "latchkey-0",
            host,
            own
        ));
        // This process is alive.
        let me = format!("latchkey-0-{own}@h1/nuki/0");
        assert!(!owned_by_dead_incarnation(&me, "latchkey-0", host, own + 1));
        // Another host, another instance, an older owner format, a test worker.
        assert!(!owned_by_dead_incarnation(
            "latchkey-0-0@h2/nuki/0",
            "latchkey-0",
            host,
            own
        ));
        assert!(!owned_by_dead_incarnation(
            "latchkey-1-0@h1/nuki/0",
            "latchkey-0",
            host,
            own
        ));
        assert!(!owned_by_dead_incarnation(
            "latchkey-0-0/nuki/0",
            "latchkey-0",
            host,
            own
        ));
        assert!(!owned_by_dead_incarnation(
            "test-worker",
            "latchkey-0",
            host,
            own
        ));
        assert!(!owned_by_dead_incarnation(
            "latchkey-0-0@h1/nuki/0",
            "latchkey",
            host,
            own
        ));
    }
}
