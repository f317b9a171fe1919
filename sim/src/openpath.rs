//! Avigilon Alta / Openpath API simulator (vendor-apis.md Openpath).
//!
//! `POST /auth/login {email,password}` answers `{data:{token}}`; the token goes raw in
//! `Authorization` (no "Bearer") and lapses after `token_lifetime` (not documented [-]; 401).
//! `PUT .../groupIds` replaces the user's whole group list. Re-creating a user whose e-mail
//! belongs to an archived user answers 201 with the old archived record; an e-mail held by an
//! active user is refused with 409 ([-]). Lists page with `limit`/`offset` and carry `totalCount`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimServer, Vendor, serve_gated};

#[derive(Debug, Clone)]
pub struct OpenpathOptions {
    pub email: String,
    pub password: String,
    pub token_lifetime: Duration,
    /// What a token's lifetime is measured on.
    pub clock: crate::clock::SharedClock,
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for OpenpathOptions {
    fn default() -> Self {
        Self {
            email: "api@example.com".into(),
            password: "openpath-sim-password".into(),
            token_lifetime: Duration::from_secs(3600),
            clock: crate::clock::wall(),
            rate_limit_per_sec: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenpathUser {
    pub id: i64,
    pub org: i64,
    pub email: String,
    #[serde(rename = "externalId")]
    pub external_id: Option<String>,
    /// "A" active, "I" inactive/archived.
    pub status: String,
    #[serde(rename = "groupIds")]
    pub group_ids: BTreeSet<i64>,
}

#[derive(Debug, Default)]
struct St {
    users: Vec<OpenpathUser>,
    tokens: HashMap<String, chrono::DateTime<chrono::Utc>>,
    tokens_issued: u64,
    next: i64,
    duplicates: u64,
    resurrected: u64,
}

#[derive(Debug)]
pub struct OpenpathSim {
    opts: OpenpathOptions,
    state: Mutex<St>,
}

impl OpenpathSim {
    fn st(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<OpenpathUser> {
        self.st().users.clone()
    }

    pub fn groups_of(&self, user: i64) -> BTreeSet<i64> {
        self.st()
            .users
            .iter()
            .find(|u| u.id == user)
            .map(|u| u.group_ids.clone())
            .unwrap_or_default()
    }

    /// Set a user's groups as another administrator would.
    pub fn set_groups_directly(&self, user: i64, groups: &[i64]) {
        if let Some(u) = self.st().users.iter_mut().find(|u| u.id == user) {
            u.group_ids = groups.iter().copied().collect();
        }
    }

    /// Archive a user (status "I"); its groups are kept, as the vendor keeps the record.
    pub fn archive(&self, user: i64) {
        if let Some(u) = self.st().users.iter_mut().find(|u| u.id == user) {
            u.status = "I".into();
        }
    }

    pub fn tokens_issued(&self) -> u64 {
        self.st().tokens_issued
    }

    /// Creates answered with an archived record.
    pub fn resurrected(&self) -> u64 {
        self.st().resurrected
    }
}

impl GroupSim for OpenpathSim {
    fn duplicates_created(&self) -> u64 {
        self.st().duplicates
    }
    fn memberships(&self) -> usize {
        self.st().users.iter().map(|u| u.group_ids.len()).sum()
    }
    fn user_count(&self) -> usize {
        self.st().users.len()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

fn user_json(u: &OpenpathUser) -> Value {
    json!({
        "id": u.id,
        "status": u.status,
        "externalId": u.external_id,
        "identity": {"email": u.email},
    })
}

type Sim = State<Arc<OpenpathSim>>;
type Params = Query<HashMap<String, String>>;

async fn login(State(s): Sim, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["email"].as_str() != Some(s.opts.email.as_str())
        || v["password"].as_str() != Some(s.opts.password.as_str())
    {
        return error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    let mut st = s.st();
    st.next += 1;
    st.tokens_issued += 1;
    let t = format!("op-{}-{}", st.next, st.tokens_issued * 6151);
    st.tokens.insert(
        t.clone(),
        crate::clock::lapses_at(&s.opts.clock, s.opts.token_lifetime),
    );
    axum::Json(json!({"data": {"token": t}})).into_response()
}

async fn list_users(State(s): Sim, Path(org): Path<i64>, Query(q): Params) -> Response {
    let limit = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize)
        .clamp(1, 1000);
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    // `filter=identity.email:(a@b)` and `filter=status:(A)`.
    let filter = q.get("filter").cloned().unwrap_or_default();
    let (fkey, fval) = filter
        .split_once(":(")
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches(')').to_owned()))
        .unwrap_or_default();
    let st = s.st();
    let all: Vec<Value> = st
        .users
        .iter()
        .filter(|u| u.org == org)
        .filter(|u| match fkey.as_str() {
            "identity.email" => u.email.eq_ignore_ascii_case(&fval),
            "status" => u.status == fval,
            _ => true,
        })
        .map(user_json)
        .collect();
    let total = all.len();
    let data: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    axum::Json(json!({"data": data, "totalCount": total})).into_response()
}

async fn create_user(State(s): Sim, Path(org): Path<i64>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let Some(email) = v["identity"]["email"].as_str().map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "identity.email is required");
    };
    let mut st = s.st();
    if let Some(u) = st
        .users
        .iter()
        .find(|u| u.org == org && u.email.eq_ignore_ascii_case(&email))
        .cloned()
    {
        if u.status == "I" {
            // vendor-apis.md Openpath: 201 with the old archived record.
            st.resurrected += 1;
            return (
                StatusCode::CREATED,
                axum::Json(json!({"data": user_json(&u)})),
            )
                .into_response();
        }
        return error(StatusCode::CONFLICT, "email already in use");
    }
    st.next += 1;
    let u = OpenpathUser {
        id: st.next,
        org,
        email,
        external_id: v["externalId"].as_str().map(str::to_owned),
        status: "A".into(),
        group_ids: BTreeSet::new(),
    };
    st.users.push(u.clone());
    (
        StatusCode::CREATED,
        axum::Json(json!({"data": user_json(&u)})),
    )
        .into_response()
}

async fn user_groups(State(s): Sim, Path((org, uid)): Path<(i64, i64)>) -> Response {
    let st = s.st();
    let Some(u) = st.users.iter().find(|u| u.org == org && u.id == uid) else {
        return error(StatusCode::NOT_FOUND, "user not found");
    };
    let data: Vec<Value> = u
        .group_ids
        .iter()
        .map(|g| json!({"id": g, "name": format!("group {g}")}))
        .collect();
    let n = data.len();
    axum::Json(json!({"data": data, "totalCount": n})).into_response()
}

async fn put_group_ids(State(s): Sim, Path((org, uid)): Path<(i64, i64)>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(ids) = v["groupIds"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "groupIds is required");
    };
    let ids: Option<BTreeSet<i64>> = ids.iter().map(Value::as_i64).collect();
    let Some(ids) = ids else {
        return error(StatusCode::BAD_REQUEST, "groupIds must be integers");
    };
    let mut st = s.st();
    let Some(u) = st.users.iter_mut().find(|u| u.org == org && u.id == uid) else {
        return error(StatusCode::NOT_FOUND, "user not found");
    };
    // vendor-apis.md Openpath: the list is replaced whole.
    u.group_ids = ids;
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_user(State(s): Sim, Path((org, uid)): Path<(i64, i64)>) -> Response {
    let mut st = s.st();
    match st.users.iter_mut().find(|u| u.org == org && u.id == uid) {
        Some(u) => {
            u.status = "I".into();
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "user not found"),
    }
}

pub async fn start_openpath(
    listener: TcpListener,
    opts: OpenpathOptions,
) -> std::io::Result<SimServer> {
    let sim = Arc::new(OpenpathSim {
        opts: opts.clone(),
        state: Mutex::new(St::default()),
    });
    let gs = sim.clone();
    let gate: Gate = Arc::new(move |r| {
        if r.over_rate_limit {
            return Some(error(StatusCode::TOO_MANY_REQUESTS, "Too many requests"));
        }
        if r.path == "/auth/login" && *r.method == Method::POST {
            return None;
        }
        let token = r
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let fresh = gs
            .st()
            .tokens
            .get(token)
            .is_some_and(|t| gs.opts.clock.now() < *t);
        (!fresh).then(|| error(StatusCode::UNAUTHORIZED, "Unauthorized"))
    });
    let routes = Router::new()
        .route("/auth/login", post(login))
        .route("/orgs/{org}/users", get(list_users).post(create_user))
        .route("/orgs/{org}/users/{uid}", delete(delete_user))
        .route("/orgs/{org}/users/{uid}/groups", get(user_groups))
        .route("/orgs/{org}/users/{uid}/groupIds", put(put_group_ids))
        .with_state(sim.clone());
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec: opts.rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve_gated(listener, common, Vendor::Openpath(sim), routes, Some(gate)).await
}
