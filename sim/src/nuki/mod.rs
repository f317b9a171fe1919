//! Nuki Web API simulator: account users and per-lock authorizations, with
//! the vendor's quirks (vendor-apis.md Nuki) reproduced so a connector's
//! handling of them can be tested.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::{Moment, SharedClock};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, SimServer, Vendor, json_error, serve};

/// vendor-apis.md Nuki: 200 app users and 200 keypad codes per lock.
mod routes;
use routes::{routes, user_json};

const MAX_APP_AUTHS_PER_LOCK: usize = 200;
const MAX_KEYPAD_CODES_PER_LOCK: usize = 200;
const MAX_NAME_CHARS: usize = 32;
const DEFAULT_USER_LIMIT: usize = 100;
const FIRST_ACCOUNT_USER_ID: i64 = 1001;

const TYPE_APP: u8 = 0;
const TYPE_FOB: u8 = 2;
const TYPE_KEYPAD: u8 = 13;

#[derive(Debug, Clone)]
pub struct NukiOptions {
    /// Expected bearer token.
    pub token: String,
    /// Time for a change to reach a lock (vendor-apis.md Nuki: asynchronous
    /// sync). A created auth is not listed until it passes; a deleted one
    /// stays listed, with an `operationId`, until it passes.
    pub sync_delay: Duration,
    /// Per-lock sync delay overriding `sync_delay`: a lock that is offline
    /// and syncs late.
    pub offline_locks: HashMap<i64, Duration>,
    /// What the sync delays run on: the wall clock, or a test's controlled clock.
    pub clock: SharedClock,
    /// Answer 423 to mutations on a lock while a change on it is still syncing.
    pub locked_while_pending: bool,
    /// Let a second auth for the same (lock, accountUserId) be created instead
    /// of 409, and count it, so tests can prove the client's own
    /// find-before-create is what prevents duplicates.
    pub allow_duplicates: bool,
    /// Treat any smartlock id as existing; otherwise only `locks` exist.
    pub auto_create_locks: bool,
    pub locks: Vec<i64>,
    /// Abuse protection: more requests than this in a rolling second get 429
    /// without Retry-After.
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    /// How long a response chosen by `Faults::timeout_rate` is held.
    pub timeout_hold: Duration,
}

impl Default for NukiOptions {
    fn default() -> Self {
        Self {
            token: "nuki-sim-token".to_owned(),
            sync_delay: Duration::ZERO,
            offline_locks: HashMap::new(),
            clock: crate::clock::wall(),
            locked_while_pending: true,
            allow_duplicates: false,
            auto_create_locks: true,
            locks: Vec::new(),
            rate_limit_per_sec: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

/// An account user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSnapshot {
    pub account_user_id: i64,
    pub email: String,
    pub name: String,
    pub language: String,
}

/// An auth as stored, whether or not list responses show it yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthSnapshot {
    pub id: String,
    pub smartlock_id: i64,
    pub account_user_id: Option<i64>,
    pub name: String,
    pub auth_type: u8,
    pub enabled: bool,
    pub remote_allowed: bool,
    pub code: Option<u32>,
    pub allowed_week_days: Option<u8>,
    pub allowed_from_time: Option<u16>,
    pub allowed_until_time: Option<u16>,
    pub allowed_from_date: Option<String>,
    pub allowed_until_date: Option<String>,
    /// Deleted, but still listed until the lock syncs.
    pub pending_delete: bool,
    /// Whether list responses currently include it.
    pub visible: bool,
}

#[derive(Debug, Clone)]
struct Auth {
    id: String,
    smartlock_id: i64,
    account_user_id: Option<i64>,
    auth_type: u8,
    name: String,
    enabled: bool,
    remote_allowed: bool,
    code: Option<u32>,
    allowed_from_date: Option<String>,
    allowed_until_date: Option<String>,
    allowed_week_days: Option<u8>,
    allowed_from_time: Option<u16>,
    allowed_until_time: Option<u16>,
    visible_at: Moment,
    /// Set by DELETE; the auth is purged once this passes.
    gone_at: Option<Moment>,
    /// Operation still syncing to the lock, and when it completes.
    operation: Option<(String, Moment)>,
}

impl Auth {
    fn deleted(&self) -> bool {
        self.gone_at.is_some()
    }

    fn visible(&self, now: Moment) -> bool {
        now >= self.visible_at && self.gone_at.is_none_or(|g| now < g)
    }

    fn to_json(&self, now: Moment) -> Value {
        let mut v = json!({
            "id": self.id,
            "smartlockId": self.smartlock_id,
            "accountUserId": self.account_user_id,
            "type": self.auth_type,
            "name": self.name,
            "enabled": self.enabled,
            "remoteAllowed": self.remote_allowed,
            "allowedFromDate": self.allowed_from_date,
            "allowedUntilDate": self.allowed_until_date,
            "allowedWeekDays": self.allowed_week_days,
            "allowedFromTime": self.allowed_from_time,
            "allowedUntilTime": self.allowed_until_time,
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(code) = self.code {
                obj.insert("code".into(), json!(code));
            }
            if let Some((op, until)) = &self.operation
                && now < *until
            {
                obj.insert("operationId".into(), json!(op));
            }
        }
        v
    }

    fn snapshot(&self, now: Moment) -> AuthSnapshot {
        AuthSnapshot {
            id: self.id.clone(),
            smartlock_id: self.smartlock_id,
            account_user_id: self.account_user_id,
            name: self.name.clone(),
            auth_type: self.auth_type,
            enabled: self.enabled,
            remote_allowed: self.remote_allowed,
            code: self.code,
            allowed_week_days: self.allowed_week_days,
            allowed_from_time: self.allowed_from_time,
            allowed_until_time: self.allowed_until_time,
            allowed_from_date: self.allowed_from_date.clone(),
            allowed_until_date: self.allowed_until_date.clone(),
            pending_delete: self.deleted(),
            visible: self.visible(now),
        }
    }
}

#[derive(Debug, Default)]
struct NukiState {
    users: BTreeMap<i64, UserSnapshot>,
    /// Account users by lower-cased email: Nuki finds one by email at once, and a scan of every
    /// user per lookup (a lower-cased copy of each email) cost the simulator a millisecond a
    /// request at 20,000 users, under the lock every other request waits for.
    by_email: HashMap<String, i64>,
    next_user_id: i64,
    /// Known locks and until when a change on each is still syncing.
    locks: BTreeMap<i64, Option<Moment>>,
    auths: Vec<Auth>,
    next_auth: u64,
    next_operation: u64,
    duplicates_created: u64,
}

impl NukiState {
    fn purge(&mut self, now: Moment) {
        self.auths.retain(|a| a.gone_at.is_none_or(|g| now < g));
    }

    fn live(&self) -> impl Iterator<Item = &Auth> {
        self.auths.iter().filter(|a| !a.deleted())
    }
}

/// Nuki simulator state; reach it through [`SimServer::nuki`].
#[derive(Debug)]
pub struct NukiSim {
    sync_delay: Duration,
    offline_locks: HashMap<i64, Duration>,
    clock: SharedClock,
    locked_while_pending: bool,
    allow_duplicates: bool,
    auto_create_locks: bool,
    state: Mutex<NukiState>,
}

/// A rejected request: status plus `detailMessage`.
struct Reject(StatusCode, String);

impl Reject {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        json_error(self.0, &self.1)
    }
}

type Answer = Result<Response, Reject>;

fn bad_request(msg: impl Into<String>) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, msg)
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid body: {e}")))
}

fn parse_id(raw: &str) -> Result<i64, Reject> {
    raw.parse()
        .map_err(|_| Reject::new(StatusCode::NOT_FOUND, "not found"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    email: Option<String>,
    name: Option<String>,
    language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthBody {
    name: Option<String>,
    #[serde(rename = "type")]
    auth_type: Option<u8>,
    account_user_id: Option<i64>,
    code: Option<u32>,
    enabled: Option<bool>,
    remote_allowed: Option<bool>,
    allowed_from_date: Option<String>,
    allowed_until_date: Option<String>,
    allowed_week_days: Option<u8>,
    allowed_from_time: Option<u16>,
    allowed_until_time: Option<u16>,
}

impl AuthBody {
    fn validate(&self) -> Result<(), Reject> {
        if let Some(name) = &self.name
            && name.chars().count() > MAX_NAME_CHARS
        {
            return Err(bad_request(format!(
                "name longer than {MAX_NAME_CHARS} characters"
            )));
        }
        if self.allowed_week_days.is_some_and(|d| d > 127) {
            return Err(bad_request("allowedWeekDays out of range"));
        }
        let minutes_ok = |m: Option<u16>| m.is_none_or(|m| m <= 1440);
        if !minutes_ok(self.allowed_from_time) || !minutes_ok(self.allowed_until_time) {
            return Err(bad_request("allowed time out of range"));
        }
        if let Some(code) = self.code {
            // vendor-apis.md Nuki: PIN is 6 digits, no 0, not starting "12".
            let s = code.to_string();
            if s.len() != 6 || s.contains('0') || s.starts_with("12") {
                return Err(bad_request("invalid keypad code"));
            }
        }
        Ok(())
    }
}

impl NukiSim {
    fn new(opts: &NukiOptions) -> Self {
        let state = NukiState {
            next_user_id: FIRST_ACCOUNT_USER_ID,
            locks: opts.locks.iter().map(|&l| (l, None)).collect(),
            ..NukiState::default()
        };
        Self {
            sync_delay: opts.sync_delay,
            offline_locks: opts.offline_locks.clone(),
            clock: opts.clock.clone(),
            locked_while_pending: opts.locked_while_pending,
            allow_duplicates: opts.allow_duplicates,
            auto_create_locks: opts.auto_create_locks,
            state: Mutex::new(state),
        }
    }

    /// Locks the state with expired deletions already purged.
    fn state(&self, now: Moment) -> MutexGuard<'_, NukiState> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.purge(now);
        st
    }

    fn delay(&self, lock: i64) -> Duration {
        self.offline_locks
            .get(&lock)
            .copied()
            .unwrap_or(self.sync_delay)
    }

    /// Every stored auth, including ones not yet (or no longer) listed.
    pub fn auths(&self) -> Vec<AuthSnapshot> {
        let now = self.clock.now();
        self.state(now)
            .auths
            .iter()
            .map(|a| a.snapshot(now))
            .collect()
    }

    pub fn users(&self) -> Vec<UserSnapshot> {
        self.state(self.clock.now())
            .users
            .values()
            .cloned()
            .collect()
    }

    /// A live (not deleted) auth exists for the pair, synced or not.
    pub fn holds(&self, smartlock_id: i64, account_user_id: i64) -> bool {
        self.state(self.clock.now())
            .live()
            .any(|a| a.smartlock_id == smartlock_id && a.account_user_id == Some(account_user_id))
    }

    /// Number of (lock, accountUserId) pairs with more than one live auth.
    pub fn duplicate_pairs(&self) -> usize {
        let st = self.state(self.clock.now());
        let mut counts: BTreeMap<(i64, i64), usize> = BTreeMap::new();
        for a in st.live() {
            if let Some(user) = a.account_user_id {
                *counts.entry((a.smartlock_id, user)).or_insert(0) += 1;
            }
        }
        counts.values().filter(|&&n| n > 1).count()
    }

    /// Auths created although one for the same (lock, user) already existed.
    pub fn duplicates_created(&self) -> u64 {
        self.state(self.clock.now()).duplicates_created
    }

    /// Stored auths that are not deleted, synced or not.
    pub fn auths_live(&self) -> usize {
        self.state(self.clock.now()).live().count()
    }

    pub fn user_count(&self) -> usize {
        self.state(self.clock.now()).users.len()
    }

    /// Ensures the lock exists (creating it when allowed) and is not busy.
    fn lock_for_mutation(&self, st: &mut NukiState, lock: i64, now: Moment) -> Result<(), Reject> {
        let pending = match st.locks.get(&lock) {
            Some(p) => *p,
            None if self.auto_create_locks => {
                st.locks.insert(lock, None);
                None
            }
            None => return Err(Reject::new(StatusCode::NOT_FOUND, "smartlock not found")),
        };
        self.check_not_busy(pending, now)
    }

    fn check_not_busy(&self, pending: Option<Moment>, now: Moment) -> Result<(), Reject> {
        if self.locked_while_pending && pending.is_some_and(|until| now < until) {
            // vendor-apis.md Nuki: 423 while an operation is pending.
            return Err(Reject::new(
                StatusCode::LOCKED,
                "locked for another operation",
            ));
        }
        Ok(())
    }

    /// Records a change on a lock and returns the operation id and when the
    /// lock will have synced it.
    fn begin_operation(&self, st: &mut NukiState, lock: i64, now: Moment) -> (String, Moment) {
        let until = crate::clock::after(now, self.delay(lock));
        let entry = st.locks.entry(lock).or_insert(None);
        *entry = Some(entry.map_or(until, |u| u.max(until)));
        st.next_operation += 1;
        (format!("0a{:022x}", st.next_operation), until)
    }

    fn mark_deleted(&self, st: &mut NukiState, index: usize, now: Moment) {
        let lock = st.auths[index].smartlock_id;
        let (op, until) = self.begin_operation(st, lock, now);
        // vendor-apis.md Nuki: DELETE has returned 204 while the auth stayed listed.
        let auth = &mut st.auths[index];
        auth.gone_at = Some(until);
        auth.operation = Some((op, until));
    }

    fn list_users(&self, q: &HashMap<String, String>) -> Answer {
        let number = |key: &str, default: usize| -> Result<usize, Reject> {
            q.get(key).map_or(Ok(default), |v| {
                v.parse().map_err(|_| bad_request(format!("invalid {key}")))
            })
        };
        let offset = number("offset", 0)?;
        let limit = number("limit", DEFAULT_USER_LIMIT)?;
        let email = q
            .get("email")
            .filter(|e| !e.is_empty())
            .map(|e| e.to_lowercase());
        let st = self.state(self.clock.now());
        let found: Box<dyn Iterator<Item = &UserSnapshot>> = match &email {
            Some(e) => Box::new(
                st.by_email
                    .get(e)
                    .and_then(|id| st.users.get(id))
                    .into_iter(),
            ),
            None => Box::new(st.users.values()),
        };
        let users: Vec<Value> = found.skip(offset).take(limit).map(user_json).collect();
        Ok(Json(users).into_response())
    }

    fn create_user(&self, body: &Bytes) -> Answer {
        let b: UserBody = parse_json(body)?;
        let email = b.email.unwrap_or_default().trim().to_owned();
        if email.is_empty() {
            return Err(bad_request("email is required"));
        }
        let mut st = self.state(self.clock.now());
        let lower = email.to_lowercase();
        if st.by_email.contains_key(&lower) {
            return Err(Reject::new(
                StatusCode::CONFLICT,
                "an account user with this email already exists",
            ));
        }
        let id = st.next_user_id;
        st.next_user_id += 1;
        let user = UserSnapshot {
            account_user_id: id,
            email,
            name: b.name.unwrap_or_default(),
            language: b.language.unwrap_or_else(|| "en".to_owned()),
        };
        let out = user_json(&user);
        st.users.insert(id, user);
        st.by_email.insert(lower, id);
        Ok(Json(out).into_response())
    }

    fn delete_user(&self, id: i64) -> Answer {
        let now = self.clock.now();
        let mut st = self.state(now);
        if !st.users.contains_key(&id) {
            return Err(Reject::new(StatusCode::NOT_FOUND, "account user not found"));
        }
        let doomed: Vec<usize> = st
            .auths
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.deleted() && a.account_user_id == Some(id))
            .map(|(i, _)| i)
            .collect();
        // vendor-apis.md Nuki: user deletion may 423 too.
        for &i in &doomed {
            let pending = st.locks.get(&st.auths[i].smartlock_id).copied().flatten();
            self.check_not_busy(pending, now)?;
        }
        if let Some(gone) = st.users.remove(&id) {
            st.by_email.remove(&gone.email.to_lowercase());
        }
        for i in doomed {
            self.mark_deleted(&mut st, i, now);
        }
        st.purge(now);
        no_content()
    }

    fn create_auth(&self, lock: i64, body: &Bytes) -> Answer {
        let b: AuthBody = parse_json(body)?;
        b.validate()?;
        let name = b.name.clone().unwrap_or_default();
        if name.trim().is_empty() {
            return Err(bad_request("name is required"));
        }
        let auth_type = b.auth_type.unwrap_or(TYPE_APP);
        if ![TYPE_APP, TYPE_FOB, TYPE_KEYPAD].contains(&auth_type) {
            return Err(bad_request("unsupported type"));
        }
        if auth_type != TYPE_KEYPAD && b.account_user_id.is_none() {
            return Err(bad_request("accountUserId is required"));
        }
        if auth_type == TYPE_KEYPAD && b.code.is_none() {
            return Err(bad_request("code is required for keypad auths"));
        }
        let now = self.clock.now();
        let mut st = self.state(now);
        self.lock_for_mutation(&mut st, lock, now)?;
        if let Some(user) = b.account_user_id
            && !st.users.contains_key(&user)
        {
            return Err(bad_request("unknown accountUserId"));
        }
        let on_lock = |t: u8| {
            st.live()
                .filter(|a| a.smartlock_id == lock && a.auth_type == t)
                .count()
        };
        let full = match auth_type {
            TYPE_APP => on_lock(TYPE_APP) >= MAX_APP_AUTHS_PER_LOCK,
            TYPE_KEYPAD => on_lock(TYPE_KEYPAD) >= MAX_KEYPAD_CODES_PER_LOCK,
            _ => false,
        };
        if full {
            return Err(Reject::new(
                StatusCode::PAYMENT_REQUIRED,
                "maximum number of authorizations reached",
            ));
        }
        let duplicate = b.account_user_id.is_some_and(|user| {
            st.live()
                .any(|a| a.smartlock_id == lock && a.account_user_id == Some(user))
        });
        if duplicate && !self.allow_duplicates {
            // vendor-apis.md Nuki: one auth per user per lock, repeat -> 409.
            return Err(Reject::new(
                StatusCode::CONFLICT,
                "an authorization for this user already exists",
            ));
        }
        if let Some(code) = b.code
            && st
                .live()
                .any(|a| a.smartlock_id == lock && a.code == Some(code))
        {
            return Err(Reject::new(StatusCode::CONFLICT, "code already in use"));
        }
        let (op, until) = self.begin_operation(&mut st, lock, now);
        st.next_auth += 1;
        let id = format!("5f{:022x}", st.next_auth);
        if duplicate {
            st.duplicates_created += 1;
        }
        st.auths.push(Auth {
            id,
            smartlock_id: lock,
            account_user_id: b.account_user_id,
            auth_type,
            name,
            enabled: b.enabled.unwrap_or(true),
            remote_allowed: b.remote_allowed.unwrap_or(false),
            code: b.code,
            allowed_from_date: b.allowed_from_date,
            allowed_until_date: b.allowed_until_date,
            allowed_week_days: b.allowed_week_days,
            allowed_from_time: b.allowed_from_time,
            allowed_until_time: b.allowed_until_time,
            // vendor-apis.md Nuki: asynchronous; not listed until synced.
            visible_at: until,
            gone_at: None,
            operation: Some((op, until)),
        });
        // vendor-apis.md Nuki: 204, empty body, no id.
        no_content()
    }

    fn find_live(st: &NukiState, lock: i64, auth_id: &str) -> Result<usize, Reject> {
        st.auths
            .iter()
            .position(|a| a.smartlock_id == lock && a.id == auth_id && !a.deleted())
            .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, "authorization not found"))
    }

    fn update_auth(&self, lock: i64, auth_id: &str, body: &Bytes) -> Answer {
        let b: AuthBody = parse_json(body)?;
        b.validate()?;
        let now = self.clock.now();
        let mut st = self.state(now);
        let index = Self::find_live(&st, lock, auth_id)?;
        self.lock_for_mutation(&mut st, lock, now)?;
        if let Some(name) = &b.name
            && name.trim().is_empty()
        {
            return Err(bad_request("name must not be empty"));
        }
        if let Some(code) = b.code
            && st
                .live()
                .any(|a| a.smartlock_id == lock && a.code == Some(code) && a.id != auth_id)
        {
            return Err(Reject::new(StatusCode::CONFLICT, "code already in use"));
        }
        let (op, until) = self.begin_operation(&mut st, lock, now);
        let a = &mut st.auths[index];
        if let Some(name) = b.name {
            a.name = name;
        }
        if let Some(enabled) = b.enabled {
            a.enabled = enabled;
        }
        if let Some(remote) = b.remote_allowed {
            a.remote_allowed = remote;
        }
        if b.code.is_some() {
            a.code = b.code;
        }
        // vendor-apis.md Nuki: a partial body silently clears time
        // restrictions, so absent fields overwrite rather than keep.
        a.allowed_from_date = b.allowed_from_date;
        a.allowed_until_date = b.allowed_until_date;
        a.allowed_week_days = b.allowed_week_days;
        a.allowed_from_time = b.allowed_from_time;
        a.allowed_until_time = b.allowed_until_time;
        a.operation = Some((op, until));
        no_content()
    }

    fn delete_auth(&self, lock: i64, auth_id: &str) -> Answer {
        let now = self.clock.now();
        let mut st = self.state(now);
        let index = Self::find_live(&st, lock, auth_id)?;
        self.lock_for_mutation(&mut st, lock, now)?;
        self.mark_deleted(&mut st, index, now);
        st.purge(now);
        no_content()
    }

    /// Unknown or already deleted ids in the list are skipped, not an error.
    fn bulk_delete(&self, body: &Bytes) -> Answer {
        let ids: Vec<String> = parse_json(body)?;
        let now = self.clock.now();
        let mut st = self.state(now);
        let targets: Vec<usize> = st
            .auths
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.deleted() && ids.contains(&a.id))
            .map(|(i, _)| i)
            .collect();
        for &i in &targets {
            let pending = st.locks.get(&st.auths[i].smartlock_id).copied().flatten();
            self.check_not_busy(pending, now)?;
        }
        for i in targets {
            self.mark_deleted(&mut st, i, now);
        }
        st.purge(now);
        no_content()
    }

    fn list_lock_auths(&self, lock: i64) -> Answer {
        let now = self.clock.now();
        let st = self.state(now);
        if !self.auto_create_locks && !st.locks.contains_key(&lock) {
            return Err(Reject::new(StatusCode::NOT_FOUND, "smartlock not found"));
        }
        let out: Vec<Value> = st
            .auths
            .iter()
            .filter(|a| a.smartlock_id == lock && a.visible(now))
            .map(|a| a.to_json(now))
            .collect();
        Ok(Json(out).into_response())
    }

    fn list_auths(&self, q: &HashMap<String, String>) -> Answer {
        let user = q
            .get("accountUserId")
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| bad_request("invalid accountUserId"))
            })
            .transpose()?;
        let types = q
            .get("types")
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.split(',')
                    .map(|t| t.trim().parse::<u8>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad_request("invalid types"))
            })
            .transpose()?;
        let now = self.clock.now();
        let st = self.state(now);
        let out: Vec<Value> = st
            .auths
            .iter()
            .filter(|a| a.visible(now))
            .filter(|a| user.is_none_or(|u| a.account_user_id == Some(u)))
            .filter(|a| types.as_ref().is_none_or(|t| t.contains(&a.auth_type)))
            .map(|a| a.to_json(now))
            .collect();
        Ok(Json(out).into_response())
    }
}

/// Serves a Nuki Web API simulator on `listener`.
pub async fn start_nuki(listener: TcpListener, opts: NukiOptions) -> std::io::Result<SimServer> {
    let sim = Arc::new(NukiSim::new(&opts));
    let common = CommonOptions {
        token: opts.token,
        rate_limit_per_sec: opts.rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve(listener, common, Vendor::Nuki(sim.clone()), routes(sim)).await
}

#[cfg(test)]
mod tests;
