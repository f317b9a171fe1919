//! Mechanical keys: the built-in `manual` connector. There is no vendor API (vendor-apis.md,
//! "Mechanical keys: no API at all"), so issuing a key creates a hand-over task and revoking it a
//! return task for a person, and the command stays `confirming` until someone records the task done
//! with `latchkey keys handed-over` / `latchkey keys returned`. A revocation's latency therefore
//! runs until the key is checked in. A return not recorded by its due time raises an overdue alert.

use super::{Connector, ConnectorError, GrantRequest, Outcome, RetryPolicy};
use crate::audit;
use crate::clock::{SharedClock, from_micros, to_micros};
use crate::config::{Config, ConnectorKind, ManualConfig};
use crate::model::{Action, CommandStatus, GrantState};
use crate::store::{self, KeyTaskRow, Store, StoreError};
use crate::telemetry::metrics::{Finished, Metrics};
use sqlx::AnyConnection;
use std::sync::OnceLock;
use std::time::Duration;

pub const HAND_OVER: &str = "hand_over";
pub const RETURN: &str = "return";

#[derive(Debug)]
pub struct ManualConnector {
    name: String,
    settings: ManualConfig,
    state: OnceLock<(Store, SharedClock)>,
}

impl ManualConnector {
    pub fn new(name: &str, settings: &ManualConfig) -> Self {
        Self {
            name: name.to_string(),
            settings: settings.clone(),
            state: OnceLock::new(),
        }
    }

    fn state(&self) -> Result<&(Store, SharedClock), ConnectorError> {
        self.state.get().ok_or_else(|| ConnectorError::Permanent {
            vendor: self.name.clone(),
            message: "manual connector used before the store was attached".into(),
        })
    }

    fn db(&self, e: StoreError) -> ConnectorError {
        // The database is latchkey's own: a failure is worth retrying, like a vendor's 503.
        ConnectorError::Transient {
            vendor: self.name.clone(),
            message: format!("key task store: {e}"),
            retry_after: None,
        }
    }

    async fn act(
        &self,
        req: &GrantRequest,
        action: Action,
        create: bool,
    ) -> Result<Outcome, ConnectorError> {
        let (store, clock) = self.state()?;
        let now = to_micros(clock.now());
        let mut tx = store.begin_write().await.map_err(|e| self.db(e))?;
        let outcome = self
            .act_in(&mut tx, req, action, create, now)
            .await
            .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e.into()))?;
        Ok(outcome)
    }

    async fn act_in(
        &self,
        conn: &mut AnyConnection,
        req: &GrantRequest,
        action: Action,
        create: bool,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let tasks = LatestTasks::load(conn, &self.name, &req.person.key, &req.target).await?;
        match action {
            Action::Issue => self.issue_in(conn, req, tasks, create, now).await,
            Action::Revoke => self.revoke_in(conn, req, tasks, create, now).await,
        }
    }

    /// Issue: confirmed once the key is handed over. `create`: cancel a moot return, or create the
    /// hand-over task.
    async fn issue_in(
        &self,
        conn: &mut AnyConnection,
        req: &GrantRequest,
        tasks: LatestTasks,
        create: bool,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let holds = tasks.holds();
        let LatestTasks { hand, ret } = tasks;
        if newer(&ret, &hand) && open(&ret) {
            // Entitled again before the key came back: they keep it, the return is moot.
            if create {
                if let Some(r) = &ret {
                    store::close_key_task(conn, r.id, "cancelled", now, "latchkey").await?;
                    self.audit_task(conn, now, "key.return_cancelled", r)
                        .await?;
                }
                return Ok(confirmed());
            }
            return Ok(pending(ret.map(|r| r.id)));
        }
        Ok(if holds {
            confirmed()
        } else if open(&hand) || !create {
            pending(hand.map(|h| h.id))
        } else {
            let id = store::create_key_task(
                conn,
                &self.name,
                &req.person.key,
                &req.target,
                HAND_OVER,
                now,
                None,
            )
            .await?;
            self.audit_new(conn, now, id, HAND_OVER, req, None).await?;
            pending(Some(id))
        })
    }

    /// Revoke: confirmed once the key is back (or was never handed over). `create`: cancel a
    /// hand-over that never happened, or create the return task, due after `return_due_hours`.
    async fn revoke_in(
        &self,
        conn: &mut AnyConnection,
        req: &GrantRequest,
        tasks: LatestTasks,
        create: bool,
        now: i64,
    ) -> Result<Outcome, StoreError> {
        let holds = tasks.holds();
        let LatestTasks { hand, ret } = tasks;
        if open(&hand) && newer(&hand, &ret) {
            // Never handed over: nothing to take back.
            if create && let Some(h) = &hand {
                store::close_key_task(conn, h.id, "cancelled", now, "latchkey").await?;
                self.audit_task(conn, now, "key.hand_over_cancelled", h)
                    .await?;
                return Ok(confirmed());
            }
            return Ok(pending(hand.map(|h| h.id)));
        }
        Ok(if !holds {
            confirmed()
        } else if open(&ret) && newer(&ret, &hand) || !create {
            pending(ret.map(|r| r.id))
        } else {
            let due = now + (self.settings.return_due_hours * 3_600_000_000.0) as i64;
            let id = store::create_key_task(
                conn,
                &self.name,
                &req.person.key,
                &req.target,
                RETURN,
                now,
                Some(due),
            )
            .await?;
            self.audit_new(conn, now, id, RETURN, req, Some(due))
                .await?;
            pending(Some(id))
        })
    }

    async fn audit_new(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        id: i64,
        kind: &str,
        req: &GrantRequest,
        due: Option<i64>,
    ) -> Result<(), StoreError> {
        audit::append(
            conn,
            now,
            "dispatcher",
            &format!("key.{kind}_task"),
            &req.person.key,
            &serde_json::json!({
                "task": id, "connector": self.name, "target": req.target,
                "credential": req.credential, "due_at": due.map(from_micros),
            }),
        )
        .await?;
        Ok(())
    }

    async fn audit_task(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        action: &str,
        t: &KeyTaskRow,
    ) -> Result<(), StoreError> {
        audit::append(
            conn,
            now,
            "dispatcher",
            action,
            &t.identity_key,
            &serde_json::json!({"task": t.id, "connector": t.connector, "target": t.target}),
        )
        .await?;
        Ok(())
    }
}

/// A person's latest hand-over and return task for one key.
struct LatestTasks {
    hand: Option<KeyTaskRow>,
    ret: Option<KeyTaskRow>,
}

impl LatestTasks {
    async fn load(
        conn: &mut AnyConnection,
        connector: &str,
        key: &str,
        target: &str,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            hand: store::latest_key_task(conn, connector, key, target, HAND_OVER).await?,
            ret: store::latest_key_task(conn, connector, key, target, RETURN).await?,
        })
    }

    /// The person holds the key once a hand-over is recorded and no later return is.
    fn holds(&self) -> bool {
        done(&self.hand) && !(newer(&self.ret, &self.hand) && done(&self.ret))
    }
}

/// `a` exists and is later than `b`.
fn newer(a: &Option<KeyTaskRow>, b: &Option<KeyTaskRow>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.id > b.id,
        (Some(_), None) => true,
        _ => false,
    }
}

fn open(t: &Option<KeyTaskRow>) -> bool {
    t.as_ref().is_some_and(|t| t.status == "open")
}

fn done(t: &Option<KeyTaskRow>) -> bool {
    t.as_ref().is_some_and(|t| t.status == "done")
}

fn confirmed() -> Outcome {
    Outcome::Confirmed {
        person_ref: None,
        grant_ref: None,
    }
}

/// Waiting on a person: the task's id is the grant's reference.
fn pending(id: Option<i64>) -> Outcome {
    Outcome::Pending {
        person_ref: None,
        grant_ref: id.map(|i| i.to_string()),
    }
}

#[async_trait::async_trait]
impl Connector for ManualConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            // A person takes as long as they take: a task is never re-created for being slow (the
            // overdue alert is how slowness is raised).
            confirm_deadline: Duration::from_secs(10 * 365 * 24 * 3600),
            confirm_recheck: Duration::from_secs(300),
        }
    }

    fn rate_limit(&self) -> (u32, u32) {
        (1000, 1000)
    }

    fn attach_store(&self, store: Store, clock: SharedClock) {
        let _ = self.state.set((store, clock));
    }

    async fn issue(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        self.act(req, Action::Issue, true).await
    }

    async fn revoke(&self, req: &GrantRequest) -> Result<Outcome, ConnectorError> {
        self.act(req, Action::Revoke, true).await
    }

    async fn confirm(&self, req: &GrantRequest, action: Action) -> Result<Outcome, ConnectorError> {
        self.act(req, action, false).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no key task {0} (see `latchkey keys list`)")]
    NoSuchTask(i64),
    #[error("key task {id} is a {kind} task, not a {expected} task")]
    WrongKind {
        id: i64,
        kind: String,
        expected: &'static str,
    },
    #[error("key task {id} is {status} already")]
    NotOpen { id: i64, status: String },
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Store(e.into())
    }
}

/// Record that a person handed a key over (`kind` = hand_over) or checked it in (`return`), by
/// whom and when. The command waiting on the task finishes in the same transaction, confirmed at
/// `at`: a mechanical key's revocation latency ends when the key is back.
pub async fn record(
    store: &Store,
    metrics: Option<&Metrics>,
    id: i64,
    expected: &'static str,
    by: &str,
    at: i64,
) -> Result<KeyTaskRow, KeyError> {
    let mut tx = store.begin_write().await?;
    let task = close_task(&mut tx, id, expected, by, at).await?;
    let action = if expected == RETURN {
        Action::Revoke
    } else {
        Action::Issue
    };
    let cmd = store::open_command_for(
        &mut tx,
        &task.connector,
        &task.identity_key,
        &task.target,
        action,
    )
    .await?;
    let finished = match &cmd {
        Some(c) => finish_command(&mut tx, c, expected, by, at).await?,
        None => None,
    };
    audit::append(
        &mut tx,
        at,
        by,
        if expected == RETURN {
            "key.returned"
        } else {
            "key.handed_over"
        },
        &task.identity_key,
        &serde_json::json!({
            "task": id, "connector": task.connector, "target": task.target, "by": by,
            "command": cmd.as_ref().map(|c| c.id), "due_at": task.due_at.map(from_micros),
        }),
    )
    .await?;
    tx.commit().await?;
    if let (Some(m), Some(f)) = (metrics, &finished) {
        m.command_finished(f, Finished::Done);
    }
    Ok(KeyTaskRow {
        status: "done".into(),
        done_at: Some(at),
        done_by: Some(by.to_string()),
        ..task
    })
}

/// Close an open task of the kind expected as done; the task as it was before.
async fn close_task(
    conn: &mut AnyConnection,
    id: i64,
    expected: &'static str,
    by: &str,
    at: i64,
) -> Result<KeyTaskRow, KeyError> {
    let task = store::key_task(conn, id)
        .await?
        .ok_or(KeyError::NoSuchTask(id))?;
    if task.kind != expected {
        return Err(KeyError::WrongKind {
            id,
            kind: task.kind,
            expected,
        });
    }
    if !store::close_key_task(conn, id, "done", at, by).await? {
        return Err(KeyError::NotOpen {
            id,
            status: task.status,
        });
    }
    Ok(task)
}

/// Finish the command waiting on the task, confirmed at `at`: the grant observed absent after a
/// return, present after a hand-over. The command as finished, unless it was finished already.
async fn finish_command(
    conn: &mut AnyConnection,
    c: &store::CommandRow,
    expected: &'static str,
    by: &str,
    at: i64,
) -> Result<Option<store::CommandRow>, KeyError> {
    if !store::complete_command(conn, c.id, at).await? {
        return Ok(None);
    }
    let observed = if expected == RETURN {
        GrantState::Absent
    } else {
        GrantState::Present
    };
    store::observe_grant(conn, c, observed, None, at).await?;
    audit::append(
        conn,
        at,
        by,
        "command.done",
        &c.identity_key,
        &serde_json::json!({
            "command": c.id, "action": c.action, "connector": c.connector, "target": c.target,
            "attempts": c.attempts, "end_to_end_ms": (at - c.trigger_at) as f64 / 1000.0,
        }),
    )
    .await?;
    Ok(Some(store::CommandRow {
        status: CommandStatus::Done,
        dispatched_at: c.dispatched_at.or(Some(at)),
        confirmed_at: Some(at),
        ..c.clone()
    }))
}

/// Open and overdue return tasks after an overdue check, and the alerts sent by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverdueReport {
    pub open: i64,
    pub overdue: i64,
    pub alerted: Vec<i64>,
}

/// Raise an alert (audit record, and a POST to the connector's `overdue_webhook`) once for each
/// return task past its due time, and set the key-return gauges. A webhook that fails is tried
/// again at the next check: the task is marked alerted only after it accepted the alert.
pub async fn check_overdue(
    store: &Store,
    config: &Config,
    metrics: &Metrics,
    client: &reqwest::Client,
    now: i64,
) -> Result<OverdueReport, KeyError> {
    let mut report = OverdueReport::default();
    for t in store::open_key_tasks(store.pool()).await? {
        if t.kind != RETURN {
            continue;
        }
        report.open += 1;
        let Some(due) = t.due_at.filter(|d| *d <= now) else {
            continue;
        };
        report.overdue += 1;
        if t.overdue_alerted_at.is_some() {
            continue;
        }
        let webhook = config
            .connectors
            .get(&t.connector)
            .filter(|c| c.kind == ConnectorKind::Manual)
            .and_then(|c| c.manual.overdue_webhook.clone());
        let body = serde_json::json!({
            "event": "key_return_overdue", "task": t.id, "person": t.identity_key,
            "connector": t.connector, "target": t.target,
            "created_at": from_micros(t.created_at), "due_at": from_micros(due),
        });
        if let Some(url) = &webhook {
            let sent = client
                .post(url)
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                tracing::warn!(task = t.id, error = %e, "overdue key alert not delivered; will retry");
                continue;
            }
        }
        let mut tx = store.begin_write().await?;
        store::mark_key_task_alerted(&mut tx, t.id, now).await?;
        audit::append(
            &mut tx,
            now,
            "scheduler",
            "key.return_overdue",
            &t.identity_key,
            &serde_json::json!({"task": t.id, "connector": t.connector, "target": t.target,
                "due_at": from_micros(due), "webhook": webhook.is_some()}),
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(task = t.id, person = %t.identity_key, target = %t.target, "mechanical key return overdue");
        report.alerted.push(t.id);
    }
    metrics.set_key_returns(report.open, report.overdue);
    Ok(report)
}
