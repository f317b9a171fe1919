//! Brivo Access API simulator: users by `externalId` and group membership (vendor-apis.md Brivo).
//!
//! `POST /oauth/token` (Basic client:secret) gives a bearer token that lives `token_lifetime`
//! (300 s). Every `/v1/api` call needs the `api-key` header (wrong or missing: 403
//! `<h1>Developer Inactive</h1>`) and the bearer token (401 otherwise). Over the per-second limit
//! the Mashery gateway answers 403 "Developer Over Qps" with `X-Mashery-Error-Code` and
//! `Retry-After`. Lists page with `offset`/`pageSize` (default 20, max 100) as
//! `{data, offset, pageSize, count}`. A repeated `POST /users` with the same `externalId` is not
//! documented ([-]): the simulator creates it and counts a duplicate. Where a grant's end goes is
//! not documented either ([-]): the membership PUT takes an optional `{effectiveTo}` in ISO 8601
//! with offset, the format Brivo uses for credential dates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimServer, Vendor, serve_gated};

#[derive(Debug, Clone)]
pub struct BrivoOptions {
    pub api_key: String,
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// What a token's lifetime is measured on.
    pub clock: crate::clock::SharedClock,
    /// Mashery's queries-per-second limit.
    pub qps: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for BrivoOptions {
    fn default() -> Self {
        Self {
            api_key: "brivo-sim-key".into(),
            client_id: "brivo-client".into(),
            client_secret: "brivo-secret".into(),
            token_lifetime: Duration::from_secs(300),
            clock: crate::clock::wall(),
            qps: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrivoUser {
    pub id: i64,
    #[serde(rename = "externalId")]
    pub external_id: String,
    #[serde(rename = "firstName")]
    pub first_name: String,
    #[serde(rename = "lastName")]
    pub last_name: String,
}

#[derive(Debug, Default)]
struct St {
    users: Vec<BrivoUser>,
    /// (group, user) -> effectiveTo
    members: BTreeMap<(i64, i64), Option<String>>,
    tokens: HashMap<String, chrono::DateTime<chrono::Utc>>,
    tokens_issued: u64,
    next: i64,
    duplicates: u64,
    over_qps: u64,
}

#[derive(Debug)]
pub struct BrivoSim {
    opts: BrivoOptions,
    state: Mutex<St>,
}

impl BrivoSim {
    fn st(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<BrivoUser> {
        self.st().users.clone()
    }

    pub fn holds(&self, group: i64, user: i64) -> bool {
        self.st().members.contains_key(&(group, user))
    }

    pub fn effective_to(&self, group: i64, user: i64) -> Option<String> {
        self.st().members.get(&(group, user)).cloned().flatten()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.st().tokens_issued
    }

    /// Requests refused with 403 "Developer Over Qps".
    pub fn over_qps(&self) -> u64 {
        self.st().over_qps
    }
}

impl GroupSim for BrivoSim {
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

fn error(status: StatusCode, code: u16, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

type Sim = State<Arc<BrivoSim>>;
type Params = Query<HashMap<String, String>>;

/// Basic `client:secret` of the token request.
fn basic_matches(headers: &HeaderMap, id: &str, secret: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    decode_b64(b64.trim()).is_some_and(|d| d == format!("{id}:{secret}").as_bytes())
}

pub(crate) fn decode_b64(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

async fn token(State(s): Sim, headers: HeaderMap) -> Response {
    if !basic_matches(&headers, &s.opts.client_id, &s.opts.client_secret) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut st = s.st();
    st.next += 1;
    st.tokens_issued += 1;
    let t = format!("brivo-at-{}-{}", st.next, st.tokens_issued * 104_729);
    st.tokens.insert(
        t.clone(),
        crate::clock::lapses_at(&s.opts.clock, s.opts.token_lifetime),
    );
    axum::Json(json!({
        "access_token": t,
        "token_type": "bearer",
        "expires_in": s.opts.token_lifetime.as_secs(),
    }))
    .into_response()
}

async fn create_user(State(s): Sim, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 400, "invalid JSON");
    };
    let ext = v["externalId"].as_str().unwrap_or_default().to_owned();
    let mut st = s.st();
    if !ext.is_empty() && st.users.iter().any(|u| u.external_id == ext) {
        st.duplicates += 1;
    }
    st.next += 1;
    let user = BrivoUser {
        id: st.next,
        external_id: ext,
        first_name: v["firstName"].as_str().unwrap_or_default().to_owned(),
        last_name: v["lastName"].as_str().unwrap_or_default().to_owned(),
    };
    st.users.push(user.clone());
    axum::Json(json!(user)).into_response()
}

async fn user_by_external(State(s): Sim, Path(ext): Path<String>) -> Response {
    match s.st().users.iter().find(|u| u.external_id == ext) {
        Some(u) => axum::Json(json!(u)).into_response(),
        None => error(StatusCode::NOT_FOUND, 404, "User not found"),
    }
}

async fn user_groups(State(s): Sim, Path(uid): Path<i64>, Query(q): Params) -> Response {
    let page_size = q
        .get("pageSize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize)
        .clamp(1, 100);
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let st = s.st();
    let all: Vec<Value> = st
        .members
        .iter()
        .filter(|((_, u), _)| *u == uid)
        .map(|((g, _), to)| json!({"id": g, "name": format!("group {g}"), "effectiveTo": to}))
        .collect();
    let count = all.len();
    let data: Vec<Value> = all.into_iter().skip(offset).take(page_size).collect();
    axum::Json(json!({"data": data, "offset": offset, "pageSize": page_size, "count": count}))
        .into_response()
}

async fn put_member(State(s): Sim, Path((g, u)): Path<(i64, i64)>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = s.st();
    if !st.users.iter().any(|x| x.id == u) {
        return error(StatusCode::NOT_FOUND, 404, "User not found");
    }
    st.members
        .insert((g, u), v["effectiveTo"].as_str().map(str::to_owned));
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_member(State(s): Sim, Path((g, u)): Path<(i64, i64)>) -> Response {
    if s.st().members.remove(&(g, u)).is_none() {
        return error(StatusCode::NOT_FOUND, 404, "User is not in the group");
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn start_brivo(listener: TcpListener, opts: BrivoOptions) -> std::io::Result<SimServer> {
    let sim = Arc::new(BrivoSim {
        opts: opts.clone(),
        state: Mutex::new(St::default()),
    });
    let gs = sim.clone();
    let gate: Gate = Arc::new(move |r| {
        if r.over_rate_limit {
            gs.st().over_qps += 1;
            let mut resp = (
                StatusCode::FORBIDDEN,
                "<h1>Developer Over Qps</h1>".to_string(),
            )
                .into_response();
            let h = resp.headers_mut();
            h.insert(
                "x-mashery-error-code",
                HeaderValue::from_static("ERR_403_DEVELOPER_OVER_QPS"),
            );
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Some(resp);
        }
        if r.path == "/oauth/token" && *r.method == Method::POST {
            return None;
        }
        let key_ok = r
            .headers
            .get("api-key")
            .is_some_and(|v| v.as_bytes() == gs.opts.api_key.as_bytes());
        if !key_ok {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    "<h1>Developer Inactive</h1>".to_string(),
                )
                    .into_response(),
            );
        }
        let token = r
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(7..)
                    .filter(|_| v[..7].eq_ignore_ascii_case("bearer "))
            })
            .unwrap_or_default();
        let fresh = gs
            .st()
            .tokens
            .get(token)
            .is_some_and(|t| gs.opts.clock.now() < *t);
        (!fresh).then(|| error(StatusCode::UNAUTHORIZED, 401, "Unauthorized"))
    });
    let routes = Router::new()
        .route("/oauth/token", post(token))
        .route("/v1/api/users", post(create_user))
        .route("/v1/api/users/{ext}/external", get(user_by_external))
        .route("/v1/api/users/{uid}/groups", get(user_groups))
        .route(
            "/v1/api/groups/{gid}/users/{uid}",
            put(put_member).delete(delete_member),
        )
        .with_state(sim.clone());
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec: opts.qps,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve_gated(listener, common, Vendor::Brivo(sim), routes, Some(gate)).await
}
