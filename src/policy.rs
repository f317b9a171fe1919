//! Policy: entitlement templates decide what each identity should hold.
//!
//! A template is a condition on identity attributes (a minijinja expression) and the grants it gives.
//! Everything is compiled when the file loads, so a typo is a load error naming the template, never a
//! surprise revocation at run time. Only an active identity is entitled to anything.

use crate::config::{ConfigError, line_col};
use crate::identity::end_of_day;
use crate::model::{DesiredGrant, Lifecycle, Window};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use minijinja::Environment;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: template `{template}`, {field}: {message}")]
    Template {
        file: String,
        template: String,
        field: String,
        message: String,
    },
    #[error("template `{template}` failed for identity {identity}: {message}")]
    Eval {
        template: String,
        identity: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesFile {
    version: u32,
    /// Identity attribute holding a date after which every grant ends (contractors' contract end).
    #[serde(default = "default_until_attr")]
    valid_until_attribute: String,
    #[serde(default)]
    templates: Vec<TemplateSpec>,
}

fn default_until_attr() -> String {
    "contract_end".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSpec {
    name: String,
    /// Condition on identity attributes, e.g. `department == "engineering" and site == "berlin"`.
    when: String,
    /// Who approved this template: recorded on every grant it causes, for auditors.
    approved_by: Option<String>,
    #[serde(default)]
    grants: Vec<GrantSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    connector: String,
    /// Logical target name; may use attributes, e.g. `{{ site }}-entrance`.
    target: String,
    #[serde(default = "default_credential")]
    credential: String,
    window: Option<WindowSpec>,
}

fn default_credential() -> String {
    "app".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpec {
    /// ISO weekdays, 1 = Monday .. 7 = Sunday.
    weekdays: Vec<u8>,
    /// Local time `HH:MM`.
    from: String,
    until: String,
}

const CREDENTIALS: &[&str] = &[
    "app",
    "fob",
    "keypad",
    "card",
    "mobile",
    "wallet",
    "physical_key",
    "cabinet",
];

#[derive(Debug)]
struct Compiled {
    name: String,
    /// Name of the compiled condition in the environment.
    when_template: String,
    approved_by: Option<String>,
    grants: Vec<CompiledGrant>,
}

#[derive(Debug)]
struct CompiledGrant {
    connector: String,
    target_template: String,
    credential: String,
    window: Option<Window>,
}

/// The loaded, compiled templates.
#[derive(Debug)]
pub struct Policy {
    env: Environment<'static>,
    templates: Vec<Compiled>,
    valid_until_attribute: String,
    /// Where the templates were read from, for messages.
    origin: String,
    /// SHA-256 of the file's text: part of the reconciliation fingerprint.
    digest: String,
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

/// A sandboxed template engine with bounded work per render (untrusted-ish config should not hang us).
pub fn sandboxed_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(50_000));
    env
}

/// A load error naming the file, the template and the field.
fn template_error(origin: &str, template: &str, field: &str, message: String) -> PolicyError {
    PolicyError::Template {
        file: origin.to_string(),
        template: template.to_string(),
        field: field.to_string(),
        message,
    }
}

/// Compile one template's condition and grants into `env`.
fn compile_template(
    env: &mut Environment<'static>,
    t: &TemplateSpec,
    origin: &str,
    connectors: &[String],
) -> Result<Compiled, PolicyError> {
    // The condition becomes a tiny template so it is compiled once and stored by name.
    let cond = format!("{{% if {} %}}1{{% endif %}}", t.when);
    env.add_template_owned(format!("when:{}", t.name), cond)
        .map_err(|e| template_error(origin, &t.name, "when", format!("`{}`: {e}", t.when)))?;
    let mut grants = Vec::new();
    for (i, g) in t.grants.iter().enumerate() {
        grants.push(compile_grant(env, &t.name, i, g, origin, connectors)?);
    }
    Ok(Compiled {
        when_template: format!("when:{}", t.name),
        name: t.name.clone(),
        approved_by: t.approved_by.clone(),
        grants,
    })
}

/// Check grant `i` of template `template` (its connector is configured, its credential known)
/// and compile its target into `env`.
fn compile_grant(
    env: &mut Environment<'static>,
    template: &str,
    i: usize,
    g: &GrantSpec,
    origin: &str,
    connectors: &[String],
) -> Result<CompiledGrant, PolicyError> {
    let field = format!("grants[{i}]");
    if !connectors.is_empty() && !connectors.contains(&g.connector) {
        return Err(template_error(
            origin,
            template,
            &format!("{field}.connector"),
            format!(
                "unknown connector `{}` (configured: {})",
                g.connector,
                connectors.join(", ")
            ),
        ));
    }
    if !CREDENTIALS.contains(&g.credential.as_str()) {
        return Err(template_error(
            origin,
            template,
            &format!("{field}.credential"),
            format!(
                "unknown credential `{}` (one of {})",
                g.credential,
                CREDENTIALS.join(", ")
            ),
        ));
    }
    let target_template = format!("target:{template}:{i}");
    env.add_template_owned(target_template.clone(), g.target.clone())
        .map_err(|e| template_error(origin, template, &format!("{field}.target"), e.to_string()))?;
    let window = g
        .window
        .as_ref()
        .map(|w| compile_window(w, origin, template, &format!("{field}.window")))
        .transpose()?;
    Ok(CompiledGrant {
        connector: g.connector.clone(),
        target_template,
        credential: g.credential.clone(),
        window,
    })
}

/// A grant's weekly window: `HH:MM` times with from < until, on weekdays 1 (Monday) ..= 7.
fn compile_window(
    w: &WindowSpec,
    origin: &str,
    template: &str,
    field: &str,
) -> Result<Window, PolicyError> {
    let from = parse_hhmm(&w.from);
    let until = parse_hhmm(&w.until);
    let (Some(from), Some(until)) = (from, until) else {
        return Err(template_error(
            origin,
            template,
            field,
            "times must be HH:MM".into(),
        ));
    };
    if from >= until || w.weekdays.is_empty() || w.weekdays.iter().any(|d| !(1..=7).contains(d)) {
        return Err(template_error(
            origin,
            template,
            field,
            "need from < until and weekdays in 1 (Monday) ..= 7 (Sunday)".into(),
        ));
    }
    Ok(Window {
        weekdays: w.weekdays.clone(),
        from_minute: from,
        until_minute: until,
    })
}

impl Policy {
    pub fn load(path: &Path, connectors: &[String]) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), connectors)
    }

    pub fn parse(text: &str, origin: &str, connectors: &[String]) -> Result<Self, PolicyError> {
        let file: TemplatesFile = crate::config::parse_toml(text, origin)?;
        if file.version != 1 {
            return Err(template_error(
                origin,
                "-",
                "version",
                format!("version {} is not supported (expected 1)", file.version),
            ));
        }
        let mut env = sandboxed_env();
        let mut templates = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for t in &file.templates {
            if !seen.insert(t.name.clone()) {
                let line = text
                    .find(&format!("\"{}\"", t.name))
                    .map(|o| line_col(text, o).0)
                    .unwrap_or(0);
                return Err(template_error(
                    origin,
                    &t.name,
                    "name",
                    format!("defined twice (line {line})"),
                ));
            }
            templates.push(compile_template(&mut env, t, origin, connectors)?);
        }
        use sha2::Digest;
        Ok(Self {
            env,
            templates,
            valid_until_attribute: file.valid_until_attribute,
            origin: origin.to_string(),
            digest: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        })
    }

    /// SHA-256 of the templates file as loaded.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn template_names(&self) -> Vec<String> {
        self.templates.iter().map(|t| t.name.clone()).collect()
    }

    pub fn approver_of(&self, template: &str) -> Option<&str> {
        self.templates
            .iter()
            .find(|t| t.name == template)
            .and_then(|t| t.approved_by.as_deref())
    }

    /// What an identity should hold right now. Grants whose validity has passed are left out.
    pub fn desired(
        &self,
        key: &str,
        lifecycle: Lifecycle,
        attrs: &BTreeMap<String, String>,
        tz: Tz,
        now: DateTime<Utc>,
    ) -> Result<Vec<DesiredGrant>, PolicyError> {
        if !lifecycle.entitled() {
            return Ok(Vec::new());
        }
        let mut ctx: BTreeMap<&str, &str> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ctx.insert("key", key);
        ctx.insert("lifecycle", lifecycle.as_str());
        // Converted once: every condition and target of every template renders against it.
        let ctx = minijinja::Value::from_pairs(ctx);
        let valid_until = attrs
            .get(&self.valid_until_attribute)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .map(|d| end_of_day(d, tz));
        if valid_until.is_some_and(|u| u <= now) {
            return Ok(Vec::new());
        }
        let eval_err = |template: &str, e: minijinja::Error| PolicyError::Eval {
            template: template.to_string(),
            identity: key.to_string(),
            message: e.to_string(),
        };
        let mut out: Vec<DesiredGrant> = Vec::new();
        for t in &self.templates {
            let cond = self
                .env
                .get_template(&t.when_template)
                .and_then(|tpl| tpl.render(&ctx))
                .map_err(|e| eval_err(&t.name, e))?;
            if cond != "1" {
                continue;
            }
            for g in &t.grants {
                let target = self
                    .env
                    .get_template(&g.target_template)
                    .and_then(|tpl| tpl.render(&ctx))
                    .map_err(|e| eval_err(&t.name, e))?;
                let target = target.trim().to_string();
                if target.is_empty() {
                    continue;
                }
                // Two templates giving the same target: the first one (file order) is the cause.
                if out
                    .iter()
                    .any(|d| d.connector == g.connector && d.target == target)
                {
                    continue;
                }
                out.push(DesiredGrant {
                    connector: g.connector.clone(),
                    target,
                    credential: g.credential.clone(),
                    template: t.name.clone(),
                    window: g.window.clone(),
                    valid_until,
                });
            }
        }
        Ok(out)
    }
}

/// A policy mistake `latchkey check` reports: a template that loads but cannot do what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    pub file: String,
    pub template: String,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: template `{}`, {}: {}",
            self.file, self.template, self.field, self.message
        )
    }
}

/// Names a template sees that no mapping has to produce.
const BUILTIN_NAMES: &[&str] = &["key", "lifecycle", "range", "dict", "namespace", "debug"];

/// Does `name` fit a target template's literal pieces (what lies between `{{ }}` expressions)?
fn fits(pieces: &[&str], name: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return name == *first;
    }
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for p in &pieces[1..pieces.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The literal pieces of a target template, or None when it has statements we do not follow.
fn literal_pieces(source: &str) -> Option<Vec<&str>> {
    if source.contains("{%") {
        return None;
    }
    let mut pieces = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        pieces.push(&rest[..start]);
        let end = rest[start..].find("}}")? + start + 2;
        rest = &rest[end..];
    }
    pieces.push(rest);
    Some(pieces)
}

impl Policy {
    /// Mistakes that load fine and then silently grant or revoke the wrong thing: a condition or
    /// target using an attribute no mapping produces (`departmnt`), a target no name in its
    /// connector's target map can match. `produced` holds every attribute some source sets;
    /// `target_maps` each connector's target names (a connector without a map sends names as is).
    pub fn lint(
        &self,
        produced: &std::collections::BTreeSet<String>,
        target_maps: &BTreeMap<String, Vec<String>>,
    ) -> Vec<Lint> {
        let mut out = Vec::new();
        let known = |v: &str| {
            produced.contains(v) || BUILTIN_NAMES.contains(&v) || v == self.valid_until_attribute
        };
        let lint = |template: &str, field: String, message: String| Lint {
            file: self.origin.clone(),
            template: template.to_string(),
            field,
            message,
        };
        let produced_list = produced.iter().cloned().collect::<Vec<_>>().join(", ");
        for t in &self.templates {
            let mut fields = vec![("when".to_string(), t.when_template.clone(), None)];
            for (i, g) in t.grants.iter().enumerate() {
                let field = format!("grants[{i}].target");
                fields.push((field, g.target_template.clone(), Some(&g.connector)));
            }
            for (field, name, connector) in fields {
                let Ok(tpl) = self.env.get_template(&name) else {
                    continue;
                };
                let mut vars: Vec<String> = tpl.undeclared_variables(false).into_iter().collect();
                vars.sort();
                for v in vars.iter().filter(|v| !known(v)) {
                    out.push(lint(
                        &t.name,
                        field.clone(),
                        format!(
                            "attribute `{v}` is produced by no mapping (produced: {produced_list})"
                        ),
                    ));
                }
                let Some(connector) = connector else {
                    continue;
                };
                let Some(names) = target_maps.get(connector).filter(|n| !n.is_empty()) else {
                    continue;
                };
                let Some(pieces) = literal_pieces(tpl.source()) else {
                    continue;
                };
                if !names.iter().any(|n| fits(&pieces, n)) {
                    out.push(lint(
                        &t.name,
                        field.clone(),
                        format!(
                            "target `{}` matches no target of connector `{connector}` ({} mapped, e.g. {})",
                            tpl.source(),
                            names.len(),
                            names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#"
version = 1
[[templates]]
name = "entrance"
when = "true"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-entrance"

[[templates]]
name = "lab"
when = "department == 'engineering'"
[[templates.grants]]
connector = "nuki"
target = "{{ site }}-lab"
window = { weekdays = [1, 2, 3, 4, 5], from = "07:00", until = "19:00" }
"#;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn conditions_select_grants_and_targets_render() {
        let p = Policy::parse(T, "t.toml", &["nuki".into()]).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = p
            .desired(
                "E1",
                Lifecycle::Active,
                &attrs(&[("site", "berlin"), ("department", "engineering")]),
                chrono_tz::UTC,
                now,
            )
            .unwrap();
        let targets: Vec<_> = d.iter().map(|g| g.target.as_str()).collect();
        assert_eq!(targets, ["berlin-entrance", "berlin-lab"]);
        assert_eq!(d[1].window.as_ref().unwrap().from_minute, 420);
        let none = p
            .desired(
                "E1",
                Lifecycle::Terminated,
                &attrs(&[("site", "berlin")]),
                chrono_tz::UTC,
                now,
            )
            .unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn contract_end_bounds_every_grant() {
        let p = Policy::parse(T, "t.toml", &[]).unwrap();
        let a = attrs(&[("site", "berlin"), ("contract_end", "2026-12-31")]);
        let before = DateTime::parse_from_rfc3339("2026-12-31T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = p
            .desired("E1", Lifecycle::Active, &a, chrono_tz::UTC, before)
            .unwrap();
        assert_eq!(
            d[0].valid_until.unwrap().to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        let after = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(
            p.desired("E1", Lifecycle::Active, &a, chrono_tz::UTC, after)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn lint_names_unknown_attributes_and_uncovered_targets() {
        let typo = T.replace("department == 'engineering'", "departmnt == 'engineering'");
        let p = Policy::parse(&typo, "t.toml", &[]).unwrap();
        let produced = ["site", "department"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let maps: BTreeMap<String, Vec<String>> =
            [("nuki".to_string(), vec!["berlin-entrance".to_string()])].into();
        let lints: Vec<String> = p
            .lint(&produced, &maps)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(lints.len(), 2, "{lints:?}");
        assert!(
            lints[0].contains("t.toml: template `lab`, when: attribute `departmnt`"),
            "{lints:?}"
        );
        assert!(
            lints[1].contains(
                "template `lab`, grants[0].target: target `{{ site }}-lab` matches no target"
            ),
            "{lints:?}"
        );
        let p = Policy::parse(T, "t.toml", &[]).unwrap();
        let maps: BTreeMap<String, Vec<String>> = [(
            "nuki".to_string(),
            vec!["berlin-entrance".into(), "berlin-lab".into()],
        )]
        .into();
        assert!(p.lint(&produced, &maps).is_empty());
        assert!(fits(&["", "-lab"], "x-lab") && !fits(&["", "-lab"], "x-labs"));
    }

    #[test]
    fn bad_condition_and_unknown_connector_fail_at_load() {
        let bad = T.replace("department == 'engineering'", "department ==");
        let e = Policy::parse(&bad, "t.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("template `lab`, when"), "{e}");
        let e = Policy::parse(T, "t.toml", &["kisi".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown connector `nuki`"), "{e}");
    }
}
