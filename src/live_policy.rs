//! The policy in force while the daemon runs, and following the templates file on disk.
//!
//! A changed file that loads replaces the policy whole (the next reconciliation then sees a new
//! fingerprint and re-evaluates everyone); one that does not load is refused once, and the last
//! good policy stays in force: a broken edit must neither revoke everyone nor stop the daemon that
//! revokes leavers. The file is looked at every tick, so only its size and modification time are
//! read until they change.

use crate::policy::Policy;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// What looking at the templates file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyReload {
    /// The same file (or a refused one already reported).
    Unchanged,
    /// A changed file loaded and is in force now.
    Reloaded { from: String, to: String },
    /// A changed file did not load; the policy in force stays.
    Refused { digest: String, error: String },
}

#[derive(Debug, Default)]
struct Seen {
    /// Size and modification time last read: unchanged, the file is not read again.
    stamp: Option<(u64, SystemTime)>,
    /// The digest of a file that was refused, so it is reported once, not every tick.
    refused: Option<String>,
}

#[derive(Debug)]
pub struct LivePolicy {
    path: PathBuf,
    connectors: Vec<String>,
    current: RwLock<Arc<Policy>>,
    seen: Mutex<Seen>,
}

impl LivePolicy {
    pub fn new(policy: Arc<Policy>, path: &Path, connectors: Vec<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            connectors,
            current: RwLock::new(policy),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a refused file is on disk now, for the `latchkey_policy_reload_refused` gauge.
    pub fn refused(&self) -> bool {
        self.seen().refused.is_some()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look at the templates file and take it when it changed and loads.
    pub fn reload(&self) -> PolicyReload {
        let origin = self.path.display().to_string();
        let stamp = std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.len(), m.modified()?)))
            .ok();
        if stamp.is_some() && stamp == self.seen().stamp {
            return PolicyReload::Unchanged;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => return self.refuse(String::new(), format!("{origin}: {e}")),
        };
        self.seen().stamp = stamp;
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        let current = self.current();
        if digest == current.digest() {
            self.seen().refused = None;
            return PolicyReload::Unchanged;
        }
        match Policy::parse(&text, &origin, &self.connectors) {
            Ok(policy) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
                self.seen().refused = None;
                PolicyReload::Reloaded {
                    from: current.digest().to_string(),
                    to: digest,
                }
            }
            Err(e) => self.refuse(digest, e.to_string()),
        }
    }

    fn refuse(&self, digest: String, error: String) -> PolicyReload {
        let mut seen = self.seen();
        if seen.refused.as_deref() == Some(digest.as_str()) {
            return PolicyReload::Unchanged;
        }
        seen.refused = Some(digest.clone());
        PolicyReload::Refused { digest, error }
    }
}
