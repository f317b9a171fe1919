//! Writes: create, replace, patch and delete, each in one transaction.

use super::*;

// Writes

/// After a group's membership changed: every user who joined or left it is re-evaluated (their
/// `groups` attribute, and scope), in the same transaction.
pub(super) async fn resync_members(
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

/// A group's displayName is unique per tenant, and its members are users or groups of the tenant:
/// a member id the server never issued is refused, not stored dangling. Only members new to the
/// group are looked up.
async fn check_group(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    id: &str,
    before: Option<&Resource>,
    body: &Value,
) -> Result<(), Failure> {
    if let Some(name) = body.get("displayName").and_then(Value::as_str)
        && src::display_name_taken(conn, &t.name, name, id).await?
    {
        return Err(Failure(ScimError::Client {
            status: 409,
            scim_type: Some("uniqueness"),
            detail: format!("a group named `{name}` already exists"),
        }));
    }
    let old = before.map(Resource::member_ids).unwrap_or_default();
    let members = body.get("members").and_then(Value::as_array);
    for m in members.into_iter().flatten() {
        let Some(mid) = m.get("value").and_then(Value::as_str) else {
            return Err(Failure(ScimError::bad(
                "invalidValue",
                "every member needs a `value` (the member's id)",
            )));
        };
        if !old.contains(mid) && (mid == id || !src::exists(conn, &t.name, mid).await?) {
            return Err(Failure(ScimError::bad(
                "invalidValue",
                format!("member `{mid}` is not a User or Group of this tenant"),
            )));
        }
    }
    Ok(())
}

pub(super) fn stamp(
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
pub(super) async fn write(
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
    if kind == Kind::Group {
        check_group(conn, t, id, before, &body).await?;
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
    src::put(conn, &t.name, &r, before.map(|b| &b.raw), at, at).await?;
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

pub(super) async fn create(
    State(s): State<Scim>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    let v = src::canonical(&t.mapping.profile, kind, src::parse_body(&body)?, true)?;
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

pub(super) async fn replace(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    let v = src::canonical(&t.mapping.profile, kind, src::parse_body(&body)?, false)?;
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

pub(super) async fn patch(
    State(s): State<Scim>,
    Path((endpoint, id)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    Extension(c): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let t = c.tenant();
    let kind = kind_of(&endpoint)?;
    // Parsed here so a bad request is answered before any transaction; each attempt parses again.
    src::parse_patch(src::parse_body(&body)?)?;
    let now = s.engine.clock.now();
    let (attributes, excluded) = (q.get("attributes"), q.get("excludedAttributes"));
    // Entra ID expects 204 for a group PATCH, and a membership change on a large group must not
    // send the whole member list back (RFC 7644 section 3.5.2 allows either).
    let no_body = kind == Kind::Group && attributes.is_none() && excluded.is_none();
    let base = base(&s, &headers);
    let (r, out) = s
        .engine
        .store
        .retry("scim patch", || async {
            let mut tx = s.engine.store.begin_write().await?;
            let r = patch_tx(&s, &mut tx, t, kind, &id, &headers, &body, now).await?;
            let out = if no_body {
                None
            } else {
                Some(render(&mut tx, &t.name, &base, &r).await?)
            };
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
    s.engine.notify_outbox();
    let Some(out) = out else {
        return Ok(with_etag(StatusCode::NO_CONTENT.into_response(), &r, None));
    };
    let p = Projection::parse(attributes.map(String::as_str), excluded.map(String::as_str));
    Ok(with_etag(
        scim_json(StatusCode::OK, &p.apply(out)),
        &r,
        None,
    ))
}

/// One attempt of a PATCH inside its transaction: the resource as it is now, the operations
/// applied, and a new version written only when something changed.
#[allow(clippy::too_many_arguments)]
async fn patch_tx(
    s: &Scim,
    tx: &mut sqlx::AnyConnection,
    t: &Tenant,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Resource, Failure> {
    let ops = src::parse_patch(src::parse_body(body)?)?;
    let before = src::get(tx, &t.name, kind, id)
        .await?
        .ok_or_else(|| ScimError::not_found(kind, id))?;
    check_if_match(headers, &before)?;
    let mut doc = src::apply_patch(&t.mapping.profile, kind, &before.raw, ops)?;
    if let Value::Object(m) = &mut doc {
        m.remove("meta");
        m.remove("id");
    }
    let v = src::canonical(&t.mapping.profile, kind, doc, false)?;
    let mut unchanged = before.raw.clone();
    if let Value::Object(m) = &mut unchanged {
        m.remove("meta");
        m.remove("id");
    }
    if unchanged == v {
        // Providers re-send what is already there (Okta's periodic pushes): no new version.
        return Ok(before);
    }
    write(s, tx, t, kind, id, Some(&before), v, now).await
}

pub(super) async fn remove(
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
                        src::remove_person(&s.engine, &mut tx, &t.mapping, key, now).await?;
                    }
                    // Drop the user from the groups that list them, so the groups stay consistent.
                    for (gid, _) in src::groups_of(&mut tx, &t.name, &id).await? {
                        if let Some(mut g) = src::get(&mut tx, &t.name, Kind::Group, &gid).await? {
                            let old = g.raw.clone();
                            if let Some(Value::Array(m)) = g.raw.get_mut("members") {
                                m.retain(|x| x.get("value").and_then(Value::as_str) != Some(id.as_str()));
                            }
                            g.version += 1;
                            g.raw["meta"]["version"] = json!(g.etag());
                            g.raw["meta"]["lastModified"] = json!(src::scim_time(now));
                            src::put(&mut tx, &t.name, &g, Some(&old), at, at).await?;
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
