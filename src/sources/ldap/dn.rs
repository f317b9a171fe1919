//! Distinguished names compared as values, not strings (RFC 4514): attribute types are
//! case-insensitive, values may be escaped (`\,`, `\2C`, `#hex`), and names are compared with
//! Unicode case folding (`Ødegård Lab` equals `ØDEGÅRD LAB`).

/// Case folding for names: upper then lower maps `ß` and `SS` together and handles non-ASCII
/// letters (`Ø`/`ø`), which ASCII lower-casing does not.
pub fn fold(s: &str) -> String {
    s.trim().to_uppercase().to_lowercase()
}

/// One relative distinguished name component, type lower-cased and value unescaped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// Split a DN into its RDNs (outermost last), each a sorted list of attribute-value pairs.
/// `None` when the text is not a DN.
pub fn parse(dn: &str) -> Option<Vec<Vec<Ava>>> {
    let mut rdns = Vec::new();
    let mut rdn = Vec::new();
    let mut chars = dn.trim().chars().peekable();
    if chars.peek().is_none() {
        return Some(rdns);
    }
    loop {
        let mut attr = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            attr.push(c);
        }
        let attr = attr.trim().to_ascii_lowercase();
        if attr.is_empty() {
            return None;
        }
        let (value, end) = parse_value(&mut chars)?;
        rdn.push(Ava { attr, value });
        if end != Some('+') {
            rdn.sort();
            rdns.push(std::mem::take(&mut rdn));
        }
        if end.is_none() {
            return Some(rdns);
        }
    }
}

/// A value up to an unescaped `,`, `;` or `+` (returned) or the end (`None`).
fn parse_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Option<(String, Option<char>)> {
    while chars.peek() == Some(&' ') {
        chars.next();
    }
    if chars.peek() == Some(&'#') {
        // BER-encoded value: keep the hex as the value, compared lower-cased.
        let mut v = String::from("#");
        chars.next();
        while let Some(c) = chars.peek().copied() {
            if matches!(c, ',' | ';' | '+') {
                break;
            }
            v.push(c.to_ascii_lowercase());
            chars.next();
        }
        let end = chars.next();
        return Some((v.trim_end().to_string(), end));
    }
    let mut bytes: Vec<u8> = Vec::new();
    // Trailing unescaped spaces are not part of the value.
    let mut keep = 0;
    let mut end = None;
    while let Some(c) = chars.next() {
        match c {
            ',' | ';' | '+' => {
                end = Some(if c == ';' { ',' } else { c });
                break;
            }
            '\\' => {
                let a = chars.next()?;
                if a.is_ascii_hexdigit() {
                    let b = chars.next()?;
                    let hex: String = [a, b].iter().collect();
                    bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                } else {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(a.encode_utf8(&mut buf).as_bytes());
                }
                keep = bytes.len();
            }
            c => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                if c != ' ' {
                    keep = bytes.len();
                }
            }
        }
    }
    bytes.truncate(keep);
    Some((String::from_utf8(bytes).ok()?, end))
}

/// A DN in one canonical spelling: types lower-cased, values unescaped and case-folded. Text
/// that does not parse is folded as a whole, so it still only equals itself.
pub fn normalise(dn: &str) -> String {
    match parse(dn) {
        Some(rdns) => rdns
            .iter()
            .map(|rdn| {
                rdn.iter()
                    .map(|a| format!("{}={}", a.attr, escape(&fold(&a.value))))
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect::<Vec<_>>()
            .join(","),
        None => fold(dn),
    }
}

/// Escape the characters that would otherwise end or split a value, so a normalised DN parses
/// back to the same values.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, ',' | '+' | ';' | '\\' | '"' | '<' | '>' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether a normalised DN is `base` or below it.
pub fn within(dn_norm: &str, base_norm: &str) -> bool {
    dn_norm == base_norm || dn_norm.ends_with(&format!(",{base_norm}"))
}

/// The folded value of a DN's first RDN (`cn=Ødegård Lab\2C Oslo,ou=groups` -> `ødegård lab, oslo`).
pub fn first_value(dn: &str) -> String {
    parse(dn)
        .and_then(|rdns| rdns.into_iter().next())
        .and_then(|rdn| rdn.into_iter().next())
        .map_or_else(|| fold(dn), |a| fold(&a.value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escapes_case_and_spacing_compare_equal() {
        let a = normalise("CN=Ødegård Lab\\2C Oslo,OU=Groups, DC=example,dc=com");
        let b = normalise("cn=ØDEGÅRD LAB\\, OSLO,ou=groups,dc=example,dc=com");
        assert_eq!(a, b);
        assert_eq!(a, "cn=ødegård lab\\, oslo,ou=groups,dc=example,dc=com");
        assert_ne!(
            normalise("cn=a\\2Cb,ou=g"),
            normalise("cn=a,cn=b,ou=g"),
            "an escaped comma is not a separator"
        );
        assert_eq!(
            normalise("cn=x+uid=y,ou=g"),
            normalise("UID=Y+CN=X,ou=g"),
            "multi-valued RDNs in any order"
        );
        assert_eq!(
            normalise("cn=#04024869,ou=g"),
            normalise("CN=#04024869,OU=G")
        );
        assert_eq!(
            normalise("cn=\\C3\\98degard,ou=g"),
            normalise("cn=ødegard,ou=g")
        );
        assert_eq!(
            first_value("cn=Ødegård Lab\\2C Oslo,ou=groups"),
            "ødegård lab, oslo"
        );
        assert_eq!(fold("STRASSE"), fold("straße"));
    }
}
