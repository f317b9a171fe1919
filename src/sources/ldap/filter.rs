//! A subset of RFC 4515 search filters evaluated against an entry already read: `&`, `|`, `!`,
//! equality with `*` wildcards and presence, values compared with Unicode case folding. Used to
//! pick the primary entry among duplicates without another round trip to the server.

use super::dn::fold;
use super::mapping::Entry;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Present(String),
    /// Attribute and the value's pieces between `*` wildcards (folded).
    Equal(String, Vec<String>),
}

pub fn parse(text: &str) -> Result<Filter, String> {
    let s = text.trim();
    let (f, rest) = parse_one(s).ok_or_else(|| format!("filter `{s}` is not valid"))?;
    if !rest.trim().is_empty() {
        return Err(format!("filter `{s}`: unexpected `{rest}`"));
    }
    Ok(f)
}

fn parse_one(s: &str) -> Option<(Filter, &str)> {
    let s = s.trim_start().strip_prefix('(')?;
    let op = s.chars().next()?;
    if matches!(op, '&' | '|') {
        let mut rest = &s[1..];
        let mut parts = Vec::new();
        while rest.trim_start().starts_with('(') {
            let (f, r) = parse_one(rest)?;
            parts.push(f);
            rest = r;
        }
        let rest = rest.trim_start().strip_prefix(')')?;
        let f = if op == '&' {
            Filter::And(parts)
        } else {
            Filter::Or(parts)
        };
        return Some((f, rest));
    }
    if op == '!' {
        let (f, rest) = parse_one(&s[1..])?;
        let rest = rest.trim_start().strip_prefix(')')?;
        return Some((Filter::Not(Box::new(f)), rest));
    }
    let end = s.find(')')?;
    let (item, rest) = (&s[..end], &s[end + 1..]);
    let (attr, value) = item.split_once('=')?;
    let attr = attr.trim().to_ascii_lowercase();
    if attr.is_empty() || attr.ends_with(['~', '<', '>']) {
        return None;
    }
    let f = if value == "*" {
        Filter::Present(attr)
    } else {
        Filter::Equal(attr, value.split('*').map(fold_raw).collect())
    };
    Some((f, rest))
}

/// Fold without trimming: spaces between wildcards are part of the value.
fn fold_raw(s: &str) -> String {
    s.to_uppercase().to_lowercase()
}

impl Filter {
    /// The attributes the filter reads (the server must be asked for them).
    pub fn attributes(&self, out: &mut Vec<String>) {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| f.attributes(out)),
            Filter::Not(f) => f.attributes(out),
            Filter::Present(a) | Filter::Equal(a, _) => out.push(a.clone()),
        }
    }

    pub fn matches(&self, e: &Entry) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(e)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(e)),
            Filter::Not(f) => !f.matches(e),
            Filter::Present(a) => !e.all(a).is_empty(),
            Filter::Equal(a, pieces) => e.all(a).iter().any(|v| wildcard(&fold(v), pieces)),
        }
    }
}

/// `pieces` are the parts between `*`: the first is a prefix, the last a suffix, the rest in order.
fn wildcard(v: &str, pieces: &[String]) -> bool {
    match pieces {
        [] => false,
        [only] => v == only,
        [first, middle @ .., last] => {
            let Some(mut rest) = v.strip_prefix(first.as_str()) else {
                return false;
            };
            for m in middle {
                match rest.find(m.as_str()) {
                    Some(i) => rest = &rest[i + m.len()..],
                    None => return false,
                }
            }
            rest.len() >= last.len() && rest.ends_with(last.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        let mut e = Entry::default();
        for (k, v) in pairs {
            e.attrs
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        e
    }

    #[test]
    fn evaluates_the_subset_used_to_pick_primaries() {
        let f = parse("(&(objectClass=person)(!(sAMAccountName=adm-*)))").unwrap();
        let person = entry(&[("objectClass", "Person"), ("sAMAccountName", "alice")]);
        let admin = entry(&[("objectClass", "person"), ("sAMAccountName", "ADM-alice")]);
        assert!(f.matches(&person));
        assert!(!f.matches(&admin));
        let f = parse("(|(cn=*ødegård*)(mail=*))").unwrap();
        assert!(f.matches(&entry(&[("cn", "Lab ØDEGÅRD Oslo")])));
        assert!(f.matches(&entry(&[("mail", "x@y")])));
        assert!(!f.matches(&entry(&[("cn", "other")])));
        for bad in ["(cn=a", "cn=a", "(&(cn=a)", "(cn>=a)", "(cn=a))"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
