//! The column mapping: which CSV column is which attribute, which values mean what, and how dates
//! are written; checked when it loads, with errors that name the line and key.

use super::*;

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
    pub(crate) fn status_of(&self, raw: &str) -> Option<RecordStatus> {
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
    let at = MappingText { text, origin };

    check_version(&raw.version, &at)?;
    let key = parse_key(&raw.key, &at)?;
    let delimiter = parse_delimiter(raw.delimiter.as_ref(), &at)?;
    let date_format = parse_date_format(raw.date_format.as_ref(), &at)?;
    let columns = parse_columns(&raw.columns, &key, &at)?;
    let status_values = parse_status_values(&raw.status_values, &at)?;
    if columns.contains_key(STATUS) && status_values.is_empty() {
        return Err(HrError::Mapping {
            origin: origin.to_string(),
            line: None,
            key: Some("status_values".to_string()),
            message: "attribute 'status' is mapped but [status_values] is empty".to_string(),
        });
    }
    let required = parse_required(raw.required.as_ref(), &columns, &at)?;

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

/// The mapping text and where it came from: what an error needs to name its line and key.
struct MappingText<'a> {
    text: &'a str,
    origin: &'a str,
}

impl MappingText<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: String) -> HrError {
        HrError::Mapping {
            origin: self.origin.to_string(),
            line: Some(line_of(self.text, span.start)),
            key: Some(key.to_string()),
            message,
        }
    }
}

fn check_version(version: &Spanned<i64>, at: &MappingText) -> Result<(), HrError> {
    if *version.get_ref() != 1 {
        return Err(at.error(
            version.span(),
            "version",
            format!("unsupported version {}, expected 1", version.get_ref()),
        ));
    }
    Ok(())
}

fn parse_key(key: &Spanned<String>, at: &MappingText) -> Result<String, HrError> {
    let name = key.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(at.error(
            key.span(),
            "key",
            "key must name the column holding the employee id".to_string(),
        ));
    }
    Ok(name)
}

fn parse_delimiter(delimiter: Option<&Spanned<String>>, at: &MappingText) -> Result<u8, HrError> {
    let Some(d) = delimiter else {
        return Ok(b',');
    };
    match d.get_ref().as_bytes() {
        [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
        _ => Err(at.error(
            d.span(),
            "delimiter",
            format!(
                "delimiter '{}' must be a single ASCII character other than a quote or newline",
                d.get_ref()
            ),
        )),
    }
}

fn parse_date_format(
    date_format: Option<&Spanned<String>>,
    at: &MappingText,
) -> Result<String, HrError> {
    let Some(f) = date_format else {
        return Ok("%Y-%m-%d".to_string());
    };
    if !date_format_round_trips(f.get_ref()) {
        return Err(at.error(
            f.span(),
            "date_format",
            format!(
                "date_format '{}' cannot write and read back a calendar date",
                f.get_ref()
            ),
        ));
    }
    Ok(f.get_ref().clone())
}

/// Attribute -> column, each column named and the key attribute only on the key column.
fn parse_columns(
    raw: &BTreeMap<String, Spanned<String>>,
    key: &str,
    at: &MappingText,
) -> Result<BTreeMap<String, String>, HrError> {
    let mut columns = BTreeMap::new();
    for (attr, column) in raw {
        let path = format!("columns.{attr}");
        let column_name = column.get_ref().trim();
        if column_name.is_empty() {
            return Err(at.error(
                column.span(),
                &path,
                format!("attribute '{attr}' is mapped to an empty column name"),
            ));
        }
        // The key is always published as `employee_id`; a second source for it would be ambiguous.
        if attr == KEY_ATTR && column_name != key {
            return Err(at.error(
                column.span(),
                &path,
                format!(
                    "attribute '{KEY_ATTR}' is reserved for the key column '{key}', not '{column_name}'"
                ),
            ));
        }
        columns.insert(attr.clone(), column_name.to_string());
    }
    Ok(columns)
}

/// Raw status value -> status, each a known status and no two the same ignoring case.
fn parse_status_values(
    raw: &BTreeMap<String, Spanned<String>>,
    at: &MappingText,
) -> Result<BTreeMap<String, RecordStatus>, HrError> {
    let mut status_values = BTreeMap::new();
    let mut seen_status: HashMap<String, String> = HashMap::new();
    for (raw_value, target) in raw {
        let path = format!("status_values.\"{raw_value}\"");
        let status = match target.get_ref().as_str() {
            "active" => RecordStatus::Active,
            "suspended" => RecordStatus::Suspended,
            "terminated" => RecordStatus::Terminated,
            other => {
                return Err(at.error(
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
            return Err(at.error(
                target.span(),
                &path,
                format!("'{raw_value}' and '{previous}' are the same status value ignoring case"),
            ));
        }
        status_values.insert(raw_value.clone(), status);
    }
    Ok(status_values)
}

/// The required attributes, each mapped; the key is always required, so it is not listed.
fn parse_required(
    raw: Option<&RawRequired>,
    columns: &BTreeMap<String, String>,
    at: &MappingText,
) -> Result<Vec<String>, HrError> {
    let mut required = Vec::new();
    let Some(req) = raw else {
        return Ok(required);
    };
    for attr in &req.attributes {
        let name = attr.get_ref();
        if name != KEY_ATTR && !columns.contains_key(name) {
            return Err(at.error(
                attr.span(),
                "required.attributes",
                format!("required attribute '{name}' is not mapped in [columns]"),
            ));
        }
        if name != KEY_ATTR {
            required.push(name.clone());
        }
    }
    Ok(required)
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
