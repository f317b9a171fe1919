//! Salto KS Connect API simulator: site users and access-group membership
//! (vendor-apis.md Salto KS).
//!
//! `POST /connect/token` (Basic client:secret, client_credentials) gives a bearer token.
//! A site user has two ids: the site-user `id` and `user.id`; access groups take the site-user id.
//! Lists are `{items:[...]}` paged with OData `$skip`/`$top`; users filter with
//! `$filter=user/email eq '...'`. Errors may arrive inside a 2xx body as `ErrorCode`/`Message`
//! ([I]): `body_error_rate` answers that fraction of writes 200 with an error body and applies
//! nothing. Where a membership's end goes is not documented ([-]): the simulator takes
//! `expiry_date`, a naive local time in the site's zone like Salto's schedules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimServer, Vendor, serve_gated};

#[derive(Debug, Clone)]
pub struct SaltoOptions {
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// Fraction of writes answered 200 `{ErrorCode, Message}` without being applied.
    pub body_error_rate: f64,
    pub rate_limit_per_sec: Option<u32>,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for SaltoOptions {
    fn default() -> Self {
        Self {
            client_id: "salto-client".into(),
            client_secret: "salto-secret".into(),
            token_lifetime: Duration::from_secs(3600),
            body_error_rate: 0.0,
            rate_limit_per_sec: None,
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaltoUser {
    /// Site-user id.
    pub id: String,
    /// The global KS user id.
    pub user_id: String,
    pub site: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Debug, Default)]
struct St {
    users: Vec<SaltoUser>,
    /// (site, access group, site-user id) -> expiry_date
    members: BTreeMap<(String, String, String), Option<String>>,
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    next: u64,
    duplicates: u64,
    body_errors: u64,
}

#[derive(Debug)]
pub struct SaltoSim {
    opts: SaltoOptions,
    state: Mutex<St>,
}

impl SaltoSim {
    fn st(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn users(&self) -> Vec<SaltoUser> {
        self.st().users.clone()
    }

    pub fn holds(&self, site: &str, group: &str, site_user: &str) -> bool {
        self.st()
            .members
            .contains_key(&(site.into(), group.into(), site_user.into()))
    }

    pub fn expiry(&self, site: &str, group: &str, site_user: &str) -> Option<String> {
        self.st()
            .members
            .get(&(site.into(), group.into(), site_user.into()))
            .cloned()
            .flatten()
    }

    /// Writes answered with an error inside a 2xx body.
    pub fn body_errors(&self) -> u64 {
        self.st().body_errors
    }

    fn body_error(&self) -> Option<Response> {
        let p = self.opts.body_error_rate;
        if p > 0.0 && rand::rng().random_bool(p.min(1.0)) {
            self.st().body_errors += 1;
            return Some(
                axum::Json(
                    json!({"ErrorCode": 5003, "Message": "Service temporarily unavailable"}),
                )
                .into_response(),
            );
        }
        None
    }
}

impl GroupSim for SaltoSim {
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

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"ErrorCode": code, "Message": message})),
    )
        .into_response()
}

fn user_json(u: &SaltoUser) -> Value {
    json!({
        "id": u.id,
        "user": {"id": u.user_id, "email": u.email, "first_name": u.first_name, "last_name": u.last_name},
    })
}

/// OData `$skip`/`$top` over `{items}`.
fn odata(items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    let top = q
        .get("$top")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20usize)
        .clamp(1, 1000);
    let skip: usize = q.get("$skip").and_then(|v| v.parse().ok()).unwrap_or(0);
    let items: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    axum::Json(json!({ "items": items })).into_response()
}

type Sim = State<Arc<SaltoSim>>;
type Params = Query<HashMap<String, String>>;

async fn token(State(s): Sim, headers: HeaderMap) -> Response {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| super::brivo::decode_b64(b.trim()))
        .is_some_and(|d| d == format!("{}:{}", s.opts.client_id, s.opts.client_secret).as_bytes());
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut st = s.st();
    st.next += 1;
    st.tokens_issued += 1;
    let t = format!("salto-{}-{}", st.next, st.tokens_issued * 7727);
    st.tokens
        .insert(t.clone(), Instant::now() + s.opts.token_lifetime);
    axum::Json(json!({
        "access_token": t, "token_type": "Bearer", "expires_in": s.opts.token_lifetime.as_secs(),
    }))
    .into_response()
}

async fn list_users(State(s): Sim, Path(site): Path<String>, Query(q): Params) -> Response {
    // `user/email eq 'a@b'` is the one filter the connector sends.
    let email = q.get("$filter").and_then(|f| {
        f.split_once("eq")
            .map(|(_, v)| v.trim().trim_matches('\'').to_lowercase())
    });
    let items = s
        .st()
        .users
        .iter()
        .filter(|u| u.site == site)
        .filter(|u| email.as_ref().is_none_or(|e| u.email.to_lowercase() == *e))
        .map(user_json)
        .collect();
    odata(items, &q)
}

async fn create_user(State(s): Sim, Path(site): Path<String>, body: Bytes) -> Response {
    if let Some(r) = s.body_error() {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 400, "invalid JSON");
    };
    let email = v["email"].as_str().unwrap_or_default().to_owned();
    let mut st = s.st();
    if !email.is_empty()
        && st
            .users
            .iter()
            .any(|u| u.site == site && u.email.eq_ignore_ascii_case(&email))
    {
        st.duplicates += 1;
    }
    st.next += 1;
    let u = SaltoUser {
        id: format!("su-{:05}", st.next),
        user_id: format!("ks-{:05}", st.next * 31),
        site,
        email,
        first_name: v["first_name"].as_str().unwrap_or_default().to_owned(),
        last_name: v["last_name"].as_str().unwrap_or_default().to_owned(),
    };
    st.users.push(u.clone());
    axum::Json(user_json(&u)).into_response()
}

async fn group_users(
    State(s): Sim,
    Path((site, ag)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    let st = s.st();
    let items = st
        .members
        .iter()
        .filter(|((si, g, _), _)| *si == site && *g == ag)
        .filter_map(|((_, _, u), exp)| {
            st.users.iter().find(|x| x.id == *u).map(|x| {
                let mut j = user_json(x);
                if let Some(o) = j.as_object_mut() {
                    o.insert("expiry_date".into(), json!(exp));
                }
                j
            })
        })
        .collect();
    odata(items, &q)
}

async fn add_group_user(
    State(s): Sim,
    Path((site, ag)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = s.body_error() {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(uid) = v["user_id"].as_str().map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, 400, "user_id is required");
    };
    let mut st = s.st();
    if !st.users.iter().any(|u| u.id == uid && u.site == site) {
        // [I] Salto reports some failures inside a 2xx body.
        return axum::Json(json!({"ErrorCode": 404, "Message": "User not found on site"}))
            .into_response();
    }
    let key = (site, ag, uid);
    if st.members.contains_key(&key) {
        st.duplicates += 1;
    }
    st.members
        .insert(key, v["expiry_date"].as_str().map(str::to_owned));
    StatusCode::CREATED.into_response()
}

async fn remove_group_user(
    State(s): Sim,
    Path((site, ag, uid)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = s.body_error() {
        return r;
    }
    if s.st().members.remove(&(site, ag, uid)).is_none() {
        return error(StatusCode::NOT_FOUND, 404, "User not in access group");
    }
    StatusCode::NO_CONTENT.into_response()
}

pub async fn start_salto(listener: TcpListener, opts: SaltoOptions) -> std::io::Result<SimServer> {
    let sim = Arc::new(SaltoSim {
        opts: opts.clone(),
        state: Mutex::new(St::default()),
    });
    let gs = sim.clone();
    let gate: Gate = Arc::new(move |r| {
        if r.over_rate_limit {
            return Some(error(
                StatusCode::TOO_MANY_REQUESTS,
                429,
                "Too many requests",
            ));
        }
        if r.path == "/connect/token" && *r.method == Method::POST {
            return None;
        }
        let token = r
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let fresh = gs
            .st()
            .tokens
            .get(token)
            .is_some_and(|t| Instant::now() < *t);
        (!fresh).then(|| error(StatusCode::UNAUTHORIZED, 401, "Unauthorized"))
    });
    let routes = Router::new()
        .route("/connect/token", post(token))
        .route(
            "/v1.1/sites/{site}/users",
            get(list_users).post(create_user),
        )
        .route(
            "/v1.1/sites/{site}/access_groups/{ag}/users",
            get(group_users).post(add_group_user),
        )
        .route(
            "/v1.1/sites/{site}/access_groups/{ag}/users/{uid}",
            delete(remove_group_user),
        )
        .with_state(sim.clone());
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec: opts.rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    serve_gated(listener, common, Vendor::Salto(sim), routes, Some(gate)).await
}
