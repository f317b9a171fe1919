//! `attributes` and `excludedAttributes` (RFC 7644 section 3.9).

use super::*;

/// Which attributes a response carries (RFC 7644 section 3.9).
#[derive(Debug, Default, Clone)]
pub(super) struct Projection {
    attributes: Vec<String>,
    excluded: Vec<String>,
}

impl Projection {
    pub(super) fn parse(attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let list = |s: Option<&str>| {
            s.map(|s| {
                s.split(',')
                    .map(|a| a.trim().to_lowercase())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        Self {
            attributes: list(attributes),
            excluded: list(excluded),
        }
    }

    /// Requested names as (top-level key, optional sub-attribute), lower-case. A URN prefix selects
    /// the extension object for the enterprise schema, and nothing for the core schemas.
    pub(super) fn split(name: &str) -> (String, Option<String>) {
        let ent = schema_urns::ENTERPRISE_USER.to_lowercase();
        if let Some(rest) = name.strip_prefix(&format!("{ent}:")) {
            let (a, sub) = match rest.split_once('.') {
                Some((a, s)) => (a, Some(s)),
                None => (rest, None),
            };
            return (
                ent,
                Some(format!(
                    "{a}{}",
                    sub.map(|s| format!(".{s}")).unwrap_or_default()
                )),
            );
        }
        if name == ent {
            return (ent, None);
        }
        let name = [schema_urns::USER, schema_urns::GROUP]
            .iter()
            .find_map(|u| name.strip_prefix(&format!("{}:", u.to_lowercase())))
            .unwrap_or(name);
        match name.split_once('.') {
            Some((a, s)) => (a.to_string(), Some(s.to_string())),
            None => (name.to_string(), None),
        }
    }

    /// Whether the answer carries this top-level attribute (lower case) at all: a group's members
    /// are not read when it does not.
    pub(super) fn wants(&self, top: &str) -> bool {
        if !self.attributes.is_empty() && !self.attributes.iter().any(|a| Self::split(a).0 == top) {
            return false;
        }
        !self
            .excluded
            .iter()
            .any(|a| Self::split(a) == (top.to_string(), None))
    }

    pub(super) fn apply(&self, mut v: Value) -> Value {
        let Value::Object(map) = &mut v else {
            return v;
        };
        let always = |k: &str| k == "id" || k == "schemas";
        if !self.attributes.is_empty() {
            let wanted: Vec<(String, Option<String>)> =
                self.attributes.iter().map(|a| Self::split(a)).collect();
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let lk = k.to_lowercase();
                if always(&k) {
                    continue;
                }
                let subs: Vec<&Option<String>> = wanted
                    .iter()
                    .filter(|(top, _)| *top == lk)
                    .map(|(_, s)| s)
                    .collect();
                if subs.is_empty() {
                    map.remove(&k);
                } else if subs.iter().all(|s| s.is_some()) {
                    let keep: Vec<String> = subs.iter().filter_map(|s| (*s).clone()).collect();
                    if let Some(inner) = map.get_mut(&k) {
                        keep_subs(inner, &keep);
                    }
                }
            }
        }
        for ex in &self.excluded {
            let (top, sub) = Self::split(ex);
            let Some(k) = map.keys().find(|k| k.to_lowercase() == top).cloned() else {
                continue;
            };
            if always(&k) {
                continue;
            }
            match sub {
                None => {
                    map.remove(&k);
                }
                Some(sub) => {
                    if let Some(inner) = map.get_mut(&k) {
                        drop_sub(inner, &sub);
                    }
                }
            }
        }
        v
    }
}

pub(super) fn keep_subs(v: &mut Value, keep: &[String]) {
    match v {
        Value::Object(m) => {
            let top: BTreeSet<String> = keep
                .iter()
                .map(|k| k.split('.').next().unwrap_or(k).to_string())
                .collect();
            m.retain(|k, _| top.contains(&k.to_lowercase()));
        }
        Value::Array(items) => items.iter_mut().for_each(|i| keep_subs(i, keep)),
        _ => {}
    }
}

pub(super) fn drop_sub(v: &mut Value, sub: &str) {
    let top = sub.split('.').next().unwrap_or(sub);
    match v {
        Value::Object(m) => m.retain(|k, _| k.to_lowercase() != top),
        Value::Array(items) => items.iter_mut().for_each(|i| drop_sub(i, sub)),
        _ => {}
    }
}
