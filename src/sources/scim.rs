//! SCIM 2.0 as a source: resources identity providers push (Okta, Entra ID), how they are stored and
//! searched, how PATCH changes them, and how a User becomes a [`PersonRecord`].
//!
//! A resource is kept as its canonical JSON (parsed through `scim_v2`'s models, so provider spellings
//! such as `"active":"False"` come out as the RFC's form) plus one row per attribute value in
//! `scim_values`, so a filter runs as SQL against both SQLite and PostgreSQL.

use crate::config::CorrelateBy;
use crate::engine::{Engine, EngineError};
use crate::model::{PersonRecord, RecordStatus};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, Filter, PatchPath, ValFilter};
use scim_v2::models::others::{OperationTarget, PatchOp, PatchOperation};
use scim_v2::schema_urns;
use serde_json::{Map, Value, json};
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    /// A request the client must change: answered with this status and SCIM `scimType`.
    #[error("{detail}")]
    Client {
        status: u16,
        scim_type: Option<&'static str>,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored SCIM resource {id} is not valid JSON: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

impl ScimError {
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: 400,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    pub fn status(status: u16, detail: impl Into<String>) -> Self {
        Self::Client {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }

    pub fn not_found(kind: Kind, id: &str) -> Self {
        Self::status(404, format!("{} {id} not found", kind.resource_type()))
    }
}

pub type Result<T, E = ScimError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Group,
}

impl Kind {
    pub fn from_endpoint(s: &str) -> Option<Self> {
        match s {
            "Users" => Some(Kind::User),
            "Groups" => Some(Kind::Group),
            _ => None,
        }
    }

    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            Kind::User => "Users",
            Kind::Group => "Groups",
        }
    }

    pub fn schema(self) -> &'static str {
        match self {
            Kind::User => schema_urns::USER,
            Kind::Group => schema_urns::GROUP,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "User" => Some(Kind::User),
            "Group" => Some(Kind::Group),
            _ => None,
        }
    }

    /// Top-level attributes of the core schema, canonical spelling.
    fn attributes(self) -> &'static [&'static str] {
        match self {
            Kind::User => &[
                "schemas",
                "id",
                "externalId",
                "meta",
                "userName",
                "name",
                "displayName",
                "nickName",
                "profileUrl",
                "title",
                "userType",
                "preferredLanguage",
                "locale",
                "timezone",
                "active",
                "password",
                "emails",
                "phoneNumbers",
                "ims",
                "photos",
                "addresses",
                "groups",
                "entitlements",
                "roles",
                "x509Certificates",
            ],
            Kind::Group => &[
                "schemas",
                "id",
                "externalId",
                "meta",
                "displayName",
                "members",
            ],
        }
    }

    fn canonical(self, name: &str) -> Option<&'static str> {
        self.attributes()
            .iter()
            .find(|a| a.eq_ignore_ascii_case(name))
            .copied()
    }
}

const ENTERPRISE_ATTRS: &[&str] = &[
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];

/// Multi-valued attributes: PATCH `add` appends to them, and a filter on the attribute itself
/// (`emails co "x"`) means its `value` sub-attribute (RFC 7644 section 3.4.2.2).
const MULTI: &[&str] = &[
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509Certificates",
    "members",
    "schemas",
];

fn is_multi(name: &str) -> bool {
    MULTI.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// SCIM times on the wire: seconds, UTC, so stored strings compare in time order.
pub fn scim_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------------------------------------
// Parsing and canonical form

/// A request body as JSON, with attribute names in canonical case (RFC 7643 section 2.1: names are
/// case-insensitive; Entra ID and Okta do not always agree on the case).
pub fn parse_body(bytes: &[u8]) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ScimError::bad(
            "invalidSyntax",
            "request body must be a JSON object",
        ));
    }
    scim_v2::case_insensitive::canonicalize_keys(&mut v)
        .map_err(|e| ScimError::bad("invalidSyntax", e.to_string()))?;
    Ok(v)
}

/// Refuse attributes the schema does not have: silently dropping them would let a mistyped
/// attribute (`departmnet`) pass as success while nothing changed.
fn check_known(kind: Kind, v: &Map<String, Value>) -> Result<()> {
    for (k, val) in v {
        if kind.canonical(k).is_some() {
            continue;
        }
        if kind == Kind::User && k.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER) {
            if let Value::Object(ext) = val {
                for ek in ext.keys() {
                    if !ENTERPRISE_ATTRS.iter().any(|a| a.eq_ignore_ascii_case(ek)) {
                        return Err(ScimError::bad(
                            "invalidSyntax",
                            format!("unknown attribute `{k}:{ek}`"),
                        ));
                    }
                }
            }
            continue;
        }
        return Err(ScimError::bad(
            "invalidSyntax",
            format!("unknown attribute `{k}` for {}", kind.resource_type()),
        ));
    }
    Ok(())
}

fn validation(e: scim_v2::ValidationError) -> ScimError {
    ScimError::bad(e.scim_type_str(), e.to_string())
}

/// A client's resource body to the canonical stored form: read-only attributes (`id`, `meta`,
/// a user's `groups`) dropped, the password dropped (it is never stored, invariant 8), booleans and
/// spellings normalised by the `scim_v2` models.
pub fn canonical(kind: Kind, mut v: Value, create: bool) -> Result<Value> {
    let Value::Object(map) = &mut v else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "resource must be an object",
        ));
    };
    check_known(kind, map)?;
    for ro in ["id", "meta", "groups", "password"] {
        map.remove(ro);
    }
    // The extension's URN belongs in `schemas` exactly when the extension has attributes
    // (RFC 7643 section 3); a PATCH that adds or removes the last of them changes that.
    let ext_used = map
        .get(schema_urns::ENTERPRISE_USER)
        .is_some_and(|e| e.as_object().is_some_and(|o| !o.is_empty()));
    if !ext_used {
        map.remove(schema_urns::ENTERPRISE_USER);
    }
    if let Some(Value::Array(schemas)) = map.get_mut("schemas") {
        let ent = |u: &Value| {
            u.as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER))
        };
        schemas.retain(|u| !ent(u));
        if ext_used && kind == Kind::User {
            schemas.push(json!(schema_urns::ENTERPRISE_USER));
        }
    }
    use scim_v2::Validate;
    let ctx = if create {
        scim_v2::Context::CreateRequest
    } else {
        scim_v2::Context::ReplaceRequest
    };
    let invalid = |e: serde_json::Error| ScimError::bad("invalidValue", e.to_string());
    let out = match kind {
        Kind::User => {
            // Entra ID sends the manager as a bare id in PUT bodies too; the schema has an object.
            if let Some(Value::Object(ext)) = map.get_mut(schema_urns::ENTERPRISE_USER)
                && let Some(Value::String(id)) = ext.get("manager").cloned()
            {
                ext.insert("manager".into(), json!({ "value": id }));
            }
            let u: scim_v2::models::user::User<String> =
                serde_json::from_value(v).map_err(invalid)?;
            u.validate_as(ctx).map_err(validation)?;
            serde_json::to_value(&u).map_err(invalid)?
        }
        Kind::Group => {
            // RFC 7643's Group schema (which /Schemas serves) marks displayName optional while its
            // prose and the `scim_v2` model require it; clients that read the schema omit it.
            let unnamed = !map.contains_key("displayName");
            if unnamed {
                map.insert("displayName".into(), json!("-"));
            }
            let g: scim_v2::models::group::Group<String> =
                serde_json::from_value(v).map_err(invalid)?;
            g.validate_as(ctx).map_err(validation)?;
            let mut out = serde_json::to_value(&g).map_err(invalid)?;
            if unnamed && let Value::Object(m) = &mut out {
                m.remove("displayName");
            }
            out
        }
    };
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Storage

#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub kind: Kind,
    pub person_key: Option<String>,
    /// Canonical representation with `id` and `meta` (without `meta.location`).
    pub raw: Value,
    pub version: i64,
}

impl Resource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self> {
        let id: String = r.try_get("id")?;
        let kind: String = r.try_get("resource_type")?;
        let raw: String = r.try_get("raw")?;
        Ok(Self {
            kind: Kind::parse(&kind).ok_or_else(|| {
                ScimError::Store(crate::store::StoreError::Corrupt {
                    table: "scim_resources",
                    message: format!("resource type `{kind}`"),
                })
            })?,
            person_key: r.try_get("person_key")?,
            raw: serde_json::from_str(&raw).map_err(|source| ScimError::Corrupt {
                id: id.clone(),
                source,
            })?,
            version: r.try_get("version")?,
            id,
        })
    }

    fn str_attr(&self, name: &str) -> Option<&str> {
        self.raw.get(name).and_then(Value::as_str)
    }

    /// User ids this group lists as members.
    pub fn member_ids(&self) -> BTreeSet<String> {
        self.raw
            .get("members")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("value").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn new_id() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub async fn get(
    conn: &mut AnyConnection,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<Resource>> {
    sqlx::query("SELECT * FROM scim_resources WHERE tenant = $1 AND id = $2 AND resource_type = $3")
        .bind(tenant)
        .bind(id)
        .bind(kind.resource_type())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| Resource::from_row(&r))
        .transpose()
}

/// Another user of this tenant already has this userName (case-insensitively).
pub async fn user_name_taken(
    conn: &mut AnyConnection,
    tenant: &str,
    user_name: &str,
    except: Option<&str>,
) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM scim_resources WHERE tenant = $1 AND resource_type = 'User' AND user_name_ci = $2",
    )
    .bind(tenant)
    .bind(user_name.to_lowercase())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => {
            let id: String = r.try_get("id")?;
            except != Some(id.as_str())
        }
        None => false,
    })
}

/// Insert or replace a resource and its searchable values.
pub async fn put(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &Resource,
    created_at: i64,
    modified_at: i64,
) -> Result<()> {
    let active = r.raw.get("active").and_then(Value::as_bool).map(i64::from);
    let user_name = r.str_attr("userName");
    let done = sqlx::query(
        "INSERT INTO scim_resources (tenant, id, resource_type, external_id, user_name, user_name_ci,
           display_name, active, person_key, raw, version, created_at, modified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant, id) DO UPDATE SET external_id = excluded.external_id,
           user_name = excluded.user_name, user_name_ci = excluded.user_name_ci,
           display_name = excluded.display_name, active = excluded.active,
           person_key = excluded.person_key, raw = excluded.raw, version = excluded.version,
           modified_at = excluded.modified_at
         WHERE scim_resources.version < excluded.version",
    )
    .bind(tenant)
    .bind(&r.id)
    .bind(r.kind.resource_type())
    .bind(r.str_attr("externalId"))
    .bind(user_name)
    .bind(user_name.map(str::to_lowercase))
    .bind(r.str_attr("displayName"))
    .bind(active)
    .bind(&r.person_key)
    .bind(r.raw.to_string())
    .bind(r.version)
    .bind(created_at)
    .bind(modified_at)
    .execute(&mut *conn)
    .await?;
    // Two writers that read the same version: on PostgreSQL the second waits for the first's row
    // lock, then finds a version as new as its own and must not overwrite it.
    if done.rows_affected() == 0 {
        return Err(ScimError::Client {
            status: 409,
            scim_type: None,
            detail: format!(
                "{} {} was changed concurrently; retry",
                r.kind.resource_type(),
                r.id
            ),
        });
    }
    sqlx::query("DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2")
        .bind(tenant)
        .bind(&r.id)
        .execute(&mut *conn)
        .await?;
    for f in flatten(&r.raw) {
        sqlx::query(
            "INSERT INTO scim_values (tenant, resource_id, attr, elem, val, num) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(&r.id)
        .bind(f.attr)
        .bind(f.elem)
        .bind(f.val)
        .bind(f.num)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Record which person a user now stands for, without a new version of the resource.
pub async fn set_person_key(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    key: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE scim_resources SET person_key = $1 WHERE tenant = $2 AND id = $3")
        .bind(key)
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM scim_resources WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The groups (id, displayName) that list this user as a member.
pub async fn groups_of(
    conn: &mut AnyConnection,
    tenant: &str,
    user_id: &str,
) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT r.id, r.display_name FROM scim_values v
         JOIN scim_resources r ON r.tenant = v.tenant AND r.id = v.resource_id
         WHERE v.tenant = $1 AND v.attr = 'members.value' AND v.val = $2 AND r.resource_type = 'Group'
         ORDER BY r.display_name, r.id",
    )
    .bind(tenant)
    .bind(user_id.to_lowercase())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get::<Option<String>, _>("display_name")?
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

struct Flat {
    attr: String,
    elem: i64,
    val: Option<String>,
    num: Option<f64>,
}

fn scalar(v: &Value) -> Option<(String, Option<f64>)> {
    match v {
        Value::String(s) => Some((s.to_lowercase(), None)),
        Value::Bool(b) => Some((b.to_string(), None)),
        Value::Number(n) => Some((n.to_string(), n.as_f64())),
        _ => None,
    }
}

/// Every scalar value of a resource, under a lower-case dotted name. Enterprise extension
/// attributes are stored under their bare names: they collide with no core User attribute.
fn flatten(raw: &Value) -> Vec<Flat> {
    let mut out = Vec::new();
    let Value::Object(map) = raw else {
        return out;
    };
    fn push(out: &mut Vec<Flat>, attr: String, elem: i64, v: &Value) {
        if let Some((val, num)) = scalar(v) {
            out.push(Flat {
                attr,
                elem,
                val: Some(val),
                num,
            });
        }
    }
    fn attr(out: &mut Vec<Flat>, name: String, v: &Value) {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let i = i as i64;
                    match item {
                        Value::Object(sub) => {
                            for (sk, sv) in sub {
                                push(out, format!("{name}.{}", sk.to_lowercase()), i, sv);
                            }
                        }
                        other => push(out, name.clone(), i, other),
                    }
                }
            }
            Value::Object(sub) => {
                for (sk, sv) in sub {
                    push(out, format!("{name}.{}", sk.to_lowercase()), 0, sv);
                }
            }
            other => push(out, name, 0, other),
        }
    }
    for (k, v) in map {
        if k.starts_with("urn:") {
            if let Value::Object(ext) = v {
                for (ek, ev) in ext {
                    attr(&mut out, ek.to_lowercase(), ev);
                }
            }
        } else {
            attr(&mut out, k.to_lowercase(), v);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Filters to SQL

#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Num(f64),
    Int(i64),
}

/// A WHERE clause under construction: SQL text with `$n` placeholders and the values they bind.
/// Values never enter the SQL text.
#[derive(Debug, Default)]
pub struct Sql {
    pub binds: Vec<Bind>,
}

impl Sql {
    pub fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, s: impl Into<String>) -> String {
        self.bind(Bind::Text(s.into()))
    }
}

/// The stored (flattened) name of a filter's attribute path, checked against the schema.
fn stored_name(kind: Option<Kind>, p: &AttrPath, parent: Option<&str>) -> Result<String> {
    let bad = || {
        ScimError::bad(
            "invalidFilter",
            format!("unknown attribute `{p}` in filter"),
        )
    };
    let enterprise = p
        .uri
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER));
    if let Some(uri) = &p.uri {
        let core = [Kind::User, Kind::Group]
            .iter()
            .any(|k| uri.eq_ignore_ascii_case(k.schema()));
        if !core && !enterprise {
            return Err(bad());
        }
    }
    if let Some(parent) = parent {
        return Ok(format!("{parent}.{}", p.name.to_lowercase()));
    }
    let known_core = |k: Kind| k.canonical(&p.name).is_some();
    let known_ext = ENTERPRISE_ATTRS
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&p.name));
    let known = match kind {
        Some(k) => known_core(k) || (k == Kind::User && known_ext),
        None => known_core(Kind::User) || known_core(Kind::Group) || known_ext,
    };
    if !known || (enterprise && !known_ext) {
        return Err(bad());
    }
    let name = p.name.to_lowercase();
    Ok(match &p.sub_attr {
        Some(sub) => format!("{name}.{}", sub.to_lowercase()),
        None if is_multi(&p.name) && !p.name.eq_ignore_ascii_case("schemas") => {
            format!("{name}.value")
        }
        // `manager eq "id"` means the manager's id.
        None if p.name.eq_ignore_ascii_case("manager") => "manager.value".into(),
        None => name,
    })
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `v` row condition for one leaf, inside an EXISTS that binds `v` to the resource `r` (and to the
/// element `e` inside a value path).
fn leaf(sql: &mut Sql, e: &AttrExp, kind: Option<Kind>, parent: Option<&str>) -> Result<String> {
    let scope = if parent.is_some() {
        "v.tenant = r.tenant AND v.resource_id = r.id AND v.elem = e.elem"
    } else {
        "v.tenant = r.tenant AND v.resource_id = r.id"
    };
    let exists =
        |cond: String| format!("EXISTS (SELECT 1 FROM scim_values v WHERE {scope} AND {cond})");
    match e {
        AttrExp::Present(p) => {
            let name = stored_name(kind, p, parent)?;
            let a = sql.text(name.clone());
            let b = sql.text(format!("{}.%", like_escape(&name)));
            Ok(exists(format!(
                "(v.attr = {a} OR v.attr LIKE {b} ESCAPE '\\') AND v.val <> ''"
            )))
        }
        AttrExp::Comparison(p, op, value) => {
            let name = stored_name(kind, p, parent)?;
            if matches!(value, CompValue::Null) {
                // `x eq null` is "x is absent"; `x ne null` is "x is present" (RFC 7644 3.4.2.2).
                let present = leaf(sql, &AttrExp::Present(p.clone()), kind, parent)?;
                return match op {
                    CompareOp::Eq => Ok(format!("NOT {present}")),
                    CompareOp::Ne => Ok(present),
                    _ => Err(ScimError::bad(
                        "invalidFilter",
                        format!("`{op}` cannot compare with null"),
                    )),
                };
            }
            let a = sql.text(name);
            let (text, num) = match value {
                CompValue::Str(s) => (Some(s.to_lowercase()), None),
                CompValue::True => (Some("true".to_string()), None),
                CompValue::False => (Some("false".to_string()), None),
                CompValue::Number(n) => (None, n.as_f64()),
                CompValue::Null => (None, None),
            };
            let is_bool = matches!(value, CompValue::True | CompValue::False);
            let cond = match (op, text, num) {
                (CompareOp::Eq | CompareOp::Ne, Some(t), _) => {
                    format!("v.val = {}", sql.text(t))
                }
                (CompareOp::Eq | CompareOp::Ne, None, Some(n)) => {
                    format!("v.num = {}", sql.bind(Bind::Num(n)))
                }
                (CompareOp::Co | CompareOp::Sw | CompareOp::Ew, Some(t), _) if !is_bool => {
                    let t = like_escape(&t);
                    let pattern = match op {
                        CompareOp::Co => format!("%{t}%"),
                        CompareOp::Sw => format!("{t}%"),
                        _ => format!("%{t}"),
                    };
                    format!("v.val LIKE {} ESCAPE '\\'", sql.text(pattern))
                }
                (CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le, t, n)
                    if !is_bool =>
                {
                    let sym = match op {
                        CompareOp::Gt => ">",
                        CompareOp::Ge => ">=",
                        CompareOp::Lt => "<",
                        _ => "<=",
                    };
                    match (t, n) {
                        (Some(t), _) => format!("v.val {sym} {}", sql.text(t)),
                        (None, Some(n)) => format!("v.num {sym} {}", sql.bind(Bind::Num(n))),
                        _ => return Err(ScimError::bad("invalidFilter", "bad comparison value")),
                    }
                }
                _ => {
                    return Err(ScimError::bad(
                        "invalidFilter",
                        format!("`{op}` cannot compare `{p}` with {value}"),
                    ));
                }
            };
            let found = exists(format!("v.attr = {a} AND {cond}"));
            Ok(if *op == CompareOp::Ne {
                format!("NOT {found}")
            } else {
                found
            })
        }
    }
}

fn val_filter(sql: &mut Sql, f: &ValFilter, kind: Option<Kind>, parent: &str) -> Result<String> {
    Ok(match f {
        ValFilter::Attr(e) => leaf(sql, e, kind, Some(parent))?,
        ValFilter::Not(inner) => format!("NOT ({})", val_filter(sql, inner, kind, parent)?),
        ValFilter::And(ops) => join(sql, ops.as_slice(), " AND ", |s, f| {
            val_filter(s, f, kind, parent)
        })?,
        ValFilter::Or(ops) => join(sql, ops.as_slice(), " OR ", |s, f| {
            val_filter(s, f, kind, parent)
        })?,
    })
}

fn join<T>(
    sql: &mut Sql,
    items: &[T],
    sep: &str,
    mut each: impl FnMut(&mut Sql, &T) -> Result<String>,
) -> Result<String> {
    let parts: Vec<String> = items
        .iter()
        .map(|i| each(sql, i).map(|s| format!("({s})")))
        .collect::<Result<_>>()?;
    Ok(parts.join(sep))
}

/// A filter as a SQL condition on `scim_resources r`.
pub fn filter_sql(sql: &mut Sql, f: &Filter, kind: Option<Kind>) -> Result<String> {
    Ok(match f {
        Filter::Attr(e) => leaf(sql, e, kind, None)?,
        Filter::ValuePath(vp) => {
            let parent = stored_name(kind, &vp.attr, None)?;
            let parent = parent
                .strip_suffix(".value")
                .map(str::to_string)
                .unwrap_or(parent);
            let inner = val_filter(sql, &vp.filter, kind, &parent)?;
            let like = sql.text(format!("{}.%", like_escape(&parent)));
            format!(
                "EXISTS (SELECT 1 FROM scim_values e WHERE e.tenant = r.tenant AND e.resource_id = r.id
                   AND e.attr LIKE {like} ESCAPE '\\' AND {inner})"
            )
        }
        Filter::Not(inner) => format!("NOT ({})", filter_sql(sql, inner, kind)?),
        Filter::And(ops) => join(sql, ops.as_slice(), " AND ", |s, f| filter_sql(s, f, kind))?,
        Filter::Or(ops) => join(sql, ops.as_slice(), " OR ", |s, f| filter_sql(s, f, kind))?,
    })
}

pub fn parse_filter(s: &str) -> Result<Filter> {
    s.parse::<Filter>()
        .map_err(|e| ScimError::bad("invalidFilter", format!("invalid filter `{s}`: {e}")))
}

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort_by: Option<String>,
    pub descending: bool,
    /// 1-based.
    pub start_index: i64,
    pub count: i64,
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Num(n) => query.bind(*n),
            Bind::Int(i) => query.bind(*i),
        };
    }
    query
}

/// One page of a tenant's resources matching a query, and how many match in all.
pub async fn search(
    pool: &sqlx::AnyPool,
    tenant: &str,
    kind: Option<Kind>,
    q: &Query,
) -> Result<(i64, Vec<Resource>)> {
    let mut sql = Sql::default();
    let mut cond = format!("r.tenant = {}", sql.text(tenant));
    if let Some(k) = kind {
        cond.push_str(&format!(
            " AND r.resource_type = {}",
            sql.text(k.resource_type())
        ));
    }
    if let Some(f) = &q.filter {
        cond.push_str(&format!(" AND ({})", filter_sql(&mut sql, f, kind)?));
    }
    let total_sql = format!("SELECT COUNT(*) AS n FROM scim_resources r WHERE {cond}");
    let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(total_sql)), &sql.binds);
    let total: i64 = query.fetch_one(pool).await?.try_get("n")?;
    if q.count <= 0 {
        return Ok((total, vec![]));
    }
    let order = match &q.sort_by {
        Some(s) => {
            let path = parse_attr(s)
                .map_err(|_| ScimError::bad("invalidValue", format!("cannot sort by `{s}`")))?;
            let name = stored_name(kind, &path, None)
                .map_err(|_| ScimError::bad("invalidValue", format!("cannot sort by `{s}`")))?;
            let a = sql.text(name);
            let dir = if q.descending { "DESC" } else { "ASC" };
            format!(
                "(SELECT MIN(v.val) FROM scim_values v WHERE v.tenant = r.tenant AND v.resource_id = r.id
                  AND v.attr = {a}) {dir} NULLS LAST, r.created_at, r.id"
            )
        }
        None => "r.created_at, r.id".to_string(),
    };
    let limit = sql.bind(Bind::Int(q.count));
    let offset = sql.bind(Bind::Int((q.start_index.max(1) - 1).max(0)));
    let page_sql = format!(
        "SELECT r.* FROM scim_resources r WHERE {cond} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    );
    let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(page_sql)), &sql.binds);
    let rows = query.fetch_all(pool).await?;
    let page = rows.iter().map(Resource::from_row).collect::<Result<_>>()?;
    Ok((total, page))
}

/// `name`, `name.sub` or `urn:...:name` as a path (the filter grammar's attrPath).
pub fn parse_attr(s: &str) -> Result<AttrPath> {
    match parse_filter(&format!("{s} pr"))? {
        Filter::Attr(AttrExp::Present(p)) => Ok(p),
        _ => Err(ScimError::bad(
            "invalidValue",
            format!("`{s}` is not an attribute"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// PATCH (RFC 7644 section 3.5.2), on the JSON representation

pub fn parse_patch(v: Value) -> Result<Vec<PatchOperation>> {
    let has_schema = v
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(schema_urns::PATCH_OP)));
    if !has_schema {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!(
                "a PATCH body must carry the schema {}",
                schema_urns::PATCH_OP
            ),
        ));
    }
    let op: PatchOp = serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("invalid SCIM path") {
            ScimError::bad("invalidPath", msg)
        } else if msg.contains("missing field `path`") {
            // RFC 7644 3.5.2.2: a remove without a path is "noTarget".
            ScimError::bad("noTarget", msg)
        } else {
            ScimError::bad("invalidSyntax", msg)
        }
    })?;
    Ok(op.operations)
}

fn key_of(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// The object an attribute path lives in (the resource, or the Enterprise extension), and the
/// attribute's canonical name there.
fn locate<'a>(
    root: &'a mut Map<String, Value>,
    kind: Kind,
    p: &AttrPath,
) -> Result<(&'a mut Map<String, Value>, String)> {
    let bad = || ScimError::bad("invalidPath", format!("no attribute `{p}`"));
    let enterprise = p
        .uri
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER));
    if let Some(uri) = &p.uri
        && !enterprise
        && !uri.eq_ignore_ascii_case(kind.schema())
    {
        return Err(bad());
    }
    if enterprise && kind == Kind::User {
        let name = ENTERPRISE_ATTRS
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&p.name))
            .ok_or_else(bad)?;
        let ext = root
            .entry(schema_urns::ENTERPRISE_USER.to_string())
            .or_insert_with(|| json!({}));
        if !ext.is_object() {
            *ext = json!({});
        }
        let Value::Object(ext) = ext else {
            return Err(bad());
        };
        return Ok((ext, (*name).to_string()));
    }
    let name = kind.canonical(&p.name).ok_or_else(bad)?;
    if ["id", "meta", "groups"].contains(&name) {
        return Err(ScimError::bad(
            "mutability",
            format!("`{name}` is read-only"),
        ));
    }
    Ok((root, name.to_string()))
}

fn json_cmp(have: &Value, op: &CompareOp, want: &CompValue) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (have, want) {
        (Value::String(h), CompValue::Str(w)) => {
            let (h, w) = (h.to_lowercase(), w.to_lowercase());
            match op {
                CompareOp::Co => return h.contains(&w),
                CompareOp::Sw => return h.starts_with(&w),
                CompareOp::Ew => return h.ends_with(&w),
                _ => Some(h.cmp(&w)),
            }
        }
        (Value::Bool(h), CompValue::True) => Some(h.cmp(&true)),
        (Value::Bool(h), CompValue::False) => Some(h.cmp(&false)),
        (Value::Number(h), CompValue::Number(w)) => h
            .as_f64()
            .zip(w.as_f64())
            .and_then(|(h, w)| h.partial_cmp(&w)),
        _ => None,
    };
    match (op, ord) {
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Ne, None) => true,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

fn matches(f: &ValFilter, el: &Value) -> bool {
    let get = |p: &AttrPath| {
        el.as_object()
            .and_then(|m| key_of(m, &p.name).and_then(|k| m.get(&k)))
    };
    match f {
        ValFilter::Attr(AttrExp::Present(p)) => get(p).is_some_and(|v| !v.is_null()),
        ValFilter::Attr(AttrExp::Comparison(p, op, want)) => match get(p) {
            Some(have) => json_cmp(have, op, want),
            None => *op == CompareOp::Ne,
        },
        ValFilter::Not(inner) => !matches(inner, el),
        ValFilter::And(ops) => ops.as_slice().iter().all(|f| matches(f, el)),
        ValFilter::Or(ops) => ops.as_slice().iter().any(|f| matches(f, el)),
    }
}

/// The `attr eq "x"` pairs of a conjunction: what a new element must carry so that a value path
/// that matched nothing matches it.
fn eq_pairs(f: &ValFilter, out: &mut Map<String, Value>) -> bool {
    match f {
        ValFilter::Attr(AttrExp::Comparison(p, CompareOp::Eq, v)) => {
            let v = match v {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::True => Value::Bool(true),
                CompValue::False => Value::Bool(false),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return false,
            };
            out.insert(p.name.clone(), v);
            true
        }
        ValFilter::And(ops) => ops.as_slice().iter().all(|f| eq_pairs(f, out)),
        _ => false,
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let key = key_of(a, &k).unwrap_or(k);
                a.insert(key, v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// Entra ID sends the Enterprise `manager` as a bare id string; the schema has an object.
fn shape(name: &str, value: Value) -> Value {
    match value {
        Value::String(s) if name == "manager" => json!({ "value": s }),
        v => v,
    }
}

fn set_attr(map: &mut Map<String, Value>, name: &str, op: Op, value: Value) {
    let value = shape(name, value);
    let key = key_of(map, name).unwrap_or_else(|| name.to_string());
    if is_multi(name) {
        let items = match value {
            Value::Array(a) => a,
            Value::Null => vec![],
            v => vec![v],
        };
        let slot = map.entry(key).or_insert_with(|| json!([]));
        if op == Op::Replace || !slot.is_array() {
            *slot = json!([]);
        }
        if let Value::Array(a) = slot {
            for i in items {
                // Adding a member twice is a no-op, not a duplicate (Okta re-pushes whole groups).
                let same = |x: &Value| {
                    x == &i
                        || (x.get("value").is_some()
                            && x.get("value") == i.get("value")
                            && x.get("type") == i.get("type"))
                };
                if let Some(existing) = a.iter_mut().find(|x| same(x)) {
                    merge(existing, i);
                } else {
                    a.push(i);
                }
            }
        }
    } else if value.is_null() {
        map.remove(&key);
    } else {
        match map.get_mut(&key) {
            Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
            _ => {
                map.insert(key, value);
            }
        }
    }
}

/// `urn:...:enterprise:2.0:User` as a PATCH path parses as attribute `User` of schema
/// `urn:...:enterprise:2.0`; it means the whole extension.
fn is_whole_extension(p: &AttrPath) -> bool {
    p.sub_attr.is_none()
        && p.uri.as_deref().is_some_and(|u| {
            format!("{u}:{}", p.name).eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER)
        })
}

fn apply_path(
    root: &mut Map<String, Value>,
    kind: Kind,
    op: Op,
    path: &PatchPath,
    value: Option<Value>,
) -> Result<()> {
    if let PatchPath::Attr(p) = path
        && kind == Kind::User
        && is_whole_extension(p)
    {
        match (op, value) {
            (Op::Remove, _) | (_, None | Some(Value::Null)) => {
                root.remove(schema_urns::ENTERPRISE_USER);
            }
            (_, Some(Value::Object(ext))) => {
                // scim2-models repeats the extension's `schemas` inside its object; it is not an
                // attribute.
                for (ek, ev) in ext.into_iter().filter(|(k, _)| k != "schemas") {
                    let p = AttrPath {
                        uri: Some(schema_urns::ENTERPRISE_USER.into()),
                        name: ek,
                        sub_attr: None,
                    };
                    apply_path(root, kind, op, &PatchPath::Attr(p), Some(ev))?;
                }
            }
            _ => {
                return Err(ScimError::bad(
                    "invalidValue",
                    "the enterprise extension must be an object",
                ));
            }
        }
        return Ok(());
    }
    match path {
        PatchPath::Attr(p) => {
            let (map, name) = locate(root, kind, p)?;
            match (&p.sub_attr, op) {
                (None, Op::Remove) => {
                    // Entra ID removes members as `{"path":"members","value":[{"value":"id"}]}`.
                    if let (Some(Value::Array(gone)), true) = (&value, is_multi(&name)) {
                        let ids: Vec<&Value> = gone.iter().filter_map(|g| g.get("value")).collect();
                        if let Some(Value::Array(a)) =
                            key_of(map, &name).and_then(|k| map.get_mut(&k))
                        {
                            a.retain(|x| x.get("value").is_none_or(|v| !ids.contains(&v)));
                        }
                    } else if let Some(k) = key_of(map, &name) {
                        map.remove(&k);
                    }
                }
                (None, _) => set_attr(map, &name, op, value.unwrap_or(Value::Null)),
                (Some(sub), _) => {
                    let key = key_of(map, &name).unwrap_or(name.clone());
                    let slot = map.entry(key).or_insert_with(|| json!({}));
                    match slot {
                        Value::Object(obj) => {
                            let sk = key_of(obj, sub).unwrap_or(sub.clone());
                            match (op, value) {
                                (Op::Remove, _) | (_, None | Some(Value::Null)) => {
                                    obj.remove(&sk);
                                }
                                (_, Some(v)) => {
                                    obj.insert(sk, v);
                                }
                            }
                        }
                        // `emails.type`: the sub-attribute of every element.
                        Value::Array(items) => {
                            for it in items.iter_mut() {
                                if let Value::Object(obj) = it {
                                    let sk = key_of(obj, sub).unwrap_or(sub.clone());
                                    match (&op, &value) {
                                        (Op::Remove, _) | (_, None) => {
                                            obj.remove(&sk);
                                        }
                                        (_, Some(v)) => {
                                            obj.insert(sk, v.clone());
                                        }
                                    }
                                }
                            }
                        }
                        _ => {
                            return Err(ScimError::bad(
                                "invalidPath",
                                format!("`{name}` has no sub-attributes"),
                            ));
                        }
                    }
                }
            }
        }
        PatchPath::Value(vp) => {
            let (map, name) = locate(root, kind, &vp.attr)?;
            if !is_multi(&name) {
                return Err(ScimError::bad(
                    "invalidPath",
                    format!("`{name}` is not multi-valued"),
                ));
            }
            let key = key_of(map, &name).unwrap_or(name.clone());
            let mut items = match map.remove(&key) {
                Some(Value::Array(a)) => a,
                _ => vec![],
            };
            let hits: Vec<usize> = (0..items.len())
                .filter(|i| matches(&vp.filter, &items[*i]))
                .collect();
            if hits.is_empty() && op != Op::Remove {
                // Entra ID replaces `emails[type eq "work"].value` on users that have no work email
                // yet: create the element the filter describes instead of failing with noTarget.
                let mut el = Map::new();
                if !eq_pairs(&vp.filter, &mut el) {
                    return Err(ScimError::bad(
                        "noTarget",
                        format!("no value of `{name}` matches the path"),
                    ));
                }
                items.push(Value::Object(el));
            }
            let hits: Vec<usize> = (0..items.len())
                .filter(|i| matches(&vp.filter, &items[*i]))
                .collect();
            if op == Op::Remove && vp.sub_attr.is_none() {
                let mut i = 0;
                items.retain(|_| {
                    let keep = !hits.contains(&i);
                    i += 1;
                    keep
                });
            } else {
                for i in hits {
                    let el = &mut items[i];
                    match (&vp.sub_attr, op, &value) {
                        (Some(sub), Op::Remove, _) | (Some(sub), _, None) => {
                            if let Value::Object(o) = el
                                && let Some(k) = key_of(o, sub)
                            {
                                o.remove(&k);
                            }
                        }
                        (Some(sub), _, Some(v)) => {
                            if let Value::Object(o) = el {
                                let k = key_of(o, sub).unwrap_or(sub.clone());
                                o.insert(k, v.clone());
                            }
                        }
                        (None, _, Some(v)) => merge(el, v.clone()),
                        (None, _, None) => {}
                    }
                }
            }
            if !items.is_empty() {
                map.insert(key, Value::Array(items));
            }
        }
    }
    Ok(())
}

/// Apply PATCH operations to a stored representation; the result still has to pass [`canonical`].
pub fn apply_patch(kind: Kind, raw: &Value, ops: Vec<PatchOperation>) -> Result<Value> {
    let mut doc = raw.clone();
    let Value::Object(root) = &mut doc else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "stored resource is not an object",
        ));
    };
    for operation in ops {
        let (op, target) = match operation {
            PatchOperation::Add(t) => (Op::Add, t),
            PatchOperation::Replace(t) => (Op::Replace, t),
            PatchOperation::Remove { path, value } => {
                apply_path(root, kind, Op::Remove, &path, value)?;
                continue;
            }
        };
        match target {
            OperationTarget::WithPath { path, value } => {
                if value.is_none() && op == Op::Add {
                    return Err(ScimError::bad("invalidValue", "`add` needs a value"));
                }
                apply_path(root, kind, op, &path, value)?;
            }
            // No path: the value is a partial resource. Okta includes `id` in it; Entra ID may use
            // dotted names (`name.givenName`) and extension URNs as keys.
            OperationTarget::WithoutPath { value } => {
                for (k, v) in value {
                    if k.eq_ignore_ascii_case("id")
                        || k.eq_ignore_ascii_case("meta")
                        || k.eq_ignore_ascii_case("schemas")
                    {
                        continue;
                    }
                    if k.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER) {
                        let Value::Object(ext) = v else {
                            return Err(ScimError::bad(
                                "invalidValue",
                                "the enterprise extension must be an object",
                            ));
                        };
                        for (ek, ev) in ext {
                            let p = AttrPath {
                                uri: Some(schema_urns::ENTERPRISE_USER.into()),
                                name: ek,
                                sub_attr: None,
                            };
                            apply_path(root, kind, op, &PatchPath::Attr(p), Some(ev))?;
                        }
                        continue;
                    }
                    let path: PatchPath = k
                        .parse()
                        .map_err(|e| ScimError::bad("invalidPath", format!("`{k}`: {e}")))?;
                    apply_path(root, kind, op, &path, Some(v))?;
                }
            }
        }
    }
    Ok(doc)
}

// ---------------------------------------------------------------------------------------------
// Users to person records

/// Lower-case, single hyphens: identity providers send display values ("New York", "Engineering")
/// where templates and connector target tables use slugs (`new-york-engineering`), as the HR feed does.
fn slug(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase()
}

fn pick<'a>(items: Option<&'a Value>, prefer_type: &str) -> Option<&'a Value> {
    let items = items?.as_array()?;
    items
        .iter()
        .find(|i| i.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| {
            items.iter().find(|i| {
                i.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case(prefer_type))
            })
        })
        .or_else(|| items.first())
}

/// What one tenant's view of a user says about the person. `None` when the user lacks the
/// correlation attribute: such a user is kept as a SCIM resource but is nobody latchkey knows.
pub fn person_record(
    tenant: &str,
    id: &str,
    user: &Value,
    groups: &[String],
    correlate_by: CorrelateBy,
) -> Option<PersonRecord> {
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let ext = user.get(schema_urns::ENTERPRISE_USER);
    let e = |name: &str| s(ext.and_then(|x| x.get(name)));
    let user_name = s(user.get("userName"));
    let key = match correlate_by {
        CorrelateBy::ExternalId => s(user.get("externalId")),
        CorrelateBy::EmployeeNumber => e("employeeNumber"),
        CorrelateBy::UserName => user_name.clone(),
    }?;
    let mut attrs = BTreeMap::new();
    let name = s(user.get("displayName"))
        .or_else(|| s(user.get("name").and_then(|n| n.get("formatted"))))
        .or_else(|| {
            let n = user.get("name")?;
            let parts: Vec<String> = [s(n.get("givenName")), s(n.get("familyName"))]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
        .or_else(|| user_name.clone());
    let email = s(pick(user.get("emails"), "work").and_then(|m| m.get("value")))
        .or_else(|| user_name.clone().filter(|u| u.contains('@')));
    let site =
        s(pick(user.get("addresses"), "work").and_then(|a| a.get("locality"))).map(|x| slug(&x));
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            attrs.insert(k.to_string(), v);
        }
    };
    put("name", name);
    put("email", email);
    put("user_name", user_name);
    put("department", e("department").map(|x| slug(&x)));
    put("role", s(user.get("title")).map(|x| slug(&x)));
    put("employment_type", s(user.get("userType")).map(|x| slug(&x)));
    put("site", site.clone());
    put("employee_number", e("employeeNumber"));
    put("organization", e("organization"));
    put("division", e("division"));
    put("cost_center", e("costCenter"));
    put(
        "manager",
        s(ext
            .and_then(|x| x.get("manager"))
            .and_then(|m| m.get("value"))),
    );
    if !groups.is_empty() {
        put("groups", Some(groups.join(",")));
    }
    let active = user.get("active").and_then(Value::as_bool).unwrap_or(true);
    Some(PersonRecord {
        source: source_name(tenant),
        key,
        location: format!("scim:{tenant}/Users/{id}"),
        status: Some(if active {
            RecordStatus::Active
        } else {
            RecordStatus::Terminated
        }),
        hire_date: None,
        termination_date: None,
        contract_end: None,
        site,
        attrs,
    })
}

pub fn source_name(tenant: &str) -> String {
    format!("scim:{tenant}")
}

/// What a tenant needs to turn users into person records.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tenant: String,
    pub correlate_by: CorrelateBy,
    pub scope_groups: Vec<String>,
}

/// Bring the person a SCIM user stands for in line with the user, on the caller's transaction:
/// a joiner, mover, leaver or rehire through the engine like any other source. Returns the
/// correlation key the user now maps to.
pub async fn sync_user(
    engine: &Engine,
    conn: &mut AnyConnection,
    m: &Mapping,
    user: Option<&Resource>,
    old_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let source = source_name(&m.tenant);
    let record = match user {
        Some(u) => {
            let groups: Vec<String> = groups_of(conn, &m.tenant, &u.id)
                .await?
                .into_iter()
                .map(|(_, name)| name)
                .collect();
            let in_scope = m.scope_groups.is_empty()
                || groups
                    .iter()
                    .any(|g| m.scope_groups.iter().any(|s| s.eq_ignore_ascii_case(g)));
            person_record(&m.tenant, &u.id, &u.raw, &groups, m.correlate_by).filter(|_| in_scope)
        }
        None => None,
    };
    let new_key = record.as_ref().map(|r| r.key.clone());
    if let Some(old) = old_key
        && new_key.as_deref() != Some(old)
    {
        engine.remove_record_tx(conn, &source, old, now).await?;
    }
    if let Some(r) = &record {
        engine.apply_record_tx(conn, r, now).await?;
    }
    Ok(new_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_string_boolean_and_capitalised_ops_patch() {
        let raw = json!({"schemas":[schema_urns::USER],"id":"1","userName":"a@x","active":true});
        let body = json!({"schemas":[schema_urns::PATCH_OP],"Operations":[
            {"op":"Replace","path":"active","value":"False"},
            {"op":"Add","path":"emails[type eq \"work\"].value","value":"a@x.com"},
            {"op":"Add","path":"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager","value":"m1"}
        ]});
        let out = apply_patch(Kind::User, &raw, parse_patch(body).unwrap()).unwrap();
        let out = canonical(Kind::User, out, false).unwrap();
        assert_eq!(out["active"], json!(false));
        assert_eq!(out["emails"][0]["value"], json!("a@x.com"));
        assert_eq!(
            out[schema_urns::ENTERPRISE_USER]["manager"]["value"],
            json!("m1")
        );
    }

    #[test]
    fn okta_patch_without_path_and_member_removal_by_filter() {
        let raw = json!({"schemas":[schema_urns::GROUP],"id":"g","displayName":"Doors",
            "members":[{"value":"u1"},{"value":"u2"}]});
        let body = json!({"schemas":[schema_urns::PATCH_OP],"Operations":[
            {"op":"replace","value":{"id":"g","displayName":"Door access"}},
            {"op":"remove","path":"members[value eq \"u1\"]"},
            {"op":"add","path":"members","value":[{"value":"u3"},{"value":"u2"}]}
        ]});
        let out = apply_patch(Kind::Group, &raw, parse_patch(body).unwrap()).unwrap();
        let ids: Vec<&str> = out["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["u2", "u3"]);
        assert_eq!(out["displayName"], json!("Door access"));
    }

    #[test]
    fn filters_become_sql_with_bound_values_only() {
        let f = parse_filter(
            r#"userName sw "j'; DROP TABLE x" and (emails[type eq "work" and value co "@ex"] or not (title pr))"#,
        )
        .unwrap();
        let mut sql = Sql::default();
        let s = filter_sql(&mut sql, &f, Some(Kind::User)).unwrap();
        assert!(!s.contains("DROP"), "{s}");
        assert!(s.contains("e.elem"), "{s}");
        assert_eq!(sql.binds.len(), 9, "{s}");
        let unknown = parse_filter(r#"nope eq "x""#).unwrap();
        let err = filter_sql(&mut Sql::default(), &unknown, Some(Kind::User)).unwrap_err();
        assert!(matches!(
            err,
            ScimError::Client {
                scim_type: Some("invalidFilter"),
                ..
            }
        ));
    }

    #[test]
    fn user_maps_to_a_person_record_with_slugs() {
        let u = json!({"userName":"e1@example.com","externalId":"E1","active":false,
            "title":"Technician","userType":"Employee",
            "addresses":[{"type":"work","locality":"New York"}],
            schema_urns::ENTERPRISE_USER: {"department":"Engineering","manager":{"value":"E9"}}});
        let r = person_record(
            "okta",
            "id1",
            &u,
            &["Doors".into()],
            CorrelateBy::ExternalId,
        )
        .unwrap();
        assert_eq!(r.key, "E1");
        assert_eq!(r.status, Some(RecordStatus::Terminated));
        assert_eq!(r.site.as_deref(), Some("new-york"));
        assert_eq!(r.attrs["department"], "engineering");
        assert_eq!(r.attrs["role"], "technician");
        assert_eq!(r.attrs["manager"], "E9");
        assert_eq!(r.attrs["groups"], "Doors");
        assert_eq!(r.attrs["email"], "e1@example.com");
        assert!(
            person_record(
                "okta",
                "i",
                &json!({"userName":"x"}),
                &[],
                CorrelateBy::ExternalId
            )
            .is_none()
        );
    }
}
