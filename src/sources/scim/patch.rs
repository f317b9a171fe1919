//! PATCH (RFC 7644 section 3.5.2), on the JSON representation.

use super::*;
use scim_v2::filter::PatchValuePath;

pub fn parse_patch(v: Value) -> Result<Vec<PatchOperation>> {
    let has_schema = v
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(schema_urns::PATCH_OP)));
    if !has_schema {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!(
                "a PATCH body must carry the schema {}",
                schema_urns::PATCH_OP
            ),
        ));
    }
    let op: PatchOp = serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("invalid SCIM path") {
            ScimError::bad("invalidPath", msg)
        } else if msg.contains("missing field `path`") {
            // RFC 7644 3.5.2.2: a remove without a path is "noTarget".
            ScimError::bad("noTarget", msg)
        } else {
            ScimError::bad("invalidSyntax", msg)
        }
    })?;
    Ok(op.operations)
}

pub(super) fn key_of(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// The object an attribute path lives in (the resource, or the Enterprise extension), and the
/// attribute's canonical name there.
pub(super) fn locate<'a>(
    root: &'a mut Map<String, Value>,
    pr: &Profile,
    kind: Kind,
    p: &AttrPath,
) -> Result<(&'a mut Map<String, Value>, String)> {
    let bad = || ScimError::bad("invalidPath", format!("no attribute `{p}`"));
    let ent = schema_urns::ENTERPRISE_USER;
    let enterprise = p
        .uri
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(ent));
    // Entra ID patches the enterprise attributes by their bare names (`manager`, `department`).
    let flattened = p.uri.is_none()
        && kind == Kind::User
        && kind.canonical(&p.name).is_none()
        && ENTERPRISE_ATTRS
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&p.name));
    let (urn, name): (String, String) = if (enterprise || flattened) && kind == Kind::User {
        let name = ENTERPRISE_ATTRS
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&p.name))
            .ok_or_else(bad)?;
        (ent.to_string(), (*name).to_string())
    } else if let Some(uri) = p
        .uri
        .as_deref()
        .filter(|u| !u.eq_ignore_ascii_case(kind.schema()))
    {
        match pr.ext_attr(kind, uri, &p.name) {
            Some((u, a)) => (u.to_string(), a.name.clone()),
            None if pr.extension(kind, uri).is_some() => return Err(bad()),
            None if pr.unknown == crate::config::UnknownAttributes::Keep => {
                (uri.to_string(), p.name.clone())
            }
            None => {
                let ScimError::Client { detail, .. } = undeclared(uri) else {
                    return Err(bad());
                };
                return Err(ScimError::bad("invalidPath", detail));
            }
        }
    } else {
        let name = kind.canonical(&p.name).ok_or_else(bad)?;
        if ["id", "meta", "groups"].contains(&name) {
            return Err(ScimError::bad(
                "mutability",
                format!("`{name}` is read-only"),
            ));
        }
        return Ok((root, name.to_string()));
    };
    let ext = root.entry(urn).or_insert_with(|| json!({}));
    if !ext.is_object() {
        *ext = json!({});
    }
    let Value::Object(ext) = ext else {
        return Err(bad());
    };
    Ok((ext, name))
}

/// Whether the attribute a path names is multi-valued (core, or as an extension declares it).
fn multi(pr: &Profile, kind: Kind, p: &AttrPath, name: &str) -> bool {
    is_multi(name)
        || p.uri
            .as_deref()
            .and_then(|u| pr.ext_attr(kind, u, name))
            .is_some_and(|(_, a)| a.multi_valued)
}

pub(super) fn json_cmp(have: &Value, op: &CompareOp, want: &CompValue) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (have, want) {
        (Value::String(h), CompValue::Str(w)) => {
            let (h, w) = (h.to_lowercase(), w.to_lowercase());
            match op {
                CompareOp::Co => return h.contains(&w),
                CompareOp::Sw => return h.starts_with(&w),
                CompareOp::Ew => return h.ends_with(&w),
                _ => Some(h.cmp(&w)),
            }
        }
        (Value::Bool(h), CompValue::True) => Some(h.cmp(&true)),
        (Value::Bool(h), CompValue::False) => Some(h.cmp(&false)),
        (Value::Number(h), CompValue::Number(w)) => h
            .as_f64()
            .zip(w.as_f64())
            .and_then(|(h, w)| h.partial_cmp(&w)),
        _ => None,
    };
    match (op, ord) {
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Ne, None) => true,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

pub(super) fn matches(f: &ValFilter, el: &Value) -> bool {
    let get = |p: &AttrPath| {
        el.as_object()
            .and_then(|m| key_of(m, &p.name).and_then(|k| m.get(&k)))
    };
    match f {
        ValFilter::Attr(AttrExp::Present(p)) => get(p).is_some_and(|v| !v.is_null()),
        ValFilter::Attr(AttrExp::Comparison(p, op, want)) => match get(p) {
            Some(have) => json_cmp(have, op, want),
            None => *op == CompareOp::Ne,
        },
        ValFilter::Not(inner) => !matches(inner, el),
        ValFilter::And(ops) => ops.as_slice().iter().all(|f| matches(f, el)),
        ValFilter::Or(ops) => ops.as_slice().iter().any(|f| matches(f, el)),
    }
}

/// The `attr eq "x"` pairs of a conjunction: what a new element must carry so that a value path
/// that matched nothing matches it.
pub(super) fn eq_pairs(f: &ValFilter, out: &mut Map<String, Value>) -> bool {
    match f {
        ValFilter::Attr(AttrExp::Comparison(p, CompareOp::Eq, v)) => {
            let v = match v {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::True => Value::Bool(true),
                CompValue::False => Value::Bool(false),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return false,
            };
            out.insert(p.name.clone(), v);
            true
        }
        ValFilter::And(ops) => ops.as_slice().iter().all(|f| eq_pairs(f, out)),
        _ => false,
    }
}

pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let key = key_of(a, &k).unwrap_or(k);
                a.insert(key, v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Replace,
    Remove,
}

/// Entra ID sends the Enterprise `manager` as a bare id, an object or a one-element array.
pub(super) fn shape(name: &str, value: Value) -> Value {
    match value {
        v if name == "manager" => manager_value(v).unwrap_or(Value::Null),
        v => v,
    }
}

pub(super) fn set_attr(
    map: &mut Map<String, Value>,
    name: &str,
    multi: bool,
    op: Op,
    value: Value,
) {
    let value = shape(name, value);
    let key = key_of(map, name).unwrap_or_else(|| name.to_string());
    if multi {
        let items = match value {
            Value::Array(a) => a,
            Value::Null => vec![],
            v => vec![v],
        };
        let slot = map.entry(key).or_insert_with(|| json!([]));
        if op == Op::Replace || !slot.is_array() {
            *slot = json!([]);
        }
        if let Value::Array(a) = slot {
            // Adding a member twice is a no-op, not a duplicate (Okta re-pushes whole groups).
            // Elements are found by (value, type) through an index: one add to a group of 20,000
            // is not 20,000 comparisons per added member.
            let id = |x: &Value| {
                x.get("value")
                    .map(|v| format!("{v}\u{0}{}", x.get("type").unwrap_or(&Value::Null)))
            };
            let mut index: std::collections::HashMap<String, usize> = a
                .iter()
                .enumerate()
                .filter_map(|(n, x)| id(x).map(|k| (k, n)))
                .collect();
            for i in items {
                let at = id(&i)
                    .and_then(|k| index.get(&k).copied())
                    .or_else(|| a.iter().position(|x| x == &i));
                match at {
                    Some(n) => merge(&mut a[n], i),
                    None => {
                        if let Some(k) = id(&i) {
                            index.insert(k, a.len());
                        }
                        a.push(i);
                    }
                }
            }
        }
    } else if value.is_null() {
        map.remove(&key);
    } else {
        match map.get_mut(&key) {
            Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
            _ => {
                map.insert(key, value);
            }
        }
    }
}

/// `urn:...:enterprise:2.0:User` as a PATCH path parses as attribute `User` of schema
/// `urn:...:enterprise:2.0`; it means the whole extension (the enterprise one or a declared one).
pub(super) fn whole_extension(pr: &Profile, kind: Kind, p: &AttrPath) -> Option<String> {
    let full = format!("{}:{}", p.uri.as_deref()?, p.name);
    if p.sub_attr.is_some() {
        return None;
    }
    if kind == Kind::User && full.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER) {
        return Some(schema_urns::ENTERPRISE_USER.to_string());
    }
    pr.extension(kind, &full).map(|(u, _)| u.to_string())
}

pub(super) fn apply_path(
    root: &mut Map<String, Value>,
    pr: &Profile,
    kind: Kind,
    op: Op,
    path: &PatchPath,
    value: Option<Value>,
) -> Result<()> {
    if let PatchPath::Attr(p) = path
        && let Some(urn) = whole_extension(pr, kind, p)
    {
        return apply_whole_extension(root, pr, kind, op, urn, value);
    }
    match path {
        PatchPath::Attr(p) => apply_attr_path(root, pr, kind, op, p, value),
        PatchPath::Value(vp) => apply_value_path(root, pr, kind, op, vp, value),
    }
}

/// A path naming a whole extension: the extension removed, or each of its attributes applied.
fn apply_whole_extension(
    root: &mut Map<String, Value>,
    pr: &Profile,
    kind: Kind,
    op: Op,
    urn: String,
    value: Option<Value>,
) -> Result<()> {
    match (op, value) {
        (Op::Remove, _) | (_, None | Some(Value::Null)) => {
            root.remove(&urn);
        }
        (_, Some(Value::Object(ext))) => {
            // scim2-models repeats the extension's `schemas` inside its object; it is not an
            // attribute.
            for (ek, ev) in ext.into_iter().filter(|(k, _)| k != "schemas") {
                let p = AttrPath {
                    uri: Some(urn.clone()),
                    name: ek,
                    sub_attr: None,
                };
                apply_path(root, pr, kind, op, &PatchPath::Attr(p), Some(ev))?;
            }
        }
        _ => {
            return Err(ScimError::bad(
                "invalidValue",
                format!("the extension `{urn}` must be an object"),
            ));
        }
    }
    Ok(())
}

/// A plain attribute path: the attribute, or one of its sub-attributes, set or removed.
fn apply_attr_path(
    root: &mut Map<String, Value>,
    pr: &Profile,
    kind: Kind,
    op: Op,
    p: &AttrPath,
    value: Option<Value>,
) -> Result<()> {
    let multi = multi(pr, kind, p, p.name.as_str());
    let (map, name) = locate(root, pr, kind, p)?;
    let multi = multi || is_multi(&name);
    match (&p.sub_attr, op) {
        (None, Op::Remove) => remove_attr(map, &name, multi, value.as_ref()),
        (None, _) => set_attr(map, &name, multi, op, value.unwrap_or(Value::Null)),
        (Some(sub), _) => apply_sub_attr(map, &name, sub, op, value)?,
    }
    Ok(())
}

/// A remove without a filter: the whole attribute, or of a multi-valued one given a list of
/// elements, only those elements.
fn remove_attr(map: &mut Map<String, Value>, name: &str, multi: bool, value: Option<&Value>) {
    // Entra ID removes members as `{"path":"members","value":[{"value":"id"}]}`.
    if let (Some(Value::Array(gone)), true) = (value, multi) {
        let ids: Vec<&Value> = gone.iter().filter_map(|g| g.get("value")).collect();
        if let Some(Value::Array(a)) = key_of(map, name).and_then(|k| map.get_mut(&k)) {
            a.retain(|x| x.get("value").is_none_or(|v| !ids.contains(&v)));
        }
    } else if let Some(k) = key_of(map, name) {
        map.remove(&k);
    }
}

/// A sub-attribute path (`name.givenName`): set or removed in the attribute's object.
fn apply_sub_attr(
    map: &mut Map<String, Value>,
    name: &str,
    sub: &str,
    op: Op,
    value: Option<Value>,
) -> Result<()> {
    let key = key_of(map, name).unwrap_or_else(|| name.to_string());
    let slot = map.entry(key).or_insert_with(|| json!({}));
    match slot {
        Value::Object(obj) => {
            let sk = key_of(obj, sub).unwrap_or_else(|| sub.to_string());
            match (op, value) {
                (Op::Remove, _) | (_, None | Some(Value::Null)) => {
                    obj.remove(&sk);
                }
                (_, Some(v)) => {
                    obj.insert(sk, v);
                }
            }
        }
        // `emails.type`: the sub-attribute of every element.
        Value::Array(items) => {
            for it in items.iter_mut() {
                if let Value::Object(obj) = it {
                    let sk = key_of(obj, sub).unwrap_or_else(|| sub.to_string());
                    match (&op, &value) {
                        (Op::Remove, _) | (_, None) => {
                            obj.remove(&sk);
                        }
                        (_, Some(v)) => {
                            obj.insert(sk, v.clone());
                        }
                    }
                }
            }
        }
        _ => {
            return Err(ScimError::bad(
                "invalidPath",
                format!("`{name}` has no sub-attributes"),
            ));
        }
    }
    Ok(())
}

/// A value path (`emails[type eq "work"]`, maybe with `.value`): the elements the filter matches
/// changed or removed.
fn apply_value_path(
    root: &mut Map<String, Value>,
    pr: &Profile,
    kind: Kind,
    op: Op,
    vp: &PatchValuePath,
    value: Option<Value>,
) -> Result<()> {
    let declared_multi = multi(pr, kind, &vp.attr, vp.attr.name.as_str());
    let (map, name) = locate(root, pr, kind, &vp.attr)?;
    if !is_multi(&name) && !declared_multi {
        return Err(ScimError::bad(
            "invalidPath",
            format!("`{name}` is not multi-valued"),
        ));
    }
    let key = key_of(map, &name).unwrap_or(name.clone());
    let mut items = match map.remove(&key) {
        Some(Value::Array(a)) => a,
        _ => vec![],
    };
    let hits = matching(&vp.filter, &items);
    if hits.is_empty() && op != Op::Remove {
        // Entra ID replaces `emails[type eq "work"].value` on users that have no work email
        // yet: create the element the filter describes instead of failing with noTarget.
        let mut el = Map::new();
        if !eq_pairs(&vp.filter, &mut el) {
            return Err(ScimError::bad(
                "noTarget",
                format!("no value of `{name}` matches the path"),
            ));
        }
        items.push(Value::Object(el));
    }
    let hits = matching(&vp.filter, &items);
    if op == Op::Remove && vp.sub_attr.is_none() {
        let mut i = 0;
        items.retain(|_| {
            let keep = !hits.contains(&i);
            i += 1;
            keep
        });
    } else {
        change_matched(&mut items, hits, vp.sub_attr.as_deref(), op, value.as_ref());
    }
    if !items.is_empty() {
        map.insert(key, Value::Array(items));
    }
    Ok(())
}

/// The positions of the elements a value filter matches.
fn matching(filter: &ValFilter, items: &[Value]) -> Vec<usize> {
    (0..items.len())
        .filter(|i| matches(filter, &items[*i]))
        .collect()
}

/// The matched elements changed: a sub-attribute set or removed, or the value merged in.
fn change_matched(
    items: &mut [Value],
    hits: Vec<usize>,
    sub_attr: Option<&str>,
    op: Op,
    value: Option<&Value>,
) {
    for i in hits {
        let el = &mut items[i];
        match (sub_attr, op, value) {
            (Some(sub), Op::Remove, _) | (Some(sub), _, None) => {
                if let Value::Object(o) = el
                    && let Some(k) = key_of(o, sub)
                {
                    o.remove(&k);
                }
            }
            (Some(sub), _, Some(v)) => {
                if let Value::Object(o) = el {
                    let k = key_of(o, sub).unwrap_or_else(|| sub.to_string());
                    o.insert(k, v.clone());
                }
            }
            (None, _, Some(v)) => merge(el, v.clone()),
            (None, _, None) => {}
        }
    }
}

/// Apply PATCH operations to a stored representation; the result still has to pass [`canonical`].
pub fn apply_patch(
    pr: &Profile,
    kind: Kind,
    raw: &Value,
    ops: Vec<PatchOperation>,
) -> Result<Value> {
    let mut doc = raw.clone();
    let Value::Object(root) = &mut doc else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "stored resource is not an object",
        ));
    };
    for operation in ops {
        let (op, target) = match operation {
            PatchOperation::Add(t) => (Op::Add, t),
            PatchOperation::Replace(t) => (Op::Replace, t),
            PatchOperation::Remove { path, value } => {
                apply_path(root, pr, kind, Op::Remove, &path, value)?;
                continue;
            }
        };
        match target {
            OperationTarget::WithPath { path, value } => {
                if value.is_none() && op == Op::Add {
                    return Err(ScimError::bad("invalidValue", "`add` needs a value"));
                }
                apply_path(root, pr, kind, op, &path, value)?;
            }
            // No path: the value is a partial resource. Okta includes `id` in it; Entra ID may use
            // dotted names (`name.givenName`) and extension URNs as keys.
            OperationTarget::WithoutPath { value } => {
                for (k, v) in value {
                    if k.eq_ignore_ascii_case("id")
                        || k.eq_ignore_ascii_case("meta")
                        || k.eq_ignore_ascii_case("schemas")
                    {
                        continue;
                    }
                    let urn = if kind == Kind::User
                        && k.eq_ignore_ascii_case(schema_urns::ENTERPRISE_USER)
                    {
                        Some(schema_urns::ENTERPRISE_USER.to_string())
                    } else {
                        pr.extension(kind, &k).map(|(u, _)| u.to_string())
                    };
                    if let Some(urn) = urn {
                        let Value::Object(ext) = v else {
                            return Err(ScimError::bad(
                                "invalidValue",
                                format!("the extension `{urn}` must be an object"),
                            ));
                        };
                        for (ek, ev) in ext {
                            let p = AttrPath {
                                uri: Some(urn.clone()),
                                name: ek,
                                sub_attr: None,
                            };
                            apply_path(root, pr, kind, op, &PatchPath::Attr(p), Some(ev))?;
                        }
                        continue;
                    }
                    let path: PatchPath = k
                        .parse()
                        .map_err(|e| ScimError::bad("invalidPath", format!("`{k}`: {e}")))?;
                    apply_path(root, pr, kind, op, &path, Some(v))?;
                }
            }
        }
    }
    Ok(doc)
}

/// A PATCH operation on a group's members, in a form applied member by member.
#[derive(Debug)]
pub enum MemberOp {
    /// Add these elements (merged into a member that is there already).
    Add(Vec<Value>),
    /// Take out the members with these ids.
    Remove(Vec<String>),
    /// Every member replaced by these (none: all removed).
    Replace(Vec<Value>),
}

fn is_members(p: &AttrPath) -> bool {
    p.name.eq_ignore_ascii_case("members")
        && p.uri
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(schema_urns::GROUP))
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => vec![],
        v => vec![v],
    }
}

/// The ids a value filter selects when it is `value eq "id"` (or several joined by `or`): how
/// Entra ID and Okta remove a member.
fn value_eq_ids(f: &ValFilter, out: &mut Vec<String>) -> bool {
    match f {
        ValFilter::Attr(AttrExp::Comparison(p, CompareOp::Eq, CompValue::Str(s)))
            if p.name.eq_ignore_ascii_case("value") && p.sub_attr.is_none() && p.uri.is_none() =>
        {
            out.push(s.clone());
            true
        }
        ValFilter::Or(ops) => ops.as_slice().iter().all(|f| value_eq_ids(f, out)),
        _ => false,
    }
}

/// A group's PATCH operations split into those on members (as [`MemberOp`]s, applied to member
/// rows one by one) and the rest (applied to the representation without members). `None` when an
/// operation on members needs the whole list (a sub-attribute, a filter other than on `value`):
/// the caller then patches the full representation.
pub fn split_member_ops(ops: Vec<PatchOperation>) -> Option<(Vec<PatchOperation>, Vec<MemberOp>)> {
    let mut rest = Vec::new();
    let mut members = Vec::new();
    for operation in ops {
        match operation {
            PatchOperation::Add(OperationTarget::WithPath {
                path: PatchPath::Attr(p),
                value: Some(v),
            }) if is_members(&p) && p.sub_attr.is_none() => members.push(MemberOp::Add(items(v))),
            PatchOperation::Replace(OperationTarget::WithPath {
                path: PatchPath::Attr(p),
                value,
            }) if is_members(&p) && p.sub_attr.is_none() => {
                members.push(MemberOp::Replace(items(value.unwrap_or(Value::Null))))
            }
            PatchOperation::Remove {
                path: PatchPath::Attr(p),
                value,
            } if is_members(&p) && p.sub_attr.is_none() => match value {
                // Entra ID removes members as `{"path":"members","value":[{"value":"id"}]}`.
                Some(Value::Array(gone)) => members.push(MemberOp::Remove(
                    gone.iter()
                        .filter_map(|g| g.get("value").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect(),
                )),
                _ => members.push(MemberOp::Replace(vec![])),
            },
            PatchOperation::Remove {
                path: PatchPath::Value(vp),
                ..
            } if is_members(&vp.attr) && vp.attr.sub_attr.is_none() && vp.sub_attr.is_none() => {
                let mut ids = Vec::new();
                if !value_eq_ids(&vp.filter, &mut ids) {
                    return None;
                }
                members.push(MemberOp::Remove(ids));
            }
            PatchOperation::Add(OperationTarget::WithPath { path, .. })
            | PatchOperation::Replace(OperationTarget::WithPath { path, .. })
            | PatchOperation::Remove { path, .. }
                if match &path {
                    PatchPath::Attr(p) => is_members(p),
                    PatchPath::Value(vp) => is_members(&vp.attr),
                } =>
            {
                return None;
            }
            PatchOperation::Add(OperationTarget::WithoutPath { value }) => {
                let value = split_partial(value, false, &mut members)?;
                if !value.is_empty() {
                    rest.push(PatchOperation::Add(OperationTarget::WithoutPath { value }));
                }
            }
            PatchOperation::Replace(OperationTarget::WithoutPath { value }) => {
                let value = split_partial(value, true, &mut members)?;
                if !value.is_empty() {
                    rest.push(PatchOperation::Replace(OperationTarget::WithoutPath {
                        value,
                    }));
                }
            }
            other => rest.push(other),
        }
    }
    Some((rest, members))
}

/// A partial resource (an operation without a path): `members` taken out as a member operation,
/// the rest returned. `None` when another key names members some other way.
fn split_partial(
    value: Map<String, Value>,
    replace: bool,
    members: &mut Vec<MemberOp>,
) -> Option<Map<String, Value>> {
    let mut rest = Map::new();
    for (k, v) in value {
        if k.eq_ignore_ascii_case("members") {
            members.push(if replace {
                MemberOp::Replace(items(v))
            } else {
                MemberOp::Add(items(v))
            });
        } else if k.to_lowercase().contains("members") {
            return None;
        } else {
            rest.insert(k, v);
        }
    }
    Some(rest)
}
