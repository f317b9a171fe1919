//! The text formats and the schedules behind the staleness gauges.

use crate::config::Config;

/// Convert OpenMetrics text to the Prometheus 0.0.4 text format. OpenMetrics names a counter family
/// without `_total` and its samples with it; the older format wants the TYPE line to name the
/// sample. Exemplars, `# UNIT` and `# EOF` have no place there.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let fixed = if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = if kind == "unknown" { "untyped" } else { kind };
            if counters.contains(name) {
                format!("# TYPE {name}_total {kind}")
            } else {
                format!("# TYPE {name} {kind}")
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                format!("# HELP {name}_total {help}")
            } else {
                line.to_string()
            }
        } else if line.starts_with('#') {
            line.to_string()
        } else {
            // An exemplar follows ` # ` after the sample's value; a label value may hold anything,
            // so look for it only after the label set closes.
            let value_start = end_of_labels(line);
            match line[value_start..].find(" # ") {
                Some(i) => line[..value_start + i].to_string(),
                None => line.to_string(),
            }
        };
        out.push_str(&fixed);
        out.push('\n');
    }
    out
}

/// Byte offset just past a sample's label set (`name{a="b"}`), or past its name when it has none.
fn end_of_labels(line: &str) -> usize {
    let name_end = line.find([' ', '{']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return name_end;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, ch) in line.char_indices().skip_while(|(i, _)| *i <= name_end) {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return i + 1,
            _ => {}
        }
    }
    line.len()
}

/// Each scheduled or polled source's longest gap between runs, in seconds: an HR source's crontab
/// line (a daily feed: a day), an LDAP source's poll interval. A persistent LDAP search has none: it
/// is healthy while connected (`latchkey_source_connected`).
pub fn expected_intervals(config: &Config) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for (name, hr) in &config.sources.hr {
        if let Some(gap) = longest_gap(&hr.schedule) {
            out.push((name.clone(), gap));
        }
    }
    for (name, ldap) in &config.sources.ldap {
        let persistent = ldap.persist && ldap.dialect == crate::config::LdapDialect::Rfc4533;
        if !persistent {
            out.push((name.clone(), ldap.poll_seconds as f64));
        }
    }
    out
}

/// The longest gap between two runs of a crontab line over a fortnight from a fixed Monday (so
/// weekly and weekday-only schedules are measured whole, and no clock is read).
pub fn longest_gap(schedule: &str) -> Option<f64> {
    use chrono::TimeZone;
    let cron: croner::Cron = schedule.parse().ok()?;
    let start = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single()?;
    let end = start + chrono::Duration::days(14);
    let mut prev: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut longest = 0i64;
    for t in cron.iter_after(start) {
        if let Some(p) = prev {
            longest = longest.max((t - p).num_seconds());
        }
        if t > end {
            break;
        }
        prev = Some(t);
    }
    (longest > 0).then_some(longest as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_measured_from_each_schedule() {
        assert_eq!(longest_gap("0 6 * * *"), Some(86_400.0));
        assert_eq!(longest_gap("*/15 * * * *"), Some(900.0));
        // Weekdays at 06:00: Friday to Monday is the longest wait.
        assert_eq!(longest_gap("0 6 * * 1-5"), Some(3.0 * 86_400.0));
        assert_eq!(longest_gap("not cron"), None);
    }

    #[test]
    fn prometheus_text_drops_exemplars_and_names_counters_by_sample() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                  a_seconds_bucket{le=\"1.0\",x=\"} # {\"} 1 # {trace_id=\"ab\"} 0.5\n\
                  # HELP c C.\n# TYPE c counter\nc_total{x=\"y\"} 2\n# EOF\n";
        let p = to_prometheus_text(om);
        assert_eq!(
            p,
            "# HELP a_seconds A.\n# TYPE a_seconds histogram\n\
             a_seconds_bucket{le=\"1.0\",x=\"} # {\"} 1\n\
             # HELP c_total C.\n# TYPE c_total counter\nc_total{x=\"y\"} 2\n"
        );
    }
}
