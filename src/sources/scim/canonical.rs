//! Request bodies to the canonical stored form.

use super::*;

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

/// Take out of a body what the `scim_v2` models do not carry (declared extensions, roles whole,
/// unknown attributes a tenant keeps) and bring provider shapes to the RFC's: nulls are
/// "unassigned", Entra ID's flattened enterprise attributes move into the extension, the manager in
/// any of its shapes becomes `{"value": id}`. Unknown attributes follow the tenant's rule; refusing
/// is the default, so a mistyped attribute (`departmnet`) never passes as success.
fn prepare(p: &Profile, kind: Kind, map: &mut Map<String, Value>) -> Result<Map<String, Value>> {
    use crate::config::UnknownAttributes as U;
    let ent = schema_urns::ENTERPRISE_USER;
    let mut aside = Map::new();
    map.retain(|_, v| !v.is_null());
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        if kind.canonical(&k).is_some() {
            continue;
        }
        let Some(v) = map.remove(&k) else { continue };
        if kind == Kind::User && k.eq_ignore_ascii_case(ent) {
            map.insert(ent.to_string(), v);
            continue;
        }
        if kind == Kind::User
            && let Some(name) = ENTERPRISE_ATTRS.iter().find(|a| a.eq_ignore_ascii_case(&k))
        {
            // Entra ID's flattened form: the extension's own value wins over the flattened one.
            let slot = map.entry(ent.to_string()).or_insert_with(|| json!({}));
            if let Value::Object(e) = slot
                && !e.keys().any(|x| x.eq_ignore_ascii_case(name))
            {
                e.insert((*name).to_string(), v);
            }
            continue;
        }
        if k.starts_with("urn:") {
            match p.extension(kind, &k) {
                Some((urn, e)) => {
                    if let Some(v) = canonical_extension(p, urn, e, v)? {
                        aside.insert(urn.to_string(), v);
                    }
                }
                None if p.unknown == U::Refuse => return Err(undeclared(&k)),
                None if p.unknown == U::Keep => {
                    aside.insert(k, v);
                }
                None => {}
            }
            continue;
        }
        match p.unknown {
            U::Refuse => {
                return Err(ScimError::bad(
                    "invalidSyntax",
                    format!(
                        "unknown attribute `{k}` for {}; declare it in an extension or set \
                         unknown_attributes for the tenant",
                        kind.resource_type()
                    ),
                ));
            }
            U::Keep => {
                aside.insert(k, v);
            }
            U::Drop => {}
        }
    }
    enterprise_object(p, map)?;
    if kind == Kind::User
        && let Some(r) = map.remove("roles")
    {
        let r = roles_value(r);
        if r.as_array().is_some_and(|a| !a.is_empty()) {
            aside.insert("roles".into(), r);
        }
    }
    Ok(aside)
}

/// The enterprise extension's own object: nulls dropped, names in canonical case, the manager in
/// its RFC shape, unknown names per the tenant's rule.
fn enterprise_object(p: &Profile, map: &mut Map<String, Value>) -> Result<()> {
    use crate::config::UnknownAttributes as U;
    let ent = schema_urns::ENTERPRISE_USER;
    if let Some(Value::Object(ext)) = map.get_mut(ent) {
        let fields: Vec<(String, Value)> = std::mem::take(ext).into_iter().collect();
        for (ek, ev) in fields {
            if ev.is_null() || ek.eq_ignore_ascii_case("schemas") {
                continue;
            }
            let Some(name) = ENTERPRISE_ATTRS
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&ek))
            else {
                if p.unknown == U::Refuse {
                    return Err(ScimError::bad(
                        "invalidSyntax",
                        format!("unknown attribute `{ent}:{ek}`"),
                    ));
                }
                continue;
            };
            let ev = if *name == "manager" {
                match manager_value(ev) {
                    Some(m) => m,
                    None => continue,
                }
            } else {
                ev
            };
            ext.insert((*name).to_string(), ev);
        }
    }
    Ok(())
}

pub(super) fn validation(e: scim_v2::ValidationError) -> ScimError {
    ScimError::bad(e.scim_type_str(), e.to_string())
}

/// A client's resource body to the canonical stored form: read-only attributes (`id`, `meta`,
/// a user's `groups`) dropped, the password dropped (it is never stored, invariant 8), booleans and
/// spellings normalised by the `scim_v2` models.
pub fn canonical(p: &Profile, kind: Kind, mut v: Value, create: bool) -> Result<Value> {
    let Value::Object(map) = &mut v else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "resource must be an object",
        ));
    };
    let aside = prepare(p, kind, map)?;
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
        // Declared extensions' URNs are listed again by `finish`; the model knows only its own.
        schemas.retain(|u| {
            u.as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case(kind.schema()))
        });
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
            let u: scim_v2::models::user::User<String> =
                serde_json::from_value(v).map_err(invalid)?;
            u.validate_as(ctx).map_err(validation)?;
            serde_json::to_value(&u).map_err(invalid)?
        }
        Kind::Group => {
            // RFC 7643 section 4.2 and RFC 7644: a group is known by its displayName, which is
            // unique per tenant (checked on write); /Schemas marks it required.
            if map
                .get("displayName")
                .and_then(Value::as_str)
                .is_none_or(|d| d.trim().is_empty())
            {
                return Err(ScimError::bad(
                    "invalidValue",
                    "a Group needs a non-empty displayName",
                ));
            }
            // Members skip the model: a group of 20,000 is not deserialised and serialised
            // again for every member added; each element only loses its nulls.
            let members = group_members(map)?;
            let g: scim_v2::models::group::Group<String> =
                serde_json::from_value(v).map_err(invalid)?;
            g.validate_as(ctx).map_err(validation)?;
            let mut out = serde_json::to_value(&g).map_err(invalid)?;
            if let Value::Object(m) = &mut out {
                m.insert("members".into(), Value::Array(members));
            }
            out
        }
    };
    Ok(finish(kind, out, aside))
}

/// Members skip the model: a group of 20,000 is not deserialised and serialised again for every
/// member added; each element only loses its nulls.
fn group_members(map: &mut Map<String, Value>) -> Result<Vec<Value>> {
    match map.remove("members") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|m| match m {
                Value::Object(mut o) => {
                    o.retain(|_, x| !x.is_null());
                    Ok(Value::Object(o))
                }
                _ => Err(ScimError::bad("invalidValue", "a member must be an object")),
            })
            .collect(),
        Some(Value::Null) | None => Ok(vec![]),
        Some(_) => Err(ScimError::bad("invalidValue", "`members` must be a list")),
    }
}

/// One member as stored: an object with a string `value` (the member's id), without nulls; with
/// its id in lower case, what member lookups compare.
pub fn member_element(m: Value) -> Result<(String, Value)> {
    let Value::Object(mut o) = m else {
        return Err(ScimError::bad("invalidValue", "a member must be an object"));
    };
    o.retain(|_, x| !x.is_null());
    let Some(id) = o
        .get("value")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
    else {
        return Err(ScimError::bad(
            "invalidValue",
            "every member needs a `value` (the member's id)",
        ));
    };
    Ok((id, Value::Object(o)))
}

/// A group's members taken out of its representation (they are stored as rows of their own).
pub fn take_members(v: &mut Value) -> Vec<Value> {
    match v.as_object_mut().and_then(|m| m.remove("members")) {
        Some(Value::Array(a)) => a,
        _ => vec![],
    }
}

/// Put back what [`prepare`] set aside, and list in `schemas` exactly the extensions in use.
fn finish(kind: Kind, mut out: Value, aside: Map<String, Value>) -> Value {
    let Value::Object(m) = &mut out else {
        return out;
    };
    // One shape for "no members": absent, never `[]` in some answers and missing in others.
    if m.get("members")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        m.remove("members");
    }
    m.retain(|_, v| !v.is_null());
    let mut schemas = vec![json!(kind.schema())];
    if m.contains_key(schema_urns::ENTERPRISE_USER) {
        schemas.push(json!(schema_urns::ENTERPRISE_USER));
    }
    for (k, v) in aside {
        if k.starts_with("urn:") {
            schemas.push(json!(k));
        }
        m.insert(k, v);
    }
    m.insert("schemas".into(), Value::Array(schemas));
    out
}
