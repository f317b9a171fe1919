//! The HR source: a CSV feed dropped into a directory, read through a column mapping.
//!
//! The feed is the authority on who works here, so a bad row must never take the whole file
//! down with it: row problems are quarantined with their file and line, and only problems that
//! make every row meaningless (not text, no header, a mapped column missing) fail the file.

use crate::identity::{self, When};
use crate::model::{PersonRecord, Quarantined, RecordStatus};
use chrono::NaiveDate;
use chrono::format::StrftimeItems;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Attributes that land in typed fields of [`PersonRecord`] instead of (or besides) `attrs`.
const STATUS: &str = "status";
const SITE: &str = "site";
const EMPLOYMENT_TYPE: &str = "employment_type";
const DATE_ATTRS: [&str; 3] = ["hire_date", "termination_date", "contract_end"];
/// The attribute name the correlation key is published under, and the quarantine field for it.
const KEY_ATTR: &str = "employee_id";
/// The quarantine field for problems with the shape of a row rather than one cell.
const ROW_FIELD: &str = "row";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, thiserror::Error)]
pub enum HrError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The mapping file is malformed or inconsistent; `line` and `key` point at the culprit.
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Mapping {
        origin: String,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    #[error("{file}:{line}: not valid UTF-8 text")]
    NotUtf8 { file: String, line: usize },
    #[error("{file}: empty feed, no header row")]
    Empty { file: String },
    #[error("{file}: header lacks {}", describe_missing(missing))]
    MissingColumns {
        file: String,
        missing: Vec<MissingColumn>,
    },
    #[error("{file}:1: header has column '{column}' more than once")]
    DuplicateColumn { file: String, column: String },
    #[error("{file}:{line}: {message}")]
    Csv {
        file: String,
        line: u64,
        message: String,
    },
    /// The file ends inside a row: it was cut (a partial upload, a full disk), so none of it is used.
    #[error("{file}:{line}: truncated: {reason}")]
    Truncated {
        file: String,
        line: usize,
        reason: String,
    },
}

/// A column the mapping needs that the feed's header does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingColumn {
    pub column: String,
    /// The identity attribute it feeds, or `employee_id` for the key column.
    pub attribute: String,
}

fn describe_missing(missing: &[MissingColumn]) -> String {
    let parts: Vec<String> = missing.iter().map(MissingColumn::to_string).collect();
    let noun = if missing.len() == 1 {
        "column"
    } else {
        "columns"
    };
    format!("{noun} {}", parts.join(", "))
}

/// A validated column mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct HrMapping {
    /// Where the mapping was read from, for messages.
    pub origin: String,
    /// The CSV column holding the correlation key.
    pub key: String,
    pub delimiter: u8,
    /// chrono `strftime` format the date columns are written in.
    pub date_format: String,
    /// Identity attribute -> CSV column.
    pub columns: BTreeMap<String, String>,
    /// Raw status value as written in the mapping -> status; matched trimmed and case-insensitively.
    pub status_values: BTreeMap<String, RecordStatus>,
    /// Attributes a row must have non-empty to be usable.
    pub required: Vec<String>,
}

impl HrMapping {
    fn status_of(&self, raw: &str) -> Option<RecordStatus> {
        let wanted = raw.trim().to_lowercase();
        self.status_values
            .iter()
            .find(|(k, _)| k.trim().to_lowercase() == wanted)
            .map(|(_, v)| *v)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    version: Spanned<i64>,
    key: Spanned<String>,
    #[serde(default)]
    delimiter: Option<Spanned<String>>,
    #[serde(default)]
    date_format: Option<Spanned<String>>,
    columns: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    status_values: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    required: Option<RawRequired>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequired {
    attributes: Vec<Spanned<String>>,
}

/// Reads and validates a mapping file.
pub fn load_mapping(path: &Path) -> Result<HrMapping, HrError> {
    let text = std::fs::read_to_string(path).map_err(|source| HrError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_mapping(&text, &path.display().to_string())
}

/// Parses and validates mapping text; `origin` names it in errors.
pub fn parse_mapping(text: &str, origin: &str) -> Result<HrMapping, HrError> {
    let raw: RawMapping = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    let err = |span: Range<usize>, key: &str, message: String| HrError::Mapping {
        origin: origin.to_string(),
        line: Some(line_of(text, span.start)),
        key: Some(key.to_string()),
        message,
    };

    if *raw.version.get_ref() != 1 {
        return Err(err(
            raw.version.span(),
            "version",
            format!("unsupported version {}, expected 1", raw.version.get_ref()),
        ));
    }
    let key = raw.key.get_ref().trim().to_string();
    if key.is_empty() {
        return Err(err(
            raw.key.span(),
            "key",
            "key must name the column holding the employee id".to_string(),
        ));
    }

    let delimiter = match &raw.delimiter {
        None => b',',
        Some(d) => match d.get_ref().as_bytes() {
            [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => *b,
            _ => {
                return Err(err(
                    d.span(),
                    "delimiter",
                    format!(
                        "delimiter '{}' must be a single ASCII character other than a quote or newline",
                        d.get_ref()
                    ),
                ));
            }
        },
    };

    let date_format = match &raw.date_format {
        None => "%Y-%m-%d".to_string(),
        Some(f) => {
            if !date_format_round_trips(f.get_ref()) {
                return Err(err(
                    f.span(),
                    "date_format",
                    format!(
                        "date_format '{}' cannot write and read back a calendar date",
                        f.get_ref()
                    ),
                ));
            }
            f.get_ref().clone()
        }
    };

    let mut columns = BTreeMap::new();
    for (attr, column) in &raw.columns {
        let path = format!("columns.{attr}");
        let column_name = column.get_ref().trim();
        if column_name.is_empty() {
            return Err(err(
                column.span(),
                &path,
                format!("attribute '{attr}' is mapped to an empty column name"),
            ));
        }
        // The key is always published as `employee_id`; a second source for it would be ambiguous.
        if attr == KEY_ATTR && column_name != key {
            return Err(err(
                column.span(),
                &path,
                format!(
                    "attribute '{KEY_ATTR}' is reserved for the key column '{key}', not '{column_name}'"
                ),
            ));
        }
        columns.insert(attr.clone(), column_name.to_string());
    }

    let mut status_values = BTreeMap::new();
    let mut seen_status: HashMap<String, String> = HashMap::new();
    for (raw_value, target) in &raw.status_values {
        let path = format!("status_values.\"{raw_value}\"");
        let status = match target.get_ref().as_str() {
            "active" => RecordStatus::Active,
            "suspended" => RecordStatus::Suspended,
            "terminated" => RecordStatus::Terminated,
            other => {
                return Err(err(
                    target.span(),
                    &path,
                    format!(
                        "unknown status '{other}' for '{raw_value}', expected active, suspended or terminated"
                    ),
                ));
            }
        };
        // Matching is case-insensitive, so two spellings of one value would be ambiguous.
        let normalized = raw_value.trim().to_lowercase();
        if let Some(previous) = seen_status.insert(normalized, raw_value.clone()) {
            return Err(err(
                target.span(),
                &path,
                format!("'{raw_value}' and '{previous}' are the same status value ignoring case"),
            ));
        }
        status_values.insert(raw_value.clone(), status);
    }
    if columns.contains_key(STATUS) && status_values.is_empty() {
        return Err(HrError::Mapping {
            origin: origin.to_string(),
            line: None,
            key: Some("status_values".to_string()),
            message: "attribute 'status' is mapped but [status_values] is empty".to_string(),
        });
    }

    let mut required = Vec::new();
    if let Some(req) = &raw.required {
        for attr in &req.attributes {
            let name = attr.get_ref();
            if name != KEY_ATTR && !columns.contains_key(name) {
                return Err(err(
                    attr.span(),
                    "required.attributes",
                    format!("required attribute '{name}' is not mapped in [columns]"),
                ));
            }
            if name != KEY_ATTR {
                required.push(name.clone());
            }
        }
    }

    Ok(HrMapping {
        origin: origin.to_string(),
        key,
        delimiter,
        date_format,
        columns,
        status_values,
        required,
    })
}

/// A format that cannot render and re-read a date would quarantine every dated row; fail early.
fn date_format_round_trips(format: &str) -> bool {
    if StrftimeItems::new(format).parse().is_err() {
        return false;
    }
    let Some(sample) = NaiveDate::from_ymd_opt(2026, 11, 25) else {
        return false;
    };
    // Written through `write!` because `to_string` panics when the format asks for a field a
    // date does not have (such as an hour).
    let mut rendered = String::new();
    if write!(
        rendered,
        "{}",
        sample.format_with_items(StrftimeItems::new(format))
    )
    .is_err()
    {
        return false;
    }
    NaiveDate::parse_from_str(&rendered, format).ok() == Some(sample)
}

fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> HrError {
    let (line, path) = match e.span() {
        Some(span) => (
            Some(line_of(text, span.start)),
            key_path_at(text, span.start),
        ),
        None => (None, None),
    };
    let message = e.message().trim();
    // serde speaks of "fields" in backticks; people editing the file think in TOML keys.
    let (message, key) = if let Some((name, tail)) = backticked(message, "unknown field `") {
        let key = path.unwrap_or_else(|| name.to_string());
        (format!("unknown key '{key}'{tail}"), Some(key))
    } else if let Some((name, tail)) = backticked(message, "missing field `") {
        (
            format!("missing key '{name}'{tail}"),
            Some(name.to_string()),
        )
    } else {
        let message = message.replace('`', "'");
        match path {
            Some(k) => (format!("{message} (at key '{k}')"), Some(k)),
            None => (message, None),
        }
    };
    HrError::Mapping {
        origin: origin.to_string(),
        line,
        key,
        message,
    }
}

/// Splits "PREFIX`name`tail" into the name and the tail with backticks turned into quotes.
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, String)> {
    let (name, tail) = message.strip_prefix(prefix)?.split_once('`')?;
    Some((name, tail.replace('`', "'")))
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Best-effort dotted key path for the line holding `offset`: the enclosing `[table]` plus the
/// key written on that line. Good enough for messages; it does not need to parse TOML fully.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let target = line_of(text, offset);
    let mut table: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let is_header = trimmed.starts_with('[') && !trimmed.contains('=');
        if is_header {
            table = Some(
                trimmed
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            );
        }
        if i + 1 == target {
            if is_header {
                return table;
            }
            let key = trimmed
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').trim_matches('\'').to_string())
                .filter(|k| !k.is_empty());
            return match (table, key) {
                (Some(t), Some(k)) => Some(format!("{t}.{k}")),
                (None, Some(k)) => Some(k),
                (t, None) => t,
            };
        }
    }
    table
}

/// The outcome of reading one feed file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFeed {
    pub records: Vec<PersonRecord>,
    pub quarantined: Vec<Quarantined>,
    /// SHA-256 of the file's bytes as received, hex, so a re-delivered file can be recognised.
    pub digest: String,
    /// Data rows read (blank lines excluded), usable or not.
    pub rows: usize,
}

/// One row's problem, before it is given its location.
struct RowProblem {
    field: String,
    reason: String,
}

fn problem(field: &str, reason: String) -> RowProblem {
    RowProblem {
        field: field.to_string(),
        reason,
    }
}

/// Header index of every column the mapping reads.
struct Layout {
    width: usize,
    key: usize,
    /// Attribute -> (column name, index).
    columns: BTreeMap<String, (String, usize)>,
}

/// Parses a feed file. `source` is the configured source name, `file_name` names the file in
/// locations and errors.
pub fn parse_feed(
    source: &str,
    file_name: &str,
    bytes: &[u8],
    mapping: &HrMapping,
) -> Result<ParsedFeed, HrError> {
    let digest = hex::encode(Sha256::digest(bytes));
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    if let Err(e) = std::str::from_utf8(body) {
        return Err(HrError::NotUtf8 {
            file: file_name.to_string(),
            line: body[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
        });
    }

    // Flexible, so that a short or long row is ours to quarantine instead of a reader error.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(mapping.delimiter)
        .from_reader(body);
    let csv_error = |e: csv::Error| HrError::Csv {
        file: file_name.to_string(),
        line: e.position().map(|p| p.line()).unwrap_or(0),
        message: e.to_string(),
    };

    let mut records = reader.records();
    let header = loop {
        match records.next() {
            None => {
                return Err(HrError::Empty {
                    file: file_name.to_string(),
                });
            }
            Some(row) => {
                let row = row.map_err(csv_error)?;
                if !is_blank(&row) {
                    break row;
                }
            }
        }
    };
    let layout = layout(file_name, &header, mapping)?;

    let mut feed = ParsedFeed {
        records: Vec::new(),
        quarantined: Vec::new(),
        digest,
        rows: 0,
    };
    // Key -> line it first appeared on, whether or not that row was usable: two rows for one
    // person is a data error even if one of them is also broken.
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut lines = LineCounter::new(body);
    let delimiter = char::from(mapping.delimiter).to_string();

    for row in records {
        let row = row.map_err(csv_error)?;
        // Spreadsheet exports pad with lines of bare delimiters; they carry nothing.
        if is_blank(&row) {
            continue;
        }
        feed.rows += 1;
        let start = row.position().map(|p| p.byte()).unwrap_or(0);
        let line = lines.line_at(usize::try_from(start).unwrap_or(usize::MAX));
        let location = format!("{file_name}:{line}");
        let key = row
            .get(layout.key)
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string);

        let outcome = match &key {
            _ if row.len() != layout.width => Err(problem(
                ROW_FIELD,
                format!(
                    "row has {} fields, expected {} as in the header",
                    row.len(),
                    layout.width
                ),
            )),
            None => Err(problem(
                KEY_ATTR,
                format!("empty key column '{}'", mapping.key),
            )),
            Some(k) => match first_seen.get(k) {
                Some(first) => Err(problem(
                    KEY_ATTR,
                    format!("duplicate {KEY_ATTR} '{k}', first seen on line {first}"),
                )),
                None => {
                    first_seen.insert(k.clone(), line);
                    build_record(source, k, &location, &row, &layout, mapping)
                }
            },
        };
        match outcome {
            Ok(record) => feed.records.push(record),
            Err(p) => feed.quarantined.push(Quarantined {
                source: source.to_string(),
                location,
                record_key: key,
                field: p.field,
                reason: p.reason,
                raw: row.iter().collect::<Vec<_>>().join(&delimiter),
            }),
        }
    }
    Ok(feed)
}

/// Physical line numbers from byte offsets. The csv reader's own line count lags behind after a
/// CRLF terminator or skipped blank lines, and locations must match what an editor shows.
struct LineCounter<'a> {
    body: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(body: &'a [u8]) -> Self {
        LineCounter {
            body,
            offset: 0,
            line: 1,
        }
    }

    /// Line of the record starting at `start`; offsets must not decrease between calls.
    fn line_at(&mut self, start: usize) -> usize {
        // The reader may place a record's start on the tail of the previous terminator or on
        // skipped blank lines; a record itself never begins with a line break.
        let mut start = start.min(self.body.len());
        while start < self.body.len() && matches!(self.body[start], b'\r' | b'\n') {
            start += 1;
        }
        if start > self.offset {
            self.line += self.body[self.offset..start]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            self.offset = start;
        }
        self.line
    }
}

fn is_blank(row: &csv::StringRecord) -> bool {
    row.iter().all(|cell| cell.trim().is_empty())
}

fn layout(
    file_name: &str,
    header: &csv::StringRecord,
    mapping: &HrMapping,
) -> Result<Layout, HrError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if index.insert(name, i).is_some() && !name.is_empty() {
            return Err(HrError::DuplicateColumn {
                file: file_name.to_string(),
                column: name.to_string(),
            });
        }
    }
    let mut missing = Vec::new();
    let key = index.get(mapping.key.as_str()).copied();
    if key.is_none() {
        missing.push(MissingColumn {
            column: mapping.key.clone(),
            attribute: KEY_ATTR.to_string(),
        });
    }
    let mut columns = BTreeMap::new();
    for (attr, column) in &mapping.columns {
        match index.get(column.as_str()) {
            Some(i) => {
                columns.insert(attr.clone(), (column.clone(), *i));
            }
            None => missing.push(MissingColumn {
                column: column.clone(),
                attribute: attr.clone(),
            }),
        }
    }
    match key {
        Some(key) if missing.is_empty() => Ok(Layout {
            width: header.len(),
            key,
            columns,
        }),
        _ => Err(HrError::MissingColumns {
            file: file_name.to_string(),
            missing,
        }),
    }
}

fn build_record(
    source: &str,
    key: &str,
    location: &str,
    row: &csv::StringRecord,
    layout: &Layout,
    mapping: &HrMapping,
) -> Result<PersonRecord, RowProblem> {
    let cell = |attr: &str| -> Option<&str> {
        layout
            .columns
            .get(attr)
            .and_then(|(_, i)| row.get(*i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };

    let status = match cell(STATUS) {
        None => None,
        Some(raw) => match mapping.status_of(raw) {
            Some(s) => Some(s),
            None => {
                let known: Vec<String> = mapping
                    .status_values
                    .keys()
                    .map(|k| format!("'{k}'"))
                    .collect();
                return Err(problem(
                    STATUS,
                    format!(
                        "unknown status value '{raw}', expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        },
    };

    let mut dates = [None; 3];
    // A termination given with a time of day (`2026-11-30T14:00:00+01:00`) ends access at that
    // instant, not at the end of the day.
    let mut terminates_at = None;
    for (slot, attr) in dates.iter_mut().zip(DATE_ATTRS) {
        let Some(raw) = cell(attr) else { continue };
        if let Ok(date) = NaiveDate::parse_from_str(raw, &mapping.date_format) {
            *slot = Some(date);
            continue;
        }
        // Exports drift from the configured format (a report re-run with timestamps, a system
        // writing ISO 8601): any unambiguous form `identity::parse_when` reads is taken too.
        match identity::parse_when(raw) {
            Ok(When::Date(d)) => *slot = Some(d),
            Ok(When::At(t)) if attr == "termination_date" => terminates_at = Some(t),
            Ok(When::At(t)) => *slot = Some(identity::last_day_before(t, chrono_tz::UTC)),
            Ok(When::Never) => {}
            Err(_) => {
                return Err(problem(
                    attr,
                    format!(
                        "unparseable date '{raw}', expected {} (or ISO 8601, LDAP generalized \
                         time, FILETIME or epoch seconds)",
                        mapping.date_format
                    ),
                ));
            }
        }
    }
    let [hire_date, termination_date, contract_end] = dates;

    for attr in &mapping.required {
        if cell(attr).is_none() {
            let column = layout
                .columns
                .get(attr)
                .map(|(c, _)| c.as_str())
                .unwrap_or_default();
            return Err(problem(
                attr,
                format!("required attribute '{attr}' is empty (column '{column}')"),
            ));
        }
    }

    let mut attrs = BTreeMap::new();
    for attr in layout.columns.keys() {
        if attr == STATUS || DATE_ATTRS.contains(&attr.as_str()) {
            continue;
        }
        if let Some(value) = cell(attr) {
            // Templates compare employment types literally; HR systems capitalise at will.
            let value = if attr == EMPLOYMENT_TYPE {
                value.to_lowercase()
            } else {
                value.to_string()
            };
            attrs.insert(attr.clone(), value);
        }
    }
    attrs.insert(KEY_ATTR.to_string(), key.to_string());
    if let Some(t) = terminates_at {
        attrs.insert(
            identity::EXPIRES_AT.to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }

    Ok(PersonRecord {
        source: source.to_string(),
        key: key.to_string(),
        location: location.to_string(),
        status,
        hire_date,
        termination_date,
        contract_end,
        site: cell(SITE).map(str::to_string),
        attrs,
    })
}

/// The feed files in a drop directory, oldest name first: `*.csv`, skipping dotfiles (editor
/// and sync-tool droppings) and names that mark an upload still in progress.
pub fn feed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // A name that is not UTF-8 cannot be one our uploaders produce.
        let Some(name) = name.to_str() else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if name.starts_with('.') || !lower.ends_with(".csv") {
            continue;
        }
        // Follows symlinks, so a linked-in feed counts and a dangling link does not.
        if !entry.path().is_file() {
            continue;
        }
        files.push((name.to_string(), entry.path()));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

impl fmt::Display for MissingColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' (mapped to attribute '{}')",
            self.column, self.attribute
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING: &str = r#"version = 1
# the column holding the correlation key (employee id)
key = "employee_id"
delimiter = ","
date_format = "%Y-%m-%d"
[columns]
name = "full_name"
email = "email"
department = "department"
role = "job_title"
employment_type = "employment_type"
site = "site"
status = "status"
hire_date = "hire_date"
termination_date = "termination_date"
contract_end = "contract_end"
manager = "manager_id"
[status_values]
"Active" = "active"
"On Leave" = "suspended"
"Terminated" = "terminated"
"Pre-hire" = "active"
[required]
attributes = ["name", "email"]
"#;

    const HEADER: &str = "employee_id,full_name,email,department,job_title,employment_type,site,status,hire_date,termination_date,contract_end,manager_id";

    fn mapping() -> HrMapping {
        match parse_mapping(MAPPING, "mappings/hr.toml") {
            Ok(m) => m,
            Err(e) => panic!("sample mapping must parse: {e}"),
        }
    }

    fn feed(rows: &[&str]) -> String {
        let mut text = String::from(HEADER);
        for row in rows {
            text.push('\n');
            text.push_str(row);
        }
        text.push('\n');
        text
    }

    fn parse(text: &str) -> ParsedFeed {
        match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
            Ok(f) => f,
            Err(e) => panic!("feed must parse: {e}"),
        }
    }

    fn mapping_err(text: &str) -> String {
        match parse_mapping(text, "mappings/hr.toml") {
            Ok(_) => panic!("mapping should have been rejected"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = "E1,Ada Lovelace,ada@example.com,engineering,engineer,Employee,berlin,Active,2020-01-15,,,E9";

    fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, d)
    }

    #[test]
    fn sample_mapping_parses() {
        let m = mapping();
        assert_eq!(m.key, "employee_id");
        assert_eq!(m.delimiter, b',');
        assert_eq!(m.columns.get("role").map(String::as_str), Some("job_title"));
        assert_eq!(
            m.status_values.get("On Leave"),
            Some(&RecordStatus::Suspended)
        );
        assert_eq!(m.required, vec!["name".to_string(), "email".to_string()]);
    }

    #[test]
    fn well_formed_rows_become_records() {
        let f = parse(&feed(&[
            GOOD,
            " E2 , Bob Stone ,bob@example.com,sales,sales rep,CONTRACTOR,london,on leave ,2019-03-01,2025-06-30,2027-01-31,",
        ]));
        assert_eq!(f.rows, 2);
        assert!(f.quarantined.is_empty(), "{:?}", f.quarantined);
        let a = &f.records[0];
        assert_eq!(a.source, "hr");
        assert_eq!(a.key, "E1");
        assert_eq!(a.location, "hr.csv:2");
        assert_eq!(a.status, Some(RecordStatus::Active));
        assert_eq!(a.hire_date, date(2020, 1, 15));
        assert_eq!(a.termination_date, None);
        assert_eq!(a.contract_end, None);
        assert_eq!(a.site.as_deref(), Some("berlin"));
        let expected: BTreeMap<String, String> = [
            ("department", "engineering"),
            ("email", "ada@example.com"),
            ("employee_id", "E1"),
            ("employment_type", "employee"),
            ("manager", "E9"),
            ("name", "Ada Lovelace"),
            ("role", "engineer"),
            ("site", "berlin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(a.attrs, expected);

        let b = &f.records[1];
        assert_eq!(b.key, "E2");
        assert_eq!(b.location, "hr.csv:3");
        assert_eq!(b.status, Some(RecordStatus::Suspended));
        assert_eq!(b.termination_date, date(2025, 6, 30));
        assert_eq!(b.contract_end, date(2027, 1, 31));
        assert_eq!(b.attrs.get("name").map(String::as_str), Some("Bob Stone"));
        assert_eq!(
            b.attrs.get("employment_type").map(String::as_str),
            Some("contractor")
        );
        assert!(!b.attrs.contains_key("manager"), "empty cells are omitted");
        assert_eq!(f.digest.len(), 64);
    }

    fn only_quarantine(rows: &[&str]) -> Quarantined {
        let f = parse(&feed(rows));
        assert_eq!(f.quarantined.len(), 1, "{:?}", f.quarantined);
        f.quarantined[0].clone()
    }

    #[test]
    fn unparseable_date_is_quarantined() {
        let row =
            "E1,Ada,ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,2026-13-01,,";
        let q = only_quarantine(&[GOOD.replace("E1", "E0").as_str(), row]);
        assert_eq!(q.source, "hr");
        assert_eq!(q.location, "hr.csv:3");
        assert_eq!(q.record_key.as_deref(), Some("E1"));
        assert_eq!(q.field, "termination_date");
        assert_eq!(
            q.reason,
            "unparseable date '2026-13-01', expected %Y-%m-%d (or ISO 8601, LDAP generalized \
             time, FILETIME or epoch seconds)"
        );
        assert_eq!(q.raw, row);
    }

    #[test]
    fn unknown_status_is_quarantined_with_known_values() {
        let q = only_quarantine(&[
            "E1,Ada,ada@example.com,eng,engineer,employee,berlin,Retired,2020-01-15,,,",
        ]);
        assert_eq!(q.location, "hr.csv:2");
        assert_eq!(q.field, "status");
        assert_eq!(
            q.reason,
            "unknown status value 'Retired', expected one of 'Active', 'On Leave', 'Pre-hire', 'Terminated'"
        );
    }

    #[test]
    fn missing_key_is_quarantined() {
        let f = parse(&feed(&[
            "  ,Ada,ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,,,",
            GOOD,
        ]));
        assert_eq!(f.records.len(), 1);
        let q = &f.quarantined[0];
        assert_eq!(q.location, "hr.csv:2");
        assert_eq!(q.record_key, None);
        assert_eq!(q.field, "employee_id");
        assert_eq!(q.reason, "empty key column 'employee_id'");
    }

    #[test]
    fn empty_required_attribute_is_quarantined() {
        let q = only_quarantine(&["E1,Ada,  ,eng,engineer,employee,berlin,Active,2020-01-15,,,"]);
        assert_eq!(q.field, "email");
        assert_eq!(q.record_key.as_deref(), Some("E1"));
        assert_eq!(
            q.reason,
            "required attribute 'email' is empty (column 'email')"
        );
    }

    #[test]
    fn wrong_field_count_is_quarantined_not_fatal() {
        let f = parse(&feed(&[
            "E1,Ada,ada@example.com,eng",
            &format!("{},extra", GOOD.replace("E1", "E2")),
            &GOOD.replace("E1", "E3"),
        ]));
        assert_eq!(f.rows, 3);
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].key, "E3");
        let short = &f.quarantined[0];
        assert_eq!(short.location, "hr.csv:2");
        assert_eq!(short.field, "row");
        assert_eq!(short.record_key.as_deref(), Some("E1"));
        assert_eq!(
            short.reason,
            "row has 4 fields, expected 12 as in the header"
        );
        assert_eq!(short.raw, "E1,Ada,ada@example.com,eng");
        let long = &f.quarantined[1];
        assert_eq!(long.location, "hr.csv:3");
        assert_eq!(
            long.reason,
            "row has 13 fields, expected 12 as in the header"
        );
    }

    #[test]
    fn later_duplicate_key_is_quarantined() {
        let f = parse(&feed(&[GOOD, &GOOD.replace("E9", "E8")]));
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].location, "hr.csv:2");
        let q = &f.quarantined[0];
        assert_eq!(q.location, "hr.csv:3");
        assert_eq!(q.field, "employee_id");
        assert_eq!(q.record_key.as_deref(), Some("E1"));
        assert_eq!(q.reason, "duplicate employee_id 'E1', first seen on line 2");
    }

    #[test]
    fn line_numbers_are_physical_lines() {
        // A quoted cell spanning two lines shifts every later row by one.
        let f = parse(&feed(&[
            "E1,\"Ada\nLovelace\",ada@example.com,eng,engineer,employee,berlin,Active,2020-01-15,,,",
            "",
            "E2,Bob,bob@example.com,eng,engineer,employee,berlin,Active,2020-01-15,bad,,",
        ]));
        assert_eq!(f.records[0].location, "hr.csv:2");
        assert_eq!(f.quarantined[0].location, "hr.csv:5");
        assert_eq!(f.rows, 2);
    }

    #[test]
    fn bom_and_crlf_are_handled() {
        let text = format!(
            "\u{feff}{HEADER}\r\n{GOOD}\r\n{}\r\n",
            GOOD.replace("E1", "E2")
        );
        let f = parse(&text);
        assert!(f.quarantined.is_empty(), "{:?}", f.quarantined);
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.records[0].key, "E1");
        assert_eq!(f.records[1].location, "hr.csv:3");
        assert_eq!(
            f.records[1].attrs.get("manager").map(String::as_str),
            Some("E9")
        );
    }

    #[test]
    fn header_missing_mapped_column_fails_the_file() {
        let text = HEADER.replace(",email,", ",mail,") + "\n";
        match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
            Err(e @ HrError::MissingColumns { .. }) => assert_eq!(
                e.to_string(),
                "hr.csv: header lacks column 'email' (mapped to attribute 'email')"
            ),
            other => panic!("expected missing column, got {other:?}"),
        }
    }

    #[test]
    fn header_missing_key_column_fails_the_file() {
        let text = HEADER.replace("employee_id,", "id,") + "\n";
        match parse_feed("hr", "hr.csv", text.as_bytes(), &mapping()) {
            Err(HrError::MissingColumns { missing, .. }) => {
                assert_eq!(missing.len(), 1);
                assert_eq!(missing[0].column, "employee_id");
            }
            other => panic!("expected missing key column, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_non_utf8_files_fail() {
        let m = mapping();
        assert!(matches!(
            parse_feed("hr", "hr.csv", b"", &m),
            Err(HrError::Empty { .. })
        ));
        assert!(matches!(
            parse_feed("hr", "hr.csv", b"\xEF\xBB\xBF\r\n", &m),
            Err(HrError::Empty { .. })
        ));
        let bytes = format!("{HEADER}\nE1,Ad\u{e9}").into_bytes();
        let mut latin1 = bytes.clone();
        let pos = latin1.len() - 2;
        latin1[pos] = 0xE9;
        latin1.truncate(pos + 1);
        match parse_feed("hr", "hr.csv", &latin1, &m) {
            Err(e @ HrError::NotUtf8 { .. }) => {
                assert_eq!(e.to_string(), "hr.csv:2: not valid UTF-8 text")
            }
            other => panic!("expected not utf-8, got {other:?}"),
        }
    }

    #[test]
    fn header_only_file_has_no_rows() {
        let f = parse(&feed(&[]));
        assert_eq!(f.rows, 0);
        assert!(f.records.is_empty());
        assert_eq!(f.digest, hex::encode(Sha256::digest(feed(&[]).as_bytes())));
    }

    #[test]
    fn unknown_mapping_key_names_line_and_key() {
        let text = MAPPING.replace("[columns]", "[colums]");
        let msg = mapping_err(&text);
        assert!(
            msg.starts_with("mappings/hr.toml:6: unknown key 'colums'"),
            "{msg}"
        );
        let text = MAPPING.replace("version = 1\n", "version = 1\nkye = \"x\"\n");
        let msg = mapping_err(&text);
        assert!(
            msg.starts_with("mappings/hr.toml:2: unknown key 'kye'"),
            "{msg}"
        );
        let text = MAPPING.replace("[required]\n", "[required]\nfoo = 1\n");
        match parse_mapping(&text, "mappings/hr.toml") {
            Err(HrError::Mapping { line, key, .. }) => {
                assert_eq!(line, Some(24));
                assert_eq!(key.as_deref(), Some("required.foo"));
            }
            other => panic!("expected a mapping error, got {other:?}"),
        }
    }

    #[test]
    fn mapping_type_error_names_line_and_key() {
        let msg = mapping_err(&MAPPING.replace(
            "attributes = [\"name\", \"email\"]",
            "attributes = \"name\"",
        ));
        assert!(msg.starts_with("mappings/hr.toml:24: "), "{msg}");
        assert!(msg.contains("required.attributes"), "{msg}");
    }

    #[test]
    fn mapping_validation_errors_name_line() {
        let msg = mapping_err(&MAPPING.replace("version = 1", "version = 2"));
        assert_eq!(msg, "mappings/hr.toml:1: unsupported version 2, expected 1");
        let msg = mapping_err(&MAPPING.replace("key = \"employee_id\"", "key = \" \""));
        assert!(msg.starts_with("mappings/hr.toml:3: key must"), "{msg}");
        let msg = mapping_err(&MAPPING.replace("= \"suspended\"", "= \"paused\""));
        assert!(
            msg.starts_with("mappings/hr.toml:20: unknown status 'paused'"),
            "{msg}"
        );
        let msg = mapping_err(&MAPPING.replace("[\"name\", \"email\"]", "[\"name\", \"badge\"]"));
        assert_eq!(
            msg,
            "mappings/hr.toml:24: required attribute 'badge' is not mapped in [columns]"
        );
        let msg = mapping_err(&MAPPING.replace("\"%Y-%m-%d\"", "\"%H:%M\""));
        assert!(msg.starts_with("mappings/hr.toml:5: date_format"), "{msg}");
        let msg = mapping_err(&MAPPING.replace("delimiter = \",\"", "delimiter = \",;\""));
        assert!(msg.starts_with("mappings/hr.toml:4: delimiter"), "{msg}");
        let msg = mapping_err(&MAPPING.replace("\"Pre-hire\"", "\"active\""));
        assert!(msg.contains("same status value ignoring case"), "{msg}");
    }

    #[test]
    fn other_delimiters_and_date_formats() {
        let text = MAPPING
            .replace("delimiter = \",\"", "delimiter = \";\"")
            .replace("%Y-%m-%d", "%d.%m.%Y");
        let m = match parse_mapping(&text, "m.toml") {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        let csv = format!(
            "{}\nE1;Ada;ada@example.com;eng;engineer;employee;berlin;active;15.01.2020;;;\n",
            HEADER.replace(',', ";")
        );
        let f = match parse_feed("hr", "x.csv", csv.as_bytes(), &m) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(f.records[0].hire_date, date(2020, 1, 15));
        assert_eq!(f.records[0].status, Some(RecordStatus::Active));
    }

    #[test]
    fn dates_in_other_unambiguous_forms_are_read_and_a_timed_termination_keeps_its_instant() {
        let m = match parse_mapping(MAPPING, "m.toml") {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        let csv = format!(
            "{HEADER}\n\
             E1,Ada,ada@example.com,eng,engineer,employee,berlin,active,2020-01-15T08:00:00+01:00,2026-11-30T14:00:00+01:00,,\n\
             E2,Bo,bo@example.com,eng,engineer,employee,berlin,active,20200115080000Z,,0,\n\
             E3,Cy,cy@example.com,eng,engineer,employee,berlin,active,15/01/2020,,,\n"
        );
        let f = match parse_feed("hr", "x.csv", csv.as_bytes(), &m) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let ada = &f.records[0];
        assert_eq!(ada.hire_date, date(2020, 1, 15));
        assert_eq!(ada.termination_date, None);
        assert_eq!(ada.attrs[identity::EXPIRES_AT], "2026-11-30T13:00:00Z");
        let bo = &f.records[1];
        assert_eq!(bo.hire_date, date(2020, 1, 15));
        assert_eq!(bo.contract_end, None, "0 means never");
        // Slashes are ambiguous (day or month first): quarantined with the field named.
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.quarantined.len(), 1);
        assert_eq!(f.quarantined[0].field, "hire_date");
        assert!(
            f.quarantined[0].reason.contains("15/01/2020"),
            "{}",
            f.quarantined[0].reason
        );
    }

    #[test]
    fn load_mapping_reads_file() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let path = dir.path().join("hr.toml");
        if let Err(e) = std::fs::write(&path, MAPPING) {
            panic!("{e}");
        }
        assert!(load_mapping(&path).is_ok());
        assert!(matches!(
            load_mapping(&dir.path().join("absent.toml")),
            Err(HrError::Io { .. })
        ));
    }

    #[test]
    fn feed_files_lists_csv_sorted_skipping_partials() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        for name in [
            "hr-2026-11-25.csv",
            "hr-2026-11-24.csv",
            ".hr-2026-11-26.csv",
            "hr-2026-11-26.csv.part",
            "hr-2026-11-26.csv.tmp",
            "notes.txt",
        ] {
            if let Err(e) = std::fs::write(dir.path().join(name), "x") {
                panic!("{e}");
            }
        }
        if let Err(e) = std::fs::create_dir(dir.path().join("old.csv")) {
            panic!("{e}");
        }
        let files = match feed_files(dir.path()) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        assert_eq!(names, vec!["hr-2026-11-24.csv", "hr-2026-11-25.csv"]);
    }
}
