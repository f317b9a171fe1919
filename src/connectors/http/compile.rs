//! Compiling a profile: every template and JSONPath is checked once, when the connector is
//! built, so a broken profile fails at start-up with the operation and field it is in.

use super::super::profile::{AuthSpec, Operation, Profile, RuleClass};
use minijinja::Environment;
use serde_json_path::JsonPath;
use std::collections::BTreeMap;
use std::time::Duration;

/// Compiled JSONPaths of one operation.
#[derive(Debug)]
pub struct Paths {
    pub(super) items: Option<JsonPath>,
    /// The list that `items` selects from (`$.data` for `$.data[*]`): it must be present and a
    /// list, or the answer is not the one the profile describes.
    pub(super) container: Option<(String, JsonPath)>,
    pub(super) id: Option<JsonPath>,
    /// Pagination total (`pagination.total`).
    pub(super) total: Option<JsonPath>,
}

/// Per-rule compiled message path.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) class: RuleClass,
    pub(super) cooldown: Option<Duration>,
    pub(super) message: Option<JsonPath>,
}

pub(super) const OPS: [&str; 5] = [
    "find_person",
    "create_person",
    "find_grant",
    "create_grant",
    "delete_grant",
];

pub(super) fn op<'a>(p: &'a Profile, name: &str) -> Option<&'a Operation> {
    match name {
        "find_person" => p.operations.find_person.as_ref(),
        "create_person" => p.operations.create_person.as_ref(),
        "find_grant" => Some(&p.operations.find_grant),
        "create_grant" => Some(&p.operations.create_grant),
        "delete_grant" => Some(&p.operations.delete_grant),
        _ => None,
    }
}

/// Nuki's weekday bitmask: Monday = 64 .. Sunday = 1 (vendor-apis.md, Nuki grant body).
pub(super) fn nuki_weekdays(days: Vec<u8>) -> u8 {
    days.iter()
        .filter(|d| (1..=7).contains(*d))
        .fold(0u8, |m, d| m | (1u8 << (7 - d)))
}

fn parse_instant(value: &str) -> Result<chrono::DateTime<chrono::Utc>, minijinja::Error> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("`{value}` is not an RFC 3339 time: {e}"),
            )
        })
}

fn parse_tz(tz: &str) -> Result<chrono_tz::Tz, minijinja::Error> {
    tz.parse::<chrono_tz::Tz>().map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("`{tz}` is not an IANA time zone: {e}"),
        )
    })
}

/// Unix seconds (vendor-apis.md quirk 10: Verkada).
fn unix_seconds(value: String) -> Result<i64, minijinja::Error> {
    Ok(parse_instant(&value)?.timestamp())
}

/// Naive wall-clock time in a zone, no offset (vendor-apis.md Salto: schedule times are naive
/// local time in the site's zone).
fn local_naive(value: String, tz: String) -> Result<String, minijinja::Error> {
    Ok(parse_instant(&value)?
        .with_timezone(&parse_tz(&tz)?)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string())
}

/// ISO 8601 local time with its UTC offset (vendor-apis.md quirk 10: Brivo).
fn iso_offset(value: String, tz: String) -> Result<String, minijinja::Error> {
    Ok(parse_instant(&value)?
        .with_timezone(&parse_tz(&tz)?)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string())
}

pub type Compiled = (Environment<'static>, BTreeMap<&'static str, Paths>);

/// Compile every template and JSONPath of a profile; an error names the operation and field.
pub fn compile(profile: &Profile) -> Result<Compiled, String> {
    let mut env = crate::policy::sandboxed_env();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("nuki_weekdays", nuki_weekdays);
    env.add_filter("unix_seconds", unix_seconds);
    env.add_filter("local_naive", local_naive);
    env.add_filter("iso_offset", iso_offset);
    compile_rules_and_auth(profile, &mut env)?;
    let mut paths = BTreeMap::new();
    for name in OPS {
        let Some(o) = op(profile, name) else { continue };
        paths.insert(name, compile_operation(profile, name, o, &mut env)?);
    }
    Ok((env, paths))
}

fn compile_rules_and_auth(profile: &Profile, env: &mut Environment<'static>) -> Result<(), String> {
    let perr = |field: &str, e: String| format!("{}: {field}: {e}", profile.origin);
    for (i, r) in profile.status.rules.iter().enumerate() {
        env.add_template_owned(
            format!("status.rules.{i}"),
            format!("{{% if {} %}}1{{% endif %}}", r.when),
        )
        .map_err(|e| perr(&format!("status.rules[{i}].when"), e.to_string()))?;
        if let Some(m) = &r.message {
            JsonPath::parse(m)
                .map_err(|e| perr(&format!("status.rules[{i}].message"), e.to_string()))?;
        }
    }
    if let AuthSpec::Login {
        body,
        headers,
        token,
        ..
    } = &profile.auth
    {
        if let Some(b) = body {
            env.add_template_owned("auth.body", b.clone())
                .map_err(|e| perr("auth.body", e.to_string()))?;
        }
        for (k, v) in headers {
            env.add_template_owned(format!("auth.headers.{k}"), v.clone())
                .map_err(|e| perr(&format!("auth.headers.{k}"), e.to_string()))?;
        }
        JsonPath::parse(token).map_err(|e| perr("auth.token", e.to_string()))?;
    }
    Ok(())
}

fn compile_operation(
    profile: &Profile,
    name: &str,
    o: &Operation,
    env: &mut Environment<'static>,
) -> Result<Paths, String> {
    let err =
        |field: &str, e: String| format!("{}: operations.{name}.{field}: {e}", profile.origin);
    env.add_template_owned(format!("{name}.path"), o.path.clone())
        .map_err(|e| err("path", e.to_string()))?;
    for (k, v) in &o.query {
        env.add_template_owned(format!("{name}.query.{k}"), v.clone())
            .map_err(|e| err(&format!("query.{k}"), e.to_string()))?;
    }
    if let Some(b) = &o.body {
        env.add_template_owned(format!("{name}.body"), b.clone())
            .map_err(|e| err("body", e.to_string()))?;
    }
    if let Some(m) = &o.matches {
        env.add_template_owned(
            format!("{name}.matches"),
            format!("{{% if {m} %}}1{{% endif %}}"),
        )
        .map_err(|e| err("matches", e.to_string()))?;
    }
    let parse = |field: &str, p: &Option<String>| {
        p.as_deref()
            .map(JsonPath::parse)
            .transpose()
            .map_err(|e| err(field, e.to_string()))
    };
    let total = o.pagination.as_ref().and_then(|p| p.total.clone());
    // `$.data[*]` selects from `$.data`, which must then be a list; `$` alone is the answer itself.
    let container = o
        .items
        .as_deref()
        .and_then(|i| i.strip_suffix("[*]"))
        .map(|c| {
            JsonPath::parse(c)
                .map(|p| (c.to_string(), p))
                .map_err(|e| err("items", e.to_string()))
        })
        .transpose()?;
    if !matches!(
        o.method.as_str(),
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
    ) {
        return Err(err(
            "method",
            format!("`{}` is not an HTTP method latchkey sends", o.method),
        ));
    }
    Ok(Paths {
        items: parse("items", &o.items)?,
        container,
        id: parse("id", &o.id)?,
        total: parse("pagination.total", &total)?,
    })
}

/// The rules of a profile's `[status]`, with their message paths compiled.
pub(super) fn rules(profile: &Profile) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (i, r) in profile.status.rules.iter().enumerate() {
        rules.push(Rule {
            class: r.class,
            cooldown: r.cooldown_secs.map(Duration::from_secs),
            message: r
                .message
                .as_deref()
                .map(JsonPath::parse)
                .transpose()
                .map_err(|e| format!("status.rules[{i}].message: {e}"))?,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::nuki_weekdays;

    #[test]
    fn nuki_weekday_mask_is_monday_64_to_sunday_1() {
        assert_eq!(nuki_weekdays(vec![1]), 64);
        assert_eq!(nuki_weekdays(vec![7]), 1);
        assert_eq!(nuki_weekdays(vec![1, 2, 3, 4, 5]), 124);
    }
}
