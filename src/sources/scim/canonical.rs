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

/// Refuse attributes the schema does not have: silently dropping them would let a mistyped
/// attribute (`departmnet`) pass as success while nothing changed.
pub(super) fn check_known(kind: Kind, v: &Map<String, Value>) -> Result<()> {
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

pub(super) fn validation(e: scim_v2::ValidationError) -> ScimError {
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
