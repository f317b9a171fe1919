//! Users to person records, and the engine call that brings the person in line.

use super::*;

/// Lower-case, single hyphens: identity providers send display values ("New York", "Engineering")
/// where templates and connector target tables use slugs (`new-york-engineering`), as the HR feed does.
pub(super) fn slug(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase()
}

pub(super) fn pick<'a>(items: Option<&'a Value>, prefer_type: &str) -> Option<&'a Value> {
    let items = items?.as_array()?;
    items
        .iter()
        .find(|i| i.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| {
            items.iter().find(|i| {
                i.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case(prefer_type))
            })
        })
        .or_else(|| items.first())
}

/// What one tenant's view of a user says about the person. `None` when the user lacks the
/// correlation attribute: such a user is kept as a SCIM resource but is nobody latchkey knows.
pub fn person_record(
    tenant: &str,
    id: &str,
    user: &Value,
    groups: &[String],
    correlate_by: CorrelateBy,
) -> Option<PersonRecord> {
    let s = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let ext = user.get(schema_urns::ENTERPRISE_USER);
    let e = |name: &str| s(ext.and_then(|x| x.get(name)));
    let user_name = s(user.get("userName"));
    let key = match correlate_by {
        CorrelateBy::ExternalId => s(user.get("externalId")),
        CorrelateBy::EmployeeNumber => e("employeeNumber"),
        CorrelateBy::UserName => user_name.clone(),
    }?;
    let mut attrs = BTreeMap::new();
    let name = s(user.get("displayName"))
        .or_else(|| s(user.get("name").and_then(|n| n.get("formatted"))))
        .or_else(|| {
            let n = user.get("name")?;
            let parts: Vec<String> = [s(n.get("givenName")), s(n.get("familyName"))]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
        .or_else(|| user_name.clone());
    let email = s(pick(user.get("emails"), "work").and_then(|m| m.get("value")))
        .or_else(|| user_name.clone().filter(|u| u.contains('@')));
    let site =
        s(pick(user.get("addresses"), "work").and_then(|a| a.get("locality"))).map(|x| slug(&x));
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            attrs.insert(k.to_string(), v);
        }
    };
    put("name", name);
    put("email", email);
    put("user_name", user_name);
    put("department", e("department").map(|x| slug(&x)));
    put("role", s(user.get("title")).map(|x| slug(&x)));
    put("employment_type", s(user.get("userType")).map(|x| slug(&x)));
    put("site", site.clone());
    put("employee_number", e("employeeNumber"));
    put("organization", e("organization"));
    put("division", e("division"));
    put("cost_center", e("costCenter"));
    put(
        "manager",
        s(ext
            .and_then(|x| x.get("manager"))
            .and_then(|m| m.get("value"))),
    );
    if !groups.is_empty() {
        put("groups", Some(groups.join(",")));
    }
    let active = user.get("active").and_then(Value::as_bool).unwrap_or(true);
    Some(PersonRecord {
        source: source_name(tenant),
        key: key.into(),
        location: format!("scim:{tenant}/Users/{id}"),
        status: Some(if active {
            RecordStatus::Active
        } else {
            RecordStatus::Terminated
        }),
        hire_date: None,
        termination_date: None,
        contract_end: None,
        site,
        attrs,
    })
}

pub fn source_name(tenant: &str) -> String {
    format!("scim:{tenant}")
}

/// What a tenant needs to turn users into person records.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub tenant: String,
    pub correlate_by: CorrelateBy,
    pub scope_groups: Vec<String>,
    /// Declared extensions and compatibility settings.
    pub profile: Profile,
    /// Correlation key patterns this tenant is authoritative for, besides the people it created.
    pub authoritative_keys: Vec<String>,
    /// Whether it may terminate people it is not authoritative for.
    pub may_terminate: bool,
}

/// Identity attributes from declared extensions (`maps_to`), and the roles' values.
pub fn extension_attrs(p: &Profile, user: &Value) -> BTreeMap<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let mut out = BTreeMap::new();
    for (urn, e) in p.extensions_of(Kind::User) {
        let Some(Value::Object(ext)) = user.get(urn) else {
            continue;
        };
        for a in &e.attributes {
            let (Some(to), Some(v)) = (&a.maps_to, ext.get(&a.name)) else {
                continue;
            };
            let joined = match v {
                Value::Array(items) => items.iter().filter_map(text).collect::<Vec<_>>().join(","),
                one => text(one).unwrap_or_default(),
            };
            if !joined.is_empty() {
                out.insert(to.clone(), joined);
            }
        }
    }
    if let Some(Value::Array(roles)) = user.get("roles") {
        let values: Vec<String> = roles
            .iter()
            .filter_map(|r| r.get("value").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        if !values.is_empty() {
            out.insert("roles".into(), values.join(","));
        }
    }
    out
}
