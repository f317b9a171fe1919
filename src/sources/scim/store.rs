//! Resources in the store: the canonical JSON and one row per searchable value.

use super::*;

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

    pub(super) fn from_row(r: &sqlx::any::AnyRow) -> Result<Self> {
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

    pub(super) fn str_attr(&self, name: &str) -> Option<&str> {
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

/// Insert or replace a resource and its searchable values. With the representation it replaces
/// (`before`), only what changed is rewritten: a member added to a group of 20,000 writes that
/// member's rows, not the group's.
pub async fn put(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &Resource,
    before: Option<&Value>,
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
    match before {
        None => {
            sqlx::query("DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2")
                .bind(tenant)
                .bind(&r.id)
                .execute(&mut *conn)
                .await?;
            insert_values(conn, tenant, &r.id, flatten(&r.raw)).await
        }
        Some(old) => put_changed(conn, tenant, r, old).await,
    }
}

async fn insert_values(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    rows: Vec<Flat>,
) -> Result<()> {
    for f in rows {
        sqlx::query(
            "INSERT INTO scim_values (tenant, resource_id, attr, elem, val, num)
             VALUES ($1, $2, $3, $4, $5, CAST($6 AS DOUBLE PRECISION))",
        )
        .bind(tenant)
        .bind(id)
        .bind(f.attr)
        .bind(f.elem)
        .bind(f.val)
        // As text: sqlx's Any driver sends an f64 in a binary form PostgreSQL refuses here.
        .bind(f.num.map(|n| n.to_string()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn without_members(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "members")
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

type RowKey = (String, i64);

fn rows_by_key(rows: Vec<Flat>) -> BTreeMap<RowKey, (Option<String>, Option<u64>)> {
    rows.into_iter()
        .map(|f| ((f.attr, f.elem), (f.val, f.num.map(f64::to_bits))))
        .collect()
}

/// Members by id (lower case, as stored), each with its element.
fn members_by_id(v: &Value) -> std::collections::HashMap<String, &Value> {
    v.get("members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    let id = m
                        .get("value")
                        .and_then(Value::as_str)
                        .map_or_else(|| m.to_string(), str::to_lowercase);
                    (id, m)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn put_changed(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &Resource,
    old: &Value,
) -> Result<()> {
    // Everything but the members: a few rows, rewritten where they differ.
    let was_rows = rows_by_key(flatten(&without_members(old)));
    let now_rows = rows_by_key(flatten(&without_members(&r.raw)));
    for (k, v) in &was_rows {
        if now_rows.get(k) != Some(v) {
            sqlx::query(
                "DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2 AND elem = $3 AND attr = $4",
            )
            .bind(tenant)
            .bind(&r.id)
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
    insert_values(conn, tenant, &r.id, fresh).await?;
    let (was, now) = (members_by_id(old), members_by_id(&r.raw));
    for (id, el) in &was {
        if now.get(id) != Some(el) {
            // Rows of one member share its element number; older rows may be numbered by
            // position, so they are found through the member's value.
            let elems = sqlx::query(
                "SELECT elem FROM scim_values WHERE tenant = $1 AND attr = 'members.value' AND val = $2
                   AND resource_id = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(&r.id)
            .fetch_all(&mut *conn)
            .await?;
            for e in elems {
                let elem: i64 = e.try_get("elem")?;
                sqlx::query(
                    "DELETE FROM scim_values WHERE tenant = $1 AND resource_id = $2 AND elem = $3
                       AND attr LIKE 'members.%'",
                )
                .bind(tenant)
                .bind(&r.id)
                .bind(elem)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    let mut rows = Vec::new();
    for (id, el) in &now {
        if was.get(id) != Some(el) {
            flatten_attr(
                &mut rows,
                "members".into(),
                &Value::Array(vec![(*el).clone()]),
            );
        }
    }
    insert_values(conn, tenant, &r.id, rows).await
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

pub(super) struct Flat {
    attr: String,
    elem: i64,
    val: Option<String>,
    num: Option<f64>,
}

pub(super) fn scalar(v: &Value) -> Option<(String, Option<f64>)> {
    match v {
        Value::String(s) => Some((s.to_lowercase(), None)),
        Value::Bool(b) => Some((b.to_string(), None)),
        Value::Number(n) => Some((n.to_string(), n.as_f64())),
        _ => None,
    }
}

/// Every scalar value of a resource, under a lower-case dotted name. Enterprise extension
/// attributes are stored under their bare names: they collide with no core User attribute.
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

pub(super) fn flatten(raw: &Value) -> Vec<Flat> {
    let mut out = Vec::new();
    let Value::Object(map) = raw else {
        return out;
    };
    for (k, v) in map {
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
