//! Verkada API simulator: users by `external_id` and access-group membership
//! (vendor-apis.md Verkada).
//!
//! `POST /token` with `x-api-key` gives a token for `x-verkada-auth` that cannot be refreshed
//! and lapses after `token_lifetime` (30 min), answering 401 "Token expired". The documented
//! limit is enforced per organisation: more than `per_minute` requests in a rolling minute get
//! 429, every request in the following `cooldown` gets 429, and after it more than
//! `per_cooldown` requests in any `cooldown`-long window get 429 again (no headers).
//! Where a grant's end time goes is not documented ([-]): the simulator takes `end_date` in Unix
//! seconds on the membership PUT.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimServer, Vendor, serve_gated};

#[derive(Debug, Clone)]
pub struct VerkadaOptions {
    pub api_key: String,
    pub token_lifetime: Duration,
    /// What a token's lifetime is measured on.
    pub clock: crate::clock::SharedClock,
    pub per_minute: usize,
    pub cooldown: Duration,
    pub per_cooldown: usize,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for VerkadaOptions {
    fn default() -> Self {
        Self {
            api_key: "verkada-sim-key".into(),
            token_lifetime: Duration::from_secs(30 * 60),
            clock: crate::clock::wall(),
            per_minute: 300,
            cooldown: Duration::from_secs(5),
            per_cooldown: 25,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerkadaUser {
    pub user_id: String,
    pub external_id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Debug, Default)]
struct Limiter {
    arrivals: VecDeque<Instant>,
    cooldown_until: Option<Instant>,
    /// After a cooldown the stricter short-window limit applies until a quiet minute passes.
    strict_until: Option<Instant>,
    rejected: u64,
}

#[derive(Debug, Default)]
struct St {
    users: BTreeMap<String, VerkadaUser>,
    /// (group, user_id) -> end_date
    members: BTreeMap<(String, String), Option<i64>>,
    tokens: HashMap<String, chrono::DateTime<chrono::Utc>>,
    tokens_issued: u64,
    next: u64,
    duplicates: u64,
    limiter: Limiter,
}

#[derive(Debug)]
pub struct VerkadaSim {
    opts: VerkadaOptions,
    state: Mutex<St>,
}

impl VerkadaSim {
    fn st(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<VerkadaUser> {
        self.st().users.values().cloned().collect()
    }

    pub fn holds(&self, group: &str, user_id: &str) -> bool {
        self.st()
            .members
            .contains_key(&(group.to_owned(), user_id.to_owned()))
    }

    /// The `end_date` (Unix seconds) stored with a membership.
    pub fn end_date(&self, group: &str, user_id: &str) -> Option<i64> {
        self.st()
            .members
            .get(&(group.to_owned(), user_id.to_owned()))
            .copied()
            .flatten()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.st().tokens_issued
    }

    /// Requests refused by the documented rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.st().limiter.rejected
    }

    /// The documented per-organisation limit, applied to every arrival.
    fn over_limit(&self) -> bool {
        let now = Instant::now();
        let o = &self.opts;
        let mut st = self.st();
        let l = &mut st.limiter;
        l.arrivals.push_back(now);
        while l
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            l.arrivals.pop_front();
        }
        let reject = if l.cooldown_until.is_some_and(|t| now < t) {
            true
        } else {
            let strict = l.strict_until.is_some_and(|t| now < t);
            let recent = l
                .arrivals
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < o.cooldown)
                .count();
            let over = l.arrivals.len() > o.per_minute || (strict && recent > o.per_cooldown);
            if over {
                l.cooldown_until = Some(now + o.cooldown);
                l.strict_until = Some(now + o.cooldown + Duration::from_secs(60));
            }
            over
        };
        if reject {
            l.rejected += 1;
        }
        reject
    }
}

impl GroupSim for VerkadaSim {
    fn duplicates_created(&self) -> u64 {
        self.st().duplicates
    }
    fn memberships(&self) -> usize {
        self.st().members.len()
    }
    fn user_count(&self) -> usize {
        self.st().users.len()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

type Sim = State<Arc<VerkadaSim>>;
type Params = Query<HashMap<String, String>>;

async fn token(State(s): Sim, headers: axum::http::HeaderMap) -> Response {
    let ok = headers
        .get("x-api-key")
        .is_some_and(|v| v.as_bytes() == s.opts.api_key.as_bytes());
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let mut st = s.st();
    st.next += 1;
    st.tokens_issued += 1;
    let t = format!("vk-token-{}-{}", st.next, st.tokens_issued * 7919);
    st.tokens.insert(
        t.clone(),
        crate::clock::lapses_at(&s.opts.clock, s.opts.token_lifetime),
    );
    axum::Json(json!({"token": t})).into_response()
}

async fn get_user(State(s): Sim, Query(q): Params) -> Response {
    let st = s.st();
    let found = st.users.values().find(|u| {
        q.get("external_id").is_some_and(|e| &u.external_id == e)
            || q.get("user_id").is_some_and(|e| &u.user_id == e)
            || q.get("email")
                .is_some_and(|e| u.email.eq_ignore_ascii_case(e))
    });
    match found {
        Some(u) => axum::Json(json!(u)).into_response(),
        None => error(StatusCode::NOT_FOUND, "User not found"),
    }
}

async fn create_user(State(s): Sim, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let Some(ext) = v["external_id"].as_str().filter(|e| !e.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "external_id is required");
    };
    let mut st = s.st();
    // vendor-apis.md Verkada: external_id is unique.
    if st.users.values().any(|u| u.external_id == ext) {
        return error(StatusCode::CONFLICT, "external_id already exists");
    }
    st.next += 1;
    let user = VerkadaUser {
        user_id: format!("vk-user-{:04}", st.next),
        external_id: ext.to_owned(),
        email: v["email"].as_str().unwrap_or_default().to_owned(),
        first_name: v["first_name"].as_str().unwrap_or_default().to_owned(),
        last_name: v["last_name"].as_str().unwrap_or_default().to_owned(),
    };
    st.users.insert(user.user_id.clone(), user.clone());
    axum::Json(json!(user)).into_response()
}

async fn delete_user(State(s): Sim, Query(q): Params) -> Response {
    let id = q.get("user_id").cloned().unwrap_or_default();
    let mut st = s.st();
    if st.users.remove(&id).is_none() {
        return error(StatusCode::NOT_FOUND, "User not found");
    }
    st.members.retain(|(_, u), _| *u != id);
    axum::Json(json!({})).into_response()
}

async fn get_group(State(s): Sim, Query(q): Params) -> Response {
    let Some(g) = q.get("group_id") else {
        return error(StatusCode::BAD_REQUEST, "group_id is required");
    };
    let ids: Vec<String> = s
        .st()
        .members
        .keys()
        .filter(|(grp, _)| grp == g)
        .map(|(_, u)| u.clone())
        .collect();
    axum::Json(json!({"group_id": g, "name": g, "user_ids": ids})).into_response()
}

async fn put_member(State(s): Sim, Query(q): Params, body: Bytes) -> Response {
    let Some(g) = q.get("group_id").cloned() else {
        return error(StatusCode::BAD_REQUEST, "group_id is required");
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = s.st();
    let user = v["user_id"]
        .as_str()
        .and_then(|id| st.users.get(id))
        .or_else(|| {
            v["external_id"]
                .as_str()
                .and_then(|e| st.users.values().find(|u| u.external_id == e))
        })
        .map(|u| u.user_id.clone());
    let Some(uid) = user else {
        return axum::Json(json!({"successful_adds": [], "unsuccessful_adds": [v]}))
            .into_response();
    };
    let end = v["end_date"].as_i64();
    st.members.insert((g, uid.clone()), end);
    axum::Json(json!({"successful_adds": [uid], "unsuccessful_adds": []})).into_response()
}

async fn delete_member(State(s): Sim, Query(q): Params) -> Response {
    let (Some(g), Some(u)) = (q.get("group_id"), q.get("user_id")) else {
        return error(StatusCode::BAD_REQUEST, "group_id and user_id are required");
    };
    s.st().members.remove(&(g.clone(), u.clone()));
    axum::Json(json!({})).into_response()
}

pub async fn start_verkada(
    listener: TcpListener,
    opts: VerkadaOptions,
) -> std::io::Result<SimServer> {
    let sim = Arc::new(VerkadaSim {
        opts: opts.clone(),
        state: Mutex::new(St::default()),
    });
    let gs = sim.clone();
    let gate: Gate = Arc::new(move |r| {
        if gs.over_limit() {
            return Some(error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"));
        }
        if r.path == "/token" && *r.method == Method::POST {
            return None;
        }
        let token = r
            .headers
            .get("x-verkada-auth")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expires = gs.st().tokens.get(token).copied();
        match expires {
            None => Some(error(StatusCode::UNAUTHORIZED, "Invalid token")),
            Some(t) if gs.opts.clock.now() >= t => {
                Some(error(StatusCode::UNAUTHORIZED, "Token expired"))
            }
            Some(_) => None,
        }
    });
    let routes = Router::new()
        .route("/token", post(token))
        .route(
            "/core/v1/user",
            get(get_user).post(create_user).delete(delete_user),
        )
        .route("/access/v1/access_groups/group", get(get_group))
        .route(
            "/access/v1/access_groups/group/user",
            put(put_member).delete(delete_member),
        )
        .with_state(sim.clone());
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec: None,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve_gated(listener, common, Vendor::Verkada(sim), routes, Some(gate)).await
}
