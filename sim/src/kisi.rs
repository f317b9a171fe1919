//! Kisi API simulator: users and group role assignments (vendor-apis.md Kisi).
//!
//! Auth is `Authorization: KISI-LOGIN <api_key>`; lists page with `limit`/`offset` and announce
//! the window in `X-Collection-Range: start-end/count`. Kisi documents neither a rate limit nor
//! what a duplicate assignment does ([-]): the simulator answers 429 over its per-second limit and
//! accepts a duplicate assignment, counting it, so a test proves the client checks before create.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimServer, Vendor, serve_gated};

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

#[derive(Debug, Clone)]
pub struct KisiOptions {
    pub api_key: String,
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for KisiOptions {
    fn default() -> Self {
        Self {
            api_key: "kisi-sim-key".into(),
            rate_limit_per_sec: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KisiUser {
    pub id: i64,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleAssignment {
    pub id: i64,
    pub user_id: i64,
    pub group_id: i64,
    pub role_id: String,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
}

#[derive(Debug, Default)]
struct State_ {
    users: Vec<KisiUser>,
    assignments: Vec<RoleAssignment>,
    next_id: i64,
    duplicates: u64,
}

#[derive(Debug)]
pub struct KisiSim {
    state: Mutex<State_>,
}

impl KisiSim {
    fn st(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<KisiUser> {
        self.st().users.clone()
    }

    pub fn assignments(&self) -> Vec<RoleAssignment> {
        self.st().assignments.clone()
    }

    pub fn holds(&self, group_id: i64, user_id: i64) -> bool {
        self.st()
            .assignments
            .iter()
            .any(|a| a.group_id == group_id && a.user_id == user_id)
    }

    /// Assign directly, as an administrator in the Kisi dashboard would.
    pub fn assign_directly(&self, user_id: i64, group_id: i64) -> i64 {
        let mut st = self.st();
        st.next_id += 1;
        let id = st.next_id;
        st.assignments.push(RoleAssignment {
            id,
            user_id,
            group_id,
            role_id: "group_basic".into(),
            valid_from: None,
            valid_until: None,
        });
        id
    }
}

impl GroupSim for KisiSim {
    fn duplicates_created(&self) -> u64 {
        self.st().duplicates
    }
    fn memberships(&self) -> usize {
        self.st().assignments.len()
    }
    fn user_count(&self) -> usize {
        self.st().users.len()
    }
}

/// Kisi's error shape: `{code, error}` (vendor-apis.md Kisi).
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"code": code, "error": message}))).into_response()
}

/// One page of `items` with Kisi's `X-Collection-Range: start-end/count`.
fn page(items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    let limit = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count = items.len();
    let slice: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let range = if slice.is_empty() {
        format!("*/{count}")
    } else {
        format!("{offset}-{}/{count}", offset + slice.len() - 1)
    };
    let mut resp = axum::Json(Value::Array(slice)).into_response();
    if let Ok(v) = HeaderValue::from_str(&range) {
        resp.headers_mut().insert("x-collection-range", v);
    }
    resp
}

type Sim = State<Arc<KisiSim>>;
type Params = Query<HashMap<String, String>>;

async fn list_users(State(s): Sim, Query(q): Params) -> Response {
    let needle = q.get("query").map(|v| v.to_lowercase());
    let items = s
        .st()
        .users
        .iter()
        .filter(|u| {
            needle
                .as_ref()
                .is_none_or(|n| u.email.to_lowercase().contains(n) || u.name.contains(n))
        })
        .map(|u| json!(u))
        .collect();
    page(items, &q)
}

async fn create_user(State(s): Sim, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
    };
    let Some(email) = v["user"]["email"].as_str().map(str::to_owned) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "email is required",
        );
    };
    let mut st = s.st();
    if st
        .users
        .iter()
        .any(|u| u.email.eq_ignore_ascii_case(&email))
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "email has already been taken",
        );
    }
    st.next_id += 1;
    let user = KisiUser {
        id: st.next_id,
        email,
        name: v["user"]["name"].as_str().unwrap_or_default().to_owned(),
    };
    st.users.push(user.clone());
    axum::Json(json!(user)).into_response()
}

async fn list_assignments(State(s): Sim, Query(q): Params) -> Response {
    let user = q.get("user_id").and_then(|v| v.parse::<i64>().ok());
    let group = q.get("group_id").and_then(|v| v.parse::<i64>().ok());
    let items = s
        .st()
        .assignments
        .iter()
        .filter(|a| user.is_none_or(|u| a.user_id == u) && group.is_none_or(|g| a.group_id == g))
        .map(|a| json!(a))
        .collect();
    page(items, &q)
}

async fn create_assignment(State(s): Sim, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "invalid JSON");
    };
    let ra = &v["role_assignment"];
    let as_id = |x: &Value| {
        x.as_i64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    };
    let (Some(user_id), Some(group_id)) = (as_id(&ra["user_id"]), as_id(&ra["group_id"])) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "user_id and group_id are required",
        );
    };
    let mut st = s.st();
    if !st.users.iter().any(|u| u.id == user_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "user not found");
    }
    if st
        .assignments
        .iter()
        .any(|a| a.user_id == user_id && a.group_id == group_id)
    {
        st.duplicates += 1;
    }
    st.next_id += 1;
    let a = RoleAssignment {
        id: st.next_id,
        user_id,
        group_id,
        role_id: ra["role_id"].as_str().unwrap_or("group_basic").to_owned(),
        valid_from: ra["valid_from"].as_str().map(str::to_owned),
        valid_until: ra["valid_until"].as_str().map(str::to_owned),
    };
    st.assignments.push(a.clone());
    axum::Json(json!(a)).into_response()
}

async fn delete_assignment(State(s): Sim, Path(id): Path<String>) -> Response {
    let id: i64 = id.parse().unwrap_or(-1);
    let mut st = s.st();
    let before = st.assignments.len();
    st.assignments.retain(|a| a.id != id);
    if st.assignments.len() == before {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "role assignment not found",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn start_kisi(listener: TcpListener, opts: KisiOptions) -> std::io::Result<SimServer> {
    let sim = Arc::new(KisiSim {
        state: Mutex::new(State_::default()),
    });
    let expected = format!("KISI-LOGIN {}", opts.api_key);
    let gate: Gate = Arc::new(move |r| {
        let ok = r
            .headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        if !ok {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid API key",
            ));
        }
        r.over_rate_limit.then(|| {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests",
            )
        })
    });
    let routes = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/role_assignments",
            get(list_assignments).post(create_assignment),
        )
        .route("/role_assignments/{id}", delete(delete_assignment))
        .with_state(sim.clone());
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec: opts.rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve_gated(listener, common, Vendor::Kisi(sim), routes, Some(gate)).await
}
