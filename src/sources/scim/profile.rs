//! What one tenant accepts beyond the core schemas: declared extensions, what happens to unknown
//! attributes, and the shapes its identity provider really sends (Entra ID, Okta).

use super::*;
use crate::config::{ScimAttributeConfig, ScimExtensionConfig, UnknownAttributes};

/// A tenant's schema and compatibility settings, resolved from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Declared extensions by URN (global ones and the tenant's own).
    pub extensions: Vec<(String, ScimExtensionConfig)>,
    pub unknown: UnknownAttributes,
    /// Quote bare filter values (`externalId eq jyoung`) before parsing.
    pub unquoted_filters: bool,
}

impl Profile {
    /// The declared extension `urn` of this resource type (URNs compare case-insensitively).
    pub fn extension(&self, kind: Kind, urn: &str) -> Option<(&str, &ScimExtensionConfig)> {
        self.extensions
            .iter()
            .find(|(u, e)| u.eq_ignore_ascii_case(urn) && e.resource == kind.resource_type())
            .map(|(u, e)| (u.as_str(), e))
    }

    pub fn extensions_of(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = &(String, ScimExtensionConfig)> {
        self.extensions
            .iter()
            .filter(move |(_, e)| e.resource == kind.resource_type())
    }

    /// An attribute of a declared extension, and the extension's canonical URN.
    pub fn ext_attr(
        &self,
        kind: Kind,
        urn: &str,
        name: &str,
    ) -> Option<(&str, &ScimAttributeConfig)> {
        let (u, e) = self.extension(kind, urn)?;
        let a = e
            .attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))?;
        Some((u, a))
    }
}

/// The refusal for a URN nobody declared: says how to declare it.
pub fn undeclared(urn: &str) -> ScimError {
    ScimError::bad(
        "invalidSyntax",
        format!(
            "schema extension `{urn}` is not declared; declare it with its attributes under \
             [scim.extensions.\"{urn}\"] (or [scim.tenants.NAME.extensions.\"{urn}\"]), or set \
             unknown_attributes = \"keep\" or \"drop\" for the tenant"
        ),
    )
}

/// `"True"`, `"false"` as booleans: Entra ID sends booleans as strings.
pub fn string_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// One value of a declared attribute in its declared type, or why it is not.
fn coerce(urn: &str, a: &ScimAttributeConfig, v: Value) -> Result<Value> {
    let bad =
        |what: &str| ScimError::bad("invalidValue", format!("`{urn}:{}` must be {what}", a.name));
    Ok(match a.kind.as_str() {
        "boolean" => Value::Bool(string_bool(&v).ok_or_else(|| bad("a boolean"))?),
        "integer" => match &v {
            Value::Number(n) if n.is_i64() => v,
            Value::String(s) => json!(s.trim().parse::<i64>().map_err(|_| bad("an integer"))?),
            _ => return Err(bad("an integer")),
        },
        "decimal" => match &v {
            Value::Number(_) => v,
            Value::String(s) => json!(s.trim().parse::<f64>().map_err(|_| bad("a number"))?),
            _ => return Err(bad("a number")),
        },
        "complex" => {
            let Value::Object(m) = v else {
                return Err(bad("an object"));
            };
            let mut out = Map::new();
            for (k, sv) in m {
                if sv.is_null() {
                    continue;
                }
                let sub = a
                    .sub_attributes
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(&k))
                    .ok_or_else(|| bad("an object of its declared sub-attributes"))?;
                out.insert(sub.name.clone(), coerce(urn, sub, sv)?);
            }
            Value::Object(out)
        }
        _ => match v {
            Value::String(_) => v,
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(bad("a string")),
        },
    })
}

/// A declared attribute's value: single or multi-valued as declared, nulls dropped.
pub fn coerce_attr(urn: &str, a: &ScimAttributeConfig, v: Value) -> Result<Option<Value>> {
    match (a.multi_valued, v) {
        (_, Value::Null) => Ok(None),
        (true, Value::Array(items)) => {
            let items: Vec<Value> = items
                .into_iter()
                .filter(|i| !i.is_null())
                .map(|i| coerce(urn, a, i))
                .collect::<Result<_>>()?;
            Ok((!items.is_empty()).then_some(Value::Array(items)))
        }
        (true, one) => Ok(Some(Value::Array(vec![coerce(urn, a, one)?]))),
        // Entra ID wraps single values in one-element arrays.
        (false, Value::Array(mut items)) if items.len() == 1 => {
            coerce(urn, a, items.remove(0)).map(Some)
        }
        (false, one) => coerce(urn, a, one).map(Some),
    }
}

/// A declared extension object in canonical form; undeclared attributes per the tenant's rule.
pub fn canonical_extension(
    p: &Profile,
    urn: &str,
    e: &ScimExtensionConfig,
    v: Value,
) -> Result<Option<Value>> {
    let Value::Object(m) = v else {
        if v.is_null() {
            return Ok(None);
        }
        return Err(ScimError::bad(
            "invalidValue",
            format!("`{urn}` must be an object"),
        ));
    };
    let mut out = Map::new();
    for (k, val) in m {
        if k.eq_ignore_ascii_case("schemas") {
            continue;
        }
        match e
            .attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(&k))
        {
            Some(a) => {
                if let Some(v) = coerce_attr(urn, a, val)? {
                    out.insert(a.name.clone(), v);
                }
            }
            None => match p.unknown {
                UnknownAttributes::Refuse => {
                    return Err(ScimError::bad(
                        "invalidSyntax",
                        format!(
                            "unknown attribute `{urn}:{k}`; add it to the extension's attributes \
                             in the configuration"
                        ),
                    ));
                }
                UnknownAttributes::Keep => {
                    out.insert(k, val);
                }
                UnknownAttributes::Drop => {}
            },
        }
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

/// Entra ID's manager: a bare id, `{"value": id}` (with `"$ref": null`), or a one-element array of
/// either; an empty value removes it.
pub fn manager_value(v: Value) -> Option<Value> {
    match v {
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(json!({ "value": s })),
        Value::Array(mut a) if !a.is_empty() => manager_value(a.remove(0)),
        Value::Object(mut m) => {
            m.retain(|_, x| !x.is_null());
            match m.get("value") {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(Value::Object(m)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Roles as sent, whole: `displayName` kept, stringified JSON (an element, or the whole list, as
/// a string) parsed, string booleans made booleans.
pub fn roles_value(v: Value) -> Value {
    let parsed = |s: &str| serde_json::from_str::<Value>(s.trim()).ok();
    let list = match v {
        Value::String(s) => match parsed(&s) {
            Some(Value::Array(a)) => a,
            Some(o @ Value::Object(_)) => vec![o],
            _ => vec![json!({ "value": s })],
        },
        Value::Array(a) => a,
        Value::Null => vec![],
        other => vec![other],
    };
    let items: Vec<Value> = list
        .into_iter()
        .filter_map(|el| {
            let el = match el {
                Value::String(s) => match parsed(&s) {
                    Some(o @ Value::Object(_)) => o,
                    _ => json!({ "value": s }),
                },
                other => other,
            };
            let Value::Object(mut m) = el else {
                return None;
            };
            m.retain(|_, x| !x.is_null());
            if let Some(b) = m.get("primary").and_then(string_bool) {
                m.insert("primary".into(), Value::Bool(b));
            }
            Some(Value::Object(m))
        })
        .collect();
    Value::Array(items)
}

/// Entra ID sends some filter values bare (`externalId eq jyoung`, `manager eq 123`): quote them so
/// the RFC grammar reads them as strings. Quoted values, `true`, `false` and `null` stay.
pub fn quote_bare_values(filter: &str) -> String {
    const OPS: &[&str] = &["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"];
    let chars: Vec<char> = filter.chars().collect();
    let mut out = String::with_capacity(filter.len() + 8);
    let mut i = 0;
    let mut prev_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // Copy a quoted string whole.
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i + 1]);
                    i += 2;
                    continue;
                }
                i += 1;
                if chars[i - 1] == '"' {
                    break;
                }
            }
            prev_word.clear();
            continue;
        }
        if c.is_whitespace() || "()[]".contains(c) {
            out.push(c);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !"()[]\"".contains(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let after_op = OPS.iter().any(|o| o.eq_ignore_ascii_case(&prev_word));
        let keyword = ["true", "false", "null"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&word));
        if after_op && !keyword {
            out.push('"');
            out.push_str(&word.replace('\\', "\\\\"));
            out.push('"');
        } else {
            out.push_str(&word);
        }
        prev_word = if after_op { String::new() } else { word };
    }
    out
}

/// The `/Schemas` representation of a declared extension.
pub fn schema_json(urn: &str, e: &ScimExtensionConfig) -> Value {
    fn attr(a: &ScimAttributeConfig) -> Value {
        let mut v = json!({
            "name": a.name,
            "type": a.kind,
            "multiValued": a.multi_valued,
            "description": a.maps_to.as_ref().map(|m| format!("maps to identity attribute `{m}`")).unwrap_or_default(),
            "required": false,
            "caseExact": false,
            "mutability": "readWrite",
            "returned": "default",
            "uniqueness": "none",
        });
        if !a.sub_attributes.is_empty() {
            v["subAttributes"] = Value::Array(a.sub_attributes.iter().map(attr).collect());
        }
        v
    }
    json!({
        "id": urn,
        "name": urn.rsplit(':').nth(1).unwrap_or(urn),
        "description": e.description.clone().unwrap_or_else(|| format!("Declared extension of {}", e.resource)),
        "attributes": e.attributes.iter().map(attr).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_filter_values_are_quoted_and_quoted_ones_kept() {
        assert_eq!(
            quote_bare_values("externalId eq jyoung"),
            r#"externalId eq "jyoung""#
        );
        assert_eq!(quote_bare_values("manager eq 123"), r#"manager eq "123""#);
        assert_eq!(
            quote_bare_values(r#"userName eq "a b" and active eq true or title pr"#),
            r#"userName eq "a b" and active eq true or title pr"#
        );
        assert_eq!(
            quote_bare_values("emails[type eq work] and (x ne null)"),
            r#"emails[type eq "work"] and (x ne null)"#
        );
    }

    #[test]
    fn manager_and_roles_in_every_shape() {
        for v in [
            json!("m1"),
            json!({"value":"m1","$ref":null}),
            json!([{"value":"m1"}]),
            json!(["m1"]),
        ] {
            assert_eq!(manager_value(v), Some(json!({"value":"m1"})));
        }
        assert_eq!(manager_value(json!([])), None);
        let r = roles_value(
            json!([{"primary":"True","value":"{\"id\":\"1\"}","displayName":"Door admin"}, "{\"value\":\"x\",\"displayName\":\"X\"}"]),
        );
        assert_eq!(r[0]["displayName"], "Door admin");
        assert_eq!(r[0]["primary"], true);
        assert_eq!(r[1]["displayName"], "X");
    }
}
