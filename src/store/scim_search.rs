//! SCIM searches (RFC 7644 section 3.4.2): a filter, already checked and resolved to stored
//! attribute names by the SCIM source, run as SQL over `scim_resources` and `scim_values`.
//!
//! Every value is a bound parameter; only attribute-independent SQL text is written here.

use super::Result;
use super::scim::ScimRow;
use sqlx::Row;

/// A SCIM filter in terms of the stored attribute values (`scim_values`): names are the
/// flattened, lower-cased names they are stored under (`emails.value`, `urn:...:employeenumber`),
/// text values are lower-cased.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// The attribute, or a sub-attribute of it, has a non-empty value.
    Present(String),
    /// A text comparison with the stored value.
    Text {
        attr: String,
        op: TextOp,
        value: String,
    },
    /// A numeric comparison with the stored number.
    Num {
        attr: String,
        op: NumOp,
        value: f64,
    },
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// One element of the multi-valued attribute `parent` meets `inner` (a value path such as
    /// `emails[type eq "work" and value co "@example.com"]`): the leaves inside are about the
    /// same element.
    Element {
        parent: String,
        inner: Box<Cond>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    Eq,
    Contains,
    StartsWith,
    EndsWith,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumOp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

/// One page of a search: which resources, in what order, from where.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `User` or `Group`; none searches both (`/.search` at the root).
    pub resource_type: Option<&'static str>,
    pub filter: Option<Cond>,
    /// A stored attribute name to sort by.
    pub sort_by: Option<String>,
    pub descending: bool,
    /// 1-based.
    pub start_index: i64,
    pub count: i64,
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Num(f64),
    Int(i64),
}

/// A WHERE clause under construction: SQL text with `$n` placeholders and the values they bind.
#[derive(Debug, Default)]
struct Sql {
    binds: Vec<Bind>,
}

impl Sql {
    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, s: impl Into<String>) -> String {
        self.bind(Bind::Text(s.into()))
    }

    /// The condition on `scim_resources r`; inside a value path, leaves are about the element
    /// `e` of `r`.
    fn cond(&mut self, c: &Cond, in_element: bool) -> String {
        let scope = if in_element {
            "v.tenant = r.tenant AND v.resource_id = r.id AND v.elem = e.elem"
        } else {
            "v.tenant = r.tenant AND v.resource_id = r.id"
        };
        let exists =
            |cond: String| format!("EXISTS (SELECT 1 FROM scim_values v WHERE {scope} AND {cond})");
        match c {
            Cond::Present(name) => {
                let a = self.text(name.clone());
                let b = self.text(format!("{}.%", like_escape(name)));
                exists(format!(
                    "(v.attr = {a} OR v.attr LIKE {b} ESCAPE '\\') AND v.val <> ''"
                ))
            }
            Cond::Text { attr, op, value } => {
                let a = self.text(attr.clone());
                let cond = self.text_cond(*op, value);
                exists(format!("v.attr = {a} AND {cond}"))
            }
            Cond::Num { attr, op, value } => {
                let a = self.text(attr.clone());
                let sym = match op {
                    NumOp::Eq => "=",
                    NumOp::Gt => ">",
                    NumOp::Ge => ">=",
                    NumOp::Lt => "<",
                    NumOp::Le => "<=",
                };
                let n = self.bind(Bind::Num(*value));
                exists(format!(
                    "v.attr = {a} AND v.num {sym} CAST({n} AS DOUBLE PRECISION)"
                ))
            }
            Cond::Not(inner) => format!("NOT ({})", self.cond(inner, in_element)),
            Cond::And(all) => self.join(all, " AND ", in_element),
            Cond::Or(any) => self.join(any, " OR ", in_element),
            Cond::Element { parent, inner } => {
                let inner = self.cond(inner, true);
                let like = self.text(format!("{}.%", like_escape(parent)));
                format!(
                    "EXISTS (SELECT 1 FROM scim_values e WHERE e.tenant = r.tenant AND e.resource_id = r.id
                       AND e.attr LIKE {like} ESCAPE '\\' AND {inner})"
                )
            }
        }
    }

    fn text_cond(&mut self, op: TextOp, value: &str) -> String {
        let like =
            |s: &mut Self, pattern: String| format!("v.val LIKE {} ESCAPE '\\'", s.text(pattern));
        let t = like_escape(value);
        match op {
            TextOp::Eq => format!("v.val = {}", self.text(value)),
            TextOp::Contains => like(self, format!("%{t}%")),
            TextOp::StartsWith => like(self, format!("{t}%")),
            TextOp::EndsWith => like(self, format!("%{t}")),
            TextOp::Gt => format!("v.val > {}", self.text(value)),
            TextOp::Ge => format!("v.val >= {}", self.text(value)),
            TextOp::Lt => format!("v.val < {}", self.text(value)),
            TextOp::Le => format!("v.val <= {}", self.text(value)),
        }
    }

    fn join(&mut self, items: &[Cond], sep: &str, in_element: bool) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|c| format!("({})", self.cond(c, in_element)))
            .collect();
        parts.join(sep)
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn bind_all<'q>(
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

/// The WHERE condition of a search on `scim_resources r`, and the values it binds.
fn condition(tenant: &str, s: &Search) -> (Sql, String) {
    let mut sql = Sql::default();
    let mut cond = format!("r.tenant = {}", sql.text(tenant));
    if let Some(t) = s.resource_type {
        cond.push_str(&format!(" AND r.resource_type = {}", sql.text(t)));
    }
    if let Some(f) = &s.filter {
        cond.push_str(&format!(" AND ({})", sql.cond(f, false)));
    }
    (sql, cond)
}

/// One page of a tenant's resources matching a search, and how many match in all.
pub async fn search(pool: &sqlx::AnyPool, tenant: &str, s: &Search) -> Result<(i64, Vec<ScimRow>)> {
    let (mut sql, cond) = condition(tenant, s);
    let total_sql = format!("SELECT COUNT(*) AS n FROM scim_resources r WHERE {cond}");
    let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(total_sql)), &sql.binds);
    let total: i64 = query.fetch_one(pool).await?.try_get("n")?;
    if s.count <= 0 {
        return Ok((total, vec![]));
    }
    let order = match &s.sort_by {
        Some(name) => {
            let a = sql.text(name.clone());
            let dir = if s.descending { "DESC" } else { "ASC" };
            format!(
                "(SELECT MIN(v.val) FROM scim_values v WHERE v.tenant = r.tenant AND v.resource_id = r.id
                  AND v.attr = {a}) {dir} NULLS LAST, r.created_at, r.id"
            )
        }
        None => "r.created_at, r.id".to_string(),
    };
    let limit = sql.bind(Bind::Int(s.count));
    let offset = sql.bind(Bind::Int((s.start_index.max(1) - 1).max(0)));
    let page_sql = format!(
        "SELECT r.* FROM scim_resources r WHERE {cond} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    );
    let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(page_sql)), &sql.binds);
    let rows = query.fetch_all(pool).await?;
    let page = rows.iter().map(ScimRow::from_row).collect::<Result<_>>()?;
    Ok((total, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bound_never_written_into_the_sql() {
        let s = Search {
            resource_type: Some("User"),
            filter: Some(Cond::Or(vec![
                Cond::Text {
                    attr: "username".into(),
                    op: TextOp::StartsWith,
                    value: "o'brien%".into(),
                },
                Cond::Not(Box::new(Cond::Present("title".into()))),
            ])),
            ..Search::default()
        };
        let (sql, cond) = condition("t1", &s);
        assert!(!cond.contains("o'brien"), "{cond}");
        assert!(cond.contains("LIKE $4 ESCAPE"), "{cond}");
        assert!(cond.contains("NOT (EXISTS"), "{cond}");
        assert!(
            matches!(&sql.binds[3], Bind::Text(t) if t == "o'brien\\%%"),
            "{:?}",
            sql.binds
        );
    }
}
