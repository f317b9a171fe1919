//! SCIM resources as identity providers pushed them: the canonical JSON of each resource, one row
//! per searchable value (`scim_values`, what filters run against), and one row per group member
//! (`scim_members`), so a membership change writes the member's rows and not the group's.

use super::batch::{MAX_PARAMS, Marks};
use super::{Result, StoreError};
use crate::model::PersonKey;
use scim_v2::schema_urns;
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, HashMap};

/// One stored resource. `raw` is its canonical JSON; a group's carries no `members` (they are rows).
#[derive(Debug, Clone)]
pub struct ScimRow {
    pub id: String,
    pub resource_type: String,
    pub person_key: Option<PersonKey>,
    pub raw: String,
    pub version: i64,
}

impl ScimRow {
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.try_get("id")?,
            resource_type: r.try_get("resource_type")?,
            person_key: r.try_get("person_key")?,
            raw: r.try_get("raw")?,
            version: r.try_get("version")?,
        })
    }
}

/// What [`put`] writes: the resource and its indexed columns.
#[derive(Debug)]
pub struct ScimPut<'a> {
    pub id: &'a str,
    pub resource_type: &'a str,
    pub person_key: Option<&'a str>,
    pub raw: &'a Value,
    pub version: i64,
}

pub async fn get(
    conn: &mut AnyConnection,
    tenant: &str,
    resource_type: &str,
    id: &str,
) -> Result<Option<ScimRow>> {
    sqlx::query("SELECT * FROM scim_resources WHERE tenant = $1 AND id = $2 AND resource_type = $3")
        .bind(tenant)
        .bind(id)
        .bind(resource_type)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| ScimRow::from_row(&r))
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

/// Another group of this tenant already has this displayName (case-insensitively).
pub async fn display_name_taken(
    conn: &mut AnyConnection,
    tenant: &str,
    name: &str,
    except: &str,
) -> Result<bool> {
    let row = sqlx::query(
        "SELECT id FROM scim_resources WHERE tenant = $1 AND resource_type = 'Group'
           AND LOWER(display_name) = $2 AND id <> $3 LIMIT 1",
    )
    .bind(tenant)
    .bind(name.to_lowercase())
    .bind(except)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// Whether this tenant has a resource with this id (a user or a group: what a member may be).
pub async fn exists(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 AS one FROM scim_resources WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Insert or replace a resource and its searchable values (a group's members excepted: they are
/// written by [`put_member`] and [`delete_member`]). With the representation it replaces
/// (`before`), only the values that changed are rewritten. `Ok(false)`: another writer stored
/// this version or a newer one first.
pub async fn put(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &ScimPut<'_>,
    before: Option<&Value>,
    created_at: i64,
    modified_at: i64,
) -> Result<bool> {
    let str_attr = |name: &str| r.raw.get(name).and_then(Value::as_str);
    let active = r.raw.get("active").and_then(Value::as_bool).map(i64::from);
    let user_name = str_attr("userName");
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
    .bind(r.id)
    .bind(r.resource_type)
    .bind(str_attr("externalId"))
    .bind(user_name)
    .bind(user_name.map(str::to_lowercase))
    .bind(str_attr("displayName"))
    .bind(active)
    .bind(r.person_key)
    .bind(r.raw.to_string())
    .bind(r.version)
    .bind(created_at)
    .bind(modified_at)
    .execute(&mut *conn)
    .await?;
    // Two writers that read the same version: on PostgreSQL the second waits for the first's row
    // lock, then finds a version as new as its own and must not overwrite it.
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let was_rows = rows_by_key(before.map(flatten).unwrap_or_default());
    let now_rows = rows_by_key(flatten(r.raw));
    if before.is_none() {
        sqlx::query(
            "DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2 AND attr NOT LIKE 'members.%'",
        )
        .bind(tenant)
        .bind(r.id)
        .execute(&mut *conn)
        .await?;
    }
    for (k, v) in &was_rows {
        if now_rows.get(k) != Some(v) {
            sqlx::query(
                "DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2 AND elem = $3 AND attr = $4",
            )
            .bind(tenant)
            .bind(r.id)
            .bind(k.1)
            .bind(&k.0)
            .execute(&mut *conn)
            .await?;
        }
    }
    let fresh: Vec<Flat> = now_rows
        .iter()
        .filter(|(k, v)| was_rows.get(*k) != Some(*v))
        .map(|((attr, elem), (val, num))| Flat {
            attr: attr.clone(),
            elem: *elem,
            val: val.clone(),
            num: num.map(f64::from_bits),
        })
        .collect();
    insert_values(conn, tenant, r.id, fresh).await?;
    Ok(true)
}

/// Values a row takes in `scim_values`: tenant, resource, attr, elem, val, num.
const VALUE_COLUMNS: usize = 6;

/// `rows` values written with one statement per [`MAX_PARAMS`] parameters: a user's dozen or so
/// values are one statement inside the request's turn at the writer, not a dozen.
async fn insert_values(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    rows: Vec<Flat>,
) -> Result<()> {
    let m = Marks::of(conn);
    for rows in rows.chunks(MAX_PARAMS / VALUE_COLUMNS) {
        let values: Vec<String> = (0..rows.len())
            .map(|i| {
                let from = 1 + i * VALUE_COLUMNS;
                // As text: sqlx's Any driver sends an f64 in a binary form PostgreSQL refuses here.
                format!(
                    "({}, CAST({} AS DOUBLE PRECISION))",
                    m.list(from, VALUE_COLUMNS - 1),
                    m.list(from + VALUE_COLUMNS - 1, 1)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO scim_values (tenant, resource_id, attr, elem, val, num) VALUES {}",
            values.join(", ")
        );
        // Only parameter marks are formatted in; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for f in rows {
            q = q
                .bind(tenant)
                .bind(id)
                .bind(f.attr.clone())
                .bind(f.elem)
                .bind(f.val.clone())
                .bind(f.num.map(|n| n.to_string()));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

type RowKey = (String, i64);

fn rows_by_key(rows: Vec<Flat>) -> BTreeMap<RowKey, (Option<String>, Option<u64>)> {
    rows.into_iter()
        .map(|f| ((f.attr, f.elem), (f.val, f.num.map(f64::to_bits))))
        .collect()
}

/// A group's members in the order they were added: (lower-case id, element).
pub async fn members(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<Vec<(String, Value)>> {
    let rows = sqlx::query(
        "SELECT member_id, element FROM scim_members WHERE tenant = $1 AND group_id = $2 ORDER BY seq",
    )
    .bind(tenant)
    .bind(group)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("member_id")?;
            let el: String = r.try_get("element")?;
            let el = serde_json::from_str(&el).map_err(|e| StoreError::Corrupt {
                table: "scim_members",
                message: format!("member {id} of group {group}: {e}"),
            })?;
            Ok((id, el))
        })
        .collect()
}

/// One member of a group, if it is one (`id` in any case).
pub async fn member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<Option<Value>> {
    let row = sqlx::query(
        "SELECT element FROM scim_members WHERE tenant = $1 AND group_id = $2 AND member_id = $3",
    )
    .bind(tenant)
    .bind(group)
    .bind(id.to_lowercase())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        let el: String = r.try_get("element")?;
        serde_json::from_str(&el).map_err(|e| StoreError::Corrupt {
            table: "scim_members",
            message: format!("member {id} of group {group}: {e}"),
        })
    })
    .transpose()
}

/// Add a member to a group, or change its element (`existed`: it is a member already), and its
/// searchable values; nothing else of the group is touched.
pub async fn put_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
    element: &Value,
    existed: bool,
) -> Result<()> {
    let id = id.to_lowercase();
    if existed {
        sqlx::query(
            "UPDATE scim_members SET element = $1 WHERE tenant = $2 AND group_id = $3 AND member_id = $4",
        )
        .bind(element.to_string())
        .bind(tenant)
        .bind(group)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
        delete_member_values(conn, tenant, group, &id).await?;
    } else {
        sqlx::query(
            "INSERT INTO scim_members (tenant, group_id, member_id, element) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(group)
        .bind(&id)
        .bind(element.to_string())
        .execute(&mut *conn)
        .await?;
    }
    let mut rows = Vec::new();
    flatten_attr(
        &mut rows,
        "members".into(),
        &Value::Array(vec![element.clone()]),
    );
    insert_values(conn, tenant, group, rows).await
}

/// Take a member out of a group (`id` in any case), with its searchable values.
pub async fn delete_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<()> {
    let id = id.to_lowercase();
    sqlx::query("DELETE FROM scim_members WHERE tenant = $1 AND group_id = $2 AND member_id = $3")
        .bind(tenant)
        .bind(group)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    delete_member_values(conn, tenant, group, &id).await
}

async fn delete_member_values(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<()> {
    // Rows of one member share its element number; older rows may be numbered by position, so
    // they are found through the member's value.
    let elems = sqlx::query(
        "SELECT elem FROM scim_values WHERE tenant = $1 AND attr = 'members.value' AND val = $2
           AND resource_id = $3",
    )
    .bind(tenant)
    .bind(id)
    .bind(group)
    .fetch_all(&mut *conn)
    .await?;
    for e in elems {
        let elem: i64 = e.try_get("elem")?;
        sqlx::query(
            "DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2 AND elem = $3
               AND attr LIKE 'members.%'",
        )
        .bind(tenant)
        .bind(group)
        .bind(elem)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The element number of a group member: derived from its id, so a member's rows stay put when
/// others come and go.
fn member_elem(id: &str) -> i64 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.to_lowercase().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    i64::from_be_bytes(b) & i64::MAX
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

/// A resource, its values and, for a group, its member rows.
pub async fn delete(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM scim_members WHERE tenant = $1 AND group_id = $2")
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
        "SELECT r.id, r.display_name FROM scim_members m
         JOIN scim_resources r ON r.tenant = m.tenant AND r.id = m.group_id
         WHERE m.tenant = $1 AND m.member_id = $2 AND r.resource_type = 'Group'
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

/// Members by lower-case id, for the callers that diff a whole list against the rows.
pub async fn members_by_id(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
) -> Result<HashMap<String, Value>> {
    Ok(members(conn, tenant, group).await?.into_iter().collect())
}

struct Flat {
    attr: String,
    elem: i64,
    val: Option<String>,
    num: Option<f64>,
}

/// A value as stored for filters: strings lower-cased (SCIM compares case-insensitively unless
/// caseExact), numbers also as numbers.
pub fn scalar(v: &Value) -> Option<(String, Option<f64>)> {
    match v {
        Value::String(s) => Some((s.to_lowercase(), None)),
        Value::Bool(b) => Some((b.to_string(), None)),
        Value::Number(n) => Some((n.to_string(), n.as_f64())),
        _ => None,
    }
}

fn push_flat(out: &mut Vec<Flat>, attr: String, elem: i64, v: &Value) {
    if let Some((val, num)) = scalar(v) {
        out.push(Flat {
            attr,
            elem,
            val: Some(val),
            num,
        });
    }
}

fn flatten_attr(out: &mut Vec<Flat>, name: String, v: &Value) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let i = match item.get("value").and_then(Value::as_str) {
                    Some(id) if name == "members" => member_elem(id),
                    _ => i as i64,
                };
                match item {
                    Value::Object(sub) => {
                        for (sk, sv) in sub {
                            push_flat(out, format!("{name}.{}", sk.to_lowercase()), i, sv);
                        }
                    }
                    other => push_flat(out, name.clone(), i, other),
                }
            }
        }
        Value::Object(sub) => {
            for (sk, sv) in sub {
                push_flat(out, format!("{name}.{}", sk.to_lowercase()), 0, sv);
            }
        }
        other => push_flat(out, name, 0, other),
    }
}

/// Every scalar value of a resource but a group's members, under a lower-case dotted name.
fn flatten(raw: &Value) -> Vec<Flat> {
    let mut out = Vec::new();
    let Value::Object(map) = raw else {
        return out;
    };
    for (k, v) in map {
        if k == "members" {
            continue;
        }
        if k.starts_with("urn:") {
            // Enterprise attributes under their bare names (they collide with no core one);
            // declared extensions' under `urn:...:name`, as filters name them.
            let prefix = if k.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER) {
                String::new()
            } else {
                format!("{}:", k.to_lowercase())
            };
            if let Value::Object(ext) = v {
                for (ek, ev) in ext {
                    flatten_attr(&mut out, format!("{prefix}{}", ek.to_lowercase()), ev);
                }
            }
        } else {
            flatten_attr(&mut out, k.to_lowercase(), v);
        }
    }
    out
}
