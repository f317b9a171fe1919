//! The SCIM 2.0 endpoint (RFC 7643, RFC 7644) Okta and Entra ID push users and groups to, under
//! `/scim/v2`.
//!
//! Every write runs in one transaction: the SCIM resource, the person's identity, the issue and
//! revoke commands it causes and their audit records; the 2xx answer is sent only after the commit
//! (invariant 1), so a deactivation the provider saw accepted can no longer be lost.
//!
//! A tenant is an identity provider with its own bearer token. The token is compared as a SHA-256
//! in constant time and never logged; each tenant sees only its own resources (another tenant's id
//! is a 404, not a 403, so ids do not leak).

use super::ApiState;
use crate::audit;
use crate::clock::to_micros;
use crate::config::ScimConfig;
use crate::engine::Engine;
use crate::sources::scim::{self as src, Kind, Mapping, Query, Resource, ScimError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use scim_v2::schema_urns;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

const CONTENT_TYPE: &str = "application/scim+json";
/// Page size when the client does not ask for one, and the most one page holds.
const MAX_PAGE: i64 = 1000;

#[derive(Debug)]
struct Tenant {
    name: String,
    token_sha256: [u8; 32],
    mapping: Mapping,
    limiter: Option<DefaultDirectRateLimiter>,
}

#[derive(Debug, Clone)]
struct Scim {
    engine: Arc<Engine>,
    tenants: Arc<Vec<Tenant>>,
    base_url: Option<String>,
    timeout: Duration,
}

/// The tenant a request authenticated as.
#[derive(Debug, Clone)]
struct Caller(Arc<Vec<Tenant>>, usize);

impl Caller {
    fn tenant(&self) -> &Tenant {
        &self.0[self.1]
    }
}

fn tenants(cfg: &ScimConfig, config: &crate::config::Config) -> Vec<Tenant> {
    let mut out = Vec::new();
    for (name, t) in &cfg.tenants {
        let token_sha256 = match config.scim_token_sha256(name) {
            Ok(h) => h,
            Err(e) => {
                // Never the token itself: the error names the variable it should come from.
                tracing::warn!(tenant = %name, error = %e, "SCIM tenant disabled: no usable token");
                continue;
            }
        };
        let limiter = t.rate_limit.and_then(|rl| {
            let per = NonZeroU32::new(rl.per_second)?;
            let burst = NonZeroU32::new(rl.burst)?;
            Some(RateLimiter::direct(
                Quota::per_second(per).allow_burst(burst),
            ))
        });
        out.push(Tenant {
            name: name.clone(),
            token_sha256,
            mapping: Mapping {
                tenant: name.clone(),
                correlate_by: t.correlate_by.unwrap_or(cfg.correlate_by),
                scope_groups: t.scope_groups.clone(),
            },
            limiter,
        });
    }
    out
}

/// `/scim/v2/...`, with its own authentication, limits and state.
pub fn router(state: ApiState) -> Router {
    let config = state.engine.config.clone();
    let cfg = &config.scim;
    let scim = Scim {
        engine: state.engine.clone(),
        tenants: Arc::new(tenants(cfg, &config)),
        base_url: cfg
            .base_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        timeout: Duration::from_secs(cfg.request_timeout_seconds),
    };
    let routes = Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema))
        .route("/.search", post(search_root))
        .route("/{endpoint}", get(list).post(create))
        .route("/{endpoint}/.search", post(search_post))
        .route(
            "/{endpoint}/{id}",
            get(read).put(replace).patch(patch).delete(remove),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(scim.clone(), authenticate))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(scim);
    Router::new().nest("/scim/v2", routes)
}

// ---------------------------------------------------------------------------------------------
// Errors and responses

fn error(status: u16, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({
        "schemas": [schema_urns::ERROR],
        "status": status.to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    scim_json(code, &body)
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body.to_string(),
    )
        .into_response()
}

#[derive(Debug)]
struct Failure(ScimError);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An error, so that the store's retry finds a lost lock race underneath it.
impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<ScimError> for Failure {
    fn from(e: ScimError) -> Self {
        Self(e)
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Self(e.into())
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self.0 {
            ScimError::Client {
                status,
                scim_type,
                detail,
            } => error(status, scim_type, &detail),
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                error(500, None, "internal error; the change was not applied")
            }
        }
    }
}

type Reply = Result<Response, Failure>;

async fn not_found() -> Response {
    error(404, None, "no such SCIM endpoint")
}

// ---------------------------------------------------------------------------------------------
// Authentication, rate limit, timeout

async fn authenticate(State(s): State<Scim>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let found = presented.and_then(|token| {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Look at every tenant, so the time taken does not tell which one came close.
        let mut found = None;
        for (i, t) in s.tenants.iter().enumerate() {
            if bool::from(t.token_sha256.ct_eq(&hash)) {
                found = Some(i);
            }
        }
        found
    });
    let Some(i) = found else {
        let mut r = error(401, None, "a valid bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"latchkey-scim\""),
        );
        return r;
    };
    let tenant = &s.tenants[i];
    if let Some(l) = &tenant.limiter
        && l.check().is_err()
    {
        let mut r = error(429, None, "rate limit exceeded for this tenant");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    req.extensions_mut().insert(Caller(s.tenants.clone(), i));
    // A request cut off here rolls its transaction back: nothing is half-written.
    match tokio::time::timeout(s.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(503, None, "request timed out; the change was not applied"),
    }
}

// ---------------------------------------------------------------------------------------------
// Representations

fn base(s: &Scim, headers: &HeaderMap) -> String {
    match &s.base_url {
        Some(b) => b.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}/scim/v2")
        }
    }
}

fn location(base: &str, r: &Resource) -> String {
    format!("{base}/{}/{}", r.kind.endpoint(), r.id)
}

/// Which attributes a response carries (RFC 7644 section 3.9).
#[derive(Debug, Default, Clone)]
struct Projection {
    attributes: Vec<String>,
    excluded: Vec<String>,
}

impl Projection {
    fn parse(attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let list = |s: Option<&str>| {
            s.map(|s| {
                s.split(',')
                    .map(|a| a.trim().to_lowercase())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        Self {
            attributes: list(attributes),
            excluded: list(excluded),
        }
    }

    /// Requested names as (top-level key, optional sub-attribute), lower-case. A URN prefix selects
    /// the extension object for the enterprise schema, and nothing for the core schemas.
    fn split(name: &str) -> (String, Option<String>) {
        let ent = schema_urns::ENTERPRISE_USER.to_lowercase();
        if let Some(rest) = name.strip_prefix(&format!("{ent}:")) {
            let (a, sub) = match rest.split_once('.') {
                Some((a, s)) => (a, Some(s)),
                None => (rest, None),
            };
            return (
                ent,
                Some(format!(
                    "{a}{}",
                    sub.map(|s| format!(".{s}")).unwrap_or_default()
                )),
            );
        }
        if name == ent {
            return (ent, None);
        }
        let name = [schema_urns::USER, schema_urns::GROUP]
            .iter()
            .find_map(|u| name.strip_prefix(&format!("{}:", u.to_lowercase())))
            .unwrap_or(name);
        match name.split_once('.') {
            Some((a, s)) => (a.to_string(), Some(s.to_string())),
            None => (name.to_string(), None),
        }
    }

    fn apply(&self, mut v: Value) -> Value {
        let Value::Object(map) = &mut v else {
            return v;
        };
        let always = |k: &str| k == "id" || k == "schemas";
        if !self.attributes.is_empty() {
            let wanted: Vec<(String, Option<String>)> =
                self.attributes.iter().map(|a| Self::split(a)).collect();
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let lk = k.to_lowercase();
                if always(&k) {
                    continue;
                }
                let subs: Vec<&Option<String>> = wanted
                    .iter()
                    .filter(|(top, _)| *top == lk)
                    .map(|(_, s)| s)
                    .collect();
                if subs.is_empty() {
                    map.remove(&k);
                } else if subs.iter().all(|s| s.is_some()) {
                    let keep: Vec<String> = subs.iter().filter_map(|s| (*s).clone()).collect();
                    if let Some(inner) = map.get_mut(&k) {
                        keep_subs(inner, &keep);
                    }
                }
            }
        }
        for ex in &self.excluded {
            let (top, sub) = Self::split(ex);
            let Some(k) = map.keys().find(|k| k.to_lowercase() == top).cloned() else {
                continue;
            };
            if always(&k) {
                continue;
            }
            match sub {
                None => {
                    map.remove(&k);
                }
                Some(sub) => {
                    if let Some(inner) = map.get_mut(&k) {
                        drop_sub(inner, &sub);
                    }
                }
            }
        }
        v
    }
}

fn keep_subs(v: &mut Value, keep: &[String]) {
    match v {
        Value::Object(m) => {
            let top: BTreeSet<String> = keep
                .iter()
                .map(|k| k.split('.').next().unwrap_or(k).to_string())
                .collect();
            m.retain(|k, _| top.contains(&k.to_lowercase()));
        }
        Value::Array(items) => items.iter_mut().for_each(|i| keep_subs(i, keep)),
        _ => {}
    }
}

fn drop_sub(v: &mut Value, sub: &str) {
    let top = sub.split('.').next().unwrap_or(sub);
    match v {
        Value::Object(m) => m.retain(|k, _| k.to_lowercase() != top),
        Value::Array(items) => items.iter_mut().for_each(|i| drop_sub(i, sub)),
        _ => {}
    }
}

/// The full representation of a stored resource: location, and a user's groups (read-only,
/// derived from the groups' members).
async fn render(
    conn: &mut sqlx::AnyConnection,
    tenant: &str,
    base: &str,
    r: &Resource,
) -> Result<Value, Failure> {
    let mut v = r.raw.clone();
    v["meta"]["location"] = json!(location(base, r));
    if r.kind == Kind::User {
        let groups = src::groups_of(conn, tenant, &r.id).await?;
        if !groups.is_empty() {
            v["groups"] = Value::Array(
                groups
                    .into_iter()
                    .map(|(id, name)| {
                        json!({"value": id, "display": name, "$ref": format!("{base}/Groups/{id}"), "type": "direct"})
                    })
                    .collect(),
            );
        }
    }
    Ok(v)
}

fn with_etag(mut resp: Response, r: &Resource, base: Option<&str>) -> Response {
    if let Ok(v) = HeaderValue::from_str(&r.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if let Some(base) = base
        && let Ok(v) = HeaderValue::from_str(&location(base, r))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn kind_of(endpoint: &str) -> Result<Kind, Failure> {
    Kind::from_endpoint(endpoint)
        .ok_or_else(|| Failure(ScimError::status(404, format!("no endpoint /{endpoint}"))))
}

/// `If-Match` (RFC 7644 section 3.14): a write against a version the client has not seen is 412.
fn check_if_match(headers: &HeaderMap, r: &Resource) -> Result<(), Failure> {
    let Some(want) = headers.get(header::IF_MATCH).and_then(|h| h.to_str().ok()) else {
        return Ok(());
    };
    let etag = r.etag();
    let ok = want.split(',').map(str::trim).any(|w| {
        w == "*" || w == etag || w.trim_start_matches("W/") == etag.trim_start_matches("W/")
    });
    if ok {
        Ok(())
    } else {
        Err(Failure(ScimError::status(
            412,
            format!("resource is at version {etag}"),
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn read(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    let tenant = &c.tenant().name;
    let mut conn = s.engine.store.pool().acquire().await?;
    let r = src::get(&mut conn, tenant, kind, &id)
        .await?
        .ok_or_else(|| ScimError::not_found(kind, &id))?;
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|e| e.trim() == r.etag()))
    {
        return Ok(with_etag(
            StatusCode::NOT_MODIFIED.into_response(),
            &r,
            None,
        ));
    }
    let base = base(&s, &headers);
    let v = render(&mut conn, tenant, &base, &r).await?;
    let p = Projection::parse(
        q.get("attributes").map(String::as_str),
        q.get("excludedAttributes").map(String::as_str),
    );
    Ok(with_etag(scim_json(StatusCode::OK, &p.apply(v)), &r, None))
}

#[derive(Debug, Default)]
struct ListParams {
    filter: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    excluded: Option<String>,
}

async fn run_search(
    s: &Scim,
    c: &Caller,
    kind: Option<Kind>,
    p: ListParams,
    headers: &HeaderMap,
) -> Reply {
    let tenant = &c.tenant().name;
    let filter = p.filter.as_deref().map(src::parse_filter).transpose()?;
    let descending = match p.sort_order.as_deref().map(str::to_lowercase).as_deref() {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(o) => {
            return Err(Failure(ScimError::bad(
                "invalidValue",
                format!("sortOrder `{o}` is neither ascending nor descending"),
            )));
        }
    };
    let start_index = p.start_index.unwrap_or(1).max(1);
    let count = p.count.unwrap_or(MAX_PAGE).clamp(0, MAX_PAGE);
    let query = Query {
        filter,
        sort_by: p.sort_by,
        descending,
        start_index,
        count,
    };
    let (total, page) = src::search(s.engine.store.pool(), tenant, kind, &query).await?;
    let base = base(s, headers);
    let projection = Projection::parse(p.attributes.as_deref(), p.excluded.as_deref());
    let mut conn = s.engine.store.pool().acquire().await?;
    let mut resources = Vec::with_capacity(page.len());
    for r in &page {
        resources.push(projection.apply(render(&mut conn, tenant, &base, r).await?));
    }
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [schema_urns::LIST_RESPONSE],
            "totalResults": total,
            "startIndex": start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    ))
}

fn int_param(q: &BTreeMap<String, String>, name: &str) -> Result<Option<i64>, Failure> {
    q.get(name)
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                Failure(ScimError::bad(
                    "invalidValue",
                    format!("`{name}` must be an integer"),
                ))
            })
        })
        .transpose()
}

async fn list(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    let p = ListParams {
        filter: q.get("filter").cloned(),
        sort_by: q.get("sortBy").cloned(),
        sort_order: q.get("sortOrder").cloned(),
        start_index: int_param(&q, "startIndex")?,
        count: int_param(&q, "count")?,
        attributes: q.get("attributes").cloned(),
        excluded: q.get("excludedAttributes").cloned(),
    };
    run_search(&s, &c, Some(kind), p, &headers).await
}

fn search_params(body: &Bytes) -> Result<ListParams, Failure> {
    let v = src::parse_body(body)?;
    let has_schema = v.get("schemas").and_then(Value::as_array).is_some_and(|s| {
        s.iter()
            .any(|u| u.as_str() == Some(schema_urns::SEARCH_REQUEST))
    });
    if !has_schema {
        return Err(Failure(ScimError::bad(
            "invalidSyntax",
            format!(
                "a search must carry the schema {}",
                schema_urns::SEARCH_REQUEST
            ),
        )));
    }
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let list_of = |k: &str| match v.get(k) {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(ListParams {
        filter: str_of("filter"),
        sort_by: str_of("sortBy"),
        sort_order: str_of("sortOrder"),
        start_index: v.get("startIndex").and_then(Value::as_i64),
        count: v.get("count").and_then(Value::as_i64),
        attributes: list_of("attributes"),
        excluded: list_of("excludedAttributes"),
    })
}

async fn search_post(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let kind = kind_of(&endpoint)?;
    run_search(&s, &c, Some(kind), search_params(&body)?, &headers).await
}

async fn search_root(
    State(s): State<Scim>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    run_search(&s, &c, None, search_params(&body)?, &headers).await
}

// ---------------------------------------------------------------------------------------------
// Writes

/// After a group's membership changed: every user who joined or left it is re-evaluated (their
/// `groups` attribute, and scope), in the same transaction.
async fn resync_members(
    s: &Scim,
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    changed: BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Failure> {
    for uid in changed {
        if let Some(mut u) = src::get(conn, &t.name, Kind::User, &uid).await? {
            let key = src::sync_user(
                &s.engine,
                conn,
                &t.mapping,
                Some(&u),
                u.person_key.as_deref(),
                now,
            )
            .await?;
            if key != u.person_key {
                u.person_key = key;
                src::set_person_key(conn, &t.name, &u.id, u.person_key.as_deref()).await?;
            }
        }
    }
    Ok(())
}

fn stamp(
    kind: Kind,
    id: &str,
    mut v: Value,
    version: i64,
    created: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    v["id"] = json!(id);
    v["meta"] = json!({
        "resourceType": kind.resource_type(),
        "created": created,
        "lastModified": src::scim_time(now),
        "version": format!("W/\"{version}\""),
    });
    v
}

/// Store a new or changed resource and everything it causes, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn write(
    s: &Scim,
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    kind: Kind,
    id: &str,
    before: Option<&Resource>,
    body: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Resource, Failure> {
    if kind == Kind::User
        && let Some(un) = body.get("userName").and_then(Value::as_str)
        && src::user_name_taken(conn, &t.name, un, Some(id)).await?
    {
        return Err(Failure(ScimError::Client {
            status: 409,
            scim_type: Some("uniqueness"),
            detail: format!("userName `{un}` is already in use"),
        }));
    }
    let version = before.map_or(1, |b| b.version + 1);
    let created = before
        .and_then(|b| b.raw.pointer("/meta/created"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| src::scim_time(now));
    let mut r = Resource {
        id: id.to_string(),
        kind,
        person_key: before.and_then(|b| b.person_key.clone()),
        raw: stamp(kind, id, body, version, &created, now),
        version,
    };
    let at = to_micros(now);
    // Stored first, so a user's groups are there for the person record and a group's members are
    // visible to the users re-evaluated below.
    src::put(conn, &t.name, &r, at, at).await?;
    match kind {
        Kind::User => {
            let key = src::sync_user(
                &s.engine,
                conn,
                &t.mapping,
                Some(&r),
                before.and_then(|b| b.person_key.as_deref()),
                now,
            )
            .await?;
            if key != r.person_key {
                r.person_key = key;
                src::set_person_key(conn, &t.name, &r.id, r.person_key.as_deref()).await?;
            }
        }
        Kind::Group => {
            let old = before.map(Resource::member_ids).unwrap_or_default();
            let new = r.member_ids();
            let changed: BTreeSet<String> = old.symmetric_difference(&new).cloned().collect();
            // A rename changes every member's `groups` attribute.
            let renamed =
                before.is_some_and(|b| b.raw.get("displayName") != r.raw.get("displayName"));
            let affected = if renamed {
                old.union(&new).cloned().collect()
            } else {
                changed
            };
            resync_members(s, conn, t, affected, now).await?;
        }
    }
    audit::append(
        conn,
        at,
        &src::source_name(&t.name),
        &format!(
            "scim.{}.{}",
            kind.resource_type().to_lowercase(),
            if before.is_some() {
                "updated"
            } else {
                "created"
            }
        ),
        id,
        &json!({
            "userName": r.raw.get("userName"),
            "externalId": r.raw.get("externalId"),
            "displayName": r.raw.get("displayName"),
            "active": r.raw.get("active"),
            "version": version,
        }),
    )
    .await?;
    Ok(r)
}

async fn create(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    let v = src::canonical(kind, src::parse_body(&body)?, true)?;
    let now = s.engine.clock.now();
    let id = src::new_id();
    let base = base(&s, &headers);
    let (r, out) = s
        .engine
        .store
        .retry("scim create", || async {
            let mut tx = s.engine.store.begin_write().await?;
            let r = write(&s, &mut tx, t, kind, &id, None, v.clone(), now).await?;
            let out = render(&mut tx, &t.name, &base, &r).await?;
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
    s.engine.notify_outbox();
    Ok(with_etag(
        scim_json(StatusCode::CREATED, &out),
        &r,
        Some(&base),
    ))
}

async fn replace(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    let v = src::canonical(kind, src::parse_body(&body)?, false)?;
    let now = s.engine.clock.now();
    let base = base(&s, &headers);
    let (r, out) = s
        .engine
        .store
        .retry("scim replace", || async {
            let mut tx = s.engine.store.begin_write().await?;
            let before = src::get(&mut tx, &t.name, kind, &id)
                .await?
                .ok_or_else(|| ScimError::not_found(kind, &id))?;
            check_if_match(&headers, &before)?;
            let r = write(&s, &mut tx, t, kind, &id, Some(&before), v.clone(), now).await?;
            let out = render(&mut tx, &t.name, &base, &r).await?;
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
    s.engine.notify_outbox();
    Ok(with_etag(scim_json(StatusCode::OK, &out), &r, None))
}

async fn patch(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    // Parsed here so a bad request is answered before any transaction; each attempt parses again.
    src::parse_patch(src::parse_body(&body)?)?;
    let now = s.engine.clock.now();
    let base = base(&s, &headers);
    let (r, out) = s
        .engine
        .store
        .retry("scim patch", || async {
            let mut tx = s.engine.store.begin_write().await?;
            let before = src::get(&mut tx, &t.name, kind, &id)
                .await?
                .ok_or_else(|| ScimError::not_found(kind, &id))?;
            check_if_match(&headers, &before)?;
            let ops = src::parse_patch(src::parse_body(&body)?)?;
            let mut doc = src::apply_patch(kind, &before.raw, ops)?;
            if let Value::Object(m) = &mut doc {
                m.remove("meta");
                m.remove("id");
            }
            let v = src::canonical(kind, doc, false)?;
            let mut unchanged = before.raw.clone();
            if let Value::Object(m) = &mut unchanged {
                m.remove("meta");
                m.remove("id");
            }
            let r = if unchanged == v {
                // Providers re-send what is already there (Okta's periodic pushes): no new version.
                before
            } else {
                write(&s, &mut tx, t, kind, &id, Some(&before), v, now).await?
            };
            let out = render(&mut tx, &t.name, &base, &r).await?;
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
    s.engine.notify_outbox();
    Ok(with_etag(scim_json(StatusCode::OK, &out), &r, None))
}

async fn remove(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    let now = s.engine.clock.now();
    let at = to_micros(now);
    s.engine
        .store
        .retry("scim delete", || async {
            let mut tx = s.engine.store.begin_write().await?;
            let before = src::get(&mut tx, &t.name, kind, &id)
                .await?
                .ok_or_else(|| ScimError::not_found(kind, &id))?;
            check_if_match(&headers, &before)?;
            match kind {
                Kind::User => {
                    // The provider says the person is gone: a leaver, never held (an explicit delete).
                    if let Some(key) = &before.person_key {
                        s.engine
                            .remove_record_tx(&mut tx, &src::source_name(&t.name), key, now)
                            .await
                            .map_err(ScimError::from)?;
                    }
                    // Drop the user from the groups that list them, so the groups stay consistent.
                    for (gid, _) in src::groups_of(&mut tx, &t.name, &id).await? {
                        if let Some(mut g) = src::get(&mut tx, &t.name, Kind::Group, &gid).await? {
                            if let Some(Value::Array(m)) = g.raw.get_mut("members") {
                                m.retain(|x| x.get("value").and_then(Value::as_str) != Some(id.as_str()));
                            }
                            g.version += 1;
                            g.raw["meta"]["version"] = json!(g.etag());
                            g.raw["meta"]["lastModified"] = json!(src::scim_time(now));
                            src::put(&mut tx, &t.name, &g, at, at).await?;
                        }
                    }
                    src::delete(&mut tx, &t.name, &id).await?;
                }
                Kind::Group => {
                    src::delete(&mut tx, &t.name, &id).await?;
                    resync_members(&s, &mut tx, t, before.member_ids(), now).await?;
                }
            }
            audit::append(
                &mut tx,
                at,
                &src::source_name(&t.name),
                &format!("scim.{}.deleted", kind.resource_type().to_lowercase()),
                &id,
                &json!({ "userName": before.raw.get("userName"), "externalId": before.raw.get("externalId"),
                         "displayName": before.raw.get("displayName") }),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, Failure>(())
        })
        .await?;
    s.engine.notify_outbox();
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// Discovery (RFC 7644 section 4)

fn meta(base: &str, kind: &str, path: &str) -> Value {
    json!({ "resourceType": kind, "location": format!("{base}/{path}") })
}

async fn service_provider_config(State(s): State<Scim>, headers: HeaderMap) -> Response {
    let base = base(&s, &headers);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [schema_urns::SERVICE_PROVIDER_CONFIG],
            "documentationUri": "https://github.com/latchkey/latchkey#scim",
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": MAX_PAGE },
            "changePassword": { "supported": false },
            "sort": { "supported": true },
            "etag": { "supported": true },
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A per-tenant bearer token in the Authorization header",
                "primary": true,
            }],
            "meta": meta(&base, "ServiceProviderConfig", "ServiceProviderConfig"),
        }),
    )
}

fn resource_type_json(base: &str, kind: Kind) -> Value {
    let mut v = json!({
        "schemas": [schema_urns::RESOURCE_TYPE],
        "id": kind.resource_type(),
        "name": kind.resource_type(),
        "endpoint": format!("/{}", kind.endpoint()),
        "description": kind.resource_type(),
        "schema": kind.schema(),
        "meta": meta(base, "ResourceType", &format!("ResourceTypes/{}", kind.resource_type())),
    });
    if kind == Kind::User {
        v["schemaExtensions"] =
            json!([{ "schema": schema_urns::ENTERPRISE_USER, "required": false }]);
    }
    v
}

fn list_json(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [schema_urns::LIST_RESPONSE],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

async fn resource_types(State(s): State<Scim>, headers: HeaderMap) -> Response {
    let base = base(&s, &headers);
    scim_json(
        StatusCode::OK,
        &list_json(vec![
            resource_type_json(&base, Kind::User),
            resource_type_json(&base, Kind::Group),
        ]),
    )
}

async fn resource_type(
    State(s): State<Scim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let base = base(&s, &headers);
    match [Kind::User, Kind::Group]
        .into_iter()
        .find(|k| k.resource_type() == id)
    {
        Some(k) => scim_json(StatusCode::OK, &resource_type_json(&base, k)),
        None => error(404, None, &format!("no resource type {id}")),
    }
}

fn schema_list(base: &str) -> Vec<Value> {
    let names = ["user", "enterprise_user", "group"];
    let Ok(schemas) = scim_v2::models::scim_schema::get_schemas(names.to_vec()) else {
        return vec![];
    };
    schemas
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .map(|mut v| {
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            v["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:Schema"]);
            v["meta"] = meta(base, "Schema", &format!("Schemas/{id}"));
            v
        })
        .collect()
}

async fn schemas(State(s): State<Scim>, headers: HeaderMap) -> Response {
    let base = base(&s, &headers);
    scim_json(StatusCode::OK, &list_json(schema_list(&base)))
}

async fn schema(State(s): State<Scim>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let base = base(&s, &headers);
    match schema_list(&base)
        .into_iter()
        .find(|v| v.get("id").and_then(Value::as_str) == Some(id.as_str()))
    {
        Some(v) => scim_json(StatusCode::OK, &v),
        None => error(404, None, &format!("no schema {id}")),
    }
}
