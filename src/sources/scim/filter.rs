//! Filters (RFC 7644 section 3.4.2.2) to SQL over `scim_values`, and searches.

use super::*;

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
    /// The tenant's declared extensions, which filters may name.
    pub profile: Profile,
}

impl Sql {
    pub fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    pub(super) fn text(&mut self, s: impl Into<String>) -> String {
        self.bind(Bind::Text(s.into()))
    }
}

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

pub(super) fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `v` row condition for one leaf, inside an EXISTS that binds `v` to the resource `r` (and to the
/// element `e` inside a value path).
pub(super) fn leaf(
    sql: &mut Sql,
    e: &AttrExp,
    kind: Option<Kind>,
    parent: Option<&str>,
) -> Result<String> {
    let scope = if parent.is_some() {
        "v.tenant = r.tenant AND v.resource_id = r.id AND v.elem = e.elem"
    } else {
        "v.tenant = r.tenant AND v.resource_id = r.id"
    };
    let exists =
        |cond: String| format!("EXISTS (SELECT 1 FROM scim_values v WHERE {scope} AND {cond})");
    match e {
        AttrExp::Present(p) => {
            let name = stored_name(&sql.profile, kind, p, parent)?;
            let a = sql.text(name.clone());
            let b = sql.text(format!("{}.%", like_escape(&name)));
            Ok(exists(format!(
                "(v.attr = {a} OR v.attr LIKE {b} ESCAPE '\\') AND v.val <> ''"
            )))
        }
        AttrExp::Comparison(p, op, value) => {
            let name = stored_name(&sql.profile, kind, p, parent)?;
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
                    format!(
                        "v.num = CAST({} AS DOUBLE PRECISION)",
                        sql.bind(Bind::Num(n))
                    )
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
                        (None, Some(n)) => format!(
                            "v.num {sym} CAST({} AS DOUBLE PRECISION)",
                            sql.bind(Bind::Num(n))
                        ),
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

pub(super) fn val_filter(
    sql: &mut Sql,
    f: &ValFilter,
    kind: Option<Kind>,
    parent: &str,
) -> Result<String> {
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

pub(super) fn join<T>(
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
            let parent = stored_name(&sql.profile, kind, &vp.attr, None)?;
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

pub(super) fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s.clone()),
            // As text, cast in SQL: sqlx's Any driver sends an f64 in a binary form PostgreSQL
            // refuses for a DOUBLE PRECISION parameter.
            Bind::Num(n) => query.bind(n.to_string()),
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
    let mut sql = Sql {
        profile: q.profile.clone(),
        ..Sql::default()
    };
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
            let name = stored_name(&sql.profile, kind, &path, None)
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
