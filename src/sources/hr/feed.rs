//! Reading one feed file: its layout from the header, then each row into a person record or a
//! quarantined row with its line and field.

use super::*;

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
