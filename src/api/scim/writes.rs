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

/// A group's displayName is unique per tenant.
async fn check_group_name(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    id: &str,
    before: Option<&Resource>,
    body: &Value,
) -> Result<(), Failure> {
    let name = body.get("displayName").and_then(Value::as_str);
    if before.is_some_and(|b| b.raw.get("displayName").and_then(Value::as_str) == name) {
        return Ok(());
    }
    if let Some(name) = name
        && src::display_name_taken(conn, &t.name, name, id).await?
    {
        return Err(Failure(ScimError::Client {
            status: 409,
            scim_type: Some("uniqueness"),
            detail: format!("a group named `{name}` already exists"),
        }));
    }
    Ok(())
}

/// What a write does to a group's members.
pub(super) enum Members {
    /// The whole list (a create, a PUT, a PATCH that replaces them), diffed against the rows.
    All(Vec<Value>),
    /// Only these members, by lower-case id: there with this element, or gone.
    Some(BTreeMap<String, Option<Value>>),
}

/// The member rows a write changes: only those, so a one-member change on a group of 20,000
/// writes one member's rows.
#[derive(Default)]
pub(super) struct MemberPlan {
    /// (lower-case id, element, already a member)
    put: Vec<(String, Value, bool)>,
    gone: Vec<String>,
}

impl MemberPlan {
    fn is_empty(&self) -> bool {
        self.put.is_empty() && self.gone.is_empty()
    }

    fn joined(&self) -> impl Iterator<Item = &String> {
        self.put.iter().filter(|p| !p.2).map(|p| &p.0)
    }
}

/// A member new to a group is a user or group of the tenant: an id the server never issued is
/// refused, not stored dangling.
async fn check_new_member(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    group: &str,
    id: &str,
) -> Result<(), Failure> {
    if id == group.to_lowercase() || !src::exists(conn, &t.name, id).await? {
        return Err(Failure(ScimError::bad(
            "invalidValue",
            format!("member `{id}` is not a User or Group of this tenant"),
        )));
    }
    Ok(())
}

/// The member rows that change, checked (new members must exist).
pub(super) async fn plan_members(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    group: &str,
    change: Members,
) -> Result<MemberPlan, Failure> {
    let mut plan = MemberPlan::default();
    match change {
        Members::All(list) => {
            // Duplicates in the list are one member (Okta re-sends whole groups).
            let mut new: Vec<(String, Value)> = Vec::with_capacity(list.len());
            let mut at: std::collections::HashMap<String, usize> = Default::default();
            for m in list {
                let (id, el) = src::member_element(m)?;
                match at.get(&id) {
                    Some(&n) => src::merge(&mut new[n].1, el),
                    None => {
                        at.insert(id.clone(), new.len());
                        new.push((id, el));
                    }
                }
            }
            let stored = crate::store::scim::members_by_id(conn, &t.name, group).await?;
            for id in stored.keys() {
                if !at.contains_key(id) {
                    plan.gone.push(id.clone());
                }
            }
            for (id, el) in new {
                match stored.get(&id) {
                    None => {
                        check_new_member(conn, t, group, &id).await?;
                        plan.put.push((id, el, false));
                    }
                    Some(old) if *old != el => plan.put.push((id, el, true)),
                    Some(_) => {}
                }
            }
        }
        Members::Some(changes) => {
            for (id, want) in changes {
                let stored = src::member(conn, &t.name, group, &id).await?;
                match (want, stored) {
                    (None, Some(_)) => plan.gone.push(id),
                    (Some(el), None) => {
                        check_new_member(conn, t, group, &id).await?;
                        plan.put.push((id, el, false));
                    }
                    (Some(el), Some(old)) if old != el => plan.put.push((id, el, true)),
                    _ => {}
                }
            }
        }
    }
    Ok(plan)
}

/// PATCH operations on members as the member rows they change. After a replace of all members
/// the whole new list is known; otherwise only the members named are looked up.
async fn member_change(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    group: &str,
    ops: Vec<src::MemberOp>,
) -> Result<Members, Failure> {
    let mut all: Option<Vec<Value>> = None;
    let mut some: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for op in ops {
        let (items, removed) = match op {
            src::MemberOp::Replace(items) => {
                all = Some(vec![]);
                some.clear();
                (items, vec![])
            }
            src::MemberOp::Add(items) => (items, vec![]),
            src::MemberOp::Remove(ids) => (vec![], ids),
        };
        if let Some(list) = &mut all {
            list.extend(items);
            let gone: BTreeSet<String> = removed.iter().map(|r| r.to_lowercase()).collect();
            list.retain(|m| {
                m.get("value")
                    .and_then(Value::as_str)
                    .is_none_or(|v| !gone.contains(&v.to_lowercase()))
            });
            continue;
        }
        for m in items {
            let (id, el) = src::member_element(m)?;
            let have = match some.get(&id) {
                Some(x) => x.clone(),
                None => src::member(conn, &t.name, group, &id).await?,
            };
            let el = match have {
                // Adding a member twice is a no-op, not a duplicate; what is new in it is merged.
                Some(mut old) => {
                    src::merge(&mut old, el);
                    old
                }
                None => el,
            };
            some.insert(id, Some(el));
        }
        for id in removed {
            some.insert(id.to_lowercase(), None);
        }
    }
    Ok(match all {
        Some(list) => Members::All(list),
        None => Members::Some(some),
    })
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

/// Store a new or changed resource and everything it causes, in the caller's transaction. A
/// group's `body` carries no members: `members` says which member rows change.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write(
    s: &Scim,
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    kind: Kind,
    id: &str,
    before: Option<&Resource>,
    body: Value,
    members: MemberPlan,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Resource, Failure> {
    check_unique(conn, t, kind, id, before, &body).await?;
    let mut r = next_version(kind, id, before, body, now);
    let at = to_micros(now);
    // Stored first, so a user's groups are there for the person record and a group's members are
    // visible to the users re-evaluated below.
    src::put(conn, &t.name, &r, before.map(|b| &b.raw), at, at).await?;
    let mut joined: Vec<&String> = members.joined().collect();
    joined.sort();
    let mut left: Vec<&String> = members.gone.iter().collect();
    left.sort();
    for (mid, el, existed) in &members.put {
        src::put_member(conn, &t.name, id, mid, el, *existed).await?;
    }
    for mid in &members.gone {
        src::delete_member(conn, &t.name, id, mid).await?;
    }
    match kind {
        Kind::User => sync_written_user(s, conn, t, before, &mut r, now).await?,
        Kind::Group => {
            let affected: BTreeSet<String> = joined
                .iter()
                .chain(left.iter())
                .map(|x| (*x).clone())
                .collect();
            resync_group_members(s, conn, t, before, &r, affected, now).await?;
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
        &write_details(&r, &joined, &left),
    )
    .await?;
    Ok(r)
}

/// A user's userName and a group's displayName are unique per tenant.
async fn check_unique(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    kind: Kind,
    id: &str,
    before: Option<&Resource>,
    body: &Value,
) -> Result<(), Failure> {
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
        check_group_name(conn, t, id, before, body).await?;
    }
    Ok(())
}

/// The resource as a write leaves it: the next version, stamped, keeping when it was created and
/// whose it is.
fn next_version(
    kind: Kind,
    id: &str,
    before: Option<&Resource>,
    body: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Resource {
    let version = before.map_or(1, |b| b.version + 1);
    let created = before
        .and_then(|b| b.raw.pointer("/meta/created"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| src::scim_time(now));
    Resource {
        id: id.to_string(),
        kind,
        person_key: before.and_then(|b| b.person_key.clone()),
        raw: stamp(kind, id, body, version, &created, now),
        version,
    }
}

/// A written user's person record brought up to date, and the person it now belongs to.
async fn sync_written_user(
    s: &Scim,
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    before: Option<&Resource>,
    r: &mut Resource,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Failure> {
    let key = src::sync_user(
        &s.engine,
        conn,
        &t.mapping,
        Some(&*r),
        before.and_then(|b| b.person_key.as_deref()),
        now,
    )
    .await?;
    if key != r.person_key {
        r.person_key = key;
        src::set_person_key(conn, &t.name, &r.id, r.person_key.as_deref()).await?;
    }
    Ok(())
}

/// The users a group write affects re-evaluated: those who joined or left it, and after a rename
/// every member.
async fn resync_group_members(
    s: &Scim,
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    before: Option<&Resource>,
    r: &Resource,
    mut affected: BTreeSet<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Failure> {
    // A rename changes every member's `groups` attribute.
    let renamed = before.is_some_and(|b| b.raw.get("displayName") != r.raw.get("displayName"));
    if renamed {
        affected.extend(
            src::members(conn, &t.name, &r.id)
                .await?
                .into_iter()
                .map(|m| m.0),
        );
    }
    resync_members(s, conn, t, affected, now).await
}

/// The audit details of a write: the resource as it now is, and its version.
fn write_details(r: &Resource, joined: &[&String], left: &[&String]) -> Value {
    let mut details = json!({
        "userName": r.raw.get("userName"),
        "externalId": r.raw.get("externalId"),
        "displayName": r.raw.get("displayName"),
        "active": r.raw.get("active"),
        "version": r.version,
    });
    // Who joined or left the group: what an auditor asks of a door group.
    if !joined.is_empty() {
        details["membersAdded"] = json!(joined);
    }
    if !left.is_empty() {
        details["membersRemoved"] = json!(left);
    }
    details
}

/// The members of a group's representation taken out and planned as member rows; for a user,
/// nothing.
async fn whole_members(
    conn: &mut sqlx::AnyConnection,
    t: &Tenant,
    kind: Kind,
    id: &str,
    v: &mut Value,
) -> Result<MemberPlan, Failure> {
    if kind != Kind::Group {
        return Ok(MemberPlan::default());
    }
    let list = src::take_members(v);
    plan_members(conn, t, id, Members::All(list)).await
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
            let mut tx = s.engine.store.begin_grouped().await?;
            let mut v = v.clone();
            let members = whole_members(&mut tx, t, kind, &id, &mut v).await?;
            let r = write(&s, &mut tx, t, kind, &id, None, v, members, now).await?;
            let out = render(&mut tx, &t.name, &base, &r, true).await?;
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
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
            let mut tx = s.engine.store.begin_grouped().await?;
            let before = src::get(&mut tx, &t.name, kind, &id)
                .await?
                .ok_or_else(|| ScimError::not_found(kind, &id))?;
            check_if_match(&headers, &before)?;
            let mut v = v.clone();
            let members = whole_members(&mut tx, t, kind, &id, &mut v).await?;
            let r = write(&s, &mut tx, t, kind, &id, Some(&before), v, members, now).await?;
            let out = render(&mut tx, &t.name, &base, &r, true).await?;
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
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
    let p = Projection::parse(attributes.map(String::as_str), excluded.map(String::as_str));
    let base = base(&s, &headers);
    let (r, out) = s
        .engine
        .store
        .retry("scim patch", || async {
            let mut tx = s.engine.store.begin_grouped().await?;
            let r = patch_tx(&s, &mut tx, t, kind, &id, &headers, &body, now).await?;
            let out = if no_body {
                None
            } else {
                Some(render(&mut tx, &t.name, &base, &r, p.wants("members")).await?)
            };
            tx.commit().await?;
            Ok::<_, Failure>((r, out))
        })
        .await?;
    let Some(out) = out else {
        return Ok(with_etag(StatusCode::NO_CONTENT.into_response(), &r, None));
    };
    Ok(with_etag(
        scim_json(StatusCode::OK, &p.apply(out)),
        &r,
        None,
    ))
}

/// One attempt of a PATCH inside its transaction: the resource as it is now, the operations
/// applied, and a new version written only when something changed. A group's operations on
/// members change member rows; the rest is applied to the group without its members.
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
    let strip = |mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.remove("meta");
            m.remove("id");
        }
        v
    };
    let (v, members) = match (kind, src::split_member_ops(ops.clone())) {
        (Kind::User, _) => {
            let doc = src::apply_patch(&t.mapping.profile, kind, &before.raw, ops)?;
            let v = src::canonical(&t.mapping.profile, kind, strip(doc), false)?;
            (v, MemberPlan::default())
        }
        (Kind::Group, Some((rest, member_ops))) => {
            let doc = src::apply_patch(&t.mapping.profile, kind, &before.raw, rest)?;
            let mut v = src::canonical(&t.mapping.profile, kind, strip(doc), false)?;
            src::take_members(&mut v);
            let change = member_change(tx, t, id, member_ops).await?;
            (v, plan_members(tx, t, id, change).await?)
        }
        // An operation that needs the whole member list (a filter on something else than the
        // member's id, a sub-attribute) is applied to the full representation.
        (Kind::Group, None) => {
            let mut full = before.raw.clone();
            let list: Vec<Value> = src::members(tx, &t.name, id)
                .await?
                .into_iter()
                .map(|m| m.1)
                .collect();
            if !list.is_empty() {
                full["members"] = Value::Array(list);
            }
            let doc = src::apply_patch(&t.mapping.profile, kind, &full, ops)?;
            let mut v = src::canonical(&t.mapping.profile, kind, strip(doc), false)?;
            let list = src::take_members(&mut v);
            (v, plan_members(tx, t, id, Members::All(list)).await?)
        }
    };
    if strip(before.raw.clone()) == v && members.is_empty() {
        // Providers re-send what is already there (Okta's periodic pushes): no new version.
        return Ok(before);
    }
    write(s, tx, t, kind, id, Some(&before), v, members, now).await
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
            let mut tx = s.engine.store.begin_grouped().await?;
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
                            g.version += 1;
                            g.raw["meta"]["version"] = json!(g.etag());
                            g.raw["meta"]["lastModified"] = json!(src::scim_time(now));
                            src::put(&mut tx, &t.name, &g, Some(&old), at, at).await?;
                            src::delete_member(&mut tx, &t.name, &gid, &id).await?;
                        }
                    }
                    src::delete(&mut tx, &t.name, &id).await?;
                }
                Kind::Group => {
                    let members = src::members(&mut tx, &t.name, &id).await?;
                    src::delete(&mut tx, &t.name, &id).await?;
                    let ids = members.into_iter().map(|m| m.0).collect();
                    resync_members(&s, &mut tx, t, ids, now).await?;
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
    Ok(StatusCode::NO_CONTENT.into_response())
}
