//! Identities: one person, correlated across sources by the configured key, with a lifecycle derived
//! from every source's latest view of them.
//!
//! Dates in HR feeds are calendar dates in the person's site time zone: a hire date grants from
//! 00:00 local on that day; a termination or contract-end date is the last day worked, so access ends
//! at 00:00 local on the day after. A date still in the future becomes `next_change_at`, a timer kept
//! in the store, so it fires at its instant even across restarts.

use crate::model::{Lifecycle, PersonRecord, RecordStatus};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;

/// One source's latest view of a person, as stored.
#[derive(Debug, Clone)]
pub struct SourceView {
    pub record: PersonRecord,
    /// When this version of the record was first stored: the moment latchkey observed what it says.
    pub observed_at: DateTime<Utc>,
    /// Set when the person vanished from a full feed and that disappearance was accepted.
    pub disappeared_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub lifecycle: Lifecycle,
    /// When the current lifecycle took effect (effective date, or when latchkey learnt of it).
    pub effective_at: DateTime<Utc>,
    /// The time the change was first observed, if later than `effective_at` (for latency: the
    /// trigger is the later of the two).
    pub observed_at: DateTime<Utc>,
    /// The next effective-dated change, if any.
    pub next_change_at: Option<DateTime<Utc>>,
    pub site: Option<String>,
    pub attrs: BTreeMap<String, String>,
}

impl Derived {
    /// The trigger time of the change to the current lifecycle (DESIGN.md invariant 7).
    pub fn trigger_at(&self) -> DateTime<Utc> {
        self.effective_at.max(self.observed_at)
    }
}

/// 00:00 local time on `date` in `tz`, as an instant. On a DST gap the first valid instant is used.
pub fn start_of_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // Midnight does not exist that day (a DST jump at 00:00): take 01:00.
            let one = date.and_hms_opt(1, 0, 0).unwrap_or_default();
            tz.from_local_datetime(&one)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&midnight))
        }
    }
}

/// The end of a last working day: 00:00 local on the next day.
pub fn end_of_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    start_of_day(date.succ_opt().unwrap_or(date), tz)
}

/// An identity attribute carrying an exact instant (RFC 3339) at which access ends, such as a
/// directory's account expiry: a termination effective then, finer than a last working day.
pub const EXPIRES_AT: &str = "expires_at";

/// A date value as sources write it: a calendar date, an exact instant, or "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Date(NaiveDate),
    At(DateTime<Utc>),
    Never,
}

/// 100 ns intervals between 1601-01-01 (Windows FILETIME epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET: i64 = 116_444_736_000_000_000;

/// Parse a date in any of the formats directories and HR exports use: `%Y-%m-%d`, ISO 8601 /
/// RFC 3339 with time and zone, LDAP generalized time (`20261130120000Z`, fractions, offsets),
/// Windows FILETIME (AD `accountExpires`; 0 and 0x7FFFFFFFFFFFFFFF mean never) and Unix epoch
/// seconds. A bare 8-digit number is refused: it could be `%Y%m%d` or epoch seconds.
pub fn parse_when(raw: &str) -> Result<When, String> {
    let s = raw.trim();
    let bad = || format!("unparseable date '{s}'");
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(When::Date(d));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(When::At(t.with_timezone(&Utc)));
    }
    if let Some(t) = parse_generalized_time(s) {
        return Ok(When::At(t));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = match s.parse() {
            Ok(n) => n,
            Err(_) => return Err(bad()),
        };
        return match s.len() {
            _ if n == 0 || n == i64::MAX => Ok(When::Never),
            9..=11 => DateTime::from_timestamp(n, 0).map(When::At).ok_or_else(bad),
            15.. => {
                let since_epoch = n - FILETIME_UNIX_OFFSET;
                DateTime::from_timestamp(
                    since_epoch.div_euclid(10_000_000),
                    (since_epoch.rem_euclid(10_000_000) * 100) as u32,
                )
                .map(When::At)
                .ok_or_else(bad)
            }
            _ => Err(format!(
                "unparseable date '{s}': a bare number must be epoch seconds (9-11 digits) or a FILETIME"
            )),
        };
    }
    Err(bad())
}

/// LDAP generalized time: `YYYYMMDDHH[MM[SS]][(.|,)fraction](Z|+hhmm|-hhmm)`.
fn parse_generalized_time(s: &str) -> Option<DateTime<Utc>> {
    let (body, offset_secs) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b, 0)
    } else {
        let i = s.rfind(['+', '-'])?;
        let (b, off) = s.split_at(i);
        if off.len() != 5 || !off[1..].bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let h: i64 = off[1..3].parse().ok()?;
        let m: i64 = off[3..5].parse().ok()?;
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (b, sign * (h * 3600 + m * 60))
    };
    let (digits, fraction) = match body.find(['.', ',']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if !digits.bytes().all(|c| c.is_ascii_digit()) || ![10, 12, 14].contains(&digits.len()) {
        return None;
    }
    let padded = format!("{digits:0<14}");
    let naive = chrono::NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S").ok()?;
    let mut t = Utc.from_utc_datetime(&naive) - chrono::Duration::seconds(offset_secs);
    if let Some(f) = fraction.filter(|f| !f.is_empty()) {
        if !f.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // A fraction of the last unit given (RFC 4517 3.3.13).
        let unit: f64 = match digits.len() {
            10 => 3600.0,
            12 => 60.0,
            _ => 1.0,
        };
        let frac: f64 = format!("0.{f}").parse().ok()?;
        t += chrono::Duration::microseconds((frac * unit * 1e6) as i64);
    }
    Some(t)
}

/// The last working day an instant ends access after, in `tz`: the local date of the instant's
/// previous second, so an expiry at local midnight ends the day before.
pub fn last_day_before(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    (t - chrono::Duration::seconds(1))
        .with_timezone(&tz)
        .date_naive()
}

struct ViewState {
    lifecycle: Lifecycle,
    effective_at: DateTime<Utc>,
    observed_at: DateTime<Utc>,
    next_change_at: Option<DateTime<Utc>>,
}

fn view_state(v: &SourceView, now: DateTime<Utc>, tz: Tz) -> ViewState {
    let r = &v.record;
    let observed = v.observed_at;
    if let Some(gone) = v.disappeared_at {
        return ViewState {
            lifecycle: Lifecycle::Terminated,
            effective_at: gone,
            observed_at: gone,
            next_change_at: None,
        };
    }
    let hire_at = r.hire_date.map(|d| start_of_day(d, tz));
    // A termination dated before the latest hire belongs to an earlier employment (a rehire).
    let expires_at = r
        .attrs
        .get(EXPIRES_AT)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    let term_at = [r.termination_date.map(|d| end_of_day(d, tz)), expires_at]
        .into_iter()
        .flatten()
        .filter(|t| hire_at.is_none_or(|h| h < *t))
        .min();
    let explicit_term = r.status == Some(RecordStatus::Terminated);
    let mut next = Vec::new();
    let terminated_at = match (explicit_term, term_at) {
        (_, Some(t)) if t <= now => Some(t),
        (_, Some(t)) => {
            next.push(t);
            None
        }
        // Terminated with no date: effective when observed.
        (true, None) => Some(observed),
        (false, None) => None,
    };
    if let Some(t) = terminated_at {
        return ViewState {
            lifecycle: Lifecycle::Terminated,
            effective_at: t,
            observed_at: observed,
            next_change_at: None,
        };
    }
    if let Some(h) = hire_at
        && h > now
    {
        next.push(h);
        return ViewState {
            lifecycle: Lifecycle::PreHire,
            effective_at: observed,
            observed_at: observed,
            next_change_at: next.into_iter().min(),
        };
    }
    let (lifecycle, effective_at) = match r.status {
        Some(RecordStatus::Suspended) => (Lifecycle::Suspended, observed),
        _ => (
            Lifecycle::Active,
            hire_at.map_or(observed, |h| h.max(observed)),
        ),
    };
    // A contract end is a grant validity, handled by policy; it still needs a timer here so the
    // identity is looked at again when it passes.
    if let Some(end) = r.contract_end.map(|d| end_of_day(d, tz))
        && end > now
    {
        next.push(end);
    }
    ViewState {
        lifecycle,
        effective_at,
        observed_at: observed,
        next_change_at: next.into_iter().min(),
    }
}

/// Combine every source's view. Leaver wins (invariant 4): any source that says terminated makes the
/// person terminated; then suspended; then pre-hire; else active.
///
/// `authority` names, per attribute, the sources that may set it (most authoritative first; see
/// `config::AuthorityConfig`); for attributes it does not name, later sources fill gaps and the
/// first source (ordered by name) wins.
pub fn derive(
    views: &[SourceView],
    now: DateTime<Utc>,
    tz_of: impl Fn(Option<&str>) -> Tz,
    authority: &BTreeMap<String, Vec<String>>,
) -> Option<Derived> {
    let first = views.first()?;
    // The first listed source that has a value; `None` when no source may set it.
    let authoritative = |attr: &str, value: &dyn Fn(&PersonRecord) -> Option<String>| {
        authority.get(attr).map(|sources| {
            sources.iter().find_map(|s| {
                views
                    .iter()
                    .filter(|v| v.record.source == *s)
                    .find_map(|v| value(&v.record))
            })
        })
    };
    let site = authoritative("site", &|r| r.site.clone())
        .unwrap_or_else(|| views.iter().find_map(|v| v.record.site.clone()));
    let tz = tz_of(site.as_deref());
    let mut attrs = BTreeMap::new();
    for v in views.iter().rev() {
        attrs.extend(v.record.attrs.clone());
    }
    for attr in authority.keys() {
        match authoritative(attr, &|r| r.attrs.get(attr).cloned()).flatten() {
            Some(value) => attrs.insert(attr.clone(), value),
            None => attrs.remove(attr),
        };
    }
    let states: Vec<ViewState> = views.iter().map(|v| view_state(v, now, tz)).collect();
    let rank = |l: Lifecycle| match l {
        Lifecycle::Terminated => 0,
        Lifecycle::Suspended => 1,
        Lifecycle::PreHire => 2,
        Lifecycle::Active => 3,
    };
    let winner = states
        .iter()
        .min_by_key(|s| (rank(s.lifecycle), s.effective_at))
        .map(|s| (s.lifecycle, s.effective_at, s.observed_at))
        .unwrap_or((Lifecycle::Active, first.observed_at, first.observed_at));
    let next_change_at = if winner.0 == Lifecycle::Terminated {
        None
    } else {
        states.iter().filter_map(|s| s.next_change_at).min()
    };
    Some(Derived {
        lifecycle: winner.0,
        effective_at: winner.1,
        observed_at: winner.2,
        next_change_at,
        site,
        attrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: Option<RecordStatus>, hire: Option<&str>, term: Option<&str>) -> PersonRecord {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        PersonRecord {
            source: "hr".into(),
            key: "E1".into(),
            location: "f.csv:2".into(),
            status,
            hire_date: hire.map(d),
            termination_date: term.map(d),
            contract_end: None,
            site: Some("berlin".into()),
            attrs: BTreeMap::new(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn view(r: PersonRecord, observed: &str) -> SourceView {
        SourceView {
            record: r,
            observed_at: at(observed),
            disappeared_at: None,
        }
    }

    const BERLIN: fn(Option<&str>) -> Tz = |_| chrono_tz::Europe::Berlin;

    #[test]
    fn attribute_authority_picks_the_listed_source_and_ignores_the_others() {
        let mut idp = rec(Some(RecordStatus::Active), None, None);
        idp.source = "a-idp".into();
        idp.site = Some("paris".into());
        idp.attrs.insert("department".into(), "sales".into());
        idp.attrs.insert("title".into(), "Boss".into());
        idp.attrs.insert("cost_center".into(), "77".into());
        let mut hr = rec(Some(RecordStatus::Active), None, None);
        hr.attrs.insert("department".into(), "ops".into());
        let views = [
            view(idp, "2026-11-25T09:00:00Z"),
            view(hr, "2026-11-25T09:00:00Z"),
        ];
        let now = at("2026-11-25T10:00:00Z");

        // Without authority the first source by name wins every attribute it has.
        let d = derive(&views, now, BERLIN, &BTreeMap::new()).unwrap();
        assert_eq!(d.attrs["department"], "sales");
        assert_eq!(d.site.as_deref(), Some("paris"));

        let authority: BTreeMap<String, Vec<String>> = [
            ("department", vec!["hr", "a-idp"]),
            ("title", vec!["hr"]),
            ("site", vec!["hr"]),
        ]
        .into_iter()
        .map(|(a, s)| (a.to_string(), s.into_iter().map(String::from).collect()))
        .collect();
        let d = derive(&views, now, BERLIN, &authority).unwrap();
        assert_eq!(
            d.attrs["department"], "ops",
            "HR is listed first for department"
        );
        assert!(
            !d.attrs.contains_key("title"),
            "only HR may set title, and HR has none"
        );
        assert_eq!(
            d.attrs["cost_center"], "77",
            "unlisted attributes keep the default rule"
        );
        assert_eq!(
            d.site.as_deref(),
            Some("berlin"),
            "site follows its authority too"
        );
    }

    #[test]
    fn future_termination_is_a_timer_at_local_midnight_after_the_last_day() {
        let v = view(
            rec(
                Some(RecordStatus::Active),
                Some("2020-01-01"),
                Some("2026-11-30"),
            ),
            "2026-11-25T10:00:00Z",
        );
        let d = derive(
            std::slice::from_ref(&v),
            at("2026-11-25T10:00:00Z"),
            BERLIN,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(d.lifecycle, Lifecycle::Active);
        // 2026-12-01 00:00 in Berlin (CET, +01:00)
        assert_eq!(d.next_change_at, Some(at("2026-11-30T23:00:00Z")));
        let later = derive(&[v], at("2026-11-30T23:00:00Z"), BERLIN, &BTreeMap::new()).unwrap();
        assert_eq!(later.lifecycle, Lifecycle::Terminated);
        assert_eq!(later.trigger_at(), at("2026-11-30T23:00:00Z"));
    }

    #[test]
    fn past_termination_triggers_when_observed() {
        let v = view(
            rec(
                Some(RecordStatus::Terminated),
                Some("2020-01-01"),
                Some("2026-11-01"),
            ),
            "2026-11-25T10:00:00Z",
        );
        let d = derive(&[v], at("2026-11-25T10:00:00Z"), BERLIN, &BTreeMap::new()).unwrap();
        assert_eq!(d.lifecycle, Lifecycle::Terminated);
        assert_eq!(d.trigger_at(), at("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn rehire_after_termination_is_active() {
        let v = view(
            rec(
                Some(RecordStatus::Active),
                Some("2026-11-20"),
                Some("2025-03-31"),
            ),
            "2026-11-25T10:00:00Z",
        );
        assert_eq!(
            derive(&[v], at("2026-11-25T10:00:00Z"), BERLIN, &BTreeMap::new())
                .unwrap()
                .lifecycle,
            Lifecycle::Active
        );
    }

    #[test]
    fn future_hire_is_pre_hire_until_local_midnight() {
        let v = view(
            rec(Some(RecordStatus::Active), Some("2026-12-01"), None),
            "2026-11-25T10:00:00Z",
        );
        let d = derive(&[v], at("2026-11-25T10:00:00Z"), BERLIN, &BTreeMap::new()).unwrap();
        assert_eq!(d.lifecycle, Lifecycle::PreHire);
        assert_eq!(d.next_change_at, Some(at("2026-11-30T23:00:00Z")));
    }

    #[test]
    fn dates_in_every_directory_format() {
        let at_ = |s: &str| When::At(at(s));
        let d = |s: &str| When::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        for (raw, want) in [
            ("2026-11-30", d("2026-11-30")),
            ("2026-11-30T12:00:00+01:00", at_("2026-11-30T11:00:00Z")),
            ("2026-11-30T12:00:00Z", at_("2026-11-30T12:00:00Z")),
            ("20261130120000Z", at_("2026-11-30T12:00:00Z")),
            ("20261130120000.0Z", at_("2026-11-30T12:00:00Z")),
            ("20261130120000.5Z", at_("2026-11-30T12:00:00.5Z")),
            ("20261130120000+0100", at_("2026-11-30T11:00:00Z")),
            ("2026113012Z", at_("2026-11-30T12:00:00Z")),
            // 2026-12-01 00:00 UTC as FILETIME
            ("134405568000000000", at_("2026-12-01T00:00:00Z")),
            ("0", When::Never),
            ("9223372036854775807", When::Never),
            ("1796083200", at_("2026-12-01T00:00:00Z")),
        ] {
            assert_eq!(parse_when(raw), Ok(want), "{raw}");
        }
        for bad in [
            "20261130",
            "30.11.2026",
            "2026-13-01",
            "",
            "soon",
            "20261130120000",
        ] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_instant_is_an_effective_dated_termination() {
        let mut r = rec(Some(RecordStatus::Active), Some("2020-01-01"), None);
        r.attrs
            .insert(EXPIRES_AT.into(), "2026-11-26T16:30:00Z".into());
        let v = view(r, "2026-11-25T10:00:00Z");
        let d = derive(
            std::slice::from_ref(&v),
            at("2026-11-25T10:00:00Z"),
            BERLIN,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(d.lifecycle, Lifecycle::Active);
        assert_eq!(d.next_change_at, Some(at("2026-11-26T16:30:00Z")));
        let later = derive(&[v], at("2026-11-26T16:30:00Z"), BERLIN, &BTreeMap::new()).unwrap();
        assert_eq!(later.lifecycle, Lifecycle::Terminated);
        assert_eq!(later.trigger_at(), at("2026-11-26T16:30:00Z"));
    }

    #[test]
    fn leaver_wins_across_sources() {
        let active = view(
            rec(Some(RecordStatus::Active), Some("2020-01-01"), None),
            "2026-11-25T10:00:00Z",
        );
        let mut gone = view(
            rec(Some(RecordStatus::Terminated), None, None),
            "2026-11-25T11:00:00Z",
        );
        gone.record.source = "ldap".into();
        let d = derive(
            &[active, gone],
            at("2026-11-25T12:00:00Z"),
            BERLIN,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(d.lifecycle, Lifecycle::Terminated);
    }
}
