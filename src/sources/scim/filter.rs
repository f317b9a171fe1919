//! Filters (RFC 7644 section 3.4.2.2): parsed, checked against the tenant's schema, and resolved to
//! the stored attribute names the store searches (`store::scim_search`).

use super::*;
use crate::store::scim_search::{self as db, Cond, NumOp, TextOp};

/// The stored (flattened) name of a filter's attribute path, checked against the schema.
pub(super) fn stored_name(
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

/// One comparison or presence test of a filter, as a condition on stored values. `parent` is the
/// multi-valued attribute a value path is about.
fn leaf(pr: &Profile, e: &AttrExp, kind: Option<Kind>, parent: Option<&str>) -> Result<Cond> {
    match e {
        AttrExp::Present(p) => Ok(Cond::Present(stored_name(pr, kind, p, parent)?)),
        AttrExp::Comparison(p, op, value) => {
            let attr = stored_name(pr, kind, p, parent)?;
            if matches!(value, CompValue::Null) {
                // `x eq null` is "x is absent"; `x ne null` is "x is present" (RFC 7644 3.4.2.2).
                let present = Cond::Present(attr);
                return match op {
                    CompareOp::Eq => Ok(Cond::Not(Box::new(present))),
                    CompareOp::Ne => Ok(present),
                    _ => Err(ScimError::bad(
                        "invalidFilter",
                        format!("`{op}` cannot compare with null"),
                    )),
                };
            }
            let refused = || {
                ScimError::bad(
                    "invalidFilter",
                    format!("`{op}` cannot compare `{p}` with {value}"),
                )
            };
            let found = match value {
                CompValue::Number(n) => {
                    let value = n
                        .as_f64()
                        .ok_or_else(|| ScimError::bad("invalidFilter", "bad comparison value"))?;
                    let op = match op {
                        CompareOp::Eq | CompareOp::Ne => NumOp::Eq,
                        CompareOp::Gt => NumOp::Gt,
                        CompareOp::Ge => NumOp::Ge,
                        CompareOp::Lt => NumOp::Lt,
                        CompareOp::Le => NumOp::Le,
                        _ => return Err(refused()),
                    };
                    Cond::Num { attr, op, value }
                }
                CompValue::True | CompValue::False => {
                    if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
                        return Err(refused());
                    }
                    let value = matches!(value, CompValue::True).to_string();
                    Cond::Text {
                        attr,
                        op: TextOp::Eq,
                        value,
                    }
                }
                CompValue::Str(s) => {
                    let op = match op {
                        CompareOp::Eq | CompareOp::Ne => TextOp::Eq,
                        CompareOp::Co => TextOp::Contains,
                        CompareOp::Sw => TextOp::StartsWith,
                        CompareOp::Ew => TextOp::EndsWith,
                        CompareOp::Gt => TextOp::Gt,
                        CompareOp::Ge => TextOp::Ge,
                        CompareOp::Lt => TextOp::Lt,
                        CompareOp::Le => TextOp::Le,
                    };
                    Cond::Text {
                        attr,
                        op,
                        value: s.to_lowercase(),
                    }
                }
                CompValue::Null => return Err(refused()),
            };
            Ok(if *op == CompareOp::Ne {
                Cond::Not(Box::new(found))
            } else {
                found
            })
        }
    }
}

fn val_filter(pr: &Profile, f: &ValFilter, kind: Option<Kind>, parent: &str) -> Result<Cond> {
    Ok(match f {
        ValFilter::Attr(e) => leaf(pr, e, kind, Some(parent))?,
        ValFilter::Not(inner) => Cond::Not(Box::new(val_filter(pr, inner, kind, parent)?)),
        ValFilter::And(ops) => Cond::And(
            ops.iter()
                .map(|f| val_filter(pr, f, kind, parent))
                .collect::<Result<_>>()?,
        ),
        ValFilter::Or(ops) => Cond::Or(
            ops.iter()
                .map(|f| val_filter(pr, f, kind, parent))
                .collect::<Result<_>>()?,
        ),
    })
}

/// A filter checked against the tenant's schema, as a condition on stored values.
pub fn resolve(pr: &Profile, f: &Filter, kind: Option<Kind>) -> Result<Cond> {
    Ok(match f {
        Filter::Attr(e) => leaf(pr, e, kind, None)?,
        Filter::ValuePath(vp) => {
            let parent = stored_name(pr, kind, &vp.attr, None)?;
            let parent = parent
                .strip_suffix(".value")
                .map(str::to_string)
                .unwrap_or(parent);
            let inner = val_filter(pr, &vp.filter, kind, &parent)?;
            Cond::Element {
                parent,
                inner: Box::new(inner),
            }
        }
        Filter::Not(inner) => Cond::Not(Box::new(resolve(pr, inner, kind)?)),
        Filter::And(ops) => Cond::And(
            ops.iter()
                .map(|f| resolve(pr, f, kind))
                .collect::<Result<_>>()?,
        ),
        Filter::Or(ops) => Cond::Or(
            ops.iter()
                .map(|f| resolve(pr, f, kind))
                .collect::<Result<_>>()?,
        ),
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

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort_by: Option<String>,
    pub descending: bool,
    /// 1-based.
    pub start_index: i64,
    pub count: i64,
    pub profile: Profile,
}

/// One page of a tenant's resources matching a query, and how many match in all.
pub async fn search(
    pool: &sqlx::AnyPool,
    tenant: &str,
    kind: Option<Kind>,
    q: &Query,
) -> Result<(i64, Vec<Resource>)> {
    let filter = q
        .filter
        .as_ref()
        .map(|f| resolve(&q.profile, f, kind))
        .transpose()?;
    let sort_by = match &q.sort_by {
        Some(s) => {
            let unsortable = || ScimError::bad("invalidValue", format!("cannot sort by `{s}`"));
            let path = parse_attr(s).map_err(|_| unsortable())?;
            Some(stored_name(&q.profile, kind, &path, None).map_err(|_| unsortable())?)
        }
        None => None,
    };
    let search = db::Search {
        resource_type: kind.map(Kind::resource_type),
        filter,
        sort_by,
        descending: q.descending,
        start_index: q.start_index,
        count: q.count,
    };
    let (total, rows) = db::search(pool, tenant, &search).await?;
    let page = rows
        .into_iter()
        .map(Resource::from_stored)
        .collect::<Result<_>>()?;
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
