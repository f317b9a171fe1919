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

impl ParsedFeed {
    /// The file as a snapshot of `source`: its checkpoint is the file's name and content hash, so
    /// the same name delivered again with other content is applied again.
    pub fn into_snapshot(
        self,
        source: &str,
        file_name: &str,
        hold_above: f64,
        landed_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> crate::model::Snapshot {
        crate::model::Snapshot {
            source: source.to_string(),
            checkpoint: checkpoint(file_name, &self.digest),
            batch_id: self.digest,
            records: self.records,
            quarantined: self.quarantined,
            hold_above,
            landed_at,
        }
    }
}

/// An HR source's checkpoint: the last file applied, by name and content hash.
pub fn checkpoint(file_name: &str, digest: &str) -> String {
    format!("{file_name}@{digest}")
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
    check_utf8(file_name, body)?;

    // Flexible, so that a short or long row is ours to quarantine instead of a reader error.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(mapping.delimiter)
        .from_reader(body);
    let mut records = reader.records();
    let header = header_row(file_name, &mut records)?;
    let mut rows = FeedRows {
        source,
        file_name,
        mapping,
        layout: layout(file_name, &header, mapping)?,
        first_seen: HashMap::new(),
        lines: LineCounter::new(body),
        delimiter: char::from(mapping.delimiter).to_string(),
    };

    let mut feed = ParsedFeed {
        records: Vec::new(),
        quarantined: Vec::new(),
        digest,
        rows: 0,
    };
    for row in records {
        let row = row.map_err(|e| csv_error(file_name, e))?;
        // Spreadsheet exports pad with lines of bare delimiters; they carry nothing.
        if is_blank(&row) {
            continue;
        }
        feed.rows += 1;
        rows.read(&row, &mut feed);
    }
    Ok(feed)
}

fn check_utf8(file_name: &str, body: &[u8]) -> Result<(), HrError> {
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
    Ok(())
}

fn csv_error(file_name: &str, e: csv::Error) -> HrError {
    HrError::Csv {
        file: file_name.to_string(),
        line: e.position().map(|p| p.line()).unwrap_or(0),
        message: e.to_string(),
    }
}

/// The first row that is not blank: the header.
fn header_row(
    file_name: &str,
    records: &mut csv::StringRecordsIter<'_, &[u8]>,
) -> Result<csv::StringRecord, HrError> {
    loop {
        match records.next() {
            None => {
                return Err(HrError::Empty {
                    file: file_name.to_string(),
                });
            }
            Some(row) => {
                let row = row.map_err(|e| csv_error(file_name, e))?;
                if !is_blank(&row) {
                    return Ok(row);
                }
            }
        }
    }
}

/// The data rows of one file as they are read: where each is, and which keys came before.
struct FeedRows<'a> {
    source: &'a str,
    file_name: &'a str,
    mapping: &'a HrMapping,
    layout: Layout,
    /// Key -> line it first appeared on, whether or not that row was usable: two rows for one
    /// person is a data error even if one of them is also broken.
    first_seen: HashMap<String, usize>,
    lines: LineCounter<'a>,
    delimiter: String,
}

impl FeedRows<'_> {
    /// One non-blank data row, into a record or quarantined with its location.
    fn read(&mut self, row: &csv::StringRecord, feed: &mut ParsedFeed) {
        let start = row.position().map(|p| p.byte()).unwrap_or(0);
        let line = self
            .lines
            .line_at(usize::try_from(start).unwrap_or(usize::MAX));
        let location = format!("{}:{line}", self.file_name);
        let key = row
            .get(self.layout.key)
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        match self.record(row, key.as_deref(), line, &location) {
            Ok(record) => feed.records.push(record),
            Err(p) => feed.quarantined.push(Quarantined {
                source: self.source.to_string(),
                location,
                record_key: key.map(Into::into),
                field: p.field,
                reason: p.reason,
                raw: row.iter().collect::<Vec<_>>().join(&self.delimiter),
            }),
        }
    }

    /// The row's record: its width checked, then its key (present, and not seen before), then
    /// its cells.
    fn record(
        &mut self,
        row: &csv::StringRecord,
        key: Option<&str>,
        line: usize,
        location: &str,
    ) -> Result<PersonRecord, RowProblem> {
        match key {
            _ if row.len() != self.layout.width => Err(problem(
                ROW_FIELD,
                format!(
                    "row has {} fields, expected {} as in the header",
                    row.len(),
                    self.layout.width
                ),
            )),
            None => Err(problem(
                KEY_ATTR,
                format!("empty key column '{}'", self.mapping.key),
            )),
            Some(k) => match self.first_seen.get(k) {
                Some(first) => Err(problem(
                    KEY_ATTR,
                    format!("duplicate {KEY_ATTR} '{k}', first seen on line {first}"),
                )),
                None => {
                    self.first_seen.insert(k.to_string(), line);
                    build_record(self.source, k, location, row, &self.layout, self.mapping)
                }
            },
        }
    }
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
    let cells = Cells { row, layout };
    let status = row_status(&cells, mapping)?;
    let dates = row_dates(&cells, mapping)?;
    check_required(&cells, mapping)?;
    let attrs = row_attrs(&cells, key, dates.terminates_at);
    Ok(PersonRecord {
        source: source.to_string(),
        key: key.into(),
        location: location.to_string(),
        status,
        hire_date: dates.hire_date,
        termination_date: dates.termination_date,
        contract_end: dates.contract_end,
        site: cells.get(SITE).map(str::to_string),
        attrs,
    })
}

/// A row's cells by attribute, trimmed; an empty cell is none.
struct Cells<'a> {
    row: &'a csv::StringRecord,
    layout: &'a Layout,
}

impl<'a> Cells<'a> {
    fn get(&self, attr: &str) -> Option<&'a str> {
        self.layout
            .columns
            .get(attr)
            .and_then(|(_, i)| self.row.get(*i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

fn row_status(cells: &Cells, mapping: &HrMapping) -> Result<Option<RecordStatus>, RowProblem> {
    let Some(raw) = cells.get(STATUS) else {
        return Ok(None);
    };
    match mapping.status_of(raw) {
        Some(s) => Ok(Some(s)),
        None => {
            let known: Vec<String> = mapping
                .status_values
                .keys()
                .map(|k| format!("'{k}'"))
                .collect();
            Err(problem(
                STATUS,
                format!(
                    "unknown status value '{raw}', expected one of {}",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// A row's dates.
struct RowDates {
    hire_date: Option<NaiveDate>,
    termination_date: Option<NaiveDate>,
    contract_end: Option<NaiveDate>,
    /// A termination given with a time of day (`2026-11-30T14:00:00+01:00`) ends access at that
    /// instant, not at the end of the day.
    terminates_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn row_dates(cells: &Cells, mapping: &HrMapping) -> Result<RowDates, RowProblem> {
    let mut dates = [None; 3];
    let mut terminates_at = None;
    for (slot, attr) in dates.iter_mut().zip(DATE_ATTRS) {
        let Some(raw) = cells.get(attr) else { continue };
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
    Ok(RowDates {
        hire_date,
        termination_date,
        contract_end,
        terminates_at,
    })
}

fn check_required(cells: &Cells, mapping: &HrMapping) -> Result<(), RowProblem> {
    for attr in &mapping.required {
        if cells.get(attr).is_none() {
            let column = cells
                .layout
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
    Ok(())
}

/// The free-form attributes (everything but the status and the dates), with the key and the
/// instant access ends.
fn row_attrs(
    cells: &Cells,
    key: &str,
    terminates_at: Option<chrono::DateTime<chrono::Utc>>,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    for attr in cells.layout.columns.keys() {
        if attr == STATUS || DATE_ATTRS.contains(&attr.as_str()) {
            continue;
        }
        if let Some(value) = cells.get(attr) {
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
    attrs
}
