//! How a directory entry becomes a person: the mapping file, leaver signals, dates, groups.

use super::groups::GroupIndex;
use super::{MappingError, watermark_attribute};
use crate::config::{LdapDialect, parse_toml};
use crate::identity::{self, When, parse_when};
use crate::model::{PersonRecord, Quarantined, RecordStatus};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use ldap3::SearchEntry;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// AD's userAccountControl ACCOUNTDISABLE bit.
const UAC_ACCOUNTDISABLE: u64 = 0x2;

// ---------------------------------------------------------------------------------------------
// Mapping

/// How a directory entry becomes a person (see `mappings/ldap.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapMapping {
    pub version: u32,
    /// The correlation key attribute (employeeNumber, employeeID).
    pub key: String,
    /// identity attribute = LDAP attribute (first value is used).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// identity attribute = fixed value, for what the directory does not hold.
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// Identity attributes whose values are lower-cased (templates compare exact strings).
    #[serde(default)]
    pub lowercase: Vec<String>,
    /// identity date attribute (`hire_date`, `termination_date`, `contract_end`) = LDAP
    /// attribute, in any format `identity::parse_when` reads (ISO 8601, generalized time,
    /// FILETIME, epoch seconds). An unparseable date quarantines the entry.
    #[serde(default)]
    pub dates: BTreeMap<String, String>,
    /// Account expiry attribute (an instant; past = leaver, future = dated termination). Default:
    /// `accountExpires` in the Active Directory dialect, none otherwise; `""` turns it off.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub groups: Option<GroupMapping>,
    #[serde(default)]
    pub disabled: DisabledRules,
    #[serde(default)]
    pub duplicates: DuplicateRule,
    #[serde(default)]
    pub required: Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    /// Multi-valued attribute on the person's entry that lists group DNs (memberOf).
    #[serde(default)]
    pub attribute: Option<String>,
    /// Where group entries are read from (`member` / `uniqueMember`), so membership changes arrive
    /// as changes of the group entry, with or without a memberOf overlay.
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default = "default_group_filter")]
    pub filter: String,
    #[serde(default = "default_member_attributes")]
    pub member_attributes: Vec<String>,
    /// Membership of a group that is itself a member of another group counts for both.
    #[serde(default)]
    pub nested: bool,
    /// Group -> role, first match wins; a matching group overrides the role attribute.
    #[serde(default)]
    pub roles: Vec<GroupRole>,
}

fn default_group_filter() -> String {
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))".into()
}

fn default_member_attributes() -> Vec<String> {
    vec!["member".into(), "uniqueMember".into()]
}

/// Which entry is the person when several carry the same correlation key; the others are
/// quarantined. The choice depends only on the entries, never on which one changed last.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuplicateRule {
    /// Entries matching this filter (a subset of RFC 4515: `&`, `|`, `!`, `=`, `*` wildcards,
    /// presence) are preferred, e.g. `(!(sAMAccountName=adm-*))` to exclude admin accounts.
    #[serde(default)]
    pub primary_filter: Option<String>,
    /// Then an enabled entry over a disabled one. Off by default: with nothing else to go on, a
    /// disabled duplicate wins (leaver wins).
    #[serde(default)]
    pub prefer_enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRole {
    /// A group DN, or a group's common name.
    pub group: String,
    pub role: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisabledRules {
    /// Active Directory: userAccountControl bit 0x2 (ACCOUNTDISABLE).
    #[serde(default)]
    pub user_account_control: bool,
    /// OpenLDAP ppolicy: pwdAccountLockedTime present.
    #[serde(default)]
    pub pwd_account_locked_time: bool,
    /// 389-ds / Red Hat DS: nsAccountLock = TRUE.
    #[serde(default)]
    pub ns_account_lock: bool,
    /// Any other attribute whose value (case-insensitive) means disabled.
    #[serde(default)]
    pub attribute: Option<AttributeValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Required {
    #[serde(default)]
    pub attributes: Vec<String>,
}

pub fn load_mapping(name: &str, path: &Path) -> Result<LdapMapping, MappingError> {
    let err = |message: String| MappingError {
        name: name.to_string(),
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let m: LdapMapping =
        parse_toml(&text, &path.display().to_string()).map_err(|e| err(e.to_string()))?;
    if m.version != 1 {
        return Err(err(format!("version {} is not supported", m.version)));
    }
    if let Some(f) = &m.duplicates.primary_filter {
        super::filter::parse(f).map_err(|e| err(format!("duplicates.primary_filter: {e}")))?;
    }
    for r in &m.required.attributes {
        if !m.attributes.contains_key(r) && !m.constants.contains_key(r) {
            return Err(err(format!("required attribute `{r}` is not mapped")));
        }
    }
    Ok(m)
}

/// An entry's attributes with lower-cased names: LDAP attribute names are case-insensitive and
/// servers answer in their schema's spelling.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub dn: String,
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    pub fn from_search(e: SearchEntry) -> Self {
        let mut attrs: HashMap<String, Vec<String>> = e
            .attrs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // AD's objectGUID is binary: kept as its UUID spelling, the entry's identity.
        for (k, v) in e.bin_attrs {
            if k.eq_ignore_ascii_case("objectGUID") {
                attrs.insert(
                    "objectguid".into(),
                    v.iter().map(|b| super::uuid_string(b)).collect(),
                );
            }
        }
        Self { dn: e.dn, attrs }
    }

    /// The entry's identity across renames and key changes: entryUUID, else AD's objectGUID.
    pub fn entry_id(&self) -> Option<&str> {
        self.first("entryUUID").or_else(|| self.first("objectGUID"))
    }

    pub fn first(&self, attr: &str) -> Option<&str> {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// When the directory last changed the entry (AD `whenChanged`, else `modifyTimestamp`): the
    /// trigger of a change read from it.
    pub fn changed_at(&self) -> Option<DateTime<Utc>> {
        ["whenChanged", "modifyTimestamp"]
            .iter()
            .filter_map(|a| self.first(a))
            .find_map(|v| match parse_when(v) {
                Ok(When::At(t)) => Some(t),
                _ => None,
            })
    }

    pub fn all(&self, attr: &str) -> &[String] {
        self.attrs
            .get(&attr.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }
}

impl LdapMapping {
    /// Every attribute the source must ask the server for.
    pub fn requested_attributes(&self, dialect: LdapDialect) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        out.insert(self.key.clone());
        out.extend(self.attributes.values().cloned());
        if let Some(a) = self.groups.as_ref().and_then(|g| g.attribute.clone()) {
            out.insert(a);
        }
        if self.disabled.user_account_control {
            out.insert("userAccountControl".into());
        }
        if self.disabled.pwd_account_locked_time {
            out.insert("pwdAccountLockedTime".into());
        }
        if self.disabled.ns_account_lock {
            out.insert("nsAccountLock".into());
        }
        if let Some(a) = &self.disabled.attribute {
            out.insert(a.name.clone());
        }
        if let Some(x) = self.expiry_attribute(dialect) {
            out.insert(x.into());
        }
        out.extend(self.dates.values().cloned());
        if let Some(f) = self
            .duplicates
            .primary_filter
            .as_deref()
            .and_then(|t| super::filter::parse(t).ok())
        {
            let mut attrs = Vec::new();
            f.attributes(&mut attrs);
            out.extend(attrs);
        }
        // Change times, for the trigger of each change (see `Entry::changed_at`).
        out.insert("modifyTimestamp".into());
        if dialect == LdapDialect::ActiveDirectory {
            out.insert("whenChanged".into());
        }
        if let Some(w) = watermark_attribute(dialect) {
            out.insert(w.into());
        }
        out.into_iter().collect()
    }

    /// The account expiry attribute: as configured, else `accountExpires` in the AD dialect.
    pub fn expiry_attribute(&self, dialect: LdapDialect) -> Option<&str> {
        match (&self.expires, dialect) {
            (Some(a), _) if a.is_empty() => None,
            (Some(a), _) => Some(a),
            (None, LdapDialect::ActiveDirectory) => Some("accountExpires"),
            (None, _) => None,
        }
    }

    /// One entry to one person, or the reason it cannot be used (with DN and attribute).
    ///
    /// Leaver signals come first (DESIGN.md invariant 11): a disabled or expired entry is a leaver
    /// whatever else is wrong with it; validation (required attributes, dates) only gates what an
    /// active person is issued.
    pub fn map_entry(
        &self,
        source: &str,
        e: &Entry,
        ctx: &MapContext<'_>,
    ) -> std::result::Result<PersonRecord, Box<Quarantined>> {
        let q = |key: Option<&str>, field: &str, reason: String| {
            Box::new(Quarantined {
                source: source.to_string(),
                location: e.dn.clone(),
                record_key: key.map(Into::into),
                field: field.to_string(),
                reason,
                raw: raw_of(e),
            })
        };
        let Some(key) = e.first(&self.key) else {
            return Err(q(None, &self.key, "missing correlation key".to_string()));
        };
        // The first problem found, reported only if no leaver signal overrides it.
        let mut problem: Option<(String, String)> = None;
        let mut note = |field: &str, reason: String| {
            problem.get_or_insert((field.to_string(), reason));
        };
        let disabled = match self.disabled_reason(e) {
            Ok(d) => d,
            Err((field, reason)) => {
                note(&field, reason);
                false
            }
        };
        let mut attrs = self.mapped_attributes(e, ctx.groups);
        let site = attrs.get("site").cloned();
        let tz = (ctx.tz_of)(site.as_deref());
        let (expires, dates) = self.read_dates(e, ctx.dialect, tz, &mut note);
        let expired = expires.is_some_and(|t| t <= ctx.now);
        if let Some(t) = expires {
            attrs.insert(
                identity::EXPIRES_AT.into(),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        let leaver = disabled || expired;
        if !leaver {
            if let Some((field, reason)) = problem {
                return Err(q(Some(key), &field, reason));
            }
            for r in &self.required.attributes {
                if attrs.get(r).is_none_or(|v| v.is_empty()) {
                    let field = self.attributes.get(r).map_or(r.as_str(), String::as_str);
                    return Err(q(
                        Some(key),
                        field,
                        format!("required attribute `{r}` is empty"),
                    ));
                }
            }
        }
        Ok(PersonRecord {
            source: source.to_string(),
            key: key.into(),
            location: e.dn.clone(),
            status: Some(if leaver {
                RecordStatus::Terminated
            } else {
                RecordStatus::Active
            }),
            hire_date: dates.get("hire_date").copied(),
            termination_date: dates.get("termination_date").copied(),
            contract_end: dates.get("contract_end").copied(),
            site,
            attrs,
        })
    }

    /// Constants, mapped attributes and group roles of an entry, lower-cased as configured.
    fn mapped_attributes(
        &self,
        e: &Entry,
        groups: Option<&GroupIndex>,
    ) -> BTreeMap<String, String> {
        let mut attrs = self.constants.clone();
        for (ident, ldap_attr) in &self.attributes {
            if let Some(v) = e.first(ldap_attr) {
                attrs.insert(ident.clone(), v.to_string());
            }
        }
        if let Some(g) = &self.groups {
            g.apply(e, groups, &mut attrs);
        }
        for l in &self.lowercase {
            if let Some(v) = attrs.get_mut(l) {
                *v = v.to_lowercase();
            }
        }
        attrs
    }

    /// The account expiry (an instant) and the mapped dates of an entry; problems go to `note`.
    fn read_dates(
        &self,
        e: &Entry,
        dialect: LdapDialect,
        tz: Tz,
        note: &mut dyn FnMut(&str, String),
    ) -> (Option<DateTime<Utc>>, BTreeMap<&str, NaiveDate>) {
        let mut expires: Option<DateTime<Utc>> = None;
        if let Some(attr) = self.expiry_attribute(dialect)
            && let Some(raw) = e.first(attr)
        {
            match parse_when(raw) {
                Ok(When::Never) => {}
                Ok(When::At(t)) => expires = Some(t),
                Ok(When::Date(d)) => expires = Some(identity::end_of_day(d, tz)),
                Err(reason) => note(attr, format!("account expiry: {reason}")),
            }
        }
        let mut dates: BTreeMap<&str, NaiveDate> = BTreeMap::new();
        for (ident, ldap_attr) in &self.dates {
            let Some(raw) = e.first(ldap_attr) else {
                continue;
            };
            match parse_when(raw) {
                Ok(When::Never) => {}
                Ok(When::Date(d)) => {
                    dates.insert(ident, d);
                }
                Ok(When::At(t)) => {
                    dates.insert(ident, identity::last_day_before(t, tz));
                    if ident == "termination_date" {
                        expires = expires.min(Some(t)).or(Some(t));
                    }
                }
                Err(reason) => note(ldap_attr, format!("{ident}: {reason}")),
            }
        }
        (expires, dates)
    }

    /// Whether the entry's account is disabled by any configured rule; a malformed flag is an
    /// error only when no other rule already says disabled.
    pub fn disabled_reason(&self, e: &Entry) -> std::result::Result<bool, (String, String)> {
        let d = &self.disabled;
        if d.pwd_account_locked_time && e.first("pwdAccountLockedTime").is_some() {
            return Ok(true);
        }
        if d.ns_account_lock
            && e.first("nsAccountLock")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(true);
        }
        if let Some(a) = &d.attribute
            && e.all(&a.name)
                .iter()
                .any(|v| v.trim().eq_ignore_ascii_case(&a.value))
        {
            return Ok(true);
        }
        if d.user_account_control
            && let Some(v) = e.first("userAccountControl")
        {
            // AD writes it as a signed 32-bit decimal; the flag bits are the same either way.
            let n = v.parse::<i64>().map_err(|_| {
                (
                    "userAccountControl".to_string(),
                    format!("`{v}` is not an integer"),
                )
            })?;
            return Ok((n as u64) & UAC_ACCOUNTDISABLE != 0);
        }
        Ok(false)
    }

    /// Whether an entry carries a leaver signal (disabled, expired) even though it cannot be
    /// mapped: what to do with the person it was before.
    pub fn is_leaver_entry(&self, e: &Entry, ctx: &MapContext<'_>) -> bool {
        if self.disabled_reason(e).unwrap_or(false) {
            return true;
        }
        self.expiry_attribute(ctx.dialect)
            .and_then(|a| e.first(a))
            .and_then(|raw| parse_when(raw).ok())
            .is_some_and(|w| match w {
                When::At(t) => t <= ctx.now,
                When::Date(d) => identity::end_of_day(d, (ctx.tz_of)(None)) <= ctx.now,
                When::Never => false,
            })
    }
}

/// What mapping an entry needs besides the entry: the time (for expiry), the time zone of a
/// site (for dates), the dialect, and the group entries known to the source.
pub struct MapContext<'a> {
    pub now: DateTime<Utc>,
    pub dialect: LdapDialect,
    pub tz_of: &'a dyn Fn(Option<&str>) -> Tz,
    pub groups: Option<&'a GroupIndex>,
}

fn raw_of(e: &Entry) -> String {
    let mut keys: Vec<&String> = e.attrs.keys().collect();
    keys.sort();
    keys.iter()
        .map(|k| format!("{k}: {}", e.attrs[*k].join("|")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mapping() -> LdapMapping {
        load_mapping(
            "t",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/ldap.toml"),
        )
        .unwrap()
    }

    fn entry(pairs: &[(&str, &str)]) -> Entry {
        let mut e = Entry {
            dn: "uid=a,ou=people,dc=example,dc=com".into(),
            ..Default::default()
        };
        for (k, v) in pairs {
            e.attrs
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        e
    }

    #[test]
    fn maps_attributes_groups_and_disabled_flags() {
        let m = mapping();
        let base = [
            ("employeeNumber", "E1"),
            ("cn", "Alice"),
            ("mail", "e1@example.com"),
            ("departmentNumber", "Engineering"),
            ("l", "Berlin"),
            ("title", "analyst"),
        ];
        let r = m.map_entry("ldap", &entry(&base), &ctx()).unwrap();
        assert_eq!(r.key, "E1");
        assert_eq!(r.attrs["department"], "engineering");
        assert_eq!(r.site.as_deref(), Some("berlin"));
        assert_eq!(r.status, Some(RecordStatus::Active));
        let mut with_group = base.to_vec();
        with_group.push(("memberOf", "cn=Managers,ou=groups,dc=example,dc=com"));
        let r = m.map_entry("ldap", &entry(&with_group), &ctx()).unwrap();
        assert_eq!(r.attrs["role"], "manager");
        assert_eq!(r.attrs["groups"], "managers");
        for flag in [
            ("nsAccountLock", "TRUE"),
            ("pwdAccountLockedTime", "000001010000Z"),
            ("userAccountControl", "514"),
        ] {
            let mut d = base.to_vec();
            d.push(flag);
            let r = m.map_entry("ldap", &entry(&d), &ctx()).unwrap();
            assert_eq!(r.status, Some(RecordStatus::Terminated), "{flag:?}");
        }
    }

    #[test]
    fn bad_entries_are_quarantined_with_dn_and_attribute() {
        let m = mapping();
        let q = m
            .map_entry("ldap", &entry(&[("cn", "x")]), &ctx())
            .unwrap_err();
        assert_eq!(q.field, "employeeNumber");
        assert_eq!(q.location, "uid=a,ou=people,dc=example,dc=com");
        let q = m
            .map_entry(
                "ldap",
                &entry(&[
                    ("employeeNumber", "E1"),
                    ("cn", "A"),
                    ("mail", "a@x"),
                    ("userAccountControl", "lots"),
                ]),
                &ctx(),
            )
            .unwrap_err();
        assert_eq!(q.field, "userAccountControl");
        assert_eq!(q.record_key.as_deref(), Some("E1"));
    }

    fn ctx_at(dialect: LdapDialect) -> MapContext<'static> {
        MapContext {
            now: chrono::DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            dialect,
            tz_of: &|_| chrono_tz::Europe::Berlin,
            groups: None,
        }
    }

    fn ctx() -> MapContext<'static> {
        ctx_at(LdapDialect::Rfc4533)
    }

    #[test]
    fn leaver_signals_win_over_missing_or_bad_attributes() {
        let m = mapping();
        for flag in [
            ("userAccountControl", "514"),
            ("userAccountControl", "66050"),
            ("nsAccountLock", "true"),
            ("employeeType", "Terminated"),
        ] {
            // No mail, no name: still a leaver, not a quarantine.
            let r = m
                .map_entry("ldap", &entry(&[("employeeNumber", "E1"), flag]), &ctx())
                .unwrap();
            assert_eq!(r.status, Some(RecordStatus::Terminated), "{flag:?}");
        }
        // A bad flag does not hide another rule that says disabled.
        let r = m
            .map_entry(
                "ldap",
                &entry(&[
                    ("employeeNumber", "E1"),
                    ("userAccountControl", "lots"),
                    ("nsAccountLock", "TRUE"),
                ]),
                &ctx(),
            )
            .unwrap();
        assert_eq!(r.status, Some(RecordStatus::Terminated));
        // Enabled and missing mail: quarantined as before.
        let q = m
            .map_entry(
                "ldap",
                &entry(&[
                    ("employeeNumber", "E1"),
                    ("cn", "A"),
                    ("userAccountControl", "512"),
                ]),
                &ctx(),
            )
            .unwrap_err();
        assert_eq!(q.field, "mail");
    }

    #[test]
    fn account_expiry_past_is_a_leaver_future_is_dated() {
        let m = mapping();
        let ad = ctx_at(LdapDialect::ActiveDirectory);
        let base = [("employeeNumber", "E1"), ("cn", "A"), ("mail", "a@x")];
        let with = |v: &'static str| {
            let mut b = base.to_vec();
            b.push(("accountExpires", v));
            entry(&b)
        };
        // 2026-11-20 (past), no mail: leaver all the same.
        let r = m
            .map_entry(
                "ldap",
                &entry(&[
                    ("employeeNumber", "E1"),
                    ("accountExpires", "134396064000000000"),
                ]),
                &ad,
            )
            .unwrap();
        assert_eq!(r.status, Some(RecordStatus::Terminated));
        // 2026-12-01T00:00Z: active, with an exact end.
        let r = m
            .map_entry("ldap", &with("134405568000000000"), &ad)
            .unwrap();
        assert_eq!(r.status, Some(RecordStatus::Active));
        assert_eq!(r.attrs[identity::EXPIRES_AT], "2026-12-01T00:00:00Z");
        for never in ["0", "9223372036854775807"] {
            let r = m.map_entry("ldap", &with(never), &ad).unwrap();
            assert!(!r.attrs.contains_key(identity::EXPIRES_AT), "{never}");
        }
        // Only the AD dialect reads accountExpires unless configured.
        let r = m
            .map_entry("ldap", &with("134396064000000000"), &ctx())
            .unwrap();
        assert_eq!(r.status, Some(RecordStatus::Active));
        let q = m.map_entry("ldap", &with("next tuesday"), &ad).unwrap_err();
        assert_eq!(q.field, "accountExpires");
        assert!(q.reason.contains("next tuesday"), "{}", q.reason);
    }

    #[test]
    fn mapped_dates_in_any_format_or_quarantined() {
        let mut m = mapping();
        m.dates.insert("contract_end".into(), "carLicense".into());
        let base = [
            ("employeeNumber", "E1"),
            ("cn", "A"),
            ("mail", "a@x"),
            ("l", "berlin"),
        ];
        for (raw, want) in [
            ("2027-03-31", "2027-03-31"),
            ("20270331220000Z", "2027-03-31"), // 2027-04-01 00:00 in Berlin
            ("133564032000000000", "2024-04-01"), // FILETIME 2024-04-01T00:00Z, 02:00 Berlin
        ] {
            let mut b = base.to_vec();
            b.push(("carLicense", raw));
            let r = m.map_entry("ldap", &entry(&b), &ctx()).unwrap();
            assert_eq!(r.contract_end.unwrap().to_string(), want, "{raw}");
        }
        let mut b = base.to_vec();
        b.push(("carLicense", "31/03/2027"));
        let q = m.map_entry("ldap", &entry(&b), &ctx()).unwrap_err();
        assert_eq!(
            (q.field.as_str(), q.record_key.as_deref()),
            ("carLicense", Some("E1"))
        );
        assert!(q.reason.contains("contract_end") && q.reason.contains("31/03/2027"));
    }

    #[test]
    fn uuids_are_formatted_like_entry_uuid() {
        let b: Vec<u8> = (0..16).collect();
        assert_eq!(
            super::super::uuid_string(&b),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }
}
