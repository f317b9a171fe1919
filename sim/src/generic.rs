//! A simulator configured from a vendor profile's `[simulator]` section, for REST vendors of the
//! common shape "a people collection plus a grant collection per target":
//!
//! - `GET {people_path}?{person_lookup}=x` lists people whose `person_lookup` field equals `x`
//!   (case-insensitive); `POST {people_path}` stores the body as given with a new `id` and answers
//!   201, or `duplicate_status` (409 by default) when the lookup field is taken.
//! - `GET {grants_path}` lists the target's grants; `POST {grants_path}` stores the body with a new
//!   `id` and answers 201. A second grant for the same person (`grant_person_field`) on the same
//!   target is refused with `duplicate_status` when set, otherwise created and counted as a
//!   duplicate. `DELETE {grants_path}/{id}` answers 204, or 404 when the grant is not there.
//!
//! `grants_path` names the target as `{target}`. Auth follows the profile (`bearer` or `header`
//! scheme); faults, the request log and the per-second limit are the shared ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::{CommonOptions, Faults, Gate, GroupSim, SimError, SimServer, Vendor, serve_gated};

/// What this simulator needs of a vendor profile. The daemon's connector reads the same file;
/// the caller fills this in from it, so the simulator does not depend on the daemon.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Where the profile came from, for errors.
    pub origin: String,
    /// The profile's `[simulator]` section, as written.
    pub simulator: Option<toml::Value>,
    /// How the profile authenticates.
    pub auth: AuthSpec,
}

/// The auth schemes of a profile, as far as the simulator checks them.
#[derive(Debug, Clone)]
pub enum AuthSpec {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <prefix><secret>`.
    Header {
        header: String,
        prefix: String,
    },
    None,
    /// A scheme the simulator does not serve (OAuth2, a login), by name.
    Other(String),
}

/// The `[simulator]` section of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSpec {
    /// Collection of people, e.g. `/v1/people`.
    pub people_path: String,
    /// Query parameter that filters people, and the field it is compared with.
    #[serde(default = "default_lookup")]
    pub person_lookup: String,
    /// Collection of one target's grants, with `{target}` in it, e.g. `/v1/doors/{target}/grants`.
    pub grants_path: String,
    /// Field of a grant body that holds the person's id.
    pub grant_person_field: String,
    /// Lists answer `{"<wrapper>": [...]}` instead of a bare array.
    #[serde(default)]
    pub list_wrapper: Option<String>,
    /// Ids are strings `<prefix><n>`; without a prefix they are numbers.
    #[serde(default)]
    pub id_prefix: Option<String>,
    /// Status for a second grant of a person on a target (and for a taken person); without it a
    /// duplicate grant is created and counted.
    #[serde(default)]
    pub duplicate_status: Option<u16>,
    /// Field of a stored grant that carries its time window, as the vendor encodes it.
    #[serde(default)]
    pub window_field: Option<String>,
    /// Answer 429 above this many requests in any one second.
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
    /// What the contract suite issues against this simulator and expects it to store.
    #[serde(default)]
    pub contract: Option<ContractSpec>,
}

fn default_lookup() -> String {
    "email".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// The target a contract run grants on.
    pub target: String,
    /// The `window_field` value stored for a grant valid until 2026-12-31T17:00:00Z, with the
    /// request's time zone Europe/Berlin.
    #[serde(default)]
    pub window: Option<String>,
}

impl SimulatorSpec {
    /// The `[simulator]` section of `profile`, checked.
    pub fn from_profile(profile: &Profile) -> Result<Self, SimError> {
        let invalid = |message: String| SimError::Profile {
            origin: profile.origin.clone(),
            message,
        };
        let value = profile
            .simulator
            .clone()
            .ok_or_else(|| invalid("no [simulator] section".into()))?;
        let spec: SimulatorSpec = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("[simulator]: {e}")))?;
        spec.check().map_err(invalid)?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        let plain = |key: &str, path: &str| {
            let ok = path.starts_with('/')
                && path.len() > 1
                && !path.ends_with('/')
                && !path.contains("//")
                && !path.contains(['{', '}', '*', ':', '?', '#']);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{key} {path:?} must be an absolute path without a trailing slash or placeholders"
                ))
            }
        };
        plain("people_path", &self.people_path)?;
        if self.grants_path.matches("{target}").count() != 1 {
            return Err(format!(
                "grants_path {:?} must name the target once as {{target}}",
                self.grants_path
            ));
        }
        plain("grants_path", &self.grants_path.replace("{target}", "t"))?;
        if self
            .grants_path
            .starts_with(&format!("{}/", self.people_path))
        {
            return Err("grants_path must not lie under people_path".into());
        }
        if let Some(s) = self.duplicate_status
            && StatusCode::from_u16(s).is_err()
        {
            return Err(format!("duplicate_status {s} is not an HTTP status"));
        }
        Ok(())
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct GenericOptions {
    /// The secret the profile's auth carries.
    pub token: String,
    pub faults: Faults,
    pub timeout_hold: Duration,
}

impl Default for GenericOptions {
    fn default() -> Self {
        Self {
            token: "generic-sim-token".into(),
            faults: Faults::none(),
            timeout_hold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredGrant {
    pub target: String,
    /// Person id as text (the body may carry it as a number).
    pub person: String,
    /// The body as received, with its `id`.
    pub item: Value,
}

#[derive(Debug, Default)]
struct State_ {
    people: Vec<Value>,
    grants: Vec<StoredGrant>,
    next_id: u64,
    duplicates: u64,
}

#[derive(Debug)]
pub struct GenericSim {
    spec: SimulatorSpec,
    state: Mutex<State_>,
}

/// A JSON id or reference as text: strings as they are, numbers in decimal.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl GenericSim {
    fn st(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spec(&self) -> &SimulatorSpec {
        &self.spec
    }

    pub fn people(&self) -> Vec<Value> {
        self.st().people.clone()
    }

    pub fn grants(&self) -> Vec<StoredGrant> {
        self.st().grants.clone()
    }

    /// Does `person` hold a grant on `target`?
    pub fn holds(&self, target: &str, person: &str) -> bool {
        self.st()
            .grants
            .iter()
            .any(|g| g.target == target && g.person == person)
    }

    /// The stored `window_field` of the person's grant on `target`, as text.
    pub fn window(&self, target: &str, person: &str) -> Option<String> {
        let field = self.spec.window_field.as_deref()?;
        self.st()
            .grants
            .iter()
            .find(|g| g.target == target && g.person == person)
            .and_then(|g| id_text(&g.item[field]))
    }

    fn new_id(&self, st: &mut State_) -> Value {
        st.next_id += 1;
        match &self.spec.id_prefix {
            Some(prefix) => Value::String(format!("{prefix}{}", st.next_id)),
            None => json!(st.next_id),
        }
    }

    fn list(&self, items: Vec<Value>) -> Response {
        let body = match &self.spec.list_wrapper {
            Some(w) => json!({ w.as_str(): items }),
            None => Value::Array(items),
        };
        axum::Json(body).into_response()
    }

    fn conflict(&self) -> StatusCode {
        self.spec
            .duplicate_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::CONFLICT)
    }
}

impl GroupSim for GenericSim {
    fn duplicates_created(&self) -> u64 {
        self.st().duplicates
    }
    fn memberships(&self) -> usize {
        self.st().grants.len()
    }
    fn user_count(&self) -> usize {
        self.st().people.len()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The body as a JSON object, if it is one.
fn object(body: &Bytes) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

type Sim = State<Arc<GenericSim>>;

async fn list_people(State(s): Sim, Query(q): Query<HashMap<String, String>>) -> Response {
    let field = s.spec.person_lookup.as_str();
    let needle = q.get(field).map(|v| v.to_lowercase());
    let items = s
        .st()
        .people
        .iter()
        .filter(|p| {
            needle
                .as_ref()
                .is_none_or(|n| p[field].as_str().is_some_and(|v| v.to_lowercase() == *n))
        })
        .cloned()
        .collect();
    s.list(items)
}

async fn create_person(State(s): Sim, body: Bytes) -> Response {
    let mut person = match object(&body) {
        Some(m) => m,
        None => return error(StatusCode::BAD_REQUEST, "a JSON object is required"),
    };
    let field = s.spec.person_lookup.as_str();
    let Some(key) = person
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_lowercase)
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{field} is required"),
        );
    };
    let mut st = s.st();
    if st
        .people
        .iter()
        .any(|p| p[field].as_str().is_some_and(|v| v.to_lowercase() == key))
    {
        return error(s.conflict(), &format!("{field} is taken"));
    }
    let id = s.new_id(&mut st);
    person.insert("id".into(), id);
    let person = Value::Object(person);
    st.people.push(person.clone());
    (StatusCode::CREATED, axum::Json(person)).into_response()
}

async fn list_grants(State(s): Sim, Path(target): Path<String>) -> Response {
    let items = s
        .st()
        .grants
        .iter()
        .filter(|g| g.target == target)
        .map(|g| g.item.clone())
        .collect();
    s.list(items)
}

async fn create_grant(State(s): Sim, Path(target): Path<String>, body: Bytes) -> Response {
    let mut item = match object(&body) {
        Some(m) => m,
        None => return error(StatusCode::BAD_REQUEST, "a JSON object is required"),
    };
    let field = s.spec.grant_person_field.as_str();
    let Some(person) = item.get(field).and_then(id_text) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{field} is required"),
        );
    };
    let mut st = s.st();
    if !st
        .people
        .iter()
        .any(|p| id_text(&p["id"]).as_deref() == Some(person.as_str()))
    {
        return error(StatusCode::NOT_FOUND, "person not found");
    }
    if st
        .grants
        .iter()
        .any(|g| g.target == target && g.person == person)
    {
        if s.spec.duplicate_status.is_some() {
            return error(s.conflict(), "the person already holds a grant here");
        }
        st.duplicates += 1;
    }
    let id = s.new_id(&mut st);
    item.insert("id".into(), id);
    let item = Value::Object(item);
    st.grants.push(StoredGrant {
        target,
        person,
        item: item.clone(),
    });
    (StatusCode::CREATED, axum::Json(item)).into_response()
}

async fn delete_grant(State(s): Sim, Path((target, id)): Path<(String, String)>) -> Response {
    let mut st = s.st();
    let before = st.grants.len();
    st.grants.retain(|g| {
        !(g.target == target && id_text(&g.item["id"]).as_deref() == Some(id.as_str()))
    });
    if st.grants.len() == before {
        return error(StatusCode::NOT_FOUND, "grant not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The header and value the profile's auth sends with `token` as its secret.
fn expected_auth(profile: &Profile, token: &str) -> Result<Option<(HeaderName, String)>, SimError> {
    let invalid = |message: String| SimError::Profile {
        origin: profile.origin.clone(),
        message,
    };
    match &profile.auth {
        AuthSpec::Bearer => Ok(Some((header::AUTHORIZATION, format!("Bearer {token}")))),
        AuthSpec::Header { header, prefix } => {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|e| invalid(format!("auth header {header:?}: {e}")))?;
            Ok(Some((name, format!("{prefix}{token}"))))
        }
        AuthSpec::None => Ok(None),
        AuthSpec::Other(scheme) => Err(invalid(format!(
            "the profile simulator serves the bearer, header and none auth schemes only, not {scheme}"
        ))),
    }
}

/// Starts a simulator from `profile`'s `[simulator]` section, default options.
pub async fn start_from_profile(
    profile: &Profile,
    listener: TcpListener,
    token: String,
) -> Result<SimServer, SimError> {
    let opts = GenericOptions {
        token,
        ..GenericOptions::default()
    };
    start_with(profile, listener, opts).await
}

/// Starts a simulator from `profile`'s `[simulator]` section.
pub async fn start_with(
    profile: &Profile,
    listener: TcpListener,
    opts: GenericOptions,
) -> Result<SimServer, SimError> {
    let spec = SimulatorSpec::from_profile(profile)?;
    let auth = expected_auth(profile, &opts.token)?;
    let rate_limit_per_sec = spec.rate_limit_per_sec;
    let people_path = spec.people_path.clone();
    let grants_path = spec.grants_path.clone();
    let sim = Arc::new(GenericSim {
        spec,
        state: Mutex::new(State_::default()),
    });
    let gate: Gate = Arc::new(move |r| {
        if let Some((name, value)) = &auth {
            let ok = r
                .headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == value.as_bytes());
            if !ok {
                return Some(error(StatusCode::UNAUTHORIZED, "unauthorized"));
            }
        }
        r.over_rate_limit
            .then(|| error(StatusCode::TOO_MANY_REQUESTS, "too many requests"))
    });
    let state = sim.clone();
    // The paths were checked, but the router refuses some overlaps by panicking: report those
    // as a profile error rather than take the process down.
    let routes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        Router::new()
            .route(&people_path, get(list_people).post(create_person))
            .route(&grants_path, get(list_grants).post(create_grant))
            .route(&format!("{grants_path}/{{id}}"), delete(delete_grant))
            .with_state(state)
    }))
    .map_err(|_| SimError::Profile {
        origin: profile.origin.clone(),
        message: "people_path and grants_path overlap".into(),
    })?;
    let common = CommonOptions {
        token: String::new(),
        rate_limit_per_sec,
        faults: opts.faults,
        timeout_hold: opts.timeout_hold,
    };
    Ok(serve_gated(listener, common, Vendor::Generic(sim), routes, Some(gate)).await?)
}
