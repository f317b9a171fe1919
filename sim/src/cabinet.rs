//! Electronic key cabinet simulator (vendor-apis.md "Electronic key cabinets").
//!
//! Traka-style cabinets publish no REST specification, so this is the plausible API that
//! `connectors/cabinet.toml` is written against: users carrying an external id, card number,
//! active date, expiry and an enabled flag; key-group permissions per user; and an event feed of
//! key-out / key-return / overdue read with a cursor. Auth is a bearer token.
//!
//! Tests act as the people at the cabinet with [`CabinetSim::take_key`] and
//! [`CabinetSim::return_key`]: a key is released only to an enabled, unexpired user holding a
//! permission for the key's group, as a cabinet would.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, GroupSim, SimServer, Vendor, json_error, serve};

/// What stamps the cabinet's events: the simulators' clock (the wall clock by default; a test
/// passes its controlled clock so the events it reads back carry the times it set).
pub use crate::clock::{Clock as EventClock, SharedClock, WallClock};

/// Most events one `GET /events` answers; the client follows the cursor for more.
const EVENT_PAGE: usize = 50;

#[derive(Debug, Clone)]
pub struct CabinetOptions {
    /// Expected bearer token.
    pub token: String,
    /// Key id -> key group, the keys the cabinet holds.
    pub keys: BTreeMap<String, String>,
    /// Stamps event times (`at`).
    pub clock: SharedClock,
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for CabinetOptions {
    fn default() -> Self {
        Self {
            token: "cabinet-sim-token".into(),
            keys: BTreeMap::new(),
            clock: Arc::new(WallClock),
            rate_limit_per_sec: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CabinetUser {
    pub id: i64,
    pub external_id: String,
    pub name: String,
    pub card_number: Option<String>,
    pub active_from: Option<String>,
    pub expires_at: Option<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    pub id: i64,
    pub user_id: i64,
    pub key_group: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CabinetEvent {
    pub id: i64,
    /// `key_out` | `key_return` | `overdue`
    #[serde(rename = "type")]
    pub kind: String,
    pub user_external_id: String,
    pub key_id: String,
    pub key_group: Option<String>,
    pub at: String,
}

#[derive(Debug, Default)]
struct CabinetState {
    users: Vec<CabinetUser>,
    permissions: Vec<Permission>,
    events: Vec<CabinetEvent>,
    /// Key id -> external id of the user holding it.
    out: BTreeMap<String, String>,
    next_id: i64,
    duplicates: u64,
}

#[derive(Debug)]
pub struct CabinetSim {
    state: Mutex<CabinetState>,
    keys: BTreeMap<String, String>,
    clock: SharedClock,
}

impl CabinetSim {
    fn st(&self) -> MutexGuard<'_, CabinetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<CabinetUser> {
        self.st().users.clone()
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.st().permissions.clone()
    }

    pub fn events(&self) -> Vec<CabinetEvent> {
        self.st().events.clone()
    }

    /// Could this person take a key of this group from the cabinet now?
    pub fn has_access(&self, user_external_id: &str, key_group: &str) -> bool {
        let now = self.clock.now();
        let st = self.st();
        st.users
            .iter()
            .find(|u| u.external_id == user_external_id)
            .is_some_and(|u| {
                let unexpired = |at: &Option<String>| {
                    at.as_deref()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .is_none_or(|t| t > now)
                };
                u.enabled
                    && unexpired(&u.expires_at)
                    && st.permissions.iter().any(|p| {
                        p.user_id == u.id && p.key_group == key_group && unexpired(&p.expires_at)
                    })
            })
    }

    /// Who holds the key now, by external id.
    pub fn holder(&self, key_id: &str) -> Option<String> {
        self.st().out.get(key_id).cloned()
    }

    fn record(&self, st: &mut CabinetState, kind: &str, user: &str, key_id: &str) -> i64 {
        st.next_id += 1;
        let id = st.next_id;
        st.events.push(CabinetEvent {
            id,
            kind: kind.into(),
            user_external_id: user.into(),
            key_id: key_id.into(),
            key_group: self.keys.get(key_id).cloned(),
            at: self
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        id
    }

    /// A person takes a key out. Refused (with the reason) unless the key is in the cabinet and the
    /// person may take it. Returns the event id.
    pub fn take_key(&self, user_external_id: &str, key_id: &str) -> Result<i64, String> {
        let Some(group) = self.keys.get(key_id) else {
            return Err(format!("no key {key_id} in this cabinet"));
        };
        if !self.has_access(user_external_id, group) {
            return Err(format!("{user_external_id} may not take {key_id}"));
        }
        let mut st = self.st();
        if let Some(holder) = st.out.get(key_id) {
            return Err(format!("{key_id} is out with {holder}"));
        }
        st.out.insert(key_id.into(), user_external_id.into());
        Ok(self.record(&mut st, "key_out", user_external_id, key_id))
    }

    /// A person puts a key back (anyone may return any key). Returns the event id.
    pub fn return_key(&self, user_external_id: &str, key_id: &str) -> Result<i64, String> {
        let mut st = self.st();
        if st.out.remove(key_id).is_none() {
            return Err(format!("{key_id} is not out"));
        }
        Ok(self.record(&mut st, "key_return", user_external_id, key_id))
    }

    /// The cabinet's overdue report for a key still out. Returns the event id.
    pub fn report_overdue(&self, key_id: &str) -> Result<i64, String> {
        let mut st = self.st();
        let Some(holder) = st.out.get(key_id).cloned() else {
            return Err(format!("{key_id} is not out"));
        };
        Ok(self.record(&mut st, "overdue", &holder, key_id))
    }
}

impl GroupSim for CabinetSim {
    fn duplicates_created(&self) -> u64 {
        self.st().duplicates
    }
    fn memberships(&self) -> usize {
        self.st().permissions.len()
    }
    fn user_count(&self) -> usize {
        self.st().users.len()
    }
}

type Sim = State<Arc<CabinetSim>>;
type Params = Query<HashMap<String, String>>;

fn parse_body(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

fn invalid_json() -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid JSON")
}

fn opt_string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

async fn list_users(State(s): Sim, Query(q): Params) -> Response {
    let ext = q.get("externalId");
    let users: Vec<Value> = s
        .st()
        .users
        .iter()
        .filter(|u| ext.is_none_or(|e| &u.external_id == e))
        .map(|u| json!(u))
        .collect();
    axum::Json(json!({ "users": users })).into_response()
}

async fn create_user(State(s): Sim, body: Bytes) -> Response {
    let Some(v) = parse_body(&body) else {
        return invalid_json();
    };
    let Some(external_id) = opt_string(&v["externalId"]).filter(|e| !e.is_empty()) else {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "externalId is required");
    };
    let mut st = s.st();
    if st.users.iter().any(|u| u.external_id == external_id) {
        st.duplicates += 1;
        return json_error(StatusCode::CONFLICT, "externalId already exists");
    }
    st.next_id += 1;
    let user = CabinetUser {
        id: st.next_id,
        external_id,
        name: opt_string(&v["name"]).unwrap_or_default(),
        card_number: opt_string(&v["cardNumber"]),
        active_from: opt_string(&v["activeFrom"]),
        expires_at: opt_string(&v["expiresAt"]),
        enabled: v["enabled"].as_bool().unwrap_or(true),
    };
    st.users.push(user.clone());
    (StatusCode::CREATED, axum::Json(json!(user))).into_response()
}

async fn patch_user(State(s): Sim, Path(id): Path<i64>, body: Bytes) -> Response {
    let Some(v) = parse_body(&body) else {
        return invalid_json();
    };
    let mut st = s.st();
    let Some(u) = st.users.iter_mut().find(|u| u.id == id) else {
        return json_error(StatusCode::NOT_FOUND, "user not found");
    };
    if let Some(e) = v["enabled"].as_bool() {
        u.enabled = e;
    }
    if v.get("expiresAt").is_some() {
        u.expires_at = opt_string(&v["expiresAt"]);
    }
    axum::Json(json!(u)).into_response()
}

async fn list_permissions(State(s): Sim, Query(q): Params) -> Response {
    let user = q.get("userId").and_then(|v| v.parse::<i64>().ok());
    let group = q.get("keyGroup");
    let items: Vec<Value> = s
        .st()
        .permissions
        .iter()
        .filter(|p| user.is_none_or(|u| p.user_id == u) && group.is_none_or(|g| &p.key_group == g))
        .map(|p| json!(p))
        .collect();
    axum::Json(json!({ "permissions": items })).into_response()
}

async fn create_permission(State(s): Sim, body: Bytes) -> Response {
    let Some(v) = parse_body(&body) else {
        return invalid_json();
    };
    let user_id = v["userId"]
        .as_i64()
        .or_else(|| v["userId"].as_str().and_then(|s| s.parse().ok()));
    let (Some(user_id), Some(key_group)) = (user_id, opt_string(&v["keyGroup"])) else {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "userId and keyGroup are required",
        );
    };
    let mut st = s.st();
    if !st.users.iter().any(|u| u.id == user_id) {
        return json_error(StatusCode::NOT_FOUND, "user not found");
    }
    if let Some(p) = st
        .permissions
        .iter()
        .find(|p| p.user_id == user_id && p.key_group == key_group)
    {
        return (StatusCode::CONFLICT, axum::Json(json!(p))).into_response();
    }
    st.next_id += 1;
    let p = Permission {
        id: st.next_id,
        user_id,
        key_group,
        expires_at: opt_string(&v["expiresAt"]),
    };
    st.permissions.push(p.clone());
    (StatusCode::CREATED, axum::Json(json!(p))).into_response()
}

async fn delete_permission(State(s): Sim, Path(id): Path<String>) -> Response {
    let id: i64 = id.parse().unwrap_or(-1);
    let mut st = s.st();
    let before = st.permissions.len();
    st.permissions.retain(|p| p.id != id);
    if st.permissions.len() == before {
        return json_error(StatusCode::NOT_FOUND, "permission not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /events?after=<cursor>`: events after the cursor, oldest first, and the cursor to ask
/// with next (the last event's id; the same cursor when there is nothing new).
async fn list_events(State(s): Sim, Query(q): Params) -> Response {
    let after = match q.get("after").map(|v| v.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return json_error(StatusCode::BAD_REQUEST, "invalid cursor"),
    };
    let st = s.st();
    let page: Vec<&CabinetEvent> = st
        .events
        .iter()
        .filter(|e| e.id > after)
        .take(EVENT_PAGE)
        .collect();
    let cursor = page.last().map_or(after, |e| e.id);
    axum::Json(json!({ "events": page, "cursor": cursor.to_string() })).into_response()
}

pub async fn start_cabinet(
    listener: TcpListener,
    opts: CabinetOptions,
) -> std::io::Result<SimServer> {
    let sim = Arc::new(CabinetSim {
        state: Mutex::new(CabinetState::default()),
        keys: opts.keys,
        clock: opts.clock,
    });
    let routes = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", axum::routing::patch(patch_user))
        .route(
            "/permissions",
            get(list_permissions).post(create_permission),
        )
        .route("/permissions/{id}", delete(delete_permission))
        .route("/events", get(list_events))
        .with_state(sim.clone());
    let common = CommonOptions {
        token: opts.token,
        rate_limit_per_sec: opts.rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve(listener, common, Vendor::Cabinet(sim), routes).await
}
