//! Filters (RFC 7644 section 3.4.2.2): parsed as a tenant sends them, and attribute paths checked
//! against the tenant's schema and named as they are stored. The SCIM server resolves a whole
//! filter to a search (`api::scim::stored`).

use super::*;

/// The stored (flattened) name of a filter's attribute path, checked against the schema.
pub fn stored_name(
    pr: &Profile,
    kind: Option<Kind>,
    p: &AttrPath,
    parent: Option<&str>,
) -> Result<String> {
    let bad = || {
        ScimError::bad(
            "invalidFilter",
            format!("unknown attribute `{p}` in filter"),
        )
    };
    // A declared extension's attributes are stored as `urn:...:name` (lower case).
    if parent.is_none()
        && let Some(uri) = &p.uri
    {
        let kinds = kind.map_or(vec![Kind::User, Kind::Group], |k| vec![k]);
        if let Some((urn, a)) = kinds.iter().find_map(|k| pr.ext_attr(*k, uri, &p.name)) {
            let base = format!("{}:{}", urn.to_lowercase(), a.name.to_lowercase());
            return Ok(match &p.sub_attr {
                Some(sub) => format!("{base}.{}", sub.to_lowercase()),
                None if a.kind == "complex" => format!("{base}.value"),
                None => base,
            });
        }
    }
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

/// A filter as a tenant sends it: bare values quoted first when its provider needs that.
pub fn parse_tenant_filter(pr: &Profile, s: &str) -> Result<Filter> {
    if pr.unquoted_filters {
        parse_filter(&quote_bare_values(s))
    } else {
        parse_filter(s)
    }
}

pub fn parse_filter(s: &str) -> Result<Filter> {
    s.parse::<Filter>()
        .map_err(|e| ScimError::bad("invalidFilter", format!("invalid filter `{s}`: {e}")))
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
