//! The SCIM server's stored resources: the store's SCIM functions (`crate::store::scim`) with
//! their errors as SCIM errors, and searches (a filter resolved to stored names, run by the store).

use crate::sources::scim::{Kind, Profile, Resource, Result, ScimError, parse_attr, stored_name};
use crate::store::scim as db;
use crate::store::scim_search::{self as search_db, Cond, NumOp, TextOp};
use scim_v2::filter::{AttrExp, CompValue, CompareOp, Filter, ValFilter};
use serde_json::Value;
use sqlx::AnyConnection;

pub use db::{
    delete, display_name_taken, exists, groups_of, member, members, put_member, set_person_key,
    user_name_taken,
};

impl Resource {
    pub fn from_stored(r: db::ScimRow) -> Result<Self> {
        Ok(Self {
            kind: Kind::parse(&r.resource_type).ok_or_else(|| {
                ScimError::from(crate::store::StoreError::Corrupt {
                    table: "scim_resources",
                    message: format!("resource type `{}`", r.resource_type),
                })
            })?,
            person_key: r.person_key,
            raw: serde_json::from_str(&r.raw).map_err(|source| ScimError::Corrupt {
                id: r.id.clone(),
                source,
            })?,
            version: r.version,
            id: r.id,
        })
    }
}

pub async fn get(
    conn: &mut AnyConnection,
    tenant: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<Resource>> {
    db::get(conn, tenant, kind.resource_type(), id)
        .await?
        .map(Resource::from_stored)
        .transpose()
}

/// Insert or replace a resource and its searchable values (a group's members are written apart,
/// with [`put_member`] and [`delete`]). With the representation it replaces (`before`), only what
/// changed is rewritten.
pub async fn put(
    conn: &mut AnyConnection,
    tenant: &str,
    r: &Resource,
    before: Option<&Value>,
    created_at: i64,
    modified_at: i64,
) -> Result<()> {
    let row = db::ScimPut {
        id: &r.id,
        resource_type: r.kind.resource_type(),
        person_key: r.person_key.as_deref(),
        raw: &r.raw,
        version: r.version,
    };
    if db::put(conn, tenant, &row, before, created_at, modified_at).await? {
        return Ok(());
    }
    Err(ScimError::Client {
        status: 409,
        scim_type: None,
        detail: format!(
            "{} {} was changed concurrently; retry",
            r.kind.resource_type(),
            r.id
        ),
    })
}

/// Take a member out of a group.
pub async fn delete_member(
    conn: &mut AnyConnection,
    tenant: &str,
    group: &str,
    id: &str,
) -> Result<()> {
    Ok(db::delete_member(conn, tenant, group, id).await?)
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
    let search = search_db::Search {
        resource_type: kind.map(Kind::resource_type),
        filter,
        sort_by,
        descending: q.descending,
        start_index: q.start_index,
        count: q.count,
    };
    let (total, rows) = search_db::search(pool, tenant, &search).await?;
    let page = rows
        .into_iter()
        .map(Resource::from_stored)
        .collect::<Result<_>>()?;
    Ok((total, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_resolve_to_stored_names_and_lower_cased_values() {
        let f = crate::sources::scim::parse_filter(
                r#"userName sw "J'; DROP TABLE x" and (emails[type eq "work" and value co "@ex"] or not (title pr))"#,
            )
            .unwrap();
        let c = resolve(&Profile::default(), &f, Some(Kind::User)).unwrap();
        let text = |attr: &str, op, value: &str| Cond::Text {
            attr: attr.into(),
            op,
            value: value.into(),
        };
        assert_eq!(
            c,
            Cond::And(vec![
                text("username", TextOp::StartsWith, "j'; drop table x"),
                Cond::Or(vec![
                    Cond::Element {
                        parent: "emails".into(),
                        inner: Box::new(Cond::And(vec![
                            text("emails.type", TextOp::Eq, "work"),
                            text("emails.value", TextOp::Contains, "@ex"),
                        ])),
                    },
                    Cond::Not(Box::new(Cond::Present("title".into()))),
                ]),
            ])
        );
        let unknown = crate::sources::scim::parse_filter(r#"nope eq "x""#).unwrap();
        let err = resolve(&Profile::default(), &unknown, Some(Kind::User)).unwrap_err();
        assert!(matches!(
            err,
            ScimError::Client {
                scim_type: Some("invalidFilter"),
                ..
            }
        ));
    }
}
